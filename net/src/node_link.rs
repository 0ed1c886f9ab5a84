//! Cluster mode: the link between Herald nodes (SPEC §2 `--node-listen`).
//!
//! A node that takes an AS request for a UA another node holds sends the
//! request there, as it came (method, path, the AS's headers, body), and
//! relays the answer: the holder decodes it again and handles it as its own,
//! so the UA's socket gets the message without a round trip through Redis.
//! A node that takes a UA over tells the node that held it, which closes
//! the old socket. Every call carries the cluster's node secret (derived
//! from the shared key file) in `Herald-Node`; the listener refuses others.
//!
//! Each shard keeps one connection per peer node and pipelines its calls on
//! it (the node listener answers pipelined requests in order): the calls
//! made in one turn leave in one write, and their answers come back in few
//! reads, instead of a connection, a write and a read per call.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use ahash::AHashMap;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;

use herald_engine::push::{errno, HttpResponse};
use herald_engine::Uaid;
use herald_store::PreviousClaim;

use crate::http::Head;
use crate::http_client::{read_response, split_http_url, Response};

/// The header that carries the node secret.
pub const SECRET_HEADER: &str = "herald-node";
/// The path a node posts one UA's share of an app notification to:
/// `/node/app/<uaid>/<url token>`, the AS's body as it came.
pub const APP_SHARE_PATH: &str = "/node/app/";
/// The path a node posts to when it took a UA over:
/// `/node/dropped/<uaid>/<nonce of the displaced claim>`.
pub const DROPPED_PATH: &str = "/node/dropped/";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A forwarded push waits for the holder's durable write, which waits for
/// Redis replicas: generous, but not forever. (A kept connection that reads
/// nothing this long closes; the next call opens another.)
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The headers of a holder's answer that the AS must see.
const RELAYED_HEADERS: [&str; 4] = ["Location", "TTL", "Link", "Retry-After"];

/// One shard's client side of the node link.
pub struct NodeLink {
    /// This node's own URL (`--node-url`): a claim that names it is ours.
    pub own_url: String,
    secret: String,
    /// The kept connection to each peer node.
    peers: RefCell<AHashMap<String, Rc<PeerConn>>>,
}

/// Where one call's answer goes.
type AnswerSender = LocalSender<Result<Response, String>>;

/// One kept connection to a peer node, its calls pipelined. Its writer
/// task writes what is queued; its reader task hands each answer to the
/// oldest call waiting. The queue is as long as the shard's forwards in
/// flight, which the AS listener's limits bound.
#[derive(Default)]
struct PeerConn {
    /// Requests not yet written.
    outgoing: RefCell<Vec<u8>>,
    /// The calls written or queued, oldest first.
    waiting: RefCell<VecDeque<AnswerSender>>,
    writer: RefCell<Option<Waker>>,
    /// A write or read failed, the peer closed, or a read timed out: no new
    /// call is queued here; the ones waiting get an error.
    broken: Cell<bool>,
}

impl PeerConn {
    fn open(stream: TcpStream) -> Rc<PeerConn> {
        let conn = Rc::new(PeerConn::default());
        let (reader, writer) = futures_lite::io::split(stream);
        glommio::spawn_local(conn.clone().write_loop(writer)).detach();
        glommio::spawn_local(conn.clone().read_loop(reader)).detach();
        conn
    }

    fn queue(&self, request: &[u8], answer: AnswerSender) {
        self.outgoing.borrow_mut().extend_from_slice(request);
        self.waiting.borrow_mut().push_back(answer);
        if let Some(waker) = self.writer.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn write_loop(self: Rc<Self>, mut stream: WriteHalf<TcpStream>) {
        loop {
            let bytes = std::future::poll_fn(|cx| {
                if self.broken.get() {
                    return Poll::Ready(None);
                }
                let mut outgoing = self.outgoing.borrow_mut();
                if outgoing.is_empty() {
                    *self.writer.borrow_mut() = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(Some(std::mem::take(&mut *outgoing)))
            })
            .await;
            let Some(bytes) = bytes else {
                return;
            };
            if let Err(error) = stream.write_all(&bytes).await {
                self.break_off(&error.to_string());
                return;
            }
        }
    }

    async fn read_loop(self: Rc<Self>, mut stream: ReadHalf<TcpStream>) {
        let mut buffer = Vec::new();
        loop {
            match read_response(&mut stream, &mut buffer).await {
                Ok(answer) => {
                    let close = answer.close;
                    if let Some(waiting) = self.waiting.borrow_mut().pop_front() {
                        let _ = waiting.try_send(Ok(answer));
                    }
                    if close {
                        self.break_off("the peer closed the connection");
                        return;
                    }
                }
                Err(error) => {
                    self.break_off(error);
                    return;
                }
            }
        }
    }

    /// Nothing more goes on this connection; every call waiting fails.
    fn break_off(&self, error: &str) {
        self.broken.set(true);
        if let Some(waker) = self.writer.borrow_mut().take() {
            waker.wake();
        }
        for waiting in self.waiting.borrow_mut().drain(..) {
            let _ = waiting.try_send(Err(error.to_owned()));
        }
    }
}

impl NodeLink {
    pub fn new(own_url: String, secret: String) -> NodeLink {
        NodeLink {
            own_url,
            secret,
            peers: RefCell::new(AHashMap::new()),
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

    /// Sends `uaid`'s share of an app notification (`body` as the AS
    /// posted it to the app's url) to the node at `peer`, which holds the UA.
    pub async fn forward_app_share(
        &self,
        peer: &str,
        uaid: Uaid,
        url_token: &str,
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        let request = format!(
            "POST {APP_SHARE_PATH}{}/{url_token} HTTP/1.1\r\n",
            uaid.to_hex()
        )
        .into_bytes();
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
        let kept = self.peers.borrow().get(peer).cloned();
        if let Some(conn) = kept.filter(|conn| !conn.broken.get()) {
            // A kept connection the peer closed just now fails the call; it
            // goes again, once, on a new connection.
            if let Ok(answer) = exchange(&conn, &request).await {
                return Ok(relayed(answer));
            }
        }
        let stream = TcpStream::connect_timeout(authority.as_str(), CONNECT_TIMEOUT)
            .await
            .map_err(|error| format!("cannot connect to node {peer}: {error}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|error| error.to_string())?;
        let conn = PeerConn::open(stream);
        self.peers
            .borrow_mut()
            .insert(peer.to_owned(), conn.clone());
        let answer = exchange(&conn, &request)
            .await
            .map_err(|error| format!("node {peer}: {error}"))?;
        Ok(relayed(answer))
    }
}

/// Queues `request` on `conn` and waits for its answer.
async fn exchange(conn: &PeerConn, request: &[u8]) -> Result<Response, String> {
    let (answer, receiver) = local_channel::new_bounded(1);
    conn.queue(request, answer);
    receiver
        .recv()
        .await
        .unwrap_or_else(|| Err("the connection closed".into()))
}

/// A holder's answer as the AS gets it.
fn relayed(answer: Response) -> HttpResponse {
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
    response
}

/// The answer to a node-link call without the cluster's secret.
pub fn unauthorized() -> HttpResponse {
    HttpResponse::error(
        401,
        errno::INVALID_AUTHENTICATION,
        "node link: missing or wrong node secret",
    )
}
