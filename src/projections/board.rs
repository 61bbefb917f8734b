//! The board projection: what the dashboard shows and the gateway's queue
//! reads. Tasks with their state (queued → running → done), timings,
//! outcome, cost, output progress and todo list; per-state counts; repos
//! (boot result, channel health); and server info (store, last start and
//! stop, config generation).
//!
//! Keyspaces: `proj_board_tasks` (task id, 16 bytes → [`Task`] JSON),
//! `proj_board_index` (ordering keys → task id: `A`‖seq for all tasks,
//! `S`‖state‖seq, `R`‖repo‖seq, `Q`‖repo‖state‖seq, where seq is the
//! task's `task.queued` sequence, so every listing is a range scan in queue
//! order), `proj_board_summary` (`s` → [`ServerInfo`], `r`‖repo → [`Repo`],
//! `c` and `c`‖repo → [`StateCounts`]) and `proj_board_meta`.
//!
//! Tasks are never deleted: a task of an expired conversation stays in
//! history. The folds ([`Task::apply`], [`Repo::apply`],
//! [`ServerInfo::apply`]) are pure; [`BoardFold`] routes events through the
//! chunk cache and keeps indexes and counts in step. Read through [`Board`].

#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use fjall::{Database, Keyspace, Readable};
use serde::{Deserialize, Serialize};

use crate::events::{
    ChannelHealth, ConversationId, Event, OutputKind, RepoId, Seq, StopReason, TaskId, TaskOutcome,
    TaskQueuedV1,
};
use crate::log::Header;

use super::ProjectionError;
use super::conversations::Activity;
use super::store::{self, Namespace, Views};

/// The projection's name (keyspace prefix `proj_board_`).
pub(crate) const NAME: &str = "board";
/// Bump when the stored shape or the fold changes: the state is rebuilt.
pub(crate) const VERSION: u32 = 2;
/// Data keyspaces (the meta keyspace aside).
pub(crate) const KEYSPACES: &[&str] = &["tasks", "index", "summary"];

/// Most todo items kept per task (a runaway list should not bloat a view).
const MAX_TODO_ITEMS: usize = 200;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a slot.
    Queued,
    /// Its container runs.
    Running,
    /// Ended, with an outcome.
    Done,
}

/// One task as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task.
    pub id: TaskId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its repo.
    pub repo: RepoId,
    /// Where it is.
    pub state: TaskState,
    /// Run attempt (0 until started; 2 for a re-run after a crash).
    pub attempt: u32,
    /// The model.
    pub model: String,
    /// Effort level, when set.
    pub effort: Option<String>,
    /// When it was queued (its `task.queued` event).
    pub queued: Activity,
    /// When its latest attempt started.
    pub started_at_us: Option<i64>,
    /// When it ended.
    pub completed_at_us: Option<i64>,
    /// How it ended.
    pub outcome: Option<TaskOutcome>,
    /// Why it ended that way (empty on success).
    pub reason: Option<String>,
    /// Cost in micro-dollars.
    pub cost_micros: Option<u64>,
    /// Agent turns.
    pub turns: Option<u32>,
    /// Wall time of the run.
    pub duration_ms: Option<u64>,
    /// Input tokens.
    pub input_tokens: Option<u64>,
    /// Output tokens.
    pub output_tokens: Option<u64>,
    /// Tokens written to the prompt cache.
    pub cache_creation_input_tokens: Option<u64>,
    /// Tokens read from the prompt cache.
    pub cache_read_input_tokens: Option<u64>,
    /// `WebSearch` tool uses.
    pub web_searches: Option<u32>,
    /// `WebFetch` tool uses.
    pub web_fetches: Option<u32>,
    /// Hosts the proxy blocked during the run.
    pub blocked_hosts: Vec<String>,
    /// Messages that opened it.
    pub messages: u32,
    /// Follow-up messages folded into it while queued.
    pub coalesced: u32,
    /// Output lines seen (both streams, all attempts).
    pub output_lines: u64,
    /// Kind of the latest output line.
    pub last_output_kind: Option<OutputKind>,
    /// Progress from the latest TodoWrite the agent made, if any.
    pub todos: Option<TodoProgress>,
    /// The engine's container id.
    pub container_id: Option<String>,
    /// The container's exit status, when it exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel killed it for memory.
    pub oom_killed: bool,
    /// Why airut stopped the container, if it did.
    pub stopped: Option<StopReason>,
    /// The latest `task.stop_requested`, if someone asked to stop it.
    #[serde(default)]
    pub stop_requested: Option<StopRequest>,
}

