//! Image events: building the repo's container image, and pruning the
//! cached images and Claude Code binaries.

use super::{RepoId, TaskId, frozen};

frozen! {
    /// A build began.
    pub struct ImageBuildStartedV1 {
        /// The repo.
        pub repo: RepoId,
        /// The task that needed it, if any.
        pub task: Option<TaskId>,
        /// The tag (content hash).
        pub tag: String,
        /// Whether the build was forced (cache ignored).
        pub forced: bool,
    }

    /// One line of build output.
    pub struct ImageBuildOutputV1 {
        /// The tag being built.
        pub tag: String,
        /// The line.
        pub line: String,
    }

    /// A build ended.
    pub struct ImageBuildFinishedV1 {
        /// The repo.
        pub repo: RepoId,
        /// The tag.
        pub tag: String,
        /// Whether the image was built.
        pub ok: bool,
        /// Wall time.
        pub duration_ms: u64,
        /// The end of the build log (for the failure reply).
        pub log_tail: String,
    }

    /// An existing image was used as is: it is younger than the max age.
    pub struct ImageReusedV1 {
        /// The repo.
        pub repo: RepoId,
        /// The task that needed it, if any.
        pub task: Option<TaskId>,
        /// The tag (content hash).
        pub tag: String,
        /// The image's age when reused, in seconds.
        pub age_secs: u64,
    }

    /// A stale airut image was removed by the prune schedule.
    pub struct ImagePrunedV1 {
        /// The tag removed.
        pub tag: String,
        /// Its age, in seconds.
        pub age_secs: u64,
    }

    /// A cached Claude Code binary not used for longer than
    /// `sandbox.claude_max_age` was removed by the prune schedule.
    pub struct ClaudeBinaryPrunedV1 {
        /// The version removed (`2.1.3`).
        pub version: String,
        /// Time since a task last used it, in seconds.
        pub age_secs: u64,
    }
}
