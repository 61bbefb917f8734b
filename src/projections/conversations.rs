//! The conversations projection: one view per conversation (what `--resume`
//! and the gateway need: repo, channel, thread keys, Claude session, model,
//! tasks, activity, expiry) and an index from (repo, channel, thread key) to
//! conversation so a reply maps back to its thread.
//!
//! Keyspaces: `proj_conversations_views` (conversation id, 4 bytes BE →
//! [`Conversation`] JSON), `proj_conversations_threads` (repo ‖ channel ‖
//! thread key, length-prefixed → conversation id), `proj_conversations_messages`
//! (event id of every `message.received` → its seq and subject, so a
//! conversation's opening subject and the messages of its timeline, which
//! live on the channel stream, can be found), and `proj_conversations_meta`.
//!
//! The fold ([`Conversation::started`], [`Conversation::apply`]) is pure; the
//! [`ConversationsFold`] routes events to views through the chunk cache. The
//! gateway and dashboard read through [`Conversations`]. Must never be
//! written to by anyone but the runner.

use std::collections::BTreeMap;

use fjall::{Database, Keyspace, Readable};
use serde::{Deserialize, Serialize};

use crate::events::{ConversationId, ConversationStartedV1, Event, EventId, RepoId, Seq, TaskId};
use crate::log::Header;

use super::ProjectionError;
use super::store::{self, Namespace, Views};

/// The projection's name (keyspace prefix `proj_conversations_`).
pub(crate) const NAME: &str = "conversations";
/// Bump when the stored shape or the fold changes: the state is rebuilt.
pub(crate) const VERSION: u32 = 1;
/// Data keyspaces (the meta keyspace aside).
pub(crate) const KEYSPACES: &[&str] = &["views", "threads", "messages"];

/// Where and when something last happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Global sequence of the event.
    pub seq: Seq,
    /// Its append time, microseconds since the Unix epoch.
    pub timestamp_us: i64,
}

/// Where a received message is in the log, and its subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// Sequence of its `message.received` event.
    pub seq: Seq,
    /// Its subject (empty for Slack).
    pub subject: String,
}

/// One conversation as the gateway and dashboard see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// The id.
    pub id: ConversationId,
    /// The repo it works on.
    pub repo: RepoId,
    /// The channel it talks over.
    pub channel: String,
    /// Every key that ties a message to this thread (in the order learnt,
    /// no duplicates): the start's keys, keys added by resuming messages,
    /// and the message ids of replies sent.
    pub thread_keys: Vec<String>,
    /// When it started.
    pub started: Activity,
    /// Subject of the message that opened it (empty for Slack), when that
    /// message was seen.
    pub subject: Option<String>,
    /// The Claude session to resume: the latest `session_id` a completed
    /// task reported.
    pub session_id: Option<String>,
    /// The model: fixed at start, then the model of the latest queued task.
    pub model: Option<String>,
    /// The effort level, likewise.
    pub effort: Option<String>,
    /// Tasks, in the order they were queued.
    pub tasks: Vec<TaskId>,
    /// Messages that opened or continued it.
    pub message_count: u64,
    /// The latest event on its stream.
    pub last_activity: Activity,
    /// Cleaned up after idling past the configured age.
    pub expired: bool,
    /// The expired conversation this one replaced, if any.
    pub replaces_expired: Option<ConversationId>,
}

// === impl Conversation ===

impl Conversation {
    /// The view a `conversation.started` event creates. `subject` is the
    /// opening message's subject, looked up by the caller.
    pub fn started(header: &Header, e: &ConversationStartedV1, subject: Option<String>) -> Self {
        let at = Activity {
            seq: header.seq,
            timestamp_us: header.timestamp_us,
        };
        let mut thread_keys = Vec::new();
        for k in &e.thread_keys {
            push_unique(&mut thread_keys, k);
        }
        Conversation {
            id: e.conversation,
            repo: e.repo.clone(),
            channel: e.channel.clone(),
            thread_keys,
            started: at,
            subject,
            session_id: None,
            model: e.model.clone(),
            effort: e.effort.clone(),
            tasks: Vec::new(),
            message_count: 1,
            last_activity: at,
            expired: false,
            replaces_expired: e.replaces_expired,
        }
    }

