//! The dashboard's CSS and JS, compiled into the binary (no build step):
//! `/static/app.css`, `/static/app.js`, `/favicon.svg`. Each has an ETag
//! (BLAKE3 of the content) and a `304` for a matching `If-None-Match`.
//! Any other path under `/static/` is a 404.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const CSS: &str = include_str!("../../templates/static/app.css");
const JS: &str = include_str!("../../templates/static/app.js");
const FAVICON: &str = include_str!("../../templates/static/favicon.svg");

/// The routes.
pub(crate) fn routes() -> Router {
    Router::new().route("/static/{file}", get(asset)).route(
        "/favicon.svg",
        get(|headers: HeaderMap| async move { serve(&headers, FAVICON, "image/svg+xml") }),
    )
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match file.as_str() {
        "app.css" => serve(&headers, CSS, "text/css; charset=utf-8"),
        "app.js" => serve(&headers, JS, "text/javascript; charset=utf-8"),
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Not Found\n",
        )
            .into_response(),
    }
}

/// The ETag of an asset.
pub fn etag(content: &str) -> String {
    let h = blake3::hash(content.as_bytes());
    format!("\"{}\"", &crate::audit::hex(h.as_bytes())[..16])
}

fn serve(headers: &HeaderMap, content: &'static str, ct: &'static str) -> Response {
    let tag = etag(content);
    let cache = HeaderValue::from_static("public, max-age=3600");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let tag = HeaderValue::from_str(&tag).expect("hex etag is a valid header");
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, tag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            (header::ETAG, tag),
            (header::CACHE_CONTROL, cache),
        ],
        content,
    )
        .into_response()
}
