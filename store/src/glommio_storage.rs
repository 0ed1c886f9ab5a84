//! The real storage: one directory of files, read and written through
//! glommio's io_uring [`BufferedFile`], made durable with real `fdatasync`.
//!
//! Why buffered and not `DmaFile`: WAL batches are small and of arbitrary
//! length, while O_DIRECT writes must be 4096-aligned in offset and length.
//! With DMA every batch would rewrite the partly filled last block (a
//! read-modify-write, or keeping the tail block in memory and rewriting it),
//! and a torn rewrite of that block could damage records that were already
//! acknowledged — a failure mode the buffered path does not have. The cost of
//! a group commit is dominated by the fdatasync, not the copy into the page
//! cache, so buffered writes lose little here.
//!
//! Must be used from inside a glommio executor.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, Directory, OpenOptions};

use crate::storage::Storage;
use crate::StoreError;

/// A shard directory on a real file system.
pub struct GlommioStorage {
    dir: PathBuf,
    /// Open files by name, opened on first use and kept open: the log touches
    /// few files (the active segment, the snapshot being written).
    files: RefCell<HashMap<String, Rc<BufferedFile>>>,
}

impl GlommioStorage {
    /// Uses (and creates if needed) the directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<GlommioStorage, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|err| StoreError::io("create dir", dir.display().to_string(), err))?;
        Ok(GlommioStorage {
            dir,
            files: RefCell::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn file(
        &self,
        op: &'static str,
        name: &str,
        create: bool,
    ) -> Result<Rc<BufferedFile>, StoreError> {
        if let Some(file) = self.files.borrow().get(name) {
            return Ok(file.clone());
        }
        let path = self.path(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .buffered_open(&path)
            .await
            .map_err(|err| StoreError::io(op, path.display().to_string(), err))?;
        let file = Rc::new(file);
        self.files
            .borrow_mut()
            .insert(name.to_string(), file.clone());
        Ok(file)
    }

    fn forget(&self, name: &str) {
        // Dropping the last Rc closes the file (glommio closes on drop).
        self.files.borrow_mut().remove(name);
    }

    fn err(&self, op: &'static str, name: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::io(op, self.path(name).display().to_string(), err)
    }
}

/// glommio takes write buffers by value (the kernel owns them until the
/// write completes), so the caller's buffer is copied: one memcpy of the batch,
/// negligible next to the fdatasync that follows it.
fn data_for_kernel(data: &[u8], from: usize) -> Vec<u8> {
    data[from..].to_vec()
}

impl Storage for GlommioStorage {
    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|err| StoreError::io("list", self.dir.display().to_string(), err))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|err| StoreError::io("list", self.dir.display().to_string(), err))?;
            let is_file = entry
                .file_type()
                .map(|kind| kind.is_file())
                .unwrap_or(false);
            if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn create(&self, name: &str) -> Result<(), StoreError> {
        self.forget(name);
        let file = self.file("create", name, true).await?;
        file.truncate(0)
            .await
            .map_err(|err| self.err("create", name, err))
    }

    async fn len(&self, name: &str) -> Result<u64, StoreError> {
        let file = self.file("stat", name, false).await?;
        file.file_size()
            .await
            .map_err(|err| self.err("stat", name, err))
    }

    async fn read(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let file = self.file("read", name, false).await?;
        let result = file
            .read_at(offset, len)
            .await
            .map_err(|err| self.err("read", name, err))?;
        Ok(result.to_vec())
    }

    async fn write_at(&self, name: &str, offset: u64, data: Vec<u8>) -> Result<(), StoreError> {
        let file = self.file("write", name, false).await?;
        let total = data.len();
        let written = file
            .write_at(data_for_kernel(&data, 0), offset)
            .await
            .map_err(|err| self.err("write", name, err))?;
        let mut done = written;
        // A short write is legal (write(2), e.g. a full disk): go on with the
        // rest until all is written or the kernel writes nothing.
        while done < total {
            let written = file
                .write_at(data_for_kernel(&data, done), offset + done as u64)
                .await
                .map_err(|err| self.err("write", name, err))?;
            if written == 0 {
                return Err(self.err(
                    "write",
                    name,
                    "short write: the device accepts no more bytes",
                ));
            }
            done += written;
        }
        Ok(())
    }

    async fn sync(&self, name: &str) -> Result<(), StoreError> {
        let file = self.file("sync", name, false).await?;
        file.fdatasync()
            .await
            .map_err(|err| self.err("fdatasync", name, err))
    }

    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        let file = self.file("truncate", name, false).await?;
        file.truncate(len)
            .await
            .map_err(|err| self.err("truncate", name, err))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.forget(from);
        self.forget(to);
        glommio::io::rename(self.path(from), self.path(to))
            .await
            .map_err(|err| self.err("rename", from, err))
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.forget(name);
        glommio::io::remove(self.path(name))
            .await
            .map_err(|err| self.err("delete", name, err))
    }

    async fn sync_dir(&self) -> Result<(), StoreError> {
        let dir = Directory::open(&self.dir)
            .await
            .map_err(|err| StoreError::io("open dir", self.dir.display().to_string(), err))?;
        let result = dir
            .sync()
            .await
            .map_err(|err| StoreError::io("fsync dir", self.dir.display().to_string(), err));
        let _ = dir.close().await;
        result
    }
}
