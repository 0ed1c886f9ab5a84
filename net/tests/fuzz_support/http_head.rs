//! `herald_net::http::parse_head`, the AS listener's request framing, on raw
//! bytes and on requests built from real header names with hostile values
//! (duplicate and conflicting `Content-Length`, `Transfer-Encoding`, bare LF,
//! folded lines). Besides "no panic" it checks what keeps request boundaries
//! unambiguous (no smuggling) and the connection's buffer bounded.

use herald_engine::limits::Limits;
use herald_net::http::{self, FramingError, Head};

use super::Input;

/// The header limits a run uses: tiny ones so that the bound is hit, and
/// the default.
const HEADER_BYTES_MAX: &[usize] = &[64, 256, 1024];

/// Byte 0 picks the header limit, byte 1 whether the rest is sent as is
/// (`% 4 == 0`) or describes a request to build.
pub fn http_head(data: &[u8]) -> u32 {
    let mut input = Input::new(data);
    let limit = match input.below(HEADER_BYTES_MAX.len() + 1) {
        n if n < HEADER_BYTES_MAX.len() => HEADER_BYTES_MAX[n],
        _ => Limits::default().http_header_bytes_max,
    };
    let bytes = if input.one_in(4) {
        input.rest().to_vec()
    } else {
        build_request(&mut input)
    };
    check(&bytes, limit)
}

/// A hand-written input for [`http_head`]: `bytes` sent as they are under
/// the default header limit.
pub fn raw(bytes: &[u8]) -> Vec<u8> {
    [&[HEADER_BYTES_MAX.len() as u8, 0][..], bytes].concat()
}

/// Requests an attacker would try first, for the smoke test's corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        &b"POST /wpush/v1/abc HTTP/1.1\r\nHost: x\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\nContent-Length: 1\n\nx",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
    ]
    .iter()
    .map(|bytes| raw(bytes))
    .collect()
}

