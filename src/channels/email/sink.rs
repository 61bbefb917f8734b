//! The SMTP sink: replies, acknowledgements and error mails, each sent at
//! most once and recorded.
//!
//! Owns the shape of outbound mail (multipart/alternative of the agent's
//! markdown as text and as sanitized HTML, outbox files attached; our own
//! Message-ID; In-Reply-To and the References chain; `Re: [ID:…]`
//! subjects; Date; `Auto-Submitted: auto-replied`), the SMTP session
//! (lettre: implicit TLS, STARTTLS, or plain towards loopback; PLAIN/LOGIN
//! or XOAUTH2), the retry policy (one retry on a transient 4xx answer),
//! and the events around a send:
//!
//! 1. `reply.started` (durable) with the reply's key and Message-ID,
//!    before the first byte goes to the server;
//! 2. `reply.sent` or `reply.failed`, caused by it.
//!
//! A key that already has a `reply.started` is never sent again: if its
//! outcome is missing (a crash mid-send), `reply.failed` records that the
//! mail may or may not have gone out. Called by the gateway through
//! [`EmailSink::send`].

use std::sync::Arc;
use std::time::Duration;

use lettre::Message;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials as SmtpCredentials, Mechanism};
use lettre::transport::smtp::extension::ClientId;

use super::config::{Credentials, EmailSettings};
use super::markdown;
use super::source::CHANNEL;
use crate::events::{
    ConversationId, Event, EventId, EventType, MessageReceivedV1, ReplyFailedV1, ReplyKind,
    ReplySentV1, ReplyStartedV1, StreamId, TaskId,
};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// One SMTP attempt gives up after this long.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(120);
/// Wait before the one retry after a transient failure.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);
/// Most References kept (the first and the newest).
pub const MAX_REFERENCES: usize = 20;

/// The text of an acknowledgement.
pub const ACK_TEXT: &str = "I've started working on this and will reply shortly.";

/// A mail to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundReply {
    /// Idempotency key: one mail per key, ever (e.g. `ack:<message event id>`,
    /// `result:<task id>`).
    pub key: String,
    /// The conversation (names the subject tag and our Message-ID); none
    /// for a mail answered before a conversation exists (a dismissal).
    pub conversation: Option<ConversationId>,
    /// The task it answers, if any.
    pub task: Option<TaskId>,
    /// Acknowledgement, result or error.
    pub kind: ReplyKind,
    /// The recipient: the authenticated sender of the mail answered.
    pub to: String,
    /// The subject of the mail answered (decoded).
    pub subject: String,
    /// Message-ID of the mail answered (empty if it had none).
    pub in_reply_to: String,
    /// The thread before the mail answered, oldest first (its References).
    pub references: Vec<String>,
    /// The text, as markdown.
    pub body: String,
    /// Files to attach.
    pub attachments: Vec<OutboundAttachment>,
    /// The event this reply reacts to (recorded as causation of `reply.started`).
    pub causation: Option<EventId>,
}

/// A file attached to a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundAttachment {
    /// File name shown to the recipient.
    pub name: String,
    /// MIME type (`application/octet-stream` when unknown).
    pub content_type: String,
    /// The content.
    pub data: Vec<u8>,
}

/// What became of a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Accepted by the SMTP server now; `reply.sent` recorded.
    Sent {
        /// Our Message-ID (with angle brackets).
        message_id: String,
        /// Attempts made (1 or 2).
        attempts: u32,
    },
    /// This key was sent before; nothing was sent now.
    AlreadySent {
        /// The Message-ID it was sent with.
        message_id: String,
    },
    /// Not delivered; `reply.failed` recorded (now or before). Never retried
    /// under the same key.
    Failed {
        /// Why.
        error: String,
    },
}

/// The log could not record the reply's events. Nothing was sent if
/// `reply.started` could not be appended.
#[derive(Debug, thiserror::Error)]
#[error("event log: {0}")]
pub struct SinkError(pub String);

