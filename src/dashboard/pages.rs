//! The dashboard's pages: board, repository, task, conversation (with
//! replay), actions timeline, network view, login, and the Stop action.
//!
//! Every page is one base layout (`templates/base.html`) around a *live
//! region* rendered by its own template. A request with the header
//! `X-Airut-Fragment: 1` gets the live region alone: the page's script
//! fetches it again when the event stream ([`super::sse`]) says something
//! changed, so pages update without a reload. Reads are blocking (fjall)
//! and run on the blocking pool. Everything from outside is escaped by
//! askama; only our own rendered fragments are inserted unescaped.

use askama::Template;
use axum::Router;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::AppState;
use super::replay::{self, Point, ReplayState, TaskActions};
use super::security::{self, Identity};
use super::views::{self, RepoView, TaskView};
use crate::events::{
    ConversationId, Decision, Event, RepoId, StreamId, TaskId, TaskStopRequestedV1,
};
use crate::log::{ExpectedVersion, NewEvent, StreamAppend};
use crate::projections::{
    AuditCursor, AuditEntry, AuditQuery, AuditRow, Order, StateCounts, Task, TaskFilter, TaskState,
};

/// Header asking for the live region only.
pub const FRAGMENT_HEADER: &str = "x-airut-fragment";
/// Done tasks per board page.
pub const DONE_PAGE: usize = 50;
/// Queued and running tasks shown on the board (the counts show all).
pub const ACTIVE_SHOWN: usize = 200;
/// Default and largest number of rows in the network view.
pub const NETWORK_ROWS: (usize, usize) = (500, 10_000);
/// Rows the network view scans for one page before giving up (filters).
pub const NETWORK_SCAN_BUDGET: usize = 200_000;

/// What the base layout needs.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    /// Page title.
    pub title: String,
    /// Breadcrumbs: (label, link); the last is the current page.
    pub crumbs: Vec<(String, String)>,
    /// The live stream URL, or empty for a static page.
    pub stream: String,
}

/// A page: the layout around a live region.
#[derive(Template)]
#[template(path = "page.html")]
pub struct Page {
    /// The layout.
    pub chrome: Chrome,
    /// The rendered live region (our own escaped HTML).
    pub live: String,
}

/// A message page (errors, results without script).
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    /// The layout.
    pub chrome: Chrome,
    /// CSS class (`error`, `ok`).
    pub class: &'static str,
    /// Heading.
    pub heading: String,
    /// Text.
    pub text: String,
    /// Link back (or empty).
    pub back: String,
}

/// The login form.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// The layout.
    pub chrome: Chrome,
    /// Why the last attempt failed (or empty).
    pub error: String,
}

/// The server box on the board.
#[derive(Debug, Clone)]
pub struct ServerView {
    /// Last start.
    pub started: String,
    /// Version and pid.
    pub version: String,
    /// Config generation.
    pub config: String,
    /// A changed config file that was not applied, and why.
    pub config_rejected: Option<String>,
    /// Head seq and hash.
    pub head: String,
}

/// The board's live region.
#[derive(Template)]
#[template(path = "board_live.html")]
pub struct BoardLive {
    /// `ok`, `degraded`, `booting`.
    pub health: &'static str,
    /// Server box.
    pub server: ServerView,
    /// Repos.
    pub repos: Vec<RepoView>,
    /// Counts.
    pub counts: StateCounts,
    /// Pending column.
    pub queued: Vec<TaskView>,
    /// Running column.
    pub running: Vec<TaskView>,
    /// Done column (one page).
    pub done: Vec<TaskView>,
    /// The page's cursor, when not the newest.
    pub before: Option<u64>,
    /// Cursor of the next (older) page.
    pub next_before: Option<u64>,
}

/// A repository's live region.
#[derive(Template)]
#[template(path = "repo_live.html")]
pub struct RepoLive {
    /// The repo.
    pub repo: RepoView,
    /// Its counts.
    pub counts: StateCounts,
    /// Its latest tasks.
    pub tasks: Vec<TaskView>,
}

/// A task's live region.
#[derive(Template)]
#[template(path = "task_live.html")]
pub struct TaskLive {
    /// The task.
    pub t: TaskView,
    /// Its latest prompt.
    pub prompt: String,
    /// Its reply.
    pub reply: String,
    /// CSRF token for the Stop form.
    pub csrf: String,
}

