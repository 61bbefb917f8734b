//! `airut bench sandbox`: figures for the sandbox (not a test; prints
//! numbers).
//!
//! 1. Start latency with a cached image: from the start of a run (create,
//!    attach, start, prompt on stdin) to the first stream-json line, next to
//!    `podman run` of the same image, init, binary and mounts by hand, and
//!    their ratio (goal: at most 1.2). The agent is a script that prints a
//!    `system/init` line at once, so the figure is the sandbox's own cost,
//!    not Claude Code's start-up (pass `--claude` to use another binary).
//! 2. stream-json throughput: splitting and classifying a generated
//!    transcript of realistic lines, in MB/s (goal: at least 200).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::image::{BuildFor, ImageCache, ImageSpec};
use super::lines::LineSplitter;
use super::run::{self, Mounts, NetworkMode, RunRequest, Stopper};
use super::stream_json::Accumulator;
use super::{CLAUDE_PATH, Engine, INIT_PATH};
use crate::config::ResourceLimits;
use crate::events::{ConversationId, Event, OutputStream, RepoId, Seq, StreamId, TaskId};
use crate::log::{Log, LogOptions};

/// Options of the sandbox benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Runs of each kind (the median is reported).
    pub runs: u32,
    /// The engine socket (default: discovered).
    pub engine_socket: Option<PathBuf>,
    /// The static init (default: beside `airut`).
    pub init: PathBuf,
    /// The agent binary (default: a script printing one stream-json line).
    pub claude: Option<PathBuf>,
    /// busybox-static, for the image.
    pub busybox: PathBuf,
    /// The podman command for the by-hand figure.
    pub podman: String,
    /// Megabytes of stream-json for the parse figure.
    pub parse_mb: usize,
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::Builder::new()
        .prefix("airut-bench-sandbox-")
        .tempdir()?;
    println!(
        "airut bench sandbox: {} runs each, scratch {}",
        opts.runs,
        scratch.path().display()
    );

    let (ratio_line, ok_ratio) = match start_latency(&opts, scratch.path()).await {
        Ok((airut, by_hand)) => {
            let ratio = airut.as_secs_f64() / by_hand.as_secs_f64();
            println!(
                "start → first stream-json line (airut run, median):  {:>8.1} ms",
                ms(airut)
            );
            println!(
                "start → first stream-json line (podman run by hand): {:>8.1} ms",
                ms(by_hand)
            );
            (
                format!("ratio airut / by hand: {ratio:.2} (goal ≤ 1.2)"),
                ratio <= 1.2,
            )
        }
        Err(e) => (format!("start latency: not measured: {e:#}"), false),
    };
    println!("{ratio_line}");

    let mbps = parse_throughput(opts.parse_mb);
    println!("stream-json split + parse: {mbps:.0} MB/s (goal ≥ 200)");
    Ok(if ok_ratio && mbps >= 200.0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn start_latency(opts: &BenchOptions, dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let engine = Engine::connect(opts.engine_socket.as_deref()).await?;
    let log = Log::open(
        &dir.join("log"),
        LogOptions {
            flush_interval: Duration::from_millis(100),
            create: true,
            ..LogOptions::default()
        },
    )?;
    let busybox = std::fs::read(&opts.busybox).with_context(|| {
        format!(
            "reading {} (Debian: apt-get install busybox-static)",
            opts.busybox.display()
        )
    })?;
    let spec = ImageSpec::repo(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nWORKDIR /workspace\n",
        BTreeMap::from([("busybox".to_owned(), busybox)]),
    );
    let cache = ImageCache::new(engine.clone(), log.clone(), Duration::from_secs(24 * 3600));
    let stream = ConversationId::random().stream();
    let tag = cache
        .ensure(
            &spec,
            false,
            &BuildFor {
                repo: RepoId("bench".to_owned()),
                task: None,
                stream: StreamId::server(),
            },
        )
        .await?;
    let claude = match &opts.claude {
        Some(p) => p.clone(),
        None => {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join("fake-claude");
            std::fs::write(
                &p,
                "#!/bin/sh\necho '{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"bench\"}'\ncat >/dev/null\n",
            )?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            p
        }
    };
    let mk = |n: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(n);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let mounts = Mounts {
        workspace: mk("workspace")?,
        inbox: mk("inbox")?,
        outbox: mk("outbox")?,
        storage: mk("storage")?,
        claude_state: mk("claude")?,
    };

    let mut airut = Vec::new();
    let mut by_hand = Vec::new();
    // One warm-up of each, not counted.
    for i in 0..=opts.runs {
        let req = RunRequest {
            task: TaskId::new(),
            stream: stream.clone(),
            image: tag.clone(),
            mounts: mounts.clone(),
            claude_binary: claude.clone(),
            init_binary: opts.init.clone(),
            env: Vec::new(),
            limits: ResourceLimits::default(),
            resume_session: None,
            model: "bench".to_owned(),
            effort: None,
            prompt: "bench".to_owned(),
            network: NetworkMode::Unsandboxed,
            ca_cert: None,
            stop_grace: Duration::from_secs(5),
        };
        let t = airut_first_line(&engine, &log, &req).await?;
        let h = podman_first_line(opts, &req).await?;
        if i > 0 {
            airut.push(t);
            by_hand.push(h);
        }
    }
    log.close().await?;
    Ok((median(airut), median(by_hand)))
}

/// Time from calling `run` to the first stdout line being recorded.
async fn airut_first_line(
    engine: &Engine,
    log: &Log,
    req: &RunRequest,
) -> anyhow::Result<Duration> {
    let mut sub = log.subscribe(log.head().map(Seq::next).unwrap_or_default());
    let (_stop, rx) = Stopper::new();
    let start = Instant::now();
    let handle = tokio::spawn({
        let (engine, log, req) = (engine.clone(), log.clone(), req.clone());
        async move { run::run(&engine, &log, &req, rx).await }
    });
    let first = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = sub.next().await {
            if let Ok(Event::ContainerOutput(o)) = r?.decode()
                && o.task == req.task
                && o.stream == OutputStream::Stdout
            {
                return anyhow::Ok(start.elapsed());
            }
        }
        anyhow::bail!("the log closed before the first line")
    })
    .await
    .context("no first line within 120 s")??;
    handle.await??;
    Ok(first)
}

