//! The writer thread: the only place that assigns sequence numbers and
//! writes events.
//!
//! One std thread runs a current-thread tokio runtime so it can wait on both
//! the request queue and the buffered-flush deadline. Each turn takes every
//! queued request (up to [`MAX_GROUP_EVENTS`]), checks expected versions
//! against its cache of stream heads, encodes and chains the events into one
//! fjall batch, commits it (to the OS), publishes the new head, and then, if
//! any request in the group is durable, fsyncs once for all of them (group
//! commit) before replying to those. Buffered requests are answered right
//! after the write; the flush timer fsyncs them within the flush interval.
//!
//! Must never: block on anything but fjall and its own queue, reply success
//! before the durability the request asked for holds, or keep writing after
//! a storage error (the log is poisoned until restart).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::store::{Progress, Store, Tip, encode_unplaced, now_us};
use super::{AppendError, Appended, ExpectedVersion, Hash, OpenError, StreamAppend, chain, codec};
use crate::events::{Durability, EventId, EventType, Seq, StreamId};

/// An append encoded by the appending task ([`prepare`]): every record is
/// complete except for its place in the log, which only the writer assigns.
pub(super) struct Prepared {
    streams: Vec<PreparedStream>,
    durability: Durability,
    events: usize,
}

/// One stream's part of a [`Prepared`] append.
struct PreparedStream {
    stream: StreamId,
    expected: ExpectedVersion,
    /// `streams` key prefix (stream id ‖ 0x00).
    index_prefix: Vec<u8>,
    /// (record without its place, event id), in order.
    events: Vec<(Vec<u8>, EventId)>,
}

/// Checks and encodes an append in the caller's task, off the writer
/// thread: payload encoding and hashing are most of an append's CPU, and
/// appending tasks run in parallel while the writer is one thread.
pub(super) fn prepare(batches: Vec<StreamAppend>) -> Result<Prepared, AppendError> {
    if batches.is_empty() {
        return Err(AppendError::Invalid("an append needs a stream".to_owned()));
    }
    let mut durability = Durability::Buffered;
    let mut count = 0;
    let mut streams = Vec::with_capacity(batches.len());
    for batch in batches {
        if batch.events.is_empty() {
            return Err(AppendError::Invalid(format!(
                "no events for stream {}",
                batch.stream
            )));
        }
        let mut events = Vec::with_capacity(batch.events.len());
        for new in &batch.events {
            let ty = new.event.event_type();
            if ty == EventType::StoreCreated {
                return Err(AppendError::Invalid(
                    "store.created is written only when a store is created".to_owned(),
                ));
            }
            durability = durability.max(ty.durability());
            let event_id = EventId::new();
            let value = encode_unplaced(&new.event, &batch.stream, event_id, new.causation)
                .map_err(AppendError::Invalid)?;
            events.push((value, event_id));
        }
        count += events.len();
        streams.push(PreparedStream {
            index_prefix: codec::stream_prefix(&batch.stream),
            stream: batch.stream,
            expected: batch.expected,
            events,
        });
    }
    Ok(Prepared {
        streams,
        durability,
        events: count,
    })
}

/// Upper bound on the events of one group (one fjall batch).
const MAX_GROUP_EVENTS: usize = 4096;
/// Requests that may wait in the queue before appenders wait for room.
const QUEUE_DEPTH: usize = 1024;
/// Stream heads kept in memory; the cache is emptied when it grows past this.
const MAX_CACHED_STREAMS: usize = 100_000;

/// Where the writer answers an append.
type AppendReply = oneshot::Sender<Result<Vec<Appended>, AppendError>>;

