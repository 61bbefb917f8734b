//! The repo image: built from the Dockerfile and context files the caller
//! gives (the workspace module reads them from the repository's default
//! branch), cached under a content-hash tag.
//!
//! The tag is `airut-<kind>:<hash>` where the hash is SHA-256 over
//! length-prefixed fields (the Dockerfile, then each context file's name and
//! content in name order), so two different inputs can never produce the
//! same byte stream (the reference system concatenated them unprefixed).
//! An image is reused while younger than the max age, rebuilt (without the
//! engine's layer cache) when older or when forced. Concurrent requests for
//! one tag build it once: the others wait and then find it fresh. Build
//! output is recorded line by line (`image.build_output`) between
//! `image.build_started` and `image.build_finished`; a failed build is an
//! error quoting the end of the log. [`ImageCache::prune`] removes airut
//! images older than the max age; [`spawn_prune_schedule`] runs it on an
//! interval.
//!
//! Must never: accept a context file name that escapes the build directory,
//! or remove an image that is not airut's (only images labelled
//! `airut.managed=1` are pruned).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LABEL_MANAGED;
use super::engine::Engine;
use super::lines::LineSplitter;
use crate::events::{
    Event, ImageBuildFinishedV1, ImageBuildOutputV1, ImageBuildStartedV1, ImagePrunedV1,
    ImageReusedV1, RepoId, StreamId, TaskId,
};
use crate::log::{ExpectedVersion, Log, NewEvent, StreamAppend};

/// Label naming an image's kind (`repo`, `probe`).
pub const LABEL_KIND: &str = "airut.kind";

/// Lines of build output quoted in a failure.
const TAIL_LINES: usize = 30;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Image kind, part of the tag (`repo`).
    pub kind: String,
    /// The Dockerfile's bytes.
    pub dockerfile: Vec<u8>,
    /// Other files of the build context, by name (top level only).
    pub context: BTreeMap<String, Vec<u8>>,
}

/// Who needs the image (for the events).
#[derive(Debug, Clone)]
pub struct BuildFor {
    /// The repo.
    pub repo: RepoId,
    /// The task, if any.
    pub task: Option<TaskId>,
    /// The stream the events go to (the conversation's, or `server`).
    pub stream: StreamId,
}

/// Why an image is not available.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The build failed; `log_tail` is the end of the build output. The
    /// task fails with it; the repo's Dockerfile needs fixing.
    #[error("image build failed for {tag}:\n{log_tail}")]
    BuildFailed {
        /// The tag.
        tag: String,
        /// The last lines of the build log.
        log_tail: String,
    },
    /// A context file name is empty, has a path separator, or is `.`/`..`
    /// or `Dockerfile`.
    #[error("invalid context file name {0:?} (top-level file names only)")]
    InvalidContext(String),
    /// The image kind is not lowercase letters, digits and `-`.
    #[error("invalid image kind {0:?}")]
    InvalidKind(String),
    /// The engine failed outside the build itself.
    #[error("container engine: {0}")]
    Engine(String),
    /// Recording an event failed.
    #[error("recording the build failed: {0}")]
    Log(String),
}

/// Per tag: held while checking or building; counts finished builds.
#[derive(Default)]
struct TagLock {
    lock: tokio::sync::Mutex<()>,
    builds: std::sync::atomic::AtomicU64,
}

/// Builds and caches images. Cheap to clone.
#[derive(Clone)]
pub struct ImageCache {
    engine: Engine,
    log: Log,
    max_age: Duration,
    /// Per tag: a lock held while checking or building, around the number
    /// of builds of that tag so far.
    locks: Arc<Mutex<HashMap<String, Arc<TagLock>>>>,
}

// === impl ImageSpec ===

impl ImageSpec {
    /// A `repo` image spec.
    pub fn repo(dockerfile: impl Into<Vec<u8>>, context: BTreeMap<String, Vec<u8>>) -> Self {
        ImageSpec {
            kind: "repo".to_owned(),
            dockerfile: dockerfile.into(),
            context,
        }
    }

