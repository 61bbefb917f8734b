//! Workspaces against real git: a local bare repository is the "remote".

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airut::events::{ConversationId, RepoId};
use airut::workspace::{RepoWorkspace, WorkspaceError, probe_remote};

const TIMEOUT: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare "remote" with one commit on `main`, and a clone to push from.
struct Remote {
    _tmp: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
    state: PathBuf,
}

impl Remote {
    fn new() -> Remote {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("origin.git");
        let work = tmp.path().join("author");
        let state = tmp.path().join("state");
        git(
            tmp.path(),
            &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
        );
        git(
            tmp.path(),
            &["clone", "--quiet", bare.to_str().unwrap(), "author"],
        );
        git(&work, &["checkout", "--quiet", "-b", "main"]);
        std::fs::create_dir_all(work.join(".airut/container")).unwrap();
        std::fs::write(work.join(".airut/container/Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(work.join(".airut/container/gitconfig"), "[user]\n").unwrap();
        std::fs::write(
            work.join(".airut/network-allowlist.yaml"),
            "domains: [api.anthropic.com]\n",
        )
        .unwrap();
        std::fs::write(work.join("README.md"), "v1\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "v1"]);
        git(&work, &["push", "--quiet", "origin", "main"]);
        Remote {
            _tmp: tmp,
            bare,
            work,
            state,
        }
    }

    fn url(&self) -> String {
        self.bare.display().to_string()
    }

    fn commit(&self, file: &str, content: &str) {
        std::fs::write(self.work.join(file), content).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", content]);
        git(&self.work, &["push", "--quiet", "origin", "HEAD"]);
    }

    fn workspace(&self) -> RepoWorkspace {
        RepoWorkspace::new(
            &self.state,
            RepoId("r".to_owned()),
            &self.url(),
            None,
            TIMEOUT,
        )
        .unwrap()
    }
}

#[tokio::test]
async fn mirror_reads_files_from_the_default_branch_with_path_checks() {
    let remote = Remote::new();
    let ws = remote.workspace();
    ws.refresh_mirror().await.unwrap();
    assert_eq!(ws.default_branch().await.unwrap(), "main");
    assert_eq!(
        ws.read_file(".airut/network-allowlist.yaml")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"domains: [api.anthropic.com]\n"[..])
    );
    assert_eq!(ws.read_file("missing.txt").await.unwrap(), None);
    // A directory is not a file.
    assert_eq!(ws.read_file(".airut").await.unwrap(), None);
    for bad in ["../etc/passwd", "/etc/passwd", "a//b", ""] {
        assert!(
            matches!(ws.read_file(bad).await, Err(WorkspaceError::BadPath { .. })),
            "{bad:?}"
        );
    }
    let mut files: Vec<_> = ws
        .read_dir(".airut/container")
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.content))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            ("Dockerfile".to_owned(), b"FROM scratch\n".to_vec()),
            ("gitconfig".to_owned(), b"[user]\n".to_vec())
        ]
    );
    assert!(ws.read_dir("nothing-here").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_new_conversation_is_a_full_clone_of_origin_and_later_ones_see_new_commits() {
    let remote = Remote::new();
    let ws = remote.workspace();
    ws.refresh_mirror().await.unwrap();
    let a = ConversationId(0xa);
    let (dirs, created) = ws.prepare_conversation(a).await.unwrap();
    assert!(created);
    for d in [&dirs.inbox, &dirs.outbox, &dirs.storage, &dirs.claude] {
        assert!(d.is_dir(), "{}", d.display());
    }
    assert_eq!(
        git(&dirs.workspace, &["remote", "get-url", "origin"]),
        remote.url()
    );
    assert_eq!(
        git(&dirs.workspace, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main"
    );
    assert_eq!(
        std::fs::read_to_string(dirs.workspace.join("README.md")).unwrap(),
        "v1\n"
    );
    // No alternates pointing outside the workspace.
    assert!(!dirs.workspace.join(".git/objects/info/alternates").exists());

    // The agent commits and pushes to the real origin.
    std::fs::write(dirs.workspace.join("agent.txt"), "from the agent\n").unwrap();
    git(&dirs.workspace, &["add", "agent.txt"]);
    git(&dirs.workspace, &["commit", "--quiet", "-m", "agent"]);
    git(&dirs.workspace, &["push", "--quiet", "origin", "main"]);
    assert_eq!(
        git(&remote.bare, &["show", "main:agent.txt"]),
        "from the agent"
    );

    git(
        &remote.work,
        &["pull", "--quiet", "--rebase", "origin", "main"],
    );
    remote.commit("README.md", "v2\n");
    ws.refresh_mirror().await.unwrap();
    assert_eq!(
        ws.read_file("README.md").await.unwrap().as_deref(),
        Some(&b"v2\n"[..])
    );
    let (b_dirs, _) = ws.prepare_conversation(ConversationId(0xb)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(b_dirs.workspace.join("README.md")).unwrap(),
        "v2\n"
    );
    // A resumed conversation is not synced behind the agent's back.
    let (again, created) = ws.prepare_conversation(a).await.unwrap();
    assert!(!created);
    assert_eq!(
        std::fs::read_to_string(again.workspace.join("README.md")).unwrap(),
        "v1\n"
    );

    ws.remove_conversation(a).unwrap();
    assert!(!dirs.root.exists());
    ws.remove_conversation(a).unwrap();
}

#[tokio::test]
async fn a_changed_default_branch_is_followed() {
    let remote = Remote::new();
    let ws = remote.workspace();
    ws.refresh_mirror().await.unwrap();
    git(&remote.work, &["checkout", "--quiet", "-b", "trunk"]);
    remote.commit("README.md", "trunk\n");
    git(&remote.bare, &["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    ws.refresh_mirror().await.unwrap();
    assert_eq!(ws.default_branch().await.unwrap(), "trunk");
    assert_eq!(
        ws.read_file("README.md").await.unwrap().as_deref(),
        Some(&b"trunk\n"[..])
    );
    assert_eq!(
        probe_remote(&remote.url(), None, TIMEOUT, &remote.state)
            .await
            .unwrap(),
        "trunk"
    );
}

#[tokio::test]
async fn failures_leave_nothing_behind_and_say_what_failed() {
    let remote = Remote::new();
    let missing = remote.state.join("no-such-remote.git");
    let ws = RepoWorkspace::new(
        &remote.state,
        RepoId("bad".to_owned()),
        missing.to_str().unwrap(),
        None,
        TIMEOUT,
    )
    .unwrap();
    let e = ws.refresh_mirror().await.unwrap_err();
    assert!(e.to_string().contains("clone --mirror"), "{e}");
    assert!(!ws.mirror_dir().exists());
    assert!(!remote.state.join("repos/bad/mirror.git.tmp").exists());
    assert!(
        probe_remote(missing.to_str().unwrap(), None, TIMEOUT, &remote.state)
            .await
            .is_err()
    );

    // The origin disappears after the mirror was made: the clone's fetch
    // fails and the half-made conversation is removed.
    let ws = remote.workspace();
    ws.refresh_mirror().await.unwrap();
    std::fs::rename(&remote.bare, remote.bare.with_extension("gone")).unwrap();
    let conv = ConversationId(0xc);
    let e = ws.prepare_conversation(conv).await.unwrap_err();
    assert!(e.to_string().contains("fetch"), "{e}");
    assert!(!ws.conversation_dirs(conv).root.exists());

    assert!(matches!(
        RepoWorkspace::new(
            &remote.state,
            RepoId("x".to_owned()),
            "https://u:pw@example.com/r.git",
            None,
            TIMEOUT
        ),
        Err(WorkspaceError::BadUrl(_))
    ));
}

#[test]
fn airut_check_probes_each_repo_remote_and_names_the_failing_one() {
    let remote = Remote::new();
    std::fs::create_dir_all(&remote.state).unwrap();
    std::fs::write(
        remote.state.join("airut.yaml"),
        format!(
            "config_version: 1\nrepos:\n  good:\n    repo_url: {}\n  bad:\n    repo_url: {}\n",
            remote.url(),
            remote.state.join("missing.git").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_airut"))
        .arg("--config")
        .arg(remote.state.join("airut.yaml"))
        .arg("--state-dir")
        .arg(&remote.state)
        .arg("check")
        .env("AIRUT_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("ok    repo good:") && text.contains("(default branch main)"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  repo bad:") && text.contains("repos.bad.repo_url"),
        "{text}"
    );
}
