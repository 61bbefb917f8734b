//! The event catalogue: every fact airut records, as past-tense event types.
//!
//! Each event type has a stable numeric code and a schema version. The
//! payload of each (type, version) is a frozen struct encoded with rkyv; the
//! log stores the code and version in its own header, outside the payload
//! (see `log::codec`). Once a version ships in a tagged release its struct is
//! never edited: a change is a new struct (`FooV2`), the [`Event`] variant
//! moves to it, and an upcaster in `migrations/` turns old payloads into the
//! new one. Golden bytes of every (type, version) live in
//! `fixtures/events/` and are checked by tests.
//!
//! This module does no I/O and keeps no clock; it only describes and encodes.
//! One file per family; the list in [`catalogue!`] below is the index, and
//! `doc/events.md` describes every entry with its durability class.

use serde::{Deserialize, Serialize};

pub mod container;
pub mod conversation;
pub mod hex32;
pub mod ids;
pub mod image;
pub mod message;
pub mod network;
pub mod reply;
pub mod samples;
pub mod server;
mod summary;
pub mod task;

pub use container::*;
pub use conversation::*;
pub use ids::*;
pub use image::*;
pub use message::*;
pub use network::*;
pub use reply::*;
pub use server::*;
pub use task::*;

/// What is on disk when an append of this class returns.
///
/// A batch takes the strictest class of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Durability {
    /// Written to the OS (survives a crash of airut, not of the machine) when
    /// the append returns, and fsynced by the log within its flush interval
    /// (100 ms by default). For high-rate facts that can be lost on power
    /// failure without harm: container output, proxy requests, DNS queries.
    Buffered,
    /// fsynced before the append returns. Concurrent durable appends share one
    /// fsync (group commit). For facts an outside party is told about:
    /// an inbound message before it is deleted or acked, a reply sent.
    Durable,
}

/// Why a payload could not be decoded.
///
/// The log wraps this with the sequence number it was read at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The code is not in this build's catalogue: the store was written by a
    /// newer airut. Upgrade airut to read it.
    #[error("unknown event type code {0}")]
    UnknownType(u16),
    /// The version is newer than this build knows, or no upcaster exists for
    /// it. Upgrade airut, or add the missing upcaster in `migrations/`.
    #[error("event type {name} has no schema version {version} in this build")]
    UnknownVersion {
        /// The event type's name.
        name: &'static str,
        /// The schema version found.
        version: u16,
    },
    /// The bytes do not validate as the frozen struct of that (type,
    /// version): the value is corrupt. `airut check` reports every such seq.
    #[error("payload of {name} v{version} is invalid: {reason}")]
    Invalid {
        /// The event type's name.
        name: &'static str,
        /// The schema version found.
        version: u16,
        /// rkyv's validation message.
        reason: String,
    },
}

/// Encoding a payload failed (rkyv could not allocate or serialise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {name}: {reason}")]
pub struct EncodeError {
    /// The event type's name.
    pub name: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// Declares the catalogue: for each event, its variant, its current payload
/// struct, its numeric code (never reused), its current schema version, its
/// durability class and its external name.
macro_rules! catalogue {
    ($( $variant:ident($ty:ty) = $code:literal, ver $ver:literal, $dur:ident, $name:literal; )*) => {
        /// One event, in its current (latest-version) shape.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data")]
        pub enum Event {
            $(
                #[doc = concat!("`", $name, "` (code ", stringify!($code), ")")]
                #[serde(rename = $name)]
                $variant($ty),
            )*
        }

        /// The kind of an event, with its stable numeric code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum EventType {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant = $code,
            )*
        }

        // === impl EventType ===

        impl EventType {
            /// Every event type, in catalogue order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            /// The stable numeric code stored in the log header.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The event type for a stored code, if this build knows it.
            pub fn from_code(code: u16) -> Option<EventType> {
                match code {
                    $($code => Some(EventType::$variant),)*
                    _ => None,
                }
            }

            /// The external name (`message.received`, ...), used in JSON and docs.
            pub fn name(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }

            /// The type for an external name.
            pub fn from_name(name: &str) -> Option<EventType> {
                match name {
                    $($name => Some(EventType::$variant),)*
                    _ => None,
                }
            }

            /// The schema version new events of this type are written with.
            pub fn current_version(self) -> u16 {
                match self {
                    $(EventType::$variant => $ver,)*
                }
            }

            /// The durability class of this type (see [`Durability`]).
            pub fn durability(self) -> Durability {
                match self {
                    $(EventType::$variant => Durability::$dur,)*
                }
            }
        }

        // === impl Event ===

        impl Event {
            /// The type of this event.
            pub fn event_type(&self) -> EventType {
                match self {
                    $(Event::$variant(_) => EventType::$variant,)*
                }
            }

            /// Encodes the payload as its current frozen struct.
            pub fn encode(&self) -> Result<rkyv::util::AlignedVec, EncodeError> {
                let result = match self {
                    $(Event::$variant(p) => rkyv::to_bytes::<rkyv::rancor::Error>(p),)*
                };
                result.map_err(|e| EncodeError {
                    name: self.event_type().name(),
                    reason: e.to_string(),
                })
            }

