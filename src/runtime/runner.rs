//! The gateway's [`TaskRunner`] over the real sandbox and proxy.
//!
//! One run, in order: the repo image from `.airut/container/` on the
//! mirror's default branch (built once per content hash, reused while
//! fresh); the Claude Code binary; with `network.sandbox_enabled` a proxy
//! for the task (its own unix socket and CA, the allowlist read from the
//! default branch, masked secrets' surrogates in the container's
//! environment); the container with the repo's `resource_limits`; then the
//! proxy is stopped and the sandbox's result becomes the gateway's, with
//! the hosts the proxy blocked.
//!
//! Called by the gateway through [`TaskRunner`]. Must never: run a task
//! with the network sandbox on but without its proxy, put a masked
//! secret's real value into the container while the sandbox is on, or
//! leave a proxy socket behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::network::NetworkConfig;
use crate::config::{ClaudeSource, ResourceLimits, Secret};
use crate::events::{StopReason, TaskId, TaskOutcome};
use crate::gateway::{BoxFuture, ExecutionResult, RunRequest, TaskRunner, Usage};
use crate::log::Log;
use crate::proxy::{self, Allowlist, AllowlistError, AuditSink, TaskProxy};
use crate::sandbox::claude_binary::{ClaudeBinaries, ClaudeLease};
use crate::sandbox::image::{BuildFor, ImageCache, ImageSpec};
use crate::sandbox::run::{self as sandbox_run, Mounts, NetworkMode, Stopper};
use crate::sandbox::{Engine, Outcome};
use crate::workspace::RepoWorkspace;

/// Where the repo's container definition lives on its default branch.
pub const CONTAINER_DIR: &str = ".airut/container";
/// The repo's network allowlist on its default branch.
pub const ALLOWLIST_PATH: &str = ".airut/network-allowlist.yaml";

/// Time between SIGTERM and SIGKILL when a task is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What every repo's runner shares (one per server).
#[derive(Clone)]
pub struct SandboxShared {
    /// The container engine.
    pub engine: Engine,
    /// The log runs record into.
    pub log: Log,
    /// Repo images.
    pub images: ImageCache,
    /// Claude Code binaries.
    pub claude: Arc<ClaudeBinaries>,
    /// Where the Claude Code binary comes from.
    pub claude_source: ClaudeSource,
    /// The static `airut-init` mounted as the entrypoint.
    pub init: PathBuf,
    /// The proxies' audit events.
    pub audit: AuditSink,
    /// Directory of the per-task proxy sockets and CA certificates (0700).
    pub sockets_dir: PathBuf,
}

/// The sandbox runner of one repo.
pub struct SandboxRunner {
    shared: SandboxShared,
    workspace: RepoWorkspace,
    network: NetworkConfig,
    limits: ResourceLimits,
}

/// A runner for a repo whose sandbox could not start: every run fails
/// with the reason (the repo boots as not serving, so none should come).
pub struct Unavailable(pub String);

impl TaskRunner for Unavailable {
    fn run(&self, _req: RunRequest, _cancel: CancellationToken) -> BoxFuture<'_, ExecutionResult> {
        Box::pin(async move { ExecutionResult::internal(self.0.clone()) })
    }
}

/// The parts of a run that must be cleaned up.
struct Prepared {
    image: String,
    /// Held until the run ends: the prune schedule keeps its version.
    claude: ClaudeLease,
    env: Vec<(String, Secret)>,
    network: NetworkMode,
    ca_cert: Option<PathBuf>,
    proxy: Option<TaskProxy>,
}

// === impl SandboxRunner ===

impl SandboxRunner {
    /// The runner of a repo with this workspace, `network:` and limits.
    pub fn new(
        shared: SandboxShared,
        workspace: RepoWorkspace,
        network: NetworkConfig,
        limits: ResourceLimits,
    ) -> Self {
        SandboxRunner {
            shared,
            workspace,
            network,
            limits,
        }
    }

