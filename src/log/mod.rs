//! The event log: one ordered, append-only, hash-chained log on fjall.
//!
//! Owns the store (`fjall::Database`), the record codec, sequence assignment
//! (one writer thread: group commit), stream versions, durability, live
//! subscriptions, the blob keyspace, verification and the layout-migration
//! runner. Every other module reads and writes facts only through [`Log`].
//!
//! Must never: trust bytes read from disk (values are copied to aligned
//! memory and validated), rewrite a stored event, or let two processes open
//! one store (fjall is single-process; the CLI talks to a running server).
//!
//! SKELETON: signatures only; the implementation lands with the log work.

#![allow(unused_variables, clippy::todo)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::events::{Durability, Event, EventId, EventType, PayloadError, Seq, StreamId};

/// A 32-byte BLAKE3 digest (chain links, payload hashes, blobs).
pub type Hash = [u8; 32];

/// Options for [`Log::open`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Upper bound on how long a buffered append may stay un-fsynced.
    pub flush_interval: Duration,
    /// Create the store when the directory holds none.
    pub create: bool,
}

/// A handle on the open log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Log {
    _p: (),
}

/// The expected version of a stream for an optimistic append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (1-based).
    Exact(u64),
}

/// One event to append, with the event that caused it (for idempotent reactions).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event.
    pub event: Event,
    /// The event that caused this one, if any.
    pub causation: Option<EventId>,
}

/// Events for one stream, appended atomically with an optional version check.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamId,
    /// The version check.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Sequence of the first event of the batch.
    pub first: Seq,
    /// Sequence of the last event of the batch.
    pub last: Seq,
    /// Event ids, in order.
    pub ids: Vec<EventId>,
}

/// The decoded header of a stored event (everything outside the payload).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    /// Record format (1).
    pub format: u8,
    /// Event type code.
    pub event_type: u16,
    /// Payload schema version.
    pub schema_version: u16,
    /// Global sequence.
    pub seq: Seq,
    /// The stream.
    pub stream: StreamId,
    /// 1-based version within the stream.
    pub stream_version: u64,
    /// Event id (uuid v7).
    pub event_id: EventId,
    /// Append time, microseconds since the Unix epoch (monotonic in seq).
    pub timestamp_us: i64,
    /// Causing event, if any.
    pub causation: Option<EventId>,
    /// BLAKE3 of the payload bytes.
    pub payload_hash: Hash,
    /// Stream chain link: BLAKE3(previous stream hash ‖ header core).
    pub stream_hash: Hash,
    /// Global chain link: BLAKE3(previous global hash ‖ header core).
    pub global_hash: Hash,
}

/// A stored event: its header, encoded header core and aligned payload.
#[derive(Debug, Clone)]
pub struct Record {
    /// The header.
    pub header: Header,
    /// The exact header-core bytes the chain hashes cover.
    pub core: Vec<u8>,
    /// The rkyv payload, copied to aligned memory.
    pub payload: rkyv::util::AlignedVec,
}

/// Errors from appending.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream's version was not the expected one: another writer got
    /// there first. Re-read the stream, decide again, retry.
    #[error("stream {stream}: expected version {expected:?}, found {actual}")]
    VersionConflict {
        /// The stream.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's current version (0 = no stream).
        actual: u64,
    },
    /// The log hit a storage error earlier and refuses writes until restarted.
    #[error("the log is poisoned after a storage error; restart airut")]
    Poisoned,
    /// The log is shutting down.
    #[error("the log is closed")]
    Closed,
    /// An event could not be encoded, or a batch was empty.
    #[error("invalid append: {0}")]
    Invalid(String),
}