/// A request to stop a task (the dashboard's Stop button).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Who asked.
    pub by: String,
    /// Why, as given.
    pub reason: String,
    /// When.
    pub at: Activity,
}

/// The agent's todo list, from its latest `TodoWrite` tool use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TodoProgress {
    /// Items in the list.
    pub total: u32,
    /// Items marked completed.
    pub completed: u32,
    /// The items (the first [`MAX_TODO_ITEMS`]).
    pub items: Vec<TodoItem>,
}

/// One todo item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TodoItem {
    /// What to do.
    pub content: String,
    /// `pending`, `in_progress` or `completed` (as the agent wrote it).
    pub status: String,
    /// Present-tense form shown while in progress.
    pub active_form: Option<String>,
}

/// A repo's boot result and channel health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repo {
    /// The repo.
    pub repo: RepoId,
    /// The latest boot, if it booted.
    pub boot: Option<RepoBoot>,
    /// Channels by name (`email`, `slack`).
    pub channels: BTreeMap<String, ChannelStatus>,
}

/// How a repo's latest boot went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoBoot {
    /// Whether it is serving.
    pub ok: bool,
    /// What went wrong, when it is not.
    pub error: Option<String>,
    /// When.
    pub at: Activity,
}

/// A channel's latest health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// The state.
    pub health: ChannelHealth,
    /// Detail for the operator.
    pub detail: String,
    /// Since when.
    pub since: Activity,
}

/// The server as the log knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The store's random identity (from `store.created`).
    pub store_id: Option<uuid::Uuid>,
    /// The layout the store was created with.
    pub layout_version: Option<u32>,
    /// The latest `server.started`.
    pub last_started: Option<ServerStart>,
    /// The latest `server.stopped`. Older than `last_started` means the
    /// server runs now, or crashed.
    pub last_stopped: Option<ServerStop>,
    /// The latest config generation.
    pub config: Option<ConfigInfo>,
    /// A changed config file that was not applied since that generation.
    #[serde(default)]
    pub config_rejected: Option<ConfigRejection>,
}

/// A config file read while serving and not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRejection {
    /// The file.
    pub path: String,
    /// BLAKE3 of the file as read, hex.
    pub content_hash: String,
    /// What is wrong with it.
    pub error: String,
    /// When.
    pub at: Activity,
}

/// A server start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStart {
    /// airut version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Dashboard / API address.
    pub listen: String,
    /// When.
    pub at: Activity,
}

/// A graceful server stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStop {
    /// Why.
    pub reason: String,
    /// When.
    pub at: Activity,
}

/// A loaded config generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInfo {
    /// Increases by one per load.
    pub generation: u64,
    /// The file.
    pub path: String,
    /// BLAKE3 of the file, hex.
    pub content_hash: String,
    /// Repos it declares.
    pub repos: Vec<RepoId>,
    /// When.
    pub at: Activity,
}

/// Tasks per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Queued tasks.
    pub queued: u64,
    /// Running tasks.
    pub running: u64,
    /// Finished tasks.
    pub done: u64,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this repo.
    pub repo: Option<RepoId>,
}

/// Listing order, by queue position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// Newest first (the dashboard).
    #[default]
    NewestFirst,
    /// Oldest first (the gateway's queue).
    OldestFirst,
}

/// One page of tasks; `next` continues after the last one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// The cursor for the next page (the last task's queue seq), when more
    /// may follow.
    pub next: Option<Seq>,
}

// === impl TaskState ===

impl TaskState {
    fn code(self) -> u8 {
        match self {
            TaskState::Queued => 0,
            TaskState::Running => 1,
            TaskState::Done => 2,
        }
    }
}

// === impl StateCounts ===

impl StateCounts {
    fn slot(&mut self, s: TaskState) -> &mut u64 {
        match s {
            TaskState::Queued => &mut self.queued,
            TaskState::Running => &mut self.running,
            TaskState::Done => &mut self.done,
        }
    }
}

