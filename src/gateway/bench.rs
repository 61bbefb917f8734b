//! `airut bench gateway`: the gateway's own overhead, with a real log, real
//! git workspaces (a local bare repository as the remote, warm mirror) and
//! an agent and a channel that answer at once, so what is measured is
//! airut: intake, fsyncs, the clone, the prompt, the reply.
//!
//! Not a test: it prints figures. Called by `cli::bench`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    BoxFuture, Delivered, ExecutionResult, Gateway, GatewayConfig, OutgoingReply, ReplySink,
    RepoSetup, RunRequest, SendError, TaskRunner,
};
use crate::events::{ConversationId, Event, MessageReceivedV1, RepoId, StreamId, TaskOutcome};
use crate::log::{ExpectedVersion, Log, LogOptions, NewEvent, StreamAppend};
use crate::workspace::RepoWorkspace;

/// Latencies of one message, from its `message.received` append.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// To the agent's start (the container would start here).
    pub to_run: Duration,
    /// To the reply handed to the channel.
    pub to_reply: Duration,
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// New conversations, one at a time (each a clone of the mirror).
    pub new: Vec<Sample>,
    /// Replies to an existing conversation, one at a time.
    pub resumed: Vec<Sample>,
    /// `n` messages to `n` conversations at once: total time.
    pub burst: (usize, Duration),
}

#[derive(Default)]
struct Clock {
    runs: Mutex<BTreeMap<String, Instant>>,
    replies: Mutex<BTreeMap<String, Instant>>,
}

struct Runner(Arc<Clock>);
struct Sink(Arc<Clock>);

impl TaskRunner for Runner {
    fn run(&self, req: RunRequest, _cancel: CancellationToken) -> BoxFuture<'_, ExecutionResult> {
        Box::pin(async move {
            let key = req.prompt.lines().last().unwrap_or("").to_owned();
            if let Ok(mut runs) = self.0.runs.lock() {
                runs.insert(key, Instant::now());
            }
            let mut r = ExecutionResult::internal("");
            r.outcome = TaskOutcome::Succeeded;
            r.session_id = Some(format!("s-{}", req.task));
            r.response_text = "done".to_owned();
            r
        })
    }
}

impl ReplySink for Sink {
    fn channel_context(&self) -> String {
        "You talk to the user by email.".to_owned()
    }
    fn send(&self, reply: OutgoingReply) -> BoxFuture<'_, Result<Delivered, SendError>> {
        Box::pin(async move {
            if reply.kind == crate::events::ReplyKind::Result
                && let Ok(mut replies) = self.0.replies.lock()
            {
                replies.insert(reply.in_reply_to.clone(), Instant::now());
            }
            Ok(Delivered {
                message_id: format!("<airut.{}@bench>", reply.key),
                attachments: Vec::new(),
            })
        })
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs the benchmark in `dir` with `n` messages per phase.
pub async fn run(dir: &Path, n: usize) -> Result<BenchReport, String> {
    let remote = dir.join("origin.git");
    git(
        dir,
        &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
    )?;
    git(dir, &["clone", "--quiet", "origin.git", "author"])?;
    let author = dir.join("author");
    git(&author, &["checkout", "--quiet", "-b", "main"])?;
    std::fs::write(author.join("README.md"), "bench\n").map_err(|e| e.to_string())?;
    git(&author, &["add", "-A"])?;
    git(&author, &["commit", "--quiet", "-m", "init"])?;
    git(&author, &["push", "--quiet", "origin", "main"])?;

    let log = Log::open(&dir.join("log"), LogOptions::default()).map_err(|e| e.to_string())?;
    let repo = RepoId("bench".to_owned());
    let ws = RepoWorkspace::new(
        dir,
        repo.clone(),
        &remote.display().to_string(),
        None,
        Duration::from_secs(120),
    )
    .map_err(|e| e.to_string())?;
    ws.refresh_mirror().await.map_err(|e| e.to_string())?;
    let clock = Arc::new(Clock::default());
    let mut sinks: BTreeMap<String, Arc<dyn ReplySink>> = BTreeMap::new();
    sinks.insert("email".to_owned(), Arc::new(Sink(clock.clone())));
    let setup = RepoSetup {
        id: repo.clone(),
        model: "opus".to_owned(),
        effort: None,
        timeout: None,
        workspace: Some(Arc::new(ws)),
        runner: Some(Arc::new(Runner(clock.clone()))),
        sinks,
        boot_check: None,
    };
    let cfg = GatewayConfig {
        max_concurrent: 4,
        shutdown_timeout: Duration::from_secs(10),
        conversation_max_age: Duration::from_secs(7 * 86400),
    };
    let gw = Gateway::boot(log.clone(), cfg, vec![setup])
        .await
        .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));

    let mut seq = 0usize;
    let mut one = |thread: Option<String>| {
        seq += 1;
        (format!("<b{seq}@bench>"), thread, format!("message {seq}"))
    };
    let send = |log: Log, id: String, thread: Option<String>, body: String| async move {
        let at = Instant::now();
        log.append(StreamAppend {
            stream: StreamId::channel(&RepoId("bench".to_owned()), "email"),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event: Event::MessageReceived(MessageReceivedV1 {
                    repo: RepoId("bench".to_owned()),
                    channel: "email".to_owned(),
                    dedup_key: id.clone(),
                    message_id: id.clone(),
                    thread_keys: thread.into_iter().collect(),
                    sender: "alice@example.com".to_owned(),
                    sender_display: "Alice <alice@example.com>".to_owned(),
                    conversation_ref: None::<ConversationId>,
                    subject: "bench".to_owned(),
                    body,
                    raw: None,
                    attachments: Vec::new(),
                    model_hint: None,
                }),
                causation: None,
            }],
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok::<_, String>(at)
    };
    let wait_reply = |id: String, body: String, at: Instant| {
        let clock = clock.clone();
        async move {
            let deadline = at + Duration::from_secs(120);
            loop {
                let reply = clock.replies.lock().ok().and_then(|r| r.get(&id).copied());
                let run = clock.runs.lock().ok().and_then(|r| r.get(&body).copied());
                if let (Some(reply), Some(run)) = (reply, run) {
                    return Ok(Sample {
                        to_run: run - at,
                        to_reply: reply - at,
                    });
                }
                if Instant::now() > deadline {
                    return Err(format!("no reply to {id} within 120 s"));
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    };

    let mut new = Vec::new();
    let mut first = None;
    for _ in 0..n {
        let (id, thread, body) = one(None);
        first.get_or_insert(id.clone());
        let at = send(log.clone(), id.clone(), thread, body.clone()).await?;
        new.push(wait_reply(id, body, at).await?);
    }
    let mut resumed = Vec::new();
    for _ in 0..n {
        let (id, thread, body) = one(first.clone());
        let at = send(log.clone(), id.clone(), thread, body.clone()).await?;
        resumed.push(wait_reply(id, body, at).await?);
    }
    let start = Instant::now();
    let mut pending = Vec::new();
    for _ in 0..n {
        let (id, thread, body) = one(None);
        send(log.clone(), id.clone(), thread, body.clone()).await?;
        pending.push((id, body));
    }
    for (id, body) in pending {
        wait_reply(id, body, start).await?;
    }
    let burst = (n, start.elapsed());
    shutdown.cancel();
    serving
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    log.close().await.map_err(|e| e.to_string())?;
    Ok(BenchReport {
        new,
        resumed,
        burst,
    })
}
