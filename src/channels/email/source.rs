//! The IMAP source: watch one mailbox, record every mail in the log, then
//! remove it from the server.
//!
//! Owns the IMAP connection (implicit TLS, STARTTLS, or plain towards a
//! loopback server; LOGIN or XOAUTH2), the watch loop (IDLE re-issued every
//! `idle_timeout`, or polling), reconnection (forever, backoff 1 s doubling
//! to 5 min) and the channel's health. For each mail in the mailbox, in UID
//! order:
//!
//! 1. fetch it with `BODY.PEEK[]`;
//! 2. decide about it ([`super::inspect`]), store the raw bytes and the
//!    attachments in the log's blob store, and append `message.received`
//!    or `message.rejected` **durably** to `repo/<repo>/email` under the
//!    idempotency key `imap:<uidvalidity>:<uid>:<message-id>`;
//! 3. only then flag it `\Deleted` and expunge it.
//!
//! A crash between 2 and 3 leaves the mail on the server; after a restart
//! its key is found in the log, so it is deleted without being recorded
//! again. Every mail in the mailbox is consumed, read (`\Seen`) or not: the
//! mailbox is a work queue that airut empties (doc/email.md says why).
//!
//! Must never delete a mail whose event is not durable, and never give up
//! reconnecting. Called by [`super::spawn`].

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::{Client, Session};
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{Credentials, EmailSettings};
use super::{Inbound, tls};
use crate::config::email::{ImapMode, Security};
use crate::events::{
    AttachmentV1, ChannelHealth, ChannelHealthChangedV1, Event, EventId, MessageReceivedV1,
    MessageRejectedV1, RepoId, Seq, StreamId,
};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// First wait after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Connecting (TCP, TLS, greeting, login) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A command other than FETCH and IDLE gives up after this long.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Fetching one mail gives up after this long (a large mail on a slow link).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// The channel name in events and streams.
pub const CHANNEL: &str = "email";

/// An accepted mail, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Intake {
    /// Where its `message.received` is in the log.
    pub seq: Seq,
    /// Its event id (the causation of what follows).
    pub event_id: EventId,
    /// The event.
    pub message: MessageReceivedV1,
}

/// The health of the source, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthState {
    /// The state.
    pub health: ChannelHealth,
    /// Detail for the operator (last error, next retry).
    pub detail: String,
}

/// Test hooks: called at points of the intake where tests inject faults.
#[derive(Clone, Default)]
pub struct SourceHooks {
    /// Called with the UID after a mail's event is durable and before the
    /// mail is deleted on the server (the crash test kills the process here).
    pub after_append: Option<Arc<dyn Fn(u32) + Send + Sync>>,
}

/// What went wrong with the connection. Any of these ends the session; the
/// source reconnects after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// TCP, TLS or IMAP I/O failed, or the server closed the connection.
    #[error("{0}")]
    Connection(String),
    /// The server refused the login: an operator must fix the credentials
    /// (health `failed`; retried anyway).
    #[error("login refused: {0}")]
    Login(String),
    /// The TLS handshake failed (an untrusted or wrong certificate, or no
    /// TLS on that port): an operator must fix `imap.security`,
    /// `imap.port` or `ca_file` (health `degraded`; retried anyway).
    #[error("TLS with {host}: {source}")]
    Tls {
        /// The server name.
        host: String,
        /// rustls' error, as I/O.
        source: std::io::Error,
    },
    /// The server refused STARTTLS (or does not offer it): fix
    /// `imap.security` (health `degraded`; retried anyway).
    #[error("STARTTLS refused: {0}")]
    StartTls(String),
    /// The server did not answer in time.
    #[error("{0} timed out after {1} s")]
    Timeout(&'static str, u64),
    /// The mailbox cannot be selected (it does not exist, or no access):
    /// an operator must fix `imap.mailbox` (health `failed`; retried anyway).
    #[error("cannot open mailbox {0}")]
    Mailbox(String),
    /// The log refused an append (closed or poisoned): nothing can be
    /// recorded, so nothing is deleted.
    #[error("event log: {0}")]
    Log(String),
    /// The source is shutting down.
    #[error("shutting down")]
    Cancelled,
}

