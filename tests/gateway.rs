//! The gateway with fakes for the sandbox and the channel (the traits it
//! drives), against a real log: intake, coalescing, concurrency, replies,
//! retries, stop, shutdown, expiry, partial boot, and a crash at every
//! side-effect boundary followed by a restart.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airut::events::*;
use airut::gateway::{
    BoxFuture, Delivered, ExecutionResult, Gateway, GatewayConfig, GatewayError, OutgoingReply,
    ReplySink, RepoSetup, RepoStatus, RunRequest, SendError, Step, TaskRunner, Workspace,
};
use airut::log::{ExpectedVersion, Log, LogOptions, NewEvent, StreamAppend};
use airut::workspace::ConversationDirs;
use proptest::prelude::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Guard on every wait in these tests (never an assertion on speed).
const WAIT: Duration = Duration::from_secs(60);

// --- fakes -------------------------------------------------------------

/// The channel: records every delivery (the outside world survives crashes).
#[derive(Default)]
struct FakeSink {
    sent: Mutex<Vec<OutgoingReply>>,
    fail_next: AtomicU32,
}

impl ReplySink for FakeSink {
    fn channel_context(&self) -> String {
        "You talk to the user by email.".to_owned()
    }
    fn send(&self, reply: OutgoingReply) -> BoxFuture<'_, Result<Delivered, SendError>> {
        Box::pin(async move {
            if self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(SendError {
                    message: "smtp said no".to_owned(),
                });
            }
            let attachments = reply
                .attachments
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            let message_id = format!("<airut.{}@test>", reply.key);
            self.sent.lock().unwrap().push(reply);
            Ok(Delivered {
                message_id,
                attachments,
            })
        })
    }
}

impl FakeSink {
    fn sent(&self) -> Vec<OutgoingReply> {
        self.sent.lock().unwrap().clone()
    }
}

/// The sandbox: answers from the prompt's last line. Words in the prompt
/// steer it: `WAIT` blocks until cancelled or released, `TOOLONG` fails a
/// resumed run, `BREAK` fails, `OUTBOX` writes a file to the outbox.
#[derive(Default)]
struct FakeRunner {
    requests: Mutex<Vec<RunRequest>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    release: Option<Arc<Semaphore>>,
}

impl TaskRunner for FakeRunner {
    fn run(&self, req: RunRequest, cancel: CancellationToken) -> BoxFuture<'_, ExecutionResult> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(req.clone());
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let mut r = ExecutionResult::internal("");
            r.outcome = TaskOutcome::Succeeded;
            r.session_id = Some(format!("session-{}-{}", req.task, req.attempt));
            r.duration_ms = 1500;
            r.cost_micros = Some(42_000);
            r.turns = Some(3);
            let last = req.prompt.lines().last().unwrap_or("").to_owned();
            r.response_text = format!("answer to: {last}");
            if req.prompt.contains("WAIT") {
                let gate = self.release.clone();
                let released = async {
                    match gate {
                        Some(g) => g.acquire().await.expect("open").forget(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => {
                        r.outcome = TaskOutcome::Stopped;
                        r.reason = "container stopped".to_owned();
                    }
                    _ = released => {}
                }
            }
            if req.prompt.contains("TOOLONG") && req.resume_session.is_some() {
                r.outcome = TaskOutcome::PromptTooLong;
                r.reason = "Prompt is too long".to_owned();
            }
            if req.prompt.contains("BREAK") {
                r.outcome = TaskOutcome::ContainerFailed;
                r.reason = "exit code 1".to_owned();
                r.error_summary = Some("Error: something broke".to_owned());
            }
            if req.prompt.contains("OUTBOX") {
                std::fs::write(req.dirs.outbox.join("report.txt"), "the report").unwrap();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            r
        })
    }
}

impl FakeRunner {
    fn requests(&self) -> Vec<RunRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// Workspaces as plain directories (the git side is tested in `workspace`).
struct DirWorkspace {
    root: PathBuf,
    fail: bool,
}

impl Workspace for DirWorkspace {
    fn prepare(&self, conv: ConversationId) -> BoxFuture<'_, Result<ConversationDirs, String>> {
        Box::pin(async move {
            if self.fail {
                return Err("git fetch failed: could not resolve host".to_owned());
            }
            let dirs = self.dirs(conv);
            for d in [
                &dirs.workspace,
                &dirs.inbox,
                &dirs.outbox,
                &dirs.storage,
                &dirs.claude,
            ] {
                std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
            }
            Ok(dirs)
        })
    }
    fn dirs(&self, conv: ConversationId) -> ConversationDirs {
        ConversationDirs::at(self.root.join(conv.to_string()))
    }
    fn remove(&self, conv: ConversationId) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(self.dirs(conv).root);
        Ok(())
    }
}

// --- harness -------------------------------------------------------------

struct World {
    _tmp: tempfile::TempDir,
    log_dir: PathBuf,
    ws_root: PathBuf,
    sink: Arc<FakeSink>,
    runner: Arc<FakeRunner>,
    max_concurrent: usize,
    shutdown_timeout: Duration,
    workspace_fails: bool,
}

fn repo() -> RepoId {
    RepoId("widgets".to_owned())
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        World {
            log_dir: tmp.path().join("log"),
            ws_root: tmp.path().join("conversations"),
            _tmp: tmp,
            sink: Arc::new(FakeSink::default()),
            runner: Arc::new(FakeRunner::default()),
            max_concurrent: 2,
            shutdown_timeout: Duration::from_secs(30),
            workspace_fails: false,
        }
    }

    fn with_gate(mut self, gate: Arc<Semaphore>) -> World {
        self.runner = Arc::new(FakeRunner {
            release: Some(gate),
            ..FakeRunner::default()
        });
        self
    }

    fn open_log(&self) -> Log {
        Log::open(&self.log_dir, LogOptions::default()).unwrap()
    }

    fn setup(&self, id: RepoId) -> RepoSetup {
        let mut sinks: BTreeMap<String, Arc<dyn ReplySink>> = BTreeMap::new();
        sinks.insert("email".to_owned(), self.sink.clone());
        RepoSetup {
            id,
            model: "opus".to_owned(),
            effort: Some("high".to_owned()),
            timeout: Some(Duration::from_secs(600)),
            workspace: Some(Arc::new(DirWorkspace {
                root: self.ws_root.clone(),
                fail: self.workspace_fails,
            })),
            runner: Some(self.runner.clone()),
            sinks,
            boot_check: None,
        }
    }

    fn config(&self) -> GatewayConfig {
        GatewayConfig {
            max_concurrent: self.max_concurrent,
            shutdown_timeout: self.shutdown_timeout,
            conversation_max_age: Duration::from_secs(7 * 86400),
        }
    }

    async fn boot(&self, log: &Log) -> Gateway {
        Gateway::boot(log.clone(), self.config(), vec![self.setup(repo())])
            .await
            .unwrap()
    }
}

struct Mail<'a> {
    repo: RepoId,
    channel: &'a str,
    message_id: &'a str,
    thread_keys: Vec<String>,
    conversation_ref: Option<ConversationId>,
    subject: &'a str,
    body: &'a str,
    attachments: Vec<AttachmentV1>,
}

fn mail<'a>(message_id: &'a str, subject: &'a str, body: &'a str) -> Mail<'a> {
    Mail {
        repo: repo(),
        channel: "email",
        message_id,
        thread_keys: Vec::new(),
        conversation_ref: None,
        subject,
        body,
        attachments: Vec::new(),
    }
}

