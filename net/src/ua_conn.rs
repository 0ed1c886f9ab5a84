//! One UA WebSocket: upgrade, then one task that waits for whichever comes
//! first — bytes from the UA, or a frame the engine queued for it.
//!
//! One task and one descriptor per socket: glommio reads are readiness-based
//! (`poll` then `recv`), so giving up a pending read to write loses no bytes,
//! and the process's descriptor budget goes to sockets, not duplicates. A
//! socket handed to another shard leaves with the hello and every byte read
//! after it.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use glommio::{GlommioError, ResourceType};

use herald_engine::shard::close;
use herald_engine::ConnId;

use crate::per_ip::IpSlot;
use crate::shard::{ConnHandle, Ctx, Outgoing, ShardMsg};
use crate::websocket::{self, Decoder, FrameError, HandshakeError, Incoming};

/// Bytes read per `read` call, in a buffer that exists only while data is
/// ready (see ARCHITECTURE.md).
const READ_CHUNK_BYTES: usize = 2048;
/// The read an idle socket waits in: big enough for a typical UA message.
const FIRST_READ_BYTES: usize = 128;
/// After Herald's close frame, how long the UA gets to close its side.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    static OPEN_SOCKETS: Cell<usize> = const { Cell::new(0) };
}

/// UA sockets still open on this shard (shutdown waits for them to close).
pub fn open_sockets() -> usize {
    OPEN_SOCKETS.with(Cell::get)
}

/// A freshly accepted socket: WebSocket upgrade, then the protocol. The
/// upgrade is boxed so its state is freed before the long idle life begins.
pub async fn serve(ctx: Rc<Ctx>, mut stream: TcpStream, ip_slot: Option<IpSlot>) {
    let Some((buffer, extended)) = Box::pin(upgrade(&ctx, &mut stream)).await else {
        return;
    };
    let socket = Socket::register(&ctx, &stream, ip_slot, extended);
    if extended {
        ctx.with_engine(|engine, now| engine.on_open_extended(now, socket.conn));
    } else {
        ctx.with_engine(|engine, now| engine.on_open(now, socket.conn));
    }
    socket.run(ctx, stream, buffer).await;
}

/// Reads the upgrade request and answers 101; returns the bytes read past
/// the request (a UA may send its hello right behind it).
async fn upgrade(ctx: &Rc<Ctx>, stream: &mut TcpStream) -> Option<(Vec<u8>, bool)> {
    let limits = &ctx.shared.config.limits;
    let deadline = Instant::now() + Duration::from_millis(limits.handshake_timeout_ms);
    let mut buffer = Vec::new();
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
                answer_token_request(ctx, stream).await;
                return None;
            }
            Err(HandshakeError::NotWebSocket) => {
                refuse(stream, "426 Upgrade Required").await;
                return None;
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return None;
        }
        if !read_more(stream, &mut buffer).await {
            return None;
        }
    };
    let response = websocket::upgrade_response(&upgrade);
    if stream.set_read_timeout(None).is_err() || stream.write_all(&response).await.is_err() {
        return None;
    }
    Some((buffer, upgrade.extended()))
}

/// `GET /token` (SPEC §3.6): a fresh, self-authenticating UA token minted for
/// this shard, at most `tokens_per_ip_per_minute_max` per source address.
async fn answer_token_request(ctx: &Rc<Ctx>, stream: &mut TcpStream) {
    let allowed = match stream.peer_addr() {
        Ok(peer) => ctx.token_allowed(peer.ip()),
        Err(_) => false,
    };
    let response = if allowed {
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

/// What travels with a socket handed over by another shard.
pub struct Adopted {
    /// Every byte the other shard read after the hello.
    pub buffered: Vec<u8>,
    pub hello: String,
    pub ip_slot: Option<IpSlot>,
    /// The socket speaks the extended protocol; `hello` is its registerUA.
    pub extended: bool,
}

/// A socket another shard handed over, with the hello it had read.
pub async fn serve_adopted(ctx: Rc<Ctx>, stream: TcpStream, adopted: Adopted) {
    let socket = Socket::register(&ctx, &stream, adopted.ip_slot, adopted.extended);
    if adopted.extended {
        ctx.with_engine(|engine, now| engine.on_adopted_extended(now, socket.conn, &adopted.hello));
    } else {
        ctx.with_engine(|engine, now| engine.on_adopted(now, socket.conn, &adopted.hello));
    }
    socket.run(ctx, stream, adopted.buffered).await;
}

async fn refuse(stream: &mut TcpStream, status: &str) {
    let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Reads once more into `buffer`; false on EOF or error. The chunk is boxed
/// so that it is allocated only for the instant a read is ready.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            true
        }
    }
}

