//! The wakeup core's HTTP client for wakeup proxies (SPEC §5): `POST
//! <url>/wakeup` with `{"ip","port","mcc","mnc","netid"}` and the proxies'
//! secret as `Authorization: Bearer`. Plain HTTP only: a proxy sits inside
//! an operator network, reached over a private link (README).
//!
//! One task per proxy on the wakeup core, one keep-alive connection each.
//! Calls queue in a bounded local channel; the task takes whatever is queued
//! (up to [`PIPELINE_MAX`]), writes the requests back to back and reads the
//! answers in order (HTTP/1.1 pipelining), so a busy proxy costs one write and
//! a few reads per batch rather than a round trip per wakeup. A failed call is
//! only counted: the planner's retry timer re-sends that wakeup anyway.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;

use crate::http_client::{read_response, split_http_url, Response};
use crate::wakeup_metrics::{reason, WakeupMetrics};
use crate::Secret;

/// Calls written before reading their answers.
const PIPELINE_MAX: usize = 64;
/// Calls waiting for a proxy; beyond this they fail as `proxy_busy`.
pub const QUEUE_MAX: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A proxy that takes longer than this to answer is treated as down.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `http://host[:port][/prefix]` split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyUrl {
    /// `host:port`, to connect to and for the Host header.
    pub authority: String,
    /// `/prefix/wakeup`.
    pub path: String,
}

impl ProxyUrl {
    pub fn parse(url: &str) -> Result<ProxyUrl, String> {
        let (authority, prefix) =
            split_http_url(url).map_err(|error| format!("wakeup proxy {error}"))?;
        Ok(ProxyUrl {
            authority,
            path: format!("{}/wakeup", prefix.trim_end_matches('/')),
        })
    }
}

/// The JSON body of one call.
pub fn body(ip: std::net::IpAddr, port: u16, mcc: &str, mnc: &str, netid: &str) -> String {
    serde_json::json!({"ip": ip.to_string(), "port": port, "mcc": mcc, "mnc": mnc, "netid": netid})
        .to_string()
}

/// Starts the task for one proxy on the current (wakeup core) executor.
pub fn spawn(
    url: ProxyUrl,
    secret: Option<&Secret>,
    metrics: Rc<WakeupMetrics>,
) -> LocalSender<String> {
    let (sender, receiver) = local_channel::new_bounded(QUEUE_MAX);
    // Every request carries the same head lines but its length: built once.
    let authorization = secret
        .map(|secret| format!("Authorization: Bearer {}\r\n", secret.expose()))
        .unwrap_or_default();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\n{authorization}Content-Type: application/json\r\n",
        url.path, url.authority
    );
    glommio::spawn_local(run(url, head, receiver, metrics)).detach();
    sender
}

async fn run(
    url: ProxyUrl,
    head: String,
    receiver: LocalReceiver<String>,
    metrics: Rc<WakeupMetrics>,
) {
    let mut conn: Option<TcpStream> = None;
    let mut buffer = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut bodies = vec![first];
        while bodies.len() < PIPELINE_MAX {
            match futures_lite::future::poll_once(receiver.recv()).await {
                Some(Some(body)) => bodies.push(body),
                _ => break,
            }
        }
        if conn.is_none() {
            conn = connect(&url).await;
        }
        let Some(stream) = conn.as_mut() else {
            metrics.failed(reason::PROXY_IO, bodies.len() as u64);
            continue;
        };
        let outcome = exchange(stream, &url, &head, &bodies, &mut buffer).await;
        metrics.sent("proxy", outcome.ok);
        metrics.failed(reason::PROXY_STATUS, outcome.refused);
        let unanswered = bodies.len() as u64 - outcome.ok - outcome.refused;
        metrics.failed(reason::PROXY_IO, unanswered);
        if !outcome.keep {
            conn = None;
            buffer.clear();
        }
    }
}

async fn connect(url: &ProxyUrl) -> Option<TcpStream> {
    // Resolution uses the system resolver and may block this core briefly; it
    // happens once per (re)connect, and proxies are normally IP literals.
    let stream = match TcpStream::connect_timeout(url.authority.as_str(), CONNECT_TIMEOUT).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(proxy = %url.authority, %error, "cannot connect to wakeup proxy");
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return None;
    }
    Some(stream)
}

struct Outcome {
    ok: u64,
    refused: u64,
    /// The connection can carry the next batch.
    keep: bool,
}

async fn exchange(
    stream: &mut TcpStream,
    url: &ProxyUrl,
    head: &str,
    bodies: &[String],
    buffer: &mut Vec<u8>,
) -> Outcome {
    let mut outcome = Outcome {
        ok: 0,
        refused: 0,
        keep: false,
    };
    let mut request = Vec::with_capacity(bodies.len() * 256);
    for body in bodies {
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body.as_bytes());
    }
    if let Err(error) = stream.write_all(&request).await {
        tracing::warn!(proxy = %url.authority, %error, "wakeup proxy write failed");
        return outcome;
    }
    for _ in bodies {
        match read_response(stream, buffer).await {
            Ok(Response { status, close, .. }) => {
                if (200..300).contains(&status) {
                    outcome.ok += 1;
                } else {
                    tracing::debug!(proxy = %url.authority, status, "wakeup proxy refused a wakeup");
                    outcome.refused += 1;
                }
                if close {
                    return outcome;
                }
            }
            Err(error) => {
                tracing::warn!(proxy = %url.authority, error, "wakeup proxy answer unreadable");
                return outcome;
            }
        }
    }
    outcome.keep = true;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ProxyUrl::parse("http://10.0.0.1:9000").unwrap(),
            ProxyUrl {
                authority: "10.0.0.1:9000".into(),
                path: "/wakeup".into()
            }
        );
        assert_eq!(
            ProxyUrl::parse("http://proxy.example/op/").unwrap(),
            ProxyUrl {
                authority: "proxy.example:80".into(),
                path: "/op/wakeup".into()
            }
        );
        assert_eq!(
            ProxyUrl::parse("http://[::1]:9000/").unwrap().authority,
            "[::1]:9000"
        );
        assert!(ProxyUrl::parse("https://x").is_err());
        assert!(ProxyUrl::parse("http://").is_err());
    }
}
