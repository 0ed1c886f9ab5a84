//! The AS side over a real HTTP client (ureq): one request per call, any
//! status returned, and the spec's push requests.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
    /// Status must be `status` and the body the spec's JSON error:
    /// `{"code": status, "errno": <number>, "error": "...", "message": "..."}`.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "expected HTTP {status}, got {} body {:?}",
            self.status,
            self.text()
        );
        let j = self.json();
        assert_eq!(j["code"], status, "error body code == HTTP status: {j}");
        assert!(j["errno"].is_number(), "error body errno is a number: {j}");
        assert!(j["error"].is_string(), "error body error is a string: {j}");
        assert!(
            j["message"].is_string(),
            "error body message is a string: {j}"
        );
    }
    /// Panic with context unless the status is `status`.
    pub fn assert_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status,
            status,
            "{what}: expected HTTP {status}, got {} body {:?}",
            self.status,
            self.text()
        );
        self
    }
}

/// One HTTP request over ureq 2 (fresh agent, no redirects). Returns the
/// response for any status; panics on transport errors.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: transport error: {e}"),
    };
    let status = resp.status();
    let mut hs = vec![];
    for n in resp.headers_names() {
        for v in resp.all(&n) {
            hs.push((n.clone(), v.to_string()));
        }
    }
    let mut body = vec![];
    resp.into_reader()
        .take(10 * 1024 * 1024)
        .read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
    HttpResponse {
        status,
        headers: hs,
        body,
    }
}

/// SimplePush `PUT <endpoint>` with a form body (e.g. `version=5`, `` or `body=hi&ttl=60`).
pub fn put_form(endpoint: &str, body: &str) -> HttpResponse {
    http(
        "PUT",
        endpoint,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(body.as_bytes()),
    )
}

/// SimplePush `PUT <endpoint>` with `version=N`.
pub fn put_version(endpoint: &str, version: u64) -> HttpResponse {
    put_form(endpoint, &format!("version={version}"))
}

/// Web Push `POST <endpoint>` with TTL and an `aes128gcm` body.
pub fn push_aes128gcm(endpoint: &str, body: &[u8], ttl: u64) -> HttpResponse {
    let ttl = ttl.to_string();
    http(
        "POST",
        endpoint,
        &[("TTL", &ttl), ("Content-Encoding", "aes128gcm")],
        Some(body),
    )
}

/// Web Push `POST <endpoint>` with TTL and no body.
pub fn push_empty(endpoint: &str, ttl: u64) -> HttpResponse {
    let ttl = ttl.to_string();
    http("POST", endpoint, &[("TTL", &ttl)], None)
}

/// Web Push `POST` with arbitrary headers and body.
pub fn push_with(endpoint: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
    http("POST", endpoint, headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_raw::read_http_head;
    use crate::DEADLINE;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn http_returns_error_statuses() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (_h, _rest) = read_http_head(&mut s, DEADLINE).unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 52\r\nConnection: close\r\n\r\n{\"code\":404,\"errno\":102,\"error\":\"Not Found\",\"message\":\"\"}").unwrap();
        });
        let r = http("POST", &format!("http://{addr}/x"), &[("TTL", "1")], None);
        t.join().unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}
