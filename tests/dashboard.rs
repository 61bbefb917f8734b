//! The dashboard over HTTP: a real server on loopback over a real log and
//! projections, seeded with hostile conversations; every route's status,
//! content type, headers, ETags, 404s, CSRF refusals, authentication, and
//! SSE resume without gaps or duplicates.

#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::time::Duration;

use airut::config::DashboardAuth;
use airut::dashboard::seed::{self, HOSTILE, Seed};
use airut::dashboard::{self, AppState};
use airut::events::*;
use airut::log::{Log, LogOptions};
use airut::projections::Projections;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The API bearer token of test servers.
pub const API_TOKEN: &str = "test-api-token";

/// A running dashboard over a scratch log.
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub log: Log,
    pub projections: Projections,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Fixture {
    pub async fn start(auth: Option<DashboardAuth>, streams: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = tokio::task::spawn_blocking(move || Log::open(&path, LogOptions::default()))
            .await
            .unwrap()
            .unwrap();
        let l = log.clone();
        let projections = tokio::task::spawn_blocking(move || Projections::open(&l))
            .await
            .unwrap()
            .unwrap();
        let shutdown = CancellationToken::new();
        projections.spawn_follow(&log, shutdown.child_token());
        let state = AppState::new(
            log.clone(),
            projections.clone(),
            API_TOKEN.into(),
            shutdown.child_token(),
        )
        .with_auth(auth, None)
        .with_stream_limit(streams);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = shutdown.child_token();
        tokio::spawn(dashboard::serve(listener, state, async move {
            stop.cancelled().await
        }));
        Fixture {
            _dir: dir,
            log,
            projections,
            addr,
            shutdown,
        }
    }

    /// Waits until the projections have applied everything written.
    pub async fn settle(&self) {
        let head = self.log.head().unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.projections.wait_for(head))
            .await
            .expect("projections caught up");
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], "").await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
            .await
            .expect("response within a minute")
            .unwrap();
        parse(&raw)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            out.push_str(rest.get(..n.min(rest.len())).unwrap_or(""));
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A seeded server: one finished hostile conversation, one running task.
pub struct Seeded {
    pub fx: Fixture,
    pub done: Seed,
    pub running: Seed,
}

pub async fn seeded(auth: Option<DashboardAuth>, streams: usize) -> Seeded {
    let fx = Fixture::start(auth, streams).await;
    seed::boot(&fx.log, &["airut-rs"]).await.unwrap();
    let mut done = Seed::new("airut-rs", &format!("Fix it {HOSTILE}"));
    done.hostile = true;
    done.network = 20;
    done.append_finished(&fx.log).await.unwrap();
    let running = Seed::new("airut-rs", "Second task");
    running.open(&fx.log).await.unwrap();
    fx.log
        .append(seed::batch(
            running.conversation.stream(),
            running.start_events(),
        ))
        .await
        .unwrap();
    fx.settle().await;
    Seeded { fx, done, running }
}

/// Asserts `body` shows `HOSTILE` escaped, never as markup.
fn assert_escaped(body: &str) {
    assert!(
        !body.contains("<script>alert") && !body.contains("<img src=x"),
        "raw hostile markup in the page"
    );
    assert!(
        body.contains("script&#62;alert") || body.contains("script&gt;alert"),
        "hostile text is not visible (escaped) in the page"
    );
}

