//! Config reload while serving: on SIGHUP, or when the config file changes
//! (checked every [`POLL`]), the file is loaded and validated again. A
//! file that does not load is reported and the running config stays. A
//! changed file is recorded as `config.loaded` (the next generation) and
//! applied:
//!
//! * `execution:` settings the gateway uses (`max_concurrent`,
//!   `shutdown_timeout`, `conversation_max_age`) apply at once;
//! * a repo added starts (boot check, `repo.booted`); a repo removed stops
//!   once its running tasks end; a repo changed (any of its keys, or
//!   `execution.git_timeout` / `dashboard.base_url`, which its parts use)
//!   is taken out of service, waits for its running tasks, has its email
//!   channel stopped and is started again with the new settings — the
//!   messages that arrived meanwhile are in the log and are taken up then;
//! * `state_dir`, `dashboard:` (but `base_url`) and `sandbox:` are read
//!   once at start: a change is reported and applies after a restart.
//!
//! Called by `airut run` (src/cli/serve.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{RepoParts, Runtime};
use crate::config::{self, ServerConfig};
use crate::events::{ConfigLoadedV1, ConfigRejectedV1, Event, RepoId, StreamId};
use crate::gateway::{GatewayConfig, GatewayHandle, RepoSetup};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// How often the config file is looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// Watches the config and applies changes to a serving gateway.
pub struct Reloader {
    runtime: Runtime,
    log: Log,
    path: PathBuf,
    /// The state dir in use (`--state-dir` overrides the file's).
    state_dir: PathBuf,
    /// The file's `state_dir` at start (a change needs a restart).
    file_state_dir: PathBuf,
    current: ServerConfig,
    hash: [u8; 32],
    generation: u64,
    /// The file as last looked at (length, modification time), to load it
    /// again only when it changed.
    seen: Option<(u64, SystemTime)>,
    parts: BTreeMap<String, RepoParts>,
    hangup: Option<Signal>,
    /// The content last recorded as `config.rejected` (not recorded again
    /// until something else was loaded).
    rejected: Option<[u8; 32]>,
}

/// What a reload did, for the log line and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Repos started.
    pub added: Vec<String>,
    /// Repos restarted with new settings.
    pub changed: Vec<String>,
    /// Repos stopped.
    pub removed: Vec<String>,
    /// Whether `execution:` settings changed.
    pub execution: bool,
    /// Keys that need a restart to apply.
    pub needs_restart: Vec<&'static str>,
}

// === impl Reloader ===