/// The running source.
pub struct SourceHandle {
    /// Its health, updated on every change.
    pub health: watch::Receiver<HealthState>,
    /// Ends when the source stopped (after cancellation).
    pub task: tokio::task::JoinHandle<()>,
}

/// A TCP or TLS connection to the IMAP server.
#[derive(Debug)]
pub enum ImapStream {
    /// No TLS (loopback only).
    Plain(TcpStream),
    /// TLS (implicit or after STARTTLS).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub(crate) type ImapSession = Session<ImapStream>;

/// Starts the source: records every mail of the mailbox and sends each
/// accepted one on `accepted`. Stops when `cancel` fires (finishing the
/// mail in hand).
pub fn spawn_source(
    settings: Arc<EmailSettings>,
    log: Log,
    accepted: mpsc::Sender<Intake>,
    cancel: CancellationToken,
    hooks: SourceHooks,
) -> SourceHandle {
    let (health_tx, health) = watch::channel(HealthState {
        health: ChannelHealth::Starting,
        detail: format!(
            "connecting to {}:{}",
            settings.imap.host, settings.imap.port
        ),
    });
    let source = Source {
        stream: StreamId::channel(&settings.repo, CHANNEL),
        settings,
        log,
        accepted,
        cancel,
        hooks,
        health: health_tx,
        seen: HashSet::new(),
    };
    let span = tracing::info_span!("email_source", repo = %source.settings.repo);
    let task = tokio::spawn(tracing::Instrument::instrument(source.run(), span));
    SourceHandle { health, task }
}

struct Source {
    settings: Arc<EmailSettings>,
    log: Log,
    stream: StreamId,
    accepted: mpsc::Sender<Intake>,
    cancel: CancellationToken,
    hooks: SourceHooks,
    health: watch::Sender<HealthState>,
    /// Idempotency keys already recorded on this channel's stream.
    seen: HashSet<String>,
}

// === impl Source ===

impl Source {
    async fn run(mut self) {
        match self.load_seen().await {
            Ok(n) => tracing::debug!(keys = n, "loaded the keys of recorded mail"),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the channel's stream; the email source does not start");
                self.set_health(
                    ChannelHealth::Failed,
                    format!("cannot read the event log: {e}"),
                )
                .await;
                return;
            }
        }
        let mut delay = BACKOFF_MIN;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let mut connected = false;
            match self.session(&mut connected).await {
                Ok(()) | Err(SourceError::Cancelled) => break,
                Err(e) => {
                    if connected {
                        delay = BACKOFF_MIN;
                    }
                    let health = match e {
                        SourceError::Login(_) | SourceError::Mailbox(_) | SourceError::Log(_) => {
                            ChannelHealth::Failed
                        }
                        _ => ChannelHealth::Degraded,
                    };
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "IMAP session ended; reconnecting");
                    self.set_health(health, format!("{e}; retrying in {} s", delay.as_secs()))
                        .await;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => break,
                    }
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
        tracing::info!("email source stopped");
    }

