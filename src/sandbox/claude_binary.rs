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
//! Must never: run or mount a binary whose size or checksum does not match
//! the manifest.

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

/// Anthropic's release site.
pub const RELEASE_BASE: &str = "https://downloads.claude.ai/claude-code-releases";

/// Time for one small request (channel, manifest) to answer.
const SMALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the whole binary download.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest manifest or channel answer read.
const SMALL_MAX: usize = 1024 * 1024;

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
}

/// Resolves and caches Claude Code binaries. Cheap to clone.
#[derive(Clone)]
pub struct ClaudeBinaries {
    cache_dir: PathBuf,
    base_url: String,
    platform: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
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
        }
    }

    /// The binary for `source`.
    pub async fn resolve(&self, source: &ClaudeSource) -> Result<PathBuf, ClaudeBinaryError> {
        match source {
            ClaudeSource::Path(p) => {
                if p.is_file() {
                    Ok(p.clone())
                } else {
                    Err(ClaudeBinaryError::MissingPath(p.clone()))
                }
            }
            ClaudeSource::Version(v) if v == "stable" || v == "latest" => {
                let version = self.resolve_channel(v).await?;
                self.version(&version).await
            }
            ClaudeSource::Version(v) => self.version(v).await,
        }
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

    async fn version(&self, version: &str) -> Result<PathBuf, ClaudeBinaryError> {
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
