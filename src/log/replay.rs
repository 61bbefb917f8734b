//! Parallel segmented replay: read, validate and map a long run of events on
//! worker threads, delivered in sequence order.
//!
//! The run (from a seq to the head written when the replay starts) is cut
//! into segments of [`SEGMENT`] events. Worker threads take segments in
//! order, each read through a fresh fjall snapshot (a snapshot held for a
//! whole long read pins every memtable written meanwhile, so memory would
//! grow with the log), decode every record and apply the caller's `map`. The
//! iterator hands results out in seq order and keeps at most [`AHEAD`]
//! segments per worker in flight, so memory is bounded by a few segments
//! whatever the length of the log.
//!
//! Same contract as `Log::iter_from`: one item per seq; a hole or a storage
//! error is an error naming the seq and ends the replay; a record that does
//! not decode (or that `map` rejects) is an error and the replay goes on.
//! Dropping the iterator stops the workers after their current segment.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use super::store::Store;
use super::{ReadError, Record, codec};
use crate::events::Seq;

/// Events per segment (one snapshot, one unit of work).
pub const SEGMENT: u64 = 8192;
/// Segments in flight per worker.
const AHEAD: usize = 2;
/// Most worker threads a replay starts.
const MAX_WORKERS: usize = 4;

/// The mapped events of one segment, and whether the replay ends with it.
struct Done<T> {
    items: Vec<Result<T, ReadError>>,
    last: bool,
}

/// One segment to read: `[start, end)`, answered on `reply`.
struct Job<T> {
    start: u64,
    end: u64,
    reply: SyncSender<Done<T>>,
}

/// The iterator of [`Log::replay`](super::Log::replay).
pub struct Replay<T> {
    jobs: Option<SyncSender<Job<T>>>,
    pending: VecDeque<Receiver<Done<T>>>,
    current: std::vec::IntoIter<Result<T, ReadError>>,
    /// Next segment start to hand out.
    next_start: u64,
    end: u64,
    ended: bool,
}

/// Starts a replay of `[from, end)`.
pub(super) fn start<T, F>(store: Arc<Store>, from: Seq, end: u64, map: F) -> Replay<T>
where
    T: Send + 'static,
    F: Fn(Record) -> Result<T, ReadError> + Send + Sync + 'static,
{
    let mut replay = Replay {
        jobs: None,
        pending: VecDeque::new(),
        current: Vec::new().into_iter(),
        next_start: from.0,
        end,
        ended: from.0 >= end,
    };
    if replay.ended {
        return replay;
    }
    let segments = (end - from.0).div_ceil(SEGMENT);
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_WORKERS)
        .min(usize::try_from(segments).unwrap_or(usize::MAX));
    let (jobs, queue) = sync_channel::<Job<T>>(workers * AHEAD);
    let queue = Arc::new(Mutex::new(queue));
    let map = Arc::new(map);
    for n in 0..workers {
        let queue = Arc::clone(&queue);
        let store = Arc::clone(&store);
        let map = Arc::clone(&map);
        let spawned = std::thread::Builder::new()
            .name(format!("airut-replay-{n}"))
            .spawn(move || work(&store, &queue, &*map));
        if let Err(e) = spawned {
            if n == 0 {
                // Not one worker: report it as the first item.
                replay.current = vec![Err(ReadError::Storage(format!(
                    "cannot start a replay thread: {e}"
                )))]
                .into_iter();
                replay.ended = true;
                return replay;
            }
            break;
        }
    }
    replay.jobs = Some(jobs);
    for _ in 0..workers * AHEAD {
        replay.submit();
    }
    replay
}

/// A worker: reads segments until the job queue closes.
fn work<T, F>(store: &Store, queue: &Mutex<Receiver<Job<T>>>, map: &F)
where
    F: Fn(Record) -> Result<T, ReadError>,
{
    loop {
        let job = {
            let Ok(queue) = queue.lock() else { return };
            queue.recv()
        };
        let Ok(job) = job else { return };
        let done = read_segment(store, job.start, job.end, map);
        if job.reply.send(done).is_err() {
            // The replay was dropped.
            return;
        }
    }
}

/// Reads `[start, end)` through a fresh snapshot: one item per seq until a
/// hole or storage error, which ends the replay.
fn read_segment<T>(
    store: &Store,
    start: u64,
    end: u64,
    map: &impl Fn(Record) -> Result<T, ReadError>,
) -> Done<T> {
    let capacity = usize::try_from(end - start).unwrap_or(0);
    let mut items = Vec::with_capacity(capacity);
    let snapshot = store.db.snapshot();
    let range = fjall::Readable::range(
        &snapshot,
        &store.events,
        codec::seq_key(Seq(start))..codec::seq_key(Seq(end)),
    );
    let mut expected = start;
    for guard in range {
        let at = Seq(expected);
        let (key, value) = match guard.into_inner() {
            Ok(kv) => kv,
            Err(e) => {
                items.push(Err(ReadError::Storage(e.to_string())));
                return Done { items, last: true };
            }
        };
        match codec::parse_seq(&key) {
            Some(seq) if seq == at => {}
            Some(seq) => {
                items.push(Err(ReadError::Corrupt {
                    seq: at,
                    reason: format!("missing (the next stored event is {seq})"),
                }));
                return Done { items, last: true };
            }
            None => {
                items.push(Err(ReadError::Corrupt {
                    seq: at,
                    reason: format!("malformed key {key:?}"),
                }));
                return Done { items, last: true };
            }
        }
        items.push(codec::decode_record(at, &value).and_then(map));
        expected += 1;
    }
    if expected < end {
        items.push(Err(ReadError::Corrupt {
            seq: Seq(expected),
            reason: "missing below the written head".to_owned(),
        }));
        return Done { items, last: true };
    }
    Done { items, last: false }
}

// === impl Replay ===

impl<T> Replay<T> {
    /// Queues the next segment, if any is left.
    fn submit(&mut self) {
        let Some(jobs) = &self.jobs else { return };
        if self.next_start >= self.end {
            return;
        }
        let start = self.next_start;
        let end = self.end.min(start.saturating_add(SEGMENT));
        let (reply, rx) = sync_channel(1);
        if jobs.send(Job { start, end, reply }).is_ok() {
            self.pending.push_back(rx);
            self.next_start = end;
        }
    }
}

impl<T> Iterator for Replay<T> {
    type Item = Result<T, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            let Some(rx) = self.pending.pop_front() else {
                self.ended = true;
                return None;
            };
            match rx.recv() {
                Ok(done) => {
                    self.current = done.items.into_iter();
                    if done.last {
                        self.end_now();
                    } else {
                        self.submit();
                    }
                }
                Err(_) => {
                    // A worker died (panicked in `map`) with this segment.
                    self.end_now();
                    return Some(Err(ReadError::Storage(
                        "a replay thread stopped unexpectedly".to_owned(),
                    )));
                }
            }
        }
    }
}

impl<T> Replay<T> {
    fn end_now(&mut self) {
        self.ended = true;
        self.jobs = None;
        self.pending.clear();
    }
}
