//! The email channel plugged into the gateway: the IMAP source records
//! accepted mail as `message.received` (the gateway takes it up from the
//! log, so nothing is lost across a restart), and [`EmailReplySink`] sends
//! the gateway's replies through the SMTP sink.
//!
//! Called by [`super::setups`]. Must never: send a reply twice under one
//! key (the SMTP sink refuses a key it has started before, and the gateway
//! records `reply.sent` once), or attach anything but regular files.

use std::path::Path;
use std::sync::Arc;

use crate::channels::email::{
    self, EmailChannel, EmailSettings, OutboundAttachment, OutboundReply, SendOutcome,
    sink::EmailSink,
};
use crate::gateway::{BoxFuture, Delivered, OutgoingReply, ReplySink, SendError};

/// The email channel context that opens every prompt (reference §E.35).
pub const EMAIL_CONTEXT: &str = "The user is talking to you by email and will receive your \
last reply as an email. After your reply, everything outside /workspace, /inbox and /storage \
is reset. Markdown is supported in your response. To send files to the user, put them in the \
root of /outbox (no subdirectories); they are attached to the reply. Files in /storage are \
kept across messages.\n\n\
IMPORTANT: the AskUserQuestion tool and the plan-mode tools (EnterPlanMode, ExitPlanMode) do \
not work over email. Put any clarifying questions in your response text; the user will \
answer by email.";

/// Largest total of attachments put on one reply (bytes); files beyond it
/// are left out and named in the log.
const MAX_REPLY_ATTACHMENTS: u64 = 25 << 20;

/// The gateway's [`ReplySink`] over the SMTP sink.
pub struct EmailReplySink {
    sink: EmailSink,
}

// === impl EmailReplySink ===

impl EmailReplySink {
    /// A reply sink sending through `sink`.
    pub fn new(sink: EmailSink) -> Self {
        EmailReplySink { sink }
    }
}

impl ReplySink for EmailReplySink {
    fn channel_context(&self) -> String {
        EMAIL_CONTEXT.to_owned()
    }

    fn send(&self, reply: OutgoingReply) -> BoxFuture<'_, Result<Delivered, SendError>> {
        Box::pin(async move {
            let out = outbound(&reply).await;
            let names: Vec<String> = out.attachments.iter().map(|a| a.name.clone()).collect();
            match self.sink.send(out).await {
                Ok(SendOutcome::Sent { message_id, .. })
                | Ok(SendOutcome::AlreadySent { message_id }) => Ok(Delivered {
                    message_id,
                    attachments: names,
                }),
                Ok(SendOutcome::Failed { error }) => Err(SendError { message: error }),
                Err(e) => Err(SendError {
                    message: e.to_string(),
                }),
            }
        })
    }
}

/// The SMTP sink's reply for the gateway's.
pub async fn outbound(r: &OutgoingReply) -> OutboundReply {
    let references: Vec<String> = r
        .thread_keys
        .iter()
        .filter(|k| !k.is_empty() && **k != r.in_reply_to)
        .cloned()
        .collect();
    OutboundReply {
        key: r.key.clone(),
        conversation: r.conversation,
        task: r.task,
        kind: r.kind.clone(),
        to: r.to.clone(),
        subject: r.subject.clone(),
        in_reply_to: r.in_reply_to.clone(),
        references,
        body: r.text.clone(),
        attachments: read_attachments(&r.attachments).await,
        causation: None,
    }
}

async fn read_attachments(paths: &[std::path::PathBuf]) -> Vec<OutboundAttachment> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for p in paths {
        let meta = match tokio::fs::symlink_metadata(p).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                tracing::warn!(file = %p.display(), "not a regular file; not attached");
                continue;
            }
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %e, "cannot attach");
                continue;
            }
        };
        if total + meta.len() > MAX_REPLY_ATTACHMENTS {
            tracing::warn!(file = %p.display(), size = meta.len(), "attachments too large; left out");
            continue;
        }
        match tokio::fs::read(p).await {
            Ok(data) => {
                total += data.len() as u64;
                out.push(OutboundAttachment {
                    name: file_name(p),
                    content_type: content_type(p).to_owned(),
                    data,
                });
            }
            Err(e) => tracing::warn!(file = %p.display(), error = %e, "cannot attach"),
        }
    }
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".to_owned())
}

/// A MIME type from the file's extension.
pub fn content_type(p: &Path) -> &'static str {
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// Starts a repo's email channel and returns its reply sink. Accepted mail
/// is already in the log when the source hands it over; the gateway folds
/// it from there, so the hand-over is only drained here.
pub fn start(
    settings: Arc<EmailSettings>,
    log: crate::log::Log,
    cancel: tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Arc<dyn ReplySink> {
    let repo = settings.repo.clone();
    let EmailChannel {
        mut inbound,
        sink,
        health: _,
        task,
    } = email::spawn(settings, log, cancel);
    tracker.spawn(async move {
        while let Some(intake) = inbound.recv().await {
            tracing::debug!(%repo, seq = ?intake.seq, "mail recorded for the gateway");
        }
        let _ = task.await;
    });
    Arc::new(EmailReplySink::new(sink))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ConversationId, ReplyKind, TaskId};

    #[tokio::test]
    async fn outbound_threads_and_attaches_only_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("report.md");
        std::fs::write(&f, "# hi\n").expect("write");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
        let r = OutgoingReply {
            key: "k".into(),
            conversation: Some(ConversationId(0xabc)),
            task: Some(TaskId::new()),
            kind: ReplyKind::Result,
            to: "alice@example.com".into(),
            in_reply_to: "<b@x>".into(),
            thread_keys: vec!["<a@x>".into(), "<b@x>".into(), String::new()],
            subject: "Hi".into(),
            text: "done".into(),
            attachments: vec![f, sub, link, dir.path().join("missing")],
        };
        let o = outbound(&r).await;
        assert_eq!(o.references, vec!["<a@x>".to_owned()]);
        assert_eq!(o.attachments.len(), 1);
        assert_eq!(o.attachments[0].name, "report.md");
        assert_eq!(o.attachments[0].content_type, "text/markdown");
        assert_eq!(o.conversation, Some(ConversationId(0xabc)));
    }

    #[test]
    fn content_types_default_to_octet_stream() {
        assert_eq!(content_type(Path::new("a.PDF")), "application/pdf");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
        assert_eq!(
            content_type(Path::new("x.weird")),
            "application/octet-stream"
        );
    }
}
