//! Gateway: intake → conversation → queue/coalesce → run → reply, with
//! concurrency limits and recovery after a restart.
//!
//! Everything the gateway knows is folded from the log ([`state`]); every
//! decision it takes is appended before anything depends on it; every side
//! effect (a workspace clone, a run, a reply) is a reaction to an event
//! that records its outcome as an event. So after a crash at any point,
//! [`Gateway::boot`] folds the log again and carries on: messages received
//! but not taken up are taken up, a task whose run was cut off is re-run
//! once (then answered with an error), and a reply recorded as sent is
//! never sent again.
//!
//! It is the only module that knows channels, the sandbox and workspaces,
//! and it knows them through the small traits in [`driver`]
//! ([`ReplySink`], [`TaskRunner`], [`Workspace`]), so tests swap any of
//! them. Must never: act on a decision before it is in the log, run two
//! tasks of one conversation at once, or send a reply whose cause already
//! has a `reply.sent`.
//!
//! Files: [`state`] (the fold), [`intake`] (message → conversation and
//! task), [`queue`] (what may start), [`prompt`], [`reply`] (texts),
//! [`driver`] (the traits and the run of one task).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ExecutionConfig, RepoConfig};
use crate::events::{
    ConversationExpiredV1, ConversationId, Event, EventId, ReplyFailedV1, ReplyKind, ReplySentV1,
    RepoBootedV1, RepoId, StreamId, TaskCompletedV1, TaskId, TaskInterruptedV1, TaskOutcome,
    TaskStartedV1, TaskStopRequestedV1,
};
use crate::log::{
    AppendError, Appended, ExpectedVersion, Log, NewEvent, ReadError, StreamAppend, Subscription,
};
use crate::workspace::ConversationDirs;

pub mod bench;
pub mod driver;
pub mod intake;
pub mod prompt;
pub mod queue;
pub mod reply;
pub mod state;

pub use driver::{
    BoxFuture, Delivered, ExecutionResult, OutgoingReply, ReplySink, RunRequest, SendError,
    TaskRunner, Usage, Workspace,
};
pub use state::GatewayState;

use intake::{Decision, RepoDefaults};
use prompt::PromptMessage;
use state::{Msg, Owed, OwedReply, TaskStatus, TaskView};

/// The gateway's settings (from `execution:`).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Tasks running at once, over all repos.
    pub max_concurrent: usize,
    /// How long a graceful shutdown waits for running tasks.
    pub shutdown_timeout: Duration,
    /// Idle conversations older than this are removed.
    pub conversation_max_age: Duration,
}

/// One repo's parts. Missing parts leave the repo not serving, with the
/// reason recorded in `repo.booted`.
#[derive(Clone)]
pub struct RepoSetup {
    /// The repo.
    pub id: RepoId,
    /// Default model.
    pub model: String,
    /// Default effort.
    pub effort: Option<String>,
    /// Execution timeout for its tasks (the sandbox's `resource_limits`).
    pub timeout: Option<Duration>,
    /// Its workspaces.
    pub workspace: Option<Arc<dyn Workspace>>,
    /// Its sandbox.
    pub runner: Option<Arc<dyn TaskRunner>>,
    /// Its channels' outgoing sides, by channel name (`email`, `slack`).
    pub sinks: BTreeMap<String, Arc<dyn ReplySink>>,
    /// A check run at boot (e.g. the mirror's first clone); an error
    /// leaves the repo not serving.
    pub boot_check: Option<BootCheck>,
}

/// A repo's boot check (see [`RepoSetup::boot_check`]).
pub type BootCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Whether a repo serves, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoStatus {
    /// Taking messages and running tasks.
    Serving,
    /// Not serving; the reason as recorded.
    NotServing(String),
}

/// What one [`Gateway::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Runs cut off by a crash were dealt with.
    Recovered(usize),
    /// A message was taken up.
    Intake(Decision),
    /// A reply was delivered (or its failure recorded).
    Replied(EventId),
    /// A task ran to its end (or was interrupted).
    Ran(TaskId),
}

