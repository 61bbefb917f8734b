//! `airut check`'s probes against real servers: a private Dovecot for
//! IMAP (plain, implicit TLS, STARTTLS with a test CA), the in-test SMTP
//! receiver of `email_smtp`, hostile fake servers, refused ports; the
//! local mirror's states; and the real `airut` binary's output and exit
//! code with a repo whose mail servers work, then do not.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use airut::channels::email::config::{Credentials, EmailSettings};
use airut::channels::email::probe::{self, FailureKind, ProbeError};
use airut::channels::email::tls::Trust;
use airut::config::Secret;
use airut::config::email::{ImapMode, Security};
use airut::events::RepoId;
use airut::workspace::{MirrorState, inspect_mirror};

use crate::email_smtp::{Receiver, ReceiverOptions};
use crate::email_support::*;

/// The probes' own deadline: the failing probes below fail at once (a
/// refused login takes Dovecot's 2 s failure delay); the silent-server
/// ones use a shorter one.
const LIMIT: Duration = probe::PROBE_TIMEOUT;

fn with(
    imap_port: u16,
    imap_security: Security,
    smtp_port: u16,
    smtp_security: Security,
    trust: Trust,
) -> EmailSettings {
    (*settings(
        imap(imap_port, imap_security, ImapMode::Idle),
        smtp(smtp_port, smtp_security),
        trust,
    ))
    .clone()
}

fn wrong_password(s: &mut EmailSettings) {
    s.credentials = Credentials::Password {
        username: USER.to_owned(),
        password: Secret::new("wrong"),
    };
}

fn assert_failure(e: &ProbeError, kind: FailureKind, words: &[&str]) {
    assert_eq!(e.kind, kind, "{e}");
    let text = e.to_string();
    assert!(!text.contains('\n'), "one line: {text:?}");
    for w in words {
        assert!(text.contains(w), "{w:?} not in {text:?}");
    }
    // Never the password.
    assert!(
        !text.contains(PASSWORD) && !text.contains("wrong"),
        "{text}"
    );
}

/// A server that writes `script` to each connection, then reads until the
/// client leaves (`None`: accepts and stays silent).
async fn fake_server(script: Option<&'static [u8]>) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Some(script) = script {
                    let _ = tcp.write_all(script).await;
                }
                let mut buf = [0u8; 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[tokio::test]
async fn imap_probe_against_dovecot() {
    let certs = TestCerts::new();
    let dovecot = Dovecot::start(DovecotOptions {
        tls: Some(Arc::clone(&certs)),
        ..Default::default()
    })
    .await;
    dovecot
        .deliver(&mail("alice@example.com", "1@example.com", "hi", "x"), None)
        .await;

    // Success, each way the connection can be protected.
    for (port, security) in [
        (dovecot.port, Security::Plain),
        (dovecot.tls_port, Security::Tls),
        (dovecot.port, Security::StartTls),
    ] {
        let s = with(port, security, 1, Security::Plain, certs.trust());
        let report = probe::probe_imap(&s, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{security:?}: {e}\n{}", dovecot.logs()));
        assert_eq!(report.security, security);
        assert_eq!(report.mailbox, "INBOX");
        assert_eq!(report.messages, 1);
        assert!(
            report.to_string().contains("INBOX has 1 message"),
            "{report}"
        );
    }
    // EXAMINE changed nothing.
    assert_eq!(dovecot.count().await, 1);

    // Missing mailbox.
    let mut s = with(
        dovecot.port,
        Security::Plain,
        1,
        Security::Plain,
        certs.trust(),
    );
    s.imap.mailbox = "Nope".to_owned();
    let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::Mailbox,
        &[
            "mailbox missing",
            "Nope",
            "repos.widgets.email.imap.mailbox",
        ],
    );

    // Wrong password (last: Dovecot slows down logins from an address
    // after a refused one).
    let mut s = with(
        dovecot.port,
        Security::Plain,
        1,
        Security::Plain,
        certs.trust(),
    );
    wrong_password(&mut s);
    let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::AuthRejected,
        &[
            "IMAP 127.0.0.1:",
            "authentication rejected",
            "repos.widgets.email.password",
        ],
    );

    // TLS required, but the server's certificate is not trusted (no CA),
    // implicit TLS and STARTTLS alike.
    for (port, security) in [
        (dovecot.tls_port, Security::Tls),
        (dovecot.port, Security::StartTls),
    ] {
        let s = with(port, security, 1, Security::Plain, Trust::public());
        let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
        assert_failure(
            &e,
            FailureKind::Certificate,
            &["certificate not trusted", "repos.widgets.email.ca_file"],
        );
    }

    // TLS asked of the plain-text port: a TLS failure, not a hang.
    let s = with(
        dovecot.port,
        Security::Tls,
        1,
        Security::Plain,
        certs.trust(),
    );
    let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::Tls,
        &["TLS handshake failed", "imap.security"],
    );
}

