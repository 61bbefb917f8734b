//! Serde `with` module for 32-byte digests (BLAKE3 hashes in payloads).
//!
//! JSON shows a digest as 64 lowercase hex digits, as `airut check` and the
//! dashboard print it, not as an array of 32 numbers. Only the serde form
//! changes: the rkyv layout of a `[u8; 32]` field stays as it is. Decoding
//! accepts either case.
//!
//! Use with `#[serde(with = "crate::events::hex32")]` on a `[u8; 32]` field.

use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Writes the digest as 64 lowercase hex digits.
pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(bytes))
}

/// Reads 64 hex digits (either case) into a digest.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    decode(&s).ok_or_else(|| de::Error::invalid_value(de::Unexpected::Str(&s), &"64 hex digits"))
}

/// The digest as 64 lowercase hex digits.
pub fn encode(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses 64 hex digits (either case); `None` for anything else.
pub fn decode(s: &str) -> Option<[u8; 32]> {
    // Checked up front: `from_str_radix` alone would accept a `+` sign.
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Wrap(#[serde(with = "super")] [u8; 32]);

    #[test]
    fn digests_are_lowercase_hex_in_json_and_round_trip() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0xa0);
        }
        let json = serde_json::to_string(&Wrap(bytes)).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(json, format!("\"{}\"", encode(&bytes)));
        assert!(!json.chars().any(|c| c.is_ascii_uppercase()));
        assert_eq!(serde_json::from_str::<Wrap>(&json).unwrap(), Wrap(bytes));
        let upper = json.to_ascii_uppercase();
        assert_eq!(serde_json::from_str::<Wrap>(&upper).unwrap(), Wrap(bytes));
    }

    #[test]
    fn bad_digests_are_refused() {
        for bad in [
            "\"\"",
            "\"00\"",
            &format!("\"{}\"", "0".repeat(63)),
            &format!("\"{}\"", "0".repeat(65)),
            &format!("\"{}\"", "g".repeat(64)),
            &format!("\"+{}\"", "0".repeat(63)),
            &format!("\"é{}\"", "0".repeat(62)),
            "[0,1,2]",
        ] {
            assert!(serde_json::from_str::<Wrap>(bad).is_err(), "{bad} accepted");
        }
    }
}
