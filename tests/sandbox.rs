//! The sandbox against real parts: Podman (through its Docker-compatible
//! socket, set up by `scripts/ensure-podman.sh`), images built by the
//! sandbox itself, the static `airut-init`, and the real Claude Code CLI
//! talking to a mock Messages API (`tests/support/anthropic.rs`).
//!
//! Fast scenarios (timeout, stop, exit at once, long lines, memory limit)
//! run a shell script in place of Claude Code in a busybox image built
//! `FROM scratch`; the agent scenarios run the real CLI in a Debian image.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use airut::config::{ResourceLimits, Secret};
use airut::events::*;
use airut::log::{Log, LogOptions};
use airut::sandbox::image::{BuildFor, ImageCache, ImageError, ImageSpec};
use airut::sandbox::run::{self, Mounts, NetworkMode, RunRequest, Stopper};
use airut::sandbox::{Engine, Outcome};

use crate::support::anthropic::MockAnthropic;

/// What `scripts/ensure-podman.sh` set up.
pub(crate) struct SetupEnv {
    pub(crate) docker_host: PathBuf,
    pub(crate) claude: PathBuf,
    pub(crate) busybox: PathBuf,
}

pub(crate) fn setup() -> &'static SetupEnv {
    static ENV: OnceLock<SetupEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let cache = std::env::var_os("AIRUT_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/airut-ci")
            });
        let file = cache.join("sandbox.env");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nThe sandbox tests need Podman, a base image and Claude Code: \
                 run scripts/ensure-podman.sh (as root) first (scripts/test.sh does).",
                file.display()
            )
        });
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{} has no {k}", file.display()))
                .to_owned()
        };
        SetupEnv {
            docker_host: PathBuf::from(get("DOCKER_HOST").trim_start_matches("unix://")),
            claude: PathBuf::from(get("AIRUT_TEST_CLAUDE")),
            busybox: PathBuf::from(get("AIRUT_TEST_BUSYBOX")),
        }
    })
}

/// `airut-init` linked statically, built once per test run with
/// `cargo rustc` (only the init is relinked; the rest comes from the build
/// that made this test binary).
pub(crate) fn static_init() -> &'static Path {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe");
        // target/<profile>/deps/tests-xxxx → target
        let target = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("target dir");
        let out =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["rustc", "--quiet", "--bin", "airut-init", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .args(["--", "-C", "target-feature=+crt-static"])
                .env("CARGO_TARGET_DIR", target)
                .output()
                .expect("run cargo rustc");
        assert!(
            out.status.success(),
            "building the static airut-init failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = target.join("debug/airut-init");
        let dest = target.join("airut-init-static");
        std::fs::create_dir_all(&dest).unwrap();
        let dest = dest.join("airut-init");
        let tmp = dest.with_extension("tmp");
        std::fs::copy(&built, &tmp).unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
        dest
    })
}

pub(crate) async fn engine() -> Engine {
    Engine::connect(Some(&setup().docker_host))
        .await
        .expect("connect to the podman socket from sandbox.env")
}

pub(crate) fn open_log(dir: &Path) -> Log {
    Log::open(
        &dir.join("log"),
        LogOptions {
            flush_interval: Duration::from_millis(20),
            create: true,
            ..LogOptions::default()
        },
    )
    .expect("open log")
}

pub(crate) struct Conv {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) mounts: Mounts,
    pub(crate) stream: StreamId,
}

