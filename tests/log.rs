//! The event log against a real store: total order under concurrency,
//! durability classes, subscriptions racing appends, reopening, a store
//! written by layout 1, and SIGKILL at random points (architecture §2).

// Helpers here are not `#[test]` functions, which `allow-unwrap-in-tests`
// does not cover; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airut::events::*;
use airut::log::{
    AppendError, Appended, ExpectedVersion, Log, LogOptions, NewEvent, Record, StreamAppend,
};
use rand::Rng;
use tokio::io::AsyncBufReadExt;
use tokio::time::timeout;

/// Generous bound on any single wait: a hang fails, slowness does not.
const PATIENCE: Duration = Duration::from_secs(30);

// === helpers ===

fn opts(flush_interval: Duration) -> LogOptions {
    LogOptions {
        flush_interval,
        create: true,
        ..LogOptions::default()
    }
}

fn ev(event: Event) -> NewEvent {
    NewEvent {
        event,
        causation: None,
    }
}

/// A durable event.
fn stopped(reason: String) -> NewEvent {
    ev(Event::ServerStopped(ServerStoppedV1 { reason }))
}

/// A buffered event.
fn dns(name: String) -> NewEvent {
    ev(Event::DnsQuery(DnsQueryV1 {
        task: TaskId(uuid::Uuid::from_u128(1)),
        name,
        qtype: 1,
        answer: "127.0.0.1".to_owned(),
    }))
}

fn any(stream: StreamId, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream,
        expected: ExpectedVersion::Any,
        events,
    }
}

/// Every record from seq 0, asserting each reads.
fn all_records(log: &Log) -> Vec<Record> {
    log.iter_from(Seq(0)).map(|r| r.unwrap()).collect()
}

/// Seqs delivered by a subscription until `last` (inclusive).
async fn collect_until(log: &Log, from: Seq, last: Seq) -> Vec<u64> {
    let mut sub = log.subscribe(from);
    let mut seqs = Vec::new();
    loop {
        let record = timeout(PATIENCE, sub.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended early")
            .unwrap();
        seqs.push(record.header.seq.0);
        if record.header.seq >= last {
            return seqs;
        }
    }
}

// === order, streams, durability ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_get_one_gapless_total_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(Duration::from_millis(20))).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let own = ConversationId(t).stream();
            let mut landed: Vec<Appended> = Vec::new();
            for i in 0..40u32 {
                // Mixed sizes and classes; every task also hits one shared stream.
                let events: Vec<NewEvent> = (0..=(i % 3))
                    .map(|k| {
                        if (i + k) % 2 == 0 {
                            dns(format!("{t}-{i}-{k}"))
                        } else {
                            stopped(format!("{t}-{i}-{k}"))
                        }
                    })
                    .collect();
                let stream = if i % 5 == 0 {
                    StreamId::parse("shared").unwrap()
                } else {
                    own.clone()
                };
                landed.push(log.append(any(stream, events)).await.unwrap());
            }
            landed
        }));
    }
    let mut seqs = BTreeSet::new();
    for task in tasks {
        for a in task.await.unwrap() {
            assert_eq!(a.ids.len() as u64, a.last.0 - a.first.0 + 1);
            for s in a.first.0..=a.last.0 {
                assert!(seqs.insert(s), "seq {s} assigned twice");
            }
        }
    }
    let head = log.head().unwrap().0;
    assert_eq!(
        seqs.len() as u64,
        head,
        "every seq but genesis is accounted for"
    );
    assert_eq!(seqs.first(), Some(&1));
    assert_eq!(seqs.last(), Some(&head));

    let records = all_records(&log);
    assert_eq!(records.len() as u64, head + 1);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.header.seq.0, i as u64);
        r.decode().unwrap();
    }
    for w in records.windows(2) {
        assert!(w[0].header.timestamp_us <= w[1].header.timestamp_us);
    }
    for t in 0..8u32 {
        let versions: Vec<u64> = log
            .stream_iter(&ConversationId(t).stream(), 1)
            .map(|r| r.unwrap().header.stream_version)
            .collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    }
    let report = log.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.streams, 10);
    log.close().await.unwrap();
}

