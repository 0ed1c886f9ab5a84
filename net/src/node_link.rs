//! Cluster mode: the link between Herald nodes (SPEC §2 `--node-listen`).
//!
//! A node that takes an AS request for a UA another node holds sends the
//! request there, as it came (method, path, the AS's headers, body), and
//! relays the answer: the holder decodes it again and handles it as its own,
//! so the UA's socket gets the message without a round trip through Redis.
//! A node that takes a UA over tells the node that held it, which closes
//! the old socket. Every call carries the cluster's node secret (derived
//! from the shared key file) in `Herald-Node`; the listener refuses others.

use std::cell::RefCell;
use std::time::Duration;

use ahash::AHashMap;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use herald_engine::push::{errno, HttpResponse};
use herald_engine::Uaid;
use herald_store::PreviousClaim;

use crate::http::Head;
use crate::http_client::{read_response, split_http_url};

/// The header that carries the node secret.
pub const SECRET_HEADER: &str = "herald-node";
/// The path a node posts to when it took a UA over:
/// `/node/dropped/<uaid>/<nonce of the displaced claim>`.
pub const DROPPED_PATH: &str = "/node/dropped/";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A forwarded push waits for the holder's durable write, which waits for
/// Redis replicas: generous, but not forever.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per peer node.
const IDLE_PER_PEER_MAX: usize = 16;
/// The headers of a holder's answer that the AS must see.
const RELAYED_HEADERS: [&str; 4] = ["Location", "TTL", "Link", "Retry-After"];

/// One shard's client side of the node link.
pub struct NodeLink {
    /// This node's own URL (`--node-url`): a claim that names it is ours.
    pub own_url: String,
    secret: String,
    idle: RefCell<AHashMap<String, Vec<TcpStream>>>,
}

impl NodeLink {
    pub fn new(own_url: String, secret: String) -> NodeLink {
        NodeLink {
            own_url,
            secret,
            idle: RefCell::new(AHashMap::new()),
        }
    }

    /// Whether `secret` (a request's `Herald-Node` header) is the cluster's.
    pub fn admits(&self, secret: Option<&[u8]>) -> bool {
        secret.is_some_and(|given| crate::admin_token::token_matches(given, self.secret.as_bytes()))
    }

    /// Sends an AS request to the node at `peer` and gives back its answer.
    pub async fn forward(
        &self,
        peer: &str,
        head: &Head,
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        let mut request = format!("{} {} HTTP/1.1\r\n", head.method, head.path).into_bytes();
        for (name, value) in &head.headers {
            let hop_by_hop = ["host", "content-length", "connection", SECRET_HEADER]
                .iter()
                .any(|skipped| name.eq_ignore_ascii_case(skipped));
            if !hop_by_hop {
                request.extend_from_slice(name.as_bytes());
                request.extend_from_slice(b": ");
                request.extend_from_slice(value);
                request.extend_from_slice(b"\r\n");
            }
        }
        self.call(peer, request, body).await
    }

    /// Tells the node that held `uaid` by the `previous` claim that this
    /// node took it over.
    pub async fn dropped(&self, previous: &PreviousClaim, uaid: Uaid) {
        let peer = previous.node.as_str();
        let request = format!(
            "POST {DROPPED_PATH}{}/{} HTTP/1.1\r\n",
            uaid.to_hex(),
            previous.nonce
        )
        .into_bytes();
        if let Err(error) = self.call(peer, request, &[]).await {
            // The old node is gone or cut off: its socket is gone with it,
            // or its next write is fenced and it lets go then.
            tracing::info!(peer, %error, "could not tell a node it lost a UA");
        }
    }

    /// Completes `request` (a request line and headers) with the host,
    /// secret and body, and exchanges it on a kept or new connection. A kept
    /// connection the peer closed meanwhile is retried once on a new one.
    async fn call(
        &self,
        peer: &str,
        mut request: Vec<u8>,
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        let (authority, _) = split_http_url(peer)?;
        request.extend_from_slice(
            format!(
                "Host: {authority}\r\n{SECRET_HEADER}: {}\r\nContent-Length: {}\r\n\r\n",
                self.secret,
                body.len()
            )
            .as_bytes(),
        );
        request.extend_from_slice(body);
        let kept = self.idle.borrow_mut().get_mut(peer).and_then(Vec::pop);
        if let Some(stream) = kept {
            if let Ok(answer) = self.exchange(peer, stream, &request).await {
                return Ok(answer);
            }
        }
        let stream = TcpStream::connect_timeout(authority.as_str(), CONNECT_TIMEOUT)
            .await
            .map_err(|error| format!("cannot connect to node {peer}: {error}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|error| error.to_string())?;
        self.exchange(peer, stream, &request).await
    }

    async fn exchange(
        &self,
        peer: &str,
        mut stream: TcpStream,
        request: &[u8],
    ) -> Result<HttpResponse, String> {
        stream
            .write_all(request)
            .await
            .map_err(|error| format!("node {peer}: {error}"))?;
        let mut buffer = Vec::new();
        let answer = read_response(&mut stream, &mut buffer)
            .await
            .map_err(|error| format!("node {peer}: {error}"))?;
        if !answer.close && buffer.is_empty() {
            let mut idle = self.idle.borrow_mut();
            let kept = idle.entry(peer.to_owned()).or_default();
            if kept.len() < IDLE_PER_PEER_MAX {
                kept.push(stream);
            }
        }
        let mut response = HttpResponse::json(
            answer.status,
            String::from_utf8_lossy(&answer.body).into_owned(),
        );
        for (name, value) in answer.headers {
            let relayed = RELAYED_HEADERS
                .iter()
                .find(|relayed| relayed.eq_ignore_ascii_case(&name));
            if let (Some(relayed), Ok(value)) = (relayed, String::from_utf8(value)) {
                response = response.with_header(relayed, value);
            }
        }
        Ok(response)
    }
}

/// The answer to a node-link call without the cluster's secret.
pub fn unauthorized() -> HttpResponse {
    HttpResponse::error(
        401,
        errno::INVALID_AUTHENTICATION,
        "node link: missing or wrong node secret",
    )
}
