//! What the user is told: the text of a task's reply (the agent's answer,
//! or an error that says what happened and what to do), the usage footer,
//! the blocked-hosts note, acknowledgements and dismissals.
//!
//! Pure: event values in, text out. The text of a result is fixed when the
//! task completes (it is in `task.completed`), so a reply re-sent after a
//! restart says exactly the same.

use std::fmt::Write as _;
use std::time::Duration;

use crate::events::{ConversationId, TaskCompletedV1, TaskOutcome};

use super::driver::ExecutionResult;

/// Lines of agent output quoted in an error reply.
const SUMMARY_LINES: usize = 10;

/// The reply text for a finished run (stored as `task.completed.reply_text`).
pub fn task_text(r: &ExecutionResult, timeout: Option<Duration>) -> String {
    match r.outcome {
        TaskOutcome::Succeeded => {
            if r.response_text.trim().is_empty() {
                "The agent finished without writing a reply.".to_owned()
            } else {
                r.response_text.clone()
            }
        }
        TaskOutcome::TimedOut => {
            let first = match timeout {
                Some(t) => format!(
                    "The task was interrupted after {} seconds (the repo's time limit). The work done so far is saved.",
                    t.as_secs()
                ),
                None => "The task was interrupted. The work done so far is saved.".to_owned(),
            };
            format!(
                "{first}\n\nReply to this message to continue, for example to ask how far it got or what to do next."
            )
        }
        TaskOutcome::Stopped => {
            "The task was stopped on request. The work done so far is saved.\n\n\
             Reply to this message to continue."
                .to_owned()
        }
        TaskOutcome::Interrupted => "The server restarted while working on your message, and the \
             re-run was cut off too. Nothing was lost from the workspace.\n\nSend your message \
             again to retry; if this keeps happening, tell the operator."
            .to_owned(),
        TaskOutcome::InternalError => format!(
            "The server could not prepare the task, so the agent did not run: {}\n\n\
             Send your message again to retry; if it keeps failing, tell the operator \
             (the reason above is also in the server's event log).",
            r.reason
        ),
        TaskOutcome::Failed
        | TaskOutcome::PromptTooLong
        | TaskOutcome::SessionCorrupted
        | TaskOutcome::ContainerFailed => {
            let mut text = "An error occurred while the agent worked on your message. Send it \
                 again to retry."
                .to_owned();
            if let Some(summary) = r.error_summary.as_deref().filter(|s| !s.trim().is_empty()) {
                let lines: Vec<&str> = summary.lines().collect();
                let tail = lines[lines.len().saturating_sub(SUMMARY_LINES)..].join("\n");
                let _ = write!(text, "\n\nClaude output:\n```\n{tail}\n```");
            } else if !r.reason.is_empty() {
                let _ = write!(text, "\n\n({})", r.reason);
            }
            text
        }
    }
}

/// The reply text for a task stopped while it waited in the queue.
pub fn stopped_before_start_text() -> String {
    "The task was stopped on request before it started, so the agent did not run.\n\n\
     Reply to this message to send it again or to continue."
        .to_owned()
}

/// Whether a reply for this outcome carries (and then clears) the outbox.
/// A timeout or stop leaves the files for the next turn.
pub fn attaches_outbox(outcome: &TaskOutcome) -> bool {
    matches!(
        outcome,
        TaskOutcome::Succeeded
            | TaskOutcome::Failed
            | TaskOutcome::PromptTooLong
            | TaskOutcome::SessionCorrupted
            | TaskOutcome::ContainerFailed
    )
}

/// The full text sent for a completed task: the stored text, the blocked
/// hosts (if any) and, for a finished agent, the usage footer.
pub fn completed_text(e: &TaskCompletedV1) -> String {
    let mut text = e.reply_text.clone();
    if !e.blocked_hosts.is_empty() {
        let _ = write!(
            text,
            "\n\nThe network sandbox blocked requests to: {}. If the agent needs them, add them \
             to .airut/network-allowlist.yaml on the default branch.",
            e.blocked_hosts.join(", ")
        );
    }
    if e.outcome == TaskOutcome::Succeeded
        && let Some(footer) = footer(e)
    {
        let _ = write!(text, "\n\n---\n{footer}");
    }
    text
}

/// `Took 12.3 s · $0.0421 · 5 turns · 2 web searches`, or nothing.
pub fn footer(e: &TaskCompletedV1) -> Option<String> {
    let mut parts = Vec::new();
    if e.duration_ms > 0 {
        parts.push(format!("Took {:.1} s", e.duration_ms as f64 / 1000.0));
    }
    if let Some(c) = e.cost_micros {
        parts.push(format!("${:.4}", c as f64 / 1_000_000.0));
    }
    if let Some(t) = e.turns {
        parts.push(format!("{t} turn{}", if t == 1 { "" } else { "s" }));
    }
    if e.web_searches > 0 {
        parts.push(format!("{} web searches", e.web_searches));
    }
    if e.web_fetches > 0 {
        parts.push(format!("{} web fetches", e.web_fetches));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// The acknowledgement of a new conversation.
pub fn ack_text(conv: ConversationId, replaces_expired: Option<ConversationId>) -> String {
    let mut text = format!(
        "Started working on this (conversation {conv}). The answer will come as a reply in this \
         thread; reply to it to continue."
    );
    if let Some(old) = replaces_expired {
        let _ = write!(
            text,
            "\n\nThe earlier conversation {old} had expired and its workspace was removed, so \
             this is a new conversation with a fresh workspace and no memory of the old one."
        );
    }
    text
}

/// The dismissal text for an empty message.
pub const EMPTY_MESSAGE: &str = "Your message appears to be empty, so nothing was started. \
     Send a new message with instructions.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::samples::sample;
    use crate::events::{Event, EventType};

    fn result(outcome: TaskOutcome) -> ExecutionResult {
        let mut r = ExecutionResult::internal("exit code 1");
        r.outcome = outcome;
        r.response_text = "Done: fixed.".to_owned();
        r
    }

    #[test]
    fn texts_say_what_happened_and_what_to_do() {
        assert_eq!(
            task_text(&result(TaskOutcome::Succeeded), None),
            "Done: fixed."
        );
        let t = task_text(
            &result(TaskOutcome::TimedOut),
            Some(Duration::from_secs(600)),
        );
        assert!(t.contains("interrupted after 600 seconds") && t.contains("Reply"));
        let mut failed = result(TaskOutcome::ContainerFailed);
        failed.error_summary = Some(
            (1..=15)
                .map(|i| format!("line {i}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let t = task_text(&failed, None);
        assert!(t.contains("line 6\n") && !t.contains("line 5\n") && t.contains("again"));
        assert!(task_text(&result(TaskOutcome::InternalError), None).contains("exit code 1"));
        assert!(attaches_outbox(&TaskOutcome::ContainerFailed));
        assert!(!attaches_outbox(&TaskOutcome::TimedOut));
    }

    #[test]
    fn completed_text_has_blocked_hosts_and_footer() {
        let Event::TaskCompleted(e) = sample(EventType::TaskCompleted) else {
            unreachable!()
        };
        let t = completed_text(&e);
        assert!(t.starts_with(&e.reply_text));
        assert!(t.contains("blocked requests to: "));
        assert!(t.contains("\n\n---\nTook "));
        assert!(
            ack_text(
                crate::events::ConversationId(1),
                Some(crate::events::ConversationId(2))
            )
            .contains("00000002 had expired")
        );
    }
}
