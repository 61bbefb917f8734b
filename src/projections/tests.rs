//! Runner tests: given events in an in-memory source, when the projections
//! catch up, ingest, reopen, rebuild or verify, then the stored state and the
//! queries say what the events imply.

use std::sync::Arc;

use fjall::Database;

use super::testing::MemorySource;
use super::*;
use crate::events::*;

fn db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::builder(dir.path()).open().unwrap();
    (dir, db)
}

fn open(db: &Database, src: &MemorySource) -> Projections {
    Projections::open_with(db.clone(), Arc::new(src.clone())).unwrap()
}

fn task(n: u128) -> TaskId {
    TaskId(uuid::Uuid::from_u128(n))
}

fn repo() -> RepoId {
    RepoId("r1".into())
}

/// Store creation, one email opening conversation `c`, one queued task.
fn given_conversation(src: &MemorySource, c: ConversationId, t: TaskId) {
    if src.all().is_empty() {
        src.push(
            StreamId::server(),
            Event::StoreCreated(StoreCreatedV1 {
                store_id: uuid::Uuid::from_u128(77),
                layout_version: 1,
                created_by: "test".into(),
            }),
        );
    }
    let channel = StreamId::channel(&repo(), "email");
    let received = src.push(
        channel,
        Event::MessageReceived(MessageReceivedV1 {
            repo: repo(),
            channel: "email".into(),
            dedup_key: format!("k{}", c.0),
            message_id: format!("<m{}@x>", c.0),
            thread_keys: vec![],
            sender: "a@example.com".into(),
            sender_display: "A <a@example.com>".into(),
            conversation_ref: None,
            subject: format!("Subject {}", c.0),
            body: "hi".into(),
            raw: None,
            attachments: vec![],
            model_hint: None,
        }),
    );
    src.push(
        c.stream(),
        Event::ConversationStarted(ConversationStartedV1 {
            conversation: c,
            repo: repo(),
            channel: "email".into(),
            thread_keys: vec![format!("<m{}@x>", c.0)],
            message: received.event_id,
            model: None,
            effort: None,
            replaces_expired: None,
        }),
    );
    src.push(
        c.stream(),
        Event::TaskQueued(TaskQueuedV1 {
            task: t,
            conversation: c,
            repo: repo(),
            messages: vec![received.event_id],
            model: "opus".into(),
            effort: None,
        }),
    );
}

fn proxy(t: TaskId, host: &str) -> Event {
    Event::ProxyRequest(ProxyRequestV1 {
        task: t,
        method: "GET".into(),
        scheme: "https".into(),
        host: host.into(),
        port: 443,
        path: "/".into(),
        decision: Decision::Allowed,
        rule: Some(host.into()),
        reason: None,
        status: Some(200),
        bytes_in: 0,
        bytes_out: 5,
        duration_us: 9,
        credentials: vec![],
        upstream_override: None,
        notes: vec![],
    })
}

fn output(t: TaskId, n: u64) -> Event {
    Event::ContainerOutput(ContainerOutputV1 {
        task: t,
        stream: OutputStream::Stdout,
        line_no: n,
        kind: OutputKind::Text,
        raw: format!("line {n}"),
    })
}

#[test]
fn given_a_conversation_when_opened_then_reply_keys_map_back_with_subject() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    let c = ConversationId(0xc0ffee01);
    given_conversation(&src, c, task(1));
    src.push(
        c.stream(),
        Event::ReplySent(ReplySentV1 {
            conversation: c,
            task: Some(task(1)),
            channel: "email".into(),
            kind: ReplyKind::Acknowledgement,
            message_id: "<ack@airut>".into(),
            in_reply_to: "<m@x>".into(),
            attachments: vec![],
        }),
    );
    let p = open(&db, &src);

    let conv = p
        .conversations()
        .find_thread(&repo(), "email", &["<nope>".into(), "<ack@airut>".into()])
        .unwrap()
        .unwrap();
    assert_eq!(conv.id, c);
    assert_eq!(conv.subject.as_deref(), Some(&*format!("Subject {}", c.0)));
    assert_eq!(conv.tasks, vec![task(1)]);
    assert_eq!(conv.model.as_deref(), Some("opus"));
    assert!(
        p.conversations()
            .by_thread_key(&repo(), "slack", "<ack@airut>")
            .unwrap()
            .is_none(),
        "thread keys are per channel"
    );
    assert_eq!(p.conversations().get(c).unwrap(), Some(conv));
    assert_eq!(p.applied_seq(), Some(Seq(4)));
    let received = src.all()[1].0.event_id;
    assert_eq!(p.find_message(received).unwrap(), Some(Seq(1)));
    assert_eq!(p.find_message(EventId(uuid::Uuid::nil())).unwrap(), None);
    assert_eq!(p.config_generation().unwrap(), 0);
    assert_eq!(
        p.board().server().unwrap().store_id,
        Some(uuid::Uuid::from_u128(77))
    );
}

