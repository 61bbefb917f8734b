//! The event catalogue as a stored format: golden bytes of every (type,
//! version), the pinned code table, hostile payload bytes, and JSON.
//!
//! Golden bytes live in `fixtures/events/<name>.v<version>.bin` and hold
//! `samples::sample(ty).encode()`. On a mismatch the test writes the new
//! bytes beside the fixture as `<file>.actual` (git-ignored) and fails. To
//! accept a change on purpose (only before the type's version ships in a
//! tagged release), run with `AIRUT_BLESS=1`, which rewrites the fixtures,
//! and commit them with the change.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use airut::events::samples::{sample, samples};
use airut::events::{Durability, Event, EventType, PayloadError};
use proptest::prelude::*;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/events")
}

fn fixture_path(ty: EventType, version: u16) -> PathBuf {
    fixture_dir().join(format!("{}.v{version}.bin", ty.name()))
}

fn blessing() -> bool {
    std::env::var_os("AIRUT_BLESS").is_some_and(|v| v == "1")
}

/// Bytes in 16-byte aligned memory, as the log hands them to `decode`.
fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut v = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

/// The stored bytes of every current (type, version): the fixture when it
/// exists, else the encoded sample (the golden test reports the missing file).
fn current_payloads() -> Vec<(EventType, Vec<u8>)> {
    EventType::ALL
        .iter()
        .map(|&ty| {
            let bytes = std::fs::read(fixture_path(ty, ty.current_version()))
                .unwrap_or_else(|_| sample(ty).encode().expect("samples encode").to_vec());
            (ty, bytes)
        })
        .collect()
}

/// One test, not two, so that blessing and listing never race.
#[test]
fn golden_bytes_cover_every_type_and_match_its_sample() {
    current_fixtures_match_samples();
    every_fixture_belongs_to_a_known_type_and_version();
}

fn current_fixtures_match_samples() {
    let mut problems = Vec::new();
    for &ty in EventType::ALL {
        let version = ty.current_version();
        let path = fixture_path(ty, version);
        let actual_path = path.with_extension("bin.actual");
        let encoded = sample(ty).encode().expect("samples encode");
        let stored = std::fs::read(&path).ok();

        if stored.as_deref() != Some(encoded.as_slice()) {
            if blessing() {
                std::fs::create_dir_all(fixture_dir()).expect("create fixtures/events");
                std::fs::write(&path, &encoded).expect("write the blessed fixture");
                let _ = std::fs::remove_file(&actual_path);
                // Straight to stderr, past the harness's capture: this must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n!!! AIRUT_BLESS=1: REWROTE {} ({} bytes).\n!!! Allowed only while \
                     {} v{version} is unreleased; commit it with the struct change.\n",
                    path.display(),
                    encoded.len(),
                    ty.name()
                );
            } else {
                std::fs::create_dir_all(fixture_dir()).expect("create fixtures/events");
                std::fs::write(&actual_path, &encoded).expect("write the .actual file");
                problems.push(match stored {
                    None => format!("{}: missing", path.display()),
                    Some(_) => format!(
                        "{}: differs from the encoded sample (see {})",
                        path.display(),
                        actual_path.display()
                    ),
                });
                continue;
            }
        } else {
            let _ = std::fs::remove_file(&actual_path);
        }

        let bytes = std::fs::read(&path).expect("read the fixture just checked");
        match Event::decode(ty.code(), version, &aligned(&bytes)) {
            Ok(decoded) if decoded == sample(ty) => {}
            Ok(decoded) => problems.push(format!(
                "{}: decodes to {decoded:?}, not the sample",
                path.display()
            )),
            Err(e) => problems.push(format!("{}: does not decode: {e}", path.display())),
        }
    }
    assert!(
        problems.is_empty(),
        "golden event bytes do not match:\n  {}\nIf the change is intended and the version is \
         unreleased, rerun with AIRUT_BLESS=1 and commit the fixtures.",
        problems.join("\n  ")
    );
}

