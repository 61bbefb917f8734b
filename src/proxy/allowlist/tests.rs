use super::*;

#[derive(Deserialize)]
struct CaseFile {
    allowlist: serde_json::Value,
    cases: Vec<Vec<String>>,
}

fn run_case_file(name: &str) {
    let path = format!("{}/fixtures/allowlist/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let file: CaseFile = serde_saphyr::from_str(&text).unwrap();
    let yaml = serde_json::to_string(&file.allowlist).unwrap();
    let list = Allowlist::parse(yaml.as_bytes()).unwrap();
    assert!(!file.cases.is_empty(), "{name} has no cases");
    let mut failures = Vec::new();
    for case in &file.cases {
        let [host, path, method, expect, rest @ ..] = case.as_slice() else {
            panic!("bad case {case:?}");
        };
        let got = list.check(host, path, method);
        let ok = match (expect.as_str(), &got) {
            ("allow", Verdict::Allow { rule }) => rest.first().is_none_or(|r| r == rule),
            ("method", Verdict::MethodNotAllowed) => true,
            ("listed", Verdict::NotListed) => true,
            ("badpath", Verdict::BadPath { .. }) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{case:?} -> {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

#[test]
fn reference_table() {
    run_case_file("cases.yaml");
}

#[test]
fn path_patterns() {
    run_case_file("cases2.yaml");
}

#[test]
fn empty_and_null_documents_block_everything() {
    for doc in ["", "null", "{}", "domains: []\nurl_prefixes: []\n"] {
        let list = Allowlist::parse(doc.as_bytes()).unwrap();
        assert_eq!(list.check("example.com", "/", "GET"), Verdict::NotListed);
    }
}

#[test]
fn invalid_files_are_errors_never_open() {
    for (doc, needle) in [
        ("graphql: {}\n", "unknown field"),
        (
            "url_prefixes:\n  - host: a\n    graphql: {}\n",
            "unknown field",
        ),
        ("url_prefixes:\n  - path: /x\n", "host"),
        ("domains: [\"\"]\n", "domains[0] is empty"),
        ("domains: example.com\n", ""),
        (
            "url_prefixes:\n  - host: a\n    methods: [\"G T\"]\n",
            "not a method",
        ),
        ("domains: [a\n", ""),
        ("- just a list\n", ""),
    ] {
        match Allowlist::parse(doc.as_bytes()) {
            Err(AllowlistError::Invalid(msg)) => assert!(msg.contains(needle), "{doc:?}: {msg}"),
            other => panic!("{doc:?} gave {other:?}"),
        }
    }
    assert!(matches!(
        Allowlist::parse(&[0xff, 0xfe]),
        Err(AllowlistError::Invalid(_))
    ));
    assert!(matches!(
        Allowlist::parse(&vec![b' '; MAX_ALLOWLIST_BYTES + 1]),
        Err(AllowlistError::TooLarge(_))
    ));
}

#[test]
fn globs_behave_like_fnmatch() {
    for (p, s, want) in [
        ("*", "", true),
        ("*", "a/b.c", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXbY", false),
        ("*.x", "a.b.x", true),
        ("?", "", false),
        ("[!a]?", "ba", true),
        ("[!a]?", "aa", false),
        ("[]]*", "]x", true),
        ("[a-c]*", "bz", true),
        ("[a-c]*", "dz", false),
        ("[*", "[x", true),
        ("x[", "x[", true),
        ("**a", "bbba", true),
    ] {
        assert_eq!(pattern_match(p, s), want, "{p:?} vs {s:?}");
    }
    // A hostile pattern does not blow up.
    let p = "*a".repeat(50);
    assert!(!pattern_match(&p, &"a".repeat(40)));
}
