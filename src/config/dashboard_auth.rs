//! `dashboard.auth`: how the dashboard and API authenticate people when they
//! are reachable beyond loopback.
//!
//! Two methods, either or both:
//! * `token`: a shared secret, presented as `Authorization: Bearer <token>`
//!   or through the session cookie the login form sets;
//! * `proxy_user_header`: a reverse proxy in front of airut authenticates
//!   people and names the user in this header; airut believes the header
//!   only on connections from `trusted_proxies` (default: loopback).
//!
//! A non-loopback `dashboard.host` without one of them is refused by
//! validation. Must never print the token (it is a [`Secret`]).

use std::net::IpAddr;

use serde::Deserialize;

use super::Secret;
use super::raw::Scalar;
use super::resolve::Resolver;

/// `dashboard.auth` as resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardAuth {
    /// Shared token (Bearer header or login cookie).
    pub token: Option<Secret>,
    /// Header naming the user, set by a trusted reverse proxy (lower case).
    pub proxy_user_header: Option<String>,
    /// Peers whose `proxy_user_header` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

/// `dashboard.auth:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDashboardAuth {
    pub token: Option<Scalar>,
    pub proxy_user_header: Option<Scalar>,
    #[serde(default)]
    pub trusted_proxies: Vec<Scalar>,
}

/// Shortest token accepted (a guessable token is no authentication).
pub const MIN_TOKEN_LEN: usize = 16;

/// Resolves `dashboard.auth`; problems go to `r`. `None` when nothing
/// usable is configured (including when every value was wrong).
pub(super) fn resolve(r: &mut Resolver<'_>, raw: &RawDashboardAuth) -> Option<DashboardAuth> {
    let mut auth = DashboardAuth {
        token: None,
        proxy_user_header: None,
        trusted_proxies: vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ],
    };
    if let Some(s) = &raw.token
        && let Some(v) = r.optional("dashboard.auth.token", s)
    {
        if v.chars().count() < MIN_TOKEN_LEN || v.chars().any(char::is_whitespace) {
            r.problem(
                s,
                "dashboard.auth.token",
                format!(
                    "the token must be at least {MIN_TOKEN_LEN} characters without spaces \
                     (the value is not shown); generate one with `openssl rand -hex 32`"
                ),
            );
        } else {
            auth.token = Some(Secret::new(v));
        }
    }
    if let Some(s) = &raw.proxy_user_header
        && let Some(v) = r.optional("dashboard.auth.proxy_user_header", s)
    {
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            auth.proxy_user_header = Some(v.to_ascii_lowercase());
        } else {
            r.problem(
                s,
                "dashboard.auth.proxy_user_header",
                format!("expected a header name such as X-Forwarded-User, found {v:?}"),
            );
        }
    }
    if !raw.trusted_proxies.is_empty() {
        auth.trusted_proxies.clear();
        for (i, s) in raw.trusted_proxies.iter().enumerate() {
            let key = format!("dashboard.auth.trusted_proxies[{i}]");
            if let Some(v) = r.optional(&key, s) {
                match v.parse::<IpAddr>() {
                    Ok(ip) => auth.trusted_proxies.push(ip),
                    Err(_) => r.problem(s, &key, format!("expected an IP address, found {v:?}")),
                }
            }
        }
    }
    if auth.token.is_none() && auth.proxy_user_header.is_none() {
        return None;
    }
    Some(auth)
}

// === impl DashboardAuth ===

impl DashboardAuth {
    /// Auth with only a token (tests, tools).
    pub fn token(token: impl Into<String>) -> Self {
        DashboardAuth {
            token: Some(Secret::new(token)),
            proxy_user_header: None,
            trusted_proxies: Vec::new(),
        }
    }
}