impl Reloader {
    /// Starts every configured repo (`runtime.repo`) and returns their
    /// setups for the gateway's boot, and the reloader that owns their
    /// parts. SIGHUP is caught from here on (its default would end the
    /// process).
    pub fn new(
        runtime: Runtime,
        log: Log,
        loaded: &config::Loaded,
        path: PathBuf,
        state_dir: PathBuf,
        generation: u64,
    ) -> (Reloader, Vec<RepoSetup>) {
        let mut current = loaded.config.clone();
        current.state_dir = state_dir.clone();
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch SIGHUP; config changes are still picked up from the file");
                None
            }
        };
        let mut parts = BTreeMap::new();
        let mut setups = Vec::new();
        for (id, repo) in &current.repos {
            let (setup, p) = runtime.repo(&current, id, repo);
            setups.push(setup);
            parts.insert(id.clone(), p);
        }
        // Not looked at yet: the first look loads the file once more, so
        // a change made while the server was starting is not missed (the
        // content hash tells an unchanged file).
        let seen = None;
        (
            Reloader {
                runtime,
                log,
                path,
                state_dir,
                file_state_dir: loaded.config.state_dir.clone(),
                current,
                hash: loaded.content_hash,
                generation,
                seen,
                parts,
                hangup,
                rejected: None,
            },
            setups,
        )
    }

    /// Applies config changes to `gateway` until `cancel`.
    pub async fn follow(mut self, gateway: GatewayHandle, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let hangup = async {
                match self.hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                () = cancel.cancelled() => return,
                _ = hangup => "SIGHUP",
                _ = tick.tick() => {
                    let now = file_signature(&self.path);
                    if now == self.seen {
                        continue;
                    }
                    self.seen = now;
                    "the config file changed"
                }
            };
            tracing::debug!(path = %self.path.display(), why, "looking at the config");
            match self.reload(&gateway).await {
                Ok(Some(a)) => tracing::info!(
                    generation = self.generation,
                    added = ?a.added,
                    changed = ?a.changed,
                    removed = ?a.removed,
                    execution = a.execution,
                    "config reloaded"
                ),
                Ok(None) => tracing::debug!("the config is unchanged"),
                Err(e) => {
                    tracing::error!("the config was not reloaded; the running config stays: {e:#}")
                }
            }
        }
    }

    /// Loads the file and applies what changed. `None` when its bytes are
    /// the ones running.
    pub async fn reload(&mut self, gateway: &GatewayHandle) -> anyhow::Result<Option<Applied>> {
        let path = self.path.clone();
        let loaded = match tokio::task::spawn_blocking(move || config::load(Some(&path))).await? {
            Ok(l) => l,
            Err(e) => {
                let error = e.to_string();
                self.reject(error).await;
                return Err(e.into());
            }
        };
        if loaded.source.is_none() && self.hash != [0; 32] {
            let error = format!(
                "{} is gone; put it back (a server without its config would drop every repo)",
                self.path.display()
            );
            self.reject(error.clone()).await;
            anyhow::bail!(error);
        }
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        if loaded.content_hash == self.hash {
            if self.rejected.is_some() {
                // Back to the running file after a rejected one: a load
                // (nothing to apply) supersedes the rejection.
                let repos = self.current.repos.keys().cloned().collect();
                self.record_loaded(loaded.content_hash, repos).await?;
            }
            return Ok(None);
        }
        let mut next = loaded.config.clone();
        next.state_dir = self.state_dir.clone();
        let mut applied = self.diff(&next);
        if loaded.config.state_dir != self.file_state_dir {
            applied.needs_restart.push("state_dir");
        }
        for key in &applied.needs_restart {
            tracing::warn!(
                key,
                "changed in the config; this takes effect after a restart of airut"
            );
        }
        self.record_loaded(loaded.content_hash, next.repos.keys().cloned().collect())
            .await?;
        self.hash = loaded.content_hash;
        if applied.execution {
            gateway
                .configure(GatewayConfig::from(&next.execution))
                .await;
        }
        // Out of service together, so one repo's long task does not hold
        // up another's reload; each waits for its own running tasks.
        let mut quiet = JoinSet::new();
        for id in applied.changed.iter().chain(&applied.removed) {
            let gateway = gateway.clone();
            let repo = RepoId(id.clone());
            quiet.spawn(async move { gateway.quiesce(repo).await });
        }
        while quiet.join_next().await.is_some() {}
        for id in applied.changed.iter().chain(&applied.removed) {
            if let Some(p) = self.parts.remove(id) {
                p.retire().await;
            }
        }
        for id in &applied.removed {
            gateway.remove(RepoId(id.clone())).await;
        }
        for id in applied.changed.iter().chain(&applied.added) {
            let Some(repo) = next.repos.get(id) else {
                continue;
            };
            let (setup, p) = self.runtime.repo(&next, id, repo);
            self.parts.insert(id.clone(), p);
            gateway.install(setup).await;
        }
        // Keys that need a restart keep their running values.
        next.dashboard = self.current.dashboard.clone();
        next.dashboard.base_url = loaded.config.dashboard.base_url.clone();
        next.sandbox = self.current.sandbox.clone();
        self.current = next;
        Ok(Some(applied))
    }

    /// Records the next generation (`config.loaded`).
    async fn record_loaded(
        &mut self,
        content_hash: [u8; 32],
        repos: Vec<String>,
    ) -> anyhow::Result<()> {
        self.generation += 1;
        self.log
            .append(StreamAppend {
                stream: StreamId::server(),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event: Event::ConfigLoaded(ConfigLoadedV1 {
                        generation: self.generation,
                        path: self.path.display().to_string(),
                        content_hash,
                        repos: repos.into_iter().map(RepoId).collect(),
                    }),
                    causation: None,
                }],
            })
            .await?;
        self.rejected = None;
        Ok(())
    }

    /// Records that the file as it is now was not applied (once per
    /// content), so the dashboard and the audit trail show it.
    async fn reject(&mut self, error: String) {
        let content_hash = std::fs::read(&self.path)
            .map(|b| *blake3::hash(&b).as_bytes())
            .unwrap_or([0; 32]);
        if self.rejected == Some(content_hash) {
            return;
        }
        let appended = self
            .log
            .append(StreamAppend {
                stream: StreamId::server(),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event: Event::ConfigRejected(ConfigRejectedV1 {
                        path: self.path.display().to_string(),
                        content_hash,
                        error,
                    }),
                    causation: None,
                }],
            })
            .await;
        match appended {
            Ok(_) => self.rejected = Some(content_hash),
            Err(e) => tracing::error!(error = %e, "cannot record the rejected config"),
        }
    }

    fn diff(&self, next: &ServerConfig) -> Applied {
        let cur = &self.current;
        let mut a = Applied::default();
        // What every repo's parts are built with.
        let all_repos = cur.execution.git_timeout != next.execution.git_timeout
            || cur.dashboard.base_url != next.dashboard.base_url;
        for (id, repo) in &next.repos {
            match cur.repos.get(id) {
                None => a.added.push(id.clone()),
                Some(old) if all_repos || old != repo => a.changed.push(id.clone()),
                Some(_) => {}
            }
        }
        a.removed = cur
            .repos
            .keys()
            .filter(|id| !next.repos.contains_key(*id))
            .cloned()
            .collect();
        let (e, n) = (&cur.execution, &next.execution);
        a.execution = e.max_concurrent != n.max_concurrent
            || e.shutdown_timeout != n.shutdown_timeout
            || e.conversation_max_age != n.conversation_max_age;
        let mut dash = next.dashboard.clone();
        dash.base_url = cur.dashboard.base_url.clone();
        if dash != cur.dashboard {
            a.needs_restart.push("dashboard");
        }
        if next.sandbox != cur.sandbox {
            a.needs_restart.push("sandbox");
        }
        a
    }
}

/// The file's length and modification time; `None` when it is missing.
fn file_signature(path: &std::path::Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}
