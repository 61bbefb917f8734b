//! The repository's network allowlist: `.airut/network-allowlist.yaml`,
//! parsed strictly and matched exactly as the reference system does.
//!
//! Owns: parsing (unknown keys are errors; a missing or invalid file never
//! means an open network: the caller turns [`AllowlistError`] into a task
//! error or a block-everything list), path normalisation (single percent
//! decoding, NUL / backslash / dot-dot rejection) and the match itself.
//!
//! Matching rules (kept on purpose, traps included):
//! * a pattern is a glob only when it contains `*` or `?` (then `[...]`
//!   classes work too); otherwise it is compared for equality, so `[ab]c` is
//!   literal;
//! * `*` crosses `/` and `.`; a glob must match the whole string;
//! * hosts compare case-insensitively, paths case-sensitively;
//! * the path includes the query string, so `path: /graphql` does not match
//!   `/graphql?x=1`;
//! * `domains` allow every path and method; `url_prefixes` are scanned in
//!   order and a host+path match with a wrong method does not stop the scan.
//!
//! Called by `http.rs` for every request; never does I/O.

#![deny(clippy::indexing_slicing)]

use serde::Deserialize;

/// Largest allowlist file accepted.
pub const MAX_ALLOWLIST_BYTES: usize = 256 * 1024;

/// A parsed allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Host patterns allowed for every path and method.
    pub domains: Vec<String>,
    /// Host + path (+ method) entries, in file order.
    pub url_prefixes: Vec<UrlPrefix>,
}

/// One `url_prefixes` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlPrefix {
    /// Host pattern (case-insensitive).
    pub host: String,
    /// Path pattern (case-sensitive); empty = every path.
    #[serde(default)]
    pub path: String,
    /// Allowed methods (case-insensitive); empty = every method.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// The outcome of matching one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; `rule` names the entry as written (`domains: *.github.com`,
    /// `url_prefixes[2]: api.github.com /repos/* [GET]`).
    Allow {
        /// The matching rule, for the audit event.
        rule: String,
    },
    /// The path is malformed (NUL, backslash, dot-dot segment).
    BadPath {
        /// What was wrong.
        reason: &'static str,
    },
    /// Host and path matched an entry, but not with this method.
    MethodNotAllowed,
    /// Nothing matched.
    NotListed,
}

/// Why an allowlist could not be used. Every variant means "block
/// everything and tell the user".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    /// The file is not valid YAML or has unknown keys / wrong shapes.
    #[error(".airut/network-allowlist.yaml is invalid: {0}")]
    Invalid(String),
    /// The file is larger than [`MAX_ALLOWLIST_BYTES`].
    #[error(".airut/network-allowlist.yaml is {0} bytes; the limit is {MAX_ALLOWLIST_BYTES}")]
    TooLarge(usize),
    /// The file is missing from the default branch: nothing is allowed.
    #[error(
        ".airut/network-allowlist.yaml is missing on the default branch, so the agent has no network access; add the file (by pull request) to allow hosts"
    )]
    Missing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowlist {
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    url_prefixes: Vec<UrlPrefix>,
}

// === impl Allowlist ===

