//! `repos.<id>.email:`: the email channel of one repo, as written
//! ([`RawEmail`]) and resolved ([`EmailConfig`]).
//!
//! Owns the keys, their defaults and their checks: one mailbox per repo
//! (two repos may not read the same inbox), TLS unless `security: plain` is
//! asked for explicitly, and then only towards a loopback server; a
//! password unless Microsoft 365 OAuth2 is configured; a non-empty sender
//! allowlist of addresses and `*@domain`. Never prints a secret. Called by
//! [`super::resolve`]; the channel turns the result into its runtime parts
//! (`channels::email::config`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Secret;
use super::raw::Scalar;
use super::resolve::Resolver;

/// Default per-attachment limit (bytes).
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 30 << 20;
/// Default limit on all attachments of one mail (bytes).
pub const DEFAULT_MAX_TOTAL_ATTACHMENT_BYTES: u64 = 50 << 20;
/// Default limit on one raw mail (bytes).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 80 << 20;

/// The resolved `email:` section of a repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailConfig {
    /// airut's own address for this repo, lowercased (`airut@example.com`):
    /// plus-addressed model hints and the domain of our Message-IDs.
    pub address: String,
    /// The `From` header of replies (default: the address).
    pub from: String,
    /// Login name for IMAP and SMTP.
    pub username: String,
    /// Password for LOGIN (absent when OAuth2 is used).
    pub password: Option<Secret>,
    /// Microsoft 365 client-credentials OAuth2 (XOAUTH2 for IMAP and SMTP).
    pub oauth2: Option<OAuth2Config>,
    /// The inbox.
    pub imap: ImapConfig,
    /// The outgoing server.
    pub smtp: SmtpConfig,
    /// Who is trusted.
    pub auth: EmailAuthConfig,
    /// Extra CA certificate (PEM) trusted for IMAP and SMTP, besides the
    /// public roots (a self-hosted server with a private CA).
    pub ca_file: Option<PathBuf>,
    /// Largest attachment kept (bytes).
    pub max_attachment_bytes: u64,
    /// Largest total of attachments kept per mail (bytes).
    pub max_total_attachment_bytes: u64,
    /// Largest mail accepted (bytes).
    pub max_message_bytes: u64,
}

/// How a connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (IMAP 993, SMTP 465).
    Tls,
    /// Plain, then upgraded with STARTTLS (IMAP 143, SMTP 587); refused if
    /// the server does not offer it.
    StartTls,
    /// No TLS: only for a server on loopback, and only when written.
    Plain,
}

/// How the inbox is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapMode {
    /// IMAP IDLE: the server says when mail arrives.
    Idle,
    /// Look every `poll_interval`.
    Poll,
}

/// `email.imap:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapConfig {
    /// Server host name (also the TLS server name).
    pub host: String,
    /// Port (default 993 for TLS, 143 otherwise).
    pub port: u16,
    /// Transport security.
    pub security: Security,
    /// IDLE (default) or polling.
    pub mode: ImapMode,
    /// Time between looks when polling (default 60 s).
    pub poll_interval: Duration,
    /// IDLE is re-issued after this long (default 25 min; servers drop
    /// IDLE after 30 min).
    pub idle_timeout: Duration,
    /// The mailbox consumed (default `INBOX`).
    pub mailbox: String,
}

/// `email.smtp:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Server host name (also the TLS server name).
    pub host: String,
    /// Port (default 465 for TLS, 587 for STARTTLS, 25 for plain).
    pub port: u16,
    /// Transport security.
    pub security: Security,
}

/// `email.auth:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAuthConfig {
    /// authserv-id of the receiving server's `Authentication-Results`
    /// (empty: not checked, for Microsoft 365).
    pub trusted_authserv_id: String,
    /// Accept Microsoft 365 tenant-internal mail without DMARC results.
    pub microsoft_internal_fallback: bool,
    /// Allowed senders: addresses and `*@domain`, lowercased.
    pub authorized_senders: Vec<String>,
}