    /// The image spec from the mirror's default branch.
    async fn image_spec(&self) -> Result<ImageSpec, String> {
        let files = self
            .workspace
            .read_dir(CONTAINER_DIR)
            .await
            .map_err(|e| format!("reading {CONTAINER_DIR} from the default branch: {e}"))?;
        let mut dockerfile = None;
        let mut context = std::collections::BTreeMap::new();
        for f in files {
            if f.path.contains('/') {
                continue;
            }
            if f.path == "Dockerfile" {
                dockerfile = Some(f.content);
            } else {
                context.insert(f.path, f.content);
            }
        }
        let dockerfile = dockerfile.ok_or_else(|| {
            format!(
                "no Dockerfile in {CONTAINER_DIR} on the default branch: add \
                 {CONTAINER_DIR}/Dockerfile to the repository"
            )
        })?;
        Ok(ImageSpec::repo(dockerfile, context))
    }

    /// The allowlist from the mirror's default branch.
    async fn allowlist(&self) -> Result<Allowlist, AllowlistError> {
        match self.workspace.read_file(ALLOWLIST_PATH).await {
            Ok(Some(bytes)) => Allowlist::parse(&bytes),
            Ok(None) => Err(AllowlistError::Missing),
            Err(e) => Err(AllowlistError::Invalid(format!(
                "cannot be read from the mirror: {e}"
            ))),
        }
    }

