//! Reply events: what airut sent back over a channel, or failed to.

use super::{ConversationId, TaskId, frozen};

frozen! {
    /// A reply was handed to the channel. Durable: a reply recorded as sent
    /// is never sent again.
    pub struct ReplySentV1 {
        /// The conversation.
        pub conversation: ConversationId,
        /// The task it answers, if any (acknowledgements have one too).
        pub task: Option<TaskId>,
        /// `email` or `slack`.
        pub channel: String,
        /// What kind of reply.
        pub kind: ReplyKind,
        /// Our own message id (Message-ID, Slack ts), so replies map back.
        pub message_id: String,
        /// The message it answers.
        pub in_reply_to: String,
        /// Files attached (names).
        pub attachments: Vec<String>,
    }

    /// A reply could not be sent.
    pub struct ReplyFailedV1 {
        /// The conversation.
        pub conversation: ConversationId,
        /// The task it answers, if any.
        pub task: Option<TaskId>,
        /// `email` or `slack`.
        pub channel: String,
        /// What kind of reply.
        pub kind: ReplyKind,
        /// The error.
        pub error: String,
        /// Attempts made.
        pub attempts: u32,
    }

    /// A channel is about to hand a reply to its server (SMTP). Durable,
    /// appended before the first byte is sent: a `reply.started` without a
    /// `reply.sent` or `reply.failed` for the same key means a crash
    /// happened mid-send, and the reply may or may not have been delivered.
    /// It is then not sent again (at most once), and the outcome is
    /// recorded as `reply.failed`.
    pub struct ReplyStartedV1 {
        /// The conversation.
        pub conversation: ConversationId,
        /// The task it answers, if any.
        pub task: Option<TaskId>,
        /// `email` or `slack`.
        pub channel: String,
        /// What kind of reply.
        pub kind: ReplyKind,
        /// The reply's idempotency key (one reply per key, ever).
        pub key: String,
        /// Our own message id the reply is sent with.
        pub message_id: String,
    }

    /// The kinds of reply.
    pub enum ReplyKind {
        /// "Got it, working on it" for a new conversation.
        Acknowledgement,
        /// The agent's answer.
        Result,
        /// An error report.
        Error,
    }
}
