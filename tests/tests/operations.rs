//! SPEC §2 command line and signals, §4.3 operations endpoints (health that
//! tells the truth, operator pages on the admin listener), and a first §7
//! durability check across restart / crash.

use herald_tests::serde_json::json;
use herald_tests::*;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const ADMIN_TOKEN: &str = "operations-admin-token";

/// `GET <base><path>` with optional headers.
fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http("GET", &format!("{base}{path}"), headers, None)
}

#[test]
fn health_is_200_json_object() {
    let server = Server::start_default();
    let r = http("GET", &format!("{}/health", server.as_url()), &[], None);
    r.assert_status(200, "GET /health");
    assert!(
        r.json().is_object(),
        "health body is a JSON object: {}",
        r.text()
    );
}

#[test]
fn readiness_and_liveness_are_200_on_a_healthy_server() {
    let server = Server::start(ServerOptions::new().shards(2));
    for base in [server.as_url(), server.admin_url()] {
        for path in ["/health", "/health/ready", "/health/live"] {
            let r = get(&base, path, &[]);
            r.assert_status(200, &format!("GET {base}{path}"));
            assert_eq!(r.json()["status"], "OK", "{base}{path}: {}", r.text());
        }
    }
}

/// Past 1.5 MiB no file of the server may grow: the WAL's first segment
/// holds its first MiB of zeros written ahead, and the write of the next
/// MiB fails (EFBIG, as on a full disk).
const FILE_SIZE_MAX_BYTES: u64 = 3 << 19;

#[test]
fn a_store_failure_makes_readiness_503_with_a_reason_while_liveness_stays_200() {
    let server = Server::start(ServerOptions::new().file_size_max(FILE_SIZE_MAX_BYTES));
    for base in [server.as_url(), server.admin_url()] {
        get(&base, "/health/ready", &[]).assert_status(200, "ready before the failure");
    }
    let mut ua = server.ua_webpush();
    let (_channel, endpoint) = ua.register_new();
    ua.close();
    // 4,000-byte messages, stored (the UA is away) until the WAL cannot grow:
    // 1,000 of them are more than twice the limit.
    let body = random_bytes(4000);
    let refused = (0..1000)
        .map(|_| push_aes128gcm(&endpoint, &body, 600))
        .find(|r| r.status != 201)
        .expect("every push was stored: the file size limit did not fail the WAL");
    refused.assert_json_error(503);
    for base in [server.as_url(), server.admin_url()] {
        wait_until(DEADLINE, &format!("{base}/health/ready turns 503"), || {
            get(&base, "/health/ready", &[]).status == 503
        });
        let r = get(&base, "/health", &[]);
        r.assert_status(503, "/health is readiness");
        let health = r.json();
        assert_eq!(health["status"], "UNAVAILABLE", "{health}");
        assert_eq!(health["store_failed"], json!([0]), "{health}");
        let reason = health["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("store failed on shard 0"),
            "the reason names the failure: {health}"
        );
        get(&base, "/health/live", &[]).assert_status(200, "alive after a store failure");
    }
    push_aes128gcm(&endpoint, b"after", 600).assert_json_error(503);
}

#[test]
fn operator_pages_are_served_on_the_admin_listener_without_a_token() {
    let server =
        Server::start(ServerOptions::new().top_raw("admin_token", &format!("{ADMIN_TOKEN:?}")));
    let metrics = get(&server.admin_url(), "/metrics", &[]);
    metrics.assert_status(200, "GET /metrics on the admin listener");
    assert!(
        parse_prometheus(&metrics.text())
            .iter()
            .any(|(name, _)| metric_name(name).starts_with("herald_")),
        "{}",
        metrics.text()
    );
    let about = get(&server.admin_url(), "/about", &[]);
    about.assert_status(200, "GET /about on the admin listener");
    assert!(about.text().contains("Herald"), "{}", about.text());
    get(&server.admin_url(), "/v1/broadcasts/x", &[]).assert_json_error(404);
}

#[test]
fn public_listener_serves_operator_pages_only_with_the_admin_token() {
    let server =
        Server::start(ServerOptions::new().top_raw("admin_token", &format!("{ADMIN_TOKEN:?}")));
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for path in ["/metrics", "/about"] {
        let anonymous = get(&server.as_url(), path, &[]);
        anonymous.assert_json_error(401);
        assert_eq!(anonymous.header("WWW-Authenticate"), Some("Bearer"));
        assert!(
            !anonymous.text().contains("herald_"),
            "nothing of the page leaks: {}",
            anonymous.text()
        );
        get(&server.as_url(), path, &[("Authorization", "Bearer wrong")]).assert_json_error(401);
        get(&server.as_url(), path, &[("Authorization", &bearer)])
            .assert_status(200, &format!("GET {path} with the admin token"));
    }
    get(&server.as_url(), "/health", &[]).assert_status(200, "/health stays public");

    let no_token = Server::start_default();
    for path in ["/metrics", "/about"] {
        get(&no_token.as_url(), path, &[("Authorization", &bearer)]).assert_json_error(403);
    }
}