#[tokio::test]
async fn durable_appends_return_fsynced_and_buffered_ones_follow_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(Duration::from_millis(50))).unwrap();
    let stream = StreamId::parse("durability").unwrap();

    let d = log
        .append(any(stream.clone(), vec![stopped("d".to_owned())]))
        .await
        .unwrap();
    assert!(log.durable_head() >= Some(d.last));

    // A buffered append returns once written; the flush timer makes it
    // durable without anyone asking.
    let b = log
        .append(any(stream.clone(), vec![dns("b".to_owned())]))
        .await
        .unwrap();
    assert!(log.head() >= Some(b.last));
    timeout(PATIENCE, log.wait_durable(b.last))
        .await
        .expect("buffered event never fsynced")
        .unwrap();
    assert!(log.durable_head() >= Some(b.last));

    // A durable append in the same group as buffered ones fsyncs them all.
    let (x, y) = tokio::join!(
        log.append(any(stream.clone(), vec![dns("x".to_owned())])),
        log.append(any(stream.clone(), vec![stopped("y".to_owned())])),
    );
    let last = x.unwrap().last.max(y.unwrap().last);
    timeout(PATIENCE, log.wait_durable(last))
        .await
        .unwrap()
        .unwrap();
    log.close().await.unwrap();

    // sync_to fsyncs early: with an hour-long timer it still returns.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(Duration::from_secs(3600))).unwrap();
    let b = log
        .append(any(stream, vec![dns("late".to_owned())]))
        .await
        .unwrap();
    timeout(PATIENCE, log.sync_to(b.last))
        .await
        .expect("sync_to did not fsync")
        .unwrap();
    assert!(log.durable_head() >= Some(b.last));
    log.close().await.unwrap();
}

