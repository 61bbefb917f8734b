//! The two hash chains that make the log tamper-evident (architecture §2.8,
//! §6.2): one over the whole log and one per stream.
//!
//! Each link is BLAKE3(previous link ‖ header core), starting from
//! [`GENESIS`]. The header core carries the payload's own BLAKE3
//! ([`payload_hash`]), so a link covers the payload without hashing it again,
//! and a header-only export line can still be checked link by link.
//!
//! Pure functions, no I/O: the store, `Log::verify` and the audit-export
//! verifier all use these same three items. Changing any of them changes
//! every stored hash: that is a new record format, never an edit.

use super::Hash;

/// The value before the first link of every chain (global and per stream).
pub const GENESIS: Hash = [0; 32];

/// The next link of a chain: BLAKE3(`prev` ‖ `core`).
pub fn link(prev: &Hash, core: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    hasher.update(core);
    *hasher.finalize().as_bytes()
}

/// BLAKE3 of a payload, as stored in the header core.
pub fn payload_hash(payload: &[u8]) -> Hash {
    *blake3::hash(payload).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_depend_on_order_and_content() {
        let a = link(&GENESIS, b"a");
        let ab = link(&a, b"b");
        let b = link(&GENESIS, b"b");
        let ba = link(&b, b"a");
        assert_ne!(ab, ba);
        assert_ne!(a, b);
        assert_eq!(ab, link(&link(&GENESIS, b"a"), b"b"));
        // Moving bytes between the link and the core must change the hash.
        assert_ne!(link(&GENESIS, b"ab"), ab);
    }
}