    /// Reads the idempotency keys recorded on the channel's stream.
    async fn load_seen(&mut self) -> Result<usize, String> {
        let log = self.log.clone();
        let stream = self.stream.clone();
        let keys = tokio::task::spawn_blocking(move || {
            let mut keys = HashSet::new();
            for record in log.stream_iter(&stream, 1) {
                let record = record.map_err(|e| e.to_string())?;
                match record.decode() {
                    Ok(Event::MessageReceived(e)) => {
                        keys.insert(e.dedup_key);
                    }
                    Ok(Event::MessageRejected(e)) => {
                        keys.insert(e.dedup_key);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(keys)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.seen = keys;
        Ok(self.seen.len())
    }

    /// Records a health change: the watch always, an event when the state
    /// (not just its detail) changes.
    async fn set_health(&self, health: ChannelHealth, detail: String) {
        let changed = self.health.borrow().health != health;
        self.health.send_replace(HealthState {
            health: health.clone(),
            detail: detail.clone(),
        });
        if !changed {
            return;
        }
        let event = Event::ChannelHealthChanged(ChannelHealthChangedV1 {
            repo: self.settings.repo.clone(),
            channel: CHANNEL.to_owned(),
            health,
            detail,
        });
        if let Err(e) = self.log.append(one(self.stream.clone(), event)).await {
            tracing::warn!(error = %e, "cannot record the channel's health");
        }
    }

    /// One connection: log in, select, then drain and wait until an error
    /// or cancellation.
    async fn session(&mut self, connected: &mut bool) -> Result<(), SourceError> {
        let imap = self.settings.imap.clone();
        let mut session = self
            .cancellable(CONNECT_TIMEOUT, "connect", connect(&self.settings))
            .await??;
        let mailbox = self
            .cancellable(COMMAND_TIMEOUT, "SELECT", session.select(&imap.mailbox))
            .await?
            .map_err(|e| match e {
                async_imap::error::Error::No(m) => {
                    SourceError::Mailbox(format!("{}: {m}", imap.mailbox))
                }
                other => imap_err(other),
            })?;
        *connected = true;
        let uidvalidity = mailbox.uid_validity.unwrap_or(0);
        let caps = self
            .cancellable(COMMAND_TIMEOUT, "CAPABILITY", session.capabilities())
            .await?
            .map_err(imap_err)?;
        let uidplus = caps.has_str("UIDPLUS");
        let idle = imap.mode == ImapMode::Idle && caps.has_str("IDLE");
        if imap.mode == ImapMode::Idle && !idle {
            tracing::warn!("the server does not offer IDLE; polling instead");
        }
        self.set_health(
            ChannelHealth::Healthy,
            format!("watching {} on {}:{}", imap.mailbox, imap.host, imap.port),
        )
        .await;
        tracing::info!(mailbox = %imap.mailbox, uidvalidity, idle, "IMAP session ready");
        loop {
            // Look (again) before waiting: mail that arrived while the last
            // batch was processed, or before IDLE starts, is never missed.
            let n = self.drain(&mut session, uidvalidity, uidplus).await?;
            while session.unsolicited_responses.try_recv().is_ok() {}
            if n > 0 {
                continue;
            }
            if idle {
                session = self.idle(session, imap.idle_timeout).await?;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(imap.poll_interval) => {}
                    _ = self.cancel.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
                        return Err(SourceError::Cancelled);
                    }
                }
            }
        }
    }

    /// Waits in IDLE until the server says something, `timeout` passes, or
    /// shutdown; then ends IDLE and hands the session back.
    async fn idle(
        &self,
        session: ImapSession,
        timeout: Duration,
    ) -> Result<ImapSession, SourceError> {
        let mut handle = session.idle();
        tokio::time::timeout(COMMAND_TIMEOUT, handle.init())
            .await
            .map_err(|_| SourceError::Timeout("IDLE", COMMAND_TIMEOUT.as_secs()))?
            .map_err(imap_err)?;
        let cancelled = {
            let (wait, _stop) = handle.wait_with_timeout(timeout);
            tokio::select! {
                r = tokio::time::timeout(timeout + Duration::from_secs(30), wait) => {
                    match r {
                        Ok(Ok(response)) => tracing::trace!(?response, "IDLE ended"),
                        Ok(Err(e)) => return Err(imap_err(e)),
                        Err(_) => tracing::debug!("IDLE re-issued"),
                    }
                    false
                }
                _ = self.cancel.cancelled() => true,
            }
        };
        let mut session = tokio::time::timeout(COMMAND_TIMEOUT, handle.done())
            .await
            .map_err(|_| SourceError::Timeout("DONE", COMMAND_TIMEOUT.as_secs()))?
            .map_err(imap_err)?;
        if cancelled {
            let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
            return Err(SourceError::Cancelled);
        }
        Ok(session)
    }

    /// Records and removes every mail in the mailbox; returns how many.
    async fn drain(
        &mut self,
        session: &mut ImapSession,
        uidvalidity: u32,
        uidplus: bool,
    ) -> Result<usize, SourceError> {
        let uids = self
            .command("UID SEARCH", session.uid_search("UNDELETED"))
            .await?;
        let mut uids: Vec<u32> = uids.into_iter().collect();
        uids.sort_unstable();
        for &uid in &uids {
            // Finish the mail in hand even when shutdown was asked for.
            let limit = self.settings.parse.max_message_bytes;
            let recorded = match fetch_size(session, uid).await? {
                Some(size) if u64::from(size) > limit => {
                    // Not downloaded: only its header is kept, as evidence.
                    let header = fetch(session, uid, "BODY.PEEK[HEADER]").await?;
                    self.record_oversized(uidvalidity, uid, header.unwrap_or_default(), size)
                        .await?;
                    true
                }
                _ => match fetch(session, uid, "BODY.PEEK[]").await? {
                    Some(raw) => {
                        self.record(uidvalidity, uid, raw).await?;
                        true
                    }
                    None => false,
                },
            };
            if recorded && let Some(hook) = &self.hooks.after_append {
                hook(uid);
            }
            self.command(
                "UID STORE",
                collect_ok(session.uid_store(uid.to_string(), "+FLAGS.SILENT (\\Deleted)")),
            )
            .await?;
            if uidplus {
                self.command(
                    "UID EXPUNGE",
                    collect_ok(session.uid_expunge(uid.to_string())),
                )
                .await?;
            } else {
                self.command("EXPUNGE", collect_ok(session.expunge()))
                    .await?;
            }
            if self.cancel.is_cancelled() {
                return Err(SourceError::Cancelled);
            }
        }
        Ok(uids.len())
    }

    /// Decides about one mail and appends its event durably (unless its key
    /// is already recorded); sends accepted mail on.
    async fn record(
        &mut self,
        uidvalidity: u32,
        uid: u32,
        raw: Vec<u8>,
    ) -> Result<(), SourceError> {
        let message_id = header_message_id(&raw);
        let key = format!("imap:{uidvalidity}:{uid}:{message_id}");
        if self.seen.contains(&key) {
            tracing::info!(uid, key = %key, "mail already recorded (crash before delete); deleting it");
            return Ok(());
        }
        let settings = Arc::clone(&self.settings);
        let log = self.log.clone();
        let repo = settings.repo.clone();
        let k = key.clone();
        let event = tokio::task::spawn_blocking(move || {
            build_event(&settings, &log, repo, k, message_id, &raw)
        })
        .await
        .map_err(|e| SourceError::Log(format!("intake task failed: {e}")))??;
        let appended = self
            .log
            .append(one(self.stream.clone(), event.clone()))
            .await
            .map_err(|e| SourceError::Log(e.to_string()))?;
        self.seen.insert(key);
        match event {
            Event::MessageReceived(message) => {
                tracing::info!(uid, sender = %message.sender, seq = %appended.first, "mail accepted");
                let intake = Intake {
                    seq: appended.first,
                    event_id: appended.ids.first().copied().unwrap_or_default(),
                    message,
                };
                // A notification only: the event is durable, and a reader
                // that is gone, slow or not listening catches up from the
                // log. Never block intake on it.
                if let Err(e) = self.accepted.try_send(intake) {
                    tracing::debug!(error = %e, "accepted mail not passed on (nobody listening, or full); it is in the log");
                }
            }
            Event::MessageRejected(e) => {
                tracing::info!(uid, sender = %e.sender, reason = ?e.reason, detail = %e.detail, "mail rejected");
            }
            _ => {}
        }
        Ok(())
    }

    /// Records a mail larger than the limit as rejected, from its header.
    async fn record_oversized(
        &mut self,
        uidvalidity: u32,
        uid: u32,
        header: Vec<u8>,
        size: u32,
    ) -> Result<(), SourceError> {
        let message_id = header_message_id(&header);
        let key = format!("imap:{uidvalidity}:{uid}:{message_id}");
        if self.seen.contains(&key) {
            return Ok(());
        }
        let log = self.log.clone();
        let blob = tokio::task::spawn_blocking(move || log.put_blob(&header).map(|b| (b, header)))
            .await
            .map_err(|e| SourceError::Log(format!("intake task failed: {e}")))?
            .map_err(|e| SourceError::Log(format!("blob store: {e}")))?;
        let (raw, header) = blob;
        let sender = mail_parser::MessageParser::new()
            .parse_headers(&header[..])
            .and_then(|m| {
                m.header_raw("From").map(|f| {
                    f.trim()
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(300)
                        .collect()
                })
            })
            .unwrap_or_default();
        let limit = self.settings.parse.max_message_bytes;
        let event = Event::MessageRejected(MessageRejectedV1 {
            repo: self.settings.repo.clone(),
            channel: CHANNEL.to_owned(),
            dedup_key: key.clone(),
            sender,
            reason: crate::events::RejectReason::Malformed,
            detail: format!(
                "message is {size} bytes, over the {limit}-byte limit; only its header was downloaded"
            ),
            raw: Some(raw),
        });
        self.log
            .append(one(self.stream.clone(), event))
            .await
            .map_err(|e| SourceError::Log(e.to_string()))?;
        tracing::info!(uid, size, "mail over the size limit rejected");
        self.seen.insert(key);
        Ok(())
    }

    async fn command<T, E: std::fmt::Display>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, SourceError> {
        tokio::time::timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| SourceError::Timeout(what, COMMAND_TIMEOUT.as_secs()))?
            .map_err(|e| SourceError::Connection(format!("{what}: {e}")))
    }

    async fn cancellable<T>(
        &self,
        limit: Duration,
        what: &'static str,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, SourceError> {
        tokio::select! {
            r = tokio::time::timeout(limit, fut) => r.map_err(|_| SourceError::Timeout(what, limit.as_secs())),
            _ = self.cancel.cancelled() => Err(SourceError::Cancelled),
        }
    }
}

/// The mail's `Message-ID` (as written, brackets removed), or empty.
fn header_message_id(raw: &[u8]) -> String {
    mail_parser::MessageParser::new()
        .parse_headers(raw)
        .and_then(|m| m.message_id().map(str::to_owned))
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect()
}

/// Inspects the mail, stores its blobs, and builds its event (blocking).
fn build_event(
    settings: &EmailSettings,
    log: &Log,
    repo: RepoId,
    dedup_key: String,
    message_id: String,
    raw: &[u8],
) -> Result<Event, SourceError> {
    let blob_err = |e: crate::log::BlobError| SourceError::Log(format!("blob store: {e}"));
    let raw_ref = log.put_blob(raw).map_err(blob_err)?;
    let inbound = super::inspect(
        raw,
        &settings.trust_config,
        &settings.allowlist,
        &settings.parse,
    );
    Ok(match inbound {
        Inbound::Accepted(m) => {
            let mut attachments = Vec::with_capacity(m.attachments.len());
            for a in &m.attachments {
                attachments.push(AttachmentV1 {
                    name: a.name.clone(),
                    original_name: a.original_name.clone().unwrap_or_default(),
                    content_type: a.content_type.clone(),
                    blob: log.put_blob(&a.data).map_err(blob_err)?,
                });
            }
            Event::MessageReceived(MessageReceivedV1 {
                repo,
                channel: CHANNEL.to_owned(),
                dedup_key,
                message_id: m.message_id.clone().unwrap_or(message_id),
                thread_keys: m.thread_refs.clone(),
                sender: m.from.clone(),
                sender_display: m.from_display.clone(),
                conversation_ref: m.conversation.map(|c| c.id),
                subject: m.subject.clone(),
                body: m.body.clone(),
                raw: Some(raw_ref),
                attachments,
                model_hint: m.model_hint.clone(),
            })
        }
        Inbound::Rejected {
            reason,
            detail,
            sender,
        } => Event::MessageRejected(MessageRejectedV1 {
            repo,
            channel: CHANNEL.to_owned(),
            dedup_key,
            sender,
            reason,
            detail,
            raw: Some(raw_ref),
        }),
    })
}

/// Fetches one mail's size (RFC822.SIZE), if the server says.
async fn fetch_size(session: &mut ImapSession, uid: u32) -> Result<Option<u32>, SourceError> {
    let work = async {
        let mut stream = session
            .uid_fetch(uid.to_string(), "(UID RFC822.SIZE)")
            .await
            .map_err(imap_err)?;
        let mut size = None;
        while let Some(item) = stream.next().await {
            let fetch = item.map_err(imap_err)?;
            if fetch.uid == Some(uid) {
                size = fetch.size;
            }
        }
        Ok(size)
    };
    tokio::time::timeout(COMMAND_TIMEOUT, work)
        .await
        .map_err(|_| SourceError::Timeout("UID FETCH", COMMAND_TIMEOUT.as_secs()))?
}

/// Fetches one mail's bytes (`BODY.PEEK[]`) or header
/// (`BODY.PEEK[HEADER]`) without setting `\Seen`. `None` when the mail
/// vanished (deleted by someone else) or has no body.
async fn fetch(
    session: &mut ImapSession,
    uid: u32,
    section: &str,
) -> Result<Option<Vec<u8>>, SourceError> {
    let header_only = section.ends_with("[HEADER]");
    let work = async {
        let mut stream = session
            .uid_fetch(uid.to_string(), format!("(UID {section})"))
            .await
            .map_err(imap_err)?;
        let mut body = None;
        while let Some(item) = stream.next().await {
            let fetch = item.map_err(imap_err)?;
            let bytes = if header_only {
                fetch.header()
            } else {
                fetch.body()
            };
            if fetch.uid == Some(uid)
                && let Some(b) = bytes
            {
                body = Some(b.to_vec());
            }
        }
        Ok(body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| SourceError::Timeout("UID FETCH", FETCH_TIMEOUT.as_secs()))?
}

/// Runs a command whose answer is a stream, draining it.
async fn collect_ok<S, T, E>(fut: impl std::future::Future<Output = Result<S, E>>) -> Result<(), E>
where
    S: futures_util::Stream<Item = Result<T, E>>,
{
    let stream = fut.await?;
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        item?;
    }
    Ok(())
}

/// Connects, protects and logs in.
async fn connect(settings: &EmailSettings) -> Result<ImapSession, SourceError> {
    let imap = &settings.imap;
    let conn =
        |e: std::io::Error| SourceError::Connection(format!("{}:{}: {e}", imap.host, imap.port));
    let tcp = TcpStream::connect((imap.host.as_str(), imap.port))
        .await
        .map_err(conn)?;
    let client = open(settings, tcp).await?;
    login(settings, client).await
}

/// Protects a connected socket as configured (implicit TLS, STARTTLS or
/// plain) and reads the greeting. Shared with [`super::probe`].
pub(crate) async fn open(
    settings: &EmailSettings,
    tcp: TcpStream,
) -> Result<Client<ImapStream>, SourceError> {
    let imap = &settings.imap;
    let _ = tcp.set_nodelay(true);
    // A connection that dies silently (a NAT forgetting it) would otherwise
    // go unnoticed until IDLE is re-issued; keepalive probes find it within
    // about three minutes.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(30))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
    let tls_setup = || -> Result<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>), SourceError> {
        let config = settings
            .trust
            .client_config()
            .map_err(|e| SourceError::Connection(e.to_string()))?;
        let name = tls::server_name(&imap.host).map_err(|e| SourceError::Connection(e.to_string()))?;
        Ok((tokio_rustls::TlsConnector::from(config), name))
    };
    let tls_err = |source: std::io::Error| SourceError::Tls {
        host: imap.host.clone(),
        source,
    };
    let client = match imap.security {
        Security::Plain => greeted(Client::new(ImapStream::Plain(tcp))).await?,
        Security::Tls => {
            let (connector, name) = tls_setup()?;
            let tls = connector.connect(name, tcp).await.map_err(tls_err)?;
            greeted(Client::new(ImapStream::Tls(Box::new(tls)))).await?
        }
        Security::StartTls => {
            let mut plain = greeted(Client::new(ImapStream::Plain(tcp))).await?;
            plain
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|e| SourceError::StartTls(e.to_string()))?;
            let ImapStream::Plain(tcp) = plain.into_inner() else {
                return Err(SourceError::Connection(
                    "STARTTLS on a TLS stream".to_owned(),
                ));
            };
            let (connector, name) = tls_setup()?;
            let tls = connector.connect(name, tcp).await.map_err(tls_err)?;
            Client::new(ImapStream::Tls(Box::new(tls)))
        }
    };
    Ok(client)
}