// === subscriptions ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_from_start_middle_and_head_see_every_event_once_while_appends_race() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(Duration::from_millis(10))).unwrap();
    let stream = StreamId::parse("sub").unwrap();
    for i in 0..100 {
        log.append(any(stream.clone(), vec![dns(format!("pre-{i}"))]))
            .await
            .unwrap();
    }
    let head = log.head().unwrap();
    assert_eq!(head, Seq(100));
    // 400 more events in batches of 1..=4 → the final seq is known up front.
    let last = Seq(500);

    // Subscribers start before and while the appender runs.
    let from_start = tokio::spawn({
        let log = log.clone();
        async move { collect_until(&log, Seq(0), last).await }
    });
    let from_middle = tokio::spawn({
        let log = log.clone();
        async move { collect_until(&log, Seq(50), last).await }
    });
    let from_head = tokio::spawn({
        let log = log.clone();
        async move { collect_until(&log, head.next(), last).await }
    });
    let appender = tokio::spawn({
        let log = log.clone();
        let stream = stream.clone();
        async move {
            let mut written = 0;
            let mut i = 0;
            while written < 400 {
                let n = (i % 4 + 1).min(400 - written);
                let events = (0..n).map(|k| dns(format!("live-{i}-{k}"))).collect();
                log.append(any(stream.clone(), events)).await.unwrap();
                written += n;
                i += 1;
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    // One more subscriber that joins mid-race.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = tokio::spawn({
        let log = log.clone();
        async move { collect_until(&log, Seq(150), last).await }
    });

    appender.await.unwrap();
    assert_eq!(log.head(), Some(last));
    let expect = |from: u64| (from..=last.0).collect::<Vec<_>>();
    assert_eq!(from_start.await.unwrap(), expect(0));
    assert_eq!(from_middle.await.unwrap(), expect(50));
    assert_eq!(from_head.await.unwrap(), expect(101));
    assert_eq!(late.await.unwrap(), expect(150));

    // After close a subscription delivers what is left, then ends.
    let mut sub = log.subscribe(Seq(498));
    log.clone().close().await.unwrap();
    let mut rest = Vec::new();
    while let Some(r) = timeout(PATIENCE, sub.next()).await.unwrap() {
        rest.push(r.unwrap().header.seq.0);
    }
    assert_eq!(rest, vec![498, 499, 500]);
}

// === restart ===

#[tokio::test]
async fn reopening_preserves_everything_and_continues_sequence_and_chains() {
    let dir = tempfile::tempdir().unwrap();
    let conv = ConversationId(0x1a2b3c4d).stream();
    let log = Log::open(dir.path(), opts(Duration::from_millis(20))).unwrap();
    let store_id = log.store_id();
    for i in 0..5 {
        log.append(StreamAppend {
            stream: conv.clone(),
            expected: ExpectedVersion::Exact(i),
            events: vec![stopped(format!("{i}"))],
        })
        .await
        .unwrap();
    }
    // Buffered tail: close must make it durable.
    log.append(any(conv.clone(), vec![dns("tail".to_owned())]))
        .await
        .unwrap();
    let before = all_records(&log);
    let head_hash = log.head_hash().unwrap();
    log.close().await.unwrap();

    let log = Log::open(
        dir.path(),
        LogOptions {
            create: false,
            ..opts(Duration::from_millis(20))
        },
    )
    .unwrap();
    assert_eq!(log.store_id(), store_id);
    assert_eq!(log.head_hash(), Some(head_hash));
    assert_eq!(log.durable_head(), log.head());
    let after = all_records(&log);
    assert_eq!(after.len(), before.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a.header, b.header);
        assert_eq!(a.payload.as_slice(), b.payload.as_slice());
    }
    assert_eq!(log.stream_version(&conv).unwrap(), 6);
    let next = log
        .append(StreamAppend {
            stream: conv.clone(),
            expected: ExpectedVersion::Exact(6),
            events: vec![stopped("after restart".to_owned())],
        })
        .await
        .unwrap();
    assert_eq!(next.first, Seq(7));
    let record = log.read(Seq(7)).unwrap().unwrap();
    assert_eq!(record.header.stream_version, 7);
    let prev = log.read(Seq(6)).unwrap().unwrap();
    assert_eq!(
        record.header.global_hash,
        airut::log::chain::link(&prev.header.global_hash, &record.core)
    );
    let versions: Vec<u64> = log
        .stream_iter(&conv, 3)
        .map(|r| r.unwrap().header.stream_version)
        .collect();
    assert_eq!(versions, vec![3, 4, 5, 6, 7]);
    assert!(log.verify().unwrap().is_ok());
    log.close().await.unwrap();
}

// === crash ===

/// Env var that turns [`crash_child`] into the crash test's child process.
const CRASH_CHILD_ENV: &str = "AIRUT_LOG_CRASH_CHILD_DIR";

/// The child of [`sigkill_at_random_points_loses_no_acknowledged_event`]:
/// appends durably forever, printing `SEQ n` for every acknowledged event.
/// Without the env var (a normal test run) it does nothing.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        use std::io::Write;
        let log = Log::open(Path::new(&dir), LogOptions::default()).unwrap();
        let pid = std::process::id();
        let mut stdout = std::io::stdout();
        for i in 0u64.. {
            // Mixed batch sizes and streams, durable class.
            let stream = ConversationId((i % 3) as u32).stream();
            let events = (0..=(i % 3))
                .map(|k| stopped(format!("{pid}-{i}-{k}")))
                .collect();
            let a = log.append(any(stream, events)).await.unwrap();
            for seq in a.first.0..=a.last.0 {
                writeln!(stdout, "SEQ {seq}").unwrap();
            }
            stdout.flush().unwrap();
        }
    });
}

