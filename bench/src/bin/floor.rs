//! `herald-floor`: the benchmark's floor.
//!
//! A minimal glommio server that does the same socket work as Herald: the
//! same executors and `SO_REUSEPORT` listeners, the same WebSocket frames and
//! keep-alive HTTP, the same cross-executor hop for a push that lands on the
//! wrong executor (there and back over the channel mesh). It has no engine,
//! no WAL and no protocol state beyond "this socket registered this channel",
//! so `herald-bench floor` (the same generator as `herald-bench throughput`)
//! measures how fast the machine can possibly go, and the gap to Herald is
//! what Herald's own work costs.
//!
//! It speaks just enough of Herald's protocol for the generator: hello,
//! register, ack, ping; `POST` (Web Push) and `PUT` (SimplePush) endpoints.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Parser;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use futures_util::future::join_all;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{spawn_local, LocalExecutorBuilder, Placement};
use herald_net::process::{block_handled_signals, shared_listener, wait_for_signal};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// Herald's allocator (`tools/src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone, Copy)]
#[command(about = "The benchmark's floor: Herald's sockets and hops, no engine, no WAL")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:29080")]
    ua_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:29081")]
    as_listen: SocketAddr,
    #[arg(long, default_value_t = 2)]
    shards: usize,
}

/// Same as Herald: the machine allows 8 MiB of locked memory in all.
const IO_MEMORY_BYTES: usize = 512 * 1024;
const RING_CAPACITY: usize = 1024;
/// Largest HTTP request (head and body) or WebSocket frame accepted.
const REQUEST_BYTES_MAX: usize = 16 * 1024;
/// An idle UA task waits in a read this big: small, so that many idle
/// sockets cost little, as in Herald.
const UA_READ_BYTES: usize = 256;

/// A push as the accepting executor decoded it.
enum Push {
    WebPush(Vec<u8>),
    SimplePush(u64),
}

/// What crosses the mesh: a push for a socket the receiver owns, and whether
/// it was delivered.
enum Hop {
    Push {
        origin: usize,
        request: u64,
        conn: u64,
        push: Push,
    },
    Reply {
        request: u64,
        delivered: bool,
    },
}

/// The executor's side of one UA socket.
struct Ua {
    outbox: LocalSender<Vec<u8>>,
    /// The channel last registered on it: its endpoint names the socket.
    channel: Option<String>,
}

struct Ctx {
    index: usize,
    as_listen: SocketAddr,
    senders: Senders<Hop>,
    uas: RefCell<HashMap<u64, Ua>>,
    /// AS requests sent to another executor, waiting for its reply.
    waiting: RefCell<HashMap<u64, LocalSender<bool>>>,
    next_id: Cell<u64>,
}

impl Ctx {
    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Queues the notification frame to the socket; false if it is unknown.
    fn deliver(&self, conn: u64, push: Push) -> bool {
        let uas = self.uas.borrow();
        let Some(Ua {
            outbox,
            channel: Some(channel),
        }) = uas.get(&conn)
        else {
            return false;
        };
        let message = match push {
            Push::WebPush(body) => {
                let version = self.next_id().to_string();
                let mut message = json!({"messageType": "notification",
                    "channelID": channel, "version": version});
                if !body.is_empty() {
                    message["data"] = URL_SAFE_NO_PAD.encode(body).into();
                    message["headers"] = json!({"encoding": "aes128gcm"});
                }
                message
            }
            Push::SimplePush(version) => json!({"messageType": "notification",
                "updates": [{"channelID": channel, "version": version}]}),
        };
        outbox.try_send(text_frame(&message)).is_ok()
    }

    fn on_hop(self: &Rc<Self>, hop: Hop) {
        match hop {
            Hop::Push {
                origin,
                request,
                conn,
                push,
            } => {
                let delivered = self.deliver(conn, push);
                let ctx = self.clone();
                // A task, not an await here: two executors each waiting for
                // ring space to reply to the other would deadlock.
                spawn_local(async move {
                    let reply = Hop::Reply { request, delivered };
                    let _ = ctx.senders.send_to(origin, reply).await;
                })
                .detach();
            }
            Hop::Reply { request, delivered } => {
                if let Some(answer) = self.waiting.borrow_mut().remove(&request) {
                    let _ = answer.try_send(delivered);
                }
            }
        }
    }
}