// === impl Task ===

impl Task {
    /// The view a `task.queued` event creates.
    pub fn queued(header: &Header, e: &TaskQueuedV1) -> Self {
        Task {
            id: e.task,
            conversation: e.conversation,
            repo: e.repo.clone(),
            state: TaskState::Queued,
            attempt: 0,
            model: e.model.clone(),
            effort: e.effort.clone(),
            queued: Activity {
                seq: header.seq,
                timestamp_us: header.timestamp_us,
            },
            started_at_us: None,
            completed_at_us: None,
            outcome: None,
            reason: None,
            cost_micros: None,
            turns: None,
            duration_ms: None,
            input_tokens: None,
            output_tokens: None,
            cache_creation_input_tokens: None,
            cache_read_input_tokens: None,
            web_searches: None,
            web_fetches: None,
            blocked_hosts: Vec::new(),
            messages: u32::try_from(e.messages.len()).unwrap_or(u32::MAX),
            coalesced: 0,
            output_lines: 0,
            last_output_kind: None,
            todos: None,
            container_id: None,
            exit_code: None,
            oom_killed: false,
            stopped: None,
            stop_requested: None,
        }
    }

    /// Folds a later event about this task. No I/O, no clock, no error.
    pub fn apply(&mut self, header: &Header, event: &Event) {
        match event {
            Event::TaskCoalesced(_) => self.coalesced = self.coalesced.saturating_add(1),
            Event::TaskStarted(e) => {
                self.state = TaskState::Running;
                self.attempt = e.attempt;
                self.started_at_us = Some(header.timestamp_us);
                // A re-run starts a fresh attempt: the previous ending no
                // longer describes the task.
                self.completed_at_us = None;
                self.outcome = None;
                self.reason = None;
                self.exit_code = None;
                self.oom_killed = false;
                self.stopped = None;
            }
            Event::TaskCompleted(e) => {
                self.state = TaskState::Done;
                self.completed_at_us = Some(header.timestamp_us);
                self.outcome = Some(e.outcome.clone());
                self.reason = Some(e.reason.clone());
                self.cost_micros = e.cost_micros;
                self.turns = e.turns;
                self.duration_ms = Some(e.duration_ms);
                self.input_tokens = Some(e.input_tokens);
                self.output_tokens = Some(e.output_tokens);
                self.cache_creation_input_tokens = Some(e.cache_creation_input_tokens);
                self.cache_read_input_tokens = Some(e.cache_read_input_tokens);
                self.web_searches = Some(e.web_searches);
                self.web_fetches = Some(e.web_fetches);
                self.blocked_hosts = e.blocked_hosts.clone();
            }
            // A re-run waits for a slot again.
            Event::TaskInterrupted(e) if e.rerun && self.state == TaskState::Running => {
                self.state = TaskState::Queued
            }
            Event::ContainerCreated(e) => self.container_id = Some(e.container_id.clone()),
            Event::ContainerStarted(e) => self.container_id = Some(e.container_id.clone()),
            Event::ContainerOutput(e) => {
                self.output_lines += 1;
                self.last_output_kind = Some(e.kind.clone());
                if e.kind == OutputKind::Assistant
                    && let Some(todos) = parse_todos(&e.raw)
                {
                    self.todos = Some(todos);
                }
            }
            Event::ContainerExited(e) => {
                self.exit_code = Some(e.exit_code);
                self.oom_killed = e.oom_killed;
            }
            Event::ContainerStopped(e) => self.stopped = Some(e.reason.clone()),
            Event::ContainerOutputBlob(e) => {
                self.output_lines += 1;
                self.last_output_kind = Some(e.kind.clone());
            }
            Event::TaskStopRequested(e) => {
                self.stop_requested = Some(StopRequest {
                    by: e.requested_by.clone(),
                    reason: e.reason.clone(),
                    at: Activity {
                        seq: header.seq,
                        timestamp_us: header.timestamp_us,
                    },
                });
            }
            _ => {}
        }
    }