/// Sends replies for one repo. Cheap to clone.
#[derive(Clone)]
pub struct EmailSink {
    settings: Arc<EmailSettings>,
    log: Log,
    /// Keys whose last attempt in this process failed for sure (the server
    /// refused it): the gateway may retry those under the same key.
    refused: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// `Auto-Submitted: auto-replied` (RFC 3834): tells mail systems (and
/// other bots) not to answer automatically.
#[derive(Clone, Debug)]
struct AutoSubmitted;

/// The EHLO name: the domain of our address, when there is one. Shared
/// with [`super::probe`].
pub(crate) fn hello_name(settings: &EmailSettings) -> Option<ClientId> {
    let domain = settings.message_id_domain();
    (!domain.is_empty()).then(|| ClientId::Domain(domain.to_owned()))
}

/// What SMTP AUTH uses: PLAIN/LOGIN with the password, XOAUTH2 with a
/// token; `None` (no AUTH) when the password is empty. Shared with
/// [`super::probe`].
pub(crate) async fn smtp_auth(
    settings: &EmailSettings,
) -> Result<Option<(SmtpCredentials, Vec<Mechanism>)>, super::oauth::OAuthError> {
    Ok(match &settings.credentials {
        Credentials::Password { password, .. } if password.expose().is_empty() => None,
        Credentials::Password { username, password } => Some((
            SmtpCredentials::new(username.clone(), password.expose().to_owned()),
            vec![Mechanism::Plain, Mechanism::Login],
        )),
        Credentials::OAuth2 { username, tokens } => {
            let token = tokens.token().await?;
            Some((
                SmtpCredentials::new(username.clone(), token.expose().to_owned()),
                vec![Mechanism::Xoauth2],
            ))
        }
    })
}

// === impl EmailSink ===

impl EmailSink {
    /// A sink sending with `settings`, recording in `log`.
    pub fn new(settings: Arc<EmailSettings>, log: Log) -> Self {
        EmailSink {
            settings,
            log,
            refused: Arc::default(),
        }
    }

    /// Sends `reply` at most once under its key, recording the outcome.
    pub async fn send(&self, reply: OutboundReply) -> Result<SendOutcome, SinkError> {
        let prior = self.prior(&reply).await?;
        match prior {
            Prior::Sent(message_id) => return Ok(SendOutcome::AlreadySent { message_id }),
            Prior::Failed(error) => return Ok(SendOutcome::Failed { error }),
            Prior::Interrupted(started) => {
                let error = "interrupted by a restart while sending; it may or may not have been \
                             delivered, and is not sent again"
                    .to_owned();
                self.record_failed(&reply, started, error.clone(), 1)
                    .await?;
                return Ok(SendOutcome::Failed { error });
            }
            Prior::None => {}
        }
        let message_id = self.message_id(&reply);
        let started = self
            .record_started(&reply, &message_id)
            .await
            .map_err(|e| SinkError(e.to_string()))?;

        let message = match self.build(&reply, &message_id) {
            Ok(m) => m,
            Err(error) => {
                self.record_failed(&reply, started, error.clone(), 0)
                    .await?;
                return Ok(SendOutcome::Failed { error });
            }
        };
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match self.smtp_send(&message).await {
                Ok(()) => break Ok(()),
                Err((error, transient)) if transient && attempts == 1 => {
                    tracing::warn!(key = %reply.key, error = %error, "SMTP refused for now; retrying once");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err((error, _)) => break Err(error),
            }
        };
        match result {
            Ok(()) => {
                let sent = Event::ReplySent(ReplySentV1 {
                    conversation: reply.conversation.unwrap_or(ConversationId(0)),
                    task: reply.task,
                    channel: CHANNEL.to_owned(),
                    kind: reply.kind.clone(),
                    message_id: message_id.clone(),
                    in_reply_to: bracket(&reply.in_reply_to).unwrap_or_default(),
                    attachments: reply.attachments.iter().map(|a| a.name.clone()).collect(),
                });
                self.append_caused(&reply, sent, started).await?;
                tracing::info!(key = %reply.key, message_id = %message_id, attempts, "reply sent");
                Ok(SendOutcome::Sent {
                    message_id,
                    attempts,
                })
            }
            Err(error) => {
                tracing::warn!(key = %reply.key, error = %error, attempts, "reply failed");
                self.record_failed(&reply, started, error.clone(), attempts)
                    .await?;
                Ok(SendOutcome::Failed { error })
            }
        }
    }