/// Takes whatever else the socket has ready right now, without waiting.
/// (glommio reads are readiness-based: giving up a read that is not ready
/// loses no bytes.)
fn take_ready(stream: &mut TcpStream, buffer: &mut Vec<u8>) {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    while let Some(Ok(read)) = future::block_on(future::poll_once(stream.read(&mut chunk))) {
        buffer.extend_from_slice(&chunk[..read]);
        if read < chunk.len() {
            return;
        }
    }
}

type HandOffSlot = Rc<RefCell<Option<(usize, String)>>>;

struct Socket {
    conn: ConnId,
    /// Held for the socket's life on this shard, passed on at hand-off.
    ip_slot: RefCell<Option<IpSlot>>,
    /// Speaks the extended protocol (SPEC §3.6), passed on at hand-off.
    extended: bool,
    inbox: LocalReceiver<Outgoing>,
    hand_off: HandOffSlot,
}

enum Event {
    Read(std::io::Result<usize>),
    Outgoing(Option<Outgoing>),
}

impl Socket {
    /// Registers the connection with the shard: from now on the engine can
    /// queue frames for it.
    fn register(
        ctx: &Rc<Ctx>,
        stream: &TcpStream,
        ip_slot: Option<IpSlot>,
        extended: bool,
    ) -> Socket {
        // A hello may legitimately queue every pending message at once; only
        // frames beyond that (and the slack) mean the UA is not reading.
        let limits = &ctx.shared.config.limits;
        let outbox_frames_max = limits.pending_per_uaid_max + limits.ua_outbox_frames_max.max(1);
        let (outbox, inbox) = local_channel::new_unbounded();
        let conn = ctx.next_id();
        let hand_off: HandOffSlot = Rc::new(RefCell::new(None));
        let handle = ConnHandle {
            outbox,
            outbox_frames_max,
            fd: stream.as_raw_fd(),
            hand_off: hand_off.clone(),
        };
        ctx.conns.borrow_mut().insert(conn, handle);
        OPEN_SOCKETS.with(|count| count.set(count.get() + 1));
        Socket {
            conn,
            ip_slot: RefCell::new(ip_slot),
            extended,
            inbox,
            hand_off,
        }
    }

    async fn run(self, ctx: Rc<Ctx>, mut stream: TcpStream, mut buffer: Vec<u8>) {
        let message_bytes_max = ctx.shared.config.limits.ws_message_bytes_max;
        let mut decoder = Decoder::default();
        // Bytes that arrived with the upgrade or the hand-off come first.
        let mut readable_now = !buffer.is_empty();
        loop {
            if readable_now {
                readable_now = false;
                if let Some(outcome) =
                    self.decode(&ctx, &mut decoder, &mut buffer, message_bytes_max)
                {
                    match outcome {
                        Ended::HandOff(shard, hello) => {
                            let leaving = self.leaving(buffer, hello);
                            Box::pin(send_to_owner(&ctx, stream, shard, leaving)).await;
                            return self.finish();
                        }
                        Ended::Closing => break,
                    }
                }
                if buffer.is_empty() {
                    // Idle sockets keep no buffer capacity.
                    buffer = Vec::new();
                }
            }
            // An idle socket waits here: a read into a small inline buffer
            // (glommio polls for readiness without allocating), or a frame
            // for it. A `peek` would allocate a 4 KiB-aligned buffer per socket.
            let mut first = [0u8; FIRST_READ_BYTES];
            let event = future::or(async { Event::Outgoing(self.inbox.recv().await) }, async {
                Event::Read(stream.read(&mut first).await)
            })
            .await;
            match event {
                Event::Read(Ok(0)) | Event::Read(Err(_)) => {
                    if ctx.conns.borrow_mut().remove(&self.conn).is_some() {
                        ctx.with_engine(|engine, now| engine.on_closed(now, self.conn));
                    }
                    return self.finish();
                }
                Event::Read(Ok(read)) => {
                    buffer.extend_from_slice(&first[..read]);
                    if read == first.len() {
                        take_ready(&mut stream, &mut buffer);
                    }
                    readable_now = true;
                }
                Event::Outgoing(Some(item)) => {
                    if !Box::pin(write_item(&ctx, &mut stream, item)).await {
                        break;
                    }
                }
                // The shard dropped our handle without a close (hand-off, or
                // a stuck outbox): nothing more to send.
                Event::Outgoing(None) => {
                    let hand_off = self.hand_off.borrow_mut().take();
                    if let Some((shard, hello)) = hand_off {
                        let leaving = self.leaving(buffer, hello);
                        Box::pin(send_to_owner(&ctx, stream, shard, leaving)).await;
                        return self.finish();
                    }
                    break;
                }
            }
        }
        // Rare and slow: boxed so that idle sockets do not carry its state.
        Box::pin(self.close_gracefully(&ctx, &mut stream)).await;
        self.finish()
    }

