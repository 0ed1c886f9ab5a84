//! The log over memory and fault storage: append, group commit, waiters,
//! modes, failure, compaction.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_lite::future::block_on;
use herald_engine::record::Record;
use herald_store::storage::Storage;
use herald_store::{FaultStorage, FsyncMode, Log, LogOptions, MemStorage, StoreError};

fn open<S: Storage>(storage: S, fsync: FsyncMode) -> (Log<S>, herald_store::Recovered) {
    block_on(Log::open(storage, LogOptions::with_fsync(fsync))).expect("open")
}

fn reopen(storage: &MemStorage) -> Vec<Record> {
    let (_, recovered) = open(storage.clone(), FsyncMode::Batch);
    recovered.records
}

#[test]
fn append_flush_recover_round_trip() {
    let mem = MemStorage::new();
    let (log, recovered) = open(mem.clone(), FsyncMode::Batch);
    assert!(recovered.records.is_empty());
    let records = common::records(1, 50);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(log.append(record), Ok(i as u64 + 1));
    }
    assert_eq!(log.durable_lsn(), 0, "nothing is durable before a commit");
    assert_eq!(block_on(log.flush()), Ok(50));
    assert_eq!(log.durable_lsn(), 50);
    let stats = log.stats();
    assert_eq!(stats.records_appended, 50);
    assert_eq!(
        stats.batches_synced, 1,
        "one flush of 50 pending records is one batch"
    );
    assert_eq!(stats.records_synced, 50);
    assert_eq!(reopen(&mem), records);

    // Appending after recovery continues the LSNs, in the same segment.
    let (log, recovered) = open(mem.clone(), FsyncMode::Batch);
    assert_eq!(recovered.records, records);
    assert_eq!(recovered.report.last_lsn, 50);
    assert_eq!(log.append(&records[0]), Ok(51));
    block_on(log.flush()).expect("flush");
    let all = reopen(&mem);
    assert_eq!(all.len(), 51);
    assert_eq!(
        mem.files().len(),
        1,
        "one segment: {:?}",
        mem.files().iter().map(|f| &f.0).collect::<Vec<_>>()
    );
}

#[test]
fn group_commit_batches_what_arrives_during_a_sync() {
    // The committer runs as a task; a storage whose sync takes a while (it
    // yields) lets appends arrive while a batch is in flight.
    let executor = glommio::LocalExecutorBuilder::default()
        .io_memory(64 << 10)
        .make()
        .expect("executor");
    executor.run(async {
        let storage = SlowSync {
            inner: MemStorage::new(),
            yields: 3,
        };
        let (log, _) = Log::open(storage, LogOptions::with_fsync(FsyncMode::Batch))
            .await
            .expect("open");
        let committer = glommio::spawn_local({
            let log = log.clone();
            async move { log.run_committer().await }
        });
        let records = common::records(2, 200);
        let mut waiters = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let lsn = log.append(record).expect("append");
            waiters.push(glommio::spawn_local(log.wait_durable(lsn)));
            if i % 10 == 9 {
                glommio::yield_if_needed().await;
                futures_lite::future::yield_now().await;
            }
        }
        for waiter in waiters {
            waiter.await.expect("durable");
        }
        assert_eq!(log.durable_lsn(), 200);
        let stats = log.stats();
        assert_eq!(stats.records_synced, 200);
        assert!(
            stats.batches_synced > 1 && stats.batches_synced < 200,
            "group commit: {} batches for 200 records",
            stats.batches_synced
        );
        log.close();
        committer.await.expect("committer ends cleanly after close");
    });
}

/// A storage whose sync yields a few times before completing, like a real
/// fdatasync that takes a while.
struct SlowSync {
    inner: MemStorage,
    yields: u32,
}

impl Storage for SlowSync {
    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list().await
    }
    async fn create(&self, name: &str) -> Result<(), StoreError> {
        self.inner.create(name).await
    }
    async fn len(&self, name: &str) -> Result<u64, StoreError> {
        self.inner.len(name).await
    }
    async fn read(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.inner.read(name, offset, len).await
    }
    async fn write_at(&self, name: &str, offset: u64, data: Vec<u8>) -> Result<(), StoreError> {
        self.inner.write_at(name, offset, data).await
    }
    async fn sync(&self, name: &str) -> Result<(), StoreError> {
        for _ in 0..self.yields {
            futures_lite::future::yield_now().await;
        }
        self.inner.sync(name).await
    }
    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.inner.truncate(name, len).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.inner.rename(from, to).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(name).await
    }
    async fn sync_dir(&self) -> Result<(), StoreError> {
        self.inner.sync_dir().await
    }
}

