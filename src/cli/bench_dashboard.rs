//! `airut bench dashboard`: figures for the dashboard (not a test; prints
//! numbers).
//!
//! Builds a scratch log of about `events` events in `tasks` finished
//! conversations (each a message, a task, agent output, network requests
//! and DNS queries, completion and reply), catches the projections up,
//! serves the dashboard on loopback and measures, per request, the time
//! from sending it to the last byte of the answer (server time plus a
//! loopback hop): the board, a conversation page, and a network view of
//! 10 000 rows, as p50/p99/max. Then 100 concurrent SSE clients follow a
//! stream of 1 000 events/s for 10 s, and the process's resident memory is
//! printed before, during and after, with what each client received.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dashboard::seed::{self, Seed};
use crate::dashboard::{self, AppState};
use crate::events::*;
use crate::log::{Log, LogOptions, NewEvent, StreamAppend};
use crate::projections::Projections;

/// Conversations appended per `append_all` while filling the store.
const FILL_BATCH: usize = 50;
/// SSE clients in the fan-out phase.
const SSE_CLIENTS: usize = 100;
/// Events per second appended in the fan-out phase.
const SSE_RATE: u64 = 1000;
/// Length of the fan-out phase.
const SSE_SECS: u64 = 10;

/// Runs the dashboard benchmark.
pub async fn dashboard(
    events: u64,
    tasks: u64,
    iterations: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        tasks > 0 && events >= tasks * 30,
        "need at least 30 events per task"
    );
    let scratch = tempfile::Builder::new()
        .prefix("airut-bench-dashboard-")
        .tempdir_in(dir.as_deref().unwrap_or(&std::env::temp_dir()))?;
    println!(
        "airut bench dashboard: ~{events} events in {tasks} finished tasks, store in {}",
        scratch.path().display()
    );
    let path = scratch.path().join("log");
    let log =
        tokio::task::spawn_blocking(move || Log::open(&path, LogOptions::default())).await??;

    // 1. Fill.
    let per = events / tasks;
    let network = (per * 4 / 10) as usize;
    let extra = per.saturating_sub(20 + network as u64) as usize;
    let start = Instant::now();
    seed::boot(&log, &["airut-rs", "website"]).await?;
    let mut sample = None;
    let mut left = tasks as usize;
    while left > 0 {
        let n = left.min(FILL_BATCH);
        left -= n;
        let seeds: Vec<Seed> = (0..n)
            .map(|i| {
                let mut s = Seed::new(
                    if i % 2 == 0 { "airut-rs" } else { "website" },
                    &format!("Task {} of the benchmark", left + i),
                );
                s.network = network;
                s.extra_output = extra;
                s
            })
            .collect();
        let messages = log
            .append_all(
                seeds
                    .iter()
                    .map(|s| seed::one(StreamId::channel(&s.repo, "email"), s.message_event()))
                    .collect(),
            )
            .await?;
        let mut batches: Vec<StreamAppend> = Vec::new();
        for (s, m) in seeds.iter().zip(&messages) {
            let id = *m.ids.first().context("message appended")?;
            let mut evs = s.open_events(id);
            evs.extend(s.run_events());
            batches.push(seed::batch(s.conversation.stream(), evs));
        }
        log.append_all(batches).await?;
        if sample.is_none() {
            sample = seeds.into_iter().next();
        }
    }
    let head = log.head().context("the store has events")?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fill: {} events in {secs:.1} s ({:.0} events/s)",
        head.0 + 1,
        (head.0 + 1) as f64 / secs
    );

    // 2. Projections.
    let start = Instant::now();
    let projections = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || Projections::open(&log)).await??
    };
    println!(
        "projections caught up in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // 3. Serve.
    let shutdown = CancellationToken::new();
    projections.spawn_follow(&log, shutdown.child_token());
    let state = AppState::new(
        log.clone(),
        projections.clone(),
        "bench".into(),
        shutdown.child_token(),
    )
    .with_stream_limit(SSE_CLIENTS + 8);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = shutdown.child_token();
    tokio::spawn(dashboard::serve(listener, state, async move {
        stop.cancelled().await
    }));

    let conv = sample.context("at least one conversation")?.conversation;
    for (name, path, goal) in [
        ("board", "/".to_owned(), 20.0),
        ("conversation page", format!("/conversation/{conv}"), 20.0),
        (
            "network view, 10 000 rows",
            "/network?limit=10000".to_owned(),
            100.0,
        ),
    ] {
        let (p50, p99, max, bytes) = measure(addr, &path, iterations).await?;
        println!(
            "{name:<28} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {max:>7.2} ms  ({bytes} bytes; goal p99 < {goal} ms) {}",
            if p99 < goal { "ok" } else { "OVER GOAL" }
        );
    }

    // 4. SSE fan-out.
    let rss_before = rss_kib();
    let from = log.head().context("head")?.0;
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..SSE_CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..SSE_CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let mut clients = Vec::new();
    for i in 0..SSE_CLIENTS {
        let (received, last) = (Arc::clone(&received), Arc::clone(&last));
        let stop = shutdown.child_token();
        clients.push(tokio::spawn(async move {
            sse_client(addr, from, i, &received, &last, stop).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = Arc::new(AtomicU64::new(rss_kib()));
    let sampler = {
        let peak = Arc::clone(&peak);
        let stop = shutdown.child_token();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let writer_conv = ConversationId::random();
    let task = TaskId::new();
    let start = Instant::now();
    let total = SSE_RATE * SSE_SECS;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while sent < total {
        tick.tick().await;
        let n = (SSE_RATE / 100).min(total - sent);
        let evs = (0..n)
            .map(|i| NewEvent {
                event: Event::ContainerOutput(ContainerOutputV1 {
                    task,
                    stream: OutputStream::Stdout,
                    line_no: sent + i,
                    kind: OutputKind::Assistant,
                    raw: format!("{{\"type\":\"assistant\",\"n\":{}}}", sent + i),
                }),
                causation: None,
            })
            .collect();
        log.append(StreamAppend {
            stream: writer_conv.stream(),
            expected: crate::log::ExpectedVersion::Any,
            events: evs,
        })
        .await?;
        sent += n;
    }
    let wrote = start.elapsed().as_secs_f64();
    let target = log.head().context("head")?.0;
    // Let the clients drain (bounded wait).
    let drain_start = Instant::now();
    while drain_start.elapsed() < Duration::from_secs(30)
        && last.iter().any(|l| l.load(Ordering::Relaxed) < target)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = drain_start.elapsed().as_secs_f64();
    let rss_during = peak.load(Ordering::Relaxed);
    let complete = last
        .iter()
        .filter(|l| l.load(Ordering::Relaxed) >= target)
        .count();
    let got: Vec<u64> = received.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    println!(
        "SSE: {SSE_CLIENTS} clients, {total} events appended in {wrote:.1} s ({:.0}/s); {complete}/{SSE_CLIENTS} clients received all \
         (min {} max {} events each), drained {drained:.2} s after the last append",
        total as f64 / wrote,
        got.iter().min().copied().unwrap_or(0),
        got.iter().max().copied().unwrap_or(0),
    );
    shutdown.cancel();
    let _ = sampler.await;
    for c in clients {
        let _ = c.await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "RSS: {:.1} MiB before the clients, peak {:.1} MiB while streaming, {:.1} MiB after",
        rss_before as f64 / 1024.0,
        rss_during as f64 / 1024.0,
        rss_kib() as f64 / 1024.0
    );
    drop(projections);
    log.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// `iterations` sequential GETs of `path`: p50, p99 and max in ms, and the
/// body size.
async fn measure(
    addr: SocketAddr,
    path: &str,
    iterations: usize,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    // Warm-up.
    for _ in 0..3 {
        get(addr, path).await?;
    }
    let mut times = Vec::with_capacity(iterations);
    let mut bytes = 0;
    for _ in 0..iterations {
        let start = Instant::now();
        let (status, n) = get(addr, path).await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(status == 200, "{path} answered {status}");
        bytes = n;
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times.get(i).copied().unwrap_or(0.0)
    };
    Ok((at(0.5), at(0.99), at(1.0), bytes))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, usize)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(raw.get(..16).unwrap_or(&raw)).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, raw.len()))
}

async fn sse_client(
    addr: SocketAddr,
    after: u64,
    i: usize,
    received: &[AtomicU64],
    last: &[AtomicU64],
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /events/stream?after={after} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry = String::new();
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            n = s.read(&mut buf) => n?,
        };
        if n == 0 {
            return Ok(());
        }
        carry.push_str(&String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])));
        let mut consumed = 0;
        while let Some(pos) = carry[consumed..].find("\n\n") {
            let frame = &carry[consumed..consumed + pos];
            if let Some(id) = frame
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                if let Some(r) = received.get(i) {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(l) = last.get(i) {
                    l.fetch_max(id, Ordering::Relaxed);
                }
            }
            consumed += pos + 2;
        }
        carry.drain(..consumed);
    }
}

/// Resident set size of this process now (VmRSS), KiB.
fn rss_kib() -> u64 {
    super::procmem::own_status().vm_rss
}