pub(crate) fn conv() -> Conv {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let mk = |n: &str| {
        let p = root.join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let mounts = Mounts {
        workspace: mk("workspace"),
        inbox: mk("inbox"),
        outbox: mk("outbox"),
        storage: mk("storage"),
        claude_state: mk("claude"),
    };
    Conv {
        _dir: dir,
        root,
        mounts,
        stream: ConversationId::random().stream(),
    }
}

fn for_(stream: &StreamId) -> BuildFor {
    BuildFor {
        repo: RepoId("widgets".into()),
        task: None,
        stream: stream.clone(),
    }
}

pub(crate) fn busybox_spec() -> ImageSpec {
    let bb = std::fs::read(&setup().busybox).expect("busybox-static");
    ImageSpec::repo(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nWORKDIR /workspace\n",
        BTreeMap::from([("busybox".to_owned(), bb)]),
    )
}

pub(crate) fn debian_spec() -> ImageSpec {
    ImageSpec::repo(
        "FROM debian:bookworm-slim\n\
         RUN git config --system user.email agent@example.com && git config --system user.name 'Sandbox Agent' \
         && git config --system --add safe.directory '*'\n\
         WORKDIR /workspace\n",
        BTreeMap::new(),
    )
}

pub(crate) async fn image(engine: &Engine, log: &Log, spec: &ImageSpec) -> String {
    let cache = ImageCache::new(engine.clone(), log.clone(), Duration::from_secs(3600));
    cache
        .ensure(spec, false, &for_(&StreamId::server()))
        .await
        .expect("image builds")
}

/// A shell script standing in for Claude Code.
pub(crate) fn fake_claude(c: &Conv, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = c.root.join("fake-claude");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

pub(crate) fn request(c: &Conv, image: &str, claude: PathBuf, prompt: &str) -> RunRequest {
    RunRequest {
        task: TaskId::new(),
        stream: c.stream.clone(),
        image: image.to_owned(),
        mounts: c.mounts.clone(),
        claude_binary: claude,
        init_binary: static_init().to_owned(),
        env: vec![],
        limits: ResourceLimits::default(),
        resume_session: None,
        model: "claude-mock".into(),
        effort: None,
        prompt: prompt.into(),
        network: NetworkMode::Unsandboxed,
        ca_cert: None,
        stop_grace: Duration::from_secs(5),
    }
}

pub(crate) fn events(log: &Log, stream: &StreamId) -> Vec<Event> {
    log.stream_iter(stream, 1)
        .map(|r| r.expect("read").decode().expect("decode"))
        .collect()
}

pub(crate) fn output_lines(evs: &[Event], which: OutputStream) -> Vec<(OutputKind, String)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::ContainerOutput(o) if o.stream == which => Some((o.kind.clone(), o.raw.clone())),
            _ => None,
        })
        .collect()
}

