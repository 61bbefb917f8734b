//! The container engine: Podman's Docker-compatible API (root or rootless)
//! or Docker, reached through bollard on a unix socket.
//!
//! Discovery order: the configured socket (`sandbox.engine_socket`), then
//! `DOCKER_HOST` (unix sockets only), then the usual Podman paths
//! (`$XDG_RUNTIME_DIR/podman/podman.sock`, `/run/user/<uid>/podman/podman.sock`,
//! `/run/podman/podman.sock`), then Docker's `/var/run/docker.sock`. The
//! first socket that exists is used; the API version is negotiated, because
//! Podman's compat API reports an older version than bollard's default.
//!
//! Must never: fall back to another socket after the configured one fails
//! (an operator who names a socket means that one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;

/// Seconds bollard waits for one API request (builds stream, so this is per
/// response, not per build).
const REQUEST_TIMEOUT_SECS: u64 = 600;

/// How long connecting and negotiating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    /// The socket in use.
    pub socket: PathBuf,
    /// Where the socket came from (`config`, `DOCKER_HOST`, `default`).
    pub found_by: &'static str,
}

/// Why no engine could be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No socket exists at any of the places looked at. Start the engine's
    /// API (`podman system service --time=0`, or enable `podman.socket`),
    /// or set `sandbox.engine_socket`.
    #[error(
        "no container engine socket found (looked at: {}); start Podman's API service \
         (`systemctl enable --now podman.socket` or `podman system service --time=0`) \
         or set sandbox.engine_socket",
        tried.join(", ")
    )]
    NotFound {
        /// Every path looked at.
        tried: Vec<String>,
    },
    /// The socket exists but the engine did not answer. Check that the
    /// service behind it is running and that airut may use the socket.
    #[error("container engine at {socket} ({found_by}) does not answer: {reason}")]
    Unreachable {
        /// The socket.
        socket: String,
        /// Where it came from.
        found_by: &'static str,
        /// What failed.
        reason: String,
    },
    /// `DOCKER_HOST` names something other than a unix socket.
    #[error("DOCKER_HOST={0} is not a unix:// socket; airut talks to local engines only")]
    UnsupportedHost(String),
}

// === impl Engine ===

impl Engine {
    /// Finds the socket, connects and negotiates the API version.
    pub async fn connect(configured: Option<&Path>) -> Result<Engine, EngineError> {
        let (socket, found_by) = discover(configured, |k| std::env::var(k).ok())?;
        let socket_str = socket.display().to_string();
        let unreachable = |reason: String| EngineError::Unreachable {
            socket: socket_str.clone(),
            found_by,
            reason,
        };
        let docker = Docker::connect_with_unix(
            &socket_str,
            REQUEST_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Engine {
            docker,
            socket,
            found_by,
        })
    }

    /// The bollard client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }
}

/// Picks the socket; `env` reads environment variables (tests pass their own).
pub fn discover(
    configured: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(PathBuf, &'static str), EngineError> {
    if let Some(path) = configured {
        let path = path
            .to_str()
            .and_then(|s| s.strip_prefix("unix://"))
            .map(PathBuf::from)
            .unwrap_or_else(|| path.to_owned());
        return if path.exists() {
            Ok((path, "config"))
        } else {
            Err(EngineError::NotFound {
                tried: vec![format!("{} (sandbox.engine_socket)", path.display())],
            })
        };
    }
    let mut tried = Vec::new();
    if let Some(host) = env("DOCKER_HOST").filter(|h| !h.is_empty()) {
        let Some(path) = host.strip_prefix("unix://") else {
            return Err(EngineError::UnsupportedHost(host));
        };
        if Path::new(path).exists() {
            return Ok((PathBuf::from(path), "DOCKER_HOST"));
        }
        tried.push(format!("{path} (DOCKER_HOST)"));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(dir).join("podman/podman.sock"));
    }
    let uid = current_uid();
    candidates.push(PathBuf::from(format!("/run/user/{uid}/podman/podman.sock")));
    candidates.push(PathBuf::from("/run/podman/podman.sock"));
    candidates.push(PathBuf::from("/var/run/docker.sock"));
    for c in candidates {
        if c.exists() {
            return Ok((c, "default"));
        }
        tried.push(c.display().to_string());
    }
    Err(EngineError::NotFound { tried })
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // The owner of /proc/self is the process's uid (no unsafe libc call).
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_socket_wins_and_does_not_fall_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("s.sock");
        std::fs::write(&sock, b"").expect("touch");
        let env = |_: &str| Some(format!("unix://{}", "/nonexistent"));
        let (p, by) = discover(Some(&sock), env).expect("found");
        assert_eq!((p, by), (sock.clone(), "config"));
        let missing = dir.path().join("missing.sock");
        let err = discover(Some(&missing), env).expect_err("missing");
        assert!(err.to_string().contains("sandbox.engine_socket"), "{err}");
    }

    #[test]
    fn docker_host_then_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("p.sock");
        std::fs::write(&sock, b"").expect("touch");
        let host = format!("unix://{}", sock.display());
        let (p, by) =
            discover(None, |k| (k == "DOCKER_HOST").then(|| host.clone())).expect("found");
        assert_eq!((p, by), (sock.clone(), "DOCKER_HOST"));

        let rt = dir.path().to_str().expect("utf8").to_owned();
        std::fs::create_dir_all(dir.path().join("podman")).expect("mkdir");
        std::fs::write(dir.path().join("podman/podman.sock"), b"").expect("touch");
        let (p, by) =
            discover(None, |k| (k == "XDG_RUNTIME_DIR").then(|| rt.clone())).expect("found");
        assert_eq!(by, "default");
        assert!(p.ends_with("podman/podman.sock"));
    }

    #[test]
    fn bad_docker_host_is_a_clear_error() {
        let err = discover(None, |k| {
            (k == "DOCKER_HOST").then(|| "tcp://1.2.3.4:2375".to_owned())
        })
        .expect_err("tcp refused");
        assert!(matches!(err, EngineError::UnsupportedHost(_)));
    }
}
