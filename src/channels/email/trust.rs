//! Who sent this mail, and may they use airut? Authentication (the receiving
//! server's DMARC verdict) and authorization (the sender allowlist).
//!
//! Owns the rules for trusting an inbound message: exactly one `From`
//! header holding one strictly parsed address; the topmost
//! `Authentication-Results` header only, written by the configured
//! authserv-id, carrying a `dmarc=pass` method result; the optional
//! Microsoft 365 internal fallback; then an allowlist of exact addresses and
//! `*@domain` patterns. Every outcome is a [`TrustDecision`] value: a
//! rejection is a normal result, recorded as `message.rejected` by the
//! caller, and never answered (no backscatter).
//!
//! Pure: bytes in, a value out. It must never do I/O, and never use
//! `mail_parser::Message::header()` for these headers (it returns the *last*
//! occurrence; the topmost one is the receiving server's). Called by the
//! email intake ([`super::inspect`]) before a message is parsed further.

#![deny(clippy::indexing_slicing)]

use mail_parser::{HeaderName, Message, MessageParser};
use serde::Serialize;

use crate::events::RejectReason;

/// How to decide whether a message is authenticated (config `email.auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustConfig {
    /// The authserv-id the receiving server writes at the start of its
    /// `Authentication-Results` header (e.g. `mx.google.com`). Empty skips the
    /// check (Microsoft 365 / EOP, whose id varies per server).
    pub trusted_authserv_id: String,
    /// Accept mail with no `Authentication-Results` header at all when
    /// `X-MS-Exchange-Organization-AuthAs` is `Internal` (Microsoft 365
    /// mail between users of the same tenant carries no DMARC result).
    pub microsoft_internal_fallback: bool,
}

/// The outcome of [`authenticate`] or [`authorize`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum TrustDecision {
    /// The sender is who the message says (and, after [`authorize`], is
    /// allowed). `sender` is the lowercased address.
    Trusted {
        /// The authenticated address, lowercased.
        sender: String,
    },
    /// Not accepted. Record it; send nothing back.
    Rejected {
        /// `NotAuthenticated` or `NotAuthorized`.
        #[serde(serialize_with = "reason_name")]
        reason: RejectReason,
        /// What failed, for the operator.
        detail: String,
        /// The `From` header(s) as claimed, sanitized (may be empty).
        claimed: String,
    },
}

/// The sender allowlist (config `email.auth.authorized_senders`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    exact: Vec<String>,
    domains: Vec<String>,
}

/// Why an allowlist entry is not usable. Config validation reports it with
/// the entry as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    /// The list is empty: nobody could use the channel. Add at least one
    /// address or `*@domain`.
    #[error("the sender allowlist is empty; add an address or *@domain")]
    Empty,
    /// The entry is neither `local@domain` nor `*@domain`.
    #[error(
        "sender pattern {0:?} is not an address or *@domain (subdomain wildcards are not supported)"
    )]
    Pattern(String),
}

/// Why a `From` header is not one strict address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromError {
    /// No `From` header.
    #[error("no From header")]
    Missing,
    /// More than one `From` header.
    #[error("{0} From headers")]
    Multiple(usize),
    /// The header does not hold exactly one plain address.
    #[error("From header is not a single plain address: {0}")]
    Invalid(&'static str),
}

// === impl TrustDecision ===

impl TrustDecision {
    fn not_authenticated(detail: impl Into<String>, claimed: String) -> Self {
        TrustDecision::Rejected {
            reason: RejectReason::NotAuthenticated,
            detail: detail.into(),
            claimed,
        }
    }

    /// The trusted sender, if any.
    pub fn sender(&self) -> Option<&str> {
        match self {
            TrustDecision::Trusted { sender } => Some(sender),
            TrustDecision::Rejected { .. } => None,
        }
    }
}

fn reason_name<S: serde::Serializer>(r: &RejectReason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(super::reject_reason_name(r))
}

// === impl Allowlist ===

impl Allowlist {
    /// Build from config entries: `user@example.com` (exact, case-insensitive)
    /// or `*@example.com` (any user at exactly that domain; not subdomains).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, AllowlistError> {
        if patterns.is_empty() {
            return Err(AllowlistError::Empty);
        }
        let mut list = Allowlist::default();
        for p in patterns {
            let written = p.as_ref();
            let lower = written.trim().to_ascii_lowercase();
            if let Some(domain) = lower.strip_prefix("*@") {
                if !valid_domain(domain) {
                    return Err(AllowlistError::Pattern(written.to_owned()));
                }
                list.domains.push(domain.to_owned());
            } else if valid_address(&lower) {
                list.exact.push(lower);
            } else {
                return Err(AllowlistError::Pattern(written.to_owned()));
            }
        }
        Ok(list)
    }

    /// Whether `sender` (an address as returned by [`strict_from`]) is allowed.
    pub fn allows(&self, sender: &str) -> bool {
        let sender = sender.to_ascii_lowercase();
        if !valid_address(&sender) {
            return false;
        }
        if self.exact.contains(&sender) {
            return true;
        }
        match sender.rsplit_once('@') {
            Some((_, domain)) => self.domains.iter().any(|d| d == domain),
            None => false,
        }
    }
}

