//! Realistic conversations written to a log, for the dashboard's tests, the
//! browser test and `airut bench dashboard`: a message, a conversation, a
//! task that runs the agent (stream-json output with every tool the
//! actions timeline knows), network requests and DNS queries, completion
//! and reply. With `hostile`, every piece of outside text carries HTML and
//! script, so tests can check that none of it executes and all is visible.
//!
//! Not used by the server itself.

use crate::events::*;
use crate::log::{AppendError, Appended, ExpectedVersion, Log, NewEvent, StreamAppend};

/// Text that would run if a page failed to escape it.
pub const HOSTILE: &str = "<script>alert(\"xss\")</script><img src=x onerror=alert(1)>";

/// What one seeded conversation looks like.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The repo.
    pub repo: RepoId,
    /// The conversation.
    pub conversation: ConversationId,
    /// The task.
    pub task: TaskId,
    /// Subject of the opening message.
    pub subject: String,
    /// Put HTML and script into every outside text.
    pub hostile: bool,
    /// Network requests (half blocked, every tenth a DNS query).
    pub network: usize,
    /// Extra agent output lines beyond the sample session.
    pub extra_output: usize,
}

// === impl Seed ===

impl Seed {
    /// A seed with fresh ids.
    pub fn new(repo: &str, subject: &str) -> Self {
        Seed {
            repo: RepoId(repo.to_owned()),
            conversation: ConversationId::random(),
            task: TaskId::new(),
            subject: subject.to_owned(),
            hostile: false,
            network: 6,
            extra_output: 0,
        }
    }

    fn tag(&self, s: &str) -> String {
        if self.hostile {
            format!("{s} {HOSTILE}")
        } else {
            s.to_owned()
        }
    }

    /// The opening message (on the channel stream) and the conversation
    /// with its queued task. Returns where the task was queued.
    pub async fn open(&self, log: &Log) -> Result<Appended, AppendError> {
        let msg = log
            .append(one(
                StreamId::channel(&self.repo, "email"),
                self.message_event(),
            ))
            .await?;
        let message = *msg.ids.first().expect("one event appended");
        log.append(batch(self.conversation.stream(), self.open_events(message)))
            .await
    }

    /// `message.received` for the opening message.
    pub fn message_event(&self) -> Event {
        Event::MessageReceived(MessageReceivedV1 {
            repo: self.repo.clone(),
            channel: "email".into(),
            dedup_key: format!("imap:1:{}", self.conversation),
            message_id: format!("<{}@example.com>", self.conversation),
            thread_keys: vec![],
            sender: "alice@example.com".into(),
            sender_display: self.tag("Alice <alice@example.com>"),
            conversation_ref: None,
            subject: self.subject.clone(),
            body: self.tag("Please fix the flaky test."),
            raw: None,
            attachments: vec![],
            model_hint: None,
        })
    }

    /// `conversation.started` and `task.queued`.
    pub fn open_events(&self, message: EventId) -> Vec<Event> {
        vec![
            Event::ConversationStarted(ConversationStartedV1 {
                conversation: self.conversation,
                repo: self.repo.clone(),
                channel: "email".into(),
                thread_keys: vec![format!("<airut.{}@example.com>", self.conversation)],
                message,
                model: Some("opus".into()),
                effort: None,
                replaces_expired: None,
            }),
            Event::TaskQueued(TaskQueuedV1 {
                task: self.task,
                conversation: self.conversation,
                repo: self.repo.clone(),
                messages: vec![message],
                model: "opus".into(),
                effort: None,
            }),
        ]
    }

    /// `task.started` and the container's start.
    pub fn start_events(&self) -> Vec<Event> {
        vec![
            Event::TaskStarted(TaskStartedV1 {
                task: self.task,
                attempt: 1,
                resume_session: None,
                prompt: self.tag("You are replying by email. Please fix the flaky test."),
            }),
            Event::ContainerCreated(ContainerCreatedV1 {
                task: self.task,
                container_id: "c0ffee".into(),
                image: "airut-repo:1".into(),
            }),
            Event::ContainerStarted(ContainerStartedV1 {
                task: self.task,
                container_id: "c0ffee".into(),
            }),
        ]
    }

