//! HTTP client for a running server's API (used by read commands).
//!
//! Plain HTTP/1.1 over loopback with the bearer token from the runtime file.
//! Every wait has a timeout except the body of a `--follow` stream.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::runtime::RuntimeInfo;

/// How long to wait for the server to answer (headers, not a streamed body).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A client bound to one running server.
#[derive(Clone)]
pub struct ApiClient {
    info: RuntimeInfo,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

// === impl ApiClient ===

impl ApiClient {
    /// A client for the server described by `info`.
    pub fn new(info: RuntimeInfo) -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        ApiClient { info, http }
    }

    /// The server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.info.addr
    }

    /// Whether `/healthz` answers within `timeout`.
    pub async fn healthy(&self, timeout: Duration) -> bool {
        let uri = format!("http://{}/healthz", self.info.addr);
        let Ok(uri) = uri.parse::<hyper::Uri>() else {
            return false;
        };
        matches!(
            tokio::time::timeout(timeout, self.http.get(uri)).await,
            Ok(Ok(resp)) if resp.status().is_success()
        )
    }

    /// Sends a request and returns the response once its headers arrived;
    /// a non-2xx status becomes an error carrying the server's message.
    pub async fn send(
        &self,
        method: hyper::Method,
        path_and_query: &str,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let uri = format!("http://{}{}", self.info.addr, path_and_query);
        let req = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header("authorization", format!("Bearer {}", self.info.token))
            .body(Empty::new())
            .context("building the API request")?;
        let resp = tokio::time::timeout(ANSWER_TIMEOUT, self.http.request(req))
            .await
            .with_context(|| {
                format!(
                    "the server at {} did not answer within {ANSWER_TIMEOUT:?}",
                    self.info.addr
                )
            })?
            .with_context(|| format!("cannot reach the server at {}", self.info.addr))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!(
                "server answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(resp)
    }

    /// GET and copy the (possibly endless) body to `out` as it arrives.
    pub async fn stream_to(
        &self,
        path_and_query: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> anyhow::Result<()> {
        let mut body = self
            .send(hyper::Method::GET, path_and_query)
            .await?
            .into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the server's answer")?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data).context("writing to stdout")?;
                out.flush().context("writing to stdout")?;
            }
        }
        Ok(())
    }

    /// GET or POST and parse a JSON answer.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path_and_query: &str,
    ) -> anyhow::Result<T> {
        let body = self.send(method, path_and_query).await?.into_body();
        let bytes = tokio::time::timeout(ANSWER_TIMEOUT, body.collect())
            .await
            .context("the server's answer did not complete in time")?
            .context("reading the server's answer")?
            .to_bytes();
        serde_json::from_slice(&bytes).context("the server's answer is not the expected JSON")
    }
}