/// `email.microsoft_oauth2:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    /// Entra ID tenant.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Secret,
    /// Token endpoint (default
    /// `https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`).
    pub token_url: String,
    /// Scope asked for (default `https://outlook.office365.com/.default`).
    pub scope: String,
}

/// `email:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmail {
    pub address: Option<Scalar>,
    pub from: Option<Scalar>,
    pub username: Option<Scalar>,
    pub password: Option<Scalar>,
    pub imap: Option<RawImap>,
    pub smtp: Option<RawSmtp>,
    pub auth: Option<RawAuth>,
    pub microsoft_oauth2: Option<RawOAuth2>,
    pub ca_file: Option<Scalar>,
    pub max_attachment_bytes: Option<Scalar>,
    pub max_total_attachment_bytes: Option<Scalar>,
    pub max_message_bytes: Option<Scalar>,
}

/// `email.imap:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImap {
    pub host: Option<Scalar>,
    pub port: Option<Scalar>,
    pub security: Option<Scalar>,
    pub mode: Option<Scalar>,
    pub poll_interval: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub mailbox: Option<Scalar>,
}

/// `email.smtp:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmtp {
    pub host: Option<Scalar>,
    pub port: Option<Scalar>,
    pub security: Option<Scalar>,
}

/// `email.auth:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub trusted_authserv_id: Option<Scalar>,
    pub microsoft_internal_fallback: Option<Scalar>,
    #[serde(default)]
    pub authorized_senders: Vec<Scalar>,
}

/// `email.microsoft_oauth2:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth2 {
    pub tenant_id: Option<Scalar>,
    pub client_id: Option<Scalar>,
    pub client_secret: Option<Scalar>,
    pub token_url: Option<Scalar>,
    pub scope: Option<Scalar>,
}

// === impl EmailConfig ===

impl EmailConfig {
    /// What makes two repos' inboxes the same: host, port, user, mailbox
    /// (case-insensitive).
    pub fn inbox_identity(&self) -> (String, u16, String, String) {
        (
            self.imap.host.to_ascii_lowercase(),
            self.imap.port,
            self.username.to_ascii_lowercase(),
            self.imap.mailbox.to_ascii_lowercase(),
        )
    }
}

