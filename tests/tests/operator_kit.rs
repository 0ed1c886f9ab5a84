//! What an operator reads on the first day (issue 14): `--version` with the
//! commit, the metrics (AS requests by route and status, latency
//! histograms, build info, the process's memory and descriptors), the logs
//! (no colour codes off a terminal, JSON on request, an access line per AS
//! request at debug), `/about` per shard, and WAL replay progress.

use herald_tests::serde_json::Value;
use herald_tests::*;
use std::process::Command;

/// The commit `herald` should say it was built from: the checkout's, or
/// "unknown" outside a git checkout (tools/build.rs).
fn expected_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[test]
fn version_names_the_commit() {
    let output = Command::new(herald_bin())
        .arg("--version")
        .output()
        .expect("run herald --version");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let expected = format!(
        "herald {} (commit {})\n",
        env!("CARGO_PKG_VERSION"),
        expected_commit()
    );
    assert_eq!(text, expected, "rebuild the binary after a commit");
}

/// The value of one sample, by its name with labels, as `/metrics` prints it.
fn sample(samples: &[(String, f64)], name_with_labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(name, _)| name == name_with_labels)
        .map(|(_, value)| *value)
}

#[test]
fn metrics_count_as_requests_by_route_and_status_and_time_them() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_channel, endpoint) = ua.register_new();
    push_aes128gcm(&endpoint, b"counted", 60).assert_status(201, "a push");
    ua.recv_notification(DEADLINE);
    let bogus = format!("{}/wpush/v1/not-a-token", server.as_url());
    push_empty(&bogus, 60).assert_json_error(404);
    http("GET", &format!("{}/health", server.as_url()), &[], None).assert_status(200, "health");
    let requests = |route: &str, status: u16| {
        let name = format!("herald_as_requests_total{{route=\"{route}\",status=\"{status}\"}}");
        sample(&server.metrics(), &name).unwrap_or(0.0)
    };
    // Published once a second by each shard.
    wait_until(DEADLINE, "the AS requests are counted", || {
        requests("push_v1", 201) >= 1.0
            && requests("push_v1", 404) >= 1.0
            && requests("health", 200) >= 1.0
    });
    let samples = server.metrics();
    let count = |name: &str| sample(&samples, &format!("{name}{{shard=\"0\"}}")).unwrap_or(0.0);
    assert!(
        count("herald_as_answer_seconds_count") >= 3.0,
        "every AS answer is timed"
    );
    assert!(
        count("herald_wal_fsync_seconds_count") >= 1.0,
        "fsyncs are timed"
    );
    assert!(
        count("herald_delivery_seconds_count") >= 1.0,
        "the delivery to the connected UA is timed"
    );
    let build = format!(
        "herald_build_info{{version=\"{}\",commit=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        expected_commit()
    );
    assert_eq!(sample(&samples, &build), Some(1.0), "{build}");
    let resident = sample(&samples, "herald_process_resident_memory_bytes").unwrap_or(0.0);
    assert!(resident > 1e6, "RSS {resident}");
    // Descriptors: each UA socket is one more.
    let open_fds = || server.metric_named("herald_process_open_fds");
    let before = open_fds();
    let max_fds = server.metric_named("herald_process_max_fds");
    assert!(before > 0.0 && max_fds >= before, "{before} of {max_fds}");
    const MORE_SOCKETS: usize = 20;
    let sockets: Vec<WsClient> = (0..MORE_SOCKETS).map(|_| server.ua()).collect();
    wait_until(DEADLINE, "open descriptors count the new sockets", || {
        open_fds() >= before + MORE_SOCKETS as f64
    });
    drop(sockets);
}

