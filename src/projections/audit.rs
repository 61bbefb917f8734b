//! The network audit projection: one row per proxied request and per DNS
//! query the relay reported, indexed so that every question an operator asks
//! ("what did this conversation / task reach", "everything since Monday") is
//! a constant-memory range scan.
//!
//! Keyspaces: `proj_audit_rows` (timestamp_us ‖ seq, both big-endian with the
//! timestamp's sign bit flipped → the event's payload in rkyv, see
//! `encode_row`; so the time index *is* the primary order), `proj_audit_index` (`c` ‖ conversation ‖ seq and
//! `t` ‖ task ‖ seq → the row key), and `proj_audit_meta`.
//!
//! Rows are written once and never changed, so the fold needs no reads.
//! Queries return iterators over one fjall snapshot, for `airut audit
//! export` to stream millions of rows, and a page for the UI. Read through
//! [`Audit`].

#![deny(clippy::indexing_slicing)]

use fjall::{Database, Keyspace, Readable, Snapshot};
use serde::{Deserialize, Serialize};

use crate::events::{
    ConversationId, CredentialAnnotation, Decision, DnsQueryV1, Event, ProxyRequestV1, Seq, TaskId,
};
use crate::log::Header;

use super::ProjectionError;
use super::store::{self, Namespace};

/// The projection's name (keyspace prefix `proj_audit_`).
pub(crate) const NAME: &str = "audit";
/// Bump when the stored shape or the fold changes: the state is rebuilt.
pub(crate) const VERSION: u32 = 1;
/// Data keyspaces (the meta keyspace aside).
pub(crate) const KEYSPACES: &[&str] = &["rows", "index"];

/// One audited network action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Global sequence of the event.
    pub seq: Seq,
    /// Its append time, microseconds since the Unix epoch.
    pub timestamp_us: i64,
    /// The conversation whose stream it is on.
    pub conversation: Option<ConversationId>,
    /// The task whose socket it came in on.
    pub task: TaskId,
    /// What happened.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// A request or a DNS query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEntry {
    /// A request through the proxy.
    Request {
        /// HTTP method.
        method: String,
        /// `http` or `https`.
        scheme: String,
        /// Host as requested.
        host: String,
        /// Port as claimed by the relay.
        port: u16,
        /// Path and query.
        path: String,
        /// The decision.
        decision: Decision,
        /// The allowlist rule that matched.
        rule: Option<String>,
        /// Why it was blocked or failed.
        reason: Option<String>,
        /// Status sent to the client.
        status: Option<u16>,
        /// Request body bytes.
        bytes_in: u64,
        /// Response body bytes.
        bytes_out: u64,
        /// Time from request to end of response.
        duration_us: u64,
        /// Credential actions (names and counts only).
        credentials: Vec<CredentialAnnotation>,
        /// The upstream URL when an override redirected the host.
        upstream_override: Option<String>,
        /// Other annotations (`key: value`), in the order applied.
        notes: Vec<String>,
    },
    /// A DNS query the relay answered.
    Dns {
        /// The name.
        name: String,
        /// The query type (1 = A, 28 = AAAA, ...).
        qtype: u16,
        /// What the relay answered.
        answer: String,
    },
}

/// Which rows a query wants. All set fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this conversation's rows.
    pub conversation: Option<ConversationId>,
    /// Only this task's rows.
    pub task: Option<TaskId>,
    /// Only rows at or after this time (microseconds since the epoch).
    pub since_us: Option<i64>,
}

/// Where a page ended: the last row's time and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCursor {
    /// The last row's timestamp.
    pub timestamp_us: i64,
    /// The last row's sequence.
    pub seq: Seq,
}

/// One page of rows, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditPage {
    /// The rows.
    pub rows: Vec<AuditRow>,
    /// Where the next (older) page starts, when more may follow.
    pub next: Option<AuditCursor>,
}

