//! Network audit exports (JSONL with chain values, or CSV), streamed from the
//! log in constant memory.
//!
//! The export reads the log itself, not a projection: what it prints is
//! exactly what is stored, and every JSONL line carries the bytes to prove
//! it. Timestamps are monotonic in the sequence (the writer clamps them), so
//! `--since` is a binary search for the first sequence, then a forward scan
//! that looks at headers only and decodes network events.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::events::{ConversationId, Event, EventType, Seq};
use crate::log::{Hash, Log, Record, chain};

use super::{format_time, hex};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportQuery {
    /// Only this conversation's stream.
    pub conversation: Option<ConversationId>,
    /// Only events at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Only events at or before this time (µs since the epoch).
    pub until_us: Option<i64>,
    /// JSONL (verifiable) or CSV.
    pub format: Format,
    /// Network events only, or every event of the selection.
    pub filter: ExportFilter,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line with chain values.
    Jsonl,
    /// Comma-separated, one row per network event; not verifiable.
    Csv,
}

/// Which events get full lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFilter {
    /// Proxy requests and DNS queries (the network audit).
    Network,
    /// Every event (a conversation's full history).
    All,
}

/// The chain values of one exported event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainValues {
    /// The header core, hex: what both chain links hash.
    pub core: String,
    /// The payload bytes, hex (absent on link lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Stream chain value of the stream's previous event (genesis: zeros).
    pub prev_stream_hash: String,
    /// This event's stream chain value.
    pub stream_hash: String,
    /// Global chain value of the previous event (genesis: zeros).
    pub prev_global_hash: String,
    /// This event's global chain value.
    pub global_hash: String,
}

/// One line of a JSONL export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportLine {
    /// Global sequence.
    pub seq: u64,
    /// Append time (RFC 3339).
    pub time: String,
    /// The stream.
    pub stream: String,
    /// Version within the stream.
    pub stream_version: u64,
    /// Event type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `true` for a header-only line that keeps the chain whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    /// The payload as JSON (full lines only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// The proof.
    pub chain: ChainValues,
}

/// Counts of what an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStats {
    /// Full lines (or CSV rows).
    pub events: u64,
    /// Link lines.
    pub links: u64,
}

const CSV_HEADER: &str = "seq,time,conversation,task,type,decision,method,scheme,host,port,path,status,rule,reason,bytes_in,bytes_out,duration_us,credentials,upstream_override,dns_name,dns_qtype,dns_answer\n";

/// Writes the export described by `q` to `out`.
pub fn export_jsonl_csv(
    log: &Log,
    q: &ExportQuery,
    out: &mut dyn Write,
) -> anyhow::Result<ExportStats> {
    let mut stats = ExportStats::default();
    if q.format == Format::Csv {
        out.write_all(CSV_HEADER.as_bytes())?;
    }
    let since = q.since_us.unwrap_or(i64::MIN);
    let until = q.until_us.unwrap_or(i64::MAX);
    match q.conversation {
        Some(conv) => {
            let mut prev_stream = chain::GENESIS;
            for rec in log.stream_iter(&conv.stream(), 1) {
                let rec = rec?;
                if rec.header.timestamp_us > until {
                    break;
                }
                if rec.header.timestamp_us >= since {
                    emit(log, q, &rec, prev_stream, out, &mut stats)?;
                }
                prev_stream = rec.header.stream_hash;
            }
        }
        None => {
            let start = first_seq_at_or_after(log, since)?;
            for rec in log.iter_from(start) {
                let rec = rec?;
                // Timestamps are monotonic in the sequence.
                if rec.header.timestamp_us > until {
                    break;
                }
                if q.filter == ExportFilter::Network && !is_network(&rec) {
                    continue;
                }
                let prev_stream = prev_stream_hash(log, &rec)?;
                emit(log, q, &rec, prev_stream, out, &mut stats)?;
            }
        }
    }
    out.flush()?;
    Ok(stats)
}

fn is_network(rec: &Record) -> bool {
    matches!(
        rec.event_type(),
        Some(EventType::ProxyRequest | EventType::DnsQuery)
    )
}

fn emit(
    log: &Log,
    q: &ExportQuery,
    rec: &Record,
    prev_stream: Hash,
    out: &mut dyn Write,
    stats: &mut ExportStats,
) -> anyhow::Result<()> {
    let full = q.filter == ExportFilter::All || is_network(rec);
    match q.format {
        Format::Csv => {
            if full {
                write_csv_row(rec, out)?;
                stats.events += 1;
            }
        }
        Format::Jsonl => {
            let line = export_line(log, rec, prev_stream, full)?;
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            if full {
                stats.events += 1;
            } else {
                stats.links += 1;
            }
        }
    }
    Ok(())
}

