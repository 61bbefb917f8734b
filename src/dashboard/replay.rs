//! A conversation as it was at any point: its stream folded from the log up
//! to a sequence number (or a stream version), for the conversation page's
//! replay control, and the agent's output grouped per task for the actions
//! timeline.
//!
//! Reads the log directly (blocking), never a file on the side; the task
//! fold is the board projection's own ([`Task::apply`]), so a replayed task
//! at the head looks exactly like the board's.

use std::collections::VecDeque;

use crate::events::{ConversationId, Event, EventType, ReplyKind, TaskId};
use crate::log::{Log, ReadError};
use crate::projections::Task;
use crate::projections::board::task_of;

use super::actions::{self, ActionItem};
use super::views;

/// Events listed on the replay page (the latest up to the point).
pub const RECENT_EVENTS: usize = 50;

/// Where to stop folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Everything written so far.
    Head,
    /// Up to and including this global sequence.
    Seq(u64),
    /// Up to and including this stream version (1-based).
    Version(u64),
}

/// The conversation at a point.
#[derive(Debug, Clone)]
pub struct ReplayState {
    /// The conversation.
    pub conversation: ConversationId,
    /// Stream version reached (0 = before the first event).
    pub position: u64,
    /// Stream versions in all.
    pub total: u64,
    /// Global sequence of the last event folded.
    pub at_seq: Option<u64>,
    /// Sequence of the event before it (the "step back" target).
    pub prev_seq: Option<u64>,
    /// Sequence of the next event (the "step forward" target).
    pub next_seq: Option<u64>,
    /// The time of the point.
    pub at_time: String,
    /// Tasks as they were, in queue order, with prompt and reply text.
    pub tasks: Vec<ReplayTask>,
    /// Replies sent or failed up to the point.
    pub replies: Vec<ReplyRow>,
    /// The latest events up to the point, oldest first.
    pub recent: Vec<EventRow>,
}

/// A task at the point.
#[derive(Debug, Clone)]
pub struct ReplayTask {
    /// The fold.
    pub task: Task,
    /// The prompt of its latest start.
    pub prompt: String,
    /// The reply text chosen at completion.
    pub reply_text: String,
}

/// A reply.
#[derive(Debug, Clone)]
pub struct ReplyRow {
    /// Sequence.
    pub seq: u64,
    /// Time.
    pub time: String,
    /// `acknowledgement`, `result`, `error`.
    pub kind: &'static str,
    /// Channel.
    pub channel: String,
    /// Sent or failed, with detail.
    pub outcome: String,
    /// Whether it failed.
    pub failed: bool,
}

/// One event in the list.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Sequence.
    pub seq: u64,
    /// Time.
    pub time: String,
    /// Type name.
    pub kind: String,
    /// One-line summary.
    pub summary: String,
}

/// The output of one task, for the actions timeline.
#[derive(Debug, Clone)]
pub struct TaskActions {
    /// The task.
    pub task: TaskId,
    /// 1-based position in the conversation.
    pub number: usize,
    /// When it started (or `-`).
    pub started: String,
    /// Its prompt(s).
    pub prompt: String,
    /// The items.
    pub items: Vec<ActionItem>,
}

