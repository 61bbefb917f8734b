//! Real parts for tests and `airut bench proxy`: a local TLS upstream with
//! its own CA that echoes what it received, and a client that talks to a
//! task socket the way the relay does (PROXY v2 header, then TLS with SNI).
//!
//! Not used by the server itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::mpsc;

use super::relay_header;

/// What the echo upstream received, one per request.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers (lower-case name, value), duplicates kept.
    pub headers: Vec<(String, String)>,
    /// Body length.
    pub body_len: usize,
}

/// A local HTTPS server (cert for `localhost` and 127.0.0.1, signed by its
/// own CA) answering every request with 200 and a small JSON echo.
pub struct EchoUpstream {
    /// `https://localhost:PORT`.
    pub url: String,
    /// Its address.
    pub addr: SocketAddr,
    /// PEM of its CA, written to a file (for `extra_ca_file`).
    pub ca_file: PathBuf,
    /// Every request it got.
    pub received: mpsc::UnboundedReceiver<Received>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl EchoUpstream ===

impl EchoUpstream {
    /// Starts it on 127.0.0.1 (a free port).
    pub async fn start() -> anyhow::Result<EchoUpstream> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "airut test upstream CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = params.signed_by(&key, &issuer)?;
        let dir = tempfile::tempdir()?;
        let ca_file = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_file, ca.pem())?;

        let provider = super::tls::crypto_provider();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| echo(req, tx.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(EchoUpstream {
            url: format!("https://localhost:{}", addr.port()),
            addr,
            ca_file,
            received,
            _dir: dir,
            task,
        })
    }
}

async fn echo(
    mut req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Received>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // An upgrade request: answer 101 and echo the raw bytes that follow.
    let upgrade = req
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req.into_body().collect().await?.to_bytes();
    let _ = tx.send(Received {
        method: method.clone(),
        path: path.clone(),
        headers,
        body_len: body.len(),
    });
    if let Some(on) = upgrade {
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        resp.headers_mut().insert(
            "upgrade",
            hyper::header::HeaderValue::from_static("websocket"),
        );
        return Ok(resp);
    }
    let json = format!(r#"{{"ok":true,"method":"{method}","len":{}}}"#, body.len());
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A rustls client config trusting exactly `ca_pem`, offering `alpn`.
pub fn client_tls(ca_pem: &str, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = super::tls::crypto_provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Opens a connection to a task socket as the relay would for `port`.
pub async fn dial(socket: &Path, port: u16) -> std::io::Result<UnixStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(&relay_header::encode_connection(40000, port))
        .await?;
    Ok(s)
}

/// An HTTP/1.1 sender over TLS (SNI `sni`) through the task socket.
pub async fn https_sender(
    socket: &Path,
    tls: Arc<rustls::ClientConfig>,
    sni: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let s = dial(socket, 443).await?;
    let name = ServerName::try_from(sni.to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, s)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

/// A GET/POST helper: sends and collects the response.
pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// The DER of the first certificate in `pem`.
pub fn first_cert(pem: &str) -> Option<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()
}
