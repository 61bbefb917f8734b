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
//! Layout 1 of the store (one `fjall::Database`):
//! * `events`: seq (big-endian u64) → record (see [`codec`]);
//! * `streams`: stream id ‖ 0x00 ‖ stream version (BE u64) → seq (BE u64);
//! * `blobs`: BLAKE3 hash → content (see [`blobs`]);
//! * `meta`: `layout` (u32 LE) and `store_id` (16 bytes).
//!
//! Projections create their own keyspaces through [`Log::database`].
//!
//! Files: [`codec`] (record format, keys), [`chain`] (hash chains),
//! `store` (open, genesis, reads), `writer` (the writer thread),
//! `subscribe` (live tails), [`verify`] (full-store check), [`blobs`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::events::{Durability, Event, EventId, EventType, PayloadError, Seq, StreamId};

pub mod blobs;
pub mod chain;
pub mod codec;
pub mod replay;
mod store;
mod subscribe;
pub mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use blobs::BlobError;
pub use codec::{CodecError, decode_record};
pub use replay::Replay;
pub use verify::{VerifyFailure, VerifyReport};

use store::Store;
use writer::Request;

/// A 32-byte BLAKE3 digest (chain links, payload hashes, blobs).
pub type Hash = [u8; 32];

/// Options for [`Log::open`]. Build with `..LogOptions::default()` so new
/// fields keep their defaults.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Upper bound on how long a buffered append may stay un-fsynced.
    pub flush_interval: Duration,
    /// Create the store when the directory holds none.
    pub create: bool,
    /// fjall block cache, shared by every keyspace of the store (projections
    /// included).
    pub cache_bytes: u64,
    /// Memtable size of the `events` and `streams` keyspaces: the most of
    /// recent writes each keeps in memory before flushing to a table.
    pub memtable_bytes: u64,
    /// fjall background threads (memtable flushes, compaction).
    pub worker_threads: usize,
}

/// A handle on the open log. Cheap to clone; all clones share one writer.
///
/// The writer thread stops when [`Log::close`] is called or the last clone
/// is dropped (the drop persists with `SyncAll` and joins the thread).
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
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
    /// Length of the payload in bytes.
    pub payload_len: u32,
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
///
/// Every event is read from disk by its seq, up to the head the writer has
/// published, so the seam between catch-up and live has no gap and no
/// duplicate. A subscription does not keep the writer alive.
pub struct Subscription {
    inner: subscribe::Tail,
}

