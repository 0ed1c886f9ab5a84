//! Recovery: from the files of a shard dir to the records to replay and the
//! position to append at, following one decision table.
//!
//! The table ([`RECOVERY_TABLE`]) is the source of truth: the scanner
//! classifies what it finds into a [`Condition`] and does what
//! [`action_for`] says. In words:
//!
//! | condition                     | action        | why |
//! |-------------------------------|---------------|-----|
//! | no segments, no snapshot      | StartEmpty    | a new shard |
//! | valid record, next LSN        | Accept        | the normal case |
//! | end of file                   | EndOfSegment  | go on with the next segment |
//! | zero bytes to end of file     | EndOfSegment  | preallocated / zero-extended space, never written |
//! | damaged frame, nothing valid after it in the whole log | CutTail | a torn last write: it was never acknowledged (acks follow fdatasync) |
//! | damaged frame, a valid frame after it | Refuse | cutting would drop good, possibly acknowledged records |
//! | file starts with non-zero bytes that are not the magic | Refuse | not a WAL file |
//! | valid header checksum, unknown format version | Refuse | written by another build |
//! | valid header checksum, invalid field (kind, reserved bytes, length) | Refuse | not a torn write; a bug or another format |
//! | checksums hold but the record does not decode | Refuse | same |
//! | valid record with an unexpected LSN (gap, repeat, name mismatch) | Refuse | a record is missing |
//! | first segment does not reach back to LSN 1 / the snapshot | Refuse | history is missing |
//! | record at or below the snapshot's LSN | Skip | already in the snapshot |
//! | segment wholly covered by the snapshot | SkipAndDelete | compaction crashed before deleting it |
//! | snapshot temp file | SkipAndDelete | compaction crashed while writing it |
//! | snapshot without a valid end frame | Ignore | use the previous snapshot (continuity is still checked) |
//! | file with a name that is not ours | Ignore | leave other people's files alone |

use herald_engine::record::Record;
use herald_engine::Lsn;

use crate::format::{self, Damage, Fatal, FrameKind, Scan};
use crate::limits::{
    RECOVERY_PROGRESS_EVERY_RECORDS, RECOVERY_PROGRESS_MIN_BYTES, RECOVERY_PROGRESS_STEP_PERCENT,
};
use crate::storage::Storage;
use crate::StoreError;

/// What recovery can find. See the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Condition {
    NoFiles,
    ValidRecord,
    EndOfFile,
    ZeroFilledTail,
    DamagedTail,
    DamagedMiddle,
    BadMagic,
    UnsupportedVersion,
    InvalidFrameField,
    UndecodableRecord,
    LsnOutOfOrder,
    MissingHistory,
    RecordCoveredBySnapshot,
    SegmentCoveredBySnapshot,
    SnapshotTempFile,
    IncompleteSnapshot,
    UnknownFile,
}

/// What recovery does about a [`Condition`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Start a new log at LSN 1.
    StartEmpty,
    /// Replay the record.
    Accept,
    /// Stop reading this segment; go on with the next.
    EndOfSegment,
    /// Truncate the log at the last good record, delete later (record-less)
    /// segments, report it, and start.
    CutTail,
    /// Do not start: return a clear error.
    Refuse,
    /// Do not replay it.
    Skip,
    /// Do not replay it, and delete the file once recovery succeeded.
    SkipAndDelete,
    /// Leave the file alone and do not use it.
    Ignore,
}