    /// The index keys this state of the task lives under.
    fn index_keys(&self) -> Vec<Vec<u8>> {
        let seq = store::seq_bytes(self.queued.seq);
        let state = self.state.code();
        let mut all = vec![b'A'];
        all.extend_from_slice(&seq);
        let mut by_state = vec![b'S', state];
        by_state.extend_from_slice(&seq);
        let mut by_repo = vec![b'R'];
        store::push_str(&mut by_repo, &self.repo.0);
        by_repo.extend_from_slice(&seq);
        let mut by_both = vec![b'Q'];
        store::push_str(&mut by_both, &self.repo.0);
        by_both.push(state);
        by_both.extend_from_slice(&seq);
        vec![all, by_state, by_repo, by_both]
    }
}

/// The todo list of the last `TodoWrite` tool use in a stream-json assistant
/// line, or `None` when the line has none or is not what we expect.
///
/// The line is untrusted agent output: anything unexpected is skipped,
/// never an error.
pub fn parse_todos(raw: &str) -> Option<TodoProgress> {
    // Cheap filter first: most assistant lines carry no todo list.
    if !raw.contains("TodoWrite") {
        return None;
    }
    let line: serde_json::Value = serde_json::from_str(raw).ok()?;
    let content = line.get("message")?.get("content")?.as_array()?;
    let input = content.iter().rev().find_map(|block| {
        let is_todo = block.get("type")?.as_str()? == "tool_use"
            && block.get("name")?.as_str()? == "TodoWrite";
        if is_todo { block.get("input") } else { None }
    })?;
    let todos = input.get("todos")?.as_array()?;
    let mut progress = TodoProgress {
        total: 0,
        completed: 0,
        items: Vec::new(),
    };
    for t in todos {
        let Some(obj) = t.as_object() else { continue };
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let status = text("status").unwrap_or_default();
        progress.total = progress.total.saturating_add(1);
        if status == "completed" {
            progress.completed = progress.completed.saturating_add(1);
        }
        if progress.items.len() < MAX_TODO_ITEMS {
            progress.items.push(TodoItem {
                content: text("content").unwrap_or_default(),
                status,
                active_form: text("activeForm"),
            });
        }
    }
    Some(progress)
}

// === impl Repo ===

impl Repo {
    /// A repo the log has not said anything about yet.
    pub fn new(repo: RepoId) -> Self {
        Repo {
            repo,
            boot: None,
            channels: BTreeMap::new(),
        }
    }

    /// Folds a boot or channel-health event for this repo.
    pub fn apply(&mut self, header: &Header, event: &Event) {
        let at = Activity {
            seq: header.seq,
            timestamp_us: header.timestamp_us,
        };
        match event {
            Event::RepoBooted(e) => {
                self.boot = Some(RepoBoot {
                    ok: e.ok,
                    error: e.error.clone(),
                    at,
                });
            }
            Event::ChannelHealthChanged(e) => {
                self.channels.insert(
                    e.channel.clone(),
                    ChannelStatus {
                        health: e.health.clone(),
                        detail: e.detail.clone(),
                        since: at,
                    },
                );
            }
            _ => {}
        }
    }
}

// === impl ServerInfo ===

impl ServerInfo {
    /// Folds a server-level event.
    pub fn apply(&mut self, header: &Header, event: &Event) {
        let at = Activity {
            seq: header.seq,
            timestamp_us: header.timestamp_us,
        };
        match event {
            Event::StoreCreated(e) => {
                self.store_id = Some(e.store_id);
                self.layout_version = Some(e.layout_version);
            }
            Event::ServerStarted(e) => {
                self.last_started = Some(ServerStart {
                    version: e.version.clone(),
                    pid: e.pid,
                    listen: e.listen.clone(),
                    at,
                });
            }
            Event::ServerStopped(e) => {
                self.last_stopped = Some(ServerStop {
                    reason: e.reason.clone(),
                    at,
                });
            }
            Event::ConfigRejected(e) => {
                self.config_rejected = Some(ConfigRejection {
                    path: e.path.clone(),
                    content_hash: e.content_hash.iter().map(|b| format!("{b:02x}")).collect(),
                    error: e.error.clone(),
                    at,
                });
            }
            Event::ConfigLoaded(e) => {
                self.config_rejected = None;
                self.config = Some(ConfigInfo {
                    generation: e.generation,
                    path: e.path.clone(),
                    content_hash: e.content_hash.iter().map(|b| format!("{b:02x}")).collect(),
                    repos: e.repos.clone(),
                    at,
                });
            }
            _ => {}
        }
    }
}