    /// Writes what is still queued (the close frame among it), then gives the
    /// UA a moment to close its side.
    async fn close_gracefully(&self, ctx: &Rc<Ctx>, stream: &mut TcpStream) {
        if ctx.conns.borrow_mut().remove(&self.conn).is_some() {
            ctx.with_engine(|engine, now| engine.on_closed(now, self.conn));
        }
        while let Ok(Some(item)) = future::or(async { Ok(self.inbox.recv().await) }, async {
            glommio::timer::sleep(CLOSE_GRACE).await;
            Err(())
        })
        .await
        {
            if !write_item(ctx, stream, item).await {
                break;
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write).await;
        let _ = future::or(
            async { while read_more(stream, &mut Vec::new()).await {} },
            glommio::timer::sleep(CLOSE_GRACE),
        )
        .await;
    }

    /// What travels with the socket to the shard that owns its UA.
    fn leaving(&self, buffered: Vec<u8>, hello: String) -> Adopted {
        Adopted {
            buffered,
            hello,
            ip_slot: self.ip_slot.take(),
            extended: self.extended,
        }
    }

    fn finish(&self) {
        OPEN_SOCKETS.with(|count| count.set(count.get().saturating_sub(1)));
    }

    /// Feeds every complete message in `buffer` to the engine. Returns why the
    /// socket's life here ended, if it did.
    fn decode(
        &self,
        ctx: &Rc<Ctx>,
        decoder: &mut Decoder,
        buffer: &mut Vec<u8>,
        message_bytes_max: usize,
    ) -> Option<Ended> {
        let conn = self.conn;
        loop {
            if !ctx.conns.borrow().contains_key(&conn) {
                return Some(match self.hand_off.borrow_mut().take() {
                    Some((shard, hello)) => Ended::HandOff(shard, hello),
                    None => Ended::Closing,
                });
            }
            let error = match decoder.next(buffer, message_bytes_max) {
                Ok(None) => return None,
                Ok(Some(Incoming::Text(text))) => {
                    ctx.with_engine(|engine, now| engine.on_text(now, conn, &text));
                    continue;
                }
                Ok(Some(Incoming::Ping(payload))) => {
                    if let Some(handle) = ctx.conns.borrow().get(&conn) {
                        let _ = handle.queue(Outgoing::Pong(payload));
                    }
                    continue;
                }
                Ok(Some(Incoming::Pong)) => continue,
                Ok(Some(Incoming::Close)) => (close::NORMAL, "closed by the UA"),
                Err(FrameError::TooBig) => (close::TOO_BIG, "message too big"),
                Err(FrameError::Protocol(reason)) => (close::PROTOCOL_ERROR, reason),
            };
            ctx.with_engine(|engine, _| engine.on_socket_error(conn, error.0, error.1));
        }
    }
}

enum Ended {
    HandOff(usize, String),
    Closing,
}

/// Writes one queued item; false when the socket is done (closed or broken).
async fn write_item(ctx: &Rc<Ctx>, stream: &mut TcpStream, item: Outgoing) -> bool {
    let (frame, more) = match item {
        Outgoing::Text { after, text } => {
            let durable = match after {
                Some(lsn) => ctx.journal.wait_durable(lsn).await.is_ok(),
                None => true,
            };
            if durable {
                (websocket::text_frame(&text), true)
            } else {
                (
                    websocket::close_frame(close::INTERNAL, "storage unavailable"),
                    false,
                )
            }
        }
        Outgoing::Ping => (websocket::ping_frame(), true),
        Outgoing::Pong(payload) => (websocket::pong_frame(payload), true),
        Outgoing::Close { code, reason } => (websocket::close_frame(code, reason), false),
    };
    stream.write_all(&frame).await.is_ok() && more
}

/// Moves the socket to the shard that owns its UAID (SPEC §8): dup the fd for
/// the owner, then drop every local handle.
async fn send_to_owner(ctx: &Rc<Ctx>, stream: TcpStream, shard: usize, socket: Adopted) {
    // SAFETY: dup of the valid socket fd this task owns.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    if fd < 0 {
        return;
    }
    let message = ShardMsg::HandOff { fd, socket };
    if let Err(GlommioError::Closed(ResourceType::Channel(ShardMsg::HandOff { fd, .. })))
    | Err(GlommioError::WouldBlock(ResourceType::Channel(ShardMsg::HandOff { fd, .. }))) =
        ctx.senders.send_to(shard, message).await
    {
        // SAFETY: the message came back to us; we still own the descriptor.
        unsafe { libc::close(fd) };
    }
}
