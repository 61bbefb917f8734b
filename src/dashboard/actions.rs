//! The actions timeline: the agent's stream-json output (`container.output`
//! events) turned into readable items: text, tool uses with a view per tool
//! (Bash, Read, Write, Edit as a diff, Grep, Glob, Task/subagents,
//! TodoWrite, others as JSON), tool results cut to a few lines with the
//! rest behind an expander, and the final result.
//!
//! Pure: input lines in, items out. Every line is untrusted agent output:
//! anything unexpected becomes a raw item, never an error; nothing is
//! marked safe, so templates escape it all.

#![deny(clippy::indexing_slicing)]

use serde_json::Value;

use crate::events::{ContainerOutputV1, OutputStream};

/// Lines of a tool result or file shown before "show N more lines".
pub const RESULT_LINES: usize = 20;
/// Lines of an Edit diff shown per side before cutting.
pub const DIFF_LINES: usize = 20;

/// One item of the timeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionItem {
    /// Global sequence of the output line.
    pub seq: u64,
    /// `system`, `text`, `tool`, `tool-result`, `result`, `stderr`, `raw`.
    pub kind: &'static str,
    /// Heading: tool name, `system: init`, `result: success`.
    pub title: String,
    /// One-line detail next to the title (command, path, pattern).
    pub detail: String,
    /// The body shown at once.
    pub body: String,
    /// The rest of the body, behind an expander.
    pub more: String,
    /// How many lines `more` holds.
    pub more_lines: usize,
    /// Diff lines (`+`/`-`/` `) for Edit.
    pub diff: Vec<DiffLine>,
    /// Todo items (status, text) for TodoWrite.
    pub todos: Vec<(String, String)>,
    /// A failed tool result.
    pub error: bool,
    /// Set for events of a subagent: its badge (`subagent:<id>`).
    pub subagent: String,
}

/// One line of an Edit diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    /// `add`, `del` or `ctx`.
    pub class: &'static str,
    /// `+ text`, `- text`.
    pub text: String,
}

/// The items of one output line.
pub fn items(seq: u64, out: &ContainerOutputV1) -> Vec<ActionItem> {
    if out.stream == OutputStream::Stderr {
        return vec![ActionItem {
            seq,
            kind: "stderr",
            title: "stderr".into(),
            body: out.raw.clone(),
            ..Default::default()
        }];
    }
    let raw_item = || ActionItem {
        seq,
        kind: "raw",
        title: "output".into(),
        body: out.raw.clone(),
        ..Default::default()
    };
    let Ok(v) = serde_json::from_str::<Value>(&out.raw) else {
        return vec![raw_item()];
    };
    let subagent = v
        .get("parent_tool_use_id")
        .and_then(Value::as_str)
        .map(|id| format!("subagent:{}", short(id)))
        .unwrap_or_default();
    let mut items = match v.get("type").and_then(Value::as_str) {
        Some("system") => vec![system(seq, &v)],
        Some("assistant") => assistant(seq, &v),
        Some("user") => user(seq, &v),
        Some("result") => vec![result(seq, &v)],
        _ => vec![ActionItem {
            seq,
            kind: "raw",
            title: "json".into(),
            body: pretty(&v),
            ..Default::default()
        }],
    };
    if items.is_empty() {
        items.push(raw_item());
    }
    for i in &mut items {
        i.subagent.clone_from(&subagent);
    }
    items
}

fn system(seq: u64, v: &Value) -> ActionItem {
    let subtype = str_of(v, "subtype");
    let mut detail = Vec::new();
    if let Some(m) = v.get("model").and_then(Value::as_str) {
        detail.push(format!("model={m}"));
    }
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        let names: Vec<&str> = tools.iter().filter_map(Value::as_str).take(20).collect();
        let extra = tools.len().saturating_sub(20);
        let mut t = format!("tools=[{}", names.join(", "));
        if extra > 0 {
            t.push_str(&format!(" (+{extra} more)"));
        }
        t.push(']');
        detail.push(t);
    }
    if let Some(s) = v.get("session_id").and_then(Value::as_str) {
        detail.push(format!("session={s}"));
    }
    ActionItem {
        seq,
        kind: "system",
        title: format!("system: {subtype}"),
        detail: detail.join(" "),
        ..Default::default()
    }
}

fn assistant(seq: u64, v: &Value) -> Vec<ActionItem> {
    let Some(content) = v
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => out.push(ActionItem {
                seq,
                kind: "text",
                title: "assistant".into(),
                body: str_of(block, "text"),
                ..Default::default()
            }),
            Some("thinking") => out.push(ActionItem {
                seq,
                kind: "text",
                title: "thinking".into(),
                body: str_of(block, "thinking"),
                ..Default::default()
            }),
            Some("tool_use") => out.push(tool_use(seq, block)),
            _ => out.push(ActionItem {
                seq,
                kind: "raw",
                title: "block".into(),
                body: pretty(block),
                ..Default::default()
            }),
        }
    }
    out
}

