//! HTTP/2 on the AS listener (h2c with prior knowledge): the same routes,
//! statuses, headers and bodies as HTTP/1.1 (checked with curl, one request
//! per connection: Debian 12's curl 7.88 breaks when it reuses a
//! prior-knowledge connection), many streams on one connection (with the
//! `h2` crate's client), and the stream limit from `[limits]`.

use std::process::Command;

use herald_tests::serde_json::Value;
use herald_tests::*;

#[path = "support/glommio.rs"]
mod glommio_support;
use glommio_support::block_on;

/// One curl run over HTTP/2 with prior knowledge; every transfer prints
/// `<status> <http version>` and then its body's first line on a line of
/// its own. Returns curl's stdout and stderr.
fn curl_h2(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args([
            "--http2-prior-knowledge",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
        ])
        .args(["--write-out", "\n%{http_code} %{http_version}\n"])
        .args(args)
        .output()
        .expect("run curl (the test command installs it)");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `(status, version, body)` of each transfer in curl's output.
fn transfers(stdout: &str) -> Vec<(u16, String, String)> {
    let lines: Vec<&str> = stdout.lines().collect();
    lines
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| {
            let (status, version) = pair[1].split_once(' ').unwrap_or((pair[1], ""));
            (
                status.parse().unwrap_or(0),
                version.to_owned(),
                pair[0].to_owned(),
            )
        })
        .collect()
}

#[test]
fn many_streams_on_one_connection_are_stored_and_delivered() {
    const PUSHES: usize = 40;
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, endpoint) = ua.register_new();
    let path = endpoint.strip_prefix(&server.as_url()).unwrap().to_owned();
    let authority = server.as_addr();
    // Every push is a stream of its own, all in flight at once.
    let statuses = block_on(async move {
        let stream = glommio::net::TcpStream::connect(authority.as_str())
            .await
            .unwrap();
        let (sender, connection) = h2_client::handshake(stream, &authority).await.unwrap();
        glommio::spawn_local(connection).detach();
        let streams: Vec<_> = (0..PUSHES)
            .map(|i| {
                let (sender, path) = (sender.clone(), path.clone());
                glommio::spawn_local(async move {
                    let headers = [("ttl", "60"), ("content-encoding", "aes128gcm")];
                    let body = format!("m{i}");
                    sender.send("POST", &path, &headers, body.as_bytes()).await
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for stream in streams {
            let answer = stream.await.expect("push");
            assert!(answer.header("location").is_some(), "{answer:?}");
            statuses.push(answer.status);
        }
        statuses
    });
    assert_eq!(statuses, vec![201; PUSHES]);
    let mut got: Vec<Vec<u8>> = (0..PUSHES)
        .map(|_| notification_data(&ua.recv_notification(DEADLINE)))
        .collect();
    got.sort();
    let mut sent: Vec<Vec<u8>> = (0..PUSHES).map(|i| format!("m{i}").into_bytes()).collect();
    sent.sort();
    assert_eq!(got, sent, "every stream's push delivered once");
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn answers_match_http1_statuses_and_bodies() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, endpoint) = ua.register_new();
    let unknown = format!("{}/wpush/v2/not-a-token", server.as_url());
    let health = format!("{}/health", server.as_url());
    let ttl: &[(&str, &str)] = &[("TTL", "60")];
    let cases = [
        ("missing TTL", "POST", &endpoint, &[][..]),
        ("unknown endpoint", "POST", &unknown, ttl),
        ("health", "GET", &health, &[][..]),
    ];
    for (what, method, url, headers) in cases {
        let mut args = vec!["-X", method];
        let header_lines: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        for line in &header_lines {
            args.extend(["-H", line.as_str()]);
        }
        args.push(url);
        let (stdout, stderr) = curl_h2(&args);
        let h2 = transfers(&stdout);
        assert_eq!(h2.len(), 1, "{what}: {stdout}{stderr}");
        let (status, version, body) = &h2[0];
        assert_eq!(version, "2", "{what}: {stdout}{stderr}");
        let http1 = http(method, url, headers, None);
        assert_eq!(
            *status, http1.status,
            "{what}: HTTP/2 {stdout} vs HTTP/1.1 {http1:?}"
        );
        let json = |text: &str| {
            let mut value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            // Uptime may tick between the two requests.
            value
                .as_object_mut()
                .map(|object| object.remove("uptime_s"));
            value
        };
        assert_ne!(json(body), Value::Null, "{what}: a JSON body: {stdout}");
        assert_eq!(json(body), json(&http1.text()), "{what}: same body");
    }
}

#[test]
fn a_201_carries_location_and_ttl_and_a_big_body_gets_413() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, endpoint) = ua.register_new();
    let (stdout, stderr) = curl_h2(&[
        "--include",
        "-H",
        "TTL: 60",
        "-H",
        "Content-Encoding: aes128gcm",
        "--data-binary",
        "abc",
        &endpoint,
    ]);
    let lower = stdout.to_ascii_lowercase();
    assert!(lower.starts_with("http/2 201"), "{stdout}{stderr}");
    assert!(
        lower.contains(&format!("location: {}/m/", server.as_url())),
        "{stdout}"
    );
    assert!(lower.contains("ttl: 60"), "{stdout}");
    assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), b"abc");
    let big = "x".repeat(20_000);
    let (stdout, stderr) = curl_h2(&[
        "-H",
        "TTL: 60",
        "-H",
        "Content-Encoding: aes128gcm",
        "--data-binary",
        &big,
        &endpoint,
    ]);
    let answers = transfers(&stdout);
    assert_eq!(answers.len(), 1, "{stdout}{stderr}");
    assert_eq!(answers[0].0, 413, "{stdout}{stderr}");
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn the_stream_limit_comes_from_limits() {
    let server = Server::start(ServerOptions::new().limit("http2_streams_max", 7));
    let settings = server_settings(&server.as_addr());
    // SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2)
    assert_eq!(settings.get(&0x3), Some(&7), "{settings:?}");
}

/// The settings a server announces in its first frame, after our preface
/// and an empty SETTINGS frame.
fn server_settings(addr: &str) -> std::collections::BTreeMap<u16, u32> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut header = [0u8; 9];
    stream
        .read_exact(&mut header)
        .expect("the server's first frame");
    assert_eq!(header[3], 0x4, "the first frame is SETTINGS: {header:?}");
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).unwrap();
    payload
        .chunks_exact(6)
        .map(|entry| {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            (
                id,
                u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]),
            )
        })
        .collect()
}
