//! The gateway's part of the config: `execution:` (concurrency, shutdown
//! grace, conversation age, git timeout) and `repos.<id>.git:` (the
//! server's own git credentials for mirrors and workspace clones).
//!
//! Called by [`super::resolve`] for those two sections only; every other
//! repo key belongs to the module that uses it. Must never print the token
//! (it is a [`Secret`]).

use std::time::Duration;

use super::Secret;
use super::raw::Scalar;
use super::resolve::Resolver;

/// `execution:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionConfig {
    /// Tasks running at once, over all repos (>= 1).
    pub max_concurrent: usize,
    /// How long a graceful shutdown waits for running tasks before stopping
    /// them and recording them as interrupted.
    pub shutdown_timeout: Duration,
    /// Conversations idle longer than this (by their last event) are removed.
    pub conversation_max_age: Duration,
    /// Upper bound on one git command (mirror update, clone, fetch).
    pub git_timeout: Duration,
}

/// `repos.<id>.git:`: how the server authenticates to the repo's remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCredentials {
    /// User name given to the remote (for GitHub tokens any non-empty
    /// name works, e.g. `x-access-token`).
    pub username: String,
    /// The token or password; handed to git through an askpass helper,
    /// never in a URL, an argument or a log line.
    pub token: Secret,
}

/// `execution:` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExecution {
    pub max_concurrent: Option<Scalar>,
    pub shutdown_timeout: Option<Scalar>,
    pub conversation_max_age: Option<Scalar>,
    pub git_timeout: Option<Scalar>,
}

/// `repos.<id>.git:` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGit {
    pub username: Option<Scalar>,
    pub token: Option<Scalar>,
}

// === impl ExecutionConfig ===

impl Default for ExecutionConfig {
    /// 3 tasks at once, 60 s shutdown grace, 7-day conversations, 120 s git.
    fn default() -> Self {
        ExecutionConfig {
            max_concurrent: 3,
            shutdown_timeout: Duration::from_secs(60),
            conversation_max_age: Duration::from_secs(7 * 24 * 3600),
            git_timeout: Duration::from_secs(120),
        }
    }
}

/// Resolves `execution:` (defaults for what is absent).
pub(crate) fn execution(r: &mut Resolver<'_>, raw: Option<&RawExecution>) -> ExecutionConfig {
    let mut out = ExecutionConfig::default();
    let Some(raw) = raw else { return out };
    if let Some(s) = &raw.max_concurrent
        && let Some(v) = r.optional("execution.max_concurrent", s)
    {
        match v.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => {
                out.max_concurrent = n
            }
            _ => r.problem(
                s,
                "execution.max_concurrent",
                format!("expected a whole number from 1 to 1024, found {v:?}"),
            ),
        }
    }
    for (key, slot, min) in [
        (
            "shutdown_timeout",
            &mut out.shutdown_timeout,
            Duration::from_secs(1),
        ),
        (
            "conversation_max_age",
            &mut out.conversation_max_age,
            Duration::from_secs(3600),
        ),
        ("git_timeout", &mut out.git_timeout, Duration::from_secs(1)),
    ] {
        let s = match key {
            "shutdown_timeout" => &raw.shutdown_timeout,
            "conversation_max_age" => &raw.conversation_max_age,
            _ => &raw.git_timeout,
        };
        let Some(s) = s else { continue };
        let full = format!("execution.{key}");
        let Some(v) = r.optional(&full, s) else {
            continue;
        };
        match parse_duration(&v) {
            Some(d) if d >= min => *slot = d,
            Some(_) => r.problem(
                s,
                &full,
                format!(
                    "{v:?} is too short; the least is {}",
                    humantime::format_duration(min)
                ),
            ),
            None => r.problem(
                s,
                &full,
                format!("expected a duration such as 60s, 10m or 7d (plain numbers are seconds), found {v:?}"),
            ),
        }
    }
    out
}

/// Resolves `repos.<id>.git:`; `None` when absent or wrong (a problem is recorded).
pub(crate) fn git(r: &mut Resolver<'_>, key: &str, raw: Option<&RawGit>) -> Option<GitCredentials> {
    let raw = raw?;
    let line = [&raw.username, &raw.token]
        .into_iter()
        .flatten()
        .map(|s| s.referenced.line())
        .min()
        .unwrap_or(0);
    let username = r.required(&format!("{key}.git.username"), raw.username.as_ref(), line);
    let token = r.required(&format!("{key}.git.token"), raw.token.as_ref(), line);
    if let (Some(u), Some(s)) = (&username, &raw.username)
        && (u.contains(['\n', '\r', '\0', ':']))
    {
        r.problem(
            s,
            &format!("{key}.git.username"),
            "must not contain ':' or control characters".to_owned(),
        );
        return None;
    }
    if let (Some(t), Some(s)) = (&token, &raw.token)
        && t.contains(['\n', '\r', '\0'])
    {
        // Never quote the value: it is a secret.
        r.problem(
            s,
            &format!("{key}.git.token"),
            "must be one line (the value is not shown)".to_owned(),
        );
        return None;
    }
    Some(GitCredentials {
        username: username?,
        token: Secret::new(token?),
    })
}

/// `90`, `90s`, `10m`, `7d`, `1h 30m` (humantime), no sign.
fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(v).ok()
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, load_bytes};
    use std::time::Duration;

    fn load(text: &str) -> Result<crate::config::Loaded, ConfigError> {
        load_bytes(text.as_bytes(), "airut.yaml", &|v| {
            (v == "TOKEN").then(|| "s3cr3t-token".to_owned())
        })
    }

    #[test]
    fn execution_defaults_and_values() {
        let c = load("config_version: 1\n").unwrap().config;
        assert_eq!(c.execution.max_concurrent, 3);
        assert_eq!(c.execution.shutdown_timeout, Duration::from_secs(60));
        let c = load(
            "config_version: 1\nexecution:\n  max_concurrent: 2\n  shutdown_timeout: 5\n  conversation_max_age: 2d\n  git_timeout: 30s\n",
        )
        .unwrap()
        .config;
        assert_eq!(c.execution.max_concurrent, 2);
        assert_eq!(c.execution.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(
            c.execution.conversation_max_age,
            Duration::from_secs(2 * 86400)
        );
        assert_eq!(c.execution.git_timeout, Duration::from_secs(30));
    }

    #[test]
    fn bad_execution_values_are_named_with_key_and_line() {
        let e = load("execution:\n  nope: 1\n").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let Err(ConfigError::Invalid { problems, .. }) = load(
            "config_version: 1\nexecution:\n  max_concurrent: 0\n  shutdown_timeout: soon\n  conversation_max_age: 5m\n",
        ) else {
            panic!("expected problems");
        };
        let keys: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [
                ("execution.max_concurrent", Some(3)),
                ("execution.shutdown_timeout", Some(4)),
                ("execution.conversation_max_age", Some(5)),
            ]
        );
    }

    #[test]
    fn git_credentials_resolve_and_never_print_the_token() {
        let c = load(
            "config_version: 1\nrepos:\n  r:\n    repo_url: https://example.com/r.git\n    git:\n      username: x-access-token\n      token: !env TOKEN\n",
        )
        .unwrap()
        .config;
        let git = c.repos["r"].git.as_ref().unwrap();
        assert_eq!(git.username, "x-access-token");
        assert_eq!(git.token.expose(), "s3cr3t-token");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let e = load(
            "config_version: 1\nrepos:\n  r:\n    repo_url: x\n    git:\n      username: u\n      token: !env UNSET\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("repos.r.git.token"), "{e}");
    }
}