    /// Sends `reply` without recording its outcome (the caller records
    /// `reply.sent` / `reply.failed`, as the gateway does), at most once
    /// per key: `reply.started` is appended before the first attempt; a
    /// retry is sent only after an attempt this process saw refused; a key
    /// started by an earlier process (interrupted mid-send) is not sent
    /// again. The error is the text to record.
    pub async fn deliver(&self, reply: OutboundReply) -> Result<crate::gateway::Delivered, String> {
        let prior = self.started_for(&reply).await.map_err(|e| e.to_string())?;
        let was_refused = self
            .refused
            .lock()
            .map(|set| set.contains(&reply.key))
            .unwrap_or(false);
        let message_id = match prior {
            Some(_) if !was_refused => {
                return Err(
                    "an earlier attempt to send this reply was interrupted by a restart; \
                            it may or may not have been delivered, and is not sent again"
                        .to_owned(),
                );
            }
            Some(message_id) => message_id,
            None => {
                let message_id = self.message_id(&reply);
                self.record_started(&reply, &message_id)
                    .await
                    .map_err(|e| format!("event log: {e}"))?;
                message_id
            }
        };
        let refused = |key: &str| {
            if let Ok(mut set) = self.refused.lock() {
                set.insert(key.to_owned());
            }
        };
        let message = match self.build(&reply, &message_id) {
            Ok(m) => m,
            Err(e) => {
                refused(&reply.key);
                return Err(e);
            }
        };
        match self.smtp_send(&message).await {
            Ok(()) => {
                if let Ok(mut set) = self.refused.lock() {
                    set.remove(&reply.key);
                }
                tracing::info!(key = %reply.key, message_id = %message_id, "reply sent");
                Ok(crate::gateway::Delivered {
                    message_id,
                    attachments: reply.attachments.iter().map(|a| a.name.clone()).collect(),
                })
            }
            Err((error, _)) => {
                refused(&reply.key);
                Err(error)
            }
        }
    }

    /// The dashboard's base URL, for links in acknowledgements.
    pub fn dashboard_url(&self) -> Option<&str> {
        self.settings.dashboard_url.as_deref()
    }