/// Errors from reading.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stored value at `seq` is corrupt or undecodable.
    #[error("event {seq}: {reason}")]
    Corrupt {
        /// Where.
        seq: Seq,
        /// What.
        reason: String,
    },
    /// The payload at `seq` could not be decoded.
    #[error("event {seq}: {source}")]
    Payload {
        /// Where.
        seq: Seq,
        /// What.
        source: PayloadError,
    },
    /// fjall failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// Errors from opening a store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store was written by a newer airut.
    #[error(
        "store at {path} has layout {found}; this airut reads up to {supported}: upgrade airut"
    )]
    NewerLayout {
        /// The store.
        path: PathBuf,
        /// Its layout.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// No store there and `create` was false.
    #[error("no store at {0}")]
    Missing(PathBuf),
    /// Another error.
    #[error("cannot open store at {path}: {reason}")]
    Storage {
        /// The store.
        path: PathBuf,
        /// What.
        reason: String,
    },
}

/// A live tail from some sequence: catch-up from disk, then new commits.
pub struct Subscription {
    _p: (),
}

impl Log {
    /// Opens (or creates) the store in `dir`, runs layout migrations, starts the writer.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Log, OpenError> {
        todo!()
    }
    /// Appends one stream's events atomically. Returns after the batch's durability class holds.
    pub async fn append(&self, batch: StreamAppend) -> Result<Appended, AppendError> {
        todo!()
    }
    /// Appends several streams' events in one atomic batch.
    pub async fn append_all(
        &self,
        batches: Vec<StreamAppend>,
    ) -> Result<Vec<Appended>, AppendError> {
        todo!()
    }
    /// Blocking form of [`Log::append`] for non-async callers.
    pub fn append_blocking(&self, batch: StreamAppend) -> Result<Appended, AppendError> {
        todo!()
    }
    /// The last written sequence (visible to readers), if any.
    pub fn head(&self) -> Option<Seq> {
        todo!()
    }
    /// Waits until every event up to `seq` is fsynced.
    pub async fn sync_to(&self, seq: Seq) -> Result<(), AppendError> {
        todo!()
    }
    /// Reads one event.
    pub fn read(&self, seq: Seq) -> Result<Option<Record>, ReadError> {
        todo!()
    }
    /// Events from `from`, in order (blocking; a snapshot).
    pub fn iter_from(&self, from: Seq) -> impl Iterator<Item = Result<Record, ReadError>> + '_ {
        std::iter::empty()
    }
    /// A stream's events from `from_version` (1-based), in order.
    pub fn stream_iter(
        &self,
        stream: &StreamId,
        from_version: u64,
    ) -> impl Iterator<Item = Result<Record, ReadError>> + '_ {
        std::iter::empty()
    }
    /// Current version of a stream (0 when it has no events).
    pub fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError> {
        todo!()
    }
    /// A live subscription from `from`.
    pub fn subscribe(&self, from: Seq) -> Subscription {
        todo!()
    }
    /// The fjall database, for projection keyspaces.
    pub fn database(&self) -> &fjall::Database {
        todo!()
    }
    /// Flushes, fsyncs (SyncAll) and stops the writer.
    pub async fn close(self) -> Result<(), AppendError> {
        todo!()
    }
}

impl Subscription {
    /// The next event, waiting for one when caught up; `None` when the log closed.
    pub async fn next(&mut self) -> Option<Result<Record, ReadError>> {
        todo!()
    }
}

impl Record {
    /// Decodes the payload.
    pub fn decode(&self) -> Result<Event, ReadError> {
        Event::decode(
            self.header.event_type,
            self.header.schema_version,
            &self.payload,
        )
        .map_err(|source| ReadError::Payload {
            seq: self.header.seq,
            source,
        })
    }
    /// The event type, if known.
    pub fn event_type(&self) -> Option<EventType> {
        EventType::from_code(self.header.event_type)
    }
}

/// Which durability a batch needs: the strictest of its events.
pub fn batch_durability(events: &[NewEvent]) -> Durability {
    events
        .iter()
        .map(|e| e.event.event_type().durability())
        .max()
        .unwrap_or(Durability::Buffered)
}
