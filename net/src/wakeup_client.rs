//! The shards' end of the wakeup core (see `net/src/wakeup.rs`): a bounded
//! lock-free ring and a doorbell, so that a shard never waits for the core.

use std::net::UdpSocket;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use herald_engine::message::{Urgency, WakeupInfo};
use herald_engine::Uaid;

/// What a shard asks of the wakeup core.
pub(crate) enum Request {
    Wake {
        uaid: Uaid,
        target: WakeupInfo,
        urgency: Urgency,
    },
    Awake {
        uaid: Uaid,
    },
}

pub(crate) struct Inner {
    pub(crate) ring: ArrayQueue<Request>,
    /// Set by the core just before it sleeps; the first client to see it
    /// clears it and rings the doorbell.
    pub(crate) parked: AtomicBool,
    doorbell: UdpSocket,
    /// Requests dropped on a full ring (the core publishes the count).
    pub(crate) dropped: AtomicU64,
}

/// A shard's handle on the wakeup core: cheap to clone, `Send`.
#[derive(Clone)]
pub struct WakeupClient {
    inner: Arc<Inner>,
}

/// The core's end, moved into its executor by [`spawn`].
pub struct WakeupCore {
    pub(crate) inner: Arc<Inner>,
    pub(crate) doorbell: UdpSocket,
}

/// Builds the ring and the doorbell pair. Both doorbell sockets are bound to
/// loopback and connected to each other, so the core's socket accepts
/// datagrams from the client's socket only.
pub fn channel(ring_capacity: usize) -> Result<(WakeupClient, WakeupCore), String> {
    let pair = || -> std::io::Result<(UdpSocket, UdpSocket)> {
        let client = UdpSocket::bind("127.0.0.1:0")?;
        let core = UdpSocket::bind("127.0.0.1:0")?;
        client.connect(core.local_addr()?)?;
        core.connect(client.local_addr()?)?;
        client.set_nonblocking(true)?;
        Ok((client, core))
    };
    let (client, core) =
        pair().map_err(|error| format!("cannot create the wakeup core's doorbell: {error}"))?;
    let inner = Arc::new(Inner {
        ring: ArrayQueue::new(ring_capacity.max(1)),
        parked: AtomicBool::new(false),
        doorbell: client,
        dropped: AtomicU64::new(0),
    });
    Ok((
        WakeupClient {
            inner: inner.clone(),
        },
        WakeupCore {
            inner,
            doorbell: core,
        },
    ))
}

impl WakeupClient {
    /// Queue a wakeup for `uaid` (coalesced while one is in flight).
    pub fn wake(&self, uaid: Uaid, target: WakeupInfo, urgency: Urgency) {
        self.push(Request::Wake {
            uaid,
            target,
            urgency,
        });
    }

    /// `uaid` reconnected: stop retrying its wakeup.
    pub fn awake(&self, uaid: Uaid) {
        self.push(Request::Awake { uaid });
    }

    fn push(&self, request: Request) {
        if self.inner.ring.push(request).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Pairs with the fence in `park`: either the core sees this entry when
        // it re-checks the ring, or we see `parked` and ring the doorbell.
        fence(Ordering::SeqCst);
        if self.inner.parked.swap(false, Ordering::SeqCst) {
            // Non-blocking; EAGAIN means bytes are already waiting, which
            // wakes the core just as well.
            let _ = self.inner.doorbell.send(&[1]);
        }
    }
}
