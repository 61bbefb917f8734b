//! What templates show, made from projection state: plain strings and
//! numbers, formatted once here (times in UTC, durations, dollars), so
//! templates only lay them out. Everything from outside stays raw text
//! here; askama escapes it on output.

use crate::events::{ChannelHealth, TaskOutcome};
use crate::projections::{Repo, Task, TaskState, TodoProgress};

/// Longest title shown on a card (the full one goes in `title=`).
const MAX_TITLE: usize = 60;

/// A task as a card or a row.
#[derive(Debug, Clone)]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// First 8 characters of the id.
    pub short_id: String,
    /// Conversation id.
    pub conversation: String,
    /// Repo id.
    pub repo: String,
    /// Subject of the conversation (may be empty).
    pub title: String,
    /// Title cut for cards.
    pub short_title: String,
    /// `queued`, `running` or `done`.
    pub state: &'static str,
    /// Badge text: `RUNNING`, `DONE - Succeeded`, ...
    pub badge: String,
    /// CSS class of the badge.
    pub badge_class: &'static str,
    /// The model.
    pub model: String,
    /// Effort, or empty.
    pub effort: String,
    /// Attempt number.
    pub attempt: u32,
    /// Queue time.
    pub queued_at: String,
    /// Start time, or `-`.
    pub started_at: String,
    /// End time, or `-`.
    pub completed_at: String,
    /// "Waiting: 3s", "Running: 1m 2s", "Took: 5s".
    pub time_label: String,
    /// Cost, or `-`.
    pub cost: String,
    /// Turns, or `-`.
    pub turns: String,
    /// Token usage line (empty when none).
    pub tokens: String,
    /// Why it ended that way (may be empty).
    pub reason: String,
    /// Todo progress, if the agent keeps a list.
    pub todos: Option<TodoView>,
    /// Stop requested: by whom, when.
    pub stop_requested: Option<String>,
    /// Whether the Stop button applies.
    pub can_stop: bool,
    /// Output lines so far.
    pub output_lines: u64,
    /// Hosts the proxy blocked.
    pub blocked_hosts: Vec<String>,
    /// Container exit (code, OOM).
    pub exit: String,
}

/// A todo list.
#[derive(Debug, Clone)]
pub struct TodoView {
    /// Completed items.
    pub completed: u32,
    /// All items.
    pub total: u32,
    /// Percentage done (0 to 100).
    pub percent: u32,
    /// (status, text) per item.
    pub items: Vec<(String, String)>,
}

/// A repo with its health.
#[derive(Debug, Clone)]
pub struct RepoView {
    /// Repo id.
    pub id: String,
    /// `live`, `failed`, `booting`.
    pub status: &'static str,
    /// Boot error, if any.
    pub error: String,
    /// When it booted.
    pub booted_at: String,
    /// Channels: (name, health, css class, detail, since).
    pub channels: Vec<ChannelView>,
}

/// One channel's health.
#[derive(Debug, Clone)]
pub struct ChannelView {
    /// `email`, `slack`.
    pub name: String,
    /// `healthy`, `degraded`, ...
    pub health: &'static str,
    /// Detail for the operator.
    pub detail: String,
    /// Since when.
    pub since: String,
}

// === impl TaskView ===

impl TaskView {
    /// The view of `t`, with its conversation's `title`, at time `now_us`.
    pub fn new(t: &Task, title: &str, now_us: i64) -> Self {
        let state = match t.state {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Done => "done",
        };
        let (badge, badge_class) = match (&t.state, &t.outcome) {
            (TaskState::Queued, _) => ("QUEUED".to_owned(), "badge-queued"),
            (TaskState::Running, _) => ("RUNNING".to_owned(), "badge-running"),
            (TaskState::Done, Some(TaskOutcome::Succeeded)) => {
                ("DONE - Succeeded".to_owned(), "badge-ok")
            }
            (TaskState::Done, Some(o)) => (format!("DONE - {}", outcome_label(o)), "badge-failed"),
            (TaskState::Done, None) => ("DONE".to_owned(), "badge-failed"),
        };
        let time_label = match t.state {
            TaskState::Queued => {
                format!("Waiting: {}", duration_us(now_us - t.queued.timestamp_us))
            }
            TaskState::Running => format!(
                "Running: {}",
                duration_us(now_us - t.started_at_us.unwrap_or(now_us))
            ),
            TaskState::Done => match t.duration_ms {
                Some(ms) => format!("Took: {}", duration_ms(ms)),
                None => format!(
                    "Took: {}",
                    duration_us(
                        t.completed_at_us.unwrap_or(now_us) - t.started_at_us.unwrap_or(now_us)
                    )
                ),
            },
        };
        let mut tokens = Vec::new();
        for (label, v) in [
            ("in", t.input_tokens),
            ("out", t.output_tokens),
            ("cache write", t.cache_creation_input_tokens),
            ("cache read", t.cache_read_input_tokens),
        ] {
            if let Some(v) = v.filter(|v| *v > 0) {
                tokens.push(format!("{} {label}", thousands(v)));
            }
        }
        let exit = match (t.exit_code, t.oom_killed) {
            (Some(c), true) => format!("exit {c} (killed for memory)"),
            (Some(c), false) => format!("exit {c}"),
            (None, _) => String::new(),
        };
        TaskView {
            id: t.id.to_string(),
            short_id: short_id(&t.id.to_string()),
            conversation: t.conversation.to_string(),
            repo: t.repo.0.clone(),
            title: title.to_owned(),
            short_title: truncate(title, MAX_TITLE),
            state,
            badge,
            badge_class,
            model: t.model.clone(),
            effort: t.effort.clone().unwrap_or_default(),
            attempt: t.attempt,
            queued_at: time(t.queued.timestamp_us),
            started_at: t.started_at_us.map(time).unwrap_or_else(|| "-".into()),
            completed_at: t.completed_at_us.map(time).unwrap_or_else(|| "-".into()),
            time_label,
            cost: t.cost_micros.map(dollars).unwrap_or_else(|| "-".into()),
            turns: t.turns.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            tokens: tokens.join(", "),
            reason: t.reason.clone().unwrap_or_default(),
            todos: t.todos.as_ref().map(TodoView::new),
            stop_requested: t.stop_requested.as_ref().map(|s| {
                let mut out = format!("{} at {}", s.by, time(s.at.timestamp_us));
                if !s.reason.is_empty() {
                    out.push_str(": ");
                    out.push_str(&s.reason);
                }
                out
            }),
            can_stop: t.state != TaskState::Done,
            output_lines: t.output_lines,
            blocked_hosts: t.blocked_hosts.clone(),
            exit,
        }
    }
}

