//! Streaming response bodies produced by blocking writers.
//!
//! Exports and timelines are written by blocking code (fjall reads) into an
//! `io::Write`; [`blocking_body`] runs such a writer on the blocking pool and
//! turns its output into a response body through a small bounded channel,
//! so a slow client slows the writer down instead of growing memory.

use std::io::Write;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunk size handed to the body; also the unit of backpressure.
const CHUNK: usize = 64 * 1024;

/// A writer that forwards full chunks to an async body.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

/// Runs `produce` on the blocking pool and streams what it writes.
///
/// An error from `produce` after bytes were sent cannot change the status
/// any more: it is appended as a final line starting with `error:` and the
/// body is cut, so a client never mistakes a partial export for a whole one.
pub(crate) fn blocking_body<F>(produce: F) -> Body
where
    F: FnOnce(&mut dyn Write) -> anyhow::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            buf: Vec::with_capacity(CHUNK),
            tx,
        };
        let outcome = produce(&mut w).and_then(|()| w.flush().map_err(anyhow::Error::from));
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "streamed response ended with an error");
            let _ = w.flush();
            let _ =
                w.tx.blocking_send(Ok(Bytes::from(format!("error: {e:#}\n"))));
            let _ =
                w.tx.blocking_send(Err(std::io::Error::other("stream ended with an error")));
        }
    });
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// === impl ChannelWriter ===

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}