    /// The Message-ID of an earlier `reply.started` for this key, if any.
    async fn started_for(&self, reply: &OutboundReply) -> Result<Option<String>, SinkError> {
        let log = self.log.clone();
        let stream = self.stream(reply);
        let key = reply.key.clone();
        tokio::task::spawn_blocking(move || {
            for record in log.stream_iter(&stream, 1) {
                let record = record.map_err(|e| SinkError(e.to_string()))?;
                if record.header.event_type != EventType::ReplyStarted.code() {
                    continue;
                }
                if let Event::ReplyStarted(e) =
                    record.decode().map_err(|e| SinkError(e.to_string()))?
                    && e.key == key
                    && e.channel == CHANNEL
                {
                    return Ok(Some(e.message_id));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| SinkError(format!("reading the conversation failed: {e}")))?
    }

    /// The mail for `reply` as it would be sent (for tests and previews).
    pub fn build(&self, reply: &OutboundReply, message_id: &str) -> Result<Message, String> {
        let from: Mailbox = self
            .settings
            .from
            .parse()
            .map_err(|e| format!("email.from {:?}: {e}", self.settings.from))?;
        let to: Mailbox = reply
            .to
            .parse()
            .map_err(|e| format!("recipient {:?}: {e}", reply.to))?;
        let mut builder = Message::builder()
            .from(from)
            .to(to)
            .subject(reply_subject(&reply.subject, reply.conversation))
            .date_now()
            .message_id(Some(message_id.to_owned()))
            .header(AutoSubmitted);
        if let Some(irt) = bracket(&reply.in_reply_to) {
            builder = builder.in_reply_to(irt);
        }
        let references = references(&reply.references, &reply.in_reply_to);
        if !references.is_empty() {
            builder = builder.references(references.join(" "));
        }
        let alternative = MultiPart::alternative()
            .singlepart(SinglePart::plain(reply.body.clone()))
            .singlepart(SinglePart::html(markdown::to_html(&reply.body)));
        let body = if reply.attachments.is_empty() {
            alternative
        } else {
            let mut mixed = MultiPart::mixed().multipart(alternative);
            for a in &reply.attachments {
                let content_type = ContentType::parse(&a.content_type).unwrap_or_else(|_| {
                    ContentType::parse("application/octet-stream").expect("a valid MIME type")
                });
                mixed = mixed.singlepart(
                    Attachment::new(safe_filename(&a.name)).body(a.data.clone(), content_type),
                );
            }
            mixed
        };
        builder
            .multipart(body)
            .map_err(|e| format!("cannot build the mail: {e}"))
    }

    /// The stream a reply's events go to: its conversation's, else the
    /// channel's.
    fn stream(&self, reply: &OutboundReply) -> StreamId {
        reply
            .conversation
            .map(|c| c.stream())
            .unwrap_or_else(|| StreamId::channel(&self.settings.repo, CHANNEL))
    }

    /// Our Message-ID for this reply: `<airut.<conv>.<unix>.<nonce>@<domain>>`,
    /// the nonce derived from the key.
    fn message_id(&self, reply: &OutboundReply) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let hash = blake3::hash(reply.key.as_bytes());
        let nonce: String = hash
            .as_bytes()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        let domain = match self.settings.message_id_domain() {
            "" => "localhost",
            d => d,
        };
        match reply.conversation {
            Some(c) => format!("<airut.{c}.{now}.{nonce}@{domain}>"),
            // Not of airut's form: a reply to it must not name a conversation.
            None => format!("<reply.{now}.{nonce}@{domain}>"),
        }
    }

    /// One delivery attempt: a session opened like `airut check`'s probe,
    /// with every answer read through a capped stream (a hostile or broken
    /// server cannot make airut buffer without end), within `SMTP_TIMEOUT`.
    async fn smtp_send(&self, message: &Message) -> Result<(), (String, bool)> {
        super::probe::send_smtp(&self.settings, message, SMTP_TIMEOUT).await
    }

    /// Appends `reply.started` for `reply` under `message_id` (durable:
    /// before the first SMTP attempt, so a key is never sent twice);
    /// returns its event id.
    async fn record_started(
        &self,
        reply: &OutboundReply,
        message_id: &str,
    ) -> Result<EventId, crate::log::AppendError> {
        let started = Event::ReplyStarted(ReplyStartedV1 {
            conversation: reply.conversation.unwrap_or(ConversationId(0)),
            task: reply.task,
            channel: CHANNEL.to_owned(),
            kind: reply.kind.clone(),
            key: reply.key.clone(),
            message_id: message_id.to_owned(),
        });
        let appended = self
            .log
            .append(StreamAppend {
                stream: self.stream(reply),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event: started,
                    causation: reply.causation,
                }],
            })
            .await?;
        Ok(appended.ids.first().copied().unwrap_or_default())
    }

    async fn append_caused(
        &self,
        reply: &OutboundReply,
        event: Event,
        cause: EventId,
    ) -> Result<(), SinkError> {
        self.log
            .append(StreamAppend {
                stream: self.stream(reply),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event,
                    causation: Some(cause),
                }],
            })
            .await
            .map(|_| ())
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn record_failed(
        &self,
        reply: &OutboundReply,
        started: EventId,
        error: String,
        attempts: u32,
    ) -> Result<(), SinkError> {
        let failed = Event::ReplyFailed(ReplyFailedV1 {
            conversation: reply.conversation.unwrap_or(ConversationId(0)),
            task: reply.task,
            channel: CHANNEL.to_owned(),
            kind: reply.kind.clone(),
            error,
            attempts,
        });
        self.append_caused(reply, failed, started).await
    }

