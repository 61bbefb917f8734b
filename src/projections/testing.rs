//! Test helpers: synthetic headers and an in-memory event source, so folds
//! and the runner can be tested without the log.

use std::sync::{Arc, Mutex};

use crate::events::{Event, EventId, Seq, StreamId};
use crate::log::{Header, ReadError};

use super::EventSource;

/// A header for event `seq` on `stream` at `ts` (hashes zeroed).
pub(crate) fn header(seq: u64, stream: StreamId, ts: i64) -> Header {
    Header {
        format: 1,
        event_type: 0,
        schema_version: 1,
        seq: Seq(seq),
        stream,
        stream_version: 1,
        event_id: EventId(uuid::Uuid::from_u128(u128::from(seq) + 1_000_000)),
        timestamp_us: ts,
        causation: None,
        payload_hash: [0; 32],
        payload_len: 0,
        stream_hash: [0; 32],
        global_hash: [0; 32],
    }
}

/// An append-only list of events standing in for the log.
#[derive(Clone, Default)]
pub(crate) struct MemorySource {
    events: Arc<Mutex<Vec<(Header, Event)>>>,
}

impl MemorySource {
    /// Appends `event` on `stream` at the next sequence; returns its header.
    pub(crate) fn push(&self, stream: StreamId, event: Event) -> Header {
        let mut events = self.events.lock().unwrap();
        let seq = events.len() as u64;
        let mut h = header(seq, stream, 1_000 + seq as i64 * 10);
        h.event_type = event.event_type().code();
        events.push((h.clone(), event));
        h
    }

    /// Everything appended so far.
    pub(crate) fn all(&self) -> Vec<(Header, Event)> {
        self.events.lock().unwrap().clone()
    }
}

impl EventSource for MemorySource {
    fn read_from(
        &self,
        from: Seq,
    ) -> Box<dyn Iterator<Item = Result<(Header, Event), ReadError>> + '_> {
        let events: Vec<_> = self.events.lock().unwrap()[from.0 as usize..].to_vec();
        Box::new(events.into_iter().map(Ok))
    }
}
