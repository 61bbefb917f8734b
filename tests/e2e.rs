//! End to end with the real parts: the `airut run` binary; its email
//! channel reading a private Dovecot (`scripts/ensure-dovecot.sh`) and
//! sending to an SMTP receiver in this test; its sandbox on Podman
//! (`scripts/ensure-podman.sh`) with the static `airut-init` beside the
//! binary and the real Claude Code CLI; the network sandbox (the task's
//! proxy on its unix socket) in front of the mock Anthropic API
//! (`tests/support/anthropic.rs`, reached as the upstream override of
//! `api.anthropic.com`); and a local bare git repository as the remote,
//! whose default branch holds `.airut/container/Dockerfile` and
//! `.airut/network-allowlist.yaml`.
//!
//! Scenarios of issue 6 covered here: (1) a mail gets an acknowledgement,
//! then a threaded reply with the agent's text and its /outbox file, and
//! the agent's commit is in the workspace; (2) a reply continues the same
//! conversation and Claude session; (5) a spoofed and an unauthorized
//! sender start nothing and get nothing; (8) `airut replay` and
//! `airut audit export --conversation` tell the story; (7) the repo's
//! execution timeout ends a task with a reply that says so; (6) a server
//! killed with SIGKILL mid-task answers the message exactly once after a
//! restart; (3) three follow-ups while a task runs make exactly one next
//! task; (4) under `max_concurrent: 2` two conversations run at once and a
//! third starts only after one of them finished (from the log's order: the
//! mock holds the agents' turns until the test releases them, so nothing
//! depends on durations); (7) the dashboard's Stop, fetched and posted as a
//! browser does (the form's CSRF token, the page's Origin): a task waiting
//! in the queue never starts, a running task's container is stopped and
//! removed, and each user gets one threaded reply saying so.
//!
//! `e2e_bench_overhead` (ignored; run it in `--release`, see
//! doc/operations.md) prints airut's overhead from a mail's IMAP APPEND to
//! its reply minus the agent's run, with IMAP IDLE, and the server's RSS
//! idle and with 10 tasks running; it asserts only that every mail got its
//! acknowledgement and answer once.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use mail_parser::{MessageParser, MimeHeaders};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::email_support::{Dovecot, DovecotOptions, PASSWORD, USER};
use crate::support::anthropic::MockAnthropic;

/// A run of the real agent can take a while on a loaded 2-core machine
/// (first image build included); a hang fails, slowness does not.
const AGENT_PATIENCE: Duration = Duration::from_secs(420);