    /// Folds one later event of this conversation's stream (or one that names
    /// it) into the view. No I/O, no clock, no error.
    pub fn apply(&mut self, header: &Header, event: &Event) {
        self.last_activity = Activity {
            seq: header.seq,
            timestamp_us: header.timestamp_us,
        };
        match event {
            Event::ConversationResumed(e) => {
                self.message_count += 1;
                for k in &e.thread_keys {
                    push_unique(&mut self.thread_keys, k);
                }
            }
            Event::ConversationExpired(_) => self.expired = true,
            Event::TaskQueued(e) => {
                if !self.tasks.contains(&e.task) {
                    self.tasks.push(e.task);
                }
                self.model = Some(e.model.clone());
                self.effort = e.effort.clone();
            }
            Event::TaskCompleted(e) => {
                if let Some(s) = &e.session_id {
                    self.session_id = Some(s.clone());
                }
            }
            Event::ReplySent(e) if !e.message_id.is_empty() => {
                push_unique(&mut self.thread_keys, &e.message_id);
            }
            _ => {}
        }
    }
}

fn push_unique(keys: &mut Vec<String>, k: &str) {
    if !keys.iter().any(|x| x == k) {
        keys.push(k.to_owned());
    }
}

/// The conversation an event is about: its stream's, or the one it names.
fn conversation_of(header: &Header, event: &Event) -> Option<ConversationId> {
    match event {
        Event::ConversationStarted(e) => Some(e.conversation),
        Event::ConversationResumed(e) => Some(e.conversation),
        Event::ConversationExpired(e) => Some(e.conversation),
        Event::TaskQueued(e) => Some(e.conversation),
        Event::ReplySent(e) => Some(e.conversation),
        Event::ReplyFailed(e) => Some(e.conversation),
        _ => header.stream.conversation(),
    }
}

fn view_key(id: ConversationId) -> [u8; 4] {
    id.0.to_be_bytes()
}

fn thread_key(repo: &RepoId, channel: &str, key: &str) -> Vec<u8> {
    let mut k = thread_prefix(repo, channel);
    store::push_str(&mut k, key);
    k
}

fn thread_prefix(repo: &RepoId, channel: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.0.len() + channel.len() + 16);
    store::push_str(&mut k, &repo.0);
    store::push_str(&mut k, channel);
    k
}

/// The conversations projection's write side: routes events to views
/// through a chunk-scoped cache.
pub(crate) struct ConversationsFold {
    views: Views<Conversation>,
    messages: Views<MessageRef>,
    threads: Keyspace,
    /// Thread index writes in event order; the last writer of a key wins,
    /// the same way whatever the chunking.
    thread_writes: BTreeMap<Vec<u8>, [u8; 4]>,
}

// === impl ConversationsFold ===

impl ConversationsFold {
    /// Opens the data keyspaces in `ns`.
    pub(crate) fn open(db: &Database, ns: Namespace) -> Result<Self, ProjectionError> {
        Ok(ConversationsFold {
            views: Views::new(store::open_keyspace(db, ns, NAME, "views")?),
            threads: store::open_keyspace(db, ns, NAME, "threads")?,
            messages: Views::new(store::open_keyspace(db, ns, NAME, "messages")?),
            thread_writes: BTreeMap::new(),
        })
    }

    /// The data keyspaces, in [`KEYSPACES`] order.
    pub(crate) fn keyspaces(&self) -> Vec<Keyspace> {
        vec![
            self.views.keyspace().clone(),
            self.threads.clone(),
            self.messages.keyspace().clone(),
        ]
    }

