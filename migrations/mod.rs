//! Migrations between storage layouts, and upcasters for old event versions.
//!
//! A store records its layout version in its `meta` keyspace. On open, the
//! log runs the steps in [`LAYOUT_STEPS`] from the stored version up to
//! [`CURRENT_LAYOUT`], in order; a store newer than this build is refused.
//! Migrations never rewrite stored events (the hash chains cover them): old
//! event versions are upcast when read, by [`upcast`].
//!
//! Layout history:
//! * 1: the first layout (events by big-endian seq, stream index, blobs,
//!   meta).
//!
//! Who calls what: `Log::open` calls [`run`] with the stored layout and a
//! callback that records each layout reached (so an interrupted run resumes
//! after the last finished step); `Event::decode` calls [`upcast`].

use crate::events::{Event, EventType, PayloadError};

/// The layout this build writes.
pub const CURRENT_LAYOUT: u32 = 1;

/// One step between two storage layouts.
///
/// A step works on the whole database (it may create, fill or drop index and
/// meta keyspaces) but must never rewrite the `events` keyspace: the hash
/// chains cover it. A step must be safe to run again after a crash part-way
/// through it (the new layout is recorded only after it returns).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// The layout the step starts from.
    pub from: u32,
    /// The layout it leaves (greater than `from`).
    pub to: u32,
    /// What it does, for logs and errors.
    pub name: &'static str,
    /// The work.
    pub apply: fn(&fjall::Database) -> Result<(), String>,
}

/// The ordered steps from layout 1 to [`CURRENT_LAYOUT`]. Empty: layout 1 is
/// the first.
pub const LAYOUT_STEPS: &[Step] = &[];

/// Why a store could not be migrated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// No step starts at `from`: this build cannot bring such a store up to
    /// date (a step was removed, or the store's layout was never released).
    /// Open it with the release that wrote it and upgrade in order.
    #[error("no migration step from layout {from} (target {target})")]
    NoStep {
        /// The layout reached.
        from: u32,
        /// The layout wanted.
        target: u32,
    },
    /// A step does not move forward, or overshoots the target: a bug in the
    /// step table. Fix [`LAYOUT_STEPS`].
    #[error(
        "migration step {name:?} goes from layout {from} to {to}, not forward to at most {target}"
    )]
    BadStep {
        /// The step's name.
        name: &'static str,
        /// Its start.
        from: u32,
        /// Its end.
        to: u32,
        /// The layout wanted.
        target: u32,
    },
    /// A step failed. The store stays at layout `from` (steps are re-runnable):
    /// fix the cause named in `reason` and open again.
    #[error("migration step {name:?} (layout {from} to {to}) failed: {reason}")]
    Failed {
        /// The step's name.
        name: &'static str,
        /// Its start.
        from: u32,
        /// Its end.
        to: u32,
        /// What went wrong.
        reason: String,
    },
}

/// Brings a store at layout `from` up to [`CURRENT_LAYOUT`] with
/// [`LAYOUT_STEPS`]; see [`run_steps`].
pub fn run(
    db: &fjall::Database,
    from: u32,
    record: &mut dyn FnMut(u32) -> Result<(), String>,
) -> Result<u32, MigrationError> {
    run_steps(db, LAYOUT_STEPS, from, CURRENT_LAYOUT, record)
}

/// Applies `steps` in order from layout `from` until `target`, calling
/// `record` with each layout reached (the caller persists it). Returns the
/// final layout. `from >= target` does nothing (the caller refuses stores
/// newer than it understands before calling this).
pub fn run_steps(
    db: &fjall::Database,
    steps: &[Step],
    from: u32,
    target: u32,
    record: &mut dyn FnMut(u32) -> Result<(), String>,
) -> Result<u32, MigrationError> {
    let mut layout = from;
    while layout < target {
        let step = steps
            .iter()
            .find(|s| s.from == layout)
            .ok_or(MigrationError::NoStep {
                from: layout,
                target,
            })?;
        if step.to <= step.from || step.to > target {
            return Err(MigrationError::BadStep {
                name: step.name,
                from: step.from,
                to: step.to,
                target,
            });
        }
        let failed = |reason: String| MigrationError::Failed {
            name: step.name,
            from: step.from,
            to: step.to,
            reason,
        };
        tracing::info!(
            from = step.from,
            to = step.to,
            step = step.name,
            "migrating store layout"
        );
        (step.apply)(db).map_err(failed)?;
        record(step.to).map_err(failed)?;
        layout = step.to;
    }
    Ok(layout)
}

