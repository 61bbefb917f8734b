//! Conversation events: a thread of messages and tasks in one repo, with one
//! Claude session carried across tasks.

use super::{ConversationId, EventId, RepoId, frozen};

frozen! {
    /// A new conversation was opened by a message.
    pub struct ConversationStartedV1 {
        /// The new id (8 hex digits, unique across repos).
        pub conversation: ConversationId,
        /// The repo it works on.
        pub repo: RepoId,
        /// The channel it talks over.
        pub channel: String,
        /// Keys replies will carry (our own Message-IDs, the Slack thread).
        pub thread_keys: Vec<String>,
        /// The `message.received` event that opened it.
        pub message: EventId,
        /// Model chosen for it, when fixed at start.
        pub model: Option<String>,
        /// Effort level chosen for it, when set; later tasks keep it even
        /// if the repo's config changes.
        pub effort: Option<String>,
        /// When the thread referred to an expired conversation, its id.
        pub replaces_expired: Option<ConversationId>,
    }

    /// A message continued an existing conversation.
    pub struct ConversationResumedV1 {
        /// The conversation.
        pub conversation: ConversationId,
        /// The `message.received` event.
        pub message: EventId,
        /// Thread keys this message adds.
        pub thread_keys: Vec<String>,
    }

    /// A conversation idle past the configured age was cleaned up.
    pub struct ConversationExpiredV1 {
        /// The conversation.
        pub conversation: ConversationId,
        /// Sequence number of its last event before expiry.
        pub last_activity_seq: u64,
    }
}
