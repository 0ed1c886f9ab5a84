//! Built-in TLS (`--tls-cert`, `--tls-key`): `wss://` on the UA listener,
//! `https://` on the AS listener with ALPN (`h2`, `http/1.1`), SIGHUP
//! reloading the certificate without dropping connections, and a clear
//! refusal to start on files that do not load. The CA and certificates are
//! made at test time. Pushes go through curl, one request per run (Debian
//! 12's curl 7.88 mishandles reused prior-knowledge connections; ALPN h2
//! per run is fine).

use herald_tests::*;

const TTL: (&str, &str) = ("TTL", "60");
const AES128GCM: (&str, &str) = ("Content-Encoding", "aes128gcm");

fn tls_server(ca: &TestCa, cert: &ServerCert, shards: usize) -> Server {
    Server::start(ServerOptions::new().shards(shards).tls(cert, ca))
}

#[test]
fn wss_hello_register_and_notifications_over_https_h1_and_h2() {
    let ca = TestCa::new();
    let cert = ca.issue("server");
    let server = tls_server(&ca, &cert, 1);
    let mut ua = server.ua_webpush();
    assert_eq!(ua.peer_certificate(), Some(cert.der.clone()));
    let (channel, endpoint) = ua.register_new();
    assert!(
        endpoint.starts_with("https://"),
        "endpoints are https:// by default with TLS: {endpoint}"
    );
    for (http2, version) in [(false, "1.1"), (true, "2")] {
        let body = format!("over HTTP/{version}");
        let answer = curl(
            &ca.ca_pem(),
            http2,
            "POST",
            &endpoint,
            &[TTL, AES128GCM],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 201, "push over HTTP/{version}: {answer:?}");
        assert_eq!(answer.http_version, version, "ALPN chose it: {answer:?}");
        let n = ua.recv_notification(DEADLINE);
        assert!(same_channel(&n["channelID"], &channel), "{n}");
        assert_eq!(notification_data(&n), body.as_bytes());
        ua.ack_notification(&n);
    }
}

#[test]
fn wss_sockets_handed_between_shards_keep_their_tls_session() {
    let ca = TestCa::new();
    let cert = ca.issue("server");
    let server = tls_server(&ca, &cert, 2);
    // Fresh UAIDs land on either shard; reconnecting, a socket the kernel
    // gives the other shard is handed over with its session.
    let uas: Vec<(String, String, String)> = (0..12)
        .map(|_| {
            let mut ua = server.ua_webpush();
            let uaid = ua.uaid();
            let (channel, endpoint) = ua.register_new();
            ua.close();
            (uaid, channel, endpoint)
        })
        .collect();
    let mut sockets = Vec::new();
    for (i, (uaid, channel, endpoint)) in uas.iter().enumerate() {
        let mut ua = server.ua_resume(uaid, true);
        let body = format!("after hand-off {i}");
        let answer = curl(
            &ca.ca_pem(),
            false,
            "POST",
            endpoint,
            &[TTL, AES128GCM],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 201, "{answer:?}");
        let n = ua.recv_notification(DEADLINE);
        assert!(same_channel(&n["channelID"], channel), "UA {i}: {n}");
        assert_eq!(notification_data(&n), body.as_bytes(), "UA {i}");
        ua.ack_notification(&n);
        sockets.push(ua);
    }
    // Both directions of every session still work: a ping the UA sends and
    // the answer to it cross the same TLS session.
    for (i, ua) in sockets.iter_mut().enumerate() {
        ua.send_json(&serde_json::json!({}));
        assert_eq!(
            ua.recv_json_with_deadline(DEADLINE),
            serde_json::json!({}),
            "UA {i}"
        );
    }
    server.assert_hand_offs();
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_connections() {
    let ca = TestCa::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    let broken = ca.issue("broken");
    let server = tls_server(&ca, &first, 1);
    let client = ca.client_config();
    let mut ua = server.ua_webpush();
    let (channel, endpoint) = ua.register_new();
    assert_eq!(ua.peer_certificate(), Some(first.der.clone()));

    // The operator renews the files in place, then signals.
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    server.signal(libc::SIGHUP);
    wait_until(
        DEADLINE,
        "the UA listener serving the new certificate",
        || served_certificate(&server.ua_addr(), client.clone()).ok() == Some(second.der.clone()),
    );
    assert_eq!(
        served_certificate(&server.as_addr(), client.clone()),
        Ok(second.der.clone()),
        "the AS listener reloads with the UA listener"
    );

    // The socket opened before the reload is still open, on its session.
    let answer = curl(
        &ca.ca_pem(),
        true,
        "POST",
        &endpoint,
        &[TTL, AES128GCM],
        b"kept",
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &channel), "{n}");
    assert_eq!(notification_data(&n), b"kept");

    // A key that does not match the certificate: the reload is refused,
    // logged, and the certificate in force stays.
    std::fs::copy(&broken.key, &first.key).unwrap();
    server.signal(libc::SIGHUP);
    wait_until(DEADLINE, "the refused reload logged", || {
        server.logs().contains("TLS files not reloaded")
    });
    assert_eq!(
        served_certificate(&server.ua_addr(), client.clone()),
        Ok(second.der.clone())
    );
    ua.send_json(&serde_json::json!({}));
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), serde_json::json!({}));
}

#[test]
fn unreadable_tls_files_stop_the_start_with_a_clear_error() {
    let ca = TestCa::new();
    let cert = ca.issue("server");
    let dir = TempDir::new("tls-bad");
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let other_key = ca.issue("other").key;
    let cases = [
        (
            missing.clone(),
            cert.key.clone(),
            missing.display().to_string(),
        ),
        (
            not_pem.clone(),
            cert.key.clone(),
            not_pem.display().to_string(),
        ),
        (
            cert.cert.clone(),
            other_key.clone(),
            other_key.display().to_string(),
        ),
    ];
    for (cert_path, key_path, named) in cases {
        let data = dir.path().join(format!("data-{}", random_hex(4)));
        let args: Vec<String> = [
            "serve",
            "--data-dir",
            &data.display().to_string(),
            "--ua-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--as-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--shards",
            "1",
            "--tls-cert",
            &cert_path.display().to_string(),
            "--tls-key",
            &key_path.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut herald = spawn_herald(&args, &[], dir.path());
        let status = herald
            .wait(READY_DEADLINE)
            .unwrap_or_else(|| panic!("herald kept running with {named}"));
        assert!(!status.success(), "exit status {status} for {named}");
        let output = herald.output();
        assert!(
            output.contains("TLS") && output.contains(&named),
            "the error names the file ({named}): {output}"
        );
    }
}
