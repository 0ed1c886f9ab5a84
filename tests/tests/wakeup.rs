//! SPEC §5 UDP wakeup, black-box against the built binary: a UA registered
//! for wakeup is put to sleep (4774), a notification makes Herald (or
//! `herald wakeup-proxy`) send a datagram to the UA's UDP port, the UA
//! reconnects and gets the message. Coalescing, retries with backoff and the
//! proxy's input checks are watched through the UDP socket and /metrics. The
//! proxy is closed (SPEC §5): the secret, `--allow`, a rate per target, and
//! no way to start it open.
//!
//! Every wait is an event with a deadline: a datagram read with a timeout, a
//! close frame, a metric reaching a value.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use herald_tests::serde_json::json;
use herald_tests::*;

const PAYLOAD: &[u8] = b"herald-wakeup";
/// Short idle time so UAs are put to sleep quickly.
const IDLE_MS: u64 = 300;

/// The UA's wakeup port: a UDP socket on loopback (v4 or v6).
fn udp_listener(ip: &str) -> Option<UdpSocket> {
    UdpSocket::bind((ip, 0)).ok()
}

/// Next datagram within `within`, if any.
fn recv_datagram(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => return Some(buf[..n].to_vec()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => panic!("udp recv: {e}"),
        }
    }
}

/// Hello with wakeup data (SPEC §3.1, seed 001); asserts status 201.
fn wakeup_hello(ua: &mut WsClient, uaid: Option<&str>, socket: &UdpSocket) -> String {
    let addr = socket.local_addr().unwrap();
    let mut hello = json!({
        "messageType": "hello",
        "wakeup_hostport": {"ip": addr.ip().to_string(), "port": addr.port()},
        "mobilenetwork": {"mcc": "214", "mnc": "07", "netid": "test-cell"},
    });
    if let Some(uaid) = uaid {
        hello["uaid"] = json!(uaid);
    }
    let reply = ua.hello_raw(&hello);
    assert_eq!(
        reply["status"], 201,
        "hello with a routed network → 201: {reply}"
    );
    let got = reply["uaid"].as_str().expect("uaid").to_string();
    if let Some(uaid) = uaid {
        assert_eq!(got, uaid, "a known UAID is kept on reconnect");
    }
    got
}

fn wakeup_server(route: &str, extra: &[(&str, u64)]) -> Server {
    let mut opts = ServerOptions::new()
        .shards(2)
        .wakeup_routes(&[route])
        .limit("wakeup_idle_ms", IDLE_MS);
    for (key, value) in extra {
        opts = opts.limit(key, value);
    }
    Server::start(opts)
}

/// A UA that registered one channel and has been put to sleep with 4774.
/// Returns (uaid, channelID, endpoint).
fn sleeping_ua(server: &Server, socket: &UdpSocket) -> (String, String, String) {
    let mut ua = server.ua();
    let uaid = wakeup_hello(&mut ua, None, socket);
    let (channel, endpoint) = ua.register_new();
    let code = ua.expect_close_with_deadline(Duration::from_millis(IDLE_MS) + DEADLINE);
    assert_eq!(code, 4774, "an idle wakeup UA is closed with 4774");
    (uaid, channel, endpoint)
}

fn metric_with(server: &Server, name: &str, label: &str) -> f64 {
    server
        .metrics()
        .iter()
        .filter(|(n, _)| metric_name(n) == name && n.contains(label))
        .map(|(_, v)| *v)
        .sum()
}

/// Reconnects `uaid` with wakeup data and returns the versions it is sent.
fn reconnect_and_collect(server: &Server, uaid: &str, socket: &UdpSocket, channel: &str) -> u64 {
    let mut ua = server.ua();
    wakeup_hello(&mut ua, Some(uaid), socket);
    let n = ua.recv_notification(DEADLINE);
    let updates = sp_updates(std::slice::from_ref(&n));
    let version = updates
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(channel))
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or_else(|| panic!("notification for our channel: {n}"));
    ua.ack(channel, json!(version));
    version
}