/// Conversation header facts.
#[derive(Debug, Clone)]
pub struct ConvView {
    /// Id.
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Repo.
    pub repo: String,
    /// Channel.
    pub channel: String,
    /// Start time.
    pub started: String,
    /// Model.
    pub model: String,
    /// Claude session.
    pub session: String,
    /// Messages.
    pub messages: u64,
    /// Expired.
    pub expired: bool,
}

/// A conversation's live region (at a replay point).
#[derive(Template)]
#[template(path = "conversation_live.html")]
pub struct ConversationLive {
    /// Header facts.
    pub conv: ConvView,
    /// The fold at the point.
    pub r: ReplayState,
    /// Whether the point is the head.
    pub live: bool,
    /// (task, prompt, reply) at the point.
    pub tasks: Vec<(TaskView, String, String)>,
}

/// The actions timeline.
#[derive(Template)]
#[template(path = "actions_live.html")]
pub struct ActionsLive {
    /// Conversation id.
    pub conv: String,
    /// Task id when scoped to one task, else empty.
    pub task: String,
    /// Short task id.
    pub task_short: String,
    /// One group per task.
    pub groups: Vec<TaskActions>,
}

/// One row of the network view.
#[derive(Debug, Clone)]
pub struct NetRow {
    /// Time.
    pub time: String,
    /// `allowed`, `blocked`, `failed`, `dns`.
    pub decision: &'static str,
    /// Method (or the DNS query type).
    pub method: String,
    /// Host (or the name asked for).
    pub host: String,
    /// Path and query (or the DNS answer).
    pub path: String,
    /// Status.
    pub status: String,
    /// Rule.
    pub rule: String,
    /// Reason.
    pub reason: String,
    /// Credential annotations and notes.
    pub credentials: String,
    /// Duration.
    pub duration: String,
    /// Task id.
    pub task: String,
    /// Short task id.
    pub task_short: String,
}

/// The network view.
#[derive(Template)]
#[template(path = "network_live.html")]
pub struct NetworkLive {
    /// What it is scoped to (empty for everything).
    pub scope: String,
    /// The page's path (filters submit to it).
    pub base: String,
    /// (value, label) of the decision filter.
    pub decisions: Vec<(&'static str, &'static str)>,
    /// The chosen decision filter.
    pub decision: String,
    /// The host filter.
    pub host: String,
    /// Rows asked for.
    pub limit: usize,
    /// The rows, newest first.
    pub rows: Vec<NetRow>,
    /// The scan budget ran out before the page filled.
    pub truncated: bool,
    /// Link to the next (older) page, or empty.
    pub older: String,
    /// Export links.
    pub export_jsonl: String,
    /// Export links.
    pub export_csv: String,
}

/// A page failure: status and message, shown as a message page.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

#[derive(Debug, Deserialize)]
struct BoardParams {
    before: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ReplayParams {
    at: Option<String>,
    v: Option<String>,
}

/// Filters of the network view (also used by the JSON API).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkParams {
    /// `allowed`, `blocked`, `failed`, `dns` or empty.
    pub decision: Option<String>,
    /// Host substring (case-insensitive).
    pub host: Option<String>,
    /// Rows.
    pub limit: Option<String>,
    /// Cursor `timestamp_us.seq`.
    pub before: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StopForm {
    csrf: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// The routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/", get(board))
        .route("/repo/{id}", get(repo))
        .route("/task/{id}", get(task))
        .route("/task/{id}/actions", get(task_actions))
        .route("/task/{id}/network", get(task_network))
        .route("/task/{id}/stop", post(stop))
        .route("/conversation/{id}", get(conversation))
        .route("/conversation/{id}/actions", get(conversation_actions))
        .route("/conversation/{id}/network", get(conversation_network))
        .route("/network", get(network))
        .route("/login", get(login_form).post(login))
        .with_state(state)
}

// === handlers ===

async fn board(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<BoardParams>,
) -> Result<Response, PageError> {
    let s = state.clone();
    let live = blocking(move || board_live(&s, p.before)).await?;
    let chrome = Chrome {
        title: "Board".into(),
        crumbs: vec![("Board".into(), "/".into())],
        stream: "/events/stream".into(),
    };
    render_page(&headers, chrome, &live)
}

async fn repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let s = state.clone();
    let repo_id = RepoId(id.clone());
    let live = blocking(move || -> Result<Option<RepoLive>, PageError> {
        let board = s.projections().board();
        let Some(r) = board.repo(&repo_id).map_err(PageError::internal)? else {
            return Ok(None);
        };
        let filter = TaskFilter {
            state: None,
            repo: Some(repo_id.clone()),
        };
        let page = board
            .tasks(&filter, Order::NewestFirst, None, 50)
            .map_err(PageError::internal)?;
        Ok(Some(RepoLive {
            repo: RepoView::new(&r),
            counts: board.counts(Some(&repo_id)).map_err(PageError::internal)?,
            tasks: task_views(&s, &page.tasks)?,
        }))
    })
    .await?
    .ok_or_else(|| PageError::not_found("Repository not found"))?;
    let chrome = Chrome {
        title: format!("Repository {id}"),
        crumbs: vec![
            ("Board".into(), "/".into()),
            (id.clone(), format!("/repo/{id}")),
        ],
        stream: "/events/stream".into(),
    };
    render_page(&headers, chrome, &live)
}