/// Tag of a stored request row (see [`encode_row`]).
const TAG_REQUEST: u8 = 1;
/// Tag of a stored DNS row.
const TAG_DNS: u8 = 2;

// === impl AuditRow ===

impl AuditRow {
    /// The row an event makes, if it is a network event. Pure.
    pub fn from_event(header: &Header, event: &Event) -> Option<AuditRow> {
        let (task, entry) = match event {
            Event::ProxyRequest(e) => (e.task, request_entry(e.clone())),
            Event::DnsQuery(e) => (e.task, dns_entry(e.clone())),
            _ => return None,
        };
        Some(AuditRow {
            seq: header.seq,
            timestamp_us: header.timestamp_us,
            conversation: header.stream.conversation(),
            task,
            entry,
        })
    }
}

fn request_entry(e: ProxyRequestV1) -> AuditEntry {
    AuditEntry::Request {
        method: e.method,
        scheme: e.scheme,
        host: e.host,
        port: e.port,
        path: e.path,
        decision: e.decision,
        rule: e.rule,
        reason: e.reason,
        status: e.status,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        duration_us: e.duration_us,
        credentials: e.credentials,
        upstream_override: e.upstream_override,
        notes: e.notes,
    }
}

fn dns_entry(e: DnsQueryV1) -> AuditEntry {
    AuditEntry::Dns {
        name: e.name,
        qtype: e.qtype,
        answer: e.answer,
    }
}

/// The stored value of a row: a tag byte, the conversation (a presence byte
/// and 4 bytes), then the event's own rkyv payload. Sequence and timestamp
/// are the key.
///
/// Audit rows are most of the projections' bytes (about half of all events
/// are network events). Encoding them as JSON cost more than the rest of a
/// rebuild together; re-encoding the frozen payload with rkyv needs no
/// copies of its strings and is half the size. When the payload moves to a
/// new version, this projection's `VERSION` is bumped and it is rebuilt.
fn encode_row(header: &Header, event: &Event) -> Option<(TaskId, Vec<u8>)> {
    let conversation = header.stream.conversation();
    let (tag, task, payload) = match event {
        Event::ProxyRequest(e) => (
            TAG_REQUEST,
            e.task,
            rkyv::to_bytes::<rkyv::rancor::Error>(e),
        ),
        Event::DnsQuery(e) => (TAG_DNS, e.task, rkyv::to_bytes::<rkyv::rancor::Error>(e)),
        _ => return None,
    };
    // Encoding our own frozen structs into a growable arena cannot fail.
    let payload = payload.expect("network payloads encode with rkyv");
    let mut value = Vec::with_capacity(6 + payload.len());
    value.push(tag);
    value.push(u8::from(conversation.is_some()));
    value.extend_from_slice(&conversation.map_or(0, |c| c.0).to_be_bytes());
    value.extend_from_slice(&payload);
    Some((task, value))
}

/// Decodes a stored row (validated, never trusted) with its key.
fn decode_row(ks: &Keyspace, key: &[u8], value: &[u8]) -> Result<AuditRow, ProjectionError> {
    let corrupt = |reason: String| ProjectionError::Corrupt {
        keyspace: ks.name().to_string(),
        key: store::printable_key(key),
        reason,
    };
    let (Some(ts), Some(seq)) = (store::array8(key, 0), store::array8(key, 8)) else {
        return Err(corrupt("row key is not 16 bytes".into()));
    };
    let (Some(&tag), Some(&has_conv), Some(conv), Some(payload)) =
        (value.first(), value.get(1), value.get(2..6), value.get(6..))
    else {
        return Err(corrupt("row value is too short".into()));
    };
    let conversation = match (has_conv, <[u8; 4]>::try_from(conv)) {
        (0, _) => None,
        (_, Ok(c)) => Some(ConversationId(u32::from_be_bytes(c))),
        (_, Err(_)) => return Err(corrupt("bad conversation".into())),
    };
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let (task, entry) = match tag {
        TAG_REQUEST => rkyv::from_bytes::<ProxyRequestV1, rkyv::rancor::Error>(&aligned)
            .map(|e| (e.task, request_entry(e))),
        TAG_DNS => rkyv::from_bytes::<DnsQueryV1, rkyv::rancor::Error>(&aligned)
            .map(|e| (e.task, dns_entry(e))),
        other => return Err(corrupt(format!("unknown row tag {other}"))),
    }
    .map_err(|e| corrupt(e.to_string()))?;
    Ok(AuditRow {
        seq: Seq(u64::from_be_bytes(seq)),
        timestamp_us: store::ts_from_bytes(ts),
        conversation,
        task,
        entry,
    })
}