/// Resolves `email:` of the repo at `key` (`repos.<id>`); `line` is where
/// the section starts. `None` when a problem was recorded.
pub(super) fn resolve(
    r: &mut Resolver<'_>,
    key: &str,
    raw: &RawEmail,
    line: u64,
) -> Option<EmailConfig> {
    let before = r.problem_count();
    let key = format!("{key}.email");
    let line = [&raw.address, &raw.username, &raw.from, &raw.password]
        .into_iter()
        .flatten()
        .map(|s| s.referenced.line())
        .min()
        .unwrap_or(line);

    let address = r
        .required(&format!("{key}.address"), raw.address.as_ref(), line)
        .map(|a| a.trim().to_ascii_lowercase());
    if let (Some(a), Some(s)) = (&address, &raw.address)
        && !plain_address(a)
    {
        r.problem(
            s,
            &format!("{key}.address"),
            format!("expected one plain address such as airut@example.com, found {a:?}"),
        );
    }
    let from = match &raw.from {
        None => address.clone(),
        Some(s) => match r.optional(&format!("{key}.from"), s) {
            Some(f) if f.contains(['\r', '\n']) || !f.contains('@') => {
                r.problem(
                    s,
                    &format!("{key}.from"),
                    format!(
                        "expected an address such as \"Airut <airut@example.com>\", found {f:?}"
                    ),
                );
                None
            }
            Some(f) => Some(f.trim().to_owned()),
            None => address.clone(),
        },
    };
    let username = r.required(&format!("{key}.username"), raw.username.as_ref(), line);
    let password = raw
        .password
        .as_ref()
        .and_then(|s| r.optional(&format!("{key}.password"), s))
        .filter(|p| !p.is_empty())
        .map(Secret::new);

    let oauth2 = raw
        .microsoft_oauth2
        .as_ref()
        .and_then(|o| oauth2(r, &format!("{key}.microsoft_oauth2"), o, line));
    if password.is_none() && oauth2.is_none() && raw.microsoft_oauth2.is_none() {
        r.push_problem(
            raw.password
                .as_ref()
                .map(|s| s.referenced.line())
                .or(Some(line)),
            &format!("{key}.password"),
            "required unless microsoft_oauth2 is configured".to_owned(),
        );
    }

    let imap = match &raw.imap {
        Some(i) => imap(r, &format!("{key}.imap"), i, line),
        None => {
            r.push_problem(
                Some(line),
                &format!("{key}.imap"),
                "required (host at least)".to_owned(),
            );
            None
        }
    };
    let smtp = match &raw.smtp {
        Some(s) => smtp(r, &format!("{key}.smtp"), s, line),
        None => {
            r.push_problem(
                Some(line),
                &format!("{key}.smtp"),
                "required (host at least)".to_owned(),
            );
            None
        }
    };
    let auth = match &raw.auth {
        Some(a) => auth(r, &format!("{key}.auth"), a, line),
        None => {
            r.push_problem(
                Some(line),
                &format!("{key}.auth"),
                "required (trusted_authserv_id and authorized_senders)".to_owned(),
            );
            None
        }
    };
    let ca_file = raw
        .ca_file
        .as_ref()
        .and_then(|s| r.optional(&format!("{key}.ca_file"), s).map(|v| (s, v)))
        .and_then(|(s, v)| {
            let p = PathBuf::from(&v);
            if p.is_absolute() {
                Some(p)
            } else {
                r.problem(
                    s,
                    &format!("{key}.ca_file"),
                    format!("{v:?} is not an absolute path"),
                );
                None
            }
        });
    let mut size = |name: &str, s: &Option<Scalar>, default: u64| -> u64 {
        let Some(s) = s else { return default };
        let k = format!("{key}.{name}");
        match r.optional(&k, s) {
            None => default,
            Some(v) => match parse_size(&v) {
                Some(n) if n > 0 => n,
                _ => {
                    r.problem(
                        s,
                        &k,
                        format!("expected a size such as 25MiB or 1000000, found {v:?}"),
                    );
                    default
                }
            },
        }
    };
    let max_attachment_bytes = size(
        "max_attachment_bytes",
        &raw.max_attachment_bytes,
        DEFAULT_MAX_ATTACHMENT_BYTES,
    );
    let max_total_attachment_bytes = size(
        "max_total_attachment_bytes",
        &raw.max_total_attachment_bytes,
        DEFAULT_MAX_TOTAL_ATTACHMENT_BYTES,
    );
    let max_message_bytes = size(
        "max_message_bytes",
        &raw.max_message_bytes,
        DEFAULT_MAX_MESSAGE_BYTES,
    );

    if r.problem_count() > before {
        return None;
    }
    Some(EmailConfig {
        address: address?,
        from: from?,
        username: username?,
        password,
        oauth2,
        imap: imap?,
        smtp: smtp?,
        auth: auth?,
        ca_file,
        max_attachment_bytes,
        max_total_attachment_bytes,
        max_message_bytes,
    })
}

fn imap(r: &mut Resolver<'_>, key: &str, raw: &RawImap, line: u64) -> Option<ImapConfig> {
    let host = r.required(&format!("{key}.host"), raw.host.as_ref(), line);
    let security = security(r, key, raw.security.as_ref(), host.as_deref())?;
    let default_port = if security == Security::Tls { 993 } else { 143 };
    let port = port(r, key, raw.port.as_ref(), default_port)?;
    let mode = match raw
        .mode
        .as_ref()
        .and_then(|s| r.optional(&format!("{key}.mode"), s).map(|v| (s, v)))
    {
        None => ImapMode::Idle,
        Some((_, v)) if v == "idle" => ImapMode::Idle,
        Some((_, v)) if v == "poll" => ImapMode::Poll,
        Some((s, v)) => {
            r.problem(
                s,
                &format!("{key}.mode"),
                format!("expected idle or poll, found {v:?}"),
            );
            return None;
        }
    };
    let poll_interval = duration(
        r,
        &format!("{key}.poll_interval"),
        raw.poll_interval.as_ref(),
        60,
        1,
        24 * 3600,
    )?;
    let idle_timeout = duration(
        r,
        &format!("{key}.idle_timeout"),
        raw.idle_timeout.as_ref(),
        25 * 60,
        1,
        29 * 60,
    )?;
    let mailbox = match raw
        .mailbox
        .as_ref()
        .and_then(|s| r.optional(&format!("{key}.mailbox"), s).map(|v| (s, v)))
    {
        None => "INBOX".to_owned(),
        Some((s, v))
            if v.is_empty() || v.chars().any(|c| c.is_control() || c == '"' || c == '\\') =>
        {
            r.problem(
                s,
                &format!("{key}.mailbox"),
                format!("{v:?} is not a usable mailbox name"),
            );
            return None;
        }
        Some((_, v)) => v,
    };
    Some(ImapConfig {
        host: host?,
        port,
        security,
        mode,
        poll_interval,
        idle_timeout,
        mailbox,
    })
}

