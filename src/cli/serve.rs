//! `airut run`: the server process.
//!
//! Order of start: config → state dir → log → projections (caught up) →
//! `config.loaded` → listener bound → runtime file → `server.started` →
//! dashboard serving → gateway boot (`repo.booted` per repo) and serve;
//! a moment later the pages only starting needed are let go
//! ([`super::procmem`]). SIGINT/SIGTERM are watched from the start.
//! Shutdown on SIGINT/SIGTERM: cancel the token, stop accepting, let the
//! tracked tasks finish under a grace deadline, record `server.stopped`,
//! and close the log last (flush + fsync).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::GlobalArgs;
use super::access;
use super::runtime::{self, RuntimeInfo};
use crate::dashboard::{self, AppState};
use crate::events::{ConfigLoadedV1, Event, RepoId, ServerStartedV1, ServerStoppedV1, StreamId};
use crate::gateway::{Gateway, GatewayConfig};
use crate::log::{ExpectedVersion, Log, LogOptions, NewEvent, StreamAppend};
use crate::projections::Projections;

/// How long running work gets to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(10);

/// How long after the gateway has booted (its channels then connect, the
/// first requests come) the start-up pages are released.
const STARTUP_SETTLE: Duration = Duration::from_secs(1);

/// Runs the server until a signal.
pub async fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // SIGHUP reloads the config (src/runtime/reload.rs); caught from the
    // very start so an early one cannot end the process (its default).
    drop(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    ));
    let ctx = access::load_context(global)?;
    let state_dir = ctx.state_dir.clone();
    create_private_dir(&state_dir)?;
    if let Some(info) = runtime::read(&state_dir).ok().flatten()
        && runtime::pid_alive(info.pid)
        && info.pid != std::process::id()
    {
        anyhow::bail!(
            "another server (pid {}) already runs on {} (API {}); stop it first",
            info.pid,
            state_dir.display(),
            info.addr
        );
    }

    let signals = StopSignals::install();
    let dir = access::log_dir(&state_dir);
    let log = tokio::task::spawn_blocking(move || Log::open(&dir, LogOptions::default()))
        .await?
        .with_context(|| format!("opening the event log in {}", state_dir.display()))?;
    let projections = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || Projections::open(&log)).await??
    };

    let cfg = &ctx.loaded.config;
    let generation = projections.config_generation()? + 1;
    append_server(
        &log,
        Event::ConfigLoaded(ConfigLoadedV1 {
            generation,
            path: ctx
                .loaded
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            content_hash: ctx.loaded.content_hash,
            repos: cfg.repos.keys().map(|k| RepoId(k.clone())).collect(),
        }),
    )
    .await?;

    let addr = SocketAddr::new(cfg.dashboard.host, cfg.dashboard.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: is another server running? change dashboard.port")
    })?;
    let bound = listener.local_addr()?;
    let token = runtime::new_token();
    let guard = runtime::write(
        &state_dir,
        &RuntimeInfo {
            addr: bound,
            token: token.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
    .context("writing the runtime file")?;
    append_server(
        &log,
        Event::ServerStarted(ServerStartedV1 {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            listen: bound.to_string(),
        }),
    )
    .await?;
    tracing::info!(addr = %bound, state_dir = %state_dir.display(), "airut is serving");

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(
        projections
            .clone()
            .follow(log.clone(), shutdown.child_token()),
    );
    let state = AppState::new(
        log.clone(),
        projections.clone(),
        token,
        shutdown.child_token(),
    )
    .with_auth(
        cfg.dashboard.auth.clone(),
        cfg.dashboard.base_url.as_deref(),
    );
    let stop = shutdown.child_token();
    tracker.spawn(async move {
        if let Err(e) =
            dashboard::serve(listener, state, async move { stop.cancelled().await }).await
        {
            tracing::error!(error = %e, "the API server failed");
        }
    });

    // The gateway boots after the dashboard serves, so its progress shows.
    // Each repo gets its workspace, sandbox runner and channels
    // (src/runtime); a part that cannot start leaves its repo not serving,
    // with the reason in `repo.booted`.
    let gateway_cfg = GatewayConfig::from(&cfg.execution);
    let gateway_log = log.clone();
    let gateway_stop = shutdown.child_token();
    let parts_stop = shutdown.child_token();
    let trim_stop = shutdown.child_token();
    let parts = tracker.clone();
    // `--state-dir` overrides the config's state dir for everything.
    let mut server_cfg = cfg.clone();
    server_cfg.state_dir = state_dir.clone();
    // Config changes (SIGHUP, or the file changed) are applied while
    // serving (src/runtime/reload.rs); SIGHUP is caught from here on.
    let loaded = ctx.loaded.clone();
    let config_path = global
        .config
        .clone()
        .unwrap_or_else(crate::config::default_path);
    let reload_stop = shutdown.child_token();
    tracker.spawn(async move {
        let runtime =
            crate::runtime::Runtime::start(&server_cfg, &gateway_log, &parts_stop, &parts).await;
        let (reloader, setups) = crate::runtime::reload::Reloader::new(
            runtime,
            gateway_log.clone(),
            &loaded,
            config_path,
            server_cfg.state_dir.clone(),
            generation,
        );
        let booted = Gateway::boot(gateway_log.clone(), gateway_cfg, setups).await;
        // Not tracked: shutdown does not wait for it.
        let settled = trim_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(STARTUP_SETTLE) => release_startup_pages().await,
                _ = settled.cancelled() => {}
            }
        });
        match booted {
            Ok(gw) => {
                parts.spawn(reloader.follow(gw.handle(), reload_stop));
                if let Err(e) = gw.serve(gateway_stop).await {
                    tracing::error!(error = %e, "the gateway stopped; restart airut");
                }
            }
            Err(e) => tracing::error!(error = %e, "the gateway could not boot; restart airut"),
        }
    });

    let reason = signals.wait().await;
    tracing::info!(%reason, "shutting down");
    shutdown.cancel();
    tracker.close();
    // Running tasks get `execution.shutdown_timeout`; the rest a moment more.
    let grace = GRACE.max(cfg.execution.shutdown_timeout + Duration::from_secs(5));
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "some tasks were still running after the grace period"
        );
    }
    append_server(
        &log,
        Event::ServerStopped(ServerStoppedV1 {
            reason: reason.clone(),
        }),
    )
    .await?;
    log.close().await.context("closing the event log")?;
    drop(guard);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Once the server has started, lets go of the code and read-only data
