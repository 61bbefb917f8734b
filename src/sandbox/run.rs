//! One container run of Claude Code for a task.
//!
//! Steps, each recorded in the conversation's stream: create the container
//! (`container.created`), attach to its stdin/stdout/stderr, start it
//! (`container.started`), write the prompt to stdin and close it, read
//! stdout and stderr as lines (`container.output`, or
//! `container.output_blob` for lines over 64 KiB), then wait for the exit
//! (`container.exited`) and remove the container. A stop request sends
//! SIGTERM and, after a grace period, SIGKILL; the timeout sends SIGKILL at
//! once; either records `container.stopped` and keeps the output so far.
//!
//! The container: the repo image, `airut-init` mounted read-only as the
//! entrypoint, the Claude Code binary mounted read-only, `/workspace`,
//! `/inbox`, `/outbox`, `/storage` and the conversation's Claude state at
//! `/root/.claude` read-write; every capability dropped except CHOWN,
//! DAC_OVERRIDE, FOWNER, SETGID and SETUID (what Claude Code and git need to
//! manage files as root in the container); `no-new-privileges`; memory with
//! swap equal (so no swap), cpus and pids limits; labels naming the task.
//!
//! Must never: log an environment value (they are secrets), lose the output
//! of a run that timed out or was stopped, or leave the container behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::engine::Engine;
use super::lines::{Line, LineSplitter};
use super::stream_json::{Accumulator, ExecutionResult, Exit, OutputKind};
use super::{CLAUDE_PATH, INIT_PATH, LABEL_MANAGED, LABEL_STREAM, LABEL_TASK};
use crate::config::{ResourceLimits, Secret};
use crate::events::{
    ContainerCreatedV1, ContainerExitedV1, ContainerOutputBlobV1, ContainerOutputV1,
    ContainerStartedV1, ContainerStoppedV1, Event, OutputStream, StopReason, StreamId, TaskId,
};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// Lines longer than this go to the blob store (`container.output_blob`).
pub const INLINE_LINE_MAX: usize = 64 * 1024;

/// Characters of a blob line kept in its event as a preview.
const PREVIEW_CHARS: usize = 256;

/// Where the per-task proxy socket is mounted in the container.
pub const PROXY_SOCKET_PATH: &str = "/run/airut/proxy.sock";
/// Where the task CA certificate is mounted in the container.
pub const CA_CERT_PATH: &str = "/run/airut/ca.crt";

/// How the container reaches the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// The network sandbox: no network but loopback (`--network none`); the
    /// init relays 80/443 to the proxy's unix socket, mounted at
    /// [`PROXY_SOCKET_PATH`].
    Relay {
        /// The per-task socket on the host.
        socket: PathBuf,
    },
    /// The engine's default network, with the internet and the host's
    /// services reachable. Only for `network.sandbox_enabled: false`; every
    /// run in this mode logs a warning.
    Unsandboxed,
}

/// The host directories of a conversation mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// Mounted at `/workspace`.
    pub workspace: PathBuf,
    /// Mounted at `/inbox`.
    pub inbox: PathBuf,
    /// Mounted at `/outbox`.
    pub outbox: PathBuf,
    /// Mounted at `/storage`.
    pub storage: PathBuf,
    /// The conversation's Claude state, mounted at `/root/.claude`.
    pub claude_state: PathBuf,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The task (labels, events).
    pub task: TaskId,
    /// The stream events are recorded in (the conversation's).
    pub stream: StreamId,
    /// The image tag to run.
    pub image: String,
    /// Directories to mount.
    pub mounts: Mounts,
    /// The Claude Code binary on the host.
    pub claude_binary: PathBuf,
    /// The `airut-init` binary on the host (static).
    pub init_binary: PathBuf,
    /// Environment (values are secrets, never logged).
    pub env: Vec<(String, Secret)>,
    /// Limits and timeout.
    pub limits: ResourceLimits,
    /// The Claude session to resume.
    pub resume_session: Option<String>,
    /// The model.
    pub model: String,
    /// The effort, if set.
    pub effort: Option<String>,
    /// The prompt, written to stdin.
    pub prompt: String,
    /// The network.
    pub network: NetworkMode,
    /// The task CA certificate to install in the container's trust store.
    pub ca_cert: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL on a stop request.
    pub stop_grace: Duration,
}

