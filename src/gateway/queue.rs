//! The queue: which waiting tasks may start now. One task at a time per
//! conversation, at most `max_concurrent` over all repos, oldest first;
//! a task someone asked to stop never starts.
//!
//! Pure: the state (a projection of the log) and the tasks already being
//! run in, task ids out. Called by [`super::Gateway`] after every change.

use std::collections::HashSet;

use crate::events::{ConversationId, TaskId};

use super::state::{GatewayState, TaskStatus};

/// Tasks to start now, in queue order. `live` are tasks this process runs;
/// `can_run` says whether a task's repo is serving.
pub fn startable(
    state: &GatewayState,
    live: &HashSet<TaskId>,
    max_concurrent: usize,
    can_run: &dyn Fn(&crate::events::RepoId) -> bool,
) -> Vec<TaskId> {
    let queue = state.queue();
    let mut busy: HashSet<ConversationId> = queue
        .iter()
        .filter(|t| t.status == TaskStatus::Running || live.contains(&t.id))
        .map(|t| t.conversation)
        .collect();
    let mut running = queue
        .iter()
        .filter(|t| t.status == TaskStatus::Running || live.contains(&t.id))
        .count();
    let mut out = Vec::new();
    for t in queue {
        if running >= max_concurrent {
            break;
        }
        if t.status != TaskStatus::Queued
            || t.stop_requested.is_some()
            || live.contains(&t.id)
            || busy.contains(&t.conversation)
            || !can_run(&t.repo)
        {
            continue;
        }
        busy.insert(t.conversation);
        running += 1;
        out.push(t.id);
    }
    out
}