fn build_request(input: &mut Input) -> Vec<u8> {
    let eol: &[u8] = input.pick(&[&b"\r\n"[..], b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"]);
    let method = match input.below(8) {
        7 => input.chunk().to_vec(),
        n => ["POST", "POST", "PUT", "GET", "DELETE", "post", "POST "][n]
            .as_bytes()
            .to_vec(),
    };
    let path = match input.below(6) {
        5 => input.chunk().to_vec(),
        n => ["/wpush/v1/abc", "/", "*", "/m/x?y=1", "http://h/x"][n]
            .as_bytes()
            .to_vec(),
    };
    let version = input.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2", ""]);
    let mut out = [&method[..], b" ", &path, b" ", version.as_bytes(), eol].concat();
    for _ in 0..input.below(8) {
        let (name, value) = header(input);
        out.extend_from_slice(&name);
        out.extend_from_slice(input.pick(&[&b": "[..], b":", b": ", b" : ", b":\t"]));
        out.extend_from_slice(&value);
        out.extend_from_slice(eol);
        if input.one_in(16) {
            // An obsolete folded continuation line.
            out.extend_from_slice(b" Transfer-Encoding: chunked");
            out.extend_from_slice(eol);
        }
    }
    // Now and then no blank line: the head is not over (a used-up input
    // reads 0, and ends the head).
    if input.below(8) != 1 {
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(input.chunk());
    out
}

fn header(input: &mut Input) -> (Vec<u8>, Vec<u8>) {
    const LENGTHS: &[&str] = &[
        "0",
        "3",
        "5",
        "05",
        " 5",
        "5 ",
        "+5",
        "-1",
        "0x5",
        "5,5",
        "5 5",
        "99999999999",
        "18446744073709551616",
        "",
    ];
    const ENCODINGS: &[&str] = &["chunked", "identity", "gzip, chunked", "Chunked", ""];
    let (name, values): (&str, &[&str]) = match input.below(12) {
        0..=2 => ("Content-Length", LENGTHS),
        3 => ("content-length", LENGTHS),
        4 => ("CONTENT-LENGTH", LENGTHS),
        5 | 6 => ("Transfer-Encoding", ENCODINGS),
        7 => ("transfer-encoding", ENCODINGS),
        8 => (
            "Connection",
            &["close", "keep-alive", "Upgrade", "Keep-Alive, close"],
        ),
        9 => ("Expect", &["100-continue"]),
        10 => ("TTL", &["60"]),
        _ => return (input.chunk().to_vec(), input.chunk().to_vec()),
    };
    let value = if input.one_in(8) {
        input.chunk().to_vec()
    } else {
        input.pick(values).as_bytes().to_vec()
    };
    (name.as_bytes().to_vec(), value)
}

fn check(bytes: &[u8], limit: usize) -> u32 {
    match http::parse_head(bytes, limit) {
        Err(FramingError::Incomplete) => {
            // The connection reads more and parses again: were this allowed
            // past the limit, a client could grow the buffer without end.
            assert!(bytes.len() <= limit, "incomplete past the header limit");
            1
        }
        Err(FramingError::HeadersTooLarge) => 2,
        Err(FramingError::Malformed(reason)) => {
            assert!(!reason.is_empty());
            10 + reason.len() as u32
        }
        Ok(head) => {
            check_head(bytes, limit, &head);
            1000 + 100 * head.headers.len().min(9) as u32
                + 10 * u32::from(head.body_bytes > 0)
                + u32::from(head.keep_alive)
        }
    }
}

/// The rules an accepted head must keep.
fn check_head(bytes: &[u8], limit: usize, head: &Head) {
    assert!(head.head_bytes > 0 && head.head_bytes <= bytes.len().min(limit));
    // Exactly one way to frame the body: no Transfer-Encoding ever passes,
    // and every Content-Length agrees with the length the body is read by.
    let mut lengths = head
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .peekable();
    if lengths.peek().is_none() {
        assert_eq!(head.body_bytes, 0, "a body without a Content-Length");
    }
    for (_, value) in lengths {
        let text = std::str::from_utf8(value).expect("a Content-Length that passed is ASCII");
        assert!(text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
        assert_eq!(
            text.parse::<usize>().ok(),
            Some(head.body_bytes),
            "{text:?}"
        );
    }
    assert!(
        !head
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding")),
        "a Transfer-Encoding header passed"
    );
    // The bytes after the head (body, next request) do not change it, and
    // the head is not complete any earlier: the connection loop parses
    // again after every read, so a request split across reads must frame
    // exactly like one read whole.
    let alone = http::parse_head(&bytes[..head.head_bytes], limit)
        .unwrap_or_else(|error| panic!("the head alone: {error:?}"));
    assert_eq!(summary(&alone), summary(head));
    for cut in prefix_cuts(head.head_bytes) {
        assert_eq!(
            http::parse_head(&bytes[..cut], limit).err(),
            Some(FramingError::Incomplete),
            "the first {cut} bytes of a {}-byte head",
            head.head_bytes
        );
    }
    // Written out again (as HTTP/1.1, CRLF, `name: value`), the head reads
    // back the same.
    let mut again = format!("{} {} HTTP/1.1\r\n", head.method, head.path).into_bytes();
    for (name, value) in &head.headers {
        again.extend_from_slice(name.as_bytes());
        again.extend_from_slice(b": ");
        again.extend_from_slice(value);
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"\r\n");
    let reread = http::parse_head(&again, again.len())
        .unwrap_or_else(|error| panic!("re-written head {:?}: {error:?}", again));
    assert_eq!(
        (
            &reread.method,
            &reread.path,
            &reread.headers,
            reread.body_bytes
        ),
        (&head.method, &head.path, &head.headers, head.body_bytes)
    );
}

type Summary<'a> = (
    &'a str,
    &'a str,
    &'a [(String, Vec<u8>)],
    usize,
    usize,
    bool,
);

fn summary(head: &Head) -> Summary<'_> {
    (
        &head.method,
        &head.path,
        &head.headers,
        head.head_bytes,
        head.body_bytes,
        head.keep_alive,
    )
}

/// A few lengths short of the whole head (each costs a parse).
fn prefix_cuts(head_bytes: usize) -> impl Iterator<Item = usize> {
    let mut cuts: Vec<usize> = (0..8).map(|i| head_bytes * i / 8).collect();
    cuts.push(head_bytes - 1);
    cuts.dedup();
    cuts.into_iter().filter(move |&cut| cut < head_bytes)
}
