//! Channels: where messages come from and replies go (email, Slack).
//!
//! A channel is a source (it appends `MessageReceived` durably, then
//! acknowledges upstream) and a sink (it sends replies and records the
//! outcome). Channels know nothing of containers. Filled by the email and
//! Slack issues.

pub mod email;
pub mod slack;
