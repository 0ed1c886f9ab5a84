//! The benchmark harness runs every scenario end to end against the built
//! binaries (small counts, one run each): what `bench/RESULTS.md` reports
//! comes from a harness that really delivers, and this catches the day it
//! stops doing so. Speed is not checked here (that is what the benchmarks
//! themselves are for); counts are.
//!
//! The single-node scenarios run in turn, in one test: the harness gives
//! its workers fixed loopback source addresses.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn bench_bin() -> PathBuf {
    let bin = herald_tests::herald_bin().with_file_name("herald-bench");
    assert!(
        bin.exists(),
        "{} not found: cargo build --release --workspace --bins",
        bin.display()
    );
    bin
}

/// Runs one scenario with `args` and returns its JSON results.
fn scenario(out: &Path, name: &str, args: &[&str]) -> Value {
    let status = Command::new(bench_bin())
        .arg(name)
        .args(["--runs", "1", "--out"])
        .arg(out)
        .args(args)
        .status()
        .expect("run herald-bench");
    assert!(status.success(), "herald-bench {name} failed: {status}");
    let text = std::fs::read_to_string(out.join(format!("{name}.json"))).expect("results file");
    serde_json::from_str(&text).expect("results are JSON")
}

fn only_run(results: &Value) -> &Value {
    let runs = results["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "one run asked for: {results}");
    &runs[0]
}

#[test]
fn every_scenario_delivers_what_it_counts() {
    let out = tempdir();
    let load = [
        "--fsync",
        "batch",
        "--uas",
        "30",
        "--pushers",
        "6",
        "--seconds",
        "1",
    ];

    let throughput = scenario(&out, "throughput", &load);
    let run = only_run(&throughput);
    let accepted = run["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "nothing accepted: {run}");
    assert_eq!(
        run["delivered"], accepted,
        "every accepted push arrives: {run}"
    );
    assert_eq!(run["refused"], 0, "{run}");
    assert_eq!(run["uas"], 30, "{run}");
    assert!(run["to_ua"]["p99_ms"].as_f64().unwrap() > 0.0, "{run}");
    let summary = &throughput["summary"]["herald --fsync batch"];
    for figure in [
        "server_us_per_notification",
        "generator_us_per_notification",
    ] {
        let median = summary[figure]["median"].as_f64().unwrap_or(0.0);
        assert!(
            median > 0.0,
            "the summary gives {figure} beside the rate: {summary}"
        );
    }

    let floor = scenario(&out, "floor", &load[2..]);
    let run = only_run(&floor);
    assert!(run["accepted"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(run["delivered"], run["accepted"], "{run}");

    let mut paced = load.to_vec();
    paced.extend(["--percents", "50", "--peak", "400"]);
    let latency = scenario(&out, "latency", &paced);
    let runs = latency["runs"].as_array().expect("runs");
    assert_eq!(
        runs.len(),
        2,
        "Herald, then the floor at the same rate: {latency}"
    );
    for run in runs {
        // 50 % of 400/s for one second: the pacing holds the rate down.
        let accepted = run["accepted"].as_u64().unwrap();
        assert!((100..=220).contains(&accepted), "paced at 200/s: {run}");
        assert_eq!(run["delivered"], accepted, "{run}");
    }

    let stored = scenario(
        &out,
        "stored",
        &[
            "--fsync",
            "batch",
            "--uas",
            "40",
            "--messages",
            "5",
            "--pushers",
            "4",
        ],
    );
    let run = only_run(&stored);
    assert_eq!(run["stored"], 200, "{run}");
    assert_eq!(run["delivered"], 200, "every stored message drains: {run}");
    // Reported, though a drain this small may take under one clock tick.
    let per_message = run["server_us_per_message"].as_f64();
    assert!(per_message.is_some_and(|us| us >= 0.0), "{run}");

    let idle = scenario(&out, "idle", &["--fsync", "batch", "--uas", "200"]);
    let run = only_run(&idle);
    assert_eq!(run["uas"], 200, "{run}");
    assert_eq!(
        run["verified"], 200,
        "every idle UA still gets a push: {run}"
    );
    assert!(
        run["rss_bytes_per_idle_ua"].as_f64().unwrap() > 0.0,
        "{run}"
    );

    // Stopped cleanly, then killed: every UA notices, reconnects with its
    // UAID to the server started again on the same data dir and ports, and
    // then still gets its push.
    let restart = scenario(&out, "restart", &["--fsync", "batch", "--uas", "200"]);
    let runs = restart["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "one run per stop: {restart}");
    for run in runs {
        assert_eq!(run["uas"], 200, "{run}");
        assert_eq!(run["back"], 200, "every UA came back: {run}");
        assert_eq!(run["lost"], 0, "no UAID forgotten: {run}");
        assert_eq!(
            run["verified"], 200,
            "every UA still gets a push after the restart: {run}"
        );
        assert!(run["ready_s"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["attempts"].as_u64().unwrap() >= 200, "{run}");
        let timeline = run["uas_back_timeline"].as_array().expect("timeline");
        assert_eq!(timeline.last(), Some(&Value::from(200)), "{run}");
    }

    let _ = std::fs::remove_dir_all(&out);
}

/// `herald-bench cluster` (a fresh nine-node Redis Cluster per run, so it
/// runs beside the test above: no port of its own is fixed) delivers what
/// it counts and reads Redis's CPU and memory.
#[test]
fn the_cluster_scenario_delivers_what_it_counts() {
    let out = tempdir_named("cluster");
    let args = [
        "--uas",
        "30",
        "--pushers",
        "6",
        "--seconds",
        "1",
        "--peak",
        "400",
        "--memory-uas",
        "200",
    ];
    let results = scenario(&out, "cluster", &args);
    let runs = results["runs"].as_array().expect("runs");
    let (load, memory): (Vec<&Value>, Vec<&Value>) =
        runs.iter().partition(|run| run.get("delivered").is_some());
    // 1 node, 2 nodes split, 2 nodes crossing; then both placements paced.
    assert_eq!(load.len(), 5, "{results}");
    for run in &load {
        let accepted = run["accepted"].as_u64().unwrap();
        assert!(accepted > 0, "nothing accepted: {run}");
        assert_eq!(
            run["delivered"], accepted,
            "every accepted push arrives: {run}"
        );
        assert_eq!(run["refused"], 0, "{run}");
        assert_eq!(run["uas"], 30, "{run}");
        assert!(
            run["redis_us_per_notification"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        let commands = &run["redis_commands_per_notification"];
        assert!(
            commands["evalsha"]["calls"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        if run["offered_per_s"].as_f64().unwrap() > 0.0 {
            // 50 % of 400/s for one second.
            assert!((100..=220).contains(&accepted), "paced at 200/s: {run}");
        }
    }
    assert_eq!(memory.len(), 1, "{results}");
    let run = memory[0];
    assert_eq!(run["uas"], 200, "{run}");
    assert_eq!(
        run["verified"], 200,
        "every registered UA still gets a push: {run}"
    );
    assert!(
        run["redis_masters_bytes_per_ua"].as_f64().unwrap() > 0.0,
        "{run}"
    );
    assert!(
        run["redis_memory_usage_one_ua"].as_u64().unwrap() > 0,
        "{run}"
    );
    assert_eq!(
        results["derived"]["targets"].as_array().map(Vec::len),
        Some(3),
        "the issue's three targets: {results}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

fn tempdir() -> PathBuf {
    tempdir_named("all")
}

fn tempdir_named(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-bench-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