/// The server's stderr log lines of its last start.
fn stderr_lines(server: &Server) -> Vec<String> {
    let logs = server.logs();
    let stderr = logs
        .split("----- herald stderr -----")
        .nth(1)
        .and_then(|rest| rest.split("----- end of herald logs -----").next())
        .unwrap_or_default();
    stderr
        .lines()
        .filter(|line| !line.starts_with("=====") && !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A server with `RUST_LOG` set and `extra` flags, after one push.
fn server_after_a_push(rust_log: &str, extra: &[&str]) -> Server {
    let mut options = ServerOptions::new().env("RUST_LOG", rust_log);
    for flag in extra {
        options = options.arg(flag);
    }
    let server = Server::start(options);
    let mut ua = server.ua_webpush();
    let (_channel, endpoint) = ua.register_new();
    push_aes128gcm(&endpoint, b"logged", 60).assert_status(201, "a push");
    ua.recv_notification(DEADLINE);
    server
}

#[test]
fn logs_are_plain_off_a_terminal_with_an_access_line_per_as_request_at_debug() {
    let server = server_after_a_push("debug", &[]);
    let access = |server: &Server| {
        stderr_lines(server)
            .into_iter()
            .filter(|line| line.contains("AS request") && line.contains("push_v1"))
            .collect::<Vec<_>>()
    };
    wait_until(DEADLINE, "the access line is written", || {
        !access(&server).is_empty()
    });
    let lines = stderr_lines(&server);
    assert!(
        lines.iter().all(|line| !line.contains('\u{1b}')),
        "no colour codes in a file: {lines:?}"
    );
    let line = &access(&server)[0];
    for part in [
        "DEBUG",
        "route=\"push_v1\"",
        "status=201",
        "method=POST",
        "took_us=",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(
        !line.contains("/wpush/"),
        "the path (its token) is not logged: {line}"
    );
    // At the default level, none.
    let quiet = server_after_a_push("info", &[]);
    let lines = stderr_lines(&quiet);
    assert!(
        !lines.iter().any(|line| line.contains("AS request")),
        "{lines:?}"
    );
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let server = server_after_a_push("debug", &["--log-format", "json"]);
    let objects = || -> Vec<Value> {
        stderr_lines(&server)
            .iter()
            .map(|line| {
                herald_tests::serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
            })
            .collect()
    };
    let is_push = |object: &&Value| {
        object["fields"]["message"] == "AS request" && object["fields"]["route"] == "push_v1"
    };
    wait_until(DEADLINE, "the push's access line is written", || {
        objects().iter().any(|object| is_push(&object))
    });
    let objects = objects();
    let access = objects.iter().find(is_push).expect("an access line");
    assert_eq!(access["level"], "DEBUG", "{access}");
    assert_eq!(access["fields"]["status"], 201, "{access}");
    assert_eq!(access["fields"]["method"], "POST", "{access}");
}

/// The cells of `/about`'s shard rows.
fn about_shard_rows(server: &Server) -> Vec<Vec<String>> {
    let page = http("GET", &format!("{}/about", server.admin_url()), &[], None);
    page.assert_status(200, "GET /about");
    let text = page.text();
    assert!(
        text.contains("<meta http-equiv=\"refresh\""),
        "the page reloads itself: {text}"
    );
    text.lines()
        .filter(|line| line.starts_with("<tr class=\"shard\">"))
        .map(|line| {
            line.split("</td>")
                .filter_map(|cell| cell.rsplit('>').next())
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn about_has_a_row_per_shard_with_last_minute_rates() {
    let server = Server::start(ServerOptions::new().shards(2));
    let rows = about_shard_rows(&server);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row[0], index.to_string(), "{row:?}");
        assert_eq!(row[1], "serving", "{row:?}");
    }
    let mut ua = server.ua_webpush();
    let (_channel, endpoint) = ua.register_new();
    const PUSHES: usize = 5;
    for _ in 0..PUSHES {
        push_empty(&endpoint, 60).assert_status(201, "a push");
        ua.recv_notification(DEADLINE);
    }
    // Columns: shard, state, connected, asleep, known, pending, in/s, out/s, WAL bytes.
    wait_until(DEADLINE, "a shard shows the UA and a rate in", || {
        about_shard_rows(&server).iter().any(|row| {
            let rate = |cell: usize| row[cell].parse::<f64>().unwrap_or(0.0);
            row[2] == "1" && rate(6) > 0.0 && rate(7) > 0.0
        })
    });
}

#[test]
fn wal_replay_progress_names_the_shard_and_the_percentage() {
    let options = ServerOptions::new()
        .fsync("never")
        .limit("notifications_per_channel_per_minute", 0)
        .env("RUST_LOG", "info");
    let mut server = Server::start(options);
    let mut ua = server.ua_webpush();
    let (_channel, endpoint) = ua.register_new();
    let uaid = ua.uaid();
    ua.close();
    // About 5.6 MB of stored messages: over the 4 MiB from which replay
    // reports its progress.
    const MESSAGES: usize = 1400;
    let body = random_bytes(4000);
    for _ in 0..MESSAGES {
        push_aes128gcm(&endpoint, &body, 600).assert_status(201, "a stored push");
    }
    server.restart();
    let logs = server.logs();
    // The banner starts both the stdout and the stderr of the second run.
    let second_start = logs
        .split("===== start #2 =====")
        .nth(2)
        .unwrap_or_default();
    let percents: Vec<u64> = second_start
        .lines()
        .filter(|line| line.contains("replaying the WAL"))
        .map(|line| {
            assert!(line.contains("wal{shard=0}"), "the shard is named: {line}");
            let after = line.split("percent=").nth(1).expect("a percentage");
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("a number")
        })
        .collect();
    assert!(percents.len() >= 5, "{percents:?}\n{logs}");
    assert!(
        percents.windows(2).all(|pair| pair[0] < pair[1]),
        "{percents:?}"
    );
    assert!(*percents.last().expect("some") <= 100, "{percents:?}");
    // And the replay was whole: the stored messages come.
    let mut ua = server.ua_resume(&uaid, true);
    ua.recv_notification(DEADLINE);
}
