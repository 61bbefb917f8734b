//! Claude Code's `--output-format stream-json` output, one line at a time,
//! folded into the result of a run.
//!
//! Each stdout line is classified ([`OutputKind`]: `system/init`, other
//! `system`, `assistant`, `user`, `result`, other JSON, or not JSON at all)
//! and folded into an [`Accumulator`]; stderr lines are folded too (they can
//! carry the API errors that mean a corrupted session). A line that is not
//! JSON, or JSON of an unexpected shape, is never an error: it is kept as
//! raw output by the caller and classified as such here. When the container
//! is done, [`Accumulator::finish`] classifies the outcome and computes the
//! [`ExecutionResult`], as the reference system does: session id from the
//! last `result` (else `system/init`), durations and turns summed over
//! several `result`s, cost and usage from the last one, reply text selection,
//! web tool counts, and an error summary of the last lines.
//!
//! Pure: no I/O, no clock. Called by [`super::run`] and the benchmark.

#![deny(clippy::indexing_slicing)]

use serde::Deserialize;
use serde::de::IgnoredAny;

pub use crate::events::OutputKind;

/// Text used when a successful run produced no text at all.
pub const NO_OUTPUT: &str = "No output received from Claude.";

/// How many lines the error summary keeps.
const SUMMARY_LINES: usize = 10;

/// How a run ended, in priority order (the first that applies wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The timeout elapsed; the container was killed; partial output kept.
    Timeout,
    /// Stopped on request (user, operator or server shutdown).
    Stopped,
    /// The agent exited 0 (even if its result line says `is_error`).
    Success,
    /// A stdout line said the prompt is too long for the model.
    PromptTooLong,
    /// The API refused the resumed session (`API Error: 4..` on stdout or
    /// stderr): retry without `--resume`.
    SessionCorrupted,
    /// Anything else: non-zero exit, killed, out of memory.
    ContainerFailed,
}

/// Token usage as reported by the last `result` line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// What a run produced, for the task's outcome and reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The Claude session (for `--resume` next time).
    pub session_id: Option<String>,
    /// The reply text; only for [`Outcome::Success`], else empty.
    pub response_text: String,
    /// Sum of the `duration_ms` of every `result` line.
    pub duration_ms: u64,
    /// Cost in USD, from the last `result` line.
    pub total_cost_usd: Option<f64>,
    /// Sum of `num_turns` of every `result` line.
    pub num_turns: Option<u32>,
    /// `is_error` of the last `result` line.
    pub is_error: bool,
    /// Token usage of the last `result` line.
    pub usage: Usage,
    /// `WebSearch` tool uses seen.
    pub web_search_count: u32,
    /// `WebFetch` tool uses seen.
    pub web_fetch_count: u32,
    /// For failures: the last result text, else the assistant texts, cut
    /// to the last 10 lines.
    pub error_summary: Option<String>,
    /// The process's exit code (`None` when it never reported one).
    pub exit_code: Option<i64>,
    /// Whether the kernel killed it for memory.
    pub oom_killed: bool,
}

/// How the container ended, as the runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, if the engine reported one.
    pub code: Option<i64>,
    /// Killed for memory.
    pub oom_killed: bool,
    /// The timeout elapsed.
    pub timed_out: bool,
    /// Stopped on request.
    pub stopped: bool,
}

/// Folds output lines into the run's result.
#[derive(Debug, Default)]
pub struct Accumulator {
    init_session: Option<String>,
    results: Vec<ResultLine>,
    /// Per assistant line with text: its text blocks joined.
    assistant_texts: Vec<String>,
    web_searches: u32,
    web_fetches: u32,
    prompt_too_long: bool,
    api_error_4: bool,
}

#[derive(Debug, Default)]
struct ResultLine {
    session_id: Option<String>,
    text: Option<String>,
    duration_ms: u64,
    num_turns: Option<u32>,
    cost: Option<f64>,
    is_error: bool,
    usage: Usage,
}

// The wire shapes, borrowing from the line; unknown fields are skipped.

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    subtype: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    num_turns: Option<u32>,
    #[serde(default)]
    total_cost_usd: Option<f64>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default, deserialize_with = "content_blocks")]
    content: Vec<WireBlock>,
}

#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type", default)]
    ty: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    input: Option<IgnoredAny>,
}

/// `content` is a list of blocks, or (for plain user messages) a string.
fn content_blocks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<WireBlock>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Blocks(Vec<WireBlock>),
        Other(IgnoredAny),
    }
    Ok(match Content::deserialize(d)? {
        Content::Blocks(b) => b,
        Content::Other(_) => Vec::new(),
    })
}

/// Classifies one stdout line without folding it (used where only the kind
/// is needed).
pub fn classify(line: &str) -> OutputKind {
    match serde_json::from_str::<Wire<'_>>(line) {
        Ok(w) => kind_of(&w),
        Err(_) => OutputKind::Text,
    }
}

fn kind_of(w: &Wire<'_>) -> OutputKind {
    match (w.ty.as_deref(), w.subtype.as_deref()) {
        (Some("system"), Some("init")) => OutputKind::SystemInit,
        (Some("system"), _) => OutputKind::System,
        (Some("assistant"), _) => OutputKind::Assistant,
        (Some("user"), _) => OutputKind::User,
        (Some("result"), _) => OutputKind::Result,
        _ => OutputKind::OtherJson,
    }
}

