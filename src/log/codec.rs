//! The stored record format and the keys of the log's keyspaces.
//!
//! A record value is `u16 LE core_len ‖ core ‖ stream_hash[32] ‖
//! global_hash[32] ‖ payload`. The core is the header without its hashes, in
//! a fixed little-endian order:
//!
//! | field          | type     | notes                                  |
//! |----------------|----------|----------------------------------------|
//! | format         | u8       | [`FORMAT`] (1)                         |
//! | flags          | u8       | bit 0: has causation; others zero      |
//! | event_type     | u16      | catalogue code                         |
//! | schema_version | u16      | payload struct version                 |
//! | reserved       | u16      | zero                                   |
//! | seq            | u64      | global sequence                        |
//! | stream_version | u64      | 1-based                                |
//! | timestamp_us   | i64      | microseconds since the Unix epoch      |
//! | event_id       | [u8; 16] | uuid v7                                |
//! | causation      | [u8; 16] | zeros when none                        |
//! | payload_len    | u32      |                                        |
//! | payload_hash   | [u8; 32] | BLAKE3 of the payload                  |
//! | stream_len     | u16      | 1..=255                                |
//! | stream         | bytes    | printable ASCII                        |
//!
//! Everything here parses bytes read from disk or from an export, so it is
//! hostile-input parsing: every length is checked, nothing indexes, errors are
//! values that name the field (and, through [`decode_record`], the seq).
//! Never panics. Pure: no I/O.

#![deny(clippy::indexing_slicing)]

use super::{Hash, Header, ReadError, Record, chain};
use crate::events::{EventId, Seq, StreamId};

/// The record format this build writes and reads.
pub const FORMAT: u8 = 1;

/// Flag bit: the causation field holds an event id.
const FLAG_CAUSATION: u8 = 0b1;

/// Length of the core without the stream bytes.
pub const CORE_FIXED_LEN: usize = 102;

/// Why a header core or record could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes end before `field`: the value was cut short or its length
    /// prefix is wrong. Treat the record as corrupt.
    #[error("truncated at {field}: need {need} bytes, {have} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// `field` holds a value this format does not allow (unknown format,
    /// non-zero reserved bits, invalid stream id, trailing bytes). Treat the
    /// record as corrupt, or as written by a newer airut when `field` is
    /// `format`.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

/// The header fields an encoder needs (everything in the core).
#[derive(Debug, Clone)]
pub struct CoreFields<'a> {
    /// Event type code.
    pub event_type: u16,
    /// Payload schema version.
    pub schema_version: u16,
    /// Global sequence.
    pub seq: Seq,
    /// 1-based stream version.
    pub stream_version: u64,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: i64,
    /// Event id.
    pub event_id: EventId,
    /// Causing event.
    pub causation: Option<EventId>,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// BLAKE3 of the payload.
    pub payload_hash: Hash,
    /// The stream.
    pub stream: &'a StreamId,
}

/// Encodes a header core.
pub fn encode_core(f: &CoreFields<'_>) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(CORE_FIXED_LEN + f.stream.as_str().len());
    push_core(&mut out, f)?;
    Ok(out)
}

/// Appends a header core to `out`.
fn push_core(out: &mut Vec<u8>, f: &CoreFields<'_>) -> Result<(), CodecError> {
    let stream = f.stream.as_str().as_bytes();
    let stream_len = u16::try_from(stream.len())
        .ok()
        .filter(|n| (1..=255).contains(n))
        .ok_or_else(|| invalid("stream", format!("{} bytes", stream.len())))?;
    out.push(FORMAT);
    out.push(if f.causation.is_some() {
        FLAG_CAUSATION
    } else {
        0
    });
    out.extend_from_slice(&f.event_type.to_le_bytes());
    out.extend_from_slice(&f.schema_version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&f.seq.0.to_le_bytes());
    out.extend_from_slice(&f.stream_version.to_le_bytes());
    out.extend_from_slice(&f.timestamp_us.to_le_bytes());
    out.extend_from_slice(f.event_id.0.as_bytes());
    out.extend_from_slice(
        f.causation
            .map(|c| *c.0.as_bytes())
            .unwrap_or([0; 16])
            .as_slice(),
    );
    out.extend_from_slice(&f.payload_len.to_le_bytes());
    out.extend_from_slice(&f.payload_hash);
    out.extend_from_slice(&stream_len.to_le_bytes());
    out.extend_from_slice(stream);
    Ok(())
}