#[test]
fn given_applied_events_when_delivered_again_then_nothing_changes() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    given_conversation(&src, ConversationId(1), task(1));
    src.push(ConversationId(1).stream(), output(task(1), 0));
    let p = open(&db, &src);
    let before = p.dump().unwrap();

    // At-least-once: a crash after commit re-delivers from an older seq.
    p.ingest(src.all()).unwrap();
    p.ingest(src.all().into_iter().skip(3)).unwrap();

    assert_eq!(p.dump().unwrap(), before);
    assert_eq!(p.board().task(task(1)).unwrap().unwrap().output_lines, 1);
}

#[test]
fn given_a_gap_when_ingesting_then_error_and_checkpoint_unchanged() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    given_conversation(&src, ConversationId(1), task(1));
    let p = open(&db, &src);
    let mut h = testing::header(10, ConversationId(1).stream(), 5);
    h.seq = Seq(10);
    let err = p.ingest([(h, output(task(1), 0))]).unwrap_err();
    assert!(matches!(
        err,
        ProjectionError::Gap {
            expected: Seq(4),
            found: Seq(10),
            ..
        }
    ));
    assert_eq!(p.applied_seq(), Some(Seq(3)));
}

#[test]
fn given_more_output_than_a_chunk_then_every_line_is_counted_once() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    let c = ConversationId(2);
    given_conversation(&src, c, task(2));
    let n = CHUNK as u64 + 10;
    for i in 0..n {
        src.push(c.stream(), output(task(2), i));
    }
    let p = open(&db, &src);
    let t = p.board().task(task(2)).unwrap().unwrap();
    assert_eq!(t.output_lines, n);
    let conv = p.conversations().get(c).unwrap().unwrap();
    assert_eq!(conv.last_activity.seq, p.applied_seq().unwrap());
}

#[test]
fn given_many_tasks_when_paging_then_every_task_is_listed_newest_first() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    for i in 0..250u32 {
        given_conversation(&src, ConversationId(i), task(1000 + u128::from(i)));
    }
    // Start and finish a few so states differ.
    for i in 0..30u32 {
        let t = task(1000 + u128::from(i));
        let s = ConversationId(i).stream();
        src.push(
            s.clone(),
            Event::TaskStarted(TaskStartedV1 {
                task: t,
                attempt: 1,
                resume_session: None,
                prompt: "p".into(),
            }),
        );
        if i < 10 {
            src.push(
                s,
                Event::TaskCompleted(TaskCompletedV1 {
                    task: t,
                    outcome: TaskOutcome::Succeeded,
                    reason: String::new(),
                    session_id: Some(format!("s{i}")),
                    reply_text: String::new(),
                    cost_micros: None,
                    turns: None,
                    duration_ms: 1,
                    input_tokens: 1,
                    output_tokens: 1,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 0,
                    web_searches: 0,
                    web_fetches: 0,
                    blocked_hosts: vec![],
                }),
            );
        }
    }
    let p = open(&db, &src);
    let board = p.board();

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = board
            .tasks(&TaskFilter::default(), Order::NewestFirst, cursor, 100)
            .unwrap();
        seen.extend(page.tasks.iter().map(|t| t.queued.seq));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");

    let counts = board.counts(None).unwrap();
    assert_eq!((counts.queued, counts.running, counts.done), (220, 20, 10));
    assert_eq!(board.counts(Some(&repo())).unwrap(), counts);
    let running = board
        .tasks(
            &TaskFilter {
                state: Some(TaskState::Running),
                repo: Some(repo()),
            },
            Order::OldestFirst,
            None,
            1000,
        )
        .unwrap();
    assert_eq!(running.tasks.len(), 20);
    assert!(running.tasks.iter().all(|t| t.state == TaskState::Running));
    assert_eq!(running.next, None);
    let done = board
        .tasks(
            &TaskFilter {
                state: Some(TaskState::Done),
                repo: None,
            },
            Order::NewestFirst,
            None,
            3,
        )
        .unwrap();
    assert_eq!(done.tasks.len(), 3);
    assert!(done.next.is_some());
    assert_eq!(
        p.conversations()
            .get(ConversationId(3))
            .unwrap()
            .unwrap()
            .session_id
            .as_deref(),
        Some("s3")
    );
}

