//! The dashboard in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` + `chromium-driver`, installed by scripts/test.sh).
//!
//! Opens the board, appends events for a new task and sees it appear and
//! move to done without a reload, opens the actions timeline and the
//! network view, uses the replay controls, presses Stop and sees the
//! result, and checks that no hostile content ever opened a dialog.
//! Screenshots go to `<target>/tmp/dashboard-screenshots/`.
//!
//! The WebDriver client is a few JSON calls over the same raw HTTP helper
//! the other dashboard tests use (no WebDriver crate: the protocol calls
//! needed here are six).

#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airut::dashboard::seed::{self, HOSTILE, Seed};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::dashboard::Fixture;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

struct Driver {
    child: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // chromedriver keeps the connection open despite `Connection: close`:
    // read the head, then exactly Content-Length bytes.
    let read = async {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            raw.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len || n == 0 {
                    return body.to_owned();
                }
            }
            if n == 0 {
                return String::new();
            }
        }
    };
    let json = tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .unwrap_or_else(|_| panic!("chromedriver answered {method} {path}"));
    serde_json::from_str(&json).unwrap_or(Value::Null)
}

impl Driver {
    async fn start() -> Driver {
        let driver = which("chromedriver").expect(
            "chromedriver not found: install Debian's chromium and chromium-driver (scripts/test.sh does)",
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut ready = false;
        for _ in 0..300 {
            if TcpStream::connect(addr).await.is_ok() {
                let st = call(addr, "GET", "/status", None).await;
                if st["value"]["ready"] == json!(true) {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not become ready");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let resp = call(addr, "POST", "/session", Some(caps)).await;
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_owned();
        Driver {
            child,
            addr,
            session,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        call(self.addr, method, &p, body).await["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn click(&self, css: &str) {
        let el = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = el[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned();
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    /// Waits until `script` returns true (a generous timeout, never a speed check).
    async fn wait_for(&self, what: &str, script: &str) {
        for _ in 0..600 {
            if self.js(script).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self.js("return document.body.innerText").await;
        panic!("timed out waiting for {what}; page text:\n{text}");
    }

    async fn no_dialog(&self) {
        let alert = self.cmd("GET", "/alert/text", None).await;
        assert_eq!(
            alert["error"], "no such alert",
            "a dialog opened: hostile content ran ({alert})"
        );
    }

    async fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        std::fs::create_dir_all(screenshots()).unwrap();
        std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn in_column(col: &str, task: &airut::events::TaskId) -> String {
    format!("return document.querySelector('#col-{col} [data-task=\"{task}\"]') !== null")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_live_updates_actions_network_replay_and_stop_in_chromium() {
    let fx = Fixture::start(None, 16).await;
    seed::boot(&fx.log, &["airut-rs", "website"]).await.unwrap();
    let mut old = Seed::new("airut-rs", &format!("Earlier work {HOSTILE}"));
    old.hostile = true;
    old.network = 30;
    old.append_finished(&fx.log).await.unwrap();
    fx.settle().await;
    let base = format!("http://{}", fx.addr);
    let d = Driver::start().await;

    // The board, live.
    d.goto(&format!("{base}/")).await;
    d.wait_for(
        "the live stream",
        "return document.getElementById('live-status').textContent === 'live'",
    )
    .await;
    d.js("window.__noReload = 42; return true").await;
    d.no_dialog().await;
    let new = Seed::new("airut-rs", "Add a regression test for IDLE");
    new.open(&fx.log).await.unwrap();
    d.wait_for(
        "the new task under Pending",
        &in_column("queued", &new.task),
    )
    .await;
    d.screenshot("01-board-pending").await;
    fx.log
        .append(seed::batch(new.conversation.stream(), new.start_events()))
        .await
        .unwrap();
    let mut output = new.output_events();
    let rest = output.split_off(2);
    fx.log
        .append(seed::batch(new.conversation.stream(), output))
        .await
        .unwrap();
    d.wait_for("the task under Running", &in_column("running", &new.task))
        .await;
    d.wait_for(
        "todo progress on the card",
        &format!(
            "return !!document.querySelector('[data-task=\"{}\"] progress')",
            new.task
        ),
    )
    .await;
    d.screenshot("02-board-running").await;
    let mut events = rest;
    events.extend(new.network_events());
    events.extend(new.complete_events());
    fx.log
        .append(seed::batch(new.conversation.stream(), events))
        .await
        .unwrap();
    d.wait_for("the task under Done", &in_column("done", &new.task))
        .await;
    assert_eq!(
        d.js("return window.__noReload").await,
        json!(42),
        "the board updated without a reload"
    );
    d.no_dialog().await;
    d.screenshot("03-board-done").await;

    // The actions timeline of the finished task, with a result expanded.
    d.click(&format!("#col-done [data-task=\"{}\"]", new.task))
        .await;
    d.wait_for(
        "the task page",
        "return !!document.querySelector('.task-detail')",
    )
    .await;
    d.screenshot("04-task-done").await;
    d.goto(&format!("{base}/task/{}/actions", new.task)).await;
    d.wait_for(
        "the Bash view",
        "return document.body.innerText.includes('$ cargo test idle')",
    )
    .await;
    d.click("details.more summary").await;
    d.wait_for(
        "the expanded result",
        "return document.querySelector('details.more').open && document.body.innerText.includes('test idle_45 ... ok')",
    )
    .await;
    d.screenshot("05-actions").await;

    // Hostile conversation: actions and network, escaped and inert.
    d.goto(&format!("{base}/conversation/{}/actions", old.conversation))
        .await;
    d.wait_for(
        "hostile text shown as text",
        "return document.body.innerText.includes('<script>alert(\"xss\")</script>')",
    )
    .await;
    d.no_dialog().await;
    d.goto(&format!(
        "{base}/conversation/{}/network?decision=blocked",
        old.conversation
    ))
    .await;
    d.wait_for("blocked rows", "return document.querySelectorAll('tr.net-blocked').length > 0 && document.querySelectorAll('tr.net-allowed').length === 0")
        .await;
    d.no_dialog().await;
    d.screenshot("06-network-blocked").await;
    d.goto(&format!("{base}/network?host=github")).await;
    d.wait_for("host filter", "return document.querySelectorAll('tr.net-allowed').length > 0 && document.querySelectorAll('tr.net-blocked').length === 0")
        .await;
    d.screenshot("07-network-host").await;

    // Replay: step back from the head, then jump with the slider.
    d.goto(&format!("{base}/conversation/{}", new.conversation))
        .await;
    d.wait_for(
        "the replay control",
        "return !!document.getElementById('replay-slider')",
    )
    .await;
    d.click("#replay-start").await;
    d.wait_for(
        "the first event",
        "return document.body.innerText.includes('No tasks yet')",
    )
    .await;
    d.click("#replay-next").await;
    d.wait_for(
        "a step forward",
        "return /[?&]at=/.test(location.search) && document.body.innerText.includes('QUEUED')",
    )
    .await;
    d.js("var s = document.getElementById('replay-slider'); s.value = 6; s.dispatchEvent(new Event('change')); return true")
        .await;
    d.wait_for(
        "the slider position",
        "return /[?&]v=6/.test(location.search) && document.body.innerText.includes('RUNNING')",
    )
    .await;
    d.screenshot("08-replay").await;

    // Stop a running task and see the result.
    let victim = Seed::new("website", "Long refactor");
    victim.open(&fx.log).await.unwrap();
    fx.log
        .append(seed::batch(
            victim.conversation.stream(),
            victim.start_events(),
        ))
        .await
        .unwrap();
    fx.settle().await;
    d.goto(&format!("{base}/task/{}", victim.task)).await;
    d.wait_for(
        "the Stop button",
        "return !!document.getElementById('stop-button')",
    )
    .await;
    d.click("#stop-button").await;
    d.wait_for(
        "the stop result",
        "return !!document.getElementById('stop-requested') || document.body.innerText.includes('Stop requested')",
    )
    .await;
    d.wait_for(
        "the recorded request",
        "return !!document.getElementById('stop-requested')",
    )
    .await;
    d.screenshot("09-task-stop-requested").await;
    let head = fx.log.read(fx.log.head().unwrap()).unwrap().unwrap();
    assert_eq!(
        head.event_type(),
        Some(airut::events::EventType::TaskStopRequested)
    );
    d.no_dialog().await;
    d.cmd("DELETE", "", None).await;
}