/// Offsets in the core of the fields [`link_record`] fills in.
const CORE_SEQ: usize = 8;
const CORE_STREAM_VERSION: usize = 16;
const CORE_TIMESTAMP: usize = 24;

/// Encodes a whole record value in one buffer, with the fields that only
/// the writer knows (seq, stream version, timestamp: taken from `f`, usually
/// zero) and the two chain links (zero) still to be filled in by
/// [`link_record`]. The expensive part of an append (payload hash, copying)
/// happens here, in the appending task; linking is cheap and happens in the
/// writer, which alone knows the order.
pub fn encode_unlinked(f: &CoreFields<'_>, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let core_len = CORE_FIXED_LEN + f.stream.as_str().len();
    let core_len16 =
        u16::try_from(core_len).map_err(|_| invalid("core length", format!("{core_len} bytes")))?;
    let mut out = Vec::with_capacity(2 + core_len + 64 + payload.len());
    out.extend_from_slice(&core_len16.to_le_bytes());
    push_core(&mut out, f)?;
    out.extend_from_slice(&[0; 64]);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Places a record from [`encode_unlinked`] in the log: writes its seq,
/// stream version and timestamp into the core, then the two chain links
/// (over the finished core), and returns them as (stream link, global link).
pub fn link_record(
    value: &mut [u8],
    seq: Seq,
    stream_version: u64,
    timestamp_us: i64,
    prev_stream: &Hash,
    prev_global: &Hash,
) -> Result<(Hash, Hash), CodecError> {
    let short = |field| CodecError::Truncated {
        field,
        need: 2,
        have: 0,
    };
    let len_bytes = value
        .get(..2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .ok_or_else(|| short("core length"))?;
    let core_len = usize::from(u16::from_le_bytes(len_bytes));
    if core_len < CORE_FIXED_LEN {
        return Err(invalid("core length", format!("{core_len} bytes")));
    }
    let have = value.len();
    let (core, links) = value
        .get_mut(2..2 + core_len + 64)
        .ok_or(CodecError::Truncated {
            field: "record",
            need: 2 + core_len + 64,
            have,
        })?
        .split_at_mut(core_len);
    let mut put = |at: usize, bytes: [u8; 8]| {
        if let Some(slot) = core.get_mut(at..at + 8) {
            slot.copy_from_slice(&bytes);
        }
    };
    put(CORE_SEQ, seq.0.to_le_bytes());
    put(CORE_STREAM_VERSION, stream_version.to_le_bytes());
    put(CORE_TIMESTAMP, timestamp_us.to_le_bytes());
    let stream_hash = chain::link(prev_stream, core);
    let global_hash = chain::link(prev_global, core);
    let (s, g) = links.split_at_mut(32);
    s.copy_from_slice(&stream_hash);
    g.copy_from_slice(&global_hash);
    Ok((stream_hash, global_hash))
}

/// Assembles a stored record value from its parts.
pub fn encode_record(
    core: &[u8],
    stream_hash: &Hash,
    global_hash: &Hash,
    payload: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let core_len = u16::try_from(core.len())
        .map_err(|_| invalid("core length", format!("{} bytes", core.len())))?;
    let mut out = Vec::with_capacity(2 + core.len() + 64 + payload.len());
    out.extend_from_slice(&core_len.to_le_bytes());
    out.extend_from_slice(core);
    out.extend_from_slice(stream_hash);
    out.extend_from_slice(global_hash);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decodes a stored record read at `seq`: parses the header, checks that it
/// claims the same seq, that the payload has the declared length and hash,
/// and copies the payload into aligned memory. Does not decode the payload
/// (see [`Record::decode`]) and does not check chain links (see `verify`).
pub fn decode_record(seq: Seq, bytes: &[u8]) -> Result<Record, ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt { seq, reason };
    let mut r = Reader::new(bytes);
    let parts = (|| {
        let core_len = usize::from(r.u16("core length")?);
        let core = r.take(core_len, "core")?;
        let stream_hash = r.array::<32>("stream hash")?;
        let global_hash = r.array::<32>("global hash")?;
        Ok::<_, CodecError>((core, stream_hash, global_hash))
    })();
    let (core, stream_hash, global_hash) = parts.map_err(|e| corrupt(e.to_string()))?;
    let payload = r.rest();
    let header =
        Header::from_core(core, stream_hash, global_hash).map_err(|e| corrupt(e.to_string()))?;
    if header.seq != seq {
        return Err(corrupt(format!("record claims seq {}", header.seq)));
    }
    if usize::try_from(header.payload_len).ok() != Some(payload.len()) {
        return Err(corrupt(format!(
            "payload is {} bytes, header says {}",
            payload.len(),
            header.payload_len
        )));
    }
    if chain::payload_hash(payload) != header.payload_hash {
        return Err(corrupt("payload does not match its hash".to_owned()));
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    Ok(Record {
        header,
        core: core.to_vec(),
        payload: aligned,
    })
}

// === impl Header ===

impl Header {
    /// Parses a header core (as stored, or as carried by an export line) and
    /// attaches the two chain links stored beside it. Checks the format,
    /// flags, reserved bits, stream id and exact length; does not check the
    /// links (use [`chain::link`] for that).
    pub fn from_core(
        core: &[u8],
        stream_hash: Hash,
        global_hash: Hash,
    ) -> Result<Header, CodecError> {
        let mut r = Reader::new(core);
        let format = r.u8("format")?;
        if format != FORMAT {
            return Err(invalid(
                "format",
                format!("record format {format}, this airut reads {FORMAT}"),
            ));
        }
        let flags = r.u8("flags")?;
        if flags & !FLAG_CAUSATION != 0 {
            return Err(invalid("flags", format!("unknown bits {flags:#04x}")));
        }
        let event_type = r.u16("event type")?;
        let schema_version = r.u16("schema version")?;
        let reserved = r.u16("reserved")?;
        if reserved != 0 {
            return Err(invalid("reserved", format!("{reserved:#06x}, must be 0")));
        }
        let seq = Seq(r.u64("seq")?);
        let stream_version = r.u64("stream version")?;
        let timestamp_us = r.i64("timestamp")?;
        let event_id = EventId(uuid::Uuid::from_bytes(r.array::<16>("event id")?));
        let causation_bytes = r.array::<16>("causation")?;
        let causation = if flags & FLAG_CAUSATION != 0 {
            Some(EventId(uuid::Uuid::from_bytes(causation_bytes)))
        } else if causation_bytes != [0; 16] {
            return Err(invalid("causation", "set without its flag".to_owned()));
        } else {
            None
        };
        let payload_len = r.u32("payload length")?;
        let payload_hash = r.array::<32>("payload hash")?;
        let stream_len = usize::from(r.u16("stream length")?);
        let stream_bytes = r.take(stream_len, "stream")?;
        let stream = std::str::from_utf8(stream_bytes)
            .ok()
            .and_then(|s| StreamId::parse(s).ok())
            .ok_or_else(|| invalid("stream", format!("{:?}", stream_bytes.escape_ascii())))?;
        if !r.rest().is_empty() {
            return Err(invalid(
                "core length",
                format!("{} trailing bytes", r.rest().len()),
            ));
        }
        if stream_version == 0 {
            return Err(invalid(
                "stream version",
                "0 (versions start at 1)".to_owned(),
            ));
        }
        Ok(Header {
            format,
            event_type,
            schema_version,
            seq,
            stream,
            stream_version,
            event_id,
            timestamp_us,
            causation,
            payload_len,
            payload_hash,
            stream_hash,
            global_hash,
        })
    }
}

// === keys ===

/// The `events` key of a seq: big-endian, so keys sort numerically.
pub fn seq_key(seq: Seq) -> [u8; 8] {
    seq.0.to_be_bytes()
}

/// Parses an `events` key (or a `streams` value).
pub fn parse_seq(bytes: &[u8]) -> Option<Seq> {
    <[u8; 8]>::try_from(bytes)
        .ok()
        .map(|b| Seq(u64::from_be_bytes(b)))
}

/// The prefix of every `streams` key of a stream: its bytes then 0x00 (which
/// no stream id contains, so no stream's prefix is another's).
pub fn stream_prefix(stream: &StreamId) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.as_str().len() + 9);
    key.extend_from_slice(stream.as_str().as_bytes());
    key.push(0);
    key
}

/// The `streams` key of one version of a stream.
pub fn stream_key(stream: &StreamId, version: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The version at the end of a `streams` key.
pub fn parse_stream_key_version(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    key.get(start..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

// === impl Reader ===

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if n > self.buf.len() {
            return Err(CodecError::Truncated {
                field,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N, field)?;
        <[u8; N]>::try_from(bytes).map_err(|_| invalid(field, "length".to_owned()))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        self.array::<1>(field).map(u8::from_le_bytes)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        self.array::<2>(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        self.array::<4>(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        self.array::<8>(field).map(u64::from_le_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, CodecError> {
        self.array::<8>(field).map(i64::from_le_bytes)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

fn invalid(field: &'static str, detail: String) -> CodecError {
    CodecError::Invalid { field, detail }
}
