//! The request pipeline, in order, for one HTTP request from the sandbox:
//!
//! 1. consistency: no CONNECT; one Host; Host, request target and SNI name
//!    the same host, on the port the relay claimed; no IP-literal hosts;
//! 2. the allowlist (path decoded once; NUL, backslash, dot-dot refused);
//! 3. the body cap;
//! 4. credentials (masked secrets swapped only for scoped hosts/headers);
//! 5. forwarding (override or the host itself), WebSocket upgrades spliced;
//! 6. one audit event, emitted when the response body is finished or
//!    dropped ([`ResBody`]), with status, bytes and duration.
//!
//! Every failure becomes a response here, in [`reject`]: 403 for blocks,
//! 413 for a body over the cap, 502 when the upstream fails, 504 when it is
//! too slow. Called by `accept.rs` through hyper's service function.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::time::Instant;

use super::TaskState;
use super::allowlist::Verdict;
use crate::events::{CredentialAnnotation, Decision, Event, ProxyRequestV1};

/// What `accept.rs` knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The port the relay claimed (80 or 443).
    pub port: u16,
    /// TLS terminated (443).
    pub tls: bool,
    /// The SNI name of the TLS handshake, lower-case.
    pub sni: Option<String>,
    /// Requests served on this connection so far.
    pub requests: AtomicU64,
}

/// Errors a body can surface.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response to the sandbox: upstream's or ours; records the
/// audit event when it ends or is dropped.
pub type ResBody = AuditBody<Either<Incoming, Full<Bytes>>>;

/// Per-request counters shared by the request and response bodies.
#[derive(Debug, Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    too_large: AtomicBool,
}

/// The request body forwarded upstream: counts bytes, enforces the cap.
pub struct ReqBody {
    inner: Incoming,
    counters: Arc<Counters>,
    cap: u64,
}

/// A response body that records the request's audit event on drop.
pub struct AuditBody<B> {
    inner: B,
    record: Option<Record>,
}

/// The facts of one request, gathered along the pipeline.
struct Record {
    task: Arc<TaskState>,
    counters: Arc<Counters>,
    start: Instant,
    method: String,
    scheme: &'static str,
    host: String,
    port: u16,
    path: String,
    decision: Decision,
    rule: Option<String>,
    reason: Option<String>,
    status: u16,
    credentials: Vec<CredentialAnnotation>,
    upstream_override: Option<String>,
}

/// An early end of the pipeline.
struct Reject {
    status: StatusCode,
    decision: Decision,
    body: serde_json::Value,
    reason: String,
}

