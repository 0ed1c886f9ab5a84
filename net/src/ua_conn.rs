//! One UA WebSocket: the upgrade, then one task for the socket's life that
//! waits for whichever comes first — bytes from the UA, or an item the engine
//! queued for it (a frame, or the hand-off to another shard).
//!
//! One task and one descriptor per socket: glommio reads are readiness-based
//! (`poll` then `recv`), so giving up a pending read to write loses no bytes,
//! and the process's descriptor budget goes to sockets, not duplicates. A
//! socket handed to another shard leaves with the hello and every byte read
//! after it, and on `wss://` with its TLS session (`ua_tls.rs`).

use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::TcpStream;
use glommio::spawn_local;
use glommio::{GlommioError, ResourceType};

use herald_engine::push::HttpResponse;
use herald_engine::rate::Limited;
use herald_engine::shard::close;
use herald_engine::ConnId;
use herald_store::RecordLog;

use crate::client_addr;
use crate::ctx::{now_us, Adopted, Ctx};
use crate::http;
use crate::metrics::RateLimit;
use crate::per_ip::IpSlot;
use crate::shard::{Next, Outbox, Outgoing, RingMsg, STORE_FAILED_CLOSE};
use crate::ua_stream::{Ready, UaStream};
use crate::websocket::{self, Decoder, FrameError, HandshakeError, Incoming};

/// A batch of queued frames is written once it reaches this size.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// After Herald's close frame, how long the UA gets to close its side.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    static OPEN_SOCKETS: Cell<usize> = const { Cell::new(0) };
}

/// UA sockets still open on this shard (shutdown waits for them to close).
pub fn open_sockets() -> usize {
    OPEN_SOCKETS.with(Cell::get)
}

/// A freshly accepted socket: its client's address, the WebSocket upgrade
/// in this short-lived task, then the protocol in a task of its own
/// ([`Socket::start`]), so that nothing of the upgrade stays with the socket.
/// On `wss://` the TLS handshake comes before the upgrade, in the same
/// deadline.
pub async fn serve(ctx: Rc<Ctx>, mut tcp: TcpStream) {
    let limits = &ctx.shared.config.limits;
    // One deadline for a trusted proxy's PROXY header and the upgrade.
    let deadline = Instant::now() + Duration::from_millis(limits.handshake_timeout_ms);
    let Some(origin) = client_addr::accept(&ctx.shared, ctx.index, &mut tcp, deadline).await else {
        return;
    };
    let (mut stream, read) = match &ctx.shared.tls {
        None => (UaStream::plain(tcp), origin.rest),
        Some(tls) => match UaStream::accept_tls(tcp, tls.ua(), origin.rest, deadline).await {
            Some(accepted) => accepted,
            None => return,
        },
    };
    // Counted at connect, answered once the request is read: an answer and
    // a close before it would reset the connection and lose the answer.
    let limited = ctx.address_rates.ua_connect(origin.client).err();
    let upgraded = upgrade(&ctx, &mut stream, deadline, origin.client, limited, read).await;
    let Some((buffer, extended)) = upgraded else {
        return;
    };
    let socket = Socket::register(&ctx, origin.slot, origin.client, extended);
    ctx.with_driver(|driver| driver.on_open(socket.conn, extended));
    socket.start(ctx, stream, buffer);
}

/// Reads the upgrade request (after `buffer`, what was read before it) and
/// answers 101, or 429 when the connect was over its address's rate;
/// returns the bytes read past the request (a UA may send its hello right
/// behind it).
async fn upgrade(
    ctx: &Rc<Ctx>,
    stream: &mut UaStream,
    deadline: Instant,
    client: IpAddr,
    limited: Option<Limited>,
    mut buffer: Vec<u8>,
) -> Option<(Vec<u8>, bool)> {
    let limits = &ctx.shared.config.limits;
    let upgrade = loop {
        match websocket::parse_upgrade(&buffer) {
            Ok((upgrade, used)) => {
                buffer.drain(..used);
                break upgrade;
            }
            Err(HandshakeError::Incomplete) if buffer.len() < limits.http_header_bytes_max => {}
            Err(HandshakeError::Incomplete) => {
                refuse(stream, "431 Request Header Fields Too Large").await;
                return None;
            }
            Err(HandshakeError::Malformed) => {
                refuse(stream, "400 Bad Request").await;
                return None;
            }
            Err(HandshakeError::NotWebSocket) if websocket::is_token_request(&buffer) => {
                match limited {
                    Some(limited) => refuse_rate_limited(ctx, stream, limited).await,
                    None => answer_token_request(ctx, stream, client).await,
                }
                return None;
            }
            Err(HandshakeError::NotWebSocket) => {
                refuse(stream, "426 Upgrade Required").await;
                return None;
            }
            Err(HandshakeError::NoSuchResource) => {
                refuse(stream, "404 Not Found").await;
                return None;
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return None;
        }
        if !stream.read_more(&mut buffer).await {
            return None;
        }
    };
    if let Some(limited) = limited {
        refuse_rate_limited(ctx, stream, limited).await;
        return None;
    }
    let response = websocket::upgrade_response(&upgrade);
    if stream.set_read_timeout(None).is_err() || stream.write_all(&response).await.is_err() {
        return None;
    }
    Some((buffer, upgrade.extended()))
}

/// `GET /token` (SPEC §3.6): a fresh, self-authenticating UA token minted for
/// this shard, at most `tokens_per_ip_per_minute_max` per client address.
async fn answer_token_request(ctx: &Rc<Ctx>, stream: &mut UaStream, client: IpAddr) {
    let response = if ctx.token_allowed(client) {
        let token = ctx
            .keys
            .mint_uaid(&mut rand::thread_rng(), ctx.index, ctx.shared.config.shards)
            .to_hex();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{token}",
            token.len()
        )
    } else {
        "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_owned()
    };
    let _ = stream.write_all(response.as_bytes()).await;
}