#[test]
fn about_is_html_mentioning_herald() {
    let server = Server::start_default();
    let r = http("GET", &format!("{}/about", server.admin_url()), &[], None);
    r.assert_status(200, "GET /about");
    let ct = r.header("Content-Type").unwrap_or("");
    assert!(
        ct.starts_with("text/html"),
        "Content-Type text/html: {ct:?}"
    );
    assert!(
        r.text().contains("Herald"),
        "about page mentions Herald: {}",
        r.text()
    );
}

#[test]
fn metrics_are_prometheus_text_and_notification_counter_rises() {
    let server = Server::start_default();
    let r = http("GET", &format!("{}/metrics", server.admin_url()), &[], None);
    r.assert_status(200, "GET /metrics");
    let text = r.text();
    let samples = parse_prometheus(&text);
    assert!(
        samples
            .iter()
            .any(|(n, _)| metric_name(n).starts_with("herald_")),
        "metrics named herald_*: {text}"
    );
    assert!(
        samples
            .iter()
            .any(|(n, _)| metric_name(n).contains("notifications")),
        "a metric named *notifications*: {text}"
    );
    let before = server.metric_sum("notifications");
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"count-me", 60).assert_status(201, "POST");
    ua.recv_notification(DEADLINE);
    wait_until(
        DEADLINE,
        "a *notifications* metric rises after a push",
        || server.metric_sum("notifications") > before,
    );
}

#[test]
fn sigterm_closes_ua_sockets_1001_and_exits_0() {
    let mut server = Server::start_default();
    let mut a = server.ua_webpush();
    let mut b = server.ua_simplepush();
    server.signal(libc::SIGTERM);
    assert_eq!(
        a.expect_close_with_deadline(DEADLINE),
        1001,
        "UA closed with 1001 on SIGTERM"
    );
    assert_eq!(
        b.expect_close_with_deadline(DEADLINE),
        1001,
        "UA closed with 1001 on SIGTERM"
    );
    let st = server
        .wait_exit(Duration::from_secs(10))
        .expect("herald exits after SIGTERM");
    assert_eq!(st.code(), Some(0), "exit code 0 after SIGTERM: {st}");
}

#[test]
fn startup_prints_listeners_and_data_dir() {
    let server = Server::start_default();
    let logs = server.logs();
    assert!(
        logs.contains(&server.ua_addr()),
        "startup names the UA listener {}:\n{logs}",
        server.ua_addr()
    );
    assert!(
        logs.contains(&server.as_addr()),
        "startup names the AS listener {}:\n{logs}",
        server.as_addr()
    );
    let dd = server.data_dir().display().to_string();
    assert!(
        logs.contains(&dd),
        "startup names the data dir {dd}:\n{logs}"
    );
}

/// `herald serve` with one shard on the given data dir and listeners, run
/// until it exits (each caller expects it to refuse to start).
fn serve_to_exit(data: &str, ua: &str, asl: &str, admin: &str) -> (i32, String) {
    run_to_exit(&[
        "serve",
        "--data-dir",
        data,
        "--ua-listen",
        ua,
        "--as-listen",
        asl,
        "--admin-listen",
        admin,
        "--shards",
        "1",
    ])
}

fn run_to_exit(args: &[&str]) -> (i32, String) {
    let dir = TempDir::new("cmd");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut g = spawn_herald(&args, &[], dir.path());
    let st = g
        .wait(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("herald {args:?} did not exit within 10 s"));
    (st.code().unwrap_or(-1), g.output())
}

#[test]
fn help_and_version() {
    let (code, out) = run_to_exit(&["--help"]);
    assert_eq!(code, 0, "--help exits 0: {out}");
    assert!(out.contains("serve"), "--help lists serve: {out}");
    let (code, out) = run_to_exit(&["--version"]);
    assert_eq!(code, 0, "--version exits 0: {out}");
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version: {out}"
    );
}

#[test]
fn bad_flags_exit_nonzero_with_a_message() {
    let dir = TempDir::new("badflag");
    let data = dir.path().join("data").display().to_string();
    let ua = format!("127.0.0.1:{}", free_port());
    let asl = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    for extra in [
        vec!["--no-such-flag"],
        vec!["--fsync", "sometimes"],
        vec!["--shards", "many"],
    ] {
        let mut args = vec![
            "serve",
            "--data-dir",
            &data,
            "--ua-listen",
            &ua,
            "--as-listen",
            &asl,
            "--admin-listen",
            &admin,
        ];
        args.extend(extra.iter());
        let (code, out) = run_to_exit(&args);
        assert_ne!(code, 0, "herald {args:?} must fail");
        assert!(!out.trim().is_empty(), "a message for {args:?}");
    }
}