async fn receive(log: &Log, m: Mail<'_>) -> EventId {
    let appended = log
        .append(StreamAppend {
            stream: StreamId::channel(&m.repo, m.channel),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event: Event::MessageReceived(MessageReceivedV1 {
                    repo: m.repo.clone(),
                    channel: m.channel.to_owned(),
                    dedup_key: format!("imap:1:{}", m.message_id),
                    message_id: m.message_id.to_owned(),
                    thread_keys: m.thread_keys,
                    sender: "alice@example.com".to_owned(),
                    sender_display: "Alice <alice@example.com>".to_owned(),
                    conversation_ref: m.conversation_ref,
                    subject: m.subject.to_owned(),
                    body: m.body.to_owned(),
                    raw: None,
                    attachments: m.attachments,
                    model_hint: None,
                }),
                causation: None,
            }],
        })
        .await
        .unwrap();
    appended.ids[0]
}

/// Every event of the log, decoded.
fn events(log: &Log) -> Vec<(airut::log::Header, Event)> {
    log.iter_from(Seq(0))
        .map(|r| {
            let r = r.unwrap();
            let e = r.decode().unwrap();
            (r.header, e)
        })
        .collect()
}

fn count(log: &Log, ty: EventType) -> usize {
    events(log)
        .iter()
        .filter(|(_, e)| e.event_type() == ty)
        .count()
}

fn conversations(log: &Log) -> Vec<ConversationStartedV1> {
    events(log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::ConversationStarted(c) => Some(c),
            _ => None,
        })
        .collect()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let r = tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "gave up waiting for: {what}");
}

// --- scenarios -------------------------------------------------------------

#[tokio::test]
async fn a_new_message_gets_an_ack_then_a_threaded_reply_with_the_outbox() {
    let w = World::new();
    let log = w.open_log();
    let content = b"col1,col2\n".to_vec();
    let blob = log.put_blob(&content).unwrap();
    let mut m = mail("<m1@example.com>", "Fix the build", "Please fix it. OUTBOX");
    m.attachments = vec![AttachmentV1 {
        name: "data.csv".to_owned(),
        original_name: "data.csv".to_owned(),
        content_type: "text/csv".to_owned(),
        blob,
    }];
    receive(&log, m).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();

    let convs = conversations(&log);
    assert_eq!(convs.len(), 1);
    let conv = convs[0].conversation;
    assert_eq!(convs[0].model.as_deref(), Some("opus"));
    let sent = w.sink.sent();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0].kind, ReplyKind::Acknowledgement);
    assert!(sent[0].text.contains(&conv.to_string()));
    assert_eq!(sent[1].kind, ReplyKind::Result);
    assert_eq!(sent[1].in_reply_to, "<m1@example.com>");
    assert_eq!(sent[1].to, "alice@example.com");
    assert!(sent[1].text.starts_with("answer to: "), "{}", sent[1].text);
    assert!(
        sent[1]
            .text
            .contains("\n\n---\nTook 1.5 s · $0.0420 · 3 turns")
    );
    assert_eq!(sent[1].attachments.len(), 1);
    // The thread knows our ack's id, so a reply to it finds the conversation.
    assert!(
        sent[1]
            .thread_keys
            .contains(&format!("<airut.{}@test>", sent[0].key))
    );

    let req = &w.runner.requests()[0];
    assert_eq!(req.attempt, 1);
    assert_eq!(req.resume_session, None);
    assert_eq!(req.effort.as_deref(), Some("high"));
    assert!(req.prompt.starts_with("You talk to the user by email.\n\nSubject: Fix the build The user attached files, which were saved to /inbox/: data.csv.\n\n[Alice <alice@example.com> "));
    let dirs = ConversationDirs::at(w.ws_root.join(conv.to_string()));
    assert_eq!(std::fs::read(dirs.inbox.join("data.csv")).unwrap(), content);
    assert!(
        dirs.outbox_files().is_empty(),
        "the outbox is cleared after sending"
    );

    // Everything settled: nothing queued, nothing owed.
    let s = gw.state();
    assert!(s.tasks.is_empty() && s.owed.is_empty() && s.intake.is_empty());
    assert_eq!(count(&log, EventType::ReplySent), 2);
}

#[tokio::test]
async fn a_reply_continues_the_conversation_and_its_session() {
    let w = World::new();
    let log = w.open_log();
    receive(&log, mail("<m1@x>", "Start", "first")).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    let ack_id = format!("<airut.{}@test>", w.sink.sent()[0].key);
    let mut m = mail("<m2@x>", "Re: Start", "second");
    m.thread_keys = vec![ack_id];
    receive(&log, m).await;
    gw.run_until_idle().await.unwrap();

    assert_eq!(conversations(&log).len(), 1);
    assert_eq!(count(&log, EventType::ConversationResumed), 1);
    let reqs = w.runner.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].resume_session,
        Some(format!("session-{}-1", reqs[0].task))
    );
    assert!(!reqs[1].prompt.contains("Subject:"));
    let sent = w.sink.sent();
    assert_eq!(sent.len(), 3, "no ack for a resumed conversation");
    assert_eq!(sent[2].in_reply_to, "<m2@x>");
}

#[tokio::test]
async fn a_conversation_of_another_repo_is_never_resumed() {
    let w = World::new();
    let log = w.open_log();
    receive(&log, mail("<a1@x>", "A", "for widgets")).await;
    let other = RepoId("gadgets".to_owned());
    let mut gw = Gateway::boot(
        log.clone(),
        w.config(),
        vec![w.setup(repo()), w.setup(other.clone())],
    )
    .await
    .unwrap();
    gw.run_until_idle().await.unwrap();
    let a = conversations(&log)[0].conversation;
    let mut m = mail("<b1@x>", "Re: A", "for gadgets");
    m.repo = other.clone();
    m.conversation_ref = Some(a);
    m.thread_keys = vec!["<a1@x>".to_owned()];
    receive(&log, m).await;
    gw.run_until_idle().await.unwrap();
    let convs = conversations(&log);
    assert_eq!(convs.len(), 2);
    assert_ne!(convs[1].conversation, a);
    assert_eq!(convs[1].repo, other);
    assert_eq!(convs[1].replaces_expired, None);
}

#[tokio::test]
async fn unknown_or_malformed_references_start_a_new_conversation() {
    let w = World::new();
    let log = w.open_log();
    let mut m = mail("<u1@x>", "Re: [ID:deadbeef] old", "continue please");
    m.conversation_ref = Some(ConversationId(0xdead_beef));
    m.thread_keys = vec![
        String::new(),
        "<never-seen@x>".to_owned(),
        "\0\n".to_owned(),
    ];
    receive(&log, m).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    let convs = conversations(&log);
    assert_eq!(convs.len(), 1);
    assert_ne!(convs[0].conversation, ConversationId(0xdead_beef));
    assert_eq!(convs[0].replaces_expired, None);
    assert!(!convs[0].thread_keys.contains(&String::new()));
    // A hostile attachment name stays inside the inbox.
    let blob = log.put_blob(b"x").unwrap();
    let mut m = mail("<u2@x>", "Files", "see attached");
    m.attachments = vec![AttachmentV1 {
        name: "../../../etc/cron.d/evil".to_owned(),
        original_name: "../../../etc/cron.d/evil".to_owned(),
        content_type: "text/plain".to_owned(),
        blob,
    }];
    receive(&log, m).await;
    gw.run_until_idle().await.unwrap();
    let conv = conversations(&log)[1].conversation;
    let inbox = ConversationDirs::at(w.ws_root.join(conv.to_string())).inbox;
    assert!(inbox.join("evil").is_file());
    assert!(w.runner.requests()[1].prompt.contains("/inbox/: evil."));
}