    /// What the log says about this key already.
    async fn prior(&self, reply: &OutboundReply) -> Result<Prior, SinkError> {
        let log = self.log.clone();
        let stream = self.stream(reply);
        let key = reply.key.clone();
        tokio::task::spawn_blocking(move || {
            let mut started: Option<(EventId, String)> = None;
            // Conversation streams hold proxy and container events too:
            // decode only the reply events.
            let wanted = [
                EventType::ReplyStarted.code(),
                EventType::ReplySent.code(),
                EventType::ReplyFailed.code(),
            ];
            for record in log.stream_iter(&stream, 1) {
                let record = record.map_err(|e| SinkError(e.to_string()))?;
                if !wanted.contains(&record.header.event_type) {
                    continue;
                }
                let cause = record.header.causation;
                match record.decode().map_err(|e| SinkError(e.to_string()))? {
                    Event::ReplyStarted(e) if e.key == key && e.channel == CHANNEL => {
                        started = Some((record.header.event_id, e.message_id));
                    }
                    Event::ReplySent(_)
                        if started.is_some() && cause == started.as_ref().map(|s| s.0) =>
                    {
                        return Ok(Prior::Sent(started.map(|s| s.1).unwrap_or_default()));
                    }
                    Event::ReplyFailed(e)
                        if started.is_some() && cause == started.as_ref().map(|s| s.0) =>
                    {
                        return Ok(Prior::Failed(e.error));
                    }
                    _ => {}
                }
            }
            Ok(match started {
                Some((id, _)) => Prior::Interrupted(id),
                None => Prior::None,
            })
        })
        .await
        .map_err(|e| SinkError(format!("reading the conversation failed: {e}")))?
    }
}

enum Prior {
    None,
    Sent(String),
    Failed(String),
    /// Started (this event) without a recorded outcome.
    Interrupted(EventId),
}

impl std::fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSink")
            .field("repo", &self.settings.repo)
            .finish_non_exhaustive()
    }
}

// === impl OutboundReply ===

impl OutboundReply {
    /// A reply to the recorded mail `to`, threaded under it.
    pub fn answering(
        to: &MessageReceivedV1,
        key: impl Into<String>,
        conversation: ConversationId,
        task: Option<TaskId>,
        kind: ReplyKind,
        body: impl Into<String>,
    ) -> Self {
        OutboundReply {
            key: key.into(),
            conversation: Some(conversation),
            task,
            kind,
            to: to.sender.clone(),
            subject: to.subject.clone(),
            in_reply_to: to.message_id.clone(),
            references: thread_of(to),
            body: body.into(),
            attachments: Vec::new(),
            causation: None,
        }
    }

    /// The acknowledgement for a new conversation, with a dashboard link
    /// when `dashboard_url` is set.
    pub fn acknowledgement(
        to: &MessageReceivedV1,
        cause: EventId,
        conversation: ConversationId,
        task: Option<TaskId>,
        dashboard_url: Option<&str>,
    ) -> Self {
        let mut body = ACK_TEXT.to_owned();
        if let Some(base) = dashboard_url {
            body.push_str(&format!(
                " See progress at <{}/conversation/{conversation}>.",
                base.trim_end_matches('/')
            ));
        }
        let mut reply = OutboundReply::answering(
            to,
            format!("ack:{cause}"),
            conversation,
            task,
            ReplyKind::Acknowledgement,
            body,
        );
        reply.causation = Some(cause);
        reply
    }

    /// An error mail about the task answering `to`.
    pub fn error(
        to: &MessageReceivedV1,
        cause: EventId,
        conversation: ConversationId,
        task: Option<TaskId>,
        text: &str,
    ) -> Self {
        let key = match task {
            Some(t) => format!("error:{t}"),
            None => format!("error:{cause}"),
        };
        let mut reply =
            OutboundReply::answering(to, key, conversation, task, ReplyKind::Error, text);
        reply.causation = Some(cause);
        reply
    }
}

/// The References of the mail answered, oldest first, from its recorded
/// thread keys (In-Reply-To first, then References): In-Reply-To is
/// normally the newest entry, so it goes last.
pub fn thread_of(m: &MessageReceivedV1) -> Vec<String> {
    let mut keys = m.thread_keys.clone();
    if !keys.is_empty() {
        let irt = keys.remove(0);
        keys.push(irt);
    }
    keys
}