#[test]
fn port_in_use_exits_nonzero() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let dir = TempDir::new("busy");
    let data = dir.path().join("data").display().to_string();
    let asl = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let (code, out) = serve_to_exit(&data, &busy, &asl, &admin);
    assert_ne!(code, 0, "UA port in use: non-zero exit: {out}");
    assert!(!out.trim().is_empty());
    let ua = format!("127.0.0.1:{}", free_port());
    let (code, out) = serve_to_exit(&data, &ua, &busy, &admin);
    assert_ne!(code, 0, "AS port in use: non-zero exit: {out}");
    let asl = format!("127.0.0.1:{}", free_port());
    let (code, out) = serve_to_exit(&data, &ua, &asl, &busy);
    assert_ne!(code, 0, "admin port in use: non-zero exit: {out}");
    assert!(out.contains(&busy), "the message names the port: {out}");
    drop(held);
}

#[test]
fn unusable_data_dir_exits_nonzero() {
    let dir = TempDir::new("baddata");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a dir").unwrap();
    let data = file.display().to_string();
    let ua = format!("127.0.0.1:{}", free_port());
    let asl = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let (code, out) = serve_to_exit(&data, &ua, &asl, &admin);
    assert_ne!(code, 0, "data dir that is a file: non-zero exit: {out}");
    assert!(!out.trim().is_empty());
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let dir = TempDir::new("precedence");
    let data = dir.path().join("data").display().to_string();
    let ua = format!("127.0.0.1:{}", free_port());
    let as_file = format!("127.0.0.1:{}", free_port());
    let as_env = format!("127.0.0.1:{}", free_port());
    let as_flag = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("herald.toml");
    std::fs::write(
        &cfg,
        format!(
            "ua_listen = \"{ua}\"\nas_listen = \"{as_file}\"\nadmin_listen = \"{admin}\"\ndata_dir = {data:?}\nshards = 1\n"
        ),
    )
    .unwrap();
    let cfg_s = cfg.display().to_string();

    // env wins over the file
    {
        let args: Vec<String> = ["serve", "--config", &cfg_s]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut g = spawn_herald(&args, &[("HERALD_AS_LISTEN", &as_env)], dir.path());
        wait_health(&as_env, &mut g.child, READY_DEADLINE)
            .unwrap_or_else(|e| panic!("HERALD_AS_LISTEN wins over the file: {e}\n{}", g.output()));
        assert!(
            TcpStream::connect(&as_file).is_err(),
            "the file's as_listen is not used"
        );
        g.child.kill().ok();
        g.child.wait().ok();
    }
    // flag wins over env
    {
        let args: Vec<String> = ["serve", "--config", &cfg_s, "--as-listen", &as_flag]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut g = spawn_herald(&args, &[("HERALD_AS_LISTEN", &as_env)], dir.path());
        wait_health(&as_flag, &mut g.child, READY_DEADLINE).unwrap_or_else(|e| {
            panic!(
                "--as-listen wins over HERALD_AS_LISTEN: {e}\n{}",
                g.output()
            )
        });
        assert!(
            TcpStream::connect(&as_env).is_err(),
            "the env as_listen is not used"
        );
    }
}

#[test]
fn registrations_and_pending_messages_survive_restart() {
    let mut server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    ua.close();
    push_aes128gcm(&e, b"before-restart", 60).assert_status(201, "POST");
    server.restart();
    let mut ua = server.ua_resume(&uaid, true);
    let n = ua.recv_notification(DEADLINE);
    assert_eq!(notification_data(&n), b"before-restart");
    assert_eq!(ua.register(&c), e, "same endpoint after restart");
    push_aes128gcm(&e, b"after-restart", 60).assert_status(201, "POST after restart");
    assert_eq!(
        notification_data(&ua.recv_notification(DEADLINE)),
        b"after-restart"
    );
}

#[test]
fn acknowledged_push_survives_kill_9() {
    let mut server = Server::start(ServerOptions::new().shards(2));
    let mut uas = vec![];
    for _ in 0..4 {
        let mut ua = server.ua_webpush();
        let uaid = ua.uaid();
        let (_c, e) = ua.register_new();
        ua.close();
        uas.push((uaid, e));
    }
    for (i, (_u, e)) in uas.iter().enumerate() {
        push_aes128gcm(e, format!("crash-{i}").as_bytes(), 60).assert_status(201, "POST");
    }
    server.kill9();
    server.restart();
    for (i, (u, _e)) in uas.iter().enumerate() {
        let mut ua = server.ua_resume(u, true);
        let n = ua.recv_notification(DEADLINE);
        assert_eq!(notification_data(&n), format!("crash-{i}").as_bytes());
    }
}
