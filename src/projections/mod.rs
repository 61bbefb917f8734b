//! Read models folded from the log: [`conversations`] (sessions and thread
//! lookup for the gateway), [`board`] (tasks, repos, server info for the
//! dashboard and the queue) and [`audit`] (every proxied request and DNS
//! query).
//!
//! Each projection lives in its own fjall keyspaces (`proj_<name>_<what>`)
//! next to a meta record holding its schema version and checkpoint (the last
//! applied sequence). State and checkpoint are written in the same batch, so
//! after a crash they always agree; nothing is held in memory between
//! chunks, so memory stays flat however long the history. A stored version
//! different from the code's drops the projection and rebuilds it from the
//! log.
//!
//! [`Projections`] is the runner: it catches every projection up from its
//! checkpoint on open, follows the log live ([`Projections::spawn_follow`]),
//! rebuilds, and verifies that a rebuild equals the live state (`airut
//! projections rebuild [--verify]`). Events are applied in chunks through a
//! write-back cache; a sequence at or below a checkpoint is skipped, so
//! at-least-once delivery is harmless. Only the runner writes; readers (API,
//! dashboard, gateway, CLI) use [`Conversations`], [`Board`] and [`Audit`],
//! which read committed state and can ask how current it is
//! ([`Projections::applied_seq`], [`Projections::wait_for`]).

use std::sync::{Arc, Mutex, MutexGuard};

use fjall::{Database, Keyspace, Readable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventId, Seq};
use crate::log::{Header, Log, ReadError, Record};

pub mod audit;
pub mod board;
pub mod conversations;
mod store;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use audit::{Audit, AuditCursor, AuditEntry, AuditPage, AuditQuery, AuditRow, AuditRows};
pub use board::{
    Board, ChannelStatus, ConfigInfo, Order, Repo, RepoBoot, ServerInfo, ServerStart, ServerStop,
    StateCounts, StopRequest, Task, TaskFilter, TaskPage, TaskState, TodoItem, TodoProgress,
};
pub use conversations::{Activity, Conversation, Conversations, MessageRef};

use audit::AuditFold;
use board::BoardFold;
use conversations::ConversationsFold;
use store::{Meta, Namespace};

/// Events applied per batch during catch-up and rebuild. Bounds the write-back
/// cache (and so memory) while letting a burst of output lines for one task
/// cost one read-modify-write.
pub const CHUNK: usize = 4096;

/// Differences kept per projection in a [`VerifyReport`].
const MAX_REPORTED_DIFFERENCES: usize = 20;

/// The projections, in the order they are applied and reported.
const PROJECTIONS: [(&str, u32, &[&str]); 3] = [
    (
        conversations::NAME,
        conversations::VERSION,
        conversations::KEYSPACES,
    ),
    (board::NAME, board::VERSION, board::KEYSPACES),
    (audit::NAME, audit::VERSION, audit::KEYSPACES),
];

/// Why a projection could not be read or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// fjall failed (I/O, or the database is poisoned). Restart airut; if it
    /// persists, check the disk.
    #[error("projection storage ({context}): {source}")]
    Storage {
        /// What was being done.
        context: String,
        /// fjall's error.
        source: fjall::Error,
    },
    /// A stored value does not decode: the state is damaged or was written
    /// by a build whose shape differed without a version bump. Run `airut
    /// projections rebuild`.
    #[error("projection keyspace {keyspace}, key {key}: {reason}; run `airut projections rebuild`")]
    Corrupt {
        /// The keyspace.
        keyspace: String,
        /// The key, printable.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or decoding the log failed; the projections stay at their
    /// checkpoint. See the log error (an unknown event type means the store
    /// was written by a newer airut).
    #[error("reading the log: {0}")]
    Read(#[from] ReadError),
    /// The log skipped a sequence number (it guarantees it never does): the
    /// store is damaged. Run `airut check`.
    #[error("projection {projection} expected event {expected} next, got {found}")]
    Gap {
        /// The projection.
        projection: &'static str,
        /// The sequence it needed.
        expected: Seq,
        /// The sequence it got.
        found: Seq,
    },
    /// A blocking apply task panicked or was cancelled.
    #[error("projection task failed: {0}")]
    Task(String),
}

// === impl ProjectionError ===

impl ProjectionError {
    pub(crate) fn storage(context: impl Into<String>, source: fjall::Error) -> Self {
        ProjectionError::Storage {
            context: context.into(),
            source,
        }
    }
}

/// Where the runner reads events from: the log, or (in tests and tools) any
/// ordered, gapless sequence of headers and events starting at seq 0.
pub trait EventSource: Send + Sync {
    /// Events from `from` on, in sequence order, as far as they are written
    /// now.
    fn read_from(
        &self,
        from: Seq,
    ) -> Box<dyn Iterator<Item = Result<(Header, Event), ReadError>> + '_>;
}

impl EventSource for Log {
    fn read_from(
        &self,
        from: Seq,
    ) -> Box<dyn Iterator<Item = Result<(Header, Event), ReadError>> + '_> {
        Box::new(self.replay(from, decode_record))
    }
}

