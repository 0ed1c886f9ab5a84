//! One HTTP/1.1 connection on a Herald listener (or an HTTP/2 one, handed
//! to [`http2_conn`] once its preface shows): frame requests (keep-alive,
//! pipelining, `Expect: 100-continue`, bounded heads and bodies, a read
//! timeout between requests and a deadline for each whole request) and
//! answer each through the listener's [`Routes`]; a framing error is
//! answered, after the answers to the requests before it, and closes the
//! connection. The connection is any [`Conn`]: a TCP socket, or TLS over
//! one (where ALPN `h2` leads to the same preface, and so to HTTP/2).

use std::io::ErrorKind;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use futures_util::future::join_all;

use herald_engine::limits::Limits;
use herald_engine::push::{errno, HttpResponse};

use crate::conn_io::Conn;
use crate::http::{self, FramingError, Head};
use crate::http2_conn;
use crate::routes::{Routes, UNREAD_BODY_DISCARD_BYTES_MAX};

/// Enough for a few dozen pipelined pushes per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// After an early answer (413), for how long the refused body is read and
/// dropped (up to [`UNREAD_BODY_DISCARD_BYTES_MAX`]) before the connection
/// is closed.
const UNREAD_BODY_DISCARD_TIME: Duration = Duration::from_secs(2);

/// Serves requests until the connection ends; `buffer` holds what was read
/// before the first request (after a PROXY header).
///
/// Pipelined requests are served in batches: every whole request already
/// read (up to `http_pipeline_requests_max`) is routed at once, so a sender
/// with many requests in flight gets them decoded, stored and made durable
/// together; the answers leave in request order, in one write.
pub async fn serve(routes: &impl Routes, mut stream: impl Conn, mut buffer: Vec<u8>) {
    let limits = routes.limits();
    let batch_max = limits.http_pipeline_requests_max.max(1);
    let mut reader = Reader::new(limits);
    match speaks_http2(&mut stream, &mut buffer, &mut reader).await {
        // Boxed: HTTP/2's connection state is large, and inline it would
        // make every HTTP/1.1 connection's task as large.
        Some(true) => return Box::pin(http2_conn::serve(routes, stream, buffer)).await,
        Some(false) => {}
        None => return,
    }
    let mut answers = Vec::new();
    loop {
        let Some(first) = next_request(routes, &mut stream, &mut buffer, &mut reader).await else {
            return;
        };
        let mut batch = vec![(0, first)];
        let mut batch_bytes = batch[0].1.head_bytes + batch[0].1.body_bytes;
        while batch.len() < batch_max && batch[batch.len() - 1].1.keep_alive {
            let Some(head) = whole_request(routes, &buffer[batch_bytes..]) else {
                // Not whole yet, or a framing error: the next turn reads or answers it.
                break;
            };
            let start = batch_bytes;
            batch_bytes += head.head_bytes + head.body_bytes;
            batch.push((start, head));
        }
        let responses = join_all(batch.iter().map(|(start, head)| {
            let body = start + head.head_bytes..start + head.head_bytes + head.body_bytes;
            routes.route(head, &buffer[body])
        }))
        .await;
        answers.clear();
        for ((_, head), response) in batch.iter().zip(&responses) {
            http::append_response(&mut answers, response, head.keep_alive);
        }
        buffer.drain(..batch_bytes);
        reader.request_done(&buffer);
        let keep_alive = batch[batch.len() - 1].1.keep_alive;
        if !send(&mut stream, &answers).await || !keep_alive {
            return;
        }
    }
}

/// Whether the client opens with HTTP/2's preface (h2c with prior
/// knowledge), reading until the first bytes tell; None if the connection
/// ended first.
async fn speaks_http2(
    stream: &mut impl Conn,
    buffer: &mut Vec<u8>,
    reader: &mut Reader,
) -> Option<bool> {
    let preface = http2_conn::PREFACE;
    while buffer.len() < preface.len() && preface.starts_with(buffer) {
        if !reader.read_more(stream, buffer).await {
            return None;
        }
    }
    Some(buffer.starts_with(preface))
}

/// The head of the request at the start of `buffer` if the whole request
/// is there and may be routed.
fn whole_request(routes: &impl Routes, buffer: &[u8]) -> Option<Head> {
    let head = http::parse_head(buffer, routes.limits().http_header_bytes_max).ok()?;
    let fits = head.body_bytes <= routes.body_bytes_max();
    (fits && buffer.len() >= head.head_bytes + head.body_bytes).then_some(head)
}

