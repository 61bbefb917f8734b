//! Masked secrets: the container sees surrogates; the proxy swaps them for
//! the real values only on allowed requests to the secret's scoped hosts,
//! only in its configured headers.
//!
//! Per secret and task, a surrogate of the same length, the same character
//! classes and the same known prefix (`ghp_`, `sk-ant-`, ...) is drawn from
//! a CSPRNG. On a scoped host:
//! 1. every header whose name matches one of the secret's header patterns
//!    is scanned, all duplicates included; the first value holding the
//!    surrogate is rewritten (inside `Basic` credentials too, for
//!    `Authorization`), and that header is collapsed to that single value;
//! 2. a header named exactly (no glob) by a secret's patterns that holds no
//!    surrogate is a foreign credential: all its values are removed, unless
//!    the secret allows foreign credentials or another secret swapped it.
//!
//! Bodies and query strings are never touched. Out of scope, surrogates go
//! through unchanged (and are noted as such). Real values never go into an
//! event or a log line: annotations carry secret names and counts.
//! Called by `http.rs` after the allowlist said yes.

use base64::Engine as _;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng as _;

use super::allowlist::pattern_match;
use crate::config::Secret;
use crate::config::network::MaskedSecretConfig;
use crate::events::{CredentialAction, CredentialAnnotation};

/// Prefixes kept as they are in a surrogate, tried in this order.
const KNOWN_PREFIXES: &[&str] = &[
    "github_pat_",
    "ghp_",
    "gho_",
    "ghs_",
    "ghr_",
    "sk-ant-",
    "sk-",
    "xoxb-",
    "xoxp-",
    "AKIA",
    "ASIA",
];

/// The masked secrets of one task, with this task's surrogates.
#[derive(Debug, Default)]
pub struct TaskCredentials {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    surrogate: String,
    real: Secret,
    scopes: Vec<String>,
    /// Header patterns, lower-cased.
    headers: Vec<String>,
    allow_foreign: bool,
}

// === impl TaskCredentials ===

impl TaskCredentials {
    /// Draws fresh surrogates for `secrets` (name → config).
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (&'a String, &'a MaskedSecretConfig)>,
    ) -> TaskCredentials {
        let entries = secrets
            .into_iter()
            .map(|(name, cfg)| Entry {
                name: name.clone(),
                surrogate: surrogate_for(cfg.value.expose()),
                real: cfg.value.clone(),
                scopes: cfg.scopes.iter().map(|s| s.to_ascii_lowercase()).collect(),
                headers: cfg.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
                allow_foreign: cfg.allow_foreign_credentials,
            })
            .collect();
        TaskCredentials { entries }
    }

    /// Name → surrogate, for the container's environment.
    pub fn surrogates(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.surrogate.clone()))
            .collect()
    }

    /// Applies the swap/strip rules to an allowed request's headers.
    pub fn apply(&self, host: &str, headers: &mut HeaderMap) -> Vec<CredentialAnnotation> {
        let mut notes = Vec::new();
        if self.entries.is_empty() {
            return notes;
        }
        let host = host.to_ascii_lowercase();
        let mut replaced: Vec<HeaderName> = Vec::new();
        let mut strip: Vec<(HeaderName, usize)> = Vec::new();
        let names: Vec<HeaderName> = {
            let mut v: Vec<HeaderName> = headers.keys().cloned().collect();
            v.dedup();
            v
        };
        for (ei, e) in self.entries.iter().enumerate() {
            if e.surrogate.is_empty() {
                continue;
            }
            let in_scope = e.scopes.iter().any(|s| pattern_match(s, &host));
            if !in_scope {
                let seen = headers
                    .values()
                    .filter(|v| v.to_str().is_ok_and(|s| s.contains(&e.surrogate)))
                    .count();
                if seen > 0 {
                    notes.push(note(&e.name, CredentialAction::LeftMasked, seen, None));
                }
                continue;
            }
            for name in &names {
                let matching: Vec<&String> = e
                    .headers
                    .iter()
                    .filter(|p| pattern_match(p, name.as_str()))
                    .collect();
                if matching.is_empty() || replaced.contains(name) {
                    continue;
                }
                let values: Vec<HeaderValue> = headers.get_all(name).iter().cloned().collect();
                let swapped = values
                    .iter()
                    .find_map(|v| swap(name.as_str(), v, &e.surrogate, e.real.expose()));
                match swapped {
                    Some(new) => {
                        headers.remove(name);
                        headers.insert(name.clone(), new);
                        replaced.push(name.clone());
                        notes.push(note(&e.name, CredentialAction::Swapped, 1, Some(name)));
                        if values.len() > 1 {
                            notes.push(note(
                                &e.name,
                                CredentialAction::Stripped,
                                values.len() - 1,
                                Some(name),
                            ));
                        }
                    }
                    None => {
                        let exact = matching.iter().any(|p| !p.contains(['*', '?', '[', ']']));
                        if exact {
                            strip.push((name.clone(), ei));
                        }
                    }
                }
            }
        }
        for (name, ei) in strip {
            let Some(e) = self.entries.get(ei) else {
                continue;
            };
            if e.allow_foreign || replaced.contains(&name) || !headers.contains_key(&name) {
                continue;
            }
            let n = headers.get_all(&name).iter().count();
            headers.remove(&name);
            notes.push(note(&e.name, CredentialAction::Stripped, n, Some(&name)));
        }
        notes
    }
}