/// Builds the JSONL line for `rec`; `full` includes payload and data.
pub fn export_line(
    log: &Log,
    rec: &Record,
    prev_stream: Hash,
    full: bool,
) -> anyhow::Result<ExportLine> {
    let h = &rec.header;
    let prev_global = match h.seq.0.checked_sub(1) {
        None => chain::GENESIS,
        Some(prev) => log
            .read(Seq(prev))?
            .map(|r| r.header.global_hash)
            .ok_or_else(|| anyhow::anyhow!("event {prev} is missing from the log"))?,
    };
    let event_type = rec
        .event_type()
        .map(|t| t.name().to_owned())
        .unwrap_or_else(|| format!("unknown.{}", h.event_type));
    let data = if full {
        Some(payload_json(&rec.decode()?)?)
    } else {
        None
    };
    Ok(ExportLine {
        seq: h.seq.0,
        time: format_time(h.timestamp_us),
        stream: h.stream.to_string(),
        stream_version: h.stream_version,
        event_type,
        link: !full,
        data,
        chain: ChainValues {
            core: hex(&rec.core),
            payload: full.then(|| hex(&rec.payload)),
            prev_stream_hash: hex(&prev_stream),
            stream_hash: hex(&h.stream_hash),
            prev_global_hash: hex(&prev_global),
            global_hash: hex(&h.global_hash),
        },
    })
}

/// The `data` part of an event's JSON form.
pub(crate) fn payload_json(event: &Event) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(event)?;
    Ok(v.get_mut("data")
        .map(serde_json::Value::take)
        .unwrap_or(serde_json::Value::Null))
}

fn prev_stream_hash(log: &Log, rec: &Record) -> anyhow::Result<Hash> {
    let v = rec.header.stream_version;
    if v <= 1 {
        return Ok(chain::GENESIS);
    }
    match log.stream_iter(&rec.header.stream, v - 1).next() {
        Some(prev) => Ok(prev?.header.stream_hash),
        None => anyhow::bail!(
            "stream {} has no version {} before event {}",
            rec.header.stream,
            v - 1,
            rec.header.seq
        ),
    }
}

/// The first sequence whose timestamp is ≥ `since` (timestamps are
/// monotonic in seq); the head + 1 when there is none.
fn first_seq_at_or_after(log: &Log, since: i64) -> anyhow::Result<Seq> {
    let Some(head) = log.head() else {
        return Ok(Seq(0));
    };
    if since == i64::MIN {
        return Ok(Seq(0));
    }
    let (mut lo, mut hi) = (0u64, head.0 + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let ts = log
            .read(Seq(mid))?
            .map(|r| r.header.timestamp_us)
            .ok_or_else(|| anyhow::anyhow!("event {mid} is missing from the log"))?;
        if ts < since {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(Seq(lo))
}

fn write_csv_row(rec: &Record, out: &mut dyn Write) -> anyhow::Result<()> {
    let h = &rec.header;
    let conv = h
        .stream
        .conversation()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let event = rec.decode()?;
    let mut cells: Vec<String> = vec![h.seq.0.to_string(), format_time(h.timestamp_us), conv];
    match &event {
        Event::ProxyRequest(r) => {
            let creds = r
                .credentials
                .iter()
                .map(|c| format!("{}:{:?}x{}", c.secret, c.action, c.count))
                .collect::<Vec<_>>()
                .join(" ");
            cells.extend([
                r.task.to_string(),
                "request".into(),
                format!("{:?}", r.decision).to_lowercase(),
                r.method.clone(),
                r.scheme.clone(),
                r.host.clone(),
                r.port.to_string(),
                r.path.clone(),
                r.status.map(|s| s.to_string()).unwrap_or_default(),
                r.rule.clone().unwrap_or_default(),
                r.reason.clone().unwrap_or_default(),
                r.bytes_in.to_string(),
                r.bytes_out.to_string(),
                r.duration_us.to_string(),
                creds,
                r.upstream_override.clone().unwrap_or_default(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        Event::DnsQuery(d) => {
            cells.extend([d.task.to_string(), "dns".into()]);
            cells.extend(std::iter::repeat_n(String::new(), 14));
            cells.extend([d.name.clone(), d.qtype.to_string(), d.answer.clone()]);
        }
        other => {
            cells.extend([String::new(), other.event_type().name().to_owned()]);
            cells.extend(std::iter::repeat_n(String::new(), 17));
        }
    }
    let row = cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    out.write_all(row.as_bytes())?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Quotes a CSV cell when needed, and defuses cells a spreadsheet would run
/// as a formula (a path or host from the sandbox is attacker-controlled).
pub(crate) fn csv_cell(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let needs_quotes = formula || s.contains([',', '"', '\n', '\r']);
    if !needs_quotes {
        return s.to_owned();
    }
    let body = if formula {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    format!("\"{}\"", body.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv_cell("-1"), "\"'-1\"");
    }
}