/// The decision table, as data: (condition, action, why).
pub const RECOVERY_TABLE: &[(Condition, Action, &str)] = &[
    (Condition::NoFiles, Action::StartEmpty, "a new shard"),
    (Condition::ValidRecord, Action::Accept, "the normal case"),
    (
        Condition::EndOfFile,
        Action::EndOfSegment,
        "go on with the next segment",
    ),
    (
        Condition::ZeroFilledTail,
        Action::EndOfSegment,
        "preallocated or zero-extended space that was never written",
    ),
    (
        Condition::DamagedTail,
        Action::CutTail,
        "a torn last write; it was never acknowledged, since acks follow fdatasync",
    ),
    (
        Condition::DamagedMiddle,
        Action::Refuse,
        "valid records follow; cutting would drop good, possibly acknowledged records",
    ),
    (Condition::BadMagic, Action::Refuse, "not a Herald WAL file"),
    (
        Condition::UnsupportedVersion,
        Action::Refuse,
        "written by another build of Herald",
    ),
    (
        Condition::InvalidFrameField,
        Action::Refuse,
        "the header checksum holds, so this was written so: a bug or another format",
    ),
    (
        Condition::UndecodableRecord,
        Action::Refuse,
        "the checksums hold, so this was written so: a bug or another format",
    ),
    (
        Condition::LsnOutOfOrder,
        Action::Refuse,
        "a record is missing or repeated",
    ),
    (
        Condition::MissingHistory,
        Action::Refuse,
        "the oldest segment does not reach back to LSN 1 or to the snapshot",
    ),
    (
        Condition::RecordCoveredBySnapshot,
        Action::Skip,
        "its effect is in the snapshot",
    ),
    (
        Condition::SegmentCoveredBySnapshot,
        Action::SkipAndDelete,
        "compaction stopped after the snapshot and before deleting old segments",
    ),
    (
        Condition::SnapshotTempFile,
        Action::SkipAndDelete,
        "compaction stopped while writing the snapshot",
    ),
    (
        Condition::IncompleteSnapshot,
        Action::Ignore,
        "no valid end frame; an older snapshot and the segments are used instead",
    ),
    (Condition::UnknownFile, Action::Ignore, "not ours"),
];

/// The action the table gives for `condition`.
pub fn action_for(condition: Condition) -> Action {
    RECOVERY_TABLE
        .iter()
        .find(|(row, _, _)| *row == condition)
        .map(|(_, action, _)| *action)
        // Every condition has a row; a test checks it. Refusing is the safe
        // answer should one ever be missing.
        .unwrap_or(Action::Refuse)
}

// ---------------------------------------------------------------------------
// File names.

/// What a file in a shard dir is, by its name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FileName {
    /// `wal-<first LSN, 20 digits>.log`
    Segment(Lsn),
    /// `snap-<covered LSN, 20 digits>.snap`
    Snapshot(Lsn),
    /// `snap-<covered LSN, 20 digits>.snap.tmp`
    SnapshotTemp(Lsn),
    Unknown,
}

pub fn segment_name(first_lsn: Lsn) -> String {
    format!("wal-{first_lsn:020}.log")
}

pub fn snapshot_name(covers_lsn: Lsn) -> String {
    format!("snap-{covers_lsn:020}.snap")
}

pub fn snapshot_temp_name(covers_lsn: Lsn) -> String {
    format!("snap-{covers_lsn:020}.snap.tmp")
}

fn digits(text: &str) -> Option<Lsn> {
    if text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

pub fn parse_name(name: &str) -> FileName {
    if let Some(lsn) = name
        .strip_prefix("wal-")
        .and_then(|rest| rest.strip_suffix(".log"))
        .and_then(digits)
    {
        // Segments are named by their first LSN; LSNs start at 1.
        if lsn >= 1 {
            return FileName::Segment(lsn);
        }
    }
    if let Some(rest) = name.strip_prefix("snap-") {
        if let Some(lsn) = rest.strip_suffix(".snap.tmp").and_then(digits) {
            return FileName::SnapshotTemp(lsn);
        }
        if let Some(lsn) = rest.strip_suffix(".snap").and_then(digits) {
            return FileName::Snapshot(lsn);
        }
    }
    FileName::Unknown
}

// ---------------------------------------------------------------------------
// The report.

/// A cut torn tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub segment: String,
    /// Where the segment now ends (the end of its last good record).
    pub offset: u64,
    /// Bytes dropped from that segment.
    pub dropped_bytes: u64,
    pub reason: String,
    /// Later segment files deleted because they held no valid record.
    pub deleted_segments: Vec<String>,
}

/// The snapshot recovery started from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub file: String,
    pub covers_lsn: Lsn,
    pub records: u64,
}

/// One decision recovery made (other than accepting or skipping a record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryEvent {
    pub condition: Condition,
    pub action: Action,
    pub file: String,
    pub offset: u64,
    pub detail: String,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Records replayed: snapshot records plus log records after it.
    pub records: u64,
    pub snapshot: Option<SnapshotInfo>,
    /// Segment files read.
    pub segments: u64,
    /// Bytes read (snapshot and segments).
    pub bytes: u64,
    /// The last LSN in the log (0: none). The next append gets `last_lsn + 1`.
    pub last_lsn: Lsn,
    /// Log records skipped because the snapshot covers them.
    pub skipped_records: u64,
    pub cut: Option<Cut>,
    pub removed_files: Vec<String>,
    pub events: Vec<RecoveryEvent>,
    /// Every condition met, in the order first met (for tests and logs).
    pub conditions: Vec<Condition>,
}