#[test]
fn committer_and_waiters_under_block_on() {
    let mem = MemStorage::new();
    let (log, _) = open(mem.clone(), FsyncMode::Batch);
    let records = common::records(3, 30);
    let done = Rc::new(Cell::new(false));
    let workload = {
        let log = log.clone();
        let done = done.clone();
        async move {
            for chunk in records.chunks(7) {
                let mut last = 0;
                for record in chunk {
                    last = log.append(record).expect("append");
                }
                log.wait_durable(last).await.expect("durable");
                assert!(log.durable_lsn() >= last);
            }
            log.close();
            done.set(true);
        }
    };
    let (committed, ()) = block_on(futures_lite::future::zip(log.run_committer(), workload));
    committed.expect("committer");
    assert!(done.get());
    let stats = log.stats();
    assert_eq!(
        stats.batches_synced, 5,
        "one batch per chunk of 7: {stats:?}"
    );
    assert_eq!(reopen(&mem).len(), 30);
}

#[test]
fn always_mode_syncs_every_record() {
    let mem = MemStorage::new();
    let (log, _) = open(mem.clone(), FsyncMode::Always);
    for record in common::records(4, 12) {
        log.append(&record).expect("append");
    }
    block_on(log.flush()).expect("flush");
    let stats = log.stats();
    assert_eq!(stats.batches_synced, 12);
    assert_eq!(stats.records_synced, 12);
    assert_eq!(reopen(&mem).len(), 12);
}

#[test]
fn never_mode_writes_without_syncing() {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(mem.clone());
    let (log, _) = open(fault.clone(), FsyncMode::Never);
    let syncs_before = fault.syncs();
    for record in common::records(5, 10) {
        log.append(&record).expect("append");
    }
    block_on(log.flush()).expect("flush");
    assert_eq!(log.durable_lsn(), 10, "written counts as durable");
    assert_eq!(fault.syncs(), syncs_before, "no fsync at all");
    assert_eq!(log.stats().batches_synced, 0);
    assert_eq!(log.stats().batches_written, 1);
    assert_eq!(reopen(&mem).len(), 10);
}

#[test]
fn segments_rotate_at_the_target_size() {
    let mem = MemStorage::new();
    let options = LogOptions {
        segment_target_bytes: 1024,
        ..LogOptions::default()
    };
    let (log, _) = block_on(Log::open(mem.clone(), options)).expect("open");
    let records = common::records(6, 100);
    for record in &records {
        log.append(record).expect("append");
        block_on(log.flush()).expect("flush");
    }
    let files = mem.files();
    assert!(files.len() > 5, "{} segments", files.len());
    for (index, (name, bytes)) in files.iter().enumerate() {
        let records_end = common::frames_end(bytes);
        assert!(
            records_end <= 1024 || common::frame_offsets(bytes).len() == 1,
            "{name} holds {records_end} bytes of records"
        );
        if index + 1 < files.len() {
            // A segment is cut back to its records when the next one starts.
            assert_eq!(bytes.len(), records_end, "closed segment {name}");
        } else {
            // The active one ends in the zeros written ahead of its records.
            assert!(
                bytes[records_end..].iter().all(|&b| b == 0),
                "active segment {name}"
            );
        }
    }
    assert_eq!(reopen(&mem), records);
}

#[test]
fn record_too_large_is_refused_without_failing_the_log() {
    let (log, _) = open(MemStorage::new(), FsyncMode::Batch);
    let mut big = match &common::records(7, 5)[4] {
        Record::MessageStored(message) => message.clone(),
        other => panic!("expected a message, got {other:?}"),
    };
    big.body = herald_engine::message::MessageBody::WebPush {
        data: vec![1u8; herald_store::limits::RECORD_BODY_MAX_BYTES + 1],
        encoding: None,
        encryption: None,
        crypto_key: None,
    };
    assert!(matches!(
        log.append(&Record::MessageStored(big)),
        Err(StoreError::RecordTooLarge { .. })
    ));
    assert!(!log.failed());
    assert_eq!(log.append(&common::records(7, 1)[0]), Ok(1));
}