fn tool_use(seq: u64, block: &Value) -> ActionItem {
    let name = str_of(block, "name");
    let empty = Value::Null;
    let input = block.get("input").unwrap_or(&empty);
    let s = |k: &str| str_of(input, k);
    let mut item = ActionItem {
        seq,
        kind: "tool",
        title: name.clone(),
        ..Default::default()
    };
    match name.as_str() {
        "Bash" => {
            item.detail = s("description");
            if let Some(t) = input.get("timeout").and_then(Value::as_u64) {
                item.detail.push_str(&format!(" (timeout={t}ms)"));
            }
            cut_into(&mut item, &format!("$ {}", s("command")));
        }
        "Read" => {
            item.detail = s("file_path");
            let (o, l) = (input.get("offset"), input.get("limit"));
            if o.is_some() || l.is_some() {
                item.body = format!(
                    "offset {} limit {}",
                    o.map(Value::to_string).unwrap_or_else(|| "-".into()),
                    l.map(Value::to_string).unwrap_or_else(|| "-".into())
                );
            }
        }
        "Write" => {
            item.detail = s("file_path");
            cut_into(&mut item, &s("content"));
        }
        "Edit" | "MultiEdit" => {
            item.detail = s("file_path");
            let edits: Vec<&Value> = match input.get("edits").and_then(Value::as_array) {
                Some(list) => list.iter().collect(),
                None => vec![input],
            };
            for e in edits {
                push_diff(&mut item.diff, "del", "- ", &str_of(e, "old_string"));
                push_diff(&mut item.diff, "add", "+ ", &str_of(e, "new_string"));
            }
        }
        "Grep" => {
            item.detail = format!("/{}/", s("pattern"));
            let mut parts = Vec::new();
            for k in ["path", "glob", "type", "output_mode"] {
                let v = s(k);
                if !v.is_empty() {
                    parts.push(format!("{k}={v}"));
                }
            }
            item.body = parts.join(" ");
        }
        "Glob" => {
            item.detail = s("pattern");
            item.body = s("path");
        }
        "Task" | "Agent" => {
            let kind = s("subagent_type");
            item.title = format!("{name}: {}", if kind.is_empty() { "agent" } else { &kind });
            item.detail = s("description");
            let model = s("model");
            let prompt = s("prompt");
            let body = if model.is_empty() {
                prompt
            } else {
                format!("model={model}\n{prompt}")
            };
            cut_into(&mut item, &body);
        }
        "TodoWrite" => {
            if let Some(todos) = input.get("todos").and_then(Value::as_array) {
                for t in todos {
                    item.todos.push((str_of(t, "status"), str_of(t, "content")));
                }
            }
            let done = item.todos.iter().filter(|(s, _)| s == "completed").count();
            item.detail = format!("{done}/{} done", item.todos.len());
        }
        _ => cut_into(&mut item, &pretty(input)),
    }
    item
}

fn user(seq: u64, v: &Value) -> Vec<ActionItem> {
    let content = v.get("message").and_then(|m| m.get("content"));
    let Some(blocks) = content.and_then(Value::as_array) else {
        return match content.and_then(Value::as_str) {
            Some(text) => {
                let mut item = ActionItem {
                    seq,
                    kind: "text",
                    title: "user".into(),
                    ..Default::default()
                };
                cut_into(&mut item, text);
                vec![item]
            }
            None => Vec::new(),
        };
    };
    let mut out = Vec::new();
    for b in blocks {
        if b.get("type").and_then(Value::as_str) != Some("tool_result") {
            continue;
        }
        let text = match b.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            Some(other) => pretty(other),
            None => String::new(),
        };
        let error = b.get("is_error").and_then(Value::as_bool).unwrap_or(false);
        let mut item = ActionItem {
            seq,
            kind: "tool-result",
            title: if error { "result (error)" } else { "result" }.into(),
            error,
            ..Default::default()
        };
        if text.is_empty() {
            item.body = "(empty)".into();
        } else {
            cut_into(&mut item, &text);
        }
        out.push(item);
    }
    out
}

fn result(seq: u64, v: &Value) -> ActionItem {
    let mut parts = vec![str_of(v, "subtype")];
    if let Some(ms) = v.get("duration_ms").and_then(Value::as_u64) {
        parts.push(format!("{ms}ms"));
    }
    if let Some(c) = v.get("total_cost_usd").and_then(Value::as_f64) {
        parts.push(format!("${c:.4}"));
    }
    if let Some(n) = v.get("num_turns").and_then(Value::as_u64) {
        parts.push(format!("{n} turns"));
    }
    let error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false);
    let mut item = ActionItem {
        seq,
        kind: "result",
        title: "result".into(),
        detail: parts.join(" | "),
        error,
        ..Default::default()
    };
    cut_into(&mut item, &str_of(v, "result"));
    item
}

