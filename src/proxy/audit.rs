//! One audit event per request (`network.request`) and per DNS query the
//! relay reported (`network.dns_query`), appended off the request path.
//!
//! The request path only pushes onto an unbounded channel (no await, no
//! lock shared with the log); one writer task drains whatever has piled up
//! and appends it as one atomic batch (group commit, `Buffered`: fsynced
//! by the log within its flush interval). Under load the batches grow
//! instead of the requests waiting. The writer ends when the last sink is
//! dropped, after appending what it holds.

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::events::{Event, StreamId};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// Most events appended in one batch.
const MAX_BATCH: usize = 2048;

/// Where the proxy records its facts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<(StreamId, Event)>,
}

// === impl AuditSink ===

impl AuditSink {
    /// Starts the writer task on `log`. The handle finishes once every
    /// sink clone is dropped and the last batch is appended.
    pub fn spawn(log: Log) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(write_loop(log, rx));
        (AuditSink { tx }, handle)
    }

    /// Queues one event for `stream`. Never waits.
    pub fn record(&self, stream: &StreamId, event: Event) {
        if self.tx.send((stream.clone(), event)).is_err() {
            tracing::error!(stream = %stream, "audit writer is gone; a network event was not recorded");
        }
    }
}

async fn write_loop(log: Log, mut rx: mpsc::UnboundedReceiver<(StreamId, Event)>) {
    let mut buf = Vec::with_capacity(64);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let n = buf.len();
        let mut index: HashMap<StreamId, usize> = HashMap::new();
        let mut batches: Vec<StreamAppend> = Vec::new();
        for (stream, event) in buf.drain(..) {
            let i = *index.entry(stream.clone()).or_insert_with(|| {
                batches.push(StreamAppend {
                    stream,
                    expected: ExpectedVersion::Any,
                    events: Vec::new(),
                });
                batches.len() - 1
            });
            if let Some(b) = batches.get_mut(i) {
                b.events.push(NewEvent {
                    event,
                    causation: None,
                });
            }
        }
        if let Err(e) = log.append_all(batches).await {
            tracing::error!(error = %e, events = n, "cannot append network audit events");
        }
    }
}
