//! The prompt: the channel's context, the subject of a new conversation,
//! a note about saved attachments, then every message the task answers,
//! each under a `[sender time]` line (follow-ups coalesced into the task
//! included). Also the recovery prompt for the fresh-session retry.
//!
//! Pure: text in, text out. Called by [`super::Gateway`] when it starts a
//! task.

use crate::events::TaskOutcome;

/// How much of the last answer the recovery prompt quotes.
const RECOVERY_QUOTE_CHARS: usize = 3000;

/// One message as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    /// The sender as shown (e.g. the From header).
    pub sender_display: String,
    /// When the gateway received it (µs since the epoch).
    pub received_us: i64,
    /// The text.
    pub body: String,
}

/// The prompt for a task.
///
/// `subject` is given only for a new conversation; `attachments` are the
/// names saved to `/inbox` for this task.
pub fn build(
    channel_context: &str,
    subject: Option<&str>,
    attachments: &[String],
    messages: &[PromptMessage],
) -> String {
    let mut ctx = channel_context.trim_end().to_owned();
    if let Some(s) = subject.map(str::trim).filter(|s| !s.is_empty()) {
        ctx.push_str("\n\nSubject: ");
        ctx.push_str(s);
    }
    if !attachments.is_empty() {
        ctx.push_str(" The user attached files, which were saved to /inbox/: ");
        ctx.push_str(&attachments.join(", "));
        ctx.push('.');
    }
    format!("{ctx}\n\n{}", body(messages))
}

/// The messages under their `[sender time]` lines.
pub fn body(messages: &[PromptMessage]) -> String {
    messages
        .iter()
        .map(|m| {
            format!(
                "[{} {}]\n{}",
                m.sender_display,
                utc(m.received_us),
                m.body.trim_end()
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The prompt for the one retry in a fresh session after the resumed
/// session could not be continued.
pub fn recovery(
    channel_context: &str,
    last_response: Option<&str>,
    messages: &[PromptMessage],
) -> String {
    let mut parts = vec![channel_context.trim_end().to_owned(), String::new()];
    parts.push(
        "IMPORTANT: the previous session of this conversation could not be resumed (its context \
         grew past the model's limit, or the session state was unusable). This is a fresh \
         session. The workspace may still hold work in progress from the previous session."
            .to_owned(),
    );
    if let Some(last) = last_response.filter(|t| !t.trim().is_empty()) {
        parts.push(String::new());
        parts.push("Your last reply to the user was:".to_owned());
        parts.push("---".to_owned());
        let cut: String = last.chars().take(RECOVERY_QUOTE_CHARS).collect();
        if cut.len() < last.len() {
            parts.push(format!("{cut}\n\n[...truncated]"));
        } else {
            parts.push(cut);
        }
        parts.push("---".to_owned());
    }
    parts.push(String::new());
    parts.push(
        "Tell the user plainly that the earlier context was lost, ask for clarification if the \
         state of the conversation is unclear, and look at the workspace (git status, recent \
         files) to understand the ongoing work."
            .to_owned(),
    );
    parts.push(String::new());
    parts.push("The user's message:".to_owned());
    parts.push(body(messages));
    parts.join("\n")
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Model for a task: a new conversation takes the sender's hint, else the
/// repo's; a resumed one keeps its own (a hint is ignored), falling back
/// to the repo's current model.
pub fn model(
    stored: Option<&str>,
    hint: Option<&str>,
    repo_model: &str,
    new_conversation: bool,
) -> String {
    let pick = if new_conversation {
        hint.or(stored)
    } else {
        stored
    };
    pick.filter(|m| !m.trim().is_empty())
        .unwrap_or(repo_model)
        .to_owned()
}

/// Effort for a task: the conversation's, else the repo's.
pub fn effort(stored: Option<&str>, repo_effort: Option<&str>) -> Option<String> {
    stored
        .or(repo_effort)
        .filter(|e| !e.trim().is_empty())
        .map(str::to_owned)
}

/// Whether this outcome, after a resumed run, calls for the fresh-session retry.
pub fn retry_in_fresh_session(outcome: &TaskOutcome, resumed: bool) -> bool {
    resumed
        && matches!(
            outcome,
            TaskOutcome::PromptTooLong | TaskOutcome::SessionCorrupted
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> PromptMessage {
        PromptMessage {
            sender_display: "Alice <alice@example.com>".to_owned(),
            received_us: 1_787_421_046_123_000,
            body: body.to_owned(),
        }
    }

    #[test]
    fn prompt_has_context_subject_attachments_and_attributed_messages() {
        let p = build(
            "You talk by email.",
            Some("Fix the build"),
            &["a.txt".to_owned(), "b.pdf".to_owned()],
            &[msg("Please fix it."), msg("Also the tests.")],
        );
        assert_eq!(
            p,
            "You talk by email.\n\nSubject: Fix the build The user attached files, which were saved to /inbox/: a.txt, b.pdf.\n\n\
             [Alice <alice@example.com> 2026-08-22 17:50:46 UTC]\nPlease fix it.\n\n\
             [Alice <alice@example.com> 2026-08-22 17:50:46 UTC]\nAlso the tests."
        );
        let resumed = build("Ctx", None, &[], &[msg("more")]);
        assert!(!resumed.contains("Subject:"));
    }

    #[test]
    fn recovery_prompt_quotes_a_truncated_last_reply() {
        let long = "x".repeat(5000);
        let p = recovery("Ctx", Some(&long), &[msg("next")]);
        assert!(p.starts_with("Ctx\n\nIMPORTANT:"));
        assert!(p.contains("[...truncated]"));
        assert!(p.ends_with(
            "The user's message:\n[Alice <alice@example.com> 2026-08-22 17:50:46 UTC]\nnext"
        ));
        assert!(!recovery("Ctx", None, &[msg("n")]).contains("---"));
    }

    #[test]
    fn model_and_effort_rules() {
        assert_eq!(model(None, Some("sonnet"), "opus", true), "sonnet");
        assert_eq!(model(Some("haiku"), Some("sonnet"), "opus", false), "haiku");
        assert_eq!(model(None, Some("sonnet"), "opus", false), "opus");
        assert_eq!(model(Some(""), None, "opus", false), "opus");
        assert_eq!(effort(None, Some("high")).as_deref(), Some("high"));
        assert_eq!(effort(Some("low"), Some("high")).as_deref(), Some("low"));
        assert!(retry_in_fresh_session(&TaskOutcome::PromptTooLong, true));
        assert!(!retry_in_fresh_session(&TaskOutcome::PromptTooLong, false));
    }

    #[test]
    fn utc_formats_epoch_and_leap_days() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
    }
}