/// `Re: [ID:<conv>] <subject>`: leading `Re:` runs removed, the tag added
/// unless present; never a line break.
pub fn reply_subject(subject: &str, conversation: Option<ConversationId>) -> String {
    let mut rest = subject.trim();
    loop {
        let lower = rest.get(..3).map(str::to_ascii_lowercase);
        match lower.as_deref() {
            Some("re:") => rest = rest.get(3..).unwrap_or("").trim_start(),
            _ => break,
        }
    }
    let clean: String = rest
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect();
    let Some(conversation) = conversation else {
        return if clean.is_empty() {
            "Re:".to_owned()
        } else {
            format!("Re: {clean}")
        };
    };
    let tag = format!("[ID:{conversation}]");
    if clean.contains(&tag) {
        format!("Re: {clean}")
    } else if clean.is_empty() {
        format!("Re: {tag}")
    } else {
        format!("Re: {tag} {clean}")
    }
}

/// `<id>` for a Message-ID as recorded (with or without brackets), or
/// `None` when nothing usable is left after removing unsafe characters.
fn bracket(id: &str) -> Option<String> {
    let inner: String = id
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '<' && *c != '>')
        .take(500)
        .collect();
    if inner.is_empty() {
        None
    } else {
        Some(format!("<{inner}>"))
    }
}

/// The References chain of a reply: the thread, then the mail answered;
/// at most [`MAX_REFERENCES`] (the first kept, then the newest).
fn references(thread: &[String], in_reply_to: &str) -> Vec<String> {
    let mut refs: Vec<String> = Vec::new();
    for id in thread
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(in_reply_to))
    {
        if let Some(b) = bracket(id)
            && !refs.contains(&b)
        {
            refs.push(b);
        }
    }
    if refs.len() > MAX_REFERENCES {
        let tail = refs.split_off(refs.len() - (MAX_REFERENCES - 1));
        refs.truncate(1);
        refs.extend(tail);
    }
    refs
}

/// A file name safe for a Content-Disposition header.
fn safe_filename(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | '"') {
                '_'
            } else {
                c
            }
        })
        .take(200)
        .collect();
    if clean.trim().is_empty() {
        "attachment".to_owned()
    } else {
        clean
    }
}

pub(crate) fn smtp_error_text(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// === impl AutoSubmitted ===

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-replied".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let c = Some(ConversationId(0x1a2b3c4d));
        assert_eq!(reply_subject("Re: Fix it", None), "Re: Fix it");
        assert_eq!(reply_subject("", None), "Re:");
        assert_eq!(reply_subject("Fix it", c), "Re: [ID:1a2b3c4d] Fix it");
        assert_eq!(
            reply_subject("RE: re: Fix it", c),
            "Re: [ID:1a2b3c4d] Fix it"
        );
        assert_eq!(
            reply_subject("Re: [ID:1a2b3c4d] Fix it", c),
            "Re: [ID:1a2b3c4d] Fix it"
        );
        assert_eq!(reply_subject("", c), "Re: [ID:1a2b3c4d]");
        assert_eq!(
            reply_subject("a\r\nBcc: x@y.z", c),
            "Re: [ID:1a2b3c4d] a  Bcc: x@y.z"
        );
        assert_eq!(reply_subject("Fwd: x", c), "Re: [ID:1a2b3c4d] Fwd: x");
        assert_eq!(reply_subject("ré", c), "Re: [ID:1a2b3c4d] ré");
    }

    #[test]
    fn references_are_bracketed_deduplicated_and_capped() {
        let thread: Vec<String> = vec!["a@x".into(), "<b@x>".into(), "a@x".into()];
        assert_eq!(references(&thread, "c@x"), ["<a@x>", "<b@x>", "<c@x>"]);
        assert_eq!(references(&[], ""), Vec::<String>::new());
        assert_eq!(references(&["bad\r\nX: y".into()], ""), ["<badX:y>"]);
        let long: Vec<String> = (0..50).map(|i| format!("{i}@x")).collect();
        let r = references(&long, "last@x");
        assert_eq!(r.len(), MAX_REFERENCES);
        assert_eq!(r[0], "<0@x>");
        assert_eq!(r[MAX_REFERENCES - 1], "<last@x>");
    }

    #[test]
    fn thread_puts_in_reply_to_last() {
        let mut m = match crate::events::samples::sample(crate::events::EventType::MessageReceived)
        {
            Event::MessageReceived(m) => m,
            _ => unreachable!(),
        };
        m.thread_keys = vec!["c".into(), "a".into(), "b".into()];
        assert_eq!(thread_of(&m), ["a", "b", "c"]);
    }
}
