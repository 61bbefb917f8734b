//! Verifies a JSONL export on its own, without the store.
//!
//! For every line: the header core decodes and agrees with the line's seq,
//! stream, version, type and time; both chain links recompute from the
//! previous values and the core; on full lines the payload hashes to the
//! value in the core, decodes, and equals the line's `data` (so the readable
//! fields cannot be edited either). Across lines: sequences increase; where
//! consecutive events of a stream (or of the whole log) are both present,
//! their chain values link. A stream whose first exported event is version 1
//! with the genesis value is proven complete from its start; otherwise it is
//! reported as partial (an export filtered by time or type).

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;

use crate::events::Event;
use crate::log::{Hash, Header, chain};

use super::export::{ExportLine, payload_json};
use super::{format_time, unhex};

/// The result of verifying an export.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyOutcome {
    /// Lines read.
    pub lines: u64,
    /// Full lines.
    pub events: u64,
    /// Link lines.
    pub links: u64,
    /// Per stream: what is proven.
    pub streams: Vec<StreamProof>,
    /// The first problem, if any: the export must not be trusted.
    pub failure: Option<Failure>,
}

/// What an export proves about one stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamProof {
    /// The stream.
    pub stream: String,
    /// First version exported.
    pub first_version: u64,
    /// Last version exported.
    pub last_version: u64,
    /// Versions 1..=last are all present and linked from genesis.
    pub complete: bool,
    /// The stream chain value of the last exported event (anchor it elsewhere).
    pub last_hash: String,
}

/// The first verification failure.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// 1-based line number.
    pub line: u64,
    /// The sequence the line claims, if it parsed.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

struct StreamState {
    first_version: u64,
    last_version: u64,
    last_hash: Hash,
    complete: bool,
}

/// Verifies an export read from `input`.
pub fn verify_export(input: impl BufRead) -> VerifyOutcome {
    let mut outcome = VerifyOutcome::default();
    let mut streams: BTreeMap<String, StreamState> = BTreeMap::new();
    let mut last: Option<(u64, Hash)> = None;
    for (idx, line) in input.lines().enumerate() {
        let line_no = idx as u64 + 1;
        let fail = |seq: Option<u64>, reason: String| Failure {
            line: line_no,
            seq,
            reason,
        };
        let text = match line {
            Ok(t) => t,
            Err(e) => {
                outcome.failure = Some(fail(None, format!("cannot read: {e}")));
                break;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        outcome.lines += 1;
        let parsed: ExportLine = match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                outcome.failure = Some(fail(None, format!("not an export line: {e}")));
                break;
            }
        };
        let seq = parsed.seq;
        match check_line(&parsed, &mut streams, &mut last) {
            Ok(()) => {
                if parsed.link {
                    outcome.links += 1;
                } else {
                    outcome.events += 1;
                }
            }
            Err(reason) => {
                outcome.failure = Some(fail(Some(seq), reason));
                break;
            }
        }
    }
    outcome.streams = streams
        .into_iter()
        .map(|(stream, s)| StreamProof {
            stream,
            first_version: s.first_version,
            last_version: s.last_version,
            complete: s.complete,
            last_hash: super::hex(&s.last_hash),
        })
        .collect();
    outcome
}

fn hash_field(name: &str, s: &str) -> Result<Hash, String> {
    unhex(s)
        .and_then(|v| Hash::try_from(v.as_slice()).ok())
        .ok_or_else(|| format!("{name} is not 32 bytes of hex"))
}

fn check_line(
    line: &ExportLine,
    streams: &mut BTreeMap<String, StreamState>,
    last: &mut Option<(u64, Hash)>,
) -> Result<(), String> {
    let c = &line.chain;
    let core = unhex(&c.core).ok_or("core is not hex")?;
    let prev_stream = hash_field("prev_stream_hash", &c.prev_stream_hash)?;
    let stream_hash = hash_field("stream_hash", &c.stream_hash)?;
    let prev_global = hash_field("prev_global_hash", &c.prev_global_hash)?;
    let global_hash = hash_field("global_hash", &c.global_hash)?;
    let header = Header::from_core(&core, stream_hash, global_hash)
        .map_err(|e| format!("core does not decode: {e}"))?;

    // The readable fields must say what the core says.
    if header.seq.0 != line.seq
        || header.stream.as_str() != line.stream
        || header.stream_version != line.stream_version
        || format_time(header.timestamp_us) != line.time
    {
        return Err("the line's seq, stream, version or time differ from its header core".into());
    }
    let type_name = crate::events::EventType::from_code(header.event_type).map(|t| t.name());
    if type_name != Some(line.event_type.as_str()) {
        return Err(format!(
            "type {:?} differs from the header core's type code {}",
            line.event_type, header.event_type
        ));
    }
    // Both chain links.
    if chain::link(&prev_stream, &core) != stream_hash {
        return Err(
            "stream_hash does not match BLAKE3(prev_stream_hash ‖ core): the event was altered"
                .into(),
        );
    }
    if chain::link(&prev_global, &core) != global_hash {
        return Err(
            "global_hash does not match BLAKE3(prev_global_hash ‖ core): the event was altered"
                .into(),
        );
    }
    // The payload, on full lines.
    if line.link {
        if c.payload.is_some() || line.data.is_some() {
            return Err("a link line carries no payload or data".into());
        }
    } else {
        let payload = c
            .payload
            .as_deref()
            .and_then(unhex)
            .ok_or("full line without a hex payload")?;
        if chain::payload_hash(&payload) != header.payload_hash {
            return Err(
                "the payload does not hash to the value in the header core: it was altered".into(),
            );
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(&payload);
        let event = Event::decode(header.event_type, header.schema_version, &aligned)
            .map_err(|e| format!("payload does not decode: {e}"))?;
        let data = payload_json(&event).map_err(|e| e.to_string())?;
        if Some(&data) != line.data.as_ref() {
            return Err("the line's data differ from its payload".into());
        }
    }
    // Order and links between lines.
    if let Some((prev_seq, prev_hash)) = *last {
        if line.seq <= prev_seq {
            return Err(format!("seq {} does not follow {}", line.seq, prev_seq));
        }
        if line.seq == prev_seq + 1 && prev_hash != prev_global {
            return Err(format!(
                "prev_global_hash does not link to event {prev_seq}"
            ));
        }
    }
    *last = Some((line.seq, global_hash));
    match streams.get_mut(&line.stream) {
        Some(s) => {
            if line.stream_version <= s.last_version {
                return Err(format!(
                    "stream {} version {} repeats or goes back",
                    line.stream, line.stream_version
                ));
            }
            if line.stream_version == s.last_version + 1 {
                if prev_stream != s.last_hash {
                    return Err(format!(
                        "prev_stream_hash does not link to version {} of {}",
                        s.last_version, line.stream
                    ));
                }
            } else {
                s.complete = false;
            }
            s.last_version = line.stream_version;
            s.last_hash = stream_hash;
        }
        None => {
            let from_genesis = line.stream_version == 1;
            if from_genesis && prev_stream != chain::GENESIS {
                return Err(format!(
                    "version 1 of {} does not start from the genesis value",
                    line.stream
                ));
            }
            streams.insert(
                line.stream.clone(),
                StreamState {
                    first_version: line.stream_version,
                    last_version: line.stream_version,
                    last_hash: stream_hash,
                    complete: from_genesis,
                },
            );
        }
    }
    Ok(())
}