#[tokio::test]
async fn imap_probe_unreachable_and_hostile_servers() {
    // Nothing listening.
    let port = free_port();
    let s = with(port, Security::Plain, 1, Security::Plain, Trust::public());
    let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::Refused,
        &[
            &format!("IMAP 127.0.0.1:{port}"),
            "connection refused",
            "repos.widgets.email.imap.port",
        ],
    );

    // A name that does not resolve (.invalid never does).
    let mut s = with(port, Security::Plain, 1, Security::Plain, Trust::public());
    s.imap.host = "imap.airut-check.invalid".to_owned();
    let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
    if e.kind == FailureKind::Timeout {
        // A machine whose resolver does not answer at all.
        assert_failure(&e, FailureKind::Timeout, &["while resolving the host"]);
    } else {
        assert_failure(
            &e,
            FailureKind::Dns,
            &["DNS", "repos.widgets.email.imap.host"],
        );
    }

    // Garbage instead of a greeting.
    for script in [
        &b"garbage that is not IMAP\r\n"[..],
        b"\x00\xff\xfe\r\n",
        b"* BYE go away\r\n",
    ] {
        let port = fake_server(Some(script)).await;
        let s = with(port, Security::Plain, 1, Security::Plain, Trust::public());
        let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
        assert_eq!(e.kind, FailureKind::Greeting, "{script:?}: {e}");
    }

    // A server that accepts and says nothing: the deadline ends it.
    let port = fake_server(None).await;
    let s = with(port, Security::Plain, 1, Security::Plain, Trust::public());
    let e = probe::probe_imap(&s, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_failure(&e, FailureKind::Timeout, &["timed out", "greeting"]);
}

#[tokio::test]
async fn smtp_probe_against_the_receiver() {
    let certs = TestCerts::new();
    let plain = Receiver::start(ReceiverOptions::default()).await;
    let starttls = Receiver::start(ReceiverOptions {
        starttls: Some(Arc::clone(&certs)),
        ..Default::default()
    })
    .await;
    let implicit = Receiver::start(ReceiverOptions {
        implicit_tls: Some(Arc::clone(&certs)),
        ..Default::default()
    })
    .await;
    for (port, security) in [
        (plain.port, Security::Plain),
        (starttls.port, Security::StartTls),
        (implicit.port, Security::Tls),
    ] {
        let s = with(1, Security::Plain, port, security, certs.trust());
        let report = probe::probe_smtp(&s, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{security:?}: {e}"));
        assert_eq!(report.security, security);
        assert!(report.authenticated);
        assert!(report.to_string().contains("AUTH accepted"), "{report}");
    }
    // Nothing was sent.
    assert!(plain.mails().is_empty() && starttls.mails().is_empty() && implicit.mails().is_empty());

    // AUTH rejected (535).
    let mut s = with(
        1,
        Security::Plain,
        plain.port,
        Security::Plain,
        certs.trust(),
    );
    wrong_password(&mut s);
    let e = probe::probe_smtp(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::AuthRejected,
        &[
            "SMTP 127.0.0.1:",
            "authentication rejected",
            "535",
            "repos.widgets.email.username",
        ],
    );

    // No password: EHLO only, no AUTH.
    let mut s = with(
        1,
        Security::Plain,
        plain.port,
        Security::Plain,
        certs.trust(),
    );
    s.credentials = Credentials::Password {
        username: USER.to_owned(),
        password: Secret::new(""),
    };
    let report = probe::probe_smtp(&s, LIMIT).await.unwrap();
    assert!(!report.authenticated);

    // Untrusted certificate, both ways.
    for (port, security) in [
        (starttls.port, Security::StartTls),
        (implicit.port, Security::Tls),
    ] {
        let s = with(1, Security::Plain, port, security, Trust::public());
        let e = probe::probe_smtp(&s, LIMIT).await.unwrap_err();
        assert_failure(
            &e,
            FailureKind::Certificate,
            &["certificate not trusted", "repos.widgets.email.ca_file"],
        );
    }

    // STARTTLS required, the server does not offer it.
    let s = with(
        1,
        Security::Plain,
        plain.port,
        Security::StartTls,
        certs.trust(),
    );
    let e = probe::probe_smtp(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::StartTls,
        &["STARTTLS", "repos.widgets.email.smtp.security"],
    );
}

#[tokio::test]
async fn smtp_probe_unreachable_and_hostile_servers() {
    let port = free_port();
    let s = with(1, Security::Plain, port, Security::Plain, Trust::public());
    let e = probe::probe_smtp(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::Refused,
        &[
            &format!("SMTP 127.0.0.1:{port}"),
            "connection refused",
            "repos.widgets.email.smtp.port",
        ],
    );

    for script in [
        &b"HELLO this is not smtp\r\n"[..],
        b"\x00\xff\xfe\xfd\r\n",
        b"554 go away\r\n",
        b"220-unfinished\r\n220",
    ] {
        let port = fake_server(Some(script)).await;
        let s = with(1, Security::Plain, port, Security::Plain, Trust::public());
        let e = probe::probe_smtp(&s, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind, FailureKind::Greeting | FailureKind::Timeout),
            "{script:?}: {e}"
        );
        assert!(e.to_string().contains("repos.widgets.email.smtp"), "{e}");
    }

    // A server streaming an endless line: cut off, not buffered forever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let flood = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let (mut tcp, _) = listener.accept().await.unwrap();
        let chunk = vec![b'A'; 64 * 1024];
        let _ = tcp.write_all(b"220").await;
        while tcp.write_all(&chunk).await.is_ok() {}
    });
    let s = with(1, Security::Plain, port, Security::Plain, Trust::public());
    let e = probe::probe_smtp(&s, LIMIT).await.unwrap_err();
    assert_failure(&e, FailureKind::Greeting, &["more than 1048576 bytes"]);
    flood.abort();

    // TLS asked of a plain-text server.
    let port = fake_server(Some(b"220 plain\r\n")).await;
    let s = with(1, Security::Plain, port, Security::Tls, Trust::public());
    let e = probe::probe_smtp(&s, LIMIT).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Tls, "{e}");
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare "remote" with one commit on `main`, under `root/remote.git`.
fn remote(root: &std::path::Path) -> std::path::PathBuf {
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("README"), "hi\n").unwrap();
    git(&seed, &["add", "README"]);
    git(&seed, &["commit", "-q", "-m", "first"]);
    git(root, &["clone", "-q", "--bare", "seed", "remote.git"]);
    root.join("remote.git")
}