/// Turns a payload stored with an older schema version into the current
/// [`Event`]. Every (type, version) that ever shipped and is not current must
/// have an arm here.
pub fn upcast(ty: EventType, version: u16, _bytes: &[u8]) -> Result<Event, PayloadError> {
    // No event type has a second version yet: every stored version is current.
    Err(PayloadError::UnknownVersion {
        name: ty.name(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, fjall::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        (dir, db)
    }

    fn mark(db: &fjall::Database, name: &str) -> Result<(), String> {
        let ks = db
            .keyspace("steps", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| e.to_string())?;
        let n = ks.len().map_err(|e| e.to_string())?;
        ks.insert(format!("{n:02}"), name)
            .map_err(|e| e.to_string())
    }

    fn applied(db: &fjall::Database) -> Vec<String> {
        let ks = db
            .keyspace("steps", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        ks.iter()
            .map(|g| String::from_utf8(g.value().unwrap().to_vec()).unwrap())
            .collect()
    }

    const STEPS: &[Step] = &[
        Step {
            from: 2,
            to: 3,
            name: "two-to-three",
            apply: |db| mark(db, "2->3"),
        },
        Step {
            from: 1,
            to: 2,
            name: "one-to-two",
            apply: |db| mark(db, "1->2"),
        },
        Step {
            from: 3,
            to: 4,
            name: "broken",
            apply: |_| Err("disk full".to_owned()),
        },
    ];

    #[test]
    fn the_shipped_step_list_reaches_the_current_layout() {
        let (_dir, db) = db();
        let mut recorded = Vec::new();
        let reached = run(&db, CURRENT_LAYOUT, &mut |l| {
            recorded.push(l);
            Ok(())
        })
        .unwrap();
        assert_eq!(reached, CURRENT_LAYOUT);
        assert!(recorded.is_empty());
    }

    #[test]
    fn steps_run_in_order_and_each_layout_is_recorded() {
        let (_dir, db) = db();
        let mut recorded = Vec::new();
        let reached = run_steps(&db, STEPS, 1, 3, &mut |l| {
            recorded.push(l);
            Ok(())
        })
        .unwrap();
        assert_eq!(reached, 3);
        assert_eq!(recorded, vec![2, 3]);
        assert_eq!(applied(&db), vec!["1->2", "2->3"]);

        // Resuming from the recorded layout runs only what is left.
        let reached = run_steps(&db, STEPS, 2, 3, &mut |_| Ok(())).unwrap();
        assert_eq!(reached, 3);
        assert_eq!(applied(&db), vec!["1->2", "2->3", "2->3"]);
    }

    #[test]
    fn a_failing_step_stops_at_the_last_good_layout() {
        let (_dir, db) = db();
        let mut recorded = Vec::new();
        let err = run_steps(&db, STEPS, 1, 4, &mut |l| {
            recorded.push(l);
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(&err, MigrationError::Failed { name: "broken", from: 3, reason, .. } if reason == "disk full"),
            "{err}"
        );
        assert_eq!(recorded, vec![2, 3]);
    }

    #[test]
    fn gaps_and_backward_steps_are_errors() {
        let (_dir, db) = db();
        let err = run_steps(&db, STEPS, 0, 2, &mut |_| Ok(())).unwrap_err();
        assert_eq!(err, MigrationError::NoStep { from: 0, target: 2 });
        let backwards = [Step {
            from: 1,
            to: 1,
            name: "loop",
            apply: |_| Ok(()),
        }];
        let err = run_steps(&db, &backwards, 1, 2, &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, MigrationError::BadStep { .. }), "{err}");
    }
}