#[test]
fn given_network_events_then_audit_streams_by_conversation_task_and_time() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    let (c1, c2) = (ConversationId(1), ConversationId(2));
    given_conversation(&src, c1, task(1));
    given_conversation(&src, c2, task(2));
    let mut times = Vec::new();
    for i in 0..10 {
        let (c, t) = if i % 2 == 0 {
            (c1, task(1))
        } else {
            (c2, task(2))
        };
        times.push(
            src.push(c.stream(), proxy(t, &format!("h{i}.example")))
                .timestamp_us,
        );
    }
    src.push(
        c1.stream(),
        Event::DnsQuery(DnsQueryV1 {
            task: task(1),
            name: "x.example".into(),
            qtype: 1,
            answer: "loopback".into(),
        }),
    );
    let p = open(&db, &src);
    let audit = p.audit();

    let all: Vec<_> = audit
        .iter(&AuditQuery::default())
        .map(Result::unwrap)
        .collect();
    assert_eq!(all.len(), 11);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));

    let q1 = AuditQuery {
        conversation: Some(c1),
        ..Default::default()
    };
    let rows: Vec<_> = audit.iter(&q1).map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|r| r.conversation == Some(c1) && r.task == task(1))
    );

    let since = AuditQuery {
        task: Some(task(2)),
        since_us: Some(times[5]),
        ..Default::default()
    };
    let hosts: Vec<_> = audit
        .iter(&since)
        .map(|r| match r.unwrap().entry {
            AuditEntry::Request { host, .. } => host,
            AuditEntry::Dns { name, .. } => name,
        })
        .collect();
    assert_eq!(hosts, vec!["h5.example", "h7.example", "h9.example"]);

    let recent = AuditQuery {
        since_us: Some(times[8]),
        ..Default::default()
    };
    assert_eq!(audit.iter(&recent).count(), 3);

    // Pages, newest first, for each index.
    for q in [AuditQuery::default(), q1] {
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = audit.page(&q, before, 4).unwrap();
            got.extend(page.rows.iter().map(|r| r.seq));
            match page.next {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        let mut expected: Vec<_> = audit.iter(&q).map(|r| r.unwrap().seq).collect();
        expected.reverse();
        assert_eq!(got, expected);
    }
}

#[test]
fn given_health_and_boot_events_then_repos_and_server_info() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    given_conversation(&src, ConversationId(1), task(1));
    src.push(
        StreamId::server(),
        Event::ServerStarted(ServerStartedV1 {
            version: "0.1.0".into(),
            pid: 42,
            listen: "127.0.0.1:5200".into(),
        }),
    );
    src.push(
        StreamId::server(),
        Event::ConfigLoaded(ConfigLoadedV1 {
            generation: 3,
            path: "/etc/airut.yaml".into(),
            content_hash: [0xab; 32],
            repos: vec![repo()],
        }),
    );
    src.push(
        StreamId::server(),
        Event::RepoBooted(RepoBootedV1 {
            repo: RepoId("broken".into()),
            ok: false,
            error: Some("no allowlist".into()),
        }),
    );
    src.push(
        StreamId::server(),
        Event::ChannelHealthChanged(ChannelHealthChangedV1 {
            repo: repo(),
            channel: "email".into(),
            health: ChannelHealth::Degraded,
            detail: "IMAP timeout".into(),
        }),
    );
    let p = open(&db, &src);
    let repos = p.board().repos().unwrap();
    assert_eq!(repos.len(), 2);
    let broken = p.board().repo(&RepoId("broken".into())).unwrap().unwrap();
    assert_eq!(broken.boot.unwrap().error.as_deref(), Some("no allowlist"));
    let r1 = p.board().repo(&repo()).unwrap().unwrap();
    assert_eq!(r1.channels["email"].health, ChannelHealth::Degraded);
    let server = p.board().server().unwrap();
    assert_eq!(server.last_started.unwrap().pid, 42);
    assert!(server.last_stopped.is_none());
    assert_eq!(server.config.unwrap().generation, 3);
    assert_eq!(p.config_generation().unwrap(), 3);
}

