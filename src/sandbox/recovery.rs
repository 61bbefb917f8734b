//! Containers found after a restart.
//!
//! When airut stops without stopping its containers (a crash, a kill, a
//! power cut on the engine's side too), task containers may still be
//! running when it starts again. The choice here is to **stop them, never
//! re-attach** (architecture §6.8): the proxy lives in the server, so a
//! container that outlived the server has been cut off from the network
//! since; its stdout between the crash and now is lost (nobody read it),
//! so the events could not tell its whole story; and its Claude session is
//! on disk in the conversation's `claude/` directory, so the gateway can
//! re-run the task once with `--resume` and lose little work.
//!
//! [`recover`] lists every container labelled `airut.managed=1`. Those
//! whose task the log says is running are stopped (SIGTERM, then SIGKILL
//! after the grace period) and removed, with `container.stopped` (reason
//! `Recovery`) recorded in their stream; they are returned so that the
//! gateway records each task as interrupted and re-runs it once. Any other
//! airut container (its task already ended, or its labels are unreadable)
//! is removed; when its labels name a stream it is recorded there too.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};

use super::engine::Engine;
use super::run::kill;
use super::{LABEL_MANAGED, LABEL_STREAM, LABEL_TASK};
use crate::events::{ContainerStoppedV1, Event, StopReason, StreamId, TaskId};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Tasks the log says were running, whose containers were stopped:
    /// the gateway records them as interrupted and re-runs each once.
    pub interrupted: Vec<(TaskId, StreamId)>,
    /// Containers removed that belonged to no running task.
    pub removed_unknown: Vec<String>,
}

/// Why recovery could not look.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The engine did not list containers.
    #[error("container engine: {0}")]
    Engine(String),
    /// Recording failed.
    #[error("recording recovery failed: {0}")]
    Log(String),
}

/// Stops and removes airut's leftover containers; `running` are the tasks
/// the log says are running.
pub async fn recover(
    engine: &Engine,
    log: &Log,
    running: &HashSet<TaskId>,
    grace: Duration,
) -> Result<RecoveryReport, RecoveryError> {
    let docker = engine.docker();
    let label = format!("{LABEL_MANAGED}=1");
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&HashMap::from([("label", vec![label.as_str()])]))
                .build(),
        ))
        .await
        .map_err(|e| RecoveryError::Engine(format!("list containers: {e}")))?;
    let mut report = RecoveryReport::default();
    let mut to_stop = Vec::new();
    for c in containers {
        let Some(id) = c.id.clone() else { continue };
        let labels = c.labels.clone().unwrap_or_default();
        let task = labels
            .get(LABEL_TASK)
            .and_then(|t| t.parse::<TaskId>().ok());
        let stream = labels
            .get(LABEL_STREAM)
            .and_then(|s| StreamId::parse(s).ok());
        let is_running = matches!(
            c.state,
            Some(ContainerSummaryStateEnum::RUNNING) | Some(ContainerSummaryStateEnum::PAUSED)
        );
        to_stop.push((id, task, stream, is_running));
    }
    for (id, task, stream, is_running) in to_stop {
        if is_running {
            kill(engine, &id, "SIGTERM").await;
            let stopped = wait_stopped(engine, &id, grace).await;
            if !stopped {
                kill(engine, &id, "SIGKILL").await;
            }
        }
        let removed = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
        if let Err(e) = removed {
            tracing::warn!(container = %id, error = %e, "could not remove a leftover container");
        }
        if let (Some(task), Some(stream)) = (task, stream.clone()) {
            record(log, &stream, task, &id).await?;
            if running.contains(&task) {
                tracing::warn!(%task, container = %id, "task container found after restart: stopped; the task was interrupted");
                report.interrupted.push((task, stream));
                continue;
            }
        }
        tracing::info!(container = %id, "removed a leftover airut container of no running task");
        report.removed_unknown.push(id);
    }
    Ok(report)
}

async fn wait_stopped(engine: &Engine, id: &str, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let running = engine
            .docker()
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !running {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn record(log: &Log, stream: &StreamId, task: TaskId, id: &str) -> Result<(), RecoveryError> {
    log.append(StreamAppend {
        stream: stream.clone(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event: Event::ContainerStopped(ContainerStoppedV1 {
                task,
                container_id: id.to_owned(),
                reason: StopReason::Recovery,
            }),
            causation: None,
        }],
    })
    .await
    .map(|_| ())
    .map_err(|e| RecoveryError::Log(e.to_string()))
}
