//! The Claude Code binary mounted (read-only) into every task container.
//!
//! Either a path configured by the operator (`sandbox.claude_path`), used as
//! is, or a version (`sandbox.claude_version`: `stable`, `latest` or
//! `x.y.z`) downloaded from Anthropic's release site:
//! `<base>/<channel>` names the version a channel points at,
//! `<base>/<version>/manifest.json` gives each platform's `size` and
//! `checksum` (SHA-256), `<base>/<version>/<platform>/claude` is the binary.
//! A download is checked against both before it is made executable and
//! renamed into `<cache>/<version>/claude` (atomic: a crash never leaves a
//! half-written binary under that name). Versions are cached; a channel's
//! last resolution is remembered, so a server that cannot reach the site
//! keeps working with what it has. A cold cache that cannot download is a
//! clear error. Downloads of one version are serialised.
//!
//! Each resolution writes the time into `<cache>/<version>/last-used`, and a
//! task holds a [`ClaudeLease`] on its version while it runs.
//! [`ClaudeBinaries::prune`] removes versions not used for longer than
//! `sandbox.claude_max_age` (one `image.claude_binary_pruned` event each),
//! never the configured version, a channel's remembered version, or one
//! leased by a running task; [`spawn_prune_schedule`] runs it every
//! `sandbox.prune_interval`. An entry it cannot judge (a file, a name that
//! is not a version, an unreadable marker) is warned about and left alone;
//! a version without a marker (cached before markers existed) starts its
//! clock at the first prune that sees it.
//!
//! Must never: run or mount a binary whose size or checksum does not match
//! the manifest, or remove a version a running task has mounted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::ClaudeSource;
use crate::config::valid_claude_version;
use crate::events::{ClaudeBinaryPrunedV1, Event, StreamId};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// Anthropic's release site.
pub const RELEASE_BASE: &str = "https://downloads.claude.ai/claude-code-releases";

/// Time for one small request (channel, manifest) to answer.
const SMALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the whole binary download.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest manifest or channel answer read.
const SMALL_MAX: usize = 1024 * 1024;
/// The file in a version's directory holding when it was last resolved
/// (Unix seconds, decimal).
pub const LAST_USED: &str = "last-used";
/// Prefix of a version directory being removed (renamed first, so a
/// resolution never finds it half-deleted).
const PRUNING_PREFIX: &str = ".pruning-";

/// Why no binary is available.
#[derive(Debug, thiserror::Error)]
pub enum ClaudeBinaryError {
    /// The configured path does not exist or is not a file.
    #[error("sandbox.claude_path {0} is not a file")]
    MissingPath(PathBuf),
    /// Nothing cached and the release site could not be used; the message
    /// says what failed. Check the server's network, or set
    /// `sandbox.claude_path` to a binary on the host.
    #[error("Claude Code {version} is not cached and cannot be downloaded: {reason}")]
    Unavailable {
        /// The version or channel asked for.
        version: String,
        /// What failed.
        reason: String,
    },
    /// The download does not match the manifest (size or SHA-256): it was
    /// discarded. Retry later; if it persists, the site or the path to it is
    /// tampering.
    #[error("Claude Code {version} download rejected: {reason}")]
    Mismatch {
        /// The version.
        version: String,
        /// Which check failed.
        reason: String,
    },
    /// Writing the cache failed.
    #[error("Claude Code cache {path}: {source}")]
    Cache {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Recording a prune in the log failed; the versions named were
    /// removed all the same.
    #[error("recording the removal of Claude Code {versions}: {reason}")]
    Log {
        /// The versions removed.
        versions: String,
        /// The log's error.
        reason: String,
    },
}

/// The binary of one task: its path, and a hold on its version so the
/// prune schedule leaves it alone until the lease drops (the task ended).
#[derive(Debug)]
pub struct ClaudeLease {
    path: PathBuf,
    held: Option<(String, Leases)>,
}

type Leases = Arc<Mutex<HashMap<String, usize>>>;

/// What one prune pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaudePrune {
    /// Versions removed, each with the seconds since its last use.
    pub removed: Vec<(String, u64)>,
    /// Entries left alone because they could not be judged (each also
    /// logged as a warning).
    pub warnings: Vec<String>,
}

/// Resolves and caches Claude Code binaries. Cheap to clone.
#[derive(Clone)]
pub struct ClaudeBinaries {
    cache_dir: PathBuf,
    base_url: String,
    platform: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Per version: how many running tasks hold a [`ClaudeLease`].
    leases: Leases,
}

