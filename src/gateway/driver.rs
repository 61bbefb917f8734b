//! Running one task: the traits the gateway drives (the sandbox behind
//! [`TaskRunner`], a channel's replies behind [`ReplySink`], workspaces
//! behind [`Workspace`]) and the run itself: `task.started`, the runner,
//! one automatic fresh-session retry when a resumed session cannot be
//! continued, and the text of the reply.
//!
//! Called by [`super::Gateway`]. Must never: retry a new conversation's
//! run (nothing to lose context from), pass `--effort` on the recovery
//! retry (the reference drops it), or decide anything from the wall clock.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::events::{ConversationId, ReplyKind, RepoId, TaskId, TaskOutcome};
use crate::workspace::{ConversationDirs, RepoWorkspace, WorkspaceError};

/// A boxed future, for the object-safe traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the gateway asks the sandbox to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The task (the sandbox tags its events and proxy traffic with it).
    pub task: TaskId,
    /// Its conversation (the stream the sandbox appends to).
    pub conversation: ConversationId,
    /// Its repo.
    pub repo: RepoId,
    /// 1, or 2 for a re-run.
    pub attempt: u32,
    /// The conversation's directories to mount.
    pub dirs: ConversationDirs,
    /// The prompt, for stdin.
    pub prompt: String,
    /// `--model`.
    pub model: String,
    /// `--effort`, when set.
    pub effort: Option<String>,
    /// `--resume`, when a session is carried over.
    pub resume_session: Option<String>,
    /// The repo's execution timeout (none: no limit).
    pub timeout: Option<Duration>,
}

/// Token usage of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

/// What a run produced. `outcome` follows the reference's order: timed
/// out, then exit 0 (success), then "Prompt is too long", then an
/// `API Error: 4xx` (session corrupted), else the container failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionResult {
    /// How it ended (`Stopped` when the cancellation token fired).
    pub outcome: TaskOutcome,
    /// Short reason for the operator (exit code, error).
    pub reason: String,
    /// The Claude session id (from the result line, else `system/init`).
    pub session_id: Option<String>,
    /// The text chosen for the reply (success only).
    pub response_text: String,
    /// The last lines of the agent's output, for error replies.
    pub error_summary: Option<String>,
    /// Cost in micro-dollars.
    pub cost_micros: Option<u64>,
    /// Agent turns.
    pub turns: Option<u32>,
    /// Run time as reported (or wall time).
    pub duration_ms: u64,
    /// Tokens.
    pub usage: Usage,
    /// `WebSearch` uses.
    pub web_searches: u32,
    /// `WebFetch` uses.
    pub web_fetches: u32,
    /// Hosts the proxy blocked during the run.
    pub blocked_hosts: Vec<String>,
}

/// Runs the agent for one attempt (the sandbox). Implementations append
/// their own container events, stop the container when `cancel` fires
/// (returning outcome `Stopped`), and never panic on bad output.
pub trait TaskRunner: Send + Sync {
    /// Runs one attempt to its end.
    fn run(&self, req: RunRequest, cancel: CancellationToken) -> BoxFuture<'_, ExecutionResult>;

    /// Stops and removes whatever is left of a task's run after a restart
    /// (its container: the proxy it needed died with the old process).
    /// The default does nothing.
    fn reap(&self, _task: TaskId) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// One reply for a channel to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingReply {
    /// Stable key of the event that caused the reply: a sink that is asked
    /// twice with the same key (a crash between sending and recording)
    /// should make the second delivery harmless, e.g. by deriving the
    /// Message-ID from it.
    pub key: String,
    /// The conversation, if any.
    pub conversation: Option<ConversationId>,
    /// The task it answers, if any.
    pub task: Option<TaskId>,
    /// Acknowledgement, result or error.
    pub kind: ReplyKind,
    /// Who gets it (the sender of the message answered).
    pub to: String,
    /// The message answered (threading).
    pub in_reply_to: String,
    /// All thread keys known for the conversation (References).
    pub thread_keys: Vec<String>,
    /// The subject of the message answered.
    pub subject: String,
    /// The text (Markdown).
    pub text: String,
    /// Files to attach (regular files from the outbox).
    pub attachments: Vec<PathBuf>,
}

/// What a sink reports after delivering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Our own id of the sent message (Message-ID, Slack ts).
    pub message_id: String,
    /// Names of the files attached.
    pub attachments: Vec<String>,
}

/// A reply could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// What went wrong.
    pub message: String,
}

/// A channel's outgoing side, and what the agent is told about it.
pub trait ReplySink: Send + Sync {
    /// The paragraph(s) that open every prompt for this channel.
    fn channel_context(&self) -> String;
    /// Delivers one reply.
    fn send(&self, reply: OutgoingReply) -> BoxFuture<'_, Result<Delivered, SendError>>;
}

/// A repo's workspaces as the gateway needs them.
pub trait Workspace: Send + Sync {
    /// Refreshes the mirror and makes the conversation's directories (a
    /// new conversation gets its clone).
    fn prepare(&self, conv: ConversationId) -> BoxFuture<'_, Result<ConversationDirs, String>>;
    /// The conversation's directories (they may not exist).
    fn dirs(&self, conv: ConversationId) -> ConversationDirs;
    /// Removes a conversation's directories.
    fn remove(&self, conv: ConversationId) -> Result<(), String>;
}

// === impl RepoWorkspace ===

impl Workspace for RepoWorkspace {
    fn prepare(&self, conv: ConversationId) -> BoxFuture<'_, Result<ConversationDirs, String>> {
        Box::pin(async move {
            let step = async {
                self.refresh_mirror().await?;
                let (dirs, _) = self.prepare_conversation(conv).await?;
                Ok::<_, WorkspaceError>(dirs)
            };
            step.await.map_err(|e| e.to_string())
        })
    }

    fn dirs(&self, conv: ConversationId) -> ConversationDirs {
        self.conversation_dirs(conv)
    }

    fn remove(&self, conv: ConversationId) -> Result<(), String> {
        self.remove_conversation(conv).map_err(|e| e.to_string())
    }
}

// === impl ExecutionResult ===

impl ExecutionResult {
    /// A result for a failure around the run (nothing ran).
    pub fn internal(reason: impl Into<String>) -> Self {
        ExecutionResult {
            outcome: TaskOutcome::InternalError,
            reason: reason.into(),
            session_id: None,
            response_text: String::new(),
            error_summary: None,
            cost_micros: None,
            turns: None,
            duration_ms: 0,
            usage: Usage::default(),
            web_searches: 0,
            web_fetches: 0,
            blocked_hosts: Vec::new(),
        }
    }

    /// Whether a resumed run should be retried once in a fresh session.
    pub fn needs_fresh_session(&self) -> bool {
        matches!(
            self.outcome,
            TaskOutcome::PromptTooLong | TaskOutcome::SessionCorrupted
        )
    }
}
