//! The gateway's working state, folded from the log: messages waiting for
//! intake, conversations (thread keys, model, session, last activity),
//! the queue (tasks queued, running, interrupted) and replies owed.
//!
//! It is a projection: [`GatewayState::apply`] has no I/O, no clock and no
//! error, so the state after a restart (a fold over the whole log) equals
//! the state the gateway had live (a property test holds this). Only what
//! is still to do is kept in full; finished tasks and answered messages
//! are dropped, so memory follows the work in flight plus one small entry
//! per conversation.

use std::collections::BTreeMap;

use crate::events::{
    AttachmentV1, ConversationId, DismissReason, Event, EventId, ReplyKind, RepoId, Seq,
    TaskCompletedV1, TaskId, TaskOutcome,
};
use crate::log::Header;

/// A received message, as much of it as the gateway needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// Its `message.received` event.
    pub id: EventId,
    /// Where it is in the log.
    pub seq: Seq,
    /// When it was received (append time, µs since the epoch).
    pub received_us: i64,
    /// The repo.
    pub repo: RepoId,
    /// The channel.
    pub channel: String,
    /// The channel's message id (threading).
    pub message_id: String,
    /// Thread keys the message carried.
    pub thread_keys: Vec<String>,
    /// Authenticated sender (reply recipient).
    pub sender: String,
    /// How to show the sender.
    pub sender_display: String,
    /// The conversation the channel parsed.
    pub conversation_ref: Option<ConversationId>,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Attachments.
    pub attachments: Vec<AttachmentV1>,
    /// Model hint.
    pub model_hint: Option<String>,
}

/// One conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    /// The repo.
    pub repo: RepoId,
    /// The channel.
    pub channel: String,
    /// Every thread key, in the order learnt.
    pub thread_keys: Vec<String>,
    /// Model fixed for it.
    pub model: Option<String>,
    /// Effort fixed for it.
    pub effort: Option<String>,
    /// The session to resume.
    pub session_id: Option<String>,
    /// The last successful reply text (for the recovery prompt).
    pub last_response: Option<String>,
    /// Its last event.
    pub last_seq: Seq,
    /// Its last event's time (µs).
    pub last_us: i64,
    /// Removed after idling.
    pub expired: bool,
    /// Whether any task has completed (the workspace existed before).
    pub has_run: bool,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Waiting for a slot.
    Queued,
    /// Started and not finished.
    Running,
}

/// A task not yet completed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// When it was queued.
    pub queued_seq: Seq,
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its repo.
    pub repo: RepoId,
    /// Messages it answers (the first, then coalesced follow-ups).
    pub messages: Vec<EventId>,
    /// Model.
    pub model: String,
    /// Effort.
    pub effort: Option<String>,
    /// Queued or running.
    pub status: TaskStatus,
    /// The highest attempt started.
    pub attempts: u32,
    /// Whether it was already re-run after an interruption.
    pub rerun: bool,
    /// Whether the conversation was new when this task was queued.
    pub new_conversation: bool,
    /// Who asked to stop it (`task.stop_requested`), if anyone: a queued
    /// task is then completed as stopped instead of started, a running one
    /// is stopped, and one cut off by a restart is not run again.
    pub stop_requested: Option<String>,
}

/// A reply owed: caused by an event, not yet recorded as sent or failed.
#[derive(Debug, Clone, PartialEq)]
pub struct OwedReply {
    /// The causing event (idempotency key).
    pub cause: EventId,
    /// Its seq (replies go out in log order).
    pub seq: Seq,
    /// The conversation, if any.
    pub conversation: Option<ConversationId>,
    /// The repo.
    pub repo: RepoId,
    /// The channel.
    pub channel: String,
    /// The task, if any.
    pub task: Option<TaskId>,
    /// Kind.
    pub kind: ReplyKind,
    /// The message answered.
    pub to: Msg,
    /// What to say, by cause.
    pub what: Owed,
}

/// What an owed reply is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Owed {
    /// A new conversation started; the id of an expired one it replaces.
    Ack {
        /// The expired conversation, if any.
        replaces_expired: Option<ConversationId>,
    },
    /// A task ended.
    Result(Box<TaskCompletedV1>),
    /// A message was dismissed; the text says why.
    Dismissed(String),
}

/// The fold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayState {
    /// The next seq to apply.
    pub next: Seq,
    /// Received messages, by event id: unresolved ones and those a live
    /// task still answers.
    pub messages: BTreeMap<EventId, Msg>,
    /// Messages not yet resolved (no conversation or dismissal), by seq.
    pub intake: BTreeMap<Seq, EventId>,
    /// Conversations.
    pub conversations: BTreeMap<ConversationId, Conv>,
    /// (repo, channel, key) → conversation.
    pub threads: BTreeMap<(RepoId, String, String), ConversationId>,
    /// Tasks not completed.
    pub tasks: BTreeMap<TaskId, TaskView>,
    /// Replies owed, by causing seq.
    pub owed: BTreeMap<Seq, OwedReply>,
    /// Causing event → seq, to settle an owed reply.
    owed_by_cause: BTreeMap<EventId, Seq>,
}

