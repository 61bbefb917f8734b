//! `repos.<id>.email`: good sections, defaults, and every kind of bad value.

use super::*;
use crate::config::{ConfigError, Loaded, Problem, load_bytes};

fn load(text: &str) -> Result<Loaded, ConfigError> {
    load_bytes(text.as_bytes(), "airut.yaml", &|name| match name {
        "MAIL_PASSWORD" => Some("hunter2-mail".to_owned()),
        "CLIENT_SECRET" => Some("oauth-secret".to_owned()),
        _ => None,
    })
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

/// A repo `r` with `email:` lines (indented by 6).
fn repo(email: &str) -> String {
    format!(
        "config_version: 1\nrepos:\n  r:\n    repo_url: https://example.com/r.git\n    email:\n{email}"
    )
}

const MINIMAL: &str = "      address: Airut@Example.com\n      username: airut@example.com\n      password: !env MAIL_PASSWORD\n      imap:\n        host: imap.example.com\n      smtp:\n        host: smtp.example.com\n      auth:\n        trusted_authserv_id: mx.example.com\n        authorized_senders: [alice@example.com, \"*@example.org\"]\n";

#[test]
fn minimal_section_gets_defaults() {
    let c = load(&repo(MINIMAL)).unwrap().config;
    let e = c.repos["r"].email.as_ref().unwrap();
    assert_eq!(e.address, "airut@example.com");
    assert_eq!(e.from, "airut@example.com");
    assert_eq!(e.password.as_ref().unwrap().expose(), "hunter2-mail");
    assert_eq!(e.imap.port, 993);
    assert_eq!(e.imap.security, Security::Tls);
    assert_eq!(e.imap.mode, ImapMode::Idle);
    assert_eq!(e.imap.idle_timeout, Duration::from_secs(25 * 60));
    assert_eq!(e.imap.poll_interval, Duration::from_secs(60));
    assert_eq!(e.imap.mailbox, "INBOX");
    assert_eq!((e.smtp.port, e.smtp.security), (465, Security::Tls));
    assert_eq!(
        e.auth.authorized_senders,
        ["alice@example.com", "*@example.org"]
    );
    assert!(!e.auth.microsoft_internal_fallback);
    assert!(e.oauth2.is_none());
    assert_eq!(e.max_attachment_bytes, DEFAULT_MAX_ATTACHMENT_BYTES);
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn full_section_with_microsoft_365() {
    let text = repo(
        "      address: airut@contoso.com\n      from: \"Airut Bot <airut@contoso.com>\"\n      username: airut@contoso.com\n      imap:\n        host: outlook.office365.com\n        mode: poll\n        poll_interval: 30s\n        idle_timeout: 20m\n        mailbox: Airut\n      smtp:\n        host: smtp.office365.com\n        security: starttls\n      auth:\n        trusted_authserv_id: \"\"\n        microsoft_internal_fallback: true\n        authorized_senders: [\"*@contoso.com\"]\n      microsoft_oauth2:\n        tenant_id: 1111\n        client_id: 2222\n        client_secret: !env CLIENT_SECRET\n      max_attachment_bytes: 5MiB\n",
    );
    let c = load(&text).unwrap().config;
    let e = c.repos["r"].email.as_ref().unwrap();
    assert_eq!(e.from, "Airut Bot <airut@contoso.com>");
    assert!(e.password.is_none());
    let o = e.oauth2.as_ref().unwrap();
    assert_eq!(
        o.token_url,
        "https://login.microsoftonline.com/1111/oauth2/v2.0/token"
    );
    assert_eq!(o.scope, "https://outlook.office365.com/.default");
    assert_eq!(o.client_secret.expose(), "oauth-secret");
    assert_eq!(e.imap.mode, ImapMode::Poll);
    assert_eq!(e.imap.poll_interval, Duration::from_secs(30));
    assert_eq!(e.imap.idle_timeout, Duration::from_secs(20 * 60));
    assert_eq!(e.imap.mailbox, "Airut");
    assert_eq!((e.smtp.port, e.smtp.security), (587, Security::StartTls));
    assert_eq!(e.auth.trusted_authserv_id, "");
    assert!(e.auth.microsoft_internal_fallback);
    assert_eq!(e.max_attachment_bytes, 5 << 20);
}

#[test]
fn missing_parts_are_each_named() {
    let p = problems(&repo(
        "      address: airut@example.com\n      username: airut\n",
    ));
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "repos.r.email.password",
            "repos.r.email.imap",
            "repos.r.email.smtp",
            "repos.r.email.auth",
        ]
    );
    assert!(
        p[0].message.contains("microsoft_oauth2"),
        "{}",
        p[0].message
    );
    let p = problems(&repo(
        &MINIMAL.replace("password: !env MAIL_PASSWORD", "password: !env NOT_SET"),
    ));
    assert_eq!(p[0].key, "repos.r.email.password");
}