/// Logs in with the configured credentials (LOGIN, or XOAUTH2 with a
/// token from the endpoint). Shared with [`super::probe`].
pub(crate) async fn login(
    settings: &EmailSettings,
    client: Client<ImapStream>,
) -> Result<ImapSession, SourceError> {
    match &settings.credentials {
        Credentials::Password { username, password } => client
            .login(username, password.expose())
            .await
            .map_err(|(e, _)| login_err(e)),
        Credentials::OAuth2 { username, tokens } => {
            let response = tokens.xoauth2(username).await.map_err(|e| match e {
                // Unreachable endpoint: like a lost connection, retried.
                super::oauth::OAuthError::Transport { .. } => {
                    SourceError::Connection(e.to_string())
                }
                // Refused or unreadable: the operator must fix the config.
                _ => SourceError::Login(e.to_string()),
            })?;
            client
                .authenticate("XOAUTH2", XOAuth2(Some(response.expose().to_owned())))
                .await
                .map_err(|(e, _)| login_err(e))
        }
    }
}

/// Reads the server greeting: `* OK` (or `* PREAUTH`); anything else
/// (`* BYE`, junk) ends the attempt.
async fn greeted(mut client: Client<ImapStream>) -> Result<Client<ImapStream>, SourceError> {
    use async_imap::imap_proto::{Response, Status};
    match client.read_response().await {
        Ok(Some(greeting)) => match greeting.parsed() {
            Response::Data {
                status: Status::Ok | Status::PreAuth,
                ..
            } => Ok(client),
            other => Err(SourceError::Connection(format!(
                "unexpected greeting: {}",
                format!("{other:?}").chars().take(200).collect::<String>()
            ))),
        },
        Ok(None) => Err(SourceError::Connection(
            "the server closed the connection before its greeting".to_owned(),
        )),
        Err(e) => Err(SourceError::Connection(format!("greeting: {e}"))),
    }
}

fn imap_err(e: async_imap::error::Error) -> SourceError {
    SourceError::Connection(e.to_string())
}

fn login_err(e: async_imap::error::Error) -> SourceError {
    match e {
        async_imap::error::Error::No(m) | async_imap::error::Error::Bad(m) => SourceError::Login(m),
        other => SourceError::Connection(format!("login: {other}")),
    }
}

fn one(stream: StreamId, event: Event) -> StreamAppend {
    StreamAppend {
        stream,
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event,
            causation: None,
        }],
    }
}

/// SASL XOAUTH2: the initial response, then an empty answer to an error
/// challenge (so the server sends its final NO).
struct XOAuth2(Option<String>);

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        self.0.take().unwrap_or_default()
    }
}

// === impl ImapStream ===

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
