//! The application server's side of HTTP/1.1, without IO: the request for
//! one push, and the answer's status once it is complete in the input.

use std::io::{self, Write};
use std::net::SocketAddr;

use super::{protocol_error, Buffers, Wire};

/// One keep-alive connection's bytes: the request being sent, and what the
/// server answered so far.
#[derive(Default)]
pub struct AsWire {
    buffers: Buffers,
}

impl AsWire {
    /// Queues the requests for `pushes`, pipelined, in place of anything
    /// queued before (buffers are reused).
    pub fn start(&mut self, host: SocketAddr, pushes: &[(&str, Push<'_>)]) {
        self.buffers.output.clear();
        for (path, push) in pushes {
            write_request(&mut self.buffers.output, host, path, *push);
        }
    }

    /// A new connection: nothing of the old one's answers counts.
    pub fn reconnected(&mut self) {
        self.buffers.input.clear();
    }

    /// The answer, once complete; it is taken off the input.
    pub fn take_answer(&mut self) -> io::Result<Option<Answer>> {
        let input = &mut self.buffers.input;
        let answer = parse_answer(input)?;
        if let Some(answer) = answer {
            input.drain(..answer.length);
        }
        Ok(answer)
    }
}

impl Wire for AsWire {
    fn buffers(&mut self) -> &mut Buffers {
        &mut self.buffers
    }
}

/// What an application server sends.
#[derive(Clone, Copy)]
pub enum Push<'a> {
    /// Web Push POST; an empty body is a push without data.
    WebPush(&'a [u8]),
    /// SimplePush PUT of `version=N`.
    SimplePush(u64),
}

/// Appends the request for `push` to `path` on `host` to `request`.
fn write_request(request: &mut Vec<u8>, host: SocketAddr, path: &str, push: Push<'_>) {
    // Writing into a Vec cannot fail.
    let _ = match push {
        Push::WebPush([]) => write!(
            request,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Length: 0\r\n\r\n"
        ),
        Push::WebPush(body) => write!(
            request,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\n\
             Content-Encoding: aes128gcm\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .map(|()| request.extend_from_slice(body)),
        Push::SimplePush(version) => {
            let body = format!("version={version}");
            write!(
                request,
                "PUT {path} HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
    };
}

/// A complete answer at the front of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Bytes of the answer, head and body: drop them from the input.
    pub length: usize,
    /// The server will close the connection (`Connection: close`).
    pub close: bool,
    /// The answer says when to retry (`Retry-After`).
    pub retry_after: bool,
}

/// The first answer in `input`, once all of it (body included) is there.
fn parse_answer(input: &[u8]) -> io::Result<Option<Answer>> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(protocol_error(format!("HTTP answer: {error}"))),
    };
    let body: usize = response
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
        .and_then(|header| std::str::from_utf8(header.value).ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let close = response.headers.iter().any(|header| {
        header.name.eq_ignore_ascii_case("connection")
            && header.value.eq_ignore_ascii_case(b"close")
    });
    let retry_after = response
        .headers
        .iter()
        .any(|header| header.name.eq_ignore_ascii_case("retry-after"));
    let length = head.saturating_add(body);
    Ok((input.len() >= length).then_some(Answer {
        status: response.code.unwrap_or(0),
        length,
        close,
        retry_after,
    }))
}

/// The `host:port` and the path of a push endpoint URL
/// (`http://host:port/path`).
pub fn split_endpoint(endpoint: &str) -> io::Result<(&str, &str)> {
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| protocol_error(format!("not an http endpoint: {endpoint}")))?;
    let slash = rest
        .find('/')
        .ok_or_else(|| protocol_error(format!("endpoint without a path: {endpoint}")))?;
    Ok(rest.split_at(slash))
}

/// The path part of a push endpoint URL.
pub fn endpoint_path(endpoint: &str) -> io::Result<String> {
    split_endpoint(endpoint).map(|(_, path)| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_waits_for_its_body_and_sees_close() {
        let answer = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        for cut in 0..answer.len() {
            assert_eq!(parse_answer(&answer[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut pipelined = answer.to_vec();
        pipelined.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(
            parse_answer(&pipelined).unwrap(),
            Some(Answer {
                status: 201,
                length: answer.len(),
                close: true,
                retry_after: false,
            })
        );
        assert!(parse_answer(b"HTTP/1.1 2x1\r\n\r\n").is_err());
    }

    #[test]
    fn wire_takes_answers_in_turn() {
        let mut wire = AsWire::default();
        let pushes = [("/p", Push::WebPush(&[])), ("/q", Push::WebPush(b"x"))];
        wire.start("127.0.0.1:1".parse().unwrap(), &pushes);
        let buffers = wire.buffers();
        let queued = buffers.output().len();
        assert!(queued > 0);
        buffers.sent(queued);
        assert!(buffers.output().is_empty());
        buffers
            .received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 4")
            .unwrap();
        assert_eq!(wire.take_answer().unwrap().map(|a| a.status), Some(201));
        assert_eq!(wire.take_answer().unwrap(), None, "the second is partial");
        wire.buffers()
            .received(b"13 Content Too Large\r\n\r\n")
            .unwrap();
        assert_eq!(wire.take_answer().unwrap().map(|a| a.status), Some(413));
        wire.buffers().received(b"HTTP/1.1 5").unwrap();
        wire.reconnected();
        wire.buffers().received(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(wire.take_answer().unwrap().map(|a| a.status), Some(200));
    }

    #[test]
    fn requests_carry_their_body() {
        let host: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let mut request = Vec::new();
        write_request(&mut request, host, "/wpush/a", Push::SimplePush(7));
        let text = String::from_utf8(std::mem::take(&mut request)).unwrap();
        assert!(text.starts_with("PUT /wpush/a HTTP/1.1\r\n"), "{text}");
        assert!(
            text.ends_with("Content-Length: 9\r\n\r\nversion=7"),
            "{text}"
        );
        write_request(&mut request, host, "/wpush/b", Push::WebPush(b"xyz"));
        let text = String::from_utf8(request).unwrap();
        assert!(text.starts_with("POST /wpush/b HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 3\r\n\r\nxyz"), "{text}");
    }

    #[test]
    fn endpoints_split_into_host_and_path() {
        assert_eq!(
            split_endpoint("http://127.0.0.1:8081/wpush/v2/abc").unwrap(),
            ("127.0.0.1:8081", "/wpush/v2/abc")
        );
        assert!(split_endpoint("https://h/p").is_err());
        assert!(split_endpoint("http://h").is_err());
    }
}
