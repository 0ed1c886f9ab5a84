//! Web Push with real clients.
//!
//! - `firefox_decrypts_messages_from_real_sender_libraries` runs
//!   `tests/webpush/driver.py`: a headless Firefox ESR, in a private network
//!   namespace with only loopback, uses Herald as its push service
//!   (`dom.push.serverURL`); its service worker must decrypt messages sent by
//!   pywebpush (aes128gcm and aesgcm), by the `web-push` npm package and by
//!   `herald push`, receive an empty push, and `unsubscribe()` must turn the
//!   endpoint into a 410. The driver installs firefox-esr, the pinned PyPI and
//!   npm packages when they are missing; if it cannot, this test FAILS (it
//!   never passes without Firefox having decrypted the messages).
//! - `firefox_decrypts_messages_sent_over_https_on_a_wss_push_connection`
//!   runs the same driver with a CA made here (`TestCa`): Herald serves
//!   `wss://` and `https://` with a certificate it signed, Firefox trusts the
//!   CA through an enterprise policy (`Certificates.Install`, laid over its
//!   install in a private mount namespace), and pywebpush and web-push send
//!   over https trusting only that CA.
//! - The `herald_push_*` tests act as the UA themselves (the harness's
//!   WebSocket client) and check `herald push --data ... --vapid-key ...`
//!   end to end: Herald accepts its VAPID signature on a v2 endpoint and the
//!   UA decrypts the `aes128gcm` payload with its private key.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use herald_tests::*;
use p256::elliptic_curve::sec1::ToEncodedPoint;

/// Install (first run: apt-get firefox-esr, pip, npm) + scenario.
const DRIVER_DEADLINE: Duration = Duration::from_secs(30 * 60);

fn driver_path() -> PathBuf {
    workspace_root().join("tests/webpush/driver.py")
}

/// The checks both runs must pass (the driver's report lines).
const SENDER_CHECKS: [&str; 6] = [
    "PASS  pywebpush aes128gcm",
    "PASS  pywebpush aesgcm",
    "PASS  pywebpush empty push",
    "PASS  web-push (npm) aes128gcm",
    "PASS  web-push (npm) aesgcm",
    "PASS  endpoint answers 410 after unsubscribe()",
];

/// One headless Firefox at a time: two at once on a small CI machine would
/// race the driver's deadlines for CPU, not test anything more.
static FIREFOX: Mutex<()> = Mutex::new(());

#[test]
fn firefox_decrypts_messages_from_real_sender_libraries() {
    let mut checks = SENDER_CHECKS.to_vec();
    checks.push("PASS  herald push --data");
    run_driver("firefox", &[], &checks);
}

/// The same over `wss://` and `https://`: Herald serves a certificate from a
/// CA made here, Firefox trusts that CA through an enterprise policy, and
/// pywebpush and web-push through their CA-bundle variables (the driver's
/// module doc). `herald push` is not part of this run (it trusts only the
/// public web roots).
#[test]
fn firefox_decrypts_messages_sent_over_https_on_a_wss_push_connection() {
    let ca = TestCa::new();
    let cert = ca.issue("server");
    let args = [
        "--tls-ca".into(),
        ca.ca_pem().into_os_string(),
        "--tls-cert".into(),
        cert.cert.into_os_string(),
        "--tls-key".into(),
        cert.key.into_os_string(),
    ];
    let mut checks = SENDER_CHECKS.to_vec();
    // The endpoint Firefox got is https://, so every sender above used TLS.
    checks.push("policies.json (Certificates.Install");
    checks.push("starting Firefox (push server wss://127.0.0.1:");
    checks.push("PASS: subscribe (applicationServerKey -> VAPID v2 endpoint) -- subscription {\"endpoint\": \"https://");
    run_driver("firefox-tls", &args, &checks);
}