/// Runs the child once against `dir`, kills it with SIGKILL at a random
/// point after its first acknowledged append (or, when `early`, at a random
/// point of its start-up, possibly while it creates the store), returns the
/// seqs it printed.
async fn run_and_kill_child(dir: &Path, rng: &mut impl Rng, early: bool) -> Vec<u64> {
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "log::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seqs = Vec::new();
    let parse = |line: &str| {
        line.strip_prefix("SEQ ")
            .and_then(|s| s.parse::<u64>().ok())
    };
    // Wait for the first acknowledged append, then a random delay.
    while seqs.is_empty() && !early {
        let line = timeout(PATIENCE, lines.next_line())
            .await
            .expect("child made no progress")
            .unwrap()
            .expect("child exited before appending");
        seqs.extend(parse(&line));
    }
    let delay = Duration::from_millis(rng.random_range(0..if early { 40 } else { 400 }));
    let deadline = tokio::time::sleep(delay);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            line = lines.next_line() => match line.unwrap() {
                Some(line) => seqs.extend(parse(&line)),
                None => panic!("child exited on its own: does the test filter still match?"),
            },
        }
    }
    child.start_kill().unwrap(); // SIGKILL
    // Lines already written before the kill are still acknowledged events.
    while let Some(line) = timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap() {
        seqs.extend(parse(&line));
    }
    child.wait().await.unwrap();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut acked = BTreeSet::new();
    // First a few kills during start-up (store creation, recovery).
    for _ in 0..3 {
        acked.extend(run_and_kill_child(dir.path(), &mut rng, true).await);
    }
    for round in 0..5 {
        let printed = run_and_kill_child(dir.path(), &mut rng, false).await;
        assert!(!printed.is_empty());
        acked.extend(printed);

        let log = Log::open(
            dir.path(),
            LogOptions {
                create: false,
                ..LogOptions::default()
            },
        )
        .unwrap();
        let records = all_records(&log);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.header.seq.0, i as u64, "round {round}: gap");
            r.decode().unwrap();
        }
        let max_acked = *acked.last().unwrap();
        assert!(
            records.len() as u64 > max_acked,
            "round {round}: acknowledged seq {max_acked} lost ({} events on disk)",
            records.len()
        );
        let report = log.verify().unwrap();
        assert!(report.is_ok(), "round {round}: {report:?}");
        eprintln!(
            "crash round {round}: {} acknowledged, {} on disk",
            acked.len(),
            records.len()
        );
        // Drop (not close) releases the store for the next child.
        drop(log);
    }
}

