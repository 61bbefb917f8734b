//! Full-store verification: the check behind `airut check`.
//!
//! Walks every stored event in seq order, up to the head written when it
//! starts (through a fresh snapshot every few thousand events, so a long
//! walk on a live server pins no old state), and checks, for
//! each: the key is the next seq (no gap), the record parses and its payload
//! matches its hash, its stream version follows the stream's previous one,
//! both chain links recompute from the previous links and its core, its
//! timestamp does not go back, the `streams` index points at it, and the
//! payload decodes. Seq 0 must be the store's creation event. Finally the
//! index must hold exactly one entry per event.
//!
//! Assumes nothing about the bytes (they may have been edited) and stops at
//! the first broken link: after it, the chain proves nothing. Blocking; reads
//! the whole store.

use std::collections::HashMap;

use fjall::Readable;

use super::replay::SEGMENT;
use super::store::Store;
use super::{Hash, ReadError, chain, codec};
use crate::events::{Event, EventType, Seq, StreamId};

/// The outcome of [`Log::verify`](super::Log::verify).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Events verified (before the failure, if any).
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// The last verified event.
    pub head: Option<Seq>,
    /// Its global chain link (the value to anchor elsewhere).
    pub head_hash: Hash,
    /// The first broken link, if any.
    pub failure: Option<VerifyFailure>,
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyFailure {
    /// The first seq that does not verify.
    pub seq: Seq,
    /// What is wrong with it.
    pub reason: String,
}

// === impl VerifyReport ===

impl VerifyReport {
    /// Whether every check passed.
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Verifies the whole store (see the module docs). `Err` only for storage
/// errors that stop the walk; a damaged store is an `Ok` report with a
/// failure.
pub(super) fn verify(store: &Store) -> Result<VerifyReport, ReadError> {
    let storage = |e: fjall::Error| ReadError::Storage(e.to_string());
    let mut report = VerifyReport {
        events: 0,
        streams: 0,
        head: None,
        head_hash: chain::GENESIS,
        failure: None,
    };
    let mut heads: HashMap<StreamId, (u64, Hash)> = HashMap::new();
    let mut last_ts = i64::MIN;
    let mut expected = 0u64;

    for item in store.iter_from(Seq(0)) {
        let record = match item {
            Ok(record) => record,
            Err(ReadError::Corrupt { seq, reason }) => return Ok(report.fail(seq, reason)),
            Err(ReadError::Payload { seq, source }) => {
                return Ok(report.fail(seq, format!("payload: {source}")));
            }
            Err(e @ ReadError::Storage(_)) => return Err(e),
        };
        let seq = record.header.seq;
        let h = &record.header;
        let is_genesis_type = h.event_type == EventType::StoreCreated.code();
        if (seq.0 == 0) != is_genesis_type {
            let reason = if seq.0 == 0 {
                "the first event is not store.created"
            } else {
                "store.created after the first event"
            };
            return Ok(report.fail(seq, reason.to_owned()));
        }
        let (prev_version, prev_stream_hash) =
            heads.get(&h.stream).copied().unwrap_or((0, chain::GENESIS));
        if h.stream_version != prev_version.saturating_add(1) {
            return Ok(report.fail(
                seq,
                format!(
                    "stream {} version {} follows version {prev_version}",
                    h.stream, h.stream_version
                ),
            ));
        }
        if chain::link(&prev_stream_hash, &record.core) != h.stream_hash {
            return Ok(report.fail(seq, format!("stream chain of {} is broken", h.stream)));
        }
        let global = chain::link(&report.head_hash, &record.core);
        if global != h.global_hash {
            return Ok(report.fail(seq, "global chain is broken".to_owned()));
        }
        if h.timestamp_us < last_ts {
            return Ok(report.fail(seq, "timestamp goes back".to_owned()));
        }
        let indexed = store
            .streams
            .get(codec::stream_key(&h.stream, h.stream_version))
            .map_err(storage)?;
        if indexed.as_deref().and_then(codec::parse_seq) != Some(seq) {
            return Ok(report.fail(
                seq,
                format!(
                    "the stream index does not point here for {} version {}",
                    h.stream, h.stream_version
                ),
            ));
        }
        match record.decode() {
            Ok(Event::StoreCreated(created)) if created.store_id != store.store_id => {
                return Ok(report.fail(
                    seq,
                    "store id differs from the one recorded in meta".to_owned(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Ok(report.fail(seq, format!("payload: {e}"))),
        }

        heads.insert(h.stream.clone(), (h.stream_version, h.stream_hash));
        last_ts = h.timestamp_us;
        report.head_hash = global;
        report.head = Some(seq);
        report.events += 1;
        report.streams = heads.len() as u64;
        expected += 1;
    }

    if report.events == 0 {
        return Ok(report.fail(Seq(0), "no genesis event".to_owned()));
    }
    let index_entries = count_index_entries(store, expected)?;
    if index_entries != report.events {
        let reason = format!(
            "the stream index has {index_entries} entries for {} events",
            report.events
        );
        return Ok(report.fail(Seq(expected), reason));
    }
    Ok(report)
}

/// Entries of the `streams` index that belong to the first `end` events,
/// counted through a fresh snapshot every [`SEGMENT`] entries. An entry for
/// a later seq counts only if no event is stored there (a stray entry);
/// otherwise it belongs to an append made while verifying.
fn count_index_entries(store: &Store, end: u64) -> Result<u64, ReadError> {
    let storage = |e: fjall::Error| ReadError::Storage(e.to_string());
    let mut count = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let snapshot = store.db.snapshot();
        let range = match &after {
            None => snapshot.range::<&[u8], _>(&store.streams, ..),
            Some(key) => snapshot.range::<&[u8], _>(
                &store.streams,
                (
                    std::ops::Bound::Excluded(key.as_slice()),
                    std::ops::Bound::Unbounded,
                ),
            ),
        };
        let mut seen = 0u64;
        for guard in range {
            let (key, value) = guard.into_inner().map_err(storage)?;
            let counts = match codec::parse_seq(&value) {
                Some(seq) if seq.0 >= end => store
                    .events
                    .get(codec::seq_key(seq))
                    .map_err(storage)?
                    .is_none(),
                _ => true,
            };
            count += u64::from(counts);
            seen += 1;
            if seen >= SEGMENT {
                after = Some(key.to_vec());
                break;
            }
        }
        if seen < SEGMENT {
            return Ok(count);
        }
    }
}

impl VerifyReport {
    fn fail(mut self, seq: Seq, reason: String) -> VerifyReport {
        self.failure = Some(VerifyFailure { seq, reason });
        self
    }
}
