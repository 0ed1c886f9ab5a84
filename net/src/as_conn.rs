//! One AS HTTP/1.1 connection: frame requests, answer operations pages here,
//! decode pushes and send them to the owning shard over its ring.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use herald_engine::extended;
use herald_engine::push::{self, errno, DecodeContext, HttpRequest, HttpResponse};

use crate::ctx::{now_ms, Ctx};
use crate::http::{self, FramingError, Head};
use crate::shard::{refusal_response, Refusal};
use crate::{broadcasts, pages};

const READ_CHUNK_BYTES: usize = 4096;
/// After an early answer (413), how much of the refused body is read and
/// dropped, and for how long, before the connection is closed.
const UNREAD_BODY_DISCARD_BYTES_MAX: usize = 1024 * 1024;
const UNREAD_BODY_DISCARD_TIME: Duration = Duration::from_secs(2);
/// A form-encoded SimplePush body may spell each payload byte as `%XX`.
const FORM_ENCODING_EXPANSION: usize = 3;

pub async fn serve(ctx: Rc<Ctx>, mut stream: TcpStream) {
    let limits = &ctx.shared.config.limits;
    if stream
        .set_read_timeout(Some(Duration::from_millis(limits.http_read_timeout_ms)))
        .is_err()
    {
        return;
    }
    let body_bytes_max = limits.push_body_bytes_max * FORM_ENCODING_EXPANSION;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let head = loop {
            match http::parse_head(&buffer, limits.http_header_bytes_max) {
                Ok(head) => break head,
                Err(FramingError::Incomplete) => {
                    if !read_more(&mut stream, &mut buffer).await {
                        return;
                    }
                }
                Err(FramingError::HeadersTooLarge) => {
                    let response = HttpResponse::error(
                        431,
                        errno::HEADERS_TOO_LARGE,
                        "request headers too large",
                    );
                    return finish(&mut stream, &response).await;
                }
                Err(FramingError::Malformed(reason)) => {
                    return finish(
                        &mut stream,
                        &HttpResponse::error(400, errno::BAD_REQUEST, reason),
                    )
                    .await;
                }
            }
        };
        if head.body_bytes > body_bytes_max {
            // Each protocol answers in its own error format.
            let response = if head.path.starts_with("/notify/") {
                extended::as_error(413, "Body too big")
            } else {
                HttpResponse::error(413, errno::PAYLOAD_TOO_LARGE, "body too large")
            };
            return finish_unread(&mut stream, &response, head.body_bytes).await;
        }
        let request_bytes = head.head_bytes + head.body_bytes;
        if buffer.len() < request_bytes && expects_continue(&head) {
            // curl and others wait (about a second) for this before sending a body.
            if stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        while buffer.len() < request_bytes {
            if !read_more(&mut stream, &mut buffer).await {
                return;
            }
        }
        let response = route(&ctx, &head, &buffer[head.head_bytes..request_bytes]).await;
        buffer.drain(..request_bytes);
        if stream
            .write_all(&http::write_response(&response, head.keep_alive))
            .await
            .is_err()
            || !head.keep_alive
        {
            return;
        }
    }
}

fn expects_continue(head: &Head) -> bool {
    head.headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case(b"100-continue")
    })
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            true
        }
    }
}

/// Answers a framing error and closes: after one, request boundaries are lost.
async fn finish(stream: &mut TcpStream, response: &HttpResponse) {
    let _ = stream
        .write_all(&http::write_response(response, false))
        .await;
}

/// Answers before reading a body the client is still sending, then reads and
/// discards a bounded part of it: closing at once would reset the connection
/// and the client would see a broken pipe instead of the answer.
async fn finish_unread(stream: &mut TcpStream, response: &HttpResponse, body_bytes: usize) {
    finish(stream, response).await;
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
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

async fn route(ctx: &Rc<Ctx>, head: &Head, body: &[u8]) -> HttpResponse {
    let path = head.path.split('?').next().unwrap_or_default();
    match (head.method.as_str(), path) {
        ("GET", "/health") => return pages::health(ctx),
        ("GET", "/metrics") => return pages::metrics(ctx),
        ("GET", "/about") | ("GET", "/") => return pages::about(ctx),
        ("POST", _) if path.starts_with("/notify/") => {
            return app_notify(ctx, &path["/notify/".len()..], body).await;
        }
        ("PUT", _) if path.starts_with("/v1/broadcasts/") => {
            let id = &path["/v1/broadcasts/".len()..];
            let authorization = head
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, value)| std::str::from_utf8(value).ok());
            return broadcasts::set(ctx, id, authorization, body).await;
        }
        _ => {}
    }
    let headers: Vec<(&str, &[u8])> = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect();
    let request = HttpRequest {
        method: &head.method,
        path: &head.path,
        headers: &headers,
        body,
    };
    let config = &ctx.shared.config;
    let audience = crate::origin_of(&config.endpoint_url);
    let context = DecodeContext {
        keys: &ctx.keys,
        limits: &config.limits,
        audience: &audience,
        now_ms: now_ms(),
    };
    match push::decode(&context, &request) {
        Ok(push) => dispatch(ctx, push).await,
        Err(response) => response,
    }
}

/// SPEC §3.6: an AS posts a signed notification to an app url. The UAs that
/// registered the app may live on any shard, so every shard gets it and
/// answers; the AS gets 200 if any shard stored it (all durably), else the
/// most telling refusal (a bad signature before "no such app").
async fn app_notify(ctx: &Rc<Ctx>, url_token: &str, body: &[u8]) -> HttpResponse {
    let config = &ctx.shared.config;
    let notification = match extended::decode_notification(body, config.limits.ttl_max_s) {
        Ok(notification) => notification,
        Err(response) => return response,
    };
    let Some(channel) = extended::channel_of(url_token) else {
        return extended::as_error(404, "No valid AppToken");
    };
    let mut answers = Vec::with_capacity(config.shards);
    for shard in 0..config.shards {
        let (answer, answered) = Ctx::answer_slot();
        let notification = notification.clone();
        let submitted = ctx
            .with_driver(|driver| driver.submit_app_notify(shard, channel, notification, answer));
        if let Err(refusal) = submitted {
            count_refusal(ctx, refusal);
            return refusal_response(refusal, true);
        }
        answers.push(answered);
    }
    let mut best: Option<HttpResponse> = None;
    for answered in answers {
        let response = answered
            .recv()
            .await
            .unwrap_or_else(|| extended::as_error(503, "Try again later"));
        let rank = |response: &HttpResponse| match response.status {
            200 => 3,
            401 => 2,
            404 => 0,
            _ => 1,
        };
        if best
            .as_ref()
            .is_none_or(|best| rank(&response) > rank(best))
        {
            best = Some(response);
        }
    }
    best.unwrap_or_else(|| extended::as_error(404, "No valid AppToken"))
}

/// Sends a decoded push to its owning shard and waits for the durable answer.
async fn dispatch(ctx: &Rc<Ctx>, push: push::PushRequest) -> HttpResponse {
    let (answer, answered) = Ctx::answer_slot();
    if let Err(refusal) = ctx.with_driver(|driver| driver.submit_push(push, answer)) {
        count_refusal(ctx, refusal);
        return refusal_response(refusal, false);
    }
    answered
        .recv()
        .await
        .unwrap_or_else(|| HttpResponse::error(500, errno::INTERNAL, "request lost"))
}

fn count_refusal(ctx: &Ctx, refusal: Refusal) {
    if refusal == Refusal::RingFull {
        ctx.shared.metrics.error(ctx.index, "ring_full", 1);
    }
}