/// The failed state, after the N-th write or the N-th sync fails.
fn check_failure(fail: impl Fn(&FaultStorage<MemStorage>), label: &str) {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(mem.clone());
    let (log, _) = open(fault.clone(), FsyncMode::Batch);
    let records = common::records(8, 60);
    // 10 records made durable in two batches before the fault is armed.
    for chunk in records[..10].chunks(5) {
        for record in chunk {
            log.append(record).expect("append");
        }
        block_on(log.flush()).expect("flush");
    }
    assert_eq!(log.durable_lsn(), 10);
    fail(&fault);

    // Batches of 5 until one fails; a waiter parked on every batch.
    let mut durable_before_failure = 10;
    let mut waiters = Vec::new();
    let mut next = 10;
    loop {
        assert!(next + 5 <= 50, "{label}: the fault never fired");
        let mut last = 0;
        for record in &records[next..next + 5] {
            last = log.append(record).expect("append before the failure");
        }
        next += 5;
        waiters.push((last, log.wait_durable(last)));
        match block_on(log.flush()) {
            Ok(lsn) => durable_before_failure = lsn,
            Err(error) => {
                assert!(
                    matches!(error, StoreError::Failed { .. }),
                    "{label}: flush {error:?}"
                );
                break;
            }
        }
    }
    for (lsn, waiter) in waiters {
        let result = block_on(waiter);
        if lsn <= durable_before_failure {
            assert_eq!(result, Ok(()), "{label}: LSN {lsn}");
        } else {
            assert!(
                matches!(result, Err(StoreError::Failed { .. })),
                "{label}: LSN {lsn}: {result:?}"
            );
        }
    }
    assert!(log.failed(), "{label}");
    assert!(log.stats().failed);
    assert_eq!(
        log.durable_lsn(),
        durable_before_failure,
        "{label}: nothing unsynced is reported durable"
    );
    assert!(
        matches!(log.append(&records[55]), Err(StoreError::Failed { .. })),
        "{label}"
    );
    // Durable LSNs stay durable; a future waiter for anything later gets the error.
    assert_eq!(block_on(log.wait_durable(durable_before_failure)), Ok(()));
    assert!(matches!(
        block_on(log.wait_durable(durable_before_failure + 1)),
        Err(StoreError::Failed { .. })
    ));
    assert!(matches!(
        block_on(log.run_committer()),
        Err(StoreError::Failed { .. })
    ));
    assert!(matches!(
        block_on(log.flush()),
        Err(StoreError::Failed { .. })
    ));

    // What survives a crash now holds at least the durable records, in order.
    let image = mem.crash(herald_store::CrashSpec::durable_only());
    let survived = reopen(&image);
    assert!(
        survived.len() as u64 >= durable_before_failure
            && records[..survived.len()] == survived[..],
        "{label}: {} survived",
        survived.len()
    );
}

#[test]
fn nth_write_failure_fails_the_log() {
    for n in 1..=4 {
        check_failure(|fault| fault.fail_nth_write(n), &format!("write {n}"));
    }
}

#[test]
fn torn_write_failure_fails_the_log_and_recovery_cuts_it() {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(mem.clone());
    fault.set_torn_write_256ths(128);
    let (log, _) = open(fault.clone(), FsyncMode::Batch);
    let records = common::records(9, 10);
    for record in &records[..5] {
        log.append(record).expect("append");
    }
    block_on(log.flush()).expect("flush");
    fault.fail_nth_write(1);
    for record in &records[5..] {
        log.append(record).expect("append");
    }
    assert!(block_on(log.flush()).is_err());
    // The written image holds half a batch after the durable records.
    let (_, recovered) = open(mem.clone(), FsyncMode::Batch);
    assert!(recovered.records.len() >= 5);
    assert_eq!(recovered.records[..], records[..recovered.records.len()]);
    assert!(recovered.report.cut.is_some(), "{:?}", recovered.report);
}

#[test]
fn nth_sync_failure_fails_the_log() {
    for n in 1..=4 {
        check_failure(|fault| fault.fail_nth_sync(n), &format!("sync {n}"));
    }
}

#[test]
fn compaction_replaces_covered_segments_and_keeps_later_records() {
    let mem = MemStorage::new();
    let options = LogOptions {
        segment_target_bytes: 2048,
        ..LogOptions::default()
    };
    let (log, _) = block_on(Log::open(mem.clone(), options.clone())).expect("open");
    let records = common::records(10, 120);
    for record in &records[..100] {
        log.append(record).expect("append");
        block_on(log.flush()).expect("flush");
    }
    // Five records pending when compaction starts: they are <= X and must
    // survive (in the snapshot and in the log).
    for record in &records[100..105] {
        log.append(record).expect("append");
    }
    // The "live state" here is every record so far, so recovery output can
    // be compared with the appended sequence.
    let live: Vec<Record> = records[..105].to_vec();
    let report = block_on(log.compact(log.last_lsn(), live)).expect("compact");
    assert_eq!(report.covers_lsn, 105);
    assert_eq!(report.records, 105);
    assert!(!report.deleted_files.is_empty());
    // Appends after the compaction started.
    for record in &records[105..] {
        log.append(record).expect("append");
    }
    block_on(log.flush()).expect("flush");
    let names: Vec<String> = mem.files().into_iter().map(|(name, _)| name).collect();
    assert!(
        names.iter().any(|name| name.ends_with(".snap")),
        "{names:?}"
    );

    let (log2, recovered) = block_on(Log::open(mem.clone(), options)).expect("reopen");
    assert_eq!(recovered.records, records);
    assert_eq!(
        recovered.report.snapshot.as_ref().map(|s| s.covers_lsn),
        Some(105)
    );
    assert_eq!(log2.last_lsn(), 120);
    assert_eq!(log2.snapshot_lsn(), 105);
    assert!(recovered.report.skipped_records <= 5);
}