/// `airut` and the static `airut-init` side by side in `dir`, as a
/// deployment has them (doc/deployment.md).
fn install_binaries(dir: &Path) -> PathBuf {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    let init = INIT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let target = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .unwrap()
            .to_owned();
        // The profile of this test build (a `--release` benchmark run
        // builds the init with the release libraries it already has).
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["rustc", "--quiet", "--bin", "airut-init", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .args((profile == "release").then_some("--release"))
            .args(["--", "-C", "target-feature=+crt-static"])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the static airut-init failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dest = target.join("airut-init-e2e");
        std::fs::create_dir_all(&dest).unwrap();
        let tmp = dest.join("airut-init.tmp");
        std::fs::copy(target.join(profile).join("airut-init"), &tmp).unwrap();
        let dest = dest.join("airut-init");
        std::fs::rename(&tmp, &dest).unwrap();
        dest
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(init, dir.join("airut-init")).unwrap();
    let airut = dir.join("airut");
    std::fs::copy(env!("CARGO_BIN_EXE_airut"), &airut).unwrap();
    airut
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare "remote" whose main branch has the container and the allowlist.
fn make_remote(root: &Path) -> PathBuf {
    let remote = root.join("widgets.git");
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(root, &["init", "-q", "--bare", "-b", "main", "widgets.git"]);
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(seed.join(".airut/container")).unwrap();
    std::fs::write(
        seed.join(".airut/container/Dockerfile"),
        "FROM debian:bookworm-slim\n\
         RUN git config --system user.email agent@example.com && git config --system user.name 'Sandbox Agent' \
         && git config --system --add safe.directory '*'\n\
         WORKDIR /workspace\n",
    )
    .unwrap();
    std::fs::write(
        seed.join(".airut/network-allowlist.yaml"),
        "domains:\n  - api.anthropic.com\n",
    )
    .unwrap();
    std::fs::write(seed.join("README.md"), "# widgets\n").unwrap();
    git(&seed, &["add", "-A"]);
    git(
        &seed,
        &[
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=T",
            "commit",
            "-q",
            "-m",
            "start",
        ],
    );
    git(&seed, &["push", "-q", remote.to_str().unwrap(), "main"]);
    remote
}

// === The SMTP receiver ===

/// A mail the receiver accepted.
#[derive(Debug, Clone)]
struct Received {
    rcpt_to: Vec<String>,
    data: Vec<u8>,
    /// When the receiver had the whole mail (end of DATA).
    at: SystemTime,
}

/// A plain SMTP server on loopback keeping every mail.
struct SmtpReceiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpReceiver {
    async fn start() -> SmtpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let _ = smtp_session(tcp, kept).await;
                });
            }
        });
        SmtpReceiver {
            port,
            received,
            task,
        }
    }

    fn mails(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` mails arrived (or the patience ran out, or the
    /// server `alive` says it exited).
    async fn wait_for(
        &self,
        n: usize,
        server_log: &Path,
        mut alive: impl FnMut() -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline && alive(),
                "only {} of {n} mails arrived (server alive: {}); server log:\n{}",
                mails.len(),
                alive(),
                tail(server_log)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn smtp_session(
    tcp: tokio::net::TcpStream,
    kept: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let mut io = BufReader::new(tcp);
    io.write_all(b"220 localhost ESMTP airut-e2e\r\n").await?;
    let mut rcpt_to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250-localhost\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n"
        } else if upper.starts_with("AUTH") {
            "235 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            rcpt_to.clear();
            "250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            rcpt_to.push(line.trim_end().get(8..).unwrap_or("").to_owned());
            "250 ok\r\n"
        } else if upper.starts_with("DATA") {
            io.write_all(b"354 go on\r\n").await?;
            let mut data = Vec::new();
            let mut l = Vec::new();
            loop {
                l.clear();
                if io.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let unstuffed = l.strip_prefix(b".").filter(|_| l.starts_with(b".."));
                data.extend_from_slice(unstuffed.unwrap_or(&l));
            }
            kept.lock().unwrap().push(Received {
                rcpt_to: rcpt_to.clone(),
                data,
                at: SystemTime::now(),
            });
            "250 queued\r\n"
        } else if upper.starts_with("QUIT") {
            io.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "250 ok\r\n"
        };
        io.write_all(reply.as_bytes()).await?;
    }
}

// === The world ===

/// Everything one end-to-end run needs; the server is killed on drop.
struct World {
    root: tempfile::TempDir,
    dovecot: Dovecot,
    smtp: SmtpReceiver,
    mock: MockAnthropic,
    remote: PathBuf,
    airut: PathBuf,
    config: PathBuf,
    state: PathBuf,
    server: Option<Child>,
    /// `AIRUT_LOG` of the server.
    log_filter: String,
    /// When the running server was spawned.
    started_at: Option<std::time::Instant>,
}

/// How a [`World`] is set up.
struct Setup<'a> {
    /// The mock's script (`fixtures/claude/<script>.json`).
    script: &'a str,
    /// The repo's `resource_limits.timeout`.
    timeout: &'a str,
    /// `execution.max_concurrent`.
    max_concurrent: usize,
    /// `imap.mode`: `poll` (every second) or `idle`.
    imap_mode: &'a str,
    /// The server's `AIRUT_LOG`.
    log_filter: &'a str,
}

impl<'a> Setup<'a> {
    fn new(script: &'a str) -> Setup<'a> {
        Setup {
            script,
            timeout: "400s",
            max_concurrent: 3,
            imap_mode: "poll",
            log_filter: "info,airut=debug",
        }
    }
}

impl World {
    async fn new(script: &str) -> World {
        World::with_timeout(script, "400s").await
    }

    /// A world whose repo has `resource_limits.timeout: {timeout}`.
    async fn with_timeout(script: &str, timeout: &str) -> World {
        World::with(Setup {
            timeout,
            ..Setup::new(script)
        })
        .await
    }

    async fn with(setup: Setup<'_>) -> World {
        let Setup {
            script,
            timeout,
            max_concurrent,
            imap_mode,
            log_filter,
        } = setup;
        // What `scripts/ensure-podman.sh` set up (read once, shared with the
        // sandbox tests).
        let env = crate::sandbox::setup();
        let root = tempfile::Builder::new()
            .prefix("airut-e2e-")
            .tempdir()
            .unwrap();
        let dovecot = Dovecot::start(DovecotOptions::default()).await;
        let smtp = SmtpReceiver::start().await;
        let mock = MockAnthropic::start(script).await;
        let remote = make_remote(root.path());
        let airut = install_binaries(&root.path().join("bin"));
        let state = root.path().join("state");
        let config = root.path().join("airut.yaml");
        std::fs::write(
            &config,
            format!(
                r#"config_version: 1
dashboard:
  host: 127.0.0.1
  port: 0
execution:
  shutdown_timeout: 5s
  max_concurrent: {max_concurrent}
sandbox:
  engine_socket: {socket}
  claude_path: {claude}
repos:
  widgets:
    repo_url: {remote}
    model: claude-mock
    resource_limits:
      timeout: {timeout}
    email:
      address: airut@example.net
      from: "Airut <airut@example.net>"
      username: {user}
      password: "{password}"
      imap:
        host: 127.0.0.1
        port: {imap}
        security: plain
        mode: {imap_mode}
        poll_interval: 1s
      smtp:
        host: 127.0.0.1
        port: {smtp}
        security: plain
      auth:
        trusted_authserv_id: mx.example.net
        authorized_senders: [alice@example.com]
    network:
      sandbox_enabled: true
      upstream_overrides:
        api.anthropic.com: http://127.0.0.1:{mock}
      masked_secrets:
        ANTHROPIC_API_KEY:
          value: sk-ant-test-not-a-real-key
          scopes: [api.anthropic.com]
          headers: [x-api-key]
      plain_secrets:
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1"
        DISABLE_TELEMETRY: "1"
        DISABLE_AUTOUPDATER: "1"
"#,
                socket = env.docker_host.display(),
                claude = env.claude.display(),
                remote = remote.display(),
                user = USER,
                password = PASSWORD,
                imap = dovecot.port,
                smtp = smtp.port,
                mock = mock.addr.port(),
                timeout = timeout,
                max_concurrent = max_concurrent,
                imap_mode = imap_mode,
            ),
        )
        .unwrap();
        let mut w = World {
            root,
            dovecot,
            smtp,
            mock,
            remote,
            airut,
            config,
            state,
            server: None,
            log_filter: log_filter.to_owned(),
            started_at: None,
        };
        w.start_server();
        w.wait_serving().await;
        w
    }

    fn server_log(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.server_log())
            .unwrap();
        let child = Command::new(&self.airut)
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("run")
            .env("AIRUT_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        self.started_at = Some(std::time::Instant::now());
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and reaps it.
    fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..300 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!(
                "the server did not stop on SIGTERM:\n{}",
                tail(&self.server_log())
            );
        }
    }

    /// Kills the server with SIGKILL (no shutdown at all) and reaps it.
    fn kill_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Runs an `airut` CLI command against the running server.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.airut)
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("AIRUT_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "airut {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// The conversation's workspace clone.
    fn workspace(&self, conv: &str) -> PathBuf {
        let ws = airut::workspace::RepoWorkspace::new(
            &self.state,
            airut::events::RepoId("widgets".into()),
            self.remote.to_str().unwrap(),
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        ws.conversation_dirs(conv.parse().unwrap()).workspace
    }
}

impl World {
    async fn wait_mails(&mut self, n: usize) -> Vec<Received> {
        let log = self.server_log();
        let server = &mut self.server;
        self.smtp
            .wait_for(n, &log, || {
                server
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            })
            .await
    }
}

/// One event of `airut events tail --json`.
#[derive(Debug, Clone)]
struct Ev {
    seq: u64,
    time: SystemTime,
    ty: String,
    event_id: String,
    data: serde_json::Value,
}

impl Ev {
    /// The `task` of its payload (task and container events).
    fn task(&self) -> String {
        self.data["task"].as_str().unwrap_or_default().to_owned()
    }
}

impl World {
    /// The whole log, through the running server's API.
    fn events(&self) -> Vec<Ev> {
        self.cli(&["events", "tail", "--json"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Ev {
                    seq: v["seq"].as_u64().unwrap(),
                    time: humantime::parse_rfc3339(v["time"].as_str().unwrap()).unwrap(),
                    ty: v["type"].as_str().unwrap().to_owned(),
                    event_id: v["event_id"].as_str().unwrap_or_default().to_owned(),
                    data: v["data"].clone(),
                }
            })
            .collect()
    }

    /// Waits until the log has `n` events of type `ty`.
    async fn wait_events(&self, ty: &str, n: usize) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
        loop {
            let all = self.events();
            if all.iter().filter(|e| e.ty == ty).count() >= n {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} {ty}:\n{}",
                tail(&self.server_log())
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `n` agent turns are held by the mock.
    async fn wait_held(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
        while self.mock.held() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} agent turns held:\n{}",
                self.mock.held(),
                tail(&self.server_log())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` answers (mails other than acknowledgements) arrived.
    async fn wait_answers(&self, n: usize) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
        loop {
            let got = answers(&self.smtp.mails());
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "answers so far: {got:?}\n{}",
                tail(&self.server_log())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The dashboard's base URL, from the runtime file.
    fn dashboard(&self) -> String {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.state.join("server.json")).unwrap())
                .unwrap();
        format!("http://{}", info["addr"].as_str().unwrap())
    }

    /// The server's pid.
    fn server_pid(&self) -> u32 {
        self.server.as_ref().unwrap().id()
    }

    /// Waits until the server started last answers `/healthz` (its
    /// runtime file names it); returns when that was.
    async fn wait_serving(&self) -> std::time::Instant {
        let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
        let pid = u64::from(self.server_pid());
        loop {
            let info = std::fs::read(self.state.join("server.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|v| v["pid"].as_u64() == Some(pid));
            if let Some(info) = info {
                let url = format!("http://{}/healthz", info["addr"].as_str().unwrap());
                if let Ok((200, _, _)) = try_http("GET", &url, &[], "").await {
                    return std::time::Instant::now();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server does not serve:\n{}",
                tail(&self.server_log())
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// An HTTP/1.1 request as a browser sends it (hyper's client sets `Host`):
/// status, headers and body.
async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    try_http(method, url, headers, body).await.unwrap()
}

type HttpResult = Result<(u16, Vec<(String, String)>, String), Box<dyn std::error::Error>>;

async fn try_http(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> HttpResult {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_owned())))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// The most tasks running at once in `events`: between `start` and one of
/// `end`, by the payload's task.
fn most_at_once(events: &[Ev], start: &str, end: &[&str]) -> usize {
    let mut running = std::collections::HashSet::new();
    let mut most = 0;
    for e in events {
        if e.ty == start {
            running.insert(e.task());
            most = most.max(running.len());
        } else if end.contains(&e.ty.as_str()) {
            running.remove(&e.task());
        }
    }
    most
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            // SIGTERM first so the server stops its containers.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// A mail from `from`, authenticated at mx.example.net unless `dmarc`
/// says otherwise, with optional threading headers.
fn mail(
    from: &str,
    id: &str,
    subject: &str,
    body: &str,
    dmarc: &str,
    thread: &[String],
) -> Vec<u8> {
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let mut headers = format!(
        "Authentication-Results: mx.example.net;\r\n dkim={dmarc} header.i=@{domain};\r\n dmarc={dmarc} header.from={domain}\r\n\
         From: Alice <{from}>\r\n\
         To: airut@example.net\r\n\
         Subject: {subject}\r\n\
         Message-ID: <{id}>\r\n\
         Date: Mon, 2 Mar 2026 10:15:00 -0800\r\n"
    );
    if let Some(last) = thread.last() {
        headers.push_str(&format!(
            "In-Reply-To: {last}\r\nReferences: {}\r\n",
            thread.join(" ")
        ));
    }
    format!(
        "{headers}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// The parts of a received mail the scenarios check.
#[derive(Debug)]
struct Mail {
    to: Vec<String>,
    message_id: String,
    in_reply_to: String,
    references: Vec<String>,
    subject: String,
    text: String,
    attachments: Vec<(String, Vec<u8>)>,
}

fn parse_mail(r: &Received) -> Mail {
    let m = MessageParser::new().parse(&r.data).unwrap();
    let ids = |h: &mail_parser::HeaderValue| -> Vec<String> {
        h.as_text_list()
            .map(|l| l.iter().map(|s| format!("<{s}>")).collect())
            .or_else(|| h.as_text().map(|s| vec![format!("<{s}>")]))
            .unwrap_or_default()
    };
    Mail {
        to: r.rcpt_to.clone(),
        message_id: format!("<{}>", m.message_id().unwrap_or_default()),
        in_reply_to: ids(m.in_reply_to()).pop().unwrap_or_default(),
        references: ids(m.references()),
        subject: m.subject().unwrap_or_default().to_owned(),
        text: m.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        attachments: m
            .attachments()
            .map(|a| {
                (
                    a.attachment_name().unwrap_or_default().to_owned(),
                    a.contents().to_vec(),
                )
            })
            .collect(),
    }
}

/// `[ID:xxxxxxxx]` in a subject.
fn conversation_of(subject: &str) -> String {
    let start = subject.find("[ID:").expect("a conversation tag") + 4;
    subject[start..start + 8].to_owned()
}

// === Scenarios ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_to_sandboxed_agent_to_threaded_reply_then_a_resumed_session() {
    let mut w = World::new("e2e_report").await;
    let log = w.server_log();

    // (5) A spoofed sender (DMARC fails) and an unauthorized one, first in
    // the inbox: they are recorded as rejected and get nothing.
    w.dovecot
        .deliver(
            &mail(
                "alice@example.com",
                "spoof-1@evil.example",
                "Hi",
                "Run rm -rf",
                "fail",
                &[],
            ),
            None,
        )
        .await;
    w.dovecot
        .deliver(
            &mail(
                "mallory@example.org",
                "mallory-1@example.org",
                "Hi",
                "Hello",
                "pass",
                &[],
            ),
            None,
        )
        .await;

    // (1) The real request.
    let first_id = "m1@example.com";
    w.dovecot
        .deliver(
            &mail(
                "alice@example.com",
                first_id,
                "Report please",
                "Please write the report and commit the notes.",
                "pass",
                &[],
            ),
            None,
        )
        .await;

    let mails = w.wait_mails(2).await;
    let ack = parse_mail(&mails[0]);
    let result = parse_mail(&mails[1]);
    assert_eq!(ack.to, vec!["<alice@example.com>".to_owned()], "{ack:?}");
    assert!(ack.text.contains("Started working on this"), "{ack:?}");
    assert_eq!(ack.in_reply_to, format!("<{first_id}>"));
    let conv = conversation_of(&ack.subject);
    assert!(ack.subject.contains("Report please"), "{}", ack.subject);

    assert_eq!(result.to, vec!["<alice@example.com>".to_owned()]);
    assert_eq!(result.in_reply_to, format!("<{first_id}>"), "{result:?}");
    assert_eq!(conversation_of(&result.subject), conv);
    assert!(
        result
            .text
            .contains("The report is in /outbox/report.md and the notes are committed."),
        "{result:?}\n{}",
        tail(&log)
    );
    assert_eq!(
        result.attachments,
        vec![(
            "report.md".to_owned(),
            b"# Report\n\nEverything checked.\n".to_vec()
        )]
    );
    assert_eq!(w.mock.served(), 5, "every scripted turn was asked for");
    let ws = w.workspace(&conv);
    assert_eq!(
        git(&ws, &["log", "-1", "--format=%s"]).trim(),
        "Add notes from the agent"
    );
    assert_eq!(
        git(&ws, &["show", "HEAD:notes.txt"]),
        "hello from the sandbox\n"
    );
    assert!(
        git(&ws, &["remote", "get-url", "origin"]).contains("widgets.git"),
        "the clone has the real origin"
    );
    // The agent reached the API only through the proxy, with the real key
    // swapped in for the surrogate it was given.
    let agent = w.mock.agent_requests();
    assert!(!agent.is_empty());
    let keys = w.mock.api_keys();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "sk-ant-test-not-a-real-key"),
        "the mock saw only the real key, never the surrogate: {keys:?}"
    );
    // The agent's curl to a host the allowlist does not name got the
    // proxy's 403 JSON, which went back to the model as the tool result.
    let after_probe = agent
        .iter()
        .find(|r| r["messages"].to_string().contains("toolu_04"))
        .map(|r| r["messages"].to_string())
        .unwrap_or_default();
    assert!(
        after_probe.contains("blocked_by_network_allowlist"),
        "the tool result carries the 403 body: {after_probe}"
    );

    // (2) A reply to the reply continues the conversation and the session.
    let thread = vec![format!("<{first_id}>"), result.message_id.clone()];
    w.dovecot
        .deliver(
            &mail(
                "alice@example.com",
                "m2@example.com",
                &format!("Re: {}", result.subject),
                "Thanks! Anything else to add?",
                "pass",
                &thread,
            ),
            None,
        )
        .await;
    let mails = w.wait_mails(3).await;
    let second = parse_mail(&mails[2]);
    assert_eq!(second.in_reply_to, "<m2@example.com>", "{second:?}");
    assert_eq!(conversation_of(&second.subject), conv);
    assert!(
        second.text.contains("All done."),
        "{second:?}\n{}",
        tail(&log)
    );
    assert!(
        second.references.contains(&format!("<{first_id}>")),
        "{second:?}"
    );
    let last = w.mock.agent_requests().pop().unwrap();
    let history = last["messages"].to_string();
    assert!(
        history.contains("Please write the report and commit the notes."),
        "the resumed session carries the first turn"
    );
    assert!(history.contains("Thanks! Anything else to add?"));

    // (5) Nobody else got anything.
    let all = w.smtp.mails();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.iter()
            .all(|m| m.rcpt_to == vec!["<alice@example.com>".to_owned()])
    );

    // (8) The story and the network audit of the conversation.
    let story = w.cli(&["replay", &conv]);
    for needle in [
        "message.received",
        "task.started",
        "container.started",
        "reply.sent",
    ] {
        assert!(story.contains(needle), "replay lacks {needle}:\n{story}");
    }
    let audit = w.cli(&["audit", "export", "--conversation", &conv]);
    assert!(
        audit.contains("api.anthropic.com"),
        "the audit has the API requests:\n{audit}"
    );
    let csv = w.cli(&[
        "audit",
        "export",
        "--conversation",
        &conv,
        "--format",
        "csv",
    ]);
    assert!(
        csv.lines()
            .any(|l| l.contains(",blocked,") && l.contains("blocked.example.org")),
        "the audit has the blocked request:\n{csv}"
    );
}

/// Mails that are not the "Started working on this" acknowledgement.
fn answers(mails: &[Received]) -> Vec<Mail> {
    mails
        .iter()
        .map(parse_mail)
        .filter(|m| !m.text.contains("Started working on this"))
        .collect()
}

/// (7) The execution timeout ends a task; the reply says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_execution_timeout_ends_a_task_with_a_clear_reply() {
    let mut w = World::with_timeout("e2e_slow_turn", "15s").await;
    let log = w.server_log();
    w.dovecot
        .deliver(
            &mail(
                "alice@example.com",
                "slow-1@example.com",
                "Take your time",
                "Think about it for a long while.",
                "pass",
                &[],
            ),
            None,
        )
        .await;
    let mails = w.wait_mails(2).await;
    let ack = parse_mail(&mails[0]);
    assert!(ack.text.contains("Started working on this"), "{ack:?}");
    let reply = parse_mail(&mails[1]);
    assert_eq!(reply.in_reply_to, "<slow-1@example.com>", "{reply:?}");
    assert!(
        reply
            .text
            .contains("The task was interrupted after 15 seconds (the repo's time limit)"),
        "{reply:?}\n{}",
        tail(&log)
    );
    assert!(
        !reply.text.contains("Too late"),
        "the held answer never made it: {reply:?}"
    );
    let story = w.cli(&["replay", &conversation_of(&ack.subject)]);
    assert!(story.contains("task.started"), "{story}");
}

/// (6) SIGKILL while a task runs, then a restart: the message is answered
/// exactly once and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_answers_the_running_task_exactly_once_after_restart() {
    let mut w = World::new("e2e_crash").await;
    let log = w.server_log();
    w.dovecot
        .deliver(
            &mail(
                "alice@example.com",
                "crash-1@example.com",
                "Survive this",
                "Please answer even if you crash.",
                "pass",
                &[],
            ),
            None,
        )
        .await;
    // The ack is out and the agent is waiting on the held first turn.
    let mails = w.wait_mails(1).await;
    assert!(
        parse_mail(&mails[0])
            .text
            .contains("Started working on this")
    );
    let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
    while w.mock.agent_requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never asked the API:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.kill_server();
    assert!(
        answers(&w.smtp.mails()).is_empty(),
        "no answer before the kill"
    );

    w.start_server();
    let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
    while answers(&w.smtp.mails()).is_empty() {
        let alive = w
            .server
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        assert!(
            tokio::time::Instant::now() < deadline && alive,
            "no answer after the restart (alive: {alive}):\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let anything that would come twice come.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let all = w.smtp.mails();
    let answered = answers(&all);
    assert_eq!(answered.len(), 1, "exactly one answer: {answered:?}");
    assert_eq!(answered[0].in_reply_to, "<crash-1@example.com>");
    assert!(
        all.iter()
            .all(|m| m.rcpt_to == vec!["<alice@example.com>".to_owned()]),
        "{all:?}"
    );
}

/// (3) Three quick follow-ups while a task runs make exactly one next task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_follow_ups_during_a_task_make_exactly_one_next_task() {
    let mut w = World::new("e2e_followups").await;
    let log = w.server_log();
    let first_id = "busy-1@example.com";
    w.dovecot
        .deliver(
            &mail(
                "alice@example.com",
                first_id,
                "Busy",
                "Start on the big job.",
                "pass",
                &[],
            ),
            None,
        )
        .await;
    let mails = w.wait_mails(1).await;
    let ack = parse_mail(&mails[0]);
    assert!(ack.text.contains("Started working on this"), "{ack:?}");
    let conv = conversation_of(&ack.subject);
    let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
    while w.mock.agent_requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never asked the API:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first task is held on its turn: three follow-ups in the thread.
    let thread = vec![format!("<{first_id}>"), ack.message_id.clone()];
    for (i, body) in ["Also check A.", "And B.", "And C, please."]
        .iter()
        .enumerate()
    {
        w.dovecot
            .deliver(
                &mail(
                    "alice@example.com",
                    &format!("busy-f{i}@example.com"),
                    &format!("Re: {}", ack.subject),
                    body,
                    "pass",
                    &thread,
                ),
                None,
            )
            .await;
    }
    // The first answer, then the one answer to the follow-ups.
    let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
    while answers(&w.smtp.mails()).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "answers so far: {:?}\n{}",
            answers(&w.smtp.mails()),
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let anything extra come.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let answered = answers(&w.smtp.mails());
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert!(
        answered[0].text.contains("First task done."),
        "{answered:?}"
    );
    assert!(
        answered[1].text.contains("Follow-ups handled together."),
        "{answered:?}"
    );
    assert!(answered.iter().all(|m| conversation_of(&m.subject) == conv));
    let last = w.mock.agent_requests().pop().unwrap();
    let history = last["messages"].to_string();
    for body in ["Also check A.", "And B.", "And C, please."] {
        assert!(
            history.contains(body),
            "the next task has {body}: {history}"
        );
    }
    let story = w.cli(&["replay", &conv]);
    let started = story.lines().filter(|l| l.contains("task.started")).count();
    assert_eq!(started, 2, "two tasks in all:\n{story}");
}

/// (4) Two conversations run in parallel under `max_concurrent: 2`; a third
/// waits until one of them finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_conversations_run_in_parallel_and_a_third_waits() {
    let w = World::with(Setup {
        max_concurrent: 2,
        ..Setup::new("e2e_parallel")
    })
    .await;
    let log = w.server_log();
    let ids = [
        "par-1@example.com",
        "par-2@example.com",
        "par-3@example.com",
    ];
    for (i, id) in ids.iter().enumerate() {
        w.dovecot
            .deliver(
                &mail(
                    "alice@example.com",
                    id,
                    &format!("Job {}", i + 1),
                    &format!("Please do job {}.", i + 1),
                    "pass",
                    &[],
                ),
                None,
            )
            .await;
    }
    // All three are queued; two agents are held on their turn.
    w.wait_events("task.queued", 3).await;
    w.wait_held(2).await;
    // Room for a third start to show if the limit did not hold it back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = w.events();
    let started: Vec<&Ev> = events.iter().filter(|e| e.ty == "task.started").collect();
    assert_eq!(started.len(), 2, "two of three started: {started:?}");
    assert_eq!(w.mock.agent_requests().len(), 2);
    assert!(!events.iter().any(|e| e.ty == "task.completed"));

    // One of the two ends: the third starts and answers while the other
    // is still held.
    w.mock.release(1);
    w.wait_answers(2).await;
    assert_eq!(w.mock.held(), 1, "the other first task is still running");
    let events = w.events();
    assert_eq!(events.iter().filter(|e| e.ty == "task.started").count(), 3);
    assert_eq!(
        most_at_once(&events, "task.started", &["task.completed"]),
        2,
        "two tasks ran at once (the second and the third)"
    );
    w.mock.release(1);
    let answered = w.wait_answers(3).await;
    // Let anything extra come.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let all = w.smtp.mails();
    assert_eq!(all.len(), 6, "three acks and three answers: {all:?}");

    // The order, from the log.
    let events = w.events();
    assert_eq!(
        most_at_once(&events, "task.started", &["task.completed"]),
        2,
        "never more than two tasks at once"
    );
    assert_eq!(
        most_at_once(
            &events,
            "container.started",
            &["container.exited", "container.stopped"]
        ),
        2,
        "never more than two containers at once"
    );
    let started: Vec<&Ev> = events.iter().filter(|e| e.ty == "task.started").collect();
    assert_eq!(
        started.len(),
        3,
        "one start per task, no re-run: {started:?}"
    );
    let first_done = events
        .iter()
        .find(|e| e.ty == "task.completed")
        .expect("a task completed");
    let third = started[2];
    assert!(
        third.seq > first_done.seq,
        "the third task started (#{}) only after one finished (#{})",
        third.seq,
        first_done.seq
    );
    assert!(
        started[..2].iter().all(|s| s.seq < first_done.seq),
        "the first two started before either finished"
    );
    assert!(
        events
            .iter()
            .filter(|e| e.ty == "task.completed")
            .all(|e| e.data["outcome"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case("succeeded")),
        "{events:?}"
    );

    // Each mail: one ack and one answer, threaded under it, in its own
    // conversation; the one that waited got the turn served after the wait.
    let mails: Vec<Mail> = all.iter().map(parse_mail).collect();
    let mut convs = std::collections::HashSet::new();
    for id in ids {
        let mine: Vec<&Mail> = mails
            .iter()
            .filter(|m| m.in_reply_to == format!("<{id}>"))
            .collect();
        assert_eq!(mine.len(), 2, "{id}: {mine:?}");
        assert_eq!(
            mine.iter()
                .filter(|m| m.text.contains("Started working on this"))
                .count(),
            1,
            "{id}: {mine:?}"
        );
        assert_eq!(
            conversation_of(&mine[0].subject),
            conversation_of(&mine[1].subject)
        );
        assert!(
            mine.iter()
                .all(|m| m.to == vec!["<alice@example.com>".to_owned()])
        );
        convs.insert(conversation_of(&mine[0].subject));
    }
    assert_eq!(convs.len(), 3, "three conversations");
    let waited_conv = events
        .iter()
        .find(|e| e.ty == "task.queued" && e.task() == third.task())
        .map(|e| e.data["conversation"].as_str().unwrap().to_owned())
        .unwrap();
    let waited: Vec<&Mail> = answered
        .iter()
        .filter(|m| m.text.contains("Answered after waiting my turn."))
        .collect();
    assert_eq!(waited.len(), 1, "{answered:?}\n{}", tail(&log));
    assert_eq!(conversation_of(&waited[0].subject), waited_conv);
}

/// Opens the conversation's page on the dashboard, follows its task link
/// and presses Stop as a browser does: the form's CSRF token, the page's
/// own Origin. Returns the task id and the form's token. A POST without
/// the Origin is refused first and writes nothing.
async fn press_stop(w: &World, conv: &str) -> (String, String) {
    let base = w.dashboard();
    let (status, _, page) = http("GET", &format!("{base}/conversation/{conv}"), &[], "").await;
    assert_eq!(status, 200, "{page}");
    let at = page.find("href=\"/task/").expect("a task link") + "href=\"/task/".len();
    let task = page[at..].split('"').next().unwrap().to_owned();
    let (status, _, page) = http("GET", &format!("{base}/task/{task}"), &[], "").await;
    assert_eq!(status, 200);
    let at = page.find("name=\"csrf\" value=\"").expect("the Stop form") + 19;
    let csrf = page[at..].split('"').next().unwrap().to_owned();
    let form = format!("csrf={csrf}&reason=taking+too+long");
    let url = format!("{base}/task/{task}/stop");
    let content_type = ("Content-Type", "application/x-www-form-urlencoded");
    let asked_before = w
        .events()
        .iter()
        .filter(|e| e.ty == "task.stop_requested")
        .count();
    let (status, _, _) = http("POST", &url, &[content_type], &form).await;
    assert_eq!(status, 403, "no Origin, no stop");
    assert_eq!(
        w.events()
            .iter()
            .filter(|e| e.ty == "task.stop_requested")
            .count(),
        asked_before
    );
    let (status, headers, body) = http(
        "POST",
        &url,
        &[content_type, ("Origin", base.as_str())],
        &form,
    )
    .await;
    assert_eq!(status, 303, "{body}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "location" && v == &format!("/task/{task}")),
        "{headers:?}"
    );
    (task, csrf)
}

/// (7) The dashboard's Stop, as a browser sends it: a task waiting in the
/// queue never starts and is answered so; a running task's container is
/// stopped and removed, and the user gets one threaded reply saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_stop_ends_a_queued_and_a_running_task_with_clear_replies() {
    let w = World::with(Setup {
        max_concurrent: 1,
        ..Setup::new("e2e_stop")
    })
    .await;
    let log = w.server_log();
    let (running_id, queued_id) = ("stop-1@example.com", "stop-2@example.com");
    for (id, subject) in [(running_id, "Endless"), (queued_id, "Next in line")] {
        w.dovecot
            .deliver(
                &mail(
                    "alice@example.com",
                    id,
                    subject,
                    "Work on this until told otherwise.",
                    "pass",
                    &[],
                ),
                None,
            )
            .await;
    }
    // The first runs, held on its turn; the second waits (max_concurrent 1).
    w.wait_events("task.queued", 2).await;
    w.wait_held(1).await;
    let acks = w.smtp.wait_for(2, &log, || true).await;
    let conv_of = |id: &str| {
        acks.iter()
            .map(parse_mail)
            .find(|m| m.in_reply_to == format!("<{id}>"))
            .map(|m| conversation_of(&m.subject))
            .unwrap_or_else(|| panic!("no ack for {id}: {acks:?}"))
    };
    let (running_conv, queued_conv) = (conv_of(running_id), conv_of(queued_id));
    let events = w.events();
    assert_eq!(events.iter().filter(|e| e.ty == "task.started").count(), 1);
    let container = events
        .iter()
        .find(|e| e.ty == "container.started")
        .map(|e| e.data["container_id"].as_str().unwrap().to_owned())
        .expect("the container runs");

    // Stop the waiting one: it never starts, and says so.
    let (queued_task, _) = press_stop(&w, &queued_conv).await;
    let answered = w.wait_answers(1).await;
    assert_eq!(
        answered[0].in_reply_to,
        format!("<{queued_id}>"),
        "{answered:?}"
    );
    assert_eq!(conversation_of(&answered[0].subject), queued_conv);
    assert!(
        answered[0]
            .text
            .contains("The task was stopped on request before it started"),
        "{answered:?}\n{}",
        tail(&log)
    );

    // Stop the running one.
    let (running_task, csrf) = press_stop(&w, &running_conv).await;
    let answered = w.wait_answers(2).await;
    let stopped_reply = &answered[1];
    assert_eq!(
        stopped_reply.in_reply_to,
        format!("<{running_id}>"),
        "{answered:?}"
    );
    assert_eq!(conversation_of(&stopped_reply.subject), running_conv);
    assert!(
        stopped_reply
            .text
            .contains("The task was stopped on request. The work done so far is saved."),
        "{answered:?}\n{}",
        tail(&log)
    );
    assert!(!stopped_reply.text.contains("Never sent"));
    // Let anything extra come.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(w.smtp.mails().len(), 4, "two acks, two answers");

    // The log: who asked, the container stopped, the outcomes; the queued
    // task never started.
    let events = w.events();
    let asked: Vec<&Ev> = events
        .iter()
        .filter(|e| e.ty == "task.stop_requested")
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0].task(), queued_task);
    assert_eq!(asked[1].task(), running_task);
    assert!(
        asked
            .iter()
            .all(|a| a.data["requested_by"] == "dashboard:local"
                && a.data["reason"] == "taking too long")
    );
    let of = |ty: &str, task: &str| -> Vec<&Ev> {
        events
            .iter()
            .filter(|e| e.ty == ty && e.task() == task)
            .collect()
    };
    assert!(
        of("task.started", &queued_task).is_empty(),
        "the queued task never ran"
    );
    assert!(of("container.created", &queued_task).is_empty());
    let stopped = of("container.stopped", &running_task);
    assert_eq!(stopped.len(), 1, "{events:?}");
    assert_eq!(stopped[0].data["container_id"], container.as_str());
    assert!(stopped[0].seq > asked[1].seq);
    for task in [&queued_task, &running_task] {
        let done = of("task.completed", task);
        assert_eq!(done.len(), 1, "{task}: {events:?}");
        assert!(
            done[0].data["outcome"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case("stopped"),
            "{done:?}"
        );
    }
    // The container is gone from the engine.
    let engine = airut::sandbox::Engine::connect(Some(&crate::sandbox::setup().docker_host))
        .await
        .unwrap();
    let inspect = engine.docker().inspect_container(&container, None).await;
    assert!(inspect.is_err(), "the container is removed: {inspect:?}");
    // A Stop on the finished task is refused (no button, and 409).
    let base = w.dashboard();
    let (_, _, page) = http("GET", &format!("{base}/task/{running_task}"), &[], "").await;
    assert!(
        !page.contains("id=\"stop-button\""),
        "no Stop button on a finished task"
    );
    let (status, _, _) = http(
        "POST",
        &format!("{base}/task/{running_task}/stop"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", base.as_str()),
        ],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 409, "the task is done");
}