// === authentication ===

/// Authenticate a raw message (headers only are read). Prefer
/// [`authenticate_message`] when the message is parsed anyway.
pub fn authenticate(raw: &[u8], config: &TrustConfig) -> TrustDecision {
    match MessageParser::new().parse_headers(raw) {
        Some(msg) => authenticate_message(&msg, config),
        None => TrustDecision::not_authenticated("no header section", String::new()),
    }
}

/// Authenticate a parsed message: one strict `From`, then the topmost
/// `Authentication-Results` (or the Microsoft 365 fallback).
pub fn authenticate_message(msg: &Message<'_>, config: &TrustConfig) -> TrustDecision {
    let raw = msg.raw_message.as_ref();
    let headers = TopHeaders::read(msg);
    let claimed = headers.claimed_from(raw);

    if let Some(problem) = headers.problem {
        return TrustDecision::not_authenticated(problem, claimed);
    }
    let sender = match strict_from_headers(raw, &headers.from) {
        Ok(s) => s,
        Err(e) => return TrustDecision::not_authenticated(e.to_string(), claimed),
    };

    match headers.auth_results.first() {
        Some(&(start, end)) => {
            let value = String::from_utf8_lossy(slice(raw, start, end));
            match check_auth_results(&value, config, &sender) {
                Ok(()) => TrustDecision::Trusted { sender },
                Err(detail) => TrustDecision::not_authenticated(detail, claimed),
            }
        }
        None if config.microsoft_internal_fallback => match headers.auth_as.as_slice() {
            [(start, end)] => {
                let value = String::from_utf8_lossy(slice(raw, *start, *end));
                if value.trim().eq_ignore_ascii_case("internal") {
                    TrustDecision::Trusted { sender }
                } else {
                    TrustDecision::not_authenticated(
                        "no Authentication-Results header, and X-MS-Exchange-Organization-AuthAs is not Internal",
                        claimed,
                    )
                }
            }
            [] => TrustDecision::not_authenticated(
                "no Authentication-Results header and no X-MS-Exchange-Organization-AuthAs header",
                claimed,
            ),
            _ => TrustDecision::not_authenticated(
                "more than one X-MS-Exchange-Organization-AuthAs header",
                claimed,
            ),
        },
        None => TrustDecision::not_authenticated("no Authentication-Results header", claimed),
    }
}

/// Authorize an authenticated sender against the allowlist.
pub fn authorize(sender: &str, allowlist: &Allowlist) -> TrustDecision {
    if allowlist.allows(sender) {
        TrustDecision::Trusted {
            sender: sender.to_ascii_lowercase(),
        }
    } else {
        TrustDecision::Rejected {
            reason: RejectReason::NotAuthorized,
            detail: format!("sender {sender} is not in the allowlist"),
            claimed: sender.to_owned(),
        }
    }
}

/// The single strict `From` address of a parsed message, lowercased.
pub fn strict_from(msg: &Message<'_>) -> Result<String, FromError> {
    let headers = TopHeaders::read(msg);
    strict_from_headers(msg.raw_message.as_ref(), &headers.from)
}

fn strict_from_headers(raw: &[u8], from: &[(usize, usize)]) -> Result<String, FromError> {
    match from {
        [] => Err(FromError::Missing),
        [(start, end)] => parse_from_value(slice(raw, *start, *end)),
        more => Err(FromError::Multiple(more.len())),
    }
}