/// Why the gateway stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Appending failed: the log is closed or poisoned. Restart airut.
    #[error("appending to the log: {0}")]
    Append(#[from] AppendError),
    /// Reading the log failed. Run `airut check`.
    #[error("reading the log: {0}")]
    Read(#[from] ReadError),
    /// A test's injected crash at the named point.
    #[error("injected crash at {0}")]
    Crashed(&'static str),
}

/// Commands from outside the serve loop.
enum Command {
    Stop(ConversationId, oneshot::Sender<bool>),
    /// Take a repo out of service; answer once none of its tasks runs.
    Quiesce(RepoId, oneshot::Sender<()>),
    /// Put a booted repo in service (replacing a quiesced one, or new).
    Install(RepoSetup, RepoStatus, oneshot::Sender<()>),
    /// Forget a quiesced repo.
    Remove(RepoId, oneshot::Sender<()>),
    /// New server-wide settings.
    Configure(GatewayConfig),
}

/// Asks a serving gateway to do things. Cheap to clone.
#[derive(Clone)]
pub struct GatewayHandle {
    tx: mpsc::Sender<Command>,
    ctx: Ctx,
}

/// Appends and crash points, shared with running jobs.
#[derive(Clone)]
struct Ctx {
    log: Log,
    crash: Option<Arc<AtomicU64>>,
}

struct Repo {
    setup: RepoSetup,
    status: RepoStatus,
}

struct Live {
    conversation: ConversationId,
    repo: RepoId,
    stop: CancellationToken,
}

/// The gateway. See the module doc.
pub struct Gateway {
    ctx: Ctx,
    cfg: GatewayConfig,
    repos: BTreeMap<RepoId, Repo>,
    state: GatewayState,
    sub: Subscription,
    live: HashMap<TaskId, Live>,
    recovered: bool,
    commands: mpsc::Receiver<Command>,
    handle: GatewayHandle,
    /// Repos being taken out of service for a reload, with whom to tell
    /// once none of their tasks runs.
    quiescing: Vec<(RepoId, oneshot::Sender<()>)>,
}

/// How a job ended, for the serve loop.
struct JobDone {
    task: TaskId,
    result: Result<(), GatewayError>,
}

// === impl GatewayConfig ===

impl From<&ExecutionConfig> for GatewayConfig {
    fn from(e: &ExecutionConfig) -> Self {
        GatewayConfig {
            max_concurrent: e.max_concurrent,
            shutdown_timeout: e.shutdown_timeout,
            conversation_max_age: e.conversation_max_age,
        }
    }
}

// === impl RepoSetup ===

impl RepoSetup {
    /// A repo from its config, with no parts yet.
    pub fn from_config(id: &str, cfg: &RepoConfig) -> Self {
        RepoSetup {
            id: RepoId(id.to_owned()),
            model: cfg.model.clone(),
            effort: cfg.effort.clone(),
            timeout: None,
            workspace: None,
            runner: None,
            sinks: BTreeMap::new(),
            boot_check: None,
        }
    }

    /// Why the repo cannot serve, if a part is missing.
    fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if self.sinks.is_empty() {
            missing.push("no channel");
        }
        if self.runner.is_none() {
            missing.push("no sandbox runner");
        }
        if self.workspace.is_none() {
            missing.push("no workspace");
        }
        (!missing.is_empty()).then(|| {
            format!(
                "not started: {} is wired for this repo in this build",
                missing.join(", ")
            )
        })
    }
}

/// Each configured repo with its workspace wired (the mirror is refreshed
/// by the boot check); channels and the sandbox runner are plugged in by
/// the caller. A repo whose workspace cannot be set up fails its boot
/// check with the reason.
pub fn repo_setups(cfg: &crate::config::ServerConfig) -> Vec<RepoSetup> {
    cfg.repos
        .iter()
        .map(|(id, repo)| repo_setup(cfg, id, repo).0)
        .collect()
}

/// One repo's setup with its workspace wired (see [`repo_setups`]), and
/// the workspace itself for callers that share it (the sandbox runner).
pub fn repo_setup(
    cfg: &crate::config::ServerConfig,
    id: &str,
    repo: &RepoConfig,
) -> (RepoSetup, Option<crate::workspace::RepoWorkspace>) {
    let mut setup = RepoSetup::from_config(id, repo);
    match crate::workspace::RepoWorkspace::new(
        &cfg.state_dir,
        setup.id.clone(),
        &repo.repo_url,
        repo.git.clone(),
        cfg.execution.git_timeout,
    ) {
        Ok(ws) => {
            let check = ws.clone();
            setup.workspace = Some(Arc::new(ws.clone()));
            setup.boot_check = Some(Arc::new(move || {
                let ws = check.clone();
                Box::pin(async move { ws.refresh_mirror().await.map_err(|e| e.to_string()) })
            }));
            (setup, Some(ws))
        }
        Err(e) => {
            fail_boot(&mut setup, e.to_string());
            (setup, None)
        }
    }
}

/// Makes a repo's boot check fail with `why` (it then boots as not
/// serving, with that reason in `repo.booted`).
pub fn fail_boot(setup: &mut RepoSetup, why: String) {
    setup.boot_check = Some(Arc::new(move || {
        let why = why.clone();
        Box::pin(async move { Err(why) })
    }));
}

// === impl GatewayHandle ===

impl GatewayHandle {
    /// Stops the running task of a conversation: records
    /// `task.stop_requested` (by `gateway`), which the fold acts on as on
    /// the dashboard's. `false` when none runs (or the gateway is gone).
    pub async fn stop(&self, conv: ConversationId) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Stop(conv, tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Takes a repo out of service (a config reload): it starts no task,
    /// takes up no message and sends no reply until
    /// [`GatewayHandle::install`] gives it a new setup; returns once none
    /// of its tasks runs any more (they finish as usual; their replies go
    /// out through the new setup). `false` if the gateway is gone.
    pub async fn quiesce(&self, repo: RepoId) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Quiesce(repo, tx)).await.is_err() {
            return false;
        }
        rx.await.is_ok()
    }

    /// Boots a repo with `setup` (its boot check runs, `repo.booted` is
    /// recorded) in place of a quiesced one, or as a new repo. `None` if
    /// the gateway is gone.
    pub async fn install(&self, setup: RepoSetup) -> Option<RepoStatus> {
        // The boot check (a mirror refresh) runs here, not in the serve
        // loop, so other repos are not held up by it.
        let status = boot_repo(&self.ctx, &setup).await.ok()?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Install(setup, status.clone(), tx))
            .await
            .ok()?;
        rx.await.ok()?;
        Some(status)
    }

    /// Forgets a repo (quiesce it first), as a restart without it in the
    /// config would: a message of it not yet taken up is dismissed
    /// (`repo_unavailable`); its queued tasks wait in the log and run if
    /// the repo is configured again.
    pub async fn remove(&self, repo: RepoId) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Remove(repo, tx)).await.is_err() {
            return false;
        }
        rx.await.is_ok()
    }

    /// New server-wide settings (`execution:`), used from the next
    /// decision on: `max_concurrent` for the next start (running tasks
    /// are not stopped), the shutdown timeout, the conversation age.
    pub async fn configure(&self, cfg: GatewayConfig) -> bool {
        self.tx.send(Command::Configure(cfg)).await.is_ok()
    }
}

