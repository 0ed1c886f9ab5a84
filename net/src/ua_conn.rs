//! One UA WebSocket: upgrade, then a reader task that decodes frames into
//! engine inputs and a writer task that sends what the engine queued.
//!
//! The two tasks hold separate (dup'ed) descriptors of the same socket, so a
//! read never waits on a write. A socket handed to another shard leaves with
//! the hello and every byte read after it.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use glommio::{spawn_local, GlommioError, ResourceType};

use herald_engine::shard::close;
use herald_engine::ConnId;

use crate::shard::{shutdown_socket, ConnHandle, Ctx, Outgoing, ShardMsg};
use crate::websocket::{self, Decoder, FrameError, HandshakeError, Incoming};

/// Bytes read per `read` call. Lives only in the reading future, never in
/// per-connection state; see ARCHITECTURE.md on idle memory.
const READ_CHUNK_BYTES: usize = 2048;
/// After Herald's close frame, how long the UA gets to close its side.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    static OPEN_WRITERS: Cell<usize> = const { Cell::new(0) };
}

/// Writer tasks still running on this shard (shutdown waits for them).
pub fn open_writers() -> usize {
    OPEN_WRITERS.with(Cell::get)
}

/// A freshly accepted socket: WebSocket upgrade, then the protocol.
pub async fn serve(ctx: Rc<Ctx>, mut stream: TcpStream) {
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
                return refuse(&mut stream, "431 Request Header Fields Too Large").await
            }
            Err(HandshakeError::Malformed) => return refuse(&mut stream, "400 Bad Request").await,
            Err(HandshakeError::NotWebSocket) => {
                return refuse(&mut stream, "426 Upgrade Required").await
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        if !read_more(&mut stream, &mut buffer).await {
            return;
        }
    };
    if stream.set_read_timeout(None).is_err()
        || stream
            .write_all(&websocket::upgrade_response(&upgrade))
            .await
            .is_err()
    {
        return;
    }
    let Some((conn, hand_off)) = start_writer(&ctx, &stream) else {
        return;
    };
    ctx.with_engine(|engine, now| engine.on_open(now, conn));
    read_loop(ctx, stream, conn, hand_off, buffer).await;
}

/// A socket another shard handed over, with the hello it had read.
pub async fn serve_adopted(ctx: Rc<Ctx>, stream: TcpStream, buffered: Vec<u8>, hello: String) {
    let Some((conn, hand_off)) = start_writer(&ctx, &stream) else {
        return;
    };
    ctx.with_engine(|engine, now| engine.on_adopted(now, conn, &hello));
    read_loop(ctx, stream, conn, hand_off, buffered).await;
}