#[test]
fn given_a_rejected_config_then_the_board_shows_it_until_the_next_generation() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    let loaded = |generation| {
        Event::ConfigLoaded(ConfigLoadedV1 {
            generation,
            path: "/etc/airut.yaml".into(),
            content_hash: [0xab; 32],
            repos: vec![repo()],
        })
    };
    src.push(StreamId::server(), loaded(1));
    src.push(
        StreamId::server(),
        Event::ConfigRejected(ConfigRejectedV1 {
            path: "/etc/airut.yaml".into(),
            content_hash: [0xcd; 32],
            error: "line 2: repos: expected a mapping".into(),
        }),
    );
    let p = open(&db, &src);
    let server = p.board().server().unwrap();
    let rejected = server.config_rejected.unwrap();
    assert!(rejected.error.contains("expected a mapping"));
    assert_eq!(rejected.content_hash, "cd".repeat(32));
    assert_eq!(server.config.unwrap().generation, 1);
    drop(p);
    src.push(StreamId::server(), loaded(2));
    let p = open(&db, &src);
    let server = p.board().server().unwrap();
    assert!(server.config_rejected.is_none());
    assert_eq!(p.config_generation().unwrap(), 2);
}

#[test]
fn given_an_old_schema_version_when_opened_then_rebuilt_from_the_log() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    given_conversation(&src, ConversationId(1), task(1));
    let p = open(&db, &src);
    let expected = p.dump().unwrap();
    drop(p);
    // Pretend an older build wrote the board, with junk state.
    let meta = db
        .keyspace("proj_board_meta", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    meta.insert(
        store::META_KEY,
        store::encode(&Meta {
            version: 0,
            checkpoint: Some(Seq(3)),
        }),
    )
    .unwrap();
    let tasks = db
        .keyspace("proj_board_tasks", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    tasks.insert(b"junk", b"{").unwrap();

    let p = open(&db, &src);
    assert_eq!(p.dump().unwrap(), expected);
    assert!(p.status().iter().all(|s| s.checkpoint == Some(Seq(3))));
}

#[test]
fn given_state_without_meta_when_opened_then_state_is_reset_and_refolded() {
    // A crash during `rebuild` after the meta record was removed.
    let (_dir, db) = db();
    let src = MemorySource::default();
    given_conversation(&src, ConversationId(1), task(1));
    let p = open(&db, &src);
    let expected = p.dump().unwrap();
    drop(p);
    let meta = db
        .keyspace("proj_audit_meta", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    meta.remove(store::META_KEY).unwrap();
    let rows = db
        .keyspace("proj_audit_rows", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    rows.insert(b"stale", b"x").unwrap();

    let p = open(&db, &src);
    assert_eq!(p.dump().unwrap(), expected);
}

#[test]
fn given_live_state_when_verified_then_consistent_and_damage_is_reported() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    let c = ConversationId(5);
    given_conversation(&src, c, task(5));
    src.push(c.stream(), proxy(task(5), "a.example"));
    let p = open(&db, &src);
    // Written after open: verify catches up first.
    src.push(c.stream(), output(task(5), 0));

    let report = p.verify_rebuild().unwrap();
    assert!(report.is_consistent(), "{report:#?}");
    assert_eq!(report.seq, Some(Seq(5)));
    assert!(
        !db.keyspace_exists("projtmp_board_tasks"),
        "scratch dropped"
    );

    let views = db
        .keyspace(
            "proj_conversations_views",
            fjall::KeyspaceCreateOptions::default,
        )
        .unwrap();
    views.insert(c.0.to_be_bytes(), b"{}").unwrap();
    let report = p.verify_rebuild().unwrap();
    assert!(!report.is_consistent());
    let conv = &report.projections[0];
    assert_eq!(conv.differences, 1);
    assert_eq!(conv.first_differences[0].live.as_deref(), Some("{}"));

    p.rebuild().unwrap();
    assert!(p.verify_rebuild().unwrap().is_consistent());
}

#[test]
fn given_expired_conversation_then_its_tasks_stay_in_history() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    let c = ConversationId(9);
    given_conversation(&src, c, task(9));
    src.push(
        c.stream(),
        Event::ConversationExpired(ConversationExpiredV1 {
            conversation: c,
            last_activity_seq: 3,
        }),
    );
    let p = open(&db, &src);
    assert!(p.conversations().get(c).unwrap().unwrap().expired);
    assert!(p.board().task(task(9)).unwrap().is_some());
    assert_eq!(
        p.conversations()
            .by_thread_key(&repo(), "email", &format!("<m{}@x>", c.0))
            .unwrap()
            .map(|c| c.expired),
        Some(true)
    );
}

#[tokio::test]
async fn wait_for_returns_once_the_seq_is_applied() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    given_conversation(&src, ConversationId(1), task(1));
    let p = open(&db, &src);
    p.wait_for(Seq(3)).await;
    src.push(ConversationId(1).stream(), output(task(1), 0));
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.wait_for(Seq(4)).await })
    };
    let p2 = p.clone();
    tokio::task::spawn_blocking(move || p2.catch_up().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.applied_seq(), Some(Seq(4)));
}