#[test]
fn plain_transport_only_towards_loopback() {
    let p = problems(&repo(&MINIMAL.replace(
        "host: imap.example.com\n",
        "host: imap.example.com\n        security: plain\n",
    )));
    assert_eq!(p[0].key, "repos.r.email.imap.security");
    assert!(p[0].message.contains("loopback"), "{}", p[0].message);
    assert_eq!(p[0].line, Some(11));
    let local = MINIMAL
        .replace(
            "host: imap.example.com\n",
            "host: 127.0.0.1\n        security: plain\n        port: 1143\n",
        )
        .replace(
            "host: smtp.example.com\n",
            "host: localhost\n        security: plain\n",
        );
    let c = load(&repo(&local)).unwrap().config;
    let e = c.repos["r"].email.as_ref().unwrap();
    assert_eq!((e.imap.port, e.imap.security), (1143, Security::Plain));
    assert_eq!((e.smtp.port, e.smtp.security), (25, Security::Plain));
}

#[test]
fn bad_values_are_all_reported() {
    let text = repo(
        "      address: not-an-address\n      from: \"x\"\n      username: u\n      password: p\n      imap:\n        host: h\n        port: 99999\n        security: ssl\n        mode: push\n        poll_interval: 0s\n        idle_timeout: 2h\n        mailbox: \"\"\n      smtp:\n        host: s\n        port: -1\n      auth:\n        trusted_authserv_id: mx\n        microsoft_internal_fallback: maybe\n        authorized_senders: [\"*@*.example.com\", \"bob\"]\n      microsoft_oauth2:\n        tenant_id: t\n        client_id: c\n        client_secret: s\n        token_url: http://login.example.com/token\n      max_message_bytes: lots\n",
    );
    let p = problems(&text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "repos.r.email.address",
        "repos.r.email.from",
        "repos.r.email.imap.security",
        "repos.r.email.smtp.port",
        "repos.r.email.auth.microsoft_internal_fallback",
        "repos.r.email.auth.authorized_senders",
        "repos.r.email.microsoft_oauth2.token_url",
        "repos.r.email.max_message_bytes",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    assert_eq!(
        keys.iter()
            .filter(|k| **k == "repos.r.email.auth.authorized_senders")
            .count(),
        2
    );
    // The IMAP section stops at the first bad value that makes the rest
    // meaningless (security); a good security shows the other problems.
    let text = text.replace("        security: ssl\n", "");
    let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
    assert!(
        keys.iter().any(|k| k == "repos.r.email.imap.port"),
        "{keys:?}"
    );
}

#[test]
fn imap_fields_each_checked() {
    for (line, key) in [
        ("mode: push", "mode"),
        ("poll_interval: 0s", "poll_interval"),
        ("idle_timeout: 2h", "idle_timeout"),
        ("mailbox: \"\"", "mailbox"),
        ("port: 0", "port"),
    ] {
        let p = problems(&repo(&MINIMAL.replace(
            "host: imap.example.com\n",
            &format!("host: imap.example.com\n        {line}\n"),
        )));
        assert_eq!(p[0].key, format!("repos.r.email.imap.{key}"), "{line}");
    }
}

#[test]
fn an_empty_allowlist_is_refused() {
    let p = problems(&repo(&MINIMAL.replace(
        "authorized_senders: [alice@example.com, \"*@example.org\"]",
        "authorized_senders: []",
    )));
    assert_eq!(p[0].key, "repos.r.email.auth.authorized_senders");
}

#[test]
fn two_repos_may_not_share_an_inbox() {
    let section = MINIMAL;
    let text = format!(
        "config_version: 1\nrepos:\n  a:\n    repo_url: x\n    email:\n{section}  b:\n    repo_url: y\n    email:\n{}",
        section.replace("username: airut@example.com", "username: AIRUT@example.com")
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "repos.b.email.imap");
    assert!(p[0].message.contains("repos a and b"), "{}", p[0].message);
    // Another mailbox of the same account is fine.
    let text = format!(
        "config_version: 1\nrepos:\n  a:\n    repo_url: x\n    email:\n{section}  b:\n    repo_url: y\n    email:\n{}",
        section.replace(
            "host: imap.example.com\n",
            "host: imap.example.com\n        mailbox: Other\n"
        )
    );
    assert!(load(&text).is_ok());
}

#[test]
fn unknown_email_keys_are_refused() {
    let e = load(&repo(
        &MINIMAL.replace("      username:", "      usrname: x\n      username:"),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("usrname"), "{e}");
}

#[test]
fn sizes_and_loopback_helpers() {
    assert_eq!(parse_size("25MiB"), Some(25 << 20));
    assert_eq!(parse_size("10MB"), Some(10_000_000));
    assert_eq!(parse_size("7"), Some(7));
    assert_eq!(parse_size("7 XB"), None);
    assert_eq!(parse_size("99999999999999999999GiB"), None);
    assert!(
        is_loopback_host("127.0.0.2") && is_loopback_host("[::1]") && is_loopback_host("LOCALHOST")
    );
    assert!(!is_loopback_host("10.0.0.1") && !is_loopback_host("mail.example.com"));
    assert!(is_loopback_url("http://127.0.0.1:8080/x") && is_loopback_url("http://[::1]/x"));
    assert!(!is_loopback_url("http://example.com/x"));
}
