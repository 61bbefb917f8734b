//! The running product: the gateway's parts wired to the real ones.
//!
//! [`Runtime::repo`] gives each configured repo its workspace (the gateway's
//! own [`crate::gateway::repo_setup`]), its sandbox runner ([`runner`]: image,
//! proxy, container) and its channels ([`email`]). `airut run`
//! (src/cli/serve.rs) hands them to the gateway, which also folds the
//! dashboard's `task.stop_requested` (a queued task never starts, a running
//! one is stopped).
//!
//! A part that cannot start (no container engine, a bad email config)
//! leaves the repo without it, and the gateway boots that repo as not
//! serving with the reason recorded in `repo.booted`; the other repos run.

pub mod email;
pub mod reload;
pub mod runner;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{RepoConfig, ServerConfig};
use crate::gateway::{RepoSetup, fail_boot};
use crate::log::Log;
use crate::proxy::AuditSink;
use crate::sandbox::claude_binary::{ClaudeBinaries, RELEASE_BASE};
use crate::sandbox::image::ImageCache;
use crate::sandbox::{Engine, probe};

use runner::{SandboxRunner, SandboxShared};

/// The `airut-init` binary `airut run` mounts into task containers:
/// `$AIRUT_INIT` when set, else the one beside the running `airut`.
pub fn init_path() -> PathBuf {
    std::env::var_os("AIRUT_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(probe::default_init_path)
}

/// What every repo shares (the sandbox: engine, images, Claude binaries,
/// the proxies' audit writer), made once at start, and how to make one
/// repo's setup with parts of its own that can be retired on a reload.
pub struct Runtime {
    log: Log,
    shared: Option<SandboxShared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// One repo's background parts (its email source): stopped on their own
/// when a reload replaces or removes the repo, and with the server.
pub struct RepoParts {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

// === impl Runtime ===

impl Runtime {
    /// Connects the sandbox (a failure is logged; repos then boot as not
    /// serving, saying why). Background parts run on `tracker` and stop
    /// with `cancel`.
    pub async fn start(
        cfg: &ServerConfig,
        log: &Log,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Runtime {
        let shared = match sandbox_shared(cfg, log, cancel, tracker).await {
            Ok(s) => Some(s),
            Err(why) => {
                tracing::error!(error = %why, "the sandbox is not available; no repo can run tasks");
                None
            }
        };
        Runtime {
            log: log.clone(),
            shared,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        }
    }

    /// One repo's setup (workspace, sandbox runner, channels) and its
    /// background parts. A part that cannot start makes the repo's boot
    /// check fail with the reason.
    pub fn repo(&self, cfg: &ServerConfig, id: &str, repo: &RepoConfig) -> (RepoSetup, RepoParts) {
        let parts = RepoParts {
            cancel: self.cancel.child_token(),
            tracker: TaskTracker::new(),
        };
        // The server's shutdown waits for the repo's parts too.
        self.tracker.spawn({
            let cancel = parts.cancel.clone();
            let tracker = parts.tracker.clone();
            async move {
                cancel.cancelled().await;
                tracker.close();
                tracker.wait().await;
            }
        });
        // One workspace per repo, shared by the gateway and the runner
        // (its mirror lock too).
        let (mut setup, ws) = crate::gateway::repo_setup(cfg, id, repo);
        setup.timeout = repo.resource_limits.timeout;
        if let Some(ws) = ws {
            match &self.shared {
                Some(shared) => {
                    setup.runner = Some(Arc::new(SandboxRunner::new(
                        shared.clone(),
                        ws,
                        repo.network.clone(),
                        repo.resource_limits.clone(),
                    )));
                }
                None => {
                    // The repo boots as not serving with this reason
                    // (a runner is set so the reason is this one).
                    let why = "the sandbox is not available (see the server log and `airut check`)";
                    setup.runner = Some(Arc::new(runner::Unavailable(why.to_owned())));
                    fail_boot(&mut setup, why.to_owned());
                }
            }
        }
        if let Some(mail) = &repo.email {
            let models = vec![repo.model.clone()];
            match crate::channels::email::EmailSettings::from_config(
                setup.id.clone(),
                mail,
                models,
                cfg.dashboard.base_url.clone(),
            ) {
                Ok(settings) => {
                    let sink = email::start(
                        settings,
                        self.log.clone(),
                        parts.cancel.child_token(),
                        &parts.tracker,
                    );
                    setup.sinks.insert("email".to_owned(), sink);
                }
                Err(e) => {
                    tracing::error!(repo = %setup.id, error = %e, "the email channel cannot start");
                    fail_boot(&mut setup, format!("email channel: {e}"));
                }
            }
        }
        (setup, parts)
    }
}

// === impl RepoParts ===

impl RepoParts {
    /// Stops the parts and waits for them (at most `RETIRE_WAIT`), so a
    /// new email source never reads the mailbox beside the old one.
    pub async fn retire(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(RETIRE_WAIT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?RETIRE_WAIT, "a repo's old channel did not stop in time");
        }
    }
}

/// How long a reload waits for a repo's old parts to stop.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn sandbox_shared(
    cfg: &ServerConfig,
    log: &Log,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<SandboxShared, String> {
    let engine = Engine::connect(cfg.sandbox.engine_socket.as_deref())
        .await
        .map_err(|e| format!("container engine: {e}"))?;
    let init = init_path();
    check_init(&init)?;
    let images = ImageCache::new(engine.clone(), log.clone(), cfg.sandbox.image_max_age);
    tracker.spawn({
        let h = crate::sandbox::image::spawn_prune_schedule(
            images.clone(),
            cfg.sandbox.prune_interval,
            cancel.child_token(),
        );
        async move {
            let _ = h.await;
        }
    });
    let (audit, writer) = AuditSink::spawn(log.clone());
    tracker.spawn(async move {
        let _ = writer.await;
    });
    let claude = ClaudeBinaries::new(cfg.state_dir.join("claude"), RELEASE_BASE);
    tracker.spawn({
        let h = crate::sandbox::claude_binary::spawn_prune_schedule(
            claude.clone(),
            cfg.sandbox.claude.clone(),
            cfg.sandbox.claude_max_age,
            cfg.sandbox.prune_interval,
            log.clone(),
            cancel.child_token(),
        );
        async move {
            let _ = h.await;
        }
    });
    Ok(SandboxShared {
        engine,
        log: log.clone(),
        images,
        claude: Arc::new(claude),
        claude_source: cfg.sandbox.claude.clone(),
        init,
        audit,
        sockets_dir: cfg.state_dir.join("proxy"),
    })
}

/// Whether the init is there and is a file (whether it is static is what
/// `airut check` finds out by running it).
pub fn check_init(init: &Path) -> Result<(), String> {
    match std::fs::metadata(init) {
        Ok(m) if m.is_file() => Ok(()),
        _ => Err(format!(
            "airut-init not found at {}: build it with `cargo rustc --release --bin airut-init \
             -- -C target-feature=+crt-static` and put it beside the airut binary (or set \
             AIRUT_INIT); see doc/deployment.md",
            init.display()
        )),
    }
}
