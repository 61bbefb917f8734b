//! One event as a JSON line or a line of text.

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::events::{Event, EventId};
use crate::log::{ReadError, Record};

/// The JSON shape of one event (`airut events tail --json`, the API, replay
/// `--json`, and full lines of exports).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventLine {
    /// Global sequence.
    pub seq: u64,
    /// Append time, RFC 3339 UTC with microseconds.
    pub time: String,
    /// The stream.
    pub stream: String,
    /// 1-based version within the stream.
    pub stream_version: u64,
    /// Event id.
    pub event_id: EventId,
    /// The event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation: Option<EventId>,
    /// Payload schema version.
    pub version: u16,
    /// `{"type": name, "data": payload}`.
    #[serde(flatten)]
    pub event: Event,
}

/// RFC 3339 UTC with microseconds for a timestamp in µs since the epoch.
pub fn format_time(us: i64) -> String {
    let t = if us >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    };
    humantime::format_rfc3339_micros(t).to_string()
}

// === impl EventLine ===

impl EventLine {
    /// Decodes a record into its JSON shape.
    pub fn from_record(rec: &Record) -> Result<EventLine, ReadError> {
        let h = &rec.header;
        Ok(EventLine {
            seq: h.seq.0,
            time: format_time(h.timestamp_us),
            stream: h.stream.to_string(),
            stream_version: h.stream_version,
            event_id: h.event_id,
            causation: h.causation,
            version: h.schema_version,
            event: rec.decode()?,
        })
    }
}

/// Writes one event as a JSON line.
pub fn write_json_line(rec: &Record, out: &mut dyn Write) -> anyhow::Result<()> {
    let line = EventLine::from_record(rec)?;
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes one event as a line of text: time, seq, stream, type, summary.
pub fn write_text_line(rec: &Record, out: &mut dyn Write) -> anyhow::Result<()> {
    let h = &rec.header;
    let event = rec.decode()?;
    writeln!(
        out,
        "{}  #{:<7} {:<22} {:<24} {}",
        format_time(h.timestamp_us),
        h.seq.0,
        h.stream.as_str(),
        event.event_type().name(),
        event.summary()
    )?;
    Ok(())
}

/// Writes one event as JSON or text.
pub fn write_line(rec: &Record, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        write_json_line(rec, out)
    } else {
        write_text_line(rec, out)
    }
}

/// Writes every stored event from `from` on (a snapshot of the log).
pub fn write_events_from(
    log: &crate::log::Log,
    from: crate::events::Seq,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for rec in log.iter_from(from) {
        write_line(&rec?, json, out)?;
    }
    Ok(())
}
