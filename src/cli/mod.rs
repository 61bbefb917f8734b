//! The `airut` command line: parses arguments and runs one subcommand.
//!
//! Read commands (`events tail`, `replay`, `audit export`, `check`) talk to a
//! running server through its HTTP API when one is running (fjall is
//! single-process: the server owns the store), and open the store directly
//! otherwise ([`access`]). Errors end with what to try next; this is the only
//! layer that uses `anyhow`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod access;
mod bench;
mod bench_dashboard;
mod bench_startup;
mod check;
mod client;
mod commands;
mod procmem;
pub mod runtime;
mod serve;

/// airut: run Claude Code agents in sandboxes, driven by email and Slack.
#[derive(Debug, Parser)]
#[command(name = "airut", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Config file [default: $XDG_CONFIG_HOME/airut/airut.yaml]. A missing
    /// file means built-in defaults (no repos).
    #[arg(long, global = true, env = "AIRUT_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory (event log, conversations), overriding the config's
    /// `state_dir`.
    #[arg(long, global = true, env = "AIRUT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server: open the log, run projections, serve the API and
    /// dashboard until SIGINT/SIGTERM.
    Run,
    /// Read the event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Show a conversation's timeline from the log.
    Replay {
        /// The conversation id (8 hex digits).
        conversation: String,
        /// One JSON object per event instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Export or verify network audit trails.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Validate the config and the store (hash chains), and report what is
    /// missing on this host.
    Check,
    /// Manage read models.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Measure performance (prints figures; not part of the tests).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events from a sequence number on.
    Tail {
        /// First sequence number to print [default: 0].
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep printing new events as they are appended.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line, with the hash-chain values: verifiable with
    /// `airut audit verify`.
    Jsonl,
    /// Spreadsheet-friendly; not verifiable.
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Stream the network audit (requests and DNS queries) to stdout.
    Export {
        /// Only this conversation (includes chain links for its other events,
        /// so the export verifies from the stream's genesis).
        #[arg(long)]
        conversation: Option<String>,
        /// Only events at or after this time: RFC 3339 (`2026-11-28T10:00:00Z`)
        /// or an age (`2h`, `3days`).
        #[arg(long)]
        since: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Verify a JSONL export on its own, without the store.
    Verify {
        /// The export file (`-` for stdin).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Drop the read models and rebuild them from the log.
    Rebuild {
        /// Instead of replacing them, rebuild aside and prove the result
        /// equals the checkpointed state.
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event log: append, replay and projection-rebuild figures.
    Log {
        /// Events for the replay and rebuild figures.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Scratch directory [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Run only this phase (replay and rebuild fill the store first
        /// unless a kept one is full).
        #[arg(long, value_enum)]
        only: Option<bench::Phase>,
        /// Keep the stores in DIR (reusing a full one) instead of a
        /// temporary directory.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Email intake: parse + authenticate + quote-strip over a corpus of
    /// .eml files (the test fixtures by default).
    Email {
        /// Passes over the corpus.
        #[arg(long, default_value_t = 500)]
        iterations: usize,
        /// Directory searched for .eml files [default: fixtures/email].
        #[arg(long)]
        corpus: Option<PathBuf>,
    },
    /// Gateway overhead: message to agent start and to reply, with a real
    /// log and git workspaces, and an agent and channel that answer at once.
    Gateway {
        /// Messages per phase (new conversations, replies, burst).
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// Scratch directory [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Dashboard: server time of the board, a conversation page and a
    /// 10 000-row network view over a large log; 100 SSE clients
    /// following 1 000 events/s with memory figures.
    Dashboard {
        /// Events in the log (about).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Finished tasks (one conversation each).
        #[arg(long, default_value_t = 10_000)]
        tasks: u64,
        /// Requests per page measured.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Scratch directory [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Sandbox: start → first stream-json line next to `podman run` by
    /// hand (cached image), and stream-json parse throughput.
    Sandbox {
        /// Runs of each kind (median reported).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Container engine socket [default: discovered].
        #[arg(long)]
        engine_socket: Option<PathBuf>,
        /// The static airut-init [default: beside airut].
        #[arg(long)]
        init: Option<PathBuf>,
        /// Agent binary [default: a script printing one stream-json line].
        #[arg(long)]
        claude: Option<PathBuf>,
        /// busybox-static for the bench image.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// podman command for the by-hand figure.
        #[arg(long, default_value = "podman")]
        podman: String,
        /// Megabytes of stream-json for the parse figure.
        #[arg(long, default_value_t = 256)]
        parse_mb: usize,
    },
    /// Egress proxy: added latency (keep-alive and new TLS connections) and
    /// throughput through the proxy against the same local TLS upstream.
    Proxy {
        /// Sequential requests per latency figure.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Concurrent keep-alive connections for the throughput figure.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Seconds per throughput figure.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// `airut run`: start → serving `/healthz` on a fresh and on an
    /// existing state dir, idle memory (VmRSS, RssAnon, RssFile and where
    /// it goes, from smaps) and SIGTERM → exit, without and with a repo.
    Startup {
        /// Runs per config and state dir (median, min and max reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds the server sits idle before its memory is read.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        /// Scratch directory parent [default: the temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The airut binary to measure [default: this executable].
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Internal: rebuild the projections of an existing bench store and
    /// report peak memory (run as a child of `bench log`).
    #[command(hide = true)]
    LogRebuild {
        /// The store directory.
        dir: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run = cli.command {
        // Before the runtime's threads make their heaps. Only the server:
        // the flag is inherited by child processes (a benchmark's server).
        procmem::no_huge_pages();
    }
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airut: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airut: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AIRUT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
