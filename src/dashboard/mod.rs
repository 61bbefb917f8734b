//! Dashboard and HTTP API: axum routes over the log and the projections.
//!
//! This module serves `/healthz` and the JSON/streaming API that the CLI's
//! read commands use when a server is running ([`api`]). The dashboard pages
//! (askama, SSE) land with the dashboard issue. Readers here never open
//! files written on the side: everything comes from the log or a projection.
//!
//! Binding: loopback only (config validation refuses anything else until
//! authentication exists); `/api/*` additionally requires the bearer token
//! from the runtime file.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::log::Log;
use crate::projections::Projections;

pub mod api;
mod stream;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    log: Log,
    projections: Projections,
    token: String,
    shutdown: tokio_util::sync::CancellationToken,
    started: tokio::time::Instant,
    pid: u32,
}

// === impl AppState ===

impl AppState {
    /// State for a server with this log, projections and API token.
    /// Endless responses (`--follow`) end when `shutdown` is cancelled, so
    /// they never hold up a graceful stop.
    pub fn new(
        log: Log,
        projections: Projections,
        token: String,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        AppState {
            inner: Arc::new(StateInner {
                log,
                projections,
                token,
                shutdown,
                started: tokio::time::Instant::now(),
                pid: std::process::id(),
            }),
        }
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// The projections.
    pub fn projections(&self) -> &Projections {
        &self.inner.projections
    }
}

/// The full router: health, API.
pub fn router(state: AppState) -> Router {
    api::routes(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then
/// stops accepting and lets in-flight requests finish (streams end when the
/// log closes).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
