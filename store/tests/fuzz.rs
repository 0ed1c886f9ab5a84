//! No panic on any bytes: random and mutated input to the frame decoder, the
//! record decoder, recovery and inspect (seeded, so failures reproduce).

mod common;

use futures_lite::future::block_on;
use herald_store::format::{self, Scan};
use herald_store::recovery::{segment_name, snapshot_name};
use herald_store::{Log, LogOptions, MemStorage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    let len = bytes.len().max(1);
    match rng.gen_range(0..7) {
        0 => {
            for _ in 0..=rng.gen_range(0..=4) {
                let at = rng.gen_range(0..len);
                if at < bytes.len() {
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                }
            }
        }
        1 => {
            let at = rng.gen_range(0..=bytes.len());
            bytes.truncate(at);
        }
        2 => {
            let at = rng.gen_range(0..len);
            let end = (at + rng.gen_range(0..=64)).min(bytes.len());
            if at < end {
                bytes[at..end].fill(0);
            }
        }
        3 => {
            let at = rng.gen_range(0..=bytes.len());
            let junk: Vec<u8> = (0..rng.gen_range(0..=40)).map(|_| rng.gen()).collect();
            bytes.splice(at..at, junk);
        }
        4 => {
            let at = rng.gen_range(0..len);
            let end = (at + rng.gen_range(0..=64)).min(bytes.len());
            for byte in bytes.iter_mut().take(end).skip(at) {
                *byte = rng.gen();
            }
        }
        5 => bytes.extend((0..rng.gen_range(0..=100)).map(|_| rng.gen::<u8>())),
        _ => {
            // Random bytes that begin with a valid-looking header.
            let body: Vec<u8> = (0..rng.gen_range(0..=200)).map(|_| rng.gen()).collect();
            let mut frame = Vec::new();
            format::encode_frame(
                &mut frame,
                format::FrameKind::Record,
                rng.gen_range(0..=10),
                &body,
            );
            let at = rng.gen_range(0..=bytes.len()) / 8 * 8;
            bytes.splice(at..at, frame);
        }
    }
}

fn scan_everything(bytes: &[u8]) {
    for offset in 0..bytes.len() + 2 {
        if let Scan::Frame(frame) = format::read_frame(bytes, offset) {
            let _ = format::decode_record(frame.body);
        }
    }
    let _ = format::find_valid_frame(bytes, 0);
    let mut summary = herald_store::InspectSummary::default();
    let mut sink = Vec::new();
    herald_store::inspect::inspect_bytes(bytes, &mut sink, &mut summary)
        .expect("inspect writes to a Vec");
}

#[test]
fn decoder_survives_random_bytes() {
    let mut rng = StdRng::seed_from_u64(0xF022);
    for _ in 0..2000 {
        let len = rng.gen_range(0..=300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        scan_everything(&bytes);
        let _ = format::decode_record(&bytes);
    }
}

#[test]
fn decoder_and_recovery_survive_mutated_logs() {
    let mut rng = StdRng::seed_from_u64(0xC0FFEE);
    let records = common::records(55, 40);
    let clean = common::segment_bytes(1, &records);
    let snapshot = common::snapshot_bytes(10, &records[..5], true);
    for case in 0..1500 {
        let mut segment = clean.clone();
        for _ in 0..=rng.gen_range(0..=2) {
            mutate(&mut rng, &mut segment);
        }
        scan_everything(&segment);
        // Record bodies alone, mutated.
        if let Scan::Frame(frame) = format::read_frame(&clean, 0) {
            let mut body = frame.body.to_vec();
            mutate(&mut rng, &mut body);
            let _ = format::decode_record(&body);
        }
        let with_snapshot = case % 3 == 0;
        let mut files = vec![(segment_name(1), segment.clone())];
        if with_snapshot {
            let mut snap = snapshot.clone();
            if case % 2 == 0 {
                mutate(&mut rng, &mut snap);
            }
            files.push((snapshot_name(10), snap));
        }
        let storage = MemStorage::from_files(files);
        let result = block_on(Log::open(storage, LogOptions::default()));
        if let (Ok((_, recovered)), false) = (result, with_snapshot) {
            // What recovery accepts is a prefix of what was written: no
            // mutation slips a wrong record through.
            let got = &recovered.records;
            assert!(got.len() <= records.len(), "case {case}");
            assert!(
                got[..] == records[..got.len()],
                "case {case}: accepted a record that was not written"
            );
        }
    }
}
