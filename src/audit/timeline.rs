//! A conversation's timeline (`airut replay`): its stream's events merged,
//! in log order, with the inbound messages it answered (those live on the
//! channel's intake stream, appended before the conversation was resolved).

use std::collections::BTreeSet;
use std::io::Write;

use crate::events::{ConversationId, Event, EventId, EventType, Seq};
use crate::log::Log;

use super::write_line;

/// Writes the timeline of `conv` as text or JSON lines; returns how many
/// events were written. `find_message` maps a `message.received` event id to
/// its sequence (the conversations projection keeps that index).
pub fn write_timeline(
    log: &Log,
    conv: ConversationId,
    find_message: &dyn Fn(EventId) -> anyhow::Result<Option<Seq>>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let stream = conv.stream();
    if log.stream_version(&stream)? == 0 {
        anyhow::bail!(
            "no conversation {conv} in the log (ids are 8 hex digits, as in [ID:{conv}])"
        );
    }
    // Pass 1: the messages this conversation refers to.
    let mut messages = BTreeSet::new();
    for rec in log.stream_iter(&stream, 1) {
        let rec = rec?;
        let refs: Vec<EventId> = match rec.event_type() {
            Some(
                EventType::ConversationStarted
                | EventType::ConversationResumed
                | EventType::TaskQueued
                | EventType::TaskCoalesced,
            ) => match rec.decode()? {
                Event::ConversationStarted(e) => vec![e.message],
                Event::ConversationResumed(e) => vec![e.message],
                Event::TaskQueued(e) => e.messages,
                Event::TaskCoalesced(e) => vec![e.message],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        for id in refs {
            if let Some(seq) = find_message(id)? {
                messages.insert(seq);
            }
        }
    }
    // Pass 2: merge by sequence.
    let mut written = 0u64;
    let mut pending = messages.into_iter().peekable();
    let write = |seq: Seq, out: &mut dyn Write| -> anyhow::Result<()> {
        let rec = log
            .read(seq)?
            .ok_or_else(|| anyhow::anyhow!("event {seq} is missing from the log"))?;
        write_line(&rec, json, out)
    };
    for rec in log.stream_iter(&stream, 1) {
        let rec = rec?;
        while let Some(&m) = pending.peek() {
            if m >= rec.header.seq {
                break;
            }
            write(m, out)?;
            written += 1;
            pending.next();
        }
        write_line(&rec, json, out)?;
        written += 1;
    }
    for m in pending {
        write(m, out)?;
        written += 1;
    }
    Ok(written)
}