async fn task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let task_id = parse_task(&id)?;
    let s = state.clone();
    let (live, conv) = blocking(
        move || -> Result<Option<(TaskLive, ConversationId)>, PageError> {
            let Some(t) = s
                .projections()
                .board()
                .task(task_id)
                .map_err(PageError::internal)?
            else {
                return Ok(None);
            };
            let title = subject(&s, t.conversation);
            let (prompt, reply) = prompt_and_reply(&s, &t)?;
            Ok(Some((
                TaskLive {
                    t: TaskView::new(&t, &title, views::now_us()),
                    prompt,
                    reply,
                    csrf: security::csrf_token(&s, &identity),
                },
                t.conversation,
            )))
        },
    )
    .await?
    .ok_or_else(|| PageError::not_found("Task not found"))?;
    let chrome = Chrome {
        title: format!("Task {}", live.t.short_id),
        crumbs: vec![
            ("Board".into(), "/".into()),
            (
                format!("Conversation {conv}"),
                format!("/conversation/{conv}"),
            ),
            (format!("Task {}", live.t.short_id), format!("/task/{id}")),
        ],
        stream: format!("/events/stream?conversation={conv}"),
    };
    render_page(&headers, chrome, &live)
}

async fn conversation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Query<ReplayParams>,
) -> Result<Response, PageError> {
    let conv = parse_conv(&id)?;
    let point =
        match (p.at.as_deref(), p.v.as_deref()) {
            (Some(a), _) if !a.is_empty() => Point::Seq(a.parse().map_err(|_| {
                PageError::bad_request(format!("at={a:?} is not a sequence number"))
            })?),
            (_, Some(v)) if !v.is_empty() => Point::Version(
                v.parse()
                    .map_err(|_| PageError::bad_request(format!("v={v:?} is not a position")))?,
            ),
            _ => Point::Head,
        };
    let s = state.clone();
    let live = blocking(move || conversation_live(&s, conv, point))
        .await?
        .ok_or_else(|| PageError::not_found("Conversation not found"))?;
    let stream = if live.live {
        format!("/events/stream?conversation={conv}")
    } else {
        String::new()
    };
    let chrome = Chrome {
        title: format!("Conversation {conv}"),
        crumbs: vec![
            ("Board".into(), "/".into()),
            (
                format!("Conversation {conv}"),
                format!("/conversation/{conv}"),
            ),
        ],
        stream,
    };
    render_page(&headers, chrome, &live)
}

async fn conversation_actions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let conv = parse_conv(&id)?;
    actions_page(state, headers, conv, None).await
}

async fn task_actions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let task = parse_task(&id)?;
    let conv = task_conversation(&state, task).await?;
    actions_page(state, headers, conv, Some(task)).await
}