/// Parse a raw (undecoded) `From` value: `addr`, or `display <addr>` with
/// exactly one `<` before exactly one `>`. Encoded-word addresses, groups,
/// lists and comments holding the address are refused.
pub fn parse_from_value(raw: &[u8]) -> Result<String, FromError> {
    let value = std::str::from_utf8(raw).map_err(|_| FromError::Invalid("not UTF-8"))?;
    let value = value.trim();
    let opens = value.matches('<').count();
    let closes = value.matches('>').count();
    let addr = if opens == 0 && closes == 0 {
        value
    } else if opens == 1 && closes == 1 {
        let (_, rest) = value
            .split_once('<')
            .ok_or(FromError::Invalid("unbalanced angle brackets"))?;
        let (inner, _) = rest
            .split_once('>')
            .ok_or(FromError::Invalid("'>' before '<'"))?;
        inner
    } else {
        return Err(FromError::Invalid("more than one angle-bracketed part"));
    };
    if addr.is_empty() {
        return Err(FromError::Invalid("no address"));
    }
    let lower = addr.to_ascii_lowercase();
    if valid_address(&lower) {
        Ok(lower)
    } else {
        Err(FromError::Invalid("address is not local@domain"))
    }
}

/// `local@domain` with the reference's character set, one `@`, and a
/// domain of non-empty dot-separated labels.
pub(crate) fn valid_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b))
        && valid_domain(domain)
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Check the topmost Authentication-Results value.
fn check_auth_results(value: &str, config: &TrustConfig, sender: &str) -> Result<(), String> {
    let stripped = strip_comments(value);
    let mut parts = split_unquoted(&stripped, ';').into_iter();
    let head = parts.next().unwrap_or_default();
    let mut rest = parts.peekable();
    if rest.peek().is_none() {
        return Err("Authentication-Results header has no ';'".to_owned());
    }
    // authserv-id [ version ]. With no configured id (Microsoft 365 /
    // EOP, whose header starts straight with `spf=…`) the id is not
    // checked and the first part may itself be a result.
    let mut leading_result = None;
    if config.trusted_authserv_id.trim().is_empty() {
        leading_result = Some(head.clone());
    } else {
        let mut words = head.split_ascii_whitespace();
        let id = words.next().unwrap_or_default();
        let version = words.next();
        if id.is_empty()
            || words.next().is_some()
            || version.is_some_and(|v| !v.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "Authentication-Results authserv-id {:?} is malformed",
                head.trim()
            ));
        }
        if !id.eq_ignore_ascii_case(config.trusted_authserv_id.trim()) {
            return Err(format!(
                "topmost Authentication-Results is from {id:?}, not the trusted {:?}",
                config.trusted_authserv_id
            ));
        }
    }
    let rest = leading_result.into_iter().chain(rest);

    let from_domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    let mut results = Vec::new();
    for resinfo in rest {
        let Some((method, result, props)) = method_result(&resinfo) else {
            continue;
        };
        if !method.eq_ignore_ascii_case("dmarc") {
            continue;
        }
        if let Some(header_from) = props
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("header.from"))
            .map(|(_, v)| v.trim_matches('"').to_ascii_lowercase())
            && header_from != from_domain
        {
            return Err(format!(
                "dmarc result is for header.from={header_from}, not the From domain {from_domain}"
            ));
        }
        results.push(result.to_ascii_lowercase());
    }
    match results.as_slice() {
        [] => Err("no dmarc result in the topmost Authentication-Results".to_owned()),
        r if r.iter().all(|x| x == "pass") => Ok(()),
        r => Err(format!("dmarc={}", r.join(","))),
    }
}

/// Method, result and properties of one resinfo.
type MethodResult = (String, String, Vec<(String, String)>);

/// `method[/version] = result` at the start of a resinfo, and its
/// `ptype.property=value` pairs.
fn method_result(resinfo: &str) -> Option<MethodResult> {
    let s = resinfo.trim();
    let (lhs, after) = s.split_once('=')?;
    let method = lhs.trim();
    let method = method.split_once('/').map_or(method, |(m, _)| m.trim());
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let after = after.trim_start();
    let end = after
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(after.len());
    let (result, tail) = after.split_at(end);
    if result.is_empty()
        || !result
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    let props = tail
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((method.to_owned(), result.to_owned(), props))
}

/// Remove RFC 5322 comments (nested parentheses, `\`-escapes), outside
/// quoted strings; each comment becomes one space.
fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' if in_quote || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                in_quote = !in_quote;
                out.push(c);
            }
            '(' if !in_quote => {
                depth = depth.saturating_add(1);
                if depth == 1 {
                    out.push(' ');
                }
            }
            ')' if !in_quote && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