    /// Routes one event into the cache.
    pub(crate) fn stage(&mut self, header: &Header, event: &Event) -> Result<(), ProjectionError> {
        match event {
            Event::MessageReceived(m) => {
                let at = MessageRef {
                    seq: header.seq,
                    subject: m.subject.clone(),
                };
                self.messages.put(&message_key(header.event_id), at)?;
            }
            Event::ConversationStarted(e) => {
                let subject = self
                    .messages
                    .get_mut(&message_key(e.message))?
                    .map(|m| m.subject.clone());
                let view = Conversation::started(header, e, subject);
                for k in &view.thread_keys {
                    self.thread_writes
                        .insert(thread_key(&view.repo, &view.channel, k), view_key(view.id));
                }
                self.views.put(&view_key(view.id), view)?;
                return Ok(());
            }
            _ => {}
        }
        let Some(id) = conversation_of(header, event) else {
            return Ok(());
        };
        let Some(view) = self.views.get_mut(&view_key(id))? else {
            // Events about a conversation this log never started (not
            // expected from a valid log) are ignored rather than invented.
            return Ok(());
        };
        let known = view.thread_keys.len();
        view.apply(header, event);
        for k in view.thread_keys.iter().skip(known) {
            self.thread_writes
                .insert(thread_key(&view.repo, &view.channel, k), view_key(id));
        }
        Ok(())
    }

    /// Moves the chunk's changes into `batch` and empties the cache.
    pub(crate) fn flush(&mut self, batch: &mut fjall::OwnedWriteBatch) {
        self.views.flush(batch, |_, _| {});
        self.messages.flush(batch, |_, _| {});
        for (k, v) in std::mem::take(&mut self.thread_writes) {
            batch.insert(&self.threads, k, v.to_vec());
        }
    }

    /// Drops the chunk's changes (after an error).
    pub(crate) fn discard(&mut self) {
        self.views.clear();
        self.messages.clear();
        self.thread_writes.clear();
    }
}

fn message_key(id: EventId) -> [u8; 16] {
    *id.0.as_bytes()
}

/// Read side of the conversations projection. Cheap to clone.
#[derive(Clone)]
pub struct Conversations {
    db: Database,
    views: Keyspace,
    threads: Keyspace,
    messages: Keyspace,
}

// === impl Conversations ===

impl Conversations {
    pub(crate) fn open(db: &Database) -> Result<Self, ProjectionError> {
        Ok(Conversations {
            db: db.clone(),
            views: store::open_keyspace(db, Namespace::Live, NAME, "views")?,
            threads: store::open_keyspace(db, Namespace::Live, NAME, "threads")?,
            messages: store::open_keyspace(db, Namespace::Live, NAME, "messages")?,
        })
    }

    /// Where the `message.received` event with this id is, and its subject.
    pub fn message(&self, id: EventId) -> Result<Option<MessageRef>, ProjectionError> {
        store::get_json(&self.messages, &message_key(id))
    }

    /// One conversation by id.
    pub fn get(&self, id: ConversationId) -> Result<Option<Conversation>, ProjectionError> {
        store::get_json(&self.views, &view_key(id))
    }

    /// The conversation a thread key belongs to in one repo's channel
    /// (expired ones included: the gateway decides what to do with them).
    pub fn by_thread_key(
        &self,
        repo: &RepoId,
        channel: &str,
        key: &str,
    ) -> Result<Option<Conversation>, ProjectionError> {
        let snap = self.db.snapshot();
        let Some(id) = snap
            .get(&self.threads, thread_key(repo, channel, key))
            .map_err(|e| ProjectionError::storage("read conversation thread index", e))?
        else {
            return Ok(None);
        };
        let Ok(id) = <[u8; 4]>::try_from(&*id) else {
            return Err(ProjectionError::Corrupt {
                keyspace: self.threads.name().to_string(),
                key: store::printable_key(&thread_key(repo, channel, key)),
                reason: "conversation id is not 4 bytes".into(),
            });
        };
        store::get_json_at(&snap, &self.views, &id)
    }

