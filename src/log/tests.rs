//! Unit tests of the log: codec, chains over a real store, version checks,
//! atomic batches, corruption and tampering, layouts, blobs.
//!
//! Integration tests (concurrency, subscriptions, crash, fixtures) are in
//! `tests/log.rs`.

use std::time::Duration;

use fjall::KeyspaceCreateOptions;
use proptest::prelude::*;

use super::*;
use crate::events::{ConversationId, DnsQueryV1, ServerStoppedV1, TaskId};

// === helpers ===

fn opts() -> LogOptions {
    LogOptions {
        flush_interval: Duration::from_millis(20),
        create: true,
        ..LogOptions::default()
    }
}

fn durable(reason: &str) -> NewEvent {
    NewEvent {
        event: Event::ServerStopped(ServerStoppedV1 {
            reason: reason.to_owned(),
        }),
        causation: None,
    }
}

fn buffered(name: &str) -> NewEvent {
    NewEvent {
        event: Event::DnsQuery(DnsQueryV1 {
            task: TaskId::new(),
            name: name.to_owned(),
            qtype: 1,
            answer: "127.0.0.1".to_owned(),
        }),
        causation: None,
    }
}

fn conv(n: u32) -> StreamId {
    ConversationId(n).stream()
}

fn batch(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream,
        expected,
        events,
    }
}

/// Overwrites the stored value of `seq` through the database handle.
fn overwrite(log: &Log, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    let events = log
        .database()
        .keyspace("events", KeyspaceCreateOptions::default)
        .unwrap();
    let mut value = events.get(seq.to_be_bytes()).unwrap().unwrap().to_vec();
    edit(&mut value);
    events.insert(seq.to_be_bytes(), value).unwrap();
}

/// A valid record for codec tests.
fn sample_record() -> (Vec<u8>, Vec<u8>) {
    let stream = conv(7);
    let event = durable("test");
    let encoded = store::encode_event(store::EncodeInput {
        event: &event.event,
        seq: Seq(5),
        stream: &stream,
        stream_version: 2,
        timestamp_us: 1_700_000_000_000_000,
        event_id: EventId::new(),
        causation: Some(EventId::new()),
        prev_stream: &chain::GENESIS,
        prev_global: &chain::GENESIS,
    })
    .unwrap();
    let core_len = usize::from(u16::from_le_bytes([encoded.value[0], encoded.value[1]]));
    let core = encoded.value[2..2 + core_len].to_vec();
    (encoded.value, core)
}

// === codec ===

#[test]
fn records_round_trip_through_the_codec() {
    let (value, core) = sample_record();
    let record = decode_record(Seq(5), &value).unwrap();
    assert_eq!(record.core, core);
    assert_eq!(record.header.seq, Seq(5));
    assert_eq!(record.header.stream, conv(7));
    assert_eq!(record.header.stream_version, 2);
    assert!(record.header.causation.is_some());
    assert_eq!(
        record.header.stream_hash,
        chain::link(&chain::GENESIS, &core)
    );
    assert_eq!(record.decode().unwrap(), durable("test").event);
    // A header-only line (core and links) parses on its own.
    let header =
        Header::from_core(&core, record.header.stream_hash, record.header.global_hash).unwrap();
    assert_eq!(header, record.header);
}