            /// Decodes a payload stored as (code, version). The bytes are
            /// fully validated, never trusted. They should be 16-byte
            /// aligned (the log copies values into an `AlignedVec`); a
            /// misaligned slice is copied to aligned memory first, so the
            /// result never depends on where the caller's buffer landed.
            /// Older versions go through the upcasters registered in
            /// `migrations/`.
            pub fn decode(code: u16, version: u16, bytes: &[u8]) -> Result<Event, PayloadError> {
                let ty = EventType::from_code(code).ok_or(PayloadError::UnknownType(code))?;
                let copy;
                let bytes = if bytes.as_ptr().align_offset(PAYLOAD_ALIGN) == 0 {
                    bytes
                } else {
                    copy = aligned_copy(bytes);
                    copy.as_slice()
                };
                if version != ty.current_version() {
                    return crate::migrations::upcast(ty, version, bytes);
                }
                match ty {
                    $(EventType::$variant => decode_frozen::<$ty>(ty, version, bytes).map(Event::$variant),)*
                }
            }
        }
    };
}

catalogue! {
    StoreCreated(StoreCreatedV1) = 1, ver 1, Durable, "store.created";
    ConfigLoaded(ConfigLoadedV1) = 2, ver 1, Durable, "config.loaded";
    ServerStarted(ServerStartedV1) = 3, ver 1, Durable, "server.started";
    ServerStopped(ServerStoppedV1) = 4, ver 1, Durable, "server.stopped";
    RepoBooted(RepoBootedV1) = 5, ver 1, Durable, "repo.booted";
    ChannelHealthChanged(ChannelHealthChangedV1) = 6, ver 1, Buffered, "channel.health_changed";
    ConfigRejected(ConfigRejectedV1) = 7, ver 1, Durable, "config.rejected";

    MessageReceived(MessageReceivedV1) = 100, ver 1, Durable, "message.received";
    MessageRejected(MessageRejectedV1) = 101, ver 1, Durable, "message.rejected";
    MessageDismissed(MessageDismissedV1) = 102, ver 1, Durable, "message.dismissed";

    ConversationStarted(ConversationStartedV1) = 200, ver 1, Durable, "conversation.started";
    ConversationResumed(ConversationResumedV1) = 201, ver 1, Durable, "conversation.resumed";
    ConversationExpired(ConversationExpiredV1) = 202, ver 1, Durable, "conversation.expired";

    TaskQueued(TaskQueuedV1) = 300, ver 1, Durable, "task.queued";
    TaskCoalesced(TaskCoalescedV1) = 301, ver 1, Durable, "task.coalesced";
    TaskStarted(TaskStartedV1) = 302, ver 1, Durable, "task.started";
    TaskCompleted(TaskCompletedV1) = 303, ver 1, Durable, "task.completed";
    TaskInterrupted(TaskInterruptedV1) = 304, ver 1, Durable, "task.interrupted";
    TaskStopRequested(TaskStopRequestedV1) = 320, ver 1, Durable, "task.stop_requested";

    ImageBuildStarted(ImageBuildStartedV1) = 400, ver 1, Buffered, "image.build_started";
    ImageBuildOutput(ImageBuildOutputV1) = 401, ver 1, Buffered, "image.build_output";
    ImageBuildFinished(ImageBuildFinishedV1) = 402, ver 1, Durable, "image.build_finished";
    ImagePruned(ImagePrunedV1) = 403, ver 1, Buffered, "image.pruned";
    ImageReused(ImageReusedV1) = 404, ver 1, Buffered, "image.reused";
    ClaudeBinaryPruned(ClaudeBinaryPrunedV1) = 405, ver 1, Buffered, "image.claude_binary_pruned";

    ContainerCreated(ContainerCreatedV1) = 500, ver 1, Durable, "container.created";
    ContainerStarted(ContainerStartedV1) = 501, ver 1, Durable, "container.started";
    ContainerOutput(ContainerOutputV1) = 502, ver 1, Buffered, "container.output";
    ContainerExited(ContainerExitedV1) = 503, ver 1, Durable, "container.exited";
    ContainerStopped(ContainerStoppedV1) = 504, ver 1, Durable, "container.stopped";
    ContainerOutputBlob(ContainerOutputBlobV1) = 505, ver 1, Buffered, "container.output_blob";

    ProxyRequest(ProxyRequestV1) = 600, ver 1, Buffered, "network.request";
    DnsQuery(DnsQueryV1) = 601, ver 1, Buffered, "network.dns_query";

    ReplySent(ReplySentV1) = 700, ver 1, Durable, "reply.sent";
    ReplyFailed(ReplyFailedV1) = 701, ver 1, Durable, "reply.failed";
    ReplyStarted(ReplyStartedV1) = 710, ver 1, Durable, "reply.started";
}

/// The alignment rkyv payloads are decoded at (that of `AlignedVec`).
const PAYLOAD_ALIGN: usize = 16;

fn aligned_copy(bytes: &[u8]) -> rkyv::util::AlignedVec<PAYLOAD_ALIGN> {
    let mut copy = rkyv::util::AlignedVec::<PAYLOAD_ALIGN>::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    copy
}

/// Validates `bytes` as the archived form of `T` and deserialises it.
pub(crate) fn decode_frozen<T>(ty: EventType, version: u16, bytes: &[u8]) -> Result<T, PayloadError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    rkyv::from_bytes::<T, rkyv::rancor::Error>(bytes).map_err(|e| PayloadError::Invalid {
        name: ty.name(),
        version,
        reason: e.to_string(),
    })
}

/// Applies the serde and rkyv derives every frozen payload struct needs.
macro_rules! frozen {
    ($($item:item)*) => {
        $(
            #[derive(
                Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize,
                rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
            )]
            $item
        )*
    };
}
pub(crate) use frozen;