fn decode_record(record: Record) -> Result<(Header, Event), ReadError> {
    let event = record.decode()?;
    Ok((record.header, event))
}

/// One stored key of a projection: `(keyspace, key, value)`.
#[doc(hidden)]
pub type DumpEntry = (String, Vec<u8>, Vec<u8>);

/// The outcome of [`Projections::verify_rebuild`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The sequence both states were folded up to.
    pub seq: Option<Seq>,
    /// One entry per projection.
    pub projections: Vec<ProjectionVerify>,
}

/// How one projection's live state compared with a fresh rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionVerify {
    /// The projection.
    pub name: String,
    /// Keys present on either side.
    pub keys_compared: u64,
    /// Keys that differ (missing on one side or with another value).
    pub differences: u64,
    /// The first differences, in key order.
    pub first_differences: Vec<Difference>,
}

/// One key that differs between live and rebuilt state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The keyspace (`proj_…`).
    pub keyspace: String,
    /// The key, printable.
    pub key: String,
    /// The live value, lossily decoded and shortened; `None` when absent.
    pub live: Option<String>,
    /// The rebuilt value, likewise.
    pub rebuilt: Option<String>,
}

/// The outcome of `airut projections rebuild [--verify]`
/// ([`Projections::rebuild_command`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildReport {
    /// The sequence the rebuilt state reaches.
    pub seq: Option<Seq>,
    /// With `--verify`: how the state before the rebuild compared with it.
    pub verify: Option<VerifyReport>,
}

/// A projection's progress, for `airut projections status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// Its schema version.
    pub version: u32,
    /// Its checkpoint.
    pub checkpoint: Option<Seq>,
}

/// The projections runner and the read handles. Cheap to clone.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    source: Arc<dyn EventSource>,
    writer: Mutex<Writer>,
    verifying: Mutex<()>,
    applied: watch::Sender<Option<Seq>>,
    conversations: Conversations,
    board: Board,
    audit: Audit,
}

// === impl VerifyReport ===

impl VerifyReport {
    /// Whether the rebuild equals the live state everywhere.
    pub fn is_consistent(&self) -> bool {
        self.projections.iter().all(|p| p.differences == 0)
    }
}

// === impl RebuildReport ===

impl RebuildReport {
    /// Whether nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.verify.as_ref().is_none_or(VerifyReport::is_consistent)
    }
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => writeln!(f, "projections rebuilt up to event {seq}")?,
            None => writeln!(f, "projections rebuilt; the log is empty")?,
        }
        let Some(v) = &self.verify else {
            return Ok(());
        };
        for p in &v.projections {
            if p.differences == 0 {
                writeln!(
                    f,
                    "{}: {} keys, identical to the rebuild",
                    p.name, p.keys_compared
                )?;
                continue;
            }
            writeln!(
                f,
                "{}: {} of {} keys differed from the rebuild (now replaced); first:",
                p.name, p.differences, p.keys_compared
            )?;
            for d in &p.first_differences {
                writeln!(
                    f,
                    "  {} {}: live {} / rebuilt {}",
                    d.keyspace,
                    d.key,
                    d.live.as_deref().unwrap_or("(absent)"),
                    d.rebuilt.as_deref().unwrap_or("(absent)")
                )?;
            }
        }
        Ok(())
    }
}