/// Why a quiesced repo is not serving (until its new setup is installed).
const RELOADING: &str = "reloading its configuration";

// === impl Ctx ===

impl Ctx {
    fn point(&self, label: &'static str) -> Result<(), GatewayError> {
        match &self.crash {
            Some(c) if c.fetch_sub(1, Ordering::SeqCst) == 1 => Err(GatewayError::Crashed(label)),
            _ => Ok(()),
        }
    }

    async fn append(&self, batch: StreamAppend) -> Result<Appended, GatewayError> {
        self.point("before append")?;
        let appended = self.log.append(batch).await?;
        self.point("after append")?;
        Ok(appended)
    }
}

fn one(stream: StreamId, event: Event, causation: Option<EventId>) -> StreamAppend {
    StreamAppend {
        stream,
        expected: ExpectedVersion::Any,
        events: vec![NewEvent { event, causation }],
    }
}

// === impl Gateway ===

impl Gateway {
    /// Boots: records each repo's status (`repo.booted`; a repo that fails
    /// does not stop the others) and folds the log.
    pub async fn boot(
        log: Log,
        cfg: GatewayConfig,
        setups: Vec<RepoSetup>,
    ) -> Result<Gateway, GatewayError> {
        let ctx = Ctx { log, crash: None };
        let mut repos = BTreeMap::new();
        for setup in setups {
            let status = boot_repo(&ctx, &setup).await?;
            repos.insert(setup.id.clone(), Repo { setup, status });
        }
        let (tx, commands) = mpsc::channel(16);
        let handle = GatewayHandle {
            tx,
            ctx: Ctx {
                log: ctx.log.clone(),
                crash: None,
            },
        };
        let mut gw = Gateway {
            sub: ctx.log.subscribe(crate::events::Seq(0)),
            ctx,
            cfg,
            repos,
            state: GatewayState::default(),
            live: HashMap::new(),
            recovered: false,
            commands,
            handle,
            quiescing: Vec::new(),
        };
        gw.catch_up().await?;
        Ok(gw)
    }

    /// For tests: fail with [`GatewayError::Crashed`] at the `n`-th side
    /// effect boundary from now (before or after an append, a send, a run),
    /// as a kill would. `n = 0` never fails but counts ([`Gateway::points_passed`]).
    pub fn inject_crash_after(&mut self, n: u64) {
        self.ctx.crash = Some(Arc::new(AtomicU64::new(if n == 0 { u64::MAX } else { n })));
    }

    /// For tests: boundaries passed since [`Gateway::inject_crash_after`]`(0)`.
    pub fn points_passed(&self) -> u64 {
        self.ctx
            .crash
            .as_ref()
            .map_or(0, |c| u64::MAX - c.load(Ordering::SeqCst))
    }

    /// The state as folded so far.
    pub fn state(&self) -> &GatewayState {
        &self.state
    }

    /// Each repo's status.
    pub fn repo_status(&self) -> BTreeMap<RepoId, RepoStatus> {
        self.repos
            .iter()
            .map(|(id, r)| (id.clone(), r.status.clone()))
            .collect()
    }

    /// A handle for stop requests while [`Gateway::serve`] runs.
    pub fn handle(&self) -> GatewayHandle {
        self.handle.clone()
    }

    /// Folds a fresh copy of the whole log: what a restart would see.
    pub async fn rebuild(log: &Log) -> Result<GatewayState, GatewayError> {
        let mut state = GatewayState::default();
        let mut sub = log.subscribe(crate::events::Seq(0));
        fold_available(log, &mut sub, &mut state).await?;
        Ok(state)
    }

    /// Folds everything appended since the last call (by anyone).
    pub async fn catch_up(&mut self) -> Result<(), GatewayError> {
        fold_available(&self.ctx.log, &mut self.sub, &mut self.state).await
    }

    fn serving(&self, repo: &RepoId) -> Option<&RepoSetup> {
        self.repos
            .get(repo)
            .filter(|r| r.status == RepoStatus::Serving)
            .map(|r| &r.setup)
    }

