//! The running product: the gateway's parts wired to the real ones.
//!
//! [`setups`] gives each configured repo its workspace (the gateway's own
//! [`crate::gateway::repo_setups`]), its sandbox runner ([`runner`]: image,
//! proxy, container) and its channels ([`email`]). `airut run`
//! (src/cli/serve.rs) hands them to the gateway, which also folds the
//! dashboard's `task.stop_requested` (a queued task never starts, a running
//! one is stopped).
//!
//! A part that cannot start (no container engine, a bad email config)
//! leaves the repo without it, and the gateway boots that repo as not
//! serving with the reason recorded in `repo.booted`; the other repos run.

pub mod email;
pub mod runner;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
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

/// Each repo's setup with its workspace, runner and channels. Background
/// parts (the email sources, the proxies' audit writer, image pruning)
/// are spawned on `tracker` and stop with `cancel`.
pub async fn setups(
    cfg: &ServerConfig,
    log: &Log,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Vec<RepoSetup> {
    let shared = match sandbox_shared(cfg, log, cancel, tracker).await {
        Ok(s) => Some(s),
        Err(why) => {
            tracing::error!(error = %why, "the sandbox is not available; no repo can run tasks");
            None
        }
    };
    let mut setups = Vec::new();
    for (id, repo) in &cfg.repos {
        // One workspace per repo, shared by the gateway and the runner
        // (its mirror lock too).
        let (mut setup, ws) = crate::gateway::repo_setup(cfg, id, repo);
        setup.timeout = repo.resource_limits.timeout;
        if let Some(ws) = ws {
            match &shared {
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
                    let sink = email::start(settings, log.clone(), cancel.child_token(), tracker);
                    setup.sinks.insert("email".to_owned(), sink);
                }
                Err(e) => {
                    tracing::error!(repo = %setup.id, error = %e, "the email channel cannot start");
                    fail_boot(&mut setup, format!("email channel: {e}"));
                }
            }
        }
        setups.push(setup);
    }
    setups
}

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
