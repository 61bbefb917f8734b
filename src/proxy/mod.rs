//! The egress proxy: the only way out of a task's container.
//!
//! The container runs with `--network none`; its init's relay carries each
//! connection to ports 80/443 (and a report of each DNS query) over a unix
//! socket made here, one per task ([`spawn_task`]). So the proxy knows the
//! task of every byte without trusting anything the sandbox says; what the
//! sandbox does say (the relay header) is validated as a claim.
//!
//! The pipeline, one file per step, top to bottom:
//! [`accept`] (socket → task) → [`relay_header`] (original port, DNS
//! reports) → [`tls`] (per-task CA, leaf per SNI) → [`http`] (consistency,
//! [`allowlist`], body cap, [`credentials`], [`forward`]) → [`audit`] (one
//! event per request and per DNS query, appended off the request path).
//!
//! Knows tasks only by an opaque [`TaskId`] and the stream their events go
//! to. Must never: forward a request the allowlist did not allow, put a real
//! secret value in an event or log line, or let a missing/invalid allowlist
//! mean an open network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::network::NetworkConfig;
use crate::events::{StreamId, TaskId};

pub mod accept;
pub mod allowlist;
pub mod audit;
pub mod bench;
pub mod credentials;
pub mod forward;
pub mod http;
pub mod relay_header;
pub mod testing;
pub mod tls;

pub use allowlist::{Allowlist, AllowlistError};
pub use audit::AuditSink;

/// Everything needed to run one task's proxy.
#[derive(Debug)]
pub struct TaskSpec {
    /// The task.
    pub task: TaskId,
    /// The stream its events go to (the conversation's).
    pub stream: StreamId,
    /// Where to make the unix socket (bind-mounted into the container).
    pub socket: PathBuf,
    /// The repo's allowlist as read from the default branch, or why it
    /// could not be used (then every request is blocked with that reason;
    /// the gateway should also fail the task).
    pub allowlist: Result<Allowlist, AllowlistError>,
    /// The repo's `network:` config.
    pub network: NetworkConfig,
    /// Timeouts and caps.
    pub limits: Limits,
}

/// Deadlines and caps of a task's proxy.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Relay header and TLS handshake.
    pub handshake_timeout: Duration,
    /// Reading a request's headers (slow-loris guard), also between
    /// keep-alive requests.
    pub header_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
}

/// Why a task's proxy could not start (the task must not run).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket could not be made.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The CA could not be made.
    #[error(transparent)]
    Ca(#[from] tls::CaError),
    /// The upstream client could not be built (extra CA file).
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
}

/// A running task proxy. Dropping it does not stop it; call
/// [`TaskProxy::shutdown`].
pub struct TaskProxy {
    state: Arc<TaskState>,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<()>,
    socket: PathBuf,
}

/// State shared by every connection of one task.
pub struct TaskState {
    task: TaskId,
    stream: StreamId,
    allowlist: Result<Allowlist, AllowlistError>,
    network: NetworkConfig,
    limits: Limits,
    credentials: credentials::TaskCredentials,
    ca: Arc<tls::TaskCa>,
    tls: Arc<rustls::ServerConfig>,
    upstream: forward::Upstream,
    audit: AuditSink,
    blocked: Mutex<BTreeSet<String>>,
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            max_connections: 512,
            grace: Duration::from_secs(5),
        }
    }
}

// === impl TaskState ===

impl TaskState {
    fn note_blocked(&self, host: &str) {
        if host.is_empty() {
            return;
        }
        if let Ok(mut b) = self.blocked.lock()
            && b.len() < 1000
        {
            b.insert(host.to_owned());
        }
    }
}

/// Starts the proxy of one task: makes its CA, surrogates and socket, and
/// serves until [`TaskProxy::shutdown`]. Must be called in a tokio runtime.
pub fn spawn_task(spec: TaskSpec, audit: AuditSink) -> Result<TaskProxy, ProxyError> {
    let ca = Arc::new(tls::TaskCa::new(&spec.task.to_string())?);
    let tls = ca.server_config()?;
    let upstream = forward::Upstream::new(spec.network.extra_ca_file.as_deref())?;
    let credentials = credentials::TaskCredentials::new(&spec.network.masked_secrets);
    let socket_err = |source| ProxyError::Socket {
        path: spec.socket.clone(),
        source,
    };
    match std::fs::remove_file(&spec.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err(e)),
    }
    let listener = tokio::net::UnixListener::bind(&spec.socket).map_err(socket_err)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        // The container's root may map to another uid (rootless, userns);
        // the socket's directory is what keeps other local users out.
        std::fs::set_permissions(&spec.socket, std::fs::Permissions::from_mode(0o666))
            .map_err(socket_err)?;
    }
    let state = Arc::new(TaskState {
        task: spec.task,
        stream: spec.stream,
        allowlist: spec.allowlist,
        network: spec.network,
        limits: spec.limits,
        credentials,
        ca,
        tls,
        upstream,
        audit,
        blocked: Mutex::new(BTreeSet::new()),
    });
    let cancel = CancellationToken::new();
    let join = tokio::spawn(accept::serve(listener, Arc::clone(&state), cancel.clone()));
    Ok(TaskProxy {
        state,
        cancel,
        join,
        socket: spec.socket,
    })
}

// === impl TaskProxy ===

impl TaskProxy {
    /// The task CA certificate (PEM) to install in the container.
    pub fn ca_certificate_pem(&self) -> &str {
        self.state.ca.certificate_pem()
    }

    /// Env name → surrogate of each masked secret, for the container.
    pub fn surrogates(&self) -> Vec<(String, String)> {
        self.state.credentials.surrogates()
    }

    /// Hosts the proxy blocked so far (sorted, at most 1000), for the
    /// task's result and the reply.
    pub fn blocked_hosts(&self) -> Vec<String> {
        self.state
            .blocked
            .lock()
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops accepting, closes open connections gracefully (within the
    /// grace period) and removes the socket.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.join.await {
            tracing::warn!(error = %e, "task proxy ended abnormally");
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
