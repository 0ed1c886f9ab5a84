//! Process start-up and shutdown: executors, listeners, signals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use crate::boot;
use crate::ctx::ShardRing;
use crate::metrics::{Metrics, ShardSnapshot};
use crate::process::{block_handled_signals, wait_for_signal};
use crate::shared::Shared;
use crate::{Build, ServerConfig};

/// io_uring buffer memory per executor. The machine allows 8 MiB of locked
/// memory in all; glommio's default (10 MiB) would not fit even one shard.
const EXECUTOR_IO_MEMORY_BYTES: usize = 512 * 1024;
/// The wakeup core only does timers, a few proxy connections and sendmmsg.
/// io_uring entries per ring. Deep rather than glommio's 128 because the
/// kernel sizes a ring's cancellation hash table from it (up to 256 buckets
/// at 8,192 completion entries): glommio cancels a timeout on every turn of
/// its loop, and each cancel first scans one bucket of the ring's armed
/// polls, one per waiting socket — with 8 buckets and 19,000 idle UAs that
/// scan took a third of the shard's time in a connect storm.
const EXECUTOR_RING_DEPTH: usize = 4096;
const WAKEUP_IO_MEMORY_BYTES: usize = 256 * 1024;
/// How long a port may stay held by a process that just exited (see
/// [`refuse_ports_in_use`]).
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(3);
/// How long start-up may take before we report the shards as stuck.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the server until SIGTERM/SIGINT. Errors are printed by the caller.
/// `_data_dir_lock`, taken before anything in the data dir was opened, proves
/// that this process alone uses it; it is held until this returns.
pub fn serve(
    config: ServerConfig,
    _data_dir_lock: herald_store::DataDirLock,
    build: Build,
) -> Result<(), String> {
    herald_store::check_layout(&config.data_dir, config.shards)
        .map_err(|error| format!("data dir {}: {error}", config.data_dir.display()))?;
    let node_listen = config.cluster.as_ref().map(|cluster| cluster.node_listen);
    refuse_ports_in_use(
        &[config.ua_listen, config.as_listen, config.admin_listen]
            .into_iter()
            .chain(node_listen)
            .collect::<Vec<_>>(),
    )?;
    // Unreadable TLS files stop the start here, before anything listens.
    let tls = config.tls.as_ref().map(crate::tls::Tls::load).transpose()?;
    let signals = block_handled_signals();
    let shards = config.shards.max(1);
    let (wakeups, wakeup_core) = crate::wakeup_client::channel(config.limits.wakeup_ring_capacity)?;
    let shared = Arc::new(Shared {
        snapshots: (0..shards)
            .map(|_| Mutex::new(ShardSnapshot::default()))
            .collect(),
        metrics: Metrics::new(build),
        build,
        shutdown: AtomicBool::new(false),
        started: Instant::now(),
        wakeups,
        connections_per_ip: Arc::default(),
        states: crate::health::ShardStates::new(shards),
        held: (0..shards).map(|_| Default::default()).collect(),
        tls,
        config,
    });
    let wakeup_handle = crate::wakeup::spawn(shared.clone(), wakeup_core, WAKEUP_IO_MEMORY_BYTES)?;
    let mesh = MeshBuilder::<ShardRing, _>::full(shards, shared.config.limits.ring_capacity.max(1));
    let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
    let (ready_sender, ready) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::with_capacity(shards);
    for index in 0..shards {
        let shared = shared.clone();
        let mesh = mesh.clone();
        let ready_sender = ready_sender.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(index % cpus))
            .name(&format!("herald-shard-{index}"))
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .ring_depth(EXECUTOR_RING_DEPTH)
            .spawn(move || boot::run(index, shared, mesh, ready_sender))
            .map_err(|error| {
                format!("cannot start shard {index} (is io_uring available?): {error}")
            })?;
        handles.push(handle);
    }
    drop(ready_sender);
    for _ in 0..shards {
        match ready.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shared.shutdown.store(true, Ordering::SeqCst);
                return Err(error);
            }
            Err(_) => return Err("shards did not start".to_owned()),
        }
    }
    let config = &shared.config;
    let (ws, http) = match config.tls {
        None => ("ws", "http"),
        Some(_) => ("wss", "https"),
    };
    println!(
        "herald: UA WebSocket listening on {ws}://{}",
        config.ua_listen
    );
    println!(
        "herald: AS HTTP listening on {http}://{} (endpoints under {})",
        config.as_listen, config.endpoint_url
    );
    println!(
        "herald: admin HTTP listening on http://{} (/health, /metrics, /about)",
        config.admin_listen
    );
    println!(
        "herald: data dir {} ({} shards, fsync {})",
        config.data_dir.display(),
        shards,
        config.fsync.as_str()
    );
    if !config.trusted_proxies.is_empty() {
        println!(
            "herald: client addresses from PROXY headers and X-Forwarded-For of {}",
            config.trusted_proxies
        );
    }
    tracing::info!(shards, "ready");
    let signal = loop {
        match wait_for_signal(&signals) {
            libc::SIGHUP => reload_tls(&shared),
            signal => break signal,
        }
    };
    tracing::info!(signal, "shutting down");
    shared.shutdown.store(true, Ordering::SeqCst);
    for handle in handles {
        if handle.join().is_err() {
            return Err("a shard failed while shutting down".to_owned());
        }
    }
    if wakeup_handle.join().is_err() {
        return Err("the wakeup core failed while shutting down".to_owned());
    }
    Ok(())
}

/// SIGHUP: the TLS certificate and key are read again; handshakes from now
/// on use them, connections keep their sessions. Files that do not load
/// leave the ones in force.
fn reload_tls(shared: &Shared) {
    let Some(tls) = &shared.tls else {
        tracing::info!("SIGHUP: no TLS files to reload");
        return;
    };
    match tls.reload() {
        Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
        Err(error) => {
            tracing::error!(%error, "SIGHUP: TLS files not reloaded, the previous ones stay")
        }
    }
}

/// The shards bind with SO_REUSEPORT, which would let a second Herald (or
/// anything else using SO_REUSEPORT as the same user) silently share a port
/// and split its traffic. A plain bind first turns that into a clear error.
///
/// A process that just died can hold its listeners a little longer: io_uring
/// releases the files of its pending requests after the process is gone. So a
/// refused bind is retried for a short while before it counts as "in use".
fn refuse_ports_in_use(addresses: &[std::net::SocketAddr]) -> Result<(), String> {
    let deadline = Instant::now() + PORT_RELEASE_WAIT;
    for address in addresses {
        loop {
            match std::net::TcpListener::bind(address) {
                Ok(_) => break,
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => return Err(format!("cannot listen on {address}: {error}")),
            }
        }
    }
    Ok(())
}