    /// The agent's output: a session using every tool, then `extra_output`
    /// more assistant lines.
    pub fn output_events(&self) -> Vec<Event> {
        let mut lines = session_lines(self.hostile);
        for i in 0..self.extra_output {
            lines.push(
                serde_json::json!({"type": "assistant", "message": {"content": [
                    {"type": "text", "text": format!("Step {i}: checking the next file.")}
                ]}})
                .to_string(),
            );
        }
        lines
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                Event::ContainerOutput(ContainerOutputV1 {
                    task: self.task,
                    stream: OutputStream::Stdout,
                    line_no: i as u64,
                    kind: kind_of(&raw),
                    raw,
                })
            })
            .collect()
    }

    /// Network requests and DNS queries.
    pub fn network_events(&self) -> Vec<Event> {
        (0..self.network)
            .map(|i| {
                if i % 10 == 9 {
                    return Event::DnsQuery(DnsQueryV1 {
                        task: self.task,
                        name: format!("host{i}.example.com"),
                        qtype: 1,
                        answer: "loopback".into(),
                    });
                }
                let blocked = i % 2 == 1;
                Event::ProxyRequest(ProxyRequestV1 {
                    task: self.task,
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: if blocked {
                        "evil.example.net".into()
                    } else {
                        "api.github.com".into()
                    },
                    port: 443,
                    path: if self.hostile {
                        format!("/repos/{i}?q={HOSTILE}")
                    } else {
                        format!("/repos/airut/pulls/{i}")
                    },
                    decision: if blocked {
                        Decision::Blocked
                    } else {
                        Decision::Allowed
                    },
                    rule: (!blocked).then(|| "api.github.com GET /repos/*".into()),
                    reason: blocked.then(|| self.tag("host not in the allowlist")),
                    status: Some(if blocked { 403 } else { 200 }),
                    bytes_in: 0,
                    bytes_out: 1200,
                    duration_us: 35_000,
                    credentials: if blocked {
                        vec![]
                    } else {
                        vec![CredentialAnnotation {
                            secret: "GH_TOKEN".into(),
                            action: CredentialAction::Swapped,
                            count: 1,
                            header: Some("authorization".into()),
                        }]
                    },
                    upstream_override: None,
                    notes: vec![],
                })
            })
            .collect()
    }

    /// The container's exit, `task.completed` and the reply.
    pub fn complete_events(&self) -> Vec<Event> {
        vec![
            Event::ContainerExited(ContainerExitedV1 {
                task: self.task,
                container_id: "c0ffee".into(),
                exit_code: 0,
                oom_killed: false,
            }),
            Event::TaskCompleted(TaskCompletedV1 {
                task: self.task,
                outcome: TaskOutcome::Succeeded,
                reason: String::new(),
                session_id: Some("5e55-1on".into()),
                reply_text: self.tag("Fixed the flaky test; see the commit."),
                cost_micros: Some(42_100),
                turns: Some(5),
                duration_ms: 12_345,
                input_tokens: 1_204,
                output_tokens: 3_876,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 88_410,
                web_searches: 0,
                web_fetches: 0,
                blocked_hosts: vec!["evil.example.net".into()],
            }),
            Event::ReplySent(ReplySentV1 {
                conversation: self.conversation,
                task: Some(self.task),
                channel: "email".into(),
                kind: ReplyKind::Result,
                message_id: format!("<airut.{}.2@example.com>", self.conversation),
                in_reply_to: format!("<{}@example.com>", self.conversation),
                attachments: vec![],
            }),
        ]
    }

    /// Everything after the opening, in order, as one batch.
    pub fn run_events(&self) -> Vec<Event> {
        let mut out = self.start_events();
        let output = self.output_events();
        let network = self.network_events();
        // Interleave output and network as a real run would.
        let mut net = network.into_iter();
        for (i, o) in output.into_iter().enumerate() {
            out.push(o);
            if i % 2 == 0
                && let Some(n) = net.next()
            {
                out.push(n);
            }
        }
        out.extend(net);
        out.extend(self.complete_events());
        out
    }

    /// Appends a whole finished conversation.
    pub async fn append_finished(&self, log: &Log) -> Result<Appended, AppendError> {
        self.open(log).await?;
        log.append(batch(self.conversation.stream(), self.run_events()))
            .await
    }
}

/// `server.started`, config, and `repo.booted` + channel health per repo.
pub async fn boot(log: &Log, repos: &[&str]) -> Result<Appended, AppendError> {
    let mut events = vec![Event::ServerStarted(ServerStartedV1 {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        listen: "127.0.0.1:0".into(),
    })];
    for r in repos {
        events.push(Event::RepoBooted(RepoBootedV1 {
            repo: RepoId((*r).to_owned()),
            ok: true,
            error: None,
        }));
        events.push(Event::ChannelHealthChanged(ChannelHealthChangedV1 {
            repo: RepoId((*r).to_owned()),
            channel: "email".into(),
            health: ChannelHealth::Healthy,
            detail: "IMAP IDLE".into(),
        }));
    }
    log.append(batch(StreamId::server(), events)).await
}