/// Puts the first [`RESULT_LINES`] lines of `text` in the body, the rest in `more`.
fn cut_into(item: &mut ActionItem, text: &str) {
    let mut lines = text.split_inclusive('\n');
    let head: String = lines.by_ref().take(RESULT_LINES).collect();
    let rest: String = lines.collect();
    item.more_lines = rest.lines().count();
    item.body = head.trim_end_matches('\n').to_owned();
    item.more = rest.trim_end_matches('\n').to_owned();
}

fn push_diff(diff: &mut Vec<DiffLine>, class: &'static str, sign: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    let total = text.lines().count();
    for line in text.lines().take(DIFF_LINES) {
        diff.push(DiffLine {
            class,
            text: format!("{sign}{line}"),
        });
    }
    if total > DIFF_LINES {
        diff.push(DiffLine {
            class: "ctx",
            text: format!("  ... ({} more lines)", total - DIFF_LINES),
        });
    }
}

fn str_of(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn short(id: &str) -> String {
    let t = id.strip_prefix("toolu_").unwrap_or(id);
    t.chars().take(8).collect()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::events::{OutputKind, TaskId};

    fn line(raw: &str) -> ContainerOutputV1 {
        ContainerOutputV1 {
            task: TaskId(uuid::Uuid::nil()),
            stream: OutputStream::Stdout,
            line_no: 0,
            kind: OutputKind::Assistant,
            raw: raw.into(),
        }
    }

    #[test]
    fn each_tool_gets_its_view() {
        let raw = serde_json::json!({"type":"assistant","message":{"content":[
            {"type":"text","text":"Let me look."},
            {"type":"tool_use","name":"Bash","input":{"command":"ls -la","description":"List","timeout":5000}},
            {"type":"tool_use","name":"Read","input":{"file_path":"/w/a.rs","offset":3}},
            {"type":"tool_use","name":"Edit","input":{"file_path":"/w/a.rs","old_string":"a\nb","new_string":"c"}},
            {"type":"tool_use","name":"Grep","input":{"pattern":"fn main","path":"src"}},
            {"type":"tool_use","name":"Glob","input":{"pattern":"**/*.rs"}},
            {"type":"tool_use","name":"Task","input":{"subagent_type":"explorer","description":"Find","prompt":"look"}},
            {"type":"tool_use","name":"TodoWrite","input":{"todos":[{"content":"x","status":"completed"},{"content":"y","status":"pending"}]}},
            {"type":"tool_use","name":"WebFetch","input":{"url":"https://x"}}
        ]}})
        .to_string();
        let it = items(1, &line(&raw));
        assert_eq!(it.len(), 9);
        assert_eq!((it[0].kind, it[0].body.as_str()), ("text", "Let me look."));
        assert_eq!(it[1].body, "$ ls -la");
        assert_eq!(it[1].detail, "List (timeout=5000ms)");
        assert_eq!(it[2].detail, "/w/a.rs");
        assert_eq!(it[3].diff.len(), 3);
        assert_eq!(it[3].diff[2].text, "+ c");
        assert_eq!(it[4].detail, "/fn main/");
        assert_eq!(it[5].detail, "**/*.rs");
        assert_eq!(it[6].title, "Task: explorer");
        assert_eq!(it[7].detail, "1/2 done");
        assert!(it[8].body.contains("https://x"));
    }

    #[test]
    fn long_results_are_cut_and_errors_marked() {
        let text: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        let raw = serde_json::json!({"type":"user","parent_tool_use_id":"toolu_abcdef123456","message":{"content":[
            {"type":"tool_result","content":text.join("\n"),"is_error":true},
            {"type":"tool_result","content":[{"type":"text","text":""}]}
        ]}})
        .to_string();
        let it = items(2, &line(&raw));
        assert_eq!(it.len(), 2);
        assert!(it[0].error);
        assert_eq!(it[0].body.lines().count(), RESULT_LINES);
        assert_eq!(it[0].more_lines, 30);
        assert_eq!(it[0].subagent, "subagent:abcdef12");
        assert_eq!(it[1].body, "(empty)");
    }

    #[test]
    fn garbage_is_raw_never_a_panic() {
        for raw in [
            "",
            "not json <script>",
            "[1,2]",
            "{\"type\":\"assistant\"}",
            "{\"type\":\"assistant\",\"message\":{\"content\":[5, null, {\"type\":\"tool_use\"}]}}",
            "{\"type\":\"user\",\"message\":{\"content\":7}}",
            "{\"type\":\"result\",\"num_turns\":\"x\"}",
            "{\"type\":\"system\",\"tools\":[1,2]}",
        ] {
            let it = items(3, &line(raw));
            assert!(!it.is_empty(), "{raw}");
        }
    }
}
