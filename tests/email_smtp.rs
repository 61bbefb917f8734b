//! The SMTP sink against a real SMTP receiver on loopback (written here,
//! speaking ESMTP over TCP, STARTTLS and implicit TLS with a test CA) that
//! keeps every mail it accepts, so the tests read the exact MIME that
//! lettre put on the wire: threading headers, subject, alternative parts,
//! attachments (25 MB included), Auto-Submitted; the retry on a transient
//! failure, the failure events, and at-most-once per key.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use airut::channels::email::config::EmailSettings;
use airut::channels::email::sink::ACK_TEXT;
use airut::channels::email::tls::Trust;
use airut::channels::email::{
    EmailSink, OutboundAttachment, OutboundReply, ParseContext, SendOutcome, parse,
};
use airut::config::email::{ImapMode, Security};
use airut::events::*;
use airut::log::{ExpectedVersion, Log, LogOptions, NewEvent, StreamAppend};
use mail_parser::{MessageParser, MimeHeaders};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::email_support::*;

/// A mail the receiver accepted.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
    tls: bool,
    authenticated: bool,
}

#[derive(Default, Clone)]
pub(crate) struct ReceiverOptions {
    /// Offer STARTTLS with these certificates.
    pub(crate) starttls: Option<Arc<TestCerts>>,
    /// TLS from the first byte with these certificates.
    pub(crate) implicit_tls: Option<Arc<TestCerts>>,
    /// Answers to successive DATA ends (then 250).
    pub(crate) data_answers: Vec<&'static str>,
}

