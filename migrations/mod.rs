//! Migrations between storage layouts, and upcasters for old event versions.
//!
//! A store records its layout version in its `meta` keyspace. On open, the
//! log runs the steps in [`LAYOUT_STEPS`] from the stored version up to
//! [`CURRENT_LAYOUT`], in order; a store newer than this build is refused.
//! Migrations never rewrite stored events (the hash chains cover them): old
//! event versions are upcast when read, by [`upcast`].
//!
//! Layout history:
//! * 1: the first layout (events by big-endian seq, stream index, meta).

use crate::events::{Event, EventType, PayloadError};

/// The layout this build writes.
pub const CURRENT_LAYOUT: u32 = 1;

/// Turns a payload stored with an older schema version into the current
/// [`Event`]. Every (type, version) that ever shipped and is not current must
/// have an arm here.
pub fn upcast(ty: EventType, version: u16, _bytes: &[u8]) -> Result<Event, PayloadError> {
    // No event type has a second version yet: every stored version is current.
    Err(PayloadError::UnknownVersion {
        name: ty.name(),
        version,
    })
}