/// Delivers on this executor, or hops to the owner and waits for its reply.
async fn route(ctx: &Rc<Ctx>, shard: usize, conn: u64, push: Push) -> bool {
    if shard == ctx.index {
        return ctx.deliver(conn, push);
    }
    let request = ctx.next_id();
    let (answer, answered) = local_channel::new_bounded(1);
    ctx.waiting.borrow_mut().insert(request, answer);
    let hop = Hop::Push {
        origin: ctx.index,
        request,
        conn,
        push,
    };
    // Fails for a shard that does not exist: an unknown endpoint.
    if ctx.senders.send_to(shard, hop).await.is_err() {
        ctx.waiting.borrow_mut().remove(&request);
        return false;
    }
    answered.recv().await.unwrap_or(false)
}

fn main() {
    let cli = Cli::parse();
    // Before any executor starts, so that only this thread sees them.
    let signals = block_handled_signals();
    let shards = cli.shards.max(1);
    let mesh = MeshBuilder::<Hop, _>::full(shards, RING_CAPACITY);
    let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
    let (ready_sender, ready) = mpsc::channel();
    for index in 0..shards {
        let (mesh, ready_sender) = (mesh.clone(), ready_sender.clone());
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(index % cpus))
            .name(&format!("floor-{index}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || run(index, cli, mesh, ready_sender));
        if let Err(error) = spawned {
            fail(&format!("cannot start executor {index}: {error}"));
        }
    }
    for _ in 0..shards {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => fail(&error),
            Err(_) => fail("an executor stopped while starting"),
        }
    }
    println!(
        "herald-floor listening ua={} as={}",
        cli.ua_listen, cli.as_listen
    );
    wait_for_signal(&signals);
    // Nothing to flush or drain: exiting drops every socket at once.
    std::process::exit(0);
}

fn fail(error: &str) -> ! {
    eprintln!("herald-floor: {error}");
    std::process::exit(1);
}

/// One executor: bind, join the mesh, serve both listeners forever.
async fn run(
    index: usize,
    cli: Cli,
    mesh: MeshBuilder<Hop, Full>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let listeners =
        shared_listener(cli.ua_listen).and_then(|ua| Ok((ua, shared_listener(cli.as_listen)?)));
    let (ua_listener, as_listener) = match listeners {
        Ok(bound) => bound,
        Err(error) => {
            let _ = ready.send(Err(format!("executor {index}: cannot listen: {error}")));
            return;
        }
    };
    let Ok((senders, mut receivers)) = mesh.join().await else {
        let _ = ready.send(Err(format!("executor {index}: cannot join the mesh")));
        return;
    };
    let ctx = Rc::new(Ctx {
        index,
        as_listen: cli.as_listen,
        senders,
        uas: RefCell::default(),
        waiting: RefCell::default(),
        next_id: Cell::new(1),
    });
    for (_, receiver) in receivers.streams() {
        let ctx = ctx.clone();
        spawn_local(async move {
            while let Some(hop) = receiver.recv().await {
                ctx.on_hop(hop);
            }
        })
        .detach();
    }
    let _ = ready.send(Ok(()));
    future::zip(
        accept(ctx.clone(), ua_listener, serve_ua),
        accept(ctx, as_listener, serve_as),
    )
    .await;
}

async fn accept<F, Served>(ctx: Rc<Ctx>, listener: TcpListener, serve: F)
where
    F: Fn(Rc<Ctx>, TcpStream) -> Served,
    Served: Future<Output = ()> + 'static,
{
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                spawn_local(serve(ctx.clone(), stream)).detach();
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => glommio::timer::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    let found = headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(found.value).ok().map(str::trim)
}

fn refusal(status: &str) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

/// One UA: upgrade, then one task waits for whichever comes first, bytes
/// from the UA or frames queued for it, as Herald's `ua_conn` does.
async fn serve_ua(ctx: Rc<Ctx>, mut stream: TcpStream) {
    let Some(mut buffer) = upgrade(&mut stream).await else {
        return;
    };
    let conn = ctx.next_id();
    let (outbox, inbox) = local_channel::new_unbounded();
    let ua = Ua {
        outbox,
        channel: None,
    };
    ctx.uas.borrow_mut().insert(conn, ua);
    let mut chunk = [0u8; UA_READ_BYTES];
    loop {
        let mut out = Vec::new();
        let open = decode(&ctx, conn, &mut buffer, &mut out);
        if (!out.is_empty() && stream.write_all(&out).await.is_err()) || !open {
            break;
        }
        if buffer.is_empty() {
            buffer = Vec::new(); // idle sockets keep no buffer capacity
        }
        // glommio reads are readiness-based: a read that loses the race
        // loses no bytes.
        let event = future::or(async { Err(inbox.recv().await) }, async {
            Ok(stream.read(&mut chunk).await)
        })
        .await;
        match event {
            Ok(Ok(read)) if read > 0 => buffer.extend_from_slice(&chunk[..read]),
            Err(Some(mut frames)) => {
                // Everything queued goes out in one write.
                while let Some(Some(more)) = future::poll_once(inbox.recv()).await {
                    frames.extend_from_slice(&more);
                }
                if stream.write_all(&frames).await.is_err() {
                    break;
                }
            }
            _ => break, // EOF or a read error
        }
    }
    ctx.uas.borrow_mut().remove(&conn);
}

