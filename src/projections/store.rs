//! Storage plumbing shared by the projections: keyspace naming, the meta
//! record (schema version + checkpoint), order-preserving key encodings, and
//! the per-chunk write-back cache of views.
//!
//! Owns nothing about any one read model: each projection module decides its
//! keys and views and uses these pieces. Callers are the projection modules
//! and the runner in `mod.rs`.
//!
//! Must never: write a view outside the batch that carries its checkpoint, or
//! keep a cache alive across chunks (memory stays bounded by one chunk).

use std::collections::HashMap;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, Readable, Snapshot};

/// Memtable size of each projection keyspace (there are a dozen; each may
/// also hold a few sealed memtables while they flush).
const PROJECTION_MEMTABLE_BYTES: u64 = 2 * 1024 * 1024;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::events::Seq;

use super::ProjectionError;

/// Key of the meta record in each projection's `_meta` keyspace.
pub(crate) const META_KEY: &[u8] = b"meta";

/// What a projection records next to its state: the schema version of its
/// stored views and the last sequence folded into them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// The projection's schema version when the state was written.
    pub(crate) version: u32,
    /// The last applied sequence; `None` when nothing was applied.
    pub(crate) checkpoint: Option<Seq>,
}

/// Which set of keyspaces a projection instance writes to: the live ones
/// (`proj_…`) or the scratch ones a verification rebuilds into (`projtmp_…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Namespace {
    /// The live, checkpointed state.
    Live,
    /// Scratch space for `verify_rebuild`; dropped afterwards.
    Scratch,
}

// === impl Namespace ===

impl Namespace {
    /// The keyspace name for `<projection>_<what>`.
    pub(crate) fn keyspace_name(self, projection: &str, what: &str) -> String {
        match self {
            Namespace::Live => format!("proj_{projection}_{what}"),
            Namespace::Scratch => format!("projtmp_{projection}_{what}"),
        }
    }
}

/// Opens (or creates) one projection keyspace.
pub(crate) fn open_keyspace(
    db: &Database,
    ns: Namespace,
    projection: &str,
    what: &str,
) -> Result<Keyspace, ProjectionError> {
    let name = ns.keyspace_name(projection, what);
    // Projection keyspaces are many and written in bursts; small memtables
    // keep the server's memory bounded (fjall's default is 64 MiB each).
    db.keyspace(&name, || {
        KeyspaceCreateOptions::default().max_memtable_size(PROJECTION_MEMTABLE_BYTES)
    })
    .map_err(|e| ProjectionError::storage(format!("open keyspace {name}"), e))
}

/// Reads the meta record, if any.
pub(crate) fn read_meta(meta: &Keyspace) -> Result<Option<Meta>, ProjectionError> {
    let Some(bytes) = meta
        .get(META_KEY)
        .map_err(|e| ProjectionError::storage("read projection meta", e))?
    else {
        return Ok(None);
    };
    decode(meta, META_KEY, &bytes).map(Some)
}

/// Encodes a view or meta record as stored (serde_json).
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain structs (string keys, no maps with non-string
    // keys, no failing Serialize impls) cannot fail.
    serde_json::to_vec(value).expect("projection views serialise to JSON")
}