async fn actions_page(
    state: AppState,
    headers: HeaderMap,
    conv: ConversationId,
    task: Option<TaskId>,
) -> Result<Response, PageError> {
    let s = state.clone();
    let groups =
        blocking(move || replay::actions(s.log(), conv, task).map_err(PageError::internal))
            .await?
            .ok_or_else(|| PageError::not_found("Conversation not found"))?;
    let task_str = task.map(|t| t.to_string()).unwrap_or_default();
    let live = ActionsLive {
        conv: conv.to_string(),
        task_short: views::short_id(&task_str),
        task: task_str,
        groups,
    };
    let chrome = Chrome {
        title: format!("Actions {conv}"),
        crumbs: vec![
            ("Board".into(), "/".into()),
            (
                format!("Conversation {conv}"),
                format!("/conversation/{conv}"),
            ),
            ("Actions".into(), String::new()),
        ],
        stream: format!("/events/stream?conversation={conv}"),
    };
    render_page(&headers, chrome, &live)
}

async fn network(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<NetworkParams>,
) -> Result<Response, PageError> {
    network_page(
        state,
        headers,
        p,
        AuditQuery::default(),
        "/network".into(),
        String::new(),
    )
    .await
}

async fn conversation_network(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Query<NetworkParams>,
) -> Result<Response, PageError> {
    let conv = parse_conv(&id)?;
    let s = state.clone();
    let exists = blocking(move || {
        s.log()
            .stream_version(&conv.stream())
            .map_err(PageError::internal)
    })
    .await?;
    if exists == 0 {
        return Err(PageError::not_found("Conversation not found"));
    }
    let q = AuditQuery {
        conversation: Some(conv),
        ..Default::default()
    };
    network_page(
        state,
        headers,
        p,
        q,
        format!("/conversation/{conv}/network"),
        format!("conversation {conv}"),
    )
    .await
}

async fn task_network(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Query<NetworkParams>,
) -> Result<Response, PageError> {
    let task = parse_task(&id)?;
    let conv = task_conversation(&state, task).await?;
    let q = AuditQuery {
        task: Some(task),
        conversation: Some(conv),
        ..Default::default()
    };
    let short = views::short_id(&task.to_string());
    network_page(
        state,
        headers,
        p,
        q,
        format!("/task/{task}/network"),
        format!("task {short}"),
    )
    .await
}

async fn network_page(
    state: AppState,
    headers: HeaderMap,
    p: NetworkParams,
    q: AuditQuery,
    base: String,
    scope: String,
) -> Result<Response, PageError> {
    let s = state.clone();
    let conv = q.conversation;
    let live = blocking(move || network_live(&s, &p, &q, base, scope)).await?;
    let stream = match conv {
        Some(c) => format!("/events/stream?conversation={c}"),
        None => "/events/stream".into(),
    };
    let mut crumbs = vec![("Board".into(), "/".into())];
    if let Some(c) = conv {
        crumbs.push((format!("Conversation {c}"), format!("/conversation/{c}")));
    }
    crumbs.push(("Network".into(), String::new()));
    let chrome = Chrome {
        title: "Network".into(),
        crumbs,
        stream,
    };
    render_page(&headers, chrome, &live)
}

async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    Form(form): Form<StopForm>,
) -> Response {
    let fragment = headers.contains_key(FRAGMENT_HEADER);
    let reply = |status: StatusCode, class: &'static str, text: String| -> Response {
        if fragment {
            let body = format!(
                "<p class=\"stop-result {class}\">{}</p>",
                askama::filters::escape(&text, askama::filters::Html)
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            );
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        } else {
            message(status, class, "Stop task", &text, &format!("/task/{id}"))
        }
    };
    if let Err(e) = security::check_post(&state, &identity, &headers, form.csrf.as_deref()) {
        tracing::warn!(reason = %e, "refused a stop request");
        return reply(StatusCode::FORBIDDEN, "error", e.to_string());
    }
    let Ok(task_id) = id.parse::<TaskId>() else {
        return reply(StatusCode::NOT_FOUND, "error", "Task not found".into());
    };
    let s = state.clone();
    let found = blocking(move || {
        s.projections()
            .board()
            .task(task_id)
            .map_err(PageError::internal)
    })
    .await;
    let t = match found {
        Ok(Some(t)) => t,
        Ok(None) => return reply(StatusCode::NOT_FOUND, "error", "Task not found".into()),
        Err(e) => return reply(e.status, "error", e.message),
    };
    if t.state == TaskState::Done {
        return reply(
            StatusCode::CONFLICT,
            "error",
            "Task is not running (it is done)".into(),
        );
    }
    if t.stop_requested.is_some() {
        return reply(StatusCode::OK, "info", "Stop already requested".into());
    }
    let reason: String = form.reason.unwrap_or_default().chars().take(500).collect();
    let append = state
        .log()
        .append(StreamAppend {
            stream: t.conversation.stream(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event: Event::TaskStopRequested(TaskStopRequestedV1 {
                    task: task_id,
                    requested_by: identity.label(),
                    reason,
                }),
                causation: None,
            }],
        })
        .await;
    match append {
        Ok(a) => {
            tracing::info!(task = %task_id, by = %identity.label(), seq = %a.last, "stop requested");
            if fragment {
                reply(StatusCode::OK, "ok", "Stop requested".into())
            } else {
                Redirect::to(&format!("/task/{task_id}")).into_response()
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "could not record a stop request");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                format!("Could not record the stop request: {e}"),
            )
        }
    }
}

