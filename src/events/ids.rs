//! Identifier newtypes shared by every event family.
//!
//! Event and task ids are uuid v7 (ordered by creation within one process);
//! conversation ids are 8 lowercase hex digits, unique across repos; a stream
//! id names the ordered sub-log an event belongs to. The log orders events by
//! its own sequence number ([`Seq`]), never by these ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Position of an event in the global log. Gapless, starting at 0 (the
/// store-creation event).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

/// Identity of one event (uuid v7), used as causation id by reactions.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
#[serde(transparent)]
pub struct EventId(pub uuid::Uuid);

/// Identity of one task (one run of the agent), uuid v7.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
#[serde(transparent)]
pub struct TaskId(pub uuid::Uuid);

/// A conversation: 8 lowercase hex digits, unique across all repos.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
pub struct ConversationId(pub u32);

/// A repository as named in the config (`repos.<id>`).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
#[serde(transparent)]
pub struct RepoId(pub String);

/// The stream an event belongs to: `server`, `repo/<repo>/<channel>` for
/// intake before a conversation exists, `conv/<id>` for a conversation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(String);

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A conversation id must be exactly 8 hex digits (as in `[ID:1a2b3c4d]`).
    #[error("conversation id {0:?} is not 8 hex digits")]
    Conversation(String),
    /// A stream id must be 1..=255 bytes of printable ASCII without NUL.
    #[error("stream id {0:?} must be 1 to 255 printable ASCII characters")]
    Stream(String),
    /// A uuid could not be parsed.
    #[error("{0:?} is not a uuid")]
    Uuid(String),
}

// === impl Seq ===

impl Seq {
    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl EventId ===

impl EventId {
    /// A fresh v7 id.
    pub fn new() -> Self {
        EventId(uuid::Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl TaskId ===

impl TaskId {
    /// A fresh v7 id.
    pub fn new() -> Self {
        TaskId(uuid::Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(TaskId)
            .map_err(|_| IdError::Uuid(s.to_owned()))
    }
}

// === impl ConversationId ===

impl ConversationId {
    /// A random id. Callers check uniqueness against the conversations
    /// projection before using it.
    pub fn random() -> Self {
        ConversationId(rand::random())
    }

    /// The stream that holds everything about this conversation.
    pub fn stream(&self) -> StreamId {
        StreamId(format!("conv/{self}"))
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl FromStr for ConversationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::Conversation(s.to_owned()));
        }
        u32::from_str_radix(&s.to_ascii_lowercase(), 16)
            .map(ConversationId)
            .map_err(|_| IdError::Conversation(s.to_owned()))
    }
}

impl Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// === impl RepoId ===

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl StreamId ===

impl StreamId {
    /// The server's own stream (store creation, config generations, boot).
    pub fn server() -> Self {
        StreamId("server".to_owned())
    }

    /// Intake on one channel of one repo, before a conversation exists.
    pub fn channel(repo: &RepoId, channel: &str) -> Self {
        StreamId(format!("repo/{}/{}", repo.0, channel))
    }

    /// Checks and wraps a stream id read from outside (CLI, API, disk).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..0x7f).contains(&b));
        if ok {
            Ok(StreamId(s.to_owned()))
        } else {
            Err(IdError::Stream(s.to_owned()))
        }
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The conversation this stream belongs to, if it is a conversation stream.
    pub fn conversation(&self) -> Option<ConversationId> {
        self.0.strip_prefix("conv/").and_then(|s| s.parse().ok())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_round_trip_and_reject_junk() {
        let id: ConversationId = "1A2b3c4D".parse().unwrap();
        assert_eq!(id.to_string(), "1a2b3c4d");
        assert_eq!(id.stream().conversation(), Some(id));
        for bad in [
            "",
            "1234567",
            "123456789",
            "zzzzzzzz",
            "+1234567",
            "1234 567",
        ] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn stream_ids_reject_control_bytes_and_spaces() {
        assert!(StreamId::parse("conv/1a2b3c4d").is_ok());
        for bad in ["", "a b", "a\0b", "é", &"x".repeat(256)] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