impl Allowlist {
    /// Parses the file's bytes. An empty (or `null`) document is an empty
    /// allowlist (which blocks everything).
    pub fn parse(bytes: &[u8]) -> Result<Allowlist, AllowlistError> {
        if bytes.len() > MAX_ALLOWLIST_BYTES {
            return Err(AllowlistError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| AllowlistError::Invalid(format!("not UTF-8: {e}")))?;
        let raw: Option<RawAllowlist> =
            serde_saphyr::from_str(text).map_err(|e| AllowlistError::Invalid(e.to_string()))?;
        let raw = raw.unwrap_or_default();
        let mut problems = Vec::new();
        for (i, d) in raw.domains.iter().enumerate() {
            if d.trim().is_empty() {
                problems.push(format!("domains[{i}] is empty"));
            }
        }
        for (i, u) in raw.url_prefixes.iter().enumerate() {
            if u.host.trim().is_empty() {
                problems.push(format!("url_prefixes[{i}].host is empty"));
            }
            for m in &u.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    problems.push(format!("url_prefixes[{i}].methods: {m:?} is not a method"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(AllowlistError::Invalid(problems.join("; ")));
        }
        Ok(Allowlist {
            domains: raw.domains,
            url_prefixes: raw.url_prefixes,
        })
    }

    /// Decides on one request. `raw_path` is the path and query as sent
    /// (decoded here exactly once); `host` without port.
    pub fn check(&self, host: &str, raw_path: &str, method: &str) -> Verdict {
        let path = match normalize_path(raw_path) {
            Ok(p) => p,
            Err(reason) => return Verdict::BadPath { reason },
        };
        let host = host.to_ascii_lowercase();
        for d in &self.domains {
            if pattern_match(&d.to_ascii_lowercase(), &host) {
                return Verdict::Allow {
                    rule: format!("domains: {d}"),
                };
            }
        }
        let mut method_blocked = false;
        for (i, u) in self.url_prefixes.iter().enumerate() {
            if !pattern_match(&u.host.to_ascii_lowercase(), &host) {
                continue;
            }
            if !u.path.is_empty() && !pattern_match(&u.path, &path) {
                continue;
            }
            if u.methods.is_empty()
                || method.is_empty()
                || u.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
            {
                let mut rule = format!("url_prefixes[{i}]: {}", u.host);
                if !u.path.is_empty() {
                    rule.push(' ');
                    rule.push_str(&u.path);
                }
                if !u.methods.is_empty() {
                    rule.push_str(&format!(" [{}]", u.methods.join(", ")));
                }
                return Verdict::Allow { rule };
            }
            method_blocked = true;
        }
        if method_blocked {
            Verdict::MethodNotAllowed
        } else {
            Verdict::NotListed
        }
    }
}

/// Decodes the path (with its query) once and rejects what could confuse
/// the allowlist or the upstream: NUL, any backslash, a `..` segment.
pub fn normalize_path(raw: &str) -> Result<String, &'static str> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    if decoded.contains('\0') {
        return Err("the path contains a NUL byte");
    }
    if decoded.contains('\\') {
        return Err("the path contains a backslash");
    }
    // The path part only (a `..` inside the query string is harmless data,
    // but the reference rejects it too: keep that, it is stricter).
    if decoded.contains("/../") || decoded.ends_with("/..") || decoded.contains("/..?") {
        return Err("the path contains a '..' segment");
    }
    Ok(decoded)
}

/// A pattern matches when equal, or, only if it contains `*` or `?`, when
/// it matches as a shell glob (`*`, `?`, `[seq]`, `[!seq]`) over the whole
/// string, `*` crossing every character.
pub fn pattern_match(pattern: &str, s: &str) -> bool {
    if pattern.contains(['*', '?']) {
        let p: Vec<char> = pattern.chars().collect();
        let s: Vec<char> = s.chars().collect();
        glob(&p, &s)
    } else {
        pattern == s
    }
}

/// Iterative glob with single-star backtracking (linear-ish, no recursion
/// blow-up on hostile patterns).
fn glob(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if si == s.len() {
            // Only trailing stars may remain.
            return p
                .get(pi..)
                .is_some_and(|rest| rest.iter().all(|&c| c == '*'));
        }
        let c = s.get(si).copied();
        let step = match p.get(pi).copied() {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class(p, pi, c.unwrap_or('\0')) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // An unclosed `[` is a literal, as in fnmatch.
                None => (c == Some('[')).then_some(1),
            },
            Some(pc) => (Some(pc) == c).then_some(1),
            None => None,
        };
        match step {
            Some(len) => {
                pi += len;
                si += 1;
            }
            None => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
}

/// Matches a `[...]` class at `p[start]` against `c`: `(matched, pattern
/// length)`, or `None` when the class is not closed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let first = i;
    let mut matched = false;
    loop {
        let pc = *p.get(i)?;
        if pc == ']' && i > first {
            break;
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            let hi = *p.get(i + 2)?;
            if pc <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if pc == c {
                matched = true;
            }
            i += 1;
        }
    }
    Some((matched != negate, i + 1 - start))
}

#[cfg(test)]
mod tests;