/// State shared by every clone of a [`Log`].
struct Inner {
    store: Arc<Store>,
    tx: mpsc::Sender<Request>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

// === impl LogOptions ===

impl Default for LogOptions {
    /// Buffered appends fsynced within 100 ms; create the store if missing;
    /// 16 MiB cache, 8 MiB memtables, one background thread (the writer and
    /// the appending tasks need the cores more than compaction does).
    fn default() -> Self {
        LogOptions {
            flush_interval: Duration::from_millis(100),
            create: true,
            cache_bytes: 16 << 20,
            memtable_bytes: 8 << 20,
            worker_threads: 1,
        }
    }
}

// === impl Log ===

impl Log {
    /// Opens (or creates) the store in `dir`, runs layout migrations, starts the writer.
    ///
    /// A new store gets its genesis event (seq 0, `store.created` on the
    /// `server` stream) durably before this returns. With `create: false` a
    /// directory without a store is [`OpenError::Missing`] and nothing is
    /// written there. Blocking (fjall recovery): call it before serving, or
    /// from `spawn_blocking`.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Log, OpenError> {
        let (store, tip, progress) = Store::open(dir, &opts)?;
        let store = Arc::new(store);
        let (tx, handle) = writer::spawn(Arc::clone(&store), tip, progress, opts.flush_interval)?;
        Ok(Log {
            inner: Arc::new(Inner {
                store,
                tx,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Appends one stream's events atomically. Returns after the batch's durability class holds.
    pub async fn append(&self, batch: StreamAppend) -> Result<Appended, AppendError> {
        let mut appended = self.append_all(vec![batch]).await?;
        appended
            .pop()
            .ok_or_else(|| AppendError::Invalid("the writer returned no result".to_owned()))
    }

    /// Appends several streams' events in one atomic batch.
    ///
    /// All or nothing: if any stream's version check fails, nothing is
    /// written and the error names that stream. Results are in the order of
    /// `batches`. The strictest durability class of all events applies.
    pub async fn append_all(
        &self,
        batches: Vec<StreamAppend>,
    ) -> Result<Vec<Appended>, AppendError> {
        self.check_writable()?;
        let append = writer::prepare(batches)?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Request::Append { append, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Blocking form of [`Log::append`] for non-async callers.
    ///
    /// Panics if called from an async context (tokio forbids blocking on a
    /// runtime thread); use [`Log::append`] there.
    pub fn append_blocking(&self, batch: StreamAppend) -> Result<Appended, AppendError> {
        self.check_writable()?;
        let append = writer::prepare(vec![batch])?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .blocking_send(Request::Append { append, reply })
            .map_err(|_| AppendError::Closed)?;
        let mut appended = rx.blocking_recv().map_err(|_| AppendError::Closed)??;
        appended
            .pop()
            .ok_or_else(|| AppendError::Invalid("the writer returned no result".to_owned()))
    }

    /// The last written sequence (visible to readers), if any.
    pub fn head(&self) -> Option<Seq> {
        let written = self.inner.store.progress.borrow().written;
        written.checked_sub(1).map(Seq)
    }

    /// The last written sequence and its global chain link: the value an
    /// operator anchors elsewhere (`airut check`, dashboard).
    pub fn head_hash(&self) -> Option<(Seq, Hash)> {
        let p = *self.inner.store.progress.borrow();
        p.written.checked_sub(1).map(|s| (Seq(s), p.head_hash))
    }

    /// The last fsynced sequence, if any.
    pub fn durable_head(&self) -> Option<Seq> {
        let durable = self.inner.store.progress.borrow().durable;
        durable.checked_sub(1).map(Seq)
    }

    /// The random identity of this store (from its genesis event).
    pub fn store_id(&self) -> uuid::Uuid {
        self.inner.store.store_id
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.store.path
    }

    /// Waits until every event up to `seq` is fsynced.
    ///
    /// If `seq` is written but not yet durable, asks the writer to fsync now
    /// instead of waiting for the flush timer. Waits for `seq` to be written
    /// if it is beyond the head. Fails if the log is poisoned or closes first.
    pub async fn sync_to(&self, seq: Seq) -> Result<(), AppendError> {
        self.wait_for_durable(seq, true).await
    }

    /// Waits until every event up to `seq` is fsynced, without asking for an
    /// early fsync: the flush timer or a later durable append does it.
    pub async fn wait_durable(&self, seq: Seq) -> Result<(), AppendError> {
        self.wait_for_durable(seq, false).await
    }

    async fn wait_for_durable(&self, seq: Seq, flush: bool) -> Result<(), AppendError> {
        let mut progress = self.inner.store.progress.clone();
        let mut asked = !flush;
        loop {
            let p = *progress.borrow_and_update();
            if p.durable > seq.0 {
                return Ok(());
            }
            if p.poisoned {
                return Err(AppendError::Poisoned);
            }
            if p.closed {
                return Err(AppendError::Closed);
            }
            if !asked && p.written > seq.0 {
                // Full queue: the writer is busy and its timer fsyncs anyway.
                let _ = self.inner.tx.try_send(Request::Flush);
                asked = true;
            }
            if progress.changed().await.is_err() {
                let p = *progress.borrow();
                return if p.durable > seq.0 {
                    Ok(())
                } else {
                    Err(AppendError::Closed)
                };
            }
        }
    }

    /// Reads one event (blocking; a point read).
    pub fn read(&self, seq: Seq) -> Result<Option<Record>, ReadError> {
        self.inner.store.read(seq)
    }

    /// Events from `from` up to the head written when called, in order
    /// (blocking; read through a fresh snapshot every few thousand events,
    /// so a long read holds no old state in memory).
    ///
    /// A missing seq inside the log is reported as [`ReadError::Corrupt`]
    /// naming it, not skipped.
    pub fn iter_from(&self, from: Seq) -> impl Iterator<Item = Result<Record, ReadError>> + '_ {
        self.inner.store.iter_from(from)
    }

    /// Events from `from` up to the head written when called, each passed
    /// through `map`, in seq order; read, validated and mapped on worker
    /// threads (see [`replay`]). The fast path for long reads such as a
    /// projection rebuild: put the payload decoding in `map`.
    pub fn replay<T, F>(&self, from: Seq, map: F) -> Replay<T>
    where
        T: Send + 'static,
        F: Fn(Record) -> Result<T, ReadError> + Send + Sync + 'static,
    {
        let end = self.inner.store.progress.borrow().written;
        replay::start(Arc::clone(&self.inner.store), from, end, map)
    }

    /// A stream's events from `from_version` (1-based), in order.
    ///
    /// Blocking; a snapshot. Each event is checked against the index entry
    /// that led to it (stream and version).
    pub fn stream_iter(
        &self,
        stream: &StreamId,
        from_version: u64,
    ) -> impl Iterator<Item = Result<Record, ReadError>> + '_ {
        self.inner.store.stream_iter(stream, from_version)
    }

    /// Current version of a stream (0 when it has no events).
    pub fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError> {
        self.inner.store.stream_version(stream)
    }

    /// A live subscription from `from`.
    pub fn subscribe(&self, from: Seq) -> Subscription {
        Subscription {
            inner: subscribe::Tail::new(Arc::clone(&self.inner.store), from),
        }
    }

    /// The fjall database, for projection keyspaces.
    pub fn database(&self) -> &fjall::Database {
        &self.inner.store.db
    }

    /// Stores a blob (blocking); see [`blobs`].
    pub fn put_blob(&self, content: &[u8]) -> Result<crate::events::BlobRef, BlobError> {
        blobs::put(&self.inner.store.blobs, content)
    }

    /// Reads a blob and checks it against its hash (blocking); see [`blobs`].
    pub fn get_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
        blobs::get(&self.inner.store.blobs, hash)
    }

    /// Checks the whole store (blocking; reads every event); see [`verify`].
    pub fn verify(&self) -> Result<VerifyReport, ReadError> {
        verify::verify(&self.inner.store)
    }

    /// Flushes, fsyncs (SyncAll) and stops the writer.
    ///
    /// Appends already queued are written first; later appends on any clone
    /// fail with [`AppendError::Closed`]. Subscriptions end once they have
    /// delivered everything written.
    pub async fn close(self) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        let sent = self.inner.tx.send(Request::Close { reply }).await;
        let result = match sent {
            Ok(()) => rx.await.unwrap_or(Err(AppendError::Closed)),
            // The writer already stopped (closed through another clone).
            Err(_) => Ok(()),
        };
        let handle = self
            .inner
            .writer
            .lock()
            .map_or(None, |mut guard| guard.take());
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|_| AppendError::Closed)?
                .map_err(|_| AppendError::Invalid("the log writer panicked".to_owned()))?;
        }
        result
    }

    fn check_writable(&self) -> Result<(), AppendError> {
        let p = *self.inner.store.progress.borrow();
        if p.poisoned {
            Err(AppendError::Poisoned)
        } else if p.closed {
            Err(AppendError::Closed)
        } else {
            Ok(())
        }
    }
}

// === impl Inner ===

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the only sender ends the writer's loop: it persists with
        // SyncAll and exits. Join it so the store is closed on return.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        let handle = self.writer.get_mut().map_or(None, |h| h.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the log writer thread panicked");
        }
    }
}

// === impl Subscription ===

impl Subscription {
    /// The next event, waiting for one when caught up; `None` when the log closed.
    ///
    /// `None` comes only after every event written before the close (or
    /// before a storage error poisoned the log) was delivered. Cancel-safe
    /// between events. A record that cannot be read is returned as an error and skipped: the
    /// next call continues with the following seq.
    pub async fn next(&mut self) -> Option<Result<Record, ReadError>> {
        self.inner.next().await
    }

    /// The seq the next call will deliver.
    pub fn position(&self) -> Seq {
        self.inner.position()
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