/// Split on `sep` outside double-quoted strings.
fn split_unquoted(value: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            cur.push(c);
            continue;
        }
        match c {
            '\\' if in_quote => {
                escaped = true;
                cur.push(c);
            }
            '"' => {
                in_quote = !in_quote;
                cur.push(c);
            }
            c if c == sep && !in_quote => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

/// The trust-relevant top-level header fields, in order, as byte ranges of
/// their raw values.
struct TopHeaders {
    from: Vec<(usize, usize)>,
    auth_results: Vec<(usize, usize)>,
    auth_as: Vec<(usize, usize)>,
    /// A reason to refuse the header section outright.
    problem: Option<String>,
}

const AUTH_AS: &str = "x-ms-exchange-organization-authas";

impl TopHeaders {
    fn read(msg: &Message<'_>) -> Self {
        let raw = msg.raw_message.as_ref();
        let mut out = TopHeaders {
            from: Vec::new(),
            auth_results: Vec::new(),
            auth_as: Vec::new(),
            problem: None,
        };
        let Some(root) = msg.parts.first() else {
            out.problem = Some("no header section".to_owned());
            return out;
        };
        let section = slice(raw, root.offset_header as usize, root.offset_body as usize);
        if has_bare_cr_or_nul(section) {
            out.problem = Some("header section contains a bare CR or NUL byte".to_owned());
        }
        for h in &root.headers {
            let (field, start, end) = (
                h.offset_field as usize,
                h.offset_start as usize,
                h.offset_end as usize,
            );
            let target = match &h.name {
                HeaderName::From => &mut out.from,
                HeaderName::AuthenticationResults => &mut out.auth_results,
                HeaderName::Other(n) if n.eq_ignore_ascii_case(AUTH_AS) => &mut out.auth_as,
                HeaderName::Other(n) => {
                    // mail-parser ignores whitespace inside field names; a
                    // name that only becomes a trusted one that way is a
                    // smuggling attempt, not a header to skip.
                    let squeezed: String = n.chars().filter(|c| !c.is_whitespace()).collect();
                    if ["from", "authentication-results", AUTH_AS]
                        .iter()
                        .any(|t| squeezed.eq_ignore_ascii_case(t))
                    {
                        out.problem = Some(format!("malformed header field name {:?}", n.as_ref()));
                    }
                    continue;
                }
                _ => continue,
            };
            // The name as written must be exactly a field name (no
            // whitespace), else other software may not see the same header.
            let name = slice(raw, field, start.saturating_sub(1));
            if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b) && b != b':') {
                out.problem = Some(format!(
                    "malformed header field name {:?}",
                    String::from_utf8_lossy(name)
                ));
            }
            target.push((start, end));
        }
        out
    }

    fn claimed_from(&self, raw: &[u8]) -> String {
        let joined = self
            .from
            .iter()
            .map(|&(s, e)| String::from_utf8_lossy(slice(raw, s, e)).trim().to_owned())
            .collect::<Vec<_>>()
            .join(", ");
        super::parse::clean_line(&joined, 320)
    }
}

fn slice(raw: &[u8], start: usize, end: usize) -> &[u8] {
    raw.get(start..end).unwrap_or_default()
}