#[test]
fn compaction_yields_and_appends_during_it_are_kept() {
    let executor = glommio::LocalExecutorBuilder::default()
        .io_memory(64 << 10)
        .make()
        .expect("executor");
    executor.run(async {
        let mem = MemStorage::new();
        let (log, _) = Log::open(mem.clone(), LogOptions::default())
            .await
            .expect("open");
        let committer = glommio::spawn_local({
            let log = log.clone();
            async move { log.run_committer().await }
        });
        // A live state of a few MiB, so compaction writes several chunks.
        let records = common::records(11, 20_000);
        for record in &records[..10_000] {
            log.append(record).expect("append");
        }
        log.wait_durable(10_000).await.expect("durable");
        let live: Vec<Record> = records[..10_000].to_vec();
        let appender = glommio::spawn_local({
            let log = log.clone();
            let rest = records[10_000..].to_vec();
            async move {
                let mut appended_during = 0u32;
                for chunk in rest.chunks(1000) {
                    for record in chunk {
                        log.append(record).expect("append");
                    }
                    appended_during += 1;
                    futures_lite::future::yield_now().await;
                }
                appended_during
            }
        });
        let report = log.compact(10_000, live).await.expect("compact");
        assert_eq!(report.covers_lsn, 10_000);
        assert!(report.bytes > 2 * herald_store::limits::SNAPSHOT_CHUNK_BYTES as u64);
        appender.await;
        log.flush().await.expect("flush");
        log.close();
        committer.await.expect("committer");
        let (_, recovered) = Log::open(mem.clone(), LogOptions::default())
            .await
            .expect("reopen");
        assert_eq!(recovered.records.len(), 20_000);
        assert_eq!(recovered.records, records);
    });
}

#[test]
fn recovery_reports_progress() {
    let mem = MemStorage::new();
    let (log, _) = open(mem.clone(), FsyncMode::Never);
    let records = common::records(12, 1000);
    let every = herald_store::limits::RECOVERY_PROGRESS_EVERY_RECORDS;
    let total = every * 2 + 10;
    for i in 0..total {
        log.append(&records[(i % 1000) as usize]).expect("append");
    }
    block_on(log.flush()).expect("flush");
    let calls = Rc::new(RefCell::new(Vec::new()));
    let options = LogOptions {
        progress: Some(Rc::new({
            let calls = calls.clone();
            move |progress: &herald_store::RecoveryProgress| {
                assert!(progress.records > 0);
                calls.borrow_mut().push(*progress);
            }
        })),
        ..LogOptions::default()
    };
    let (_, recovered) = block_on(Log::open(mem, options)).expect("reopen");
    assert_eq!(recovered.records.len() as u64, total);
    let calls = calls.borrow();
    // Every `every` records, and (these segments are larger than
    // RECOVERY_PROGRESS_MIN_BYTES) at each step of the bytes replayed.
    let at_records: Vec<u64> = calls
        .iter()
        .map(|progress| progress.records)
        .filter(|records| records % every == 0)
        .collect();
    assert_eq!(at_records, [every, every * 2], "{calls:?}");
    let total_bytes = calls[0].total_bytes;
    assert!(total_bytes >= herald_store::limits::RECOVERY_PROGRESS_MIN_BYTES);
    let step = herald_store::limits::RECOVERY_PROGRESS_STEP_PERCENT;
    let percents: Vec<u64> = calls.iter().map(|progress| progress.percent).collect();
    let steps: Vec<u64> = percents.iter().map(|percent| percent / step).collect();
    assert!(
        steps.windows(2).all(|pair| pair[0] <= pair[1]),
        "{percents:?}"
    );
    // Every step the replay passed is reported (the last segment's zeros
    // written ahead are part of its bytes but hold no record).
    let last = *steps.last().expect("reports");
    for reached in 1..=last {
        assert!(
            steps.contains(&reached),
            "step {reached} missing: {percents:?}"
        );
    }
    assert!(last * step >= 50, "{percents:?}");
    for progress in calls.iter() {
        assert_eq!(progress.total_bytes, total_bytes);
        assert_eq!(progress.percent, progress.bytes * 100 / total_bytes);
    }
}