// === Benchmark ===

/// The server's memory from `/proc/PID/status`: `VmRSS (RssAnon anon +
/// RssFile file)`, in MiB.
fn rss(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    format!(
        "VmRSS {:.1} MiB (RssAnon {:.1} + RssFile {:.1} + RssShmem {:.1})",
        kb("VmRSS:") / 1024.0,
        kb("RssAnon:") / 1024.0,
        kb("RssFile:") / 1024.0,
        kb("RssShmem:") / 1024.0
    )
}

/// `b - a` in milliseconds (negative when `b` is earlier).
fn ms(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// `median / max` of `xs` in ms.
fn median_max(xs: &[f64]) -> String {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    format!("{median:8.1} / {:8.1}", v[v.len() - 1])
}

/// Waits until the repo booted and its email channel is healthy.
async fn wait_booted(w: &World) {
    let deadline = tokio::time::Instant::now() + AGENT_PATIENCE;
    loop {
        let events = w.events();
        let booted = events.iter().any(|e| e.ty == "repo.booted");
        let healthy = events
            .iter()
            .rfind(|e| e.ty == "channel.health_changed")
            .is_some_and(|e| {
                e.data["health"]
                    .as_str()
                    .unwrap_or_default()
                    .eq_ignore_ascii_case("healthy")
            });
        if booted && healthy {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repo did not boot:\n{}",
            tail(&w.server_log())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delivers `raw` by IMAP APPEND; returns when the APPEND finished.
async fn append(w: &World, raw: &[u8]) -> SystemTime {
    let mut s = w.dovecot.client().await;
    s.append("INBOX", None, None, raw).await.unwrap();
    let at = SystemTime::now();
    s.logout().await.unwrap();
    at
}

/// Benchmark with the real parts (prints figures, asserts only that every
/// mail was answered once): with a warm image and mirror and IMAP IDLE,
/// N mails one after another, each timed from the end of its IMAP APPEND
/// to `message.received`, `task.started`, `container.started` and the
/// answer at the SMTP receiver, minus the agent's own run (container
/// start to exit); the server's RSS idle, with 10 tasks running at once
/// and after; its time from spawn to serving `/healthz`. Run:
/// `cargo test --release --test tests -- --ignored e2e_bench --nocapture --test-threads=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures; run it on purpose in --release"]
async fn e2e_bench_overhead() {
    const N: usize = 5;
    const AT_ONCE: usize = 10;
    let mut w = World::with(Setup {
        max_concurrent: AT_ONCE,
        imap_mode: "idle",
        log_filter: "info,airut=debug,airut::channels::email::source=trace",
        ..Setup::new("e2e_bench")
    })
    .await;
    let spawned = w.started_at.unwrap();
    let serving = w.wait_serving().await;
    println!(
        "\n== e2e bench ({} build, IMAP IDLE, warm image and mirror) ==",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "start to serving /healthz (new store): {:.1} ms",
        serving.duration_since(spawned).as_secs_f64() * 1000.0
    );
    wait_booted(&w).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = w.server_pid();
    println!("RSS idle after start: {}", rss(pid));

    // Warm-up: builds or reuses the image, clones the mirror.
    let warm = append(
        &w,
        &mail(
            "alice@example.com",
            "bench-warm@example.com",
            "Warm up",
            "Warm up.",
            "pass",
            &[],
        ),
    )
    .await;
    w.wait_answers(1).await;
    let _ = warm;

    // N mails in sequence, each a new conversation.
    let mut sent = Vec::new();
    for i in 0..N {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let id = format!("bench-{i}@example.com");
        let at = append(
            &w,
            &mail(
                "alice@example.com",
                &id,
                &format!("Bench {i}"),
                "Answer at once.",
                "pass",
                &[],
            ),
        )
        .await;
        sent.push((id, at));
        w.wait_answers(i + 2).await;
    }
    let events = w.events();
    let mails: Vec<(Mail, SystemTime)> = w
        .smtp
        .mails()
        .iter()
        .map(|r| (parse_mail(r), r.at))
        .collect();
    // When IDLE told the server about new mail (its trace line).
    let idle_ends: Vec<SystemTime> = std::fs::read_to_string(w.server_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("IDLE ended"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|t| humantime::parse_rfc3339(t).ok())
        .collect();
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 10];
    println!(
        "per mail, ms from the end of the IMAP APPEND (run = container.started -> container.exited):"
    );
    println!(
        "  mail  idle-wake  received  task.start  cont.start   ack@smtp      run  exit->answer  answer@smtp  overhead  overhead-after-received"
    );
    for (i, (id, at)) in sent.iter().enumerate() {
        let bare = id.as_str();
        let received = events
            .iter()
            .find(|e| {
                e.ty == "message.received"
                    && e.data["message_id"]
                        .as_str()
                        .is_some_and(|m| m.trim_matches(['<', '>']) == bare)
            })
            .unwrap_or_else(|| panic!("no message.received for {id}"));
        let task = events
            .iter()
            .find(|e| {
                e.ty == "task.queued"
                    && e.data["messages"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|x| x.as_str() == Some(&received.event_id)))
            })
            .map(Ev::task)
            .unwrap_or_else(|| panic!("no task for {id}"));
        let of = |ty: &str| -> SystemTime {
            let found: Vec<&Ev> = events
                .iter()
                .filter(|e| e.ty == ty && e.task() == task)
                .collect();
            assert_eq!(found.len(), 1, "one {ty} for {id}: {found:?}");
            found[0].time
        };
        let (started, c_started, c_exited) = (
            of("task.started"),
            of("container.started"),
            of("container.exited"),
        );
        let to_me: Vec<&(Mail, SystemTime)> = mails
            .iter()
            .filter(|(m, _)| m.in_reply_to == format!("<{id}>"))
            .collect();
        assert_eq!(to_me.len(), 2, "one ack and one answer for {id}: {to_me:?}");
        let ack = to_me
            .iter()
            .find(|(m, _)| m.text.contains("Started working on this"))
            .unwrap()
            .1;
        let (answer_mail, answer) = to_me
            .iter()
            .find(|(m, _)| !m.text.contains("Started working on this"))
            .unwrap();
        assert!(answer_mail.text.contains("All done."), "{answer_mail:?}");
        let idle = idle_ends
            .iter()
            .find(|t| **t >= *at)
            .map_or(f64::NAN, |t| ms(*at, *t));
        let run = ms(c_started, c_exited);
        let row = [
            idle,
            ms(*at, received.time),
            ms(*at, started),
            ms(*at, c_started),
            ms(*at, ack),
            run,
            ms(c_exited, *answer),
            ms(*at, *answer),
            ms(*at, *answer) - run,
            ms(received.time, *answer) - run,
        ];
        println!(
            "  {i:>4}  {:>9.1}  {:>8.1}  {:>10.1}  {:>10.1}  {:>9.1}  {:>7.1}  {:>12.1}  {:>11.1}  {:>8.1}  {:>23.1}",
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9]
        );
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let names = [
        "APPEND -> IDLE wake (Dovecot's notify)",
        "APPEND -> message.received",
        "APPEND -> task.started",
        "APPEND -> container.started",
        "APPEND -> acknowledgement at SMTP",
        "agent run (container start -> exit)",
        "container exit -> answer at SMTP",
        "APPEND -> answer at SMTP",
        "airut overhead (APPEND -> answer, minus run)",
        "airut overhead after message.received",
    ];
    println!("summary over {N} mails, ms (median / max):");
    for (name, c) in names.iter().zip(&cols) {
        println!("  {name:<46} {}", median_max(c));
    }

    // AT_ONCE new conversations at once, their turns held by the mock.
    w.mock.push_turns(
        (0..AT_ONCE)
            .map(|_| {
                serde_json::json!({"hold": true, "content": [{"type": "text", "text": "Held answer."}], "stop_reason": "end_turn"})
            })
            .collect(),
    );
    let before = w.smtp.mails().len();
    for i in 0..AT_ONCE {
        append(
            &w,
            &mail(
                "alice@example.com",
                &format!("bench-many-{i}@example.com"),
                &format!("Many {i}"),
                "Wait for it.",
                "pass",
                &[],
            ),
        )
        .await;
    }
    w.wait_held(AT_ONCE).await;
    let events = w.events();
    let running = most_at_once(
        &events,
        "container.started",
        &["container.exited", "container.stopped"],
    );
    assert_eq!(running, AT_ONCE, "{AT_ONCE} containers at once");
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "RSS with {AT_ONCE} tasks running (agents held): {}",
        rss(pid)
    );
    w.mock.release(AT_ONCE);
    w.wait_answers(N + 1 + AT_ONCE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("RSS after they finished: {}", rss(pid));
    let all = w.smtp.mails();
    assert_eq!(all.len(), before + 2 * AT_ONCE, "an ack and an answer each");
    for i in 0..AT_ONCE {
        let id = format!("<bench-many-{i}@example.com>");
        let mine = all
            .iter()
            .map(parse_mail)
            .filter(|m| m.in_reply_to == id)
            .count();
        assert_eq!(mine, 2, "{id}");
    }

    // A restart on the existing store.
    w.stop_server();
    w.start_server();
    let spawned = w.started_at.unwrap();
    let serving = w.wait_serving().await;
    println!(
        "restart to serving /healthz (existing store): {:.1} ms",
        serving.duration_since(spawned).as_secs_f64() * 1000.0
    );
    wait_booted(&w).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("RSS idle after the restart: {}", rss(w.server_pid()));
}
