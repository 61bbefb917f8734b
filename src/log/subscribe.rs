//! Live tails: catch up from disk, then follow the writer's published head.
//!
//! A tail reads every event from disk by seq, in small batches on the
//! blocking pool, and never past the head the writer has published (the
//! published head is always committed). Catch-up and live delivery are the
//! same loop, so there is no seam to miss or repeat an event at.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use super::store::{Progress, Store};
use super::{ReadError, Record};
use crate::events::Seq;

/// Events read per trip to the blocking pool.
const READ_BATCH: u64 = 256;

pub(super) struct Tail {
    store: Arc<Store>,
    progress: watch::Receiver<Progress>,
    /// The next seq to read from disk.
    next_read: u64,
    /// The next seq to hand out.
    next_deliver: u64,
    buffer: VecDeque<Result<Record, ReadError>>,
    /// The writer is gone: end once caught up.
    writer_gone: bool,
}

// === impl Tail ===

impl Tail {
    pub fn new(store: Arc<Store>, from: Seq) -> Tail {
        let progress = store.progress.clone();
        Tail {
            store,
            progress,
            next_read: from.0,
            next_deliver: from.0,
            buffer: VecDeque::new(),
            writer_gone: false,
        }
    }

    pub fn position(&self) -> Seq {
        Seq(self.next_deliver)
    }

    pub async fn next(&mut self) -> Option<Result<Record, ReadError>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                self.next_deliver = self.next_deliver.saturating_add(1);
                return Some(item);
            }
            let p = *self.progress.borrow_and_update();
            if self.next_read < p.written {
                let end = p.written.min(self.next_read.saturating_add(READ_BATCH));
                self.fill(end).await;
                continue;
            }
            if self.writer_gone || p.closed || p.poisoned {
                // Nothing more will be written.
                return None;
            }
            if self.progress.changed().await.is_err() {
                // The sender is dropped; its last value is still readable.
                self.writer_gone = true;
            }
        }
    }

    /// Reads `[next_read, end)` into the buffer, one item per seq.
    async fn fill(&mut self, end: u64) {
        let store = Arc::clone(&self.store);
        let start = self.next_read;
        let read = tokio::task::spawn_blocking(move || read_range(&store, start, end)).await;
        match read {
            Ok(items) => self.buffer.extend(items),
            Err(e) => {
                let reason = format!("reader task failed: {e}");
                self.buffer.extend((start..end).map(|seq| {
                    Err(ReadError::Corrupt {
                        seq: Seq(seq),
                        reason: reason.clone(),
                    })
                }));
            }
        }
        self.next_read = end;
    }
}

/// Reads `[start, end)`; every seq in the range yields exactly one item (a
/// missing one is an error naming it), so positions stay exact.
fn read_range(store: &Store, start: u64, end: u64) -> Vec<Result<Record, ReadError>> {
    let mut out = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
    let mut iter = store.iter_from(Seq(start));
    let mut seq = start;
    while seq < end {
        let item = iter.next().unwrap_or_else(|| {
            Err(ReadError::Corrupt {
                seq: Seq(seq),
                reason: "missing below the written head".to_owned(),
            })
        });
        let failed = item.is_err();
        out.push(item);
        seq += 1;
        if failed {
            // The iterator may have stopped at a hole: go on by key.
            iter = store.iter_from(Seq(seq));
        }
    }
    out
}
