//! `repos.<id>.network:`: the network sandbox of one repository.
//!
//! ```yaml
//! network:
//!   sandbox_enabled: true             # default; false = no proxy, no allowlist (unsafe)
//!   upstream_overrides:               # host -> URL the proxy sends its requests to
//!     api.anthropic.com: https://llm-gateway.internal:8443
//!   extra_ca_file: /etc/airut/internal-ca.pem   # trusted upstream, besides the system roots
//!   max_request_body: 32MiB
//!   upstream_timeout: 120s            # until the upstream's response head
//!   masked_secrets:                   # the container only sees a surrogate
//!     GH_TOKEN:
//!       value: !env GH_TOKEN
//!       scopes: [api.github.com, "*.githubusercontent.com"]
//!       headers: [Authorization]
//!       allow_foreign_credentials: false
//!   plain_secrets:                    # passed into the container as they are
//!     NPM_TOKEN: !env NPM_TOKEN
//! ```
//!
//! Parsed in the two config stages: [`RawNetwork`] (as written) and
//! [`resolve`] (checked, defaults applied). Never prints a secret value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Secret;
use super::raw::{Scalar, pairs};
use super::resolve::Resolver;

/// Default cap on request bodies the proxy reads (32 MiB).
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 32 * 1024 * 1024;

/// Default wait for an upstream's response head.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// The resolved `network:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Whether the agent runs behind the proxy (it should).
    pub sandbox_enabled: bool,
    /// Host (lower-case) → base URL requests to it are sent to instead.
    pub upstream_overrides: BTreeMap<String, String>,
    /// PEM file of CA certificates trusted for upstreams, besides the
    /// system roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Largest request body forwarded, in bytes.
    pub max_request_body: u64,
    /// How long to wait for an upstream's response head.
    pub upstream_timeout: Duration,
    /// Secrets the container only sees as surrogates, by env name.
    pub masked_secrets: BTreeMap<String, MaskedSecretConfig>,
    /// Secrets passed into the container as they are, by env name. The
    /// agent can read and send them anywhere the allowlist permits.
    pub plain_secrets: BTreeMap<String, Secret>,
}

/// One masked secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedSecretConfig {
    /// The real value.
    pub value: Secret,
    /// Host patterns the real value may be sent to.
    pub scopes: Vec<String>,
    /// Header-name patterns it may be placed in.
    pub headers: Vec<String>,
    /// Keep credentials the agent sends itself in exactly-named headers.
    pub allow_foreign_credentials: bool,
}

/// `network:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub sandbox_enabled: Option<Scalar>,
    #[serde(default, deserialize_with = "pairs")]
    pub upstream_overrides: Vec<(Spanned<String>, Scalar)>,
    pub extra_ca_file: Option<Scalar>,
    pub max_request_body: Option<Scalar>,
    pub upstream_timeout: Option<Scalar>,
    #[serde(default, deserialize_with = "pairs")]
    pub masked_secrets: Vec<(Spanned<String>, RawMasked)>,
    #[serde(default, deserialize_with = "pairs")]
    pub plain_secrets: Vec<(Spanned<String>, Scalar)>,
}

/// `masked_secrets.<NAME>:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMasked {
    pub value: Option<Scalar>,
    #[serde(default)]
    pub scopes: Vec<Scalar>,
    #[serde(default)]
    pub headers: Vec<Scalar>,
    pub allow_foreign_credentials: Option<Scalar>,
}

// === impl NetworkConfig ===

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            sandbox_enabled: true,
            upstream_overrides: BTreeMap::new(),
            extra_ca_file: None,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            masked_secrets: BTreeMap::new(),
            plain_secrets: BTreeMap::new(),
        }
    }
}

