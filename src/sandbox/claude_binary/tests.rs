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
    // No leftovers of the download; the last-use marker beside it.
    let mut names: Vec<String> = std::fs::read_dir(cache.path().join("2.1.332"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["claude", LAST_USED]);
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

/// A cached version as the download leaves it, last used `at` (Unix
/// seconds), or without a marker.
fn cached(cache: &Path, version: &str, at: Option<u64>) {
    let dir = cache.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("claude"), b"binary").unwrap();
    if let Some(at) = at {
        std::fs::write(dir.join(LAST_USED), format!("{at}\n")).unwrap();
    }
}

const DAY: u64 = 24 * 3600;
const NOW: u64 = 1_800_000_000;

fn open_log(dir: &Path) -> Log {
    Log::open(
        dir,
        crate::log::LogOptions {
            flush_interval: Duration::from_millis(20),
            create: true,
            ..crate::log::LogOptions::default()
        },
    )
    .unwrap()
}

fn pruned_events(log: &Log) -> Vec<ClaudeBinaryPrunedV1> {
    log.iter_from(crate::events::Seq(0))
        .filter_map(|r| match r.unwrap().decode().unwrap() {
            Event::ClaudeBinaryPruned(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn prune_removes_only_old_unused_unconfigured_versions_and_records_it() {
    let cache = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let c = ClaudeBinaries::new(cache.path(), "http://127.0.0.1:9");
    let old = NOW - 30 * DAY;
    cached(cache.path(), "2.0.1", Some(old)); // old, unused: removed
    cached(cache.path(), "2.0.2", Some(old)); // old, but configured
    cached(cache.path(), "2.1.0", Some(NOW - DAY)); // fresh
    cached(cache.path(), "2.0.3", Some(old)); // old, a channel's last version
    std::fs::write(cache.path().join(".channel-stable"), "2.0.3\n").unwrap();
    let keep = ClaudeSource::Version("2.0.2".into());
    let max_age = Duration::from_secs(7 * DAY);

    let report = c.prune_at(&keep, max_age, NOW);
    assert_eq!(report.removed, vec![("2.0.1".to_owned(), 30 * DAY)]);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(!cache.path().join("2.0.1").exists());
    for kept in ["2.0.2", "2.1.0", "2.0.3"] {
        assert!(cache.path().join(kept).join("claude").is_file(), "{kept}");
    }

    // Through `prune`: one event per removal, on the server stream. The
    // clock is the real one here, so make the version really old.
    cached(cache.path(), "1.9.0", Some(1_000));
    let report = c.prune(&keep, max_age, &log).await.unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].0, "1.9.0");
    let events = pruned_events(&log);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].version, "1.9.0");
    assert!(events[0].age_secs > 30 * DAY);

    // A zero max age prunes nothing.
    cached(cache.path(), "1.8.0", Some(1_000));
    assert_eq!(
        c.prune_at(&keep, Duration::ZERO, NOW),
        ClaudePrune::default()
    );
    assert!(cache.path().join("1.8.0").exists());
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_leased_version_is_never_pruned_and_resolving_marks_it_used() {
    let site = Arc::new(Site::default());
    let bin = b"claude!".to_vec();
    publish(&site, "2.1.5", &bin, bin.len() as u64, &sha(&bin));
    let base = start(Arc::clone(&site)).await;
    let cache = tempfile::tempdir().unwrap();
    let c = ClaudeBinaries::new(cache.path(), &base);
    let source = ClaudeSource::Version("2.1.5".into());
    let lease = c.resolve_leased(&source).await.unwrap();
    assert_eq!(lease.path(), cache.path().join("2.1.5/claude"));
    let marker = std::fs::read_to_string(cache.path().join("2.1.5").join(LAST_USED)).unwrap();
    assert!(marker.trim().parse::<u64>().unwrap() > NOW - 365 * DAY);

    // Configured elsewhere now, and far in the future: old enough, but a
    // running task holds it.
    let other = ClaudeSource::Version("9.9.9".into());
    let later = NOW * 2;
    let report = c.prune_at(&other, Duration::from_secs(DAY), later);
    assert!(report.removed.is_empty());
    assert!(lease.path().is_file());
    // A clone (the runner's) shares the leases.
    assert!(
        c.clone()
            .prune_at(&other, Duration::from_secs(DAY), later)
            .removed
            .is_empty()
    );

    drop(lease);
    let report = c.prune_at(&other, Duration::from_secs(DAY), later);
    assert_eq!(report.removed.len(), 1);
    assert!(!cache.path().join("2.1.5").exists());

    // Resolved again after the prune: downloaded again, not a dangling path.
    let again = c.resolve(&source).await.unwrap();
    assert_eq!(std::fs::read(again).unwrap(), bin);
}

#[tokio::test]
async fn broken_cache_entries_are_warned_about_and_left_alone() {
    let cache = tempfile::tempdir().unwrap();
    let c = ClaudeBinaries::new(cache.path(), "http://127.0.0.1:9");
    let keep = ClaudeSource::Version("stable".into());
    let max_age = Duration::from_secs(DAY);
    // A file where a version directory should be.
    std::fs::write(cache.path().join("2.0.0"), b"not a dir").unwrap();
    // A directory that is not a version.
    std::fs::create_dir(cache.path().join("notes")).unwrap();
    // No marker (cached before markers existed).
    cached(cache.path(), "2.0.1", None);
    // A marker that holds no time.
    cached(cache.path(), "2.0.2", None);
    std::fs::write(
        cache.path().join("2.0.2").join(LAST_USED),
        b"\xff\xfe garbage",
    )
    .unwrap();
    // A marker that cannot be read (a directory: unreadable even as root).
    cached(cache.path(), "2.0.3", None);
    std::fs::create_dir(cache.path().join("2.0.3").join(LAST_USED)).unwrap();
    // A symlink to a directory elsewhere is not followed.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), cache.path().join("2.0.4")).unwrap();
    // Left by an interrupted prune.
    std::fs::create_dir(cache.path().join(".pruning-1.0.0-1")).unwrap();

    let report = c.prune_at(&keep, max_age, NOW);
    assert!(report.removed.is_empty(), "{report:?}");
    let w = report.warnings.join("\n");
    assert_eq!(report.warnings.len(), 6, "{w}");
    assert!(w.contains("2.0.0 is not a directory"), "{w}");
    assert!(w.contains("notes is not a version"), "{w}");
    assert!(w.contains("2.0.1 has no last-used marker"), "{w}");
    assert!(w.contains("does not hold a time"), "{w}");
    assert!(w.contains("cannot read"), "{w}");
    assert!(w.contains("2.0.4 is not a directory"), "{w}");
    for name in ["2.0.0", "notes", "2.0.1", "2.0.2", "2.0.3"] {
        assert!(cache.path().join(name).exists(), "{name}");
    }
    assert!(outside.path().join("precious").exists());
    assert!(!cache.path().join(".pruning-1.0.0-1").exists());

    // The missing and garbage markers started their clocks: pruned once
    // they are old, the unreadable one still left alone.
    let report = c.prune_at(&keep, max_age, NOW + 2 * DAY);
    let removed: Vec<&str> = report.removed.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(removed, ["2.0.1", "2.0.2"]);
    assert!(cache.path().join("2.0.3").exists());

    // A cache that does not exist yet: nothing to do.
    let none = ClaudeBinaries::new(cache.path().join("missing"), "http://127.0.0.1:9");
    assert_eq!(none.prune_at(&keep, max_age, NOW), ClaudePrune::default());
}

#[test]
fn cached_says_what_is_on_disk_without_the_network() {
    let cache = tempfile::tempdir().unwrap();
    let c = ClaudeBinaries::new(cache.path(), "http://127.0.0.1:9");
    let stable = ClaudeSource::Version("stable".into());
    assert_eq!(c.cached(&stable).unwrap(), None);
    cached(cache.path(), "2.1.7", Some(NOW));
    std::fs::write(cache.path().join(".channel-stable"), "2.1.7\n").unwrap();
    let want = Some(("2.1.7".to_owned(), cache.path().join("2.1.7/claude")));
    assert_eq!(c.cached(&stable).unwrap(), want);
    assert_eq!(
        c.cached(&ClaudeSource::Version("2.1.7".into())).unwrap(),
        want
    );
    assert_eq!(
        c.cached(&ClaudeSource::Version("2.1.8".into())).unwrap(),
        None
    );
    std::fs::write(cache.path().join(".channel-latest"), "garbage").unwrap();
    assert_eq!(
        c.cached(&ClaudeSource::Version("latest".into())).unwrap(),
        None
    );
    let missing = ClaudeSource::Path(cache.path().join("nope"));
    assert!(matches!(
        c.cached(&missing),
        Err(ClaudeBinaryError::MissingPath(_))
    ));
}

#[tokio::test]
async fn the_schedule_prunes_at_once_then_stops_on_cancel() {
    let cache = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let c = ClaudeBinaries::new(cache.path(), "http://127.0.0.1:9");
    cached(cache.path(), "1.0.0", Some(1_000));
    let cancel = tokio_util::sync::CancellationToken::new();
    let handle = spawn_prune_schedule(
        c,
        ClaudeSource::Version("stable".into()),
        Duration::from_secs(DAY),
        Duration::from_secs(3600),
        log.clone(),
        cancel.clone(),
    );
    // The first tick is immediate.
    tokio::time::timeout(Duration::from_secs(30), async {
        while pruned_events(&log).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the schedule pruned within 30 s");
    assert_eq!(pruned_events(&log)[0].version, "1.0.0");
    assert!(!cache.path().join("1.0.0").exists());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the schedule stopped")
        .unwrap();
    log.close().await.unwrap();
}
