//! Dashboard and HTTP API: axum routes over the log and the projections.
//!
//! * [`api`]: `/healthz` and the JSON/streaming API the CLI's read commands
//!   use; [`json`]: the read API for tools (health with ETag, repos, tasks,
//!   a conversation, its events, its network audit).
//! * [`pages`]: server-rendered pages (askama templates in `templates/`,
//!   one base layout) and their live fragments; [`views`] turns projection
//!   state into what templates show; [`actions`] renders the agent's
//!   stream-json; [`replay`] folds a conversation up to any sequence.
//! * [`sse`]: `/events/stream`, a log subscription as Server-Sent Events
//!   (resumable with `Last-Event-ID`, bounded, with heartbeats).
//! * [`security`]: authentication (`dashboard.auth`), CSRF tokens, security
//!   headers on every response; [`assets`]: the CSS and JS (no build step).
//!
//! Readers here never open files written on the side: everything comes from
//! the log or a projection. The only write is `task.stop_requested`.
//!
//! Binding: loopback by default; config validation refuses any other
//! address unless `dashboard.auth` is set. `/api/*` requires the bearer token
//! from the runtime file (or a dashboard login when auth is configured).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::log::Log;
use crate::projections::Projections;

pub mod actions;
pub mod api;
mod assets;
mod export;
pub mod json;
pub mod pages;
pub mod replay;
pub mod security;
#[doc(hidden)]
pub mod seed;
pub mod sse;
mod stream;
pub mod views;

use crate::config::DashboardAuth;

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
    auth: Option<DashboardAuth>,
    /// Secure cookies (the public URL is https).
    secure_cookies: bool,
    /// Per-process key for CSRF tokens.
    csrf_key: [u8; 32],
    /// Open SSE streams.
    streams: sse::StreamLimit,
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
                auth: None,
                secure_cookies: false,
                csrf_key: rand::random(),
                streams: sse::StreamLimit::new(sse::MAX_STREAMS),
            }),
        }
    }

    /// The same state with dashboard authentication (`dashboard.auth`) and
    /// the public URL (`https://` makes the session cookie `Secure`).
    /// Call before the state is cloned.
    pub fn with_auth(mut self, auth: Option<DashboardAuth>, base_url: Option<&str>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.auth = auth;
            inner.secure_cookies = base_url.is_some_and(|u| u.starts_with("https://"));
        } else {
            tracing::error!("dashboard auth set on a shared state; ignored");
        }
        self
    }

    /// The same state with another SSE stream limit (tests, benchmarks).
    pub fn with_stream_limit(mut self, max: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.streams = sse::StreamLimit::new(max);
        }
        self
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

/// The full router: health, API, pages, streams, assets, behind the
/// security layer (authentication, headers).
pub fn router(state: AppState) -> Router {
    let app = api::routes(state.clone())
        .merge(json::routes(state.clone()))
        .merge(pages::routes(state.clone()))
        .merge(export::routes(state.clone()))
        .merge(sse::routes(state.clone()))
        .merge(assets::routes());
    security::layer(app, state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then
/// stops accepting and lets in-flight requests finish (streams end when the
/// log closes).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