#[tokio::test]
async fn mirror_states() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let repo = RepoId("widgets".to_owned());
    let t = Duration::from_secs(30);
    assert!(matches!(
        inspect_mirror(&state, &repo, t).await,
        MirrorState::Missing(_)
    ));

    let repos = state.join("repos").join("widgets");
    std::fs::create_dir_all(&repos).unwrap();
    let url = remote(root.path());
    git(
        &repos,
        &[
            "clone",
            "-q",
            "--mirror",
            url.to_str().unwrap(),
            "mirror.git",
        ],
    );
    match inspect_mirror(&state, &repo, t).await {
        MirrorState::Ready { branch, .. } => assert_eq!(branch, "main"),
        other => panic!("{other:?}"),
    }

    // Broken: a file, a plain directory, an empty bare repository.
    let mirror = repos.join("mirror.git");
    std::fs::remove_dir_all(&mirror).unwrap();
    std::fs::write(&mirror, "not a repo").unwrap();
    assert!(matches!(
        inspect_mirror(&state, &repo, t).await,
        MirrorState::Broken { reason, .. } if reason.contains("not a directory")
    ));
    std::fs::remove_file(&mirror).unwrap();
    std::fs::create_dir(&mirror).unwrap();
    std::fs::write(mirror.join("junk"), "x").unwrap();
    assert!(matches!(
        inspect_mirror(&state, &repo, t).await,
        MirrorState::Broken { reason, .. } if reason.contains("not a git repository")
    ));
    std::fs::remove_dir_all(&mirror).unwrap();
    git(
        &repos,
        &["init", "-q", "--bare", "-b", "main", "mirror.git"],
    );
    assert!(matches!(
        inspect_mirror(&state, &repo, t).await,
        MirrorState::Broken { reason, .. } if reason.contains("has no commit")
    ));
}

