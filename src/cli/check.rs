//! `airut check`: config, store (hash chains) and host, one line per check.
//!
//! Exits non-zero when any check fails. Covers the config, the state dir
//! and store, the container engine, the Claude Code binary, git, each
//! repo's remote and local mirror, and each email channel's IMAP and SMTP
//! servers (probed for real: connect, TLS, login, mailbox; see
//! [`crate::channels::email::probe`]).

use std::process::ExitCode;

use super::GlobalArgs;
use super::access::{self, Access};
use crate::audit::StoreCheck;

struct Report {
    failures: u32,
}

// === impl Report ===

impl Report {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what}: {detail}");
    }
    fn warn(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("warn  {what}: {detail}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failures += 1;
        println!("FAIL  {what}: {detail}");
    }
}

/// Runs every check.
pub async fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut r = Report { failures: 0 };
    let ctx = match access::load_context(global) {
        Ok(ctx) => {
            let source = ctx
                .loaded
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "no config file: built-in defaults (no repos)".to_owned());
            r.ok(
                "config",
                format!("{source} ({} repos)", ctx.loaded.config.repos.len()),
            );
            for w in &ctx.loaded.warnings {
                r.warn("config", w);
            }
            Some(ctx)
        }
        Err(e) => {
            r.fail("config", format!("{e:#}"));
            None
        }
    };
    if let Some(ctx) = &ctx {
        check_state_dir(&mut r, &ctx.state_dir);
        check_store(&mut r, ctx).await;
        // Without repos no task runs: engine trouble is a warning then.
        let needed = !ctx.loaded.config.repos.is_empty();
        check_engine(&mut r, &ctx.loaded.config.sandbox, needed).await;
        check_claude(&mut r, &ctx.loaded.config.sandbox, &ctx.state_dir, needed);
    }
    check_git(&mut r).await;
    if let Some(ctx) = &ctx {
        check_remotes(&mut r, &ctx.loaded.config).await;
        check_mirrors(&mut r, &ctx.loaded.config, &ctx.state_dir).await;
        check_email(&mut r, &ctx.loaded.config).await;
    }
    if r.failures == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} check(s) failed", r.failures);
        Ok(ExitCode::FAILURE)
    }
}

fn check_state_dir(r: &mut Report, dir: &std::path::Path) {
    if !dir.exists() {
        r.warn(
            "state dir",
            format!(
                "{} does not exist yet; `airut run` creates it",
                dir.display()
            ),
        );
        return;
    }
    let probe = dir.join(".airut-check");
    match std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => r.ok("state dir", format!("{} is writable", dir.display())),
        Err(e) => r.fail(
            "state dir",
            format!("{} is not writable: {e}", dir.display()),
        ),
    }
}

async fn check_store(r: &mut Report, ctx: &access::Context) {
    if !access::log_dir(&ctx.state_dir).exists()
        && crate::cli::runtime::read(&ctx.state_dir)
            .ok()
            .flatten()
            .is_none()
    {
        r.warn("store", "none yet; `airut run` creates it");
        return;
    }
    let report: anyhow::Result<StoreCheck> = match access::connect(ctx).await {
        Ok(Access::Remote(client)) => client.json(hyper::Method::GET, "/api/check").await,
        Ok(Access::Local(store)) => {
            let log = store.log.clone();
            let report = tokio::task::spawn_blocking(move || StoreCheck::run(&log)).await;
            if let Err(e) = store.log.close().await {
                r.fail("store", format!("closing: {e}"));
            }
            report
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(anyhow::Error::from))
        }
        Err(e) => Err(e),
    };
    match report {
        Ok(report) => match &report.failure {
            None => r.ok("store", &report),
            Some(_) => r.fail("store", &report),
        },
        Err(e) => r.fail("store", format!("{e:#}")),
    }
}

async fn check_engine(r: &mut Report, cfg: &crate::config::SandboxConfig, needed: bool) {
    use crate::sandbox::probe;
    let init = probe::default_init_path();
    match probe::probe(cfg.engine_socket.as_deref(), &init).await {
        Ok(p) => {
            r.ok(
                "container engine",
                format!(
                    "{} at {} ({}), API {}",
                    p.engine,
                    p.socket.display(),
                    p.found_by,
                    p.api_version
                ),
            );
            match p.run {
                Ok(took) => r.ok(
                    "container run",
                    format!("ran {} in a container in {took:.1?}", init.display()),
                ),
                Err(e) if needed => r.fail("container run", e),
                Err(e) => r.warn("container run", format!("{e} (no repos configured yet)")),
            }
        }
        Err(e) if needed => r.fail("container engine", e),
        Err(e) => r.warn("container engine", format!("{e} (no repos configured yet)")),
    }
}