#[test]
fn udp_wakeup_wakes_a_sleeping_ua_which_gets_its_message() {
    let server = wakeup_server("214-07=udp", &[("wakeup_retry_initial_ms", 10_000)]);
    let socket = udp_listener("127.0.0.1").unwrap();
    let (uaid, channel, endpoint) = sleeping_ua(&server, &socket);

    put_version(&endpoint, 1).assert_status(200, "PUT to a sleeping UA");
    let datagram = recv_datagram(&socket, DEADLINE).expect("a wakeup datagram within the deadline");
    assert_eq!(datagram, PAYLOAD);

    // A second notification while that wakeup is pending is coalesced: no
    // second datagram (the retry is 10 s away), one more coalesced request.
    put_version(&endpoint, 2).assert_status(200, "second PUT while asleep");
    wait_until(DEADLINE, "wakeups_coalesced ≥ 1", || {
        server.metric_sum("herald_wakeups_coalesced") >= 1.0
    });
    assert!(
        recv_datagram(&socket, Duration::from_millis(500)).is_none(),
        "no second datagram while the first is in flight"
    );

    // The UA wakes, reconnects with its UAID, and gets the newest version.
    assert_eq!(reconnect_and_collect(&server, &uaid, &socket, &channel), 2);
    wait_until(
        DEADLINE,
        "reconnect latency recorded, nothing pending",
        || {
            server.metric_sum("herald_wakeup_reconnect_seconds_count") >= 1.0
                && server.metric_sum("herald_wakeups_pending") == 0.0
        },
    );
    assert!(metric_with(&server, "herald_wakeups_sent_total", "udp") >= 1.0);
    assert_eq!(server.metric_sum("herald_wakeups_retried"), 0.0);
}

#[test]
fn unanswered_wakeup_is_resent_with_backoff_then_given_up() {
    let server = wakeup_server(
        "214-07=udp",
        &[("wakeup_retry_initial_ms", 200), ("wakeup_retries_max", 2)],
    );
    let socket = udp_listener("127.0.0.1").unwrap();
    let (_uaid, _channel, endpoint) = sleeping_ua(&server, &socket);
    put_version(&endpoint, 1).assert_status(200, "PUT to a sleeping UA");
    let mut arrivals = vec![];
    for attempt in 0..3 {
        recv_datagram(&socket, DEADLINE)
            .unwrap_or_else(|| panic!("datagram {attempt} (first + 2 re-sends)"));
        arrivals.push(Instant::now());
    }
    let first_gap = arrivals[1] - arrivals[0];
    let second_gap = arrivals[2] - arrivals[1];
    assert!(
        first_gap >= Duration::from_millis(150),
        "first re-send after ~200 ms, got {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(350),
        "backoff doubles (~400 ms), got {second_gap:?}"
    );
    // retries_max = 2: after the third datagram and its 800 ms wait, it stops.
    assert!(
        recv_datagram(&socket, Duration::from_millis(1500)).is_none(),
        "no datagram beyond retries_max"
    );
    wait_until(DEADLINE, "retried = 2 and gave_up = 1", || {
        server.metric_sum("herald_wakeups_retried") == 2.0
            && metric_with(&server, "herald_wakeups_failed_total", "gave_up") == 1.0
    });
}

#[test]
fn ipv6_wakeup_target_gets_its_datagram() {
    let Some(socket) = udp_listener("::1") else {
        skip_or_fail("ipv6", "no IPv6 loopback (::1) here");
        return;
    };
    let server = wakeup_server("214-07=udp", &[("wakeup_retry_initial_ms", 10_000)]);
    let (uaid, channel, endpoint) = sleeping_ua(&server, &socket);
    put_version(&endpoint, 7).assert_status(200, "PUT to a sleeping IPv6 UA");
    assert_eq!(recv_datagram(&socket, DEADLINE).as_deref(), Some(PAYLOAD));
    assert_eq!(reconnect_and_collect(&server, &uaid, &socket, &channel), 7);
}

/// The proxies' shared secret (SPEC §5), as its file holds it.
const SECRET: &str = "wakeup-proxy-secret-for-tests";

/// Writes `secret` into `dir` (a trailing newline, as editors leave one:
/// the file's content is trimmed) and returns the file's path.
fn secret_file(dir: &TempDir, name: &str, secret: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write secret file");
    path.display().to_string()
}

