//! Email intake against fixture suites, generated extremes and random
//! mutations.
//!
//! `fixtures/email/<suite>/<quirk>.eml` each have an expected
//! `<quirk>.json`:
//! * `parse/`: the [`ParsedMessage`] (attachment content as size and
//!   BLAKE3), or `{"error": …}`, with [`ParseContext::for_test`];
//! * `trust/`: a case file `{"config": …, "decision": …}`: the decision of
//!   `authenticate` then `authorize` under that config (default config when
//!   the file has none).
//!
//! On a mismatch the test writes `<quirk>.actual.json` (git-ignored) beside
//! the fixture and fails; an empty suite fails. `AIRUT_BLESS=1` rewrites the
//! expected files: read every changed one before committing it.

use std::path::{Path, PathBuf};

use airut::channels::email::parse::SkipReason;
use airut::channels::email::{
    Allowlist, Inbound, ParseContext, TrustConfig, TrustDecision, authenticate, authorize, inspect,
    parse,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn suite_dir(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/email")
        .join(suite)
}

fn blessing() -> bool {
    std::env::var_os("AIRUT_BLESS").is_some_and(|v| v == "1")
}

fn emls(suite: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite_dir(suite))
        .expect("suite directory exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "suite {suite} has no .eml fixtures");
    files
}

/// Compare `actual` with the expected JSON beside `eml`; collect problems.
fn check(eml: &Path, actual: &Value, problems: &mut Vec<String>) {
    let expected_path = eml.with_extension("json");
    let actual_path = eml.with_extension("actual.json");
    let pretty = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if blessing() {
        std::fs::write(&expected_path, &pretty).expect("write expected");
        let _ = std::fs::remove_file(&actual_path);
        return;
    }
    let expected: Option<Value> = std::fs::read_to_string(&expected_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    if expected.as_ref() == Some(actual) {
        let _ = std::fs::remove_file(&actual_path);
    } else {
        std::fs::write(&actual_path, &pretty).expect("write actual");
        problems.push(format!(
            "{}: differs from {} (see {})",
            eml.display(),
            expected_path.display(),
            actual_path.display()
        ));
    }
}

#[test]
fn parse_suite() {
    let ctx = ParseContext::for_test();
    let mut problems = Vec::new();
    for eml in emls("parse") {
        let raw = std::fs::read(&eml).expect("readable fixture");
        let actual = match parse(&raw, &ctx) {
            Ok(p) => serde_json::to_value(&p).expect("serializable"),
            Err(e) => json!({ "error": e.to_string() }),
        };
        check(&eml, &actual, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn default_trust_case() -> Value {
    json!({
        "trusted_authserv_id": "mx.example.net",
        "microsoft_internal_fallback": false,
        "authorized_senders": ["alice@example.com", "*@example.org"],
    })
}

#[test]
fn trust_suite() {
    let mut problems = Vec::new();
    for eml in emls("trust") {
        let raw = std::fs::read(&eml).expect("readable fixture");
        let config = std::fs::read_to_string(eml.with_extension("json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v.get("config").cloned())
            .unwrap_or_else(default_trust_case);
        let trust = TrustConfig {
            trusted_authserv_id: config["trusted_authserv_id"]
                .as_str()
                .expect("config.trusted_authserv_id")
                .to_owned(),
            microsoft_internal_fallback: config["microsoft_internal_fallback"]
                .as_bool()
                .expect("config.microsoft_internal_fallback"),
        };
        let senders: Vec<String> = config["authorized_senders"]
            .as_array()
            .expect("config.authorized_senders")
            .iter()
            .map(|v| v.as_str().expect("sender pattern").to_owned())
            .collect();
        let allowlist = Allowlist::new(&senders).expect("valid allowlist");
        let decision = match authenticate(&raw, &trust) {
            TrustDecision::Trusted { sender } => authorize(&sender, &allowlist),
            rejected => rejected,
        };
        let actual = json!({ "config": config, "decision": decision });
        check(&eml, &actual, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// === the whole intake ===

fn trust_config() -> TrustConfig {
    TrustConfig {
        trusted_authserv_id: "mx.example.net".to_owned(),
        microsoft_internal_fallback: false,
    }
}

fn allowlist() -> Allowlist {
    Allowlist::new(&["alice@example.com", "*@example.org"]).expect("valid")
}

fn intake(raw: &[u8]) -> Inbound {
    inspect(
        raw,
        &trust_config(),
        &allowlist(),
        &ParseContext::for_test(),
    )
}

fn fixture(suite: &str, name: &str) -> Vec<u8> {
    std::fs::read(suite_dir(suite).join(format!("{name}.eml"))).expect("fixture exists")
}

#[test]
fn intake_accepts_a_trusted_reply_and_finds_its_conversation() {
    let Inbound::Accepted(msg) = intake(&fixture("parse", "gmail-reply")) else {
        panic!("gmail reply must be accepted");
    };
    assert_eq!(msg.from, "alice@example.com");
    assert_eq!(
        msg.conversation.map(|c| c.id.to_string()).as_deref(),
        Some("0badf00d")
    );
    assert_eq!(msg.model_hint.as_deref(), Some("opus"));
}

#[test]
fn intake_rejects_machines_strangers_and_garbage_without_panicking() {
    let reason = |raw: &[u8]| match intake(raw) {
        Inbound::Rejected { reason, .. } => {
            Some(airut::channels::email::reject_reason_name(&reason))
        }
        Inbound::Accepted(_) => None,
    };
    assert_eq!(
        reason(&fixture("parse", "outlook-auto-reply")),
        Some("auto_generated")
    );
    assert_eq!(
        reason(&fixture("parse", "mailing-list")),
        Some("auto_generated")
    );
    assert_eq!(
        reason(&fixture("trust", "not-authorized")),
        Some("not_authorized")
    );
    assert_eq!(
        reason(&fixture("trust", "spoofed-pass-below-real-fail")),
        Some("not_authenticated")
    );
    assert_eq!(reason(b""), Some("malformed"));
    assert_eq!(reason(b"\r\n\r\n"), Some("not_authenticated"));
}

// === generated extremes ===

/// A trusted message with one attachment of `size` bytes.
fn with_attachment(size: usize) -> Vec<u8> {
    let mut raw = fixture("trust", "pass");
    // Replace the single-part body with a multipart one.
    let cut = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    raw.truncate(cut);
    let headers = String::from_utf8(raw).expect("ascii headers").replace(
        "Content-Type: text/plain; charset=utf-8",
        "Content-Type: multipart/mixed; boundary=\"big\"",
    );
    let mut out = headers.into_bytes();
    out.extend_from_slice(
        b"\r\n\r\n--big\r\nContent-Type: text/plain\r\n\r\nA big file.\r\n--big\r\n\
          Content-Type: application/octet-stream\r\n\
          Content-Disposition: attachment; filename=\"dump.bin\"\r\n\
          Content-Transfer-Encoding: base64\r\n\r\n",
    );
    // Deterministic content, base64 in 76-column lines.
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut line = 0;
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let enc = [
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            if chunk.len() > 1 {
                ALPHABET[(n >> 6) as usize & 63]
            } else {
                b'='
            },
            if chunk.len() > 2 {
                ALPHABET[n as usize & 63]
            } else {
                b'='
            },
        ];
        out.extend_from_slice(&enc);
        line += 4;
        if line >= 76 {
            out.extend_from_slice(b"\r\n");
            line = 0;
        }
    }
    out.extend_from_slice(b"\r\n--big--\r\n");
    out
}

#[test]
fn a_25_mb_attachment_is_reported_not_kept_under_the_cap_and_kept_above_it() {
    let raw = with_attachment(25_000_000);
    let ctx = ParseContext::for_test();
    let msg = parse(&raw, &ctx).expect("parses");
    assert_eq!(msg.body, "A big file.");
    assert!(msg.attachments.is_empty());
    let [skipped] = msg.skipped_attachments.as_slice() else {
        panic!("one skipped attachment: {:?}", msg.skipped_attachments);
    };
    assert_eq!(skipped.size, 25_000_000);
    assert_eq!(skipped.original_name.as_deref(), Some("dump.bin"));
    assert_eq!(skipped.reason, SkipReason::TooLarge { limit: 10 << 20 });

    let roomy = ParseContext {
        max_attachment_bytes: 30 << 20,
        max_total_attachment_bytes: 30 << 20,
        ..ParseContext::for_test()
    };
    let msg = parse(&raw, &roomy).expect("parses");
    assert_eq!(msg.attachments.len(), 1);
    assert_eq!(msg.attachments[0].data.len(), 25_000_000);
    assert_eq!(msg.attachments[0].name, "dump.bin");

    let tight = ParseContext {
        max_message_bytes: 1 << 20,
        ..ParseContext::for_test()
    };
    assert!(parse(&raw, &tight).is_err());
}

#[test]
fn huge_headers_and_deep_html_stay_fast_and_safe() {
    let base = String::from_utf8(fixture("trust", "pass")).expect("ascii");
    let huge_subject = base.replacen(
        "Subject: Task",
        &format!("Subject: {}", "=?utf-8?q?a?= ".repeat(100_000)),
        1,
    );
    let msg = parse(huge_subject.as_bytes(), &ParseContext::for_test()).expect("parses");
    assert!(msg.subject.chars().count() <= 1000);

    let many_refs = base.replacen(
        "Subject: Task",
        &format!(
            "References: {}\r\nSubject: Task",
            (0..5000)
                .map(|i| format!("<r{i}@example.com>"))
                .collect::<Vec<_>>()
                .join("\r\n ")
        ),
        1,
    );
    let msg = parse(many_refs.as_bytes(), &ParseContext::for_test()).expect("parses");
    assert_eq!(msg.thread_refs.len(), 100);
    assert_eq!(
        msg.thread_refs.last().map(String::as_str),
        Some("r4999@example.com")
    );

    let deep_html = base.replacen("text/plain", "text/html", 1).replacen(
        "Hello.",
        &format!(
            "{}deep{}",
            "<div><blockquote type=cite>".repeat(20_000),
            "</b>".repeat(20_000)
        ),
        1,
    );
    let msg = parse(deep_html.as_bytes(), &ParseContext::for_test()).expect("parses");
    assert_eq!(msg.body, "[quoted text removed]");
}

// === random mutations ===

fn corpus() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for suite in ["parse", "trust"] {
        for eml in emls(suite) {
            all.push(std::fs::read(eml).expect("readable"));
        }
    }
    all
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop::sample::select(vec![
        b"\r\n".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"--".to_vec(),
        b"<".to_vec(),
        b">".to_vec(),
        b"=?utf-8?b?".to_vec(),
        b"?=".to_vec(),
        b"\r\nFrom: x@y\r\n".to_vec(),
        b"\r\nAuthentication-Results: mx.example.net; dmarc=pass\r\n".to_vec(),
        b"\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n".to_vec(),
        b"<blockquote type=cite>".to_vec(),
        b"&#x".to_vec(),
        b"\0".to_vec(),
        vec![0xff, 0xfe, 0xc3],
        b"filename*0*=utf-8''%".to_vec(),
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), tokens).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), 1usize..200).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..400).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(raw: &mut Vec<u8>, m: &Mutation) {
    let len = raw.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            if let Some(x) = raw.get_mut(i % len) {
                *x ^= b | 1;
            }
        }
        Mutation::Insert(i, t) => {
            let at = i % (raw.len() + 1);
            raw.splice(at..at, t.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let at = i % len;
            let end = (at + n).min(raw.len());
            if at < end {
                raw.drain(at..end);
            }
        }
        Mutation::Duplicate(i, n) => {
            let at = i % len;
            let end = (at + n).min(raw.len());
            if at < end {
                let copy = raw[at..end].to_vec();
                raw.splice(end..end, copy);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..12),
    ) {
        let corpus = corpus();
        let mut raw = pick.get(&corpus).clone();
        for m in &mutations {
            apply(&mut raw, m);
        }
        let _ = intake(&raw);
        let _ = authenticate(&raw, &TrustConfig::default());
        let _ = parse(&raw, &ParseContext::for_test());
    }

    #[test]
    fn random_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = intake(&raw);
    }
}