impl RecoveryReport {
    fn saw(&mut self, condition: Condition) {
        if !self.conditions.contains(&condition) {
            self.conditions.push(condition);
        }
    }

    fn event(&mut self, condition: Condition, file: &str, offset: u64, detail: impl Into<String>) {
        self.saw(condition);
        self.events.push(RecoveryEvent {
            condition,
            action: action_for(condition),
            file: file.to_string(),
            offset,
            detail: detail.into(),
        });
    }
}

/// Progress of a long replay, handed to [`crate::LogOptions::progress`].
#[derive(Clone, Copy, Debug)]
pub struct RecoveryProgress {
    /// Records read so far (the snapshot's included).
    pub records: u64,
    /// Bytes of the log segments replayed so far, of `total_bytes`.
    pub bytes: u64,
    pub total_bytes: u64,
    /// `bytes` as a percentage of `total_bytes`.
    pub percent: u64,
}

/// Says how far a long replay is: every [`RECOVERY_PROGRESS_EVERY_RECORDS`]
/// records, and at each [`RECOVERY_PROGRESS_STEP_PERCENT`] of the segments'
/// bytes once they hold [`RECOVERY_PROGRESS_MIN_BYTES`] (a smaller log
/// replays in a moment). The caller's tracing span names the shard.
struct ProgressMeter<'a> {
    callback: Option<&'a dyn Fn(&RecoveryProgress)>,
    total_bytes: u64,
    next_records: u64,
    next_percent: u64,
}

impl ProgressMeter<'_> {
    fn update(&mut self, records: u64, bytes: u64) {
        let percent = (bytes.saturating_mul(100) / self.total_bytes.max(1)).min(100);
        let by_records = records >= self.next_records;
        let by_bytes =
            self.total_bytes >= RECOVERY_PROGRESS_MIN_BYTES && percent >= self.next_percent;
        if !(by_records || by_bytes) {
            return;
        }
        while self.next_records <= records {
            self.next_records += RECOVERY_PROGRESS_EVERY_RECORDS;
        }
        self.next_percent =
            (percent / RECOVERY_PROGRESS_STEP_PERCENT + 1) * RECOVERY_PROGRESS_STEP_PERCENT;
        let status = RecoveryProgress {
            records,
            bytes,
            total_bytes: self.total_bytes,
            percent,
        };
        tracing::info!(
            percent,
            records,
            bytes,
            total_bytes = self.total_bytes,
            "replaying the WAL"
        );
        if let Some(callback) = self.callback {
            callback(&status);
        }
    }
}

/// Where appending continues after recovery.
#[derive(Clone, Debug)]
pub(crate) struct ActiveSegment {
    pub name: String,
    pub len: u64,
    /// The LSN the next record in this segment would have to carry.
    pub next_lsn: Lsn,
}

pub(crate) struct Recovered {
    pub records: Vec<Record>,
    pub report: RecoveryReport,
    pub next_lsn: Lsn,
    pub active: Option<ActiveSegment>,
    pub snapshot_lsn: Lsn,
}

fn refuse_corrupt(
    condition: Condition,
    segment: &str,
    offset: u64,
    reason: impl Into<String>,
) -> StoreError {
    debug_assert_eq!(action_for(condition), Action::Refuse);
    StoreError::Corrupt {
        segment: segment.to_string(),
        offset,
        reason: reason.into(),
    }
}

