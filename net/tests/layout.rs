//! The shape of `net/`, checked: the shard's core (`net/src/shard/`) knows no
//! runtime and no listener, and the crate's modules import each other in one
//! direction only (no circle), so `net/` reads top-down (ARCHITECTURE.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name -> the crate modules its source names (`crate::x`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("net/src") {
        let path = entry.expect("dir entry").path();
        let Some(module) = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        if module == "lib" {
            continue; // the crate root declares every module
        }
        let text = if path.is_dir() {
            let mut all = String::new();
            for file in std::fs::read_dir(&path).expect("module dir") {
                all += &std::fs::read_to_string(file.expect("entry").path()).expect("source");
            }
            all
        } else {
            std::fs::read_to_string(&path).expect("source")
        };
        graph.insert(module.clone(), named_modules(&text, &module));
    }
    graph
}

/// The crate modules `text` names, as `crate::x` or in a `use crate::{x, y}`.
fn named_modules(text: &str, itself: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').collect()
        } else {
            vec![rest]
        };
        for name in names {
            let name: String = name
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Lower-case names are modules; `crate::WakeupRoute` is the root's.
            if name.starts_with(|c: char| c.is_ascii_lowercase()) && name != itself {
                named.insert(name);
            }
        }
    }
    named
}

#[test]
fn net_modules_import_each_other_without_a_circle() {
    let graph = imports();
    assert!(graph.contains_key("shard") && graph.contains_key("ua_conn"));
    // Depth-first search for a back edge.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = path.iter().position(|seen| seen == module) {
            panic!(
                "net/ imports in a circle: {} -> {module}",
                path[at..].join(" -> ")
            );
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(module.to_owned());
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_shard_core_knows_no_runtime_and_no_listener() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/shard");
    for entry in std::fs::read_dir(dir).expect("net/src/shard") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for forbidden in ["glommio", "std::net", "libc::", "SystemTime", "Instant"] {
            assert!(
                !code.contains(forbidden),
                "{} uses {forbidden}: the driver reaches the world through its Runtime seam",
                path.display()
            );
        }
        assert!(
            named_modules(&code, "shard").is_empty(),
            "{} imports another net/ module: {:?}",
            path.display(),
            named_modules(&code, "shard")
        );
    }
}
