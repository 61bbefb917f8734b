//! The IMAP source against a private Dovecot (see `email_support`):
//! delivery by IMAP APPEND, IDLE and polling, mail recorded durably and
//! then deleted, read mail consumed too, rejected mail recorded and not
//! passed on, Dovecot killed and restarted, TLS and STARTTLS with a test
//! CA, a refused login, XOAUTH2 against Dovecot's oauth2 passdb, and a
//! crash (SIGKILL) between the durable append and the IMAP delete.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use airut::channels::email::config::{Credentials, EmailSettings};
use airut::channels::email::oauth::TokenSource;
use airut::channels::email::tls::Trust;
use airut::channels::email::{self, EmailChannel, HealthState, Intake, SourceHooks};
use airut::config::Secret;
use airut::config::email::{ImapMode, OAuth2Config, Security};
use airut::events::*;
use airut::log::{Log, LogOptions};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::email_support::*;

fn open_log(dir: &std::path::Path) -> Log {
    Log::open(dir, LogOptions::default()).unwrap()
}

fn start(settings: Arc<EmailSettings>, log: &Log) -> (EmailChannel, CancellationToken) {
    let cancel = CancellationToken::new();
    let channel = email::spawn(settings, log.clone(), cancel.clone());
    (channel, cancel)
}

async fn wait_health(
    health: &mut watch::Receiver<HealthState>,
    want: ChannelHealth,
) -> HealthState {
    let last = health.clone();
    let r = timeout(PATIENCE, health.wait_for(|h| h.health == want))
        .await
        .map(|r| r.unwrap().clone());
    r.unwrap_or_else(|_| panic!("health never became {want:?}; last: {:?}", last.borrow()))
}

async fn next_intake(channel: &mut EmailChannel) -> Intake {
    timeout(PATIENCE, channel.inbound.recv())
        .await
        .expect("no mail accepted in time")
        .expect("the source stopped")
}

/// Every intake event on the repo's email stream.
fn channel_events(log: &Log) -> Vec<Event> {
    let stream = StreamId::channel(&RepoId("widgets".to_owned()), "email");
    log.stream_iter(&stream, 1)
        .map(|r| r.unwrap().decode().unwrap())
        .collect()
}

async fn stop(channel: EmailChannel, cancel: CancellationToken) {
    cancel.cancel();
    timeout(PATIENCE, channel.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_records_then_deletes_every_mail_read_or_not() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let settings = settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    );
    // One mail waiting before the source starts, already marked read.
    let first = mail(
        "alice@example.com",
        "first@example.com",
        "Before start",
        "hello",
    );
    dovecot.deliver(&first, Some("(\\Seen)")).await;
    let (mut channel, cancel) = start(settings, &log);
    let got = next_intake(&mut channel).await;
    assert_eq!(got.message.subject, "Before start");
    assert_eq!(got.message.sender, "alice@example.com");
    assert_eq!(got.message.channel, "email");
    assert!(
        got.message.dedup_key.starts_with("imap:"),
        "{}",
        got.message.dedup_key
    );
    assert!(
        got.message.dedup_key.ends_with(":first@example.com"),
        "{}",
        got.message.dedup_key
    );
    assert_eq!(got.message.body.trim(), "hello");
    let raw = got.message.raw.clone().unwrap();
    assert_eq!(log.get_blob(&raw.hash).unwrap().unwrap(), first);
    // The event was durable before the delete.
    assert!(log.durable_head().unwrap() >= got.seq);
    wait_health(&mut channel.health, ChannelHealth::Healthy).await;
    dovecot.wait_empty().await;

    // IDLE: new mail wakes the listener (2 s is the goal; PATIENCE the bound).
    let second = mail(
        "bob@example.org",
        "second@example.org",
        "Idle wake",
        "again",
    );
    dovecot.deliver(&second, None).await;
    let got = next_intake(&mut channel).await;
    assert_eq!(got.message.subject, "Idle wake");
    assert_eq!(got.message.sender, "bob@example.org");
    dovecot.wait_empty().await;

    // A stranger's mail is recorded as rejected, deleted, and not passed on.
    let spam = mail("mallory@evil.example", "spam@evil.example", "Hi", "buy");
    dovecot.deliver(&spam, None).await;
    // Then an accepted one, to know the rejected one was handled first.
    let third = mail("alice@example.com", "third@example.com", "After spam", "x");
    dovecot.deliver(&third, None).await;
    let got = next_intake(&mut channel).await;
    assert_eq!(got.message.subject, "After spam");
    dovecot.wait_empty().await;
    stop(channel, cancel).await;

    let events = channel_events(&log);
    let rejected: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::MessageRejected(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, RejectReason::NotAuthorized);
    assert_eq!(rejected[0].sender, "mallory@evil.example");
    assert!(rejected[0].raw.is_some());
    let received = events
        .iter()
        .filter(|e| matches!(e, Event::MessageReceived(_)))
        .count();
    assert_eq!(received, 3);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ChannelHealthChanged(h) if h.health == ChannelHealth::Healthy
    )));
}