// === layout-1 fixture ===

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/stores/layout-1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The raw email stored as a blob in the fixture.
const FIXTURE_RAW_EMAIL: &[u8] =
    b"From: alice@example.com\r\nTo: airut@example.com\r\nSubject: fix the build\r\n\r\nPlease fix it.\r\n";

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// The events of the fixture store after genesis, with their streams, in
/// order. Deterministic, so a replay can be compared field by field.
fn fixture_events(raw: BlobRef) -> Vec<(StreamId, Event)> {
    let repo = RepoId("demo".to_owned());
    let conv = ConversationId(0x0badcafe);
    let cs = conv.stream();
    let intake = StreamId::channel(&repo, "email");
    let server = StreamId::server();
    let task = TaskId(id(0x7a5c));
    let message = EventId(id(0x3e55));
    let mut out = vec![
        (
            server.clone(),
            Event::ConfigLoaded(ConfigLoadedV1 {
                generation: 1,
                path: "/etc/airut/airut.yaml".to_owned(),
                content_hash: [9; 32],
                repos: vec![repo.clone()],
            }),
        ),
        (
            server.clone(),
            Event::ServerStarted(ServerStartedV1 {
                version: "0.1.0".to_owned(),
                pid: 4242,
                listen: "127.0.0.1:5200".to_owned(),
            }),
        ),
        (
            server.clone(),
            Event::RepoBooted(RepoBootedV1 {
                repo: repo.clone(),
                ok: true,
                error: None,
            }),
        ),
        (
            server.clone(),
            Event::ChannelHealthChanged(ChannelHealthChangedV1 {
                repo: repo.clone(),
                channel: "email".to_owned(),
                health: ChannelHealth::Healthy,
                detail: String::new(),
            }),
        ),
        (
            intake.clone(),
            Event::MessageReceived(MessageReceivedV1 {
                repo: repo.clone(),
                channel: "email".to_owned(),
                dedup_key: "imap:1:17:<m1@example.com>".to_owned(),
                message_id: "<m1@example.com>".to_owned(),
                thread_keys: vec![],
                sender: "alice@example.com".to_owned(),
                sender_display: "Alice <alice@example.com>".to_owned(),
                conversation_ref: None,
                subject: "fix the build".to_owned(),
                body: "Please fix it.".to_owned(),
                raw: Some(raw.clone()),
                attachments: vec![AttachmentV1 {
                    name: "log.txt".to_owned(),
                    original_name: "log.txt".to_owned(),
                    content_type: "text/plain".to_owned(),
                    blob: raw,
                }],
                model_hint: Some("opus".to_owned()),
            }),
        ),
        (
            cs.clone(),
            Event::ConversationStarted(ConversationStartedV1 {
                conversation: conv,
                repo: repo.clone(),
                channel: "email".to_owned(),
                thread_keys: vec!["<m1@example.com>".to_owned()],
                message,
                model: Some("opus".to_owned()),
                replaces_expired: None,
                effort: None,
            }),
        ),
        (
            cs.clone(),
            Event::TaskQueued(TaskQueuedV1 {
                task,
                conversation: conv,
                repo: repo.clone(),
                messages: vec![message],
                model: "opus".to_owned(),
                effort: None,
            }),
        ),
        (
            cs.clone(),
            Event::TaskStarted(TaskStartedV1 {
                task,
                attempt: 1,
                resume_session: None,
                prompt: "Please fix it.".to_owned(),
            }),
        ),
        (
            cs.clone(),
            Event::ImageBuildStarted(ImageBuildStartedV1 {
                repo: repo.clone(),
                task: Some(task),
                tag: "airut-demo:abc".to_owned(),
                forced: false,
            }),
        ),
    ];
    for i in 0..3 {
        out.push((
            cs.clone(),
            Event::ImageBuildOutput(ImageBuildOutputV1 {
                tag: "airut-demo:abc".to_owned(),
                line: format!("STEP {i}/3"),
            }),
        ));
    }
    out.extend([
        (
            cs.clone(),
            Event::ImageBuildFinished(ImageBuildFinishedV1 {
                repo: repo.clone(),
                tag: "airut-demo:abc".to_owned(),
                ok: true,
                duration_ms: 1234,
                log_tail: "done".to_owned(),
            }),
        ),
        (
            cs.clone(),
            Event::ContainerCreated(ContainerCreatedV1 {
                task,
                container_id: "c0ffee".to_owned(),
                image: "airut-demo:abc".to_owned(),
            }),
        ),
        (
            cs.clone(),
            Event::ContainerStarted(ContainerStartedV1 {
                task,
                container_id: "c0ffee".to_owned(),
            }),
        ),
    ]);
    for i in 0..5u64 {
        out.push((
            cs.clone(),
            Event::ContainerOutput(ContainerOutputV1 {
                task,
                stream: if i == 4 {
                    OutputStream::Stderr
                } else {
                    OutputStream::Stdout
                },
                line_no: i,
                kind: OutputKind::Assistant,
                raw: format!("{{\"type\":\"assistant\",\"n\":{i}}}"),
            }),
        ));
    }
    for (i, (host, decision)) in [
        ("api.anthropic.com", Decision::Allowed),
        ("github.com", Decision::Allowed),
        ("evil.example", Decision::Blocked),
    ]
    .into_iter()
    .enumerate()
    {
        out.push((
            cs.clone(),
            Event::DnsQuery(DnsQueryV1 {
                task,
                name: host.to_owned(),
                qtype: 1,
                answer: "127.0.0.1".to_owned(),
            }),
        ));
        out.push((
            cs.clone(),
            Event::ProxyRequest(ProxyRequestV1 {
                task,
                method: "GET".to_owned(),
                scheme: "https".to_owned(),
                host: host.to_owned(),
                port: 443,
                path: format!("/p/{i}"),
                decision,
                rule: Some(format!("rule-{i}")),
                reason: None,
                status: Some(200),
                bytes_in: 10 * i as u64,
                bytes_out: 20,
                duration_us: 1500,
                credentials: vec![CredentialAnnotation {
                    secret: "GH_TOKEN".to_owned(),
                    action: CredentialAction::Swapped,
                    count: 1,
                    header: Some("authorization".to_owned()),
                }],
                upstream_override: None,
                notes: vec![],
            }),
        ));
    }
    out.extend([
        (
            cs.clone(),
            Event::ContainerExited(ContainerExitedV1 {
                task,
                container_id: "c0ffee".to_owned(),
                exit_code: 0,
                oom_killed: false,
            }),
        ),
        (
            cs.clone(),
            Event::TaskCompleted(TaskCompletedV1 {
                task,
                outcome: TaskOutcome::Succeeded,
                reason: String::new(),
                session_id: Some("sess-1".to_owned()),
                reply_text: "Fixed.".to_owned(),
                cost_micros: Some(12_345),
                turns: Some(3),
                duration_ms: 60_000,
                input_tokens: 1000,
                output_tokens: 200,
                blocked_hosts: vec!["evil.example".to_owned()],
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                web_searches: 0,
                web_fetches: 0,
            }),
        ),
        (
            cs.clone(),
            Event::ReplySent(ReplySentV1 {
                conversation: conv,
                task: Some(task),
                channel: "email".to_owned(),
                kind: ReplyKind::Result,
                message_id: "<r1@airut>".to_owned(),
                in_reply_to: "<m1@example.com>".to_owned(),
                attachments: vec![],
            }),
        ),
        (
            intake.clone(),
            Event::MessageRejected(MessageRejectedV1 {
                repo: repo.clone(),
                channel: "email".to_owned(),
                dedup_key: "imap:1:18:<m2@example.com>".to_owned(),
                sender: "mallory@example.net".to_owned(),
                reason: RejectReason::NotAuthorized,
                detail: "not on the allowlist".to_owned(),
                raw: None,
            }),
        ),
        (
            cs.clone(),
            Event::ConversationResumed(ConversationResumedV1 {
                conversation: conv,
                message: EventId(id(0x3e56)),
                thread_keys: vec!["<r1@airut>".to_owned()],
            }),
        ),
        (
            cs.clone(),
            Event::TaskCoalesced(TaskCoalescedV1 {
                task,
                message: EventId(id(0x3e57)),
            }),
        ),
        (
            cs.clone(),
            Event::ContainerStopped(ContainerStoppedV1 {
                task,
                container_id: "c0ffee".to_owned(),
                reason: StopReason::Shutdown,
            }),
        ),
        (
            cs.clone(),
            Event::ReplyFailed(ReplyFailedV1 {
                conversation: conv,
                task: None,
                channel: "email".to_owned(),
                kind: ReplyKind::Error,
                error: "smtp 451".to_owned(),
                attempts: 3,
            }),
        ),
        (
            cs,
            Event::ConversationExpired(ConversationExpiredV1 {
                conversation: conv,
                last_activity_seq: 30,
            }),
        ),
        (
            server,
            Event::ServerStopped(ServerStoppedV1 {
                reason: "SIGTERM".to_owned(),
            }),
        ),
    ]);
    out
}

