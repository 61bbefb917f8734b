//! Sandbox: container images, running Claude Code in a container through
//! bollard, stream-json parsing, limits and stop.
//!
//! Knows nothing of email or Slack: the caller (the gateway) hands it a
//! task id, the conversation stream to record into, directories to mount,
//! environment, limits and a prompt; it records every step as events
//! (`image.*`, `container.*`) and returns an [`stream_json::ExecutionResult`].
//! Expected failures (timeout, non-zero exit, out of memory) are results,
//! never errors; errors are for what stopped the run from happening at all
//! (no engine, image build failed, a mount is missing).
//!
//! Files, in the order a task meets them: [`engine`] (find and connect to
//! Podman or Docker), [`probe`] (what `airut check` reports), [`image`]
//! (build and cache the repo image), [`claude_binary`] (the Claude Code
//! binary mounted into the container), [`run`] (one container run),
//! [`lines`] and [`stream_json`] (output), [`recovery`] (containers found
//! after a restart). The in-container init is a separate binary in
//! `init/` (`airut-init`, std and libc only).

pub mod bench;
pub mod claude_binary;
pub mod engine;
pub mod image;
pub mod lines;
pub mod probe;
pub mod recovery;
pub mod run;
pub mod stream_json;

pub use engine::{Engine, EngineError};

/// Runs `job` at once and then every `interval` (a late tick is not made
/// up) until `cancel`: the schedule of the image and Claude Code prunes.
pub fn spawn_every<F, Fut>(
    interval: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
    mut job: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => job().await,
            }
        }
    })
}
pub use run::{Mounts, NetworkMode, RunError, RunRequest, Stopper};
pub use stream_json::{ExecutionResult, Outcome};

/// Label on every container and image airut creates (value `1`).
pub const LABEL_MANAGED: &str = "airut.managed";
/// Label naming the task a container runs.
pub const LABEL_TASK: &str = "airut.task";
/// Label naming the event store (its store id) of the server that made a
/// container: recovery only touches its own, so two servers on one host
/// (separate state dirs) never stop each other's tasks.
pub const LABEL_STORE: &str = "airut.store";
/// Label naming the stream (conversation) a container records into.
pub const LABEL_STREAM: &str = "airut.stream";

/// Where the init is mounted in the container (read-only); the entrypoint.
pub const INIT_PATH: &str = "/opt/airut/init";
/// Where the Claude Code binary is mounted (read-only).
pub const CLAUDE_PATH: &str = "/opt/claude/claude";