// === impl Projections ===

impl Projections {
    /// Opens the projections in the log's store and catches every one up
    /// from its checkpoint (dropping and rebuilding any whose stored schema
    /// version differs from this build's). Blocking: call it from
    /// `spawn_blocking` or before the runtime gets busy.
    pub fn open(log: &Log) -> Result<Projections, ProjectionError> {
        Self::open_with(log.database().clone(), Arc::new(log.clone()))
    }

    /// [`Projections::open`] over any database and event source.
    pub fn open_with(
        db: Database,
        source: Arc<dyn EventSource>,
    ) -> Result<Projections, ProjectionError> {
        let writer = Writer::open(&db, Namespace::Live)?;
        let (applied, _) = watch::channel(writer.low_water());
        let p = Projections {
            inner: Arc::new(Inner {
                conversations: Conversations::open(&db)?,
                board: Board::open(&db)?,
                audit: Audit::open(&db)?,
                db,
                source,
                writer: Mutex::new(writer),
                verifying: Mutex::new(()),
                applied,
            }),
        };
        p.catch_up()?;
        Ok(p)
    }

    /// The conversations read model.
    pub fn conversations(&self) -> &Conversations {
        &self.inner.conversations
    }

    /// The board read model.
    pub fn board(&self) -> &Board {
        &self.inner.board
    }