/// Decodes a whole snapshot file. `Err` says why it is not complete.
pub(crate) fn parse_snapshot(bytes: &[u8], covers_lsn: Lsn) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    loop {
        match format::read_frame(bytes, offset) {
            Scan::Frame(frame) => match frame.kind {
                FrameKind::SnapshotRecord => {
                    if frame.lsn != records.len() as u64 + 1 {
                        return Err(format!(
                            "record ordinal {} out of order at byte {offset}",
                            frame.lsn
                        ));
                    }
                    records.push(
                        format::decode_record(frame.body)
                            .map_err(|err| format!("byte {offset}: {err}"))?,
                    );
                    offset += frame.len_on_disk;
                }
                FrameKind::SnapshotEnd => {
                    let count =
                        format::decode_snapshot_end(frame.body).ok_or("bad end frame body")?;
                    if frame.lsn != covers_lsn {
                        return Err(format!(
                            "end frame covers LSN {}, name says {covers_lsn}",
                            frame.lsn
                        ));
                    }
                    if count != records.len() as u64 {
                        return Err(format!(
                            "end frame counts {count} records, found {}",
                            records.len()
                        ));
                    }
                    return match format::read_frame(bytes, offset + frame.len_on_disk) {
                        Scan::End | Scan::ZeroTail => Ok(records),
                        _ => Err("bytes after the end frame".to_string()),
                    };
                }
                FrameKind::Record => {
                    return Err(format!("log record frame in a snapshot at byte {offset}"))
                }
            },
            Scan::End | Scan::ZeroTail => {
                return Err("no end frame (incomplete snapshot)".to_string())
            }
            Scan::Damaged(damage) => return Err(format!("byte {offset}: {}", damage.describe())),
            Scan::Fatal(fatal) => return Err(format!("byte {offset}: {fatal:?}")),
        }
    }
}