/// A message to the writer.
pub(super) enum Request {
    /// Append these streams' events atomically.
    Append {
        append: Prepared,
        reply: AppendReply,
    },
    /// fsync now if anything written is not yet durable.
    Flush,
    /// Finish queued work, fsync (SyncAll) and stop.
    Close {
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
}

/// Starts the writer thread.
pub(super) fn spawn(
    store: Arc<Store>,
    tip: Tip,
    progress: watch::Sender<Progress>,
    flush_interval: Duration,
) -> Result<(mpsc::Sender<Request>, std::thread::JoinHandle<()>), OpenError> {
    let failed = |e: std::io::Error| OpenError::Storage {
        path: store.path.clone(),
        reason: format!("cannot start the log writer: {e}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(failed)?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let writer = Writer {
        store: Arc::clone(&store),
        rx,
        progress,
        flush_interval,
        next_seq: tip.next_seq,
        global_hash: tip.global_hash,
        last_ts: tip.timestamp_us,
        heads: HashMap::new(),
        flush_deadline: None,
        poisoned: false,
    };
    let handle = std::thread::Builder::new()
        .name("airut-log-writer".to_owned())
        .spawn(move || runtime.block_on(writer.run()))
        .map_err(failed)?;
    Ok((tx, handle))
}

/// Version and last stream link of a stream.
#[derive(Debug, Clone, Copy)]
struct StreamHead {
    version: u64,
    hash: Hash,
}

/// One append request that passed its checks, waiting for the commit.
struct Staged {
    reply: AppendReply,
    appended: Vec<Appended>,
    durability: Durability,
}

/// A request's writes, built before anything touches the group's batch.
struct Stage {
    items: Vec<(Seq, Vec<u8>, Vec<u8>)>,
    heads: HashMap<StreamId, StreamHead>,
    appended: Vec<Appended>,
    durability: Durability,
    next_seq: u64,
    global_hash: Hash,
    last_ts: i64,
}

struct Writer {
    store: Arc<Store>,
    rx: mpsc::Receiver<Request>,
    progress: watch::Sender<Progress>,
    flush_interval: Duration,
    /// Chain state after the last staged request (equal to the committed
    /// state between groups).
    next_seq: u64,
    global_hash: Hash,
    last_ts: i64,
    heads: HashMap<StreamId, StreamHead>,
    /// When unsynced buffered writes must be fsynced.
    flush_deadline: Option<Instant>,
    poisoned: bool,
}

// === impl Request ===

impl Request {
    fn event_count(&self) -> usize {
        match self {
            Request::Append { append, .. } => append.events,
            Request::Flush | Request::Close { .. } => 0,
        }
    }
}

// === impl Writer ===

impl Writer {
    async fn run(mut self) {
        loop {
            let request = match self.flush_deadline {
                Some(deadline) => tokio::select! {
                    request = self.rx.recv() => request,
                    () = tokio::time::sleep_until(deadline) => {
                        self.persist(PersistMode::SyncData);
                        continue;
                    }
                },
                None => self.rx.recv().await,
            };
            // `None`: every handle is gone.
            let Some(first) = request else { break };
            let mut count = first.event_count();
            let mut group = vec![first];
            while count < MAX_GROUP_EVENTS {
                match self.rx.try_recv() {
                    Ok(request) => {
                        count += request.event_count();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            if let Some(reply) = self.process(group) {
                let result = self.shutdown();
                let _ = reply.send(result);
                return;
            }
        }
        let _ = self.shutdown();
    }

    /// Handles one group; returns the reply of a close request, if any.
    fn process(&mut self, group: Vec<Request>) -> Option<oneshot::Sender<Result<(), AppendError>>> {
        let mut appends = Vec::with_capacity(group.len());
        let mut flush = false;
        let mut close = None;
        for request in group {
            match request {
                Request::Append { reply, .. } if close.is_some() => {
                    let _ = reply.send(Err(AppendError::Closed));
                }
                Request::Append { append, reply } => appends.push((append, reply)),
                Request::Flush => flush = true,
                Request::Close { reply } if close.is_some() => {
                    let _ = reply.send(Ok(()));
                }
                Request::Close { reply } => close = Some(reply),
            }
        }
        self.write_group(appends);
        if flush && self.flush_deadline.is_some() {
            self.persist(PersistMode::SyncData);
        }
        close
    }

    /// Writes a group of appends as one batch and replies to each.
    fn write_group(&mut self, appends: Vec<(Prepared, AppendReply)>) {
        if self.poisoned {
            for (_, reply) in appends {
                let _ = reply.send(Err(AppendError::Poisoned));
            }
            return;
        }
        // Only between groups: the cache holds staged heads not yet on disk.
        if self.heads.len() > MAX_CACHED_STREAMS {
            self.heads.clear();
        }
        let events: usize = appends.iter().map(|(a, _)| a.events).sum();
        let mut batch = fjall::OwnedWriteBatch::with_capacity(self.store.db.clone(), 2 * events)
            .durability(Some(PersistMode::Buffer));
        let mut staged = Vec::with_capacity(appends.len());
        // One clock reading per group: timestamps never go back in seq.
        let now = now_us();
        for (append, reply) in appends {
            match self.stage(append, now) {
                Ok(stage) => {
                    for (seq, value, index_key) in stage.items {
                        batch.insert(&self.store.events, codec::seq_key(seq), value);
                        batch.insert(&self.store.streams, index_key, codec::seq_key(seq));
                    }
                    self.next_seq = stage.next_seq;
                    self.global_hash = stage.global_hash;
                    self.last_ts = stage.last_ts;
                    self.heads.extend(stage.heads);
                    staged.push(Staged {
                        reply,
                        appended: stage.appended,
                        durability: stage.durability,
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if staged.is_empty() {
            return;
        }
        if let Err(e) = batch.commit() {
            self.poison(&e);
            for s in staged {
                let _ = s.reply.send(Err(AppendError::Poisoned));
            }
            return;
        }
        let global_hash = self.global_hash;
        let written = self.next_seq;
        self.progress.send_modify(|p| {
            p.written = written;
            p.head_hash = global_hash;
        });

        let (durable, buffered): (Vec<_>, Vec<_>) = staged
            .into_iter()
            .partition(|s| s.durability == Durability::Durable);
        for s in buffered {
            let _ = s.reply.send(Ok(s.appended));
        }
        if self.flush_deadline.is_none() {
            self.flush_deadline = Some(Instant::now() + self.flush_interval);
        }
        if !durable.is_empty() {
            // One fsync for every durable request of the group.
            let synced = self.persist(PersistMode::SyncData);
            for s in durable {
                let result = if synced {
                    Ok(s.appended)
                } else {
                    Err(AppendError::Poisoned)
                };
                let _ = s.reply.send(result);
            }
        }
    }

    /// Checks one prepared request's expected versions and places its
    /// records (seq, stream version, timestamp, chain links) without
    /// touching the writer's state.
    fn stage(&mut self, append: Prepared, now: i64) -> Result<Stage, AppendError> {
        let mut stage = Stage {
            items: Vec::with_capacity(append.events),
            heads: HashMap::new(),
            appended: Vec::with_capacity(append.streams.len()),
            durability: append.durability,
            next_seq: self.next_seq,
            global_hash: self.global_hash,
            last_ts: self.last_ts.max(now),
        };
        for batch in append.streams {
            let mut head = match stage.heads.get(&batch.stream) {
                Some(head) => *head,
                None => self.stream_head(&batch.stream)?,
            };
            let ok = match batch.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => head.version == 0,
                ExpectedVersion::Exact(v) => head.version == v,
            };
            if !ok {
                return Err(AppendError::VersionConflict {
                    stream: batch.stream,
                    expected: batch.expected,
                    actual: head.version,
                });
            }
            let first = Seq(stage.next_seq);
            let mut ids = Vec::with_capacity(batch.events.len());
            for (mut value, event_id) in batch.events {
                let seq = Seq(stage.next_seq);
                let version = head.version + 1;
                let (stream_hash, global_hash) = codec::link_record(
                    &mut value,
                    seq,
                    version,
                    stage.last_ts,
                    &head.hash,
                    &stage.global_hash,
                )
                .map_err(|e| AppendError::Invalid(e.to_string()))?;
                head = StreamHead {
                    version,
                    hash: stream_hash,
                };
                stage.global_hash = global_hash;
                let mut index_key = Vec::with_capacity(batch.index_prefix.len() + 8);
                index_key.extend_from_slice(&batch.index_prefix);
                index_key.extend_from_slice(&version.to_be_bytes());
                stage.items.push((seq, value, index_key));
                ids.push(event_id);
                stage.next_seq += 1;
            }
            stage.heads.insert(batch.stream, head);
            stage.appended.push(Appended {
                first,
                last: Seq(stage.next_seq - 1),
                ids,
            });
        }
        Ok(stage)
    }

    /// A stream's head, from the cache or from disk.
    fn stream_head(&mut self, stream: &StreamId) -> Result<StreamHead, AppendError> {
        if let Some(head) = self.heads.get(stream) {
            return Ok(*head);
        }
        let head = match self.load_head(stream) {
            Ok(head) => head,
            Err(reason) => {
                // The chain cannot be continued from a head it cannot read.
                tracing::error!(%stream, %reason, "cannot read a stream head; refusing writes");
                self.poisoned = true;
                self.progress.send_modify(|p| p.poisoned = true);
                return Err(AppendError::Poisoned);
            }
        };
        self.heads.insert(stream.clone(), head);
        Ok(head)
    }

    fn load_head(&self, stream: &StreamId) -> Result<StreamHead, String> {
        let Some((version, seq)) = self.store.stream_head(stream).map_err(|e| e.to_string())?
        else {
            return Ok(StreamHead {
                version: 0,
                hash: chain::GENESIS,
            });
        };
        let record = self
            .store
            .read(seq)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("event {seq} (version {version} of {stream}) is missing"))?;
        if record.header.stream != *stream || record.header.stream_version != version {
            return Err(format!(
                "event {seq} is not version {version} of {stream}, as its index says"
            ));
        }
        Ok(StreamHead {
            version,
            hash: record.header.stream_hash,
        })
    }

    /// fsyncs the journal and publishes the durable head; false on failure
    /// (the log is then poisoned).
    fn persist(&mut self, mode: PersistMode) -> bool {
        if self.poisoned {
            return false;
        }
        match self.store.db.persist(mode) {
            Ok(()) => {
                self.flush_deadline = None;
                let written = self.next_seq;
                self.progress.send_if_modified(|p| {
                    let changed = p.durable != written;
                    p.durable = written;
                    changed
                });
                true
            }
            Err(e) => {
                self.poison(&e);
                false
            }
        }
    }

    fn poison(&mut self, error: &fjall::Error) {
        tracing::error!(%error, "the event log hit a storage error and refuses further writes; restart airut");
        self.poisoned = true;
        self.progress.send_modify(|p| p.poisoned = true);
    }

    /// Final fsync, then marks the log closed and fails whatever is queued.
    fn shutdown(&mut self) -> Result<(), AppendError> {
        let result = if !self.poisoned && self.persist(PersistMode::SyncAll) {
            Ok(())
        } else {
            Err(AppendError::Poisoned)
        };
        self.progress.send_modify(|p| p.closed = true);
        self.rx.close();
        while let Ok(request) = self.rx.try_recv() {
            match request {
                Request::Append { reply, .. } => {
                    let _ = reply.send(Err(AppendError::Closed));
                }
                Request::Close { reply } => {
                    let _ = reply.send(Ok(()));
                }
                Request::Flush => {}
            }
        }
        result
    }
}
