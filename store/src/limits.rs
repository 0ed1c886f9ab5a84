//! Every size and count limit of the store, in one place, with its unit in
//! its name. Changing one of the `*_FORMAT_*` values changes the disk format;
//! the others are tuning knobs.

/// Length of the fixed frame header that precedes every record body.
pub const FRAME_HEADER_BYTES: usize = 32;

/// Frames start at multiples of this, so that a body can be read in place
/// with the alignment rkyv wants and a scan for the next valid frame after
/// damage only has to try every 8th offset.
pub const FRAME_ALIGN_BYTES: usize = 8;

/// Largest record body accepted on append and on read. A record is one
/// notification (Web Push payloads are at most 4 KiB, SPEC §9) or one
/// registration, so 1 MiB is far above anything legitimate; a header that
/// claims more is damage, not data, and is never allocated for.
pub const RECORD_BODY_MAX_BYTES: usize = 1 << 20;

/// A segment is closed and a new one started once the next batch would take
/// it past this size. Compaction can only drop whole closed segments, so this
/// bounds how much already-compacted log is kept around; recovery reads one
/// segment at a time, so it also bounds recovery's memory.
pub const SEGMENT_TARGET_BYTES: u64 = 64 << 20;

/// When a batch reaches the end of what the active segment holds, the file is
/// extended by this many zero bytes past it in the same write. The batches
/// that follow overwrite blocks that already exist, so their fdatasyncs have
/// no size or allocation to write, only data (`bench/fdatasync_cost.py`: a
/// third less time per commit). Recovery already reads zeros after the last
/// record as the end of a segment; a closed segment is cut back to its records.
pub const SEGMENT_ZERO_AHEAD_BYTES: u64 = 1 << 20;

/// Compaction encodes the snapshot in chunks of about this size, writes each,
/// and yields to the executor between chunks so the shard keeps serving.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;

/// Storage reads are issued in pieces of this size (whole segments are read at
/// recovery; one read per piece keeps each IO bounded).
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// Recovery logs progress (and calls the progress callback) every this many
/// records, so a large replay shows signs of life (SPEC §2).
pub const RECOVERY_PROGRESS_EVERY_RECORDS: u64 = 100_000;

/// Recovery also reports each time it passes this percentage of the log
/// segments' bytes...
pub const RECOVERY_PROGRESS_STEP_PERCENT: u64 = 10;
/// ...when they hold at least this much (1 MiB of a segment is zeros
/// written ahead, so a log this small replays in a moment).
pub const RECOVERY_PROGRESS_MIN_BYTES: u64 = 4 << 20;

/// Upper bound on a snapshot record count we are willing to believe when it is
/// read back; anything above is treated as damage.
pub const SNAPSHOT_MAX_RECORDS: u64 = 1 << 40;

/// Largest reply frame the Redis client buffers (store/src/redis/). Herald's
/// replies are a UA's records at most (a few MiB even for a full queue);
/// a server that sends more is answered with a protocol error, not with
/// memory.
pub const REDIS_REPLY_MAX_BYTES: usize = 64 << 20;

/// The Redis client reads its sockets in pieces of this size.
pub const REDIS_READ_CHUNK_BYTES: usize = 64 << 10;
