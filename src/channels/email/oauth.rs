//! Microsoft 365 OAuth2 for IMAP and SMTP: the client-credentials grant.
//!
//! Owns getting an access token from the token endpoint (Entra ID by
//! default; configurable, so tests use a local server), caching it, and
//! refreshing it before it expires. The token is used as XOAUTH2
//! (`user=<name>\x01auth=Bearer <token>\x01\x01`) by [`super::source`] and
//! [`super::sink`]. Must never log the client secret or a token.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::tls::{Trust, server_name};
use crate::config::Secret;
use crate::config::email::OAuth2Config;

/// A token is refreshed when it has less than this left.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Every request to the token endpoint gives up after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why no token could be had. The message is safe to log (no secret).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The endpoint could not be reached, or timed out: transient, retry.
    #[error("token endpoint {url}: {reason}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The endpoint answered with an error (wrong tenant, client id or
    /// secret, missing consent): an operator must fix the config.
    #[error("token endpoint {url} refused: HTTP {status}: {detail}")]
    Refused {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// `error` and `error_description` from the answer, if any.
        detail: String,
    },
    /// The answer is not a token response.
    #[error("token endpoint {url}: unreadable answer: {reason}")]
    BadResponse {
        /// The endpoint.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// Hands out access tokens, fetching a new one only when the cached one is
/// close to expiry. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: OAuth2Config,
    trust: Trust,
    cached: Mutex<Option<(Secret, Instant)>>,
}

// === impl TokenSource ===

impl TokenSource {
    /// A token source for this configuration.
    pub fn new(config: OAuth2Config, trust: Trust) -> Self {
        TokenSource {
            inner: Arc::new(Inner {
                config,
                trust,
                cached: Mutex::new(None),
            }),
        }
    }

    /// A valid access token: the cached one if it has more than
    /// [`REFRESH_MARGIN`] left, else a new one.
    pub async fn token(&self) -> Result<Secret, OAuthError> {
        let mut cached = self.inner.cached.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && Instant::now() + REFRESH_MARGIN < *expires
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        *cached = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    /// The SASL XOAUTH2 initial response for `user` (not base64-encoded).
    pub async fn xoauth2(&self, user: &str) -> Result<Secret, OAuthError> {
        let token = self.token().await?;
        Ok(Secret::new(format!(
            "user={user}\x01auth=Bearer {}\x01\x01",
            token.expose()
        )))
    }

    async fn fetch(&self) -> Result<(Secret, Duration), OAuthError> {
        let c = &self.inner.config;
        let url = c.token_url.clone();
        let body = format!(
            "client_id={}&client_secret={}&scope={}&grant_type=client_credentials",
            form_encode(&c.client_id),
            form_encode(c.client_secret.expose()),
            form_encode(&c.scope)
        );
        let transport = |reason: String| OAuthError::Transport {
            url: url.clone(),
            reason,
        };
        let (status, bytes) =
            tokio::time::timeout(REQUEST_TIMEOUT, post_form(&url, body, &self.inner.trust))
                .await
                .map_err(|_| {
                    transport(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
                })?
                .map_err(transport)?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| OAuthError::BadResponse {
                url: url.clone(),
                reason: format!("not JSON ({e})"),
            })?;
        if status != 200 {
            let field = |k: &str| {
                json.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            let mut detail = field("error");
            let description = field("error_description");
            if !description.is_empty() {
                detail.push_str(": ");
                detail.push_str(description.lines().next().unwrap_or(""));
            }
            return Err(OAuthError::Refused {
                url,
                status,
                detail,
            });
        }
        let token = json
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuthError::BadResponse {
                url: url.clone(),
                reason: "no access_token".to_owned(),
            })?;
        let expires_in = match json.get("expires_in") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3600)
        .min(24 * 3600);
        Ok((Secret::new(token), Duration::from_secs(expires_in)))
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.inner.config.token_url)
            .field("client_id", &self.inner.config.client_id)
            .finish_non_exhaustive()
    }
}

/// POSTs a form to an `http://` or `https://` URL; returns status and body.
async fn post_form(url: &str, body: String, trust: &Trust) -> Result<(u16, Vec<u8>), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("not an http(s) URL".to_owned());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let (host, port) = split_host_port(authority, if tls { 443 } else { 80 })?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    if tls {
        let config = trust.client_config().map_err(|e| e.to_string())?;
        let name = server_name(&host).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<T>(io: T, request: Request<Full<bytes::Bytes>>) -> Result<(u16, Vec<u8>), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("HTTP body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_RESPONSE_BYTES {
                return Err(format!("answer larger than {MAX_RESPONSE_BYTES} bytes"));
            }
            out.extend_from_slice(data);
        }
    }
    conn.abort();
    Ok((status, out))
}

fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("bad IPv6 address")?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => default,
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    Ok((host, port))
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._*".contains(&b) {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_and_authorities() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(
            split_host_port("h:8080", 443).unwrap(),
            ("h".to_owned(), 8080)
        );
        assert_eq!(
            split_host_port("[::1]:9", 443).unwrap(),
            ("::1".to_owned(), 9)
        );
        assert_eq!(
            split_host_port("login.example", 443).unwrap(),
            ("login.example".to_owned(), 443)
        );
        assert!(split_host_port("h:x", 443).is_err());
        assert!(split_host_port(":1", 443).is_err());
    }
}