fn note(
    secret: &str,
    action: CredentialAction,
    count: usize,
    header: Option<&HeaderName>,
) -> CredentialAnnotation {
    CredentialAnnotation {
        secret: secret.to_owned(),
        action,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        header: header.map(|h| h.as_str().to_owned()),
    }
}

/// The value with the surrogate replaced, if it holds it (in `Basic`
/// credentials of `authorization` too).
fn swap(name: &str, value: &HeaderValue, surrogate: &str, real: &str) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    if text.contains(surrogate) {
        return HeaderValue::from_str(&text.replace(surrogate, real)).ok();
    }
    if name == "authorization" {
        let (scheme, b64) = text.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = engine.decode(b64.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        if !decoded.contains(surrogate) {
            return None;
        }
        let out = engine.encode(decoded.replace(surrogate, real));
        return HeaderValue::from_str(&format!("{scheme} {out}")).ok();
    }
    None
}

/// A surrogate for `real`: same known prefix, same length, characters from
/// the classes the real suffix uses.
pub fn surrogate_for(real: &str) -> String {
    if real.is_empty() {
        return String::new();
    }
    let prefix = KNOWN_PREFIXES
        .iter()
        .find(|p| real.starts_with(**p))
        .copied()
        .unwrap_or("");
    let suffix = real.get(prefix.len()..).unwrap_or_default();
    let mut charset = String::new();
    if suffix.chars().any(|c| c.is_ascii_uppercase()) {
        charset.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    }
    if suffix.chars().any(|c| c.is_ascii_lowercase()) {
        charset.push_str("abcdefghijklmnopqrstuvwxyz");
    }
    if suffix.chars().any(|c| c.is_ascii_digit()) {
        charset.push_str("0123456789");
    }
    if suffix.chars().any(|c| !c.is_ascii_alphanumeric()) {
        charset.push_str("-_");
    }
    if charset.is_empty() {
        charset.push_str("abcdefghijklmnopqrstuvwxyz0123456789");
    }
    let chars: Vec<char> = charset.chars().collect();
    let mut rng = rand::rng();
    loop {
        let mut s = String::with_capacity(real.len());
        s.push_str(prefix);
        for _ in 0..suffix.chars().count() {
            let i = rng.random_range(0..chars.len());
            s.push(chars.get(i).copied().unwrap_or('a'));
        }
        // A surrogate equal to the secret would leak it (only possible for
        // tiny values); draw again.
        if s != real || suffix.is_empty() {
            return s;
        }
    }
}

#[cfg(test)]
mod tests;
