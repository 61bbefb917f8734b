//! The sandbox's part of the config: the server-level `sandbox:` section
//! (engine socket, Claude Code version or path, image max age, prune
//! interval, Claude Code max age) and `repos.<id>.resource_limits` (timeout, memory, cpus, pids).
//!
//! Raw shapes here are read by `raw.rs`; [`resolve_sandbox`] and
//! [`resolve_limits`] are called from `resolve.rs`, collecting problems with
//! line and key path like every other section.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::raw::Scalar;
use super::resolve::Resolver;

/// `sandbox:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSandbox {
    pub engine_socket: Option<Scalar>,
    pub claude_version: Option<Scalar>,
    pub claude_path: Option<Scalar>,
    pub image_max_age: Option<Scalar>,
    pub prune_interval: Option<Scalar>,
    pub claude_max_age: Option<Scalar>,
}

/// `repos.<id>.resource_limits:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResourceLimits {
    pub timeout: Option<Scalar>,
    pub memory: Option<Scalar>,
    pub cpus: Option<Scalar>,
    pub pids: Option<Scalar>,
}

/// `sandbox:`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The engine's API socket; `None` = discover (see `sandbox::engine`).
    pub engine_socket: Option<PathBuf>,
    /// Where the Claude Code binary comes from.
    pub claude: ClaudeSource,
    /// Images younger than this are reused; older ones are rebuilt.
    /// Zero = rebuild every time.
    pub image_max_age: Duration,
    /// How often stale airut images are pruned.
    pub prune_interval: Duration,
    /// Cached Claude Code versions unused this long are removed (on the
    /// prune schedule). Zero = never.
    pub claude_max_age: Duration,
}

/// Where the Claude Code binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaudeSource {
    /// Downloaded by version: `stable`, `latest` or `x.y.z`.
    Version(String),
    /// A binary already on the host.
    Path(PathBuf),
}

/// `repos.<id>.resource_limits`, resolved. Unset = no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Wall-time limit of one run (at least 10 s).
    pub timeout: Option<Duration>,
    /// Memory in bytes; swap is set equal (no swap).
    pub memory_bytes: Option<u64>,
    /// CPUs in billionths (1.5 cpus = 1_500_000_000).
    pub nano_cpus: Option<u64>,
    /// Most processes and threads at once.
    pub pids: Option<u64>,
}

// === impl SandboxConfig ===

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            engine_socket: None,
            claude: ClaudeSource::Version("stable".to_owned()),
            image_max_age: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(24 * 3600),
            claude_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Resolves `sandbox:`.
pub(crate) fn resolve_sandbox(r: &mut Resolver<'_>, raw: Option<&RawSandbox>) -> SandboxConfig {
    let mut cfg = SandboxConfig::default();
    let Some(raw) = raw else {
        return cfg;
    };
    if let Some(s) = &raw.engine_socket
        && let Some(v) = r.optional("sandbox.engine_socket", s)
    {
        let path = PathBuf::from(v.strip_prefix("unix://").unwrap_or(&v));
        if path.is_absolute() {
            cfg.engine_socket = Some(path);
        } else {
            r.problem(
                s,
                "sandbox.engine_socket",
                format!("expected an absolute path or unix:///path, found {v:?}"),
            );
        }
    }
    match (&raw.claude_version, &raw.claude_path) {
        (Some(_), Some(p)) => r.problem(
            p,
            "sandbox.claude_path",
            "set claude_version or claude_path, not both".to_owned(),
        ),
        (Some(s), None) => {
            if let Some(v) = r.optional("sandbox.claude_version", s) {
                if valid_claude_version(&v) {
                    cfg.claude = ClaudeSource::Version(v);
                } else {
                    r.problem(
                        s,
                        "sandbox.claude_version",
                        format!("expected stable, latest or a version like 2.1.3, found {v:?}"),
                    );
                }
            }
        }
        (None, Some(s)) => {
            if let Some(v) = r.optional("sandbox.claude_path", s) {
                let p = PathBuf::from(&v);
                if p.is_absolute() {
                    cfg.claude = ClaudeSource::Path(p);
                } else {
                    r.problem(
                        s,
                        "sandbox.claude_path",
                        format!("expected an absolute path, found {v:?}"),
                    );
                }
            }
        }
        (None, None) => {}
    }
    if let Some(s) = &raw.image_max_age
        && let Some(d) = duration(r, "sandbox.image_max_age", s, Duration::ZERO)
    {
        cfg.image_max_age = d;
    }
    if let Some(s) = &raw.prune_interval
        && let Some(d) = duration(r, "sandbox.prune_interval", s, Duration::from_secs(60))
    {
        cfg.prune_interval = d;
    }
    if let Some(s) = &raw.claude_max_age
        && let Some(d) = duration(r, "sandbox.claude_max_age", s, Duration::ZERO)
    {
        cfg.claude_max_age = d;
    }
    cfg
}