    /// `airut-<kind>:<32 hex digits>` from the content hash.
    pub fn tag(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(self.kind.as_bytes());
        field(&self.dockerfile);
        for (name, content) in &self.context {
            field(name.as_bytes());
            field(content);
        }
        let digest = h.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("airut-{}:{hex}", self.kind)
    }

    fn check(&self) -> Result<(), ImageError> {
        if self.kind.is_empty()
            || !self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ImageError::InvalidKind(self.kind.clone()));
        }
        for name in self.context.keys() {
            if name.is_empty()
                || name == "."
                || name == ".."
                || name == "Dockerfile"
                || name.contains(['/', '\\', '\0'])
            {
                return Err(ImageError::InvalidContext(name.clone()));
            }
        }
        Ok(())
    }

    /// The build context as a tar archive (fixed times and modes, so equal
    /// specs give equal archives).
    pub(crate) fn context_tar(&self) -> Result<Vec<u8>, ImageError> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, content: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            // Executable, so scripts and tools in the context can be run by RUN
            // steps without a chmod (git trees do not carry modes here).
            header.set_mode(0o755);
            header.set_mtime(0);
            header.set_cksum();
            b.append_data(&mut header, name, content)
        };
        let err = |e: std::io::Error| ImageError::Engine(format!("build context archive: {e}"));
        add("Dockerfile", &self.dockerfile).map_err(err)?;
        for (name, content) in &self.context {
            add(name, content).map_err(err)?;
        }
        b.into_inner().map_err(err)
    }
}

// === impl ImageCache ===