fn row_key(ts: i64, seq: Seq) -> [u8; 16] {
    let mut k = [0u8; 16];
    let (a, b) = k.split_at_mut(8);
    a.copy_from_slice(&store::ts_bytes(ts));
    b.copy_from_slice(&store::seq_bytes(seq));
    k
}

fn conv_prefix(c: ConversationId) -> Vec<u8> {
    let mut k = vec![b'c'];
    k.extend_from_slice(&c.0.to_be_bytes());
    k
}

fn task_prefix(t: TaskId) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(t.0.as_bytes());
    k
}

fn with_seq(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The audit projection's write side. Rows are only ever added, so a chunk
/// is encoded as it is staged and goes straight into the batch.
pub(crate) struct AuditFold {
    rows: Keyspace,
    index: Keyspace,
    pending: Vec<PendingRow>,
}

struct PendingRow {
    seq: Seq,
    key: [u8; 16],
    conversation: Option<ConversationId>,
    task: TaskId,
    value: Vec<u8>,
}

// === impl AuditFold ===

impl AuditFold {
    /// Opens the data keyspaces in `ns`.
    pub(crate) fn open(db: &Database, ns: Namespace) -> Result<Self, ProjectionError> {
        Ok(AuditFold {
            rows: store::open_keyspace(db, ns, NAME, "rows")?,
            index: store::open_keyspace(db, ns, NAME, "index")?,
            pending: Vec::new(),
        })
    }

    /// The data keyspaces, in [`KEYSPACES`] order.
    pub(crate) fn keyspaces(&self) -> Vec<Keyspace> {
        vec![self.rows.clone(), self.index.clone()]
    }

    /// Takes one event.
    pub(crate) fn stage(&mut self, header: &Header, event: &Event) {
        if let Some((task, value)) = encode_row(header, event) {
            self.pending.push(PendingRow {
                seq: header.seq,
                key: row_key(header.timestamp_us, header.seq),
                conversation: header.stream.conversation(),
                task,
                value,
            });
        }
    }

    /// Moves the chunk's rows into `batch`.
    pub(crate) fn flush(&mut self, batch: &mut fjall::OwnedWriteBatch) {
        for row in self.pending.drain(..) {
            if let Some(c) = row.conversation {
                batch.insert(
                    &self.index,
                    with_seq(&conv_prefix(c), row.seq.0),
                    row.key.to_vec(),
                );
            }
            batch.insert(
                &self.index,
                with_seq(&task_prefix(row.task), row.seq.0),
                row.key.to_vec(),
            );
            batch.insert(&self.rows, row.key.to_vec(), row.value);
        }
    }

    /// Drops the chunk's rows (after an error).
    pub(crate) fn discard(&mut self) {
        self.pending.clear();
    }
}

/// Read side of the audit projection. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    db: Database,
    rows: Keyspace,
    index: Keyspace,
}

/// A stream of rows from one snapshot, oldest or newest first.
pub struct AuditRows {
    inner: Box<dyn Iterator<Item = Result<AuditRow, ProjectionError>> + Send>,
}

impl Iterator for AuditRows {
    type Item = Result<AuditRow, ProjectionError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

// === impl Audit ===

impl Audit {
    pub(crate) fn open(db: &Database) -> Result<Self, ProjectionError> {
        Ok(Audit {
            db: db.clone(),
            rows: store::open_keyspace(db, Namespace::Live, NAME, "rows")?,
            index: store::open_keyspace(db, Namespace::Live, NAME, "index")?,
        })
    }