fn smtp(r: &mut Resolver<'_>, key: &str, raw: &RawSmtp, line: u64) -> Option<SmtpConfig> {
    let host = r.required(&format!("{key}.host"), raw.host.as_ref(), line);
    let security = security(r, key, raw.security.as_ref(), host.as_deref())?;
    let default_port = match security {
        Security::Tls => 465,
        Security::StartTls => 587,
        Security::Plain => 25,
    };
    let port = port(r, key, raw.port.as_ref(), default_port)?;
    Some(SmtpConfig {
        host: host?,
        port,
        security,
    })
}

fn auth(r: &mut Resolver<'_>, key: &str, raw: &RawAuth, line: u64) -> Option<EmailAuthConfig> {
    let trusted_authserv_id = match &raw.trusted_authserv_id {
        None => {
            r.push_problem(
                Some(line),
                &format!("{key}.trusted_authserv_id"),
                "required: the authserv-id your mail server writes in Authentication-Results \
                 (e.g. mx.google.com), or \"\" for Microsoft 365"
                    .to_owned(),
            );
            None
        }
        Some(s) => r
            .optional(&format!("{key}.trusted_authserv_id"), s)
            .map(|v| v.trim().to_owned()),
    };
    let microsoft_internal_fallback = match &raw.microsoft_internal_fallback {
        None => false,
        Some(s) => match r
            .optional(&format!("{key}.microsoft_internal_fallback"), s)
            .as_deref()
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                r.problem(
                    s,
                    &format!("{key}.microsoft_internal_fallback"),
                    format!("expected true or false, found {v:?}"),
                );
                false
            }
        },
    };
    let k = format!("{key}.authorized_senders");
    let mut senders = Vec::new();
    for s in &raw.authorized_senders {
        if let Some(v) = r.optional(&k, s) {
            let v = v.trim().to_ascii_lowercase();
            let ok = match v.strip_prefix("*@") {
                Some(domain) => plain_domain(domain),
                None => plain_address(&v),
            };
            if ok {
                senders.push(v);
            } else {
                r.problem(
                    s,
                    &k,
                    format!("{v:?} is not an address or *@domain (subdomain wildcards are not supported)"),
                );
            }
        }
    }
    if raw.authorized_senders.is_empty() {
        r.push_problem(
            Some(line),
            &k,
            "required: at least one address or *@domain".to_owned(),
        );
        return None;
    }
    Some(EmailAuthConfig {
        trusted_authserv_id: trusted_authserv_id?,
        microsoft_internal_fallback,
        authorized_senders: senders,
    })
}