    /// The conversation the first matching key of an inbound message's
    /// thread keys (In-Reply-To, References..., in order) belongs to.
    pub fn find_thread(
        &self,
        repo: &RepoId,
        channel: &str,
        keys: &[String],
    ) -> Result<Option<Conversation>, ProjectionError> {
        for k in keys {
            if let Some(c) = self.by_thread_key(repo, channel, k)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Every conversation in id order, streamed from one snapshot.
    pub fn iter(&self) -> impl Iterator<Item = Result<Conversation, ProjectionError>> + 'static {
        let ks = self.views.clone();
        self.db.snapshot().iter(&self.views).map(move |g| {
            let (k, v) = g
                .into_inner()
                .map_err(|e| ProjectionError::storage("scan conversations", e))?;
            store::decode(&ks, &k, &v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        ConversationExpiredV1, ConversationResumedV1, ReplyKind, ReplySentV1, TaskCompletedV1,
        TaskOutcome, TaskQueuedV1,
    };
    use crate::projections::testing::header;

    fn started() -> (Header, ConversationStartedV1) {
        let id = ConversationId(0x1a2b3c4d);
        let e = ConversationStartedV1 {
            conversation: id,
            repo: RepoId("r".into()),
            channel: "email".into(),
            thread_keys: vec!["<m1@x>".into(), "<m1@x>".into()],
            message: EventId(uuid::Uuid::from_u128(9)),
            model: Some("sonnet".into()),
            effort: None,
            replaces_expired: None,
        };
        (header(5, id.stream(), 100), e)
    }

    #[test]
    fn given_start_then_view_has_identity_subject_and_deduplicated_keys() {
        let (h, e) = started();
        let c = Conversation::started(&h, &e, Some("Fix the build".into()));
        assert_eq!(c.thread_keys, vec!["<m1@x>".to_string()]);
        assert_eq!(c.subject.as_deref(), Some("Fix the build"));
        assert_eq!(c.message_count, 1);
        assert_eq!(c.started, c.last_activity);
        assert_eq!(c.model.as_deref(), Some("sonnet"));
    }

    #[test]
    fn given_started_when_tasks_complete_then_latest_session_is_kept() {
        let (h, e) = started();
        let mut c = Conversation::started(&h, &e, None);
        let task = TaskId(uuid::Uuid::from_u128(1));
        let stream = e.conversation.stream();
        c.apply(
            &header(6, stream.clone(), 110),
            &Event::TaskQueued(TaskQueuedV1 {
                task,
                conversation: e.conversation,
                repo: e.repo.clone(),
                messages: vec![],
                model: "opus".into(),
                effort: None,
            }),
        );
        let completed = |session: Option<&str>| {
            Event::TaskCompleted(TaskCompletedV1 {
                task,
                outcome: TaskOutcome::Succeeded,
                reason: String::new(),
                session_id: session.map(str::to_owned),
                reply_text: String::new(),
                cost_micros: None,
                turns: None,
                duration_ms: 1,
                input_tokens: 0,
                output_tokens: 0,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                web_searches: 0,
                web_fetches: 0,
                blocked_hosts: vec![],
            })
        };
        c.apply(&header(7, stream.clone(), 120), &completed(Some("s-1")));
        c.apply(&header(8, stream.clone(), 130), &completed(None));
        assert_eq!(c.session_id.as_deref(), Some("s-1"));
        assert_eq!(c.tasks, vec![task]);
        assert_eq!(c.model.as_deref(), Some("opus"));
        assert_eq!(
            c.last_activity,
            Activity {
                seq: Seq(8),
                timestamp_us: 130
            }
        );
    }

    #[test]
    fn given_started_when_resumed_replied_and_expired_then_keys_grow_and_flag_set() {
        let (h, e) = started();
        let mut c = Conversation::started(&h, &e, None);
        let stream = e.conversation.stream();
        c.apply(
            &header(6, stream.clone(), 110),
            &Event::ConversationResumed(ConversationResumedV1 {
                conversation: e.conversation,
                message: EventId(uuid::Uuid::from_u128(10)),
                thread_keys: vec!["<m2@x>".into(), "<m1@x>".into()],
            }),
        );
        c.apply(
            &header(7, stream.clone(), 111),
            &Event::ReplySent(ReplySentV1 {
                conversation: e.conversation,
                task: None,
                channel: "email".into(),
                kind: ReplyKind::Result,
                message_id: "<r1@airut>".into(),
                in_reply_to: "<m2@x>".into(),
                attachments: vec![],
            }),
        );
        c.apply(
            &header(8, stream, 112),
            &Event::ConversationExpired(ConversationExpiredV1 {
                conversation: e.conversation,
                last_activity_seq: 7,
            }),
        );
        assert_eq!(c.thread_keys, vec!["<m1@x>", "<m2@x>", "<r1@airut>"]);
        assert_eq!(c.message_count, 2);
        assert!(c.expired);
    }
}