/// One event for a stream.
pub fn one(stream: StreamId, event: Event) -> StreamAppend {
    batch(stream, vec![event])
}

/// Events for a stream, without a version check.
pub fn batch(stream: StreamId, events: Vec<Event>) -> StreamAppend {
    StreamAppend {
        stream,
        expected: ExpectedVersion::Any,
        events: events
            .into_iter()
            .map(|event| NewEvent {
                event,
                causation: None,
            })
            .collect(),
    }
}

fn kind_of(raw: &str) -> OutputKind {
    let v: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
    match (
        v.get("type").and_then(|t| t.as_str()),
        v.get("subtype").and_then(|t| t.as_str()),
    ) {
        (Some("system"), Some("init")) => OutputKind::SystemInit,
        (Some("system"), _) => OutputKind::System,
        (Some("assistant"), _) => OutputKind::Assistant,
        (Some("user"), _) => OutputKind::User,
        (Some("result"), _) => OutputKind::Result,
        (Some(_), _) => OutputKind::OtherJson,
        _ => OutputKind::Text,
    }
}

/// A stream-json session using every tool the timeline renders.
pub fn session_lines(hostile: bool) -> Vec<String> {
    let h = |s: &str| {
        if hostile {
            format!("{s} {HOSTILE}")
        } else {
            s.to_owned()
        }
    };
    let long: Vec<String> = (1..=45).map(|i| format!("test idle_{i} ... ok")).collect();
    let j = |v: serde_json::Value| v.to_string();
    vec![
        j(
            serde_json::json!({"type": "system", "subtype": "init", "model": "claude-opus",
            "tools": ["Bash", "Read", "Write", "Edit", "Grep", "Glob", "Task", "TodoWrite"],
            "session_id": "5e55-1on"}),
        ),
        j(
            serde_json::json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": h("I'll look at the flaky test first.")},
            {"type": "tool_use", "id": "toolu_01", "name": "TodoWrite", "input": {"todos": [
                {"content": h("Reproduce the failure"), "status": "completed", "activeForm": "Reproducing"},
                {"content": "Fix the race", "status": "in_progress", "activeForm": "Fixing the race"},
                {"content": "Add a regression test", "status": "pending", "activeForm": "Adding a test"}]}}]}}),
        ),
        j(
            serde_json::json!({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "toolu_02", "name": "Bash",
             "input": {"command": h("cargo test idle"), "description": "Run the IDLE tests", "timeout": 120000}}]}}),
        ),
        j(serde_json::json!({"type": "user", "message": {"content": [
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": long.join("\n"), "is_error": false}]}})),
        j(
            serde_json::json!({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "toolu_03", "name": "Read", "input": {"file_path": "/workspace/src/imap.rs", "offset": 10, "limit": 40}},
            {"type": "tool_use", "id": "toolu_04", "name": "Grep", "input": {"pattern": "idle_timeout", "path": "src"}},
            {"type": "tool_use", "id": "toolu_05", "name": "Glob", "input": {"pattern": "tests/**/*.rs"}}]}}),
        ),
        j(
            serde_json::json!({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "toolu_06", "name": "Edit", "input": {"file_path": "/workspace/src/imap.rs",
             "old_string": h("let t = 30;"), "new_string": "let t = idle_timeout();\nreconnect(t);"}}]}}),
        ),
        j(
            serde_json::json!({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "toolu_07", "name": "Write", "input": {"file_path": "/workspace/tests/idle.rs",
             "content": h("#[test]\nfn idle_timeout_reconnects() {}\n")}}]}}),
        ),
        j(
            serde_json::json!({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "toolu_08", "name": "Task", "input": {"subagent_type": "reviewer",
             "description": "Review the fix", "prompt": h("Review the diff for races.")}}]}}),
        ),
        j(
            serde_json::json!({"type": "assistant", "parent_tool_use_id": "toolu_08", "message": {"content": [
            {"type": "text", "text": h("The fix looks right.")}]}}),
        ),
        j(serde_json::json!({"type": "user", "message": {"content": [
            {"type": "tool_result", "tool_use_id": "toolu_09", "content": h("permission denied"), "is_error": true}]}})),
        j(
            serde_json::json!({"type": "result", "subtype": "success", "duration_ms": 12345,
            "total_cost_usd": 0.0421, "num_turns": 5, "result": h("Fixed the flaky test.")}),
        ),
    ]
}