/// Reads until `buffer` starts with a whole request and returns its head;
/// None once the connection is done (closed, timed out, or a framing error
/// or a body over the limit answered).
async fn next_request(
    routes: &impl Routes,
    stream: &mut impl Conn,
    buffer: &mut Vec<u8>,
    reader: &mut Reader,
) -> Option<Head> {
    let limits = routes.limits();
    let head = loop {
        match http::parse_head(buffer, limits.http_header_bytes_max) {
            Ok(head) => break head,
            Err(FramingError::Incomplete) => {
                if !reader.read_more(stream, buffer).await {
                    return None;
                }
            }
            Err(FramingError::HeadersTooLarge) => {
                let response =
                    HttpResponse::error(431, errno::HEADERS_TOO_LARGE, "request headers too large");
                finish(stream, &response).await;
                return None;
            }
            Err(FramingError::Malformed(reason)) => {
                finish(
                    stream,
                    &HttpResponse::error(400, errno::BAD_REQUEST, reason),
                )
                .await;
                return None;
            }
        }
    };
    if head.body_bytes > routes.body_bytes_max() {
        let response = routes.too_large(&head);
        finish_unread(stream, &response, head.body_bytes).await;
        return None;
    }
    let request_bytes = head.head_bytes + head.body_bytes;
    if buffer.len() < request_bytes && expects_continue(&head) {
        // curl and others wait (about a second) for this before sending a body.
        if !send(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await {
            return None;
        }
    }
    while buffer.len() < request_bytes {
        if !reader.read_more(stream, buffer).await {
            return None;
        }
    }
    Some(head)
}

fn expects_continue(head: &Head) -> bool {
    head.headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case(b"100-continue")
    })
}

/// Reads a connection's requests: between requests a connection may idle
/// for `http_read_timeout_ms`; once a request's first byte is in, the whole
/// request must be in within `http_request_timeout_ms`, however its bytes
/// are paced (a client sending a byte every few seconds is slow-loris).
struct Reader {
    idle: Duration,
    per_request: Duration,
    /// When the request being read began (None between requests).
    started: Option<Instant>,
}

impl Reader {
    fn new(limits: &Limits) -> Reader {
        Reader {
            idle: Duration::from_millis(limits.http_read_timeout_ms.max(1)),
            per_request: Duration::from_millis(limits.http_request_timeout_ms.max(1)),
            started: None,
        }
    }

    /// Reads more into `buffer`; false when the connection is done (closed,
    /// broken, idle too long, or a request too slow: that one gets a 408).
    async fn read_more(&mut self, stream: &mut impl Conn, buffer: &mut Vec<u8>) -> bool {
        if !buffer.is_empty() {
            self.started.get_or_insert_with(Instant::now);
        }
        let timeout = match self.started {
            None => self.idle,
            Some(started) => {
                let left = self.per_request.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return too_slow(stream).await;
                }
                left.min(self.idle)
            }
        };
        if stream.set_read_timeout(Some(timeout)).is_err() {
            return false;
        }
        // The chunk lives only inside one poll: a read awaited into a chunk
        // would keep it in the connection's task while the connection
        // idles, 16 KiB per idle keep-alive sender.
        let read = future::poll_fn(|cx| {
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let polled = Pin::new(&mut *stream).poll_read(cx, &mut chunk);
            if let Poll::Ready(Ok(read)) = polled {
                buffer.extend_from_slice(&chunk[..read]);
            }
            polled
        });
        match read.await {
            Ok(0) => false,
            Ok(_) => {
                self.started.get_or_insert_with(Instant::now);
                true
            }
            // A request cut off by its deadline still hears why.
            Err(error) if error.kind() == ErrorKind::TimedOut && self.started.is_some() => {
                too_slow(stream).await
            }
            Err(_) => false,
        }
    }

    /// A request was answered; what follows it in `buffer` (pipelined) is
    /// the next one, which began already.
    fn request_done(&mut self, buffer: &[u8]) {
        self.started = (!buffer.is_empty()).then(Instant::now);
    }
}

/// Answers a request that was not complete in time, and closes: false, for
/// [`Reader::read_more`].
async fn too_slow(stream: &mut impl Conn) -> bool {
    let late = HttpResponse::error(
        408,
        errno::BAD_REQUEST,
        "request not complete within http_request_timeout_ms",
    );
    finish(stream, &late).await;
    false
}

/// Answers a framing error and closes: after one, request boundaries are lost.
async fn finish(stream: &mut impl Conn, response: &HttpResponse) {
    send(stream, &http::write_response(response, false)).await;
}

/// Writes `bytes` out (through TLS's record layer too: hence the flush);
/// false when the connection broke.
async fn send(stream: &mut impl Conn, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}

/// Answers before reading a body the client is still sending, then reads and
/// discards a bounded part of it: closing at once would reset the connection
/// and the client would see a broken pipe instead of the answer.
async fn finish_unread(stream: &mut impl Conn, response: &HttpResponse, body_bytes: usize) {
    finish(stream, response).await;
    // Shuts the write side (after TLS's close_notify).
    let _ = stream.close().await;
    let mut left = body_bytes.min(UNREAD_BODY_DISCARD_BYTES_MAX);
    let _ = stream.set_read_timeout(Some(UNREAD_BODY_DISCARD_TIME));
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    while left > 0 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => left = left.saturating_sub(read),
        }
    }
}
