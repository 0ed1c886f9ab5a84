//! The client side of HTTP/1.1 that Herald speaks to its peers: wakeup
//! proxies (`wakeup_http.rs`) and, in cluster mode, other nodes
//! (`node_link.rs`). Responses are framed by Content-Length only (both
//! peers are Herald or a small proxy), with bounded heads and bodies.

use futures_lite::{AsyncRead, AsyncReadExt};

/// Largest response head and body accepted from a peer.
const RESPONSE_HEAD_BYTES_MAX: usize = 8 * 1024;
const RESPONSE_BODY_BYTES_MAX: usize = 64 * 1024;

/// `host:port` of an `http://host[:port][/path]` URL (port 80 if none),
/// and the path after it ("" if none).
pub fn split_http_url(url: &str) -> Result<(String, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
        return Err(format!("{url:?}: bad host"));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path))
}

/// One response from a peer.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The peer will close the connection after it.
    pub close: bool,
}

/// Reads one response (head via httparse, body by Content-Length) from
/// `buffer` + the stream; leaves any following bytes in `buffer`.
pub async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> Result<Response, &'static str> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.ok_or("no status")?;
                let mut length = 0usize;
                let mut close = response.version == Some(0);
                let mut kept = Vec::with_capacity(response.headers.len());
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(header.value)
                            .ok()
                            .and_then(|text| text.trim().parse().ok())
                            .ok_or("bad content-length")?;
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err("chunked answers are not supported");
                    } else if header.name.eq_ignore_ascii_case("connection") {
                        close |= header.value.eq_ignore_ascii_case(b"close");
                    } else {
                        kept.push((header.name.to_owned(), header.value.to_vec()));
                    }
                }
                if length > RESPONSE_BODY_BYTES_MAX {
                    return Err("answer too large");
                }
                while buffer.len() < head_len + length {
                    read_some(stream, buffer).await?;
                }
                let body = buffer[head_len..head_len + length].to_vec();
                buffer.drain(..head_len + length);
                return Ok(Response {
                    status,
                    headers: kept,
                    body,
                    close,
                });
            }
            Ok(httparse::Status::Partial) if buffer.len() < RESPONSE_HEAD_BYTES_MAX => {
                read_some(stream, buffer).await?;
            }
            Ok(httparse::Status::Partial) => return Err("answer head too large"),
            Err(_) => return Err("malformed answer"),
        }
    }
}

async fn read_some(
    stream: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let mut chunk = [0u8; 2048];
    match stream.read(&mut chunk).await {
        Ok(0) => Err("the peer closed the connection"),
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            Ok(())
        }
        Err(_) => Err("read failed or timed out"),
    }
}
