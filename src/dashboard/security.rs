//! Who is asking, and what every response says about itself.
//!
//! * Authentication (`dashboard.auth`): a reverse-proxy user header believed
//!   only from trusted peers, or the shared token as `Authorization: Bearer`
//!   or as the session cookie set by `/login`. Without `dashboard.auth` the
//!   server listens on loopback only (config validation) and pages are open
//!   to local users, as [`Identity::Local`]. The result is put in the
//!   request's extensions for handlers ([`Identity`]).
//! * CSRF: state-changing POSTs carry a synchronizer token derived from a
//!   per-process key and the caller's identity ([`csrf_token`]) *and* must
//!   come from this origin (`Origin` or `Sec-Fetch-Site`) ([`check_post`]).
//! * Headers on every response, errors and streams included: a CSP without
//!   inline scripts, `nosniff`, `frame-ancestors 'none'` and `DENY`, and
//!   `Referrer-Policy: same-origin`.
//!
//! Must never: log or echo the token, or accept the proxy header from a
//! peer that is not in `trusted_proxies`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};

use super::AppState;

/// Name of the session cookie set by `/login`.
pub const SESSION_COOKIE: &str = "airut_session";

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No `dashboard.auth`: a local user on a loopback-only server.
    Local,
    /// Presented the shared token (header or session cookie).
    Token,
    /// Named by the trusted reverse proxy.
    ProxyUser(String),
    /// Not authenticated (only when `dashboard.auth` is set).
    Anonymous,
}

// === impl Identity ===

impl Identity {
    /// Whether the request may see pages.
    pub fn is_authenticated(&self) -> bool {
        !matches!(self, Identity::Anonymous)
    }

    /// How it is recorded in `task.stop_requested`.
    pub fn label(&self) -> String {
        match self {
            Identity::Local => "dashboard:local".to_owned(),
            Identity::Token => "dashboard:token".to_owned(),
            Identity::ProxyUser(u) => format!("dashboard:{u}"),
            Identity::Anonymous => "dashboard:anonymous".to_owned(),
        }
    }

    fn csrf_context(&self) -> String {
        match self {
            Identity::ProxyUser(u) => format!("user\0{u}"),
            other => other.label(),
        }
    }
}

/// The session cookie value for a token: a derived key, so the cookie
/// does not reveal the token itself.
pub fn session_value(token: &str) -> String {
    crate::audit::hex(&blake3::derive_key(
        "airut dashboard session v1",
        token.as_bytes(),
    ))
}

/// The CSRF token for `identity` under this server's key.
pub fn csrf_token(state: &AppState, identity: &Identity) -> String {
    let mac = blake3::keyed_hash(&state.inner.csrf_key, identity.csrf_context().as_bytes());
    crate::audit::hex(&mac.as_bytes()[..16])
}

/// Why a state-changing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostRefused {
    /// The form's CSRF token is missing or wrong (a stale page: reload it).
    #[error("missing or invalid CSRF token; reload the page and try again")]
    Token,
    /// The request did not come from this site.
    #[error("cross-site request refused (Origin {0})")]
    CrossSite(String),
    /// Neither `Origin` nor `Sec-Fetch-Site` was sent.
    #[error("request refused: no Origin or Sec-Fetch-Site header")]
    NoOrigin,
}

/// Checks a state-changing POST: the synchronizer token *and* the origin.
pub fn check_post(
    state: &AppState,
    identity: &Identity,
    headers: &HeaderMap,
    presented: Option<&str>,
) -> Result<(), PostRefused> {
    let expected = csrf_token(state, identity);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => {}
        _ => return Err(PostRefused::Token),
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Some(site) = site
        && site != "same-origin"
    {
        return Err(PostRefused::CrossSite(format!("Sec-Fetch-Site {site}")));
    }
    if let Some(origin) = origin {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || bare != host {
            return Err(PostRefused::CrossSite(origin.to_owned()));
        }
    }
    if site.is_none() && origin.is_none() {
        return Err(PostRefused::NoOrigin);
    }
    Ok(())
}

/// Wraps the app in authentication and the security headers.
pub(crate) fn layer(app: Router, state: AppState) -> Router {
    app.fallback(not_found)
        .layer(middleware::from_fn_with_state(state, authenticate))
        .layer(middleware::from_fn(headers))
}

async fn not_found(req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        super::api::ApiError::new(StatusCode::NOT_FOUND, "no such route").into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Not Found\n",
        )
            .into_response()
    }
}

/// Paths open without authentication: the login form, assets, liveness.
fn is_public(path: &str) -> bool {
    path == "/login" || path == "/healthz" || path.starts_with("/static/")
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let identity = identify(&state, &req);
    let path = req.uri().path().to_owned();
    let allowed = identity.is_authenticated() || is_public(&path) || path.starts_with("/api/");
    req.extensions_mut().insert(identity);
    if allowed {
        return next.run(req).await;
    }
    let has_token = state.inner.auth.as_ref().is_some_and(|a| a.token.is_some());
    if has_token && req.method() == axum::http::Method::GET && !path.starts_with("/events/") {
        Redirect::to("/login").into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "authentication required\n",
        )
            .into_response()
    }
}

/// Works out who sent `req` (see the module doc).
pub fn identify(state: &AppState, req: &Request) -> Identity {
    let Some(auth) = &state.inner.auth else {
        return Identity::Local;
    };
    let headers = req.headers();
    if let Some(name) = &auth.proxy_user_header {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(peer) = peer
            && auth.trusted_proxies.contains(&peer)
            && let Some(user) = headers.get(name.as_str()).and_then(|v| v.to_str().ok())
        {
            let user = user.trim();
            if !user.is_empty() && user.len() <= 256 && !user.chars().any(char::is_control) {
                return Identity::ProxyUser(user.to_owned());
            }
        }
    }
    if let Some(token) = &auth.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), token.expose().as_bytes())) {
            return Identity::Token;
        }
        let want = session_value(token.expose());
        if cookie(headers, SESSION_COOKIE)
            .is_some_and(|c| constant_time_eq(c.as_bytes(), want.as_bytes()))
        {
            return Identity::Token;
        }
    }
    Identity::Anonymous
}

/// The value of cookie `name`, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a login with `token`.
pub fn session_cookie(state: &AppState, token: &str) -> String {
    let secure = if state.inner.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        session_value(token)
    )
}

/// Whether `presented` is the configured dashboard token.
pub fn token_matches(state: &AppState, presented: &str) -> bool {
    state
        .inner
        .auth
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .is_some_and(|t| constant_time_eq(presented.as_bytes(), t.expose().as_bytes()))
}

async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
