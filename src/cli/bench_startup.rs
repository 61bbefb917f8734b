//! `airut bench startup`: how fast `airut run` serves and how much memory
//! it holds when idle (not a test; prints figures).
//!
//! Spawns the binary (this executable by default) as `airut run` with a
//! scratch config and state dir, polls `/healthz` until it answers 200 and
//! takes that as start → serving. Then lets the server sit idle for a while,
//! reads its `VmRSS`, `RssAnon` and `RssFile` from `/proc/PID/status`, and
//! attributes the resident set per mapping from `/proc/PID/smaps` (the
//! binary's code, read-only data and relocated data, shared libraries,
//! allocator arenas and other anonymous memory, thread stacks). Then it asks
//! for one board page (its time, and the RSS after it: code the server had
//! let go of is mapped back as it runs), sends SIGTERM and times the exit.
//! Each of two configs (no repos; one repo with a local bare git remote and
//! an email channel whose IMAP and SMTP ports are closed) runs on a fresh
//! state dir (creates the store) and on an existing one (reopens it).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use super::procmem::{Mapping, ProcStatus, parse_smaps, parse_status};

/// How long a server gets to serve `/healthz` before the bench gives up.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `airut bench startup`.
#[derive(Debug, Clone)]
pub struct StartupOptions {
    /// Runs per config and state (fresh, existing).
    pub runs: usize,
    /// Idle time before the memory is read.
    pub settle: Duration,
    /// Scratch directory parent [default: the temporary directory].
    pub dir: Option<PathBuf>,
    /// The binary to run [default: this executable].
    pub binary: Option<PathBuf>,
}

/// One run of the server: its figures.
#[derive(Debug, Clone)]
struct RunFigures {
    serving: Duration,
    stop: Duration,
    status: ProcStatus,
    smaps: Vec<Mapping>,
    /// Time to serve the board page after the idle time.
    board: Duration,
    /// Memory after serving it.
    after_board: ProcStatus,
}

/// Runs the startup benchmark.
pub async fn startup(opts: StartupOptions) -> anyhow::Result<ExitCode> {
    if opts.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    let binary = match opts.binary.clone() {
        Some(b) => b,
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    let parent = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("airut-bench-startup-")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "cannot create a scratch directory in {}; pass a writable --dir",
                parent.display()
            )
        })?;
    let root = scratch.path().to_owned();
    // The name smaps shows for the binary's mappings.
    let mapped_name = std::fs::canonicalize(&binary)
        .unwrap_or_else(|_| binary.clone())
        .display()
        .to_string();
    let binary_size = std::fs::metadata(&binary)
        .with_context(|| format!("cannot read the binary {}", binary.display()))?
        .len();
    println!(
        "airut bench startup: {} ({:.1} MB), {} runs per line, {} s idle before reading memory, \
         {} cores, load average {}",
        binary.display(),
        binary_size as f64 / 1e6,
        opts.runs,
        opts.settle.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, usize::from),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_owned())
    );

    for variant in [Variant::NoRepos, Variant::OneRepo] {
        let config = write_config(&root, variant).await?;
        let existing = root.join(format!("{}-existing", variant.name()));
        // The existing store is made by one unmeasured run.
        run_once(&binary, &config, &existing, Duration::ZERO).await?;
        for state in ["a fresh", "an existing"] {
            let mut runs = Vec::with_capacity(opts.runs);
            for i in 0..opts.runs {
                let dir = if state == "a fresh" {
                    root.join(format!("{}-fresh-{i}", variant.name()))
                } else {
                    existing.clone()
                };
                runs.push(run_once(&binary, &config, &dir, opts.settle).await?);
            }
            print_runs(variant, state, &runs, &mapped_name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    NoRepos,
    OneRepo,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::NoRepos => "no-repos",
            Variant::OneRepo => "one-repo",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::NoRepos => "no repos",
            Variant::OneRepo => "one repo + email (closed ports)",
        }
    }
}

