//! Audit downloads from the UI: the network audit of a conversation or a
//! time range (JSONL with chain values, or CSV) and a conversation's full
//! event history (JSONL), streamed in constant memory from the log by
//! [`crate::audit::export_jsonl_csv`], the same code as `airut audit export`.
//!
//! `/export/network?conversation=ID&since=T&until=T&format=jsonl|csv`, where
//! `T` is RFC 3339 (`2026-11-28T10:00:00Z`) or microseconds since the epoch;
//! `/export/conversation/{id}` (JSONL of every event, verifiable with
//! `airut audit verify`).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::stream::blocking_body;
use crate::audit::{self, ExportFilter, ExportQuery, export::Format};
use crate::events::ConversationId;

#[derive(Debug, Deserialize)]
struct NetworkExport {
    conversation: Option<String>,
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

/// The routes.
pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/export/network", get(network))
        .route("/export/conversation/{id}", get(conversation))
        .with_state(state)
}

/// Parses a time bound: RFC 3339 or integer microseconds.
pub fn parse_time(v: &str) -> Result<i64, String> {
    if let Ok(us) = v.parse::<i64>() {
        return Ok(us);
    }
    let t = humantime::parse_rfc3339_weak(v).map_err(|_| {
        format!("{v:?} is not a time (RFC 3339 such as 2026-11-28T10:00:00Z, or microseconds)")
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{v:?} is before 1970"))?;
    i64::try_from(d.as_micros()).map_err(|_| format!("{v:?} is too far in the future"))
}

async fn network(State(state): State<AppState>, Query(p): Query<NetworkExport>) -> Response {
    let conversation = match p.conversation.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match c.parse::<ConversationId>() {
            Ok(c) => Some(c),
            Err(e) => return bad(e.to_string()),
        },
    };
    let bound = |v: Option<&str>| -> Result<Option<i64>, String> {
        v.filter(|s| !s.is_empty()).map(parse_time).transpose()
    };
    let (since_us, until_us) = match (bound(p.since.as_deref()), bound(p.until.as_deref())) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let format = match p.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => Format::Jsonl,
        "csv" => Format::Csv,
        other => return bad(format!("format={other:?}: expected jsonl or csv")),
    };
    let name = match conversation {
        Some(c) => format!("airut-network-{c}"),
        None => "airut-network".to_owned(),
    };
    let q = ExportQuery {
        conversation,
        since_us,
        until_us,
        format,
        filter: ExportFilter::Network,
    };
    download(&state, q, &name)
}

async fn conversation(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(conv) = id.parse::<ConversationId>() else {
        return not_found();
    };
    let log = state.log().clone();
    let exists = tokio::task::spawn_blocking(move || log.stream_version(&conv.stream())).await;
    if !matches!(exists, Ok(Ok(n)) if n > 0) {
        return not_found();
    }
    let q = ExportQuery {
        conversation: Some(conv),
        since_us: None,
        until_us: None,
        format: Format::Jsonl,
        filter: ExportFilter::All,
    };
    download(&state, q, &format!("airut-conversation-{conv}"))
}

fn download(state: &AppState, q: ExportQuery, name: &str) -> Response {
    let (ct, ext) = match q.format {
        Format::Jsonl => ("application/x-ndjson", "jsonl"),
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    let log = state.log().clone();
    let body = blocking_body(move |out| audit::export_jsonl_csv(&log, &q, out).map(|_| ()));
    let mut resp = super::api::streamed(ct, body);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{ext}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

fn bad(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Conversation not found\n",
    )
        .into_response()
}
