//! Every template rendered with hostile content: HTML and script in
//! subjects, agent output, request paths, repo errors and channel details
//! must come out escaped (so nothing executes) and still be visible.

use super::*;
use crate::dashboard::actions::{ActionItem, DiffLine};
use crate::dashboard::replay::{EventRow, ReplayState, ReplyRow};
use crate::dashboard::views::{ChannelView, TodoView};

const EVIL: &str = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>";

fn check(html: &str) {
    assert!(!html.contains("<script>alert"), "raw script in:\n{html}");
    assert!(!html.contains("<img src=x"), "raw img in:\n{html}");
    assert!(!html.contains("\"><img"), "attribute break-out in:\n{html}");
    assert!(
        html.contains("&#60;script&#62;alert") || html.contains("&lt;script&gt;alert"),
        "hostile text not visible in:\n{html}"
    );
}

fn task_view(state: &'static str) -> TaskView {
    TaskView {
        id: "0190a0b0-0000-7000-8000-000000000001".into(),
        short_id: "0190a0b0".into(),
        conversation: "1a2b3c4d".into(),
        repo: format!("repo{EVIL}"),
        title: EVIL.into(),
        short_title: EVIL.into(),
        state,
        badge: "RUNNING".into(),
        badge_class: "badge-running",
        model: EVIL.into(),
        effort: EVIL.into(),
        attempt: 1,
        queued_at: "-".into(),
        started_at: "-".into(),
        completed_at: "-".into(),
        time_label: "Running: 3s".into(),
        cost: "$0.0100".into(),
        turns: "3".into(),
        tokens: "5 in".into(),
        reason: EVIL.into(),
        todos: Some(TodoView {
            completed: 1,
            total: 2,
            percent: 50,
            items: vec![("completed".into(), EVIL.into()), (EVIL.into(), "x".into())],
        }),
        stop_requested: Some(format!("dashboard:{EVIL}")),
        can_stop: true,
        output_lines: 3,
        blocked_hosts: vec![EVIL.into()],
        exit: String::new(),
    }
}

fn repo_view() -> RepoView {
    RepoView {
        id: "r".into(),
        status: "failed",
        error: EVIL.into(),
        booted_at: "-".into(),
        channels: vec![ChannelView {
            name: EVIL.into(),
            health: "degraded",
            detail: EVIL.into(),
            since: "-".into(),
        }],
    }
}

#[test]
fn board_escapes_everything() {
    let live = BoardLive {
        health: "ok",
        server: ServerView {
            started: EVIL.into(),
            version: EVIL.into(),
            config: EVIL.into(),
            config_rejected: Some(EVIL.into()),
            head: "-".into(),
        },
        repos: vec![repo_view()],
        counts: StateCounts::default(),
        queued: vec![task_view("queued")],
        running: vec![task_view("running")],
        done: vec![task_view("done")],
        before: Some(5),
        next_before: Some(3),
    };
    let html = live.render().unwrap();
    check(&html);
    assert!(html.contains("href=\"/?before=3\""));
}

#[test]
fn repo_and_task_escape_everything() {
    let html = RepoLive {
        repo: repo_view(),
        counts: StateCounts::default(),
        tasks: vec![task_view("done")],
    }
    .render()
    .unwrap();
    check(&html);
    let html = TaskLive {
        t: task_view("running"),
        prompt: EVIL.into(),
        reply: EVIL.into(),
        csrf: "abc".into(),
    }
    .render()
    .unwrap();
    check(&html);
    assert!(html.contains("requested by dashboard:&#60;script"));
    let mut t = task_view("running");
    t.stop_requested = None;
    let html = TaskLive {
        t,
        prompt: EVIL.into(),
        reply: EVIL.into(),
        csrf: "abc".into(),
    }
    .render()
    .unwrap();
    check(&html);
    assert!(html.contains("value=\"abc\""));
}