// === impl Accumulator ===

impl Accumulator {
    /// Folds one stdout line; returns its kind.
    pub fn push_stdout(&mut self, line: &str) -> OutputKind {
        if line.contains("Prompt is too long") {
            self.prompt_too_long = true;
        }
        if line.contains("API Error: 4") {
            self.api_error_4 = true;
        }
        let trimmed = line.trim();
        if !trimmed.starts_with('{') {
            return OutputKind::Text;
        }
        let Ok(w) = serde_json::from_str::<Wire<'_>>(trimmed) else {
            return OutputKind::Text;
        };
        let kind = kind_of(&w);
        match kind {
            OutputKind::SystemInit if w.session_id.is_some() => {
                self.init_session = w.session_id;
            }
            OutputKind::Assistant => {
                let blocks = w.message.map(|m| m.content).unwrap_or_default();
                let mut texts = Vec::new();
                for b in blocks {
                    match b.ty.as_str() {
                        "text" => texts.extend(b.text.filter(|t| !t.is_empty())),
                        "tool_use" => match b.name.as_deref() {
                            Some("WebSearch") => self.web_searches += 1,
                            Some("WebFetch") => self.web_fetches += 1,
                            _ => {}
                        },
                        _ => {}
                    }
                }
                if !texts.is_empty() {
                    self.assistant_texts.push(texts.join("\n\n"));
                }
            }
            OutputKind::Result => self.results.push(ResultLine {
                session_id: w.session_id,
                text: w.result,
                duration_ms: w.duration_ms.unwrap_or(0),
                num_turns: w.num_turns,
                cost: w.total_cost_usd,
                is_error: w.is_error.unwrap_or(false),
                usage: w.usage.unwrap_or_default(),
            }),
            _ => {}
        }
        kind
    }

    /// Folds one stderr line (only its error markers matter).
    pub fn push_stderr(&mut self, line: &str) {
        if line.contains("API Error: 4") {
            self.api_error_4 = true;
        }
    }

    /// The session id seen so far (last `result`, else `system/init`).
    pub fn session_id(&self) -> Option<&str> {
        self.results
            .iter()
            .rev()
            .find_map(|r| r.session_id.as_deref())
            .or(self.init_session.as_deref())
    }

    /// Classifies the outcome and computes the result.
    pub fn finish(self, exit: Exit) -> ExecutionResult {
        let outcome = if exit.timed_out {
            Outcome::Timeout
        } else if exit.stopped {
            Outcome::Stopped
        } else if exit.code == Some(0) {
            Outcome::Success
        } else if self.prompt_too_long {
            Outcome::PromptTooLong
        } else if self.api_error_4 {
            Outcome::SessionCorrupted
        } else {
            Outcome::ContainerFailed
        };
        let session_id = self.session_id().map(str::to_owned);
        let last = self.results.last();
        let response_text = if outcome == Outcome::Success {
            self.select_reply()
        } else {
            String::new()
        };
        let error_summary = if outcome == Outcome::Success {
            None
        } else {
            let text = last
                .and_then(|r| r.text.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| self.assistant_texts.join("\n"));
            (!text.is_empty()).then(|| last_lines(&text, SUMMARY_LINES))
        };
        let num_turns = self
            .results
            .iter()
            .filter_map(|r| r.num_turns)
            .reduce(|a, b| a.saturating_add(b));
        ExecutionResult {
            outcome,
            session_id,
            response_text,
            duration_ms: self.results.iter().map(|r| r.duration_ms).sum(),
            total_cost_usd: last.and_then(|r| r.cost),
            num_turns,
            is_error: last.is_some_and(|r| r.is_error),
            usage: last.map(|r| r.usage.clone()).unwrap_or_default(),
            web_search_count: self.web_searches,
            web_fetch_count: self.web_fetches,
            error_summary,
            exit_code: exit.code,
            oom_killed: exit.oom_killed,
        }
    }

    /// The reply: several result texts joined; else the assistant texts
    /// with the "real answer and a short coda" rule; else the last result
    /// text; else a fixed sentence.
    fn select_reply(&self) -> String {
        let result_texts: Vec<&str> = self
            .results
            .iter()
            .filter_map(|r| r.text.as_deref())
            .filter(|t| !t.is_empty())
            .collect();
        if result_texts.len() > 1 {
            return result_texts.join("\n\n");
        }
        if let Some(reply) = select_reply_from_texts(&self.assistant_texts) {
            return reply;
        }
        result_texts
            .last()
            .map(|t| (*t).to_owned())
            .unwrap_or_else(|| NO_OUTPUT.to_owned())
    }
}

/// The last text, unless one of the four before it is at least four times
/// longer: then that one and everything after it (a real answer followed by
/// a short closing remark).
pub fn select_reply_from_texts(texts: &[String]) -> Option<String> {
    let last = texts.last()?;
    let start = texts.len().saturating_sub(5);
    let window = texts
        .get(start..texts.len().saturating_sub(1))
        .unwrap_or(&[]);
    let long = window
        .iter()
        .enumerate()
        .rev()
        .find(|(_, t)| t.len() >= last.len().saturating_mul(4) && t.len() > last.len());
    match long {
        Some((i, _)) => Some(texts.get(start + i..).unwrap_or(&[]).join("\n\n")),
        None => Some(last.clone()),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or(&[])
        .join("\n")
}

#[cfg(test)]
mod tests;