/// Resolves `raw` under `key` (`repos.<id>.network`), recording problems.
pub(crate) fn resolve(r: &mut Resolver<'_>, key: &str, raw: &RawNetwork) -> NetworkConfig {
    let mut n = NetworkConfig::default();
    if let Some(s) = &raw.sandbox_enabled {
        let k = format!("{key}.sandbox_enabled");
        if let Some(v) = r.optional(&k, s) {
            match parse_bool(&v) {
                Some(b) => n.sandbox_enabled = b,
                None => r.problem(s, &k, format!("expected true or false, found {v:?}")),
            }
        }
    }
    for (host, s) in &raw.upstream_overrides {
        let k = format!("{key}.upstream_overrides.{}", host.value);
        let h = host.value.to_ascii_lowercase();
        if h.is_empty() || h.contains(['/', ':', ' ']) {
            r.problem(
                s,
                &k,
                format!(
                    "the key must be a host name such as api.example.com, found {:?}",
                    host.value
                ),
            );
            continue;
        }
        if let Some(v) = r.required(&k, Some(s), s.referenced.line()) {
            match check_url(&v) {
                Ok(url) => {
                    n.upstream_overrides.insert(h, url);
                }
                Err(msg) => r.problem(s, &k, msg),
            }
        }
    }
    if let Some(s) = &raw.extra_ca_file {
        let k = format!("{key}.extra_ca_file");
        if let Some(v) = r.optional(&k, s) {
            let p = PathBuf::from(&v);
            if p.is_absolute() {
                n.extra_ca_file = Some(p);
            } else {
                r.problem(s, &k, format!("{v:?} is not an absolute path"));
            }
        }
    }
    if let Some(s) = &raw.max_request_body {
        let k = format!("{key}.max_request_body");
        if let Some(v) = r.optional(&k, s) {
            match parse_size(&v) {
                Some(b) if b > 0 => n.max_request_body = b,
                _ => r.problem(
                    s,
                    &k,
                    format!("expected a size such as 32MiB or 1048576, found {v:?}"),
                ),
            }
        }
    }
    if let Some(s) = &raw.upstream_timeout {
        let k = format!("{key}.upstream_timeout");
        if let Some(v) = r.optional(&k, s) {
            match humantime::parse_duration(&v) {
                Ok(d) if !d.is_zero() => n.upstream_timeout = d,
                _ => r.problem(
                    s,
                    &k,
                    format!("expected a duration such as 120s or 5m, found {v:?}"),
                ),
            }
        }
    }
    for (name, m) in &raw.masked_secrets {
        let k = format!("{key}.masked_secrets.{}", name.value);
        let line = name.referenced.line();
        if !is_env_name(&name.value) {
            r.problem_at(
                line,
                &k,
                format!(
                    "{:?} is not an environment variable name (A-Z, 0-9, _)",
                    name.value
                ),
            );
            continue;
        }
        let value = r.required(&format!("{k}.value"), m.value.as_ref(), line);
        let mut list = |field: &str, items: &[Scalar]| -> Vec<String> {
            let fk = format!("{k}.{field}");
            if items.is_empty() {
                r.problem_at(line, &fk, "must list at least one pattern".to_owned());
            }
            items
                .iter()
                .filter_map(|s| r.required(&fk, Some(s), s.referenced.line()))
                .collect()
        };
        let scopes = list("scopes", &m.scopes);
        let headers = list("headers", &m.headers);
        let mut allow_foreign = false;
        if let Some(s) = &m.allow_foreign_credentials {
            let fk = format!("{k}.allow_foreign_credentials");
            if let Some(v) = r.optional(&fk, s) {
                match parse_bool(&v) {
                    Some(b) => allow_foreign = b,
                    None => r.problem(s, &fk, format!("expected true or false, found {v:?}")),
                }
            }
        }
        if let Some(v) = value {
            n.masked_secrets.insert(
                name.value.clone(),
                MaskedSecretConfig {
                    value: Secret::new(v),
                    scopes,
                    headers,
                    allow_foreign_credentials: allow_foreign,
                },
            );
        }
    }
    for (name, s) in &raw.plain_secrets {
        let k = format!("{key}.plain_secrets.{}", name.value);
        if !is_env_name(&name.value) {
            r.problem(
                s,
                &k,
                format!(
                    "{:?} is not an environment variable name (A-Z, 0-9, _)",
                    name.value
                ),
            );
            continue;
        }
        if n.masked_secrets.contains_key(&name.value) {
            r.problem(s, &k, "also listed under masked_secrets".to_owned());
            continue;
        }
        if let Some(v) = r.required(&k, Some(s), s.referenced.line()) {
            n.plain_secrets.insert(name.value.clone(), Secret::new(v));
        }
    }
    n
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn is_env_name(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// An `http://` or `https://` URL with a host; returned without a trailing `/`.
fn check_url(v: &str) -> Result<String, String> {
    let uri: hyper::Uri = v
        .parse()
        .map_err(|_| format!("expected an http:// or https:// URL, found {v:?}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.authority().is_none() || uri.query().is_some() {
        return Err(format!(
            "expected an http:// or https:// URL with a host and no query, found {v:?}"
        ));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// `1048576`, `512KiB`, `32MiB`, `1GiB`, `10MB`, `100kB`.
pub(crate) fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = v.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use crate::config::load_bytes;

    fn env(v: &str) -> Option<String> {
        match v {
            "GH" => Some("ghp_realvalue".into()),
            "NPM" => Some("npm_plain".into()),
            _ => None,
        }
    }

    #[test]
    fn full_section_resolves() {
        let yaml = "repos:\n  w:\n    repo_url: https://example.com/r.git\n    network:\n      sandbox_enabled: true\n      upstream_overrides:\n        API.Anthropic.com: http://127.0.0.1:9999/\n      extra_ca_file: /etc/ca.pem\n      max_request_body: 2MiB\n      upstream_timeout: 30s\n      masked_secrets:\n        GH_TOKEN:\n          value: !env GH\n          scopes: [api.github.com]\n          headers: [Authorization]\n      plain_secrets:\n        NPM_TOKEN: !env NPM\n";
        let loaded = load_bytes(yaml.as_bytes(), "t.yaml", &env).unwrap();
        let n = &loaded.config.repos["w"].network;
        assert!(n.sandbox_enabled);
        assert_eq!(
            n.upstream_overrides["api.anthropic.com"],
            "http://127.0.0.1:9999"
        );
        assert_eq!(n.max_request_body, 2 * 1024 * 1024);
        assert_eq!(n.upstream_timeout.as_secs(), 30);
        assert_eq!(n.masked_secrets["GH_TOKEN"].value.expose(), "ghp_realvalue");
        assert_eq!(n.plain_secrets["NPM_TOKEN"].expose(), "npm_plain");
        assert!(!format!("{n:?}").contains("ghp_realvalue"));
    }

    #[test]
    fn defaults_when_absent() {
        let yaml = "repos:\n  w:\n    repo_url: https://example.com/r.git\n";
        let loaded = load_bytes(yaml.as_bytes(), "t.yaml", &env).unwrap();
        assert_eq!(
            loaded.config.repos["w"].network,
            super::NetworkConfig::default()
        );
    }

    #[test]
    fn every_problem_is_named() {
        let yaml = "repos:\n  w:\n    repo_url: https://example.com/r.git\n    network:\n      sandbox_enabled: maybe\n      upstream_overrides:\n        a.com: ftp://x\n      extra_ca_file: rel.pem\n      max_request_body: 12 parsecs\n      upstream_timeout: soon\n      masked_secrets:\n        GH_TOKEN:\n          value: !env MISSING\n          scopes: []\n          headers: [Authorization]\n        bad-name:\n          value: x\n          scopes: [a]\n          headers: [b]\n";
        let err = load_bytes(yaml.as_bytes(), "t.yaml", &env)
            .unwrap_err()
            .to_string();
        for needle in [
            "network.sandbox_enabled",
            "upstream_overrides.a.com",
            "extra_ca_file",
            "max_request_body",
            "upstream_timeout",
            "GH_TOKEN.value",
            "GH_TOKEN.scopes",
            "bad-name",
        ] {
            assert!(err.contains(needle), "{needle} missing in:\n{err}");
        }
        let unknown = "repos:\n  w:\n    repo_url: u\n    network:\n      graphql: {}\n";
        let err = load_bytes(unknown.as_bytes(), "t.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("graphql"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("10"), Some(10));
        assert_eq!(super::parse_size("1KiB"), Some(1024));
        assert_eq!(super::parse_size("1 MB"), Some(1_000_000));
        assert_eq!(super::parse_size("MiB"), None);
        assert_eq!(super::parse_size("99999999999999GiB"), None);
    }
}