/// Writes the scratch config for a variant; returns its path.
async fn write_config(root: &Path, variant: Variant) -> anyhow::Result<PathBuf> {
    let mut yaml = String::from("config_version: 1\ndashboard:\n  host: 127.0.0.1\n  port: 0\n");
    if let Variant::OneRepo = variant {
        let remote = root.join("remote.git");
        // A local bare remote, so the boot's mirror refresh is a real git
        // fetch; without git the repo fails to boot, which is measured too.
        let git = tokio::process::Command::new("git")
            .args(["init", "--bare", "-q"])
            .arg(&remote)
            .stdin(Stdio::null())
            .output()
            .await;
        if !git.as_ref().is_ok_and(|o| o.status.success()) {
            println!("(git init --bare failed: the repo will fail to boot)");
        }
        // Ports that were free a moment ago: connections are refused.
        let closed = closed_port().await?;
        let _ = write!(
            yaml,
            "repos:\n  bench:\n    repo_url: {remote}\n    email:\n      \
             address: airut@bench.invalid\n      username: airut\n      password: bench\n      \
             imap:\n        host: 127.0.0.1\n        port: {closed}\n        security: plain\n      \
             smtp:\n        host: 127.0.0.1\n        port: {closed}\n        security: plain\n      \
             auth:\n        trusted_authserv_id: \"\"\n        authorized_senders: [\"*@bench.invalid\"]\n",
            remote = remote.display(),
        );
    }
    let path = root.join(format!("{}.yaml", variant.name()));
    tokio::fs::write(&path, yaml)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A loopback port nothing listens on (bound, then released).
async fn closed_port() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// Starts the server, times it to serving, reads its memory after `settle`
/// idle, stops it with SIGTERM and times the exit.
async fn run_once(
    binary: &Path,
    config: &Path,
    state_dir: &Path,
    settle: Duration,
) -> anyhow::Result<RunFigures> {
    let stderr_path = state_dir.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path)
        .with_context(|| format!("cannot create {}", stderr_path.display()))?;
    let start = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("run")
        .env("AIRUT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child
        .id()
        .context("the server exited before it could be watched")?;
    let failed = |why: String| {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::anyhow!(
            "{why} ({} run --state-dir {}); its stderr:\n{}",
            binary.display(),
            state_dir.display(),
            tail.join("\n")
        )
    };

    // Poll: the runtime file appears once the listener is bound; then
    // /healthz until it answers 200.
    let mut addr: Option<SocketAddr> = None;
    let serving = loop {
        if let Some(status) = child.try_wait()? {
            return Err(failed(format!(
                "the server exited with {status} before serving"
            )));
        }
        if start.elapsed() > SERVE_TIMEOUT {
            return Err(failed(format!(
                "the server did not serve /healthz within {SERVE_TIMEOUT:?}"
            )));
        }
        if addr.is_none() {
            addr = super::runtime::read(state_dir)
                .ok()
                .flatten()
                .filter(|info| info.pid == pid)
                .map(|info| info.addr);
        }
        if let Some(addr) = addr
            && get(addr, "/healthz").await
        {
            break start.elapsed();
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };

    let mut status = ProcStatus::default();
    let mut smaps = Vec::new();
    let mut board = Duration::ZERO;
    let mut after_board = ProcStatus::default();
    if !settle.is_zero() {
        tokio::time::sleep(settle).await;
        if let Some(exit) = child.try_wait()? {
            return Err(failed(format!("the server exited with {exit} while idle")));
        }
        status = parse_status(
            &std::fs::read_to_string(format!("/proc/{pid}/status"))
                .context("reading the server's /proc status")?,
        );
        smaps = parse_smaps(
            &std::fs::read_to_string(format!("/proc/{pid}/smaps"))
                .context("reading the server's /proc smaps")?,
        );
        // A first use after the idle time: the board page.
        let asked = Instant::now();
        if let Some(addr) = addr
            && get(addr, "/").await
        {
            board = asked.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after_board = parse_status(
            &std::fs::read_to_string(format!("/proc/{pid}/status"))
                .context("reading the server's /proc status")?,
        );
    }

    let stopping = Instant::now();
    terminate(pid)?;
    let exit = match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(exit) => exit?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(failed(format!(
                "the server did not exit within {STOP_TIMEOUT:?} of SIGTERM"
            )));
        }
    };
    let stop = stopping.elapsed();
    if !exit.success() {
        return Err(failed(format!("the server exited with {exit} on SIGTERM")));
    }
    Ok(RunFigures {
        serving,
        stop,
        status,
        smaps,
        board,
        after_board,
    })
}

/// Whether `GET path` answers 200 now.
async fn get(addr: SocketAddr, path: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// Sends SIGTERM to `pid`.
fn terminate(pid: u32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a valid signal number has no memory effects.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sending SIGTERM to the server");
    }
    Ok(())
}

/// What a mapping is, for attribution.
pub fn classify(mappings: &[Mapping], i: usize, binary: &str) -> &'static str {
    let m = &mappings[i];
    let size = m.end - m.start;
    if m.name == binary {
        return if m.perms.contains('x') {
            "binary: code"
        } else if m.anonymous > 0 || m.perms.contains('w') {
            "binary: relocated data and .data/.bss"
        } else {
            "binary: read-only data"
        };
    }
    if m.name.starts_with('/') {
        return if m.perms.contains('x') {
            "shared libraries: code"
        } else {
            "shared libraries: data"
        };
    }
    match m.name.as_str() {
        "[heap]" => return "brk heap",
        "[stack]" => return "main thread stack",
        "" => {}
        _ => return "kernel pseudo-mappings (vdso, vvar)",
    }
    // A thread stack: a writable anonymous mapping right above its guard
    // page (a PROT_NONE mapping ending where it starts).
    let guarded = i > 0 && {
        let prev = &mappings[i - 1];
        prev.end == m.start && prev.perms.starts_with("---") && prev.name.is_empty()
    };
    if guarded && size <= 16 << 20 {
        "thread stacks"
    } else if size >= 64 << 20 {
        "allocator arenas (mimalloc)"
    } else {
        "other anonymous mmaps"
    }
}