// === impl ReqBody ===

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = this
                        .counters
                        .bytes_in
                        .fetch_add(d.len() as u64, Ordering::Relaxed)
                        + d.len() as u64;
                    if n > this.cap {
                        this.counters.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err("request body over the cap".into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl AuditBody ===

impl<B> Body for AuditBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(r)) = (frame.data_ref(), &this.record) {
                    r.counters
                        .bytes_out
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                if let Some(r) = &mut this.record {
                    r.decision = Decision::Failed;
                    r.reason = Some(format!("upstream body: {e}"));
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> AuditBody<B> {
    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            r.emit();
        }
    }
}

impl<B> Drop for AuditBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

// === impl Record ===

impl Record {
    fn emit(self) {
        let ev = ProxyRequestV1 {
            task: self.task.task,
            method: self.method,
            scheme: self.scheme.to_owned(),
            host: self.host,
            port: self.port,
            path: self.path,
            decision: self.decision,
            rule: self.rule,
            reason: self.reason,
            status: Some(self.status),
            bytes_in: self.counters.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.counters.bytes_out.load(Ordering::Relaxed),
            duration_us: u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            credentials: self.credentials,
            upstream_override: self.upstream_override,
            notes: Vec::new(),
        };
        if ev.decision == Decision::Blocked {
            self.task.note_blocked(&ev.host);
        }
        self.task
            .audit
            .record(&self.task.stream, Event::ProxyRequest(ev));
    }
}

// === the pipeline ===

/// hyper's service function.
pub async fn handle(
    task: Arc<TaskState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    conn.requests.fetch_add(1, Ordering::Relaxed);
    let counters = Arc::new(Counters::default());
    let mut rec = Record {
        task: Arc::clone(&task),
        counters,
        start: Instant::now(),
        method: req.method().as_str().to_owned(),
        scheme: if conn.tls { "https" } else { "http" },
        host: String::new(),
        port: conn.port,
        path: req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default(),
        decision: Decision::Allowed,
        rule: None,
        reason: None,
        status: 0,
        credentials: Vec::new(),
        upstream_override: None,
    };
    let version = req.version();
    match pipeline(&task, &conn, req, &mut rec).await {
        Ok(mut resp) => {
            *resp.version_mut() = version;
            rec.status = resp.status().as_u16();
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(
                parts,
                AuditBody {
                    inner: Either::Left(body),
                    record: Some(rec),
                },
            ))
        }
        Err(rej) => {
            let blocked = rej.decision == Decision::Blocked;
            rec.decision = rej.decision;
            rec.reason = Some(rej.reason);
            rec.status = rej.status.as_u16();
            if blocked {
                tracing::info!(task = %task.task, method = %rec.method, host = %rec.host, path = %rec.path, reason = rec.reason.as_deref().unwrap_or(""), "blocked");
            }
            let body = serde_json::to_vec(&rej.body).unwrap_or_default();
            let mut resp = Response::new(AuditBody {
                inner: Either::Right(Full::new(Bytes::from(body))),
                record: Some(rec),
            });
            *resp.status_mut() = rej.status;
            *resp.version_mut() = version;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
    }
}

async fn pipeline(
    task: &Arc<TaskState>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<Incoming>, Reject> {
    // 1. Consistency.
    if req.method() == Method::CONNECT {
        rec.host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        return Err(reject_connect(&rec.host));
    }
    let host = target_host(&req, conn)
        .map_err(|(reason, url_host)| reject_mismatch(&reason, req.method().as_str(), &url_host))?;
    rec.host = host.clone();
    if rec.path.is_empty() {
        rec.path = "/".to_owned();
    }
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Err(blocked(
            "ip_address_not_allowed",
            format!(
                "{host} is an IP address; the network sandbox only allows host names listed in .airut/network-allowlist.yaml"
            ),
            "IP-address host",
        ));
    }

    // 2. Allowlist.
    let list = match &task.allowlist {
        Ok(l) => l,
        Err(e) => {
            return Err(blocked(
                "blocked_by_network_allowlist",
                format!(
                    "{e}. Every request is blocked until the allowlist is fixed on the default branch."
                ),
                "allowlist unusable",
            ));
        }
    };
    match list.check(&host, &rec.path, req.method().as_str()) {
        Verdict::Allow { rule } => rec.rule = Some(rule),
        Verdict::BadPath { reason } => {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                decision: Decision::Blocked,
                body: serde_json::json!({
                    "error": "invalid_path",
                    "host": host, "path": rec.path, "method": rec.method,
                    "message": format!("Request blocked: {reason}. Such paths could bypass the network allowlist."),
                }),
                reason: reason.to_owned(),
            });
        }
        Verdict::MethodNotAllowed => {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                decision: Decision::Blocked,
                body: serde_json::json!({
                    "error": "blocked_by_network_allowlist",
                    "host": host, "path": rec.path, "method": rec.method,
                    "message": format!(
                        "{} is not allowed for this URL by the network sandbox. To request access, add {} to the `methods` of the matching entry in .airut/network-allowlist.yaml and submit a pull request.",
                        rec.method, rec.method
                    ),
                }),
                reason: "method not allowed".to_owned(),
            });
        }
        Verdict::NotListed => {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                decision: Decision::Blocked,
                body: serde_json::json!({
                    "error": "blocked_by_network_allowlist",
                    "host": host, "path": rec.path, "method": rec.method,
                    "message": format!(
                        "{host}{} is not in the network allowlist. To request access, add the host to `domains` (or a `url_prefixes` entry) in .airut/network-allowlist.yaml and submit a pull request.",
                        rec.path
                    ),
                }),
                reason: "not in allowlist".to_owned(),
            });
        }
    }

    // 3. Body cap (declared length; streamed bodies are counted in ReqBody).
    let cap = task.network.max_request_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }

    // 4. Credentials.
    rec.credentials = task.credentials.apply(&host, req.headers_mut());

    // 5. Forward.
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let over = task.network.upstream_overrides.get(&host);
    let target = match over {
        Some(base) => format!("{base}{}", rec.path),
        None => format!("{}://{host}{}", rec.scheme, rec.path),
    };
    rec.upstream_override = over.cloned();
    parts.uri = target.parse().map_err(|_| Reject {
        status: StatusCode::BAD_REQUEST,
        decision: Decision::Blocked,
        body: serde_json::json!({"error": "invalid_request", "message": "the request target cannot be forwarded"}),
        reason: "unforwardable target".to_owned(),
    })?;
    parts.version = Version::HTTP_11;
    let upgrade_to = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if let (true, Some(to)) = (upgrade, upgrade_to) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, to);
    }
    let body = ReqBody {
        inner: body,
        counters: Arc::clone(&rec.counters),
        cap,
    };
    let fwd = Request::from_parts(parts, body);
    let up = &task.upstream;
    let sending = match (over.is_some(), upgrade) {
        (true, false) => up.overridden.request(fwd),
        (true, true) => up.overridden_h1.request(fwd),
        (false, false) => up.normal.request(fwd),
        (false, true) => up.normal_h1.request(fwd),
    };
    let sent = tokio::time::timeout(task.network.upstream_timeout, sending).await;
    let mut resp = match sent {
        Err(_) => {
            return Err(Reject {
                status: StatusCode::GATEWAY_TIMEOUT,
                decision: Decision::Failed,
                body: serde_json::json!({"error": "upstream_timeout", "host": host,
                    "message": format!("{host} did not answer within {:?}", task.network.upstream_timeout)}),
                reason: "upstream timeout".to_owned(),
            });
        }
        Ok(Err(e)) => {
            if rec.counters.too_large.load(Ordering::Relaxed) {
                return Err(too_large(cap));
            }
            let reason = error_chain(&e);
            return Err(Reject {
                status: StatusCode::BAD_GATEWAY,
                decision: Decision::Failed,
                body: serde_json::json!({"error": "upstream_failed", "host": host,
                    "message": format!("cannot reach {host}: {reason}")}),
                reason,
            });
        }
        Ok(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            let upstream_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice(client_up, upstream_up));
        }
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    Ok(resp)
}