#[tokio::test]
async fn a_message_on_a_channel_without_a_sink_waits_and_does_not_spin() {
    let w = World::new();
    let log = w.open_log();
    let mut m = mail("1733400000.000100", "", "from slack");
    m.channel = "slack";
    receive(&log, m).await;
    let mut gw = w.boot(&log).await;
    // Intake happens; the task and its ack wait for a slack sink.
    assert_eq!(gw.run_until_idle().await.unwrap(), 1);
    assert_eq!(gw.state().tasks.len(), 1);
    assert_eq!(gw.state().owed.len(), 1);
    assert!(w.runner.requests().is_empty());
}

#[tokio::test]
async fn empty_messages_are_dismissed_with_an_error_reply_and_start_nothing() {
    let w = World::new();
    let log = w.open_log();
    receive(&log, mail("<e1@x>", "", "   \n")).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    assert_eq!(count(&log, EventType::MessageDismissed), 1);
    assert!(conversations(&log).is_empty());
    let sent = w.sink.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, ReplyKind::Error);
    assert!(sent[0].text.contains("empty"));
    // A subject alone is enough for a new conversation.
    receive(&log, mail("<e2@x>", "Do the thing", "")).await;
    gw.run_until_idle().await.unwrap();
    assert_eq!(conversations(&log).len(), 1);
    assert!(w.runner.requests()[0].prompt.ends_with("Do the thing"));
}

