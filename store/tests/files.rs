//! The real storage on glommio files in a temp dir (and the fdatasyncs each
//! fsync mode makes on it), `check_layout`, and `inspect`.

mod common;

use std::rc::Rc;
use std::time::Instant;

use herald_store::layout::META_FILE_NAME;
use herald_store::recovery::segment_name;
use herald_store::{
    check_layout, inspect, open_shard, shard_dir, FaultStorage, FsyncMode, GlommioStorage, Log,
    LogOptions, LogStats, StoreError,
};

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::default()
        // Small: the locked-memory limit here is 8 MiB.
        .io_memory(256 << 10)
        .make()
        .expect("glommio executor (needs io_uring)")
}

#[test]
fn real_files_round_trip_group_commit_compaction_and_inspect() {
    let dir = common::TempDir::new("files");
    let data_dir = dir.0.clone();
    check_layout(&data_dir, 2).expect("new data dir");
    check_layout(&data_dir, 2).expect("same shard count again");
    assert!(matches!(
        check_layout(&data_dir, 3),
        Err(StoreError::ShardCountMismatch {
            found: 2,
            expected: 3,
            ..
        })
    ));
    let records = common::records(77, 3000);

    let data = data_dir.clone();
    let expected = records.clone();
    executor().run(async move {
        let (log, recovered) = open_shard(&data, 0, LogOptions::with_fsync(FsyncMode::Batch))
            .await
            .expect("open");
        assert!(recovered.records.is_empty());
        let committer = glommio::spawn_local({
            let log = log.clone();
            async move { log.run_committer().await }
        });
        // 3000 appends from 30 concurrent tasks, each waiting for durability
        // after every append, as AS requests would.
        let started = Instant::now();
        let expected = Rc::new(expected);
        let mut tasks = Vec::new();
        for task in 0..30usize {
            let log = log.clone();
            let expected = expected.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..100usize {
                    let lsn = log.append(&expected[(i * 30 + task) % 3000]).expect("append");
                    log.wait_durable(lsn).await.expect("durable");
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let elapsed = started.elapsed();
        let stats = log.stats();
        println!(
            "real files, batch mode: 3000 durable appends from 30 tasks in {elapsed:?} ({:.0}/s), {} fsyncs, {:.1} records/fsync, last sync {:?}",
            3000.0 / elapsed.as_secs_f64(),
            stats.batches_synced,
            stats.records_synced as f64 / stats.batches_synced.max(1) as f64,
            stats.last_sync_latency
        );
        assert_eq!(stats.records_synced, 3000);
        assert!(stats.batches_synced < 3000, "group commit batches concurrent appends");
        log.flush().await.expect("flush");
        log.close();
        committer.await.expect("committer");
    });

    // Reopen: the same 3000 records (in append order, which interleaved the
    // tasks; compare as multisets of LSN order via a second reopen below).
    let data = data_dir.clone();
    let first_pass = executor().run(async move {
        let (log, recovered) = open_shard(&data, 0, LogOptions::default())
            .await
            .expect("reopen");
        assert_eq!(recovered.records.len(), 3000);
        assert_eq!(log.last_lsn(), 3000);
        // Compact to the recovered state; then append a few more.
        let report = log
            .compact(3000, recovered.records.clone())
            .await
            .expect("compact");
        assert_eq!(report.records, 3000);
        for record in &recovered.records[..10] {
            log.append(record).expect("append");
        }
        log.flush().await.expect("flush");
        let mut all = recovered.records.clone();
        all.extend_from_slice(&recovered.records[..10]);
        all
    });
    let data = data_dir.clone();
    executor().run(async move {
        let (_, recovered) = open_shard(&data, 0, LogOptions::default())
            .await
            .expect("reopen after compaction");
        assert_eq!(recovered.records, first_pass);
        assert_eq!(
            recovered.report.snapshot.as_ref().map(|s| s.records),
            Some(3000)
        );
    });

    // A torn tail on real files: chop the last segment, recovery cuts.
    let shard0 = shard_dir(&data_dir, 0);
    let mut segments: Vec<_> = std::fs::read_dir(&shard0)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("wal-"))
        .collect();
    segments.sort();
    let last = shard0.join(segments.last().expect("a segment"));
    let len = std::fs::metadata(&last).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open");
    file.set_len(len - 5).expect("truncate");
    drop(file);
    let data = data_dir.clone();
    executor().run(async move {
        let (_, recovered) = open_shard(&data, 0, LogOptions::default())
            .await
            .expect("recover torn");
        assert_eq!(recovered.records.len(), 3009);
        assert!(recovered.report.cut.is_some());
    });

    // inspect on the data dir and on one shard dir.
    let mut out = Vec::new();
    let summary = inspect(&data_dir, &mut out).expect("inspect");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(summary.shards, 2);
    assert_eq!(summary.snapshot_records, 3000);
    assert_eq!(summary.records, 9, "{text}");
    assert_eq!(summary.damaged, 0);
    assert!(text.contains("summary:"), "{text}");
    assert!(text.contains("MessageStored uaid="), "{text}");
    assert!(text.contains("2 shards"), "{text}");
    let mut out = Vec::new();
    let one = inspect(&shard0, &mut out).expect("inspect shard");
    assert_eq!(one.shards, 1);
    assert_eq!(one.records, 9);
    assert!(data_dir.join(META_FILE_NAME).exists());
}

#[test]
fn inspect_reports_damage_and_check_layout_rejects_garbage() {
    let dir = common::TempDir::new("inspect");
    let records = common::records(5, 6);
    let mut bytes = common::segment_bytes(1, &records);
    let offsets = common::frame_offsets(&bytes);
    bytes[offsets[2] + 40] ^= 0xFF;
    std::fs::write(dir.0.join(segment_name(1)), &bytes).expect("write");
    std::fs::write(dir.0.join("README"), b"x").expect("write");
    let mut out = Vec::new();
    let summary = inspect(&dir.0, &mut out).expect("inspect");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(summary.records, 5, "{text}");
    assert_eq!(summary.damaged, 1, "{text}");
    assert_eq!(summary.ignored_files, 1, "{text}");
    assert!(text.contains("DAMAGED"), "{text}");

    let bad = common::TempDir::new("meta");
    std::fs::write(bad.0.join(META_FILE_NAME), b"shards many\n").expect("write");
    assert!(matches!(
        check_layout(&bad.0, 1),
        Err(StoreError::Layout { .. })
    ));
    // Shard dirs without a meta file still pin the count.
    let orphan = common::TempDir::new("orphan");
    for n in 0..3 {
        std::fs::create_dir_all(shard_dir(&orphan.0, n)).expect("mkdir");
    }
    assert!(matches!(
        check_layout(&orphan.0, 2),
        Err(StoreError::ShardCountMismatch {
            found: 3,
            expected: 2,
            ..
        })
    ));
}

/// What one fsync mode did on real files: the log's own counters and the
/// syncs that reached the disk, counted by a wrapper under the log.
struct ModeRun {
    stats: LogStats,
    fdatasyncs: u64,
    dir_fsyncs: u64,
}

/// `MODE_TASKS` concurrent writers, each appending `MODE_APPENDS` records
/// and waiting for each to be durable, as AS requests do, on a fresh shard.
const MODE_TASKS: usize = 4;
const MODE_APPENDS: usize = 50;
const MODE_RECORDS: u64 = (MODE_TASKS * MODE_APPENDS) as u64;

fn run_mode_on_real_files(mode: FsyncMode) -> ModeRun {
    let dir = common::TempDir::new("modes");
    let data = dir.0.clone();
    check_layout(&data, 1).expect("layout");
    let records = Rc::new(common::records(9, MODE_RECORDS));
    executor().run(async move {
        let storage =
            FaultStorage::new(GlommioStorage::new(shard_dir(&data, 0)).expect("shard dir"));
        let (log, _) = Log::open(storage, LogOptions::with_fsync(mode))
            .await
            .expect("open");
        let committer = glommio::spawn_local({
            let log = log.clone();
            async move { log.run_committer().await }
        });
        let started = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..MODE_TASKS {
            let log = log.clone();
            let records = records.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..MODE_APPENDS {
                    let lsn = log.append(&records[i * MODE_TASKS + task]).expect("append");
                    log.wait_durable(lsn).await.expect("durable");
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let elapsed = started.elapsed();
        log.close();
        committer.await.expect("committer");
        let run = ModeRun {
            stats: log.stats(),
            fdatasyncs: log.storage().file_syncs_passed(),
            dir_fsyncs: log.storage().dir_syncs_passed(),
        };
        println!(
            "{mode:?}: {MODE_RECORDS} durable appends from {MODE_TASKS} tasks in {elapsed:?}, \
             {} commits, {} fdatasyncs, {} directory fsyncs",
            run.stats.batches_written, run.fdatasyncs, run.dir_fsyncs
        );
        run
    })
}

#[test]
fn each_fsync_mode_syncs_as_documented_on_real_files() {
    for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Never] {
        let ModeRun {
            stats,
            fdatasyncs,
            dir_fsyncs,
        } = run_mode_on_real_files(mode);
        let label =
            format!("{mode:?}: {stats:?}, {fdatasyncs} fdatasyncs, {dir_fsyncs} dir fsyncs");
        assert_eq!(stats.durable_lsn, MODE_RECORDS, "{label}");
        assert_eq!(stats.segments_created, 1, "{label}");
        // The log's counters (the wal_fsyncs metric) say what the disk saw.
        assert_eq!(stats.batches_synced, fdatasyncs, "{label}");
        match mode {
            FsyncMode::Always => {
                // One record per commit, each synced, even with waiters
                // queued behind it.
                assert_eq!(fdatasyncs, MODE_RECORDS, "{label}");
                assert_eq!(stats.batches_written, MODE_RECORDS, "{label}");
                assert_eq!(stats.records_synced, MODE_RECORDS, "{label}");
            }
            FsyncMode::Batch => {
                // One fdatasync per commit; concurrent waiters share them.
                assert_eq!(fdatasyncs, stats.batches_written, "{label}");
                assert!(fdatasyncs >= 1, "{label}");
                assert!(
                    fdatasyncs < MODE_RECORDS,
                    "group commit batches concurrent appends: {label}"
                );
                assert_eq!(stats.records_synced, MODE_RECORDS, "{label}");
            }
            FsyncMode::Never => {
                assert_eq!(fdatasyncs, 0, "{label}");
                assert_eq!(stats.records_synced, 0, "{label}");
                assert!(stats.batches_written >= 1, "{label}");
            }
        }
        // The new segment's directory entry is made durable, unless nothing is.
        let expected_dir_fsyncs = match mode {
            FsyncMode::Never => 0,
            FsyncMode::Always | FsyncMode::Batch => stats.segments_created,
        };
        assert_eq!(dir_fsyncs, expected_dir_fsyncs, "{label}");
    }
}
