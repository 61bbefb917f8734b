//! One deterministic, realistic value of every event type.
//!
//! The golden-bytes fixtures in `fixtures/events/` are these values encoded,
//! so a sample must never change by accident: no clock, no randomness, every
//! `Option` set and every `Vec` non-empty (so the fixture covers every field
//! of the frozen layout). Tests, benches and projection property tests use
//! them as building blocks.
//!
//! [`sample`] matches on [`EventType`] without a wildcard: a new event type
//! does not compile until it has a sample (and then a fixture).

use super::*;

/// 2026-08-22T17:50:46.123Z, in milliseconds since the Unix epoch.
const T0_MS: u64 = 1_787_421_046_123;

/// A fixed uuid v7 `n` milliseconds after [`T0_MS`].
fn uuid_v7(n: u64) -> uuid::Uuid {
    let mut rest = [0u8; 10];
    for (i, b) in rest.iter_mut().enumerate() {
        *b = (n as u8).wrapping_mul(31).wrapping_add(i as u8 * 17);
    }
    uuid::Builder::from_unix_timestamp_millis(T0_MS + n, &rest).into_uuid()
}

/// The task every sample refers to.
pub fn sample_task() -> TaskId {
    TaskId(uuid_v7(42))
}

/// The conversation every sample refers to.
pub fn sample_conversation() -> ConversationId {
    ConversationId(0x1a2b_3c4d)
}

/// The repo every sample refers to.
pub fn sample_repo() -> RepoId {
    RepoId("airut-rs".to_owned())
}

/// The `message.received` event id the samples point back to.
pub fn sample_message_event() -> EventId {
    EventId(uuid_v7(7))
}

fn blob(seed: u8, size: u64) -> BlobRef {
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = seed.wrapping_add((i as u8).wrapping_mul(29));
    }
    BlobRef { hash, size }
}

fn s(v: &str) -> String {
    v.to_owned()
}