/// The task an event is about, for task-level events.
pub fn task_of(event: &Event) -> Option<TaskId> {
    match event {
        Event::TaskCoalesced(e) => Some(e.task),
        Event::TaskStarted(e) => Some(e.task),
        Event::TaskCompleted(e) => Some(e.task),
        Event::TaskInterrupted(e) => Some(e.task),
        Event::TaskStopRequested(e) => Some(e.task),
        Event::ContainerCreated(e) => Some(e.task),
        Event::ContainerStarted(e) => Some(e.task),
        Event::ContainerOutput(e) => Some(e.task),
        Event::ContainerExited(e) => Some(e.task),
        Event::ContainerStopped(e) => Some(e.task),
        Event::ContainerOutputBlob(e) => Some(e.task),
        _ => None,
    }
}

const SERVER_KEY: &[u8] = b"s";

fn repo_key(repo: &RepoId) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend_from_slice(repo.0.as_bytes());
    k
}

fn counts_key(repo: Option<&RepoId>) -> Vec<u8> {
    let mut k = vec![b'c'];
    if let Some(r) = repo {
        k.extend_from_slice(r.0.as_bytes());
    }
    k
}

/// The board's write side.
pub(crate) struct BoardFold {
    tasks: Views<Task>,
    index: Keyspace,
    server: Views<ServerInfo>,
    repos: Views<Repo>,
    counts: Views<StateCounts>,
}

// === impl BoardFold ===

impl BoardFold {
    /// Opens the data keyspaces in `ns`.
    pub(crate) fn open(db: &Database, ns: Namespace) -> Result<Self, ProjectionError> {
        let summary = store::open_keyspace(db, ns, NAME, "summary")?;
        Ok(BoardFold {
            tasks: Views::new(store::open_keyspace(db, ns, NAME, "tasks")?),
            index: store::open_keyspace(db, ns, NAME, "index")?,
            server: Views::new(summary.clone()),
            repos: Views::new(summary.clone()),
            counts: Views::new(summary),
        })
    }

    /// The data keyspaces, in [`KEYSPACES`] order.
    pub(crate) fn keyspaces(&self) -> Vec<Keyspace> {
        vec![
            self.tasks.keyspace().clone(),
            self.index.clone(),
            self.server.keyspace().clone(),
        ]
    }

    /// Routes one event into the cache.
    pub(crate) fn stage(&mut self, header: &Header, event: &Event) -> Result<(), ProjectionError> {
        match event {
            Event::TaskQueued(e) => {
                let key = *e.task.0.as_bytes();
                if self.tasks.get_mut(&key)?.is_none() {
                    let task = Task::queued(header, e);
                    self.count(&task.repo, None, Some(task.state))?;
                    self.tasks.put(&key, task)?;
                }
            }
            Event::RepoBooted(e) => self.repo(&e.repo, header, event)?,
            Event::ChannelHealthChanged(e) => self.repo(&e.repo, header, event)?,
            Event::StoreCreated(_)
            | Event::ServerStarted(_)
            | Event::ServerStopped(_)
            | Event::ConfigLoaded(_)
            | Event::ConfigRejected(_) => {
                let mut info = self.server.take(SERVER_KEY)?.unwrap_or_default();
                info.apply(header, event);
                self.server.put(SERVER_KEY, info)?;
            }
            _ => {
                let Some(id) = task_of(event) else {
                    return Ok(());
                };
                // Events for a task this log never queued are ignored.
                let Some(task) = self.tasks.get_mut(id.0.as_bytes())? else {
                    return Ok(());
                };
                let before = task.state;
                task.apply(header, event);
                let (after, repo) = (task.state, task.repo.clone());
                if before != after {
                    self.count(&repo, Some(before), Some(after))?;
                }
            }
        }
        Ok(())
    }

