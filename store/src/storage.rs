//! The small storage trait under the log, with an in-memory implementation
//! that can model crashes and a fault-injecting wrapper. The real one, on
//! glommio files, is in [`crate::glommio_storage`].
//!
//! A storage is one flat directory of named files (a shard dir). Names are
//! plain file names without `/`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::StoreError;

/// File operations the log needs. `async fn` without `Send`: every
/// implementation lives on one shard's thread.
///
/// Durability contract (what the log relies on, and what [`MemStorage`]
/// models): bytes written to a file are durable only after [`Storage::sync`]
/// of that file returns; creating, renaming or deleting a file is durable
/// only after [`Storage::sync_dir`] returns.
#[allow(async_fn_in_trait)]
pub trait Storage {
    /// Names of all files, in no particular order.
    async fn list(&self) -> Result<Vec<String>, StoreError>;
    /// Creates an empty file, truncating it if it exists.
    async fn create(&self, name: &str) -> Result<(), StoreError>;
    /// Current length of a file.
    async fn len(&self, name: &str) -> Result<u64, StoreError>;
    /// Reads up to `len` bytes from `offset` (fewer at the end of the file).
    async fn read(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError>;
    /// Writes all of `data` at `offset`, extending the file as needed.
    async fn write_at(&self, name: &str, offset: u64, data: Vec<u8>) -> Result<(), StoreError>;
    /// Writes `data` at the end of the file.
    async fn append(&self, name: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let offset = self.len(name).await?;
        self.write_at(name, offset, data).await
    }
    /// fdatasync: makes the file's written bytes durable.
    async fn sync(&self, name: &str) -> Result<(), StoreError>;
    /// Cuts a file to `len` bytes.
    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError>;
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Makes creations, renames and deletions durable (fsync of the directory).
    async fn sync_dir(&self) -> Result<(), StoreError>;

    /// Reads a whole file.
    async fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let len = self.len(name).await?;
        let mut out = Vec::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let want = ((len - out.len() as u64) as usize).min(crate::limits::READ_CHUNK_BYTES);
            let piece = self.read(name, out.len() as u64, want).await?;
            if piece.is_empty() {
                break;
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// In memory, with a written and a durable image of everything.

#[derive(Default, Clone, Debug)]
struct FileImage {
    /// What a reader sees now.
    written: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Set when a write or truncate touched bytes below `durable.len()`:
    /// then `durable` is no longer a prefix of `written` and the next sync
    /// copies the whole file instead of the new tail.
    diverged: bool,
}

#[derive(Default, Debug)]
struct MemState {
    next_id: u64,
    /// The directory as a reader sees it: name -> file id.
    dir_written: BTreeMap<String, u64>,
    /// The directory as of the last `sync_dir`.
    dir_durable: BTreeMap<String, u64>,
    files: HashMap<u64, FileImage>,
}

/// How [`MemStorage::crash`] builds what a crash leaves behind.
#[derive(Clone, Copy, Debug)]
pub struct CrashSpec {
    /// Seeds the choices below (per file).
    pub seed: u64,
    /// Whether directory changes since the last `sync_dir` survive (all of
    /// them) or not (none). Both are outcomes a real crash can have.
    pub keep_unsynced_dir: bool,
    /// Whether unsynced file bytes may survive: each file keeps its durable
    /// bytes plus a random prefix of what was written after them.
    pub keep_unsynced_bytes: bool,
    /// Whether the surviving unsynced prefix may end in zeros instead of the
    /// written bytes (a torn sector the file system zero-filled).
    pub zero_torn_tail: bool,
}

impl CrashSpec {
    /// A crash that keeps exactly what was synced.
    pub fn durable_only() -> CrashSpec {
        CrashSpec {
            seed: 0,
            keep_unsynced_dir: false,
            keep_unsynced_bytes: false,
            zero_torn_tail: false,
        }
    }

    /// A crash whose choices all follow from `seed` (through `StdRng`, whose
    /// algorithm Cargo.lock pins), so a failing crash test replays.
    pub fn random(seed: u64) -> CrashSpec {
        let mut rng = StdRng::seed_from_u64(seed);
        CrashSpec {
            seed: rng.gen(),
            keep_unsynced_dir: rng.gen_bool(0.5),
            keep_unsynced_bytes: rng.gen_ratio(3, 4),
            zero_torn_tail: rng.gen_ratio(1, 3),
        }
    }
}

/// A storage in memory. Clones share the same files, so a test can keep a
/// handle after giving one to a [`crate::Log`]. Every operation completes at
/// once: usable under `futures_lite::future::block_on` or any executor.
#[derive(Clone, Default, Debug)]
pub struct MemStorage {
    state: Rc<RefCell<MemState>>,
}

fn not_found(op: &'static str, name: &str) -> StoreError {
    StoreError::io(op, name, "no such file")
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A fresh storage holding `files` as written and durable.
    pub fn from_files(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> MemStorage {
        let storage = MemStorage::new();
        {
            let mut state = storage.state.borrow_mut();
            for (name, bytes) in files {
                let id = state.next_id;
                state.next_id += 1;
                state.dir_written.insert(name.clone(), id);
                state.dir_durable.insert(name, id);
                state.files.insert(
                    id,
                    FileImage {
                        written: bytes.clone(),
                        durable: bytes,
                        diverged: false,
                    },
                );
            }
        }
        storage
    }

    /// Every file as a reader sees it now, sorted by name.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let state = self.state.borrow();
        state
            .dir_written
            .iter()
            .map(|(name, id)| (name.clone(), state.files[id].written.clone()))
            .collect()
    }

    /// Replaces (or creates) a file's contents, written and durable; for tests
    /// that build damaged logs by hand.
    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.state.borrow_mut();
        let id = match state.dir_written.get(name) {
            Some(id) => *id,
            None => {
                let id = state.next_id;
                state.next_id += 1;
                id
            }
        };
        state.dir_written.insert(name.to_string(), id);
        state.dir_durable.insert(name.to_string(), id);
        state.files.insert(
            id,
            FileImage {
                written: bytes.clone(),
                durable: bytes,
                diverged: false,
            },
        );
    }

    /// What a crash right now could leave on disk, as a fresh storage whose
    /// files are all durable. See [`CrashSpec`].
    pub fn crash(&self, spec: CrashSpec) -> MemStorage {
        let state = self.state.borrow();
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let dir = if spec.keep_unsynced_dir {
            &state.dir_written
        } else {
            &state.dir_durable
        };
        let mut out = Vec::new();
        for (name, id) in dir {
            let Some(file) = state.files.get(id) else {
                continue;
            };
            let mut bytes = file.durable.clone();
            if spec.keep_unsynced_bytes {
                if file.diverged && file.written.len() < bytes.len() {
                    // Truncated since the last sync: either image is a
                    // possible outcome.
                    if rng.gen_bool(0.5) {
                        bytes = file.written.clone();
                    }
                } else if file.diverged {
                    // Overwritten in place since the last sync (a WAL
                    // segment's zeros written ahead): the new bytes reach
                    // the disk in order and may stop at any byte of the
                    // stretch that changed.
                    bytes = torn_overwrite(&bytes, &file.written, &mut rng);
                } else if file.written.len() > bytes.len() {
                    let extra = file.written.len() - bytes.len();
                    let keep = rng.gen_range(0..=extra);
                    let start = bytes.len();
                    bytes.extend_from_slice(&file.written[start..start + keep]);
                    if spec.zero_torn_tail && keep > 0 {
                        let zeros = rng.gen_range(0..=keep);
                        let len = bytes.len();
                        bytes[len - zeros..].fill(0);
                    }
                }
            }
            out.push((name.clone(), bytes));
        }
        MemStorage::from_files(out)
    }

    fn with_file<T>(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce(&mut FileImage) -> T,
    ) -> Result<T, StoreError> {
        let mut state = self.state.borrow_mut();
        let id = *state
            .dir_written
            .get(name)
            .ok_or_else(|| not_found(op, name))?;
        let file = state
            .files
            .get_mut(&id)
            .ok_or_else(|| not_found(op, name))?;
        Ok(f(file))
    }
}

impl Storage for MemStorage {
    async fn list(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.state.borrow().dir_written.keys().cloned().collect())
    }

    async fn create(&self, name: &str) -> Result<(), StoreError> {
        let mut state = self.state.borrow_mut();
        let id = state.next_id;
        state.next_id += 1;
        state.files.insert(id, FileImage::default());
        state.dir_written.insert(name.to_string(), id);
        Ok(())
    }

    async fn len(&self, name: &str) -> Result<u64, StoreError> {
        self.with_file("stat", name, |file| file.written.len() as u64)
    }

    async fn read(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.with_file("read", name, |file| {
            let start = (offset as usize).min(file.written.len());
            let end = start.saturating_add(len).min(file.written.len());
            file.written[start..end].to_vec()
        })
    }

    async fn write_at(&self, name: &str, offset: u64, data: Vec<u8>) -> Result<(), StoreError> {
        self.with_file("write", name, |file| {
            let offset = offset as usize;
            if offset < file.durable.len() {
                file.diverged = true;
            }
            if file.written.len() < offset + data.len() {
                file.written.resize(offset + data.len(), 0);
            }
            file.written[offset..offset + data.len()].copy_from_slice(&data);
        })
    }

    async fn sync(&self, name: &str) -> Result<(), StoreError> {
        self.with_file("sync", name, |file| {
            if file.diverged {
                file.durable = file.written.clone();
                file.diverged = false;
            } else {
                let start = file.durable.len();
                file.durable.extend_from_slice(&file.written[start..]);
            }
        })
    }

    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.with_file("truncate", name, |file| {
            let len = len as usize;
            if len < file.durable.len() {
                file.diverged = true;
            }
            file.written.resize(len, 0);
        })
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let mut state = self.state.borrow_mut();
        let id = state
            .dir_written
            .remove(from)
            .ok_or_else(|| not_found("rename", from))?;
        state.dir_written.insert(to.to_string(), id);
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut state = self.state.borrow_mut();
        state
            .dir_written
            .remove(name)
            .ok_or_else(|| not_found("delete", name))?;
        Ok(())
    }