async fn login_form(State(state): State<AppState>) -> Response {
    if state.inner.auth.as_ref().is_none_or(|a| a.token.is_none()) {
        return message(
            StatusCode::NOT_FOUND,
            "error",
            "Sign in",
            "No dashboard token is configured; nothing to sign in to.",
            "/",
        );
    }
    html(StatusCode::OK, login_page(""))
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let origin_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| s == "same-origin" || s == "none");
    if origin_ok && security::token_matches(&state, &form.token) {
        let cookie = security::session_cookie(&state, &form.token);
        let mut r = Redirect::to("/").into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    tracing::warn!("failed dashboard sign-in");
    html(StatusCode::UNAUTHORIZED, login_page("Wrong token"))
}

// === building live regions ===

/// The board's live region (blocking).
pub fn board_live(state: &AppState, before: Option<u64>) -> Result<BoardLive, PageError> {
    let p = state.projections();
    let board = p.board();
    let list = |st: TaskState, after: Option<u64>, limit: usize| {
        board
            .tasks(
                &TaskFilter {
                    state: Some(st),
                    repo: None,
                },
                Order::NewestFirst,
                after.map(crate::events::Seq),
                limit,
            )
            .map_err(PageError::internal)
    };
    let queued = list(TaskState::Queued, None, ACTIVE_SHOWN)?;
    let running = list(TaskState::Running, None, ACTIVE_SHOWN)?;
    let done = list(TaskState::Done, before, DONE_PAGE)?;
    let repos = board.repos().map_err(PageError::internal)?;
    let info = board.server().map_err(PageError::internal)?;
    let counts = board.counts(None).map_err(PageError::internal)?;
    let health = health_of(&info, &repos);
    let head = state.log().head_hash();
    let server = ServerView {
        started: info
            .last_started
            .as_ref()
            .map(|s| format!("{} (pid {})", views::time(s.at.timestamp_us), s.pid))
            .unwrap_or_else(|| "-".into()),
        version: info
            .last_started
            .as_ref()
            .map(|s| s.version.clone())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
        config: info
            .config
            .as_ref()
            .map(|c| {
                let path = if c.path.is_empty() {
                    "built-in defaults"
                } else {
                    &c.path
                };
                format!("generation {} from {path}", c.generation)
            })
            .unwrap_or_else(|| "-".into()),
        config_rejected: info.config_rejected.as_ref().map(|r| {
            format!(
                "{} was changed {} but not applied (the running config stays): {}",
                r.path,
                views::time(r.at.timestamp_us),
                r.error
            )
        }),
        head: head
            .map(|(s, h)| format!("seq {s} · {}", crate::audit::hex(&h)))
            .unwrap_or_else(|| "-".into()),
    };
    Ok(BoardLive {
        health,
        server,
        repos: repos.iter().map(RepoView::new).collect(),
        counts,
        queued: task_views(state, &queued.tasks)?,
        running: task_views(state, &running.tasks)?,
        done: task_views(state, &done.tasks)?,
        before,
        next_before: done.next.map(|s| s.0),
    })
}

/// `ok`, `degraded` (no live repo) or `booting` (never started).
pub fn health_of(
    info: &crate::projections::ServerInfo,
    repos: &[crate::projections::Repo],
) -> &'static str {
    if info.last_started.is_none() {
        "booting"
    } else if repos.iter().any(|r| r.boot.as_ref().is_some_and(|b| b.ok)) {
        "ok"
    } else {
        "degraded"
    }
}