/// Runs recovery over `storage` (see the module docs), applying its cuts and
/// deletions to the storage.
pub(crate) async fn recover<S: Storage>(
    storage: &S,
    progress: Option<&dyn Fn(&RecoveryProgress)>,
) -> Result<Recovered, StoreError> {
    let mut report = RecoveryReport::default();
    let mut names = storage.list().await?;
    names.sort();

    let mut segments: Vec<(Lsn, String)> = Vec::new();
    let mut snapshots: Vec<(Lsn, String)> = Vec::new();
    let mut to_delete: Vec<String> = Vec::new();
    for name in names {
        match parse_name(&name) {
            FileName::Segment(lsn) => segments.push((lsn, name)),
            FileName::Snapshot(lsn) => snapshots.push((lsn, name)),
            FileName::SnapshotTemp(_) => {
                report.event(
                    Condition::SnapshotTempFile,
                    &name,
                    0,
                    "left by an interrupted compaction",
                );
                to_delete.push(name);
            }
            FileName::Unknown => report.event(Condition::UnknownFile, &name, 0, "ignored"),
        }
    }
    segments.sort();
    snapshots.sort();

    // The newest complete snapshot.
    let mut records: Vec<Record> = Vec::new();
    let mut snapshot_lsn: Lsn = 0;
    let mut chosen: Option<usize> = None;
    for index in (0..snapshots.len()).rev() {
        let (covers, name) = &snapshots[index];
        let bytes = storage.read_all(name).await?;
        report.bytes += bytes.len() as u64;
        match parse_snapshot(&bytes, *covers) {
            Ok(snapshot_records) => {
                report.snapshot = Some(SnapshotInfo {
                    file: name.clone(),
                    covers_lsn: *covers,
                    records: snapshot_records.len() as u64,
                });
                snapshot_lsn = *covers;
                records = snapshot_records;
                chosen = Some(index);
                break;
            }
            Err(reason) => {
                tracing::warn!(file = %name, %reason, "ignoring incomplete snapshot");
                report.event(Condition::IncompleteSnapshot, name, 0, reason);
            }
        }
    }
    if let Some(chosen) = chosen {
        // Older snapshots are superseded.
        for (_, name) in &snapshots[..chosen] {
            to_delete.push(name.clone());
        }
    }

    if segments.is_empty() && chosen.is_none() {
        report.saw(Condition::NoFiles);
        finish_deletions(storage, &mut report, to_delete, false).await?;
        return Ok(Recovered {
            records,
            report,
            next_lsn: 1,
            active: None,
            snapshot_lsn: 0,
        });
    }

    // Segments wholly covered by the snapshot: the next one starts at or
    // below snapshot_lsn + 1.
    let mut first_kept = 0;
    while first_kept + 1 < segments.len() && segments[first_kept + 1].0 <= snapshot_lsn + 1 {
        let name = &segments[first_kept].1;
        report.event(
            Condition::SegmentCoveredBySnapshot,
            name,
            0,
            format!("all records are at or below snapshot LSN {snapshot_lsn}"),
        );
        to_delete.push(name.clone());
        first_kept += 1;
    }
    let segments = &segments[first_kept..];

    let mut expected: Lsn = snapshot_lsn + 1;
    if let Some((first, name)) = segments.first() {
        if *first > snapshot_lsn + 1 {
            report.saw(Condition::MissingHistory);
            return Err(refuse_corrupt(
                Condition::MissingHistory,
                name,
                0,
                if snapshot_lsn == 0 {
                    format!(
                        "the oldest segment starts at LSN {first}, not 1, and there is no snapshot"
                    )
                } else {
                    format!("the oldest segment starts at LSN {first}, after the snapshot's LSN {snapshot_lsn} + 1")
                },
            ));
        }
        expected = *first;
    }

    let mut active: Option<ActiveSegment> = None;
    let mut total_bytes = 0;
    for (_, name) in segments {
        total_bytes += storage.len(name).await?;
    }
    let mut meter = ProgressMeter {
        callback: progress,
        total_bytes,
        next_records: RECOVERY_PROGRESS_EVERY_RECORDS,
        next_percent: RECOVERY_PROGRESS_STEP_PERCENT,
    };
    // Segment bytes replayed before the current segment.
    let mut replayed_bytes = 0u64;
    'segments: for (index, (first, name)) in segments.iter().enumerate() {
        if *first != expected {
            report.saw(Condition::LsnOutOfOrder);
            return Err(refuse_corrupt(
                Condition::LsnOutOfOrder,
                name,
                0,
                format!(
                    "segment starts at LSN {first} but the previous one ends before LSN {expected}"
                ),
            ));
        }
        let bytes = storage.read_all(name).await?;
        report.segments += 1;
        report.bytes += bytes.len() as u64;
        let segment_start = replayed_bytes;
        replayed_bytes += bytes.len() as u64;
        let mut offset = 0usize;
        loop {
            match format::read_frame(&bytes, offset) {
                Scan::Frame(frame) => {
                    if frame.kind != FrameKind::Record {
                        report.saw(Condition::InvalidFrameField);
                        return Err(refuse_corrupt(
                            Condition::InvalidFrameField,
                            name,
                            offset as u64,
                            format!("{:?} frame in a log segment", frame.kind),
                        ));
                    }
                    if frame.lsn != expected {
                        report.saw(Condition::LsnOutOfOrder);
                        return Err(refuse_corrupt(
                            Condition::LsnOutOfOrder,
                            name,
                            offset as u64,
                            format!(
                                "record has LSN {} where LSN {expected} was expected",
                                frame.lsn
                            ),
                        ));
                    }
                    let record = match format::decode_record(frame.body) {
                        Ok(record) => record,
                        Err(reason) => {
                            report.saw(Condition::UndecodableRecord);
                            return Err(refuse_corrupt(
                                Condition::UndecodableRecord,
                                name,
                                offset as u64,
                                format!("LSN {}: checksums hold but {reason}", frame.lsn),
                            ));
                        }
                    };
                    if frame.lsn <= snapshot_lsn {
                        report.saw(Condition::RecordCoveredBySnapshot);
                        report.skipped_records += 1;
                    } else {
                        report.saw(Condition::ValidRecord);
                        records.push(record);
                    }
                    expected += 1;
                    offset += frame.len_on_disk;
                    meter.update(records.len() as u64, segment_start + offset as u64);
                }
                Scan::End => {
                    report.saw(Condition::EndOfFile);
                    active = Some(ActiveSegment {
                        name: name.clone(),
                        len: offset as u64,
                        next_lsn: expected,
                    });
                    continue 'segments;
                }
                Scan::ZeroTail => {
                    report.event(
                        Condition::ZeroFilledTail,
                        name,
                        offset as u64,
                        format!("{} zero bytes after the last record", bytes.len() - offset),
                    );
                    if index + 1 == segments.len() {
                        // Appending resumes here: drop the zeros first so
                        // the file holds exactly the records.
                        storage.truncate(name, offset as u64).await?;
                        storage.sync(name).await?;
                    }
                    active = Some(ActiveSegment {
                        name: name.clone(),
                        len: offset as u64,
                        next_lsn: expected,
                    });
                    continue 'segments;
                }
                Scan::Fatal(Fatal::BadMagicAtStart) => {
                    report.saw(Condition::BadMagic);
                    return Err(StoreError::BadMagic {
                        segment: name.clone(),
                        offset: offset as u64,
                    });
                }
                Scan::Fatal(Fatal::UnsupportedVersion(found)) => {
                    report.saw(Condition::UnsupportedVersion);
                    return Err(StoreError::UnsupportedVersion {
                        segment: name.clone(),
                        offset: offset as u64,
                        found,
                        supported: format::FORMAT_VERSION,
                    });
                }
                Scan::Fatal(Fatal::BadField(what)) => {
                    report.saw(Condition::InvalidFrameField);
                    return Err(refuse_corrupt(
                        Condition::InvalidFrameField,
                        name,
                        offset as u64,
                        what,
                    ));
                }
                Scan::Damaged(damage) => {
                    cut_or_refuse(
                        storage,
                        &mut report,
                        segments,
                        index,
                        &bytes,
                        offset,
                        damage,
                    )
                    .await?;
                    active = Some(ActiveSegment {
                        name: name.clone(),
                        len: offset as u64,
                        next_lsn: expected,
                    });
                    break 'segments;
                }
            }
        }
    }

    let next_lsn = expected.max(snapshot_lsn + 1);
    report.records = records.len() as u64;
    report.last_lsn = next_lsn - 1;
    let durable_dir_change = !to_delete.is_empty();
    finish_deletions(storage, &mut report, to_delete, durable_dir_change).await?;
    Ok(Recovered {
        records,
        report,
        next_lsn,
        active,
        snapshot_lsn,
    })
}

