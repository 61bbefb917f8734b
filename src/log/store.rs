//! Opening a store (create with genesis, check and migrate the layout,
//! recover the tip) and every read path over its keyspaces.
//!
//! Reads here are blocking fjall calls; async callers go through
//! `spawn_blocking` (subscriptions do). Never writes events: only the writer
//! thread does, apart from the genesis batch written here before the writer
//! starts.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use tokio::sync::watch;

use super::codec::{self, CoreFields};
use super::replay::SEGMENT;
use super::{Hash, LogOptions, OpenError, ReadError, Record, chain};
use crate::events::{Event, EventId, Seq, StoreCreatedV1, StreamId};
use crate::migrations::{self, CURRENT_LAYOUT};

/// `meta` key of the layout version (u32 LE).
const META_LAYOUT: &[u8] = b"layout";
/// `meta` key of the store id (16 bytes).
const META_STORE_ID: &[u8] = b"store_id";
/// fjall's marker file: present once a directory holds a database.
const FJALL_MARKER: &str = "version";

/// What the writer publishes; everything else waits on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Progress {
    /// Number of events written and visible (the next seq).
    pub written: u64,
    /// Number of events fsynced.
    pub durable: u64,
    /// Global chain link of the last written event.
    pub head_hash: Hash,
    /// A storage error stopped the writer's appends.
    pub poisoned: bool,
    /// The writer has stopped.
    pub closed: bool,
}

/// Where the chain ends when the writer starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tip {
    /// The next seq to assign.
    pub next_seq: u64,
    /// The last global link.
    pub global_hash: Hash,
    /// The last timestamp (timestamps never go back).
    pub timestamp_us: i64,
}

/// The open database and its keyspaces, shared by handles, the writer and
/// subscriptions.
pub(super) struct Store {
    pub db: Database,
    pub events: Keyspace,
    pub streams: Keyspace,
    pub blobs: Keyspace,
    pub path: PathBuf,
    pub store_id: uuid::Uuid,
    /// Published by the writer thread (which owns the sender).
    pub progress: watch::Receiver<Progress>,
}

// === impl Store ===

impl Store {
    /// Opens the store in `dir` (see `Log::open`).
    pub fn open(
        dir: &Path,
        opts: &LogOptions,
    ) -> Result<(Store, Tip, watch::Sender<Progress>), OpenError> {
        let create = opts.create;
        let path = dir.to_path_buf();
        let storage = |reason: String| OpenError::Storage {
            path: path.clone(),
            reason,
        };
        if !dir.join(FJALL_MARKER).exists() {
            if !create {
                return Err(OpenError::Missing(path));
            }
            create_store(dir, opts).map_err(&storage)?;
        }
        let Keyspaces {
            db,
            meta,
            events,
            streams,
            blobs,
        } = Keyspaces::open(dir, opts).map_err(&storage)?;

        let layout = meta
            .get(META_LAYOUT)
            .map_err(|e| storage(e.to_string()))?
            .map(|v| {
                <[u8; 4]>::try_from(&*v)
                    .map(u32::from_le_bytes)
                    .map_err(|_| storage(format!("layout record is {} bytes", v.len())))
            })
            .transpose()?;
        match layout {
            Some(found) if found > CURRENT_LAYOUT => {
                return Err(OpenError::NewerLayout {
                    path,
                    found,
                    supported: CURRENT_LAYOUT,
                });
            }
            Some(found) if found < CURRENT_LAYOUT => {
                let mut record = |layout: u32| {
                    meta.insert(META_LAYOUT, layout.to_le_bytes())
                        .and_then(|()| db.persist(PersistMode::SyncAll))
                        .map_err(|e| e.to_string())
                };
                migrations::run(&db, found, &mut record).map_err(|e| storage(e.to_string()))?;
            }
            Some(_) => {}
            None => {
                let empty = events.is_empty().map_err(|e| storage(e.to_string()))?;
                if !empty {
                    return Err(storage(
                        "events exist but the layout record is missing: the store is damaged"
                            .to_owned(),
                    ));
                }
                // Creation is atomic (see `create_store`), so this is a
                // store created by something else, or damaged.
                return Err(storage(
                    "the directory holds a database without an airut layout record".to_owned(),
                ));
            }
        }

        let store_id = meta
            .get(META_STORE_ID)
            .map_err(|e| storage(e.to_string()))?
            .and_then(|v| <[u8; 16]>::try_from(&*v).ok())
            .map(uuid::Uuid::from_bytes)
            .ok_or_else(|| storage("the store id record is missing or damaged".to_owned()))?;

        let tip = match events.last_key_value() {
            None => return Err(storage("the store has no genesis event".to_owned())),
            Some(guard) => {
                let (key, value) = guard.into_inner().map_err(|e| storage(e.to_string()))?;
                let seq = codec::parse_seq(&key)
                    .ok_or_else(|| storage(format!("malformed event key {key:?}")))?;
                let record = codec::decode_record(seq, &value).map_err(|e| {
                    storage(format!(
                        "the last event cannot be read ({e}); run `airut check`"
                    ))
                })?;
                Tip {
                    next_seq: seq.0.saturating_add(1),
                    global_hash: record.header.global_hash,
                    timestamp_us: record.header.timestamp_us,
                }
            }
        };

        let written = Progress {
            written: tip.next_seq,
            durable: tip.next_seq,
            head_hash: tip.global_hash,
            poisoned: false,
            closed: false,
        };
        let (progress_tx, progress) = watch::channel(written);
        let store = Store {
            db,
            events,
            streams,
            blobs,
            path,
            store_id,
            progress,
        };
        Ok((store, tip, progress_tx))
    }