#[derive(serde::Deserialize)]
struct Manifest {
    platforms: HashMap<String, PlatformEntry>,
}

#[derive(serde::Deserialize)]
struct PlatformEntry {
    checksum: String,
    size: u64,
}

// === impl ClaudeBinaries ===

impl ClaudeBinaries {
    /// Binaries cached under `cache_dir`, downloaded from `base_url`
    /// (normally [`RELEASE_BASE`]).
    pub fn new(cache_dir: impl Into<PathBuf>, base_url: impl Into<String>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // ring explicitly: the crate compiles no other provider, and naming
        // it never depends on a process-wide default being installed.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        ClaudeBinaries {
            cache_dir: cache_dir.into(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            platform: platform(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            locks: Arc::new(Mutex::new(HashMap::new())),
            leases: Arc::default(),
        }
    }

    /// The binary for `source`.
    pub async fn resolve(&self, source: &ClaudeSource) -> Result<PathBuf, ClaudeBinaryError> {
        self.resolve_leased(source)
            .await
            .map(|lease| lease.path().to_owned())
    }

    /// The binary for `source`, held: the prune schedule does not remove
    /// its version until the lease drops. A task holds it while it runs.
    pub async fn resolve_leased(
        &self,
        source: &ClaudeSource,
    ) -> Result<ClaudeLease, ClaudeBinaryError> {
        let version = match source {
            ClaudeSource::Path(p) => {
                return if p.is_file() {
                    Ok(ClaudeLease {
                        path: p.clone(),
                        held: None,
                    })
                } else {
                    Err(ClaudeBinaryError::MissingPath(p.clone()))
                };
            }
            ClaudeSource::Version(v) if v == "stable" || v == "latest" => {
                self.resolve_channel(v).await?
            }
            ClaudeSource::Version(v) => v.clone(),
        };
        // Held before the cache is looked at: a prune that renamed the
        // version away first makes this download it again, never mount a
        // removed file.
        let mut lease = self.lease(&version);
        lease.path = self.version(&version).await?;
        Ok(lease)
    }

    /// What the cache holds for `source`, without the network (for
    /// `airut check`): the version and its binary, or `None` when it
    /// would be downloaded on the first task.
    pub fn cached(
        &self,
        source: &ClaudeSource,
    ) -> Result<Option<(String, PathBuf)>, ClaudeBinaryError> {
        let version = match source {
            ClaudeSource::Path(p) if p.is_file() => {
                return Ok(Some(("configured path".to_owned(), p.clone())));
            }
            ClaudeSource::Path(p) => return Err(ClaudeBinaryError::MissingPath(p.clone())),
            ClaudeSource::Version(c) if c == "stable" || c == "latest" => {
                match std::fs::read_to_string(self.cache_dir.join(format!(".channel-{c}"))) {
                    Ok(v) if valid_claude_version(v.trim()) => v.trim().to_owned(),
                    _ => return Ok(None),
                }
            }
            ClaudeSource::Version(v) => v.clone(),
        };
        let target = self.cache_dir.join(&version).join("claude");
        Ok(target.is_file().then_some((version, target)))
    }

    fn lease(&self, version: &str) -> ClaudeLease {
        let mut leases = self
            .leases
            .lock()
            .expect("claude lease map is never poisoned");
        *leases.entry(version.to_owned()).or_default() += 1;
        ClaudeLease {
            path: PathBuf::new(),
            held: Some((version.to_owned(), Arc::clone(&self.leases))),
        }
    }

    /// Removes cached versions not used for longer than `max_age`, except
    /// the one `keep` names (and any version a channel last resolved to)
    /// and those leased by running tasks; records one
    /// `image.claude_binary_pruned` per removal. Does nothing when
    /// `max_age` is zero.
    pub async fn prune(
        &self,
        keep: &ClaudeSource,
        max_age: Duration,
        log: &Log,
    ) -> Result<ClaudePrune, ClaudeBinaryError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let this = self.clone();
        let keep = keep.clone();
        let report = tokio::task::spawn_blocking(move || this.prune_at(&keep, max_age, now))
            .await
            .map_err(|e| ClaudeBinaryError::Cache {
                path: self.cache_dir.clone(),
                source: std::io::Error::other(format!("prune task failed: {e}")),
            })?;
        if !report.removed.is_empty() {
            let events = report
                .removed
                .iter()
                .map(|(version, age_secs)| NewEvent {
                    event: Event::ClaudeBinaryPruned(ClaudeBinaryPrunedV1 {
                        version: version.clone(),
                        age_secs: *age_secs,
                    }),
                    causation: None,
                })
                .collect();
            log.append(StreamAppend {
                stream: StreamId::server(),
                expected: ExpectedVersion::Any,
                events,
            })
            .await
            .map_err(|e| ClaudeBinaryError::Log {
                versions: report
                    .removed
                    .iter()
                    .map(|(v, _)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: e.to_string(),
            })?;
        }
        Ok(report)
    }

    /// [`ClaudeBinaries::prune`]'s file work (blocking), at `now` (Unix
    /// seconds); records nothing.
    pub fn prune_at(&self, keep: &ClaudeSource, max_age: Duration, now: u64) -> ClaudePrune {
        let mut report = ClaudePrune::default();
        if max_age.is_zero() {
            return report;
        }
        let mut warn = |what: String| {
            tracing::warn!(cache = %self.cache_dir.display(), "{what}");
            report.warnings.push(what);
        };
        let entries = match std::fs::read_dir(&self.cache_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return report,
            Err(e) => {
                warn(format!(
                    "cannot list the Claude Code cache {}: {e}; nothing pruned",
                    self.cache_dir.display()
                ));
                return report;
            }
        };
        let mut kept: Vec<String> = Vec::new();
        if let ClaudeSource::Version(v) = keep {
            kept.push(v.clone());
        }
        let mut candidates = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    warn(format!(
                        "cannot read an entry of the Claude Code cache: {e}"
                    ));
                    continue;
                }
            };
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                warn(format!("{} is not a version; left alone", path.display()));
                continue;
            };
            if let Some(channel) = name.strip_prefix(".channel-") {
                // A channel's last resolution is what a server that cannot
                // reach the site falls back to: never removed.
                if !channel.contains(".tmp")
                    && let Ok(v) = std::fs::read_to_string(&path)
                {
                    kept.push(v.trim().to_owned());
                }
                continue;
            }
            if name.starts_with(PRUNING_PREFIX) {
                // Left by an interrupted prune.
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    warn(format!("cannot remove {}: {e}", path.display()));
                }
                continue;
            }
            if name.starts_with('.') {
                continue;
            }
            candidates.push((name, path));
        }
        for (name, path) in candidates {
            if kept.contains(&name) {
                continue;
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    warn(format!(
                        "{} is not a directory; left alone (remove it by hand if it is not needed)",
                        path.display()
                    ));
                    continue;
                }
                Err(e) => {
                    warn(format!("cannot stat {}: {e}; left alone", path.display()));
                    continue;
                }
            }
            if !valid_claude_version(&name) || name == "stable" || name == "latest" {
                warn(format!("{} is not a version; left alone", path.display()));
                continue;
            }
            let marker = path.join(LAST_USED);
            let last = match std::fs::read(&marker) {
                Ok(bytes) => match String::from_utf8_lossy(&bytes).trim().parse::<u64>() {
                    Ok(t) => t,
                    Err(_) => {
                        warn(format!(
                            "{} does not hold a time ({:?}); its clock starts now",
                            marker.display(),
                            String::from_utf8_lossy(&bytes)
                                .chars()
                                .take(40)
                                .collect::<String>()
                        ));
                        touch(&marker, now);
                        continue;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    warn(format!(
                        "Claude Code {name} has no {LAST_USED} marker (cached before pruning existed?); its clock starts now"
                    ));
                    touch(&marker, now);
                    continue;
                }
                Err(e) => {
                    warn(format!(
                        "cannot read {}: {e}; Claude Code {name} left alone",
                        marker.display()
                    ));
                    continue;
                }
            };
            let age = now.saturating_sub(last);
            if age <= max_age.as_secs() {
                continue;
            }
            let doomed = self
                .cache_dir
                .join(format!("{PRUNING_PREFIX}{name}-{}", std::process::id()));
            {
                // Under the lease lock: a task taking a lease now either
                // came first (kept) or finds the version gone (downloads).
                let leases = self
                    .leases
                    .lock()
                    .expect("claude lease map is never poisoned");
                if leases.get(&name).is_some_and(|n| *n > 0) {
                    tracing::debug!(version = %name, "Claude Code version in use; not pruned");
                    continue;
                }
                if let Err(e) = std::fs::rename(&path, &doomed) {
                    drop(leases);
                    warn(format!("cannot remove {}: {e}", path.display()));
                    continue;
                }
            }
            if let Err(e) = std::fs::remove_dir_all(&doomed) {
                warn(format!(
                    "Claude Code {name} moved to {} but not fully removed: {e}",
                    doomed.display()
                ));
            }
            tracing::info!(version = %name, unused_for_s = age, "pruned an unused Claude Code version");
            report.removed.push((name, age));
        }
        report.removed.sort();
        report
    }

    /// The version a channel points at; the last known one when the site
    /// cannot be asked.
    async fn resolve_channel(&self, channel: &str) -> Result<String, ClaudeBinaryError> {
        let remembered = self.cache_dir.join(format!(".channel-{channel}"));
        let asked = self
            .get_small(&format!("{}/{channel}", self.base_url))
            .await
            .and_then(|body| {
                let v = String::from_utf8_lossy(&body).trim().to_owned();
                if valid_claude_version(&v) && v != "stable" && v != "latest" {
                    Ok(v)
                } else {
                    Err(format!("the site named {v:?} as the {channel} version"))
                }
            });
        match asked {
            Ok(v) => {
                self.create_cache_dir()?;
                write_atomic(&remembered, v.as_bytes()).await?;
                Ok(v)
            }
            Err(reason) => match tokio::fs::read_to_string(&remembered).await {
                Ok(v) if valid_claude_version(v.trim()) => {
                    tracing::warn!(channel, version = v.trim(), %reason, "using the last known Claude Code version");
                    Ok(v.trim().to_owned())
                }
                _ => Err(ClaudeBinaryError::Unavailable {
                    version: channel.to_owned(),
                    reason,
                }),
            },
        }
    }

    /// The cached (or downloaded) binary of `version`; marks it used now.
    async fn version(&self, version: &str) -> Result<PathBuf, ClaudeBinaryError> {
        let target = self.fetch_version(version).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(dir) = target.parent() {
            let marker = dir.join(LAST_USED);
            tokio::task::spawn_blocking(move || touch(&marker, now))
                .await
                .unwrap_or_default();
        }
        Ok(target)
    }

    async fn fetch_version(&self, version: &str) -> Result<PathBuf, ClaudeBinaryError> {
        if !valid_claude_version(version) {
            return Err(ClaudeBinaryError::Unavailable {
                version: version.to_owned(),
                reason: "not a version (expected stable, latest or x.y.z)".to_owned(),
            });
        }
        let dir = self.cache_dir.join(version);
        let target = dir.join("claude");
        if target.is_file() {
            return Ok(target);
        }
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .expect("claude lock map is never poisoned");
            Arc::clone(locks.entry(version.to_owned()).or_default())
        };
        let _guard = lock.lock().await;
        if target.is_file() {
            return Ok(target);
        }
        let unavailable = |reason: String| ClaudeBinaryError::Unavailable {
            version: version.to_owned(),
            reason,
        };
        let manifest = self
            .get_small(&format!("{}/{version}/manifest.json", self.base_url))
            .await
            .map_err(unavailable)?;
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| unavailable(format!("manifest.json is not valid: {e}")))?;
        let entry = manifest.platforms.get(&self.platform).ok_or_else(|| {
            unavailable(format!("the manifest has no entry for {}", self.platform))
        })?;
        let want = entry.checksum.to_ascii_lowercase();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unavailable(format!(
                "the manifest's checksum {:?} is not a SHA-256",
                entry.checksum
            )));
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| ClaudeBinaryError::Cache {
                path: dir.clone(),
                source,
            })?;
        let tmp = dir.join(format!(".claude.download-{}", std::process::id()));
        let url = format!("{}/{version}/{}/claude", self.base_url, self.platform);
        let downloaded = tokio::time::timeout(
            DOWNLOAD_TIMEOUT,
            self.download(&url, &tmp, entry.size, version),
        )
        .await
        .unwrap_or_else(|_| {
            Err(unavailable(format!(
                "the download took longer than {DOWNLOAD_TIMEOUT:?}"
            )))
        });
        let got = match downloaded {
            Ok(hash) => hash,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if got != want {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ClaudeBinaryError::Mismatch {
                version: version.to_owned(),
                reason: format!("SHA-256 is {got}, the manifest says {want}"),
            });
        }
        let cache_err = |source| ClaudeBinaryError::Cache {
            path: tmp.clone(),
            source,
        };
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(cache_err)?;
        tokio::fs::rename(&tmp, &target).await.map_err(cache_err)?;
        tracing::info!(version, path = %target.display(), "Claude Code downloaded and verified");
        Ok(target)
    }

    /// Streams `url` into `tmp`, checking the size as it goes; returns the
    /// SHA-256 (hex).
    async fn download(
        &self,
        url: &str,
        tmp: &Path,
        size: u64,
        version: &str,
    ) -> Result<String, ClaudeBinaryError> {
        let unavailable = |reason: String| ClaudeBinaryError::Unavailable {
            version: version.to_owned(),
            reason,
        };
        let mismatch = |reason: String| ClaudeBinaryError::Mismatch {
            version: version.to_owned(),
            reason,
        };
        let resp = self.get(url).await.map_err(unavailable)?;
        let mut body = resp.into_body();
        let mut file =
            tokio::fs::File::create(tmp)
                .await
                .map_err(|source| ClaudeBinaryError::Cache {
                    path: tmp.to_owned(),
                    source,
                })?;
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unavailable(format!("{url}: {e}")))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            got += chunk.len() as u64;
            if got > size {
                return Err(mismatch(format!(
                    "more than the manifest's {size} bytes arrived"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|source| ClaudeBinaryError::Cache {
                    path: tmp.to_owned(),
                    source,
                })?;
        }
        if got != size {
            return Err(mismatch(format!(
                "{got} bytes arrived, the manifest says {size}"
            )));
        }
        file.sync_all()
            .await
            .map_err(|source| ClaudeBinaryError::Cache {
                path: tmp.to_owned(),
                source,
            })?;
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    async fn get(&self, url: &str) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let resp = tokio::time::timeout(SMALL_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| format!("{url}: no answer within {SMALL_TIMEOUT:?}"))?
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        Ok(resp)
    }

    async fn get_small(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self.get(url).await?;
        let body = tokio::time::timeout(
            SMALL_TIMEOUT,
            http_body_util::Limited::new(resp.into_body(), SMALL_MAX).collect(),
        )
        .await
        .map_err(|_| format!("{url}: body not read within {SMALL_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }

    fn create_cache_dir(&self) -> Result<(), ClaudeBinaryError> {
        std::fs::create_dir_all(&self.cache_dir).map_err(|source| ClaudeBinaryError::Cache {
            path: self.cache_dir.clone(),
            source,
        })
    }
}

/// Runs [`ClaudeBinaries::prune`] every `interval` until `cancel`, keeping
/// what `keep` names.
pub fn spawn_prune_schedule(
    binaries: ClaudeBinaries,
    keep: ClaudeSource,
    max_age: Duration,
    interval: Duration,
    log: Log,
    cancel: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    super::spawn_every(interval, cancel, move || {
        let (binaries, keep, log) = (binaries.clone(), keep.clone(), log.clone());
        async move {
            match binaries.prune(&keep, max_age, &log).await {
                Ok(r) if !r.removed.is_empty() => tracing::info!(
                    removed = r.removed.len(),
                    "pruned unused Claude Code versions"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Claude Code prune failed; retrying next interval")
                }
            }
        }
    })
}

// === impl ClaudeLease ===

impl ClaudeLease {
    /// The binary to mount.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClaudeLease {
    fn drop(&mut self) {
        if let Some((version, leases)) = self.held.take()
            && let Ok(mut leases) = leases.lock()
            && let Some(n) = leases.get_mut(&version)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                leases.remove(&version);
            }
        }
    }
}

/// Writes `now` into a last-used marker; a failure is logged (the version
/// then looks older than it is, or starts its clock at the next prune).
fn touch(marker: &Path, now: u64) {
    let tmp = marker.with_extension(format!("tmp-{}", std::process::id()));
    let r = std::fs::write(&tmp, format!("{now}\n")).and_then(|()| std::fs::rename(&tmp, marker));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(marker = %marker.display(), error = %e, "cannot record when Claude Code was last used");
    }
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ClaudeBinaryError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let err = |source| ClaudeBinaryError::Cache {
        path: path.to_owned(),
        source,
    };
    tokio::fs::write(&tmp, bytes).await.map_err(err)?;
    tokio::fs::rename(&tmp, path).await.map_err(err)
}

/// `linux-x64`, `linux-arm64`, with `-musl` on musl systems.
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "x64",
    };
    let musl = std::fs::read_dir("/lib")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libc.musl-"))
        })
        .unwrap_or(false);
    format!("linux-{arch}{}", if musl { "-musl" } else { "" })
}

#[cfg(test)]
mod tests;
