//! Content-addressed blobs (architecture §6.6): raw emails, attachments,
//! long outputs, stored in the `blobs` keyspace under their BLAKE3 hash.
//!
//! An event refers to a blob by [`BlobRef`] (hash and size), so the hash
//! chain covers the content, and the store directory is the whole backup.
//! Writing is idempotent (same content, same key, written once). Reading
//! checks the content against its hash, because disk bytes are not trusted.
//!
//! Durability: a blob goes to the same journal as the events, before the
//! event that refers to it; the durable append of that event (or
//! `Log::sync_to`) fsyncs both. Blocking calls: from async code, run them in
//! `spawn_blocking` with a clone of the `Log`.

use fjall::Keyspace;

use super::Hash;
use crate::events::BlobRef;

/// Errors from the blob keyspace.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The stored content does not match its hash: the store is damaged.
    /// Restore the store (or that blob) from a backup; `airut check` lists
    /// the events that refer to it.
    #[error("blob {hash} is corrupt: its content does not match its hash")]
    Corrupt {
        /// The blob's hash, hex.
        hash: String,
    },
    /// fjall failed. Retry once; if it persists, the disk needs attention.
    #[error("blob storage: {0}")]
    Storage(String),
}

/// Stores `content` unless a blob with its hash exists; returns its reference.
pub(super) fn put(blobs: &Keyspace, content: &[u8]) -> Result<BlobRef, BlobError> {
    let hash = *blake3::hash(content).as_bytes();
    let exists = blobs
        .contains_key(hash)
        .map_err(|e| BlobError::Storage(e.to_string()))?;
    if !exists {
        blobs
            .insert(hash, content)
            .map_err(|e| BlobError::Storage(e.to_string()))?;
    }
    Ok(BlobRef {
        hash,
        size: content.len() as u64,
    })
}

/// Reads a blob and checks it against `hash`; `None` when absent.
pub(super) fn get(blobs: &Keyspace, hash: &Hash) -> Result<Option<Vec<u8>>, BlobError> {
    let Some(value) = blobs
        .get(hash)
        .map_err(|e| BlobError::Storage(e.to_string()))?
    else {
        return Ok(None);
    };
    if blake3::hash(&value).as_bytes() != hash {
        return Err(BlobError::Corrupt { hash: hex(hash) });
    }
    Ok(Some(value.to_vec()))
}

/// Lowercase hex of a hash, for messages.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