/// Runs the driver with `extra` arguments and asserts that it exited 0 and
/// that its output holds every line of `checks`.
fn run_driver(name: &str, extra: &[OsString], checks: &[&str]) {
    let _one_firefox = FIREFOX
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let herald = herald_bin();
    let dir = TempDir::new(name);
    let log_path = dir.path().join("driver.log");
    let log = std::fs::File::create(&log_path).expect("create driver.log");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut child = Command::new(&python)
        .arg(driver_path())
        .arg("--herald")
        .arg(&herald)
        .arg("--workdir")
        .arg(dir.path().join("work"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {python} {}: {e}. The Firefox Web Push test needs Python 3 \
                 (set PYTHON to its path)",
                driver_path().display()
            )
        });
    let status = wait_child(&mut child, DRIVER_DEADLINE);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut output = String::new();
    std::fs::File::open(&log_path)
        .and_then(|mut f| f.read_to_string(&mut output))
        .ok();
    // Shown by `cargo test` when the test fails, and with --nocapture.
    println!("----- tests/webpush/driver.py output -----\n{output}\n-----");
    match status.and_then(|s| s.code()) {
        Some(0) => {
            for needle in checks {
                assert!(
                    output.contains(needle),
                    "driver exited 0 but its report lacks {needle:?}"
                );
            }
        }
        Some(2) => panic!(
            "the Firefox Web Push test could not prepare its environment (firefox-esr, pywebpush \
             or web-push could not be installed, or no network namespace); this is a failure, \
             not a skip. See the SETUP FAILED line in the driver output above."
        ),
        Some(code) => panic!(
            "Firefox Web Push interop failed (driver exit {code}): see the FAIL lines and the \
             evidence (Herald log, WebSocket frames, Firefox console) in the driver output above"
        ),
        None => panic!(
            "tests/webpush/driver.py did not finish within {DRIVER_DEADLINE:?} (or was killed \
             by a signal): see its output above"
        ),
    }
}

// ---------------------------------------------------------------------------
// herald push, with this test as the UA
// ---------------------------------------------------------------------------

/// The UA's side of RFC 8291: a P-256 key pair and an auth secret.
struct UaKeys {
    keypair: ece::UaKeys,
    p256dh: String,
    auth: Vec<u8>,
}

fn ua_keys() -> UaKeys {
    let keypair = ece::UaKeys::generate();
    UaKeys {
        p256dh: b64url_encode(&keypair.public_key()),
        auth: keypair.auth.to_vec(),
        keypair,
    }
}

/// A VAPID signing key, its public key (base64url) and the key file in the
/// form asked for: "raw" (base64url of the 32-byte scalar) or "pem" (SEC1).
fn vapid_key_file(dir: &Path, form: &str) -> (String, PathBuf) {
    let key = loop {
        if let Ok(k) = p256::SecretKey::from_slice(&random_bytes(32)) {
            break k;
        }
    };
    let public = b64url_encode(key.public_key().to_encoded_point(false).as_bytes());
    let path = dir.join(format!("vapid-{form}.key"));
    let text = match form {
        "raw" => b64url_encode(&key.to_bytes()),
        "pem" => key
            .to_sec1_pem(Default::default())
            .expect("SEC1 PEM")
            .to_string(),
        _ => unreachable!(),
    };
    std::fs::write(&path, text).expect("write key file");
    (public, path)
}

fn herald_push(dir: &Path, args: &[String]) -> (bool, String) {
    let mut all = vec!["push".to_string()];
    all.extend_from_slice(args);
    let mut child = spawn_herald(&all, &[], dir);
    let status = child
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("herald {all:?} did not finish within 30 s"));
    (status.success(), child.output())
}

fn push_args(endpoint: &str, data: &str, keys: &UaKeys, vapid: Option<&Path>) -> Vec<String> {
    let mut a = vec![
        endpoint.to_string(),
        "--data".into(),
        data.into(),
        "--p256dh".into(),
        keys.p256dh.clone(),
        "--auth".into(),
        b64url_encode(&keys.auth),
    ];
    if let Some(v) = vapid {
        a.push("--vapid-key".into());
        a.push(v.display().to_string());
    }
    a
}

fn decrypt(keys: &UaKeys, notification: &serde_json::Value) -> String {
    assert_eq!(
        notification["headers"]["encoding"], "aes128gcm",
        "herald push sends aes128gcm: {notification}"
    );
    let data = notification_data(notification);
    let plain = ece::decrypt(&keys.keypair.secret, &keys.auth, &data)
        .unwrap_or_else(|e| panic!("the UA cannot decrypt {notification}: {e}"));
    String::from_utf8(plain).expect("UTF-8 plaintext")
}

