//! The `airut` binary end to end: a real server process on a scratch state
//! dir, the read commands against it (API) and against the stopped store
//! (direct), tampering caught by `check` and `audit verify`, and bad input.
//!
//! These tests drive child processes from plain threads, so they use the
//! std clock and sleep (no tokio runtime to pause), and `kill(2)` to deliver
//! SIGTERM as an operator would.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    unsafe_code
)]

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use airut::cli::runtime::{self, RuntimeInfo};
use airut::events::*;
use airut::log::{ExpectedVersion, Log, LogOptions, NewEvent, StreamAppend};

fn airut(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airut"))
        .arg("--config")
        .arg(state.join("airut.yaml"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("AIRUT_LOG", "warn")
        .output()
        .expect("run airut")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch state dir with a config binding the API to a free port.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("airut.yaml"),
        "config_version: 1\ndashboard:\n  host: 127.0.0.1\n  port: 0\n",
    )
    .unwrap();
    dir
}

struct Server {
    child: Child,
    info: RuntimeInfo,
}

impl Drop for Server {
    fn drop(&mut self) {
        // A test that failed half-way must not leave a server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    // The child is killed and reaped by `Drop`, or by the panic path below.
    #[allow(clippy::zombie_processes)]
    fn start(state: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_airut"))
            .arg("--config")
            .arg(state.join("airut.yaml"))
            .arg("--state-dir")
            .arg(state)
            .arg("run")
            .env("AIRUT_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn airut run");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(info)) = runtime::read(state)
                && info.pid == child.id()
                && http(&info, "GET", "/healthz", true).0 == 200
            {
                return Server { child, info };
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: sending SIGTERM to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
fn http(info: &RuntimeInfo, method: &str, path: &str, auth: bool) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&info.addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = if auth {
        format!("Authorization: Bearer {}\r\n", info.token)
    } else {
        String::new()
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Appends a small but complete conversation directly to a stopped store.
fn seed_conversation(state: &Path) -> ConversationId {
    let conv = ConversationId(0x1a2b3c4d);
    let task = TaskId::new();
    let log = Log::open(&state.join("log"), LogOptions::default()).unwrap();
    let repo = RepoId("widgets".into());
    let msg = log
        .append_blocking(StreamAppend {
            stream: StreamId::channel(&repo, "email"),
            expected: ExpectedVersion::Any,
            events: vec![ne(Event::MessageReceived(MessageReceivedV1 {
                repo: repo.clone(),
                channel: "email".into(),
                dedup_key: "imap:1:7:<m1@example.com>".into(),
                message_id: "<m1@example.com>".into(),
                thread_keys: vec![],
                sender: "alice@example.com".into(),
                sender_display: "Alice <alice@example.com>".into(),
                conversation_ref: None,
                subject: "fix the typo in README <script>".into(),
                body: "There is a typo: recieve.".into(),
                raw: None,
                attachments: vec![],
                model_hint: None,
            }))],
        })
        .unwrap();
    let msg_id = msg.ids[0];
    let events = vec![
        Event::ConversationStarted(ConversationStartedV1 {
            conversation: conv,
            repo: repo.clone(),
            channel: "email".into(),
            thread_keys: vec!["<m1@example.com>".into()],
            message: msg_id,
            model: Some("opus".into()),
            replaces_expired: None,
            effort: None,
        }),
        Event::TaskQueued(TaskQueuedV1 {
            task,
            conversation: conv,
            repo: repo.clone(),
            messages: vec![msg_id],
            model: "opus".into(),
            effort: None,
        }),
        Event::TaskStarted(TaskStartedV1 {
            task,
            attempt: 1,
            resume_session: None,
            prompt: "fix it".into(),
        }),
        Event::ProxyRequest(ProxyRequestV1 {
            task,
            method: "GET".into(),
            scheme: "https".into(),
            host: "evil.example".into(),
            port: 443,
            path: "=cmd|' /C calc'!A0".into(),
            decision: Decision::Blocked,
            rule: None,
            reason: Some("host not in allowlist".into()),
            status: Some(403),
            bytes_in: 0,
            bytes_out: 120,
            duration_us: 800,
            credentials: vec![],
            upstream_override: None,
            notes: vec![],
        }),
        Event::DnsQuery(DnsQueryV1 {
            task,
            name: "evil.example".into(),
            qtype: 16,
            answer: "loopback".into(),
        }),
        Event::TaskCompleted(TaskCompletedV1 {
            task,
            outcome: TaskOutcome::Succeeded,
            reason: String::new(),
            session_id: Some("sess-1".into()),
            reply_text: "Fixed.".into(),
            cost_micros: Some(42_000),
            turns: Some(3),
            duration_ms: 12_000,
            input_tokens: 100,
            output_tokens: 50,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            web_searches: 0,
            web_fetches: 0,
            blocked_hosts: vec!["evil.example".into()],
        }),
    ];
    log.append_blocking(StreamAppend {
        stream: conv.stream(),
        expected: ExpectedVersion::NoStream,
        events: events.into_iter().map(ne).collect(),
    })
    .unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(log.close())
        .unwrap();
    conv
}

fn ne(event: Event) -> NewEvent {
    NewEvent {
        event,
        causation: None,
    }
}

fn store_dir(state: &Path) -> PathBuf {
    state.join("log")
}

#[test]
fn server_serves_api_and_cli_reads_through_it() {
    let dir = scratch();
    let mut server = Server::start(dir.path());
    let info = server.info.clone();

    assert_eq!(http(&info, "GET", "/healthz", false).0, 200);
    // The API needs the token; errors are JSON.
    let (code, body) = http(&info, "GET", "/api/status", false);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let (code, body) = http(&info, "GET", "/api/status", true);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(status["head_seq"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(status["head_hash"].as_str().unwrap().len(), 64);
    // Bad input: a malformed conversation id, an unknown route.
    let (code, body) = http(&info, "GET", "/api/conversations/nothex!!/timeline", true);
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        http(&info, "GET", "/api/conversations/00000000/timeline", true).0,
        404
    );
    assert_eq!(http(&info, "GET", "/nope", true).0, 404);
    assert_eq!(http(&info, "GET", "/api/audit?format=xml", true).0, 400);

    // The CLI goes through the API while the server runs.
    let out = airut(dir.path(), &["events", "tail", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let types: Vec<String> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types[..3],
        ["store.created", "config.loaded", "server.started"]
    );
    let out = airut(dir.path(), &["check"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ok    store"), "{}", stdout(&out));

    // A live follower sees events as they are appended, and ends when the
    // server stops instead of holding the shutdown up.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_airut"))
        .arg("--config")
        .arg(dir.path().join("airut.yaml"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["events", "tail", "--follow", "--json", "--from", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["type"], "config.loaded");

    // A second server on the same state dir is refused.
    let out = airut(dir.path(), &["run"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));

    // SIGTERM: clean stop, runtime file gone, stop recorded.
    let started = std::time::Instant::now();
    assert!(server.stop().success());
    assert!(follower.wait().unwrap().success());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "shutdown waited for the follower"
    );
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(
        rest.iter().any(|l| l.contains("server.started")),
        "{rest:?}"
    );
    assert!(runtime::read(dir.path()).unwrap().is_none());
    let out = airut(dir.path(), &["events", "tail"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("server.stopped"), "{}", stdout(&out));
}

#[test]
fn replay_export_verify_and_check_on_a_stopped_store() {
    let dir = scratch();
    let conv = seed_conversation(dir.path());
    let id = conv.to_string();

    let out = airut(dir.path(), &["replay", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "message.received",
        "conversation.started",
        "task.queued",
        "network.request",
        "task.completed",
    ] {
        assert!(text.contains(needle), "replay lacks {needle}:\n{text}");
    }
    assert!(
        text.find("message.received") < text.find("conversation.started"),
        "{text}"
    );

    let out = airut(dir.path(), &["replay", &id, "--json"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 7);

    // JSONL export of the conversation verifies from genesis.
    let out = airut(dir.path(), &["audit", "export", "--conversation", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let export = stdout(&out);
    assert_eq!(export.lines().count(), 6, "{export}");
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    let out = airut(dir.path(), &["audit", "verify", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("complete from genesis"),
        "{}",
        stdout(&out)
    );

    // Editing a readable field of one line is caught at that line.
    let tampered = export.replacen("evil.example", "good.example", 1);
    std::fs::write(&file, tampered).unwrap();
    let out = airut(dir.path(), &["audit", "verify", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("FAILED at line"), "{}", stdout(&out));
    // Dropping a line breaks the chain.
    let dropped: String = export
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&file, dropped).unwrap();
    let out = airut(dir.path(), &["audit", "verify", file.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("partial") || !out.status.success(),
        "{}",
        stdout(&out)
    );
    // Garbage is a failure, not a panic.
    std::fs::write(&file, "not json\n").unwrap();
    let out = airut(dir.path(), &["audit", "verify", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // Export of everything since the epoch, and CSV with formulas defused.
    let out = airut(
        dir.path(),
        &["audit", "export", "--since", "1970-01-01T00:00:00Z"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2);
    let out = airut(dir.path(), &["audit", "export", "--format", "csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    assert!(csv.starts_with("seq,time,conversation"), "{csv}");
    assert!(csv.contains("\"'=cmd|' /C calc'!A0\""), "{csv}");
    let out = airut(dir.path(), &["audit", "export", "--since", "last tuesday"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("neither a time"), "{}", stderr(&out));

    // Replay of an unknown or malformed id says so.
    let out = airut(dir.path(), &["replay", "00000000"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no conversation 00000000"),
        "{}",
        stderr(&out)
    );
    let out = airut(dir.path(), &["replay", "xyz"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("8 hex digits"), "{}", stderr(&out));

    // Projections rebuild and verify.
    let out = airut(dir.path(), &["projections", "rebuild", "--verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    // check passes, then fails at exactly the edited event.
    let out = airut(dir.path(), &["check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    tamper_payload(&store_dir(dir.path()), 4);
    let out = airut(dir.path(), &["check"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("seq 4"), "{}", stdout(&out));
}

/// Flips the last byte of the stored value at `seq` (in the payload).
fn tamper_payload(store: &Path, seq: u64) {
    let db = fjall::Database::builder(store).open().unwrap();
    let events = db
        .keyspace("events", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let key = seq.to_be_bytes();
    let mut value = events.get(key).unwrap().unwrap().to_vec();
    let last = value.len() - 1;
    value[last] ^= 0x01;
    events.insert(key, value).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[test]
fn bad_config_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("airut.yaml"),
        "config_version: 1\ndashboard:\n  port: \"many\"\n",
    )
    .unwrap();
    let out = airut(dir.path(), &["check"]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains("FAIL  config"), "{text}");
    assert!(
        text.contains("dashboard.port") || text.contains("line 3") || text.contains(":3"),
        "{text}"
    );
    let out = airut(dir.path(), &["run"]);
    assert!(!out.status.success());
}

#[test]
fn read_commands_work_on_a_store_while_the_config_is_broken() {
    let dir = scratch();
    let state = dir.path();
    let conv = seed_conversation(state);
    std::fs::write(state.join("airut.yaml"), "config_version: 1\nrepos: [\n").unwrap();
    // With --state-dir, the store is read; the broken file is a warning.
    let out = airut(state, &["events", "tail", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"store.created\""));
    assert!(
        stderr(&out).contains("the config does not load"),
        "{}",
        stderr(&out)
    );
    let out = airut(state, &["replay", &conv.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = airut(
        state,
        &["audit", "export", "--conversation", &conv.to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Commands that act (run) still refuse a broken config.
    let out = airut(state, &["run"]);
    assert!(!out.status.success());
    // Without --state-dir, the error says how to read the store anyway.
    let out = Command::new(env!("CARGO_BIN_EXE_airut"))
        .arg("--config")
        .arg(state.join("airut.yaml"))
        .args(["events", "tail"])
        .env("AIRUT_LOG", "warn")
        .env_remove("AIRUT_STATE_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--state-dir"), "{}", stderr(&out));
}