    /// Does the next piece of work, in this order: recovery after a
    /// restart, one message's intake, one reply, one task (run to its end
    /// here). `None` when there is nothing to do.
    pub async fn step(&mut self) -> Result<Option<Step>, GatewayError> {
        self.catch_up().await?;
        if !self.recovered {
            self.recovered = true;
            let n = self.recover().await?;
            if n > 0 {
                self.catch_up().await?;
                return Ok(Some(Step::Recovered(n)));
            }
        }
        if self.stop_queued().await? > 0 {
            self.catch_up().await?;
        }
        if let Some(d) = self.intake_one().await? {
            self.catch_up().await?;
            return Ok(Some(Step::Intake(d)));
        }
        if let Some(cause) = self.reply_one().await? {
            self.catch_up().await?;
            return Ok(Some(Step::Replied(cause)));
        }
        // A task whose channel has no sink here waits (it is not lost).
        let next = self.startable().into_iter().find_map(|task| {
            self.job(task, CancellationToken::new(), CancellationToken::new())
                .map(|job| (task, job))
        });
        if let Some((task, job)) = next {
            job.run().await?;
            self.catch_up().await?;
            return Ok(Some(Step::Ran(task)));
        }
        Ok(None)
    }

    /// Steps until there is nothing to do; returns the steps taken.
    pub async fn run_until_idle(&mut self) -> Result<usize, GatewayError> {
        let mut n = 0;
        while self.step().await?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Tasks whose run was cut off (running in the log, not here): re-run
    /// once, else completed as interrupted. Returns how many.
    async fn recover(&mut self) -> Result<usize, GatewayError> {
        let cut: Vec<TaskView> = self
            .state
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Running && !self.live.contains_key(&t.id))
            .cloned()
            .collect();
        for t in &cut {
            if let Some(runner) = self.serving(&t.repo).and_then(|r| r.runner.clone()) {
                runner.reap(t.id).await;
            }
            tracing::warn!(task = %t.id, conversation = %t.conversation, rerun = !t.rerun,
                "a task's run was cut off by a restart");
            interrupt(&self.ctx, t, "the server stopped while the task ran").await?;
        }
        Ok(cut.len())
    }

    /// Completes as stopped each queued task someone asked to stop (it
    /// never starts). Returns how many.
    async fn stop_queued(&mut self) -> Result<usize, GatewayError> {
        let due: Vec<TaskView> = self
            .state
            .tasks
            .values()
            .filter(|t| {
                t.status == TaskStatus::Queued
                    && t.stop_requested.is_some()
                    && !self.live.contains_key(&t.id)
            })
            .cloned()
            .collect();
        for t in &due {
            let who = t.stop_requested.as_deref().unwrap_or_default();
            // A task back in the queue after a restart cut its run off has
            // run before: its work so far is in the workspace.
            let ran = t.attempts > 0;
            let why = if ran {
                format!("stopped by {who} after a restart cut its run off")
            } else {
                format!("stopped by {who} before it started")
            };
            let mut r = ExecutionResult::internal(why);
            r.outcome = TaskOutcome::Stopped;
            let mut done = completed(t.id, &r, None);
            if !ran {
                done.reply_text = reply::stopped_before_start_text();
            }
            tracing::info!(task = %t.id, conversation = %t.conversation, by = who,
                "a queued task was stopped before it started");
            self.ctx
                .append(one(
                    t.conversation.stream(),
                    Event::TaskCompleted(done),
                    None,
                ))
                .await?;
        }
        Ok(due.len())
    }

