//! Task events: one run of the agent for a conversation, from queue to
//! outcome.

use super::{ConversationId, EventId, RepoId, TaskId, frozen};

frozen! {
    /// A task was queued for a conversation.
    pub struct TaskQueuedV1 {
        /// The task.
        pub task: TaskId,
        /// Its conversation.
        pub conversation: ConversationId,
        /// Its repo.
        pub repo: RepoId,
        /// The `message.received` events it answers.
        pub messages: Vec<EventId>,
        /// The model to run.
        pub model: String,
        /// Effort level, when set.
        pub effort: Option<String>,
    }

    /// A follow-up message was folded into an already queued task.
    pub struct TaskCoalescedV1 {
        /// The queued task that takes it.
        pub task: TaskId,
        /// The `message.received` event folded in.
        pub message: EventId,
    }

    /// A task began running.
    pub struct TaskStartedV1 {
        /// The task.
        pub task: TaskId,
        /// 1 for the first run; 2 for the one re-run after a crash or a
        /// fresh-session retry.
        pub attempt: u32,
        /// The Claude session resumed, if any.
        pub resume_session: Option<String>,
        /// The prompt as given to the agent.
        pub prompt: String,
    }

    /// A task ended.
    pub struct TaskCompletedV1 {
        /// The task.
        pub task: TaskId,
        /// How it ended.
        pub outcome: TaskOutcome,
        /// Human-readable reason (error summary, stop cause).
        pub reason: String,
        /// The Claude session id reported by the agent.
        pub session_id: Option<String>,
        /// The text selected for the reply.
        pub reply_text: String,
        /// Cost in micro-dollars, as reported.
        pub cost_micros: Option<u64>,
        /// Agent turns.
        pub turns: Option<u32>,
        /// Wall time of the run.
        pub duration_ms: u64,
        /// Token usage.
        pub input_tokens: u64,
        /// Token usage.
        pub output_tokens: u64,
        /// Token usage: tokens written to the prompt cache.
        pub cache_creation_input_tokens: u64,
        /// Token usage: tokens read from the prompt cache.
        pub cache_read_input_tokens: u64,
        /// `WebSearch` tool uses (shown in the reply's usage footer).
        pub web_searches: u32,
        /// `WebFetch` tool uses (shown in the reply's usage footer).
        pub web_fetches: u32,
        /// Hosts the proxy blocked during the run.
        pub blocked_hosts: Vec<String>,
    }

    /// Someone asked to stop a queued or running task (the dashboard's Stop
    /// button). Durable: the gateway acts on it (stops the container, ends
    /// the task as `Stopped`); the request itself changes nothing else.
    pub struct TaskStopRequestedV1 {
        /// The task.
        pub task: TaskId,
        /// Who asked: `dashboard:<user>` for a reverse-proxy user,
        /// `dashboard:token`, `dashboard:local` (loopback without auth).
        pub requested_by: String,
        /// Why, as given (may be empty).
        pub reason: String,
    }

    /// How a task ended.
    pub enum TaskOutcome {
        /// The agent finished.
        Succeeded,
        /// The agent reported an error.
        Failed,
        /// The execution timeout elapsed; partial output kept.
        TimedOut,
        /// An operator or user stopped it.
        Stopped,
        /// The server went away while it ran (crash or shutdown).
        Interrupted,
        /// The prompt was too long for the model.
        PromptTooLong,
        /// The resumed session could not be loaded.
        SessionCorrupted,
        /// The container could not be built, started or exited abnormally.
        ContainerFailed,
        /// airut itself failed around the run (workspace clone, mirror
        /// update, allowlist parse, Claude binary fetch); `reason` says which.
        InternalError,
    }

    /// A task's run was cut off (the server crashed or shut down while it
    /// ran). With `rerun` it goes back to the queue and runs once more
    /// (resuming its Claude session when one was recorded); without, a
    /// `task.completed` with outcome `Interrupted` follows.
    pub struct TaskInterruptedV1 {
        /// The task.
        pub task: TaskId,
        /// The attempt that was cut off.
        pub attempt: u32,
        /// Whether the task runs again.
        pub rerun: bool,
        /// What happened (crash found at boot, shutdown deadline passed).
        pub reason: String,
    }
}