#[tokio::test]
async fn polling_finds_mail_without_idle() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let settings = settings(
        imap(dovecot.port, Security::Plain, ImapMode::Poll),
        smtp(1, Security::Plain),
        Trust::public(),
    );
    let (mut channel, cancel) = start(settings, &log);
    wait_health(&mut channel.health, ChannelHealth::Healthy).await;
    for i in 0..3 {
        let m = mail(
            "alice@example.com",
            &format!("poll{i}@example.com"),
            &format!("Poll {i}"),
            "x",
        );
        dovecot.deliver(&m, None).await;
    }
    let mut subjects = Vec::new();
    for _ in 0..3 {
        subjects.push(next_intake(&mut channel).await.message.subject);
    }
    assert_eq!(subjects, ["Poll 0", "Poll 1", "Poll 2"], "UID order");
    dovecot.wait_empty().await;
    stop(channel, cancel).await;
}

#[tokio::test]
async fn dovecot_killed_and_restarted_is_survived() {
    let mut dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let settings = settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    );
    let (mut channel, cancel) = start(settings, &log);
    wait_health(&mut channel.health, ChannelHealth::Healthy).await;
    dovecot.kill();
    let degraded = wait_health(&mut channel.health, ChannelHealth::Degraded).await;
    assert!(
        degraded.detail.contains("retrying in"),
        "{}",
        degraded.detail
    );
    // Down for a while: several failed attempts, then back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    dovecot.restart().await;
    wait_health(&mut channel.health, ChannelHealth::Healthy).await;
    let m = mail(
        "alice@example.com",
        "after@example.com",
        "After restart",
        "x",
    );
    dovecot.deliver(&m, None).await;
    assert_eq!(
        next_intake(&mut channel).await.message.subject,
        "After restart"
    );
    stop(channel, cancel).await;
    let healths: Vec<ChannelHealth> = channel_events(&log)
        .into_iter()
        .filter_map(|e| match e {
            Event::ChannelHealthChanged(h) => Some(h.health),
            _ => None,
        })
        .collect();
    assert_eq!(
        healths,
        [
            ChannelHealth::Healthy,
            ChannelHealth::Degraded,
            ChannelHealth::Healthy
        ],
        "one event per change, not per retry"
    );
}

#[tokio::test]
async fn implicit_tls_and_starttls_with_a_private_ca() {
    let certs = TestCerts::new();
    let dovecot = Dovecot::start(DovecotOptions {
        tls: Some(Arc::clone(&certs)),
        ..Default::default()
    })
    .await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    for (port, security) in [
        (dovecot.tls_port, Security::Tls),
        (dovecot.port, Security::StartTls),
    ] {
        let s = settings(
            imap(port, security, ImapMode::Idle),
            smtp(1, Security::Plain),
            certs.trust(),
        );
        let (mut channel, cancel) = start(s, &log);
        let id = format!("{security:?}@example.com");
        dovecot
            .deliver(
                &mail("alice@example.com", &id, &format!("{security:?}"), "x"),
                None,
            )
            .await;
        let got = next_intake(&mut channel).await;
        assert_eq!(got.message.subject, format!("{security:?}"));
        stop(channel, cancel).await;
    }
    dovecot.wait_empty().await;

    // Without the CA the server is not trusted: no session, health degraded,
    // the mail stays on the server.
    dovecot
        .deliver(
            &mail(
                "alice@example.com",
                "untrusted@example.com",
                "Untrusted",
                "x",
            ),
            None,
        )
        .await;
    let s = settings(
        imap(dovecot.tls_port, Security::Tls, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    );
    let (mut channel, cancel) = start(s, &log);
    let state = wait_health(&mut channel.health, ChannelHealth::Degraded).await;
    assert!(state.detail.contains("TLS"), "{}", state.detail);
    assert!(channel.inbound.try_recv().is_err());
    stop(channel, cancel).await;
    assert_eq!(dovecot.count().await, 1);
}

#[tokio::test]
async fn a_refused_login_is_failed_health_and_keeps_retrying() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let mut s = (*settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    ))
    .clone();
    s.credentials = Credentials::Password {
        username: USER.to_owned(),
        password: Secret::new("wrong"),
    };
    let (mut channel, cancel) = start(Arc::new(s), &log);
    let state = wait_health(&mut channel.health, ChannelHealth::Failed).await;
    assert!(state.detail.contains("login refused"), "{}", state.detail);
    assert!(!state.detail.contains("wrong"), "{}", state.detail);
    stop(channel, cancel).await;
}