    /// Reads one event.
    pub fn read(&self, seq: Seq) -> Result<Option<Record>, ReadError> {
        let value = self
            .events
            .get(codec::seq_key(seq))
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        value.map(|v| codec::decode_record(seq, &v)).transpose()
    }

    /// Events from `from` up to the written head, in order, through a fresh
    /// snapshot every [`SEGMENT`] events.
    pub fn iter_from(&self, from: Seq) -> RecordIter<'_> {
        RecordIter {
            store: self,
            iter: None,
            expected: from.0,
            segment_end: from.0,
            end: self.progress.borrow().written,
            done: false,
        }
    }

    /// A stream's events from `from_version` up to its version now,
    /// through a fresh snapshot every [`SEGMENT`] events.
    pub fn stream_iter(&self, stream: &StreamId, from_version: u64) -> StreamIter {
        let snapshot = self.db.snapshot();
        let expected = from_version.max(1);
        let start = codec::stream_key(stream, expected);
        let end = codec::stream_key(stream, u64::MAX);
        let index = snapshot.range(&self.streams, start..=end);
        StreamIter {
            db: self.db.clone(),
            snapshot,
            events: self.events.clone(),
            streams: self.streams.clone(),
            index: Some(index),
            stream: stream.clone(),
            expected,
            last: None,
            in_segment: 0,
            done: false,
        }
    }

    /// Current version of a stream (0 when it has none).
    pub fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError> {
        Ok(self.stream_head(stream)?.map_or(0, |(version, _)| version))
    }

    /// The last index entry of a stream: (version, seq).
    pub fn stream_head(&self, stream: &StreamId) -> Result<Option<(u64, Seq)>, ReadError> {
        let Some(guard) = self
            .streams
            .prefix(codec::stream_prefix(stream))
            .next_back()
        else {
            return Ok(None);
        };
        let (key, value) = guard
            .into_inner()
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        let version = codec::parse_stream_key_version(&key);
        let seq = codec::parse_seq(&value);
        match (version, seq) {
            (Some(version), Some(seq)) => Ok(Some((version, seq))),
            _ => Err(ReadError::Storage(format!(
                "malformed index entry for stream {stream}"
            ))),
        }
    }
}

/// The database and the log's keyspaces.
struct Keyspaces {
    db: Database,
    meta: Keyspace,
    events: Keyspace,
    streams: Keyspace,
    blobs: Keyspace,
}

