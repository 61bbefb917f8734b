//! The JSON read API for tools and scripts (bearer token, like the rest of
//! `/api/*`):
//!
//! | route | returns |
//! |---|---|
//! | `GET /api/health` | status, task counts, repos, log head (ETag, 304) |
//! | `GET /api/repos` | every repo with boot and channel health (ETag) |
//! | `GET /api/tasks?state=&repo=&before=&limit=` | a page of tasks, newest first (ETag) |
//! | `GET /api/tasks/{id}` | one task |
//! | `GET /api/conversations/{id}` | the conversation and its tasks (ETag) |
//! | `GET /api/conversations/{id}/events?from=SEQ` | its events from a sequence, NDJSON |
//! | `GET /api/network?conversation=&task=&decision=&host=&limit=&before=` | audit rows, newest first |
//!
//! ETags are a hash of the body, so a client polling with `If-None-Match`
//! gets `304` until something it can see changed.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{ApiError, require_token, streamed};
use super::pages::{self, NetworkParams};
use super::stream::blocking_body;
use crate::events::{ConversationId, RepoId, Seq, TaskId};
use crate::projections::{
    AuditCursor, AuditQuery, AuditRow, Conversation, Order, Repo, StateCounts, Task, TaskFilter,
    TaskState,
};

/// `/api/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok` (a repo is live), `degraded` (none is), `booting` (never started).
    pub status: String,
    /// Tasks per state.
    pub tasks: StateCounts,
    /// Repos by boot result.
    pub repos: RepoCounts,
    /// Last written sequence.
    pub head_seq: Option<u64>,
    /// Its global chain value.
    pub head_hash: Option<String>,
    /// Last sequence the projections applied.
    pub projections_seq: Option<u64>,
}

/// Repos by boot result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoCounts {
    /// Booted and serving.
    pub live: u64,
    /// Failed to boot.
    pub failed: u64,
    /// All known.
    pub total: u64,
}

/// A page of tasks.
#[derive(Debug, Clone, Serialize)]
pub struct TasksPage {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Pass as `before` for the next page.
    pub next: Option<u64>,
}

/// A conversation with its tasks.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationDetail {
    /// The conversation.
    pub conversation: Conversation,
    /// Its tasks, in queue order.
    pub tasks: Vec<Task>,
}

/// A page of network rows.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkPage {
    /// Rows, newest first.
    pub rows: Vec<AuditRow>,
    /// Pass as `before` for the next page (`timestamp_us.seq`).
    pub next: Option<String>,
    /// The scan budget ran out before the page filled.
    pub truncated: bool,
}

