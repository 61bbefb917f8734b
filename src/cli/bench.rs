//! `airut bench log`: figures for the event log (not a test; prints numbers).
//!
//! On a scratch store (or a kept one, `--keep DIR`), phase by phase
//! (`--only PHASE` runs one): durable append rate (concurrent appenders
//! sharing fsyncs), buffered append rates (concurrent single-event appends,
//! and batches), replay decode rate, and projection rebuild time and peak
//! RSS, each rebuild in a child process so its memory is its own, at half
//! and at the whole size to show memory stays flat. Every phase prints its
//! wall time and the CPU time the process spent (all threads), so a rate
//! can be read as CPU per event too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::time::Instant;

use crate::events::*;
use crate::log::{ExpectedVersion, Log, LogOptions, NewEvent, StreamAppend};
use crate::projections::Projections;

/// A phase of `airut bench log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Durable appends (fsync per group).
    Durable,
    /// Buffered appends: fills the main store.
    Append,
    /// Replay decode of the main store.
    Replay,
    /// Projection rebuild at half and whole size.
    Rebuild,
}

/// Wall and CPU time since it started.
struct Meter {
    wall: Instant,
    cpu: f64,
}

impl Meter {
    fn start() -> Meter {
        Meter {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// (wall seconds, CPU seconds).
    fn read(&self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64(), cpu_seconds() - self.cpu)
    }

    /// "N events/s (n events in W s, C CPU-s, U µs CPU/event)".
    fn rate(&self, n: u64) -> String {
        let (wall, cpu) = self.read();
        format!(
            "{:>10.0} events/s ({n} events in {wall:.2} s; {cpu:.2} CPU-s, {:.2} µs CPU/event)",
            n as f64 / wall,
            cpu * 1e6 / n.max(1) as f64
        )
    }
}

/// Runs the log benchmark.
pub async fn log(
    events: u64,
    dir: Option<PathBuf>,
    only: Option<Phase>,
    keep: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let scratch;
    let root = match keep {
        Some(keep) => {
            std::fs::create_dir_all(&keep)?;
            keep
        }
        None => {
            scratch = tempfile::Builder::new()
                .prefix("airut-bench-")
                .tempdir_in(dir.as_deref().unwrap_or(&std::env::temp_dir()))?;
            scratch.path().to_owned()
        }
    };
    let run = |p: Phase| only.is_none_or(|o| o == p);
    println!(
        "airut bench log: {events} events, stores in {}, {} cores, load average {} \
         (rates need idle cores; µs CPU/event do not)",
        root.display(),
        std::thread::available_parallelism().map_or(1, usize::from),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_owned())
    );