/// The conversation's live region at `point` (blocking).
pub fn conversation_live(
    state: &AppState,
    conv: ConversationId,
    point: Point,
) -> Result<Option<ConversationLive>, PageError> {
    let Some(r) = replay::replay(state.log(), conv, point).map_err(PageError::internal)? else {
        return Ok(None);
    };
    let c = state
        .projections()
        .conversations()
        .get(conv)
        .map_err(PageError::internal)?;
    let conv_view = match &c {
        Some(c) => ConvView {
            id: conv.to_string(),
            subject: c.subject.clone().unwrap_or_default(),
            repo: c.repo.0.clone(),
            channel: c.channel.clone(),
            started: views::time(c.started.timestamp_us),
            model: c.model.clone().unwrap_or_else(|| "-".into()),
            session: c.session_id.clone().unwrap_or_else(|| "-".into()),
            messages: c.message_count,
            expired: c.expired,
        },
        None => ConvView {
            id: conv.to_string(),
            subject: String::new(),
            repo: String::new(),
            channel: "-".into(),
            started: "-".into(),
            model: "-".into(),
            session: "-".into(),
            messages: 0,
            expired: false,
        },
    };
    let now = if point == Point::Head {
        views::now_us()
    } else {
        r.tasks
            .iter()
            .flat_map(|t| [t.task.completed_at_us, t.task.started_at_us])
            .flatten()
            .max()
            .unwrap_or(0)
    };
    let tasks = r
        .tasks
        .iter()
        .map(|t| {
            (
                TaskView::new(&t.task, &conv_view.subject, now),
                t.prompt.clone(),
                t.reply_text.clone(),
            )
        })
        .collect();
    Ok(Some(ConversationLive {
        conv: conv_view,
        live: r.next_seq.is_none() && point == Point::Head,
        r,
        tasks,
    }))
}

/// The network view's live region (blocking).
pub fn network_live(
    state: &AppState,
    p: &NetworkParams,
    q: &AuditQuery,
    base: String,
    scope: String,
) -> Result<NetworkLive, PageError> {
    let (rows, next, truncated) = network_rows(state, p, q)?;
    let decision = p.decision.clone().unwrap_or_default();
    let host = p.host.clone().unwrap_or_default();
    let limit = parse_limit(p.limit.as_deref())?;
    let qs = |extra: &str| {
        let mut parts = Vec::new();
        if !decision.is_empty() {
            parts.push(format!("decision={}", url_encode(&decision)));
        }
        if !host.is_empty() {
            parts.push(format!("host={}", url_encode(&host)));
        }
        parts.push(format!("limit={limit}"));
        if !extra.is_empty() {
            parts.push(extra.to_owned());
        }
        parts.join("&")
    };
    let older = match next {
        Some(c) => format!(
            "{base}?{}",
            qs(&format!("before={}.{}", c.timestamp_us, c.seq.0))
        ),
        None => String::new(),
    };
    let export = |fmt: &str| match q.conversation {
        Some(c) => format!("/export/network?conversation={c}&format={fmt}"),
        None => format!("/export/network?format={fmt}"),
    };
    Ok(NetworkLive {
        scope,
        base,
        decisions: vec![
            ("", "all"),
            ("allowed", "allowed"),
            ("blocked", "blocked"),
            ("failed", "failed"),
            ("dns", "DNS queries"),
        ],
        decision,
        host,
        limit,
        rows: rows.iter().map(net_row).collect(),
        truncated,
        older,
        export_jsonl: export("jsonl"),
        export_csv: export("csv"),
    })
}