// === impl GatewayState ===

impl GatewayState {
    /// Folds one event. No I/O, no clock, no error; an event about
    /// something unknown is ignored.
    pub fn apply(&mut self, h: &Header, event: &Event) {
        if !self.apply_header(h) {
            return;
        }
        match event {
            Event::MessageReceived(m) => {
                let msg = Msg {
                    id: h.event_id,
                    seq: h.seq,
                    received_us: h.timestamp_us,
                    repo: m.repo.clone(),
                    channel: m.channel.clone(),
                    message_id: m.message_id.clone(),
                    thread_keys: m.thread_keys.clone(),
                    sender: m.sender.clone(),
                    sender_display: m.sender_display.clone(),
                    conversation_ref: m.conversation_ref,
                    subject: m.subject.clone(),
                    body: m.body.clone(),
                    attachments: m.attachments.clone(),
                    model_hint: m.model_hint.clone(),
                };
                self.messages.insert(h.event_id, msg);
                self.intake.insert(h.seq, h.event_id);
            }
            Event::MessageDismissed(e) => {
                let msg = self.resolve(e.message);
                // Only an empty message is answered: a repo that is not
                // serving has no channel to answer through.
                if let Some(msg) = msg.filter(|_| e.reason == DismissReason::EmptyBody) {
                    self.owe(
                        h,
                        OwedReply {
                            cause: h.event_id,
                            seq: h.seq,
                            conversation: e.conversation,
                            repo: msg.repo.clone(),
                            channel: msg.channel.clone(),
                            task: None,
                            kind: ReplyKind::Error,
                            to: msg,
                            what: Owed::Dismissed(e.detail.clone()),
                        },
                    );
                }
                self.messages.remove(&e.message);
            }
            Event::ConversationStarted(e) => {
                let opener = self.resolve(e.message);
                let mut c = Conv {
                    repo: e.repo.clone(),
                    channel: e.channel.clone(),
                    thread_keys: Vec::new(),
                    model: e.model.clone(),
                    effort: e.effort.clone(),
                    session_id: None,
                    last_response: None,
                    last_seq: h.seq,
                    last_us: h.timestamp_us,
                    expired: false,
                    has_run: false,
                };
                for k in &e.thread_keys {
                    push_key(&mut self.threads, &mut c, e.conversation, k);
                }
                self.conversations.insert(e.conversation, c);
                if let Some(msg) = opener {
                    self.owe(
                        h,
                        OwedReply {
                            cause: h.event_id,
                            seq: h.seq,
                            conversation: Some(e.conversation),
                            repo: e.repo.clone(),
                            channel: e.channel.clone(),
                            task: None,
                            kind: ReplyKind::Acknowledgement,
                            to: msg,
                            what: Owed::Ack {
                                replaces_expired: e.replaces_expired,
                            },
                        },
                    );
                }
            }
            Event::ConversationResumed(e) => {
                self.resolve(e.message);
                if let Some(c) = self.conversations.get_mut(&e.conversation) {
                    for k in &e.thread_keys {
                        push_key(&mut self.threads, c, e.conversation, k);
                    }
                }
            }
            Event::ConversationExpired(e) => {
                if let Some(c) = self.conversations.get_mut(&e.conversation) {
                    c.expired = true;
                }
            }
            Event::TaskQueued(e) => {
                let new_conversation = self
                    .conversations
                    .get(&e.conversation)
                    .is_some_and(|c| !c.has_run);
                if let Some(c) = self.conversations.get_mut(&e.conversation) {
                    c.model = Some(e.model.clone());
                    c.effort = e.effort.clone();
                }
                self.tasks.insert(
                    e.task,
                    TaskView {
                        id: e.task,
                        queued_seq: h.seq,
                        conversation: e.conversation,
                        repo: e.repo.clone(),
                        messages: e.messages.clone(),
                        model: e.model.clone(),
                        effort: e.effort.clone(),
                        status: TaskStatus::Queued,
                        attempts: 0,
                        rerun: false,
                        new_conversation,
                        stop_requested: None,
                    },
                );
            }
            Event::TaskCoalesced(e) => {
                if let Some(t) = self.tasks.get_mut(&e.task)
                    && !t.messages.contains(&e.message)
                {
                    t.messages.push(e.message);
                }
            }
            Event::TaskStarted(e) => {
                if let Some(t) = self.tasks.get_mut(&e.task) {
                    t.status = TaskStatus::Running;
                    t.attempts = t.attempts.max(e.attempt);
                }
            }
            Event::TaskStopRequested(e) => {
                if let Some(t) = self.tasks.get_mut(&e.task)
                    && t.stop_requested.is_none()
                {
                    t.stop_requested = Some(e.requested_by.clone());
                }
            }
            Event::TaskInterrupted(e) => {
                if let Some(t) = self.tasks.get_mut(&e.task) {
                    if e.rerun {
                        t.status = TaskStatus::Queued;
                    }
                    t.rerun = true;
                }
            }
            Event::TaskCompleted(e) => {
                let Some(t) = self.tasks.remove(&e.task) else {
                    return;
                };
                if let Some(c) = self.conversations.get_mut(&t.conversation) {
                    c.has_run = true;
                    if let Some(s) = &e.session_id {
                        c.session_id = Some(s.clone());
                    }
                    if e.outcome == TaskOutcome::Succeeded && !e.reply_text.is_empty() {
                        c.last_response = Some(e.reply_text.clone());
                    }
                }
                let last = t
                    .messages
                    .last()
                    .and_then(|m| self.messages.get(m))
                    .cloned();
                for m in &t.messages {
                    self.messages.remove(m);
                }
                if let Some(to) = last {
                    let channel = to.channel.clone();
                    self.owe(
                        h,
                        OwedReply {
                            cause: h.event_id,
                            seq: h.seq,
                            conversation: Some(t.conversation),
                            repo: t.repo.clone(),
                            channel,
                            task: Some(t.id),
                            kind: reply_kind(&e.outcome),
                            to,
                            what: Owed::Result(Box::new(e.clone())),
                        },
                    );
                }
            }
            Event::ReplySent(e) => {
                if let Some(cause) = h.causation {
                    self.settle(cause);
                }
                if !e.message_id.is_empty()
                    && let Some(c) = self.conversations.get_mut(&e.conversation)
                {
                    push_key(&mut self.threads, c, e.conversation, &e.message_id);
                }
            }
            Event::ReplyFailed(_) => {
                if let Some(cause) = h.causation {
                    self.settle(cause);
                }
            }
            _ => {}
        }
    }