impl ImageCache {
    /// A cache on `engine`, recording into `log`.
    pub fn new(engine: Engine, log: Log, max_age: Duration) -> Self {
        ImageCache {
            engine,
            log,
            max_age,
            locks: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The image's tag, built first if absent, too old, or `force`d.
    pub async fn ensure(
        &self,
        spec: &ImageSpec,
        force: bool,
        for_: &BuildFor,
    ) -> Result<String, ImageError> {
        spec.check()?;
        let tag = spec.tag();
        use std::sync::atomic::Ordering;
        let tag_lock = {
            let mut locks = self.locks.lock().expect("image lock map is never poisoned");
            Arc::clone(locks.entry(tag.clone()).or_default())
        };
        let builds_before = tag_lock.builds.load(Ordering::SeqCst);
        let _guard = tag_lock.lock.lock().await;
        // A build that finished while this request waited counts as fresh,
        // even when this request was forced.
        let just_built = tag_lock.builds.load(Ordering::SeqCst) != builds_before;
        let age = self.age(&tag).await?;
        let fresh = match age {
            Some(age) => !self.max_age.is_zero() && age <= self.max_age,
            None => false,
        };
        if fresh && (!force || just_built) {
            let age = age.unwrap_or_default();
            self.record(
                &for_.stream,
                vec![Event::ImageReused(ImageReusedV1 {
                    repo: for_.repo.clone(),
                    task: for_.task,
                    tag: tag.clone(),
                    age_secs: age.as_secs(),
                })],
            )
            .await?;
            return Ok(tag);
        }
        let built = self.build(spec, &tag, age.is_some(), force, for_).await;
        tag_lock.builds.fetch_add(1, Ordering::SeqCst);
        built.map(|()| tag)
    }

    /// Age of the image with this tag; `None` if absent.
    async fn age(&self, tag: &str) -> Result<Option<Duration>, ImageError> {
        // Inspect, not list: a listing fails on Podman while another image
        // is being removed.
        match self.engine.docker().inspect_image(tag).await {
            Ok(image) => Ok(Some(
                image
                    .created
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(age_of)
                    // An unreadable date counts as old: rebuild.
                    .unwrap_or(Duration::MAX),
            )),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(ImageError::Engine(format!("inspect image {tag}: {e}"))),
        }
    }

    async fn build(
        &self,
        spec: &ImageSpec,
        tag: &str,
        exists: bool,
        force: bool,
        for_: &BuildFor,
    ) -> Result<(), ImageError> {
        let started = Instant::now();
        self.record(
            &for_.stream,
            vec![Event::ImageBuildStarted(ImageBuildStartedV1 {
                repo: for_.repo.clone(),
                task: for_.task,
                tag: tag.to_owned(),
                forced: force,
            })],
        )
        .await?;
        let body = spec.context_tar()?;
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .nocache(exists)
            .labels(&HashMap::from([
                (LABEL_MANAGED, "1"),
                (LABEL_KIND, spec.kind.as_str()),
            ]))
            .build();
        let docker = self.engine.docker();
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(body.into())));
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut split = LineSplitter::with_max_piece(64 * 1024);
        let mut error: Option<String> = None;
        while let Some(item) = stream.next().await {
            let mut lines = Vec::new();
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        split.push(s.as_bytes(), &mut |l| lines.push(l.text));
                    }
                    if let Some(d) = info.error_detail
                        && let Some(m) = d.message
                    {
                        lines.push(m.clone());
                        error.get_or_insert(m);
                    }
                }
                Err(e) => {
                    let m = match e {
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    };
                    lines.push(m.clone());
                    error.get_or_insert(m);
                }
            }
            self.build_lines(tag, &for_.stream, lines, &mut tail)
                .await?;
        }
        let mut rest = Vec::new();
        split.finish(&mut |l| rest.push(l.text));
        self.build_lines(tag, &for_.stream, rest, &mut tail).await?;

        let ok = error.is_none() && self.age(tag).await?.is_some();
        let log_tail = Vec::from(tail).join("\n");
        self.record(
            &for_.stream,
            vec![Event::ImageBuildFinished(ImageBuildFinishedV1 {
                repo: for_.repo.clone(),
                tag: tag.to_owned(),
                ok,
                duration_ms: started.elapsed().as_millis() as u64,
                log_tail: log_tail.clone(),
            })],
        )
        .await?;
        if ok {
            Ok(())
        } else {
            Err(ImageError::BuildFailed {
                tag: tag.to_owned(),
                log_tail,
            })
        }
    }

    async fn build_lines(
        &self,
        tag: &str,
        stream: &StreamId,
        lines: Vec<String>,
        tail: &mut VecDeque<String>,
    ) -> Result<(), ImageError> {
        let lines: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return Ok(());
        }
        let mut events = Vec::with_capacity(lines.len());
        for line in lines {
            tail.push_back(line.clone());
            if tail.len() > TAIL_LINES {
                tail.pop_front();
            }
            events.push(Event::ImageBuildOutput(ImageBuildOutputV1 {
                tag: tag.to_owned(),
                line,
            }));
        }
        self.record(stream, events).await
    }

    async fn record(&self, stream: &StreamId, events: Vec<Event>) -> Result<(), ImageError> {
        self.log
            .append(StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Any,
                events: events
                    .into_iter()
                    .map(|event| NewEvent {
                        event,
                        causation: None,
                    })
                    .collect(),
            })
            .await
            .map(|_| ())
            .map_err(|e| ImageError::Log(e.to_string()))
    }

    /// Removes airut images older than the max age (and untagged leftovers
    /// of rebuilt ones). Images in use by a container are kept. Returns how
    /// many were removed. Does nothing when the max age is zero.
    pub async fn prune(&self) -> Result<u32, ImageError> {
        self.prune_kind(None).await
    }

    /// [`ImageCache::prune`], limited to images of one kind when given.
    pub async fn prune_kind(&self, kind: Option<&str>) -> Result<u32, ImageError> {
        if self.max_age.is_zero() {
            return Ok(0);
        }
        // One label filter only: Podman 4 answers nothing to two.
        let filter = match kind {
            Some(kind) => format!("{LABEL_KIND}={kind}"),
            None => format!("{LABEL_MANAGED}=1"),
        };
        let images = self
            .engine
            .docker()
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&HashMap::from([("label", vec![filter.as_str()])]))
                    .build(),
            ))
            .await
            .map_err(|e| ImageError::Engine(format!("list images: {e}")))?;
        let mut removed = 0;
        let mut events = Vec::new();
        for image in images {
            if image.labels.get(LABEL_MANAGED).map(String::as_str) != Some("1") {
                continue;
            }
            let age = age_of(image.created);
            if age <= self.max_age {
                continue;
            }
            let dangling = image.repo_tags.iter().all(|t| t.contains("<none>"));
            let names = if dangling {
                vec![image.id.clone()]
            } else {
                image.repo_tags.clone()
            };
            for name in names {
                let r = self
                    .engine
                    .docker()
                    .remove_image(
                        &name,
                        Some(RemoveImageOptionsBuilder::default().build()),
                        None,
                    )
                    .await;
                match r {
                    Ok(_) => {
                        removed += 1;
                        events.push(Event::ImagePruned(ImagePrunedV1 {
                            tag: name,
                            age_secs: age.as_secs(),
                        }));
                    }
                    Err(e) => {
                        tracing::info!(image = %name, error = %e, "image not pruned (in use?)")
                    }
                }
            }
        }
        if !events.is_empty() {
            self.record(&StreamId::server(), events).await?;
        }
        Ok(removed)
    }
}

