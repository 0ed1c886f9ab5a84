//! `herald wal inspect DIR`: prints every frame of every snapshot and segment,
//! with checksums verified. Plain std file IO, no executor needed. Never
//! changes anything on disk.

use std::io::Write;
use std::path::Path;

use crate::format::{self, FrameKind, Scan};
use crate::layout::{existing_shard_dirs, read_meta};
use crate::recovery::{parse_name, FileName};
use crate::StoreError;

/// Totals over everything inspected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InspectSummary {
    pub shards: u64,
    pub segments: u64,
    pub snapshots: u64,
    /// Log records in segments.
    pub records: u64,
    /// Records in snapshots.
    pub snapshot_records: u64,
    pub bytes: u64,
    /// Damaged or refused frames (checksum, torn, bad version, undecodable).
    pub damaged: u64,
    /// Files that are not Herald's.
    pub ignored_files: u64,
}

fn write_err(err: std::io::Error) -> StoreError {
    StoreError::io("write", "inspect output", err)
}

/// Inspects `dir`: a data dir holding `shard-<n>` dirs, or one shard dir.
pub fn inspect(dir: &Path, out: &mut dyn Write) -> Result<InspectSummary, StoreError> {
    let mut summary = InspectSummary::default();
    let shards = existing_shard_dirs(dir)?;
    if shards.is_empty() {
        writeln!(out, "shard dir {}", dir.display()).map_err(write_err)?;
        inspect_shard(dir, out, &mut summary)?;
        summary.shards = 1;
    } else {
        match read_meta(dir)? {
            Some(meta) => writeln!(
                out,
                "data dir {}: {} shards, WAL format {}, layout {}",
                dir.display(),
                meta.shards,
                meta.wal_format_version,
                meta.layout_version
            ),
            None => writeln!(out, "data dir {}: no meta file", dir.display()),
        }
        .map_err(write_err)?;
        for (shard, path) in shards {
            writeln!(out, "== shard {shard} ({})", path.display()).map_err(write_err)?;
            inspect_shard(&path, out, &mut summary)?;
            summary.shards += 1;
        }
    }
    writeln!(
        out,
        "summary: {} shard(s), {} snapshot(s) with {} records, {} segment(s) with {} records, {} bytes, {} damaged frame(s), {} ignored file(s)",
        summary.shards,
        summary.snapshots,
        summary.snapshot_records,
        summary.segments,
        summary.records,
        summary.bytes,
        summary.damaged,
        summary.ignored_files
    )
    .map_err(write_err)?;
    Ok(summary)
}

fn inspect_shard(
    dir: &Path,
    out: &mut dyn Write,
    summary: &mut InspectSummary,
) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|err| StoreError::io("list", dir.display().to_string(), err))?;
    let mut files: Vec<(u8, u64, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| StoreError::io("list", dir.display().to_string(), err))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            summary.ignored_files += 1;
            continue;
        };
        // Snapshots first (recovery starts from one), then segments by LSN.
        let key = match parse_name(&name) {
            FileName::Snapshot(lsn) => (0, lsn),
            FileName::SnapshotTemp(lsn) => (1, lsn),
            FileName::Segment(lsn) => (2, lsn),
            FileName::Unknown => (3, 0),
        };
        files.push((key.0, key.1, name));
    }
    files.sort();
    for (_, _, name) in files {
        let path = dir.join(&name);
        match parse_name(&name) {
            FileName::Unknown => {
                summary.ignored_files += 1;
                writeln!(out, "{name}: not a WAL file, ignored").map_err(write_err)?;
                continue;
            }
            FileName::SnapshotTemp(_) => {
                writeln!(out, "{name}: unfinished snapshot (recovery deletes it)")
                    .map_err(write_err)?;
            }
            FileName::Snapshot(lsn) => {
                summary.snapshots += 1;
                writeln!(out, "{name}: snapshot covering LSN {lsn}").map_err(write_err)?;
            }
            FileName::Segment(lsn) => {
                summary.segments += 1;
                writeln!(out, "{name}: segment starting at LSN {lsn}").map_err(write_err)?;
            }
        }
        let bytes = std::fs::read(&path)
            .map_err(|err| StoreError::io("read", path.display().to_string(), err))?;
        summary.bytes += bytes.len() as u64;
        inspect_bytes(&bytes, out, summary)?;
    }
    Ok(())
}

/// Prints every frame in `bytes`; resumes after damage at the next valid frame.
pub fn inspect_bytes(
    bytes: &[u8],
    out: &mut dyn Write,
    summary: &mut InspectSummary,
) -> Result<(), StoreError> {
    let mut offset = 0usize;
    loop {
        let problem = match format::read_frame(bytes, offset) {
            Scan::End => {
                writeln!(out, "  end at byte {offset}").map_err(write_err)?;
                return Ok(());
            }
            Scan::ZeroTail => {
                writeln!(
                    out,
                    "  end at byte {offset}, then {} zero bytes",
                    bytes.len() - offset
                )
                .map_err(write_err)?;
                return Ok(());
            }
            Scan::Frame(frame) => {
                match frame.kind {
                    FrameKind::SnapshotEnd => {
                        let count = format::decode_snapshot_end(frame.body)
                            .map(|count| count.to_string())
                            .unwrap_or_else(|| "?".to_string());
                        writeln!(
                            out,
                            "  @{offset} snapshot end: covers LSN {}, {count} records, crc {:08x} ok",
                            frame.lsn, frame.body_crc
                        )
                        .map_err(write_err)?;
                    }
                    FrameKind::Record | FrameKind::SnapshotRecord => {
                        let label = if frame.kind == FrameKind::Record {
                            "lsn"
                        } else {
                            "#"
                        };
                        match format::decode_record(frame.body) {
                            Ok(record) => {
                                if frame.kind == FrameKind::Record {
                                    summary.records += 1;
                                } else {
                                    summary.snapshot_records += 1;
                                }
                                writeln!(
                                    out,
                                    "  @{offset} {label}={} crc {:08x} ok {}",
                                    frame.lsn,
                                    frame.body_crc,
                                    format::describe_record(&record)
                                )
                                .map_err(write_err)?;
                            }
                            Err(reason) => {
                                summary.damaged += 1;
                                writeln!(
                                    out,
                                    "  @{offset} {label}={} crc {:08x} ok but UNDECODABLE: {reason}",
                                    frame.lsn, frame.body_crc
                                )
                                .map_err(write_err)?;
                            }
                        }
                    }
                }
                offset += frame.len_on_disk;
                continue;
            }
            Scan::Damaged(damage) => damage.describe().to_string(),
            Scan::Fatal(fatal) => format!("{fatal:?}"),
        };
        summary.damaged += 1;
        writeln!(out, "  @{offset} DAMAGED: {problem}").map_err(write_err)?;
        match format::find_valid_frame(bytes, offset + 1) {
            Some(next) => {
                writeln!(out, "  resuming at the next valid frame, byte {next}")
                    .map_err(write_err)?;
                offset = next;
            }
            None => {
                writeln!(
                    out,
                    "  no valid frame after it in this file ({} bytes): a torn tail if this is the last segment",
                    bytes.len() - offset
                )
                .map_err(write_err)?;
                return Ok(());
            }
        }
    }
}