#[test]
fn given_a_sample_of_every_event_type_then_all_fold_and_verify() {
    let (_dir, db) = db();
    let src = MemorySource::default();
    let conv = samples::sample_conversation();
    for event in samples::samples() {
        let stream = match &event {
            Event::MessageReceived(m) => StreamId::channel(&m.repo, &m.channel),
            Event::MessageRejected(m) => StreamId::channel(&m.repo, &m.channel),
            Event::StoreCreated(_)
            | Event::ConfigLoaded(_)
            | Event::ConfigRejected(_)
            | Event::ServerStarted(_)
            | Event::ServerStopped(_)
            | Event::RepoBooted(_)
            | Event::ChannelHealthChanged(_) => StreamId::server(),
            _ => conv.stream(),
        };
        src.push(stream, event);
    }
    let p = open(&db, &src);
    assert_eq!(p.applied_seq(), Some(Seq(src.all().len() as u64 - 1)));
    assert!(p.conversations().get(conv).unwrap().is_some());
    let task = p.board().task(samples::sample_task()).unwrap().unwrap();
    // Samples come in catalogue order: `task.interrupted` (a re-run) comes
    // after `task.completed`, and an interruption never reopens a finished task.
    assert_eq!(task.state, TaskState::Done);
    assert!(task.stop_requested.is_some());
    let rows: Vec<_> = p
        .audit()
        .iter(&AuditQuery::default())
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2);
    // Every field of the sample request reaches the row.
    let Some(Event::ProxyRequest(req)) = samples::samples()
        .into_iter()
        .find(|e| matches!(e, Event::ProxyRequest(_)))
    else {
        panic!("no proxy request sample");
    };
    let AuditEntry::Request {
        host,
        notes,
        credentials,
        upstream_override,
        ..
    } = &rows[0].entry
    else {
        panic!("first row is not a request: {:?}", rows[0]);
    };
    assert_eq!(host, &req.host);
    assert_eq!(notes, &req.notes);
    assert_eq!(credentials, &req.credentials);
    assert_eq!(upstream_override, &req.upstream_override);
    assert!(p.verify_rebuild().unwrap().is_consistent());
}

#[test]
fn rebuild_reports_say_what_differed() {
    let diff = Difference {
        keyspace: "proj_board_tasks".into(),
        key: "k".into(),
        live: Some("{}".into()),
        rebuilt: None,
    };
    let report = RebuildReport {
        seq: Some(Seq(9)),
        verify: Some(VerifyReport {
            seq: Some(Seq(9)),
            projections: vec![ProjectionVerify {
                name: "board".into(),
                keys_compared: 3,
                differences: 1,
                first_differences: vec![diff],
            }],
        }),
    };
    assert!(!report.ok());
    let text = report.to_string();
    assert!(text.contains("up to event 9"), "{text}");
    assert!(text.contains("board: 1 of 3 keys differed"), "{text}");
    assert!(
        text.contains("proj_board_tasks k: live {} / rebuilt (absent)"),
        "{text}"
    );
    let back: RebuildReport =
        serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back, report);
    assert!(
        RebuildReport {
            seq: None,
            verify: None
        }
        .ok()
    );
}