/// `herald wakeup-proxy` on a free loopback port with the test secret,
/// targets in `allow`, and `extra` flags; killed on drop.
fn start_proxy(dir: &TempDir, allow: &str, extra: &[&str]) -> (ChildGuard, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = vec![
        "wakeup-proxy".into(),
        "--listen".into(),
        addr.clone(),
        "--allow".into(),
        allow.into(),
        "--secret-file".into(),
        secret_file(dir, "proxy-secret", SECRET),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let mut proxy = spawn_herald(&args, &[], dir.path());
    if let Err(e) = wait_tcp(&addr, DEADLINE) {
        let status = proxy.wait(Duration::from_millis(10));
        panic!(
            "wakeup proxy did not listen ({e}; {status:?}): {}",
            proxy.output()
        );
    }
    (proxy, addr)
}

/// A server whose 214-07 route goes through the proxy at `proxy_addr`,
/// sending it `secret`.
fn server_via_proxy(dir: &TempDir, proxy_addr: &str, secret: &str) -> Server {
    let secret_path = secret_file(dir, "herald-secret", secret);
    Server::start(
        ServerOptions::new()
            .shards(2)
            .wakeup_routes(&[&format!("214-07=http://{proxy_addr}")])
            .top_raw("wakeup_proxy_secret_file", &format!("{secret_path:?}"))
            .limit("wakeup_idle_ms", IDLE_MS)
            .limit("wakeup_retry_initial_ms", 10_000),
    )
}

#[test]
fn wakeup_through_a_wakeup_proxy() {
    let dir = TempDir::new("wakeup-proxy");
    let (_proxy, proxy_addr) = start_proxy(&dir, "127.0.0.0/8", &[]);
    let server = server_via_proxy(&dir, &proxy_addr, SECRET);
    let socket = udp_listener("127.0.0.1").unwrap();
    let (uaid, channel, endpoint) = sleeping_ua(&server, &socket);
    put_version(&endpoint, 3).assert_status(200, "PUT to a sleeping UA behind a proxy");
    assert_eq!(
        recv_datagram(&socket, DEADLINE).as_deref(),
        Some(PAYLOAD),
        "the proxy relays the wakeup as a datagram: Herald sent the secret"
    );
    put_version(&endpoint, 4).assert_status(200, "second PUT while asleep");
    wait_until(DEADLINE, "coalesced and one proxy call answered", || {
        server.metric_sum("herald_wakeups_coalesced") >= 1.0
            && metric_with(&server, "herald_wakeups_sent_total", "proxy") == 1.0
    });
    assert_eq!(reconnect_and_collect(&server, &uaid, &socket, &channel), 4);
}

#[test]
fn a_herald_with_the_wrong_secret_is_refused_and_no_datagram_leaves() {
    let dir = TempDir::new("wakeup-proxy-wrong");
    let (_proxy, proxy_addr) = start_proxy(&dir, "127.0.0.0/8", &[]);
    let server = server_via_proxy(&dir, &proxy_addr, "not-the-proxys-secret");
    let socket = udp_listener("127.0.0.1").unwrap();
    let (_uaid, _channel, endpoint) = sleeping_ua(&server, &socket);
    put_version(&endpoint, 1).assert_status(200, "the message is stored all the same");
    wait_until(DEADLINE, "the proxy's refusal is counted", || {
        metric_with(&server, "herald_wakeups_failed_total", "proxy_status") >= 1.0
    });
    assert!(
        recv_datagram(&socket, Duration::from_millis(300)).is_none(),
        "no datagram without the secret"
    );
}

/// A wakeup call as Herald makes it, with `authorization` (if any).
fn post_wakeup(url: &str, authorization: Option<&str>, ip: &str, port: u16) -> HttpResponse {
    let body = json!({"ip": ip, "port": port, "mcc": "214", "mnc": "07", "netid": "x"});
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(authorization) = authorization {
        headers.push(("Authorization", authorization));
    }
    http("POST", url, &headers, Some(body.to_string().as_bytes()))
}

#[test]
fn wakeup_proxy_wants_the_secret_before_anything() {
    let dir = TempDir::new("wakeup-proxy-secret");
    let (_proxy, addr) = start_proxy(&dir, "127.0.0.1/32", &[]);
    let url = format!("http://{addr}/wakeup");
    let socket = udp_listener("127.0.0.1").unwrap();
    let port = socket.local_addr().unwrap().port();
    let wrong = format!("Bearer {SECRET}x");
    let basic = format!("Basic {SECRET}");
    for authorization in [
        None,
        Some(wrong.as_str()),
        Some(basic.as_str()),
        Some("Bearer "),
    ] {
        let r = post_wakeup(&url, authorization, "127.0.0.1", port);
        assert_eq!(r.status, 401, "{authorization:?}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{authorization:?}"
        );
        assert!(r.json()["message"].is_string(), "JSON reason: {}", r.text());
    }
    // Nothing else is answered to a stranger, not even which routes exist.
    let r = http("GET", &format!("http://{addr}/elsewhere"), &[], None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        recv_datagram(&socket, Duration::from_millis(300)).is_none(),
        "nothing is sent without the secret"
    );
    let bearer = format!("Bearer {SECRET}");
    let r = post_wakeup(&url, Some(&bearer), "127.0.0.1", port);
    assert_eq!(r.status, 200, "with the secret: {}", r.text());
    assert_eq!(recv_datagram(&socket, DEADLINE).as_deref(), Some(PAYLOAD));
}

#[test]
fn wakeup_proxy_sends_only_inside_allow_and_at_its_rate_per_target() {
    let dir = TempDir::new("wakeup-proxy-allow");
    let (_proxy, addr) = start_proxy(
        &dir,
        "127.0.0.1/32,127.0.0.3/32",
        &["--target-rate", "1", "--target-burst", "2"],
    );
    let url = format!("http://{addr}/wakeup");
    let bearer = format!("Bearer {SECRET}");
    let outside = udp_listener("127.0.0.2").expect("a UDP socket on 127.0.0.2");
    let outside_port = outside.local_addr().unwrap().port();
    let r = post_wakeup(&url, Some(&bearer), "127.0.0.2", outside_port);
    assert_eq!(r.status, 403, "a target outside --allow: {}", r.text());
    assert!(r.json()["message"].is_string(), "JSON reason: {}", r.text());
    assert!(
        recv_datagram(&outside, Duration::from_millis(300)).is_none(),
        "no datagram outside --allow"
    );

    let (first, second) = (
        udp_listener("127.0.0.1").unwrap(),
        udp_listener("127.0.0.1").unwrap(),
    );
    let port = |socket: &UdpSocket| socket.local_addr().unwrap().port();
    for socket in [&first, &second] {
        let r = post_wakeup(&url, Some(&bearer), "127.0.0.1", port(socket));
        assert_eq!(r.status, 200, "within the target's burst: {}", r.text());
        assert_eq!(recv_datagram(socket, DEADLINE).as_deref(), Some(PAYLOAD));
    }
    // The rate is per address, whatever the port.
    let r = post_wakeup(&url, Some(&bearer), "127.0.0.1", port(&first));
    assert_eq!(r.status, 429, "over the target's rate: {}", r.text());
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After on a 429: {}", r.text()));
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(recv_datagram(&first, Duration::from_millis(300)).is_none());
    // Another address inside --allow has its own rate.
    let other = udp_listener("127.0.0.3").expect("a UDP socket on 127.0.0.3");
    let r = post_wakeup(&url, Some(&bearer), "127.0.0.3", port(&other));
    assert_eq!(r.status, 200, "another target: {}", r.text());
    assert_eq!(recv_datagram(&other, DEADLINE).as_deref(), Some(PAYLOAD));
}

#[test]
fn wakeup_proxy_checks_its_input() {
    let dir = TempDir::new("wakeup-proxy-input");
    let (_proxy, addr) = start_proxy(&dir, "127.0.0.0/8", &["--rate", "1"]);
    let url = format!("http://{addr}/wakeup");
    let socket = udp_listener("127.0.0.1").unwrap();
    let port = socket.local_addr().unwrap().port();
    let bearer = format!("Bearer {SECRET}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    let post = |body: &str| http("POST", &url, &headers, Some(body.as_bytes()));
    let bad = [
        "{not json".to_string(),
        "[1,2]".to_string(),
        json!({"ip": "999.1.1.1", "port": port, "mcc": "214", "mnc": "07"}).to_string(),
        json!({"ip": "127.0.0.1", "port": 0, "mcc": "214", "mnc": "07"}).to_string(),
        json!({"ip": "127.0.0.1", "port": 65536, "mcc": "214", "mnc": "07"}).to_string(),
        json!({"ip": "127.0.0.1", "port": port, "mcc": "21", "mnc": "07"}).to_string(),
        json!({"ip": "127.0.0.1", "port": port, "mcc": "214", "mnc": "7"}).to_string(),
        json!({"port": port, "mcc": "214", "mnc": "07"}).to_string(),
    ];
    for body in &bad {
        let r = post(body);
        assert_eq!(r.status, 400, "{body} → 400, got {} {}", r.status, r.text());
        assert!(r.json()["message"].is_string(), "JSON reason: {}", r.text());
    }
    let r = http("GET", &url, &headers[1..], None);
    assert_eq!(r.status, 405, "GET → 405: {}", r.text());
    let r = post(&"x".repeat(5000));
    assert_eq!(r.status, 413, "oversized body → 413: {}", r.text());
    assert!(
        recv_datagram(&socket, Duration::from_millis(300)).is_none(),
        "nothing is sent for a refused request"
    );

    let good = json!({"ip": "127.0.0.1", "port": port, "mcc": "214", "mnc": "07", "netid": "x"})
        .to_string();
    let r = post(&good);
    assert_eq!(r.status, 200, "valid request → 200: {}", r.text());
    assert_eq!(recv_datagram(&socket, DEADLINE).as_deref(), Some(PAYLOAD));
    // --rate 1: the bucket holds one token, just spent.
    let r = post(&good);
    assert_eq!(r.status, 429, "over --rate → 429: {}", r.text());
    assert!(r.header("retry-after").is_some(), "{}", r.text());
}

/// Runs `herald <args>` to its exit: (exit code, output).
fn run_to_exit(dir: &TempDir, args: &[String]) -> (i32, String) {
    let mut child = spawn_herald(args, &[], dir.path());
    let status = child
        .wait(DEADLINE)
        .unwrap_or_else(|| panic!("herald {args:?} did not exit: {}", child.output()));
    (status.code().unwrap_or(-1), child.output())
}

#[test]
fn a_wakeup_proxy_cannot_be_started_open() {
    let dir = TempDir::new("wakeup-proxy-open");
    let secret = secret_file(&dir, "secret", SECRET);
    let empty = secret_file(&dir, "empty", "");
    let listen = format!("127.0.0.1:{}", free_port());
    let proxy = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["wakeup-proxy".into(), "--listen".into(), listen.clone()];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        run_to_exit(&dir, &args)
    };
    for (extra, says) in [
        (vec!["--secret-file", &secret], "--allow"),
        (
            vec!["--allow", "0.0.0.0/0", "--secret-file", &secret],
            "every address",
        ),
        (
            vec!["--allow", "10.0.0.0/8,::/0", "--secret-file", &secret],
            "every address",
        ),
        (
            vec!["--allow", "10.0.0.0/40", "--secret-file", &secret],
            "--allow",
        ),
        (vec!["--allow", "10.0.0.0/8"], "--secret-file"),
        (
            vec!["--allow", "10.0.0.0/8", "--secret-file", &empty],
            "is empty",
        ),
        (
            vec![
                "--allow",
                "10.0.0.0/8",
                "--secret-file",
                "/nonexistent/secret",
            ],
            "cannot read secret file",
        ),
    ] {
        let (code, output) = proxy(&extra);
        assert_ne!(code, 0, "{extra:?} must not start: {output}");
        assert!(output.contains(says), "{extra:?}: {output}");
    }
}

#[test]
fn herald_refuses_a_proxy_route_it_cannot_serve_at_start_up() {
    let dir = TempDir::new("wakeup-route-refused");
    let secret = secret_file(&dir, "secret", SECRET);
    let serve = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--ua-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--as-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        run_to_exit(&dir, &args)
    };
    let https = [
        "--wakeup-route",
        "214-07=https://10.0.0.1:8090",
        "--wakeup-proxy-secret-file",
        &secret,
    ];
    let (code, output) = serve(&https);
    assert_ne!(code, 0, "{output}");
    assert!(
        output.contains("https:// wakeup proxies are not supported"),
        "{output}"
    );
    let (code, output) = serve(&["--wakeup-route", "214-07=http://10.0.0.1:8090"]);
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("wakeup_proxy_secret_file"), "{output}");
    assert!(
        !dir.path().join("data").exists(),
        "a refused configuration touches no data dir"
    );
}