async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
        return;
    };
    let mut c = hyper_util::rt::TokioIo::new(c);
    let mut u = hyper_util::rt::TokioIo::new(u);
    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
}

/// The host the request is for, after checking that every place naming it
/// agrees. `Err((reason, other_host))`.
fn target_host<B>(req: &Request<B>, conn: &ConnInfo) -> Result<String, (String, String)> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(("more than one Host header".to_owned(), String::new()));
    }
    let header_host = match header_host {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ("the Host header is not ASCII".to_owned(), String::new()))?,
        ),
        None => None,
    };
    if let Some(s) = req.uri().scheme_str() {
        let want = if conn.tls { "https" } else { "http" };
        if !s.eq_ignore_ascii_case(want) {
            return Err((
                format!("request target scheme {s} on a {want} connection"),
                String::new(),
            ));
        }
    }
    let uri_host = req.uri().authority().map(|a| a.as_str());
    let raw = match (uri_host, header_host) {
        (Some(u), Some(h)) if !u.eq_ignore_ascii_case(h) => {
            return Err((
                format!("Host header {h:?} and request target {u:?} disagree"),
                u.to_owned(),
            ));
        }
        (Some(u), _) => u,
        (None, Some(h)) => h,
        (None, None) => return Err(("no Host header".to_owned(), String::new())),
    };
    if raw.contains('@') {
        return Err((
            "credentials in the request target".to_owned(),
            raw.to_owned(),
        ));
    }
    let (host, port) =
        split_host_port(raw).ok_or_else(|| (format!("bad host {raw:?}"), String::new()))?;
    if port.is_some_and(|p| p != conn.port) {
        return Err((
            format!(
                "host {raw:?} names another port than the connection's ({})",
                conn.port
            ),
            raw.to_owned(),
        ));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty()
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
    {
        return Err((format!("bad host {raw:?}"), String::new()));
    }
    if let Some(sni) = &conn.sni
        && sni.trim_end_matches('.') != host
    {
        return Err((
            format!("TLS server name {sni:?} and Host {host:?} disagree"),
            sni.clone(),
        ));
    }
    Ok(host)
}