    async fn prepare(&self, req: &RunRequest) -> Result<Prepared, String> {
        let spec = self.image_spec().await?;
        let for_ = BuildFor {
            repo: req.repo.clone(),
            task: Some(req.task),
            stream: req.conversation.stream(),
        };
        let image = self
            .shared
            .images
            .ensure(&spec, false, &for_)
            .await
            .map_err(|e| format!("the container image could not be built: {e}"))?;
        let claude = self
            .shared
            .claude
            .resolve_leased(&self.shared.claude_source)
            .await
            .map_err(|e| format!("the Claude Code binary is not available: {e}"))?;
        let mut env: Vec<(String, Secret)> = self
            .network
            .plain_secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !self.network.sandbox_enabled {
            tracing::warn!(
                repo = %req.repo,
                task = %req.task,
                "network.sandbox_enabled is false: the task runs without the egress proxy \
                 and gets the real values of its masked secrets"
            );
            env.extend(
                self.network
                    .masked_secrets
                    .iter()
                    .map(|(k, m)| (k.clone(), m.value.clone())),
            );
            return Ok(Prepared {
                image,
                claude,
                env,
                network: NetworkMode::Unsandboxed,
                ca_cert: None,
                proxy: None,
            });
        }
        let allowlist = match self.allowlist().await {
            Ok(a) => Ok(a),
            // A missing file blocks everything (the proxy says why on each
            // request); an unusable one is a task error.
            Err(AllowlistError::Missing) => Err(AllowlistError::Missing),
            Err(e) => return Err(e.to_string()),
        };
        make_private_dir(&self.shared.sockets_dir)?;
        let socket = self.shared.sockets_dir.join(format!("{}.sock", req.task));
        let proxy = proxy::spawn_task(
            proxy::TaskSpec {
                task: req.task,
                stream: req.conversation.stream(),
                socket: socket.clone(),
                allowlist,
                network: self.network.clone(),
                limits: proxy::Limits::default(),
            },
            self.shared.audit.clone(),
        )
        .map_err(|e| format!("the network proxy could not start: {e}"))?;
        let ca = self.shared.sockets_dir.join(format!("{}.crt", req.task));
        if let Err(e) = std::fs::write(&ca, proxy.ca_certificate_pem()) {
            proxy.shutdown().await;
            return Err(format!("cannot write the task CA {}: {e}", ca.display()));
        }
        env.extend(
            proxy
                .surrogates()
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v))),
        );
        Ok(Prepared {
            image,
            claude,
            env,
            network: NetworkMode::Relay { socket },
            ca_cert: Some(ca),
            proxy: Some(proxy),
        })
    }

    async fn run_one(&self, req: RunRequest, cancel: CancellationToken) -> ExecutionResult {
        let started = tokio::time::Instant::now();
        let prepared = tokio::select! {
            p = self.prepare(&req) => p,
            () = cancel.cancelled() => Err("stopped before the container started".to_owned()),
        };
        let mut p = match prepared {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(task = %req.task, error = %why, "the task could not run");
                let mut r = ExecutionResult::internal(why);
                if cancel.is_cancelled() {
                    r.outcome = TaskOutcome::Stopped;
                }
                return r;
            }
        };
        let mut limits = self.limits.clone();
        if req.timeout.is_some() {
            limits.timeout = req.timeout;
        }
        let sreq = sandbox_run::RunRequest {
            task: req.task,
            stream: req.conversation.stream(),
            image: p.image.clone(),
            mounts: Mounts {
                workspace: req.dirs.workspace.clone(),
                inbox: req.dirs.inbox.clone(),
                outbox: req.dirs.outbox.clone(),
                storage: req.dirs.storage.clone(),
                claude_state: req.dirs.claude.clone(),
            },
            claude_binary: p.claude.path().to_owned(),
            init_binary: self.shared.init.clone(),
            env: std::mem::take(&mut p.env),
            limits,
            resume_session: req.resume_session.clone(),
            model: req.model.clone(),
            effort: req.effort.clone(),
            prompt: req.prompt.clone(),
            network: p.network.clone(),
            ca_cert: p.ca_cert.clone(),
            stop_grace: STOP_GRACE,
        };
        let (stopper, rx) = Stopper::new();
        let watch = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                stopper.stop(StopReason::Requested);
            })
        };
        let ran = sandbox_run::run(&self.shared.engine, &self.shared.log, &sreq, rx).await;
        watch.abort();
        let blocked = p
            .proxy
            .as_ref()
            .map(TaskProxy::blocked_hosts)
            .unwrap_or_default();
        if let Some(proxy) = p.proxy.take() {
            proxy.shutdown().await;
        }
        if let Some(ca) = &p.ca_cert {
            let _ = std::fs::remove_file(ca);
        }
        match ran {
            Ok(r) => {
                let mut out = map_result(r, started.elapsed());
                out.blocked_hosts = blocked;
                out
            }
            Err(e) => {
                let mut r = ExecutionResult::internal(format!("the container could not run: {e}"));
                r.blocked_hosts = blocked;
                r
            }
        }
    }
}

impl TaskRunner for SandboxRunner {
    fn run(&self, req: RunRequest, cancel: CancellationToken) -> BoxFuture<'_, ExecutionResult> {
        Box::pin(self.run_one(req, cancel))
    }

    fn reap(&self, task: TaskId) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let name = sandbox_run::container_name(&task);
            let removed = self
                .shared
                .engine
                .docker()
                .remove_container(
                    &name,
                    Some(
                        bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .build(),
                    ),
                )
                .await;
            match removed {
                Ok(()) => {
                    tracing::info!(%task, container = %name, "removed the container of an interrupted task")
                }
                Err(e) => tracing::debug!(%task, error = %e, "no container left to remove"),
            }
            let _ = std::fs::remove_file(self.shared.sockets_dir.join(format!("{task}.sock")));
            let _ = std::fs::remove_file(self.shared.sockets_dir.join(format!("{task}.crt")));
        })
    }
}

