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
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| !is_local(a.ip())).collect();
            if public.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to local addresses (loopback, link-local)"),
                ));
            }
            Ok(public.into_iter())
        })
    }
}

/// Loopback, unspecified, link-local (incl. cloud metadata 169.254/16),
/// and IPv4-mapped forms of them.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (v6.segments().first().copied().unwrap_or(0) & 0xffc0) == 0xfe80
            }
        },
    }
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
        for ip in ["93.184.216.34", "10.0.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_local(ip.parse().unwrap()), "{ip}");
        }
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