/// pages that starting touched (see [`super::procmem`]): the idle server's
/// RSS is then what it uses, not what it once ran.
async fn release_startup_pages() {
    match tokio::task::spawn_blocking(super::procmem::release_file_pages).await {
        Ok(Ok(kib)) => tracing::debug!(kib, "released the start-up file pages"),
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot release the start-up file pages"),
        Err(e) => tracing::debug!(error = %e, "cannot release the start-up file pages"),
    }
}

async fn append_server(log: &Log, event: Event) -> anyhow::Result<()> {
    log.append(StreamAppend {
        stream: StreamId::server(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event,
            causation: None,
        }],
    })
    .await
    .context("appending to the event log")?;
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state dir {}", dir.display()))
}

/// SIGINT and SIGTERM watchers. Installed before the listener is bound, so
/// a stop signal that comes as soon as `/healthz` answers (a service
/// manager, a benchmark) is a clean shutdown, not the default death.
struct StopSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch {name}; it will not stop the server cleanly");
                None
            }
        };
        StopSignals {
            int: watch(SignalKind::interrupt(), "SIGINT"),
            term: watch(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for either signal; returns its name.
    async fn wait(mut self) -> String {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.int) => "SIGINT".to_owned(),
            _ = recv(&mut self.term) => "SIGTERM".to_owned(),
        }
    }
}