/// Runs [`ImageCache::prune`] every `interval` until `cancel`.
pub fn spawn_prune_schedule(
    cache: ImageCache,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    super::spawn_every(interval, cancel, move || {
        let cache = cache.clone();
        async move {
            match cache.prune().await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "pruned stale airut images"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "image prune failed; retrying next interval"),
            }
        }
    })
}

/// Unix seconds of an RFC 3339 time (`2026-12-05T15:12:57.123Z`,
/// `…+02:00`); `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(13) != Some(&b':') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(16) != Some(&b':') {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let o = num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// Age from an image's creation time (Unix seconds); a time in the future
/// counts as new.
fn age_of(created: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Duration::from_secs(now.saturating_sub(created).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(df: &str, ctx: &[(&str, &str)]) -> ImageSpec {
        ImageSpec::repo(
            df.as_bytes().to_vec(),
            ctx.iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn tags_are_content_hashes_without_ambiguity() {
        let a = spec("FROM x\n", &[("ab", "c")]);
        assert_eq!(a.tag(), spec("FROM x\n", &[("ab", "c")]).tag());
        assert!(a.tag().starts_with("airut-repo:"));
        assert_eq!(a.tag().len(), "airut-repo:".len() + 32);
        // Unprefixed concatenation would make these equal.
        assert_ne!(a.tag(), spec("FROM x\n", &[("a", "bc")]).tag());
        assert_ne!(a.tag(), spec("FROM x\nab", &[]).tag());
        assert_ne!(a.tag(), spec("FROM y\n", &[("ab", "c")]).tag());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-05T15:12:57.123456789Z"),
            Some(1_796_483_577)
        );
        assert_eq!(
            parse_rfc3339("2026-12-05T17:12:57+02:00"),
            Some(1_796_483_577)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00-01:30"),
            Some(951_787_800)
        );
        for bad in [
            "",
            "2026-12-05",
            "2026-13-05T00:00:00Z",
            "2026-12-05T15:12:57",
            "x026-12-05T15:12:57Z",
            "2026-12-05T15:12:57Zjunk",
            "2026-12-05T15:12:57+0200",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn context_names_are_checked() {
        for bad in ["", ".", "..", "a/b", "..\\x", "Dockerfile", "nul\0"] {
            assert!(
                matches!(
                    spec("FROM x", &[(bad, "")]).check(),
                    Err(ImageError::InvalidContext(_))
                ),
                "{bad:?}"
            );
        }
        assert!(spec("FROM x", &[("entry.sh", "")]).check().is_ok());
        let mut s = spec("FROM x", &[]);
        s.kind = "Repo!".to_owned();
        assert!(matches!(s.check(), Err(ImageError::InvalidKind(_))));
    }

    #[test]
    fn the_context_archive_holds_every_file() {
        let s = spec("FROM x\n", &[("a.txt", "hello"), ("b", "")]);
        let tar = s.context_tar().expect("tar");
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().expect("entries") {
            let e = e.expect("entry");
            names.push(e.path().expect("path").display().to_string());
        }
        assert_eq!(names, ["Dockerfile", "a.txt", "b"]);
        assert_eq!(tar, s.context_tar().expect("tar again"));
    }
}