async fn run_fake(
    body: &str,
    prompt: &str,
    tweak: impl FnOnce(&mut RunRequest),
) -> (Conv, Log, airut::sandbox::ExecutionResult, Vec<Event>) {
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let tag = image(&engine, &log, &busybox_spec()).await;
    let mut req = request(&c, &tag, fake_claude(&c, body), prompt);
    tweak(&mut req);
    let (_stopper, rx) = Stopper::new();
    let result = run::run(&engine, &log, &req, rx).await.expect("run");
    let evs = events(&log, &c.stream);
    (c, log, result, evs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_agent_gets_the_prompt_args_and_sandbox_env_and_lines_are_recorded() {
    let body = r#"
echo '{"type":"system","subtype":"init","session_id":"sess-1"}'
echo "args: $*"
echo "sandbox: $IS_SANDBOX bg: $CLAUDE_CODE_DISABLE_BACKGROUND_TASKS secret: $MY_SECRET"
echo "prompt: $(cat)"
echo "not json, on stderr" >&2
echo "parent: $PPID $(tr '\0' ' ' < /proc/1/cmdline)"
ls -d /workspace /inbox /outbox /storage /root/.claude
grep -i '^CapEff' /proc/self/status
echo '{"type":"result","subtype":"success","is_error":false,"result":"fake done","session_id":"sess-1","num_turns":1,"duration_ms":5}'
"#;
    let (_c, _log, result, evs) = run_fake(body, "Hello, sandbox", |r| {
        r.env = vec![("MY_SECRET".into(), Secret::new("s3cr3t"))];
        r.resume_session = Some("sess-0".into());
        r.effort = Some("high".into());
    })
    .await;
    assert_eq!(result.outcome, Outcome::Success, "{result:?}\n{evs:#?}");
    assert_eq!(result.session_id.as_deref(), Some("sess-1"));
    assert_eq!(result.response_text, "fake done");
    let out = output_lines(&evs, OutputStream::Stdout);
    let texts: Vec<&str> = out.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(out[0].0, OutputKind::SystemInit);
    assert_eq!(
        texts[1],
        "args: --resume sess-0 --model claude-mock --effort high -p - --dangerously-skip-permissions --output-format stream-json --verbose"
    );
    assert_eq!(texts[2], "sandbox: 1 bg: 1 secret: s3cr3t");
    assert_eq!(texts[3], "prompt: Hello, sandbox");
    assert_eq!(out[3].0, OutputKind::Text);
    assert!(
        texts[4].starts_with("parent: 1 /opt/airut/init /opt/claude/claude --resume"),
        "the agent is the init's child; the init is PID 1: {}",
        texts[4]
    );
    assert!(texts.contains(&"/workspace") && texts.contains(&"/root/.claude"));
    // CHOWN DAC_OVERRIDE FOWNER SETGID SETUID = bits 0,1,3,6,7 = 0xcb.
    let cap = texts.iter().find(|t| t.starts_with("CapEff")).unwrap();
    assert!(cap.ends_with("00000000000000cb"), "{cap}");
    assert_eq!(out.last().unwrap().0, OutputKind::Result);
    let err = output_lines(&evs, OutputStream::Stderr);
    assert_eq!(
        err,
        vec![(OutputKind::Text, "not json, on stderr".to_owned())]
    );

    let names: Vec<&str> = evs.iter().map(|e| e.event_type().name()).collect();
    assert_eq!(names.first(), Some(&"container.created"));
    assert_eq!(names.get(1), Some(&"container.started"));
    assert_eq!(names.last(), Some(&"container.exited"));
    let Some(Event::ContainerExited(x)) = evs.last() else {
        unreachable!()
    };
    assert_eq!((x.exit_code, x.oom_killed), (0, false));
    // The container is gone.
    let gone = engine()
        .await
        .docker()
        .inspect_container(
            &x.container_id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    assert!(gone.is_err(), "container still exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_that_exits_at_once_is_a_failed_run_with_its_stderr() {
    let (_c, _log, result, evs) =
        run_fake("echo 'fatal: bad config' >&2; exit 3", "", |_| {}).await;
    assert_eq!(result.outcome, Outcome::ContainerFailed);
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(
        output_lines(&evs, OutputStream::Stderr),
        vec![(OutputKind::Text, "fatal: bad config".to_owned())]
    );
    assert!(matches!(evs.last(), Some(Event::ContainerExited(e)) if e.exit_code == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_and_very_long_lines_are_kept_whole() {
    // 200 KiB of JSON on one line, 70 000 bytes of text, a line without a
    // final newline.
    let body = r#"
printf '%s' '{"type":"assistant","message":{"content":[{"type":"text","text":"'
head -c 204800 /dev/zero | tr '\0' 'a'
printf '"}]}}\n'
head -c 70000 /dev/zero | tr '\0' 'b'; echo
echo 'plain words'
printf 'no newline at the end'
"#;
    let (_c, log, result, evs) = run_fake(body, "", |_| {}).await;
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(result.response_text.len(), 204_800);
    let blobs: Vec<&ContainerOutputBlobV1> = evs
        .iter()
        .filter_map(|e| match e {
            Event::ContainerOutputBlob(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(blobs.len(), 2);
    assert_eq!(blobs[0].kind, OutputKind::Assistant);
    assert_eq!(blobs[0].line_no, 0);
    assert_eq!(blobs[1].kind, OutputKind::Text);
    assert_eq!(blobs[1].blob.size, 70_000);
    let content = log.get_blob(&blobs[1].blob.hash).unwrap().unwrap();
    assert!(content.iter().all(|&b| b == b'b'));
    let full = log.get_blob(&blobs[0].blob.hash).unwrap().unwrap();
    assert_eq!(full.len() as u64, blobs[0].blob.size);
    let out = output_lines(&evs, OutputStream::Stdout);
    assert_eq!(
        out,
        vec![
            (OutputKind::Text, "plain words".to_owned()),
            (OutputKind::Text, "no newline at the end".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_visible_in_the_cgroup() {
    let body = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max";
    let (_c, _log, result, evs) = run_fake(body, "", |r| {
        r.limits = ResourceLimits {
            memory_bytes: Some(96 << 20),
            pids: Some(64),
            nano_cpus: Some(500_000_000),
            timeout: Some(Duration::from_secs(60)),
        };
    })
    .await;
    assert_eq!(result.outcome, Outcome::Success, "{evs:#?}");
    let out = output_lines(&evs, OutputStream::Stdout);
    assert_eq!(out[0].1, (96u64 << 20).to_string());
    assert_eq!(out[1].1, "64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_container_and_keeps_partial_output() {
    let body = "echo '{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s-t\"}'; echo working; sleep 600; echo never";
    let (_c, _log, result, evs) = run_fake(body, "", |r| {
        r.limits.timeout = Some(Duration::from_secs(10));
    })
    .await;
    assert_eq!(result.outcome, Outcome::Timeout);
    assert_eq!(result.session_id.as_deref(), Some("s-t"));
    let out = output_lines(&evs, OutputStream::Stdout);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::ContainerStopped(s) if s.reason == StopReason::Timeout))
    );
    assert!(matches!(evs.last(), Some(Event::ContainerExited(e)) if e.exit_code == 137));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_sigterm_to_the_agent_through_the_init() {
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let tag = image(&engine, &log, &busybox_spec()).await;
    // The agent traps SIGTERM, says so, and exits 0: proof that the init
    // forwarded the signal (a SIGKILL would not run the trap).
    let claude = fake_claude(
        &c,
        "trap 'echo got-term; exit 0' TERM\necho ready\nwhile true; do sleep 1; done",
    );
    let req = request(&c, &tag, claude, "");
    let (stopper, rx) = Stopper::new();
    let mut sub = log.subscribe(Seq(0));
    let run = tokio::spawn({
        let (engine, log, req) = (engine.clone(), log.clone(), req.clone());
        async move { run::run(&engine, &log, &req, rx).await }
    });
    // Wait for the agent's first line, then stop.
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = sub.next().await {
            if let Ok(Event::ContainerOutput(o)) = r.unwrap().decode()
                && o.raw == "ready"
            {
                break;
            }
        }
    })
    .await
    .expect("the agent starts");
    stopper.stop(StopReason::Requested);
    let result = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("run ends after stop")
        .unwrap()
        .expect("run");
    assert_eq!(result.outcome, Outcome::Stopped);
    let evs = events(&log, &c.stream);
    let out = output_lines(&evs, OutputStream::Stdout);
    assert!(out.iter().any(|(_, t)| t == "got-term"), "{out:?}");
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::ContainerStopped(s) if s.reason == StopReason::Requested))
    );
    assert!(matches!(evs.last(), Some(Event::ContainerExited(e)) if e.exit_code == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_mode_has_only_loopback_and_relays_443_to_the_task_socket() {
    use std::io::Read;
    let c = conv();
    let sock = c.root.join("proxy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // The host side of the task socket: keep what the relay sends.
    let received = std::thread::spawn(move || {
        let mut all = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(4) {
            let mut s = stream.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let done = buf.windows(5).any(|w| w == b"hello");
            all.push(buf);
            if done {
                break;
            }
        }
        all
    });
    let (_c2, _log, result, evs) = run_fake(
        "ls /sys/class/net; echo hello | nc -w 3 127.0.0.1 443; echo sent",
        "",
        |r| {
            r.network = NetworkMode::Relay {
                socket: sock.clone(),
            };
        },
    )
    .await;
    let out = output_lines(&evs, OutputStream::Stdout);
    assert_eq!(
        result.outcome,
        Outcome::Success,
        "{out:?} {:?}",
        output_lines(&evs, OutputStream::Stderr)
    );
    assert_eq!(out[0].1, "lo", "the container has loopback only: {out:?}");
    let got = received.join().unwrap();
    let relayed = got
        .iter()
        .find(|b| b.windows(5).any(|w| w == b"hello"))
        .expect("the bytes reached the task socket");
    assert!(
        relayed.starts_with(b"\r\n\r\n\0\r\nQUIT\n"),
        "a PROXY v2 header comes first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certificate_is_installed_into_the_trust_store() {
    let c = conv();
    let ca = c.root.join("ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (_c2, _log, result, evs) = run_fake(
        "grep -c TESTCA /etc/ssl/certs/ca-certificates.crt; echo \"$NODE_EXTRA_CA_CERTS $SSL_CERT_FILE\"",
        "",
        |r| r.ca_cert = Some(ca.clone()),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Success, "{evs:#?}");
    let out = output_lines(&evs, OutputStream::Stdout);
    assert_eq!(out[0].1, "1");
    assert_eq!(
        out[1].1,
        "/run/airut/ca.crt /etc/ssl/certs/ca-certificates.crt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_clear_errors_before_anything_runs() {
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let mut req = request(&c, "airut-repo:none", c.root.join("missing-claude"), "");
    let (_s, rx) = Stopper::new();
    let err = run::run(&engine, &log, &req, rx.clone()).await.unwrap_err();
    assert!(err.to_string().contains("Claude Code binary"), "{err}");
    req.claude_binary = fake_claude(&c, "true");
    req.limits.timeout = Some(Duration::from_secs(5));
    let err = run::run(&engine, &log, &req, rx.clone()).await.unwrap_err();
    assert!(err.to_string().contains("minimum of 10 s"), "{err}");
    req.limits.timeout = None;
    let err = run::run(&engine, &log, &req, rx).await.unwrap_err();
    assert!(err.to_string().contains("container engine"), "{err}");
    assert!(events(&log, &c.stream).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_dockerfile_is_a_clear_failure_quoting_the_log() {
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let cache = ImageCache::new(engine, log.clone(), Duration::from_secs(3600));
    let spec = ImageSpec::repo(
        format!(
            "FROM {}\nRUN echo about-to-fail-{} && exit 7\n",
            image_name_of_busybox(),
            std::process::id()
        ),
        BTreeMap::new(),
    );
    let err = cache
        .ensure(&spec, false, &for_(&c.stream))
        .await
        .unwrap_err();
    let ImageError::BuildFailed { log_tail, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(log_tail.contains("about-to-fail"), "{log_tail}");
    let evs = events(&log, &c.stream);
    assert!(matches!(evs.first(), Some(Event::ImageBuildStarted(_))));
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::ImageBuildOutput(o) if o.line.contains("about-to-fail")))
    );
    assert!(
        matches!(evs.last(), Some(Event::ImageBuildFinished(f)) if !f.ok && f.log_tail == *log_tail)
    );
}

/// The busybox image's tag (built on first use).
fn image_name_of_busybox() -> String {
    busybox_spec().tag()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_build_an_image_once_then_reuse_it() {
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let _ = image(&engine, &log, &busybox_spec()).await;
    let cache = ImageCache::new(engine.clone(), log.clone(), Duration::from_secs(3600));
    let spec = ImageSpec::repo(
        format!(
            "FROM {}\nRUN echo built-{} > /stamp\n",
            image_name_of_busybox(),
            uuid::Uuid::now_v7()
        ),
        BTreeMap::new(),
    );
    let f = for_(&c.stream);
    let (a, b, d) = tokio::join!(
        cache.ensure(&spec, false, &f),
        cache.ensure(&spec, false, &f),
        cache.ensure(&spec, false, &f)
    );
    assert_eq!(a.unwrap(), spec.tag());
    assert_eq!(b.unwrap(), spec.tag());
    assert_eq!(d.unwrap(), spec.tag());
    let evs = events(&log, &c.stream);
    let started = evs
        .iter()
        .filter(|e| matches!(e, Event::ImageBuildStarted(_)))
        .count();
    let reused = evs
        .iter()
        .filter(|e| matches!(e, Event::ImageReused(_)))
        .count();
    assert_eq!((started, reused), (1, 2));

    // A zero max age rebuilds every time; pruning with a zero max age does nothing.
    let eager = ImageCache::new(engine.clone(), log.clone(), Duration::ZERO);
    eager.ensure(&spec, false, &f).await.unwrap();
    let evs = events(&log, &c.stream);
    let started = evs
        .iter()
        .filter(|e| matches!(e, Event::ImageBuildStarted(_)))
        .count();
    assert_eq!(started, 2);
    assert_eq!(eager.prune().await.unwrap(), 0);
    let _ = engine
        .docker()
        .remove_image(
            &spec.tag(),
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

// === The real Claude Code ===

fn claude_env(mock: &MockAnthropic) -> Vec<(String, Secret)> {
    [
        ("ANTHROPIC_BASE_URL", mock.container_url()),
        ("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Secret::new(v)))
    .collect()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_claude_writes_the_outbox_and_commits_then_resumes() {
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let tag = image(&engine, &log, &debian_spec()).await;
    let ws = &c.mounts.workspace;
    git(ws, &["init", "-q", "-b", "main"]);
    git(
        ws,
        &[
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=T",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "start",
        ],
    );

    let mock = MockAnthropic::start("write_and_commit").await;
    let mut req = request(
        &c,
        &tag,
        setup().claude.clone(),
        "Write the report and commit the notes.",
    );
    req.env = claude_env(&mock);
    req.limits.timeout = Some(Duration::from_secs(300));
    let (_s, rx) = Stopper::new();
    let result = run::run(&engine, &log, &req, rx).await.expect("run");
    let evs = events(&log, &c.stream);
    assert_eq!(
        result.outcome,
        Outcome::Success,
        "{result:?}\n{:#?}",
        output_lines(&evs, OutputStream::Stderr)
    );
    assert_eq!(mock.served(), 4, "every scripted turn was asked for");
    assert_eq!(
        result.response_text,
        "The report is in /outbox/report.md and the notes are committed."
    );
    assert_eq!(
        std::fs::read_to_string(c.mounts.outbox.join("report.md")).unwrap(),
        "# Report\n\nEverything checked.\n"
    );
    assert_eq!(
        git(ws, &["log", "-1", "--format=%s"]).trim(),
        "Add notes from the agent"
    );
    assert_eq!(
        git(ws, &["show", "HEAD:notes.txt"]),
        "hello from the sandbox\n"
    );
    let kinds: Vec<OutputKind> = output_lines(&evs, OutputStream::Stdout)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds.first(), Some(&OutputKind::SystemInit));
    assert_eq!(kinds.last(), Some(&OutputKind::Result));
    assert!(
        kinds.contains(&OutputKind::User),
        "tool results are recorded"
    );
    let todo = output_lines(&evs, OutputStream::Stdout)
        .into_iter()
        .any(|(k, t)| k == OutputKind::Assistant && t.contains("TodoWrite"));
    assert!(todo, "the TodoWrite tool use is recorded");
    let session = result.session_id.clone().expect("a session id");

    // A second task on the same conversation resumes the session.
    let mock2 = MockAnthropic::start("resume").await;
    let mut first = request(&c, &tag, setup().claude.clone(), "What is the answer?");
    first.env = claude_env(&mock2);
    first.resume_session = Some(session.clone());
    let (_s, rx) = Stopper::new();
    let r1 = run::run(&engine, &log, &first, rx).await.expect("run");
    assert_eq!(r1.outcome, Outcome::Success, "{r1:?}");
    assert_eq!(r1.response_text, "First answer: the answer is 42.");
    let mut second = request(&c, &tag, setup().claude.clone(), "And now?");
    second.env = claude_env(&mock2);
    second.resume_session = r1.session_id.clone();
    let (_s, rx) = Stopper::new();
    let r2 = run::run(&engine, &log, &second, rx).await.expect("run");
    assert_eq!(r2.outcome, Outcome::Success, "{r2:?}");
    assert_eq!(r2.response_text, "Second answer: still 42.");
    let last = mock2.agent_requests().pop().expect("an agent request");
    let history = last["messages"].to_string();
    assert!(
        history.contains("What is the answer?"),
        "the earlier prompt is resent"
    );
    assert!(
        history.contains("the answer is 42"),
        "the earlier answer is resent"
    );
    assert!(history.contains("And now?"));
    assert!(
        history.contains("Write the report and commit the notes."),
        "the first task's turns are in the resumed session"
    );
}

#[test]
fn airut_check_reports_the_engine_and_runs_the_init() {
    let init = static_init();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airut.yaml");
    std::fs::write(
        &config,
        format!(
            "config_version: 1\nsandbox:\n  engine_socket: {}\nrepos:\n  widgets:\n    repo_url: https://example.com/w.git\n",
            setup().docker_host.display()
        ),
    )
    .unwrap();
    // `airut` looks for airut-init beside itself: use a copy of the binary
    // next to the static init.
    let airut = init.with_file_name("airut");
    std::fs::copy(env!("CARGO_BIN_EXE_airut"), &airut).unwrap();
    let out = std::process::Command::new(&airut)
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path())
        .arg("check")
        .env("AIRUT_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok    container engine: Podman"), "{text}");
    assert!(text.contains("ok    container run"), "{text}");

    // A socket that does not exist is a failure naming the key.
    std::fs::write(
        &config,
        "config_version: 1\nsandbox:\n  engine_socket: /nonexistent/podman.sock\nrepos:\n  widgets:\n    repo_url: https://example.com/w.git\n",
    )
    .unwrap();
    let out = std::process::Command::new(&airut)
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path())
        .arg("check")
        .env("AIRUT_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAIL  container engine") && text.contains("sandbox.engine_socket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_stops_containers_of_running_tasks_and_removes_unknown_ones() {
    use airut::sandbox::recovery;
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let tag = image(&engine, &log, &busybox_spec()).await;
    let claude = fake_claude(&c, "echo ready; while true; do sleep 1; done");
    // Two runs whose server "crashes" (the run is dropped mid-way): one task
    // the log says is running, one it says has ended.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let req = request(&c, &tag, claude.clone(), "");
        let (_s, rx) = Stopper::new();
        let mut sub = log.subscribe(Seq(0));
        let handle = tokio::spawn({
            let (engine, log, req) = (engine.clone(), log.clone(), req.clone());
            async move { run::run(&engine, &log, &req, rx).await }
        });
        tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(r) = sub.next().await {
                if let Ok(Event::ContainerOutput(o)) = r.unwrap().decode()
                    && o.task == req.task
                    && o.raw == "ready"
                {
                    break;
                }
            }
        })
        .await
        .expect("the agent starts");
        handle.abort();
        let _ = handle.await;
        tasks.push(req.task);
    }
    let running = std::collections::HashSet::from([tasks[0]]);
    let report = recovery::recover(&engine, &log, &running, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        report.interrupted.contains(&(tasks[0], c.stream.clone())),
        "{report:?}"
    );
    let names = [
        run::container_name(&tasks[0]),
        run::container_name(&tasks[1]),
    ];
    for name in &names {
        let gone = engine
            .docker()
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        assert!(gone.is_err(), "{name} still exists");
    }
    let evs = events(&log, &c.stream);
    for task in &tasks {
        assert!(
            evs.iter().any(|e| matches!(e, Event::ContainerStopped(s) if s.task == *task && s.reason == StopReason::Recovery)),
            "no recovery stop for {task}"
        );
    }
    assert!(!report.interrupted.iter().any(|(t, _)| *t == tasks[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airut_replay_tells_the_story_of_a_run() {
    let body = r#"echo '{"type":"system","subtype":"init","session_id":"sess-r"}'
echo 'some words'
echo '{"type":"result","subtype":"success","result":"ok","session_id":"sess-r"}'"#;
    let (c, log, result, _) = run_fake(body, "", |_| {}).await;
    assert_eq!(result.outcome, Outcome::Success);
    log.close().await.unwrap();
    let conv = c.stream.conversation().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airut"))
        .arg("--config")
        .arg(c.root.join("airut.yaml"))
        .arg("--state-dir")
        .arg(&c.root)
        .args(["replay", &conv.to_string()])
        .env("AIRUT_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "created for task",
        "started for task",
        "[init]",
        "[text] some words",
        "[result]",
        "exited with code 0",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_airut_images_older_than_the_max_age() {
    let c = conv();
    let log = open_log(&c.root);
    let engine = engine().await;
    let _ = image(&engine, &log, &busybox_spec()).await;
    // Its own kind, so that pruning leaves the images of other tests alone.
    let spec = ImageSpec {
        kind: "prunetest".to_owned(),
        dockerfile: format!(
            "FROM {}\nRUN echo {} > /stamp\n",
            image_name_of_busybox(),
            uuid::Uuid::now_v7()
        )
        .into_bytes(),
        context: BTreeMap::new(),
    };
    let cache = ImageCache::new(engine.clone(), log.clone(), Duration::from_secs(1));
    let tag = cache.ensure(&spec, false, &for_(&c.stream)).await.unwrap();
    // Image creation times have a resolution of a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let removed = cache.prune_kind(Some("prunetest")).await.unwrap();
    assert!(removed >= 1);
    let evs = events(&log, &StreamId::server());
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::ImagePruned(p) if p.tag.ends_with(&tag))),
        "{evs:#?}"
    );
    let exists = engine.docker().inspect_image(&tag).await;
    assert!(exists.is_err(), "{tag} still exists");
}