/// Reads the upgrade request and answers 101; returns the bytes read past it.
async fn upgrade(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        match handshake(&buffer) {
            Ok(Some((response, used))) => {
                stream.write_all(response.as_bytes()).await.ok()?;
                buffer.drain(..used);
                return Some(buffer);
            }
            Ok(None) => match stream.read(&mut chunk).await {
                Ok(read) if read > 0 => buffer.extend_from_slice(&chunk[..read]),
                _ => return None,
            },
            Err(status) => {
                let _ = stream.write_all(refusal(status).as_bytes()).await;
                return None;
            }
        }
    }
}

/// The 101 response to a complete upgrade request, and the request's length.
fn handshake(buffer: &[u8]) -> Result<Option<(String, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let Some(used) = parse_head(&mut request, buffer)? else {
        return Ok(None);
    };
    let key = header(request.headers, "sec-websocket-key").ok_or("426 Upgrade Required")?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    // Firefox offers the push subprotocol and expects it echoed.
    let offered = header(request.headers, "sec-websocket-protocol").is_some_and(|list| {
        list.split(',')
            .any(|name| name.trim() == "push-notification")
    });
    let protocol = if offered {
        "Sec-WebSocket-Protocol: push-notification\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    );
    Ok(Some((response, used)))
}

/// Parses an HTTP request head: its length, `Ok(None)` while incomplete, or
/// the status to refuse it with.
fn parse_head<'b>(
    request: &mut httparse::Request<'_, 'b>,
    buffer: &'b [u8],
) -> Result<Option<usize>, &'static str> {
    match request.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => Ok(Some(head)),
        Ok(httparse::Status::Partial) if buffer.len() < REQUEST_BYTES_MAX => Ok(None),
        Ok(httparse::Status::Partial) => Err("431 Request Header Fields Too Large"),
        Err(_) => Err("400 Bad Request"),
    }
}

/// Answers every complete client message in `buffer` into `out`; false once
/// the socket must close.
fn decode(ctx: &Ctx, conn: u64, buffer: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    loop {
        let reply = match next_frame(buffer) {
            Ok(None) => return true,
            Ok(Some((OpCode::Data(Data::Text), text))) => match on_text(ctx, conn, &text) {
                Some(reply) => text_frame(&reply),
                None => continue,
            },
            Ok(Some((OpCode::Control(Control::Ping), payload))) => encode(Frame::pong(payload)),
            Ok(Some((OpCode::Control(Control::Pong), _))) => continue,
            Ok(Some((OpCode::Control(Control::Close), _))) => {
                out.extend_from_slice(&encode(Frame::close(None)));
                return false;
            }
            _ => return false, // binary, fragments, reserved opcodes, bad frames
        };
        out.extend_from_slice(&reply);
    }
}

/// Takes one client frame off the front of `buffer` and unmasks it.
/// `Ok(None)`: need more bytes. The length check bounds the buffer too.
/// UAs send each message in one frame, so the floor does not reassemble.
fn next_frame(buffer: &mut Vec<u8>) -> Result<Option<(OpCode, Vec<u8>)>, ()> {
    let mut cursor = Cursor::new(buffer.as_slice());
    let Some((header, length)) = FrameHeader::parse(&mut cursor).map_err(drop)? else {
        return Ok(None);
    };
    if length > REQUEST_BYTES_MAX as u64 || !header.is_final {
        return Err(());
    }
    let start = cursor.position() as usize;
    let end = start + length as usize;
    if buffer.len() < end {
        return Ok(None);
    }
    let mask = header.mask.ok_or(())?; // client frames must be masked
    let mut payload = buffer[start..end].to_vec();
    buffer.drain(..end);
    for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
    Ok(Some((header.opcode, payload)))
}

