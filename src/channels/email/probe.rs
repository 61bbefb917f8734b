//! Reachability probes of a repo's mail servers, for `airut check`.
//!
//! IMAP: resolve, connect, protect the connection and read the greeting
//! exactly as the source does ([`super::source::open`]), log in with the
//! configured credentials (the XOAUTH2 token fetched first, so a token
//! failure is told apart from a refused login), then `EXAMINE` the
//! configured mailbox (read-only: nothing in it changes) and log out.
//! SMTP: resolve, connect, implicit TLS or STARTTLS as configured, EHLO
//! (lettre, with the sink's TLS parameters, EHLO name and AUTH mechanisms),
//! AUTH when credentials are configured, then QUIT without sending.
//!
//! Each probe runs under one short deadline ([`PROBE_TIMEOUT`]) so `check`
//! never hangs (and the SMTP probe reads at most [`SMTP_READ_LIMIT`] bytes,
//! so a server streaming garbage cannot fill memory), and a failure is a [`ProbeError`] saying which step failed
//! (DNS, connection refused, timeout, TLS, certificate, greeting, login,
//! mailbox) and which config key to look at. Must never send a mail or
//! change a mailbox. Called by `src/cli/check.rs`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::{Credentials, EmailSettings};
use super::source::{SourceError, login, open};
use super::{sink, tls};
use crate::config::email::Security;

/// Default time one probe (all its steps) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What failed, as the operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The host name does not resolve.
    Dns,
    /// Nothing listens on that port (connection refused).
    Refused,
    /// No answer before the deadline.
    Timeout,
    /// Another connection error (unreachable network, reset).
    Connect,
    /// The TLS handshake failed (no TLS on that port, protocol mismatch).
    Tls,
    /// The server's certificate is not trusted or does not match the host.
    Certificate,
    /// STARTTLS is configured but the server refused or does not offer it.
    StartTls,
    /// The server's first words are not a greeting of that protocol.
    Greeting,
    /// The OAuth2 token could not be had.
    Token,
    /// The server rejected the credentials.
    AuthRejected,
    /// The mailbox does not exist or cannot be opened.
    Mailbox,
    /// The server answered something else unexpected.
    Protocol,
}

/// A failed probe: one line naming the server, the step and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{protocol} {host}:{port}: {} ({detail}); check {hint}", kind.describe())]
pub struct ProbeError {
    /// `IMAP` or `SMTP`.
    pub protocol: &'static str,
    /// The configured host.
    pub host: String,
    /// The configured port.
    pub port: u16,
    /// What failed.
    pub kind: FailureKind,
    /// The underlying error, as the library said it.
    pub detail: String,
    /// The config keys to look at (`repos.<id>.email.imap.host`, ...).
    pub hint: String,
}

/// A successful IMAP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapReport {
    /// How the connection was protected.
    pub security: Security,
    /// The mailbox examined.
    pub mailbox: String,
    /// Messages in it.
    pub messages: u32,
}

/// A successful SMTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReport {
    /// How the connection was protected.
    pub security: Security,
    /// Whether AUTH was done (credentials configured).
    pub authenticated: bool,
}

// === impl FailureKind ===

impl FailureKind {
    /// What failed, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::Dns => "host name not found (DNS)",
            FailureKind::Refused => "connection refused (nothing listening on that port?)",
            FailureKind::Timeout => "timed out",
            FailureKind::Connect => "cannot connect",
            FailureKind::Tls => "TLS handshake failed",
            FailureKind::Certificate => "server certificate not trusted",
            FailureKind::StartTls => "STARTTLS not available",
            FailureKind::Greeting => "unexpected greeting (not a server of that protocol?)",
            FailureKind::Token => "OAuth2 token not obtained",
            FailureKind::AuthRejected => "authentication rejected",
            FailureKind::Mailbox => "mailbox missing or not accessible",
            FailureKind::Protocol => "unexpected answer",
        }
    }
}

// === impl ImapReport ===

impl std::fmt::Display for ImapReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, logged in, {} has {} message(s)",
            security_name(self.security),
            self.mailbox,
            self.messages
        )
    }
}

// === impl SmtpReport ===

impl std::fmt::Display for SmtpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, EHLO accepted, {}",
            security_name(self.security),
            if self.authenticated {
                "AUTH accepted"
            } else {
                "no AUTH (no password configured)"
            }
        )
    }
}

/// One probe's context: which server, which keys, the deadline.
struct Probe<'a> {
    protocol: &'static str,
    /// `imap` or `smtp` (the config section).
    section: &'static str,
    host: &'a str,
    port: u16,
    repo: &'a str,
    deadline: Instant,
    limit: Duration,
}

// === impl Probe ===