#[test]
fn every_truncation_is_a_typed_error_naming_the_seq() {
    let (value, _) = sample_record();
    for len in 0..value.len() {
        match decode_record(Seq(5), &value[..len]) {
            Err(ReadError::Corrupt { seq, .. }) => assert_eq!(seq, Seq(5)),
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
}

#[test]
fn a_record_read_under_another_seq_is_corrupt() {
    let (value, _) = sample_record();
    let err = decode_record(Seq(6), &value).unwrap_err();
    assert!(
        matches!(&err, ReadError::Corrupt { seq, reason } if *seq == Seq(6) && reason.contains("claims seq 5")),
        "{err}"
    );
}

#[test]
fn header_cores_with_unknown_format_flags_or_reserved_bits_are_refused() {
    let (_, core) = sample_record();
    for (offset, byte, field) in [(0, 2u8, "format"), (1, 0x83, "flags"), (6, 1, "reserved")] {
        let mut bad = core.clone();
        bad[offset] = byte;
        let err = Header::from_core(&bad, [0; 32], [0; 32]).unwrap_err();
        assert!(
            matches!(&err, CodecError::Invalid { field: f, .. } if *f == field),
            "{err}"
        );
    }
    let mut trailing = core.clone();
    trailing.push(0);
    assert!(Header::from_core(&trailing, [0; 32], [0; 32]).is_err());
    let mut bad_stream = core;
    let last = bad_stream.len() - 1;
    bad_stream[last] = b' ';
    assert!(Header::from_core(&bad_stream, [0; 32], [0; 32]).is_err());
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_record(Seq(1), &bytes);
        let _ = Header::from_core(&bytes, [0; 32], [0; 32]);
    }

    #[test]
    fn flipping_any_core_or_payload_byte_is_detected(index in 0usize..10_000, bit in 0u8..8) {
        let (value, core) = sample_record();
        // Skip the two stored links: they are checked by `verify`, not here.
        let links = 2 + core.len()..2 + core.len() + 64;
        let index = index % value.len();
        prop_assume!(!links.contains(&index));
        let mut bad = value.clone();
        bad[index] ^= 1 << bit;
        let good = decode_record(Seq(5), &value).unwrap();
        match decode_record(Seq(5), &bad) {
            Err(_) => {}
            // A flip inside the core that still parses changes the core, so
            // the recomputed links differ from the stored ones.
            Ok(record) => prop_assert_ne!(record.core, good.core),
        }
    }
}

// === store ===

#[tokio::test]
async fn a_new_store_starts_with_its_genesis_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(log.head(), Some(Seq(0)));
    assert_eq!(log.durable_head(), Some(Seq(0)));
    let genesis = log.read(Seq(0)).unwrap().unwrap();
    assert_eq!(genesis.header.stream, StreamId::server());
    assert_eq!(genesis.header.stream_version, 1);
    match genesis.decode().unwrap() {
        Event::StoreCreated(created) => {
            assert_eq!(created.store_id, log.store_id());
            assert_eq!(created.layout_version, crate::migrations::CURRENT_LAYOUT);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.head_hash(), Some((Seq(0), genesis.header.global_hash)));
    log.close().await.unwrap();
}

#[test]
fn opening_without_create_refuses_an_empty_directory_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let err = Log::open(
        dir.path(),
        LogOptions {
            create: false,
            ..opts()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, OpenError::Missing(_)), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_store_with_a_newer_layout_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let meta = log
        .database()
        .keyspace("meta", KeyspaceCreateOptions::default)
        .unwrap();
    meta.insert("layout", 99u32.to_le_bytes()).unwrap();
    drop(meta);
    log.close().await.unwrap();

    let err = Log::open(dir.path(), opts()).err().unwrap();
    assert!(
        matches!(
            err,
            OpenError::NewerLayout {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("layout 99") && message.contains("upgrade airut"),
        "{message}"
    );
}

#[tokio::test]
async fn version_conflicts_are_typed_and_leave_other_appends_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let first = log
        .append(batch(
            conv(1),
            ExpectedVersion::NoStream,
            vec![durable("a")],
        ))
        .await
        .unwrap();
    assert_eq!(first.first, Seq(1));

    // Several appends race in one group; only the stale one fails.
    let stale = log.append(batch(
        conv(1),
        ExpectedVersion::NoStream,
        vec![durable("b")],
    ));
    let fresh = log.append(batch(
        conv(1),
        ExpectedVersion::Exact(1),
        vec![durable("c")],
    ));
    let other = log.append(batch(
        conv(2),
        ExpectedVersion::NoStream,
        vec![durable("d")],
    ));
    let (stale, fresh, other) = tokio::join!(stale, fresh, other);
    match stale {
        Err(AppendError::VersionConflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, conv(1));
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert!(actual >= 1);
        }
        other => panic!("{other:?}"),
    }
    fresh.unwrap();
    other.unwrap();
    assert_eq!(log.stream_version(&conv(1)).unwrap(), 2);
    assert_eq!(log.stream_version(&conv(2)).unwrap(), 1);
    assert_eq!(log.head(), Some(Seq(3)));
    assert!(log.verify().unwrap().is_ok());
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_multi_stream_batch_with_one_conflict_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    log.append(batch(conv(1), ExpectedVersion::Any, vec![durable("a")]))
        .await
        .unwrap();
    let head = log.head();
    let err = log
        .append_all(vec![
            batch(
                conv(2),
                ExpectedVersion::NoStream,
                vec![durable("b"), durable("c")],
            ),
            batch(conv(1), ExpectedVersion::Exact(5), vec![durable("d")]),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AppendError::VersionConflict { stream, actual: 1, .. } if *stream == conv(1)),
        "{err}"
    );
    assert_eq!(log.head(), head);
    assert_eq!(log.stream_version(&conv(2)).unwrap(), 0);

    // The same batch with the right version lands whole and in order.
    let done = log
        .append_all(vec![
            batch(
                conv(2),
                ExpectedVersion::NoStream,
                vec![durable("b"), durable("c")],
            ),
            batch(conv(1), ExpectedVersion::Exact(1), vec![durable("d")]),
            batch(conv(2), ExpectedVersion::Exact(2), vec![buffered("e")]),
        ])
        .await
        .unwrap();
    let seqs: Vec<_> = done.iter().map(|a| (a.first.0, a.last.0)).collect();
    assert_eq!(seqs, vec![(2, 3), (4, 4), (5, 5)]);
    let versions: Vec<_> = log
        .stream_iter(&conv(2), 1)
        .map(|r| r.unwrap().header.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert!(log.verify().unwrap().is_ok());
    log.close().await.unwrap();
}

#[tokio::test]
async fn empty_and_genesis_appends_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let empty = log
        .append(batch(conv(1), ExpectedVersion::Any, vec![]))
        .await;
    assert!(matches!(empty, Err(AppendError::Invalid(_))));
    assert!(matches!(
        log.append_all(vec![]).await,
        Err(AppendError::Invalid(_))
    ));
    let genesis = NewEvent {
        event: log.read(Seq(0)).unwrap().unwrap().decode().unwrap(),
        causation: None,
    };
    let again = log
        .append(batch(
            StreamId::server(),
            ExpectedVersion::Any,
            vec![genesis],
        ))
        .await;
    assert!(matches!(again, Err(AppendError::Invalid(_))));
    assert_eq!(log.head(), Some(Seq(0)));
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_value_is_a_typed_error_naming_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    for i in 0..4 {
        log.append(batch(
            conv(1),
            ExpectedVersion::Any,
            vec![durable(&format!("{i}"))],
        ))
        .await
        .unwrap();
    }
    overwrite(&log, 2, |v| v.truncate(40));
    let err = log.read(Seq(2)).unwrap_err();
    assert!(
        matches!(err, ReadError::Corrupt { seq: Seq(2), .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("event 2:"), "{err}");

    let items: Vec<_> = log.iter_from(Seq(0)).collect();
    assert_eq!(items.len(), 5);
    assert!(matches!(
        items[2],
        Err(ReadError::Corrupt { seq: Seq(2), .. })
    ));
    assert!(items[3].is_ok());

    // A subscription reports it in place and goes on.
    let mut sub = log.subscribe(Seq(1));
    assert_eq!(sub.next().await.unwrap().unwrap().header.seq, Seq(1));
    assert!(matches!(
        sub.next().await.unwrap(),
        Err(ReadError::Corrupt { seq: Seq(2), .. })
    ));
    assert_eq!(sub.next().await.unwrap().unwrap().header.seq, Seq(3));

    let report = log.verify().unwrap();
    assert_eq!(report.failure.unwrap().seq, Seq(2));
    log.close().await.unwrap();
}

#[tokio::test]
async fn verify_finds_an_edited_payload_byte_at_exactly_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    for i in 0..6 {
        log.append(batch(
            conv(i % 2),
            ExpectedVersion::Any,
            vec![durable("payload")],
        ))
        .await
        .unwrap();
    }
    let report = log.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.events, 7);
    assert_eq!(report.streams, 3);
    assert_eq!(report.head, Some(Seq(6)));
    assert_eq!(Some((Seq(6), report.head_hash)), log.head_hash());

    overwrite(&log, 4, |v| {
        let last = v.len() - 1;
        v[last] ^= 0x01;
    });
    let report = log.verify().unwrap();
    let failure = report.failure.unwrap();
    assert_eq!(failure.seq, Seq(4), "{}", failure.reason);
    assert_eq!(report.events, 4);
    log.close().await.unwrap();
}

#[tokio::test]
async fn verify_finds_an_edited_header_byte_at_exactly_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    for _ in 0..6 {
        log.append(batch(conv(3), ExpectedVersion::Any, vec![buffered("x")]))
            .await
            .unwrap();
    }
    // Byte 2 + 24 is the lowest byte of the timestamp: still parses.
    overwrite(&log, 3, |v| v[2 + 24] ^= 0x01);
    assert!(log.read(Seq(3)).unwrap().is_some());
    let failure = log.verify().unwrap().failure.unwrap();
    assert_eq!(failure.seq, Seq(3));
    assert!(failure.reason.contains("chain"), "{}", failure.reason);

    // Rewriting a whole record consistently still breaks the next link.
    let dir = tempfile::tempdir().unwrap();
    let log2 = Log::open(dir.path(), opts()).unwrap();
    for _ in 0..4 {
        log2.append(batch(conv(3), ExpectedVersion::Any, vec![buffered("x")]))
            .await
            .unwrap();
    }
    let original = log2.read(Seq(2)).unwrap().unwrap();
    let prev = log2.read(Seq(1)).unwrap().unwrap();
    let forged = store::encode_event(store::EncodeInput {
        event: &buffered("forged").event,
        seq: Seq(2),
        stream: &conv(3),
        stream_version: 2,
        timestamp_us: original.header.timestamp_us,
        event_id: original.header.event_id,
        causation: None,
        prev_stream: &prev.header.stream_hash,
        prev_global: &prev.header.global_hash,
    })
    .unwrap();
    overwrite(&log2, 2, |v| *v = forged.value);
    assert_eq!(log2.verify().unwrap().failure.unwrap().seq, Seq(3));
    log.close().await.unwrap();
    log2.close().await.unwrap();
}

