//! Container events: the lifecycle of the container a task runs in, and
//! every line it prints.

use super::{BlobRef, TaskId, frozen};

frozen! {
    /// The container was created.
    pub struct ContainerCreatedV1 {
        /// The task.
        pub task: TaskId,
        /// The engine's container id.
        pub container_id: String,
        /// The image.
        pub image: String,
    }

    /// The container started.
    pub struct ContainerStartedV1 {
        /// The task.
        pub task: TaskId,
        /// The engine's container id.
        pub container_id: String,
    }

    /// One line of the container's output (any length; raw text kept).
    pub struct ContainerOutputV1 {
        /// The task.
        pub task: TaskId,
        /// stdout or stderr.
        pub stream: OutputStream,
        /// 0-based line number within that stream.
        pub line_no: u64,
        /// What the line is, as parsed (stream-json kind).
        pub kind: OutputKind,
        /// The line as printed (lossily decoded to UTF-8).
        pub raw: String,
    }

    /// One output line longer than 64 KiB: the line itself went to the blob
    /// store (so the hash chain still covers it) and the event carries its
    /// reference and the start of the line.
    pub struct ContainerOutputBlobV1 {
        /// The task.
        pub task: TaskId,
        /// stdout or stderr.
        pub stream: OutputStream,
        /// 0-based line number within that stream (shared numbering with
        /// `container.output`).
        pub line_no: u64,
        /// What the line is, as parsed (stream-json kind).
        pub kind: OutputKind,
        /// The whole line (lossily decoded to UTF-8), in the blob store.
        pub blob: BlobRef,
        /// The first characters of the line, for summaries.
        pub preview: String,
    }

    /// The container's process exited.
    pub struct ContainerExitedV1 {
        /// The task.
        pub task: TaskId,
        /// The engine's container id.
        pub container_id: String,
        /// Exit status.
        pub exit_code: i64,
        /// Whether the kernel killed it for memory.
        pub oom_killed: bool,
    }

    /// airut stopped the container.
    pub struct ContainerStoppedV1 {
        /// The task.
        pub task: TaskId,
        /// The engine's container id.
        pub container_id: String,
        /// Why.
        pub reason: StopReason,
    }

    /// Which output stream a line came from.
    pub enum OutputStream {
        /// Standard output (stream-json).
        Stdout,
        /// Standard error.
        Stderr,
    }

    /// The stream-json kind of an output line.
    pub enum OutputKind {
        /// `system` with subtype `init` (carries the session id).
        SystemInit,
        /// Another `system` line.
        System,
        /// `assistant`: text and tool uses.
        Assistant,
        /// `user`: tool results.
        User,
        /// `result`: the final line.
        Result,
        /// JSON of another type.
        OtherJson,
        /// Not JSON (kept raw).
        Text,
    }

    /// Why airut stopped a container.
    pub enum StopReason {
        /// A user or operator asked.
        Requested,
        /// The execution timeout elapsed.
        Timeout,
        /// The server is shutting down.
        Shutdown,
        /// Found running after a restart.
        Recovery,
    }
}
