//! Running git: every call has a timeout, never prompts, and gets the
//! server's credentials (when configured) through an askpass helper that
//! reads them from the child's environment, so the token is never in a
//! URL, an argument, a file or an error message.
//!
//! Called by [`super`] only. Must never: put a credential in argv, echo
//! git's stderr without redacting the token, or wait on git without a
//! timeout.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::config::GitCredentials;

use super::WorkspaceError;

/// How git is run for one repo.
#[derive(Debug, Clone)]
pub struct Git {
    /// Upper bound on one command.
    pub timeout: Duration,
    /// Credentials for the remote, if any.
    pub credentials: Option<GitCredentials>,
    /// The askpass helper script (written by [`Git::install_askpass`]).
    pub askpass: Option<PathBuf>,
}

/// The askpass helper: git runs it with a prompt ("Username for ...",
/// "Password for ..."); it answers from variables set only on git's own
/// process.
const ASKPASS: &str = "#!/bin/sh\n# Written by airut: answers git's credential prompts from the\n# environment of the git process; holds no secret itself.\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$AIRUT_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$AIRUT_GIT_TOKEN\" ;;\nesac\n";

// === impl Git ===

impl Git {
    /// Git without credentials.
    pub fn new(timeout: Duration) -> Git {
        Git {
            timeout,
            credentials: None,
            askpass: None,
        }
    }

    /// Writes the askpass helper into `dir` (mode 0700) when credentials
    /// are set. Idempotent.
    pub fn install_askpass(&mut self, dir: &Path) -> Result<(), WorkspaceError> {
        use std::os::unix::fs::PermissionsExt;
        if self.credentials.is_none() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| WorkspaceError::io(dir, e))?;
        let path = dir.join("git-askpass.sh");
        let tmp = dir.join("git-askpass.sh.tmp");
        std::fs::write(&tmp, ASKPASS).map_err(|e| WorkspaceError::io(&tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| WorkspaceError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| WorkspaceError::io(&path, e))?;
        self.askpass = Some(path);
        Ok(())
    }

    /// Runs `git <args>` in `cwd`; returns stdout. A non-zero exit is
    /// [`WorkspaceError::Git`] with git's stderr (token redacted).
    pub async fn run<I, S>(&self, cwd: Option<&Path>, args: I) -> Result<Vec<u8>, WorkspaceError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = tokio::process::Command::new("git");
        // No credential helper of the host's user, no terminal prompt, no
        // config from the host user's ~/.gitconfig affecting the mirror.
        cmd.args(["-c", "credential.helper="]);
        cmd.args(&args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        match (&self.credentials, &self.askpass) {
            (Some(c), Some(askpass)) => {
                cmd.env("GIT_ASKPASS", askpass)
                    .env("AIRUT_GIT_USERNAME", &c.username)
                    .env("AIRUT_GIT_TOKEN", c.token.expose());
            }
            _ => {
                cmd.env("GIT_ASKPASS", "/bin/false");
            }
        }
        let child = cmd.spawn().map_err(|e| WorkspaceError::GitMissing {
            reason: e.to_string(),
        })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(WorkspaceError::GitTimeout {
                    command: self.redact(&shown),
                    timeout: self.timeout,
                });
            }
            Ok(Err(e)) => {
                return Err(WorkspaceError::Git {
                    command: self.redact(&shown),
                    stderr: e.to_string(),
                });
            }
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr: String = stderr.trim().chars().take(2000).collect();
            Err(WorkspaceError::Git {
                command: self.redact(&shown),
                stderr: self.redact(&stderr),
            })
        }
    }

    /// Removes the token from text that came back from git.
    pub fn redact(&self, text: &str) -> String {
        match &self.credentials {
            Some(c) if !c.token.expose().is_empty() => text.replace(c.token.expose(), "<token>"),
            _ => text.to_owned(),
        }
    }
}

/// Refuses URLs that carry a password (`https://user:pass@host`): the
/// credential belongs in `repos.<id>.git.token`, where it stays out of
/// logs and of the workspace's `.git/config`.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("the repo URL is empty".to_owned());
    }
    if url.starts_with('-') {
        return Err(format!("the repo URL {url:?} starts with '-'"));
    }
    if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(
                "the repo URL contains a password; put it in repos.<id>.git.token instead"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn urls_with_passwords_are_refused() {
        assert!(check_url("https://github.com/o/r.git").is_ok());
        assert!(check_url("git@github.com:o/r.git").is_ok());
        assert!(check_url("https://x-access-token@github.com/o/r.git").is_ok());
        assert!(check_url("https://u:p@github.com/o/r.git").is_err());
        assert!(check_url("--upload-pack=evil").is_err());
        assert!(check_url("").is_err());
    }

    #[tokio::test]
    async fn askpass_answers_from_the_environment_and_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut git = Git::new(Duration::from_secs(30));
        git.credentials = Some(GitCredentials {
            username: "bot".to_owned(),
            token: Secret::new("tok-123"),
        });
        git.install_askpass(dir.path()).unwrap();
        let script = git.askpass.clone().unwrap();
        let body = std::fs::read_to_string(&script).unwrap();
        assert!(!body.contains("tok-123"));
        let run = |prompt: &str| {
            let out = std::process::Command::new(&script)
                .arg(prompt)
                .env("AIRUT_GIT_USERNAME", "bot")
                .env("AIRUT_GIT_TOKEN", "tok-123")
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run("Username for 'https://example.com': "), "bot\n");
        assert_eq!(run("Password for 'https://bot@example.com': "), "tok-123\n");
        assert_eq!(
            git.redact("fatal: tok-123 rejected"),
            "fatal: <token> rejected"
        );
    }

    #[tokio::test]
    async fn failures_name_the_command_and_time_out() {
        let git = Git::new(Duration::from_secs(30));
        let e = git
            .run(None, ["ls-remote", "/nonexistent/repo.git"])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ls-remote"), "{e}");
    }
}