/// The sandbox's result as the gateway's.
pub fn map_result(r: crate::sandbox::ExecutionResult, wall: Duration) -> ExecutionResult {
    let outcome = match r.outcome {
        Outcome::Timeout => TaskOutcome::TimedOut,
        Outcome::Stopped => TaskOutcome::Stopped,
        Outcome::Success => TaskOutcome::Succeeded,
        Outcome::PromptTooLong => TaskOutcome::PromptTooLong,
        Outcome::SessionCorrupted => TaskOutcome::SessionCorrupted,
        Outcome::ContainerFailed => TaskOutcome::ContainerFailed,
    };
    let reason = match (r.outcome, r.exit_code) {
        (Outcome::Success, _) => "exit 0".to_owned(),
        (Outcome::Timeout, _) => "the execution timeout elapsed".to_owned(),
        (Outcome::Stopped, _) => "stopped on request".to_owned(),
        (_, _) if r.oom_killed => "killed for using too much memory".to_owned(),
        (_, Some(c)) => format!("exit {c}"),
        (_, None) => "no exit code".to_owned(),
    };
    let wall_ms = u64::try_from(wall.as_millis()).unwrap_or(u64::MAX);
    ExecutionResult {
        outcome,
        reason,
        session_id: r.session_id,
        response_text: r.response_text,
        error_summary: r.error_summary,
        cost_micros: r
            .total_cost_usd
            .filter(|c| c.is_finite() && *c >= 0.0)
            .map(|c| (c * 1_000_000.0).round() as u64),
        turns: r.num_turns,
        duration_ms: if r.duration_ms > 0 {
            r.duration_ms
        } else {
            wall_ms
        },
        usage: Usage {
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cache_creation_input_tokens: r.usage.cache_creation_input_tokens,
            cache_read_input_tokens: r.usage.cache_read_input_tokens,
        },
        web_searches: r.web_search_count,
        web_fetches: r.web_fetch_count,
        blocked_hosts: Vec::new(),
    }
}

fn make_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_result(outcome: Outcome) -> crate::sandbox::ExecutionResult {
        crate::sandbox::ExecutionResult {
            outcome,
            session_id: Some("s".into()),
            response_text: "hi".into(),
            duration_ms: 0,
            total_cost_usd: Some(0.0123),
            num_turns: Some(3),
            is_error: false,
            usage: Default::default(),
            web_search_count: 1,
            web_fetch_count: 2,
            error_summary: None,
            exit_code: Some(0),
            oom_killed: false,
        }
    }

    #[test]
    fn every_sandbox_outcome_maps_to_the_gateways() {
        let cases = [
            (Outcome::Timeout, TaskOutcome::TimedOut),
            (Outcome::Stopped, TaskOutcome::Stopped),
            (Outcome::Success, TaskOutcome::Succeeded),
            (Outcome::PromptTooLong, TaskOutcome::PromptTooLong),
            (Outcome::SessionCorrupted, TaskOutcome::SessionCorrupted),
            (Outcome::ContainerFailed, TaskOutcome::ContainerFailed),
        ];
        for (from, to) in cases {
            let r = map_result(sandbox_result(from), Duration::from_millis(1500));
            assert_eq!(r.outcome, to);
            assert_eq!(r.duration_ms, 1500, "wall time when none was reported");
        }
        let r = map_result(sandbox_result(Outcome::Success), Duration::ZERO);
        assert_eq!(r.cost_micros, Some(12_300));
        assert_eq!((r.web_searches, r.web_fetches, r.turns), (1, 2, Some(3)));
    }

    #[test]
    fn a_hostile_cost_is_dropped_and_oom_is_named() {
        let mut s = sandbox_result(Outcome::ContainerFailed);
        s.total_cost_usd = Some(f64::NAN);
        s.oom_killed = true;
        s.exit_code = Some(137);
        let r = map_result(s, Duration::ZERO);
        assert_eq!(r.cost_micros, None);
        assert!(r.reason.contains("memory"), "{}", r.reason);
        let mut s = sandbox_result(Outcome::ContainerFailed);
        s.total_cost_usd = Some(-1.0);
        s.exit_code = None;
        let r = map_result(s, Duration::ZERO);
        assert_eq!(r.cost_micros, None);
        assert_eq!(r.reason, "no exit code");
    }
}