    /// Every row matching `q`, oldest first, streamed from one snapshot in
    /// constant memory (the snapshot pins old data until the iterator drops).
    pub fn iter(&self, q: &AuditQuery) -> AuditRows {
        self.scan(q, None, false)
    }

    /// Every row matching `q`, newest first, starting before `before`,
    /// streamed from one snapshot (the dashboard's filtered network view).
    pub fn iter_newest(&self, q: &AuditQuery, before: Option<AuditCursor>) -> AuditRows {
        self.scan(q, before, true)
    }

    /// One page of rows matching `q`, newest first, starting before
    /// `before` (the `next` of a previous page).
    pub fn page(
        &self,
        q: &AuditQuery,
        before: Option<AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, ProjectionError> {
        let mut rows = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for row in self.scan(q, before, true) {
            if rows.len() == limit {
                more = true;
                break;
            }
            rows.push(row?);
        }
        let next = if more {
            rows.last().map(|r| AuditCursor {
                timestamp_us: r.timestamp_us,
                seq: r.seq,
            })
        } else {
            None
        };
        Ok(AuditPage { rows, next })
    }

    /// The scan behind [`Audit::iter`] and [`Audit::page`]: over the
    /// conversation or task index when one is asked for, else over the rows
    /// in time order.
    fn scan(&self, q: &AuditQuery, before: Option<AuditCursor>, reverse: bool) -> AuditRows {
        let snap = self.db.snapshot();
        let since = q.since_us;
        let index_prefix = match (q.task, q.conversation) {
            (Some(t), _) => Some(task_prefix(t)),
            (None, Some(c)) => Some(conv_prefix(c)),
            (None, None) => None,
        };
        let Some(prefix) = index_prefix else {
            let lo = row_key(since.unwrap_or(i64::MIN), Seq(0));
            let inner: Box<dyn Iterator<Item = fjall::Guard> + Send> = match before {
                Some(c) => {
                    let hi = row_key(c.timestamp_us, c.seq);
                    let r = snap.range(&self.rows, lo.to_vec()..hi.to_vec());
                    if reverse {
                        Box::new(r.rev())
                    } else {
                        Box::new(r)
                    }
                }
                None => {
                    let r = snap.range(&self.rows, lo.to_vec()..);
                    if reverse {
                        Box::new(r.rev())
                    } else {
                        Box::new(r)
                    }
                }
            };
            let rows = self.rows.clone();
            return AuditRows {
                inner: Box::new(inner.map(move |g| {
                    let (k, v) = g
                        .into_inner()
                        .map_err(|e| ProjectionError::storage("scan audit rows", e))?;
                    decode_row(&rows, &k, &v)
                })),
            };
        };
        let lo = with_seq(&prefix, 0);
        let hi = match before {
            Some(c) => with_seq(&prefix, c.seq.0),
            None => {
                let mut k = with_seq(&prefix, u64::MAX);
                k.push(0);
                k
            }
        };
        let r = snap.range(&self.index, lo..hi);
        let inner: Box<dyn Iterator<Item = fjall::Guard> + Send> = if reverse {
            Box::new(r.rev())
        } else {
            Box::new(r)
        };
        let (rows, index) = (self.rows.clone(), self.index.clone());
        let conversation = q.conversation;
        let rows_iter = inner
            .filter_map(move |g| lookup(&snap, &rows, &index, g, since, conversation).transpose());
        AuditRows {
            inner: Box::new(rows_iter),
        }
    }
}

/// Resolves one index entry to its row, applying the filters the index
/// itself does not cover. `Ok(None)` means filtered out.
fn lookup(
    snap: &Snapshot,
    rows: &Keyspace,
    index: &Keyspace,
    g: fjall::Guard,
    since: Option<i64>,
    conversation: Option<ConversationId>,
) -> Result<Option<AuditRow>, ProjectionError> {
    let (k, row_key) = g
        .into_inner()
        .map_err(|e| ProjectionError::storage("scan audit index", e))?;
    let corrupt = |reason: &str| ProjectionError::Corrupt {
        keyspace: index.name().to_string(),
        key: store::printable_key(&k),
        reason: reason.into(),
    };
    let ts = store::array8(&row_key, 0)
        .map(store::ts_from_bytes)
        .ok_or_else(|| corrupt("row key is not 16 bytes"))?;
    if since.is_some_and(|s| ts < s) {
        return Ok(None);
    }
    let value = snap
        .get(rows, &row_key)
        .map_err(|e| ProjectionError::storage("read audit row", e))?
        .ok_or_else(|| corrupt("index names a row that is not stored"))?;
    let row = decode_row(rows, &row_key, &value)?;
    if conversation.is_some_and(|c| row.conversation != Some(c)) {
        return Ok(None);
    }
    Ok(Some(row))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::events::{DnsQueryV1, ProxyRequestV1, StreamId};
    use crate::projections::testing::header;

    #[test]
    fn given_proxy_request_on_conversation_stream_then_row_has_every_field() {
        let conv = ConversationId(0xabcdef01);
        let task = TaskId(uuid::Uuid::from_u128(5));
        let e = ProxyRequestV1 {
            task,
            method: "POST".into(),
            scheme: "https".into(),
            host: "api.github.com".into(),
            port: 443,
            path: "/graphql".into(),
            decision: Decision::Blocked,
            rule: None,
            reason: Some("not allowed".into()),
            status: Some(403),
            bytes_in: 10,
            bytes_out: 20,
            duration_us: 30,
            credentials: vec![],
            upstream_override: None,
            notes: vec!["graphql-op: query/viewer".into()],
        };
        let row =
            AuditRow::from_event(&header(9, conv.stream(), -5), &Event::ProxyRequest(e)).unwrap();
        assert_eq!(row.conversation, Some(conv));
        assert_eq!((row.seq, row.timestamp_us, row.task), (Seq(9), -5, task));
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["kind"], "request");
        assert_eq!(json["host"], "api.github.com");
        assert_eq!(json["status"], 403);
    }

