//! The email channel plugged into the gateway: the IMAP source records
//! accepted mail as `message.received` (the gateway takes it up from the
//! log, so nothing is lost across a restart), and the SMTP sink is the
//! gateway's [`ReplySink`] (`channels::email::reply_sink`): the gateway
//! records `reply.sent` / `reply.failed`, the sink only `reply.started`,
//! so each reply is one `reply.sent`.
//!
//! Called by [`super::Runtime::repo`]. Must never: send a reply twice under one
//! key (the sink refuses a key started before a restart).

use std::sync::Arc;

use crate::channels::email::{self, EmailChannel, EmailSettings};
use crate::gateway::ReplySink;

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
    Arc::new(sink)
}
