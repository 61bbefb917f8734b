//! Workspaces: a bare mirror per repo, conversation directories
//! (workspace, inbox, outbox, storage, Claude state) and their removal.
//!
//! The mirror is refreshed under an exclusive lock before each task; a new
//! conversation gets a full clone (never `--shared`: no alternates pointing
//! outside the container's mounts) with the real origin and the default
//! branch checked out. Files the server needs from the repo (the
//! Dockerfile and its context, the network allowlist) are read from the
//! mirror's default branch with `git cat-file`, never from a workspace the
//! agent can change.
//!
//! Called by the gateway (prepare before a run, remove on expiry) and by
//! `airut check` ([`probe_remote`], [`inspect_mirror`]). Must never: follow a path out of the
//! repo tree, leave a half-made conversation directory behind, or reveal a
//! credential (see [`git`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;

use crate::config::GitCredentials;
use crate::events::{ConversationId, RepoId};

pub mod git;

pub use git::Git;

/// Largest file read from the mirror (Dockerfile context, allowlist).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a workspace operation failed. Every variant says what to check.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A git command failed; `stderr` is git's own message (credentials
    /// redacted). Check the repo URL, the credentials and the network.
    #[error("`git {command}` failed: {stderr}")]
    Git {
        /// The command, without `git`.
        command: String,
        /// What git said.
        stderr: String,
    },
    /// A git command ran longer than `execution.git_timeout`. Check the
    /// network, or raise the timeout for a very large repo.
    #[error("`git {command}` did not finish within {timeout:?} (execution.git_timeout)")]
    GitTimeout {
        /// The command, without `git`.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// git could not be started. Install git (Debian: `apt-get install git`).
    #[error("cannot run git ({reason}); install git")]
    GitMissing {
        /// The OS error.
        reason: String,
    },
    /// A path asked of the mirror is not a plain relative path inside the
    /// repo (absolute, `..`, empty parts). Fix the configured path.
    #[error("{path:?} is not a relative path inside the repository")]
    BadPath {
        /// The path as asked.
        path: String,
    },
    /// A file in the repo is larger than [`MAX_FILE_BYTES`].
    #[error("{path} on the default branch is {size} bytes; the limit is {MAX_FILE_BYTES}")]
    TooLarge {
        /// The path in the repo.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The repo URL is unusable (see [`git::check_url`]).
    #[error("repo URL: {0}")]
    BadUrl(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The directories of one conversation (host side; the sandbox mounts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationDirs {
    /// The conversation's own directory (everything below is inside it).
    pub root: PathBuf,
    /// The git clone (`/workspace`).
    pub workspace: PathBuf,
    /// Files the user sent (`/inbox`).
    pub inbox: PathBuf,
    /// Files for the next reply (`/outbox`).
    pub outbox: PathBuf,
    /// Scratch kept across messages (`/storage`).
    pub storage: PathBuf,
    /// Claude Code's state, sessions included (`/root/.claude`).
    pub claude: PathBuf,
}

/// One file read from the mirror's default branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// Path relative to the directory asked for (or the repo root).
    pub path: String,
    /// Whether git marks it executable.
    pub executable: bool,
    /// The content.
    pub content: Vec<u8>,
}

/// The mirror and conversation directories of one repo. Cheap to clone.
#[derive(Clone)]
pub struct RepoWorkspace {
    inner: Arc<Inner>,
}

struct Inner {
    repo: RepoId,
    url: String,
    dir: PathBuf,
    git: Git,
    /// Exclusive for a mirror update, shared for clones and reads.
    lock: RwLock<()>,
}

// === impl WorkspaceError ===

impl WorkspaceError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        WorkspaceError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

// === impl ConversationDirs ===

impl ConversationDirs {
    /// The layout under `root`.
    pub fn at(root: PathBuf) -> Self {
        ConversationDirs {
            workspace: root.join("workspace"),
            inbox: root.join("inbox"),
            outbox: root.join("outbox"),
            storage: root.join("storage"),
            claude: root.join("claude"),
            root,
        }
    }

    /// Regular files in the outbox, sorted by name. Directories and
    /// symlinks are skipped (a symlink could point anywhere on the host).
    pub fn outbox_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.outbox) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    }

    /// Removes every non-directory entry of the outbox (a symlink itself,
    /// never its target). Failures are logged, not returned: the reply went.
    pub fn clear_outbox(&self) {
        let Ok(entries) = std::fs::read_dir(&self.outbox) else {
            return;
        };
        for e in entries.flatten() {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir && let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "cannot remove an outbox file");
            }
        }
    }

    /// Saves `content` in the inbox under `name` (made safe), adding `-N`
    /// before the extension when the name is taken. Returns the name used.
    pub fn save_inbox_file(&self, name: &str, content: &[u8]) -> Result<String, WorkspaceError> {
        std::fs::create_dir_all(&self.inbox).map_err(|e| WorkspaceError::io(&self.inbox, e))?;
        let safe = safe_file_name(name);
        let (stem, ext) = match safe.rfind('.') {
            Some(i) if i > 0 => (&safe[..i], &safe[i..]),
            _ => (safe.as_str(), ""),
        };
        for n in 0u32.. {
            let candidate = if n == 0 {
                safe.clone()
            } else {
                format!("{stem}-{n}{ext}")
            };
            let path = self.inbox.join(&candidate);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(content)
                        .map_err(|e| WorkspaceError::io(&path, e))?;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Saving the same file again (a re-run) reuses it.
                    if std::fs::read(&path).is_ok_and(|old| old == content) {
                        return Ok(candidate);
                    }
                    continue;
                }
                Err(e) => return Err(WorkspaceError::io(&path, e)),
            }
        }
        unreachable!("u32 names exhausted")
    }
}

