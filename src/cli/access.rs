//! How a read command reaches the store: through a running server's API, or
//! by opening the store itself when no server runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::GlobalArgs;
use super::client::ApiClient;
use super::runtime;
use crate::config::{self, Loaded};
use crate::log::{Log, LogOptions, OpenError};
use crate::projections::Projections;

/// The resolved config and state dir of this invocation.
pub struct Context {
    /// The config as loaded (defaults when there is no file).
    pub loaded: Loaded,
    /// The state dir (flag, or the config's).
    pub state_dir: PathBuf,
}

/// A store opened by the CLI itself (no server running).
pub struct LocalStore {
    /// The log.
    pub log: Log,
    /// The projections, caught up.
    pub projections: Projections,
}

/// Where a read command gets its data.
// hyper's client grows with its http2 feature (enabled for the proxy); one
// value per command, so the size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Access {
    /// A running server.
    Remote(ApiClient),
    /// The store, opened here.
    Local(LocalStore),
}

/// The log's directory inside a state dir.
pub fn log_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("log")
}

/// For commands that only read the store (`events tail`, `replay`,
/// `audit export`): as [`load_context`], but with `--state-dir` given a
/// config that does not load is only a warning, so an operator can still
/// look at what the server did while the file is broken (a running server
/// keeps its last good config).
pub fn load_reader_context(global: &GlobalArgs) -> anyhow::Result<Context> {
    match (load_context(global), &global.state_dir) {
        (Ok(ctx), _) => Ok(ctx),
        (Err(e), Some(dir)) => {
            tracing::warn!(
                "the config does not load; reading {} anyway: {e:#}",
                dir.display()
            );
            Ok(Context {
                loaded: config::Loaded {
                    config: config::ServerConfig::default(),
                    source: None,
                    content_hash: [0; 32],
                    warnings: Vec::new(),
                },
                state_dir: dir.clone(),
            })
        }
        (Err(e), None) => Err(e.context(
            "to read a store while the config is broken, pass --state-dir (or AIRUT_STATE_DIR)",
        )),
    }
}

/// Loads the config (listing every problem on failure) and resolves the
/// state dir.
pub fn load_context(global: &GlobalArgs) -> anyhow::Result<Context> {
    let loaded = config::load(global.config.as_deref()).map_err(|e| {
        anyhow::anyhow!("{e}\nfix the config file, or pass --config to use another one")
    })?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let state_dir = global
        .state_dir
        .clone()
        .unwrap_or_else(|| loaded.config.state_dir.clone());
    Ok(Context { loaded, state_dir })
}

/// Finds a running server, or opens the store directly.
pub async fn connect(ctx: &Context) -> anyhow::Result<Access> {
    let info = runtime::read(&ctx.state_dir).with_context(|| {
        format!(
            "cannot read {}; remove it if no server is running",
            runtime::path(&ctx.state_dir).display()
        )
    })?;
    if let Some(info) = info {
        let pid = info.pid;
        let client = ApiClient::new(info);
        if client.healthy(Duration::from_secs(3)).await {
            return Ok(Access::Remote(client));
        }
        if runtime::pid_alive(pid) {
            bail!(
                "a server (pid {pid}) holds the store in {} but its API at {} does not answer; \
                 wait for it to finish starting, or stop it and retry",
                ctx.state_dir.display(),
                client.addr()
            );
        }
        eprintln!(
            "note: {} is stale (pid {pid} is gone); reading the store directly",
            runtime::path(&ctx.state_dir).display()
        );
    }
    Ok(Access::Local(open_local(&ctx.state_dir).await?))
}

/// Opens an existing store without a server.
pub async fn open_local(state_dir: &Path) -> anyhow::Result<LocalStore> {
    let dir = log_dir(state_dir);
    let log = tokio::task::spawn_blocking(move || {
        Log::open(
            &dir,
            LogOptions {
                create: false,
                ..LogOptions::default()
            },
        )
    })
    .await
    .context("opening the store")?
    .map_err(|e| match e {
        OpenError::Missing(path) => anyhow::anyhow!(
            "no store at {}: start the server once with `airut run`, or pass --state-dir",
            path.display()
        ),
        other => anyhow::Error::from(other),
    })?;
    let projections = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || Projections::open(&log))
            .await
            .context("opening the projections")??
    };
    Ok(LocalStore { log, projections })
}