async fn airut_check(state: &std::path::Path) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_airut"))
        .arg("--config")
        .arg(state.join("airut.yaml"))
        .arg("--state-dir")
        .arg(state)
        .arg("check")
        .env("AIRUT_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn failed_count(out: &str) -> u32 {
    out.lines()
        .find_map(|l| l.strip_suffix(" check(s) failed"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_binary_reports_each_repo_mail_server_and_mirror() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let root = tempfile::tempdir().unwrap();
    let url = remote(root.path());
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let config = |imap_port: u16, password: &str, claude: &str| {
        format!(
            "config_version: 1\n\
             dashboard: {{host: 127.0.0.1, port: 0}}\n\
             sandbox: {{engine_socket: {}/no-engine.sock{claude}}}\n\
             repos:\n  widgets:\n    repo_url: {}\n    email:\n      \
             address: airut@example.net\n      username: {USER}\n      password: \"{password}\"\n      \
             imap: {{host: 127.0.0.1, port: {imap_port}, security: plain}}\n      \
             smtp: {{host: 127.0.0.1, port: {}, security: plain}}\n      \
             auth: {{trusted_authserv_id: mx.example.net, authorized_senders: [\"*@example.com\"]}}\n",
            state.display(),
            url.display(),
            receiver.port
        )
    };
    std::fs::write(state.join("airut.yaml"), config(dovecot.port, PASSWORD, "")).unwrap();
    let (_, good) = airut_check(&state).await;
    assert!(
        good.contains("ok    repo widgets IMAP: 127.0.0.1:"),
        "{good}"
    );
    assert!(good.contains("INBOX has 0 message(s)"), "{good}");
    assert!(
        good.contains("ok    repo widgets SMTP: 127.0.0.1:"),
        "{good}"
    );
    assert!(good.contains("warn  repo widgets mirror:"), "{good}");
    assert!(
        good.contains("the server clones it before the first task"),
        "{good}"
    );
    assert!(good.contains("ok    repo widgets: "), "{good}");
    assert!(
        good.contains("warn  claude code: stable is not cached yet"),
        "{good}"
    );
    // The engine is missing on purpose; no other failure.
    for line in good.lines().filter(|l| l.starts_with("FAIL")) {
        assert!(line.contains("container engine"), "{line}\n{good}");
    }

    // Wrong password, IMAP port with nothing on it, a broken mirror, a
    // missing Claude Code binary: each
    // its own FAIL line, and the exit code says so.
    let closed = free_port();
    std::fs::write(
        state.join("airut.yaml"),
        config(closed, "wrong", ", claude_path: /nonexistent/claude"),
    )
    .unwrap();
    let mirror = state.join("repos/widgets/mirror.git");
    std::fs::create_dir_all(&mirror).unwrap();
    let (ok, bad) = airut_check(&state).await;
    assert!(!ok, "{bad}");
    assert!(
        bad.contains(&format!(
            "FAIL  repo widgets IMAP: IMAP 127.0.0.1:{closed}: connection refused"
        )),
        "{bad}"
    );
    assert!(
        bad.contains("FAIL  repo widgets SMTP: SMTP 127.0.0.1:"),
        "{bad}"
    );
    assert!(bad.contains("authentication rejected"), "{bad}");
    assert!(bad.contains("FAIL  repo widgets mirror:"), "{bad}");
    assert!(
        bad.contains("FAIL  claude code: sandbox.claude_path /nonexistent/claude"),
        "{bad}"
    );
    assert!(
        !bad.contains("wrong"),
        "the password is never printed: {bad}"
    );
    assert_eq!(failed_count(&bad), failed_count(&good) + 4, "{good}\n{bad}");
}

#[tokio::test]
async fn imap_probe_with_oauth2_and_without_starttls() {
    use crate::email_imap::{
        introspection_server, scripted_token_server, token_server, token_source,
    };
    let (introspect, _i) = introspection_server().await;
    let (token_url, _t) = token_server().await;
    let dovecot = Dovecot::start(DovecotOptions {
        oauth2_introspection_url: Some(introspect),
        ..Default::default()
    })
    .await;
    let oauth = |url: String| {
        let mut s = with(
            dovecot.port,
            Security::Plain,
            1,
            Security::Plain,
            Trust::public(),
        );
        s.credentials = Credentials::OAuth2 {
            username: USER.to_owned(),
            tokens: token_source(url),
        };
        s
    };
    let report = probe::probe_imap(&oauth(token_url), LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dovecot.logs()));
    assert_eq!(report.mailbox, "INBOX");

    // The token endpoint refuses the client: a token failure, not a login.
    let (refusing, _) = scripted_token_server(
        400,
        r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application not found."}"#,
    )
    .await;
    let e = probe::probe_imap(&oauth(refusing), LIMIT)
        .await
        .unwrap_err();
    assert_failure(
        &e,
        FailureKind::Token,
        &[
            "OAuth2 token not obtained",
            "AADSTS700016",
            "repos.widgets.email.microsoft_oauth2",
        ],
    );
    assert!(!e.to_string().contains("s=cr&t"), "{e}");

    // The token endpoint is not there.
    let e = probe::probe_imap(
        &oauth(format!("http://127.0.0.1:{}/token", free_port())),
        LIMIT,
    )
    .await
    .unwrap_err();
    assert_failure(&e, FailureKind::Token, &["OAuth2 token not obtained"]);

    // STARTTLS asked of a server without TLS.
    let s = with(
        dovecot.port,
        Security::StartTls,
        1,
        Security::Plain,
        Trust::public(),
    );
    let e = probe::probe_imap(&s, LIMIT).await.unwrap_err();
    assert_failure(
        &e,
        FailureKind::StartTls,
        &["STARTTLS", "repos.widgets.email.imap.security"],
    );
}