/// A file name that stays inside its directory: no separators, no leading
/// dots, no control characters, at most 200 bytes.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out: String = base
        .chars()
        .map(|c| if c.is_control() || c == ':' { '_' } else { c })
        .collect();
    while out.starts_with('.') {
        out.remove(0);
    }
    while out.len() > 200 {
        out.pop();
    }
    if out.trim().is_empty() {
        "attachment".to_owned()
    } else {
        out
    }
}

/// Checks a path asked of the repo: relative, no `..`, no empty parts.
pub fn check_repo_path(path: &str) -> Result<String, WorkspaceError> {
    let trimmed = path.trim_end_matches('/');
    let bad = trimmed.is_empty()
        || trimmed.starts_with('/')
        || trimmed.contains('\0')
        || trimmed.contains('\\')
        || trimmed
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(WorkspaceError::BadPath {
            path: path.to_owned(),
        })
    } else {
        Ok(trimmed.to_owned())
    }
}

// === impl RepoWorkspace ===

impl RepoWorkspace {
    /// The workspace of `repo` under `state_dir/repos/<repo>/`. Does no I/O
    /// but installing the askpass helper when credentials are set.
    pub fn new(
        state_dir: &Path,
        repo: RepoId,
        url: &str,
        credentials: Option<GitCredentials>,
        timeout: Duration,
    ) -> Result<RepoWorkspace, WorkspaceError> {
        git::check_url(url).map_err(WorkspaceError::BadUrl)?;
        let dir = state_dir.join("repos").join(&repo.0);
        let mut git = Git::new(timeout);
        git.credentials = credentials;
        git.install_askpass(&dir)?;
        Ok(RepoWorkspace {
            inner: Arc::new(Inner {
                repo,
                url: url.to_owned(),
                dir,
                git,
                lock: RwLock::new(()),
            }),
        })
    }

    /// The repo.
    pub fn repo(&self) -> &RepoId {
        &self.inner.repo
    }

    /// The bare mirror's directory.
    pub fn mirror_dir(&self) -> PathBuf {
        self.inner.dir.join("mirror.git")
    }

    /// The directories of a conversation (whether or not they exist).
    pub fn conversation_dirs(&self, conv: ConversationId) -> ConversationDirs {
        ConversationDirs::at(self.inner.dir.join("conversations").join(conv.to_string()))
    }

