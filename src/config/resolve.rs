//! From the file as written to a [`ServerConfig`]: expand `!env` and
//! `!var`, parse and check every value, apply defaults. Collects every
//! problem (with line and key path) instead of stopping at the first.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::raw::{RawConfig, RawRepo, Scalar};
use super::{CONFIG_VERSION, Problem, RepoConfig, ServerConfig};

/// Effort levels Claude Code accepts.
const EFFORTS: &[&str] = &["low", "medium", "high", "max"];

/// A scalar after tag expansion.
enum Value {
    /// A value.
    Set(String),
    /// An `!env` variable that is not set: absent, with the reason.
    Unset(String),
    /// Wrong; a problem was recorded.
    Bad,
}

pub(crate) struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    vars: BTreeMap<String, Option<String>>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

/// Resolves `raw`; `Err` lists every problem.
pub(crate) fn resolve(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(ServerConfig, Vec<String>), Vec<Problem>> {
    let mut r = Resolver {
        env,
        vars: BTreeMap::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let defaults = ServerConfig::default();

    match &raw.config_version {
        None => r.warnings.push(format!(
            "config_version is missing; reading the file as version {CONFIG_VERSION}"
        )),
        Some(s) => {
            if let Some(v) = r.optional("config_version", s) {
                match v.parse::<u32>() {
                    Ok(CONFIG_VERSION) => {}
                    Ok(n) if n > CONFIG_VERSION => r.problem(
                        s,
                        "config_version",
                        format!("version {n} is newer than this airut reads ({CONFIG_VERSION}): upgrade airut"),
                    ),
                    _ => r.problem(s, "config_version", format!("expected {CONFIG_VERSION}, found {v:?}")),
                }
            }
        }
    }

    for (name, s) in &raw.vars {
        let key = format!("vars.{}", name.value);
        let value = match s.value.1.as_deref() {
            Some("!var") => {
                r.problem(s, &key, "a var cannot refer to another var".to_owned());
                None
            }
            _ => r.optional(&key, s),
        };
        r.vars.insert(name.value.clone(), value);
    }

    let state_dir = match raw
        .state_dir
        .as_ref()
        .and_then(|s| r.optional("state_dir", s).map(|v| (s, v)))
    {
        None => defaults.state_dir.clone(),
        Some((s, v)) => {
            let p = expand_home(&v);
            if !p.is_absolute() {
                r.problem(
                    s,
                    "state_dir",
                    format!("{v:?} is not an absolute path (or ~/...)"),
                );
            }
            p
        }
    };

    let mut dashboard = defaults.dashboard.clone();
    if let Some(d) = &raw.dashboard {
        dashboard.auth = d
            .auth
            .as_ref()
            .and_then(|a| super::dashboard_auth::resolve(&mut r, a));
        if let Some(s) = &d.host
            && let Some(v) = r.optional("dashboard.host", s)
        {
            match parse_host(&v, dashboard.auth.is_some()) {
                Ok(ip) => dashboard.host = ip,
                Err(msg) => r.problem(s, "dashboard.host", msg),
            }
        }
        if let Some(s) = &d.port
            && let Some(v) = r.optional("dashboard.port", s)
        {
            match parse_decimal::<u16>(&v) {
                Some(p) => dashboard.port = p,
                None => r.problem(
                    s,
                    "dashboard.port",
                    format!(
                        "expected a port number from 0 to 65535 (0 = any free port), found {v:?}"
                    ),
                ),
            }
        }
        if let Some(s) = &d.base_url
            && let Some(v) = r.optional("dashboard.base_url", s)
        {
            if v.starts_with("https://") || v.starts_with("http://") {
                dashboard.base_url = Some(v.trim_end_matches('/').to_owned());
            } else {
                r.problem(
                    s,
                    "dashboard.base_url",
                    format!("expected an http:// or https:// URL, found {v:?}"),
                );
            }
        }
    }

    let mut repos = BTreeMap::new();
    for (id, repo) in &raw.repos {
        let key = format!("repos.{}", id.value);
        if let Err(msg) = check_repo_id(&id.value) {
            r.problems.push(Problem {
                line: Some(id.referenced.line()),
                key: key.clone(),
                message: msg,
            });
            continue;
        }
        if repos.contains_key(&id.value) {
            r.problems.push(Problem {
                line: Some(id.referenced.line()),
                key,
                message: "this repo id appears twice".to_owned(),
            });
            continue;
        }
        if let Some(cfg) = r.repo(&key, repo) {
            repos.insert(id.value.clone(), cfg);
        }
    }

    let execution = super::gateway::execution(&mut r, raw.execution.as_ref());
    check_shared_inboxes(&mut r, &raw, &repos);
    let sandbox = super::sandbox::resolve_sandbox(&mut r, raw.sandbox.as_ref());

    if r.problems.is_empty() {
        Ok((
            ServerConfig {
                state_dir,
                dashboard,
                repos,
                execution,
                sandbox,
            },
            r.warnings,
        ))
    } else {
        Err(r.problems)
    }
}

// === impl Resolver ===

impl Resolver<'_> {
    pub(crate) fn problem_at(&mut self, line: u64, key: &str, message: String) {
        self.problems.push(Problem {
            line: Some(line),
            key: key.to_owned(),
            message,
        });
    }

    pub(crate) fn problem(&mut self, at: &Scalar, key: &str, message: String) {
        self.problems.push(Problem {
            line: Some(at.referenced.line()),
            key: key.to_owned(),
            message,
        });
    }

    /// Expands tags.
    fn expand(&mut self, key: &str, s: &Scalar) -> Value {
        let text = &s.value.0;
        match s.value.1.as_deref() {
            None | Some("!!str") | Some("tag:yaml.org,2002:str") => Value::Set(text.clone()),
            Some("!env") => {
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    self.problem(
                        s,
                        key,
                        format!("!env needs a variable name, found {text:?}"),
                    );
                    return Value::Bad;
                }
                match (self.env)(text) {
                    Some(v) => Value::Set(v),
                    None => Value::Unset(format!("environment variable {text} is not set")),
                }
            }
            Some("!var") => match self.vars.get(text.as_str()) {
                Some(Some(v)) => Value::Set(v.clone()),
                Some(None) => Value::Unset(format!("var {text} has no value")),
                None => {
                    self.problem(s, key, format!("!var {text}: no such entry under vars:"));
                    Value::Bad
                }
            },
            Some(other) => {
                self.problem(
                    s,
                    key,
                    format!("unknown tag {other} (airut knows !env and !var)"),
                );
                Value::Bad
            }
        }
    }

    /// An optional value: unset `!env` means absent, with a warning.
    pub(crate) fn optional(&mut self, key: &str, s: &Scalar) -> Option<String> {
        match self.expand(key, s) {
            Value::Set(v) => Some(v),
            Value::Unset(why) => {
                self.warnings.push(format!(
                    "line {}: {key}: {why}; using the default",
                    s.referenced.line()
                ));
                None
            }
            Value::Bad => None,
        }
    }

    /// A required value: missing or unset is a problem.
    pub(crate) fn required(&mut self, key: &str, s: Option<&Scalar>, line: u64) -> Option<String> {
        let Some(s) = s else {
            self.problems.push(Problem {
                line: Some(line),
                key: key.to_owned(),
                message: "required".to_owned(),
            });
            return None;
        };
        match self.expand(key, s) {
            Value::Set(v) if v.trim().is_empty() => {
                self.problem(s, key, "must not be empty".to_owned());
                None
            }
            Value::Set(v) => Some(v),
            Value::Unset(why) => {
                self.problem(s, key, format!("required, but {why}"));
                None
            }
            Value::Bad => None,
        }
    }

    /// How many problems were found so far.
    pub(super) fn problem_count(&self) -> usize {
        self.problems.len()
    }

    /// Records a problem not tied to one scalar (a missing section).
    pub(super) fn push_problem(&mut self, line: Option<u64>, key: &str, message: String) {
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message,
        });
    }

    fn repo(&mut self, key: &str, repo: &RawRepo) -> Option<RepoConfig> {
        let before = self.problems.len();
        let line = repo_line(repo);
        let repo_url = self.required(&format!("{key}.repo_url"), repo.repo_url.as_ref(), line);
        let model = match &repo.model {
            None => "opus".to_owned(),
            Some(s) => match self.optional(&format!("{key}.model"), s) {
                None => "opus".to_owned(),
                Some(m) if m.is_empty() || m.chars().any(char::is_whitespace) => {
                    self.problem(
                        s,
                        &format!("{key}.model"),
                        format!("expected a model name such as opus or sonnet, found {m:?}"),
                    );
                    String::new()
                }
                Some(m) => m,
            },
        };
        let effort = match &repo.effort {
            None => None,
            Some(s) => match self.optional(&format!("{key}.effort"), s) {
                Some(e) if EFFORTS.contains(&e.as_str()) => Some(e),
                Some(e) => {
                    self.problem(
                        s,
                        &format!("{key}.effort"),
                        format!("expected one of {}, found {e:?}", EFFORTS.join(", ")),
                    );
                    None
                }
                None => None,
            },
        };
        let git = super::gateway::git(self, key, repo.git.as_ref());
        let email = repo
            .email
            .as_ref()
            .and_then(|e| super::email::resolve(self, key, e, line));
        let resource_limits =
            super::sandbox::resolve_limits(self, key, repo.resource_limits.as_ref());
        let network = match &repo.network {
            Some(n) => super::network::resolve(self, &format!("{key}.network"), n),
            None => super::network::NetworkConfig::default(),
        };
        if self.problems.len() > before {
            return None;
        }
        Some(RepoConfig {
            repo_url: repo_url?,
            model,
            effort,
            git,
            email,
            resource_limits,
            network,
        })
    }
}

