//! HTTP/1.1 request framing for the AS listener, on httparse. Only
//! `Content-Length` bodies are accepted: a `Transfer-Encoding` or a conflicting
//! or malformed length is a framing error (400, connection closed, SPEC §9).

use herald_engine::push::{reason_phrase, HttpResponse};

pub struct Head {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub head_bytes: usize,
    pub body_bytes: usize,
    pub keep_alive: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FramingError {
    Incomplete,
    /// Request line and headers exceed the limit: 431.
    HeadersTooLarge,
    /// Bad syntax, bad/conflicting Content-Length, Transfer-Encoding: 400.
    Malformed(&'static str),
}

/// Headers beyond this count are a 431 too.
const HEADER_COUNT_MAX: usize = 64;

pub fn parse_head(buffer: &[u8], header_bytes_max: usize) -> Result<Head, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) if length <= header_bytes_max => length,
        Ok(httparse::Status::Complete(_)) => return Err(FramingError::HeadersTooLarge),
        Ok(httparse::Status::Partial) if buffer.len() > header_bytes_max => {
            return Err(FramingError::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Err(FramingError::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::HeadersTooLarge),
        Err(_) => return Err(FramingError::Malformed("malformed HTTP request")),
    };
    let mut content_length: Option<usize> = None;
    let mut keep_alive = request.version == Some(1);
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FramingError::Malformed(
                "Transfer-Encoding is not supported: send Content-Length",
            ));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|text| text.parse::<usize>().ok())
                .ok_or(FramingError::Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|previous| previous != parsed) {
                return Err(FramingError::Malformed(
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(parsed);
        }
        if header.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            if value.contains("close") {
                keep_alive = false;
            } else if value.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    Ok(Head {
        method: request.method.unwrap_or_default().to_owned(),
        path: request.path.unwrap_or_default().to_owned(),
        headers: request
            .headers
            .iter()
            .map(|header| (header.name.to_owned(), header.value.to_vec()))
            .collect(),
        head_bytes,
        body_bytes: content_length.unwrap_or(0),
        keep_alive,
    })
}

pub fn write_response(response: &HttpResponse, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    append_response(&mut out, response, keep_alive);
    out
}

/// Appends the bytes of `response` to `out`: pipelined answers share one
/// buffer and one write.
pub fn append_response(out: &mut Vec<u8>, response: &HttpResponse, keep_alive: bool) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    if !response.body.is_empty() {
        let _ = write!(out, "Content-Type: {}\r\n", response.content_type);
    }
    let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(response.body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_requests_and_refuses_bad_lengths() {
        let head = parse_head(
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTTL: 5\r\n\r\nabc",
            1024,
        )
        .unwrap();
        assert_eq!(
            (
                head.method.as_str(),
                head.path.as_str(),
                head.body_bytes,
                head.keep_alive
            ),
            ("POST", "/x", 3, true)
        );
        assert_eq!(
            parse_head(b"POST /x HTTP/1.1\r\nContent-", 1024).err(),
            Some(FramingError::Incomplete)
        );
        for bad in [
            &b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x00\x01 nonsense\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad, 1024), Err(FramingError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_head(&[b'a'; 64], 16).err(),
            Some(FramingError::HeadersTooLarge)
        );
    }

    /// Seeded smoke fuzz: random and mutated request heads never panic and
    /// never claim more header bytes than the limit.
    #[test]
    fn random_heads_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x4774);
        let valid =
            b"POST /wpush/v1/abc HTTP/1.1\r\nHost: x\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"
                .to_vec();
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            bytes.truncate(rng.gen_range(0..=bytes.len()));
            if let Ok(head) = parse_head(&bytes, 64) {
                assert!(head.head_bytes <= 64);
            }
        }
    }
}