/// The reply to one JSON message, if it has one.
fn on_text(ctx: &Ctx, conn: u64, text: &[u8]) -> Option<Value> {
    let message: Value = serde_json::from_slice(text).ok()?;
    match message.get("messageType").and_then(Value::as_str) {
        Some("hello") => {
            let uaid = match message["uaid"].as_str() {
                Some(uaid) => uaid.to_owned(),
                None => format!("{:08x}{:024x}", ctx.index, conn),
            };
            let mut reply = json!({"messageType": "hello", "status": 200, "uaid": uaid});
            if message["use_webpush"] == true {
                reply["use_webpush"] = true.into();
            }
            Some(reply)
        }
        Some("register") => {
            let channel = message["channelID"].as_str()?.to_owned();
            let endpoint = format!("http://{}/wpush/{}/{conn}", ctx.as_listen, ctx.index);
            let reply = json!({"messageType": "register", "status": 200,
                "channelID": channel, "pushEndpoint": endpoint});
            if let Some(ua) = ctx.uas.borrow_mut().get_mut(&conn) {
                ua.channel = Some(channel);
            }
            Some(reply)
        }
        // `{}` is a ping; acks and anything else need no answer.
        None if message.as_object().is_some_and(|fields| fields.is_empty()) => Some(json!({})),
        _ => None,
    }
}

fn encode(frame: Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len());
    let _ = frame.format(&mut out); // writing into a Vec cannot fail
    out
}

fn text_frame(message: &Value) -> Vec<u8> {
    let text = message.to_string().into_bytes();
    encode(Frame::message(text, OpCode::Data(Data::Text), true))
}

/// One AS request, owned, its bytes already taken off the buffer.
struct Request {
    /// `(shard, conn)` from `/wpush/<shard>/<conn>`.
    target: Option<(usize, u64)>,
    push: Option<Push>,
    ttl: u64,
}

/// One keep-alive AS connection: routes every complete request buffered
/// at once (pipelined ones hop to their shards together, as Herald's do),
/// answers them in order in one write, then reads more.
async fn serve_as(ctx: Rc<Ctx>, mut stream: TcpStream) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut requests = Vec::new();
        let refused = loop {
            match parse_request(&buffer) {
                Ok(Some((request, used))) => {
                    buffer.drain(..used);
                    requests.push(request);
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        let answers = join_all(requests.into_iter().map(|request| answer(&ctx, request))).await;
        let mut out = answers.concat();
        if let Some(status) = refused {
            out.push_str(&refusal(status));
        }
        let written = out.is_empty() || stream.write_all(out.as_bytes()).await.is_ok();
        if !written || refused.is_some() {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(read) if read > 0 => buffer.extend_from_slice(&chunk[..read]),
            _ => return,
        }
    }
}

/// The first complete request in `buffer` and its length in bytes.
fn parse_request(buffer: &[u8]) -> Result<Option<(Request, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let Some(head) = parse_head(&mut request, buffer)? else {
        return Ok(None);
    };
    let length = match header(request.headers, "content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(length)) if head.saturating_add(length) <= REQUEST_BYTES_MAX => length,
        Some(Ok(_)) => return Err("413 Content Too Large"),
        Some(Err(_)) => return Err("400 Bad Request"),
    };
    let Some(body) = buffer.get(head..head + length) else {
        return Ok(None);
    };
    let push = match request.method {
        Some("POST") => Some(Push::WebPush(body.to_vec())),
        Some("PUT") => simple_push_version(body).map(Push::SimplePush),
        _ => None,
    };
    let target = request.path.and_then(|path| {
        let (shard, conn) = path.strip_prefix("/wpush/")?.split_once('/')?;
        Some((shard.parse().ok()?, conn.parse().ok()?))
    });
    let ttl = header(request.headers, "ttl").and_then(|ttl| ttl.parse().ok());
    let request = Request {
        target,
        push,
        ttl: ttl.unwrap_or(0),
    };
    Ok(Some((request, head + length)))
}

/// `version=N` from a SimplePush form body.
fn simple_push_version(body: &[u8]) -> Option<u64> {
    let form = std::str::from_utf8(body).ok()?;
    let version = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("version="))?;
    version.trim().parse().ok()
}

async fn answer(ctx: &Rc<Ctx>, request: Request) -> String {
    let not_found = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let (Some((shard, conn)), Some(push)) = (request.target, request.push) else {
        return not_found.to_owned();
    };
    let web_push = matches!(push, Push::WebPush(_));
    if !route(ctx, shard, conn, push).await {
        return not_found.to_owned();
    }
    if web_push {
        format!(
            "HTTP/1.1 201 Created\r\nLocation: http://{}/m/{shard}.{conn}\r\nTTL: {}\r\n\
             Content-Length: 0\r\n\r\n",
            ctx.as_listen, request.ttl
        )
    } else {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_owned()
    }
}