    /// Tells each waiting [`GatewayHandle::quiesce`] whose repo has no
    /// running task any more.
    fn answer_quiesced(&mut self) {
        let busy: HashSet<RepoId> = self.live.values().map(|l| l.repo.clone()).collect();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.quiescing)
            .into_iter()
            .partition(|(repo, _)| !busy.contains(repo));
        self.quiescing = waiting;
        for (repo, reply) in done {
            tracing::info!(%repo, "repo quiesced");
            let _ = reply.send(());
        }
    }

    /// Stops each running task of this process that someone asked to stop
    /// (cancelling twice is harmless).
    fn stop_requested_live(&self) {
        for (id, l) in &self.live {
            if self
                .state
                .tasks
                .get(id)
                .is_some_and(|t| t.stop_requested.is_some())
                && !l.stop.is_cancelled()
            {
                tracing::info!(task = %id, conversation = %l.conversation, "stopping a running task on request");
                l.stop.cancel();
            }
        }
    }

    async fn intake_one(&mut self) -> Result<Option<Decision>, GatewayError> {
        let live: HashSet<TaskId> = self.live.keys().copied().collect();
        let pending: Vec<Msg> = self
            .state
            .intake
            .values()
            .filter_map(|id| self.state.messages.get(id).cloned())
            .collect();
        for msg in pending {
            let defaults = match self.repos.get(&msg.repo) {
                None => None,
                Some(r) if r.status != RepoStatus::Serving => continue,
                Some(r) => Some(RepoDefaults {
                    model: r.setup.model.clone(),
                    effort: r.setup.effort.clone(),
                }),
            };
            let (decision, append) = intake::decide(
                &self.state,
                &msg,
                defaults.as_ref(),
                &live,
                &mut ConversationId::random,
            );
            self.ctx.append(append).await?;
            tracing::info!(message = %msg.id, ?decision, "message taken up");
            return Ok(Some(decision));
        }
        Ok(None)
    }

    async fn reply_one(&mut self) -> Result<Option<EventId>, GatewayError> {
        let owed: Vec<OwedReply> = self.state.owed.values().cloned().collect();
        for o in owed {
            let Some(setup) = self.serving(&o.repo) else {
                continue;
            };
            let Some(sink) = setup.sinks.get(&o.channel).cloned() else {
                continue;
            };
            let dirs = match (&setup.workspace, o.conversation) {
                (Some(w), Some(c)) => Some(w.dirs(c)),
                _ => None,
            };
            let thread_keys = o
                .conversation
                .and_then(|c| self.state.conversations.get(&c))
                .map(|c| c.thread_keys.clone())
                .unwrap_or_default();
            send_owed(&self.ctx, &o, sink, dirs, thread_keys).await?;
            return Ok(Some(o.cause));
        }
        Ok(None)
    }

    fn startable(&self) -> Vec<TaskId> {
        let live: HashSet<TaskId> = self.live.keys().copied().collect();
        queue::startable(&self.state, &live, self.cfg.max_concurrent, &|r| {
            self.serving(r).is_some()
        })
    }

    /// Everything a run needs, taken from the state now.
    fn job(&self, task: TaskId, stop: CancellationToken, kill: CancellationToken) -> Option<Job> {
        let t = self.state.tasks.get(&task)?.clone();
        let conv = self.state.conversations.get(&t.conversation)?.clone();
        let setup = self.serving(&t.repo)?;
        let channel = conv.channel.clone();
        let sink = setup.sinks.get(&channel)?;
        let messages: Vec<Msg> = t
            .messages
            .iter()
            .filter_map(|m| self.state.messages.get(m).cloned())
            .collect();
        Some(Job {
            ctx: self.ctx.clone(),
            context: sink.channel_context(),
            workspace: setup.workspace.clone()?,
            runner: setup.runner.clone()?,
            timeout: setup.timeout,
            session: conv.session_id.clone(),
            last_response: conv.last_response.clone(),
            task: t,
            messages,
            stop,
            kill,
        })
    }

    /// Removes conversations idle past `conversation_max_age` (by their
    /// last event, at `now_us`): directories first, then
    /// `conversation.expired`. Conversations with work or replies pending
    /// are kept. Returns the ids removed.
    pub async fn expire_idle(&mut self, now_us: i64) -> Result<Vec<ConversationId>, GatewayError> {
        self.catch_up().await?;
        let max_age = i64::try_from(self.cfg.conversation_max_age.as_micros()).unwrap_or(i64::MAX);
        let owed: HashSet<ConversationId> = self
            .state
            .owed
            .values()
            .filter_map(|o| o.conversation)
            .collect();
        let due: Vec<(ConversationId, RepoId, u64)> = self
            .state
            .conversations
            .iter()
            .filter(|(id, c)| {
                !c.expired
                    && now_us.saturating_sub(c.last_us) > max_age
                    && !self.state.busy(**id)
                    && !owed.contains(id)
            })
            .map(|(id, c)| (*id, c.repo.clone(), c.last_seq.0))
            .collect();
        let mut removed = Vec::new();
        for (id, repo, last) in due {
            let Some(w) = self
                .repos
                .get(&repo)
                .and_then(|r| r.setup.workspace.clone())
            else {
                continue;
            };
            if let Err(e) = w.remove(id) {
                tracing::warn!(conversation = %id, error = %e, "cannot remove an expired conversation's directories");
                continue;
            }
            self.ctx
                .append(one(
                    id.stream(),
                    Event::ConversationExpired(ConversationExpiredV1 {
                        conversation: id,
                        last_activity_seq: last,
                    }),
                    None,
                ))
                .await?;
            removed.push(id);
        }
        self.catch_up().await?;
        Ok(removed)
    }

    /// Serves until `shutdown`: takes up messages, sends replies, runs up
    /// to `max_concurrent` tasks at once, expires idle conversations
    /// hourly. On shutdown, running tasks get `shutdown_timeout` to finish;
    /// then they are stopped and recorded as interrupted (they run again
    /// after the next start).
    pub async fn serve(mut self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let kill = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<JobDone>();
        let mut expiry = tokio::time::interval(Duration::from_secs(3600));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log_open = true;
        let result = loop {
            if let Err(e) = self.serve_round(&tracker, &kill, &done_tx).await {
                break Err(e);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some(done) = done_rx.recv() => {
                    self.live.remove(&done.task);
                    if let Err(e) = done.result {
                        tracing::error!(task = %done.task, error = %e, "a task's run failed to record its end");
                    }
                    self.answer_quiesced();
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::Stop(conv, reply) => {
                        // Recorded like the dashboard's Stop; the fold
                        // then stops the run (one mechanism, one record).
                        let live = self
                            .live
                            .iter()
                            .find(|(_, l)| l.conversation == conv)
                            .map(|(task, _)| *task);
                        if let Some(task) = live {
                            let asked = self
                                .ctx
                                .append(one(
                                    conv.stream(),
                                    Event::TaskStopRequested(TaskStopRequestedV1 {
                                        task,
                                        requested_by: "gateway".to_owned(),
                                        reason: String::new(),
                                    }),
                                    None,
                                ))
                                .await;
                            if let Err(e) = asked {
                                break Err(e);
                            }
                        }
                        let _ = reply.send(live.is_some());
                    }
                    Command::Quiesce(repo, reply) => {
                        if let Some(r) = self.repos.get_mut(&repo) {
                            r.status = RepoStatus::NotServing(RELOADING.to_owned());
                        }
                        tracing::info!(%repo, "repo taken out of service for a reload");
                        self.quiescing.push((repo, reply));
                        self.answer_quiesced();
                    }
                    Command::Install(setup, status, reply) => {
                        tracing::info!(repo = %setup.id, ?status, "repo (re)configured");
                        self.repos.insert(setup.id.clone(), Repo { setup, status });
                        let _ = reply.send(());
                    }
                    Command::Remove(repo, reply) => {
                        self.repos.remove(&repo);
                        tracing::info!(%repo, "repo removed from the configuration");
                        let _ = reply.send(());
                    }
                    Command::Configure(cfg) => {
                        tracing::info!(max_concurrent = cfg.max_concurrent, "execution settings reloaded");
                        self.cfg = cfg;
                    }
                },
                rec = self.sub.next() => match rec {
                    Some(Ok(rec)) => {
                        if let Err(e) = apply_record(&mut self.state, &rec) {
                            break Err(e);
                        }
                    }
                    Some(Err(e)) => tracing::error!(error = %e, "cannot read an event; skipped"),
                    None => {
                        log_open = false;
                        break Ok(());
                    }
                },
                _ = expiry.tick() => {
                    if let Err(e) = self.expire_idle(now_us()).await {
                        break Err(e);
                    }
                }
            }
        };
        tracker.close();
        if !self.live.is_empty() {
            tracing::info!(running = self.live.len(), grace = ?self.cfg.shutdown_timeout,
                "waiting for running tasks");
        }
        if tokio::time::timeout(self.cfg.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.live.len(),
                "shutdown timeout: stopping running tasks"
            );
            kill.cancel();
            tracker.wait().await;
        }
        // Answers for tasks that ended during the drain go out now rather
        // than after the next start (the caller bounds this wait too).
        if result.is_ok() && log_open {
            self.catch_up().await?;
            while self.reply_one().await?.is_some() {
                self.catch_up().await?;
            }
        }
        result
    }

    /// One round of work in serve mode: everything but running inline.
    /// Repeats until it folds nothing new, so an event that arrived while
    /// it worked (and was folded then) is not left waiting for a wake-up.
    async fn serve_round(
        &mut self,
        tracker: &TaskTracker,
        kill: &CancellationToken,
        done: &mpsc::UnboundedSender<JobDone>,
    ) -> Result<(), GatewayError> {
        self.catch_up().await?;
        if !self.recovered {
            self.recovered = true;
            self.recover().await?;
            self.catch_up().await?;
        }
        loop {
            let seen = self.state.next;
            self.stop_requested_live();
            self.stop_queued().await?;
            while self.intake_one().await?.is_some() {
                self.catch_up().await?;
            }
            // Tasks start before replies go out: an acknowledgement's SMTP
            // round trip does not delay the agent's start (replies still
            // go out in log order, so the ack comes before the answer).
            for task in self.startable() {
                let stop = kill.child_token();
                let Some(job) = self.job(task, stop.clone(), kill.clone()) else {
                    continue;
                };
                self.live.insert(
                    task,
                    Live {
                        conversation: job.task.conversation,
                        repo: job.task.repo.clone(),
                        stop,
                    },
                );
                let done = done.clone();
                tracker.spawn(async move {
                    let result = job.run().await;
                    let _ = done.send(JobDone { task, result });
                });
            }
            while self.reply_one().await?.is_some() {
                self.catch_up().await?;
            }
            self.catch_up().await?;
            if self.state.next == seen {
                return Ok(());
            }
        }
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Applies every event written so far.
async fn fold_available(
    log: &Log,
    sub: &mut Subscription,
    state: &mut GatewayState,
) -> Result<(), GatewayError> {
    let Some(head) = log.head() else {
        return Ok(());
    };
    while sub.position() <= head {
        match sub.next().await {
            Some(Ok(rec)) => apply_record(state, &rec)?,
            Some(Err(e)) => tracing::error!(error = %e, "cannot read an event; skipped"),
            None => break,
        }
    }
    Ok(())
}

fn apply_record(state: &mut GatewayState, rec: &crate::log::Record) -> Result<(), GatewayError> {
    match rec.event_type() {
        Some(ty) if state::reads(ty) => {
            let event = rec.decode()?;
            state.apply(&rec.header, &event);
        }
        _ => {
            state.apply_header(&rec.header);
        }
    }
    Ok(())
}

/// Runs a repo's boot check and records `repo.booted`; a repo that fails
/// it (or misses a part) is not serving, with the reason.
async fn boot_repo(ctx: &Ctx, setup: &RepoSetup) -> Result<RepoStatus, GatewayError> {
    let status = match setup.missing() {
        Some(why) => RepoStatus::NotServing(why),
        None => match &setup.boot_check {
            Some(check) => match check().await {
                Ok(()) => RepoStatus::Serving,
                Err(e) => RepoStatus::NotServing(e),
            },
            None => RepoStatus::Serving,
        },
    };
    let (ok, error) = match &status {
        RepoStatus::Serving => (true, None),
        RepoStatus::NotServing(why) => {
            tracing::warn!(repo = %setup.id, reason = %why, "repo is not serving");
            (false, Some(why.clone()))
        }
    };
    ctx.append(one(
        StreamId::server(),
        Event::RepoBooted(RepoBootedV1 {
            repo: setup.id.clone(),
            ok,
            error,
        }),
        None,
    ))
    .await?;
    Ok(status)
}

/// Records a cut-off run: re-run once, else completed as interrupted.
async fn interrupt(ctx: &Ctx, t: &TaskView, why: &str) -> Result<(), GatewayError> {
    // A task someone asked to stop is not run again.
    let rerun = !t.rerun && t.stop_requested.is_none();
    let mut events = vec![Event::TaskInterrupted(TaskInterruptedV1 {
        task: t.id,
        attempt: t.attempts,
        rerun,
        reason: if rerun {
            format!("{why}; running it once more")
        } else if t.stop_requested.is_some() {
            format!("{why}; a stop was requested, so not re-run")
        } else {
            format!("{why}, again; not re-run")
        },
    })];
    if !rerun {
        let mut r = ExecutionResult::internal(why);
        r.outcome = if t.stop_requested.is_some() {
            TaskOutcome::Stopped
        } else {
            TaskOutcome::Interrupted
        };
        events.push(Event::TaskCompleted(completed(t.id, &r, None)));
    }
    ctx.append(StreamAppend {
        stream: t.conversation.stream(),
        expected: ExpectedVersion::Any,
        events: events
            .into_iter()
            .map(|event| NewEvent {
                event,
                causation: None,
            })
            .collect(),
    })
    .await?;
    Ok(())
}

fn completed(task: TaskId, r: &ExecutionResult, timeout: Option<Duration>) -> TaskCompletedV1 {
    TaskCompletedV1 {
        task,
        outcome: r.outcome.clone(),
        reason: r.reason.clone(),
        session_id: r.session_id.clone(),
        reply_text: reply::task_text(r, timeout),
        cost_micros: r.cost_micros,
        turns: r.turns,
        duration_ms: r.duration_ms,
        input_tokens: r.usage.input_tokens,
        output_tokens: r.usage.output_tokens,
        cache_creation_input_tokens: r.usage.cache_creation_input_tokens,
        cache_read_input_tokens: r.usage.cache_read_input_tokens,
        web_searches: r.web_searches,
        web_fetches: r.web_fetches,
        blocked_hosts: r.blocked_hosts.clone(),
    }
}

/// Delivers one owed reply and records the outcome.
async fn send_owed(
    ctx: &Ctx,
    o: &OwedReply,
    sink: Arc<dyn ReplySink>,
    dirs: Option<ConversationDirs>,
    thread_keys: Vec<String>,
) -> Result<(), GatewayError> {
    let (text, attach) = match &o.what {
        Owed::Ack { replaces_expired } => (
            reply::ack_text(
                o.conversation.unwrap_or(ConversationId(0)),
                *replaces_expired,
            ),
            false,
        ),
        Owed::Dismissed(text) => (text.clone(), false),
        Owed::Result(e) => (reply::completed_text(e), reply::attaches_outbox(&e.outcome)),
    };
    let attachments = match (&dirs, attach) {
        (Some(d), true) => d.outbox_files(),
        _ => Vec::new(),
    };
    let out = OutgoingReply {
        key: o.cause.to_string(),
        conversation: o.conversation,
        task: o.task,
        kind: o.kind.clone(),
        to: o.to.sender.clone(),
        in_reply_to: o.to.message_id.clone(),
        thread_keys,
        subject: o.to.subject.clone(),
        text,
        attachments: attachments.clone(),
    };
    // A reply only follows a cause that is on disk: a crash must not
    // leave a sent reply whose cause is lost.
    if let Some(seq) = ctx.log.head() {
        ctx.log.sync_to(seq).await?;
    }
    let tries = if o.kind == ReplyKind::Acknowledgement {
        1
    } else {
        2
    };
    let mut last_err = String::new();
    for attempt in 1..=tries {
        ctx.point("before send")?;
        let sent = sink.send(out.clone()).await;
        match sent {
            Ok(d) => {
                // The one window a crash can re-send in: delivered, not
                // yet recorded (the sink sees the same key again).
                ctx.point("sent, not recorded")?;
                let stream = o
                    .conversation
                    .map(|c| c.stream())
                    .unwrap_or_else(|| StreamId::channel(&o.repo, &o.channel));
                ctx.log
                    .append(one(
                        stream,
                        Event::ReplySent(ReplySentV1 {
                            conversation: o.conversation.unwrap_or(ConversationId(0)),
                            task: o.task,
                            channel: o.channel.clone(),
                            kind: o.kind.clone(),
                            message_id: d.message_id,
                            in_reply_to: o.to.message_id.clone(),
                            attachments: d.attachments,
                        }),
                        Some(o.cause),
                    ))
                    .await?;
                ctx.point("after append")?;
                if let (Some(d), false) = (&dirs, attachments.is_empty()) {
                    d.clear_outbox();
                }
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(cause = %o.cause, attempt, error = %e, "reply not delivered");
                last_err = e.message;
            }
        }
    }
    let stream = o
        .conversation
        .map(|c| c.stream())
        .unwrap_or_else(|| StreamId::channel(&o.repo, &o.channel));
    ctx.append(one(
        stream,
        Event::ReplyFailed(ReplyFailedV1 {
            conversation: o.conversation.unwrap_or(ConversationId(0)),
            task: o.task,
            channel: o.channel.clone(),
            kind: o.kind.clone(),
            error: last_err,
            attempts: tries,
        }),
        Some(o.cause),
    ))
    .await?;
    Ok(())
}

/// One task's run, detached from the gateway so it can be spawned.
struct Job {
    ctx: Ctx,
    context: String,
    workspace: Arc<dyn Workspace>,
    runner: Arc<dyn TaskRunner>,
    timeout: Option<Duration>,
    session: Option<String>,
    last_response: Option<String>,
    task: TaskView,
    messages: Vec<Msg>,
    /// A user's stop (a child of `kill`).
    stop: CancellationToken,
    /// The shutdown deadline passed.
    kill: CancellationToken,
}

// === impl Job ===

impl Job {
    async fn run(self) -> Result<(), GatewayError> {
        let t = &self.task;
        let conv = t.conversation;
        self.ctx.point("before prepare")?;
        let dirs = match self.workspace.prepare(conv).await {
            Ok(d) => d,
            Err(e) => {
                let r =
                    ExecutionResult::internal(format!("the workspace could not be prepared: {e}"));
                return self.complete(&r, None).await;
            }
        };
        let attachments = self.save_attachments(&dirs).await;
        let prompt_messages: Vec<PromptMessage> = self
            .messages
            .iter()
            .map(|m| PromptMessage {
                sender_display: m.sender_display.clone(),
                received_us: m.received_us,
                body: if m.body.trim().is_empty() {
                    m.subject.clone()
                } else {
                    m.body.clone()
                },
            })
            .collect();
        let subject = if t.new_conversation {
            self.messages.first().map(|m| m.subject.as_str())
        } else {
            None
        };
        let prompt = prompt::build(&self.context, subject, &attachments, &prompt_messages);
        let resume = self.session.clone();
        let mut attempt = t.attempts + 1;
        let mut req = RunRequest {
            task: t.id,
            conversation: conv,
            repo: t.repo.clone(),
            attempt,
            dirs: dirs.clone(),
            prompt: prompt.clone(),
            model: t.model.clone(),
            effort: t.effort.clone(),
            resume_session: resume.clone(),
            timeout: self.timeout,
        };
        let started = self.start(attempt, resume.clone(), prompt).await?;
        let mut result = self.attempt(req.clone()).await?;
        let mut cause = started;
        if !self.kill.is_cancelled()
            && prompt::retry_in_fresh_session(&result.outcome, resume.is_some())
        {
            attempt += 1;
            let prompt = prompt::recovery(
                &self.context,
                self.last_response.as_deref(),
                &prompt_messages,
            );
            tracing::info!(task = %t.id, outcome = ?result.outcome, "retrying in a fresh session");
            cause = self.start(attempt, None, prompt.clone()).await?;
            req.attempt = attempt;
            req.prompt = prompt;
            req.resume_session = None;
            req.effort = None;
            result = self.attempt(req).await?;
        }
        if self.kill.is_cancelled() {
            let mut t = t.clone();
            t.attempts = attempt;
            return interrupt(&self.ctx, &t, "the server shut down while the task ran").await;
        }
        if self.stop.is_cancelled() && result.outcome != TaskOutcome::Succeeded {
            result.outcome = TaskOutcome::Stopped;
        }
        self.complete(&result, Some(cause)).await
    }

    async fn start(
        &self,
        attempt: u32,
        resume_session: Option<String>,
        prompt: String,
    ) -> Result<EventId, GatewayError> {
        let appended = self
            .ctx
            .append(one(
                self.task.conversation.stream(),
                Event::TaskStarted(TaskStartedV1 {
                    task: self.task.id,
                    attempt,
                    resume_session,
                    prompt,
                }),
                None,
            ))
            .await?;
        Ok(appended.ids.first().copied().unwrap_or_default())
    }

    async fn attempt(&self, req: RunRequest) -> Result<ExecutionResult, GatewayError> {
        self.ctx.point("before run")?;
        let result = self.runner.run(req, self.stop.clone()).await;
        self.ctx.point("after run")?;
        Ok(result)
    }

    async fn complete(
        &self,
        r: &ExecutionResult,
        cause: Option<EventId>,
    ) -> Result<(), GatewayError> {
        tracing::info!(task = %self.task.id, outcome = ?r.outcome, "task ended");
        self.ctx
            .append(one(
                self.task.conversation.stream(),
                Event::TaskCompleted(completed(self.task.id, r, self.timeout)),
                cause,
            ))
            .await?;
        Ok(())
    }

    /// Saves this task's attachments to the inbox (from the log's blobs);
    /// returns the names used. A missing blob is logged and skipped.
    async fn save_attachments(&self, dirs: &ConversationDirs) -> Vec<String> {
        let wanted: Vec<_> = self
            .messages
            .iter()
            .flat_map(|m| m.attachments.iter().cloned())
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let log = self.ctx.log.clone();
        let dirs = dirs.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let mut names = Vec::new();
            for a in wanted {
                match log.get_blob(&a.blob.hash) {
                    Ok(Some(bytes)) => match dirs.save_inbox_file(&a.name, &bytes) {
                        Ok(name) => names.push(name),
                        Err(e) => tracing::warn!(file = %a.name, error = %e, "cannot save an attachment"),
                    },
                    Ok(None) => tracing::warn!(file = %a.name, "an attachment's content is not in the store"),
                    Err(e) => tracing::warn!(file = %a.name, error = %e, "cannot read an attachment"),
                }
            }
            names
        })
        .await;
        saved.unwrap_or_default()
    }
}