    fn repo(
        &mut self,
        repo: &RepoId,
        header: &Header,
        event: &Event,
    ) -> Result<(), ProjectionError> {
        let key = repo_key(repo);
        let mut view = self
            .repos
            .take(&key)?
            .unwrap_or_else(|| Repo::new(repo.clone()));
        view.apply(header, event);
        self.repos.put(&key, view)
    }

    /// Moves one task from `from` to `to` in the global and per-repo counts.
    fn count(
        &mut self,
        repo: &RepoId,
        from: Option<TaskState>,
        to: Option<TaskState>,
    ) -> Result<(), ProjectionError> {
        for key in [counts_key(None), counts_key(Some(repo))] {
            let mut c = self.counts.take(&key)?.unwrap_or_default();
            if let Some(s) = from {
                let n = c.slot(s);
                *n = n.saturating_sub(1);
            }
            if let Some(s) = to {
                *c.slot(s) += 1;
            }
            self.counts.put(&key, c)?;
        }
        Ok(())
    }

    /// Moves the chunk's changes into `batch` and empties the cache.
    pub(crate) fn flush(&mut self, batch: &mut fjall::OwnedWriteBatch) {
        let index = &self.index;
        self.tasks.flush(batch, |batch, entry| {
            let before = entry
                .before
                .as_ref()
                .map(Task::index_keys)
                .unwrap_or_default();
            let now = entry.now.as_ref().map(Task::index_keys).unwrap_or_default();
            let (removed, added) = store::index_diff(&before, &now);
            let id = entry.now.as_ref().or(entry.before.as_ref()).map(|t| t.id);
            for k in removed {
                batch.remove(index, k);
            }
            if let Some(id) = id {
                for k in added {
                    batch.insert(index, k, id.0.as_bytes().to_vec());
                }
            }
        });
        self.server.flush(batch, |_, _| {});
        self.repos.flush(batch, |_, _| {});
        self.counts.flush(batch, |_, _| {});
    }

    /// Drops the chunk's changes (after an error).
    pub(crate) fn discard(&mut self) {
        self.tasks.clear();
        self.server.clear();
        self.repos.clear();
        self.counts.clear();
    }
}

/// Read side of the board. Cheap to clone.
#[derive(Clone)]
pub struct Board {
    db: Database,
    tasks: Keyspace,
    index: Keyspace,
    summary: Keyspace,
}

// === impl Board ===

impl Board {
    pub(crate) fn open(db: &Database) -> Result<Self, ProjectionError> {
        Ok(Board {
            db: db.clone(),
            tasks: store::open_keyspace(db, Namespace::Live, NAME, "tasks")?,
            index: store::open_keyspace(db, Namespace::Live, NAME, "index")?,
            summary: store::open_keyspace(db, Namespace::Live, NAME, "summary")?,
        })
    }

    /// One task by id.
    pub fn task(&self, id: TaskId) -> Result<Option<Task>, ProjectionError> {
        store::get_json(&self.tasks, id.0.as_bytes())
    }

