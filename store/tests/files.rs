//! The real storage on glommio files in a temp dir, `check_layout`, and
//! `inspect`.

mod common;

use std::rc::Rc;
use std::time::Instant;

use herald_store::layout::META_FILE_NAME;
use herald_store::recovery::segment_name;
use herald_store::{
    check_layout, inspect, open_shard, shard_dir, FsyncMode, LogOptions, StoreError,
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

#[test]
fn measure_fsync_modes_on_real_files() {
    // Not a benchmark gate: prints what each mode costs here, sequentially
    // (one waiter at a time: the worst case for group commit).
    for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Never] {
        let dir = common::TempDir::new("modes");
        let data = dir.0.clone();
        check_layout(&data, 1).expect("layout");
        let records = common::records(9, 200);
        executor().run(async move {
            let (log, _) = open_shard(&data, 0, LogOptions::with_fsync(mode))
                .await
                .expect("open");
            let committer = glommio::spawn_local({
                let log = log.clone();
                async move { log.run_committer().await }
            });
            let started = Instant::now();
            for record in &records {
                let lsn = log.append(record).expect("append");
                log.wait_durable(lsn).await.expect("durable");
            }
            let elapsed = started.elapsed();
            println!(
                "{mode:?}: 200 sequential durable appends in {elapsed:?} ({:.0} us each)",
                elapsed.as_micros() as f64 / 200.0
            );
            log.close();
            committer.await.expect("committer");
        });
    }
}
