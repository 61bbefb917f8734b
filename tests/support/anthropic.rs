//! A mock Anthropic Messages API for the real Claude Code CLI.
//!
//! Serves `POST /v1/messages` (and `?beta=true`): requests that offer tools
//! (the agent loop) get the next scripted turn of the script, streamed as
//! Anthropic's server-sent events (`message_start`, `content_block_*`,
//! `message_delta`, `message_stop`); other requests (titles, quota checks)
//! get a short text. Every request body is kept, so tests can check what the
//! CLI sent (e.g. that a resumed session carries the earlier turns). Scripts
//! live in `fixtures/claude/*.json`:
//! `{"turns": [{"content": [<text or tool_use blocks>], "stop_reason": "tool_use"}]}`.
//! When the script runs out, the mock answers "All done." with `end_turn`.
//! A turn may say `"delay_ms": N` to hold the response (timeout tests), or
//! `"hold": true` to hold it until the test calls [`MockAnthropic::release`]
//! (concurrency, stop and benchmark tests: event order, not durations).
//! [`MockAnthropic::push_turns`] adds turns while the mock runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A running mock.
pub struct MockAnthropic {
    /// Where it listens (all interfaces, so containers reach it through
    /// the engine's bridge).
    pub addr: SocketAddr,
    state: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
}

struct Shared {
    turns: Mutex<Vec<Value>>,
    next: Mutex<usize>,
    requests: Mutex<Vec<Value>>,
    api_keys: Mutex<Vec<String>>,
    /// Permits for held turns ([`MockAnthropic::release`]).
    gate: tokio::sync::Semaphore,
    /// Held turns waiting for a permit now.
    held: AtomicUsize,
}

impl MockAnthropic {
    /// Starts a mock replaying `fixtures/claude/<name>.json`.
    pub async fn start(name: &str) -> MockAnthropic {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/claude")
            .join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let script: Value = serde_json::from_str(&text).expect("script is JSON");
        let turns = script["turns"].as_array().cloned().unwrap_or_default();
        MockAnthropic::with_turns(turns).await
    }

    /// Starts a mock replaying `turns`.
    pub async fn with_turns(turns: Vec<Value>) -> MockAnthropic {
        let state = Arc::new(Shared {
            turns: Mutex::new(turns),
            next: Mutex::new(0),
            requests: Mutex::new(Vec::new()),
            api_keys: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
            held: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/messages", axum::routing::post(messages))
            .fallback(fallback)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind mock");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockAnthropic {
            addr,
            state,
            _server: server,
        }
    }

    /// The base URL as seen from a container on the engine's default
    /// network.
    pub fn container_url(&self) -> String {
        format!("http://host.containers.internal:{}", self.addr.port())
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// The agent-loop requests (those offering tools).
    pub fn agent_requests(&self) -> Vec<Value> {
        self.requests().into_iter().filter(is_agent).collect()
    }

    /// The `x-api-key` header of every request, in order (empty when absent).
    pub fn api_keys(&self) -> Vec<String> {
        self.state.api_keys.lock().expect("lock").clone()
    }

    /// How many scripted turns were served.
    pub fn served(&self) -> usize {
        *self.state.next.lock().expect("lock")
    }

    /// Appends turns to the script (served after the ones left).
    pub fn push_turns(&self, turns: Vec<Value>) {
        self.state.turns.lock().expect("lock").extend(turns);
    }

    /// How many `"hold": true` turns are waiting for [`Self::release`].
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Lets `n` held turns (present or future) answer.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }
}

fn is_agent(body: &Value) -> bool {
    body["tools"].as_array().is_some_and(|t| !t.is_empty())
}

async fn fallback(uri: axum::http::Uri) -> Response {
    (StatusCode::NOT_FOUND, format!("mock: no route for {uri}")).into_response()
}

async fn messages(State(state): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "mock: body is not JSON").into_response();
    };
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.api_keys.lock().expect("lock").push(key);
    state.requests.lock().expect("lock").push(req.clone());
    let model = req["model"].as_str().unwrap_or("claude-mock").to_owned();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let turn = if is_agent(&req) {
        let mut next = state.next.lock().expect("lock");
        let turns = state.turns.lock().expect("lock");
        let t = turns.get(*next).cloned();
        if t.is_some() {
            *next += 1;
        }
        t.unwrap_or_else(|| json!({"content": [{"type": "text", "text": "All done."}], "stop_reason": "end_turn"}))
    } else {
        json!({"content": [{"type": "text", "text": "Mock title"}], "stop_reason": "end_turn"})
    };
    if let Some(ms) = turn["delay_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if turn["hold"].as_bool() == Some(true) {
        // Counted while waiting, also if the client goes away meanwhile.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        state.held.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&state.held);
        if let Ok(p) = state.gate.acquire().await {
            p.forget();
        }
        drop(waiting);
    }
    let content = turn["content"].as_array().cloned().unwrap_or_default();
    let stop_reason = turn["stop_reason"]
        .as_str()
        .unwrap_or("end_turn")
        .to_owned();
    let id = format!("msg_mock_{}", state.requests.lock().expect("lock").len());
    if !stream {
        let body = json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 7}
        });
        return axum::Json(body).into_response();
    }
    let mut sse = String::new();
    let mut event = |name: &str, data: Value| {
        sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    );
    for (i, block) in content.iter().enumerate() {
        match block["type"].as_str() {
            Some("tool_use") => {
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block": {
                        "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
                );
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i, "delta": {
                        "type": "input_json_delta", "partial_json": block["input"].to_string()}}),
                );
            }
            _ => {
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                );
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i, "delta": {
                        "type": "text_delta", "text": block["text"].as_str().unwrap_or("")}}),
                );
            }
        }
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        );
    }
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": 7}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        sse,
    )
        .into_response()
}