/// Resolves `repos.<id>.resource_limits`; `key` is `repos.<id>`.
pub(crate) fn resolve_limits(
    r: &mut Resolver<'_>,
    key: &str,
    raw: Option<&RawResourceLimits>,
) -> ResourceLimits {
    let mut limits = ResourceLimits::default();
    let Some(raw) = raw else {
        return limits;
    };
    if let Some(s) = &raw.timeout {
        limits.timeout = duration(
            r,
            &format!("{key}.resource_limits.timeout"),
            s,
            Duration::from_secs(10),
        );
    }
    if let Some(s) = &raw.memory {
        let k = format!("{key}.resource_limits.memory");
        if let Some(v) = r.optional(&k, s) {
            match parse_memory(&v) {
                Some(b) => limits.memory_bytes = Some(b),
                None => r.problem(
                    s,
                    &k,
                    format!("expected a size such as 512m or 4g (at least 6m), found {v:?}"),
                ),
            }
        }
    }
    if let Some(s) = &raw.cpus {
        let k = format!("{key}.resource_limits.cpus");
        if let Some(v) = r.optional(&k, s) {
            match parse_cpus(&v) {
                Some(n) => limits.nano_cpus = Some(n),
                None => r.problem(
                    s,
                    &k,
                    format!("expected a number of CPUs from 0.01, such as 2 or 1.5, found {v:?}"),
                ),
            }
        }
    }
    if let Some(s) = &raw.pids {
        let k = format!("{key}.resource_limits.pids");
        if let Some(v) = r.optional(&k, s) {
            match v.parse::<u64>() {
                Ok(n) if n >= 1 && v.bytes().all(|b| b.is_ascii_digit()) => limits.pids = Some(n),
                _ => r.problem(
                    s,
                    &k,
                    format!("expected a whole number of at least 1, found {v:?}"),
                ),
            }
        }
    }
    limits
}

fn duration(r: &mut Resolver<'_>, key: &str, s: &Scalar, min: Duration) -> Option<Duration> {
    let v = r.optional(key, s)?;
    let parsed = if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        v.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(&v).ok()
    };
    match parsed {
        Some(d) if d >= min => Some(d),
        _ => {
            r.problem(
                s,
                key,
                format!(
                    "expected a duration of at least {} (seconds, or such as 30m or 2h), found {v:?}",
                    humantime::format_duration(min)
                ),
            );
            None
        }
    }
}

/// `stable`, `latest` or `x.y.z` (with an optional `-suffix`).
pub fn valid_claude_version(v: &str) -> bool {
    if v == "stable" || v == "latest" {
        return true;
    }
    let (core, suffix) = match v.split_once('-') {
        Some((c, s)) => (c, Some(s)),
        None => (v, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && suffix.is_none_or(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
}

/// `512m`, `4g`, `1048576b`, `2048k` (case-insensitive); at least 6 MiB
/// (the engines refuse less).
pub fn parse_memory(v: &str) -> Option<u64> {
    let v = v.trim();
    let unit = v.chars().last()?.to_ascii_lowercase();
    let digits = v.get(..v.len() - 1)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    let bytes = n.checked_mul(mult)?;
    (bytes >= 6 << 20).then_some(bytes)
}

/// `2`, `1.5`, `0.25`: at least 0.01 CPU, in billionths.
pub fn parse_cpus(v: &str) -> Option<u64> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || int.len() > 6
    {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_n: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32)
    };
    let nano = int * 1_000_000_000 + frac_n;
    (nano >= 10_000_000).then_some(nano)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cpus_and_versions() {
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("4G"), Some(4 << 30));
        assert_eq!(parse_memory("1k"), None);
        for bad in ["", "m", "12", "1.5g", "-1g", "99999999999999999999g", "1t"] {
            assert_eq!(parse_memory(bad), None, "{bad}");
        }
        assert_eq!(parse_cpus("1.5"), Some(1_500_000_000));
        assert_eq!(parse_cpus("2"), Some(2_000_000_000));
        assert_eq!(parse_cpus("0.01"), Some(10_000_000));
        for bad in ["0.001", "0", "", ".", "-1", "1e3", "1.2.3", "abc"] {
            assert_eq!(parse_cpus(bad), None, "{bad}");
        }
        for good in ["stable", "latest", "2.1.332", "1.0.0-beta.1"] {
            assert!(valid_claude_version(good), "{good}");
        }
        for bad in ["", "2.1", "v2.1.3", "2.1.3-", "2.1.x", "stable "] {
            assert!(!valid_claude_version(bad), "{bad}");
        }
    }

    #[test]
    fn claude_max_age_defaults_parses_and_is_checked() {
        let load = |text: &str| crate::config::load_bytes(text.as_bytes(), "t.yaml", &|_| None);
        let d = load("config_version: 1\n").unwrap().config;
        assert_eq!(d.sandbox.claude_max_age, Duration::from_secs(7 * 24 * 3600));
        let c = load("config_version: 1\nsandbox:\n  claude_max_age: 3d\n")
            .unwrap()
            .config;
        assert_eq!(c.sandbox.claude_max_age, Duration::from_secs(3 * 24 * 3600));
        let c = load("config_version: 1\nsandbox:\n  claude_max_age: 0\n")
            .unwrap()
            .config;
        assert_eq!(c.sandbox.claude_max_age, Duration::ZERO);
        let e = load("config_version: 1\nsandbox:\n  claude_max_age: soon\n").unwrap_err();
        assert!(format!("{e:#}").contains("sandbox.claude_max_age"), "{e:#}");
    }
}
