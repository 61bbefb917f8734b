//! The email sink as the gateway's [`ReplySink`]: the gateway decides what
//! to say, retries, and records `reply.sent` / `reply.failed`; this adapter
//! turns an [`OutgoingReply`] into a mail and sends it at most once per key.
//!
//! Owns the step between the gateway's reply and [`EmailSink`]: the
//! channel context the agent is told, outbox files read from disk, the
//! dashboard link in acknowledgements, and the at-most-once rule when the
//! gateway owns the outcome events:
//!
//! * before the first SMTP attempt of a key, `reply.started` is appended
//!   durably (causation: the gateway's cause, when the key is its id);
//! * an attempt the server refused is remembered in memory, so the
//!   gateway's retry under the same key is sent (same Message-ID);
//! * a key with a `reply.started` but no refusal known to this process was
//!   interrupted by a restart: the mail may or may not have gone out, so it
//!   is not sent again, and the gateway is told so (it records
//!   `reply.failed` with that text).
//!
//! Called by the gateway through the trait; knows nothing of tasks.

use std::path::PathBuf;

use super::sink::{EmailSink, OutboundAttachment, OutboundReply};
use crate::events::{EventId, ReplyKind};
use crate::gateway::{BoxFuture, Delivered, OutgoingReply, ReplySink, SendError};

/// Largest outbox file attached (bytes); larger ones are left out and not
/// listed as attached.
pub const MAX_OUTBOX_FILE_BYTES: u64 = 25 << 20;

/// What the agent is told about talking over email (opens every prompt).
pub const EMAIL_CONTEXT: &str = "You are talking to the user by email: they wrote the message \
below, and your final answer is sent back to them as an email reply. After your reply, \
everything outside /workspace, /inbox and /storage is reset. Format the answer in Markdown \
(it is shown as formatted HTML, tables included). To send files, write them to the top level \
of /outbox (no subdirectories); they are attached to the reply. Files in /storage persist \
across messages of this conversation.

IMPORTANT: AskUserQuestion and the plan-mode tools (EnterPlanMode, ExitPlanMode) do not work \
over email. If you need to ask something, ask it in your answer; the user will reply by email.";

// === impl EmailSink as ReplySink ===

impl ReplySink for EmailSink {
    fn channel_context(&self) -> String {
        EMAIL_CONTEXT.to_owned()
    }

    fn send(&self, reply: OutgoingReply) -> BoxFuture<'_, Result<Delivered, SendError>> {
        Box::pin(async move {
            let attachments = read_outbox(reply.attachments.clone()).await;
            let mut body = reply.text;
            if reply.kind == ReplyKind::Acknowledgement
                && let (Some(base), Some(conv)) = (self.dashboard_url(), reply.conversation)
            {
                body.push_str(&format!(
                    "\n\nSee progress at <{}/conversation/{conv}>.",
                    base.trim_end_matches('/')
                ));
            }
            let causation = reply.key.parse::<uuid::Uuid>().ok().map(EventId);
            let out = OutboundReply {
                key: reply.key,
                conversation: reply.conversation,
                task: reply.task,
                kind: reply.kind,
                to: reply.to,
                subject: reply.subject,
                in_reply_to: reply.in_reply_to,
                references: reply.thread_keys,
                body,
                attachments,
                causation,
            };
            self.deliver(out)
                .await
                .map_err(|message| SendError { message })
        })
    }
}

/// Reads the outbox files (regular files only, not symlinks, at most
/// [`MAX_OUTBOX_FILE_BYTES`] each); unreadable ones are left out.
async fn read_outbox(paths: Vec<PathBuf>) -> Vec<OutboundAttachment> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for path in paths {
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && m.len() <= MAX_OUTBOX_FILE_BYTES => m,
                Ok(m) => {
                    tracing::warn!(path = %path.display(), size = m.len(), "outbox entry not attached (not a regular file, or too large)");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "outbox file not attached");
                    continue;
                }
            };
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            match std::fs::read(&path) {
                Ok(data) if data.len() as u64 == meta.len() => out.push(OutboundAttachment {
                    content_type: content_type(&name).to_owned(),
                    name,
                    data,
                }),
                Ok(_) => tracing::warn!(path = %path.display(), "outbox file changed while read; not attached"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "outbox file not attached"),
            }
        }
        out
    })
    .await
    .unwrap_or_default()
}

/// A MIME type from a file name's extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "diff" | "patch" => "text/x-diff",
        _ => "application/octet-stream",
    }
}