/// A deterministic, realistic event of type `ty`, with every `Option` set
/// and every `Vec` non-empty.
pub fn sample(ty: EventType) -> Event {
    let task = sample_task();
    let conversation = sample_conversation();
    let repo = sample_repo();
    let message = sample_message_event();
    match ty {
        EventType::StoreCreated => Event::StoreCreated(StoreCreatedV1 {
            store_id: uuid::Uuid::from_u128(0x5d1c_09a2_7e4b_4f3a_9c61_0b8d_2e7f_a115),
            layout_version: 1,
            created_by: s("airut 0.1.0"),
        }),
        EventType::ConfigLoaded => Event::ConfigLoaded(ConfigLoadedV1 {
            generation: 3,
            path: s("/home/airut/.config/airut/airut.yaml"),
            content_hash: blob(0x3c, 0).hash,
            repos: vec![repo.clone(), RepoId(s("website"))],
        }),
        EventType::ConfigRejected => Event::ConfigRejected(ConfigRejectedV1 {
            path: s("/home/airut/.config/airut/airut.yaml"),
            content_hash: blob(0x3d, 0).hash,
            error: s(
                "/home/airut/.config/airut/airut.yaml:line 4: repos.widgets.model: expected a string",
            ),
        }),
        EventType::ServerStarted => Event::ServerStarted(ServerStartedV1 {
            version: s("0.1.0"),
            pid: 41_873,
            listen: s("127.0.0.1:5200"),
        }),
        EventType::ServerStopped => Event::ServerStopped(ServerStoppedV1 {
            reason: s("SIGTERM"),
        }),
        EventType::RepoBooted => Event::RepoBooted(RepoBootedV1 {
            repo: RepoId(s("website")),
            ok: false,
            error: Some(s(
                "git remote update --prune failed: fatal: could not read Username for 'https://github.com'",
            )),
        }),
        EventType::ChannelHealthChanged => Event::ChannelHealthChanged(ChannelHealthChangedV1 {
            repo,
            channel: s("email"),
            health: ChannelHealth::Degraded,
            detail: s("IMAP connection reset by peer; retrying in 30s"),
        }),
        EventType::MessageReceived => Event::MessageReceived(MessageReceivedV1 {
            repo,
            channel: s("email"),
            dedup_key: s("imap:1717171717:4211:<CAF=x9k2@mail.gmail.com>"),
            message_id: s("<CAF=x9k2@mail.gmail.com>"),
            thread_keys: vec![
                s("<airut.1a2b3c4d.1787420000.9f3e21aa@example.com>"),
                s("<CAF=a01b@mail.gmail.com>"),
            ],
            sender: s("alice@example.com"),
            sender_display: s("Alice Example <alice@example.com>"),
            conversation_ref: Some(conversation),
            subject: s("Re: [ID:1a2b3c4d] Fix the flaky IMAP test"),
            body: s(
                "Thanks! Can you also add a regression test for the IDLE timeout?\n\n[quoted text removed]",
            ),
            raw: Some(blob(0x11, 48_213)),
            attachments: vec![AttachmentV1 {
                name: s("idle-trace.log"),
                original_name: s("idle trace.log"),
                content_type: s("text/plain"),
                blob: blob(0x22, 9_876),
            }],
            model_hint: Some(s("opus")),
        }),
        EventType::MessageRejected => Event::MessageRejected(MessageRejectedV1 {
            repo,
            channel: s("email"),
            dedup_key: s("imap:1717171717:4212:<0100018f@amazonses.com>"),
            sender: s("mallory@example.net"),
            reason: RejectReason::NotAuthenticated,
            detail: s("DMARC fail for example.net (p=reject)"),
            raw: Some(blob(0x33, 3_051)),
        }),
        EventType::MessageDismissed => Event::MessageDismissed(MessageDismissedV1 {
            message,
            repo: repo.clone(),
            channel: s("email"),
            reason: DismissReason::EmptyBody,
            detail: s("the message has no text; send a new message with instructions"),
            conversation: Some(conversation),
        }),
        EventType::ConversationStarted => Event::ConversationStarted(ConversationStartedV1 {
            conversation,
            repo,
            channel: s("email"),
            thread_keys: vec![s("<airut.1a2b3c4d.1787421046.5c0ffee1@example.com>")],
            message,
            model: Some(s("opus")),
            effort: Some(s("high")),
            replaces_expired: Some(ConversationId(0x0bad_cafe)),
        }),
        EventType::ConversationResumed => Event::ConversationResumed(ConversationResumedV1 {
            conversation,
            message,
            thread_keys: vec![s("<CAF=x9k2@mail.gmail.com>")],
        }),
        EventType::ConversationExpired => Event::ConversationExpired(ConversationExpiredV1 {
            conversation,
            last_activity_seq: 18_204,
        }),
        EventType::TaskQueued => Event::TaskQueued(TaskQueuedV1 {
            task,
            conversation,
            repo,
            messages: vec![message, EventId(uuid_v7(9))],
            model: s("opus"),
            effort: Some(s("high")),
        }),
        EventType::TaskCoalesced => Event::TaskCoalesced(TaskCoalescedV1 {
            task,
            message: EventId(uuid_v7(9)),
        }),
        EventType::TaskStarted => Event::TaskStarted(TaskStartedV1 {
            task,
            attempt: 1,
            resume_session: Some(s("c7886694-52b1-4d0e-9d3c-6f0e4a1b2c3d")),
            prompt: s(
                "You are replying by email to alice@example.com.\n\nThanks! Can you also add a regression test for the IDLE timeout?",
            ),
        }),
        EventType::TaskCompleted => Event::TaskCompleted(TaskCompletedV1 {
            task,
            outcome: TaskOutcome::Succeeded,
            reason: s("agent finished"),
            session_id: Some(s("c7886694-52b1-4d0e-9d3c-6f0e4a1b2c3d")),
            reply_text: s(
                "Added `idle_timeout_reconnects` to tests/email.rs; it fails before the fix and passes after.",
            ),
            cost_micros: Some(42_100),
            turns: Some(5),
            duration_ms: 12_345,
            input_tokens: 1_204,
            output_tokens: 3_876,
            cache_creation_input_tokens: 15_022,
            cache_read_input_tokens: 88_410,
            web_searches: 1,
            web_fetches: 2,
            blocked_hosts: vec![s("pypi.org")],
        }),
        EventType::TaskInterrupted => Event::TaskInterrupted(TaskInterruptedV1 {
            task,
            attempt: 1,
            rerun: true,
            reason: s("the server restarted while the task ran"),
        }),
        EventType::TaskStopRequested => Event::TaskStopRequested(TaskStopRequestedV1 {
            task,
            requested_by: s("dashboard:alice@example.com"),
            reason: s("stop button on the task page"),
        }),
        EventType::ImageBuildStarted => Event::ImageBuildStarted(ImageBuildStartedV1 {
            repo,
            task: Some(task),
            tag: s("airut-repo:4f9c2a0e7b13d8c5"),
            forced: false,
        }),
        EventType::ImageBuildOutput => Event::ImageBuildOutput(ImageBuildOutputV1 {
            tag: s("airut-repo:4f9c2a0e7b13d8c5"),
            line: s("STEP 3/7: RUN apt-get update && apt-get install -y git ripgrep"),
        }),
        EventType::ImageBuildFinished => Event::ImageBuildFinished(ImageBuildFinishedV1 {
            repo,
            tag: s("airut-repo:4f9c2a0e7b13d8c5"),
            ok: true,
            duration_ms: 48_700,
            log_tail: s(
                "COMMIT airut-repo:4f9c2a0e7b13d8c5\nSuccessfully tagged localhost/airut-repo:4f9c2a0e7b13d8c5",
            ),
        }),
        EventType::ImagePruned => Event::ImagePruned(ImagePrunedV1 {
            tag: s("airut-repo:0c1d2e3f4a5b6c7d"),
            age_secs: 190_800,
        }),
        EventType::ImageReused => Event::ImageReused(ImageReusedV1 {
            repo: repo.clone(),
            task: Some(task),
            tag: s("airut-repo:4f9c2a0e7b13d8c5"),
            age_secs: 3_725,
        }),
        EventType::ClaudeBinaryPruned => Event::ClaudeBinaryPruned(ClaudeBinaryPrunedV1 {
            version: s("2.1.3"),
            age_secs: 1_209_600,
        }),
        EventType::ContainerCreated => Event::ContainerCreated(ContainerCreatedV1 {
            task,
            container_id: s("3f7a9c21d0e4"),
            image: s("airut-overlay:9b81e0c4a2f6d317"),
        }),
        EventType::ContainerStarted => Event::ContainerStarted(ContainerStartedV1 {
            task,
            container_id: s("3f7a9c21d0e4"),
        }),
        EventType::ContainerOutput => Event::ContainerOutput(ContainerOutputV1 {
            task,
            stream: OutputStream::Stdout,
            line_no: 17,
            kind: OutputKind::Assistant,
            raw: s(
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"toolu_01","name":"TodoWrite","input":{"todos":[{"content":"Add regression test","status":"in_progress","activeForm":"Adding regression test"}]}}]}}"#,
            ),
        }),
        EventType::ContainerOutputBlob => Event::ContainerOutputBlob(ContainerOutputBlobV1 {
            task,
            stream: OutputStream::Stdout,
            line_no: 18,
            kind: OutputKind::User,
            blob: blob(0x33, 1_048_576),
            preview: s(
                r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_02","type":"tool_result","content":"..."#,
            ),
        }),
        EventType::ContainerExited => Event::ContainerExited(ContainerExitedV1 {
            task,
            container_id: s("3f7a9c21d0e4"),
            exit_code: 0,
            oom_killed: false,
        }),
        EventType::ContainerStopped => Event::ContainerStopped(ContainerStoppedV1 {
            task,
            container_id: s("3f7a9c21d0e4"),
            reason: StopReason::Timeout,
        }),
        EventType::ProxyRequest => Event::ProxyRequest(ProxyRequestV1 {
            task,
            method: s("POST"),
            scheme: s("https"),
            host: s("api.github.com"),
            port: 443,
            path: s("/repos/example/airut-rs/pulls?per_page=10"),
            decision: Decision::Allowed,
            rule: Some(s("api.github.com /repos/example/airut-rs/* [GET, POST]")),
            reason: Some(s("matched allowlist")),
            status: Some(201),
            bytes_in: 1_532,
            bytes_out: 18_240,
            duration_us: 412_800,
            credentials: vec![CredentialAnnotation {
                secret: s("GH_TOKEN"),
                action: CredentialAction::Swapped,
                count: 1,
                header: Some(s("authorization")),
            }],
            upstream_override: Some(s("http://127.0.0.1:8443")),
            notes: vec![s("graphql-op: mutation/createPullRequest")],
        }),
        EventType::DnsQuery => Event::DnsQuery(DnsQueryV1 {
            task,
            name: s("api.github.com"),
            qtype: 28,
            answer: s("loopback"),
        }),
        EventType::ReplySent => Event::ReplySent(ReplySentV1 {
            conversation,
            task: Some(task),
            channel: s("email"),
            kind: ReplyKind::Result,
            message_id: s("<airut.1a2b3c4d.1787421059.7d2e11f0@example.com>"),
            in_reply_to: s("<CAF=x9k2@mail.gmail.com>"),
            attachments: vec![s("coverage.html")],
        }),
        EventType::ReplyFailed => Event::ReplyFailed(ReplyFailedV1 {
            conversation,
            task: Some(task),
            channel: s("email"),
            kind: ReplyKind::Result,
            error: s("SMTP 451 4.3.0 temporary server error"),
            attempts: 2,
        }),
        EventType::ReplyStarted => Event::ReplyStarted(ReplyStartedV1 {
            conversation,
            task: Some(task),
            channel: s("email"),
            kind: ReplyKind::Result,
            key: s("result:0191e3a4-1c2b-7def-8a01-23456789abcd"),
            message_id: s("<airut.1a2b3c4d.1787421059.7d2e11f0@example.com>"),
        }),
    }
}

/// [`sample`] of every type, in catalogue order.
pub fn samples() -> Vec<Event> {
    EventType::ALL.iter().map(|&ty| sample(ty)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_its_own_type() {
        for &ty in EventType::ALL {
            assert_eq!(sample(ty).event_type(), ty);
        }
        assert_eq!(samples().len(), EventType::ALL.len());
    }

    #[test]
    fn samples_are_deterministic_and_ids_are_v7() {
        assert_eq!(samples(), samples());
        assert_eq!(sample_task().0.get_version_num(), 7);
        assert_eq!(sample_message_event().0.get_version_num(), 7);
    }
}