    /// The network audit read model.
    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }

    /// The sequence of the `message.received` event with this id (messages
    /// live on their channel's stream, before their conversation exists).
    pub fn find_message(&self, id: EventId) -> Result<Option<Seq>, ProjectionError> {
        Ok(self.inner.conversations.message(id)?.map(|m| m.seq))
    }

    /// The latest config generation recorded (0 before the first).
    pub fn config_generation(&self) -> Result<u64, ProjectionError> {
        Ok(self
            .inner
            .board
            .server()?
            .config
            .map_or(0, |c| c.generation))
    }

    /// The last sequence every projection has applied and committed; `None`
    /// before the first event.
    pub fn applied_seq(&self) -> Option<Seq> {
        *self.inner.applied.borrow()
    }

    /// Waits until every projection has applied `seq` (wrap in
    /// `tokio::time::timeout` to bound the wait).
    pub async fn wait_for(&self, seq: Seq) {
        let mut rx = self.inner.applied.subscribe();
        // The sender lives in `inner`, which `self` keeps alive, so the
        // channel cannot close while we wait.
        let _ = rx.wait_for(|a| a.is_some_and(|a| a >= seq)).await;
    }

    /// Each projection's version and checkpoint, as committed.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let w = self.lock_writer();
        PROJECTIONS
            .iter()
            .zip(w.checkpoints)
            .map(|((name, version, _), checkpoint)| ProjectionStatus {
                name: (*name).to_owned(),
                version: *version,
                checkpoint,
            })
            .collect()
    }

    /// Applies every event written since the checkpoints. Blocking.
    /// Returns the applied sequence.
    pub fn catch_up(&self) -> Result<Option<Seq>, ProjectionError> {
        let mut w = self.lock_writer();
        self.catch_up_locked(&mut w, &*self.inner.source)
    }

    fn catch_up_locked(
        &self,
        w: &mut Writer,
        source: &dyn EventSource,
    ) -> Result<Option<Seq>, ProjectionError> {
        let from = w.low_water().map_or(Seq(0), Seq::next);
        let result = w.apply_all(source.read_from(from), None, |seq| {
            self.inner.applied.send_replace(seq);
        });
        self.inner.applied.send_replace(w.low_water());
        result?;
        Ok(w.low_water())
    }

    /// Applies events delivered from outside (the follower, tests). Events
    /// at or below a checkpoint are skipped; the rest must continue the
    /// sequence without a gap. Blocking.
    pub fn ingest(
        &self,
        events: impl IntoIterator<Item = (Header, Event)>,
    ) -> Result<Option<Seq>, ProjectionError> {
        let mut w = self.lock_writer();
        let result = w.apply_all(events.into_iter().map(Ok), None, |seq| {
            self.inner.applied.send_replace(seq);
        });
        self.inner.applied.send_replace(w.low_water());
        result?;
        Ok(w.low_water())
    }

    /// Drops every projection's state and folds the whole log again.
    /// Blocking; readers see the state grow back from empty.
    pub fn rebuild(&self) -> Result<Option<Seq>, ProjectionError> {
        self.rebuild_from(&*self.inner.source)
    }

    fn rebuild_from(&self, source: &dyn EventSource) -> Result<Option<Seq>, ProjectionError> {
        let mut w = self.lock_writer();
        for i in 0..PROJECTIONS.len() {
            w.reset(i)?;
        }
        self.inner.applied.send_replace(None);
        self.catch_up_locked(&mut w, source)
    }

    /// `airut projections rebuild [--verify]`: with `verify`, first compares
    /// the live state with a scratch rebuild (reporting what was wrong), then
    /// drops the live state and folds `log` again. Blocking.
    pub fn rebuild_command(
        &self,
        log: &Log,
        verify: bool,
    ) -> Result<RebuildReport, ProjectionError> {
        let verify = if verify {
            Some(self.verify_rebuild_from(log)?)
        } else {
            None
        };
        let seq = self.rebuild_from(log)?;
        Ok(RebuildReport { seq, verify })
    }

    /// Rebuilds into scratch keyspaces (`projtmp_…`) up to the live state's
    /// sequence and compares the two key by key, reporting the first
    /// differences of each projection. The live state keeps following while
    /// this runs (it is compared through a snapshot). Blocking.
    pub fn verify_rebuild(&self) -> Result<VerifyReport, ProjectionError> {
        self.verify_rebuild_from(&*self.inner.source)
    }

    fn verify_rebuild_from(
        &self,
        source: &dyn EventSource,
    ) -> Result<VerifyReport, ProjectionError> {
        let _one_at_a_time = self
            .inner
            .verifying
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (target, snapshot, live) = {
            let mut w = self.lock_writer();
            let target = self.catch_up_locked(&mut w, source)?;
            (target, self.inner.db.snapshot(), w.data_keyspaces())
        };
        let mut scratch = Writer::open(&self.inner.db, Namespace::Scratch)?;
        for i in 0..PROJECTIONS.len() {
            scratch.reset(i)?;
        }
        let result = (|| {
            if let Some(t) = target {
                scratch.apply_all(source.read_from(Seq(0)), Some(t), |_| {})?;
            }
            let rebuilt = scratch.data_keyspaces();
            let mut projections = Vec::new();
            for (i, (name, _, _)) in PROJECTIONS.iter().enumerate() {
                let mut report = ProjectionVerify {
                    name: (*name).to_owned(),
                    keys_compared: 0,
                    differences: 0,
                    first_differences: Vec::new(),
                };
                if scratch.checkpoints[i] != target {
                    return Err(ProjectionError::Task(format!(
                        "rebuild of {name} stopped at {:?}, expected {target:?}",
                        scratch.checkpoints[i]
                    )));
                }
                let pairs = live
                    .get(i)
                    .into_iter()
                    .flatten()
                    .zip(rebuilt.get(i).into_iter().flatten());
                for (l, r) in pairs {
                    compare_keyspace(&snapshot, l, r, &mut report)?;
                }
                projections.push(report);
            }
            Ok(VerifyReport {
                seq: target,
                projections,
            })
        })();
        drop(snapshot);
        scratch.delete(&self.inner.db)?;
        result
    }

    /// Follows the log live from the applied sequence until `shutdown` is
    /// cancelled or the log closes, applying events as they commit (those
    /// already available are taken together, up to [`CHUNK`]). The task ends
    /// with the error that stopped it, if any; the projections then stay at
    /// their checkpoint until restarted.
    pub fn spawn_follow(
        &self,
        log: &Log,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<(), ProjectionError>> {
        tokio::spawn(self.clone().follow(log.clone(), shutdown))
    }

    /// The future behind [`Projections::spawn_follow`], for callers that
    /// spawn on their own `TaskTracker`. Logs the error that stops it.
    pub async fn follow(
        self,
        log: Log,
        shutdown: CancellationToken,
    ) -> Result<(), ProjectionError> {
        let result = self.follow_inner(&log, shutdown).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "projections stopped following the log; restart airut or run `airut projections rebuild`");
        }
        result
    }

    async fn follow_inner(
        &self,
        log: &Log,
        shutdown: CancellationToken,
    ) -> Result<(), ProjectionError> {
        let from = self.applied_seq().map_or(Seq(0), Seq::next);
        let mut sub = log.subscribe(from);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = sub.next() => next,
            };
            let Some(first) = first else {
                return Ok(());
            };
            let mut chunk = vec![decode_record(first?)?];
            // Take what is already written without waiting for new commits.
            while chunk.len() < CHUNK {
                let last = chunk.last().map(|(h, _)| h.seq);
                if !matches!((log.head(), last), (Some(h), Some(l)) if h > l) {
                    break;
                }
                match sub.next().await {
                    Some(r) => chunk.push(decode_record(r?)?),
                    None => break,
                }
            }
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.ingest(chunk))
                .await
                .map_err(|e| ProjectionError::Task(e.to_string()))??;
        }
    }

    /// Every key and value of every projection's data keyspaces (meta
    /// aside), as `(keyspace, key, value)`. Holds everything in memory: for
    /// tests and debugging small stores only.
    #[doc(hidden)]
    pub fn dump(&self) -> Result<Vec<DumpEntry>, ProjectionError> {
        let keyspaces = self.lock_writer().data_keyspaces();
        let snap = self.inner.db.snapshot();
        let mut out = Vec::new();
        for ks in keyspaces.iter().flatten() {
            for g in snap.iter(ks) {
                let (k, v) = g
                    .into_inner()
                    .map_err(|e| ProjectionError::storage("dump projections", e))?;
                out.push((ks.name().to_string(), k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        match self.inner.writer.lock() {
            Ok(w) => w,
            Err(poisoned) => {
                // A panic mid-chunk may have left the caches half-applied:
                // forget them; committed state and checkpoints are intact.
                let mut w = poisoned.into_inner();
                w.discard();
                w
            }
        }
    }
}

/// Merge-joins one live keyspace (through `snap`) with its rebuilt twin.
fn compare_keyspace(
    snap: &fjall::Snapshot,
    live: &Keyspace,
    rebuilt: &Keyspace,
    report: &mut ProjectionVerify,
) -> Result<(), ProjectionError> {
    let read = |g: fjall::Guard| {
        g.into_inner()
            .map_err(|e| ProjectionError::storage("compare projections", e))
    };
    let mut l = snap.iter(live).map(read).peekable();
    let mut r = rebuilt.iter().map(read).peekable();
    loop {
        let (lk, rk) = match (l.peek(), r.peek()) {
            (None, None) => return Ok(()),
            (Some(Err(_)), _) => return l.next().map_or(Ok(()), |e| e.map(|_| ())),
            (_, Some(Err(_))) => return r.next().map_or(Ok(()), |e| e.map(|_| ())),
            (Some(Ok((lk, _))), Some(Ok((rk, _)))) => (Some(lk.clone()), Some(rk.clone())),
            (Some(Ok((lk, _))), None) => (Some(lk.clone()), None),
            (None, Some(Ok((rk, _)))) => (None, Some(rk.clone())),
        };
        report.keys_compared += 1;
        let take_live = match (&lk, &rk) {
            (Some(a), Some(b)) => a <= b,
            (Some(_), None) => true,
            _ => false,
        };
        let take_rebuilt = match (&lk, &rk) {
            (Some(a), Some(b)) => b <= a,
            (None, Some(_)) => true,
            _ => false,
        };
        let lv = if take_live {
            l.next().transpose()?
        } else {
            None
        };
        let rv = if take_rebuilt {
            r.next().transpose()?
        } else {
            None
        };
        let same = matches!((&lv, &rv), (Some((_, a)), Some((_, b))) if a == b);
        if !same {
            report.differences += 1;
            if report.first_differences.len() < MAX_REPORTED_DIFFERENCES {
                let key = lv.as_ref().or(rv.as_ref()).map(|(k, _)| k.clone());
                report.first_differences.push(Difference {
                    keyspace: live.name().to_string(),
                    key: key.map(|k| store::printable_key(&k)).unwrap_or_default(),
                    live: lv.map(|(_, v)| preview(&v)),
                    rebuilt: rv.map(|(_, v)| preview(&v)),
                });
            }
        }
    }
}

fn preview(v: &[u8]) -> String {
    const MAX: usize = 300;
    let s = String::from_utf8_lossy(v);
    if s.chars().count() > MAX {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    } else {
        s.into_owned()
    }
}

/// The write side of all three projections in one namespace: their folds,
/// meta keyspaces and checkpoints. One chunk = one atomic batch.
struct Writer {
    db: Database,
    ns: Namespace,
    conversations: ConversationsFold,
    board: BoardFold,
    audit: AuditFold,
    meta: [Keyspace; 3],
    /// Committed checkpoints, in [`PROJECTIONS`] order.
    checkpoints: [Option<Seq>; 3],
    /// Checkpoints including staged, uncommitted events.
    staged: [Option<Seq>; 3],
    /// Events staged since the last flush.
    pending: usize,
}

// === impl Writer ===

impl Writer {
    /// Opens the namespace's keyspaces and resets any projection whose meta
    /// is missing or of another version.
    fn open(db: &Database, ns: Namespace) -> Result<Self, ProjectionError> {
        let meta = [
            store::open_keyspace(db, ns, conversations::NAME, "meta")?,
            store::open_keyspace(db, ns, board::NAME, "meta")?,
            store::open_keyspace(db, ns, audit::NAME, "meta")?,
        ];
        let mut w = Writer {
            db: db.clone(),
            ns,
            conversations: ConversationsFold::open(db, ns)?,
            board: BoardFold::open(db, ns)?,
            audit: AuditFold::open(db, ns)?,
            meta,
            checkpoints: [None; 3],
            staged: [None; 3],
            pending: 0,
        };
        for (i, (name, version, _)) in PROJECTIONS.iter().enumerate() {
            match store::read_meta(&w.meta[i])? {
                Some(m) if m.version == *version => {
                    w.checkpoints[i] = m.checkpoint;
                    w.staged[i] = m.checkpoint;
                }
                found => {
                    if let Some(m) = found {
                        tracing::info!(
                            projection = name,
                            stored = m.version,
                            current = version,
                            "projection schema changed; rebuilding it from the log"
                        );
                    }
                    w.reset(i)?;
                }
            }
        }
        Ok(w)
    }

    /// The data keyspaces of each projection, in [`PROJECTIONS`] order.
    fn data_keyspaces(&self) -> [Vec<Keyspace>; 3] {
        [
            self.conversations.keyspaces(),
            self.board.keyspaces(),
            self.audit.keyspaces(),
        ]
    }

    /// Empties projection `i` and records it as empty at this version.
    ///
    /// The meta record goes first: a crash part-way leaves no meta, and a
    /// projection without meta is reset again on the next open.
    fn reset(&mut self, i: usize) -> Result<(), ProjectionError> {
        let (name, version, _) = PROJECTIONS[i];
        let meta = &self.meta[i];
        meta.remove(store::META_KEY)
            .map_err(|e| ProjectionError::storage(format!("reset {name}"), e))?;
        let data = self.data_keyspaces();
        for ks in data.get(i).into_iter().flatten() {
            ks.clear()
                .map_err(|e| ProjectionError::storage(format!("clear {}", ks.name()), e))?;
        }
        meta.insert(
            store::META_KEY,
            store::encode(&Meta {
                version,
                checkpoint: None,
            }),
        )
        .map_err(|e| ProjectionError::storage(format!("reset {name}"), e))?;
        self.discard();
        self.checkpoints[i] = None;
        self.staged[i] = None;
        Ok(())
    }

    /// The lowest committed checkpoint: every projection has applied it.
    fn low_water(&self) -> Option<Seq> {
        self.checkpoints.iter().copied().min().flatten()
    }

    /// Stages one event into every projection that has not applied it.
    fn stage(&mut self, header: &Header, event: &Event) -> Result<(), ProjectionError> {
        for (i, (name, _, _)) in PROJECTIONS.iter().enumerate() {
            let staged = self.staged[i];
            if staged.is_some_and(|s| header.seq <= s) {
                continue;
            }
            let expected = staged.map_or(Seq(0), Seq::next);
            if header.seq != expected {
                return Err(ProjectionError::Gap {
                    projection: name,
                    expected,
                    found: header.seq,
                });
            }
            match i {
                0 => self.conversations.stage(header, event)?,
                1 => self.board.stage(header, event)?,
                _ => self.audit.stage(header, event),
            }
            self.staged[i] = Some(header.seq);
        }
        self.pending += 1;
        Ok(())
    }

    /// Commits everything staged, with the new checkpoints, in one batch.
    fn flush(&mut self) -> Result<(), ProjectionError> {
        self.pending = 0;
        if self.staged == self.checkpoints {
            return Ok(());
        }
        let mut batch = self.db.batch();
        self.conversations.flush(&mut batch);
        self.board.flush(&mut batch);
        self.audit.flush(&mut batch);
        for (i, (_, version, _)) in PROJECTIONS.iter().enumerate() {
            if self.staged[i] != self.checkpoints[i] {
                let meta = Meta {
                    version: *version,
                    checkpoint: self.staged[i],
                };
                batch.insert(&self.meta[i], store::META_KEY, store::encode(&meta));
            }
        }
        match batch.commit() {
            Ok(()) => {
                self.checkpoints = self.staged;
                Ok(())
            }
            Err(e) => {
                self.staged = self.checkpoints;
                Err(ProjectionError::storage("commit projection chunk", e))
            }
        }
    }

    /// Forgets everything staged.
    fn discard(&mut self) {
        self.conversations.discard();
        self.board.discard();
        self.audit.discard();
        self.staged = self.checkpoints;
        self.pending = 0;
    }

    /// Applies `events` in chunks of [`CHUNK`], stopping after `until` when
    /// given; calls `on_flush` with the new low-water mark after each chunk.
    /// On error nothing of the failing chunk is kept.
    fn apply_all(
        &mut self,
        events: impl Iterator<Item = Result<(Header, Event), ReadError>>,
        until: Option<Seq>,
        mut on_flush: impl FnMut(Option<Seq>),
    ) -> Result<(), ProjectionError> {
        let result = (|| {
            for item in events {
                let (header, event) = item?;
                if until.is_some_and(|u| header.seq > u) {
                    break;
                }
                self.stage(&header, &event)?;
                if self.pending >= CHUNK {
                    self.flush()?;
                    on_flush(self.low_water());
                }
            }
            self.flush()?;
            on_flush(self.low_water());
            Ok(())
        })();
        if result.is_err() {
            self.discard();
        }
        result
    }

    /// Deletes this namespace's keyspaces (scratch space after a verify).
    fn delete(self, db: &Database) -> Result<(), ProjectionError> {
        debug_assert_eq!(self.ns, Namespace::Scratch, "never delete live projections");
        let data = self.data_keyspaces();
        for ks in data.into_iter().flatten().chain(self.meta) {
            let name = ks.name().to_string();
            db.delete_keyspace(ks)
                .map_err(|e| ProjectionError::storage(format!("delete {name}"), e))?;
        }
        Ok(())
    }
}
