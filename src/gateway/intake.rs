//! Intake: a received message becomes a conversation (new, resumed, or new
//! in place of an expired one) and a task (queued, or folded into the
//! conversation's task that waits for its turn), or it is dismissed.
//!
//! Pure: the state and the message in, the events to append out. Called by
//! [`super::Gateway`]; the id generator is a parameter so tests can fix it.

use std::collections::HashSet;

use crate::events::{
    ConversationId, ConversationResumedV1, ConversationStartedV1, DismissReason, Event,
    MessageDismissedV1, StreamId, TaskCoalescedV1, TaskId, TaskQueuedV1,
};
use crate::log::{ExpectedVersion, NewEvent, StreamAppend};

use super::prompt;
use super::reply::EMPTY_MESSAGE;
use super::state::{GatewayState, Msg, TaskStatus};

/// The repo settings intake needs.
#[derive(Debug, Clone)]
pub struct RepoDefaults {
    /// The repo's model.
    pub model: String,
    /// The repo's effort.
    pub effort: Option<String>,
}

/// What intake decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A new conversation and its first task.
    Started {
        /// The new id.
        conversation: ConversationId,
        /// The task queued.
        task: TaskId,
    },
    /// An existing conversation continued; the task that takes the message.
    Resumed {
        /// The conversation.
        conversation: ConversationId,
        /// The task queued or folded into.
        task: TaskId,
        /// Folded into a task already waiting.
        coalesced: bool,
    },
    /// Nothing to run.
    Dismissed(DismissReason),
}

/// Decides what a message does and returns the append for it.
///
/// `live` are tasks already being started (in the log still `Queued`):
/// nothing is folded into them, since their prompt is built.
pub fn decide(
    state: &GatewayState,
    msg: &Msg,
    repo: Option<&RepoDefaults>,
    live: &HashSet<TaskId>,
    new_id: &mut dyn FnMut() -> ConversationId,
) -> (Decision, StreamAppend) {
    let cause = Some(msg.id);
    let Some(repo) = repo else {
        return dismiss(
            msg,
            DismissReason::RepoUnavailable,
            None,
            "the repo is not in the config".to_owned(),
        );
    };
    let found = state.find_conversation(msg);
    let existing = found.filter(|id| state.conversations.get(id).is_some_and(|c| !c.expired));
    let empty = msg.body.trim().is_empty()
        && msg.attachments.is_empty()
        && (existing.is_some() || msg.subject.trim().is_empty());
    if empty {
        return dismiss(
            msg,
            DismissReason::EmptyBody,
            existing,
            EMPTY_MESSAGE.to_owned(),
        );
    }
    let mut keys = vec![msg.message_id.clone()];
    keys.extend(msg.thread_keys.iter().cloned());
    keys.retain(|k| !k.is_empty());

    let mut events = Vec::new();
    let (conversation, decision) = match existing {
        Some(id) => {
            let conv = &state.conversations[&id];
            events.push(Event::ConversationResumed(ConversationResumedV1 {
                conversation: id,
                message: msg.id,
                thread_keys: keys,
            }));
            let waiting = state.tasks.values().find(|t| {
                t.conversation == id && t.status == TaskStatus::Queued && !live.contains(&t.id)
            });
            match waiting {
                Some(t) => {
                    events.push(Event::TaskCoalesced(TaskCoalescedV1 {
                        task: t.id,
                        message: msg.id,
                    }));
                    (
                        id,
                        Decision::Resumed {
                            conversation: id,
                            task: t.id,
                            coalesced: true,
                        },
                    )
                }
                None => {
                    let task = TaskId::new();
                    events.push(Event::TaskQueued(TaskQueuedV1 {
                        task,
                        conversation: id,
                        repo: msg.repo.clone(),
                        messages: vec![msg.id],
                        model: prompt::model(
                            conv.model.as_deref(),
                            msg.model_hint.as_deref(),
                            &repo.model,
                            false,
                        ),
                        effort: prompt::effort(conv.effort.as_deref(), repo.effort.as_deref()),
                    }));
                    (
                        id,
                        Decision::Resumed {
                            conversation: id,
                            task,
                            coalesced: false,
                        },
                    )
                }
            }
        }
        None => {
            let id = loop {
                let id = new_id();
                if !state.conversations.contains_key(&id) {
                    break id;
                }
            };
            let model = prompt::model(None, msg.model_hint.as_deref(), &repo.model, true);
            let effort = prompt::effort(None, repo.effort.as_deref());
            let task = TaskId::new();
            events.push(Event::ConversationStarted(ConversationStartedV1 {
                conversation: id,
                repo: msg.repo.clone(),
                channel: msg.channel.clone(),
                thread_keys: keys,
                message: msg.id,
                model: Some(model.clone()),
                effort: effort.clone(),
                replaces_expired: found,
            }));
            events.push(Event::TaskQueued(TaskQueuedV1 {
                task,
                conversation: id,
                repo: msg.repo.clone(),
                messages: vec![msg.id],
                model,
                effort,
            }));
            (
                id,
                Decision::Started {
                    conversation: id,
                    task,
                },
            )
        }
    };
    let append = StreamAppend {
        stream: conversation.stream(),
        expected: ExpectedVersion::Any,
        events: events
            .into_iter()
            .map(|event| NewEvent {
                event,
                causation: cause,
            })
            .collect(),
    };
    (decision, append)
}

fn dismiss(
    msg: &Msg,
    reason: DismissReason,
    conversation: Option<ConversationId>,
    detail: String,
) -> (Decision, StreamAppend) {
    let append = StreamAppend {
        stream: StreamId::channel(&msg.repo, &msg.channel),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event: Event::MessageDismissed(MessageDismissedV1 {
                message: msg.id,
                repo: msg.repo.clone(),
                channel: msg.channel.clone(),
                reason: reason.clone(),
                detail,
                conversation,
            }),
            causation: Some(msg.id),
        }],
    };
    (Decision::Dismissed(reason), append)
}