/// Folds `conv` up to `point`. `None` when the conversation has no events.
pub fn replay(
    log: &Log,
    conv: ConversationId,
    point: Point,
) -> Result<Option<ReplayState>, ReadError> {
    let stream = conv.stream();
    let total = log.stream_version(&stream)?;
    if total == 0 {
        return Ok(None);
    }
    let mut st = ReplayState {
        conversation: conv,
        position: 0,
        total,
        at_seq: None,
        prev_seq: None,
        next_seq: None,
        at_time: "-".into(),
        tasks: Vec::new(),
        replies: Vec::new(),
        recent: Vec::new(),
    };
    let mut recent = VecDeque::with_capacity(RECENT_EVENTS);
    for rec in log.stream_iter(&stream, 1) {
        let rec = rec?;
        let h = &rec.header;
        let inside = match point {
            Point::Head => true,
            Point::Seq(s) => h.seq.0 <= s,
            Point::Version(v) => h.stream_version <= v,
        };
        if !inside {
            st.next_seq = Some(h.seq.0);
            break;
        }
        st.prev_seq = st.at_seq;
        st.at_seq = Some(h.seq.0);
        st.position = h.stream_version;
        st.at_time = views::time(h.timestamp_us);
        let event = rec.decode()?;
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(EventRow {
            seq: h.seq.0,
            time: st.at_time.clone(),
            kind: event.event_type().name().to_owned(),
            summary: event.summary(),
        });
        match &event {
            Event::TaskQueued(e) => {
                if !st.tasks.iter().any(|t| t.task.id == e.task) {
                    st.tasks.push(ReplayTask {
                        task: Task::queued(h, e),
                        prompt: String::new(),
                        reply_text: String::new(),
                    });
                }
            }
            Event::ReplySent(e) => st.replies.push(ReplyRow {
                seq: h.seq.0,
                time: st.at_time.clone(),
                kind: reply_kind(&e.kind),
                channel: e.channel.clone(),
                outcome: format!("sent as {}", e.message_id),
                failed: false,
            }),
            Event::ReplyFailed(e) => st.replies.push(ReplyRow {
                seq: h.seq.0,
                time: st.at_time.clone(),
                kind: reply_kind(&e.kind),
                channel: e.channel.clone(),
                outcome: format!("failed after {} attempts: {}", e.attempts, e.error),
                failed: true,
            }),
            _ => {
                if let Some(id) = task_of(&event)
                    && let Some(t) = st.tasks.iter_mut().find(|t| t.task.id == id)
                {
                    t.task.apply(h, &event);
                    match &event {
                        Event::TaskStarted(e) => t.prompt.clone_from(&e.prompt),
                        Event::TaskCompleted(e) => t.reply_text.clone_from(&e.reply_text),
                        _ => {}
                    }
                }
            }
        }
    }
    st.recent = recent.into();
    Ok(Some(st))
}

/// The agent's output in `conv`, grouped per task (only `task` when
/// given). `None` when the conversation has no events.
pub fn actions(
    log: &Log,
    conv: ConversationId,
    task: Option<TaskId>,
) -> Result<Option<Vec<TaskActions>>, ReadError> {
    let stream = conv.stream();
    if log.stream_version(&stream)? == 0 {
        return Ok(None);
    }
    let mut groups: Vec<TaskActions> = Vec::new();
    let mut queued = 0usize;
    for rec in log.stream_iter(&stream, 1) {
        let rec = rec?;
        let ty = rec.event_type();
        if !matches!(
            ty,
            Some(EventType::TaskQueued | EventType::TaskStarted | EventType::ContainerOutput)
        ) {
            continue;
        }
        let event = rec.decode()?;
        match &event {
            Event::TaskQueued(e) => {
                queued += 1;
                if task.is_none_or(|t| t == e.task) {
                    groups.push(TaskActions {
                        task: e.task,
                        number: queued,
                        started: "-".into(),
                        prompt: String::new(),
                        items: Vec::new(),
                    });
                }
            }
            Event::TaskStarted(e) => {
                if let Some(g) = groups.iter_mut().find(|g| g.task == e.task) {
                    g.started = views::time(rec.header.timestamp_us);
                    g.prompt.clone_from(&e.prompt);
                }
            }
            Event::ContainerOutput(e) => {
                if let Some(g) = groups.iter_mut().find(|g| g.task == e.task) {
                    g.items.extend(actions::items(rec.header.seq.0, e));
                }
            }
            _ => {}
        }
    }
    Ok(Some(groups))
}

fn reply_kind(k: &ReplyKind) -> &'static str {
    match k {
        ReplyKind::Acknowledgement => "acknowledgement",
        ReplyKind::Result => "result",
        ReplyKind::Error => "error",
    }
}