impl<'a> Probe<'a> {
    /// The repo's SMTP server, with `limit` from now.
    fn smtp(settings: &'a EmailSettings, limit: Duration) -> Probe<'a> {
        Probe {
            protocol: "SMTP",
            section: "smtp",
            host: &settings.smtp.host,
            port: settings.smtp.port,
            repo: &settings.repo.0,
            deadline: Instant::now() + limit,
            limit,
        }
    }
}

impl Probe<'_> {
    fn fail(&self, kind: FailureKind, detail: impl std::fmt::Display) -> ProbeError {
        let k = |key: &str| format!("repos.{}.email.{key}", self.repo);
        let s = |key: &str| k(&format!("{}.{key}", self.section));
        let hint = match kind {
            FailureKind::Dns => s("host"),
            FailureKind::Refused | FailureKind::Connect => {
                format!("{} and {}", s("host"), s("port"))
            }
            FailureKind::Timeout => format!("{}, {} and the firewall", s("host"), s("port")),
            FailureKind::Tls | FailureKind::Greeting => {
                format!("{} and {}", s("port"), s("security"))
            }
            FailureKind::Certificate => format!("{} and {}", k("ca_file"), s("host")),
            FailureKind::StartTls => s("security"),
            FailureKind::Token => k("microsoft_oauth2"),
            FailureKind::AuthRejected => format!(
                "{} and {} (or {})",
                k("username"),
                k("password"),
                k("microsoft_oauth2")
            ),
            FailureKind::Mailbox => s("mailbox"),
            FailureKind::Protocol => format!("{}, {} and {}", s("host"), s("port"), s("security")),
        };
        let detail: String = detail
            .to_string()
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        ProbeError {
            protocol: self.protocol,
            host: self.host.to_owned(),
            port: self.port,
            kind,
            detail,
            hint,
        }
    }

    /// Runs one step under the probe's deadline.
    async fn step<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, ProbeError>>,
    ) -> Result<T, ProbeError> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.fail(
                FailureKind::Timeout,
                format!(
                    "no answer within {} s while {what}",
                    self.limit.as_secs_f32()
                ),
            )),
        }
    }

    /// Resolves the host and connects to the first address that answers.
    async fn tcp(&self) -> Result<TcpStream, ProbeError> {
        let addrs: Vec<SocketAddr> = self
            .step("resolving the host", async {
                tokio::net::lookup_host((self.host, self.port))
                    .await
                    .map(Iterator::collect)
                    .map_err(|e| self.fail(FailureKind::Dns, e))
            })
            .await?;
        if addrs.is_empty() {
            return Err(self.fail(FailureKind::Dns, "no address"));
        }
        self.step("connecting", async {
            let mut last = None;
            for addr in &addrs {
                match TcpStream::connect(addr).await {
                    Ok(tcp) => return Ok(tcp),
                    Err(e) => last = Some((addr, e)),
                }
            }
            let (addr, e) = last.expect("at least one address was tried");
            let kind = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => FailureKind::Refused,
                std::io::ErrorKind::TimedOut => FailureKind::Timeout,
                _ => FailureKind::Connect,
            };
            Err(self.fail(kind, format!("{addr}: {e}")))
        })
        .await
    }

    fn tls_failure(&self, e: &(dyn std::error::Error + 'static)) -> ProbeError {
        let kind = if is_certificate_error(e) {
            FailureKind::Certificate
        } else {
            FailureKind::Tls
        };
        self.fail(kind, chain(e))
    }
}

/// Probes the repo's IMAP server: connect, TLS as configured, log in,
/// examine the mailbox, log out; within `limit`.
pub async fn probe_imap(
    settings: &EmailSettings,
    limit: Duration,
) -> Result<ImapReport, ProbeError> {
    let imap = &settings.imap;
    let p = Probe {
        protocol: "IMAP",
        section: "imap",
        host: &imap.host,
        port: imap.port,
        repo: &settings.repo.0,
        deadline: Instant::now() + limit,
        limit,
    };
    let tcp = p.tcp().await?;
    let client = p
        .step("reading the greeting", async {
            open(settings, tcp).await.map_err(|e| source_failure(&p, e))
        })
        .await?;
    if let Credentials::OAuth2 { username, tokens } = &settings.credentials {
        // Fetched (and cached) before the login, so that a token failure
        // is not reported as a refused login.
        p.step("fetching the OAuth2 token", async {
            tokens
                .xoauth2(username)
                .await
                .map_err(|e| p.fail(FailureKind::Token, e))
        })
        .await?;
    }
    let mut session = p
        .step("logging in", async {
            login(settings, client)
                .await
                .map_err(|e| source_failure(&p, e))
        })
        .await?;
    let mailbox = p
        .step("opening the mailbox", async {
            session.examine(&imap.mailbox).await.map_err(|e| match e {
                async_imap::error::Error::No(m) | async_imap::error::Error::Bad(m) => {
                    p.fail(FailureKind::Mailbox, format!("{}: {m}", imap.mailbox))
                }
                other => p.fail(FailureKind::Protocol, other),
            })
        })
        .await?;
    // The check passed; a slow LOGOUT does not make it fail.
    let _ = tokio::time::timeout_at(p.deadline, session.logout()).await;
    Ok(ImapReport {
        security: imap.security,
        mailbox: imap.mailbox.clone(),
        messages: mailbox.exists,
    })
}