impl Keyspaces {
    /// Opens (creating if needed) the database at `dir` and its keyspaces.
    fn open(dir: &Path, opts: &LogOptions) -> Result<Keyspaces, String> {
        let memtable = opts.memtable_bytes.max(1 << 20);
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .max_journaling_size(64 << 20)
            .cache_size(opts.cache_bytes)
            .worker_threads(opts.worker_threads.max(1))
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => "locked by another process (is airut running?)".to_owned(),
                e => e.to_string(),
            })?;
        let ks = |name: &str, opts: fn() -> KeyspaceCreateOptions| {
            db.keyspace(name, opts).map_err(|e| e.to_string())
        };
        Ok(Keyspaces {
            meta: ks("meta", KeyspaceCreateOptions::default)?,
            events: db
                .keyspace("events", || {
                    KeyspaceCreateOptions::default().max_memtable_size(memtable)
                })
                .map_err(|e| e.to_string())?,
            streams: db
                .keyspace("streams", || {
                    KeyspaceCreateOptions::default().max_memtable_size(memtable)
                })
                .map_err(|e| e.to_string())?,
            blobs: ks("blobs", || {
                KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
            })?,
            db,
        })
    }
}

/// Creates a store at `dir` atomically: built and fsynced (genesis
/// included) in a staging directory beside it, then renamed into place. A
/// crash part-way leaves only the staging directory, which the next attempt
/// removes; never a half-created database at `dir`.
fn create_store(dir: &Path, opts: &LogOptions) -> Result<(), String> {
    let name = dir
        .file_name()
        .ok_or_else(|| "the store path has no final component".to_owned())?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(
            "the directory is not empty and holds no store; refusing to create one there"
                .to_owned(),
        );
    }
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(".creating");
    let staging = parent.join(staging_name);
    if staging.exists() {
        // Left by an interrupted creation: it never held acknowledged events.
        std::fs::remove_dir_all(&staging).map_err(|e| e.to_string())?;
    }
    {
        let ks = Keyspaces::open(&staging, opts)?;
        write_genesis(&ks.db, &ks.events, &ks.streams, &ks.meta)?;
        ks.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| e.to_string())?;
        // Dropping the last handles closes the database and its lock.
    }
    // Replaces `dir` if it is an empty directory (as made by a caller).
    std::fs::rename(&staging, dir)
        .map_err(|e| format!("cannot move the new store into place: {e}"))?;
    std::fs::File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Appends the store-creation event (seq 0) and the meta records in one
/// fsynced batch.
fn write_genesis(
    db: &Database,
    events: &Keyspace,
    streams: &Keyspace,
    meta: &Keyspace,
) -> Result<(), String> {
    let store_id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let stream = StreamId::server();
    let event = Event::StoreCreated(StoreCreatedV1 {
        store_id,
        layout_version: CURRENT_LAYOUT,
        created_by: env!("CARGO_PKG_VERSION").to_owned(),
    });
    let encoded = encode_event(EncodeInput {
        event: &event,
        seq: Seq(0),
        stream: &stream,
        stream_version: 1,
        timestamp_us: now_us(),
        event_id: EventId::new(),
        causation: None,
        prev_stream: &chain::GENESIS,
        prev_global: &chain::GENESIS,
    })?;
    let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
    batch.insert(events, codec::seq_key(Seq(0)), encoded.value);
    batch.insert(
        streams,
        codec::stream_key(&stream, 1),
        codec::seq_key(Seq(0)).to_vec(),
    );
    batch.insert(meta, META_LAYOUT, CURRENT_LAYOUT.to_le_bytes().to_vec());
    batch.insert(meta, META_STORE_ID, store_id.as_bytes().to_vec());
    batch.commit().map_err(|e| e.to_string())?;
    tracing::info!(%store_id, layout = CURRENT_LAYOUT, "created a new event store");
    Ok(())
}

/// What [`encode_event`] needs.
pub(super) struct EncodeInput<'a> {
    pub event: &'a Event,
    pub seq: Seq,
    pub stream: &'a StreamId,
    pub stream_version: u64,
    pub timestamp_us: i64,
    pub event_id: EventId,
    pub causation: Option<EventId>,
    pub prev_stream: &'a Hash,
    pub prev_global: &'a Hash,
}

