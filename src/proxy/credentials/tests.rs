use std::collections::BTreeMap;

use super::*;

type Row<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str], bool);

fn creds(entries: &[Row<'_>]) -> TaskCredentials {
    let map: BTreeMap<String, MaskedSecretConfig> = entries
        .iter()
        .map(|(name, value, scopes, headers, foreign)| {
            (
                name.to_string(),
                MaskedSecretConfig {
                    value: Secret::new(*value),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    headers: headers.iter().map(|s| s.to_string()).collect(),
                    allow_foreign_credentials: *foreign,
                },
            )
        })
        .collect();
    TaskCredentials::new(&map)
}

fn surrogate(c: &TaskCredentials, name: &str) -> String {
    c.surrogates()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
}

#[test]
fn surrogates_keep_shape_and_change_per_task() {
    for real in [
        "ghp_AbCdEf0123456789abcdef0123456789ABCD",
        "sk-ant-api03-xyz_ABC-123",
        "AKIAIOSFODNN7EXAMPLE",
        "plainlowercase",
        "UPPER123",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    ] {
        let a = surrogate_for(real);
        let b = surrogate_for(real);
        assert_eq!(a.len(), real.len(), "{real}");
        assert_ne!(a, real);
        assert_ne!(a, b, "surrogates must be fresh each time");
        let prefix = KNOWN_PREFIXES.iter().find(|p| real.starts_with(**p));
        if let Some(p) = prefix {
            assert!(a.starts_with(p));
        }
        let suffix = &a[prefix.map_or(0, |p| p.len())..];
        let real_suffix = &real[prefix.map_or(0, |p| p.len())..];
        for c in suffix.chars() {
            let ok = (c.is_ascii_uppercase()
                && real_suffix.chars().any(|r| r.is_ascii_uppercase()))
                || (c.is_ascii_lowercase() && real_suffix.chars().any(|r| r.is_ascii_lowercase()))
                || (c.is_ascii_digit() && real_suffix.chars().any(|r| r.is_ascii_digit()))
                || ((c == '-' || c == '_')
                    && real_suffix.chars().any(|r| !r.is_ascii_alphanumeric()));
            assert!(ok, "{c:?} in surrogate of {real}");
        }
    }
    assert_eq!(surrogate_for(""), "");
}

#[test]
fn swaps_only_in_scope_and_configured_headers() {
    let c = creds(&[(
        "GH",
        "ghp_realrealreal",
        &["api.github.com"],
        &["Authorization"],
        false,
    )]);
    let s = surrogate(&c, "GH");
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("token {s}").parse().unwrap());
    h.insert("x-other", s.parse().unwrap());
    let notes = c.apply("API.github.com", &mut h);
    assert_eq!(h["authorization"], "token ghp_realrealreal");
    assert_eq!(h["x-other"], s.as_str(), "unconfigured header untouched");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].action, CredentialAction::Swapped);

    let mut h = HeaderMap::new();
    h.insert("authorization", format!("token {s}").parse().unwrap());
    let notes = c.apply("evil.example", &mut h);
    assert_eq!(h["authorization"], format!("token {s}").as_str());
    assert_eq!(notes[0].action, CredentialAction::LeftMasked);
}

#[test]
fn basic_auth_is_swapped_inside() {
    let c = creds(&[(
        "PW",
        "hunter2hunter2",
        &["git.example.com"],
        &["authorization"],
        false,
    )]);
    let s = surrogate(&c, "PW");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        format!("Basic {}", b64.encode(format!("user:{s}")))
            .parse()
            .unwrap(),
    );
    c.apply("git.example.com", &mut h);
    let v = h["authorization"].to_str().unwrap();
    let decoded = b64.decode(v.strip_prefix("Basic ").unwrap()).unwrap();
    assert_eq!(decoded, b"user:hunter2hunter2");
}

#[test]
fn foreign_credentials_stripped_and_duplicates_collapsed() {
    let c = creds(&[(
        "GH",
        "ghp_realrealreal",
        &["*.github.com"],
        &["authorization", "x-*"],
        false,
    )]);
    let s = surrogate(&c, "GH");
    // Foreign value in an exactly-named header: stripped, all entries.
    let mut h = HeaderMap::new();
    h.append("authorization", "token attacker-own".parse().unwrap());
    h.append("authorization", "token second".parse().unwrap());
    h.insert("x-token", "foreign".parse().unwrap());
    let notes = c.apply("api.github.com", &mut h);
    assert!(!h.contains_key("authorization"));
    assert_eq!(
        h["x-token"], "foreign",
        "glob-matched headers are never stripped"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.action == CredentialAction::Stripped && n.count == 2)
    );

    // Duplicates: the one with the surrogate wins, the rest go.
    let mut h = HeaderMap::new();
    h.append("authorization", "token attacker-own".parse().unwrap());
    h.append("authorization", format!("token {s}").parse().unwrap());
    let notes = c.apply("api.github.com", &mut h);
    let all: Vec<_> = h.get_all("authorization").iter().collect();
    assert_eq!(all, vec!["token ghp_realrealreal"]);
    assert!(notes.iter().any(|n| n.action == CredentialAction::Swapped));
    assert!(
        notes
            .iter()
            .any(|n| n.action == CredentialAction::Stripped && n.count == 1)
    );

    // allow_foreign_credentials keeps them.
    let c = creds(&[(
        "GH",
        "ghp_realrealreal",
        &["*.github.com"],
        &["authorization"],
        true,
    )]);
    let mut h = HeaderMap::new();
    h.insert("authorization", "token mine".parse().unwrap());
    c.apply("api.github.com", &mut h);
    assert_eq!(h["authorization"], "token mine");
}

#[test]
fn real_value_never_in_annotations_or_debug() {
    let c = creds(&[("GH", "ghp_realrealreal", &["*"], &["authorization"], false)]);
    assert!(!format!("{c:?}").contains("realrealreal"));
    let s = surrogate(&c, "GH");
    let mut h = HeaderMap::new();
    h.insert("authorization", s.parse().unwrap());
    let notes = c.apply("x", &mut h);
    assert!(!format!("{notes:?}").contains("realrealreal"));
}