/// `podman run` with the same image, mounts, init and command.
async fn podman_first_line(opts: &BenchOptions, req: &RunRequest) -> anyhow::Result<Duration> {
    let m = &req.mounts;
    let v = |src: &Path, dst: &str, ro: bool| {
        format!("{}:{dst}:{}", src.display(), if ro { "ro" } else { "rw" })
    };
    let start = Instant::now();
    let mut child = tokio::process::Command::new(&opts.podman)
        .args(["run", "--rm", "-i", "--log-driver=none", "--cap-drop=ALL"])
        .args([
            "--cap-add=CHOWN",
            "--cap-add=DAC_OVERRIDE",
            "--cap-add=FOWNER",
            "--cap-add=SETGID",
            "--cap-add=SETUID",
        ])
        .args([
            "--security-opt=no-new-privileges:true",
            "-e",
            "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS=1",
        ])
        .args([
            "-v",
            &v(&m.workspace, "/workspace", false),
            "-v",
            &v(&m.inbox, "/inbox", false),
        ])
        .args([
            "-v",
            &v(&m.outbox, "/outbox", false),
            "-v",
            &v(&m.storage, "/storage", false),
        ])
        .args(["-v", &v(&m.claude_state, "/root/.claude", false)])
        .args([
            "-v",
            &v(&req.claude_binary, CLAUDE_PATH, true),
            "-v",
            &v(&req.init_binary, INIT_PATH, true),
        ])
        .args(["--entrypoint", INIT_PATH, &req.image])
        .args(run::claude_args(req))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", opts.podman))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(req.prompt.as_bytes()).await?;
    drop(stdin);
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("podman run: no first line within 120 s")??;
    let took = start.elapsed();
    anyhow::ensure!(first.is_some(), "podman run printed nothing");
    while lines.next_line().await?.is_some() {}
    child.wait().await?;
    Ok(took)
}

/// A transcript of realistic lines: init, assistant text and tool uses,
/// tool results of varied size, a result; repeated to `mb` megabytes.
pub fn transcript(mb: usize) -> Vec<u8> {
    let text = "Let me look at the failing test first. ".repeat(8);
    let result_body = "line of test output with a path /workspace/src/lib.rs:42\\n".repeat(40);
    let block = format!(
        concat!(
            r#"{{"type":"system","subtype":"init","session_id":"0b6a5c1e","tools":["Bash","Read","Write","Edit","TodoWrite"],"model":"claude-opus"}}"#,
            "\n",
            r#"{{"type":"assistant","message":{{"id":"msg_1","role":"assistant","content":[{{"type":"text","text":"{text}"}}]}},"session_id":"0b6a5c1e"}}"#,
            "\n",
            r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","id":"toolu_1","name":"Bash","input":{{"command":"cargo test -p airut 2>&1 | tail -n 40","description":"Run tests"}}}}]}},"session_id":"0b6a5c1e"}}"#,
            "\n",
            r#"{{"type":"user","message":{{"role":"user","content":[{{"tool_use_id":"toolu_1","type":"tool_result","content":"{body}","is_error":false}}]}},"session_id":"0b6a5c1e"}}"#,
            "\n",
            r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","id":"toolu_2","name":"TodoWrite","input":{{"todos":[{{"content":"Fix the test","status":"in_progress","activeForm":"Fixing the test"}}]}}}}]}}}}"#,
            "\n",
            r#"{{"type":"result","subtype":"success","is_error":false,"duration_ms":51234,"num_turns":7,"result":"{text}","session_id":"0b6a5c1e","total_cost_usd":0.4123,"usage":{{"input_tokens":1200,"output_tokens":3400,"cache_creation_input_tokens":15000,"cache_read_input_tokens":88000}}}}"#,
            "\n",
            "warning: some non-JSON noise\n",
        ),
        text = text,
        body = result_body
    );
    let target = mb * 1024 * 1024;
    let mut out = Vec::with_capacity(target + block.len());
    while out.len() < target {
        out.extend_from_slice(block.as_bytes());
    }
    out
}

/// Splits and classifies a transcript; returns MB/s (best of three).
pub fn parse_throughput(mb: usize) -> f64 {
    let data = transcript(mb.max(1));
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut acc = Accumulator::default();
        let mut split = LineSplitter::default();
        let mut kinds = 0usize;
        for chunk in data.chunks(64 * 1024) {
            split.push(chunk, &mut |l| {
                acc.push_stdout(&l.text);
                kinds += 1;
            });
        }
        split.finish(&mut |l| {
            acc.push_stdout(&l.text);
        });
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box((kinds, acc.session_id().map(str::len)));
        best = best.max(data.len() as f64 / (1024.0 * 1024.0) / secs);
    }
    best
}