/// Probes the repo's SMTP server: connect, TLS as configured, EHLO, AUTH
/// when credentials are configured, QUIT; never sends; within `limit`.
pub async fn probe_smtp(
    settings: &EmailSettings,
    limit: Duration,
) -> Result<SmtpReport, ProbeError> {
    let p = Probe::smtp(settings, limit);
    let (mut conn, authenticated) = open_smtp(&p, settings).await.map_err(|(e, _)| e)?;
    let _ = tokio::time::timeout_at(p.deadline, conn.quit()).await;
    Ok(SmtpReport {
        security: settings.smtp.security,
        authenticated,
    })
}

/// Sends one message as the SMTP sink does: a session opened like the
/// probe's (every answer read through a stream capped at
/// [`SMTP_READ_LIMIT`], so a hostile server cannot make airut buffer
/// without end), the message, QUIT; all within `limit`. An error says what
/// failed and whether it is worth a retry (a 4xx answer).
pub(crate) async fn send_smtp(
    settings: &EmailSettings,
    message: &lettre::Message,
    limit: Duration,
) -> Result<(), (String, bool)> {
    let p = Probe::smtp(settings, limit);
    let (mut conn, _) = open_smtp(&p, settings)
        .await
        .map_err(|(e, transient)| (e.to_string(), transient))?;
    let sent = tokio::time::timeout_at(
        p.deadline,
        conn.send(message.envelope(), &message.formatted()),
    )
    .await;
    match sent {
        Ok(Ok(_)) => {
            // Accepted: a slow QUIT does not make it a failure.
            let _ = tokio::time::timeout_at(p.deadline, conn.quit()).await;
            Ok(())
        }
        Ok(Err(e)) => {
            conn.abort().await;
            Err((sink::smtp_error_text(&e), e.is_transient()))
        }
        Err(_) => Err((
            format!(
                "no answer from {} within {} s while sending the message",
                settings.smtp.host,
                limit.as_secs()
            ),
            false,
        )),
    }
}

/// Opens an SMTP session: connect, TLS as configured, greeting and EHLO,
/// STARTTLS, AUTH when credentials are configured. Returns the session and
/// whether it authenticated; an error with whether it is transient.
async fn open_smtp(
    p: &Probe<'_>,
    settings: &EmailSettings,
) -> Result<(AsyncSmtpConnection, bool), (ProbeError, bool)> {
    let smtp = &settings.smtp;
    let fatal = |e: ProbeError| (e, false);
    let hello = sink::hello_name(settings).unwrap_or_default();
    let params = match smtp.security {
        Security::Plain => None,
        Security::Tls | Security::StartTls => Some(
            settings
                .trust
                .smtp_parameters(&smtp.host)
                .map_err(|e| fatal(p.fail(FailureKind::Tls, e)))?,
        ),
    };
    let tcp = p.tcp().await.map_err(fatal)?;
    let stream: Box<dyn AsyncTokioStream> = if smtp.security == Security::Tls {
        let config = settings
            .trust
            .client_config()
            .map_err(|e| fatal(p.fail(FailureKind::Tls, e)))?;
        let name = tls::server_name(&smtp.host).map_err(|e| fatal(p.fail(FailureKind::Tls, e)))?;
        let tls = p
            .step("the TLS handshake", async {
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| p.tls_failure(&e))
            })
            .await
            .map_err(fatal)?;
        Box::new(Capped::new(tls))
    } else {
        Box::new(Capped::new(tcp))
    };
    let mut conn = within(p, "reading the greeting and EHLO", async {
        AsyncSmtpConnection::connect_with_transport(stream, &hello)
            .await
            .map_err(|e| (smtp_failure(p, FailureKind::Greeting, &e), e.is_transient()))
    })
    .await?;
    if smtp.security == Security::StartTls {
        if !conn.can_starttls() {
            conn.abort().await;
            return Err(fatal(p.fail(
                FailureKind::StartTls,
                "the server does not offer STARTTLS in its EHLO answer",
            )));
        }
        let Some(params) = params else {
            return Err(fatal(p.fail(FailureKind::Tls, "no TLS parameters")));
        };
        within(p, "STARTTLS", async {
            conn.starttls(params, &hello).await.map_err(|e| {
                if e.is_transient() || e.is_permanent() {
                    (smtp_failure(p, FailureKind::StartTls, &e), e.is_transient())
                } else {
                    fatal(p.tls_failure(&e))
                }
            })
        })
        .await?;
    }
    let auth = p
        .step("fetching the OAuth2 token", async {
            sink::smtp_auth(settings)
                .await
                .map_err(|e| p.fail(FailureKind::Token, e))
        })
        .await
        .map_err(fatal)?;
    let authenticated = auth.is_some();
    if let Some((credentials, mechanisms)) = auth {
        within(p, "AUTH", async {
            conn.auth(&mechanisms, &credentials)
                .await
                .map(|_| ())
                .map_err(|e| {
                    (
                        smtp_failure(p, FailureKind::AuthRejected, &e),
                        e.is_transient(),
                    )
                })
        })
        .await?;
    }
    Ok((conn, authenticated))
}