/// A record ready to store.
pub(super) struct Encoded {
    pub value: Vec<u8>,
}

/// Encodes an event as a stored record and links it into both chains (the
/// same two steps an append takes: [`codec::encode_unlinked`] in the
/// appending task, [`codec::link_record`] in the writer).
pub(super) fn encode_event(input: EncodeInput<'_>) -> Result<Encoded, String> {
    let mut value = encode_unplaced(input.event, input.stream, input.event_id, input.causation)?;
    codec::link_record(
        &mut value,
        input.seq,
        input.stream_version,
        input.timestamp_us,
        input.prev_stream,
        input.prev_global,
    )
    .map_err(|e| e.to_string())?;
    Ok(Encoded { value })
}

/// Encodes an event's record with its place in the log (seq, stream
/// version, timestamp, links) left to [`codec::link_record`].
pub(super) fn encode_unplaced(
    event: &Event,
    stream: &StreamId,
    event_id: EventId,
    causation: Option<EventId>,
) -> Result<Vec<u8>, String> {
    let payload = event.encode().map_err(|e| e.to_string())?;
    let ty = event.event_type();
    let payload_len = u32::try_from(payload.len()).map_err(|_| {
        format!(
            "{} payload of {} bytes is too large",
            ty.name(),
            payload.len()
        )
    })?;
    codec::encode_unlinked(
        &CoreFields {
            event_type: ty.code(),
            schema_version: ty.current_version(),
            seq: Seq(0),
            stream_version: 0,
            timestamp_us: 0,
            event_id,
            causation,
            payload_len,
            payload_hash: chain::payload_hash(&payload),
            stream,
        },
        &payload,
    )
    .map_err(|e| e.to_string())
}

/// Flushes the memtables of every keyspace of the database (the log's and
/// the projections') to tables, waiting for the flushes, so that the next
/// open replays no journal: fjall keeps a journal until every keyspace with
/// writes in it has flushed them, and replays what it keeps into memory on
/// open, so without this the memory of an open grew with the writes left
/// unflushed by the last run (hundreds of MiB after a bulk load). Only on a
/// clean close, and only once the journal has rotated (past 64 MB): a small
/// journal costs little to replay. Failures are logged (the data is safe in
/// the journal).
pub(super) fn flush_memtables(db: &Database) {
    if db.journal_count() <= 1 {
        return;
    }
    for name in db.list_keyspace_names() {
        let flushed = db
            .keyspace(&name, KeyspaceCreateOptions::default)
            .and_then(|ks| ks.rotate_memtable_and_wait());
        if let Err(error) = flushed {
            tracing::warn!(keyspace = %name, %error, "cannot flush a memtable on close; the next open replays its journal");
        }
    }
}

/// Wall-clock microseconds since the Unix epoch (0 before it).
pub(super) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

// === impl RecordIter ===

/// Events in seq order up to the head written at its creation; a hole is an
/// error naming the seq and ends it.
pub(super) struct RecordIter<'a> {
    store: &'a Store,
    /// The range over the current segment's snapshot.
    iter: Option<fjall::Iter>,
    expected: u64,
    /// End of the current segment (exclusive).
    segment_end: u64,
    end: u64,
    done: bool,
}

