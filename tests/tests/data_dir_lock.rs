//! One server per data dir (issue 13): a second `herald serve` on a live
//! server's data dir exits at once and touches nothing, the lock dies with its
//! holder (also on SIGKILL), and `herald wal inspect` may read a live data dir.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::SystemTime;

use herald_tests::*;

/// A refused second server exits at once; this bounds "at once" generously,
/// for a busy machine. Without the lock it would keep running past it.
const REFUSAL_DEADLINE: std::time::Duration = DEADLINE;

/// Every entry under a directory (the directory itself included, since
/// creating or removing an entry changes its mtime): kind, size, mtime.
type Listing = BTreeMap<PathBuf, (bool, u64, SystemTime)>;

fn listing(root: &Path) -> Listing {
    fn walk(path: &Path, root: &Path, out: &mut Listing) {
        let meta = std::fs::symlink_metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let relative = path.strip_prefix(root).expect("under root").to_path_buf();
        out.insert(
            relative,
            (meta.is_dir(), meta.len(), meta.modified().expect("mtime")),
        );
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).expect("list dir") {
                walk(&entry.expect("dir entry").path(), root, out);
            }
        }
    }
    let mut out = Listing::new();
    walk(root, root, &mut out);
    out
}

fn assert_untouched(before: &Listing, after: &Listing, what: &str) {
    let paths: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    let changed: Vec<String> = paths
        .into_iter()
        .filter(|path| before.get(*path) != after.get(*path))
        .map(|path| {
            let name = match path.as_os_str().is_empty() {
                true => "(the data dir itself)".to_owned(),
                false => path.display().to_string(),
            };
            format!("  {name}: {:?} -> {:?}", before.get(path), after.get(path))
        })
        .collect();
    assert!(
        changed.is_empty(),
        "{what} changed the data dir (kind is_dir, size, mtime):\n{}",
        changed.join("\n")
    );
}

/// Runs `herald serve` on `data_dir` with fresh ports (so that only the data
/// dir is shared) and waits for it to exit.
fn second_serve(data_dir: &Path, shards: usize, out_dir: &Path) -> (Option<ExitStatus>, String) {
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        &data_dir.display().to_string(),
        "--ua-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--as-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--shards",
        &shards.to_string(),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let mut second = spawn_herald(&args, &[], out_dir);
    let status = second.wait(REFUSAL_DEADLINE);
    (status, second.output())
}

fn assert_refused(status: Option<ExitStatus>, output: &str, data_dir: &Path, holder: u32) {
    let status = status.unwrap_or_else(|| {
        panic!("a second serve on a live data dir is still running after {REFUSAL_DEADLINE:?}:\n{output}")
    });
    assert!(
        !status.success(),
        "a second serve must exit non-zero, got {status}:\n{output}"
    );
    assert!(
        output.contains(&data_dir.display().to_string()),
        "the refusal names the data dir {}:\n{output}",
        data_dir.display()
    );
    assert!(
        output.contains(&format!("process {holder}")),
        "the refusal names the holder's PID {holder}:\n{output}"
    );
}

/// A UA with one channel and `count` stored (unacknowledged) messages.
fn fill(server: &Server, count: usize) -> (String, String) {
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (_channel, endpoint) = ua.register_new();
    ua.close();
    for i in 0..count {
        push_aes128gcm(&endpoint, format!("stored-{i}").as_bytes(), 600).assert_status(201, "POST");
    }
    (uaid, endpoint)
}

/// Messages stored before the second serve is tried: enough to make a
/// truncated log visible.
const STORED: usize = 50;

#[test]
fn second_serve_on_a_live_data_dir_exits_at_once_and_touches_nothing() {
    let shards = 2;
    let mut server = Server::start(ServerOptions::new().shards(shards));
    let (uaid, endpoint) = fill(&server, STORED);
    let data_dir = server.data_dir();
    let before = listing(&data_dir);

    let out = TempDir::new("second");
    let (status, output) = second_serve(&data_dir, shards, out.path());
    assert_refused(status, &output, &data_dir, server.pid().expect("running"));
    assert_untouched(&before, &listing(&data_dir), "a refused second serve");

    // The first server still serves, and its log on disk is whole: after a
    // restart, which replays it, every message is still there.
    push_aes128gcm(&endpoint, b"after the refusal", 600).assert_status(201, "POST");
    server.restart();
    let mut ua = server.ua_resume(&uaid, true);
    let mut received = BTreeSet::new();
    for _ in 0..=STORED {
        let notification = ua.recv_notification(DEADLINE);
        ua.ack_notification(&notification);
        received.insert(notification_data(&notification));
    }
    let mut expected: BTreeSet<Vec<u8>> = (0..STORED)
        .map(|i| format!("stored-{i}").into_bytes())
        .collect();
    expected.insert(b"after the refusal".to_vec());
    assert_eq!(received, expected, "every stored message is delivered");
}

#[test]
fn a_new_serve_starts_after_the_holder_is_killed_9() {
    let mut server = Server::start_default();
    let (uaid, _endpoint) = fill(&server, 1);
    let lock_file = server.data_dir().join("herald.lock");
    let dead = server.pid().expect("running");
    server.kill9();
    assert_eq!(
        std::fs::read_to_string(&lock_file)
            .expect("lock file")
            .trim(),
        dead.to_string(),
        "the dead holder's PID is still in the lock file"
    );

    // The kernel dropped the lock with the process: no stale lock.
    server.restart();
    let mut ua = server.ua_resume(&uaid, true);
    assert_eq!(
        notification_data(&ua.recv_notification(DEADLINE)),
        b"stored-0"
    );
    // And the new server holds it in turn.
    let holder = server.pid().expect("running");
    let out = TempDir::new("third");
    let (status, output) = second_serve(&server.data_dir(), 1, out.path());
    assert_refused(status, &output, &server.data_dir(), holder);
}

#[test]
fn wal_inspect_reads_a_live_data_dir_and_writes_nothing() {
    let server = Server::start_default();
    fill(&server, 3);
    let data_dir = server.data_dir();
    let before = listing(&data_dir);
    let output = std::process::Command::new(herald_bin())
        .args(["wal", "inspect"])
        .arg(&data_dir)
        .output()
        .expect("run herald wal inspect");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wal inspect beside a live server: {}\n{text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(&format!("data dir {}: 1 shards", data_dir.display())),
        "inspect read the data dir:\n{text}"
    );
    assert_untouched(&before, &listing(&data_dir), "wal inspect");
    // The server is still the data dir's owner and still serves.
    let mut ua = server.ua_webpush();
    let (_channel, endpoint) = ua.register_new();
    push_aes128gcm(&endpoint, b"after inspect", 60).assert_status(201, "POST");
    assert_eq!(
        notification_data(&ua.recv_notification(DEADLINE)),
        b"after inspect"
    );
}