/// A damaged frame at `offset` of `segments[index]`: a torn tail if no valid
/// frame follows anywhere in the log (cut it), corruption otherwise (refuse).
async fn cut_or_refuse<S: Storage>(
    storage: &S,
    report: &mut RecoveryReport,
    segments: &[(Lsn, String)],
    index: usize,
    bytes: &[u8],
    offset: usize,
    damage: Damage,
) -> Result<(), StoreError> {
    let name = &segments[index].1;
    let mut valid_after: Option<(String, usize)> =
        format::find_valid_frame(bytes, offset + 1).map(|at| (name.clone(), at));
    if valid_after.is_none() {
        for (_, later) in &segments[index + 1..] {
            let later_bytes = storage.read_all(later).await?;
            report.bytes += later_bytes.len() as u64;
            if let Some(at) = format::find_valid_frame(&later_bytes, 0) {
                valid_after = Some((later.clone(), at));
                break;
            }
        }
    }
    if let Some((file, at)) = valid_after {
        report.saw(Condition::DamagedMiddle);
        return Err(refuse_corrupt(
            Condition::DamagedMiddle,
            name,
            offset as u64,
            format!(
                "{}; a valid record follows in {file} at byte {at}",
                damage.describe()
            ),
        ));
    }
    let mut deleted = Vec::new();
    for (_, later) in &segments[index + 1..] {
        storage.delete(later).await?;
        deleted.push(later.clone());
    }
    storage.truncate(name, offset as u64).await?;
    storage.sync(name).await?;
    if !deleted.is_empty() {
        storage.sync_dir().await?;
    }
    let cut = Cut {
        segment: name.clone(),
        offset: offset as u64,
        dropped_bytes: (bytes.len() - offset) as u64,
        reason: damage.describe().to_string(),
        deleted_segments: deleted.clone(),
    };
    tracing::warn!(
        segment = %cut.segment,
        offset = cut.offset,
        dropped_bytes = cut.dropped_bytes,
        reason = %cut.reason,
        "cut a torn tail off the write-ahead log"
    );
    report.event(
        Condition::DamagedTail,
        name,
        offset as u64,
        format!("{}; {} bytes cut", cut.reason, cut.dropped_bytes),
    );
    report.removed_files.extend(deleted);
    report.cut = Some(cut);
    Ok(())
}

async fn finish_deletions<S: Storage>(
    storage: &S,
    report: &mut RecoveryReport,
    to_delete: Vec<String>,
    sync: bool,
) -> Result<(), StoreError> {
    for name in &to_delete {
        storage.delete(name).await?;
    }
    if sync || !to_delete.is_empty() {
        storage.sync_dir().await?;
    }
    report.removed_files.extend(to_delete);
    Ok(())
}
