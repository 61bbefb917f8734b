//! Config loading: good files, and every kind of bad input.

use super::*;

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

fn load(text: &str) -> Result<Loaded, ConfigError> {
    load_bytes(
        text.as_bytes(),
        "airut.yaml",
        &env(&[("PORT", "5300"), ("REPO", "https://example.com/r.git")]),
    )
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

fn syntax(text: &str) -> String {
    match load(text) {
        Err(e @ ConfigError::Syntax { .. }) => e.to_string(),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn missing_file_means_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = super::load(Some(&dir.path().join("nope.yaml"))).unwrap();
    assert_eq!(loaded.config, ServerConfig::default());
    assert!(loaded.source.is_none());
    assert_eq!(loaded.content_hash, [0; 32]);
    assert!(loaded.config.repos.is_empty());
    assert_eq!(loaded.config.dashboard.port, 5200);
    assert!(loaded.config.dashboard.host.is_loopback());
}

#[test]
fn empty_and_comment_only_files_are_defaults_with_a_version_warning() {
    for text in ["", "# nothing here\n", "---\n"] {
        let loaded = load(text).unwrap();
        assert_eq!(loaded.config, ServerConfig::default(), "{text:?}");
        assert!(
            loaded.warnings.iter().any(|w| w.contains("config_version")),
            "{text:?}"
        );
    }
}

#[test]
fn full_file_with_env_and_vars() {
    let loaded = load(
        "config_version: 1\n\
         vars:\n  url: !env REPO\n\
         state_dir: /srv/airut\n\
         dashboard:\n  host: localhost\n  port: !env PORT\n  base_url: https://airut.example/\n\
         repos:\n  widgets:\n    repo_url: !var url\n    model: sonnet\n    effort: high\n  gadgets:\n    repo_url: git@example.com:g.git\n",
    )
    .unwrap();
    let c = loaded.config;
    assert_eq!(c.state_dir, PathBuf::from("/srv/airut"));
    assert_eq!(c.dashboard.port, 5300);
    assert_eq!(
        c.dashboard.base_url.as_deref(),
        Some("https://airut.example")
    );
    assert_eq!(c.repos["widgets"].repo_url, "https://example.com/r.git");
    assert_eq!(c.repos["widgets"].effort.as_deref(), Some("high"));
    assert_eq!(c.repos["gadgets"].model, "opus");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_ne!(loaded.content_hash, [0; 32]);
}

#[test]
fn unset_env_is_a_warning_when_optional_and_a_problem_when_required() {
    let loaded = load("config_version: 1\ndashboard:\n  port: !env NOT_SET\n").unwrap();
    assert_eq!(loaded.config.dashboard.port, 5200);
    assert!(
        loaded.warnings[0].contains("NOT_SET"),
        "{:?}",
        loaded.warnings
    );
    let p = problems("config_version: 1\nrepos:\n  r:\n    repo_url: !env NOT_SET\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "repos.r.repo_url");
    assert_eq!(p[0].line, Some(4));
    assert!(
        p[0].message.contains("NOT_SET is not set"),
        "{}",
        p[0].message
    );
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let e = syntax("config_version: 1\ndashbord:\n  port: 1\n");
    assert!(e.contains("dashbord") && e.contains(":2:"), "{e}");
    let e = syntax("config_version: 1\nrepos:\n  r:\n    repo_url: x\n    modle: opus\n");
    assert!(e.contains("modle") && e.contains(":5:"), "{e}");
}

#[test]
fn wrong_shapes_and_yaml_errors_name_the_line() {
    let e = syntax("dashboard:\n  port: [1, 2]\n");
    assert!(e.contains(":2:"), "{e}");
    let e = syntax("dashboard: {port: 5}\n  bad: : :\n");
    assert!(e.contains(":2:"), "{e}");
    let e = syntax("repos: [a, b]\n");
    assert!(e.contains("airut.yaml"), "{e}");
}

#[test]
fn bad_values_are_all_reported_at_once() {
    let p = problems(
        "config_version: 1\n\
         state_dir: relative/dir\n\
         dashboard:\n  host: 0.0.0.0\n  port: 70000\n  base_url: airut.example\n\
         repos:\n  Bad.Id:\n    repo_url: x\n  ok:\n    model: two words\n    effort: extreme\n",
    );
    let keys: Vec<_> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        keys,
        [
            ("state_dir", Some(2)),
            ("dashboard.host", Some(4)),
            ("dashboard.port", Some(5)),
            ("dashboard.base_url", Some(6)),
            ("repos.Bad.Id", Some(8)),
            ("repos.ok.repo_url", Some(11)),
            ("repos.ok.model", Some(11)),
            ("repos.ok.effort", Some(12)),
        ]
    );
    let text = ConfigError::Invalid {
        path: "airut.yaml".into(),
        problems: p,
    }
    .to_string();
    assert!(text.starts_with("airut.yaml: 8 problems"), "{text}");
    assert!(
        text.contains("airut.yaml:line 4: dashboard.host: 0.0.0.0 is not a loopback address"),
        "{text}"
    );
}

#[test]
fn ports_are_plain_decimal() {
    for bad in ["0x10", "-1", "+80", "1_000", "eighty", "65536"] {
        let p = problems(&format!(
            "config_version: 1\ndashboard:\n  port: \"{bad}\"\n"
        ));
        assert_eq!(p[0].key, "dashboard.port", "{bad}");
    }
    assert_eq!(
        load("config_version: 1\ndashboard:\n  port: 0\n")
            .unwrap()
            .config
            .dashboard
            .port,
        0
    );
}

#[test]
fn versions_and_tags() {
    let p = problems("config_version: 2\n");
    assert!(p[0].message.contains("upgrade airut"), "{}", p[0].message);
    let p = problems("config_version: one\n");
    assert_eq!(p[0].key, "config_version");
    let p = problems("config_version: 1\ndashboard:\n  port: !secret X\n");
    assert!(
        p[0].message.contains("unknown tag !secret"),
        "{}",
        p[0].message
    );
    let p = problems("config_version: 1\ndashboard:\n  port: !var nope\n");
    assert!(p[0].message.contains("no such entry"), "{}", p[0].message);
    let p = problems("config_version: 1\ndashboard:\n  port: !env \"BAD NAME\"\n");
    assert!(p[0].message.contains("variable name"), "{}", p[0].message);
    let p = problems("config_version: 1\nvars:\n  a: !var b\n");
    assert!(p[0].message.contains("another var"), "{}", p[0].message);
}

#[test]
fn duplicate_repo_ids_are_refused() {
    let r = load("config_version: 1\nrepos:\n  a:\n    repo_url: x\n  a:\n    repo_url: y\n");
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn non_utf8_and_oversized_files_are_clear_errors() {
    let e = load_bytes(
        b"config_version: 1\nstate_dir: /x\xff\n",
        "airut.yaml",
        &|_| None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
    let e = super::load(Some(&big)).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

#[test]
fn hostile_documents_do_not_panic() {
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let _ = load(&deep);
    let aliases = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n";
    assert!(load(aliases).is_err());
    let _ = load("\u{feff}config_version: 1\n");
    let _ = load("config_version: 1\n\0\n");
    let _ = load(&"k: v\n".repeat(10_000));
}

#[test]
fn the_example_config_validates() {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/airut.example.yaml"
    ))
    .unwrap();
    let loaded = load_bytes(
        &text,
        "airut.example.yaml",
        &env(&[("AIRUT_REPO_URL", "https://example.com/w.git")]),
    )
    .unwrap();
    assert!(!loaded.config.repos.is_empty());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn secrets_do_not_print() {
    let s = Secret::new("hunter2-very-secret");
    let shown = format!("{s:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(s.expose(), "hunter2-very-secret");
}

#[test]
fn dashboard_auth_allows_a_non_loopback_bind() {
    let c = load(
        "config_version: 1\ndashboard:\n  host: 0.0.0.0\n  auth:\n    token: 0123456789abcdef01\n",
    )
    .unwrap()
    .config;
    assert_eq!(c.dashboard.host.to_string(), "0.0.0.0");
    let auth = c.dashboard.auth.unwrap();
    assert_eq!(auth.token.unwrap().expose(), "0123456789abcdef01");
    assert!(auth.trusted_proxies.iter().all(|ip| ip.is_loopback()));

    let c = load(
        "config_version: 1\ndashboard:\n  host: \"::\"\n  auth:\n    proxy_user_header: X-Forwarded-User\n    trusted_proxies: [10.0.0.5]\n",
    )
    .unwrap()
    .config;
    let auth = c.dashboard.auth.unwrap();
    assert_eq!(auth.proxy_user_header.as_deref(), Some("x-forwarded-user"));
    assert_eq!(
        auth.trusted_proxies,
        vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
    );
    assert!(auth.token.is_none());
}

#[test]
fn dashboard_auth_bad_values_are_reported_and_never_print_the_token() {
    let p = problems(
        "config_version: 1\ndashboard:\n  host: 0.0.0.0\n  auth:\n    token: short secret\n    proxy_user_header: \"X User:\"\n    trusted_proxies: [nope]\n",
    );
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "dashboard.auth.token",
            "dashboard.auth.proxy_user_header",
            "dashboard.auth.trusted_proxies[0]",
            "dashboard.host",
        ]
    );
    let text = ConfigError::Invalid {
        path: "airut.yaml".into(),
        problems: p,
    }
    .to_string();
    assert!(!text.contains("short secret"), "{text}");
    assert!(text.contains("dashboard.auth is not set"), "{text}");
    // Unknown keys under auth are refused too.
    let e = syntax("config_version: 1\ndashboard:\n  auth:\n    passwd: x\n");
    assert!(e.contains("passwd"), "{e}");
    // A token from the environment.
    let c = load_bytes(
        b"config_version: 1\ndashboard:\n  host: 192.0.2.7\n  auth:\n    token: !env TOK\n",
        "airut.yaml",
        &env(&[("TOK", "abcdefabcdefabcdefabcdef")]),
    )
    .unwrap();
    assert!(format!("{:?}", c.config.dashboard.auth).contains("redacted"));
}