    // 1. Durable appends: 64 concurrent writers, one event each, group commit.
    if run(Phase::Durable) {
        let store = root.join("durable");
        if store.exists() {
            std::fs::remove_dir_all(&store)?;
        }
        let log = open(&store).await?;
        let writers = 64u64;
        let per_writer = 200u64;
        let meter = Meter::start();
        let mut handles = Vec::new();
        for w in 0..writers {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per_writer {
                    let conv = ConversationId((w as u32) << 16 | i as u32);
                    let ev = task_started(TaskId::new(), i);
                    log.append(one(conv.stream(), ev)).await?;
                }
                anyhow::Ok(())
            }));
        }
        for h in handles {
            h.await??;
        }
        println!(
            "durable append (64 concurrent writers, 1 event per append, fsync per group): {}",
            meter.rate(writers * per_writer)
        );
        log.close().await?;
    }

    // 2. Buffered appends, filling the main store for replay and rebuild
    // (a kept store that is already full is reused).
    let store = root.join("main");
    let half_dir = root.join("half");
    let filled = Log::open(
        &store,
        LogOptions {
            create: false,
            ..LogOptions::default()
        },
    )
    .ok()
    .and_then(|log| log.head())
    .is_some_and(|head| head.0 >= events);
    if run(Phase::Append) || !filled && (run(Phase::Replay) || run(Phase::Rebuild)) {
        if store.exists() {
            std::fs::remove_dir_all(&store)?;
        }
        let log = open(&store).await?;
        fill(&log, events).await?;
        log.close().await?;
    }

    // 3. Replay decode.
    if run(Phase::Replay) {
        let log = open(&store).await?;
        let meter = Meter::start();
        let counted = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
                let (mut n, mut bytes) = (0u64, 0u64);
                let replay = log.replay(Seq(0), |rec| {
                    let size = rec.payload.len() as u64 + rec.core.len() as u64 + 66;
                    Ok((size, rec.decode()?))
                });
                for item in replay {
                    let (size, event) = item?;
                    std::hint::black_box(event);
                    bytes += size;
                    n += 1;
                }
                Ok((n, bytes))
            })
            .await??
        };
        let (n, bytes) = counted;
        println!(
            "replay (read + validate + decode every event, parallel):    {} {:.0} MB",
            meter.rate(n),
            bytes as f64 / 1e6
        );
        let meter = Meter::start();
        let n = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let mut n = 0u64;
                for rec in log.iter_from(Seq(0)) {
                    std::hint::black_box(rec?.decode()?);
                    n += 1;
                }
                Ok(n)
            })
            .await??
        };
        println!(
            "replay (the same, one thread: Log::iter_from):               {}",
            meter.rate(n)
        );
        log.close().await?;
    }

    // 4. Rebuild at half (its own store, same mix) and at the whole size.
    if run(Phase::Rebuild) {
        let half = events / 2;
        let half_ready = Log::open(
            &half_dir,
            LogOptions {
                create: false,
                ..LogOptions::default()
            },
        )
        .ok()
        .and_then(|log| log.head())
        .is_some_and(|head| head.0 >= half);
        if !half_ready {
            if half_dir.exists() {
                std::fs::remove_dir_all(&half_dir)?;
            }
            write_conversations(&half_dir, half).await?;
        }
        for (label, dir) in [
            (format!("{half}"), &half_dir),
            (format!("{events}"), &store),
        ] {
            let out = tokio::process::Command::new(std::env::current_exe()?)
                .args(["bench", "log-rebuild"])
                .arg(dir)
                .output()
                .await
                .context("running the rebuild child")?;
            if !out.status.success() {
                anyhow::bail!(
                    "rebuild child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            println!(
                "projection rebuild of {label:>8} events: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the email intake benchmark over a corpus of .eml files.
pub async fn email(iterations: usize, corpus: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = corpus.unwrap_or_else(crate::channels::email::bench::default_corpus_dir);
    let r = tokio::task::spawn_blocking(move || {
        crate::channels::email::bench::bench_corpus(&dir, iterations)
    })
    .await?
    .context("reading the corpus")?;
    println!(
        "email intake (parse + authenticate + quote-strip, one core): {:.0} messages/s, {:.1} MB/s ({} messages of {} distinct, {} bytes, in {:.2} s)",
        r.messages_per_s, r.mb_per_s, r.messages, r.corpus_messages, r.corpus_bytes, r.seconds
    );
    Ok(ExitCode::SUCCESS)
}

/// Child: rebuild the projections of a store and print time, CPU and peak
/// RSS (`airut bench log-rebuild DIR`; also usable on its own on a kept
/// store).
pub async fn log_rebuild(dir: &Path) -> anyhow::Result<ExitCode> {
    let log = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            Log::open(
                &dir,
                LogOptions {
                    create: false,
                    ..LogOptions::default()
                },
            )
        })
        .await??
    };
    let rss_before = peak_rss_kib();
    let projections = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || Projections::open(&log)).await??
    };
    let meter = Meter::start();
    let report = {
        let log = log.clone();
        let p = projections.clone();
        tokio::task::spawn_blocking(move || p.rebuild_command(&log, false)).await??
    };
    let (secs, cpu) = meter.read();
    let peak = peak_rss_kib();
    let n = log.head().map_or(0, |h| h.0 + 1);
    println!(
        "{secs:.2} s ({:.0} events/s; {cpu:.2} CPU-s), peak RSS {:.1} MiB (after opening: {:.1} MiB){}",
        n as f64 / secs,
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        if report.ok() {
            ""
        } else {
            " — REBUILD REPORTED A PROBLEM"
        }
    );
    drop(projections);
    log.close().await?;
    Ok(ExitCode::SUCCESS)
}

async fn open(dir: &Path) -> anyhow::Result<Log> {
    let dir = dir.to_owned();
    Ok(tokio::task::spawn_blocking(move || Log::open(&dir, LogOptions::default())).await??)
}

fn one(stream: StreamId, event: Event) -> StreamAppend {
    StreamAppend {
        stream,
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event,
            causation: None,
        }],
    }
}

