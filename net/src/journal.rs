//! The shard's handle on its write-ahead log.
//!
//! PLACEHOLDER until store/ lands: every record counts as durable at once.

use std::cell::Cell;

use herald_engine::record::Record;
use herald_engine::Lsn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    Always,
    Batch,
    Never,
}

pub struct Journal {
    next_lsn: Cell<Lsn>,
}

impl Journal {
    pub fn new() -> Journal {
        Journal {
            next_lsn: Cell::new(1),
        }
    }

    pub fn append(&self, _record: &Record) -> Result<Lsn, String> {
        let lsn = self.next_lsn.get();
        self.next_lsn.set(lsn + 1);
        Ok(lsn)
    }

    pub fn is_durable(&self, lsn: Lsn) -> bool {
        lsn < self.next_lsn.get()
    }

    pub async fn wait_durable(&self, _lsn: Lsn) -> Result<(), String> {
        Ok(())
    }
}
