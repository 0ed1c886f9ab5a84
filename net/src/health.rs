//! Whether this process should be sent traffic (readiness), from what each
//! shard last said about itself. Liveness needs no state: a process that
//! answers is alive.
//!
//! Each shard sets its own state: `Serving` once its WAL is replayed,
//! `StoreFailed` on the tick that first sees its store failed (a failed
//! store stays failed: nothing more becomes durable, every push to the
//! shard's UAs is refused until an operator restarts the process). In
//! cluster mode a shard is `StoreUnreachable` while its batches to Redis
//! fail, and `Serving` again once one goes through.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ShardState {
    /// Opening and replaying its WAL: it accepts nothing yet.
    Replaying = 0,
    Serving = 1,
    /// Its store failed for good.
    StoreFailed = 2,
    /// Cluster mode: Redis does not answer or acknowledge; retrying.
    StoreUnreachable = 3,
}

impl ShardState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Replaying => "replaying",
            ShardState::Serving => "serving",
            ShardState::StoreFailed => "store failed",
            ShardState::StoreUnreachable => "store unreachable",
        }
    }

    fn from_u8(value: u8) -> ShardState {
        match value {
            0 => ShardState::Replaying,
            1 => ShardState::Serving,
            2 => ShardState::StoreFailed,
            _ => ShardState::StoreUnreachable,
        }
    }
}

/// Every shard's state, readable from any thread.
pub struct ShardStates(Vec<AtomicU8>);

impl ShardStates {
    /// `shards` shards, all replaying.
    pub fn new(shards: usize) -> ShardStates {
        ShardStates(
            (0..shards)
                .map(|_| AtomicU8::new(ShardState::Replaying as u8))
                .collect(),
        )
    }

    pub fn set(&self, shard: usize, state: ShardState) {
        self.0[shard].store(state as u8, Ordering::SeqCst);
    }

    /// One shard's state, for `/about`.
    pub fn get(&self, shard: usize) -> ShardState {
        ShardState::from_u8(self.0[shard].load(Ordering::SeqCst))
    }

    fn all(&self) -> Vec<ShardState> {
        self.0
            .iter()
            .map(|state| ShardState::from_u8(state.load(Ordering::SeqCst)))
            .collect()
    }

    /// Every shard has replayed its WAL (the listeners accept once this holds).
    pub fn all_replayed(&self) -> bool {
        self.all()
            .iter()
            .all(|state| *state != ShardState::Replaying)
    }

    pub fn readiness(&self, shutting_down: bool) -> Readiness {
        readiness(&self.all(), shutting_down)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady {
        /// For people: the most serious cause.
        reason: String,
        replaying: Vec<usize>,
        store_failed: Vec<usize>,
    },
}

/// Ready when every shard serves and the process is not shutting down. A
/// store failure is named before a replay: it will not pass on its own.
fn readiness(states: &[ShardState], shutting_down: bool) -> Readiness {
    let shards_in = |wanted: ShardState| -> Vec<usize> {
        (0..states.len())
            .filter(|shard| states[*shard] == wanted)
            .collect()
    };
    let replaying = shards_in(ShardState::Replaying);
    let store_failed = shards_in(ShardState::StoreFailed);
    let unreachable = shards_in(ShardState::StoreUnreachable);
    let list = |shards: &[usize]| {
        let numbers: Vec<String> = shards.iter().map(usize::to_string).collect();
        match numbers.len() {
            1 => format!("shard {}", numbers[0]),
            _ => format!("shards {}", numbers.join(", ")),
        }
    };
    let reason = if shutting_down {
        "shutting down".to_owned()
    } else if !store_failed.is_empty() {
        format!(
            "the store failed on {}: pushes to its UAs are refused until a restart (the cause is in the server log)",
            list(&store_failed)
        )
    } else if !unreachable.is_empty() {
        format!(
            "the cluster store is unreachable from {}: pushes are refused while it retries",
            list(&unreachable)
        )
    } else if !replaying.is_empty() {
        format!("{} still replaying the WAL", list(&replaying))
    } else {
        return Readiness::Ready;
    };
    Readiness::NotReady {
        reason,
        replaying,
        store_failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ShardState::*;

    #[test]
    fn a_cluster_store_out_of_reach_is_not_ready_and_says_so() {
        let Readiness::NotReady { reason, .. } = readiness(&[Serving, StoreUnreachable], false)
        else {
            panic!("an unreachable cluster store is not ready");
        };
        assert!(reason.contains("unreachable from shard 1"), "{reason}");
        assert_eq!(
            ShardState::from_u8(StoreUnreachable as u8),
            StoreUnreachable
        );
    }

    #[test]
    fn ready_only_when_every_shard_serves_and_not_shutting_down() {
        assert_eq!(readiness(&[Serving, Serving], false), Readiness::Ready);
        assert_eq!(
            readiness(&[Serving, Replaying, Replaying], false),
            Readiness::NotReady {
                reason: "shards 1, 2 still replaying the WAL".to_owned(),
                replaying: vec![1, 2],
                store_failed: vec![],
            }
        );
        let Readiness::NotReady {
            reason,
            store_failed,
            replaying,
        } = readiness(&[Replaying, StoreFailed], false)
        else {
            panic!("a failed store is not ready");
        };
        assert!(
            reason.starts_with("the store failed on shard 1:"),
            "a failure is named before a replay: {reason}"
        );
        assert_eq!((replaying, store_failed), (vec![0], vec![1]));
        let Readiness::NotReady { reason, .. } = readiness(&[Serving], true) else {
            panic!("shutting down is not ready");
        };
        assert_eq!(reason, "shutting down");
    }

    #[test]
    fn states_start_replaying_and_are_read_back() {
        let states = ShardStates::new(2);
        assert!(!states.all_replayed());
        states.set(0, Serving);
        assert!(!states.all_replayed());
        states.set(1, StoreFailed);
        assert!(states.all_replayed(), "a failed shard is done replaying");
        assert!(matches!(
            states.readiness(false),
            Readiness::NotReady { store_failed, .. } if store_failed == vec![1]
        ));
        states.set(1, Serving);
        assert_eq!(states.readiness(false), Readiness::Ready);
    }
}
