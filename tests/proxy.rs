//! The network sandbox's proxy against real parts: real unix sockets, real
//! TLS (the task CA on one side, a local TLS upstream with its own CA on
//! the other), the real relay code, and the real event log. Every case
//! checks the audit event the proxy appended.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::time::Duration;

use airut::config::Secret;
use airut::config::network::{MaskedSecretConfig, NetworkConfig};
use airut::events::{
    ConversationId, CredentialAction, Decision, DnsQueryV1, Event, ProxyRequestV1, Seq, StreamId,
    TaskId,
};
use airut::log::{Log, LogOptions, Subscription};
use airut::proxy::testing::{EchoUpstream, client_tls, dial, https_sender, send};
use airut::proxy::{Allowlist, AuditSink, Limits, TaskProxy, TaskSpec, relay_header, spawn_task};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../src/sandbox/init/relay.rs"]
#[allow(dead_code)]
mod relay;

/// The secret the masked-secret cases use; must never reach the log.
const REAL_SECRET: &str = "ghp_RealSecretValue0123456789abcdefABCD";

const ALLOWLIST: &str = r#"
domains: [api.example.test]
url_prefixes:
  - host: "*.pkg.test"
    path: /simple/*
    methods: [GET]
  - host: other.example.test
  - host: uploads.example.test
    path: /upload
    methods: [POST]
"#;

/// Hosts routed to the echo upstream.
const HOSTS: &[&str] = &[
    "api.example.test",
    "other.example.test",
    "evil.example.test",
    "a.pkg.test",
    "uploads.example.test",
];

struct Harness {
    _dir: tempfile::TempDir,
    log: Log,
    sub: Subscription,
    proxy: Option<TaskProxy>,
    upstream: EchoUpstream,
    audit: AuditSink,
    tls: std::sync::Arc<rustls::ClientConfig>,
    stream: StreamId,
}

fn masked() -> BTreeMap<String, MaskedSecretConfig> {
    BTreeMap::from([(
        "GH_TOKEN".to_owned(),
        MaskedSecretConfig {
            value: Secret::new(REAL_SECRET),
            scopes: vec!["api.example.test".into()],
            headers: vec!["Authorization".into()],
            allow_foreign_credentials: false,
        },
    )])
}

async fn harness(allowlist: &str, tweak: impl FnOnce(&mut NetworkConfig, &mut Limits)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&dir.path().join("store"), LogOptions::default()).unwrap();
    let sub = log.subscribe(Seq(1));
    let (audit, _writer) = AuditSink::spawn(log.clone());
    let upstream = EchoUpstream::start().await.unwrap();
    let mut network = NetworkConfig {
        extra_ca_file: Some(upstream.ca_file.clone()),
        masked_secrets: masked(),
        ..NetworkConfig::default()
    };
    for h in HOSTS {
        network
            .upstream_overrides
            .insert((*h).to_owned(), upstream.url.clone());
    }
    let mut limits = Limits::default();
    tweak(&mut network, &mut limits);
    let stream = ConversationId(0x1a2b3c4d).stream();
    let socket = dir.path().join("proxy.sock");
    let proxy = spawn_task(
        TaskSpec {
            task: TaskId::new(),
            stream: stream.clone(),
            socket,
            allowlist: Allowlist::parse(allowlist.as_bytes()),
            network,
            limits,
        },
        audit.clone(),
    )
    .unwrap();
    let tls = client_tls(proxy.ca_certificate_pem(), &[b"http/1.1"]).unwrap();
    Harness {
        _dir: dir,
        log,
        sub,
        proxy: Some(proxy),
        upstream,
        audit,
        tls,
        stream,
    }
}

impl Harness {
    fn proxy(&self) -> &TaskProxy {
        self.proxy.as_ref().unwrap()
    }

    fn socket(&self) -> std::path::PathBuf {
        self.proxy().socket().to_owned()
    }

    async fn get(&self, sni: &str, req: Request<Full<Bytes>>) -> (u16, serde_json::Value) {
        let mut s = https_sender(&self.socket(), self.tls.clone(), sni)
            .await
            .unwrap();
        let (status, _, body) = send(&mut s, req).await.unwrap();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// The next network event in the log (waits; a wide margin).
    async fn next_event(&mut self) -> Event {
        loop {
            let rec = tokio::time::timeout(Duration::from_secs(20), self.sub.next())
                .await
                .expect("no network event within 20 s")
                .expect("subscription ended")
                .unwrap();
            assert_eq!(rec.header.stream, self.stream);
            let ev = rec.decode().unwrap();
            if matches!(ev, Event::ProxyRequest(_) | Event::DnsQuery(_)) {
                return ev;
            }
        }
    }

    async fn next_request(&mut self) -> ProxyRequestV1 {
        match self.next_event().await {
            Event::ProxyRequest(r) => r,
            other => panic!("expected a request event, got {other:?}"),
        }
    }

    async fn shutdown(mut self) {
        self.proxy.take().unwrap().shutdown().await;
    }
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    req("GET", host, path, Bytes::new())
}

fn req(method: &str, host: &str, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn allowed_request_is_forwarded_and_audited() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    let (status, json) = h
        .get("api.example.test", get("api.example.test", "/v1/x?q=1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(json["method"], "GET");
    let got = h.upstream.received.recv().await.unwrap();
    assert_eq!(got.path, "/v1/x?q=1");
    let ev = h.next_request().await;
    assert_eq!(ev.decision, Decision::Allowed);
    assert_eq!(ev.host, "api.example.test");
    assert_eq!(ev.path, "/v1/x?q=1");
    assert_eq!(ev.port, 443);
    assert_eq!(ev.scheme, "https");
    assert_eq!(ev.status, Some(200));
    assert_eq!(ev.rule.as_deref(), Some("domains: api.example.test"));
    assert_eq!(
        ev.upstream_override.as_deref(),
        Some(h.upstream.url.as_str())
    );
    assert!(ev.bytes_out > 0);
    assert!(h.proxy().blocked_hosts().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn not_listed_host_gets_403_json_and_never_reaches_upstream() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    let (status, json) = h
        .get("evil.example.test", get("evil.example.test", "/steal"))
        .await;
    assert_eq!(status, 403);
    assert_eq!(json["error"], "blocked_by_network_allowlist");
    assert_eq!(json["host"], "evil.example.test");
    let msg = json["message"].as_str().unwrap();
    assert!(
        msg.contains(".airut/network-allowlist.yaml") && msg.contains("pull request"),
        "{msg}"
    );
    let ev = h.next_request().await;
    assert_eq!(ev.decision, Decision::Blocked);
    assert_eq!(ev.status, Some(403));
    assert_eq!(ev.reason.as_deref(), Some("not in allowlist"));
    assert!(
        h.upstream.received.try_recv().is_err(),
        "a blocked request reached the upstream"
    );
    assert_eq!(
        h.proxy().blocked_hosts(),
        vec!["evil.example.test".to_owned()]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn path_method_and_wildcard_rules_over_the_wire() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    // (sni/host, method, path, expected status, expected rule or reason)
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "a.pkg.test",
            "GET",
            "/simple/x",
            200,
            "url_prefixes[0]: *.pkg.test /simple/* [GET]",
        ),
        ("a.pkg.test", "POST", "/simple/x", 403, "method not allowed"),
        ("a.pkg.test", "GET", "/other", 403, "not in allowlist"),
        (
            "a.pkg.test",
            "GET",
            "/simple/%2e%2e/etc",
            403,
            "the path contains a '..' segment",
        ),
        (
            "a.pkg.test",
            "GET",
            "/simple/a%5Cb",
            403,
            "the path contains a backslash",
        ),
        (
            "a.pkg.test",
            "GET",
            "/simple/a%00b",
            403,
            "the path contains a NUL byte",
        ),
        (
            "uploads.example.test",
            "POST",
            "/upload",
            200,
            "url_prefixes[2]: uploads.example.test /upload [POST]",
        ),
        (
            "uploads.example.test",
            "POST",
            "/upload/",
            403,
            "not in allowlist",
        ),
        (
            "uploads.example.test",
            "POST",
            "/upload?x",
            403,
            "not in allowlist",
        ),
        (
            "other.example.test",
            "DELETE",
            "/anything",
            200,
            "url_prefixes[1]: other.example.test",
        ),
    ];
    for (host, method, path, status, expect) in cases {
        let (got, json) = h.get(host, req(method, host, path, Bytes::new())).await;
        assert_eq!(got, *status, "{method} {host}{path}: {json}");
        let ev = h.next_request().await;
        assert_eq!(ev.method, *method);
        assert_eq!(ev.path, *path);
        if *status == 200 {
            assert_eq!(ev.decision, Decision::Allowed);
            assert_eq!(ev.rule.as_deref(), Some(*expect), "{method} {host}{path}");
        } else {
            assert_eq!(ev.decision, Decision::Blocked);
            assert_eq!(ev.reason.as_deref(), Some(*expect), "{method} {host}{path}");
        }
    }
    h.shutdown().await;
}

#[tokio::test]
async fn sni_host_mismatch_and_ip_hosts_are_refused() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    // SNI names an allowed host, Host names another.
    let (status, json) = h
        .get("api.example.test", get("evil.example.test", "/"))
        .await;
    assert_eq!(status, 403, "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with("Host mismatch")
    );
    let ev = h.next_request().await;
    assert_eq!(ev.decision, Decision::Blocked);
    assert!(ev.reason.unwrap().contains("disagree"));
    // Two Host headers.
    let two = Request::builder()
        .uri("/")
        .header("host", "api.example.test")
        .header("host", "api.example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _) = h.get("api.example.test", two).await;
    assert_eq!(status, 403);
    assert!(
        h.next_request()
            .await
            .reason
            .unwrap()
            .contains("more than one Host")
    );
    // Absolute-form target naming another host than SNI/Host.
    let abs = Request::builder()
        .uri("https://evil.example.test/x")
        .header("host", "api.example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _) = h.get("api.example.test", abs).await;
    assert_eq!(status, 403);
    assert!(h.next_request().await.reason.unwrap().contains("disagree"));
    // Host with another port than the connection's.
    let (status, _) = h
        .get("api.example.test", get("api.example.test:8443", "/"))
        .await;
    assert_eq!(status, 403);
    assert!(h.next_request().await.reason.unwrap().contains("port"));
    assert!(h.upstream.received.try_recv().is_err());
    h.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused() {
    let mut h = harness("domains: [\"*\"]", |_, _| {}).await;
    let mut s = https_sender(&h.socket(), h.tls.clone(), "api.example.test")
        .await
        .unwrap();
    let connect = Request::builder()
        .method("CONNECT")
        .uri("evil.example.test:443")
        .header("host", "evil.example.test:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&mut s, connect).await.unwrap();
    assert_eq!(status, 403);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["method"], "CONNECT");
    let ev = h.next_request().await;
    assert_eq!(ev.method, "CONNECT");
    assert_eq!(ev.decision, Decision::Blocked);
    assert_eq!(ev.reason.as_deref(), Some("CONNECT refused"));
    assert!(h.upstream.received.try_recv().is_err());
    h.shutdown().await;
}

#[tokio::test]
async fn masked_secret_swapped_only_for_scoped_host_and_header() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    let surrogates = h.proxy().surrogates();
    let (name, surrogate) = &surrogates[0];
    assert_eq!(name, "GH_TOKEN");
    assert_eq!(surrogate.len(), REAL_SECRET.len());
    assert!(surrogate.starts_with("ghp_"));
    assert_ne!(surrogate, REAL_SECRET);

    let with_token = |host: &str| {
        Request::builder()
            .uri("/user")
            .header("host", host)
            .header("authorization", format!("Bearer {surrogate}"))
            .header("x-copy", surrogate.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Scoped host: swapped in Authorization only.
    let (status, _) = h
        .get("api.example.test", with_token("api.example.test"))
        .await;
    assert_eq!(status, 200);
    let got = h.upstream.received.recv().await.unwrap();
    let header = |name: &str| {
        got.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        header("authorization"),
        vec![format!("Bearer {REAL_SECRET}")]
    );
    assert_eq!(header("x-copy"), vec![surrogate.clone()]);
    let ev = h.next_request().await;
    assert_eq!(ev.credentials.len(), 1);
    assert_eq!(ev.credentials[0].secret, "GH_TOKEN");
    assert_eq!(ev.credentials[0].action, CredentialAction::Swapped);
    assert_eq!(ev.credentials[0].header.as_deref(), Some("authorization"));

    // Another allowed host: the surrogate goes through unchanged.
    let (status, _) = h
        .get("other.example.test", with_token("other.example.test"))
        .await;
    assert_eq!(status, 200);
    let got = h.upstream.received.recv().await.unwrap();
    let auth: Vec<_> = got
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .collect();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].1, format!("Bearer {surrogate}"));
    let ev = h.next_request().await;
    assert_eq!(ev.credentials[0].action, CredentialAction::LeftMasked);

    // A foreign credential to the scoped host is stripped.
    let foreign = Request::builder()
        .uri("/user")
        .header("host", "api.example.test")
        .header("authorization", "Bearer attacker-supplied")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _) = h.get("api.example.test", foreign).await;
    assert_eq!(status, 200);
    let got = h.upstream.received.recv().await.unwrap();
    assert!(!got.headers.iter().any(|(k, _)| k == "authorization"));
    let ev = h.next_request().await;
    assert_eq!(ev.credentials[0].action, CredentialAction::Stripped);

    // The real value is nowhere in the log: not in any payload, not in
    // any rendering of an event.
    let log = h.log.clone();
    h.shutdown().await;
    let mut seen = 0;
    for rec in log.iter_from(Seq(0)) {
        let rec = rec.unwrap();
        let bytes = rec.payload.as_slice();
        assert!(
            !bytes
                .windows(REAL_SECRET.len())
                .any(|w| w == REAL_SECRET.as_bytes()),
            "real secret in the payload of event {}",
            rec.header.seq.0
        );
        let ev = rec.decode().unwrap();
        assert!(!format!("{ev:?}").contains(REAL_SECRET));
        assert!(!serde_json::to_string(&ev).unwrap().contains(REAL_SECRET));
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} events in the log");
}

#[tokio::test]
async fn oversized_body_is_refused_without_affecting_other_tasks() {
    let mut small = harness("domains: [\"*\"]", |n, _| n.max_request_body = 1024).await;
    let mut other = harness("domains: [\"*\"]", |_, _| {}).await;
    // Declared length over the cap.
    let big = Bytes::from(vec![b'x'; 64 * 1024]);
    let (status, json) = small
        .get(
            "api.example.test",
            req("POST", "api.example.test", "/up", big.clone()),
        )
        .await;
    assert_eq!(status, 413, "{json}");
    let ev = small.next_request().await;
    assert_eq!(ev.decision, Decision::Blocked);
    assert_eq!(ev.status, Some(413));
    assert!(ev.reason.unwrap().contains("1024"));
    // Streamed (chunked, no length) over the cap.
    let mut s = https_sender(&small.socket(), small.tls.clone(), "api.example.test")
        .await
        .unwrap();
    let chunks = futures_util::stream::iter((0..64).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 1024])))
    }));
    let streamed = Request::builder()
        .method("POST")
        .uri("/up")
        .header("host", "api.example.test")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let _ = &mut s;
    let s2 = {
        let sock = dial(&small.socket(), 443).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(small.tls.clone())
            .connect(name, sock)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        sender.send_request(streamed).await
    };
    if let Ok(resp) = s2 {
        assert_eq!(resp.status(), 413);
    }
    let ev = small.next_request().await;
    assert_eq!(ev.decision, Decision::Blocked);
    assert!(
        ev.bytes_in > 1024 && ev.bytes_in < 64 * 1024,
        "{}",
        ev.bytes_in
    );
    // The other task is unaffected, and the small one still serves.
    let (status, _) = other
        .get(
            "api.example.test",
            req("POST", "api.example.test", "/up", big),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(other.next_request().await.bytes_in, 64 * 1024);
    let (status, _) = small
        .get("api.example.test", get("api.example.test", "/"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(small.next_request().await.decision, Decision::Allowed);
    small.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn malformed_request_and_slow_loris_do_not_affect_other_tasks() {
    let mut h = harness("domains: [\"*\"]", |_, l| {
        l.header_timeout = Duration::from_secs(1)
    })
    .await;
    let mut other = harness("domains: [\"*\"]", |_, _| {}).await;

    // Malformed: garbage instead of a request line, over TLS.
    let sock = dial(&h.socket(), 443).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(h.tls.clone())
        .connect(name, sock)
        .await
        .unwrap();
    tls.write_all(b"\x00\x01GARBAGE \xff\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    let ev = h.next_request().await;
    assert_eq!(ev.decision, Decision::Blocked);
    assert!(ev.reason.unwrap().starts_with("malformed request"));

    // Slow-loris: half a request, then nothing.
    let sock = dial(&h.socket(), 80).await.unwrap();
    let mut slow = sock;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: api.exa")
        .await
        .unwrap();
    // Meanwhile, another task and this one serve normally.
    let (status, _) = other
        .get("api.example.test", get("api.example.test", "/"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(other.next_request().await.decision, Decision::Allowed);
    // The slow connection is closed by the proxy (wide margin).
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow connection was never closed");
    let ev = h.next_request().await;
    assert_eq!(ev.decision, Decision::Blocked);
    assert!(
        ev.reason.unwrap().starts_with("client too slow"),
        "slow-loris not recorded"
    );
    let (status, _) = h
        .get("api.example.test", get("api.example.test", "/"))
        .await;
    assert_eq!(status, 200);
    h.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn relay_header_claims_are_validated() {
    let mut h = harness("domains: [\"*\"]", |_, _| {}).await;
    // A port other than 80/443: refused and recorded.
    let mut s = tokio::net::UnixStream::connect(h.socket()).await.unwrap();
    s.write_all(&relay_header::encode_connection(1234, 22))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
    let ev = h.next_request().await;
    assert!(ev.reason.unwrap().contains("port 22"));
    // Plain garbage instead of a header.
    let mut s = tokio::net::UnixStream::connect(h.socket()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(
        h.next_request()
            .await
            .reason
            .unwrap()
            .contains("malformed relay header")
    );
    // A TLS client without SNI (dialling an IP address) gets no certificate.
    let sock = dial(&h.socket(), 443).await.unwrap();
    let ip = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let r = tokio_rustls::TlsConnector::from(h.tls.clone())
        .connect(ip, sock)
        .await;
    assert!(r.is_err(), "a TLS session without SNI was accepted");
    let ev = h.next_request().await;
    assert_eq!(ev.decision, Decision::Blocked);
    assert!(ev.reason.unwrap().contains("TLS handshake failed"));
    // An IP address as Host over plain HTTP.
    let sock = dial(&h.socket(), 80).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (status, _, _) = send(&mut sender, get("127.0.0.1", "/")).await.unwrap();
    assert_eq!(status, 403);
    let ev = h.next_request().await;
    assert_eq!(ev.reason.as_deref(), Some("IP-address host"));
    h.shutdown().await;
}

#[tokio::test]
async fn hosts_resolving_to_loopback_are_not_reached() {
    // `localhost` is allowed by the list but resolves to loopback: the
    // proxy refuses to connect there (no override).
    let mut h = harness("domains: [\"*\"]", |n, _| n.upstream_overrides.clear()).await;
    let sock = dial(&h.socket(), 80).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock))
            .await
            .unwrap();
    tokio::spawn(conn);
    let port = h.upstream.addr.port();
    let _ = port;
    let (status, _, body) = send(&mut sender, get("localhost", "/")).await.unwrap();
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let ev = h.next_request().await;
    assert_eq!(ev.decision, Decision::Failed);
    assert!(ev.reason.unwrap().contains("local addresses"));
    h.shutdown().await;
}

#[tokio::test]
async fn invalid_allowlist_blocks_everything() {
    let mut h = harness("domains: [a]\ngraphql: {}\n", |_, _| {}).await;
    let (status, json) = h
        .get("api.example.test", get("api.example.test", "/"))
        .await;
    assert_eq!(status, 403);
    assert!(
        json["message"].as_str().unwrap().contains("invalid"),
        "{json}"
    );
    let ev = h.next_request().await;
    assert_eq!(ev.reason.as_deref(), Some("allowlist unusable"));
    h.shutdown().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    let tls = client_tls(h.proxy().ca_certificate_pem(), &[b"h2"]).unwrap();
    let sock = dial(&h.socket(), 443).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, sock)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (authority, want) in [("api.example.test", 200), ("evil.example.test", 403)] {
        let r = Request::builder()
            .uri(format!("https://{authority}/h2"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(r).await.unwrap();
        assert_eq!(resp.status(), want);
        let ev = h.next_request().await;
        assert_eq!(ev.path, "/h2");
        assert_eq!(ev.status, Some(want));
    }
    h.shutdown().await;
}

#[tokio::test]
async fn relay_carries_dns_and_https_and_fails_closed_without_the_socket() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    let lo = std::net::Ipv4Addr::LOCALHOST;
    let any = |p| std::net::SocketAddr::from((lo, p));
    let addrs = relay::spawn_on(
        &h.socket(),
        relay::RelayAddrs {
            dns: any(0),
            http: any(0),
            https: any(0),
        },
    )
    .unwrap();

    // DNS over UDP: A gets loopback, AAAA an empty answer; both reported.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (qtype, answers) in [(1u16, 1u16), (28, 0)] {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["exfil-data", "evil", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        udp.send_to(&q, addrs.dns).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(20), udp.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let r = &buf[..n];
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0, "rcode");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), answers);
        if answers == 1 {
            assert_eq!(&r[n - 4..], &[127, 0, 0, 1]);
        }
        match h.next_event().await {
            Event::DnsQuery(DnsQueryV1 { name, qtype: t, .. }) => {
                assert_eq!(name, "exfil-data.evil.test");
                assert_eq!(t, qtype);
            }
            other => panic!("expected a DNS event, got {other:?}"),
        }
    }
    // DNS over TCP, and a malformed query gets FORMERR without a report.
    let mut tcp = tokio::net::TcpStream::connect(addrs.dns).await.unwrap();
    let mut q = vec![
        0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 16, 0, 1,
    ];
    q[0] = 0x56;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    tcp.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.unwrap();
    let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
    tcp.read_exact(&mut r).await.unwrap();
    assert_eq!(r[0], 0x56);
    match h.next_event().await {
        Event::DnsQuery(d) => assert_eq!((d.name.as_str(), d.qtype), ("abc", 16)),
        other => panic!("{other:?}"),
    }
    let bad = [
        0u8, 9, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
    ];
    udp.send_to(&bad, addrs.dns).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = udp.recv_from(&mut buf).await.unwrap();
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    assert_eq!(n, 12);

    // HTTPS through the relay's 443 listener.
    let tcp = tokio::net::TcpStream::connect(addrs.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(h.tls.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (status, _, _) = send(&mut sender, get("api.example.test", "/via-relay"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = h.next_request().await;
    assert_eq!(
        (ev.port, ev.path.as_str(), ev.decision),
        (443, "/via-relay", Decision::Allowed)
    );
    // Plain HTTP through the 80 listener is claimed as port 80.
    let tcp = tokio::net::TcpStream::connect(addrs.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (status, _, _) = send(&mut sender, get("evil.example.test", "/plain"))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let ev = h.next_request().await;
    assert_eq!((ev.port, ev.scheme.as_str()), (80, "http"));

    // The proxy goes away (socket removed): the relay has no way out.
    let audit = h.audit.clone();
    let _ = audit;
    h.proxy.take().unwrap().shutdown().await;
    let mut tcp = tokio::net::TcpStream::connect(addrs.https).await.unwrap();
    let _ = tcp.write_all(b"\x16\x03\x01").await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "relay kept a connection open without the socket"
    );
    assert!(buf.is_empty());
}

#[tokio::test]
async fn websocket_upgrades_are_checked_then_spliced() {
    let mut h = harness(ALLOWLIST, |_, _| {}).await;
    let upgrade = |host: &str| {
        Request::builder()
            .uri("/ws")
            .header("host", host)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Not allowlisted: 403 like any request.
    let (status, _) = h
        .get("evil.example.test", upgrade("evil.example.test"))
        .await;
    assert_eq!(status, 403);
    assert_eq!(h.next_request().await.decision, Decision::Blocked);
    // Allowed: 101, then bytes flow both ways through the proxy.
    let mut s = https_sender(&h.socket(), h.tls.clone(), "api.example.test")
        .await
        .unwrap();
    s.ready().await.unwrap();
    let resp = s.send_request(upgrade("api.example.test")).await.unwrap();
    assert_eq!(resp.status(), 101);
    let got = h.upstream.received.recv().await.unwrap();
    assert!(
        got.headers
            .iter()
            .any(|(k, v)| k == "upgrade" && v == "websocket")
    );
    let up = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(up);
    io.write_all(b"ping through the sandbox").await.unwrap();
    let mut buf = [0u8; 24];
    tokio::time::timeout(Duration::from_secs(20), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping through the sandbox");
    drop(io);
    let ev = h.next_request().await;
    assert_eq!((ev.decision, ev.status), (Decision::Allowed, Some(101)));
    h.shutdown().await;
}