#[tokio::test]
async fn follow_ups_during_a_run_become_exactly_one_next_task() {
    let gate = Arc::new(Semaphore::new(0));
    let w = World::new().with_gate(gate.clone());
    let log = w.open_log();
    receive(&log, mail("<f1@x>", "Long job", "WAIT please")).await;
    let gw = w.boot(&log).await;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("the first run starts", || {
        runner.running.load(Ordering::SeqCst) == 1
    })
    .await;
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let mut m = mail(["<f2@x>", "<f3@x>", "<f4@x>"][i], "Re: Long job", body);
        m.thread_keys = vec!["<f1@x>".to_owned()];
        receive(&log, m).await;
    }
    wait_until("three follow-ups taken up", || {
        count(&log, EventType::ConversationResumed) == 3
    })
    .await;
    gate.add_permits(10);
    wait_until("both tasks answered", || {
        w.sink
            .sent()
            .iter()
            .filter(|r| r.kind == ReplyKind::Result)
            .count()
            == 2
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();

    assert_eq!(count(&log, EventType::TaskQueued), 2);
    assert_eq!(count(&log, EventType::TaskCoalesced), 2);
    let reqs = w.runner.requests();
    assert_eq!(reqs.len(), 2);
    let second = &reqs[1].prompt;
    let (i1, i2, i3) = (
        second.find("\none").unwrap(),
        second.find("\ntwo").unwrap(),
        second.find("\nthree").unwrap(),
    );
    assert!(i1 < i2 && i2 < i3, "{second}");
    let results: Vec<_> = w
        .sink
        .sent()
        .into_iter()
        .filter(|r| r.kind == ReplyKind::Result)
        .collect();
    assert_eq!(
        results[1].in_reply_to, "<f4@x>",
        "threaded to the newest message"
    );
}

#[tokio::test]
async fn max_concurrent_bounds_parallel_runs_and_the_third_waits() {
    let gate = Arc::new(Semaphore::new(0));
    let w = World::new().with_gate(gate.clone());
    let log = w.open_log();
    for id in ["<p1@x>", "<p2@x>", "<p3@x>"] {
        receive(&log, mail(id, "Parallel", "WAIT")).await;
    }
    let gw = w.boot(&log).await;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("two runs", || runner.running.load(Ordering::SeqCst) == 2).await;
    // The third is queued, not started, while two run.
    assert_eq!(runner.requests().len(), 2);
    assert_eq!(count(&log, EventType::TaskStarted), 2);
    gate.add_permits(1);
    wait_until("the third starts", || runner.requests().len() == 3).await;
    gate.add_permits(10);
    wait_until("all answered", || {
        count(&log, EventType::TaskCompleted) == 3
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    assert_eq!(runner.max_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stop_by_conversation_ends_the_run_with_a_clear_reply() {
    let w = World::new();
    let log = w.open_log();
    receive(&log, mail("<s1@x>", "Forever", "WAIT")).await;
    let gw = w.boot(&log).await;
    let handle = gw.handle();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("the run starts", || {
        runner.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let conv = conversations(&log)[0].conversation;
    assert!(!handle.stop(ConversationId(0x1234_5678)).await);
    assert!(handle.stop(conv).await);
    wait_until("the stop is answered", || {
        w.sink.sent().iter().any(|r| r.kind == ReplyKind::Error)
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    let err = w
        .sink
        .sent()
        .into_iter()
        .find(|r| r.kind == ReplyKind::Error)
        .unwrap();
    assert!(err.text.contains("stopped"), "{}", err.text);
    let outcome = events(&log).into_iter().find_map(|(_, e)| match e {
        Event::TaskCompleted(c) => Some(c.outcome),
        _ => None,
    });
    assert_eq!(outcome, Some(TaskOutcome::Stopped));
}

/// Appends `task.stop_requested` as the dashboard's Stop button does.
async fn request_stop(log: &Log, conv: ConversationId, task: TaskId) {
    log.append(StreamAppend {
        stream: conv.stream(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event: Event::TaskStopRequested(TaskStopRequestedV1 {
                task,
                requested_by: "dashboard:operator".to_owned(),
                reason: String::new(),
            }),
            causation: None,
        }],
    })
    .await
    .unwrap();
}

/// The task queued for a conversation.
fn task_of(log: &Log, conv: ConversationId) -> TaskId {
    events(log)
        .into_iter()
        .find_map(|(_, e)| match e {
            Event::TaskQueued(q) if q.conversation == conv => Some(q.task),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn a_stop_request_in_the_log_stops_the_running_task() {
    let w = World::new();
    let log = w.open_log();
    receive(&log, mail("<sr1@x>", "Forever", "WAIT")).await;
    let gw = w.boot(&log).await;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("the run starts", || {
        runner.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let conv = conversations(&log)[0].conversation;
    request_stop(&log, conv, task_of(&log, conv)).await;
    wait_until("the stop is answered", || {
        w.sink.sent().iter().any(|r| r.kind == ReplyKind::Error)
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    let done: Vec<TaskCompletedV1> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::TaskCompleted(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].outcome, TaskOutcome::Stopped);
    assert!(done[0].reply_text.contains("stopped on request"));
}

#[tokio::test]
async fn a_queued_task_that_is_stopped_never_starts_and_is_answered() {
    let gate = Arc::new(Semaphore::new(0));
    let mut w = World::new().with_gate(gate.clone());
    w.max_concurrent = 1;
    let log = w.open_log();
    receive(&log, mail("<q1@x>", "First", "WAIT")).await;
    receive(&log, mail("<q2@x>", "Second", "WAIT")).await;
    let gw = w.boot(&log).await;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("the first runs", || {
        runner.running.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("both conversations exist", || {
        conversations(&log).len() == 2
    })
    .await;
    let second = conversations(&log)
        .into_iter()
        .find(|c| !c.thread_keys.iter().any(|k| k == "<q1@x>"))
        .unwrap()
        .conversation;
    wait_until("the second is queued", || {
        count(&log, EventType::TaskQueued) == 2
    })
    .await;
    let queued = task_of(&log, second);
    request_stop(&log, second, queued).await;
    wait_until("the queued task is answered", || {
        w.sink.sent().iter().any(|r| r.kind == ReplyKind::Error)
    })
    .await;
    // A stop request for something unknown is ignored, not a failure.
    request_stop(&log, ConversationId(0x1234_5678), TaskId::new()).await;
    gate.add_permits(10);
    wait_until("the first is answered", || {
        w.sink.sent().iter().any(|r| r.kind == ReplyKind::Result)
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    // The stopped task never ran: one run only, one start only.
    assert_eq!(runner.requests().len(), 1);
    assert_ne!(runner.requests()[0].task, queued);
    let started: Vec<TaskId> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::TaskStarted(t) => Some(t.task),
            _ => None,
        })
        .collect();
    assert!(!started.contains(&queued));
    let stopped = events(&log)
        .into_iter()
        .find_map(|(_, e)| match e {
            Event::TaskCompleted(c) if c.task == queued => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(stopped.outcome, TaskOutcome::Stopped);
    assert!(
        stopped.reason.contains("dashboard:operator"),
        "{}",
        stopped.reason
    );
    let err = w
        .sink
        .sent()
        .into_iter()
        .find(|r| r.kind == ReplyKind::Error)
        .unwrap();
    assert!(err.text.contains("before it started"), "{}", err.text);
    // Exactly one reply per task (acks aside): nothing sent twice.
    assert_eq!(
        w.sink
            .sent()
            .iter()
            .filter(|r| r.kind != ReplyKind::Acknowledgement)
            .count(),
        2
    );
    // A rebuilt fold agrees: nothing left to do.
    let state = Gateway::rebuild(&log).await.unwrap();
    assert!(state.tasks.is_empty());
    assert!(state.owed.is_empty());
}

#[tokio::test]
async fn a_task_cut_off_after_a_stop_request_is_not_run_again() {
    let mut w = World::new();
    w.shutdown_timeout = Duration::from_millis(200);
    let log = w.open_log();
    receive(&log, mail("<sc1@x>", "Slow", "WAIT")).await;
    let gw = w.boot(&log).await;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("the run starts", || {
        runner.running.load(Ordering::SeqCst) == 1
    })
    .await;
    // The request is recorded, but the server goes away before it acts:
    // simulated by a run that ignores it until the shutdown cuts it off.
    let conv = conversations(&log)[0].conversation;
    let task = task_of(&log, conv);
    shutdown.cancel();
    request_stop(&log, conv, task).await;
    serving.await.unwrap().unwrap();
    drop(log);

    let w2 = World {
        runner: Arc::new(FakeRunner {
            release: Some(Arc::new(Semaphore::new(10))),
            ..FakeRunner::default()
        }),
        ..w
    };
    let log = w2.open_log();
    let mut gw = w2.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    assert!(w2.runner.requests().is_empty(), "a stopped task ran again");
    let done = events(&log)
        .into_iter()
        .find_map(|(_, e)| match e {
            Event::TaskCompleted(c) if c.task == task => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(done.outcome, TaskOutcome::Stopped);
    let errors: Vec<OutgoingReply> = w2
        .sink
        .sent()
        .into_iter()
        .filter(|r| r.kind == ReplyKind::Error)
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].text.contains("stopped on request"),
        "{}",
        errors[0].text
    );
}

#[tokio::test]
async fn a_reload_waits_for_the_repos_running_task_then_uses_the_new_setup() {
    let gate = Arc::new(Semaphore::new(0));
    let w = World::new().with_gate(gate.clone());
    let log = w.open_log();
    receive(&log, mail("<rl1@x>", "Long", "WAIT")).await;
    let gw = w.boot(&log).await;
    let handle = gw.handle();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("the run starts", || {
        runner.running.load(Ordering::SeqCst) == 1
    })
    .await;
    // Quiesce: it answers only once the running task is done.
    let quiesce = tokio::spawn({
        let handle = handle.clone();
        async move { handle.quiesce(repo()).await }
    });
    // Commands are handled in order: once a later one is answered, the
    // quiesce was handled too (the spawned task sends it when first run).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!handle.stop(ConversationId(0x1234_5678)).await);
    // A message arriving meanwhile waits (not taken up, not dismissed).
    receive(&log, mail("<rl2@x>", "During", "hello")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !quiesce.is_finished(),
        "quiesced while a task of the repo ran"
    );
    assert_eq!(conversations(&log).len(), 1);
    assert_eq!(count(&log, EventType::MessageDismissed), 0);
    gate.add_permits(10);
    assert!(quiesce.await.unwrap());
    assert_eq!(count(&log, EventType::TaskCompleted), 1);
    // Nothing is replied while out of service: the result waits.
    assert!(!w.sink.sent().iter().any(|r| r.kind == ReplyKind::Result));

    // The new setup: another default model.
    let mut setup = w.setup(repo());
    setup.model = "sonnet".to_owned();
    assert_eq!(handle.install(setup).await, Some(RepoStatus::Serving));
    wait_until("both answered", || {
        w.sink
            .sent()
            .iter()
            .filter(|r| r.kind == ReplyKind::Result)
            .count()
            == 2
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    let reqs = runner.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].model, "opus");
    assert_eq!(
        reqs[1].model, "sonnet",
        "the message taken up after the reload uses the new model"
    );
    let booted: Vec<RepoBootedV1> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::RepoBooted(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(booted.len(), 2);
    assert!(booted.iter().all(|b| b.ok));
}

#[tokio::test]
async fn a_reload_can_add_and_remove_repos_and_change_max_concurrent() {
    let gate = Arc::new(Semaphore::new(0));
    let mut w = World::new().with_gate(gate.clone());
    w.max_concurrent = 1;
    let log = w.open_log();
    let gw = w.boot(&log).await;
    let handle = gw.handle();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    // A repo added by a reload serves; one whose boot check fails is
    // recorded as not serving, with the reason.
    let other = RepoId("gadgets".to_owned());
    assert_eq!(
        handle.install(w.setup(other.clone())).await,
        Some(RepoStatus::Serving)
    );
    let mut broken = w.setup(RepoId("broken".to_owned()));
    broken.boot_check = Some(Arc::new(|| {
        Box::pin(async { Err("git fetch failed: repository not found".to_owned()) })
    }));
    assert!(matches!(
        handle.install(broken).await,
        Some(RepoStatus::NotServing(why)) if why.contains("repository not found")
    ));
    let mut m = mail("<ar1@x>", "Other", "WAIT");
    m.repo = other.clone();
    receive(&log, m).await;
    receive(&log, mail("<ar2@x>", "Mine", "WAIT")).await;
    let runner = w.runner.clone();
    wait_until("one run", || runner.running.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runner.running.load(Ordering::SeqCst), 1, "max_concurrent 1");
    // Raising max_concurrent lets the waiting task start without a restart.
    assert!(
        handle
            .configure(GatewayConfig {
                max_concurrent: 2,
                shutdown_timeout: Duration::from_secs(30),
                conversation_max_age: Duration::from_secs(7 * 86400),
            })
            .await
    );
    wait_until("two runs", || runner.running.load(Ordering::SeqCst) == 2).await;
    gate.add_permits(10);
    wait_until("both answered", || {
        count(&log, EventType::TaskCompleted) == 2
    })
    .await;
    // Removing a repo: a message for it that was not taken up yet is
    // dismissed as for a repo not in the config; nothing is sent for it.
    assert!(handle.quiesce(other.clone()).await);
    assert!(handle.remove(other.clone()).await);
    let mut m = mail("<ar3@x>", "Gone", "hello");
    m.repo = other.clone();
    receive(&log, m).await;
    wait_until("the message is dismissed", || {
        count(&log, EventType::MessageDismissed) == 1
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    assert_eq!(runner.max_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn shutdown_past_its_deadline_records_interrupted_and_the_next_start_reruns_once() {
    let mut w = World::new();
    w.shutdown_timeout = Duration::from_millis(200);
    let log = w.open_log();
    receive(&log, mail("<g1@x>", "Slow", "WAIT then finish")).await;
    let gw = w.boot(&log).await;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    let runner = w.runner.clone();
    wait_until("the run starts", || {
        runner.running.load(Ordering::SeqCst) == 1
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    let interrupted: Vec<_> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::TaskInterrupted(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(interrupted.len(), 1);
    assert!(interrupted[0].rerun);
    assert_eq!(count(&log, EventType::TaskCompleted), 0);
    drop(log);

    // Next start: the re-run (released at once this time) answers.
    let w2 = World {
        runner: Arc::new(FakeRunner {
            release: Some(Arc::new(Semaphore::new(10))),
            ..FakeRunner::default()
        }),
        ..w
    };
    let log = w2.open_log();
    let mut gw = w2.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    let reqs = w2.runner.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].attempt, 2);
    assert_eq!(
        w2.sink
            .sent()
            .iter()
            .filter(|r| r.kind == ReplyKind::Result)
            .count(),
        1
    );
}

#[tokio::test]
async fn a_run_cut_off_twice_is_answered_with_an_error() {
    let w = World::new();
    let log = w.open_log();
    let msg = receive(&log, mail("<c1@x>", "Crashy", "hello")).await;
    let conv = ConversationId(0x0bad_cafe);
    let task = TaskId::new();
    let started = |attempt| {
        Event::TaskStarted(TaskStartedV1 {
            task,
            attempt,
            resume_session: None,
            prompt: "p".to_owned(),
        })
    };
    let ev = |event| NewEvent {
        event,
        causation: None,
    };
    log.append(StreamAppend {
        stream: conv.stream(),
        expected: ExpectedVersion::Any,
        events: vec![
            ev(Event::ConversationStarted(ConversationStartedV1 {
                conversation: conv,
                repo: repo(),
                channel: "email".to_owned(),
                thread_keys: vec!["<c1@x>".to_owned()],
                message: msg,
                model: Some("opus".to_owned()),
                effort: None,
                replaces_expired: None,
            })),
            ev(Event::TaskQueued(TaskQueuedV1 {
                task,
                conversation: conv,
                repo: repo(),
                messages: vec![msg],
                model: "opus".to_owned(),
                effort: None,
            })),
            ev(started(1)),
            ev(Event::TaskInterrupted(TaskInterruptedV1 {
                task,
                attempt: 1,
                rerun: true,
                reason: "crash".to_owned(),
            })),
            ev(started(2)),
        ],
    })
    .await
    .unwrap();
    let mut gw = w.boot(&log).await;
    assert_eq!(gw.step().await.unwrap(), Some(Step::Recovered(1)));
    gw.run_until_idle().await.unwrap();
    assert!(w.runner.requests().is_empty(), "not re-run a second time");
    let sent = w.sink.sent();
    let err = sent.iter().find(|r| r.kind == ReplyKind::Error).unwrap();
    assert!(err.text.contains("restarted"), "{}", err.text);
    assert_eq!(err.in_reply_to, "<c1@x>");
}

#[tokio::test]
async fn a_session_that_cannot_resume_is_retried_once_in_a_fresh_session() {
    let w = World::new();
    let log = w.open_log();
    receive(&log, mail("<r1@x>", "Big", "first")).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    let mut m = mail("<r2@x>", "Re: Big", "TOOLONG now");
    m.thread_keys = vec!["<r1@x>".to_owned()];
    receive(&log, m).await;
    gw.run_until_idle().await.unwrap();
    let reqs = w.runner.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[1].resume_session.is_some());
    assert_eq!(reqs[2].resume_session, None);
    assert_eq!(reqs[2].effort, None, "the retry drops --effort");
    assert_eq!(reqs[2].attempt, 2);
    assert!(reqs[2].prompt.contains("IMPORTANT: the previous session"));
    assert!(
        reqs[2].prompt.contains("answer to: first"),
        "quotes the last reply"
    );
    let last = w.sink.sent().pop().unwrap();
    assert_eq!(last.kind, ReplyKind::Result);
}

#[tokio::test]
async fn failures_are_answered_with_what_happened_and_what_to_do() {
    let mut w = World::new();
    let log = w.open_log();
    receive(&log, mail("<x1@x>", "Broken", "BREAK OUTBOX")).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    let err = w.sink.sent().pop().unwrap();
    assert_eq!(err.kind, ReplyKind::Error);
    assert!(
        err.text
            .contains("Claude output:\n```\nError: something broke\n```"),
        "{}",
        err.text
    );
    assert_eq!(
        err.attachments.len(),
        1,
        "a failure still carries the outbox"
    );
    drop(gw);
    drop(log);

    // A workspace that cannot be prepared: an internal error, the agent never runs.
    w.workspace_fails = true;
    w.log_dir = w.log_dir.with_extension("2");
    let log = w.open_log();
    receive(&log, mail("<x2@x>", "No clone", "hi")).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    let err = w.sink.sent().pop().unwrap();
    assert!(err.text.contains("could not resolve host"), "{}", err.text);
    assert!(err.text.contains("Send your message again"), "{}", err.text);
    assert_eq!(w.runner.requests().len(), 1);
}

#[tokio::test]
async fn a_reply_that_cannot_be_delivered_is_recorded_and_not_retried_forever() {
    let w = World::new();
    w.sink.fail_next.store(3, Ordering::SeqCst);
    let log = w.open_log();
    receive(&log, mail("<d1@x>", "Mail down", "OUTBOX")).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    // Ack (one try) and result (two tries) failed.
    assert_eq!(count(&log, EventType::ReplyFailed), 2);
    assert!(w.sink.sent().is_empty());
    let conv = conversations(&log)[0].conversation;
    let dirs = ConversationDirs::at(w.ws_root.join(conv.to_string()));
    assert_eq!(
        dirs.outbox_files().len(),
        1,
        "files stay for the next reply"
    );
    gw.run_until_idle().await.unwrap();
    assert!(w.sink.sent().is_empty());
}

#[tokio::test]
async fn idle_conversations_expire_by_their_last_event_and_a_reply_starts_a_new_one() {
    let w = World::new();
    let log = w.open_log();
    receive(&log, mail("<o1@x>", "Old", "hello")).await;
    let mut gw = w.boot(&log).await;
    gw.run_until_idle().await.unwrap();
    let old = conversations(&log)[0].conversation;
    let last_us = gw.state().conversations[&old].last_us;
    let dir = w.ws_root.join(old.to_string());
    assert!(dir.exists());
    // Not yet idle long enough.
    assert!(
        gw.expire_idle(last_us + 1_000_000)
            .await
            .unwrap()
            .is_empty()
    );
    let week = 7 * 86_400 * 1_000_000i64;
    assert_eq!(gw.expire_idle(last_us + week + 1).await.unwrap(), vec![old]);
    assert!(!dir.exists());
    assert_eq!(count(&log, EventType::ConversationExpired), 1);

    let mut m = mail("<o2@x>", "Re: Old", "are you there?");
    m.thread_keys = vec!["<o1@x>".to_owned()];
    receive(&log, m).await;
    gw.run_until_idle().await.unwrap();
    let convs = conversations(&log);
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[1].replaces_expired, Some(old));
    let ack = w
        .sink
        .sent()
        .into_iter()
        .rfind(|r| r.kind == ReplyKind::Acknowledgement)
        .unwrap();
    assert!(ack.text.contains("had expired"), "{}", ack.text);
}

#[tokio::test]
async fn a_repo_that_cannot_start_is_marked_failed_and_the_others_run() {
    let w = World::new();
    let log = w.open_log();
    let broken = RepoId("broken".to_owned());
    let mut m = mail("<b1@x>", "To broken", "hi");
    m.repo = broken.clone();
    receive(&log, m).await;
    receive(&log, mail("<w1@x>", "To widgets", "hi")).await;
    let mut unwired = RepoSetup::from_config(
        "bare",
        &airut::config::RepoConfig {
            repo_url: "https://example.com/r.git".to_owned(),
            model: "opus".to_owned(),
            effort: None,
            ..Default::default()
        },
    );
    unwired.timeout = None;
    let mut failing = w.setup(broken.clone());
    failing.boot_check = Some(Arc::new(|| {
        Box::pin(async { Err("git clone --mirror failed: repository not found".to_owned()) })
    }));
    let mut gw = Gateway::boot(
        log.clone(),
        w.config(),
        vec![w.setup(repo()), failing, unwired],
    )
    .await
    .unwrap();
    let status = gw.repo_status();
    assert_eq!(status[&repo()], RepoStatus::Serving);
    assert!(
        matches!(&status[&broken], RepoStatus::NotServing(r) if r.contains("repository not found"))
    );
    assert!(
        matches!(&status[&RepoId("bare".to_owned())], RepoStatus::NotServing(r) if r.contains("no channel"))
    );
    let booted: Vec<_> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::RepoBooted(b) => Some((b.repo.0, b.ok)),
            _ => None,
        })
        .collect();
    assert_eq!(booted.len(), 3);
    gw.run_until_idle().await.unwrap();
    // Widgets answered; the broken repo's message waits (not lost, not dismissed).
    assert_eq!(conversations(&log).len(), 1);
    assert_eq!(gw.state().intake.len(), 1);
    assert_eq!(count(&log, EventType::MessageDismissed), 0);
    // A message for a repo the config does not name is dismissed, unanswered.
    let mut m = mail("<g1@x>", "To a ghost", "hi");
    m.repo = RepoId("ghost".to_owned());
    receive(&log, m).await;
    gw.run_until_idle().await.unwrap();
    let dismissed = events(&log).into_iter().find_map(|(_, e)| match e {
        Event::MessageDismissed(d) => Some(d),
        _ => None,
    });
    assert_eq!(
        dismissed.map(|d| d.reason),
        Some(DismissReason::RepoUnavailable)
    );
    assert_eq!(
        w.sink
            .sent()
            .iter()
            .filter(|r| r.kind == ReplyKind::Error)
            .count(),
        0
    );
    assert_eq!(gw.state().intake.len(), 1);
}

// --- crash safety -------------------------------------------------------------

/// Three messages: two new conversations and a follow-up of the first.
async fn crash_scenario(log: &Log) {
    receive(log, mail("<k1@x>", "One", "first OUTBOX")).await;
    receive(log, mail("<k2@x>", "Two", "second")).await;
    let mut m = mail("<k3@x>", "Re: One", "more for one");
    m.thread_keys = vec!["<k1@x>".to_owned()];
    receive(log, m).await;
}

/// Results delivered, by the message they answer.
fn results(sink: &FakeSink) -> Vec<OutgoingReply> {
    sink.sent()
        .into_iter()
        .filter(|r| r.kind == ReplyKind::Result)
        .collect()
}

#[tokio::test]
async fn a_crash_at_any_point_loses_nothing_sends_nothing_twice_and_reruns_at_most_once() {
    // How many side-effect boundaries a crash-free run passes.
    let total = {
        let w = World::new();
        let log = w.open_log();
        crash_scenario(&log).await;
        let mut gw = w.boot(&log).await;
        gw.inject_crash_after(0);
        gw.run_until_idle().await.unwrap();
        assert_eq!(results(&w.sink).len(), 2);
        gw.points_passed()
    };
    assert!(total > 10, "{total} boundaries");
    for k in 1..=total {
        let w = World::new();
        let log = w.open_log();
        crash_scenario(&log).await;
        let mut gw = w.boot(&log).await;
        gw.inject_crash_after(k);
        let crashed = match gw.run_until_idle().await {
            Err(GatewayError::Crashed(label)) => label,
            other => panic!("k={k}: expected a crash, got {other:?}"),
        };
        // The process dies: nothing of it survives but the store on disk.
        drop(gw);
        drop(log);
        let log = w.open_log();
        let mut gw = w.boot(&log).await;
        gw.run_until_idle().await.unwrap();

        let ctx = format!("crash {k}/{total} at {crashed:?}");
        // No lost message: every message answered by a result.
        let answered: BTreeSet<String> = results(&w.sink)
            .iter()
            .map(|r| r.in_reply_to.clone())
            .collect();
        assert_eq!(
            answered,
            BTreeSet::from(["<k2@x>".to_owned(), "<k3@x>".to_owned()]),
            "{ctx}"
        );
        // No double reply: one delivery per cause, except when the crash
        // fell between a delivery and its record (the sink gets the same
        // key again and can drop the copy).
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for r in w.sink.sent() {
            *by_key.entry(r.key).or_default() += 1;
        }
        let dupes = by_key.values().filter(|n| **n > 1).count();
        if crashed == "sent, not recorded" {
            assert!(dupes <= 1, "{ctx}: {by_key:?}");
        } else {
            assert_eq!(dupes, 0, "{ctx}: {by_key:?}");
        }
        assert_eq!(count(&log, EventType::ReplySent), 4, "{ctx}");
        // Interrupted task re-run at most once.
        let mut runs: HashMap<TaskId, usize> = HashMap::new();
        for r in w.runner.requests() {
            *runs.entry(r.task).or_default() += 1;
        }
        assert!(runs.values().all(|n| *n <= 2), "{ctx}: {runs:?}");
        assert_eq!(runs.len(), 2, "{ctx}");
        // Settled, and the live state equals a rebuild.
        let s = gw.state();
        assert!(
            s.tasks.is_empty() && s.owed.is_empty() && s.intake.is_empty(),
            "{ctx}"
        );
        assert_eq!(&Gateway::rebuild(&log).await.unwrap(), s, "{ctx}");
    }
}

// --- the queue as a projection -------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// A new conversation.
    New,
    /// A follow-up to the n-th message so far.
    FollowUp(usize),
    /// An empty follow-up.
    Empty(usize),
    /// One gateway step.
    Step,
    /// A stop request for the n-th task queued so far (queued, running
    /// between steps, or already done).
    Stop(usize),
    /// Crash after n boundaries and restart.
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::New),
        2 => (0usize..8).prop_map(Op::FollowUp),
        1 => (0usize..8).prop_map(Op::Empty),
        4 => Just(Op::Step),
        1 => (0usize..8).prop_map(Op::Stop),
        1 => (1u64..12).prop_map(Op::Crash),
    ]
}

async fn run_ops(ops: Vec<Op>) {
    let w = World::new();
    let mut log = w.open_log();
    let mut gw = w.boot(&log).await;
    let mut ids: Vec<String> = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::New => {
                let id = format!("<n{i}@x>");
                receive(&log, mail(&id, "New", &format!("job {i}"))).await;
                ids.push(id);
            }
            Op::FollowUp(n) | Op::Empty(n) if !ids.is_empty() => {
                let target = ids[n % ids.len()].clone();
                let id = format!("<f{i}@x>");
                let body = if matches!(op, Op::Empty(_)) {
                    ""
                } else {
                    "more"
                };
                let mut m = mail(&id, "Re: New", body);
                m.thread_keys = vec![target];
                receive(&log, m).await;
                ids.push(id);
            }
            Op::FollowUp(_) | Op::Empty(_) => {}
            Op::Step => {
                gw.step().await.unwrap();
            }
            Op::Stop(n) => {
                let queued: Vec<(ConversationId, TaskId)> = events(&log)
                    .into_iter()
                    .filter_map(|(_, e)| match e {
                        Event::TaskQueued(q) => Some((q.conversation, q.task)),
                        _ => None,
                    })
                    .collect();
                if !queued.is_empty() {
                    let (conv, task) = queued[n % queued.len()];
                    request_stop(&log, conv, task).await;
                }
            }
            Op::Crash(n) => {
                gw.inject_crash_after(n);
                match gw.run_until_idle().await {
                    Ok(_) | Err(GatewayError::Crashed(_)) => {}
                    Err(e) => panic!("{e}"),
                }
                drop(gw);
                drop(log);
                log = w.open_log();
                gw = w.boot(&log).await;
            }
        }
        // Invariants of the queue at every point.
        gw.catch_up().await.unwrap();
        let s = gw.state();
        let mut per_conv: HashMap<ConversationId, (usize, usize)> = HashMap::new();
        for t in s.tasks.values() {
            let e = per_conv.entry(t.conversation).or_default();
            match t.status {
                airut::gateway::state::TaskStatus::Queued => e.0 += 1,
                airut::gateway::state::TaskStatus::Running => e.1 += 1,
            }
        }
        assert!(
            per_conv.values().all(|(q, r)| *q <= 2 && *r <= 1),
            "{per_conv:?}"
        );
        assert_eq!(&Gateway::rebuild(&log).await.unwrap(), gw.state());
    }
    gw.run_until_idle().await.unwrap();
    let s = gw.state();
    assert!(s.tasks.is_empty() && s.intake.is_empty() && s.owed.is_empty());
    assert_eq!(&Gateway::rebuild(&log).await.unwrap(), s);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn the_live_queue_equals_a_rebuild_from_the_log(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops));
    }
}

// --- `airut run` -------------------------------------------------------------

#[tokio::test]
async fn airut_run_boots_configured_repos_and_says_why_they_do_not_serve_yet() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    std::fs::write(
        state.join("airut.yaml"),
        "config_version: 1\ndashboard:\n  host: 127.0.0.1\n  port: 0\nexecution:\n  shutdown_timeout: 2s\nrepos:\n  widgets:\n    repo_url: https://example.invalid/widgets.git\n",
    )
    .unwrap();
    let airut = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_airut"));
        c.arg("--config")
            .arg(state.join("airut.yaml"))
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env("AIRUT_LOG", "warn");
        c
    };
    let mut child = airut(&["run"]).stdin(Stdio::null()).spawn().unwrap();
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            let out = airut(&["events", "tail", "--json"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("repo.booted") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(seen.is_ok(), "no repo.booted event");
    assert!(status.success(), "{status}");
    let log = Log::open(&state.join("log"), LogOptions::default()).unwrap();
    let booted: Vec<RepoBootedV1> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::RepoBooted(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(booted.len(), 1);
    assert_eq!(booted[0].repo, repo());
    assert!(!booted[0].ok);
    let why = booted[0].error.as_deref().unwrap();
    assert!(
        why.contains("not started") && why.contains("no channel"),
        "{why}"
    );
}

/// The real `airut run` on a config file and a state dir, killed on drop;
/// its stderr is collected.
struct LiveAirut {
    child: std::process::Child,
    config: PathBuf,
    state: PathBuf,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LiveAirut {
    fn start(config: &std::path::Path, state: &std::path::Path) -> LiveAirut {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_airut"))
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .arg("run")
            .env("AIRUT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let reader = std::thread::spawn({
            let stderr = stderr.clone();
            move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut text = stderr.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        LiveAirut {
            child,
            config: config.to_owned(),
            state: state.to_owned(),
            stderr,
            reader: Some(reader),
        }
    }

    /// `airut events tail --json` (with `--state-dir` it reads the store
    /// even while the config file is broken). The store appears once the
    /// server opened it; until then, and if a call races the server's
    /// start, it fails: try again.
    #[allow(clippy::disallowed_methods)] // a blocking retry in a blocking helper
    fn tail(&self) -> String {
        let mut last = String::new();
        for _ in 0..50 {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_airut"))
                .arg("--config")
                .arg(&self.config)
                .arg("--state-dir")
                .arg(&self.state)
                .args(["events", "tail", "--json"])
                .env("AIRUT_LOG", "error")
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("events tail keeps failing: {last}");
    }

    /// Waits until `f` holds for the log's events.
    async fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) {
        let r = tokio::time::timeout(WAIT, async {
            while !f(&self.tail()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(r.is_ok(), "gave up waiting for: {what}");
    }

    /// Waits until the server's stderr says `text`.
    async fn wait_stderr(&self, text: &str) {
        let seen = tokio::time::timeout(WAIT, async {
            while !self.stderr.lock().unwrap().contains(text) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "the server never said {text:?}: {}",
            self.stderr.lock().unwrap()
        );
    }

    fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then its exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        status
    }
}

impl Drop for LiveAirut {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count_in(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

#[tokio::test]
async fn airut_run_applies_config_changes_while_serving_and_keeps_a_broken_file_out() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let config = state.join("airut.yaml");
    let head = "config_version: 1\ndashboard:\n  host: 127.0.0.1\n  port: 0\nexecution:\n  shutdown_timeout: 2s\n";
    let write = |repos: &str| std::fs::write(&config, format!("{head}repos:\n{repos}")).unwrap();
    let broken = || std::fs::write(&config, "config_version: 1\nrepos: [\n").unwrap();
    let widgets = "  widgets:\n    repo_url: https://example.invalid/widgets.git\n";
    write(widgets);
    let mut server = LiveAirut::start(&config, state);
    server
        .wait_for("the first boot", |t| count_in(t, "repo.booted") == 1)
        .await;

    // A change: widgets gets another model, gadgets is added.
    write(&format!(
        "{widgets}    model: sonnet\n  gadgets:\n    repo_url: https://example.invalid/gadgets.git\n"
    ));
    server
        .wait_for("the reload", |t| count_in(t, "repo.booted") == 3)
        .await;
    let t = server.tail();
    assert_eq!(count_in(&t, "config.loaded"), 2, "{t}");

    // A broken file is reported and changes nothing.
    broken();
    server.wait_stderr("the config was not reloaded").await;
    let t = server.tail();
    assert_eq!(count_in(&t, "config.loaded"), 2);
    assert_eq!(count_in(&t, "repo.booted"), 3);
    // ... and recorded, for the board and the audit trail.
    assert_eq!(count_in(&t, "\"config.rejected\""), 1, "{t}");

    // SIGHUP applies the fixed file (gadgets removed) and does not end
    // the server; a second SIGHUP with nothing changed records nothing.
    write(widgets);
    server.signal("HUP");
    server
        .wait_for("the third generation", |t| {
            count_in(t, "config.loaded") == 3
        })
        .await;
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.running(), "SIGHUP ended the server");
    let t = server.tail();
    assert_eq!(count_in(&t, "config.loaded"), 3);
    // widgets changed back (model), so it booted again; gadgets did not.
    assert_eq!(count_in(&t, "repo.booted"), 4, "{t}");

    // Broken again, then back to exactly the running file: the rejection
    // is superseded by a generation with nothing to apply.
    broken();
    server
        .wait_for("the second rejection", |t| {
            count_in(t, "\"config.rejected\"") == 2
        })
        .await;
    write(widgets);
    server
        .wait_for("the fourth generation", |t| {
            count_in(t, "config.loaded") == 4
        })
        .await;
    assert_eq!(count_in(&server.tail(), "repo.booted"), 4);

    let status = server.stop();
    assert!(status.success(), "{status}");
    let log = Log::open(&state.join("log"), LogOptions::default()).unwrap();
    let loaded: Vec<ConfigLoadedV1> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::ConfigLoaded(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(
        loaded.iter().map(|c| c.generation).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        loaded[1].repos,
        vec![RepoId("gadgets".into()), RepoId("widgets".into())]
    );
    assert_eq!(loaded[2].repos, vec![RepoId("widgets".into())]);
    assert_eq!(loaded[3].repos, vec![RepoId("widgets".into())]);
    assert_eq!(loaded[3].content_hash, loaded[2].content_hash);
    let booted: Vec<RepoId> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::RepoBooted(b) => Some(b.repo),
            _ => None,
        })
        .collect();
    assert_eq!(booted.iter().filter(|r| r.0 == "gadgets").count(), 1);
    assert_eq!(booted.iter().filter(|r| r.0 == "widgets").count(), 3);
}

#[tokio::test]
async fn a_reload_that_moves_the_mailbox_stops_the_old_source_before_the_new_one_reads() {
    use crate::email_support::{Dovecot, DovecotOptions, PASSWORD, USER, mail};
    let old = Dovecot::start(DovecotOptions::default()).await;
    let new = Dovecot::start(DovecotOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let config = state.join("airut.yaml");
    let write = |port: u16| {
        std::fs::write(
            &config,
            format!(
                r#"config_version: 1
dashboard:
  host: 127.0.0.1
  port: 0
execution:
  shutdown_timeout: 2s
repos:
  widgets:
    repo_url: https://example.invalid/widgets.git
    email:
      address: airut@example.net
      from: "Airut <airut@example.net>"
      username: {USER}
      password: "{PASSWORD}"
      imap:
        host: 127.0.0.1
        port: {port}
        security: plain
        mode: poll
        poll_interval: 1s
      smtp:
        host: 127.0.0.1
        port: 9
        security: plain
      auth:
        trusted_authserv_id: mx.example.net
        authorized_senders: [alice@example.com]
"#
            ),
        )
        .unwrap();
    };
    write(old.port);
    let mut server = LiveAirut::start(&config, state);
    let received = |t: &str, id: &str| {
        t.lines()
            .any(|l| l.contains("\"message.received\"") && l.contains(id))
    };
    // The first source reads the first mailbox.
    old.deliver(
        &mail("alice@example.com", "m1@example.com", "One", "first"),
        None,
    )
    .await;
    server
        .wait_for("m1", |t| received(t, "m1@example.com"))
        .await;

    // The reload moves the repo to the other mailbox.
    write(new.port);
    server
        .wait_for("the reload", |t| {
            count_in(t, "\"config.loaded\"") == 2 && count_in(t, "\"repo.booted\"") == 2
        })
        .await;
    old.deliver(
        &mail("alice@example.com", "m2@example.com", "Two", "to the old"),
        None,
    )
    .await;
    new.deliver(
        &mail("alice@example.com", "m3@example.com", "Three", "to the new"),
        None,
    )
    .await;
    server
        .wait_for("m3", |t| received(t, "m3@example.com"))
        .await;
    // Several poll intervals later, the old mailbox is still not read.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !received(&server.tail(), "m2@example.com"),
        "the old source still runs"
    );
    assert_eq!(
        old.count().await,
        1,
        "the mail in the old mailbox was taken"
    );
    assert_eq!(new.count().await, 0);
    assert!(server.stop().success());
}

// --- with real git workspaces -------------------------------------------------------------

/// Commits and pushes from inside the agent's workspace, like an agent would.
struct GitAgent;

impl TaskRunner for GitAgent {
    fn run(&self, req: RunRequest, _cancel: CancellationToken) -> BoxFuture<'_, ExecutionResult> {
        Box::pin(async move {
            let ws = &req.dirs.workspace;
            std::fs::write(ws.join("agent.txt"), format!("task {}\n", req.task)).unwrap();
            for args in [
                &["add", "agent.txt"][..],
                &[
                    "-c",
                    "user.name=Agent",
                    "-c",
                    "user.email=agent@example.com",
                    "commit",
                    "--quiet",
                    "-m",
                    "agent work",
                ],
                &["push", "--quiet", "origin", "HEAD"],
            ] {
                let out = std::process::Command::new("git")
                    .args(args)
                    .current_dir(ws)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let mut r = ExecutionResult::internal("");
            r.outcome = TaskOutcome::Succeeded;
            r.response_text = "pushed".to_owned();
            r
        })
    }
}

#[tokio::test]
async fn with_real_git_the_agent_works_in_a_clone_of_origin_and_its_push_lands() {
    let tmp = tempfile::tempdir().unwrap();
    let git = |dir: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(
        tmp.path(),
        &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
    );
    git(tmp.path(), &["clone", "--quiet", "origin.git", "author"]);
    let author = tmp.path().join("author");
    git(&author, &["checkout", "--quiet", "-b", "main"]);
    std::fs::write(author.join("README.md"), "hello\n").unwrap();
    git(&author, &["add", "-A"]);
    git(&author, &["commit", "--quiet", "-m", "init"]);
    git(&author, &["push", "--quiet", "origin", "main"]);
    let origin = tmp.path().join("origin.git");
    let state = tmp.path().join("state");
    let yaml = format!(
        "config_version: 1\nstate_dir: {}\nrepos:\n  widgets:\n    repo_url: {}\n  broken:\n    repo_url: {}\n",
        state.display(),
        origin.display(),
        tmp.path().join("missing.git").display()
    );
    let cfg = airut::config::load_bytes(yaml.as_bytes(), "airut.yaml", &|_| None)
        .unwrap()
        .config;
    let sink = Arc::new(FakeSink::default());
    let setups: Vec<RepoSetup> = airut::gateway::repo_setups(&cfg)
        .into_iter()
        .map(|mut s| {
            s.sinks.insert("email".to_owned(), sink.clone());
            s.runner = Some(Arc::new(GitAgent));
            s
        })
        .collect();
    let log = Log::open(&state.join("log"), LogOptions::default()).unwrap();
    receive(&log, mail("<g1@x>", "Work", "please commit")).await;
    let mut gw = Gateway::boot(
        log.clone(),
        GatewayConfig {
            max_concurrent: 1,
            shutdown_timeout: Duration::from_secs(5),
            conversation_max_age: Duration::from_secs(86400),
        },
        setups,
    )
    .await
    .unwrap();
    let status = gw.repo_status();
    assert_eq!(status[&repo()], RepoStatus::Serving);
    assert!(
        matches!(&status[&RepoId("broken".to_owned())], RepoStatus::NotServing(r) if r.contains("clone --mirror"))
    );
    gw.run_until_idle().await.unwrap();

    let conv = conversations(&log)[0].conversation;
    let ws = state
        .join("repos/widgets/conversations")
        .join(conv.to_string())
        .join("workspace");
    assert_eq!(
        git(&ws, &["remote", "get-url", "origin"]),
        origin.display().to_string()
    );
    assert_eq!(
        git(&origin, &["show", "main:agent.txt"]),
        format!("task {}", w_task(&log))
    );
    assert_eq!(
        sink.sent().last().unwrap().text.lines().next(),
        Some("pushed")
    );
    // Expiry removes the conversation's directories.
    let last = gw.state().conversations[&conv].last_us;
    assert_eq!(
        gw.expire_idle(last + 86_400_000_001).await.unwrap(),
        vec![conv]
    );
    assert!(!ws.exists());
}

fn w_task(log: &Log) -> TaskId {
    events(log)
        .into_iter()
        .find_map(|(_, e)| match e {
            Event::TaskQueued(q) => Some(q.task),
            _ => None,
        })
        .unwrap()
}

/// Regression: a message folded while the serve loop was sending a reply
/// was left waiting for a wake-up that never came (found by `airut bench
/// gateway`). Messages sent one at a time, each right after the previous
/// answer, must all be answered.
#[tokio::test]
async fn serving_never_leaves_a_message_folded_during_a_reply_behind() {
    let w = World::new();
    let log = w.open_log();
    let gw = w.boot(&log).await;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gw.serve(shutdown.clone()));
    for i in 0..40 {
        let id = format!("<seq{i}@x>");
        receive(&log, mail(&id, "Seq", "go")).await;
        let sink = w.sink.clone();
        wait_until(&format!("answer to {id}"), || {
            sink.sent()
                .iter()
                .any(|r| r.in_reply_to == id && r.kind == ReplyKind::Result)
        })
        .await;
    }
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    assert_eq!(count(&log, EventType::TaskCompleted), 40);
}