/// Rows of the network view: newest first, filtered, at most `limit`; the
/// cursor of the next page; whether the scan budget ran out.
pub fn network_rows(
    state: &AppState,
    p: &NetworkParams,
    q: &AuditQuery,
) -> Result<(Vec<AuditRow>, Option<AuditCursor>, bool), PageError> {
    let limit = parse_limit(p.limit.as_deref())?;
    let decision = p.decision.as_deref().unwrap_or("");
    if !["", "allowed", "blocked", "failed", "dns"].contains(&decision) {
        return Err(PageError::bad_request(format!(
            "decision={decision:?}: expected allowed, blocked, failed or dns"
        )));
    }
    let host = p.host.as_deref().unwrap_or("").trim().to_ascii_lowercase();
    let before = match p.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(b) => {
            let parsed = b
                .split_once('.')
                .and_then(|(t, s)| Some((t.parse::<i64>().ok()?, s.parse::<u64>().ok()?)));
            let (timestamp_us, seq) = parsed.ok_or_else(|| {
                PageError::bad_request(format!("before={b:?}: expected <timestamp_us>.<seq>"))
            })?;
            Some(AuditCursor {
                timestamp_us,
                seq: crate::events::Seq(seq),
            })
        }
    };
    let mut rows = Vec::new();
    let mut scanned = 0usize;
    let mut more = false;
    for row in state.projections().audit().iter_newest(q, before) {
        let row = row.map_err(PageError::internal)?;
        scanned += 1;
        let here = AuditCursor {
            timestamp_us: row.timestamp_us,
            seq: row.seq,
        };
        if keep(&row, decision, &host) {
            if rows.len() == limit {
                more = true;
                break;
            }
            rows.push(row);
        }
        if scanned >= NETWORK_SCAN_BUDGET {
            return Ok((rows, Some(here), true));
        }
    }
    let next = if more {
        rows.last().map(|r| AuditCursor {
            timestamp_us: r.timestamp_us,
            seq: r.seq,
        })
    } else {
        None
    };
    Ok((rows, next, false))
}

fn keep(row: &AuditRow, decision: &str, host: &str) -> bool {
    let (d, h) = match &row.entry {
        AuditEntry::Request { decision, host, .. } => (decision_name(decision), host.as_str()),
        AuditEntry::Dns { name, .. } => ("dns", name.as_str()),
    };
    (decision.is_empty() || d == decision)
        && (host.is_empty() || h.to_ascii_lowercase().contains(host))
}

fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Allowed => "allowed",
        Decision::Blocked => "blocked",
        Decision::Failed => "failed",
    }
}

fn net_row(r: &AuditRow) -> NetRow {
    let task = r.task.to_string();
    let task_short = views::short_id(&task);
    let time = views::time(r.timestamp_us);
    match &r.entry {
        AuditEntry::Request {
            method,
            scheme,
            host,
            port,
            path,
            decision,
            rule,
            reason,
            status,
            duration_us,
            credentials,
            upstream_override,
            notes,
            ..
        } => {
            let mut creds: Vec<String> = credentials
                .iter()
                .map(|c| {
                    let header = c
                        .header
                        .as_deref()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    format!("{} {:?} x{}{header}", c.secret, c.action, c.count)
                })
                .collect();
            creds.extend(notes.iter().cloned());
            if let Some(o) = upstream_override {
                creds.push(format!("upstream: {o}"));
            }
            let default_port =
                (scheme == "https" && *port == 443) || (scheme == "http" && *port == 80);
            NetRow {
                time,
                decision: decision_name(decision),
                method: method.clone(),
                host: if default_port {
                    host.clone()
                } else {
                    format!("{host}:{port}")
                },
                path: path.clone(),
                status: status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                rule: rule.clone().unwrap_or_default(),
                reason: reason.clone().unwrap_or_default(),
                credentials: creds.join("; "),
                duration: format!("{}ms", duration_us / 1000),
                task,
                task_short,
            }
        }
        AuditEntry::Dns {
            name,
            qtype,
            answer,
        } => NetRow {
            time,
            decision: "dns",
            method: match qtype {
                1 => "A".into(),
                28 => "AAAA".into(),
                other => format!("type {other}"),
            },
            host: name.clone(),
            path: format!("-> {answer}"),
            status: "-".into(),
            rule: String::new(),
            reason: String::new(),
            credentials: String::new(),
            duration: "-".into(),
            task,
            task_short,
        },
    }
}

fn parse_limit(v: Option<&str>) -> Result<usize, PageError> {
    match v.filter(|v| !v.is_empty()) {
        None => Ok(NETWORK_ROWS.0),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=NETWORK_ROWS.1).contains(&n) => Ok(n),
            _ => Err(PageError::bad_request(format!(
                "limit={v:?}: expected 1 to {}",
                NETWORK_ROWS.1
            ))),
        },
    }
}