/// Writes `total` events, printing the rate of each kind of append:
/// buffered single-event appends, buffered batches, and whole conversations
/// (mixed durability) for the rest.
async fn fill(log: &Log, total: u64) -> anyhow::Result<()> {
    // Single-event appends of buffered events from 64 writers: 200k events.
    let single_n = 200_000u64.min(total / 2);
    let counter = Arc::new(AtomicU64::new(0));
    let meter = Meter::start();
    let mut handles = Vec::new();
    for w in 0..64u32 {
        let log = log.clone();
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let conv = ConversationId(0x8000_0000 | w);
            let task = TaskId::new();
            let mut i = 0u64;
            while counter.fetch_add(1, Ordering::Relaxed) < single_n {
                log.append(one(conv.stream(), output_line(task, i))).await?;
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    println!(
        "buffered append (64 concurrent writers, 1 event per append):  {}",
        meter.rate(single_n)
    );

    // Buffered events only (a running task's output and requests), in
    // batches of 64 from 8 concurrent writers.
    let batched_n = 200_000u64.min(total / 4).div_ceil(64) * 64;
    let counter = Arc::new(AtomicU64::new(0));
    let meter = Meter::start();
    let mut handles = Vec::new();
    for w in 0..8u32 {
        let log = log.clone();
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let stream = ConversationId(0x9000_0000 | w).stream();
            let task = TaskId::new();
            let mut i = 0u64;
            while counter.fetch_add(64, Ordering::Relaxed) < batched_n {
                let events = (0..64)
                    .map(|_| {
                        i += 1;
                        ne(if i.is_multiple_of(2) {
                            output_line(task, i)
                        } else {
                            proxy_request(task, i)
                        })
                    })
                    .collect();
                log.append(buffered(&stream, events)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    println!(
        "buffered append (8 writers, batches of 64 events per append): {}",
        meter.rate(batched_n)
    );

    // The rest: whole conversations as a server writes them (durable
    // lifecycle batches around buffered output), for replay and rebuild;
    // 16 conversations at a time.
    let mut written = single_n + batched_n;
    let meter = Meter::start();
    let mixed_start = written;
    let next_conv = Arc::new(AtomicU64::new(0));
    let claimed = Arc::new(AtomicU64::new(written));
    let mut handles = Vec::new();
    for _ in 0..16 {
        let log = log.clone();
        let next_conv = next_conv.clone();
        let claimed = claimed.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let conv = ConversationId(next_conv.fetch_add(1, Ordering::Relaxed) as u32);
                let batches = conversation_batches(conv);
                let count: u64 = batches.iter().map(|b| b.events.len() as u64).sum();
                if claimed.fetch_add(count, Ordering::Relaxed) >= total {
                    break;
                }
                for batch in batches {
                    log.append(batch).await?;
                }
                n += count;
            }
            anyhow::Ok(n)
        }));
    }
    for h in handles {
        written += h.await??;
    }
    println!(
        "whole conversations (16 at a time; 2 durable + 2 buffered batches each): {}",
        meter.rate(written - mixed_start)
    );
    Ok(())
}

/// Creates a store at `dir` holding about `n` events of whole conversations.
async fn write_conversations(dir: &Path, n: u64) -> anyhow::Result<()> {
    let log = open(dir).await?;
    let mut written = 0u64;
    let mut conv_no = 0u32;
    while written < n {
        for batch in conversation_batches(ConversationId(conv_no)) {
            written += batch.events.len() as u64;
            log.append(batch).await?;
        }
        conv_no += 1;
    }
    log.close().await?;
    Ok(())
}

/// One conversation's worth of events, as the appends a server would make:
/// start, queue, run with 60 output lines and 16 proxy requests and 4 DNS
/// queries, completion, reply (about 85 events).
fn conversation_batches(conv: ConversationId) -> Vec<StreamAppend> {
    let task = TaskId::new();
    let msg = EventId::new();
    let stream = conv.stream();
    let mut batches = vec![StreamAppend {
        stream: stream.clone(),
        expected: ExpectedVersion::Any,
        events: vec![
            ne(Event::ConversationStarted(ConversationStartedV1 {
                conversation: conv,
                repo: RepoId("bench".into()),
                channel: "email".into(),
                thread_keys: vec![format!("<{conv}@airut.example>")],
                message: msg,
                model: Some("opus".into()),
                replaces_expired: None,
                effort: None,
            })),
            ne(Event::TaskQueued(TaskQueuedV1 {
                task,
                conversation: conv,
                repo: RepoId("bench".into()),
                messages: vec![msg],
                model: "opus".into(),
                effort: None,
            })),
            ne(task_started(task, 0)),
        ],
    }];
    let mut run = Vec::new();
    for i in 0..80u64 {
        run.push(ne(match i % 5 {
            0..=2 => output_line(task, i),
            3 if i % 20 == 3 => Event::DnsQuery(DnsQueryV1 {
                task,
                name: "api.github.com".into(),
                qtype: 1,
                answer: "loopback".into(),
            }),
            _ => proxy_request(task, i),
        }));
        if run.len() == 64 {
            batches.push(buffered(&stream, std::mem::take(&mut run)));
        }
    }
    batches.push(buffered(&stream, run));
    batches.push(StreamAppend {
        stream,
        expected: ExpectedVersion::Any,
        events: vec![
            ne(Event::TaskCompleted(TaskCompletedV1 {
                task,
                outcome: TaskOutcome::Succeeded,
                reason: String::new(),
                session_id: Some("5f2c8a1e-0d3b-4c47-9a6e-2b7f1c3d4e5f".into()),
                reply_text: "I fixed the typo in README.md and opened a pull request.".repeat(3),
                cost_micros: Some(42_100),
                turns: Some(7),
                duration_ms: 93_000,
                input_tokens: 21_000,
                output_tokens: 1_800,
                cache_creation_input_tokens: 4_000,
                cache_read_input_tokens: 16_000,
                web_searches: 0,
                web_fetches: 1,
                blocked_hosts: vec![],
            })),
            ne(Event::ReplySent(ReplySentV1 {
                conversation: conv,
                task: Some(task),
                channel: "email".into(),
                kind: ReplyKind::Result,
                message_id: format!("<{conv}.2@airut.example>"),
                in_reply_to: format!("<{conv}@airut.example>"),
                attachments: vec![],
            })),
        ],
    });
    batches
}

fn ne(event: Event) -> NewEvent {
    NewEvent {
        event,
        causation: None,
    }
}

fn buffered(stream: &StreamId, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream: stream.clone(),
        expected: ExpectedVersion::Any,
        events,
    }
}

