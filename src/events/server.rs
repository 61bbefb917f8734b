//! Server-level events: store creation (the genesis of the hash chains),
//! config generations, start and stop, repo boot and channel health.

use super::{RepoId, frozen};

frozen! {
    /// The first event of every store (seq 0, stream `server`). Its random
    /// `store_id` makes two stores' chains distinct even with equal content.
    pub struct StoreCreatedV1 {
        /// Random identity of this store.
        pub store_id: uuid::Uuid,
        /// The storage layout the store was created with.
        pub layout_version: u32,
        /// The airut version that created it.
        pub created_by: String,
    }

    /// A config file was read and validated (one per generation).
    pub struct ConfigLoadedV1 {
        /// Increases by one on every load or reload.
        pub generation: u64,
        /// Where it was read from; empty when no file exists (built-in defaults).
        pub path: String,
        /// BLAKE3 of the file's bytes (all zero when no file exists; hex in JSON).
        #[serde(with = "crate::events::hex32")]
        pub content_hash: [u8; 32],
        /// The repos it declares.
        pub repos: Vec<RepoId>,
    }

    /// A changed config file was read while serving and not applied (it
    /// does not parse or validate, or it is gone); the running config
    /// stays. The next `config.loaded` supersedes it.
    pub struct ConfigRejectedV1 {
        /// The file.
        pub path: String,
        /// BLAKE3 of the file's bytes as read (all zero when it is gone).
        #[serde(with = "crate::events::hex32")]
        pub content_hash: [u8; 32],
        /// Every problem, as `airut check` would list them.
        pub error: String,
    }

    /// `airut run` started serving.
    pub struct ServerStartedV1 {
        /// The airut version.
        pub version: String,
        /// The process id.
        pub pid: u32,
        /// The dashboard / API address, as bound.
        pub listen: String,
    }

    /// `airut run` stopped (graceful shutdown). A crash leaves no such event:
    /// a `server.started` without one before the next start means a crash.
    pub struct ServerStoppedV1 {
        /// Why (signal name, or the error).
        pub reason: String,
    }

    /// A repo finished booting, successfully or not (partial boot: others run).
    pub struct RepoBootedV1 {
        /// The repo.
        pub repo: RepoId,
        /// Whether it is serving.
        pub ok: bool,
        /// What went wrong, when it is not.
        pub error: Option<String>,
    }

    /// A channel's connection health changed.
    pub struct ChannelHealthChangedV1 {
        /// The repo.
        pub repo: RepoId,
        /// The channel (`email`, `slack`).
        pub channel: String,
        /// The new state.
        pub health: ChannelHealth,
        /// Detail for the operator (last error, retry time).
        pub detail: String,
    }

    /// The health of a channel's connection.
    pub enum ChannelHealth {
        /// Connecting for the first time.
        Starting,
        /// Connected and receiving.
        Healthy,
        /// Lost the connection; retrying with backoff.
        Degraded,
        /// Cannot work until an operator acts (e.g. authentication refused).
        Failed,
    }
}