fn oauth2(r: &mut Resolver<'_>, key: &str, raw: &RawOAuth2, line: u64) -> Option<OAuth2Config> {
    let tenant_id = r.required(&format!("{key}.tenant_id"), raw.tenant_id.as_ref(), line);
    let client_id = r.required(&format!("{key}.client_id"), raw.client_id.as_ref(), line);
    let client_secret = r.required(
        &format!("{key}.client_secret"),
        raw.client_secret.as_ref(),
        line,
    );
    let token_url = match raw
        .token_url
        .as_ref()
        .and_then(|s| r.optional(&format!("{key}.token_url"), s).map(|v| (s, v)))
    {
        None => tenant_id
            .as_ref()
            .map(|t| format!("https://login.microsoftonline.com/{t}/oauth2/v2.0/token")),
        Some((s, v)) if v.starts_with("https://") || v.starts_with("http://") => {
            if v.starts_with("http://") && !is_loopback_url(&v) {
                r.problem(
                    s,
                    &format!("{key}.token_url"),
                    format!("{v:?}: plain http is only allowed to a loopback address"),
                );
            }
            Some(v)
        }
        Some((s, v)) => {
            r.problem(
                s,
                &format!("{key}.token_url"),
                format!("expected an https:// URL, found {v:?}"),
            );
            None
        }
    };
    let scope = raw
        .scope
        .as_ref()
        .and_then(|s| r.optional(&format!("{key}.scope"), s))
        .unwrap_or_else(|| "https://outlook.office365.com/.default".to_owned());
    Some(OAuth2Config {
        tenant_id: tenant_id?,
        client_id: client_id?,
        client_secret: Secret::new(client_secret?),
        token_url: token_url?,
        scope,
    })
}

fn security(
    r: &mut Resolver<'_>,
    key: &str,
    s: Option<&Scalar>,
    host: Option<&str>,
) -> Option<Security> {
    let Some(s) = s else {
        return Some(Security::Tls);
    };
    let k = format!("{key}.security");
    match r.optional(&k, s).as_deref() {
        None | Some("tls") => Some(Security::Tls),
        Some("starttls") => Some(Security::StartTls),
        Some("plain") => {
            if host.is_some_and(is_loopback_host) {
                Some(Security::Plain)
            } else {
                r.problem(
                    s,
                    &k,
                    "plain (no TLS) is only allowed for a server on loopback (localhost, 127.0.0.1, ::1); \
                     use tls or starttls"
                        .to_owned(),
                );
                None
            }
        }
        Some(v) => {
            r.problem(
                s,
                &k,
                format!("expected tls, starttls or plain, found {v:?}"),
            );
            None
        }
    }
}

fn port(r: &mut Resolver<'_>, key: &str, s: Option<&Scalar>, default: u16) -> Option<u16> {
    let Some(s) = s else { return Some(default) };
    let k = format!("{key}.port");
    match r.optional(&k, s) {
        None => Some(default),
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 && v.bytes().all(|b| b.is_ascii_digit()) => Some(p),
            _ => {
                r.problem(
                    s,
                    &k,
                    format!("expected a port number from 1 to 65535, found {v:?}"),
                );
                None
            }
        },
    }
}

/// A duration as seconds (`90`) or humantime (`25m`, `1h 30m`), within
/// `min..=max` seconds.
fn duration(
    r: &mut Resolver<'_>,
    key: &str,
    s: Option<&Scalar>,
    default: u64,
    min: u64,
    max: u64,
) -> Option<Duration> {
    let Some(s) = s else {
        return Some(Duration::from_secs(default));
    };
    let Some(v) = r.optional(key, s) else {
        return Some(Duration::from_secs(default));
    };
    let d = if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        v.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(&v).ok()
    };
    match d {
        Some(d) if d >= Duration::from_secs(min) && d <= Duration::from_secs(max) => Some(d),
        _ => {
            r.problem(
                s,
                key,
                format!(
                    "expected a duration from {min} s to {max} s such as 60s or 25m, found {v:?}"
                ),
            );
            None
        }
    }
}

/// `123`, `25MiB`, `10MB`, `512KiB`.
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn plain_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b))
        && plain_domain(domain)
}

fn plain_domain(d: &str) -> bool {
    !d.is_empty()
        && d.contains('.')
        && !d.starts_with(['.', '-'])
        && !d.ends_with(['.', '-'])
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let authority = rest.split('/').next().unwrap_or("");
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or("").to_owned()
    };
    is_loopback_host(&host)
}

#[cfg(test)]
#[path = "email_tests.rs"]
mod tests;