    /// Clones the mirror if missing, else fetches every ref with prune.
    /// Exclusive: no clone or read runs meanwhile.
    pub async fn refresh_mirror(&self) -> Result<(), WorkspaceError> {
        let _guard = self.inner.lock.write().await;
        let mirror = self.mirror_dir();
        if mirror.join("HEAD").exists() {
            self.inner
                .git
                .run(Some(&mirror), ["remote", "update", "--prune"])
                .await?;
            // The remote's default branch may have changed.
            if let Ok(out) = self
                .inner
                .git
                .run(Some(&mirror), ["ls-remote", "--symref", "origin", "HEAD"])
                .await
                && let Some(head) = parse_symref(&out)
            {
                self.inner
                    .git
                    .run(Some(&mirror), ["symbolic-ref", "HEAD", &head])
                    .await?;
            }
            return Ok(());
        }
        std::fs::create_dir_all(&self.inner.dir)
            .map_err(|e| WorkspaceError::io(&self.inner.dir, e))?;
        let tmp = self.inner.dir.join("mirror.git.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| WorkspaceError::io(&tmp, e))?;
        }
        let result = self
            .inner
            .git
            .run(
                Some(&self.inner.dir),
                [
                    std::ffi::OsStr::new("clone"),
                    "--mirror".as_ref(),
                    "--quiet".as_ref(),
                    "--".as_ref(),
                    self.inner.url.as_ref(),
                    tmp.as_os_str(),
                ],
            )
            .await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &mirror).map_err(|e| WorkspaceError::io(&mirror, e))
    }

    /// The mirror's default branch (its `HEAD`), e.g. `main`.
    pub async fn default_branch(&self) -> Result<String, WorkspaceError> {
        let _guard = self.inner.lock.read().await;
        self.default_branch_locked().await
    }

    async fn default_branch_locked(&self) -> Result<String, WorkspaceError> {
        let out = self
            .inner
            .git
            .run(Some(&self.mirror_dir()), ["symbolic-ref", "HEAD"])
            .await?;
        let head = String::from_utf8_lossy(&out).trim().to_owned();
        Ok(head.strip_prefix("refs/heads/").unwrap_or(&head).to_owned())
    }

    /// A file from the default branch; `None` when it does not exist there.
    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        let path = check_repo_path(path)?;
        let _guard = self.inner.lock.read().await;
        let branch = self.default_branch_locked().await?;
        let mirror = self.mirror_dir();
        let spec = format!("refs/heads/{branch}:{path}");
        let kind = match self
            .inner
            .git
            .run(Some(&mirror), ["cat-file", "-t", &spec])
            .await
        {
            Ok(out) => String::from_utf8_lossy(&out).trim().to_owned(),
            Err(WorkspaceError::Git { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if kind != "blob" {
            return Ok(None);
        }
        self.read_blob(&spec, &path).await.map(Some)
    }

    async fn read_blob(&self, spec: &str, path: &str) -> Result<Vec<u8>, WorkspaceError> {
        let mirror = self.mirror_dir();
        let size = self
            .inner
            .git
            .run(Some(&mirror), ["cat-file", "-s", spec])
            .await?;
        let size: u64 = String::from_utf8_lossy(&size)
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES {
            return Err(WorkspaceError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        self.inner
            .git
            .run(Some(&mirror), ["cat-file", "blob", spec])
            .await
    }

    /// Every file below `dir` on the default branch (e.g. the container
    /// build context), with paths relative to `dir`. Symlinks and
    /// submodules are skipped. Empty when the directory does not exist.
    pub async fn read_dir(&self, dir: &str) -> Result<Vec<RepoFile>, WorkspaceError> {
        let dir = check_repo_path(dir)?;
        let _guard = self.inner.lock.read().await;
        let branch = self.default_branch_locked().await?;
        let mirror = self.mirror_dir();
        let tree = format!("refs/heads/{branch}");
        let listing = self
            .inner
            .git
            .run(
                Some(&mirror),
                [
                    "ls-tree",
                    "-r",
                    "-z",
                    "--full-tree",
                    &tree,
                    "--",
                    &format!("{dir}/"),
                ],
            )
            .await?;
        let mut files = Vec::new();
        let mut total = 0u64;
        for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            let Some((meta, path)) = entry.split_once('\t') else {
                continue;
            };
            let mut parts = meta.split(' ');
            let (Some(mode), Some(kind), Some(hash)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if kind != "blob" || mode == "120000" {
                continue;
            }
            let Some(rel) = path.strip_prefix(&format!("{dir}/")) else {
                continue;
            };
            let content = self.read_blob(hash, path).await?;
            total += content.len() as u64;
            if total > MAX_FILE_BYTES * 4 {
                return Err(WorkspaceError::TooLarge {
                    path: dir.clone(),
                    size: total,
                });
            }
            files.push(RepoFile {
                path: rel.to_owned(),
                executable: mode == "100755",
                content,
            });
        }
        Ok(files)
    }

    /// Makes a conversation's directories; a new one (no `workspace/`)
    /// gets a full clone of the mirror, re-pointed at the real origin,
    /// fetched and reset to the default branch. A failed clone leaves
    /// nothing behind. Returns the directories and whether it was created.
    pub async fn prepare_conversation(
        &self,
        conv: ConversationId,
    ) -> Result<(ConversationDirs, bool), WorkspaceError> {
        let dirs = self.conversation_dirs(conv);
        let created = !dirs.workspace.join(".git").exists();
        if created {
            let _guard = self.inner.lock.read().await;
            if dirs.workspace.exists() {
                // A clone cut off by a crash: start again.
                std::fs::remove_dir_all(&dirs.workspace)
                    .map_err(|e| WorkspaceError::io(&dirs.workspace, e))?;
            }
            std::fs::create_dir_all(&dirs.root).map_err(|e| WorkspaceError::io(&dirs.root, e))?;
            if let Err(e) = self.clone_into(&dirs.workspace).await {
                let _ = std::fs::remove_dir_all(&dirs.root);
                return Err(e);
            }
        }
        for d in [&dirs.inbox, &dirs.outbox, &dirs.storage, &dirs.claude] {
            std::fs::create_dir_all(d).map_err(|e| WorkspaceError::io(d, e))?;
        }
        Ok((dirs, created))
    }

    async fn clone_into(&self, workspace: &Path) -> Result<(), WorkspaceError> {
        let git = &self.inner.git;
        let mirror = self.mirror_dir();
        git.run(
            None,
            [
                std::ffi::OsStr::new("clone"),
                "--quiet".as_ref(),
                "--no-hardlinks".as_ref(),
                "--".as_ref(),
                mirror.as_os_str(),
                workspace.as_os_str(),
            ],
        )
        .await?;
        git.run(
            Some(workspace),
            ["remote", "set-url", "origin", &self.inner.url],
        )
        .await?;
        git.run(Some(workspace), ["fetch", "--quiet", "--prune", "origin"])
            .await?;
        let branch = self.default_branch_locked().await?;
        git.run(
            Some(workspace),
            [
                "checkout",
                "--quiet",
                "-B",
                &branch,
                &format!("origin/{branch}"),
            ],
        )
        .await?;
        git.run(Some(workspace), ["remote", "set-head", "origin", &branch])
            .await?;
        Ok(())
    }

    /// Removes a conversation's directories (expiry). Missing is fine.
    pub fn remove_conversation(&self, conv: ConversationId) -> Result<(), WorkspaceError> {
        let dirs = self.conversation_dirs(conv);
        match std::fs::remove_dir_all(&dirs.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(WorkspaceError::io(&dirs.root, e)),
        }
    }
}

/// Asks a remote for its default branch (`git ls-remote --symref URL
/// HEAD`), with the server's credentials: what `airut check` and boot use
/// to say whether a repo is reachable.
pub async fn probe_remote(
    url: &str,
    credentials: Option<GitCredentials>,
    timeout: Duration,
    scratch: &Path,
) -> Result<String, WorkspaceError> {
    git::check_url(url).map_err(WorkspaceError::BadUrl)?;
    let mut git = Git::new(timeout);
    git.credentials = credentials;
    git.install_askpass(scratch)?;
    let out = git
        .run(None, ["ls-remote", "--symref", "--", url, "HEAD"])
        .await?;
    parse_symref(&out)
        .map(|h| h.strip_prefix("refs/heads/").unwrap_or(&h).to_owned())
        .ok_or_else(|| WorkspaceError::Git {
            command: format!("ls-remote --symref {url} HEAD"),
            stderr: "the remote has no default branch (is it empty?)".to_owned(),
        })
}

/// The state of a repo's local bare mirror, as `airut check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorState {
    /// Not created yet: the server clones it before the repo's first task.
    Missing(PathBuf),
    /// A bare repository whose default branch has a commit.
    Ready {
        /// Its directory.
        path: PathBuf,
        /// The default branch (its `HEAD`).
        branch: String,
    },
    /// There, but not usable; the reason says what is wrong. Removing the
    /// directory makes the server clone it afresh.
    Broken {
        /// Its directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Looks at the mirror of `repo` under `state_dir` without changing it:
/// whether it exists, is a bare git repository, and its default branch
/// points at a commit.
pub async fn inspect_mirror(state_dir: &Path, repo: &RepoId, timeout: Duration) -> MirrorState {
    let path = state_dir.join("repos").join(&repo.0).join("mirror.git");
    if !path.exists() {
        return MirrorState::Missing(path);
    }
    let broken = |reason: String| MirrorState::Broken {
        path: path.clone(),
        reason,
    };
    if !path.is_dir() {
        return broken("not a directory".to_owned());
    }
    let git = Git::new(timeout);
    let dir = format!("--git-dir={}", path.display());
    match git
        .run(None, [dir.as_str(), "rev-parse", "--is-bare-repository"])
        .await
    {
        Ok(out) if String::from_utf8_lossy(&out).trim() == "true" => {}
        Ok(out) => {
            return broken(format!(
                "not a bare repository (rev-parse says {:?})",
                String::from_utf8_lossy(&out).trim()
            ));
        }
        Err(e) => return broken(format!("not a git repository: {e}")),
    }
    let head = match git.run(None, [dir.as_str(), "symbolic-ref", "HEAD"]).await {
        Ok(out) => String::from_utf8_lossy(&out).trim().to_owned(),
        Err(e) => return broken(format!("no default branch: {e}")),
    };
    let branch = head.strip_prefix("refs/heads/").unwrap_or(&head).to_owned();
    let spec = format!("{head}^{{commit}}");
    match git
        .run(
            None,
            [dir.as_str(), "rev-parse", "--verify", "--quiet", &spec],
        )
        .await
    {
        Ok(_) => MirrorState::Ready { path, branch },
        Err(_) => broken(format!("the default branch {branch} has no commit")),
    }
}

/// `ref: refs/heads/main\tHEAD` → `refs/heads/main`.
fn parse_symref(out: &[u8]) -> Option<String> {
    String::from_utf8_lossy(out).lines().find_map(|l| {
        let rest = l.strip_prefix("ref: ")?;
        let (target, name) = rest.split_once('\t')?;
        (name == "HEAD" && target.starts_with("refs/heads/")).then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths_stay_inside_the_repo() {
        assert_eq!(
            check_repo_path(".airut/container/").unwrap(),
            ".airut/container"
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            "a\0b",
            "a\\b",
        ] {
            assert!(check_repo_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn inbox_names_are_safe_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = ConversationDirs::at(dir.path().join("c"));
        assert_eq!(
            dirs.save_inbox_file("report.pdf", b"1").unwrap(),
            "report.pdf"
        );
        assert_eq!(
            dirs.save_inbox_file("report.pdf", b"2").unwrap(),
            "report-1.pdf"
        );
        assert_eq!(
            dirs.save_inbox_file("report.pdf", b"2").unwrap(),
            "report-1.pdf"
        );
        assert_eq!(
            dirs.save_inbox_file("../../etc/passwd", b"3").unwrap(),
            "passwd"
        );
        assert_eq!(dirs.save_inbox_file("..", b"4").unwrap(), "attachment");
        assert_eq!(dirs.save_inbox_file(".bashrc", b"5").unwrap(), "bashrc");
        assert_eq!(
            std::fs::read(dirs.inbox.join("report-1.pdf")).unwrap(),
            b"2"
        );
    }

    #[test]
    fn outbox_skips_symlinks_and_dirs_and_clearing_keeps_targets() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = ConversationDirs::at(dir.path().join("c"));
        std::fs::create_dir_all(dirs.outbox.join("sub")).unwrap();
        std::fs::write(dirs.outbox.join("b.txt"), "b").unwrap();
        std::fs::write(dirs.outbox.join("a.txt"), "a").unwrap();
        let target = dir.path().join("secret");
        std::fs::write(&target, "host file").unwrap();
        std::os::unix::fs::symlink(&target, dirs.outbox.join("link")).unwrap();
        let names: Vec<_> = dirs
            .outbox_files()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        dirs.clear_outbox();
        assert!(dirs.outbox_files().is_empty());
        assert!(dirs.outbox.join("sub").is_dir());
        assert!(!dirs.outbox.join("link").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host file");
    }

    #[test]
    fn symref_lines_parse() {
        assert_eq!(
            parse_symref(b"ref: refs/heads/trunk\tHEAD\nabc\tHEAD\n").as_deref(),
            Some("refs/heads/trunk")
        );
        assert_eq!(parse_symref(b"abc\tHEAD\n"), None);
    }
}
