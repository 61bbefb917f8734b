use super::*;

fn run(lines: &[&str], exit: Exit) -> ExecutionResult {
    let mut acc = Accumulator::default();
    for l in lines {
        acc.push_stdout(l);
    }
    acc.finish(exit)
}

fn exited(code: i64) -> Exit {
    Exit {
        code: Some(code),
        oom_killed: false,
        timed_out: false,
        stopped: false,
    }
}

const INIT: &str =
    r#"{"type":"system","subtype":"init","session_id":"s-init","tools":["Bash"],"model":"x"}"#;
const TODO: &str = r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"TodoWrite","input":{"todos":[{"content":"a","status":"pending","activeForm":"A"}]}}]},"session_id":"s-init"}"#;
const RESULT: &str = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":1200,"num_turns":3,"result":"Done.","session_id":"s-final","total_cost_usd":0.0123,"usage":{"input_tokens":10,"output_tokens":20,"cache_creation_input_tokens":3,"cache_read_input_tokens":4}}"#;

#[test]
fn kinds_of_every_line_shape() {
    let mut acc = Accumulator::default();
    assert_eq!(acc.push_stdout(INIT), OutputKind::SystemInit);
    assert_eq!(
        acc.push_stdout(r#"{"type":"system","subtype":"compact_boundary"}"#),
        OutputKind::System
    );
    assert_eq!(acc.push_stdout(TODO), OutputKind::Assistant);
    assert_eq!(
        acc.push_stdout(r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"ok","is_error":false}]}}"#),
        OutputKind::User
    );
    assert_eq!(
        acc.push_stdout(r#"{"type":"user","message":{"content":"plain string"}}"#),
        OutputKind::User
    );
    assert_eq!(acc.push_stdout(RESULT), OutputKind::Result);
    assert_eq!(
        acc.push_stdout(r#"{"type":"stream_event"}"#),
        OutputKind::OtherJson
    );
    assert_eq!(acc.push_stdout(r#"{"no_type":1}"#), OutputKind::OtherJson);
    assert_eq!(acc.push_stdout(r#"{"type":7}"#), OutputKind::Text);
    assert_eq!(acc.push_stdout("not json at all"), OutputKind::Text);
    assert_eq!(acc.push_stdout("{broken"), OutputKind::Text);
    assert_eq!(acc.push_stdout("[1,2]"), OutputKind::Text);
    assert_eq!(acc.push_stdout(""), OutputKind::Text);
    assert_eq!(classify(INIT), OutputKind::SystemInit);
    assert_eq!(classify("\u{0}\u{ffff}"), OutputKind::Text);
}

#[test]
fn success_takes_session_cost_usage_from_the_last_result() {
    let r = run(&[INIT, TODO, RESULT], exited(0));
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.session_id.as_deref(), Some("s-final"));
    assert_eq!(r.response_text, "Done.");
    assert_eq!(r.duration_ms, 1200);
    assert_eq!(r.num_turns, Some(3));
    assert_eq!(r.total_cost_usd, Some(0.0123));
    assert_eq!(r.usage.output_tokens, 20);
    assert_eq!(r.usage.cache_read_input_tokens, 4);
    assert_eq!(r.error_summary, None);
}

#[test]
fn session_falls_back_to_init_and_no_output_has_a_sentence() {
    let r = run(&[INIT], exited(0));
    assert_eq!(r.session_id.as_deref(), Some("s-init"));
    assert_eq!(r.response_text, NO_OUTPUT);
}

#[test]
fn several_results_sum_durations_and_join_texts() {
    let second = RESULT.replace("Done.", "Also done.").replace("1200", "800");
    let r = run(&[INIT, RESULT, &second], exited(0));
    assert_eq!(r.duration_ms, 2000);
    assert_eq!(r.num_turns, Some(6));
    assert_eq!(r.response_text, "Done.\n\nAlso done.");
}

fn assistant(text: &str) -> String {
    serde_json::json!({"type":"assistant","message":{"content":[{"type":"text","text":text}]}})
        .to_string()
}

#[test]
fn reply_prefers_a_long_answer_followed_by_a_short_coda() {
    let long = "x".repeat(400);
    let lines = [
        assistant("thinking"),
        assistant(&long),
        assistant("Hope this helps!"),
    ];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = run(&refs, exited(0));
    assert_eq!(r.response_text, format!("{long}\n\nHope this helps!"));

    let lines = [assistant("first answer"), assistant("second answer")];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(run(&refs, exited(0)).response_text, "second answer");
}

#[test]
fn outcomes_in_priority_order() {
    let timeout = Exit {
        timed_out: true,
        ..exited(0)
    };
    assert_eq!(run(&[RESULT], timeout).outcome, Outcome::Timeout);
    let stopped = Exit {
        stopped: true,
        code: Some(143),
        ..exited(0)
    };
    assert_eq!(run(&[RESULT], stopped).outcome, Outcome::Stopped);
    assert_eq!(
        run(&["API Error: 400 Prompt is too long"], exited(1)).outcome,
        Outcome::PromptTooLong
    );
    assert_eq!(
        run(&["API Error: 400 invalid session"], exited(1)).outcome,
        Outcome::SessionCorrupted
    );
    let mut acc = Accumulator::default();
    acc.push_stderr("API Error: 404 not found");
    assert_eq!(acc.finish(exited(1)).outcome, Outcome::SessionCorrupted);
    let r = run(&[INIT], exited(137));
    assert_eq!(r.outcome, Outcome::ContainerFailed);
    assert_eq!(r.response_text, "");
    assert_eq!(
        run(
            &[],
            Exit {
                code: None,
                ..exited(0)
            }
        )
        .outcome,
        Outcome::ContainerFailed
    );
}

#[test]
fn error_summary_keeps_the_last_ten_lines() {
    let text: String = (1..=15).map(|i| format!("line {i}\n")).collect();
    let lines = [assistant(&text)];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = run(&refs, exited(2));
    let summary = r.error_summary.expect("a summary");
    assert_eq!(summary.lines().count(), 10);
    assert!(summary.starts_with("line 6"));
    let failed = RESULT.replace("Done.", "It broke.");
    assert_eq!(
        run(&[&failed], exited(1)).error_summary.as_deref(),
        Some("It broke.")
    );
}

#[test]
fn web_tools_are_counted() {
    let line = r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"WebSearch","input":{}},{"type":"tool_use","name":"WebFetch","input":{"url":"u"}},{"type":"tool_use","name":"WebFetch","input":{}}]}}"#;
    let r = run(&[line], exited(0));
    assert_eq!((r.web_search_count, r.web_fetch_count), (1, 2));
}

#[test]
fn very_long_lines_parse() {
    let long = assistant(&"y".repeat(5 * 1024 * 1024));
    let mut acc = Accumulator::default();
    assert_eq!(acc.push_stdout(&long), OutputKind::Assistant);
    assert_eq!(acc.finish(exited(0)).response_text.len(), 5 * 1024 * 1024);
}

proptest::proptest! {
    #[test]
    fn any_line_is_classified_without_panicking(s in ".*") {
        let mut acc = Accumulator::default();
        acc.push_stdout(&s);
        acc.push_stderr(&s);
        let _ = acc.finish(exited(0));
    }
}