#[derive(Debug, Deserialize)]
struct TasksParams {
    state: Option<String>,
    repo: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct FromParams {
    #[serde(default)]
    from: u64,
}

#[derive(Debug, Deserialize)]
struct NetParams {
    conversation: Option<String>,
    task: Option<String>,
    #[serde(flatten)]
    view: NetworkParams,
}

/// The routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/repos", get(repos))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/conversations/{id}", get(conversation))
        .route("/api/conversations/{id}/events", get(conversation_events))
        .route("/api/network", get(network))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// The health document (blocking).
pub fn health_of(state: &AppState) -> Result<Health, ApiError> {
    let board = state.projections().board();
    let repos = board.repos().map_err(ApiError::internal)?;
    let info = board.server().map_err(ApiError::internal)?;
    let live = repos
        .iter()
        .filter(|r| r.boot.as_ref().is_some_and(|b| b.ok))
        .count() as u64;
    let failed = repos
        .iter()
        .filter(|r| r.boot.as_ref().is_some_and(|b| !b.ok))
        .count() as u64;
    let head = state.log().head_hash();
    Ok(Health {
        status: pages::health_of(&info, &repos).to_owned(),
        tasks: board.counts(None).map_err(ApiError::internal)?,
        repos: RepoCounts {
            live,
            failed,
            total: repos.len() as u64,
        },
        head_seq: head.map(|(s, _)| s.0),
        head_hash: head.map(|(_, h)| crate::audit::hex(&h)),
        projections_seq: state.projections().applied_seq().map(|s| s.0),
    })
}

async fn health(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let body = blocking(move || health_of(&state)).await?;
    Ok(with_etag(&headers, &body))
}

async fn repos(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let body: Vec<Repo> = blocking(move || {
        state
            .projections()
            .board()
            .repos()
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(with_etag(&headers, &body))
}

async fn tasks(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<TasksParams>,
) -> Result<Response, ApiError> {
    let st = match p.state.as_deref() {
        None | Some("") => None,
        Some("queued") => Some(TaskState::Queued),
        Some("running") => Some(TaskState::Running),
        Some("done") => Some(TaskState::Done),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state={other:?}: expected queued, running or done"
            )));
        }
    };
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let filter = TaskFilter {
        state: st,
        repo: p.repo.filter(|r| !r.is_empty()).map(RepoId),
    };
    let page = blocking(move || {
        state
            .projections()
            .board()
            .tasks(&filter, Order::NewestFirst, p.before.map(Seq), limit)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(with_etag(
        &headers,
        &TasksPage {
            tasks: page.tasks,
            next: page.next.map(|s| s.0),
        },
    ))
}

async fn task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let id: TaskId = id.parse().map_err(ApiError::bad_request)?;
    blocking(move || {
        state
            .projections()
            .board()
            .task(id)
            .map_err(ApiError::internal)
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no task {id}")))
}

async fn conversation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: ConversationId = id.parse().map_err(ApiError::bad_request)?;
    let detail = blocking(move || {
        let p = state.projections();
        let Some(c) = p.conversations().get(id).map_err(ApiError::internal)? else {
            return Ok(None);
        };
        let mut tasks = Vec::new();
        for t in &c.tasks {
            if let Some(t) = p.board().task(*t).map_err(ApiError::internal)? {
                tasks.push(t);
            }
        }
        Ok(Some(ConversationDetail {
            conversation: c,
            tasks,
        }))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no conversation {id}")))?;
    Ok(with_etag(&headers, &detail))
}

async fn conversation_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<FromParams>,
) -> Result<Response, ApiError> {
    let conv: ConversationId = id.parse().map_err(ApiError::bad_request)?;
    let log = state.log().clone();
    let check = log.clone();
    let n = blocking(move || {
        check
            .stream_version(&conv.stream())
            .map_err(ApiError::internal)
    })
    .await?;
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no conversation {conv}"),
        ));
    }
    let body = blocking_body(move |out| {
        let stream = conv.stream();
        for rec in log.stream_iter(&stream, 1) {
            let rec = rec?;
            if rec.header.seq >= Seq(p.from) {
                crate::audit::write_json_line(&rec, out)?;
            }
        }
        Ok(())
    });
    Ok(streamed("application/x-ndjson", body))
}

async fn network(
    State(state): State<AppState>,
    Query(p): Query<NetParams>,
) -> Result<Json<NetworkPage>, ApiError> {
    let conversation = match p.conversation.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(c.parse::<ConversationId>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let task = match p.task.as_deref().filter(|c| !c.is_empty()) {
        Some(t) => Some(t.parse::<TaskId>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let q = AuditQuery {
        conversation,
        task,
        since_us: None,
    };
    let (rows, next, truncated) = blocking(move || {
        pages::network_rows(&state, &p.view, &q).map_err(|e| ApiError::new(e.status(), e.message()))
    })
    .await?;
    Ok(Json(NetworkPage {
        rows,
        next: next.map(|c: AuditCursor| format!("{}.{}", c.timestamp_us, c.seq.0)),
        truncated,
    }))
}

/// JSON with an ETag over its bytes; `304` when `If-None-Match` matches.
pub fn with_etag(headers: &HeaderMap, value: &impl Serialize) -> Response {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let tag = format!(
        "\"{}\"",
        &crate::audit::hex(blake3::hash(&body).as_bytes())[..20]
    );
    let tag_value = HeaderValue::from_str(&tag).expect("hex etag is a valid header");
    let no_cache = HeaderValue::from_static("no-cache");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, tag_value), (header::CACHE_CONTROL, no_cache)],
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, tag_value),
            (header::CACHE_CONTROL, no_cache),
        ],
        body,
    )
        .into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}