/// A socket another shard handed over, with the hello it had read: the
/// engine reads the hello now, then the socket's task takes over.
pub fn adopt(ctx: &Rc<Ctx>, adopted: Adopted) {
    // SAFETY: the sending shard dup'ed this fd for us and closed its own copies.
    let tcp = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(adopted.fd) };
    let stream = UaStream::from_parts(tcp, adopted.tls);
    let socket = Socket::register(ctx, adopted.ip_slot, adopted.client, adopted.extended);
    let (conn, hello) = (socket.conn, &adopted.hello);
    ctx.with_driver(|driver| driver.on_adopted(conn, hello, adopted.extended));
    socket.start(ctx.clone(), stream, adopted.buffered);
}

/// 429 with `Retry-After` and a JSON reason, then close: a UA that backs
/// off as told gets in.
async fn refuse_rate_limited(ctx: &Ctx, stream: &mut UaStream, limited: Limited) {
    ctx.shared.metrics.rate_limited(RateLimit::ua_address, 1);
    let reason = "too many connections from this address";
    let response = HttpResponse::rate_limited(reason, limited);
    let _ = stream
        .write_all(&http::write_response(&response, false))
        .await;
}

async fn refuse(stream: &mut UaStream, status: &str) {
    let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
}

struct Socket {
    conn: ConnId,
    /// Held for the socket's life on this shard, passed on at hand-off.
    /// Boxed: the cap is off by default, and the slot would otherwise take
    /// room in every socket's task.
    ip_slot: Option<Box<IpSlot>>,
    /// The client's address (`client_addr.rs`), passed on at hand-off.
    client: IpAddr,
    /// Speaks the extended protocol (SPEC §3.6), passed on at hand-off.
    extended: bool,
    /// The engine forgot the socket: bytes from the UA no longer matter,
    /// what is left to do (a close frame, a hand-off) is queued. A field
    /// rather than a local so that the idle wait's closure captures one
    /// reference less (it fills padding next to `extended`).
    forgotten: bool,
    outbox: Rc<Outbox>,
}

enum Event {
    /// New bytes from the UA are in the buffer.
    Readable,
    /// The UA closed its side, or the socket broke.
    Closed,
    Outgoing(Outgoing),
    /// The front item waits for this LSN to be durable.
    Gated(herald_engine::Lsn),
    /// The engine forgot the socket and everything it queued is done.
    Drained,
}

impl Socket {
    /// Registers the connection with the shard: from now on the engine can
    /// queue frames for it.
    fn register(ctx: &Rc<Ctx>, ip_slot: Option<IpSlot>, client: IpAddr, extended: bool) -> Socket {
        let (conn, outbox) = ctx.with_driver(|driver| driver.open_conn());
        OPEN_SOCKETS.with(|count| count.set(count.get() + 1));
        Socket {
            conn,
            ip_slot: ip_slot.map(Box::new),
            client,
            extended,
            forgotten: false,
            outbox,
        }
    }

    /// Spawns the task that carries the socket's life on this shard: an idle
    /// socket is mostly this task, so it holds only what [`Socket::run`]
    /// needs (see ARCHITECTURE.md).
    fn start(self, ctx: Rc<Ctx>, stream: UaStream, buffer: Vec<u8>) {
        spawn_local(self.run(ctx, stream, buffer)).detach();
    }