/// Writes `fixtures/stores/layout-1/`. Run on purpose only:
/// `cargo test --test tests log::bless_layout_1_store -- --ignored`.
/// A released layout's store is never re-blessed.
#[tokio::test]
#[ignore = "writes the layout-1 fixture store"]
async fn bless_layout_1_store() {
    let dir = fixture_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let log = Log::open(&dir, LogOptions::default()).unwrap();
    let raw = log.put_blob(FIXTURE_RAW_EMAIL).unwrap();
    let mut cause = None;
    for (stream, event) in fixture_events(raw) {
        let a = log
            .append(StreamAppend {
                stream,
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event,
                    causation: cause,
                }],
            })
            .await
            .unwrap();
        cause = Some(a.ids[0]);
    }
    assert!(log.verify().unwrap().is_ok());
    log.close().await.unwrap();
    // fjall preallocates 64 MiB journals; recovery trims the file to its
    // contents, so one more open keeps the checked-in fixture small.
    let log = Log::open(&dir, LogOptions::default()).unwrap();
    log.close().await.unwrap();
    let journal_bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(journal_bytes < 1 << 20, "fixture is {journal_bytes} bytes");
}

#[tokio::test]
async fn a_store_written_by_layout_1_opens_replays_and_verifies() {
    let fixture = fixture_dir();
    assert!(
        fixture.join("version").exists(),
        "missing fixture {}: run the bless test",
        fixture.display()
    );
    // fjall locks and recovers in place: never open the checked-in copy.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let log = Log::open(
        dir.path(),
        LogOptions {
            create: false,
            ..LogOptions::default()
        },
    )
    .unwrap();

    let report = log.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    let raw = BlobRef {
        hash: *blake3::hash(FIXTURE_RAW_EMAIL).as_bytes(),
        size: FIXTURE_RAW_EMAIL.len() as u64,
    };
    assert_eq!(log.get_blob(&raw.hash).unwrap().unwrap(), FIXTURE_RAW_EMAIL);

    let expected = fixture_events(raw);
    let records = all_records(&log);
    assert_eq!(records.len(), expected.len() + 1);
    match records[0].decode().unwrap() {
        Event::StoreCreated(created) => {
            assert_eq!(created.layout_version, 1);
            assert_eq!(created.store_id, log.store_id());
        }
        other => panic!("genesis is {other:?}"),
    }
    for (i, (record, (stream, event))) in records[1..].iter().zip(&expected).enumerate() {
        assert_eq!(&record.header.stream, stream, "seq {}", i + 1);
        assert_eq!(&record.decode().unwrap(), event, "seq {}", i + 1);
        let cause = (i > 0).then(|| records[i].header.event_id);
        assert_eq!(record.header.causation, cause, "seq {}", i + 1);
    }
    assert_eq!(report.head_hash, log.head_hash().unwrap().1);

    // An old store keeps growing under this build.
    let conv = ConversationId(0x0badcafe).stream();
    let version = log.stream_version(&conv).unwrap();
    log.append(StreamAppend {
        stream: conv,
        expected: ExpectedVersion::Exact(version),
        events: vec![stopped("new".to_owned())],
    })
    .await
    .unwrap();
    assert!(log.verify().unwrap().is_ok());
    log.close().await.unwrap();
}