    #[test]
    fn given_dns_query_off_conversation_then_row_without_conversation() {
        let e = DnsQueryV1 {
            task: TaskId(uuid::Uuid::from_u128(5)),
            name: "example.com".into(),
            qtype: 28,
            answer: "loopback".into(),
        };
        let row =
            AuditRow::from_event(&header(1, StreamId::server(), 1), &Event::DnsQuery(e)).unwrap();
        assert_eq!(row.conversation, None);
        assert!(matches!(row.entry, AuditEntry::Dns { qtype: 28, .. }));
    }

    #[test]
    fn stored_rows_round_trip_and_garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let ks = store::open_keyspace(&db, Namespace::Scratch, NAME, "rows").unwrap();
        let conv = ConversationId(3);
        let h = header(42, conv.stream(), -7);
        let e = Event::DnsQuery(DnsQueryV1 {
            task: TaskId(uuid::Uuid::from_u128(5)),
            name: "example.com".into(),
            qtype: 1,
            answer: "loopback".into(),
        });
        let (_, value) = encode_row(&h, &e).unwrap();
        let key = row_key(h.timestamp_us, h.seq);
        let row = decode_row(&ks, &key, &value).unwrap();
        assert_eq!(Some(row), AuditRow::from_event(&h, &e));

        for bad in [
            &b""[..],
            b"\x01",
            b"\x09\x00\x00\x00\x00\x00",
            &value[..value.len() - 3],
        ] {
            assert!(matches!(
                decode_row(&ks, &key, bad),
                Err(ProjectionError::Corrupt { .. })
            ));
        }
        assert!(decode_row(&ks, b"short", &value).is_err());
    }
}