fn every_fixture_belongs_to_a_known_type_and_version() {
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(fixture_dir()).expect("fixtures/events exists") {
        let entry = entry.expect("list fixtures/events");
        let Ok(name) = entry.file_name().into_string() else {
            problems.push(format!("{:?}: not a UTF-8 file name", entry.file_name()));
            continue;
        };
        if name.ends_with(".actual") {
            continue;
        }
        let parsed = name.strip_suffix(".bin").and_then(|stem| {
            let (ty, version) = stem.rsplit_once(".v")?;
            Some((EventType::from_name(ty)?, version.parse::<u16>().ok()?))
        });
        let Some((ty, version)) = parsed else {
            problems.push(format!("{name}: not <known type name>.v<version>.bin"));
            continue;
        };
        if version == 0 || version > ty.current_version() {
            problems.push(format!(
                "{name}: {} has versions 1..={}",
                ty.name(),
                ty.current_version()
            ));
            continue;
        }
        // An older version must still decode, through its upcaster.
        let bytes = std::fs::read(entry.path()).expect("read a listed fixture");
        if let Err(e) = Event::decode(ty.code(), version, &aligned(&bytes)) {
            problems.push(format!("{name}: does not decode: {e}"));
        }
        seen.insert((ty, version));
    }
    for &ty in EventType::ALL {
        for version in 1..=ty.current_version() {
            if !seen.contains(&(ty, version)) {
                problems.push(format!("{}.v{version}.bin: missing", ty.name()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The stored identity of every event type. Changing a row renumbers or
/// reclassifies stored data: add rows, never edit them.
const PINNED: &[(&str, u16, u16, Durability)] = &[
    ("store.created", 1, 1, Durability::Durable),
    ("config.loaded", 2, 1, Durability::Durable),
    ("server.started", 3, 1, Durability::Durable),
    ("server.stopped", 4, 1, Durability::Durable),
    ("repo.booted", 5, 1, Durability::Durable),
    ("channel.health_changed", 6, 1, Durability::Buffered),
    ("config.rejected", 7, 1, Durability::Durable),
    ("message.received", 100, 1, Durability::Durable),
    ("message.rejected", 101, 1, Durability::Durable),
    ("message.dismissed", 102, 1, Durability::Durable),
    ("conversation.started", 200, 1, Durability::Durable),
    ("conversation.resumed", 201, 1, Durability::Durable),
    ("conversation.expired", 202, 1, Durability::Durable),
    ("task.queued", 300, 1, Durability::Durable),
    ("task.coalesced", 301, 1, Durability::Durable),
    ("task.started", 302, 1, Durability::Durable),
    ("task.completed", 303, 1, Durability::Durable),
    ("task.interrupted", 304, 1, Durability::Durable),
    ("task.stop_requested", 320, 1, Durability::Durable),
    ("image.build_started", 400, 1, Durability::Buffered),
    ("image.build_output", 401, 1, Durability::Buffered),
    ("image.build_finished", 402, 1, Durability::Durable),
    ("image.pruned", 403, 1, Durability::Buffered),
    ("image.reused", 404, 1, Durability::Buffered),
    ("image.claude_binary_pruned", 405, 1, Durability::Buffered),
    ("container.created", 500, 1, Durability::Durable),
    ("container.started", 501, 1, Durability::Durable),
    ("container.output", 502, 1, Durability::Buffered),
    ("container.exited", 503, 1, Durability::Durable),
    ("container.stopped", 504, 1, Durability::Durable),
    ("container.output_blob", 505, 1, Durability::Buffered),
    ("network.request", 600, 1, Durability::Buffered),
    ("network.dns_query", 601, 1, Durability::Buffered),
    ("reply.sent", 700, 1, Durability::Durable),
    ("reply.failed", 701, 1, Durability::Durable),
    ("reply.started", 710, 1, Durability::Durable),
];

#[test]
fn codes_names_versions_and_durability_are_pinned() {
    let actual: Vec<_> = EventType::ALL
        .iter()
        .map(|&ty| (ty.name(), ty.code(), ty.current_version(), ty.durability()))
        .collect();
    assert_eq!(
        actual, PINNED,
        "the catalogue changed: a new type is a new row at the end of its family; an \
         existing row must never change"
    );
}

#[test]
fn codes_and_names_are_unique_and_look_up_both_ways() {
    let mut codes = BTreeMap::new();
    let mut names = BTreeMap::new();
    for &ty in EventType::ALL {
        assert!(
            codes.insert(ty.code(), ty).is_none(),
            "code {} reused",
            ty.code()
        );
        assert!(
            names.insert(ty.name(), ty).is_none(),
            "name {} reused",
            ty.name()
        );
        assert_eq!(EventType::from_code(ty.code()), Some(ty));
        assert_eq!(EventType::from_name(ty.name()), Some(ty));
        assert!(ty.current_version() >= 1);
    }
}

#[test]
fn doc_catalogue_has_a_row_for_every_type() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/events.md"))
        .expect("doc/events.md exists");
    for &ty in EventType::ALL {
        let row = format!(
            "| `{}` | {} | {} | {:?} |",
            ty.name(),
            ty.code(),
            ty.current_version(),
            ty.durability()
        );
        assert!(doc.contains(&row), "doc/events.md lacks the row {row}");
    }
}

#[test]
fn unknown_codes_and_versions_are_typed_errors() {
    let bytes = aligned(&sample(EventType::TaskQueued).encode().unwrap());
    for code in [0, 8, 199, 999, u16::MAX] {
        assert_eq!(
            Event::decode(code, 1, &bytes),
            Err(PayloadError::UnknownType(code))
        );
    }
    let ty = EventType::TaskQueued;
    for version in [0, ty.current_version() + 1, u16::MAX] {
        assert_eq!(
            Event::decode(ty.code(), version, &bytes),
            Err(PayloadError::UnknownVersion {
                name: "task.queued",
                version
            })
        );
    }
}

#[test]
fn misaligned_payloads_decode_like_aligned_ones() {
    for (ty, bytes) in current_payloads() {
        for offset in 1..16 {
            let mut buf = aligned(&vec![0u8; offset]);
            buf.extend_from_slice(&bytes);
            assert_eq!(
                Event::decode(ty.code(), ty.current_version(), &buf[offset..]).as_ref(),
                Ok(&sample(ty)),
                "{} at offset {offset}",
                ty.name()
            );
        }
    }
}

#[test]
fn every_truncation_and_single_bit_flip_is_handled_without_panic() {
    // rkyv validates structure, not integrity: a prefix, a flipped bit in a
    // string or in padding can still be a valid value. The header's payload
    // hash is what detects those; here decode must never panic, and when it
    // fails it fails with `Invalid`.
    for (ty, bytes) in current_payloads() {
        let version = ty.current_version();
        for len in 0..bytes.len() {
            if let Err(e) = Event::decode(ty.code(), version, &aligned(&bytes[..len])) {
                assert!(matches!(e, PayloadError::Invalid { .. }), "{e:?}");
            }
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = aligned(&bytes);
            flipped[bit / 8] ^= 1 << (bit % 8);
            if let Err(e) = Event::decode(ty.code(), version, &flipped) {
                assert!(matches!(e, PayloadError::Invalid { .. }), "{e:?}");
            }
        }
    }
}

/// How one random mutation of a payload looks.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_mutations_of_any_fixture_never_panic(
        which in 0..EventType::ALL.len(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let (ty, mut bytes) = current_payloads().swap_remove(which);
        for m in mutations {
            let len = bytes.len();
            match m {
                Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
                Mutation::Truncate(n) => bytes.truncate(n % (len + 1)),
                Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
                Mutation::Remove(i) if len > 0 => {
                    bytes.remove(i % len);
                }
                _ => {}
            }
        }
        if let Err(e) = Event::decode(ty.code(), ty.current_version(), &aligned(&bytes)) {
            prop_assert!(matches!(e, PayloadError::Invalid { .. }), "{:?}", e);
        }
    }
}

#[test]
fn every_sample_round_trips_through_json_as_type_and_data() {
    for event in samples() {
        let json = serde_json::to_value(&event).unwrap();
        let name = event.event_type().name();
        assert_eq!(json["type"], name);
        assert!(json["data"].is_object(), "{name}: {json}");
        assert_eq!(json.as_object().unwrap().len(), 2, "{name}: {json}");
        let text = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event, "{name}");
    }
}

#[test]
fn json_shows_ids_and_digests_as_strings() {
    let json = serde_json::to_value(sample(EventType::ConfigLoaded)).unwrap();
    let hash = json["data"]["content_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));

    let json = serde_json::to_value(sample(EventType::MessageReceived)).unwrap();
    assert_eq!(json["data"]["conversation_ref"], "1a2b3c4d");
    assert_eq!(json["data"]["raw"]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(json["data"]["attachments"][0]["blob"]["size"], 9_876);

    let json = serde_json::to_value(sample(EventType::TaskQueued)).unwrap();
    let task = json["data"]["task"].as_str().unwrap();
    assert_eq!(task.parse::<uuid::Uuid>().unwrap().get_version_num(), 7);
    assert_eq!(json["data"]["conversation"], "1a2b3c4d");
}
