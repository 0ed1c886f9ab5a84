//! Crash consistency: a random workload over the fault storage, "crashed" at
//! every write/sync point, rebuilt from what the crash could leave, recovered.
//! Every record reported durable must be there, in order, and nothing else
//! but a prefix of what was appended may appear.

mod common;

use futures_lite::future::block_on;
use herald_engine::record::Record;
use herald_store::{CrashSpec, FaultStorage, FsyncMode, Log, LogOptions, MemStorage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Run {
    appended: Vec<Record>,
    durable: u64,
}

/// The workload: batches of 1-8 records, each flushed; now and then a
/// compaction whose "live state" is every record so far (so that recovery's
/// output can be compared with the appended sequence). Stops at the first
/// error (the crash).
fn workload(
    fault: &FaultStorage<MemStorage>,
    fsync: FsyncMode,
    seed: u64,
    crash_at: Option<u64>,
) -> Run {
    let options = LogOptions {
        fsync,
        // Small segments, so rotation is crashed into too.
        segment_target_bytes: 1500,
        ..LogOptions::default()
    };
    let (log, _) = block_on(Log::open(fault.clone(), options)).expect("open an empty log");
    if let Some(op) = crash_at {
        fault.crash_at_op(op);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let pool = common::records(seed, 64);
    let mut appended = Vec::new();
    'rounds: for round in 0..24u64 {
        let batch = rng.gen_range(1..=8);
        for _ in 0..batch {
            let record = pool[rng.gen_range(0..pool.len())].clone();
            match log.append(&record) {
                Ok(_) => appended.push(record),
                Err(_) => break 'rounds,
            }
        }
        if round % 7 == 6 {
            let covers = log.last_lsn();
            if block_on(log.compact(covers, appended.clone())).is_err() {
                break;
            }
        }
        if block_on(log.flush()).is_err() {
            break;
        }
    }
    Run {
        durable: log.durable_lsn(),
        appended,
    }
}

/// Checks one crash image; says whether recovery cut a tail and whether it
/// started from a snapshot.
fn check_image(image: &MemStorage, run: &Run, label: &str) -> (bool, bool) {
    let (log, recovered) = block_on(Log::open(image.clone(), LogOptions::default()))
        .unwrap_or_else(|err| panic!("{label}: recovery refused a crash image: {err}"));
    let got = &recovered.records;
    assert!(
        got.len() as u64 >= run.durable,
        "{label}: {} records recovered, {} were durable",
        got.len(),
        run.durable
    );
    assert!(
        got.len() <= run.appended.len(),
        "{label}: more records than appended"
    );
    assert!(
        got[..] == run.appended[..got.len()],
        "{label}: recovered records are not a prefix of the appended ones"
    );
    // The recovered log is usable and a second recovery agrees.
    let extra = run
        .appended
        .first()
        .cloned()
        .unwrap_or_else(|| common::records(1, 1)[0].clone());
    log.append(&extra).expect("append after recovery");
    block_on(log.flush()).expect("flush after recovery");
    let (_, again) =
        block_on(Log::open(image.clone(), LogOptions::default())).expect("second recovery");
    assert_eq!(again.records.len(), got.len() + 1, "{label}");
    assert!(
        again.report.cut.is_none(),
        "{label}: {:?}",
        again.report.cut
    );
    (
        recovered.report.cut.is_some(),
        recovered.report.snapshot.is_some(),
    )
}

fn crash_everywhere(fsync: FsyncMode, seed: u64) -> u64 {
    // A dry run counts the operations.
    let dry = FaultStorage::new(MemStorage::new());
    let full = workload(&dry, fsync, seed, None);
    assert_eq!(full.durable, full.appended.len() as u64);
    let total_ops = dry.ops();
    assert!(total_ops > 50, "{total_ops} ops");
    let mut images = 0;
    let (mut cuts, mut snapshots) = (0, 0);
    for op in 1..=total_ops + 1 {
        let mem = MemStorage::new();
        let fault = FaultStorage::new(mem.clone());
        let run = workload(&fault, fsync, seed, Some(op));
        let label = format!("{fsync:?} seed {seed} crash at op {op}/{total_ops}");
        check_image(
            &mem.crash(CrashSpec::durable_only()),
            &run,
            &format!("{label} durable-only"),
        );
        for crash_seed in 0..6 {
            let spec = CrashSpec::random(seed * 1000 + op * 10 + crash_seed);
            let (cut, snapshot) = check_image(&mem.crash(spec), &run, &format!("{label} {spec:?}"));
            cuts += cut as u32;
            snapshots += snapshot as u32;
            images += 1;
        }
    }
    // The workload really crashes into torn tails and compactions.
    assert!(
        cuts > 0 && snapshots > 0,
        "{fsync:?} seed {seed}: {cuts} cuts, {snapshots} snapshot starts"
    );
    images
}

#[test]
fn crash_at_every_write_and_sync_batch_mode() {
    for seed in 1..=3 {
        assert!(crash_everywhere(FsyncMode::Batch, seed) > 0);
    }
}

#[test]
fn crash_at_every_write_and_sync_always_mode() {
    assert!(crash_everywhere(FsyncMode::Always, 7) > 0);
}