/// The line of the first key of a repo section (for "required" problems).
fn repo_line(repo: &RawRepo) -> u64 {
    [&repo.repo_url, &repo.model, &repo.effort]
        .into_iter()
        .flatten()
        .map(|s| s.referenced.line())
        .min()
        .unwrap_or(0)
}

/// Repo ids become stream ids (`repo/<id>/<channel>`) and directory names.
fn check_repo_id(id: &str) -> Result<(), String> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let starts_ok = id
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if (1..=64).contains(&id.len()) && ok_chars && starts_ok {
        Ok(())
    } else {
        Err(format!(
            "repo id {id:?} must be 1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
    }
}

fn parse_host(v: &str, has_auth: bool) -> Result<IpAddr, String> {
    let ip: IpAddr = if v == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        v.parse()
            .map_err(|_| format!("expected an IP address such as 127.0.0.1, found {v:?}"))?
    };
    if ip.is_loopback() || has_auth {
        Ok(ip)
    } else {
        Err(format!(
            "{v} is not a loopback address and dashboard.auth is not set: the dashboard and API \
             listen beyond loopback only with authentication (set dashboard.auth.token or \
             dashboard.auth.proxy_user_header, or use an SSH tunnel)"
        ))
    }
}

/// Plain decimal digits only (no sign, no 0x, no underscores).
fn parse_decimal<T: std::str::FromStr>(v: &str) -> Option<T> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn expand_home(v: &str) -> PathBuf {
    match v.strip_prefix("~/") {
        Some(rest) => super::home_dir().join(rest),
        None => PathBuf::from(v),
    }
}

/// Two repos may not consume the same mailbox: each would take the other's
/// mail.
fn check_shared_inboxes(
    r: &mut Resolver<'_>,
    raw: &RawConfig,
    repos: &BTreeMap<String, RepoConfig>,
) {
    let mut seen: BTreeMap<(String, u16, String, String), &str> = BTreeMap::new();
    for (id, _) in &raw.repos {
        let Some(email) = repos.get(&id.value).and_then(|c| c.email.as_ref()) else {
            continue;
        };
        let identity = email.inbox_identity();
        if let Some(other) = seen.get(&identity) {
            r.push_problem(
                Some(id.referenced.line()),
                &format!("repos.{}.email.imap", id.value),
                format!(
                    "repos {other} and {} read the same mailbox ({} on {}:{} as {}); give each repo its own",
                    id.value, identity.3, identity.0, identity.1, identity.2
                ),
            );
        } else {
            seen.insert(identity, &id.value);
        }
    }
}
