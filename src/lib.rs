//! airut: a self-hosted gateway that runs Claude Code agents in sandboxes and
//! talks to people over email and Slack.
//!
//! The server is event-sourced: every fact is appended to one ordered log
//! ([`log`]) before anything depends on it, and every read model is a fold
//! over that log ([`projections`]). See `doc/architecture.md` for the map of
//! modules and how they talk to each other.

pub mod audit;
pub mod channels;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod gateway;
pub mod log;
#[path = "../migrations/mod.rs"]
pub mod migrations;
pub mod projections;
pub mod proxy;
pub mod runtime;
pub mod sandbox;
pub mod workspace;