fn assert_security_headers(r: &Resp) {
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("referrer-policy").is_some());
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {API_TOKEN}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_escaped_with_security_headers() {
    let s = seeded(None, 8).await;
    let (fx, done, running) = (&s.fx, &s.done, &s.running);

    let board = fx.get("/").await;
    assert_eq!(board.status, 200);
    assert_eq!(
        board.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_security_headers(&board);
    assert_escaped(&board.body);
    assert!(board.body.contains("Running (1)"), "{}", board.body);
    assert!(board.body.contains("Done (1)"));
    assert!(board.body.contains(&running.task.to_string()));
    assert!(board.body.contains("airut-rs"));
    assert!(board.body.contains("data-stream=\"/events/stream\""));

    let task = fx.get(&format!("/task/{}", done.task)).await;
    assert_eq!(task.status, 200);
    assert_escaped(&task.body);
    for want in [
        "DONE - Succeeded",
        "$0.0421",
        "Fixed the flaky test",
        "Reproduce the failure",
    ] {
        assert!(task.body.contains(want), "task page lacks {want}");
    }
    assert!(!task.body.contains("stop-form"), "no Stop for a done task");
    let run = fx.get(&format!("/task/{}", running.task)).await;
    assert!(run.body.contains("class=\"stop-form\""));
    assert!(run.body.contains("name=\"csrf\""));

    let conv = fx
        .get(&format!("/conversation/{}", done.conversation))
        .await;
    assert_eq!(conv.status, 200);
    assert_escaped(&conv.body);
    assert!(conv.body.contains("id=\"replay-slider\""));
    assert!(conv.body.contains("task.completed"));

    let actions = fx
        .get(&format!("/conversation/{}/actions", done.conversation))
        .await;
    assert_eq!(actions.status, 200);
    assert_escaped(&actions.body);
    for want in [
        "$ cargo test idle",
        "Run the IDLE tests (timeout=120000ms)",
        "/workspace/src/imap.rs",
        "/idle_timeout/",
        "tests/**/*.rs",
        "Task: reviewer",
        "show 25 more lines",
        "class=\"del\"",
        "class=\"add\"",
        "result (error)",
        "subagent:08",
        "1/3 done",
    ] {
        assert!(actions.body.contains(want), "actions page lacks {want}");
    }
    let task_actions = fx.get(&format!("/task/{}/actions", done.task)).await;
    assert_eq!(task_actions.status, 200);
    assert!(task_actions.body.contains("Reply #1"));

    let net = fx
        .get(&format!("/conversation/{}/network", done.conversation))
        .await;
    assert_eq!(net.status, 200);
    assert_escaped(&net.body);
    assert!(net.body.contains("api.github.com"));
    assert!(net.body.contains("GH_TOKEN Swapped x1 (authorization)"));
    assert!(net.body.contains("host18.example.com") || net.body.contains("host9.example.com"));
    let blocked = fx
        .get(&format!(
            "/conversation/{}/network?decision=blocked",
            done.conversation
        ))
        .await;
    assert!(blocked.body.contains("evil.example.net"));
    assert!(!blocked.body.contains("dec-allowed"));
    let by_host = fx.get("/network?host=GITHUB&limit=3").await;
    assert_eq!(by_host.status, 200);
    assert!(!by_host.body.contains("evil.example.net\u{3c}"));
    assert_eq!(by_host.body.matches("class=\"net-allowed\"").count(), 3);
    assert!(by_host.body.contains("class=\"older\""));
    assert_eq!(
        fx.get(&format!("/task/{}/network", done.task)).await.status,
        200
    );
    assert_eq!(fx.get("/network?decision=maybe").await.status, 400);
    assert_eq!(fx.get("/network?limit=0").await.status, 400);
    assert_eq!(fx.get("/network?before=x").await.status, 400);

    let repo = fx.get("/repo/airut-rs").await;
    assert_eq!(repo.status, 200);
    assert!(repo.body.contains("IMAP IDLE"));

    // The live region alone, for the page's script.
    let frag = fx
        .request("GET", "/", &[("X-Airut-Fragment", "1")], "")
        .await;
    assert_eq!(frag.status, 200);
    assert!(!frag.body.contains("<!DOCTYPE"));
    assert!(frag.body.contains("Running (1)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_bad_input() {
    let s = seeded(None, 8).await;
    let fx = &s.fx;
    for path in [
        "/task/not-a-uuid",
        "/task/01890000-0000-7000-8000-000000000000",
        "/task/01890000-0000-7000-8000-000000000000/actions",
        "/task/01890000-0000-7000-8000-000000000000/network",
        "/conversation/zzzz",
        "/conversation/00000000",
        "/conversation/00000000/actions",
        "/conversation/00000000/network",
        "/repo/nope",
        "/no/such/page",
        "/static/../../etc/passwd",
        "/static/nope.js",
        "/export/conversation/00000000",
    ] {
        let r = fx.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_security_headers(&r);
        assert!(
            r.header("content-type").unwrap().starts_with("text/"),
            "{path}"
        );
    }
    let api = fx.request("GET", "/api/nope", &[], "").await;
    assert_eq!(api.status, 404);
    assert_eq!(api.header("content-type"), Some("application/json"));
    let conv = s.done.conversation;
    for bad in ["at=x", "v=-1", "at=1e3"] {
        let r = fx.get(&format!("/conversation/{conv}?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    // Hostile path segments are echoed nowhere unescaped.
    let r = fx.get("/repo/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("<script>alert"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_the_conversation_at_any_point() {
    let s = seeded(None, 8).await;
    let (fx, done) = (&s.fx, &s.done);
    let stream = done.conversation.stream();
    let version = fx.log.stream_version(&stream).unwrap();
    // Find the seqs of task.queued and task.started in the stream.
    let mut queued = None;
    let mut started = None;
    for rec in fx.log.stream_iter(&stream, 1) {
        let rec = rec.unwrap();
        match rec.event_type() {
            Some(EventType::TaskQueued) => queued = Some(rec.header.seq.0),
            Some(EventType::TaskStarted) => started = Some(rec.header.seq.0),
            _ => {}
        }
    }
    let conv = done.conversation;
    let at_queued = fx
        .get(&format!("/conversation/{conv}?at={}", queued.unwrap()))
        .await;
    assert_eq!(at_queued.status, 200);
    assert!(at_queued.body.contains(">QUEUED<"), "{}", at_queued.body);
    assert!(!at_queued.body.contains("DONE - Succeeded"));
    assert!(at_queued.body.contains(&format!("at event 2 of {version}")));
    assert!(
        at_queued.body.contains("data-stream=\"\""),
        "a past point is static"
    );
    let at_started = fx
        .get(&format!("/conversation/{conv}?at={}", started.unwrap()))
        .await;
    assert!(at_started.body.contains(">RUNNING<"));
    assert!(at_started.body.contains("id=\"replay-prev\""));
    assert!(at_started.body.contains("id=\"replay-next\""));
    let first = fx.get(&format!("/conversation/{conv}?v=1")).await;
    assert!(first.body.contains("No tasks yet"));
    let head = fx.get(&format!("/conversation/{conv}")).await;
    assert!(head.body.contains("DONE - Succeeded"));
    assert!(head.body.contains(">live<"));
    // A running conversation replays too.
    let r = fx
        .get(&format!("/conversation/{}?v=2", s.running.conversation))
        .await;
    assert!(r.body.contains(">QUEUED<"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_have_etags_and_304() {
    let fx = Fixture::start(None, 8).await;
    for (path, ct) in [
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/app.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let r = fx.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ct));
        let tag = r.header("etag").unwrap().to_owned();
        let again = fx
            .request("GET", path, &[("If-None-Match", &tag)], "")
            .await;
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        assert_security_headers(&again);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_with_etags() {
    let s = seeded(None, 8).await;
    let (fx, done) = (&s.fx, &s.done);
    let b = bearer();
    let auth = [(b.0, b.1.as_str())];
    assert_eq!(fx.get("/api/health").await.status, 401);
    let h = fx.request("GET", "/api/health", &auth, "").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["tasks"]["running"], 1);
    assert_eq!(v["repos"]["live"], 1);
    let tag = h.header("etag").unwrap().to_owned();
    let same = fx
        .request(
            "GET",
            "/api/health",
            &[auth[0], ("If-None-Match", &tag)],
            "",
        )
        .await;
    assert_eq!(same.status, 304);
    // A new event changes the ETag.
    Seed::new("airut-rs", "third").open(&fx.log).await.unwrap();
    fx.settle().await;
    let changed = fx
        .request(
            "GET",
            "/api/health",
            &[auth[0], ("If-None-Match", &tag)],
            "",
        )
        .await;
    assert_eq!(changed.status, 200);

    let repos = fx.request("GET", "/api/repos", &auth, "").await;
    assert_eq!(repos.status, 200);
    assert!(repos.header("etag").is_some());
    let tasks = fx
        .request("GET", "/api/tasks?state=done&limit=5", &auth, "")
        .await;
    let v: serde_json::Value = serde_json::from_str(&tasks.body).unwrap();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(
        fx.request("GET", "/api/tasks?state=maybe", &auth, "")
            .await
            .status,
        400
    );
    assert_eq!(
        fx.request("GET", "/api/tasks?limit=0", &auth, "")
            .await
            .status,
        400
    );
    let one = fx
        .request("GET", &format!("/api/tasks/{}", done.task), &auth, "")
        .await;
    assert_eq!(one.status, 200);
    assert!(one.body.contains("\"state\":\"done\""));
    assert_eq!(
        fx.request(
            "GET",
            "/api/tasks/01890000-0000-7000-8000-000000000000",
            &auth,
            ""
        )
        .await
        .status,
        404
    );
    assert_eq!(
        fx.request("GET", "/api/tasks/x", &auth, "").await.status,
        400
    );
    let conv = fx
        .request(
            "GET",
            &format!("/api/conversations/{}", done.conversation),
            &auth,
            "",
        )
        .await;
    assert_eq!(conv.status, 200);
    let v: serde_json::Value = serde_json::from_str(&conv.body).unwrap();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(
        fx.request("GET", "/api/conversations/00000000", &auth, "")
            .await
            .status,
        404
    );
    // Events from a sequence number.
    let all = fx
        .request(
            "GET",
            &format!("/api/conversations/{}/events", done.conversation),
            &auth,
            "",
        )
        .await;
    assert_eq!(all.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = all
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mid = lines[lines.len() / 2]["seq"].as_u64().unwrap();
    let tail = fx
        .request(
            "GET",
            &format!("/api/conversations/{}/events?from={mid}", done.conversation),
            &auth,
            "",
        )
        .await;
    let first: serde_json::Value = serde_json::from_str(tail.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"].as_u64(), Some(mid));
    assert_eq!(tail.body.lines().count(), lines.len() - lines.len() / 2);
    // Network audit.
    let net = fx
        .request(
            "GET",
            &format!(
                "/api/network?conversation={}&decision=blocked&limit=3",
                done.conversation
            ),
            &auth,
            "",
        )
        .await;
    assert_eq!(net.status, 200);
    let v: serde_json::Value = serde_json::from_str(&net.body).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);
    assert!(v["next"].is_string());
    assert_eq!(
        fx.request("GET", "/api/network?conversation=nothex!", &auth, "")
            .await
            .status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_jsonl_and_csv() {
    let s = seeded(None, 8).await;
    let (fx, done) = (&s.fx, &s.done);
    let conv = done.conversation;
    let jsonl = fx
        .get(&format!("/export/network?conversation={conv}&format=jsonl"))
        .await;
    assert_eq!(jsonl.status, 200);
    assert_eq!(jsonl.header("content-type"), Some("application/x-ndjson"));
    assert!(
        jsonl
            .header("content-disposition")
            .unwrap()
            .contains(&format!("airut-network-{conv}.jsonl"))
    );
    let full = jsonl
        .body
        .lines()
        .filter(|l| !l.contains("\"link\":true"))
        .count();
    assert_eq!(full, 20);
    let csv = fx
        .get(&format!("/export/network?conversation={conv}&format=csv"))
        .await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(csv.body.lines().count(), 21);
    // A time range: nothing before the epoch's first second, everything in range.
    let none = fx.get("/export/network?until=1970-01-01T00:00:01Z").await;
    assert_eq!(none.status, 200);
    assert_eq!(none.body.lines().count(), 0);
    let range = fx
        .get("/export/network?since=2000-01-01T00:00:00Z&until=9999999999999999&format=csv")
        .await;
    assert_eq!(range.body.lines().count(), 21);
    let history = fx.get(&format!("/export/conversation/{conv}")).await;
    assert_eq!(history.status, 200);
    assert_eq!(
        history.body.lines().count() as u64,
        fx.log.stream_version(&conv.stream()).unwrap()
    );
    assert!(!history.body.contains("\"link\":true"));
    for bad in [
        "/export/network?format=xml",
        "/export/network?since=yesterday",
        "/export/network?conversation=12",
    ] {
        assert_eq!(fx.get(bad).await.status, 400, "{bad}");
    }
}

/// Posts the Stop form of `task` with `csrf` and extra headers.
async fn post_stop(fx: &Fixture, task: TaskId, csrf: &str, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    fx.request(
        "POST",
        &format!("/task/{task}/stop"),
        &h,
        &format!("csrf={csrf}&reason=operator"),
    )
    .await
}

fn csrf_of(page: &str) -> String {
    let i = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[i..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_needs_csrf_token_and_same_origin() {
    let s = seeded(None, 8).await;
    let (fx, running, done) = (&s.fx, &s.running, &s.done);
    let page = fx.get(&format!("/task/{}", running.task)).await;
    let csrf = csrf_of(&page.body);
    let origin = format!("http://{}", fx.addr);
    let same = [
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];

    let no_token = post_stop(fx, running.task, "", &same).await;
    assert_eq!(no_token.status, 403);
    assert!(no_token.body.contains("CSRF"));
    let wrong = post_stop(fx, running.task, "00112233445566778899aabbccddeeff", &same).await;
    assert_eq!(wrong.status, 403);
    let cross = post_stop(
        fx,
        running.task,
        &csrf,
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    )
    .await;
    assert_eq!(cross.status, 403);
    let cross_origin_only = post_stop(
        fx,
        running.task,
        &csrf,
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(cross_origin_only.status, 403);
    let no_origin = post_stop(fx, running.task, &csrf, &[]).await;
    assert_eq!(no_origin.status, 403);
    let before = fx.log.head().unwrap();
    assert_eq!(fx.log.head().unwrap(), before, "refusals append nothing");

    let ok = post_stop(
        fx,
        running.task,
        &csrf,
        &[same[0], same[1], ("X-Airut-Fragment", "1")],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Stop requested"));
    let rec = fx.log.read(fx.log.head().unwrap()).unwrap().unwrap();
    match rec.decode().unwrap() {
        Event::TaskStopRequested(e) => {
            assert_eq!(e.task, running.task);
            assert_eq!(e.requested_by, "dashboard:local");
            assert_eq!(e.reason, "operator");
        }
        other => panic!("expected task.stop_requested, got {other:?}"),
    }
    assert_eq!(rec.header.stream, running.conversation.stream());
    fx.settle().await;
    let after = fx.get(&format!("/task/{}", running.task)).await;
    assert!(after.body.contains("id=\"stop-requested\""));
    assert!(!after.body.contains("class=\"stop-form\""));
    let again = post_stop(fx, running.task, &csrf, &same).await;
    assert!(again.body.contains("already requested"));
    let finished = post_stop(fx, done.task, &csrf, &same).await;
    assert_eq!(finished.status, 409);
    let unknown = post_stop(fx, TaskId(uuid::Uuid::from_u128(9)), &csrf, &same).await;
    assert_eq!(unknown.status, 404);
    // Without the fragment header the browser is sent back to the task.
    let second = Seed::new("airut-rs", "to stop");
    second.open(&fx.log).await.unwrap();
    fx.settle().await;
    let plain = post_stop(fx, second.task, &csrf, &same).await;
    assert_eq!(plain.status, 303);
    assert_eq!(
        plain.header("location"),
        Some(format!("/task/{}", second.task).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_login_cookie_and_bearer() {
    let token = "correct-horse-battery-staple";
    let s = seeded(Some(DashboardAuth::token(token)), 8).await;
    let fx = &s.fx;
    let r = fx.get("/").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    assert_eq!(fx.get("/events/stream").await.status, 401);
    assert_eq!(fx.get("/login").await.status, 200);
    assert_eq!(fx.get("/static/app.js").await.status, 200);
    let wrong = fx
        .request(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "token=nope",
        )
        .await;
    assert_eq!(wrong.status, 401);
    let login = fx
        .request(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("token={token}"),
        )
        .await;
    assert_eq!(login.status, 303);
    let cookie = login.header("set-cookie").unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(
        !cookie.contains(token),
        "the cookie must not carry the token"
    );
    let pair = cookie.split(';').next().unwrap();
    let page = fx.request("GET", "/", &[("Cookie", pair)], "").await;
    assert_eq!(page.status, 200);
    let bearer = format!("Bearer {token}");
    let api = fx
        .request("GET", "/api/health", &[("Authorization", &bearer)], "")
        .await;
    assert_eq!(api.status, 200, "the dashboard token works for the API");
    let bad_cookie = fx
        .request("GET", "/", &[("Cookie", "airut_session=forged")], "")
        .await;
    assert_eq!(bad_cookie.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_user_header_only_from_trusted_peers() {
    let mut auth = DashboardAuth::token("0123456789abcdef0123");
    auth.proxy_user_header = Some("x-forwarded-user".into());
    auth.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let s = seeded(Some(auth.clone()), 8).await;
    let fx = &s.fx;
    let page = fx
        .request(
            "GET",
            &format!("/task/{}", s.running.task),
            &[("X-Forwarded-User", "alice")],
            "",
        )
        .await;
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.body);
    let origin = format!("http://{}", fx.addr);
    let ok = post_stop(
        fx,
        s.running.task,
        &csrf,
        &[("X-Forwarded-User", "alice"), ("Origin", &origin)],
    )
    .await;
    assert_eq!(ok.status, 303);
    let rec = fx.log.read(fx.log.head().unwrap()).unwrap().unwrap();
    let Event::TaskStopRequested(e) = rec.decode().unwrap() else {
        panic!("expected a stop request")
    };
    assert_eq!(e.requested_by, "dashboard:alice");
    // Another user's CSRF token does not carry over.
    let other = post_stop(
        fx,
        s.running.task,
        &csrf,
        &[("X-Forwarded-User", "mallory"), ("Origin", &origin)],
    )
    .await;
    assert_eq!(other.status, 403);

    // A server that trusts another peer ignores the header from us.
    auth.trusted_proxies = vec!["192.0.2.1".parse().unwrap()];
    let fx2 = Fixture::start(Some(auth), 8).await;
    let r = fx2
        .request("GET", "/", &[("X-Forwarded-User", "alice")], "")
        .await;
    assert_eq!(r.status, 303);
}

/// Reads SSE frames until `n` events arrived; returns their ids.
async fn read_events(s: &mut TcpStream, buf: &mut String, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            if let Some(id) = frame
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .and_then(|v| v.trim().parse().ok())
            {
                ids.push(id);
                if ids.len() == n {
                    return ids;
                }
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("events within 30 s")
            .unwrap();
        assert!(got > 0, "stream closed early");
        buf.push_str(&String::from_utf8_lossy(&chunk[..got]));
    }
}

async fn open_stream(addr: SocketAddr, path: &str, last_id: Option<u64>) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let last = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{last}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    let mut chunk = [0u8; 4096];
    while !buf.contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    let (head, rest) = buf.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy")
    );
    // Chunked framing: keep only the payload lines (good enough for frames).
    let rest = rest.to_owned();
    (s, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_follows_the_log_and_resumes_without_gap_or_duplicate() {
    let fx = Fixture::start(None, 8).await;
    let head = fx.log.head().unwrap().0;
    let (mut s, mut buf) =
        open_stream(fx.addr, &format!("/events/stream?after={head}"), None).await;
    let seedx = Seed::new("r", "sse");
    seedx.append_finished(&fx.log).await.unwrap();
    let first = read_events(&mut s, &mut buf, 10).await;
    let expected: Vec<u64> = (head + 1..=head + 10).collect();
    assert_eq!(first, expected);
    drop(s);
    // More events while disconnected; resume from the last id seen.
    Seed::new("r", "while away")
        .append_finished(&fx.log)
        .await
        .unwrap();
    let total = fx.log.head().unwrap().0;
    let (mut s, mut buf) =
        open_stream(fx.addr, "/events/stream", Some(*first.last().unwrap())).await;
    let want = usize::try_from(total - first.last().unwrap()).unwrap();
    let rest = read_events(&mut s, &mut buf, want).await;
    let expected: Vec<u64> = (first.last().unwrap() + 1..=total).collect();
    assert_eq!(rest, expected, "no gap, no duplicate at the seam");

    // A conversation filter keeps only its stream, ids stay global.
    let (mut f, mut fbuf) = open_stream(
        fx.addr,
        &format!("/events/stream?after=0&conversation={}", seedx.conversation),
        None,
    )
    .await;
    let n = usize::try_from(fx.log.stream_version(&seedx.conversation.stream()).unwrap()).unwrap();
    let ids = read_events(&mut f, &mut fbuf, n).await;
    for id in &ids {
        let rec = fx.log.read(Seq(*id)).unwrap().unwrap();
        assert_eq!(rec.header.stream, seedx.conversation.stream());
    }
    let bad = fx
        .request("GET", "/events/stream", &[("Last-Event-ID", "abc")], "")
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(fx.get("/events/stream?conversation=xyz").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_are_bounded_with_429_and_released() {
    let fx = Fixture::start(None, 1).await;
    let (s, _) = open_stream(fx.addr, "/events/stream", None).await;
    let second = fx.get("/events/stream").await;
    assert_eq!(second.status, 429);
    assert_eq!(second.header("retry-after"), Some("5"));
    assert!(second.body.contains("too many live streams"));
    drop(s);
    // The server notices the closed client when it next writes.
    let mut freed = false;
    for _ in 0..100 {
        Seed::new("r", "poke").open(&fx.log).await.unwrap();
        let (code, _) = status_only(fx.addr, "/events/stream").await;
        if code == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "stream slots are released on disconnect");
}

async fn status_only(addr: SocketAddr, path: &str) -> (u16, ()) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut chunk = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&chunk[..n]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, ())
}