pub(crate) struct Receiver {
    pub(crate) port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

// === impl Receiver ===

impl Receiver {
    pub(crate) async fn start(options: ReceiverOptions) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(options.data_answers.clone()));
        let kept = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let options = options.clone();
                let kept = Arc::clone(&kept);
                let answers = Arc::clone(&answers);
                tokio::spawn(async move {
                    let _ = session(tcp, options, kept, answers).await;
                });
            }
        });
        Receiver {
            port,
            received,
            task,
        }
    }

    pub(crate) fn mails(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn acceptor(certs: &TestCerts) -> tokio_rustls::TlsAcceptor {
    let chain: Vec<_> = rustls_pemfile::certs(&mut certs.cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut certs.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// One SMTP session (RFC 5321, the parts lettre uses).
async fn session(
    tcp: tokio::net::TcpStream,
    options: ReceiverOptions,
    kept: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<Vec<&'static str>>>,
) -> std::io::Result<()> {
    let mut tls = false;
    let stream: Box<dyn Io> = match &options.implicit_tls {
        Some(certs) => {
            tls = true;
            Box::new(acceptor(certs).accept(tcp).await?)
        }
        None => Box::new(tcp),
    };
    let mut io = BufReader::new(stream);
    io.write_all(b"220 localhost ESMTP airut-test\r\n").await?;
    io.flush().await?;
    let mut authenticated = false;
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let mut r = "250-localhost\r\n".to_owned();
            if options.starttls.is_some() && !tls {
                r.push_str("250-STARTTLS\r\n");
            }
            r.push_str("250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n");
            r
        } else if upper.starts_with("STARTTLS") {
            let Some(certs) = &options.starttls else {
                io.write_all(b"502 no\r\n").await?;
                continue;
            };
            io.write_all(b"220 go ahead\r\n").await?;
            io.flush().await?;
            let plain = io.into_inner();
            let secured = acceptor(certs).accept(plain).await?;
            io = BufReader::new(Box::new(secured) as Box<dyn Io>);
            tls = true;
            continue;
        } else if upper.starts_with("AUTH PLAIN") {
            let arg = line.trim_end().get(11..).unwrap_or("").trim().to_owned();
            let arg = if arg.is_empty() {
                io.write_all(b"334 \r\n").await?;
                io.flush().await?;
                let mut l = String::new();
                io.read_line(&mut l).await?;
                l.trim().to_owned()
            } else {
                arg
            };
            // base64("\0airut\0correct horse")
            if arg == "AGFpcnV0AGNvcnJlY3QgaG9yc2U=" {
                authenticated = true;
                "235 ok\r\n".to_owned()
            } else {
                "535 bad credentials\r\n".to_owned()
            }
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = line.trim_end().get(10..).unwrap_or("").to_owned();
            rcpt_to.clear();
            "250 ok\r\n".to_owned()
        } else if upper.starts_with("RCPT TO:") {
            rcpt_to.push(line.trim_end().get(8..).unwrap_or("").to_owned());
            "250 ok\r\n".to_owned()
        } else if upper.starts_with("DATA") {
            io.write_all(b"354 go on\r\n").await?;
            io.flush().await?;
            let mut data = Vec::new();
            let mut l = Vec::new();
            loop {
                l.clear();
                if io.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let unstuffed = if l.starts_with(b"..") {
                    &l[1..]
                } else {
                    &l[..]
                };
                data.extend_from_slice(unstuffed);
            }
            let answer = {
                let mut a = answers.lock().unwrap();
                if a.is_empty() {
                    None
                } else {
                    Some(a.remove(0))
                }
            };
            match answer {
                Some(a) => format!("{a}\r\n"),
                None => {
                    kept.lock().unwrap().push(Received {
                        mail_from: mail_from.clone(),
                        rcpt_to: rcpt_to.clone(),
                        data,
                        tls,
                        authenticated,
                    });
                    "250 queued\r\n".to_owned()
                }
            }
        } else if upper.starts_with("QUIT") {
            io.write_all(b"221 bye\r\n").await?;
            io.flush().await?;
            return Ok(());
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            "250 ok\r\n".to_owned()
        } else {
            "500 unknown\r\n".to_owned()
        };
        io.write_all(reply.as_bytes()).await?;
        io.flush().await?;
    }
}

fn sink_for(port: u16, security: Security, trust: Trust, log: &Log) -> EmailSink {
    let s: Arc<EmailSettings> = settings(
        imap(1, Security::Plain, ImapMode::Idle),
        smtp(port, security),
        trust,
    );
    EmailSink::new(s, log.clone())
}

fn conversation() -> ConversationId {
    ConversationId(0x1a2b_3c4d)
}

/// The mail being answered, as the source recorded it.
fn incoming() -> MessageReceivedV1 {
    MessageReceivedV1 {
        repo: RepoId("widgets".to_owned()),
        channel: "email".to_owned(),
        dedup_key: "imap:1:7:orig@example.com".to_owned(),
        message_id: "orig@example.com".to_owned(),
        // In-Reply-To first, then References (as parse records them).
        thread_keys: vec!["b@example.com".to_owned(), "a@example.com".to_owned()],
        sender: "alice@example.com".to_owned(),
        sender_display: "Alice <alice@example.com>".to_owned(),
        conversation_ref: None,
        subject: "RE: Flaky test".to_owned(),
        body: "please fix".to_owned(),
        raw: None,
        attachments: Vec::new(),
        model_hint: None,
    }
}

const BODY: &str = "Fixed it.\n\n| test | before | after |\n|---|---|---|\n| rounding | fail | pass |\n\n<script>x()</script>";

fn reply(key: &str) -> OutboundReply {
    OutboundReply::answering(
        &incoming(),
        key,
        conversation(),
        Some(TaskId::new()),
        ReplyKind::Result,
        BODY,
    )
}

fn stream_events(log: &Log) -> Vec<(Event, EventId, Option<EventId>)> {
    log.stream_iter(&conversation().stream(), 1)
        .map(|r| {
            let r = r.unwrap();
            (r.decode().unwrap(), r.header.event_id, r.header.causation)
        })
        .collect()
}

fn header<'a>(m: &'a mail_parser::Message<'a>, name: &str) -> String {
    // Unfolded (long headers are folded on the wire).
    m.header_raw(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .replace("\r\n ", " ")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_reply_is_threaded_alternative_mime_with_attachments() {
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let mut r = reply("result:1");
    r.attachments.push(OutboundAttachment {
        name: "report.csv".to_owned(),
        content_type: "text/csv".to_owned(),
        data: b"a,b\n1,2\n".to_vec(),
    });
    r.attachments.push(OutboundAttachment {
        name: "chart.bin".to_owned(),
        content_type: "not a mime type".to_owned(),
        data: vec![0, 1, 2, 255],
    });
    let outcome = sink.send(r).await.unwrap();
    let SendOutcome::Sent {
        message_id,
        attempts,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(attempts, 1);
    let mails = receiver.mails();
    assert_eq!(mails.len(), 1);
    let got = &mails[0];
    if std::env::var_os("AIRUT_SHOW_MIME").is_some() {
        println!("{}", String::from_utf8_lossy(&got.data));
    }
    assert_eq!(got.mail_from, "<airut@example.net>");
    assert_eq!(got.rcpt_to, ["<alice@example.com>"]);
    assert!(!got.tls);
    assert!(got.authenticated, "AUTH is used when offered");

    let m = MessageParser::new().parse(&got.data).unwrap();
    assert_eq!(header(&m, "From"), "Airut <airut@example.net>");
    assert_eq!(header(&m, "To"), "alice@example.com");
    assert_eq!(header(&m, "Subject"), "Re: [ID:1a2b3c4d] Flaky test");
    assert_eq!(header(&m, "Message-ID"), message_id);
    let id = message_id
        .trim_start_matches("<airut.1a2b3c4d.")
        .trim_end_matches("@example.net>");
    let (ts, nonce) = id.split_once('.').unwrap();
    assert!(ts.parse::<u64>().unwrap() > 1_700_000_000, "{message_id}");
    assert!(
        nonce.len() == 8 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
        "{message_id}"
    );
    assert_eq!(header(&m, "In-Reply-To"), "<orig@example.com>");
    assert_eq!(
        header(&m, "References"),
        "<a@example.com> <b@example.com> <orig@example.com>"
    );
    assert_eq!(header(&m, "Auto-Submitted"), "auto-replied");
    assert!(m.date().is_some(), "Date header");

    // multipart/mixed { multipart/alternative { text/plain, text/html }, 2 files }
    let root = m.root_part();
    assert_eq!(root.content_type().unwrap().ctype(), "multipart");
    assert_eq!(root.content_type().unwrap().subtype(), Some("mixed"));
    assert_eq!(m.text_body.len(), 1);
    assert_eq!(
        m.body_text(0).unwrap().replace("\r\n", "\n").trim_end(),
        BODY
    );
    let html = m.body_html(0).unwrap();
    assert!(
        html.contains("<table style=\"border:1px solid #ccc;"),
        "{html}"
    );
    assert!(html.contains("<td style=\""), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    let alternative = m
        .parts
        .iter()
        .find(|p| p.content_type().and_then(|c| c.subtype()) == Some("alternative"))
        .expect("an alternative part");
    assert!(
        matches!(&alternative.body, mail_parser::PartType::Multipart(parts) if parts.len() == 2)
    );
    let files: Vec<_> = m.attachments().collect();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].attachment_name(), Some("report.csv"));
    assert_eq!(files[0].contents(), b"a,b\n1,2\n");
    assert_eq!(files[1].attachment_name(), Some("chart.bin"));
    assert_eq!(files[1].content_type().unwrap().ctype(), "application");
    assert_eq!(files[1].contents(), [0, 1, 2, 255]);

    // The log: reply.started, then reply.sent caused by it.
    let events = stream_events(&log);
    assert_eq!(events.len(), 2);
    let (Event::ReplyStarted(started), started_id, _) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(started.key, "result:1");
    assert_eq!(started.message_id, message_id);
    let (Event::ReplySent(sent), _, cause) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(cause, &Some(*started_id));
    assert_eq!(sent.message_id, message_id);
    assert_eq!(sent.in_reply_to, "<orig@example.com>");
    assert_eq!(sent.attachments, ["report.csv", "chart.bin"]);

    // A reply to our mail maps back to the conversation.
    let answer = format!(
        "From: alice@example.com\r\nIn-Reply-To: {message_id}\r\nSubject: Re: whatever\r\n\r\nthanks\r\n"
    );
    let parsed = parse(answer.as_bytes(), &ParseContext::for_test()).unwrap();
    assert_eq!(parsed.conversation.unwrap().id, conversation());
}

#[tokio::test]
async fn starttls_and_implicit_tls_carry_a_25_mb_attachment() {
    let certs = TestCerts::new();
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let big: Vec<u8> = (0..25_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for (security, options) in [
        (
            Security::StartTls,
            ReceiverOptions {
                starttls: Some(Arc::clone(&certs)),
                ..Default::default()
            },
        ),
        (
            Security::Tls,
            ReceiverOptions {
                implicit_tls: Some(Arc::clone(&certs)),
                ..Default::default()
            },
        ),
    ] {
        let receiver = Receiver::start(options).await;
        let sink = sink_for(receiver.port, security, certs.trust(), &log);
        let mut r = reply(&format!("result:{security:?}"));
        r.attachments.push(OutboundAttachment {
            name: "dump.bin".to_owned(),
            content_type: "application/octet-stream".to_owned(),
            data: big.clone(),
        });
        let outcome = sink.send(r).await.unwrap();
        assert!(matches!(outcome, SendOutcome::Sent { .. }), "{outcome:?}");
        let mails = receiver.mails();
        assert_eq!(mails.len(), 1);
        assert!(mails[0].tls && mails[0].authenticated, "{security:?}");
        let m = MessageParser::new().parse(&mails[0].data).unwrap();
        let file = m.attachments().next().unwrap();
        assert_eq!(file.attachment_name(), Some("dump.bin"));
        assert_eq!(file.contents().len(), 25_000_000);
        assert!(file.contents() == big.as_slice(), "content differs");
    }

    // STARTTLS required but not offered: refused, recorded, nothing sent.
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let sink = sink_for(receiver.port, Security::StartTls, certs.trust(), &log);
    let outcome = sink.send(reply("result:no-starttls")).await.unwrap();
    assert!(matches!(outcome, SendOutcome::Failed { .. }), "{outcome:?}");
    assert!(receiver.mails().is_empty());

    // An untrusted certificate: refused.
    let receiver = Receiver::start(ReceiverOptions {
        implicit_tls: Some(Arc::clone(&certs)),
        ..Default::default()
    })
    .await;
    let sink = sink_for(receiver.port, Security::Tls, Trust::public(), &log);
    let outcome = sink.send(reply("result:untrusted")).await.unwrap();
    assert!(matches!(outcome, SendOutcome::Failed { .. }), "{outcome:?}");
}

#[tokio::test]
async fn one_retry_on_a_transient_failure_then_reply_failed() {
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();

    // 451 once: retried, delivered once.
    let receiver = Receiver::start(ReceiverOptions {
        data_answers: vec!["451 4.3.0 try later"],
        ..Default::default()
    })
    .await;
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let outcome = sink.send(reply("result:retry")).await.unwrap();
    assert!(
        matches!(outcome, SendOutcome::Sent { attempts: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(receiver.mails().len(), 1);

    // 451 twice: reply.failed after 2 attempts.
    let receiver = Receiver::start(ReceiverOptions {
        data_answers: vec!["451 4.3.0 try later", "452 4.3.1 still full"],
        ..Default::default()
    })
    .await;
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let outcome = sink.send(reply("result:twice")).await.unwrap();
    let SendOutcome::Failed { error } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(error.contains("452"), "{error}");
    assert!(receiver.mails().is_empty());

    // 550: permanent, not retried.
    let receiver = Receiver::start(ReceiverOptions {
        data_answers: vec!["550 5.7.1 rejected", "250 would have worked"],
        ..Default::default()
    })
    .await;
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let outcome = sink.send(reply("result:permanent")).await.unwrap();
    assert!(matches!(outcome, SendOutcome::Failed { .. }), "{outcome:?}");
    assert!(receiver.mails().is_empty());

    let failed: Vec<(u32, String)> = stream_events(&log)
        .into_iter()
        .filter_map(|(e, _, _)| match e {
            Event::ReplyFailed(f) => Some((f.attempts, f.error)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, 2);
    assert_eq!(failed[1].0, 1);
    assert!(failed[1].1.contains("550"), "{failed:?}");
}

#[tokio::test]
async fn a_key_is_sent_at_most_once_even_across_a_crash() {
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let first = sink.send(reply("result:once")).await.unwrap();
    let second = sink.send(reply("result:once")).await.unwrap();
    let SendOutcome::Sent { message_id, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(second, SendOutcome::AlreadySent { message_id });
    assert_eq!(receiver.mails().len(), 1);

    // A crash after reply.started and before the outcome: never resent.
    log.append(StreamAppend {
        stream: conversation().stream(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event: Event::ReplyStarted(ReplyStartedV1 {
                conversation: conversation(),
                task: None,
                channel: "email".to_owned(),
                kind: ReplyKind::Result,
                key: "result:crashed".to_owned(),
                message_id: "<airut.1a2b3c4d.1.00000000@example.net>".to_owned(),
            }),
            causation: None,
        }],
    })
    .await
    .unwrap();
    let outcome = sink.send(reply("result:crashed")).await.unwrap();
    let SendOutcome::Failed { error } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(error.contains("may or may not"), "{error}");
    assert_eq!(receiver.mails().len(), 1);
    // And asked again, the recorded failure stands.
    let again = sink.send(reply("result:crashed")).await.unwrap();
    assert!(matches!(again, SendOutcome::Failed { .. }), "{again:?}");
    assert_eq!(receiver.mails().len(), 1);
}

#[tokio::test]
async fn acknowledgement_and_error_mails() {
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let cause = EventId::new();
    let ack = OutboundReply::acknowledgement(
        &incoming(),
        cause,
        conversation(),
        None,
        Some("https://airut.example"),
    );
    assert!(matches!(
        sink.send(ack).await.unwrap(),
        SendOutcome::Sent { .. }
    ));
    let err = OutboundReply::error(
        &incoming(),
        cause,
        conversation(),
        None,
        "The task failed: out of memory.",
    );
    assert!(matches!(
        sink.send(err).await.unwrap(),
        SendOutcome::Sent { .. }
    ));
    let mails = receiver.mails();
    assert_eq!(mails.len(), 2);
    let ack = MessageParser::new().parse(&mails[0].data).unwrap();
    let text = ack.body_text(0).unwrap();
    assert!(text.starts_with(ACK_TEXT), "{text}");
    assert!(
        text.contains("https://airut.example/conversation/1a2b3c4d"),
        "{text}"
    );
    let html = ack.body_html(0).unwrap();
    assert!(
        html.contains("<a href=\"https://airut.example/conversation/1a2b3c4d\">"),
        "{html}"
    );
    assert_eq!(header(&ack, "Auto-Submitted"), "auto-replied");
    let err = MessageParser::new().parse(&mails[1].data).unwrap();
    assert_eq!(header(&err, "Subject"), "Re: [ID:1a2b3c4d] Flaky test");
    assert!(err.body_text(0).unwrap().contains("out of memory"));
    let kinds: Vec<ReplyKind> = stream_events(&log)
        .into_iter()
        .filter_map(|(e, _, _)| match e {
            Event::ReplySent(s) => Some(s.kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [ReplyKind::Acknowledgement, ReplyKind::Error]);
}

#[tokio::test]
async fn hostile_fields_cannot_inject_headers_or_recipients() {
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let mut r = reply("result:hostile");
    r.subject = "Hi\r\nBcc: evil@attacker.example\r\nX-Evil: 1".to_owned();
    r.in_reply_to = "orig@example.com>\r\nBcc: evil@attacker.example".to_owned();
    r.references = vec!["<a@x>\r\nCc: evil@attacker.example".to_owned()];
    r.attachments.push(OutboundAttachment {
        name: "../../etc/passwd\r\nX-Evil: 2\".txt".to_owned(),
        content_type: "text/plain\r\nX-Evil: 3".to_owned(),
        data: b"x".to_vec(),
    });
    let outcome = sink.send(r).await.unwrap();
    assert!(matches!(outcome, SendOutcome::Sent { .. }), "{outcome:?}");
    let got = &receiver.mails()[0];
    assert_eq!(got.rcpt_to, ["<alice@example.com>"]);
    let m = MessageParser::new().parse(&got.data).unwrap();
    assert!(m.header_raw("Bcc").is_none());
    assert!(m.header_raw("Cc").is_none());
    assert!(m.header_raw("X-Evil").is_none());
    let text = String::from_utf8_lossy(&got.data);
    assert!(!text.contains("\r\nX-Evil"), "{text}");
    assert!(!text.contains("\r\nBcc"), "{text}");

    // A recipient that is not an address: refused before anything is sent.
    let mut r = reply("result:bad-rcpt");
    r.to = "alice@example.com, evil@attacker.example".to_owned();
    let outcome = sink.send(r).await.unwrap();
    assert!(matches!(outcome, SendOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(receiver.mails().len(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_a_recorded_failure() {
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(free_port(), Security::Plain, Trust::public(), &log);
    let outcome = sink.send(reply("result:down")).await.unwrap();
    assert!(matches!(outcome, SendOutcome::Failed { .. }), "{outcome:?}");
    assert!(
        stream_events(&log)
            .iter()
            .any(|(e, _, _)| matches!(e, Event::ReplyFailed(_)))
    );
}

#[tokio::test]
async fn a_hostile_smtp_server_is_a_recorded_failure_not_a_panic() {
    use tokio::io::AsyncReadExt as _;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    for (i, script) in [
        &b"garbage\r\n"[..],
        b"554 go away\r\n",
        b"220 hi\r\n250 ok\r\n999 what\r\n",
        b"\xff\xfe\x00\r\n",
        b"",
    ]
    .into_iter()
    .enumerate()
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                if script.is_empty() {
                    continue; // close at once
                }
                let _ = tcp.write_all(script).await;
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(script).await;
            }
        });
        let sink = sink_for(port, Security::Plain, Trust::public(), &log);
        let outcome = sink
            .send(reply(&format!("result:hostile-{i}")))
            .await
            .unwrap();
        assert!(
            matches!(outcome, SendOutcome::Failed { .. }),
            "{script:?}: {outcome:?}"
        );
    }
    let failed = stream_events(&log)
        .iter()
        .filter(|(e, _, _)| matches!(e, Event::ReplyFailed(_)))
        .count();
    assert_eq!(failed, 5);
}

#[tokio::test]
async fn a_server_answering_without_end_is_cut_off_not_buffered() {
    use tokio::io::AsyncReadExt as _;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    // A greeting line that never ends: 64 MiB of it, as fast as it goes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let chunk = vec![b'2'; 64 * 1024];
                let _ = tcp.write_all(b"220-").await;
                for _ in 0..1024 {
                    if tcp.write_all(&chunk).await.is_err() {
                        break;
                    }
                    counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
                }
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    let sink = sink_for(port, Security::Plain, Trust::public(), &log);
    let outcome = sink.send(reply("result:endless")).await.unwrap();
    let SendOutcome::Failed { error } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(error.contains("more than"), "{error}");
    // The sink stopped reading after its cap (1 MiB), long before the
    // server's 64 MiB were through (socket buffers hold a few MiB).
    assert!(
        sent.load(std::sync::atomic::Ordering::SeqCst) < 32 << 20,
        "{} bytes were read",
        sent.load(std::sync::atomic::Ordering::SeqCst)
    );
}

#[tokio::test]
async fn non_ascii_subjects_bodies_and_file_names_survive_encoding() {
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let mut r = reply("result:unicode");
    r.subject = "Naïve café — 日本語のテスト".to_owned();
    r.body = "Grüße! Ünïcödé ✓\n\n| größe | 値 |\n|---|---|\n| 1 | 二 |\n".to_owned();
    r.attachments.push(OutboundAttachment {
        name: "résumé 日本.pdf".to_owned(),
        content_type: "application/pdf".to_owned(),
        data: b"%PDF-1.4".to_vec(),
    });
    assert!(matches!(
        sink.send(r).await.unwrap(),
        SendOutcome::Sent { .. }
    ));
    let got = &receiver.mails()[0];
    assert!(got.data.is_ascii(), "the wire form is 7-bit");
    let m = MessageParser::new().parse(&got.data).unwrap();
    assert_eq!(
        m.subject(),
        Some("Re: [ID:1a2b3c4d] Naïve café — 日本語のテスト")
    );
    assert!(m.body_text(0).unwrap().contains("Grüße! Ünïcödé ✓"));
    assert!(m.body_html(0).unwrap().contains("größe"));
    let file = m.attachments().next().unwrap();
    assert_eq!(file.attachment_name(), Some("résumé 日本.pdf"));
}

// === the sink as the gateway's ReplySink ===

fn outgoing(
    key: &str,
    kind: ReplyKind,
    attachments: Vec<std::path::PathBuf>,
) -> airut::gateway::OutgoingReply {
    airut::gateway::OutgoingReply {
        key: key.to_owned(),
        conversation: Some(conversation()),
        task: Some(TaskId::new()),
        kind,
        to: "alice@example.com".to_owned(),
        in_reply_to: "orig@example.com".to_owned(),
        thread_keys: vec![
            "a@example.com".to_owned(),
            "<airut.1a2b3c4d.1.00000000@example.net>".to_owned(),
        ],
        subject: "Flaky test".to_owned(),
        text: "Done.".to_owned(),
        attachments,
    }
}

#[tokio::test]
async fn as_the_gateways_reply_sink_it_sends_and_leaves_recording_to_the_gateway() {
    use airut::gateway::ReplySink;
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    assert!(sink.channel_context().contains("/outbox"));

    let outbox = tempfile::tempdir().unwrap();
    std::fs::write(outbox.path().join("report.md"), "# Report\n").unwrap();
    std::fs::write(outbox.path().join("data.json"), "{}").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", outbox.path().join("link")).unwrap();
    let files = vec![
        outbox.path().join("report.md"),
        outbox.path().join("data.json"),
        outbox.path().join("link"),
        outbox.path().join("missing.txt"),
    ];
    let cause = EventId::new();
    let delivered = ReplySink::send(
        &sink,
        outgoing(&cause.to_string(), ReplyKind::Result, files),
    )
    .await
    .unwrap();
    assert_eq!(delivered.attachments, ["report.md", "data.json"]);
    assert!(
        delivered.message_id.starts_with("<airut.1a2b3c4d."),
        "{}",
        delivered.message_id
    );
    let mails1 = receiver.mails();
    let m = MessageParser::new().parse(&mails1[0].data).unwrap();
    assert_eq!(
        header(&m, "References"),
        "<a@example.com> <airut.1a2b3c4d.1.00000000@example.net> <orig@example.com>"
    );
    let types: Vec<&str> = m
        .attachments()
        .map(|a| a.content_type().unwrap().subtype().unwrap_or(""))
        .collect();
    assert_eq!(types, ["plain", "json"]);
    // Only reply.started: reply.sent is the gateway's to record.
    let events = stream_events(&log);
    assert_eq!(events.len(), 1, "{events:?}");
    let (Event::ReplyStarted(started), _, causation) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(started.message_id, delivered.message_id);
    assert_eq!(causation, &Some(cause));

    // The acknowledgement carries the dashboard link.
    let ack = ReplySink::send(
        &sink,
        outgoing(
            &EventId::new().to_string(),
            ReplyKind::Acknowledgement,
            vec![],
        ),
    )
    .await
    .unwrap();
    let mails2 = receiver.mails();
    let m = MessageParser::new().parse(&mails2[1].data).unwrap();
    assert_eq!(header(&m, "Message-ID"), ack.message_id);
    assert!(
        m.body_text(0)
            .unwrap()
            .contains("https://airut.example/conversation/1a2b3c4d")
    );
}

#[tokio::test]
async fn as_reply_sink_a_refused_attempt_may_be_retried_an_interrupted_one_not() {
    use airut::gateway::ReplySink;
    let receiver = Receiver::start(ReceiverOptions {
        data_answers: vec!["451 4.3.0 try later"],
        ..Default::default()
    })
    .await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let key = EventId::new().to_string();
    let first = ReplySink::send(&sink, outgoing(&key, ReplyKind::Result, vec![])).await;
    assert!(first.unwrap_err().message.contains("451"));
    // The gateway's retry under the same key: sent, same Message-ID.
    let second = ReplySink::send(&sink, outgoing(&key, ReplyKind::Result, vec![]))
        .await
        .unwrap();
    assert_eq!(receiver.mails().len(), 1);
    let started: Vec<String> = stream_events(&log)
        .into_iter()
        .filter_map(|(e, _, _)| match e {
            Event::ReplyStarted(s) => Some(s.message_id),
            _ => None,
        })
        .collect();
    assert_eq!(started, std::slice::from_ref(&second.message_id));

    // A new process (a new sink) asked for a key started before the
    // restart: not sent again.
    let log2 = log.clone();
    let restarted = sink_for(receiver.port, Security::Plain, Trust::public(), &log2);
    let crashed = EventId::new().to_string();
    log.append(StreamAppend {
        stream: conversation().stream(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event: Event::ReplyStarted(ReplyStartedV1 {
                conversation: conversation(),
                task: None,
                channel: "email".to_owned(),
                kind: ReplyKind::Result,
                key: crashed.clone(),
                message_id: "<airut.1a2b3c4d.1.00000001@example.net>".to_owned(),
            }),
            causation: None,
        }],
    })
    .await
    .unwrap();
    let e = ReplySink::send(&restarted, outgoing(&crashed, ReplyKind::Result, vec![]))
        .await
        .unwrap_err();
    assert!(e.message.contains("may or may not"), "{}", e.message);
    assert_eq!(receiver.mails().len(), 1);
}

#[tokio::test]
async fn a_reply_without_a_conversation_has_no_tag_and_no_airut_message_id() {
    use airut::gateway::ReplySink;
    let receiver = Receiver::start(ReceiverOptions::default()).await;
    let store = tempfile::tempdir().unwrap();
    let log = Log::open(store.path(), LogOptions::default()).unwrap();
    let sink = sink_for(receiver.port, Security::Plain, Trust::public(), &log);
    let mut out = outgoing(&EventId::new().to_string(), ReplyKind::Error, vec![]);
    out.conversation = None;
    let delivered = ReplySink::send(&sink, out).await.unwrap();
    assert!(
        delivered.message_id.starts_with("<reply."),
        "{}",
        delivered.message_id
    );
    let mails3 = receiver.mails();
    let m = MessageParser::new().parse(&mails3[0].data).unwrap();
    assert_eq!(header(&m, "Subject"), "Re: Flaky test");
    let answer = format!(
        "From: alice@example.com\r\nIn-Reply-To: {}\r\n\r\nx\r\n",
        delivered.message_id
    );
    assert!(
        parse(answer.as_bytes(), &ParseContext::for_test())
            .unwrap()
            .conversation
            .is_none()
    );
    let channel_stream = StreamId::channel(&RepoId("widgets".to_owned()), "email");
    assert_eq!(log.stream_iter(&channel_stream, 1).count(), 1);
}