fn split_host_port(raw: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        let _ = h;
        return Some((raw.get(..h.len() + 2)?, port));
    }
    match raw.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((raw, None)),
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn blocked(code: &str, message: String, reason: &str) -> Reject {
    Reject {
        status: StatusCode::FORBIDDEN,
        decision: Decision::Blocked,
        body: serde_json::json!({"error": code, "message": message}),
        reason: reason.to_owned(),
    }
}

fn reject_connect(authority: &str) -> Reject {
    Reject {
        status: StatusCode::FORBIDDEN,
        decision: Decision::Blocked,
        body: serde_json::json!({
            "error": "blocked_by_network_allowlist",
            "host": authority, "method": "CONNECT",
            "message": "CONNECT is not allowed: the network sandbox does not tunnel; send requests to the host directly (HTTPS is intercepted and checked per request).",
        }),
        reason: "CONNECT refused".to_owned(),
    }
}

fn reject_mismatch(reason: &str, method: &str, other: &str) -> Reject {
    Reject {
        status: StatusCode::FORBIDDEN,
        decision: Decision::Blocked,
        body: serde_json::json!({
            "error": "request_inconsistent",
            "method": method, "url_host": other,
            "message": format!("Host mismatch: {reason}. The request was blocked because it could bypass the network allowlist."),
        }),
        reason: format!("inconsistent request: {reason}"),
    }
}

fn too_large(cap: u64) -> Reject {
    Reject {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        decision: Decision::Blocked,
        body: serde_json::json!({
            "error": "request_body_too_large",
            "message": format!("the request body is larger than the sandbox limit of {cap} bytes"),
        }),
        reason: format!("body over {cap} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(tls: bool, sni: Option<&str>) -> ConnInfo {
        ConnInfo {
            port: if tls { 443 } else { 80 },
            tls,
            sni: sni.map(str::to_owned),
            requests: AtomicU64::new(0),
        }
    }

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_consistency() {
        let tls = conn(true, Some("api.example.com"));
        assert_eq!(
            target_host(&req("/x", &["API.example.com"]), &tls).unwrap(),
            "api.example.com"
        );
        assert_eq!(
            target_host(&req("/x", &["api.example.com:443"]), &tls).unwrap(),
            "api.example.com"
        );
        assert_eq!(
            target_host(
                &req("https://api.example.com/x", &["api.example.com"]),
                &tls
            )
            .unwrap(),
            "api.example.com"
        );
        for (uri, hosts) in [
            ("/x", &["evil.com"][..]),
            ("/x", &["api.example.com", "api.example.com"][..]),
            ("/x", &[][..]),
            ("/x", &["api.example.com:8443"][..]),
            ("https://evil.com/x", &["api.example.com"][..]),
            ("http://api.example.com/x", &["api.example.com"][..]),
            ("https://u@api.example.com/x", &[][..]),
            ("/x", &["api example.com"][..]),
        ] {
            assert!(
                target_host(&req(uri, hosts), &tls).is_err(),
                "{uri} {hosts:?}"
            );
        }
        let plain = conn(false, None);
        assert_eq!(target_host(&req("/", &["a.b"]), &plain).unwrap(), "a.b");
        assert!(target_host(&req("/", &["a.b:443"]), &plain).is_err());
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "x-secret, keep-alive".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