    async fn sync_dir(&self) -> Result<(), StoreError> {
        let mut state = self.state.borrow_mut();
        state.dir_durable = state.dir_written.clone();
        // Files no directory names any more can go.
        let live: std::collections::HashSet<u64> = state.dir_durable.values().copied().collect();
        state.files.retain(|id, _| live.contains(id));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Fault injection.

/// Which operations count for [`FaultStorage`]'s "fail the N-th ..." plans.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpKind {
    /// write_at / append, truncate, create, rename, delete.
    Write,
    /// sync, sync_dir.
    Sync,
}

#[derive(Default, Debug)]
struct FaultState {
    writes: Cell<u64>,
    syncs: Cell<u64>,
    /// `sync` / `sync_dir` calls passed on to the inner storage.
    file_syncs_passed: Cell<u64>,
    dir_syncs_passed: Cell<u64>,
    ops: Cell<u64>,
    fail_write: Cell<Option<u64>>,
    fail_sync: Cell<Option<u64>>,
    crash_at_op: Cell<Option<u64>>,
    crashed: Cell<bool>,
    /// On a failing write_at, write this fraction (in 1/256ths) of the data
    /// first, as a torn write would.
    torn_write_256ths: Cell<u32>,
}

/// Wraps a storage and makes chosen operations fail:
/// - [`FaultStorage::fail_nth_write`] / [`FaultStorage::fail_nth_sync`]: that
///   one operation fails (later ones work again, the log must not care);
/// - [`FaultStorage::crash_at_op`]: the N-th mutating operation (writes and
///   syncs counted together) and everything after it fail, as if the machine
///   stopped there. Build the crash image from the inner [`MemStorage`] with
///   [`MemStorage::crash`].
///
/// It also counts the syncs it passes on ([`FaultStorage::file_syncs_passed`],
/// [`FaultStorage::dir_syncs_passed`]): over [`crate::GlommioStorage`], the
/// real fdatasyncs and directory fsyncs.
///
/// N counts from the moment the plan is set: 1 is the next such operation.
/// Clones share the plan and the counters.
#[derive(Clone, Debug)]
pub struct FaultStorage<S> {
    inner: S,
    state: Rc<FaultState>,
}

impl<S: Storage> FaultStorage<S> {
    pub fn new(inner: S) -> FaultStorage<S> {
        FaultStorage {
            inner,
            state: Rc::new(FaultState::default()),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn fail_nth_write(&self, n: u64) {
        self.state.fail_write.set(Some(self.state.writes.get() + n));
    }

    pub fn fail_nth_sync(&self, n: u64) {
        self.state.fail_sync.set(Some(self.state.syncs.get() + n));
    }

    pub fn crash_at_op(&self, n: u64) {
        self.state.crash_at_op.set(Some(self.state.ops.get() + n));
    }

    /// A failing write first writes `numerator/256` of its data.
    pub fn set_torn_write_256ths(&self, numerator: u32) {
        self.state.torn_write_256ths.set(numerator.min(256));
    }

    pub fn writes(&self) -> u64 {
        self.state.writes.get()
    }

    pub fn syncs(&self) -> u64 {
        self.state.syncs.get()
    }

    /// `sync` calls (fdatasyncs) that reached the inner storage, failed or
    /// not: over real files, what the disk was asked for.
    pub fn file_syncs_passed(&self) -> u64 {
        self.state.file_syncs_passed.get()
    }

    /// `sync_dir` calls that reached the inner storage.
    pub fn dir_syncs_passed(&self) -> u64 {
        self.state.dir_syncs_passed.get()
    }

    /// Mutating operations seen so far (writes and syncs).
    pub fn ops(&self) -> u64 {
        self.state.ops.get()
    }

    pub fn crashed(&self) -> bool {
        self.state.crashed.get()
    }

    /// Counts one operation and says whether it must fail.
    fn check(&self, kind: OpKind) -> bool {
        let state = &self.state;
        if state.crashed.get() {
            return true;
        }
        let ops = state.ops.get() + 1;
        state.ops.set(ops);
        let fail = match kind {
            OpKind::Write => {
                let n = state.writes.get() + 1;
                state.writes.set(n);
                state.fail_write.get() == Some(n)
            }
            OpKind::Sync => {
                let n = state.syncs.get() + 1;
                state.syncs.set(n);
                state.fail_sync.get() == Some(n)
            }
        };
        if state.crash_at_op.get() == Some(ops) {
            state.crashed.set(true);
            return true;
        }
        fail
    }

    fn injected(op: &'static str, name: &str) -> StoreError {
        StoreError::io(op, name, "injected fault")
    }
}

impl<S: Storage> Storage for FaultStorage<S> {
    async fn list(&self) -> Result<Vec<String>, StoreError> {
        if self.state.crashed.get() {
            return Err(Self::injected("list", ""));
        }
        self.inner.list().await
    }

    async fn create(&self, name: &str) -> Result<(), StoreError> {
        if self.check(OpKind::Write) {
            return Err(Self::injected("create", name));
        }
        self.inner.create(name).await
    }

    async fn len(&self, name: &str) -> Result<u64, StoreError> {
        if self.state.crashed.get() {
            return Err(Self::injected("stat", name));
        }
        self.inner.len(name).await
    }

    async fn read(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        if self.state.crashed.get() {
            return Err(Self::injected("read", name));
        }
        self.inner.read(name, offset, len).await
    }

    async fn write_at(&self, name: &str, offset: u64, data: Vec<u8>) -> Result<(), StoreError> {
        if self.check(OpKind::Write) {
            let torn = data.len() * self.state.torn_write_256ths.get() as usize / 256;
            if torn > 0 {
                let _ = self
                    .inner
                    .write_at(name, offset, data[..torn].to_vec())
                    .await;
            }
            return Err(Self::injected("write", name));
        }
        self.inner.write_at(name, offset, data).await
    }

    async fn sync(&self, name: &str) -> Result<(), StoreError> {
        if self.check(OpKind::Sync) {
            return Err(Self::injected("sync", name));
        }
        bump(&self.state.file_syncs_passed);
        self.inner.sync(name).await
    }

    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        if self.check(OpKind::Write) {
            return Err(Self::injected("truncate", name));
        }
        self.inner.truncate(name, len).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        if self.check(OpKind::Write) {
            return Err(Self::injected("rename", from));
        }
        self.inner.rename(from, to).await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        if self.check(OpKind::Write) {
            return Err(Self::injected("delete", name));
        }
        self.inner.delete(name).await
    }

    async fn sync_dir(&self) -> Result<(), StoreError> {
        if self.check(OpKind::Sync) {
            return Err(Self::injected("sync_dir", ""));
        }
        bump(&self.state.dir_syncs_passed);
        self.inner.sync_dir().await
    }
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// `new` over `old` up to a random byte of the stretch where they differ,
/// `old` after it (`new` is at least as long as `old`).
fn torn_overwrite(old: &[u8], new: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let differs = |index: &usize| old.get(*index) != new.get(*index);
    let Some(first) = (0..new.len()).find(differs) else {
        return new.to_vec();
    };
    let last = (0..new.len()).rev().find(differs).unwrap_or(first);
    let keep = rng.gen_range(first..=last + 1);
    let mut torn = new[..keep].to_vec();
    torn.extend_from_slice(old.get(keep..).unwrap_or_default());
    torn
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    /// A storage with durable bytes and an unsynced tail, in a file the
    /// directory has not synced yet: every choice of the crash model applies.
    fn half_synced() -> MemStorage {
        let mem = MemStorage::new();
        block_on(async {
            mem.create("a").await?;
            mem.write_at("a", 0, vec![1; 100]).await?;
            mem.sync("a").await?;
            mem.write_at("a", 100, vec![2; 4000]).await
        })
        .expect("in memory");
        mem
    }

    #[test]
    fn crash_images_follow_from_the_seed() {
        let mem = half_synced();
        let mut images = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let image = mem.crash(CrashSpec::random(seed)).files();
            assert_eq!(
                image,
                mem.crash(CrashSpec::random(seed)).files(),
                "seed {seed} replays"
            );
            images.insert(image);
        }
        // The seed matters: the tails kept differ between seeds.
        assert!(images.len() > 8, "{} distinct images", images.len());
    }
}
