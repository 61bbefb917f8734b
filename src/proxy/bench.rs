//! `airut bench proxy`: what the proxy adds, in one run, against the same
//! local TLS upstream reached directly.
//!
//! Through the proxy, the client speaks to the task socket as the relay
//! does (PROXY v2 header, TLS with the task CA), so the figures include
//! header parsing, TLS termination, the allowlist, credentials, the
//! upstream TLS leg (pooled) and the audit event in the real log; they do
//! not include the relay's own hop inside the container. Prints:
//! added p50/p99 latency with keep-alive and with a new TLS connection per
//! request, and keep-alive throughput through the proxy as a share of
//! direct. Not a test; figures only.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::time::{Duration, Instant};

use super::testing::{EchoUpstream, client_tls, dial};
use super::{Allowlist, AuditSink, Limits, TaskSpec, spawn_task};
use crate::config::network::NetworkConfig;
use crate::events::{ConversationId, TaskId};
use crate::log::{Log, LogOptions};

const HOST: &str = "bench.airut.test";

/// Where a connection goes.
#[derive(Clone)]
enum Target {
    Direct {
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    },
    Proxy {
        socket: Arc<Path>,
        tls: Arc<rustls::ClientConfig>,
    },
}

/// Runs the benchmark and prints the figures.
pub async fn run(requests: usize, concurrency: usize, seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("airut-bench-proxy-")
        .tempdir()?;
    let log = {
        let p = dir.path().join("store");
        tokio::task::spawn_blocking(move || Log::open(&p, LogOptions::default())).await??
    };
    let (audit, writer) = AuditSink::spawn(log.clone());
    let mut upstream = EchoUpstream::start().await?;
    // Drain what the upstream records so it does not pile up.
    let mut rx = std::mem::replace(
        &mut upstream.received,
        tokio::sync::mpsc::unbounded_channel().1,
    );
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let mut network = NetworkConfig {
        extra_ca_file: Some(upstream.ca_file.clone()),
        ..NetworkConfig::default()
    };
    network
        .upstream_overrides
        .insert(HOST.to_owned(), upstream.url.clone());
    let socket = dir.path().join("proxy.sock");
    let proxy = spawn_task(
        TaskSpec {
            task: TaskId::new(),
            stream: ConversationId(0xbe0c4000).stream(),
            socket: socket.clone(),
            allowlist: Allowlist::parse(format!("domains: [{HOST}]").as_bytes()),
            network,
            limits: Limits::default(),
        },
        audit,
    )?;
    let upstream_ca = std::fs::read_to_string(&upstream.ca_file)?;
    let direct = Target::Direct {
        addr: upstream.addr,
        tls: client_tls(&upstream_ca, &[b"http/1.1"])?,
    };
    let via = Target::Proxy {
        socket: Arc::from(socket.as_path()),
        tls: client_tls(proxy.ca_certificate_pem(), &[b"http/1.1"])?,
    };

    println!(
        "airut bench proxy: {requests} sequential requests per latency figure, {concurrency} connections for {seconds} s per throughput figure"
    );
    // Warm both paths (leaf minting, upstream pool).
    latency(&direct, 50, false).await?;
    latency(&via, 50, false).await?;

    let d = latency(&direct, requests, false).await?;
    let p = latency(&via, requests, false).await?;
    report("keep-alive", &d, &p);
    let n = (requests / 4).max(50);
    let d = latency(&direct, n, true).await?;
    let p = latency(&via, n, true).await?;
    report("new TLS connection per request", &d, &p);

    let dur = Duration::from_secs(seconds);
    let direct_rps = throughput(&direct, concurrency, dur).await?;
    let proxy_rps = throughput(&via, concurrency, dur).await?;
    println!(
        "throughput (keep-alive, {concurrency} connections): direct {direct_rps:.0} req/s, through the proxy {proxy_rps:.0} req/s: {:.0}% of direct (goal >= 50%)",
        100.0 * proxy_rps / direct_rps
    );
    proxy.shutdown().await;
    drop(upstream);
    let _ = writer.await;
    let audited = log.head().map_or(0, |s| s.0);
    println!("audit events appended: {audited}");
    log.close().await?;
    Ok(())
}

fn report(label: &str, direct: &[Duration], proxied: &[Duration]) {
    let (d50, d99) = (pct(direct, 50.0), pct(direct, 99.0));
    let (p50, p99) = (pct(proxied, 50.0), pct(proxied, 99.0));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let goal = if label == "keep-alive" { 1.0 } else { 5.0 };
    println!(
        "{label}: direct p50 {:.3} ms p99 {:.3} ms; proxy p50 {:.3} ms p99 {:.3} ms; added p50 {:.3} ms (goal <= {goal} ms), added p99 {:.3} ms",
        ms(d50),
        ms(d99),
        ms(p50),
        ms(p99),
        ms(p50.saturating_sub(d50)),
        ms(p99.saturating_sub(d99)),
    );
}

fn pct(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    let i = ((p / 100.0) * (v.len().saturating_sub(1)) as f64).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

async fn connect(t: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    macro_rules! handshake {
        ($io:expr) => {{
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io)).await?;
            tokio::spawn(conn);
            sender
        }};
    }
    Ok(match t {
        Target::Direct { addr, tls } => {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("localhost")?;
            let s = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await?;
            handshake!(s)
        }
        Target::Proxy { socket, tls } => {
            let s = dial(socket, 443).await?;
            let name = ServerName::try_from(HOST)?;
            let s = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, s)
                .await?;
            handshake!(s)
        }
    })
}

fn request(t: &Target) -> anyhow::Result<Request<Full<Bytes>>> {
    let host = match t {
        Target::Direct { addr, .. } => format!("localhost:{}", addr.port()),
        Target::Proxy { .. } => HOST.to_owned(),
    };
    Ok(Request::builder()
        .uri("/v1/bench?x=1")
        .header("host", host)
        .header("user-agent", "airut-bench")
        .body(Full::new(Bytes::new()))?)
}

async fn one(sender: &mut SendRequest<Full<Bytes>>, t: &Target) -> anyhow::Result<()> {
    sender.ready().await?;
    let resp = sender.send_request(request(t)?).await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    resp.into_body().collect().await?;
    Ok(())
}

async fn latency(t: &Target, n: usize, fresh: bool) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    let mut sender = connect(t).await?;
    for _ in 0..n {
        let start = Instant::now();
        if fresh {
            sender = connect(t).await?;
        }
        one(&mut sender, t).await?;
        out.push(start.elapsed());
    }
    Ok(out)
}

async fn throughput(t: &Target, concurrency: usize, dur: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            let mut sender = connect(&t).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                one(&mut sender, &t).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
