//! Forwarding allowed requests upstream: HTTP/1.1 or HTTP/2 (by ALPN) over
//! TLS verified against the system roots plus an optional extra CA.
//!
//! One client (and connection pool) per task, so tasks never share an
//! upstream connection. Names are resolved here, and a name that resolves
//! only to loopback, link-local or unspecified addresses is refused: an
//! allowlist entry such as `host: "*"` must not become a way to the airut
//! host's own services. Upstream overrides (operator-chosen URLs, e.g. a
//! local mock or an internal gateway) skip that filter. Called by `http.rs`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;

use super::http::ReqBody;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The extra CA file is unreadable or holds no certificate.
    #[error("extra CA file {path}: {reason}")]
    ExtraCa {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Tls(String),
}

/// A client whose connector only accepts public-ish addresses.
pub type FilteredClient = Client<HttpsConnector<HttpConnector<PublicResolver>>, ReqBody>;
/// A client for operator-configured override URLs (any address).
pub type OverrideClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

/// The two clients of one task.
#[derive(Clone)]
pub struct Upstream {
    /// For allowlisted hosts.
    pub normal: FilteredClient,
    /// For upstream overrides.
    pub overridden: OverrideClient,
    /// For upgrade requests (WebSocket) to allowlisted hosts: HTTP/1.1 only,
    /// since an upgrade cannot cross an HTTP/2 connection.
    pub normal_h1: FilteredClient,
    /// For upgrade requests to overrides.
    pub overridden_h1: OverrideClient,
}

/// Resolves names with the system resolver, dropping addresses of the local
/// machine's loopback, link-local and unspecified ranges.
#[derive(Clone, Debug, Default)]
pub struct PublicResolver;

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

// === impl PublicResolver ===

impl tower_service::Service<Name> for PublicResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let own = own_addresses().await;
            let public: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| !is_local(a.ip()) && !own.contains(&a.ip()))
                .collect();
            if public.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves only to local or private addresses (loopback, link-local, private ranges, this machine's own)"
                    ),
                ));
            }
            Ok(public.into_iter())
        })
    }
}

/// Loopback, unspecified, link-local (incl. cloud metadata 169.254/16),
/// private (10/8, 172.16/12, 192.168/16, 100.64/10 shared, fc00::/7 unique
/// local), and IPv4-mapped forms of them. Internal services are reached
/// through an upstream override, chosen by the operator, never by a name
/// the agent picks.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_private()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local(IpAddr::V4(v4)),
            None => {
                let first = v6.segments().first().copied().unwrap_or(0);
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (first & 0xffc0) == 0xfe80
                    || (first & 0xfe00) == 0xfc00
            }
        },
    }
}

/// The addresses of this machine's own interfaces (Linux: from /proc), so
/// a public name pointing at the airut host is refused like loopback.
async fn own_addresses() -> Vec<IpAddr> {
    let v4 = tokio::fs::read_to_string("/proc/net/fib_trie")
        .await
        .unwrap_or_default();
    let v6 = tokio::fs::read_to_string("/proc/net/if_inet6")
        .await
        .unwrap_or_default();
    let mut out = parse_fib_trie(&v4);
    out.extend(parse_if_inet6(&v6));
    out
}

/// `|-- A.B.C.D` followed by `/32 host LOCAL`: a local IPv4 address.
fn parse_fib_trie(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last = ip.parse().ok();
        } else if t.starts_with("/32 host LOCAL")
            && let Some(ip) = last
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// The first column of each line: 32 hex digits.
fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(|n| IpAddr::V6(std::net::Ipv6Addr::from(n)))
        .collect()
}

// === impl Upstream ===

impl Upstream {
    /// Builds the task's clients: system roots plus `extra_ca` (PEM).
    pub fn new(extra_ca: Option<&Path>) -> Result<Upstream, ForwardError> {
        let mut roots = system_roots().clone();
        if let Some(path) = extra_ca {
            let err = |reason: String| ForwardError::ExtraCa {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(err("no certificate in the file".to_owned()));
            }
        }
        let provider = super::tls::crypto_provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ForwardError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let filtered = || {
            let mut http = HttpConnector::new_with_resolver(PublicResolver);
            configure(&mut http);
            http
        };
        let any = || {
            let mut http = HttpConnector::new();
            configure(&mut http);
            http
        };
        Ok(Upstream {
            normal: client_builder().build(https(&tls, filtered(), true)),
            overridden: client_builder().build(https(&tls, any(), true)),
            normal_h1: client_builder().build(https(&tls, filtered(), false)),
            overridden_h1: client_builder().build(https(&tls, any(), false)),
        })
    }
}

fn configure<R>(http: &mut HttpConnector<R>) {
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
}

/// TLS over `http`, offering h2 and HTTP/1.1, or HTTP/1.1 only (upgrades).
fn https<R>(
    tls: &rustls::ClientConfig,
    http: HttpConnector<R>,
    h2: bool,
) -> HttpsConnector<HttpConnector<R>> {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1();
    if h2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.wrap_connector(http)
    }
}

fn client_builder() -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new());
    b
}

/// The machine's trust store, read once per process.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the system trust store");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system trust store loaded");
        roots
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::2",
            "::ffff:10.1.1.1",
        ] {
            assert!(is_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_local(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn own_addresses_are_read_from_proc() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\nLocal:\n     |-- 192.0.2.2\n        /32 host LOCAL\n";
        let v4 = parse_fib_trie(fib);
        assert_eq!(
            v4,
            vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([192, 0, 2, 2])]
        );
        let v6 = parse_if_inet6("fd000000000000000000000000000002 04 40 00 82     eth0\nzz\n");
        assert_eq!(v6, vec!["fd00::2".parse::<IpAddr>().unwrap()]);
        assert!(parse_fib_trie("garbage\n|-- nope\n/32 host LOCAL").is_empty());
    }

    #[tokio::test]
    async fn this_machine_has_own_addresses() {
        // Loopback at least, on Linux.
        assert!(own_addresses().await.iter().any(|ip| ip.is_loopback()));
    }

    #[test]
    fn extra_ca_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let e = Upstream::new(Some(&empty)).err().unwrap().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let missing = dir.path().join("missing.pem");
        assert!(Upstream::new(Some(&missing)).is_err());
    }
}
