//! One process per data dir. Two servers writing the same WAL destroy it (a
//! second one truncated a live server's segment), so `herald serve` takes an
//! exclusive `flock` on `<data dir>/herald.lock` before it opens or writes
//! anything else in the data dir, and keeps it for its whole life.
//!
//! `flock` rather than a PID file: the kernel drops the lock when the last
//! descriptor of the open file closes, which includes any exit or SIGKILL, so
//! a crash never leaves a stale lock behind. The PID written into the file
//! only serves the error message of the process that is refused. Nothing
//! ever deletes the file: a new file would be a new, free lock.
//! `herald wal inspect` only reads and does not take the lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::StoreError;

/// Name of the lock file in the data dir.
pub const LOCK_FILE_NAME: &str = "herald.lock";

/// The exclusive lock on a data dir, released when dropped (or when the
/// process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// Kept open: closing it would release the lock.
    _file: File,
}

impl DataDirLock {
    /// Creates `data_dir` if it is missing and locks it. Fails at once with
    /// [`StoreError::DataDirLocked`] if another process holds the lock; in
    /// that case nothing in the data dir is created or modified (the lock file
    /// already exists, since the holder made it).
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StoreError> {
        let io_error = |op, path: &Path, err| StoreError::io(op, path.display().to_string(), err);
        std::fs::create_dir_all(data_dir)
            .map_err(|err| io_error("create data dir", data_dir, err))?;
        let path = data_dir.join(LOCK_FILE_NAME);
        // No truncation on open: the holder's PID must survive a refused open.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| io_error("open", &path, err))?;
        // SAFETY: flock(2) on a descriptor this function owns; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StoreError::DataDirLocked {
                    data_dir: data_dir.display().to_string(),
                    holder_pid: holder_pid(&path),
                });
            }
            return Err(io_error("lock", &path, err));
        }
        // Not synced: the PID is only for messages, and a crash frees the lock.
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(|err| io_error("write", &path, err))?;
        Ok(DataDirLock { _file: file })
    }
}

/// The PID the lock's holder wrote, if it is there yet and readable.
fn holder_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn second_lock_is_refused_with_the_holder_pid_until_the_first_is_dropped() {
        let dir = temp_dir("twice");
        let first = DataDirLock::acquire(&dir.join("data")).expect("first lock, dir created");
        // flock locks belong to the open file, so a second open in the same
        // process conflicts just as another process would.
        match DataDirLock::acquire(&dir.join("data")) {
            Err(StoreError::DataDirLocked { holder_pid, .. }) => {
                assert_eq!(holder_pid, Some(std::process::id()))
            }
            other => panic!("second lock must be refused, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(&dir.join("data")).expect("free again after drop");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