/// Task views with their conversation's subject.
fn task_views(state: &AppState, tasks: &[Task]) -> Result<Vec<TaskView>, PageError> {
    let now = views::now_us();
    Ok(tasks
        .iter()
        .map(|t| TaskView::new(t, &subject(state, t.conversation), now))
        .collect())
}

fn subject(state: &AppState, conv: ConversationId) -> String {
    state
        .projections()
        .conversations()
        .get(conv)
        .ok()
        .flatten()
        .and_then(|c| c.subject)
        .unwrap_or_default()
}

/// The prompt of a task's latest start and its reply text, from the log.
fn prompt_and_reply(state: &AppState, t: &Task) -> Result<(String, String), PageError> {
    use crate::events::EventType;
    let mut prompt = String::new();
    let mut reply = String::new();
    let stream: StreamId = t.conversation.stream();
    for rec in state.log().stream_iter(&stream, 1) {
        let rec = rec.map_err(PageError::internal)?;
        if rec.header.seq < t.queued.seq
            || !matches!(
                rec.event_type(),
                Some(EventType::TaskStarted | EventType::TaskCompleted)
            )
        {
            continue;
        }
        match rec.decode().map_err(PageError::internal)? {
            Event::TaskStarted(e) if e.task == t.id => prompt = e.prompt,
            Event::TaskCompleted(e) if e.task == t.id => reply = e.reply_text,
            _ => {}
        }
    }
    Ok((prompt, reply))
}

async fn task_conversation(state: &AppState, task: TaskId) -> Result<ConversationId, PageError> {
    let s = state.clone();
    blocking(move || {
        s.projections()
            .board()
            .task(task)
            .map_err(PageError::internal)
    })
    .await?
    .map(|t| t.conversation)
    .ok_or_else(|| PageError::not_found("Task not found"))
}

fn parse_conv(id: &str) -> Result<ConversationId, PageError> {
    id.parse()
        .map_err(|_| PageError::not_found("Conversation not found"))
}

fn parse_task(id: &str) -> Result<TaskId, PageError> {
    id.parse()
        .map_err(|_| PageError::not_found("Task not found"))
}

/// Renders `live` alone (fragment request) or inside the layout.
pub fn render_page(
    headers: &HeaderMap,
    chrome: Chrome,
    live: &impl Template,
) -> Result<Response, PageError> {
    let live = live.render().map_err(PageError::internal)?;
    if headers.contains_key(FRAGMENT_HEADER) {
        return Ok(html(StatusCode::OK, live));
    }
    let page = Page { chrome, live }
        .render()
        .map_err(PageError::internal)?;
    Ok(html(StatusCode::OK, page))
}

fn login_page(error: &str) -> String {
    LoginPage {
        chrome: Chrome {
            title: "Sign in".into(),
            crumbs: vec![("Sign in".into(), "/login".into())],
            stream: String::new(),
        },
        error: error.to_owned(),
    }
    .render()
    .unwrap_or_else(|e| format!("template error: {e}"))
}

/// A message page.
pub fn message(
    status: StatusCode,
    class: &'static str,
    heading: &str,
    text: &str,
    back: &str,
) -> Response {
    let page = MessagePage {
        chrome: Chrome {
            title: heading.to_owned(),
            crumbs: vec![
                ("Board".into(), "/".into()),
                (heading.to_owned(), String::new()),
            ],
            stream: String::new(),
        },
        class,
        heading: heading.to_owned(),
        text: text.to_owned(),
        back: back.to_owned(),
    }
    .render()
    .unwrap_or_else(|e| format!("template error: {e}"));
    html(status, page)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::VARY, "x-airut-fragment"),
        ],
        body,
    )
        .into_response()
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PageError> + Send + 'static,
) -> Result<T, PageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(PageError::internal)?
}

// === impl PageError ===

impl PageError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> String {
        self.message.clone()
    }

    fn not_found(msg: &str) -> Self {
        PageError {
            status: StatusCode::NOT_FOUND,
            message: msg.to_owned(),
        }
    }

    fn bad_request(msg: String) -> Self {
        PageError {
            status: StatusCode::BAD_REQUEST,
            message: msg,
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "dashboard page failed");
        PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("Internal error: {e}"),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let heading = match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Bad request",
            _ => "Error",
        };
        message(self.status, "error", heading, &self.message, "/")
    }
}

#[cfg(test)]
mod tests;