async fn refuse(stream: &mut TcpStream, status: &str) {
    let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Reads once more into `buffer`; false on EOF or error.
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

type HandOffSlot = Rc<RefCell<Option<(usize, String)>>>;

/// Registers the connection with the shard and starts its writer task.
fn start_writer(ctx: &Rc<Ctx>, stream: &TcpStream) -> Option<(ConnId, HandOffSlot)> {
    let fd = stream.as_raw_fd();
    // SAFETY: dup of a valid socket fd; the new fd is owned by the writer's stream.
    let writer_fd = unsafe { libc::dup(fd) };
    if writer_fd < 0 {
        return None;
    }
    // SAFETY: writer_fd is a fresh descriptor nobody else owns.
    let writer_stream = unsafe { TcpStream::from_raw_fd(writer_fd) };
    let (outbox, inbox) =
        local_channel::new_bounded(ctx.shared.config.limits.ua_outbox_frames_max.max(1));
    let conn = ctx.next_id();
    let hand_off: HandOffSlot = Rc::new(RefCell::new(None));
    ctx.conns.borrow_mut().insert(
        conn,
        ConnHandle {
            outbox,
            fd,
            hand_off: hand_off.clone(),
        },
    );
    OPEN_WRITERS.with(|count| count.set(count.get() + 1));
    spawn_local(write_loop(ctx.clone(), writer_stream, inbox)).detach();
    Some((conn, hand_off))
}

async fn write_loop(ctx: Rc<Ctx>, mut stream: TcpStream, inbox: LocalReceiver<Outgoing>) {
    let mut frames = Vec::new();
    while let Some(item) = inbox.recv().await {
        let closing = match item {
            Outgoing::Text { after, text } => {
                if let Some(lsn) = after {
                    if ctx.journal.wait_durable(lsn).await.is_err() {
                        frames.extend(websocket::close_frame(
                            close::INTERNAL,
                            "storage unavailable",
                        ));
                        let _ = stream.write_all(&frames).await;
                        break;
                    }
                }
                frames.extend(websocket::text_frame(&text));
                false
            }
            Outgoing::Ping => {
                frames.extend(websocket::ping_frame());
                false
            }
            Outgoing::Pong(payload) => {
                frames.extend(websocket::pong_frame(payload));
                false
            }
            Outgoing::Close { code, reason } => {
                frames.extend(websocket::close_frame(code, reason));
                true
            }
        };
        if stream.write_all(&frames).await.is_err() {
            break;
        }
        frames.clear();
        if closing {
            let _ = stream.shutdown(std::net::Shutdown::Write).await;
            // The reader ends when the UA closes; a UA that never does is cut off.
            sleep(CLOSE_GRACE).await;
            shutdown_socket(stream.as_raw_fd());
            break;
        }
    }
    // Free the frame buffer before the (possibly long) wait for drop.
    drop(frames);
    OPEN_WRITERS.with(|count| count.set(count.get().saturating_sub(1)));
}

async fn read_loop(
    ctx: Rc<Ctx>,
    mut stream: TcpStream,
    conn: ConnId,
    hand_off: HandOffSlot,
    mut buffer: Vec<u8>,
) {
    let message_bytes_max = ctx.shared.config.limits.ws_message_bytes_max;
    let mut decoder = Decoder::default();
    loop {
        // Decode everything already buffered before reading again.
        loop {
            if !ctx.conns.borrow().contains_key(&conn) {
                if let Some((shard, hello)) = hand_off.borrow_mut().take() {
                    return send_to_owner(&ctx, stream, shard, buffer, hello).await;
                }
                return; // the engine closed this socket; the writer finishes it
            }
            match decoder.next(&mut buffer, message_bytes_max) {
                Ok(None) => break,
                Ok(Some(Incoming::Text(text))) => {
                    ctx.with_engine(|engine, now| engine.on_text(now, conn, &text))
                }
                Ok(Some(Incoming::Ping(payload))) => {
                    if let Some(handle) = ctx.conns.borrow().get(&conn) {
                        let _ = handle.outbox.try_send(Outgoing::Pong(payload));
                    }
                }
                Ok(Some(Incoming::Pong)) => {}
                Ok(Some(Incoming::Close)) => {
                    return ctx.with_engine(|engine, _| {
                        engine.on_socket_error(conn, close::NORMAL, "closed by the UA")
                    });
                }
                Err(FrameError::TooBig) => {
                    return ctx.with_engine(|engine, _| {
                        engine.on_socket_error(conn, close::TOO_BIG, "message too big")
                    });
                }
                Err(FrameError::Protocol(reason)) => {
                    return ctx.with_engine(|engine, _| {
                        engine.on_socket_error(conn, close::PROTOCOL_ERROR, reason)
                    });
                }
            }
        }
        if buffer.is_empty() {
            // Idle sockets keep no buffer capacity.
            buffer = Vec::new();
        }
        if !read_more(&mut stream, &mut buffer).await {
            break;
        }
    }
    if ctx.conns.borrow_mut().remove(&conn).is_some() {
        ctx.with_engine(|engine, now| engine.on_closed(now, conn));
    }
}

/// Moves the socket to the shard that owns its UAID (SPEC §8): dup the fd for
/// the owner, then drop every local handle.
async fn send_to_owner(
    ctx: &Rc<Ctx>,
    stream: TcpStream,
    shard: usize,
    buffered: Vec<u8>,
    hello: String,
) {
    // SAFETY: dup of the valid socket fd this task owns.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    if fd < 0 {
        return;
    }
    let sent = ctx
        .senders
        .send_to(
            shard,
            ShardMsg::HandOff {
                fd,
                buffered,
                hello,
            },
        )
        .await;
    if let Err(GlommioError::Closed(ResourceType::Channel(ShardMsg::HandOff { fd, .. })))
    | Err(GlommioError::WouldBlock(ResourceType::Channel(ShardMsg::HandOff { fd, .. }))) = sent
    {
        // SAFETY: the message came back to us; we still own the descriptor.
        unsafe { libc::close(fd) };
    }
}