fn has_bare_cr_or_nul(section: &[u8]) -> bool {
    let mut iter = section.iter().peekable();
    while let Some(&b) = iter.next() {
        if b == 0 || (b == b'\r' && iter.peek() != Some(&&b'\n')) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TrustConfig {
        TrustConfig {
            trusted_authserv_id: "mx.example.net".to_owned(),
            microsoft_internal_fallback: false,
        }
    }

    fn mail(headers: &str) -> Vec<u8> {
        format!("{headers}Subject: x\r\n\r\nbody\r\n").into_bytes()
    }

    fn decide(headers: &str) -> TrustDecision {
        authenticate(&mail(headers), &cfg())
    }

    fn trusted(headers: &str) -> bool {
        matches!(decide(headers), TrustDecision::Trusted { .. })
    }

    const FROM: &str = "From: Alice <alice@example.com>\r\n";

    #[test]
    fn dmarc_pass_from_trusted_server() {
        assert_eq!(
            decide(&format!(
                "Authentication-Results: mx.example.net; dmarc=pass header.from=example.com\r\n{FROM}"
            )),
            TrustDecision::Trusted {
                sender: "alice@example.com".to_owned()
            }
        );
    }

    #[test]
    fn dmarc_pass_must_be_a_method_result() {
        for ar in [
            "mx.example.net; dmarc=passed",
            "mx.example.net; xdmarc=pass",
            "mx.example.net; spf=pass (dmarc=pass)",
            "mx.example.net; spf=pass smtp.mailfrom=\"dmarc=pass\"",
            "mx.example.net; dmarc=(pass)fail",
            "mx.example.net; dmarc=fail",
            "mx.example.net; dmarc=none",
            "mx.example.net; spf=pass",
            "mx.example.net dmarc=pass",
            "mx.example.net; dmarc=pass; dmarc=fail",
            "mx.example.net; dmarc=pass header.from=evil.example",
        ] {
            assert!(
                !trusted(&format!("Authentication-Results: {ar}\r\n{FROM}")),
                "{ar}"
            );
        }
        for ar in [
            "mx.example.net; dmarc=pass",
            "MX.EXAMPLE.NET; DMARC=PASS",
            "mx.example.net 1; dmarc=pass (p=NONE sp=NONE) header.from=example.com",
            "mx.example.net;\r\n dkim=pass header.d=example.com;\r\n dmarc=pass",
            "mx.example.net; dmarc/1=pass",
        ] {
            assert!(
                trusted(&format!("Authentication-Results: {ar}\r\n{FROM}")),
                "{ar}"
            );
        }
    }

    #[test]
    fn only_the_topmost_authentication_results_counts() {
        assert!(!trusted(&format!(
            "Authentication-Results: mx.example.net; dmarc=fail\r\n\
             Authentication-Results: mx.example.net; dmarc=pass\r\n{FROM}"
        )));
        assert!(!trusted(&format!(
            "Authentication-Results: other.example; dmarc=pass\r\n\
             Authentication-Results: mx.example.net; dmarc=pass\r\n{FROM}"
        )));
    }

    #[test]
    fn empty_authserv_id_skips_the_id_check() {
        let cfg = TrustConfig::default();
        let raw = mail(&format!(
            "Authentication-Results: anything; dmarc=pass\r\n{FROM}"
        ));
        assert!(authenticate(&raw, &cfg).sender().is_some());
    }

    #[test]
    fn microsoft_fallback_only_without_any_results_header() {
        let cfg = TrustConfig {
            trusted_authserv_id: String::new(),
            microsoft_internal_fallback: true,
        };
        let ok = mail(&format!(
            "X-MS-Exchange-Organization-AuthAs: Internal\r\n{FROM}"
        ));
        assert!(authenticate(&ok, &cfg).sender().is_some());
        let anon = mail(&format!(
            "X-MS-Exchange-Organization-AuthAs: Anonymous\r\n{FROM}"
        ));
        assert!(authenticate(&anon, &cfg).sender().is_none());
        let with_ar = mail(&format!(
            "Authentication-Results: x; dmarc=fail\r\nX-MS-Exchange-Organization-AuthAs: Internal\r\n{FROM}"
        ));
        assert!(authenticate(&with_ar, &cfg).sender().is_none());
        let off = TrustConfig::default();
        assert!(authenticate(&ok, &off).sender().is_none());
    }

    #[test]
    fn strict_from_values() {
        let ok = |v: &str| parse_from_value(v.as_bytes()).ok();
        assert_eq!(
            ok("alice@example.com").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            ok(" Alice <Alice@Example.COM> ").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            ok("=?utf-8?q?Al=C3=AFce?= <alice@example.com>").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            ok("\"bob@example.com\" <eve@evil.example>").as_deref(),
            Some("eve@evil.example")
        );
        for bad in [
            "",
            "Alice",
            "<>",
            "a@b.com, c@d.com",
            "alice@example.com (bob@example.com)",
            "\"x <bob@example.com>\" <eve@evil.example>",
            "Alice <alice@example.com",
            "> alice@example.com <",
            "=?utf-8?q?alice=40example.com?=",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
            "a@b@c.com",
            "group: alice@example.com;",
        ] {
            assert_eq!(ok(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn allowlist_is_strict_about_domains() {
        let list = Allowlist::new(&["*@example.com", "Bob@Other.org"]).unwrap();
        assert!(list.allows("a@example.com"));
        assert!(list.allows("A@EXAMPLE.COM"));
        assert!(list.allows("bob@other.org"));
        assert!(!list.allows("a@sub.example.com"));
        assert!(!list.allows("a@example.com.evil"));
        assert!(!list.allows("a@notexample.com"));
        assert!(!list.allows("bob2@other.org"));
        assert!(!list.allows("a@example.com@evil.org"));
        assert_eq!(Allowlist::new::<&str>(&[]), Err(AllowlistError::Empty));
        for bad in [
            "*@*.example.com",
            "*example.com",
            "@example.com",
            "*@",
            "*@x..com",
            "a@b@c.com",
        ] {
            assert!(Allowlist::new(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn comments_are_removed_with_nesting_and_escapes() {
        assert_eq!(strip_comments("a (b (c) d) e"), "a   e");
        assert_eq!(strip_comments("a (b \\) dmarc=pass) e"), "a   e");
        assert_eq!(strip_comments("a \"(x)\" b"), "a \"(x)\" b");
    }
}