/// [`Probe::step`] for steps whose error also says whether a retry may
/// help.
async fn within<T>(
    p: &Probe<'_>,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, (ProbeError, bool)>>,
) -> Result<T, (ProbeError, bool)> {
    match tokio::time::timeout_at(p.deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err((
            p.fail(
                FailureKind::Timeout,
                format!("no answer within {} s while {what}", p.limit.as_secs_f32()),
            ),
            false,
        )),
    }
}

/// Maps the source's errors (greeting, TLS, login) to what failed.
fn source_failure(p: &Probe<'_>, e: SourceError) -> ProbeError {
    match e {
        SourceError::Tls { source, .. } => p.tls_failure(&source),
        SourceError::StartTls(m) => p.fail(FailureKind::StartTls, m),
        SourceError::Login(m) => p.fail(FailureKind::AuthRejected, m),
        SourceError::Connection(m) if m.contains("greeting") => p.fail(FailureKind::Greeting, m),
        SourceError::Mailbox(m) => p.fail(FailureKind::Mailbox, m),
        other => p.fail(FailureKind::Protocol, other),
    }
}

/// Maps a lettre error: a server's answer (4xx/5xx) or unreadable reply is
/// `answer`; connection-level TLS trouble is TLS or certificate.
fn smtp_failure(
    p: &Probe<'_>,
    answer: FailureKind,
    e: &lettre::transport::smtp::Error,
) -> ProbeError {
    if e.is_tls() || is_certificate_error(e) {
        return p.tls_failure(e);
    }
    if e.is_timeout() {
        return p.fail(FailureKind::Timeout, chain(e));
    }
    if e.is_client() && answer == FailureKind::AuthRejected {
        // No mechanism both sides know: as good as a refusal.
        return p.fail(FailureKind::AuthRejected, chain(e));
    }
    p.fail(answer, chain(e))
}

/// Whether rustls refused the server's certificate, anywhere in the chain.
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        cur = err.source();
    }
    false
}

/// An error and its sources, joined with `: `.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = err.source();
    }
    text
}

fn security_name(s: Security) -> &'static str {
    match s {
        Security::Tls => "TLS",
        Security::StartTls => "STARTTLS",
        Security::Plain => "plain (loopback)",
    }
}

/// Most bytes the SMTP probe reads from a server: a greeting, EHLO and
/// AUTH answers are a few KiB, and lettre reads a reply line without a
/// bound, so a hostile server streaming garbage is cut off here.
pub const SMTP_READ_LIMIT: usize = 1 << 20;

/// A connection lettre can drive (its own connect would redo DNS and TCP),
/// reading at most `left` more bytes.
#[derive(Debug)]
struct Capped<S> {
    inner: S,
    left: usize,
}

// === impl Capped ===

impl<S> Capped<S> {
    fn new(inner: S) -> Self {
        Capped {
            inner,
            left: SMTP_READ_LIMIT,
        }
    }
}

impl AsyncTokioStream for Capped<TcpStream> {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

impl AsyncTokioStream for Capped<tokio_rustls::client::TlsStream<TcpStream>> {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.get_ref().0.peer_addr()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the server sent more than {SMTP_READ_LIMIT} bytes without a complete answer"
            ))));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = buf.filled().len().saturating_sub(before);
            this.left = this.left.saturating_sub(n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_server_the_step_and_the_keys() {
        let p = Probe {
            protocol: "IMAP",
            section: "imap",
            host: "imap.example.net",
            port: 993,
            repo: "widgets",
            deadline: Instant::now(),
            limit: PROBE_TIMEOUT,
        };
        let e = p.fail(FailureKind::Mailbox, "Work\r\n: no such mailbox");
        let text = e.to_string();
        assert_eq!(
            text,
            "IMAP imap.example.net:993: mailbox missing or not accessible (Work: no such mailbox); check repos.widgets.email.imap.mailbox"
        );
        let e = p.fail(FailureKind::Certificate, "x");
        assert!(e.to_string().contains("repos.widgets.email.ca_file"), "{e}");
    }
}
