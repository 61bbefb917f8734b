//! One listener per task, on the task's unix socket: every byte that
//! arrives there belongs to that task.
//!
//! Per connection: read the relay header (under a deadline), then either
//! record the DNS queries it reports, or serve HTTP on it (TLS first for
//! port 443, with the task's CA). Connections that never become a request
//! (bad header, failed handshake such as a client dialling an IP address
//! without SNI, a slow or malformed request) are recorded too, as a
//! blocked `network.request` with an empty method and the reason.
//! A per-task connection cap keeps one task from exhausting the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TaskState;
use super::http::{ConnInfo, handle};
use super::relay_header::{self, RelayHeader};
use crate::events::{Decision, DnsQueryV1, Event, ProxyRequestV1};

/// Accepts until `cancel`, then closes connections gracefully (bounded by
/// the task's grace period).
pub async fn serve(listener: UnixListener, task: Arc<TaskState>, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(task.limits.max_connections));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        record_connection(&task, 0, "", "too many open connections for this task");
                        continue;
                    };
                    let task = Arc::clone(&task);
                    let cancel = cancel.child_token();
                    tracker.spawn(async move {
                        connection(stream, task, cancel).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(task = %task.task, error = %e, "accept on the task socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(task.limits.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(task = %task.task, open = tracker.len(), "proxy connections still open after the grace period; dropping them");
    }
}

async fn connection(mut stream: UnixStream, task: Arc<TaskState>, cancel: CancellationToken) {
    let header = tokio::time::timeout(
        task.limits.handshake_timeout,
        relay_header::read(&mut stream),
    )
    .await;
    let port = match header {
        Err(_) => return record_connection(&task, 0, "", "no relay header in time"),
        Ok(Err(e)) => return record_connection(&task, 0, "", &e.to_string()),
        Ok(Ok(RelayHeader::Dns(reports))) => {
            for r in reports {
                let answer = if r.qtype == 1 { "loopback" } else { "empty" };
                task.audit.record(
                    &task.stream,
                    Event::DnsQuery(DnsQueryV1 {
                        task: task.task,
                        name: r.name,
                        qtype: r.qtype,
                        answer: answer.to_owned(),
                    }),
                );
            }
            return;
        }
        Ok(Ok(RelayHeader::Connection { port })) => port,
    };
    if port == 443 {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&task.tls));
        let tls = match tokio::time::timeout(task.limits.handshake_timeout, acceptor.accept(stream))
            .await
        {
            Err(_) => {
                return record_connection(&task, 443, "", "TLS handshake not finished in time");
            }
            Ok(Err(e)) => {
                return record_connection(
                    &task,
                    443,
                    "",
                    &format!(
                        "TLS handshake failed (a client without SNI, e.g. dialling an IP address, gets no certificate): {e}"
                    ),
                );
            }
            Ok(Ok(s)) => s,
        };
        let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
        let info = ConnInfo {
            port,
            tls: true,
            sni,
            requests: AtomicU64::new(0),
        };
        serve_http(tls, info, task, cancel).await;
    } else {
        let info = ConnInfo {
            port,
            tls: false,
            sni: None,
            requests: AtomicU64::new(0),
        };
        serve_http(stream, info, task, cancel).await;
    }
}

async fn serve_http<S>(io: S, info: ConnInfo, task: Arc<TaskState>, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(task.limits.header_timeout)
        .max_buf_size(256 * 1024)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(256 * 1024)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let svc = {
        let task = Arc::clone(&task);
        let info = Arc::clone(&info);
        service_fn(move |req| handle(Arc::clone(&task), Arc::clone(&info), req))
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // The header deadline also ends idle keep-alive connections: after
        // a served request that is a normal close, not a slow client.
        let served = info.requests.load(Ordering::Relaxed) > 0;
        let reason = match e.downcast_ref::<hyper::Error>() {
            Some(h) if h.is_timeout() && served => None,
            Some(h) if h.is_timeout() => Some(format!("client too slow: {h}")),
            Some(h) if h.is_parse() || h.is_parse_too_large() => {
                Some(format!("malformed request: {h}"))
            }
            _ => None,
        };
        match reason {
            Some(r) => record_connection(&task, info.port, info.sni.as_deref().unwrap_or(""), &r),
            None => {
                tracing::debug!(task = %task.task, error = %e, "proxy connection ended with an error")
            }
        }
    }
}

/// Records a connection that produced no request.
fn record_connection(task: &TaskState, port: u16, host: &str, reason: &str) {
    tracing::info!(task = %task.task, port, host, reason, "proxy connection refused");
    let ev = ProxyRequestV1 {
        task: task.task,
        method: String::new(),
        scheme: if port == 443 {
            "https"
        } else if port == 80 {
            "http"
        } else {
            ""
        }
        .to_owned(),
        host: host.to_owned(),
        port,
        path: String::new(),
        decision: Decision::Blocked,
        rule: None,
        reason: Some(reason.to_owned()),
        status: None,
        bytes_in: 0,
        bytes_out: 0,
        duration_us: 0,
        credentials: Vec::new(),
        upstream_override: None,
        notes: vec!["connection: no request".to_owned()],
    };
    task.audit.record(&task.stream, Event::ProxyRequest(ev));
}
