//! One HTTP/2 connection (h2c with prior knowledge, or `h2` chosen by ALPN
//! over TLS) on a Herald listener, on the `h2` crate: many requests in flight at once, one per stream, each
//! answered through the listener's [`Routes`] exactly as an HTTP/1.1 one is
//! (same routes, statuses, headers and bodies).
//!
//! Bounds: `http2_streams_max` streams at once (announced in SETTINGS),
//! `http_header_bytes_max` of headers per request, the listener's body
//! limit, `http_request_timeout_ms` from a stream's headers to its last
//! body byte (408 past it), and `http_read_timeout_ms` of silence before
//! the connection is dropped.

use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use futures_lite::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::server::SendResponse;
use h2::RecvStream;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use herald_engine::push::{errno, HttpResponse};

use crate::conn_io::{Conn, Replayed};
use crate::http::Head;
use crate::routes::{Routes, UNREAD_BODY_DISCARD_BYTES_MAX};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves the connection's streams until it ends; `read` holds the bytes
/// read while telling HTTP/2 from HTTP/1.1 (the preface, and maybe more).
pub async fn serve(routes: &impl Routes, stream: impl Conn, read: Vec<u8>) {
    let limits = routes.limits();
    let idle = Duration::from_millis(limits.http_read_timeout_ms.max(1));
    if stream.set_read_timeout(Some(idle)).is_err() {
        return;
    }
    let io = Replayed::new(read, stream);
    let header_bytes_max = u32::try_from(limits.http_header_bytes_max).unwrap_or(u32::MAX);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(limits.http2_streams_max.max(1))
        .max_header_list_size(header_bytes_max)
        .handshake::<_, Bytes>(io.compat());
    let Ok(mut connection) = handshake.await else {
        return;
    };
    let mut answering = FuturesUnordered::new();
    loop {
        let accepted = future::poll_fn(|cx| {
            // Every answer that can finish now does, before the connection
            // is polled: their frames then leave together, in one write.
            while let Poll::Ready(Some(())) = answering.poll_next(cx) {}
            connection.poll_accept(cx)
        });
        match accepted.await {
            Some(Ok((request, respond))) => answering.push(answer(routes, request, respond)),
            // The client went away, broke the protocol or was idle too long:
            // the streams still answering have nobody to answer.
            Some(Err(_)) | None => return,
        }
    }
}

/// Reads one stream's request and answers it.
async fn answer(
    routes: &impl Routes,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, mut body) = request.into_parts();
    let mut head = Head {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        head_bytes: 0,
        body_bytes: 0,
        keep_alive: true,
    };
    let limits = routes.limits();
    let deadline = Duration::from_millis(limits.http_request_timeout_ms.max(1));
    let read = future::or(read_body(routes, &mut head, &mut body), async {
        glommio::timer::sleep(deadline).await;
        Err(BodyError::TooSlow)
    });
    let response = match read.await {
        Ok(data) => routes.route(&head, &data).await,
        Err(BodyError::TooLarge) => routes.too_large(&head),
        Err(BodyError::TooSlow) => HttpResponse::error(
            408,
            errno::BAD_REQUEST,
            "request not complete within http_request_timeout_ms",
        ),
        // The client reset the stream: nobody waits for an answer.
        Err(BodyError::Reset) => return,
    };
    send(&mut respond, &response);
}

enum BodyError {
    TooLarge,
    TooSlow,
    Reset,
}

/// The whole body, within the listener's limit; `head.body_bytes` says how
/// long it is (or, over the limit, how long it was going to be).
async fn read_body(
    routes: &impl Routes,
    head: &mut Head,
    body: &mut RecvStream,
) -> Result<Vec<u8>, BodyError> {
    let body_bytes_max = routes.body_bytes_max();
    let announced = head
        .headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse::<usize>().ok());
    let mut data = Vec::with_capacity(announced.unwrap_or(0).min(body_bytes_max));
    let mut received = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| BodyError::Reset)?;
        // Read bytes free the client's flow-control window for more.
        let _ = body.flow_control().release_capacity(chunk.len());
        received += chunk.len();
        if received > UNREAD_BODY_DISCARD_BYTES_MAX {
            break;
        }
        // Past the limit the rest is read and dropped: a client still
        // sending when its 413 comes may take the stream's end for an error.
        if received <= body_bytes_max {
            data.extend_from_slice(&chunk);
        }
    }
    head.body_bytes = announced.unwrap_or(0).max(received);
    if head.body_bytes > body_bytes_max {
        return Err(BodyError::TooLarge);
    }
    Ok(data)
}

/// Sends `response` on its stream (h2 queues what the peer's window does
/// not take yet).
fn send(respond: &mut SendResponse<Bytes>, response: &HttpResponse) {
    let mut head = http::Response::builder().status(response.status);
    if !response.body.is_empty() {
        head = head.header(http::header::CONTENT_TYPE, response.content_type);
    }
    head = head.header(http::header::CONTENT_LENGTH, response.body.len());
    for (name, value) in &response.headers {
        head = head.header(*name, value.as_str());
    }
    let Ok(head) = head.body(()) else {
        tracing::error!(
            status = response.status,
            "an answer's header is not valid HTTP"
        );
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    };
    let end_of_stream = response.body.is_empty();
    let Ok(mut stream) = respond.send_response(head, end_of_stream) else {
        return;
    };
    if !end_of_stream {
        let _ = stream.send_data(Bytes::from(response.body.clone()), true);
    }
}