// === impl TodoView ===

impl TodoView {
    fn new(p: &TodoProgress) -> Self {
        TodoView {
            completed: p.completed,
            total: p.total,
            percent: (p.completed * 100).checked_div(p.total).unwrap_or(0),
            items: p
                .items
                .iter()
                .map(|i| {
                    let text = if i.status == "in_progress" {
                        i.active_form.clone().unwrap_or_else(|| i.content.clone())
                    } else {
                        i.content.clone()
                    };
                    (i.status.clone(), text)
                })
                .collect(),
        }
    }
}

// === impl RepoView ===

impl RepoView {
    /// The view of a repo.
    pub fn new(r: &Repo) -> Self {
        let (status, error, booted_at) = match &r.boot {
            Some(b) if b.ok => ("live", String::new(), time(b.at.timestamp_us)),
            Some(b) => (
                "failed",
                b.error.clone().unwrap_or_default(),
                time(b.at.timestamp_us),
            ),
            None => ("booting", String::new(), "-".into()),
        };
        RepoView {
            id: r.repo.0.clone(),
            status,
            error,
            booted_at,
            channels: r
                .channels
                .iter()
                .map(|(name, c)| ChannelView {
                    name: name.clone(),
                    health: match c.health {
                        ChannelHealth::Starting => "starting",
                        ChannelHealth::Healthy => "healthy",
                        ChannelHealth::Degraded => "degraded",
                        ChannelHealth::Failed => "failed",
                    },
                    detail: c.detail.clone(),
                    since: time(c.since.timestamp_us),
                })
                .collect(),
        }
    }
}

/// The last 8 characters of an id: uuid v7 ids begin with their
/// timestamp, so ids made close together share their first characters.
pub fn short_id(id: &str) -> String {
    let n = id.chars().count();
    id.chars().skip(n.saturating_sub(8)).collect()
}

/// Words for an outcome.
pub fn outcome_label(o: &TaskOutcome) -> &'static str {
    match o {
        TaskOutcome::Succeeded => "Succeeded",
        TaskOutcome::Failed => "Failed",
        TaskOutcome::TimedOut => "Timed out",
        TaskOutcome::Stopped => "Stopped",
        TaskOutcome::Interrupted => "Interrupted",
        TaskOutcome::PromptTooLong => "Prompt too long",
        TaskOutcome::SessionCorrupted => "Session corrupted",
        TaskOutcome::ContainerFailed => "Container failed",
        TaskOutcome::InternalError => "Internal error",
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(us: i64) -> String {
    let s = crate::audit::format_time(us);
    let mut out: String = s.chars().take(19).collect();
    out = out.replacen('T', " ", 1);
    out.push_str(" UTC");
    out
}

/// `1h 2m 3s`, `2m 3s`, `3s`; `-` when negative.
pub fn duration_us(us: i64) -> String {
    if us < 0 {
        return "-".into();
    }
    duration_ms(u64::try_from(us / 1000).unwrap_or(0))
}

/// As [`duration_us`], from milliseconds (under 10 s with a tenth).
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h {m}m {sec}s")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else if s < 10 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else {
        format!("{sec}s")
    }
}

/// `$0.0421` from micro-dollars.
pub fn dollars(micros: u64) -> String {
    format!("${}.{:04}", micros / 1_000_000, (micros % 1_000_000) / 100)
}

/// `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// At most `max` characters, with `...` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push_str("...");
        out
    }
}

/// Now, in microseconds since the epoch (for "waiting"/"running" labels).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(duration_ms(3_723_000), "1h 2m 3s");
        assert_eq!(duration_ms(63_000), "1m 3s");
        assert_eq!(duration_ms(2_345), "2.3s");
        assert_eq!(duration_ms(12_345), "12s");
        assert_eq!(duration_us(-1), "-");
        assert_eq!(dollars(42_100), "$0.0421");
        assert_eq!(dollars(1_234_567_800), "$1234.5678");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(truncate("abcdef", 3), "abc...");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