    /// The socket's life on this shard. An `async move` block rather than an
    /// `async fn`, which would keep a second copy of every argument for the
    /// task's whole life; the rare paths are boxed, so that the idle wait
    /// holds only the locals declared here.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    fn run(
        mut self,
        ctx: Rc<Ctx>,
        mut stream: UaStream,
        mut buffer: Vec<u8>,
    ) -> impl Future<Output = ()> {
        async move {
            let mut decoder = Decoder::default();
            // Bytes that arrived with the upgrade or the hand-off come first.
            let mut readable_now = !buffer.is_empty();
            loop {
                if readable_now {
                    readable_now = false;
                    self.forgotten = !self.decode(&ctx, &mut decoder, &mut buffer);
                    if buffer.is_empty() {
                        // Idle sockets keep no buffer capacity.
                        buffer = Vec::new();
                    }
                }
                let event =
                    future::poll_fn(|cx| self.poll_event(cx, &ctx, &mut stream, &mut buffer)).await;
                match event {
                    Event::Readable => readable_now = true,
                    Event::Closed => {
                        self.forget(&ctx);
                        return self.finish();
                    }
                    Event::Outgoing(Outgoing::Abandon) => return self.finish(),
                    Event::Outgoing(Outgoing::HandOff { shard, hello }) => {
                        let adopted = self.leaving(stream, buffer, hello);
                        Box::pin(send_to_owner(&ctx, shard, adopted)).await;
                        return self.finish();
                    }
                    Event::Outgoing(item) => {
                        if !Box::pin(write_batch(&ctx, &mut stream, item, &self.outbox)).await {
                            break;
                        }
                    }
                    Event::Gated(lsn) => {
                        if !Box::pin(wait_for_record(&ctx, &mut stream, lsn)).await {
                            self.forget(&ctx);
                            return self.finish();
                        }
                    }
                    Event::Drained => break,
                }
            }
            // Rare and slow: boxed so that idle sockets do not carry its state.
            Box::pin(self.close_gracefully(&ctx, &mut stream)).await;
            self.finish()
        }
    }

    /// What an idle socket waits for: an item the shard queued (first, so
    /// that a close or hand-off is not held up by reads), or bytes from the
    /// UA until the engine forgets the socket.
    fn poll_event(
        &self,
        cx: &mut Context<'_>,
        ctx: &Ctx,
        stream: &mut UaStream,
        buffer: &mut Vec<u8>,
    ) -> Poll<Event> {
        match self.outbox.poll_next(cx, ctx.journal.durable_lsn()) {
            Poll::Ready(Next::Item(item)) => return Poll::Ready(Event::Outgoing(item)),
            Poll::Ready(Next::Gated(lsn)) => return Poll::Ready(Event::Gated(lsn)),
            Poll::Pending => {}
        }
        if self.forgotten {
            return Poll::Ready(Event::Drained);
        }
        stream.poll_read_ready(cx, buffer).map(|ready| match ready {
            Ready::Readable => Event::Readable,
            Ready::Closed => Event::Closed,
        })
    }

    /// Tells the engine the socket is gone, unless the engine closed it.
    fn forget(&self, ctx: &Rc<Ctx>) {
        ctx.with_driver(|driver| driver.on_closed(self.conn));
    }

    /// Writes what is still queued (the close frame among it), then gives the
    /// UA a moment to close its side.
    async fn close_gracefully(&self, ctx: &Rc<Ctx>, stream: &mut UaStream) {
        self.forget(ctx);
        // Nothing can be queued any more: the shard no longer has the outbox.
        loop {
            let item = match self.outbox.next(ctx.journal.durable_lsn()) {
                None => break,
                Some(Next::Item(item)) => item,
                Some(Next::Gated(lsn)) => {
                    if ctx.journal.wait_durable(lsn).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            if !write_batch(ctx, stream, item, &self.outbox).await {
                break;
            }
        }
        stream.shutdown().await;
        let _ = future::or(
            async { while stream.read_more(&mut Vec::new()).await {} },
            glommio::timer::sleep(CLOSE_GRACE),
        )
        .await;
    }

    /// What travels with the socket to the shard that owns its UA (SPEC
    /// §8): a dup of its fd for the owner, every local handle dropped, and
    /// its TLS session.
    fn leaving(&mut self, stream: UaStream, buffered: Vec<u8>, hello: String) -> Option<Adopted> {
        let (tcp, tls) = stream.into_parts();
        // SAFETY: dup of the valid socket fd this task owns.
        let fd = unsafe { libc::dup(tcp.as_raw_fd()) };
        drop(tcp);
        (fd >= 0).then(|| Adopted {
            fd,
            tls,
            buffered,
            hello,
            ip_slot: self.ip_slot.take().map(|slot| *slot),
            client: self.client,
            extended: self.extended,
        })
    }

    fn finish(&self) {
        OPEN_SOCKETS.with(|count| count.set(count.get().saturating_sub(1)));
    }

    /// Feeds every complete message in `buffer` to the engine. False once the
    /// engine has forgotten the socket (closed it or handed it off): the
    /// bytes after the message that made it do so stay in `buffer`, to travel
    /// with a hand-off.
    fn decode(&self, ctx: &Rc<Ctx>, decoder: &mut Decoder, buffer: &mut Vec<u8>) -> bool {
        let conn = self.conn;
        let message_bytes_max = ctx.shared.config.limits.ws_message_bytes_max;
        loop {
            if !ctx.driver.borrow().has_conn(conn) {
                return false;
            }
            let error = match decoder.next(buffer, message_bytes_max) {
                Ok(None) => return true,
                Ok(Some(Incoming::Text(text))) => {
                    ctx.with_driver(|driver| driver.on_text(conn, &text));
                    continue;
                }
                Ok(Some(Incoming::Ping(payload))) => {
                    ctx.with_driver(|driver| driver.on_ping(conn, payload));
                    continue;
                }
                Ok(Some(Incoming::Pong)) => continue,
                Ok(Some(Incoming::Close)) => (close::NORMAL, "closed by the UA"),
                Err(FrameError::TooBig) => (close::TOO_BIG, "message too big"),
                Err(FrameError::Protocol(reason)) => (close::PROTOCOL_ERROR, reason),
            };
            ctx.with_driver(|driver| driver.on_socket_error(conn, error.0, error.1));
        }
    }
}

/// Waits until the record a queued frame depends on is durable; false (and
/// a close frame to the UA) when the store failed and it never will be.
/// Rare: the socket's task awaits it boxed, so idle sockets carry none of it.
async fn wait_for_record(ctx: &Ctx, stream: &mut UaStream, lsn: herald_engine::Lsn) -> bool {
    if ctx.journal.wait_durable(lsn).await.is_ok() {
        return true;
    }
    let (code, reason) = STORE_FAILED_CLOSE;
    let _ = stream
        .write_all(&websocket::close_frame(code, reason))
        .await;
    false
}

/// Writes `first` and the frames queued behind it with one `write`, so that
/// a backlog (a reconnect, a burst) costs a few syscalls instead of one per
/// message. Only frames whose records are durable are taken (the outbox
/// keeps the rest). False when the socket is done (closed or broken).
async fn write_batch(
    ctx: &Rc<Ctx>,
    stream: &mut UaStream,
    first: Outgoing,
    outbox: &Outbox,
) -> bool {
    let mut bytes = Vec::new();
    let mut next = Some(first);
    let mut more = true;
    // When each notification in the batch was taken (allocates only if one is).
    let mut pushed = Vec::new();
    while let Some(item) = next.take() {
        if let Outgoing::Text {
            pushed_us: Some(at),
            ..
        } = item
        {
            pushed.push(at);
        }
        more = encode_item(item, &mut bytes);
        if more && bytes.len() < WRITE_BATCH_BYTES {
            next = outbox.next_frame(ctx.journal.durable_lsn());
        }
    }
    let written = stream.write_all(&bytes).await.is_ok();
    if written && !pushed.is_empty() {
        let now = now_us();
        for at in pushed {
            let took_s = now.saturating_sub(at) as f64 / 1e6;
            ctx.meters.delivery.observe(took_s);
        }
    }
    written && more
}

/// Appends one item's frame; false after the last frame a socket gets.
fn encode_item(item: Outgoing, bytes: &mut Vec<u8>) -> bool {
    let (frame, more) = match item {
        Outgoing::Text { text, .. } => (websocket::text_frame(&text), true),
        Outgoing::Ping => (websocket::ping_frame(), true),
        Outgoing::Pong(payload) => (websocket::pong_frame(payload), true),
        Outgoing::Close { code, reason } => (websocket::close_frame(code, reason), false),
        // Carried out by the socket's task, never written; a hand-off queued
        // behind a failed write is dropped with the socket.
        Outgoing::HandOff { .. } | Outgoing::Abandon => return false,
    };
    bytes.extend_from_slice(&frame);
    more
}

/// Sends a socket to the shard that owns its UAID (nothing to send if its
/// descriptor could not be duplicated).
async fn send_to_owner(ctx: &Rc<Ctx>, shard: usize, adopted: Option<Adopted>) {
    let Some(adopted) = adopted else {
        return;
    };
    if let Err(GlommioError::Closed(ResourceType::Channel(RingMsg::HandOff(adopted))))
    | Err(GlommioError::WouldBlock(ResourceType::Channel(RingMsg::HandOff(adopted)))) =
        ctx.senders.send_to(shard, RingMsg::HandOff(adopted)).await
    {
        // SAFETY: the message came back to us; we still own the descriptor.
        unsafe { libc::close(adopted.fd) };
    }
}