/// Resident KiB per class, largest first.
pub fn attribute(mappings: &[Mapping], binary: &str) -> Vec<(&'static str, u64, u64, usize)> {
    let mut classes: Vec<(&'static str, u64, u64, usize)> = Vec::new();
    for i in 0..mappings.len() {
        let class = classify(mappings, i, binary);
        let m = &mappings[i];
        if m.rss == 0 {
            continue;
        }
        match classes.iter_mut().find(|c| c.0 == class) {
            Some(c) => {
                c.1 += m.rss;
                c.2 += m.anonymous;
                c.3 += 1;
            }
            None => classes.push((class, m.rss, m.anonymous, 1)),
        }
    }
    classes.sort_by_key(|c| std::cmp::Reverse(c.1));
    classes
}

fn print_runs(variant: Variant, state: &str, runs: &[RunFigures], binary: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut serving: Vec<f64> = runs.iter().map(|r| ms(r.serving)).collect();
    let mut stop: Vec<f64> = runs.iter().map(|r| ms(r.stop)).collect();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let median_kib = |f: fn(&RunFigures) -> u64| {
        let mut v: Vec<u64> = runs.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "{} on {state} state dir: start → /healthz 200 {}; SIGTERM → exit {}",
        variant.label(),
        spread(&mut serving),
        spread(&mut stop)
    );
    println!(
        "  idle: VmRSS {:.1} MiB (RssAnon {:.1} MiB, RssFile {:.1} MiB), {} threads (medians)",
        mib(median_kib(|r| r.status.vm_rss)),
        mib(median_kib(|r| r.status.rss_anon)),
        mib(median_kib(|r| r.status.rss_file)),
        median_kib(|r| r.status.threads)
    );
    let mut board: Vec<f64> = runs.iter().map(|r| ms(r.board)).collect();
    println!(
        "  then one board page: served in {}; VmRSS {:.1} MiB (RssAnon {:.1} MiB, RssFile {:.1} MiB) after it (medians)",
        spread(&mut board),
        mib(median_kib(|r| r.after_board.vm_rss)),
        mib(median_kib(|r| r.after_board.rss_anon)),
        mib(median_kib(|r| r.after_board.rss_file)),
    );
    let Some(last) = runs.last() else {
        return;
    };
    for (class, rss, anon, count) in attribute(&last.smaps, binary) {
        if rss < 10 {
            continue;
        }
        println!(
            "    {:>7.2} MiB  {class} ({count} mapping{}; {:.2} MiB anonymous)",
            mib(rss),
            if count == 1 { "" } else { "s" },
            mib(anon)
        );
    }
}

/// "median M ms (min A, max B)".
fn spread(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(min), Some(max)) => format!(
            "median {:.1} ms (min {min:.1}, max {max:.1})",
            v[v.len() / 2]
        ),
        _ => "no runs".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
20000000000-20040000000 rw-p 00000000 00:00 0 
Size:            1048576 kB
Rss:                1244 kB
Anonymous:          1244 kB
55abe5495000-55abe595d000 r--p 00000000 fe:00 10019817                   /opt/airut/airut
Rss:                1684 kB
Anonymous:             0 kB
55abe595e000-55abe67ed000 r-xp 004c8000 fe:00 10019817                   /opt/airut/airut
Rss:               11620 kB
Anonymous:             0 kB
7f0000000000-7f0000001000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0000001000-7f0000201000 rw-p 00000000 00:00 0 
Rss:                  16 kB
Anonymous:            16 kB
VmFlags: rd wr mr mw me ac sd
7ffd205d6000-7ffd205f7000 rw-p 00000000 00:00 0                          [stack]
Rss:                 112 kB
Anonymous:           112 kB
garbage line without a value
";

    #[test]
    fn smaps_are_attributed_per_kind_of_mapping() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[2].rss, 11620);
        assert_eq!(maps[2].name, "/opt/airut/airut");
        let classes = attribute(&maps, "/opt/airut/airut");
        let get = |name: &str| classes.iter().find(|c| c.0 == name).map(|c| c.1);
        assert_eq!(get("binary: code"), Some(11620));
        assert_eq!(get("binary: read-only data"), Some(1684));
        assert_eq!(get("allocator arenas (mimalloc)"), Some(1244));
        assert_eq!(get("thread stacks"), Some(16));
        assert_eq!(get("main thread stack"), Some(112));
        assert_eq!(classes[0].0, "binary: code");
    }

    #[test]
    fn garbage_proc_text_gives_zeros_not_a_panic() {
        assert_eq!(parse_status("VmRSS: lots\n\n:::"), ProcStatus::default());
        assert!(parse_smaps("Rss: 12 kB\nzz-yy r 0 0 0\n").is_empty());
        let s = parse_status("VmRSS:\t  31144 kB\nRssAnon:\t 15320 kB\nThreads:\t6\n");
        assert_eq!((s.vm_rss, s.rss_anon, s.threads), (31144, 15320, 6));
    }

    #[tokio::test]
    async fn unwritable_dir_is_a_clear_error() {
        let err = startup(StartupOptions {
            runs: 1,
            settle: Duration::ZERO,
            dir: Some(PathBuf::from("/proc/airut-no-such-dir")),
            binary: Some(PathBuf::from("/bin/true")),
        })
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot create a scratch directory"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_binary_that_does_not_serve_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        for (binary, expected) in [
            ("/bin/false", "exited with"),
            ("/nonexistent/airut", "cannot read the binary"),
        ] {
            let err = startup(StartupOptions {
                runs: 1,
                settle: Duration::ZERO,
                dir: Some(dir.path().to_owned()),
                binary: Some(PathBuf::from(binary)),
            })
            .await
            .unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{binary}: {err:#}");
        }
        let err = startup(StartupOptions {
            runs: 0,
            settle: Duration::ZERO,
            dir: None,
            binary: None,
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("--runs"), "{err:#}");
    }
}
