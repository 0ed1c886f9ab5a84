//! What a shard queues for one UA socket, and the rule that a frame leaves
//! only once the record it depends on is durable.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use herald_engine::Lsn;

/// What a UA connection's task is asked to do, in order.
pub enum Outgoing {
    /// A text frame that may leave once `after` is durable; `pushed_us`:
    /// when its shard took the push it notifies of (`Runtime::now_us`), for
    /// the delivery latency.
    Text {
        after: Option<Lsn>,
        text: String,
        pushed_us: Option<u64>,
    },
    Ping,
    Pong(Vec<u8>),
    Close {
        code: u16,
        reason: &'static str,
    },
    /// Move the socket to the shard that owns its UA, with the message that
    /// named it; queued last, after whatever frames came before.
    HandOff {
        shard: usize,
        hello: String,
    },
    /// The shard gave up on the socket (its UA stopped reading): drop it
    /// without writing anything more. Replaces whatever was queued.
    Abandon,
}

impl Outgoing {
    /// The LSN that must be durable before this item may leave.
    fn gate(&self) -> Option<Lsn> {
        match self {
            Outgoing::Text { after, .. } => *after,
            _ => None,
        }
    }
}

/// The next thing a socket's task can do.
pub enum Next {
    /// Carry out this item now.
    Item(Outgoing),
    /// The front item waits for this LSN to become durable; everything
    /// behind it waits too (a socket's frames keep their order).
    Gated(Lsn),
}

/// The items queued for one UA socket, shared by the shard (which queues)
/// and the socket's task (which carries them out). One small allocation per
/// socket: unlike a glommio channel it keeps no queue capacity while empty,
/// and the hand-off travels in the queue instead of a slot of its own.
#[derive(Default)]
pub struct Outbox {
    items: RefCell<VecDeque<Outgoing>>,
    /// The socket's task, waiting for an item.
    waker: Cell<Option<Waker>>,
}

impl Outbox {
    pub(crate) fn push(&self, item: Outgoing) {
        self.items.borrow_mut().push_back(item);
        self.wake();
    }

    pub(crate) fn len(&self) -> usize {
        self.items.borrow().len()
    }

    pub(crate) fn abandon(&self) {
        let mut items = self.items.borrow_mut();
        items.clear();
        items.push_back(Outgoing::Abandon);
        drop(items);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The front item if it may leave with `durable_lsn` durable. The
    /// queue's memory goes back as soon as it is drained: idle sockets hold
    /// none.
    pub fn next(&self, durable_lsn: Lsn) -> Option<Next> {
        let mut items = self.items.borrow_mut();
        let gate = items.front()?.gate();
        if let Some(lsn) = gate.filter(|lsn| *lsn > durable_lsn) {
            return Some(Next::Gated(lsn));
        }
        let item = items.pop_front()?;
        if items.is_empty() {
            *items = VecDeque::new();
        }
        Some(Next::Item(item))
    }

    /// The next item if it is a frame that may leave now; a hand-off, or a
    /// frame still waiting for its record, stays queued.
    pub fn next_frame(&self, durable_lsn: Lsn) -> Option<Outgoing> {
        let is_frame = self
            .items
            .borrow()
            .front()
            .is_some_and(|item| !matches!(item, Outgoing::HandOff { .. } | Outgoing::Abandon));
        match is_frame.then(|| self.next(durable_lsn)).flatten() {
            Some(Next::Item(item)) => Some(item),
            _ => None,
        }
    }

    /// [`Outbox::next`], or `Pending` with the task's waker kept for the
    /// next push.
    pub fn poll_next(&self, cx: &Context<'_>, durable_lsn: Lsn) -> Poll<Next> {
        match self.next(durable_lsn) {
            Some(next) => Poll::Ready(next),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}
