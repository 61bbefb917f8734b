//! The runtime file: how CLI commands find a running server.
//!
//! `airut run` writes `<state_dir>/server.json` (mode 0600) after it has
//! bound its listener: the API address, a random bearer token and its pid.
//! The token proves the caller can read the state dir, so the loopback API
//! is not open to every local user. The file is removed on clean shutdown; a
//! file whose pid is gone is stale and ignored.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a running server publishes about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// The bound API address.
    pub addr: SocketAddr,
    /// Bearer token for `/api/*`.
    pub token: String,
    /// The server's process id.
    pub pid: u32,
    /// The server's airut version.
    pub version: String,
}

/// Removes the runtime file when dropped (clean shutdown).
#[derive(Debug)]
pub struct RuntimeGuard {
    path: PathBuf,
}

/// The runtime file's path in a state dir.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("server.json")
}

/// A new random API token (256 bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the runtime file atomically with mode 0600.
pub fn write(state_dir: &Path, info: &RuntimeInfo) -> std::io::Result<RuntimeGuard> {
    use std::os::unix::fs::OpenOptionsExt;
    let target = path(state_dir);
    let tmp = state_dir.join(format!(".server.json.{}", std::process::id()));
    let json = serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &target)?;
    Ok(RuntimeGuard { path: target })
}

/// Reads the runtime file; `None` when there is none.
pub fn read(state_dir: &Path) -> std::io::Result<Option<RuntimeInfo>> {
    match std::fs::read(path(state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a process with this pid exists (signal 0 probes without sending).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // kill(pid, 0) only checks existence and permission; EPERM means it exists.
    #[allow(unsafe_code)]
    // SAFETY: signal 0 sends nothing; the call has no memory effects.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

// === impl RuntimeGuard ===

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the runtime file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let info = RuntimeInfo {
            addr: "127.0.0.1:5200".parse().unwrap(),
            token: new_token(),
            pid: std::process::id(),
            version: "test".into(),
        };
        let guard = write(dir.path(), &info).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = read(dir.path()).unwrap().unwrap();
        assert_eq!(back.token, info.token);
        assert_eq!(info.token.len(), 64);
        assert!(pid_alive(back.pid));
        drop(guard);
        assert!(read(dir.path()).unwrap().is_none());
    }

    #[test]
    fn garbage_runtime_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        assert!(read(dir.path()).is_err());
    }
}