/// A token-introspection endpoint for Dovecot's oauth2 passdb: the token
/// `good-token` is active for user `airut`.
pub(crate) async fn introspection_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/introspect",
        post(|body: String| async move {
            let active = body.contains("good-token");
            axum::Json(serde_json::json!({
                "active": if active { "true" } else { "false" },
                "username": "airut",
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/introspect"), task)
}

/// A client-credentials token endpoint handing out `good-token`.
pub(crate) async fn token_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/token",
        post(|body: String| async move {
            assert!(body.contains("grant_type=client_credentials"), "{body}");
            axum::Json(serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": "good-token",
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/token"), task)
}

#[tokio::test]
async fn xoauth2_login_with_a_client_credentials_token() {
    let (introspect, _i) = introspection_server().await;
    let (token_url, _t) = token_server().await;
    let dovecot = Dovecot::start(DovecotOptions {
        oauth2_introspection_url: Some(introspect),
        ..Default::default()
    })
    .await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let mut s = (*settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    ))
    .clone();
    s.credentials = Credentials::OAuth2 {
        username: USER.to_owned(),
        tokens: TokenSource::new(
            OAuth2Config {
                tenant_id: "tenant".to_owned(),
                client_id: "client".to_owned(),
                client_secret: Secret::new("s3cret"),
                token_url,
                scope: "https://outlook.office365.com/.default".to_owned(),
            },
            Trust::public(),
        ),
    };
    let (mut channel, cancel) = start(Arc::new(s), &log);
    dovecot
        .deliver(
            &mail("alice@example.com", "oauth@example.com", "Via XOAUTH2", "x"),
            None,
        )
        .await;
    let got = timeout(PATIENCE, channel.inbound.recv()).await;
    let got = match got {
        Ok(Some(g)) => g,
        _ => panic!(
            "no mail via XOAUTH2; health {:?}\n{}",
            channel.health.borrow(),
            dovecot.logs()
        ),
    };
    assert_eq!(got.message.subject, "Via XOAUTH2");
    stop(channel, cancel).await;
}

// === crash between the durable append and the IMAP delete ===

/// Env var that turns [`crash_child`] into the crash test's child process:
/// `<imap port>:<store dir>`.
const CRASH_CHILD_ENV: &str = "AIRUT_EMAIL_CRASH_CHILD";

/// The child of [`sigkill_between_append_and_delete_processes_once`]: runs
/// the source until the first mail's event is durable, says so, and hangs
/// before deleting it. Without the env var (a normal run) it does nothing.
#[test]
fn crash_child() {
    let Some(arg) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let arg = arg.into_string().unwrap();
    let (port, dir) = arg.split_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let log = open_log(std::path::Path::new(dir));
        let settings = settings(
            imap(port, Security::Plain, ImapMode::Idle),
            smtp(1, Security::Plain),
            Trust::public(),
        );
        let hooks = SourceHooks {
            after_append: Some(Arc::new(|uid| {
                use std::io::Write;
                println!("APPENDED {uid}");
                std::io::stdout().flush().unwrap();
                loop {
                    std::thread::park();
                }
            })),
        };
        let mut channel = email::spawn_with_hooks(settings, log, CancellationToken::new(), hooks);
        let _ = channel.inbound.recv().await;
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn sigkill_between_append_and_delete_processes_once() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let m = mail("alice@example.com", "crash@example.com", "Crash", "once");
    dovecot.deliver(&m, None).await;

    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "email_imap::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CRASH_CHILD_ENV,
            format!("{}:{}", dovecot.port, store.path().display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = timeout(PATIENCE, lines.next_line())
            .await
            .expect("the child made no progress")
            .unwrap()
            .expect("the child exited before appending: does the test filter still match?");
        if line.contains("APPENDED ") {
            break;
        }
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    // Recorded, but still on the server.
    assert_eq!(dovecot.count().await, 1);

    let log = open_log(store.path());
    let settings = settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    );
    let (mut channel, cancel) = start(settings, &log);
    dovecot.wait_empty().await;
    // A later mail flows normally; the crashed one was not passed on again.
    dovecot
        .deliver(
            &mail("alice@example.com", "later@example.com", "Later", "x"),
            None,
        )
        .await;
    assert_eq!(next_intake(&mut channel).await.message.subject, "Later");
    stop(channel, cancel).await;
    let received: Vec<String> = channel_events(&log)
        .into_iter()
        .filter_map(|e| match e {
            Event::MessageReceived(r) => Some(r.dedup_key),
            _ => None,
        })
        .collect();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received[0].ends_with(":crash@example.com"), "{received:?}");
    assert!(received[1].ends_with(":later@example.com"), "{received:?}");
}

// === the OAuth2 token source against a local token endpoint ===

/// A token endpoint answering `answer` (status, body) and counting requests.
pub(crate) async fn scripted_token_server(
    status: u16,
    body: &'static str,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::post;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/t/oauth2/v2.0/token",
        post(move |form: String| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                assert!(form.contains("client_secret=s%3Dcr%26t"), "{form}");
                assert!(
                    form.contains("scope=https%3A%2F%2Foutlook.office365.com%2F.default"),
                    "{form}"
                );
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/t/oauth2/v2.0/token"), hits)
}

pub(crate) fn token_source(url: String) -> TokenSource {
    TokenSource::new(
        OAuth2Config {
            tenant_id: "t".to_owned(),
            client_id: "c".to_owned(),
            client_secret: Secret::new("s=cr&t"),
            token_url: url,
            scope: "https://outlook.office365.com/.default".to_owned(),
        },
        Trust::public(),
    )
}

#[tokio::test]
async fn oauth2_tokens_are_cached_and_refreshed_before_expiry() {
    use std::sync::atomic::Ordering;
    let (url, hits) = scripted_token_server(
        200,
        r#"{"access_token":"tok-1","expires_in":3599,"token_type":"Bearer"}"#,
    )
    .await;
    let tokens = token_source(url);
    assert_eq!(tokens.token().await.unwrap().expose(), "tok-1");
    assert_eq!(tokens.token().await.unwrap().expose(), "tok-1");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "cached");
    let sasl = tokens.xoauth2("airut@example.net").await.unwrap();
    assert_eq!(
        sasl.expose(),
        "user=airut@example.net\x01auth=Bearer tok-1\x01\x01"
    );

    // A token with less than the refresh margin left is fetched again.
    let (url, hits) =
        scripted_token_server(200, r#"{"access_token":"short","expires_in":"60"}"#).await;
    let tokens = token_source(url);
    tokens.token().await.unwrap();
    tokens.token().await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2, "refreshed before expiry");
}

#[tokio::test]
async fn oauth2_errors_are_clear_and_never_show_the_secret() {
    use airut::channels::email::oauth::OAuthError;
    let (url, _) = scripted_token_server(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}"#,
    )
    .await;
    let e = token_source(url).token().await.unwrap_err();
    assert!(
        matches!(e, OAuthError::Refused { status: 401, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("invalid_client: AADSTS7000215"), "{text}");
    assert!(
        !text.contains("s=cr&t") && !text.contains("Trace"),
        "{text}"
    );

    let (url, _) = scripted_token_server(200, "<html>proxy login</html>").await;
    let e = token_source(url).token().await.unwrap_err();
    assert!(matches!(e, OAuthError::BadResponse { .. }), "{e:?}");
    let (url, _) = scripted_token_server(200, r#"{"token_type":"Bearer"}"#).await;
    let e = token_source(url).token().await.unwrap_err();
    assert!(e.to_string().contains("no access_token"), "{e}");

    let e = token_source(format!("http://127.0.0.1:{}/token", free_port()))
        .token()
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Transport { .. }), "{e:?}");
}

#[tokio::test]
async fn a_mail_over_the_size_limit_is_rejected_without_downloading_it() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let mut s = (*settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    ))
    .clone();
    s.parse.max_message_bytes = 4096;
    let big = mail(
        "alice@example.com",
        "big@example.com",
        "Big",
        &"x".repeat(10_000),
    );
    dovecot.deliver(&big, None).await;
    let small = mail("alice@example.com", "small@example.com", "Small", "x");
    dovecot.deliver(&small, None).await;
    let (mut channel, cancel) = start(Arc::new(s), &log);
    assert_eq!(next_intake(&mut channel).await.message.subject, "Small");
    dovecot.wait_empty().await;
    stop(channel, cancel).await;
    let rejected: Vec<MessageRejectedV1> = channel_events(&log)
        .into_iter()
        .filter_map(|e| match e {
            Event::MessageRejected(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1);
    let r = &rejected[0];
    assert_eq!(r.reason, RejectReason::Malformed);
    assert!(r.detail.contains("only its header"), "{}", r.detail);
    assert_eq!(r.sender, "Alice <alice@example.com>");
    assert!(r.dedup_key.ends_with(":big@example.com"), "{}", r.dedup_key);
    let header = log
        .get_blob(&r.raw.as_ref().unwrap().hash)
        .unwrap()
        .unwrap();
    assert!(
        header.len() < 1000 && header.ends_with(b"\r\n\r\n"),
        "{}",
        header.len()
    );
}

// === figures (not a test of speed: run by hand, prints numbers) ===

/// IDLE wake latency (APPEND done → mail recorded and passed on) and the
/// end-to-end drain rate (fetch, inspect, durable append, delete).
/// `cargo test --test tests email_imap::bench_idle -- --ignored --nocapture`
#[tokio::test]
#[ignore = "benchmark: prints figures"]
async fn bench_idle_wake_latency_and_drain_rate() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let settings = settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    );
    let (mut channel, cancel) = start(Arc::clone(&settings), &log);
    wait_health(&mut channel.health, ChannelHealth::Healthy).await;
    let mut waits = Vec::new();
    for i in 0..30 {
        // Let the source settle into IDLE.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = mail(
            "alice@example.com",
            &format!("lat{i}@example.com"),
            "latency",
            "x",
        );
        let mut s = dovecot.client().await;
        s.append("INBOX", None, None, &m).await.unwrap();
        let appended = tokio::time::Instant::now();
        next_intake(&mut channel).await;
        waits.push(appended.elapsed());
        let _ = s.logout().await;
    }
    stop(channel, cancel).await;
    waits.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "IDLE wake latency over {} mails (APPEND done -> message.received durable and passed on): \
         min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        waits.len(),
        ms(waits[0]),
        ms(waits[waits.len() / 2]),
        ms(waits[waits.len() * 9 / 10]),
        ms(waits[waits.len() - 1])
    );

    let n = 200;
    for i in 0..n {
        let m = mail(
            "alice@example.com",
            &format!("drain{i}@example.com"),
            "drain",
            &"body ".repeat(200),
        );
        dovecot.deliver(&m, None).await;
    }
    let (mut channel, cancel) = start(settings, &log);
    let start = tokio::time::Instant::now();
    for _ in 0..n {
        next_intake(&mut channel).await;
    }
    let secs = start.elapsed().as_secs_f64();
    stop(channel, cancel).await;
    println!(
        "drain of {n} waiting mails (connect, fetch, inspect, durable append, delete + expunge each): \
         {:.0} mails/s ({secs:.2} s)",
        n as f64 / secs
    );
}