#[test]
fn herald_push_encrypts_and_signs_for_a_v2_endpoint() {
    let server = Server::start_default();
    let dir = TempDir::new("push-cli");
    let keys = ua_keys();
    for form in ["raw", "pem"] {
        let (vapid_public, key_file) = vapid_key_file(dir.path(), form);
        let mut ua = server.ua_webpush();
        let channel = new_channel_id();
        let r = ua.register_reply(&channel, Some(&vapid_public));
        assert_eq!(r["status"], 200, "register with key: {r}");
        let endpoint = r["pushEndpoint"].as_str().unwrap().to_string();
        assert!(endpoint.contains("/wpush/v2/"), "{endpoint}");

        let (ok, out) = herald_push(
            dir.path(),
            &push_args(&endpoint, "hello", &keys, Some(&key_file)),
        );
        assert!(ok, "herald push with a {form} VAPID key failed:\n{out}");
        assert!(out.starts_with("201"), "prints the status first: {out}");
        assert!(out.contains("location: "), "prints Location: {out}");

        let n = ua.recv_notification(DEADLINE);
        assert!(same_channel(&n["channelID"], &channel), "{n}");
        assert_eq!(decrypt(&keys, &n), "hello", "{form} key");
        ua.ack_notification(&n);
        ua.close();
    }
}

#[test]
fn herald_push_with_the_wrong_vapid_key_is_refused() {
    let server = Server::start_default();
    let dir = TempDir::new("push-cli-wrong");
    let keys = ua_keys();
    let (registered, _) = vapid_key_file(dir.path(), "raw");
    let (_other_public, other_file) = vapid_key_file(dir.path(), "pem");
    let mut ua = server.ua_webpush();
    let r = ua.register_reply(&new_channel_id(), Some(&registered));
    let endpoint = r["pushEndpoint"].as_str().unwrap().to_string();

    let (ok, out) = herald_push(
        dir.path(),
        &push_args(&endpoint, "nope", &keys, Some(&other_file)),
    );
    assert!(!ok, "herald push must fail when the server refuses: {out}");
    assert!(out.starts_with("401"), "prints the 401: {out}");
    // Without a key at all.
    let (ok, out) = herald_push(dir.path(), &push_args(&endpoint, "nope", &keys, None));
    assert!(!ok && out.starts_with("401"), "no VAPID on v2: {out}");
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn herald_push_to_a_v1_endpoint_with_and_without_vapid() {
    let server = Server::start_default();
    let dir = TempDir::new("push-cli-v1");
    let keys = ua_keys();
    let mut ua = server.ua_webpush();
    let (_c, endpoint) = ua.register_new();
    assert!(endpoint.contains("/wpush/v1/"), "{endpoint}");

    let (ok, out) = herald_push(dir.path(), &push_args(&endpoint, "no vapid", &keys, None));
    assert!(ok, "{out}");
    let n = ua.recv_notification(DEADLINE);
    assert_eq!(decrypt(&keys, &n), "no vapid");
    ua.ack_notification(&n);

    let (_pub, key_file) = vapid_key_file(dir.path(), "pem");
    let text = "ünïcödé and a longer text ".repeat(20);
    let (ok, out) = herald_push(
        dir.path(),
        &push_args(&endpoint, &text, &keys, Some(&key_file)),
    );
    assert!(ok, "{out}");
    let n = ua.recv_notification(DEADLINE);
    assert_eq!(decrypt(&keys, &n), text);
    ua.ack_notification(&n);
}

#[test]
fn herald_push_rejects_bad_arguments_clearly() {
    let dir = TempDir::new("push-cli-args");
    let keys = ua_keys();
    let endpoint = "http://127.0.0.1:9/wpush/v1/x";
    // A p256dh that is not a P-256 point.
    let mut args = push_args(endpoint, "x", &keys, None);
    args[4] = b64url_encode(&random_bytes(32));
    let (ok, out) = herald_push(dir.path(), &args);
    assert!(!ok && out.contains("--p256dh"), "{out}");
    // A VAPID key file that is not a key.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let (ok, out) = herald_push(dir.path(), &push_args(endpoint, "x", &keys, Some(&bad)));
    assert!(!ok && out.contains("--vapid-key"), "{out}");
}
