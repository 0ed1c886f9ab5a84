//! Small utilities: random ids, base64url, ports, temp dirs, waiting on a condition.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut f = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut b = vec![0u8; n];
    f.read_exact(&mut b).expect("read /dev/urandom");
    b
}

/// A random (version 4) UUID, lower case.
pub fn new_channel_id() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{:02x}", x)).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn random_hex(nbytes: usize) -> String {
    random_bytes(nbytes)
        .iter()
        .map(|x| format!("{:02x}", x))
        .collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// True for 32 lower-case hex characters (SPEC §6 UAID form).
pub fn is_uaid(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Decode base64url, with or without `=` padding. Standard-alphabet characters
/// (`+`, `/`) are an error: the spec says base64url.
pub fn b64url_decode(s: &str) -> Vec<u8> {
    let t = s.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .unwrap_or_else(|e| panic!("not base64url: {s:?}: {e}"))
}

pub fn b64url_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A free loopback port (bind :0, read, drop) that this process has not
/// handed out before: the kernel can give the same ephemeral port to two
/// picks in a row, and a server whose two listeners got one port fails to
/// start.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("the kernel keeps offering loopback ports this process already handed out")
}

/// Simple temporary directory removed on drop (kept when the thread panics,
/// so the logs can be looked at).
pub struct TempDir {
    path: PathBuf,
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "herald-test-{}-{}-{}-{}",
            tag,
            std::process::id(),
            n,
            nanos
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[harness] keeping temp dir {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// For a test that cannot run on this machine (say, no IPv6 loopback): it
/// fails, unless `HERALD_TEST_ALLOW_SKIP` (a comma-separated list of names)
/// names it, so that a skip is always somebody's explicit choice. Returns
/// when the skip is allowed; the caller then returns.
#[track_caller]
pub fn skip_or_fail(name: &str, why: &str) {
    let allowed = std::env::var("HERALD_TEST_ALLOW_SKIP").unwrap_or_default();
    if allowed.split(',').any(|entry| entry.trim() == name) {
        eprintln!("[harness] skipped ({why}): HERALD_TEST_ALLOW_SKIP names {name:?}");
        return;
    }
    panic!("{why}; set HERALD_TEST_ALLOW_SKIP={name} to skip this test on purpose");
}

/// Wait until `f` returns true (polling every 20 ms) or panic with `what`.
#[track_caller]
pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VAPID_KEY_G;

    #[test]
    fn helpers() {
        let c = new_channel_id();
        assert_eq!(c.len(), 36);
        assert_eq!(b64url_decode(VAPID_KEY_G).len(), 65);
        assert_eq!(b64url_decode(&format!("{VAPID_KEY_G}=")).len(), 65);
        assert!(is_uaid(&random_hex(16)));
    }
}