#[test]
fn conversation_escapes_everything() {
    let r = ReplayState {
        conversation: crate::events::ConversationId(1),
        position: 2,
        total: 5,
        at_seq: Some(9),
        prev_seq: Some(8),
        next_seq: Some(10),
        at_time: "-".into(),
        tasks: vec![],
        replies: vec![ReplyRow {
            seq: 3,
            time: "-".into(),
            kind: "result",
            channel: EVIL.into(),
            outcome: EVIL.into(),
            failed: true,
        }],
        recent: vec![EventRow {
            seq: 9,
            time: "-".into(),
            kind: "task.started".into(),
            summary: EVIL.into(),
        }],
    };
    let html = ConversationLive {
        conv: ConvView {
            id: "00000001".into(),
            subject: EVIL.into(),
            repo: "r".into(),
            channel: EVIL.into(),
            started: "-".into(),
            model: EVIL.into(),
            session: EVIL.into(),
            messages: 1,
            expired: true,
        },
        r,
        live: false,
        tasks: vec![(task_view("done"), EVIL.into(), EVIL.into())],
    }
    .render()
    .unwrap();
    check(&html);
    assert!(html.contains("?at=8"));
    assert!(html.contains("?at=10"));
}

#[test]
fn actions_escape_everything() {
    let item = ActionItem {
        seq: 1,
        kind: "tool",
        title: EVIL.into(),
        detail: EVIL.into(),
        body: EVIL.into(),
        more: EVIL.into(),
        more_lines: 3,
        diff: vec![DiffLine {
            class: "add",
            text: EVIL.into(),
        }],
        todos: vec![(EVIL.into(), EVIL.into())],
        error: true,
        subagent: EVIL.into(),
    };
    let html = ActionsLive {
        conv: "00000001".into(),
        task: String::new(),
        task_short: String::new(),
        groups: vec![TaskActions {
            task: crate::events::TaskId(uuid::Uuid::nil()),
            number: 1,
            started: "-".into(),
            prompt: EVIL.into(),
            items: vec![item],
        }],
    }
    .render()
    .unwrap();
    check(&html);
    assert!(html.contains("show 3 more lines"));
}

#[test]
fn network_escapes_everything() {
    let row = NetRow {
        time: "-".into(),
        decision: "blocked",
        method: EVIL.into(),
        host: EVIL.into(),
        path: format!("/{EVIL}"),
        status: "403".into(),
        rule: EVIL.into(),
        reason: EVIL.into(),
        credentials: EVIL.into(),
        duration: "1ms".into(),
        task: "t".into(),
        task_short: "t".into(),
    };
    let html = NetworkLive {
        scope: EVIL.into(),
        base: "/network".into(),
        decisions: vec![("", "all")],
        decision: String::new(),
        host: EVIL.into(),
        limit: 5,
        rows: vec![row],
        truncated: true,
        older: format!("/network?host={}", url_encode(EVIL)),
        export_jsonl: "/export/network?format=jsonl".into(),
        export_csv: "/export/network?format=csv".into(),
    }
    .render()
    .unwrap();
    check(&html);
}

#[test]
fn layout_message_and_login_escape_everything() {
    let chrome = Chrome {
        title: EVIL.into(),
        crumbs: vec![(EVIL.into(), "/".into()), (EVIL.into(), String::new())],
        stream: String::new(),
    };
    let html = Page {
        chrome: chrome.clone(),
        live: "<p>ours</p>".into(),
    }
    .render()
    .unwrap();
    check(&html);
    assert!(
        html.contains("<p>ours</p>"),
        "our fragment is inserted as is"
    );
    assert!(!html.contains("<script>") || html.contains("<script src=\"/static/app.js\""));
    assert!(!html.contains("onclick"), "no inline handlers");
    let html = MessagePage {
        chrome: chrome.clone(),
        class: "error",
        heading: EVIL.into(),
        text: EVIL.into(),
        back: "/".into(),
    }
    .render()
    .unwrap();
    check(&html);
    let html = LoginPage {
        chrome,
        error: EVIL.into(),
    }
    .render()
    .unwrap();
    check(&html);
}

#[test]
fn no_template_has_inline_script_or_handlers() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "html") {
            let text = std::fs::read_to_string(&path).unwrap();
            let scripts = text.matches("<script").count();
            let external = text.matches("<script src=").count();
            assert_eq!(scripts, external, "inline script in {}", path.display());
            for h in [" onclick", " onload", " onerror", " onsubmit", " style="] {
                assert!(!text.contains(h), "{h} in {}", path.display());
            }
        }
    }
}

#[test]
fn url_encoding_is_query_safe() {
    assert_eq!(url_encode("a b&c=<d>"), "a%20b%26c%3D%3Cd%3E");
}