#[tokio::test]
async fn idle_is_reissued_and_mail_still_flows() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let mut s = (*settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    ))
    .clone();
    s.imap.idle_timeout = Duration::from_millis(300);
    let (mut channel, cancel) = start(Arc::new(s), &log);
    wait_health(&mut channel.health, ChannelHealth::Healthy).await;
    // Several IDLE rounds end by timeout (DONE, look again, IDLE again).
    tokio::time::sleep(Duration::from_secs(2)).await;
    dovecot
        .deliver(
            &mail("alice@example.com", "reissued@example.com", "Reissued", "x"),
            None,
        )
        .await;
    assert_eq!(next_intake(&mut channel).await.message.subject, "Reissued");
    assert_eq!(channel.health.borrow().health, ChannelHealth::Healthy);
    stop(channel, cancel).await;
    let log_text = dovecot.logs();
    assert!(!log_text.contains("Error"), "{log_text}");
}

/// A fake IMAP server that writes `script` to every connection, then
/// reads until the client goes away (an empty script closes at once).
async fn fake_imap(script: &'static [u8]) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if script.is_empty() {
                    return; // close at once
                }
                let _ = tcp.write_all(script).await;
                let mut buf = [0u8; 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[tokio::test]
async fn a_hostile_or_broken_server_degrades_health_without_a_panic() {
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    for script in [
        &b"garbage that is not IMAP\r\n"[..],
        b"\x00\xff\xfe\r\n",
        b"* BYE go away\r\n",
        b"",
        b"* OK ready\r\n",
    ] {
        let port = fake_imap(script).await;
        let mut s = (*settings(
            imap(port, Security::Plain, ImapMode::Idle),
            smtp(1, Security::Plain),
            Trust::public(),
        ))
        .clone();
        if script == b"* OK ready\r\n" {
            // A greeting, then silence: the login times out (bounded wait)
            // only after CONNECT_TIMEOUT; a TLS handshake against plain
            // text fails at once instead.
            s.imap.security = Security::Tls;
            s.imap.host = "localhost".to_owned();
        }
        let (mut channel, cancel) = start(Arc::new(s), &log);
        let state = timeout(
            PATIENCE,
            channel
                .health
                .wait_for(|h| matches!(h.health, ChannelHealth::Degraded | ChannelHealth::Failed)),
        )
        .await
        .unwrap_or_else(|_| panic!("no failure for {script:?}"))
        .unwrap()
        .clone();
        assert!(
            state.detail.contains("retrying in"),
            "{script:?}: {}",
            state.detail
        );
        assert!(channel.inbound.try_recv().is_err());
        stop(channel, cancel).await;
    }
}

#[tokio::test]
async fn a_refused_oauth2_client_is_failed_health() {
    let (url, _) = scripted_token_server(
        400,
        r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application not found."}"#,
    )
    .await;
    let port = fake_imap(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n").await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let mut s = (*settings(
        imap(port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    ))
    .clone();
    s.credentials = Credentials::OAuth2 {
        username: USER.to_owned(),
        tokens: token_source(url),
    };
    let (mut channel, cancel) = start(Arc::new(s), &log);
    let state = wait_health(&mut channel.health, ChannelHealth::Failed).await;
    assert!(state.detail.contains("AADSTS700016"), "{}", state.detail);
    assert!(!state.detail.contains("s=cr&t"), "{}", state.detail);
    stop(channel, cancel).await;
}

#[tokio::test]
async fn a_missing_mailbox_is_failed_health() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let mut s = (*settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    ))
    .clone();
    s.imap.mailbox = "Nope".to_owned();
    let (mut channel, cancel) = start(Arc::new(s), &log);
    let state = wait_health(&mut channel.health, ChannelHealth::Failed).await;
    assert!(
        state.detail.contains("cannot open mailbox Nope"),
        "{}",
        state.detail
    );
    stop(channel, cancel).await;
}

#[tokio::test]
async fn intake_goes_on_when_nobody_reads_the_notifications() {
    let dovecot = Dovecot::start(DovecotOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = open_log(store.path());
    let settings = settings(
        imap(dovecot.port, Security::Plain, ImapMode::Idle),
        smtp(1, Security::Plain),
        Trust::public(),
    );
    let (channel, cancel) = start(settings, &log);
    let EmailChannel { inbound, task, .. } = channel;
    drop(inbound);
    for i in 0..3 {
        let m = mail(
            "alice@example.com",
            &format!("unread{i}@example.com"),
            "x",
            "x",
        );
        dovecot.deliver(&m, None).await;
    }
    dovecot.wait_empty().await;
    cancel.cancel();
    timeout(PATIENCE, task).await.unwrap().unwrap();
    let received = channel_events(&log)
        .into_iter()
        .filter(|e| matches!(e, Event::MessageReceived(_)))
        .count();
    assert_eq!(received, 3);
}