    /// Folds what every event says by its header alone (position, a
    /// conversation's last activity). Returns false for an event already
    /// applied. Events the gateway does not read (output lines, proxy
    /// records) go through this only, undecoded.
    pub fn apply_header(&mut self, h: &Header) -> bool {
        if h.seq < self.next {
            return false;
        }
        self.next = h.seq.next();
        if let Some(conv) = h.stream.conversation()
            && let Some(c) = self.conversations.get_mut(&conv)
        {
            c.last_seq = h.seq;
            c.last_us = h.timestamp_us;
        }
        true
    }

    fn resolve(&mut self, message: EventId) -> Option<Msg> {
        let msg = self.messages.get(&message)?.clone();
        self.intake.remove(&msg.seq);
        Some(msg)
    }

    fn owe(&mut self, h: &Header, reply: OwedReply) {
        self.owed_by_cause.insert(h.event_id, h.seq);
        self.owed.insert(h.seq, reply);
    }

    fn settle(&mut self, cause: EventId) {
        if let Some(seq) = self.owed_by_cause.remove(&cause) {
            self.owed.remove(&seq);
        }
    }

    /// The conversation a message belongs to in its own repo and channel:
    /// the parsed reference, else the first thread key that is known.
    /// Ids of another repo are never used.
    pub fn find_conversation(&self, msg: &Msg) -> Option<ConversationId> {
        if let Some(id) = msg.conversation_ref
            && let Some(c) = self.conversations.get(&id)
            && c.repo == msg.repo
            && c.channel == msg.channel
        {
            return Some(id);
        }
        msg.thread_keys.iter().find_map(|k| {
            self.threads
                .get(&(msg.repo.clone(), msg.channel.clone(), k.clone()))
                .copied()
        })
    }

    /// Whether a conversation has a task queued or running.
    pub fn busy(&self, conv: ConversationId) -> bool {
        self.tasks.values().any(|t| t.conversation == conv)
    }

    /// Tasks in queue order.
    pub fn queue(&self) -> Vec<&TaskView> {
        let mut q: Vec<&TaskView> = self.tasks.values().collect();
        q.sort_by_key(|t| t.queued_seq);
        q
    }
}

fn push_key(
    threads: &mut BTreeMap<(RepoId, String, String), ConversationId>,
    c: &mut Conv,
    id: ConversationId,
    key: &str,
) {
    if key.is_empty() {
        return;
    }
    if !c.thread_keys.iter().any(|k| k == key) {
        c.thread_keys.push(key.to_owned());
    }
    threads.insert((c.repo.clone(), c.channel.clone(), key.to_owned()), id);
}

/// Result replies for a finished agent; error replies for everything else.
pub fn reply_kind(outcome: &TaskOutcome) -> ReplyKind {
    match outcome {
        TaskOutcome::Succeeded => ReplyKind::Result,
        _ => ReplyKind::Error,
    }
}

/// Whether the gateway decodes events of this type (others only advance
/// the position and a conversation's last activity).
pub fn reads(ty: crate::events::EventType) -> bool {
    use crate::events::EventType as T;
    matches!(
        ty,
        T::MessageReceived
            | T::MessageDismissed
            | T::ConversationStarted
            | T::ConversationResumed
            | T::ConversationExpired
            | T::TaskQueued
            | T::TaskCoalesced
            | T::TaskStarted
            | T::TaskInterrupted
            | T::TaskStopRequested
            | T::TaskCompleted
            | T::ReplySent
            | T::ReplyFailed
    )
}