/// Decodes a stored value, naming the keyspace and key when it is corrupt.
pub(crate) fn decode<T: DeserializeOwned>(
    ks: &Keyspace,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, ProjectionError> {
    serde_json::from_slice(bytes).map_err(|e| ProjectionError::Corrupt {
        keyspace: ks.name().to_string(),
        key: printable_key(key),
        reason: e.to_string(),
    })
}

/// Reads and decodes one value as last committed.
pub(crate) fn get_json<T: DeserializeOwned>(
    ks: &Keyspace,
    key: &[u8],
) -> Result<Option<T>, ProjectionError> {
    let bytes = ks
        .get(key)
        .map_err(|e| ProjectionError::storage(format!("read {}", ks.name()), e))?;
    bytes.map(|b| decode(ks, key, &b)).transpose()
}

/// Reads and decodes one value as of a snapshot.
pub(crate) fn get_json_at<T: DeserializeOwned>(
    snap: &Snapshot,
    ks: &Keyspace,
    key: &[u8],
) -> Result<Option<T>, ProjectionError> {
    let bytes = snap
        .get(ks, key)
        .map_err(|e| ProjectionError::storage(format!("read {}", ks.name()), e))?;
    bytes.map(|b| decode(ks, key, &b)).transpose()
}

/// A key for humans: printable ASCII as is, other bytes as `\xNN`.
pub(crate) fn printable_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

// --- key encodings -------------------------------------------------------

/// A sequence number as 8 big-endian bytes (byte order = numeric order).
pub(crate) fn seq_bytes(seq: Seq) -> [u8; 8] {
    seq.0.to_be_bytes()
}

/// A signed timestamp as 8 bytes whose byte order is numeric order (sign bit
/// flipped, big-endian).
pub(crate) fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`ts_bytes`].
pub(crate) fn ts_from_bytes(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Reads 8 bytes at `at` as an array, if the slice is long enough.
pub(crate) fn array8(bytes: &[u8], at: usize) -> Option<[u8; 8]> {
    bytes.get(at..at + 8)?.try_into().ok()
}

/// Appends a length-prefixed string, so that a string is never a prefix of
/// another key component and prefix scans per string are exact.
pub(crate) fn push_str(key: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

// --- write-back cache ----------------------------------------------------

/// One cached view: as it was read from disk, and as the chunk left it.
#[derive(Debug)]
pub(crate) struct Cached<V> {
    /// The stored value when the chunk first touched it.
    pub(crate) before: Option<V>,
    /// The value after the events applied so far.
    pub(crate) now: Option<V>,
}

/// A write-back cache of views of one keyspace, alive for one chunk.
///
/// The first access to a key reads it from disk; later accesses in the chunk
/// hit memory, so a thousand output lines of one task cost one read and one
/// write. [`Views::drain`] hands every touched entry to the flush, which
/// writes `now` and adjusts indexes from the difference with `before`.
pub(crate) struct Views<V> {
    ks: Keyspace,
    map: HashMap<Vec<u8>, Cached<V>>,
}

// === impl Views ===

impl<V: Serialize + DeserializeOwned + Clone> Views<V> {
    /// An empty cache over `ks`.
    pub(crate) fn new(ks: Keyspace) -> Self {
        Views {
            ks,
            map: HashMap::new(),
        }
    }

    /// The keyspace the views live in.
    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.ks
    }

    /// The view at `key`, read through the cache; `None` when absent.
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Result<Option<&mut V>, ProjectionError> {
        Ok(self.entry(key)?.now.as_mut())
    }

    /// Puts `value` at `key`, replacing whatever was there.
    pub(crate) fn put(&mut self, key: &[u8], value: V) -> Result<(), ProjectionError> {
        self.entry(key)?.now = Some(value);
        Ok(())
    }

    /// Removes the view at `key` and returns it.
    pub(crate) fn take(&mut self, key: &[u8]) -> Result<Option<V>, ProjectionError> {
        Ok(self.entry(key)?.now.take())
    }

    fn entry(&mut self, key: &[u8]) -> Result<&mut Cached<V>, ProjectionError> {
        if !self.map.contains_key(key) {
            let before: Option<V> = get_json(&self.ks, key)?;
            self.map.insert(
                key.to_vec(),
                Cached {
                    now: before.clone(),
                    before,
                },
            );
        }
        Ok(self
            .map
            .get_mut(key)
            .expect("entry was inserted just above"))
    }

    /// Forgets everything cached (after a failed chunk).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// Writes every changed view (insert or remove) into `batch`, calls
    /// `hook` with each touched entry (for index upkeep), and empties the
    /// cache.
    pub(crate) fn flush(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        mut hook: impl FnMut(&mut fjall::OwnedWriteBatch, &Cached<V>),
    ) where
        V: PartialEq,
    {
        for (key, entry) in self.map.drain() {
            if entry.before != entry.now {
                match &entry.now {
                    Some(v) => batch.insert(&self.ks, key, encode(v)),
                    None => batch.remove(&self.ks, key),
                }
            }
            hook(batch, &entry);
        }
    }
}

/// Index keys to delete and insert for one view that went from `before` to
/// `now`, given the set of index keys each state implies. Keys present in
/// both are left alone, so no key is both removed and inserted in one batch.
pub(crate) fn index_diff(before: &[Vec<u8>], now: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let removed = before
        .iter()
        .filter(|k| !now.contains(k))
        .cloned()
        .collect();
    let added = now
        .iter()
        .filter(|k| !before.contains(k))
        .cloned()
        .collect();
    (removed, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_bytes_sort_numerically_across_zero() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, 1 << 40, i64::MAX];
        for pair in values.windows(2) {
            assert!(ts_bytes(pair[0]) < ts_bytes(pair[1]), "{pair:?}");
        }
        for v in values {
            assert_eq!(ts_from_bytes(ts_bytes(v)), v);
        }
    }

    #[test]
    fn printable_keys_escape_binary() {
        assert_eq!(printable_key(b"ab\x00\\"), "ab\\x00\\x5c");
    }

    #[test]
    fn index_diff_keeps_common_keys() {
        let a = vec![b"x".to_vec(), b"y".to_vec()];
        let b = vec![b"y".to_vec(), b"z".to_vec()];
        assert_eq!(
            index_diff(&a, &b),
            (vec![b"x".to_vec()], vec![b"z".to_vec()])
        );
    }
}
