//! `/events/stream`: the log as Server-Sent Events, for live pages.
//!
//! Each event is `id: <global seq>` and one line of JSON data (`seq`,
//! `type`, `stream`, `conversation`); pages use it as a signal to fetch
//! fresh fragments. The stream is a log subscription, not a poll: it
//! starts after `Last-Event-ID` (a reconnecting browser sends it), else
//! after `?after=SEQ`, else at the current head, and the subscription's
//! seam guarantee makes a resume gapless and duplicate-free.
//! `?conversation=ID` keeps only that conversation's events (ids stay
//! global, so resuming a filtered stream is still exact).
//!
//! At most [`MAX_STREAMS`] streams are open at once; past that the answer is
//! `429` with `Retry-After`. A comment line is sent after
//! [`HEARTBEAT`] of silence so proxies keep the connection. Streams end on
//! shutdown or when the log closes. Only headers are read: no payload is
//! decoded per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;

use super::AppState;
use crate::events::{ConversationId, EventType, Seq};
use crate::log::{Record, Subscription};

/// Streams open at once.
pub const MAX_STREAMS: usize = 64;
/// Silence after which a heartbeat comment is sent.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// What the browser waits before reconnecting (ms).
const RETRY_MS: u64 = 2000;

/// Counts open streams; a permit gives one back when dropped.
#[derive(Clone)]
pub struct StreamLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

struct Permit {
    open: Arc<AtomicUsize>,
}

#[derive(Debug, Deserialize)]
struct StreamParams {
    after: Option<u64>,
    conversation: Option<String>,
}

// === impl StreamLimit ===

impl StreamLimit {
    /// A limit of `max` streams.
    pub fn new(max: usize) -> Self {
        StreamLimit {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    fn try_acquire(&self) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                open: Arc::clone(&self.open),
            })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The route.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/events/stream", get(stream))
        .with_state(state)
}

/// Where a stream starts: after `Last-Event-ID`, else after `?after=`,
/// else after the head. An unparseable `Last-Event-ID` is a 400.
pub fn start_after(
    headers: &HeaderMap,
    after: Option<u64>,
    head: Option<Seq>,
) -> Result<Option<u64>, String> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v.to_str().unwrap_or("").trim();
        return text
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("Last-Event-ID {text:?} is not a sequence number"));
    }
    Ok(after.or(head.map(|s| s.0)))
}

async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<StreamParams>,
) -> Response {
    let conversation = match p.conversation.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match c.parse::<ConversationId>() {
            Ok(c) => Some(c),
            Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
        },
    };
    let after = match start_after(&headers, p.after, state.log().head()) {
        Ok(a) => a,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
    };
    let Some(permit) = state.inner.streams.try_acquire() else {
        let mut resp = plain(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many live streams (at most {}); close a dashboard tab or retry later",
                state.inner.streams.max
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    };
    let from = after.map_or(Seq(0), |a| Seq(a.saturating_add(1)));
    let sub = state.log().subscribe(from);
    let filter = conversation.map(|c| c.stream());
    let shutdown = state.inner.shutdown.clone();
    let first = Bytes::from(format!("retry: {RETRY_MS}\n: airut live stream\n\n"));
    let body = futures_util::stream::unfold(
        (Some(first), sub, permit, filter, shutdown),
        |(first, mut sub, permit, filter, shutdown): (
            Option<Bytes>,
            Subscription,
            Permit,
            Option<crate::events::StreamId>,
            tokio_util::sync::CancellationToken,
        )| async move {
            if let Some(b) = first {
                return Some((
                    Ok::<_, std::io::Error>(b),
                    (None, sub, permit, filter, shutdown),
                ));
            }
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    n = tokio::time::timeout(HEARTBEAT, sub.next()) => n,
                };
                match next {
                    Err(_) => {
                        let beat = Bytes::from_static(b": heartbeat\n\n");
                        return Some((Ok(beat), (None, sub, permit, filter, shutdown)));
                    }
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => {
                        tracing::warn!(error = %e, "live stream skipped an unreadable event");
                        continue;
                    }
                    Ok(Some(Ok(rec))) => {
                        if filter.as_ref().is_some_and(|f| *f != rec.header.stream) {
                            continue;
                        }
                        let frame = frame(&rec);
                        return Some((Ok(frame), (None, sub, permit, filter, shutdown)));
                    }
                }
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The SSE frame of one record.
pub fn frame(rec: &Record) -> Bytes {
    let h = &rec.header;
    let kind = EventType::from_code(h.event_type)
        .map(|t| t.name().to_owned())
        .unwrap_or_else(|| format!("unknown.{}", h.event_type));
    let data = serde_json::json!({
        "seq": h.seq.0,
        "type": kind,
        "stream": h.stream.as_str(),
        "conversation": h.stream.conversation().map(|c| c.to_string()),
    });
    Bytes::from(format!("id: {}\ndata: {data}\n\n", h.seq.0))
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}