impl Iterator for RecordIter<'_> {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.expected >= self.end {
            return None;
        }
        if self.iter.is_none() || self.expected >= self.segment_end {
            // A fresh snapshot per segment: a long read pins nothing old.
            self.segment_end = self.end.min(self.expected.saturating_add(SEGMENT));
            self.iter = Some(self.store.db.snapshot().range(
                &self.store.events,
                codec::seq_key(Seq(self.expected))..codec::seq_key(Seq(self.segment_end)),
            ));
        }
        let expected = Seq(self.expected);
        let Some(guard) = self.iter.as_mut().and_then(Iterator::next) else {
            self.done = true;
            return Some(Err(ReadError::Corrupt {
                seq: expected,
                reason: "missing below the written head".to_owned(),
            }));
        };
        // A hole or a broken key leaves the position unknown: stop there.
        let (result, stop) = match guard.into_inner() {
            Err(e) => (Err(ReadError::Storage(e.to_string())), true),
            Ok((key, value)) => match codec::parse_seq(&key) {
                Some(seq) if seq == expected => (codec::decode_record(seq, &value), false),
                Some(seq) => (
                    Err(ReadError::Corrupt {
                        seq: expected,
                        reason: format!("missing (the next stored event is {seq})"),
                    }),
                    true,
                ),
                None => (
                    Err(ReadError::Corrupt {
                        seq: expected,
                        reason: format!("malformed key {key:?}"),
                    }),
                    true,
                ),
            },
        };
        self.done = stop;
        self.expected = self.expected.saturating_add(1);
        Some(result)
    }
}

// === impl StreamIter ===

/// A stream's events through its index, up to the version it had when the
/// iterator was made, through a fresh snapshot every [`SEGMENT`] events.
pub(super) struct StreamIter {
    db: Database,
    snapshot: fjall::Snapshot,
    events: Keyspace,
    streams: Keyspace,
    index: Option<fjall::Iter>,
    stream: StreamId,
    expected: u64,
    /// The last version to deliver: the stream's version in the first
    /// snapshot, looked up when a second one is needed.
    last: Option<u64>,
    /// Entries read through the current snapshot.
    in_segment: u64,
    done: bool,
}

impl StreamIter {
    /// A fresh snapshot and index range from the next expected version.
    fn refresh(&mut self) {
        let last = match self.last {
            Some(last) => last,
            None => {
                // From the first snapshot: later appends are not ours to read.
                let last = self
                    .snapshot
                    .prefix(&self.streams, codec::stream_prefix(&self.stream))
                    .next_back()
                    .and_then(|g| g.key().ok())
                    .and_then(|k| codec::parse_stream_key_version(&k))
                    .unwrap_or(u64::MAX);
                self.last = Some(last);
                last
            }
        };
        self.snapshot = self.db.snapshot();
        let start = codec::stream_key(&self.stream, self.expected);
        let end = codec::stream_key(&self.stream, last);
        self.index =
            (self.expected <= last).then(|| self.snapshot.range(&self.streams, start..=end));
        self.in_segment = 0;
    }
}

impl Iterator for StreamIter {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.in_segment >= SEGMENT {
            self.refresh();
        }
        self.in_segment += 1;
        let guard = self.index.as_mut()?.next()?;
        let result = self.read_entry(guard);
        if result.is_err() {
            self.done = true;
        }
        self.expected = self.expected.saturating_add(1);
        Some(result)
    }
}

impl StreamIter {
    fn read_entry(&self, guard: fjall::Guard) -> Result<Record, ReadError> {
        let storage = |e: fjall::Error| ReadError::Storage(e.to_string());
        let (key, value) = guard.into_inner().map_err(storage)?;
        let bad_index =
            |reason: String| ReadError::Storage(format!("stream {} index: {reason}", self.stream));
        let version = codec::parse_stream_key_version(&key)
            .ok_or_else(|| bad_index("malformed key".to_owned()))?;
        if version != self.expected {
            return Err(bad_index(format!(
                "version {} is missing (next is {version})",
                self.expected
            )));
        }
        let seq = codec::parse_seq(&value)
            .ok_or_else(|| bad_index(format!("malformed entry for version {version}")))?;
        let bytes = self
            .snapshot
            .get(&self.events, codec::seq_key(seq))
            .map_err(storage)?
            .ok_or_else(|| ReadError::Corrupt {
                seq,
                reason: format!(
                    "missing, but indexed as version {version} of stream {}",
                    self.stream
                ),
            })?;
        let record = codec::decode_record(seq, &bytes)?;
        if record.header.stream != self.stream || record.header.stream_version != version {
            return Err(ReadError::Corrupt {
                seq,
                reason: format!(
                    "is version {} of stream {}, but indexed as version {version} of {}",
                    record.header.stream_version, record.header.stream, self.stream
                ),
            });
        }
        Ok(record)
    }
}
