//! The data dir: one `shard-<n>` directory per shard and a `herald.meta` file
//! that pins the shard count and format version. Plain std IO: this runs at
//! startup, before any executor exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::format::FORMAT_VERSION;
use crate::StoreError;

/// Name of the meta file in the data dir.
pub const META_FILE_NAME: &str = "herald.meta";

/// Version of the meta file and of the data dir layout.
pub const LAYOUT_VERSION: u32 = 1;

/// The directory of shard `shard`'s log.
pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// The shard number of a `shard-<n>` directory name.
pub fn parse_shard_dir(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("shard-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn layout_error(data_dir: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Layout {
        data_dir: data_dir.display().to_string(),
        reason: reason.into(),
    }
}

fn io_error(op: &'static str, path: &Path, err: std::io::Error) -> StoreError {
    StoreError::io(op, path.display().to_string(), err)
}

/// What a meta file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub layout_version: u32,
    pub wal_format_version: u16,
    pub shards: usize,
}

impl Meta {
    fn to_text(self) -> String {
        format!(
            "# Herald data dir. UAIDs hash to shards, so the shard count cannot change.\n\
             herald-data-dir {}\nwal-format {}\nshards {}\n",
            self.layout_version, self.wal_format_version, self.shards
        )
    }

    fn parse(text: &str) -> Result<Meta, String> {
        let (mut layout, mut format, mut shards) = (None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            let value = value.trim();
            match key {
                "herald-data-dir" => {
                    layout = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| format!("bad version {value:?}"))?,
                    )
                }
                "wal-format" => {
                    format = Some(
                        value
                            .parse::<u16>()
                            .map_err(|_| format!("bad version {value:?}"))?,
                    )
                }
                "shards" => {
                    shards = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| format!("bad shard count {value:?}"))?,
                    )
                }
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        Ok(Meta {
            layout_version: layout.ok_or("no herald-data-dir line")?,
            wal_format_version: format.ok_or("no wal-format line")?,
            shards: shards.ok_or("no shards line")?,
        })
    }
}

/// Reads the data dir's meta file, if there is one.
pub fn read_meta(data_dir: &Path) -> Result<Option<Meta>, StoreError> {
    let path = data_dir.join(META_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => Meta::parse(&text)
            .map(Some)
            .map_err(|reason| layout_error(data_dir, format!("{META_FILE_NAME}: {reason}"))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_error("read", &path, err)),
    }
}

/// Makes sure `data_dir` is a Herald data dir for `shards` shards: creates it
/// (meta file and shard dirs) if new, and refuses one made for another shard
/// count or format. Call once at startup, before opening the logs.
pub fn check_layout(data_dir: &Path, shards: usize) -> Result<(), StoreError> {
    if shards == 0 {
        return Err(layout_error(data_dir, "the shard count must be at least 1"));
    }
    std::fs::create_dir_all(data_dir).map_err(|err| io_error("create dir", data_dir, err))?;
    match read_meta(data_dir)? {
        Some(meta) => {
            if meta.layout_version != LAYOUT_VERSION {
                return Err(layout_error(
                    data_dir,
                    format!(
                        "layout version {} (this build reads {LAYOUT_VERSION})",
                        meta.layout_version
                    ),
                ));
            }
            if meta.wal_format_version != FORMAT_VERSION {
                return Err(layout_error(
                    data_dir,
                    format!(
                        "WAL format version {} (this build reads {FORMAT_VERSION})",
                        meta.wal_format_version
                    ),
                ));
            }
            if meta.shards != shards {
                return Err(StoreError::ShardCountMismatch {
                    data_dir: data_dir.display().to_string(),
                    found: meta.shards,
                    expected: shards,
                });
            }
        }
        None => {
            // No meta file, but shard dirs: someone removed it. Trust the dirs.
            let existing = existing_shard_dirs(data_dir)?;
            if !existing.is_empty() && existing.len() != shards {
                return Err(StoreError::ShardCountMismatch {
                    data_dir: data_dir.display().to_string(),
                    found: existing.len(),
                    expected: shards,
                });
            }
            write_meta(
                data_dir,
                Meta {
                    layout_version: LAYOUT_VERSION,
                    wal_format_version: FORMAT_VERSION,
                    shards,
                },
            )?;
        }
    }
    for shard in 0..shards {
        let dir = shard_dir(data_dir, shard);
        std::fs::create_dir_all(&dir).map_err(|err| io_error("create dir", &dir, err))?;
    }
    sync_dir(data_dir)
}

/// The `shard-<n>` directories in `data_dir`, sorted by n.
pub fn existing_shard_dirs(data_dir: &Path) -> Result<Vec<(usize, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(data_dir).map_err(|err| io_error("list", data_dir, err))?;
    for entry in entries {
        let entry = entry.map_err(|err| io_error("list", data_dir, err))?;
        let is_dir = entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false);
        if let (true, Some(shard)) = (is_dir, entry.file_name().to_str().and_then(parse_shard_dir))
        {
            found.push((shard, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn write_meta(data_dir: &Path, meta: Meta) -> Result<(), StoreError> {
    let path = data_dir.join(META_FILE_NAME);
    let temp = data_dir.join(format!("{META_FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&temp).map_err(|err| io_error("create", &temp, err))?;
    file.write_all(meta.to_text().as_bytes())
        .map_err(|err| io_error("write", &temp, err))?;
    file.sync_all()
        .map_err(|err| io_error("fsync", &temp, err))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(|err| io_error("rename", &temp, err))?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let handle = std::fs::File::open(dir).map_err(|err| io_error("open dir", dir, err))?;
    handle
        .sync_all()
        .map_err(|err| io_error("fsync dir", dir, err))
}
