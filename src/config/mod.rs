//! Server configuration: `airut.yaml`, read in two stages.
//!
//! [`raw`] is the file as written: every scalar kept as text with its YAML
//! tag (`!env`, `!var`) and line. [`resolve`] turns that into a
//! [`ServerConfig`] (defaults applied, tags expanded, values parsed and
//! checked), collecting every problem rather than stopping at the first, each
//! naming the file, line and key path. A missing file is not an error: it
//! means the built-in defaults, a server with no repos.
//!
//! Must never: print a secret value (see [`Secret`]), accept an unknown key
//! (a typo would silently change nothing), or bind the API beyond loopback
//! (there is no authentication yet).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

pub use gateway::{ExecutionConfig, GitCredentials};

mod dashboard_auth;
pub mod email;
mod gateway;
pub mod network;
mod raw;
mod resolve;
mod sandbox;

pub use dashboard_auth::DashboardAuth;
#[cfg(test)]
mod tests;

pub use sandbox::{ClaudeSource, ResourceLimits, SandboxConfig, valid_claude_version};

/// The config format version this build reads and writes.
pub const CONFIG_VERSION: u32 = 1;

/// Largest config file accepted (a config is a few KiB; this stops a
/// mistaken path from being read into memory).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The resolved server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the event log and conversations live.
    pub state_dir: PathBuf,
    /// The API and dashboard listener.
    pub dashboard: DashboardConfig,
    /// Repositories by id.
    pub repos: BTreeMap<String, RepoConfig>,
    /// `execution:` (gateway concurrency, shutdown, expiry, git timeout).
    pub execution: ExecutionConfig,
    /// `sandbox:`: container engine, Claude Code binary, image cache.
    pub sandbox: SandboxConfig,
}

/// `dashboard:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardConfig {
    /// Address to bind (non-loopback only with `auth`).
    pub host: IpAddr,
    /// Port (0 = any free port; the runtime file says which).
    pub port: u16,
    /// Public URL of the dashboard, for links in replies.
    pub base_url: Option<String>,
    /// How people authenticate; required for a non-loopback `host`.
    pub auth: Option<DashboardAuth>,
}

/// `repos.<id>:`. Channel, sandbox and network sections are added by the
/// issues that use them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoConfig {
    /// The git remote the agent works on.
    pub repo_url: String,
    /// Default model.
    pub model: String,
    /// Default effort (`low`, `medium`, `high`, `max`).
    pub effort: Option<String>,
    /// `git:`: the server's credentials for the remote, if it needs any.
    pub git: Option<GitCredentials>,
    /// The email channel (`repos.<id>.email`), if configured.
    pub email: Option<email::EmailConfig>,
    /// `resource_limits:` of the task containers.
    pub resource_limits: ResourceLimits,
    /// `network:`: the network sandbox (see [`network`]).
    pub network: network::NetworkConfig,
}

/// A config as loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The resolved config.
    pub config: ServerConfig,
    /// The file it came from; `None` for built-in defaults.
    pub source: Option<PathBuf>,
    /// BLAKE3 of the file's bytes (zeros without a file); recorded in
    /// `config.loaded`.
    pub content_hash: [u8; 32],
    /// Things worth saying that are not errors (e.g. an unset optional
    /// `!env` variable).
    pub warnings: Vec<String>,
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file, when known.
    pub line: Option<u64>,
    /// Key path, e.g. `repos.widgets.model`.
    pub key: String,
    /// What is wrong, quoting the value as written.
    pub message: String,
}

/// Why a config could not be loaded. Each variant's message says what to
/// fix; the CLI adds what to try next.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read. Check its permissions.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML, not UTF-8, too large, or has the wrong
    /// shape (an unknown key, a list where a map belongs). The message
    /// points at the line.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with the line.
        message: String,
    },
    /// The file parsed, but values are wrong; every problem is listed.
    #[error("{}", format_problems(path, problems))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// A secret value from the config. Its `Debug` is redacted and it has no
/// `Display`, so it cannot end up in a log line by accident; use
/// [`Secret::expose`] where the real value is needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

// === impl Secret ===

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value. Call only where it is sent to its destination.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

// === impl ServerConfig ===

impl Default for ServerConfig {
    /// The built-in defaults: XDG state dir, API on 127.0.0.1:5200, no repos.
    fn default() -> Self {
        ServerConfig {
            state_dir: default_state_dir(),
            dashboard: DashboardConfig {
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 5200,
                base_url: None,
                auth: None,
            },
            repos: BTreeMap::new(),
            execution: ExecutionConfig::default(),
            sandbox: SandboxConfig::default(),
        }
    }
}

// === impl Problem ===

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

fn format_problems(path: &str, problems: &[Problem]) -> String {
    let mut s = format!(
        "{path}: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str(&format!("\n  {path}:{p}"));
    }
    s
}

/// `$XDG_CONFIG_HOME/airut/airut.yaml` (or `~/.config/airut/airut.yaml`).
pub fn default_path() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config")
        .join("airut")
        .join("airut.yaml")
}

/// `$XDG_STATE_HOME/airut` (or `~/.local/state/airut`).
pub fn default_state_dir() -> PathBuf {
    xdg_dir("XDG_STATE_HOME", ".local/state").join("airut")
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if Path::new(&v).is_absolute() => PathBuf::from(v),
        _ => home_dir().join(fallback),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Loads `path` (or [`default_path`]). A missing file gives the defaults.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let path = path.map(Path::to_owned).unwrap_or_else(default_path);
    let bytes = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                config: ServerConfig::default(),
                source: None,
                content_hash: [0; 32],
                warnings: Vec::new(),
            });
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
        Ok(meta) if meta.len() > MAX_FILE_BYTES => {
            return Err(ConfigError::Syntax {
                path: path.display().to_string(),
                message: format!(
                    "the file is {} bytes; a config is at most {MAX_FILE_BYTES}",
                    meta.len()
                ),
            });
        }
        Ok(_) => std::fs::read(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?,
    };
    let mut loaded = load_bytes(&bytes, &path.display().to_string(), &|v| {
        std::env::var(v).ok()
    })?;
    loaded.source = Some(path);
    Ok(loaded)
}

/// Loads config text from memory; `origin` names it in messages and `env`
/// looks up `!env` variables (tests pass their own).
pub fn load_bytes(
    bytes: &[u8],
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Syntax {
        path: origin.to_owned(),
        message: format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
    })?;
    let raw = raw::parse(text).map_err(|message| ConfigError::Syntax {
        path: origin.to_owned(),
        message,
    })?;
    let (config, warnings) =
        resolve::resolve(raw, env).map_err(|problems| ConfigError::Invalid {
            path: origin.to_owned(),
            problems,
        })?;
    Ok(Loaded {
        config,
        source: None,
        content_hash: *blake3::hash(bytes).as_bytes(),
        warnings,
    })
}