fn task_started(task: TaskId, i: u64) -> Event {
    Event::TaskStarted(TaskStartedV1 {
        task,
        attempt: 1,
        resume_session: (i % 2 == 1).then(|| "5f2c8a1e-0d3b-4c47-9a6e-2b7f1c3d4e5f".to_owned()),
        prompt: "Please fix the typo in README.md (\"recieve\" → \"receive\") and open a PR."
            .into(),
    })
}

fn output_line(task: TaskId, i: u64) -> Event {
    Event::ContainerOutput(ContainerOutputV1 {
        task,
        stream: OutputStream::Stdout,
        line_no: i,
        kind: OutputKind::Assistant,
        raw: format!(
            r#"{{"type":"assistant","message":{{"id":"msg_{i:024}","type":"message","role":"assistant","model":"claude-opus","content":[{{"type":"tool_use","id":"toolu_{i:020}","name":"Bash","input":{{"command":"git status --short && sed -n 1,40p README.md","description":"Inspect the working tree"}}}}],"stop_reason":null,"usage":{{"input_tokens":1520,"output_tokens":88}}}},"session_id":"5f2c8a1e-0d3b-4c47-9a6e-2b7f1c3d4e5f"}}"#
        ),
    })
}

fn proxy_request(task: TaskId, i: u64) -> Event {
    Event::ProxyRequest(ProxyRequestV1 {
        task,
        method: "GET".into(),
        scheme: "https".into(),
        host: "api.github.com".into(),
        port: 443,
        path: format!("/repos/acme/widgets/pulls?state=open&page={i}"),
        decision: if i.is_multiple_of(7) {
            Decision::Blocked
        } else {
            Decision::Allowed
        },
        rule: Some("api.github.com/repos/acme/widgets*".into()),
        reason: None,
        status: Some(200),
        bytes_in: 0,
        bytes_out: 18_234,
        duration_us: 84_000,
        credentials: vec![CredentialAnnotation {
            secret: "GH_TOKEN".into(),
            action: CredentialAction::Swapped,
            count: 1,
            header: Some("authorization".into()),
        }],
        upstream_override: None,
        notes: vec![],
    })
}

/// CPU time (user + system) of this process, all threads, in seconds.
#[allow(unsafe_code)]
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Peak resident set size of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    super::procmem::own_status().vm_hwm
}

/// `airut bench gateway`: see [`crate::gateway::bench`].
pub async fn gateway(messages: usize, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::Builder::new()
        .prefix("airut-bench-gateway-")
        .tempdir_in(dir.as_deref().unwrap_or(&std::env::temp_dir()))?;
    println!(
        "airut bench gateway: {messages} messages per phase, scratch in {} (agent and channel answer at once)",
        scratch.path().display()
    );
    let r = crate::gateway::bench::run(scratch.path(), messages.max(1))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; is git installed?"))?;
    let show = |name: &str, s: &[crate::gateway::bench::Sample]| {
        let pct = |mut v: Vec<std::time::Duration>, p: usize| {
            v.sort();
            v[(v.len() * p / 100).min(v.len() - 1)]
        };
        let run: Vec<_> = s.iter().map(|x| x.to_run).collect();
        let reply: Vec<_> = s.iter().map(|x| x.to_reply).collect();
        println!(
            "{name:<40} to agent start: median {:>8.1?} p95 {:>8.1?} | to reply: median {:>8.1?} p95 {:>8.1?}",
            pct(run.clone(), 50),
            pct(run, 95),
            pct(reply.clone(), 50),
            pct(reply, 95)
        );
    };
    show("new conversation (clone of warm mirror)", &r.new);
    show("reply to a conversation", &r.resumed);
    println!(
        "burst: {} new conversations at once, max_concurrent 4: all answered in {:.2?} ({:.1} messages/s)",
        r.burst.0,
        r.burst.1,
        r.burst.0 as f64 / r.burst.1.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