#[tokio::test]
async fn blobs_round_trip_dedupe_and_detect_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let big = vec![7u8; 100_000];
    let small = b"hello".to_vec();
    let r1 = log.put_blob(&big).unwrap();
    let r2 = log.put_blob(&big).unwrap();
    assert_eq!(r1, r2);
    assert_eq!(r1.size, 100_000);
    let r3 = log.put_blob(&small).unwrap();
    assert_eq!(log.get_blob(&r1.hash).unwrap().unwrap(), big);
    assert_eq!(log.get_blob(&r3.hash).unwrap().unwrap(), small);
    assert_eq!(log.get_blob(&[1; 32]).unwrap(), None);

    let blobs = log
        .database()
        .keyspace("blobs", KeyspaceCreateOptions::default)
        .unwrap();
    blobs.insert(r3.hash, b"hellp".to_vec()).unwrap();
    drop(blobs);
    assert!(matches!(
        log.get_blob(&r3.hash),
        Err(BlobError::Corrupt { .. })
    ));
    log.close().await.unwrap();
}

#[tokio::test]
async fn appends_after_close_fail_as_closed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let other = log.clone();
    log.close().await.unwrap();
    let err = other
        .append(batch(conv(1), ExpectedVersion::Any, vec![durable("late")]))
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::Closed), "{err}");
    assert!(matches!(
        other.sync_to(Seq(5)).await,
        Err(AppendError::Closed)
    ));
    // The last handle's drop releases the store: it opens again.
    drop(other);
    let log = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(log.head(), Some(Seq(0)));
}

#[test]
fn append_blocking_works_outside_a_runtime_and_drop_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let a = log
        .append_blocking(batch(
            conv(9),
            ExpectedVersion::NoStream,
            vec![durable("x")],
        ))
        .unwrap();
    assert_eq!((a.first, a.last), (Seq(1), Seq(1)));
    assert_eq!(log.durable_head(), Some(Seq(1)));
    drop(log);
    let log = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(log.head(), Some(Seq(1)));
    assert!(log.verify().unwrap().is_ok());
}

#[tokio::test]
async fn an_older_layout_without_a_migration_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let meta = log
        .database()
        .keyspace("meta", KeyspaceCreateOptions::default)
        .unwrap();
    meta.insert("layout", 0u32.to_le_bytes()).unwrap();
    drop(meta);
    log.close().await.unwrap();

    let err = Log::open(dir.path(), opts()).err().unwrap();
    assert!(
        matches!(&err, OpenError::Storage { reason, .. } if reason.contains("no migration step from layout 0")),
        "{err}"
    );
}