/// Asks a running task to stop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stopper {
    tx: std::sync::Arc<watch::Sender<Option<StopReason>>>,
}

/// Why a run could not happen (expected failures are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A host path to mount does not exist. The caller prepares the
    /// conversation directories; this is a bug or a deleted directory.
    #[error("{what} {path} does not exist")]
    MissingPath {
        /// Which mount.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A limit is out of range (the config checks these; a caller built a
    /// bad request).
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    /// The engine refused to create, attach or start the container; the
    /// message is the engine's. Check `airut check` and the image.
    #[error("container engine: {0}")]
    Engine(String),
    /// Recording an event failed; the log is closed or poisoned.
    #[error("recording the run failed: {0}")]
    Log(String),
}

enum Record {
    Event(Box<Event>),
    Line {
        task: TaskId,
        stream: OutputStream,
        line_no: u64,
        kind: OutputKind,
        text: String,
    },
}

// === impl Stopper ===

impl Stopper {
    /// A stopper and the receiver a run watches.
    pub fn new() -> (Stopper, watch::Receiver<Option<StopReason>>) {
        let (tx, rx) = watch::channel(None);
        (
            Stopper {
                tx: std::sync::Arc::new(tx),
            },
            rx,
        )
    }

    /// Asks the run to stop (first reason wins).
    pub fn stop(&self, reason: StopReason) {
        self.tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// The Claude Code command line (after the init).
pub fn claude_args(req: &RunRequest) -> Vec<String> {
    let mut args = vec![CLAUDE_PATH.to_owned()];
    if let Some(sid) = &req.resume_session {
        args.extend(["--resume".to_owned(), sid.clone()]);
    }
    args.extend(["--model".to_owned(), req.model.clone()]);
    if let Some(e) = &req.effort {
        args.extend(["--effort".to_owned(), e.clone()]);
    }
    args.extend(
        [
            "-p",
            "-",
            "--dangerously-skip-permissions",
            "--output-format",
            "stream-json",
            "--verbose",
        ]
        .map(str::to_owned),
    );
    args
}

/// The container name for a task.
pub fn container_name(task: &TaskId) -> String {
    format!("airut-task-{task}")
}

/// Builds the engine's create request.
pub fn create_body(req: &RunRequest) -> Result<ContainerCreateBody, RunError> {
    let limits = &req.limits;
    if let Some(t) = limits.timeout
        && t < Duration::from_secs(10)
    {
        return Err(RunError::InvalidLimits(format!(
            "timeout {t:?} is below the minimum of 10 s"
        )));
    }
    let bind = |source: &Path, target: &str, read_only: bool| Mount {
        target: Some(target.to_owned()),
        source: Some(source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    };
    let m = &req.mounts;
    let mut mounts = vec![
        bind(&m.workspace, "/workspace", false),
        bind(&m.inbox, "/inbox", false),
        bind(&m.outbox, "/outbox", false),
        bind(&m.storage, "/storage", false),
        bind(&m.claude_state, "/root/.claude", false),
        bind(&req.claude_binary, CLAUDE_PATH, true),
        bind(&req.init_binary, INIT_PATH, true),
    ];
    let checks: [(&'static str, &Path); 7] = [
        ("workspace directory", &m.workspace),
        ("inbox directory", &m.inbox),
        ("outbox directory", &m.outbox),
        ("storage directory", &m.storage),
        ("Claude state directory", &m.claude_state),
        ("Claude Code binary", &req.claude_binary),
        ("airut-init binary", &req.init_binary),
    ];
    for (what, path) in checks {
        if !path.exists() {
            return Err(RunError::MissingPath {
                what,
                path: path.to_owned(),
            });
        }
    }
    if let Some(ca) = &req.ca_cert {
        if !ca.exists() {
            return Err(RunError::MissingPath {
                what: "CA certificate",
                path: ca.clone(),
            });
        }
        mounts.push(bind(ca, CA_CERT_PATH, true));
    }
    let (network_mode, sysctls) = match &req.network {
        NetworkMode::Relay { socket } => {
            if !socket.exists() {
                return Err(RunError::MissingPath {
                    what: "proxy socket",
                    path: socket.clone(),
                });
            }
            mounts.push(bind(socket, PROXY_SOCKET_PATH, false));
            (
                Some("none".to_owned()),
                Some(HashMap::from([(
                    "net.ipv4.ip_unprivileged_port_start".to_owned(),
                    "0".to_owned(),
                )])),
            )
        }
        NetworkMode::Unsandboxed => (None, None),
    };

    let mut env: Vec<String> = req
        .env
        .iter()
        .filter(|(k, _)| k != "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS")
        .map(|(k, v)| format!("{k}={}", v.expose()))
        .collect();
    env.push("CLAUDE_CODE_DISABLE_BACKGROUND_TASKS=1".to_owned());

    let to_i64 = |v: u64, what: &str| {
        i64::try_from(v).map_err(|_| RunError::InvalidLimits(format!("{what} {v} is too large")))
    };
    let memory = limits
        .memory_bytes
        .map(|m| to_i64(m, "memory"))
        .transpose()?;
    let host_config = HostConfig {
        mounts: Some(mounts),
        memory,
        memory_swap: memory,
        nano_cpus: limits.nano_cpus.map(|c| to_i64(c, "cpus")).transpose()?,
        pids_limit: limits.pids.map(|p| to_i64(p, "pids")).transpose()?,
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: Some(
            ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
                .map(str::to_owned)
                .to_vec(),
        ),
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        network_mode,
        sysctls,
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(req.image.clone()),
        entrypoint: Some(vec![INIT_PATH.to_owned()]),
        cmd: Some(claude_args(req)),
        env: Some(env),
        labels: Some(HashMap::from([
            (LABEL_MANAGED.to_owned(), "1".to_owned()),
            (LABEL_TASK.to_owned(), req.task.to_string()),
            (LABEL_STREAM.to_owned(), req.stream.to_string()),
        ])),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// Runs the task's container to its end. Expected failures (timeout,
/// non-zero exit, out of memory, stop) are in the result's outcome.
pub async fn run(
    engine: &Engine,
    log: &Log,
    req: &RunRequest,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> Result<ExecutionResult, RunError> {
    let body = create_body(req)?;
    if req.network == NetworkMode::Unsandboxed {
        tracing::warn!(
            task = %req.task,
            "network sandbox disabled for this repo (network.sandbox_enabled: false): \
             the container can reach the internet and the host's services"
        );
    }
    tracing::debug!(
        task = %req.task,
        image = %req.image,
        env = ?req.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        "creating container"
    );
    let docker = engine.docker();
    let name = container_name(&req.task);
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .map_err(|e| RunError::Engine(format!("create {name}: {e}")))?;
    let id = created.id;

    let (tx, rx) = mpsc::channel::<Record>(1024);
    let recorder = tokio::spawn(record(log.clone(), req.stream.clone(), rx));
    let send = |r: Record| {
        let tx = tx.clone();
        async move {
            // The recorder only stops when every sender is gone.
            let _ = tx.send(r).await;
        }
    };
    send(ev(Event::ContainerCreated(ContainerCreatedV1 {
        task: req.task,
        container_id: id.clone(),
        image: req.image.clone(),
    })))
    .await;

    let result = drive(engine, req, &id, &mut stop, &send).await;
    let remove = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    if let Err(e) = remove {
        tracing::warn!(task = %req.task, container = %id, error = %e, "could not remove container");
    }
    drop(tx);
    let recorded = recorder
        .await
        .map_err(|e| RunError::Log(format!("recorder task failed: {e}")))?;
    let result = result?;
    recorded?;
    Ok(result)
}

async fn drive<F, Fut>(
    engine: &Engine,
    req: &RunRequest,
    id: &str,
    stop: &mut watch::Receiver<Option<StopReason>>,
    send: &F,
) -> Result<ExecutionResult, RunError>
where
    F: Fn(Record) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let docker = engine.docker();
    let attached = docker
        .attach_container(
            id,
            Some(
                AttachContainerOptionsBuilder::default()
                    .stdin(true)
                    .stdout(true)
                    .stderr(true)
                    .stream(true)
                    .build(),
            ),
        )
        .await
        .map_err(|e| RunError::Engine(format!("attach {id}: {e}")))?;
    let mut output = attached.output;
    let mut input = attached.input;
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
        .map_err(|e| RunError::Engine(format!("start {id}: {e}")))?;
    send(ev(Event::ContainerStarted(ContainerStartedV1 {
        task: req.task,
        container_id: id.to_owned(),
    })))
    .await;

    // The prompt goes in on its own task, so a container that never reads
    // stdin cannot stall the output loop.
    let prompt = req.prompt.clone().into_bytes();
    let writer = tokio::spawn(async move {
        let w = input.write_all(&prompt).await;
        let s = input.shutdown().await;
        w.and(s)
    });

    let deadline = req.limits.timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let mut stopped = false;
    let mut kill_at: Option<Instant> = None;
    let mut acc = Accumulator::default();
    let mut out_split = LineSplitter::default();
    let mut err_split = LineSplitter::default();
    let mut out_no = 0u64;
    let mut err_no = 0u64;
    let mut output_open = true;
    // A stop asked before the run began counts too.
    let mut stop_open = true;
    if stop.borrow().is_some() {
        stop.mark_changed();
    }

    let mut wait = Box::pin(wait_exit(engine, id));
    let code = loop {
        tokio::select! {
            chunk = output.next(), if output_open => match chunk {
                Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                    let mut lines = Vec::new();
                    out_split.push(&message, &mut |l| lines.push(l));
                    for l in lines {
                        emit_stdout(req, &mut acc, &mut out_no, l, send).await;
                    }
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    let mut lines = Vec::new();
                    err_split.push(&message, &mut |l| lines.push(l));
                    for l in lines {
                        emit_stderr(req, &mut acc, &mut err_no, l, send).await;
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    tracing::warn!(task = %req.task, error = %e, "container output stream failed");
                    output_open = false;
                }
                None => output_open = false,
            },
            code = &mut wait, if !output_open => break code,
            _ = sleep_until_opt(deadline), if !timed_out && !stopped => {
                timed_out = true;
                kill(engine, id, "SIGKILL").await;
                send(stopped_event(req, id, StopReason::Timeout)).await;
            }
            changed = stop.changed(), if stop_open && !timed_out && !stopped => {
                let reason = match changed {
                    Ok(()) => stop.borrow().clone(),
                    Err(_) => {
                        // The stopper is gone: nobody can ask any more.
                        stop_open = false;
                        None
                    }
                };
                if let Some(reason) = reason {
                    stopped = true;
                    kill(engine, id, "SIGTERM").await;
                    kill_at = Some(Instant::now() + req.stop_grace);
                    send(stopped_event(req, id, reason)).await;
                }
            }
            _ = sleep_until_opt(kill_at), if kill_at.is_some() => {
                kill_at = None;
                kill(engine, id, "SIGKILL").await;
            }
        }
    };
    let mut rest = Vec::new();
    out_split.finish(&mut |l| rest.push(l));
    for l in rest {
        emit_stdout(req, &mut acc, &mut out_no, l, send).await;
    }
    let mut rest = Vec::new();
    err_split.finish(&mut |l| rest.push(l));
    for l in rest {
        emit_stderr(req, &mut acc, &mut err_no, l, send).await;
    }
    if let Ok(Err(e)) = writer.await {
        tracing::debug!(task = %req.task, error = %e, "prompt not fully written (container ended first)");
    }

    let oom_killed = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false);
    send(ev(Event::ContainerExited(ContainerExitedV1 {
        task: req.task,
        container_id: id.to_owned(),
        exit_code: code.unwrap_or(-1),
        oom_killed,
    })))
    .await;
    Ok(acc.finish(Exit {
        code,
        oom_killed,
        timed_out,
        stopped,
    }))
}

async fn emit_stdout<F, Fut>(
    req: &RunRequest,
    acc: &mut Accumulator,
    line_no: &mut u64,
    line: Line,
    send: &F,
) where
    F: Fn(Record) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let kind = if line.continued {
        OutputKind::Text
    } else {
        acc.push_stdout(&line.text)
    };
    send(Record::Line {
        task: req.task,
        stream: OutputStream::Stdout,
        line_no: *line_no,
        kind,
        text: line.text,
    })
    .await;
    *line_no += 1;
}

async fn emit_stderr<F, Fut>(
    req: &RunRequest,
    acc: &mut Accumulator,
    line_no: &mut u64,
    line: Line,
    send: &F,
) where
    F: Fn(Record) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    acc.push_stderr(&line.text);
    send(Record::Line {
        task: req.task,
        stream: OutputStream::Stderr,
        line_no: *line_no,
        kind: OutputKind::Text,
        text: line.text,
    })
    .await;
    *line_no += 1;
}

fn ev(e: Event) -> Record {
    Record::Event(Box::new(e))
}

fn stopped_event(req: &RunRequest, id: &str, reason: StopReason) -> Record {
    ev(Event::ContainerStopped(ContainerStoppedV1 {
        task: req.task,
        container_id: id.to_owned(),
        reason,
    }))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends a signal; a container that is already gone is fine.
pub(crate) async fn kill(engine: &Engine, id: &str, signal: &str) {
    let r = engine
        .docker()
        .kill_container(
            id,
            Some(
                KillContainerOptionsBuilder::default()
                    .signal(signal)
                    .build(),
            ),
        )
        .await;
    if let Err(e) = r {
        tracing::debug!(container = %id, signal, error = %e, "kill failed (already exited?)");
    }
}

/// The exit code, once the container has exited (`None` if the engine
/// could not say).
async fn wait_exit(engine: &Engine, id: &str) -> Option<i64> {
    let mut s = engine
        .docker()
        .wait_container(id, None::<WaitContainerOptions>);
    match s.next().await {
        Some(Ok(r)) => Some(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
        Some(Err(e)) => {
            tracing::warn!(container = %id, error = %e, "waiting for the container failed");
            inspect_exit(engine, id).await
        }
        None => inspect_exit(engine, id).await,
    }
}

async fn inspect_exit(engine: &Engine, id: &str) -> Option<i64> {
    engine
        .docker()
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.exit_code)
}

/// Appends what the run sends, in order, in batches (whatever has queued up
/// while the previous append was in flight).
async fn record(
    log: Log,
    stream: StreamId,
    mut rx: mpsc::Receiver<Record>,
) -> Result<(), RunError> {
    let mut first_error = None;
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 256).await > 0 {
        let mut events = Vec::with_capacity(buf.len());
        for r in buf.drain(..) {
            match to_event(&log, r).await {
                Ok(e) => events.push(NewEvent {
                    event: e,
                    causation: None,
                }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if events.is_empty() {
            continue;
        }
        let append = log
            .append(StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Any,
                events,
            })
            .await;
        if let Err(e) = append {
            tracing::error!(stream = %stream, error = %e, "recording container events failed");
            first_error.get_or_insert(RunError::Log(e.to_string()));
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn to_event(log: &Log, r: Record) -> Result<Event, RunError> {
    match r {
        Record::Event(e) => Ok(*e),
        Record::Line {
            task,
            stream,
            line_no,
            kind,
            text,
        } if text.len() > INLINE_LINE_MAX => {
            let preview: String = text.chars().take(PREVIEW_CHARS).collect();
            let log = log.clone();
            let blob = tokio::task::spawn_blocking(move || log.put_blob(text.as_bytes()))
                .await
                .map_err(|e| RunError::Log(format!("blob task failed: {e}")))?
                .map_err(|e| RunError::Log(e.to_string()))?;
            Ok(Event::ContainerOutputBlob(ContainerOutputBlobV1 {
                task,
                stream,
                line_no,
                kind,
                blob,
                preview,
            }))
        }
        Record::Line {
            task,
            stream,
            line_no,
            kind,
            text,
        } => Ok(Event::ContainerOutput(ContainerOutputV1 {
            task,
            stream,
            line_no,
            kind,
            raw: text,
        })),
    }
}