    /// One page of tasks matching `filter`, in `order`, starting after
    /// `after` (a cursor from a previous page). Read from one snapshot.
    pub fn tasks(
        &self,
        filter: &TaskFilter,
        order: Order,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<TaskPage, ProjectionError> {
        let mut prefix = Vec::new();
        match (&filter.repo, filter.state) {
            (None, None) => prefix.push(b'A'),
            (None, Some(s)) => prefix.extend_from_slice(&[b'S', s.code()]),
            (Some(r), None) => {
                prefix.push(b'R');
                store::push_str(&mut prefix, &r.0);
            }
            (Some(r), Some(s)) => {
                prefix.push(b'Q');
                store::push_str(&mut prefix, &r.0);
                prefix.push(s.code());
            }
        }
        let bound = |seq: u64| {
            let mut k = prefix.clone();
            k.extend_from_slice(&seq.to_be_bytes());
            k
        };
        let (lo, hi) = match (order, after) {
            (_, None) => (0, u64::MAX),
            (Order::NewestFirst, Some(Seq(0))) => {
                return Ok(TaskPage {
                    tasks: vec![],
                    next: None,
                });
            }
            (Order::NewestFirst, Some(c)) => (0, c.0 - 1),
            (Order::OldestFirst, Some(c)) if c.0 == u64::MAX => {
                return Ok(TaskPage {
                    tasks: vec![],
                    next: None,
                });
            }
            (Order::OldestFirst, Some(c)) => (c.0 + 1, u64::MAX),
        };
        let snap = self.db.snapshot();
        let range = snap.range(&self.index, bound(lo)..=bound(hi));
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match order {
            Order::NewestFirst => Box::new(range.rev()),
            Order::OldestFirst => Box::new(range),
        };
        let mut tasks = Vec::new();
        let mut more = false;
        for g in iter {
            if tasks.len() == limit {
                more = true;
                break;
            }
            let (k, id) = g
                .into_inner()
                .map_err(|e| ProjectionError::storage("scan board index", e))?;
            match store::get_json_at::<Task>(&snap, &self.tasks, &id)? {
                Some(t) => tasks.push(t),
                None => {
                    return Err(ProjectionError::Corrupt {
                        keyspace: self.index.name().to_string(),
                        key: store::printable_key(&k),
                        reason: "index names a task that is not stored".into(),
                    });
                }
            }
        }
        let next = if more {
            tasks.last().map(|t| t.queued.seq)
        } else {
            None
        };
        Ok(TaskPage { tasks, next })
    }

    /// Tasks per state, over all repos or for one.
    pub fn counts(&self, repo: Option<&RepoId>) -> Result<StateCounts, ProjectionError> {
        Ok(store::get_json(&self.summary, &counts_key(repo))?.unwrap_or_default())
    }

    /// Every repo the log has booted or reported on, by id.
    pub fn repos(&self) -> Result<Vec<Repo>, ProjectionError> {
        let mut out = Vec::new();
        for g in self.db.snapshot().prefix(&self.summary, b"r") {
            let (k, v) = g
                .into_inner()
                .map_err(|e| ProjectionError::storage("scan board repos", e))?;
            out.push(store::decode(&self.summary, &k, &v)?);
        }
        Ok(out)
    }

    /// One repo.
    pub fn repo(&self, repo: &RepoId) -> Result<Option<Repo>, ProjectionError> {
        store::get_json(&self.summary, &repo_key(repo))
    }

    /// What the log says about the server.
    pub fn server(&self) -> Result<ServerInfo, ProjectionError> {
        Ok(store::get_json(&self.summary, SERVER_KEY)?.unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::events::{
        ContainerOutputV1, OutputStream, TaskCoalescedV1, TaskCompletedV1, TaskStartedV1,
    };
    use crate::projections::testing::header;

    fn queued() -> Task {
        let conv = ConversationId(7);
        let e = TaskQueuedV1 {
            task: TaskId(uuid::Uuid::from_u128(1)),
            conversation: conv,
            repo: RepoId("r".into()),
            messages: vec![crate::events::EventId(uuid::Uuid::from_u128(2))],
            model: "opus".into(),
            effort: Some("high".into()),
        };
        Task::queued(&header(3, conv.stream(), 30), &e)
    }

    fn output(kind: OutputKind, raw: &str) -> Event {
        Event::ContainerOutput(ContainerOutputV1 {
            task: TaskId(uuid::Uuid::from_u128(1)),
            stream: OutputStream::Stdout,
            line_no: 0,
            kind,
            raw: raw.into(),
        })
    }

    #[test]
    fn given_queued_when_coalesced_started_completed_then_done_with_stats() {
        let mut t = queued();
        let s = t.conversation.stream();
        t.apply(
            &header(4, s.clone(), 40),
            &Event::TaskCoalesced(TaskCoalescedV1 {
                task: t.id,
                message: crate::events::EventId(uuid::Uuid::from_u128(3)),
            }),
        );
        t.apply(
            &header(5, s.clone(), 50),
            &Event::TaskStarted(TaskStartedV1 {
                task: t.id,
                attempt: 1,
                resume_session: None,
                prompt: "p".into(),
            }),
        );
        assert_eq!(t.state, TaskState::Running);
        t.apply(
            &header(6, s, 60),
            &Event::TaskCompleted(TaskCompletedV1 {
                task: t.id,
                outcome: TaskOutcome::Failed,
                reason: "boom".into(),
                session_id: None,
                reply_text: String::new(),
                cost_micros: Some(1234),
                turns: Some(3),
                duration_ms: 10,
                input_tokens: 5,
                output_tokens: 6,
                cache_creation_input_tokens: 7,
                cache_read_input_tokens: 8,
                web_searches: 1,
                web_fetches: 2,
                blocked_hosts: vec!["evil.example".into()],
            }),
        );
        assert_eq!(t.state, TaskState::Done);
        assert_eq!(t.coalesced, 1);
        assert_eq!(t.messages, 1);
        assert_eq!((t.started_at_us, t.completed_at_us), (Some(50), Some(60)));
        assert_eq!(t.outcome, Some(TaskOutcome::Failed));
        assert_eq!(t.reason.as_deref(), Some("boom"));
        assert_eq!(t.cost_micros, Some(1234));
        assert_eq!(
            (t.cache_read_input_tokens, t.web_fetches),
            (Some(8), Some(2))
        );
        assert_eq!(t.blocked_hosts, vec!["evil.example".to_string()]);
    }

    #[test]
    fn given_running_when_output_then_lines_kind_and_latest_todos_tracked() {
        let mut t = queued();
        let s = t.conversation.stream();
        let todo = |statuses: &[&str]| {
            let todos: Vec<_> = statuses
                .iter()
                .map(|st| serde_json::json!({"content": "x", "status": st, "activeForm": "Xing"}))
                .collect();
            serde_json::json!({"type": "assistant", "message": {"content": [
                {"type": "text", "text": "plan"},
                {"type": "tool_use", "name": "TodoWrite", "input": {"todos": todos}}
            ]}})
            .to_string()
        };
        t.apply(
            &header(4, s.clone(), 1),
            &output(OutputKind::Assistant, &todo(&["completed", "pending"])),
        );
        t.apply(
            &header(5, s.clone(), 2),
            &output(OutputKind::Text, "TodoWrite garbage {"),
        );
        t.apply(
            &header(6, s.clone(), 3),
            &output(OutputKind::Assistant, "{\"TodoWrite\": 1"),
        );
        assert_eq!(t.output_lines, 3);
        assert_eq!(t.last_output_kind, Some(OutputKind::Assistant));
        let p = t.todos.clone().unwrap();
        assert_eq!((p.total, p.completed), (2, 1));
        assert_eq!(p.items[0].active_form.as_deref(), Some("Xing"));
        t.apply(
            &header(7, s, 4),
            &output(
                OutputKind::Assistant,
                &todo(&["completed", "completed", "in_progress"]),
            ),
        );
        let p = t.todos.unwrap();
        assert_eq!((p.total, p.completed), (3, 2));
    }

    #[test]
    fn todo_parsing_tolerates_garbage() {
        for raw in [
            "",
            "TodoWrite",
            "{\"message\": 5, \"x\": \"TodoWrite\"}",
            "{\"message\": {\"content\": [{\"type\": \"tool_use\", \"name\": \"TodoWrite\"}]}}",
            "{\"message\": {\"content\": [{\"type\": \"tool_use\", \"name\": \"TodoWrite\", \"input\": {\"todos\": 3}}]}}",
            "[\"TodoWrite\"]",
        ] {
            assert_eq!(parse_todos(raw), None, "{raw}");
        }
        let odd = "{\"message\": {\"content\": [{\"type\": \"tool_use\", \"name\": \"TodoWrite\", \"input\": {\"todos\": [1, {\"status\": 2}, {\"status\": \"completed\"}]}}]}}";
        let p = parse_todos(odd).unwrap();
        assert_eq!((p.total, p.completed, p.items.len()), (2, 1, 2));
    }

    #[test]
    fn given_done_when_restarted_then_previous_ending_is_cleared() {
        let mut t = queued();
        let s = t.conversation.stream();
        t.state = TaskState::Done;
        t.outcome = Some(TaskOutcome::Interrupted);
        t.apply(
            &header(9, s, 90),
            &Event::TaskStarted(TaskStartedV1 {
                task: t.id,
                attempt: 2,
                resume_session: Some("s".into()),
                prompt: "p".into(),
            }),
        );
        assert_eq!(
            (t.state, t.attempt, t.outcome.clone()),
            (TaskState::Running, 2, None)
        );
    }
}
