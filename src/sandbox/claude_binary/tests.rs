//! The download path against a local HTTP server serving a channel file, a
//! manifest and a binary, with every way it can go wrong.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::*;

#[derive(Default)]
struct Site {
    files: Mutex<HashMap<String, Vec<u8>>>,
    hits: Mutex<Vec<String>>,
}

async fn serve(
    State(site): State<Arc<Site>>,
    UrlPath(path): UrlPath<String>,
) -> axum::response::Response {
    site.hits.lock().unwrap().push(path.clone());
    match site.files.lock().unwrap().get(&path) {
        Some(b) => b.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start(site: Arc<Site>) -> String {
    let app = axum::Router::new()
        .route("/releases/{*path}", axum::routing::get(serve))
        .with_state(site);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/releases")
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn publish(site: &Site, version: &str, binary: &[u8], size: u64, checksum: &str) {
    let mut files = site.files.lock().unwrap();
    let manifest = serde_json::json!({
        "version": version,
        "platforms": {platform(): {"checksum": checksum, "size": size}, "darwin-arm64": {"checksum": "00", "size": 1}}
    });
    files.insert(
        format!("{version}/manifest.json"),
        manifest.to_string().into_bytes(),
    );
    files.insert(format!("{version}/{}/claude", platform()), binary.to_vec());
}

#[tokio::test]
async fn downloads_verifies_caches_and_resolves_channels() {
    let site = Arc::new(Site::default());
    let bin = b"#!/bin/sh\necho claude\n".repeat(1000);
    publish(&site, "2.1.332", &bin, bin.len() as u64, &sha(&bin));
    site.files
        .lock()
        .unwrap()
        .insert("stable".into(), b"2.1.332\n".to_vec());
    let base = start(Arc::clone(&site)).await;
    let cache = tempfile::tempdir().unwrap();
    let c = ClaudeBinaries::new(cache.path(), &base);

    let p = c
        .resolve(&ClaudeSource::Version("2.1.332".into()))
        .await
        .unwrap();
    assert_eq!(p, cache.path().join("2.1.332/claude"));
    assert_eq!(std::fs::read(&p).unwrap(), bin);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Cached: no second download.
    let hits = site.hits.lock().unwrap().len();
    c.resolve(&ClaudeSource::Version("2.1.332".into()))
        .await
        .unwrap();
    assert_eq!(site.hits.lock().unwrap().len(), hits);
    // A channel resolves through the site, and is remembered when the site is gone.
    assert_eq!(
        c.resolve(&ClaudeSource::Version("stable".into()))
            .await
            .unwrap(),
        p
    );
    let offline = ClaudeBinaries::new(cache.path(), "http://127.0.0.1:9/releases");
    assert_eq!(
        offline
            .resolve(&ClaudeSource::Version("stable".into()))
            .await
            .unwrap(),
        p
    );
    // No leftovers of the download.
    let names: Vec<String> = std::fs::read_dir(cache.path().join("2.1.332"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["claude"]);
}

#[tokio::test]
async fn concurrent_requests_download_once() {
    let site = Arc::new(Site::default());
    let bin = vec![7u8; 300_000];
    publish(&site, "1.0.0", &bin, bin.len() as u64, &sha(&bin));
    let base = start(Arc::clone(&site)).await;
    let cache = tempfile::tempdir().unwrap();
    let c = ClaudeBinaries::new(cache.path(), &base);
    let v = ClaudeSource::Version("1.0.0".into());
    let (a, b) = tokio::join!(c.resolve(&v), c.resolve(&v));
    assert_eq!(a.unwrap(), b.unwrap());
    let downloads = site
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.ends_with("/claude"))
        .count();
    assert_eq!(downloads, 1);
}

#[tokio::test]
async fn mismatches_and_bad_answers_are_rejected_and_leave_nothing() {
    let site = Arc::new(Site::default());
    let bin = b"real binary".to_vec();
    publish(
        &site,
        "1.0.1",
        &bin,
        bin.len() as u64,
        &sha(b"other content"),
    );
    publish(&site, "1.0.2", &bin, bin.len() as u64 + 5, &sha(&bin));
    publish(&site, "1.0.3", &bin, bin.len() as u64 - 1, &sha(&bin));
    publish(&site, "1.0.4", &bin, bin.len() as u64, "not-hex");
    site.files
        .lock()
        .unwrap()
        .insert("1.0.5/manifest.json".into(), b"{ not json".to_vec());
    site.files
        .lock()
        .unwrap()
        .insert("latest".into(), b"<html>oops</html>".to_vec());
    let base = start(Arc::clone(&site)).await;
    let cache = tempfile::tempdir().unwrap();
    let c = ClaudeBinaries::new(cache.path(), &base);
    let get = |v: &str| {
        let c = c.clone();
        let v = v.to_owned();
        async move { c.resolve(&ClaudeSource::Version(v)).await.unwrap_err() }
    };
    let e = get("1.0.1").await;
    assert!(
        matches!(&e, ClaudeBinaryError::Mismatch { reason, .. } if reason.contains("SHA-256")),
        "{e}"
    );
    let e = get("1.0.2").await;
    assert!(
        matches!(&e, ClaudeBinaryError::Mismatch { reason, .. } if reason.contains("bytes arrived")),
        "{e}"
    );
    let e = get("1.0.3").await;
    assert!(
        matches!(&e, ClaudeBinaryError::Mismatch { reason, .. } if reason.contains("more than")),
        "{e}"
    );
    let e = get("1.0.4").await;
    assert!(e.to_string().contains("not a SHA-256"), "{e}");
    let e = get("1.0.5").await;
    assert!(e.to_string().contains("manifest.json is not valid"), "{e}");
    let e = get("9.9.9").await;
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    let e = get("latest").await;
    assert!(e.to_string().contains("<html>"), "{e}");
    let e = get("../../etc").await;
    assert!(e.to_string().contains("not a version"), "{e}");
    for v in ["1.0.1", "1.0.2", "1.0.3"] {
        let dir = cache.path().join(v);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{v}: {left:?}");
    }
}

#[tokio::test]
async fn cold_cache_without_the_site_is_a_clear_error_and_paths_are_checked() {
    let cache = tempfile::tempdir().unwrap();
    let c = ClaudeBinaries::new(cache.path(), "http://127.0.0.1:9/releases");
    let e = c
        .resolve(&ClaudeSource::Version("stable".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, ClaudeBinaryError::Unavailable { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("not cached and cannot be downloaded"),
        "{e}"
    );
    let e = c
        .resolve(&ClaudeSource::Version("2.0.0".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    let e = c
        .resolve(&ClaudeSource::Path(cache.path().join("nope")))
        .await
        .unwrap_err();
    assert!(matches!(e, ClaudeBinaryError::MissingPath(_)));
    let file = cache.path().join("claude");
    std::fs::write(&file, b"x").unwrap();
    assert_eq!(
        c.resolve(&ClaudeSource::Path(file.clone())).await.unwrap(),
        file
    );
}
