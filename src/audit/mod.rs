//! Reading the log out: event lines, conversation timelines, network audit
//! exports, and verification of exports without the store.
//!
//! Everything here is blocking code over [`Log`](crate::log::Log) reads that
//! writes to an `io::Write`, so the CLI can write to stdout and the API can
//! stream the same bytes ([`crate::dashboard`]) in constant memory.
//!
//! JSONL exports carry, per line, the exact header-core bytes and the
//! chain values (`prev_stream_hash`, `stream_hash`, `prev_global_hash`,
//! `global_hash`) and, for full lines, the payload bytes. Because the header
//! core includes the payload's hash, a "link" line (header only) still
//! proves its place in the chain; a conversation export therefore includes a
//! link line for each of the conversation's non-network events and verifies
//! from the stream's genesis. CSV is for spreadsheets and is not verifiable.

pub mod export;
pub mod render;
pub mod timeline;
pub mod verify;

pub use export::{ExportFilter, ExportQuery, export_jsonl_csv};
pub use render::{
    EventLine, format_time, write_events_from, write_json_line, write_line, write_text_line,
};
pub use timeline::write_timeline;
pub use verify::{VerifyOutcome, verify_export};

use serde::{Deserialize, Serialize};

/// The store check as `airut check` prints it and `/api/check` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCheck {
    /// Events verified (before the failure, if any).
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// The last verified sequence.
    pub head: Option<u64>,
    /// Its global chain value, hex: anchor it somewhere else.
    pub head_hash: String,
    /// The first broken link: its sequence and what is wrong.
    pub failure: Option<(u64, String)>,
}

// === impl StoreCheck ===

impl StoreCheck {
    /// Runs the log's verification and summarises it.
    pub fn run(log: &crate::log::Log) -> Result<StoreCheck, crate::log::ReadError> {
        let r = log.verify()?;
        Ok(StoreCheck {
            events: r.events,
            streams: r.streams,
            head: r.head.map(|s| s.0),
            head_hash: hex(&r.head_hash),
            failure: r.failure.map(|f| (f.seq.0, f.reason)),
        })
    }
}

impl std::fmt::Display for StoreCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.failure {
            None => write!(
                f,
                "{} events in {} streams, hash chains intact; head seq {} hash {}",
                self.events,
                self.streams,
                self.head
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                self.head_hash
            ),
            Some((seq, reason)) => write!(
                f,
                "chain broken at seq {seq}: {reason} ({} events before it verified)",
                self.events
            ),
        }
    }
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    s
}

/// Parses lowercase or uppercase hex; `None` on any other character or an
/// odd length.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let data = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&data), "0001abff");
        assert_eq!(unhex("0001ABff").unwrap(), data);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("é1").is_none());
    }
}
