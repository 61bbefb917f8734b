//! The HTTP API: health, status, and the streams behind the CLI's read
//! commands (events, conversation timelines, audit exports, store checks,
//! projection rebuilds).
//!
//! Every `/api/*` route requires `Authorization: Bearer <token>` with the
//! token from the runtime file; failures are JSON `{"error": ...}` with a
//! status that says whose fault it was.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::stream::blocking_body;
use crate::audit::{self, ExportFilter, ExportQuery, export::Format};
use crate::events::{ConversationId, Seq};

/// An API error: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

/// `/api/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// airut version.
    pub version: String,
    /// Server pid.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Last written sequence.
    pub head_seq: Option<u64>,
    /// Global chain value of the head (anchor it elsewhere).
    pub head_hash: Option<String>,
    /// Last sequence the projections applied.
    pub projections_seq: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct EventsParams {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    json: bool,
}

#[derive(Debug, Deserialize)]
struct TimelineParams {
    #[serde(default)]
    json: bool,
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    conversation: Option<String>,
    since_us: Option<i64>,
    #[serde(default = "default_format")]
    format: Format,
    #[serde(default = "default_filter")]
    filter: ExportFilter,
}

#[derive(Debug, Deserialize)]
struct RebuildParams {
    #[serde(default)]
    verify: bool,
}

fn default_format() -> Format {
    Format::Jsonl
}

fn default_filter() -> ExportFilter {
    ExportFilter::Network
}

/// All routes.
pub fn routes(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/conversations/{id}/timeline", get(timeline))
        .route("/api/audit", get(audit_export))
        .route("/api/check", get(check))
        .route("/api/projections/rebuild", post(rebuild))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api)
        .with_state(state)
}

/// Lets a request through with the runtime file's bearer token, or, when
/// `dashboard.auth` is configured, as an authenticated dashboard user.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if state.inner.auth.is_some()
        && let Some(id) = req.extensions().get::<super::security::Identity>()
        && id.is_authenticated()
    {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), state.inner.token.as_bytes()) => {
            next.run(req).await
        }
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (it is in <state_dir>/server.json)",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let head = state.log().head_hash();
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: state.inner.pid,
        uptime_s: state.inner.started.elapsed().as_secs(),
        head_seq: head.map(|(s, _)| s.0),
        head_hash: head.map(|(_, h)| audit::hex(&h)),
        projections_seq: state.projections().applied_seq().map(|s| s.0),
    })
}

async fn events(State(state): State<AppState>, Query(p): Query<EventsParams>) -> Response {
    let log = state.log().clone();
    let content_type = if p.json {
        "application/x-ndjson"
    } else {
        "text/plain; charset=utf-8"
    };
    let body = if p.follow {
        let sub = log.subscribe(Seq(p.from));
        let stream = futures_util::stream::unfold(sub, |mut sub| async move {
            sub.next().await.map(|item| (item, sub))
        });
        let stream = futures_util::StreamExt::take_until(
            stream,
            state.inner.shutdown.clone().cancelled_owned(),
        );
        let json = p.json;
        Body::from_stream(futures_util::StreamExt::map(stream, move |rec| {
            let mut buf = Vec::new();
            let r = rec
                .map_err(anyhow::Error::from)
                .and_then(|rec| audit::write_line(&rec, json, &mut buf));
            match r {
                Ok(()) => Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
                Err(e) => Ok(bytes::Bytes::from(format!("error: {e:#}\n"))),
            }
        }))
    } else {
        blocking_body(move |out| audit::write_events_from(&log, Seq(p.from), p.json, out))
    };
    streamed(content_type, body)
}

async fn timeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<TimelineParams>,
) -> Result<Response, ApiError> {
    let conv: ConversationId = id.parse().map_err(ApiError::bad_request)?;
    let log = state.log().clone();
    let check = log.clone();
    let exists = tokio::task::spawn_blocking(move || check.stream_version(&conv.stream()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    if exists == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no conversation {conv} in the log"),
        ));
    }
    let projections = state.projections().clone();
    let body = blocking_body(move |out| {
        let find = |id| projections.find_message(id).map_err(anyhow::Error::from);
        audit::write_timeline(&log, conv, &find, p.json, out).map(|_| ())
    });
    let ct = if p.json {
        "application/x-ndjson"
    } else {
        "text/plain; charset=utf-8"
    };
    Ok(streamed(ct, body))
}

async fn audit_export(
    State(state): State<AppState>,
    Query(p): Query<AuditParams>,
) -> Result<Response, ApiError> {
    let conversation = match p.conversation.as_deref() {
        Some(c) => Some(c.parse::<ConversationId>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let q = ExportQuery {
        conversation,
        since_us: p.since_us,
        until_us: None,
        format: p.format,
        filter: p.filter,
    };
    let log = state.log().clone();
    let body = blocking_body(move |out| audit::export_jsonl_csv(&log, &q, out).map(|_| ()));
    let ct = match p.format {
        Format::Jsonl => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    Ok(streamed(ct, body))
}

async fn check(State(state): State<AppState>) -> Result<Json<audit::StoreCheck>, ApiError> {
    let log = state.log().clone();
    let report = tokio::task::spawn_blocking(move || audit::StoreCheck::run(&log))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(report))
}

async fn rebuild(
    State(state): State<AppState>,
    Query(p): Query<RebuildParams>,
) -> Result<Json<crate::projections::RebuildReport>, ApiError> {
    let log = state.log().clone();
    let projections = state.projections().clone();
    let report = tokio::task::spawn_blocking(move || projections.rebuild_command(&log, p.verify))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(report))
}

pub(crate) fn streamed(content_type: &'static str, body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

// === impl ApiError ===

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.to_string())
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