// === misc ===

#[tokio::test]
async fn a_conflict_in_one_append_all_leaves_concurrent_appends_intact() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), opts(Duration::from_millis(20))).unwrap());
    let a = ConversationId(1).stream();
    let b = ConversationId(2).stream();
    let (bad, good) = tokio::join!(
        log.append_all(vec![
            any(a.clone(), vec![stopped("1".to_owned())]),
            StreamAppend {
                stream: b.clone(),
                expected: ExpectedVersion::Exact(3),
                events: vec![stopped("2".to_owned())],
            },
        ]),
        log.append(any(b.clone(), vec![stopped("3".to_owned())])),
    );
    assert!(matches!(bad, Err(AppendError::VersionConflict { .. })));
    let good = good.unwrap();
    assert_eq!(good.first, Seq(1));
    assert_eq!(log.stream_version(&a).unwrap(), 0);
    assert_eq!(log.head(), Some(Seq(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_store_creation_never_leaves_a_half_created_store() {
    let mut rng = rand::rng();
    for round in 0..10 {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("store");
        run_and_kill_child(&dir, &mut rng, true).await;
        // Either a complete store, or none (and creating one works).
        let log =
            Log::open(&dir, LogOptions::default()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let report = log.verify().unwrap();
        assert!(report.is_ok(), "round {round}: {report:?}");
        drop(log);
    }
}