async fn check_git(r: &mut Report) {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::process::Command::new("git")
            .arg("--version")
            .output(),
    )
    .await;
    match out {
        Ok(Ok(o)) if o.status.success() => r.ok("git", String::from_utf8_lossy(&o.stdout).trim()),
        Ok(Ok(o)) => r.fail("git", format!("`git --version` exited with {}", o.status)),
        Ok(Err(e)) => r.fail(
            "git",
            format!("not found ({e}); install git (Debian: apt-get install git)"),
        ),
        Err(_) => r.fail("git", "`git --version` did not answer within 10 s"),
    }
}

/// Each repo's remote answers `ls-remote` with the server's credentials.
async fn check_remotes(r: &mut Report, cfg: &crate::config::ServerConfig) {
    let Ok(scratch) = tempfile::tempdir() else {
        r.warn(
            "repos",
            "no temporary directory for the git askpass helper; skipped",
        );
        return;
    };
    for (id, repo) in &cfg.repos {
        let what = format!("repo {id}");
        match crate::workspace::probe_remote(
            &repo.repo_url,
            repo.git.clone(),
            cfg.execution.git_timeout,
            scratch.path(),
        )
        .await
        {
            Ok(branch) => r.ok(
                &what,
                format!("{} (default branch {branch})", repo.repo_url),
            ),
            Err(e) => r.fail(
                &what,
                format!(
                    "{}: {e}; check repos.{id}.repo_url, repos.{id}.git and the network",
                    repo.repo_url
                ),
            ),
        }
    }
}

/// Each repo's local bare mirror: ready, not created yet (a warning: the
/// server clones it before the first task) or broken.
async fn check_mirrors(
    r: &mut Report,
    cfg: &crate::config::ServerConfig,
    state_dir: &std::path::Path,
) {
    use crate::workspace::MirrorState;
    for id in cfg.repos.keys() {
        let what = format!("repo {id} mirror");
        let repo = crate::events::RepoId(id.clone());
        match crate::workspace::inspect_mirror(state_dir, &repo, cfg.execution.git_timeout).await {
            MirrorState::Ready { path, branch } => r.ok(
                &what,
                format!("{} (default branch {branch})", path.display()),
            ),
            MirrorState::Missing(path) => r.warn(
                &what,
                format!(
                    "{} does not exist yet; the server clones it before the first task",
                    path.display()
                ),
            ),
            MirrorState::Broken { path, reason } => r.fail(
                &what,
                format!(
                    "{}: {reason}; remove it and the server clones it afresh",
                    path.display()
                ),
            ),
        }
    }
}

/// Each repo's email channel: its IMAP and SMTP servers, for real.
async fn check_email(r: &mut Report, cfg: &crate::config::ServerConfig) {
    use crate::channels::email::{EmailSettings, probe};
    for (id, repo) in &cfg.repos {
        let Some(mail) = &repo.email else {
            continue;
        };
        let settings = match EmailSettings::from_config(
            crate::events::RepoId(id.clone()),
            mail,
            vec![repo.model.clone()],
            None,
        ) {
            Ok(s) => s,
            Err(e) => {
                r.fail(
                    &format!("repo {id} email"),
                    format!("{e}; check repos.{id}.email"),
                );
                continue;
            }
        };
        let imap = format!("repo {id} IMAP");
        match probe::probe_imap(&settings, probe::PROBE_TIMEOUT).await {
            Ok(report) => r.ok(
                &imap,
                format!("{}:{} {report}", settings.imap.host, settings.imap.port),
            ),
            Err(e) => r.fail(&imap, e),
        }
        let smtp = format!("repo {id} SMTP");
        match probe::probe_smtp(&settings, probe::PROBE_TIMEOUT).await {
            Ok(report) => r.ok(
                &smtp,
                format!("{}:{} {report}", settings.smtp.host, settings.smtp.port),
            ),
            Err(e) => r.fail(&smtp, e),
        }
    }
}

/// The Claude Code binary tasks mount: the configured path, or the cached
/// version (not cached yet is a warning: the first task downloads it).
fn check_claude(
    r: &mut Report,
    cfg: &crate::config::SandboxConfig,
    state_dir: &std::path::Path,
    needed: bool,
) {
    use crate::sandbox::claude_binary::{ClaudeBinaries, RELEASE_BASE};
    let binaries = ClaudeBinaries::new(state_dir.join("claude"), RELEASE_BASE);
    match binaries.cached(&cfg.claude) {
        Ok(Some((version, path))) => {
            r.ok("claude code", format!("{version} at {}", path.display()))
        }
        Ok(None) => r.warn(
            "claude code",
            match &cfg.claude {
                crate::config::ClaudeSource::Version(v) => format!(
                    "{v} is not cached yet; the first task downloads it from {RELEASE_BASE} \
                     (or set sandbox.claude_path)"
                ),
                crate::config::ClaudeSource::Path(p) => p.display().to_string(),
            },
        ),
        Err(e) if needed => r.fail("claude code", e),
        Err(e) => r.warn("claude code", format!("{e} (no repos configured yet)")),
    }
}
