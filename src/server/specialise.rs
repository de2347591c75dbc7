//! Automatic specialisation: a task's prompts are kept while the base model answers it;
//! once it has K of them a background job turns them into an adapter with the generator and
//! installs it through the same path as a hot-loaded one.
//!
//! Requests only push a prompt and maybe enqueue a job (short lock, no I/O, no await on a
//! generation). Prompt buffers are written to `STORE/{task}/prompts.jsonl` by a writer task,
//! so a restart loses none of them and requeues tasks that were waiting. The writer rewrites
//! a task's file once for all the prompts that came since its last write; a dropped task's
//! file goes, and its folder with it when no adapter was ever stored. A task's generation
//! history, `STORE/{task}/generation.json`, is written before each generation starts and
//! when it ends: a generation that was running when the process ended (maybe because it
//! killed it) counts as a failed attempt at the next start, retried after the backoff while
//! retries are left, so it cannot crash the server at every start; the hourly cap counts
//! the generations of before a restart too.
//!
//! Bounded: `max_tracked_tasks` buffers of the last K prompts, each cut to
//! `max_prompt_bytes`, and a bounded backlog of unwritten tasks. Past the limit the
//! collecting-only task seen longest ago is dropped, never one with an adapter or one being
//! generated, so a client rotating through new ids cannot push out real tenants; when none
//! can be dropped a new task is refused (503). A task without an adapter is only generated
//! one while the store has room for it (`max_stored_tasks`, `max_store_mib`).
//!
//! A generator that reads labelled examples (`train --condition examples`) is fed the
//! task's examples (`PUT /admin/adapters/{task}/examples`) instead of its prompts: a task
//! is generated once it has K prompts *and* examples, or when examples come for a task
//! that has its K prompts; a task without examples stays on the base model.
//!
//! A task forgotten (`DELETE ...?forget=true`) while its generation runs stays forgotten:
//! the generation's adapter is installed only if the job is still the task's own, asked
//! under the table's lock for the task (see [`AdapterTable::install_if`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::adapters::store::now_secs;
use crate::adapters::{AdapterTable, Source};
use crate::format::fsio::{remove_if_present, sync_dir, write_atomic};
use crate::format::LoraAdapter;
use crate::generator::decoder::Condition;
use guard::{Example, Verdict};

pub mod guard;

/// Turns a batch of a task's prompts into an adapter. The DnD generator implements it.
pub trait AdapterGenerator: Send + Sync {
    /// Prompts one generation wants (the decoder's N).
    fn batch_size(&self) -> usize;
    fn generate(&self, prompts: &[String]) -> Result<LoraAdapter>;

    /// [`AdapterGenerator::generate`] with the time of each named stage, for the admin API
    /// and `bench time-to-adapter`; none by default.
    fn generate_timed(&self, prompts: &[String]) -> Result<(LoraAdapter, Vec<(String, Duration)>)> {
        Ok((self.generate(prompts)?, Vec::new()))
    }

    /// Work on `prompt` ahead of a generation that may use it (the DnD generator encodes
    /// it); nothing by default. Called off the request path, one prompt at a time.
    fn prepare(&self, _prompt: &str) {}

    /// What the generator reads of a task: its prompts, or its labelled examples.
    fn condition(&self) -> Condition {
        Condition::Prompts
    }
}

impl AdapterGenerator for crate::generator::Generator {
    fn batch_size(&self) -> usize {
        self.config().prompts
    }

    fn generate(&self, prompts: &[String]) -> Result<LoraAdapter> {
        Ok(self.generate_timed(prompts)?.0)
    }

    fn condition(&self) -> Condition {
        self.config().condition
    }

    fn prepare(&self, prompt: &str) {
        if let Err(e) = crate::generator::Generator::prepare(self, prompt) {
            tracing::debug!(error = %e, "encoding a prompt ahead failed");
        }
    }

    fn generate_timed(&self, prompts: &[String]) -> Result<(LoraAdapter, Vec<(String, Duration)>)> {
        let g = crate::generator::Generator::generate(self, prompts)?;
        let t = &g.timings;
        tracing::info!(
            notes = ?g.notes,
            encode_ms = t.encode.as_millis() as u64,
            decode_ms = t.decode.as_millis() as u64,
            detokenise_ms = t.detokenise.as_millis() as u64,
            "DnD adapter generated"
        );
        let stages = vec![
            ("encode".to_string(), t.encode),
            ("decode".to_string(), t.decode),
            ("detokenise".to_string(), t.detokenise),
        ];
        Ok((g.adapter, stages))
    }
}

/// Limits and switches of automatic specialisation (the `[plugin]` keys).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prompts that trigger a generation.
    pub k: usize,
    pub max_prompt_bytes: usize,
    pub max_tracked_tasks: usize,
    pub concurrency: usize,
    pub queue: usize,
    pub retry_base: Duration,
    pub max_retries: u32,
    /// Regenerate after this many more prompts of a task that has an adapter.
    pub regenerate_after: Option<usize>,
    /// Tokens per answer in the no-harm check ([`guard`]).
    pub guard_max_tokens: usize,
    pub max_generations_per_hour: usize,
    /// Stored versions kept per task (older ones are deleted).
    pub max_versions: usize,
    /// Prepare each kept prompt as it arrives ([`AdapterGenerator::prepare`]).
    pub prepare_on_arrival: bool,
}

/// What became of a generated adapter.
enum Outcome {
    /// Installed and routed, with the time of each stage.
    Installed(Vec<(String, Duration)>),
    /// It lost the no-harm check.
    Rejected(Verdict),
    /// Not installed: the task was forgotten meanwhile.
    Dropped,
}

/// Where a task's generation stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GenState {
    Collecting,
    Queued,
    Generating,
    Done,
    /// The last generated adapter lost to the base model on the task's labelled examples
    /// ([`guard`]): it was dropped, and the model that answered the task before goes on.
    Rejected(Verdict),
    Failed {
        error: String,
        attempts: u32,
        /// Unix seconds of the next automatic retry, if any is left.
        retry_at: Option<u64>,
    },
}

#[derive(Debug)]
struct TaskBuf {
    prompts: VecDeque<String>,
    since_generation: usize,
    last_seen: Instant,
    state: GenState,
    /// Generations started since the last success (or manual regeneration).
    attempts: u32,
    /// Unix seconds when recent generations started (rate cap).
    recent: VecDeque<u64>,
    /// Stage timings of the last successful generation, in milliseconds.
    last_timings: Vec<(String, f64)>,
    /// The generation job running or last run for this buffer (0: none).
    job: u64,
    /// The task has an adapter (as of its last prompt or generation): never dropped to make
    /// room for another task.
    has_adapter: bool,
    /// The no-harm check of the last generation, when the task had examples.
    last_check: Option<Verdict>,
}

impl TaskBuf {
    fn new() -> Self {
        Self {
            prompts: VecDeque::new(),
            since_generation: 0,
            last_seen: Instant::now(),
            state: GenState::Collecting,
            attempts: 0,
            recent: VecDeque::new(),
            last_timings: Vec::new(),
            job: 0,
            has_adapter: false,
            last_check: None,
        }
    }

    fn busy(&self) -> bool {
        matches!(self.state, GenState::Queued | GenState::Generating)
    }

    fn record(&self) -> GenRecord {
        GenRecord {
            attempts: self.attempts,
            recent: self.recent.iter().copied().collect(),
            error: match &self.state {
                GenState::Failed { error, .. } => Some(error.clone()),
                _ => None,
            },
            rejected: match self.state {
                GenState::Rejected(v) => Some(v),
                _ => None,
            },
        }
    }
}

/// A task's generation history as `STORE/{task}/generation.json` keeps it across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct GenRecord {
    /// Generations started since the last success: one that is still counted at the next
    /// start failed or was cut short by the end of the process.
    attempts: u32,
    /// Unix seconds when recent generations started.
    #[serde(default)]
    recent: Vec<u64>,
    /// Why the last one failed; none when it was cut short.
    #[serde(default)]
    error: Option<String>,
    /// The check that rejected the last generated adapter, if it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejected: Option<Verdict>,
}

impl GenRecord {
    fn read(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable generation record");
                None
            }
        }
    }
}

/// What the admin API shows of a task's collection and generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenInfo {
    #[serde(flatten)]
    pub state: GenState,
    pub prompts: usize,
    pub prompts_needed: usize,
    pub since_generation: usize,
    /// Milliseconds per stage of the last generation (generator stages, then check when
    /// the task has examples, write, load_merge, register, and total); empty before the
    /// first one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_timings_ms: Vec<(String, f64)>,
    /// The no-harm check of the last generation ([`guard`]), when the task had examples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Verdict>,
}

pub struct Specialiser {
    generator: Arc<dyn AdapterGenerator>,
    table: Arc<AdapterTable>,
    metrics: Arc<Metrics>,
    settings: Settings,
    tasks: Mutex<HashMap<String, TaskBuf>>,
    dropped: Mutex<VecDeque<String>>,
    jobs: mpsc::Sender<String>,
    /// Ids of generation jobs, so that a job can tell whether its task is still its own.
    last_job: AtomicU64,
    /// Tasks whose prompt file is to be rewritten (or removed, when no longer tracked).
    unwritten: Mutex<HashSet<String>>,
    /// Tasks with examples stored: the ones a generator that reads examples can generate.
    with_examples: Mutex<HashSet<String>>,
    /// Wakes the prompt writer; one wake-up pending covers every task marked meanwhile.
    wake_writer: mpsc::Sender<()>,
    /// Prompt files written or removed so far.
    prompt_writes: AtomicU64,
    /// Prompts for the worker that prepares them ahead (full: a prompt is not prepared).
    to_prepare: mpsc::Sender<String>,
}

/// Prompts waiting to be prepared at most; past it new ones are left to their generation.
const PREPARE_QUEUE: usize = 64;
/// `Retry-After` of a 503 `too_many_tasks`, in seconds.
const TOO_MANY_TASKS_RETRY_S: u64 = 5;

const PROMPTS_FILE: &str = "prompts.jsonl";
const EXAMPLES_FILE: &str = "examples.json";
/// Where probe adapters of the no-harm check are written, under the store root (a dot
/// folder: not a task).
const PROBE_DIR: &str = ".probes";
const GENERATION_FILE: &str = "generation.json";
const DROPPED_SHOWN: usize = 100;
/// Tasks waiting for the prompt writer at most (or twice `max_tracked_tasks`, if more)
/// before new tasks are refused: a stalled disk cannot grow the backlog without bound.
const WRITE_BACKLOG_MIN: usize = 1024;

impl Specialiser {
    /// Starts the workers and the prompt writer, restores the buffers from the store and
    /// requeues the tasks that were due.
    pub fn start(
        generator: Arc<dyn AdapterGenerator>,
        table: Arc<AdapterTable>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Arc<Self> {
        let (jobs, rx) = mpsc::channel(settings.queue.max(1));
        let (wake_writer, wake_rx) = mpsc::channel(1);
        let (to_prepare, mut prepare_rx) = mpsc::channel::<String>(PREPARE_QUEUE);
        let this = Arc::new(Self {
            generator,
            table,
            metrics,
            settings,
            tasks: Mutex::new(HashMap::new()),
            dropped: Mutex::new(VecDeque::new()),
            jobs,
            last_job: AtomicU64::new(0),
            unwritten: Mutex::new(HashSet::new()),
            with_examples: Mutex::new(HashSet::new()),
            wake_writer,
            prompt_writes: AtomicU64::new(0),
            to_prepare,
        });
        // One prompt at a time on a blocking thread: at most one core goes to it.
        let generator = this.generator.clone();
        tokio::spawn(async move {
            while let Some(prompt) = prepare_rx.recv().await {
                let g = generator.clone();
                let _ = tokio::task::spawn_blocking(move || g.prepare(&prompt)).await;
            }
        });
        // Probe adapters of checks that a previous process did not finish.
        let _ = std::fs::remove_dir_all(this.table.store_root().join(PROBE_DIR));
        let retries = this.restore();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..this.settings.concurrency.max(1) {
            let (me, rx) = (Arc::downgrade(&this), rx.clone());
            tokio::spawn(async move {
                loop {
                    let Some(task) = rx.lock().await.recv().await else {
                        return;
                    };
                    let Some(me) = me.upgrade() else { return };
                    me.metrics.queue_depth.dec();
                    me.run_job(&task).await;
                }
            });
        }
        tokio::spawn(write_prompts(Arc::downgrade(&this), wake_rx));
        // Tasks whose last generation failed (or was cut short) wait for their retry, if
        // any is left; the others are requeued when due.
        let due: Vec<String> = {
            let tasks = this.lock();
            tasks
                .iter()
                .filter(|(_, b)| !matches!(b.state, GenState::Failed { .. }))
                .map(|(t, _)| t.clone())
                .collect()
        };
        for task in due {
            this.maybe_enqueue(&task);
        }
        for (task, delay) in retries {
            this.retry_later(&task, delay);
        }
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskBuf>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken after [`Specialiser::lock`] when both are held.
    fn examples_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.with_examples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the generator has what it reads of `task`: its prompts always, its examples
    /// only once they are given.
    fn has_input(&self, task: &str) -> bool {
        self.generator.condition() == Condition::Prompts || self.examples_set().contains(task)
    }

    /// `file` in the task's store folder.
    fn task_file(&self, task: &str, file: &str) -> PathBuf {
        self.table.store_root().join(task).join(file)
    }

    fn prompts_path(&self, task: &str) -> PathBuf {
        self.task_file(task, PROMPTS_FILE)
    }

    /// Whether the table has an adapter stored for `task`.
    fn has_adapter(&self, task: &str) -> bool {
        self.table.info(task).is_some_and(|i| i.hash.is_some())
    }

    /// Restores the buffers and generation histories from the store; returns the retries
    /// of failed generations to schedule.
    fn restore(&self) -> Vec<(String, Duration)> {
        let mut retries = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.table.store_root()) else {
            return retries;
        };
        let mut tasks = self.lock();
        for entry in dir.flatten() {
            let task = entry.file_name().to_string_lossy().to_string();
            if task.starts_with('.') {
                continue;
            }
            if entry.path().join(EXAMPLES_FILE).is_file() {
                self.examples_set().insert(task.clone());
            }
            let path = entry.path().join(PROMPTS_FILE);
            let Ok(text) = std::fs::read_to_string(&path) else {
                // An empty folder: what earlier versions left of a dropped task.
                let _ = std::fs::remove_dir(entry.path());
                continue;
            };
            let mut buf = TaskBuf::new();
            for line in text.lines() {
                if let Ok(Value::String(p)) = serde_json::from_str::<Value>(line) {
                    buf.prompts.push_back(p);
                }
            }
            keep_last(&mut buf.prompts, self.settings.k);
            if let Some(record) = GenRecord::read(&entry.path().join(GENERATION_FILE)) {
                if let Some(delay) = self.restore_history(&task, &mut buf, record) {
                    retries.push((task.clone(), delay));
                }
            }
            buf.has_adapter = self.has_adapter(&task);
            // Last seen when its prompts were last written: the oldest are dropped first.
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if let Some(seen) = age.and_then(|a| Instant::now().checked_sub(a)) {
                buf.last_seen = seen;
            }
            tasks.insert(task, buf);
        }
        // Started with a lower limit than the store was filled with.
        while tasks.len() > self.settings.max_tracked_tasks && self.drop_oldest_idle(&mut tasks) {}
        retries.retain(|(t, _)| tasks.contains_key(t));
        retries
    }

    /// Takes up a task's generation history: attempts still counted did not succeed, so
    /// the task is failed, with a retry after the backoff (returned) while retries are left.
    fn restore_history(
        &self,
        task: &str,
        buf: &mut TaskBuf,
        record: GenRecord,
    ) -> Option<Duration> {
        let hour_ago = now_secs().saturating_sub(3600);
        buf.recent = record
            .recent
            .into_iter()
            .filter(|&t| t > hour_ago)
            .collect();
        buf.attempts = record.attempts;
        if record.attempts == 0 {
            if let Some(v) = record.rejected {
                buf.state = GenState::Rejected(v);
                buf.last_check = Some(v);
            }
            return None;
        }
        let error = record
            .error
            .unwrap_or_else(|| "the server stopped during the generation".into());
        let retry = self.retry_delay(record.attempts);
        tracing::warn!(
            task,
            attempts = record.attempts,
            retry_in_s = retry.map(|d| d.as_secs()),
            error,
            "the task's last generation did not succeed"
        );
        self.table
            .mark_failed(task, format!("generation failed: {error}"));
        buf.state = GenState::Failed {
            error,
            attempts: record.attempts,
            retry_at: retry.map(|d| now_secs() + d.as_secs()),
        };
        retry
    }

    /// Records a request's prompt for `task` and starts a generation when one is due. A
    /// task not tracked yet is refused (503) when there is no room for it (see
    /// [`Specialiser::admit`]), unless it has an adapter: that one is served, without
    /// keeping its prompt.
    pub fn observe(&self, task: &str, prompt: Option<String>) -> Result<(), ApiError> {
        let Some(mut prompt) = prompt.filter(|p| !p.trim().is_empty()) else {
            return Ok(());
        };
        truncate_utf8(&mut prompt, self.settings.max_prompt_bytes);
        let has_adapter = self.has_adapter(task);
        {
            let mut tasks = self.lock();
            if !tasks.contains_key(task) {
                if let Err(e) = self.admit(&mut tasks) {
                    if has_adapter {
                        return Ok(());
                    }
                    self.metrics.refused_tasks.inc();
                    tracing::debug!(task, reason = e.message, "new task refused");
                    return Err(e);
                }
            }
            if self.settings.prepare_on_arrival && self.generator.condition() == Condition::Prompts
            {
                let _ = self.to_prepare.try_send(prompt.clone());
            }
            let buf = tasks.entry(task.to_string()).or_insert_with(TaskBuf::new);
            buf.prompts.push_back(prompt);
            keep_last(&mut buf.prompts, self.settings.k);
            buf.since_generation += 1;
            buf.last_seen = Instant::now();
            buf.has_adapter = has_adapter;
        }
        self.persist(task);
        self.maybe_enqueue(task);
        Ok(())
    }

    /// Makes room for one more tracked task: at `max_tracked_tasks`, the collecting-only task
    /// seen longest ago is dropped. Fails (503) when none can be, or when the prompt writer
    /// is far behind (see [`WRITE_BACKLOG_MIN`]).
    fn admit(&self, tasks: &mut HashMap<String, TaskBuf>) -> Result<(), ApiError> {
        let max = self.settings.max_tracked_tasks;
        // Room comes back when a tracked task is dropped or finishes its generation:
        // seconds, so clients retry soon rather than at once.
        let unavailable = |why: String| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)
                .with_code("too_many_tasks")
                .with_retry_after(TOO_MANY_TASKS_RETRY_S)
        };
        let backlog = self.unwritten_len();
        if backlog >= max.saturating_mul(2).max(WRITE_BACKLOG_MIN) {
            return Err(unavailable(format!(
                "the server cannot take a new task now: {backlog} prompt buffers wait to be written; retry later"
            )));
        }
        if tasks.len() < max || self.drop_oldest_idle(tasks) {
            return Ok(());
        }
        Err(unavailable(format!(
            "the server tracks its maximum of {max} tasks (plugin.max_tracked_tasks), all with an adapter or a generation under way; retry later"
        )))
    }

    /// Drops the collecting-only task seen longest ago: never one that is queued or
    /// generating, and never one with an adapter (a flood of new ids must not push out real
    /// tenants). Returns whether one was dropped.
    fn drop_oldest_idle(&self, tasks: &mut HashMap<String, TaskBuf>) -> bool {
        loop {
            let victim = tasks
                .iter()
                .filter(|(_, b)| !b.busy() && !b.has_adapter)
                .min_by_key(|(_, b)| b.last_seen)
                .map(|(t, _)| t.clone());
            let Some(v) = victim else {
                return false;
            };
            // The flag is as of the task's last prompt: an upload since then counts too.
            if self.has_adapter(&v) {
                if let Some(b) = tasks.get_mut(&v) {
                    b.has_adapter = true;
                }
                continue;
            }
            tasks.remove(&v);
            tracing::info!(
                task = v,
                "dropped collecting task: tracked-task limit reached"
            );
            self.metrics.dropped_tasks.inc();
            self.persist(&v);
            let mut d = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
            d.push_back(v);
            keep_last(&mut d, DROPPED_SHOWN);
            return true;
        }
    }

    /// Marks `task`'s prompt file for the writer: rewritten from its buffer, or removed when
    /// the task is no longer tracked. However many prompts come before the writer gets to
    /// it, the file is written once.
    fn persist(&self, task: &str) {
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.to_string());
        // Full: a wake-up is pending, and the writer takes this task with the others.
        let _ = self.wake_writer.try_send(());
    }

    fn unwritten_len(&self) -> usize {
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn maybe_enqueue(&self, task: &str) {
        let info = self.table.info(task);
        let has_adapter = info.as_ref().is_some_and(|i| i.hash.is_some());
        // Automatic refreshes replace generated adapters only, never one an operator loaded.
        let generated = info.is_some_and(|i| i.source == Some(Source::Generated));
        {
            let mut tasks = self.lock();
            let Some(buf) = tasks.get_mut(task) else {
                return;
            };
            if buf.busy() {
                return;
            }
            if let GenState::Failed { retry_at, .. } = &buf.state {
                if retry_at.is_none_or(|t| t > now_secs()) {
                    return;
                }
            }
            let regenerate = self
                .settings
                .regenerate_after
                .is_some_and(|m| buf.since_generation >= m && !buf.prompts.is_empty());
            // A rejected adapter is not generated again from the same prompts, only after as
            // many new ones as a regeneration takes (or when an operator asks).
            let due = if has_adapter {
                generated && regenerate
            } else if matches!(buf.state, GenState::Rejected(_)) {
                regenerate
            } else {
                buf.prompts.len() >= self.settings.k
            };
            if !due || !self.has_input(task) {
                return;
            }
            let hour_ago = now_secs().saturating_sub(3600);
            buf.recent.retain(|&t| t > hour_ago);
            if buf.recent.len() >= self.settings.max_generations_per_hour {
                tracing::debug!(task, "generation deferred: hourly cap reached");
                return;
            }
            if let Err(e) = self.table.check_store_room(task, None, 0) {
                tracing::debug!(task, error = %e, "generation deferred: the adapter store is full");
                return;
            }
            buf.state = GenState::Queued;
        }
        self.send_job(task);
    }

    fn send_job(&self, task: &str) {
        match self.jobs.try_send(task.to_string()) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                tracing::info!(task, "generation queued");
            }
            Err(_) => {
                // Queue full: stay collecting; the task's next request tries again.
                if let Some(b) = self.lock().get_mut(task) {
                    b.state = GenState::Collecting;
                }
                tracing::warn!(task, "generation queue full");
            }
        }
    }

    /// Regenerates now, from `prompts` if given (they replace the buffer) or the buffer.
    pub fn regenerate(
        &self,
        task: &str,
        prompts: Option<Vec<String>>,
    ) -> Result<GenInfo, ApiError> {
        self.table.check_store_room(task, None, 0).map_err(|e| {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, format!("{e:#}"))
                .with_code("store_full")
        })?;
        let has_adapter = self.has_adapter(task);
        // The given prompts as the buffer would keep them; nothing changes until every
        // check has passed (a refused call must not empty a task's buffer or track a task).
        let given = prompts.map(|ps| {
            let mut kept: VecDeque<String> = ps
                .into_iter()
                .filter(|p| !p.trim().is_empty())
                .map(|mut p| {
                    truncate_utf8(&mut p, self.settings.max_prompt_bytes);
                    p
                })
                .collect();
            keep_last(&mut kept, self.settings.k);
            kept
        });
        {
            let mut tasks = self.lock();
            let current = tasks.get(task);
            if let Some(buf) = current.filter(|b| b.busy()) {
                return Err(ApiError::conflict(format!(
                    "a generation for task {task} is already {}",
                    state_name(&buf.state)
                )));
            }
            let no_prompts = match &given {
                Some(kept) => kept.is_empty(),
                None => current.is_none_or(|b| b.prompts.is_empty()),
            };
            if no_prompts {
                return Err(ApiError::conflict(format!(
                    "task {task} has no prompts: send some in the body as {{\"prompts\": [...]}}"
                )));
            }
            if !tasks.contains_key(task) {
                self.admit(&mut tasks)?;
            }
            let buf = tasks.entry(task.to_string()).or_insert_with(TaskBuf::new);
            buf.has_adapter = has_adapter;
            if let Some(kept) = given {
                buf.prompts = kept;
            }
            buf.attempts = 0;
            buf.state = GenState::Queued;
        }
        self.persist(task);
        self.send_job(task);
        self.info(task)
            .ok_or_else(|| ApiError::conflict("task vanished"))
    }

    async fn run_job(self: &Arc<Self>, task: &str) {
        let (prompts, job, history) = {
            let mut tasks = self.lock();
            let Some(buf) = tasks.get_mut(task) else {
                return;
            };
            // Forgotten since it was queued (and maybe seen again since).
            if buf.state != GenState::Queued {
                return;
            }
            buf.state = GenState::Generating;
            buf.last_check = None;
            buf.attempts += 1;
            buf.recent.push_back(now_secs());
            buf.job = self.last_job.fetch_add(1, Ordering::Relaxed) + 1;
            let prompts: Vec<String> = buf.prompts.iter().cloned().collect();
            (prompts, buf.job, buf.record())
        };
        // On disk before the generator runs: if this generation ends the process, the next
        // start counts it as a failed attempt instead of starting it again and again.
        if let Err(e) = self.save_history(task, history).await {
            let error = format!("recording the generation attempt: {e:#}");
            self.failed(task, job, error).await;
            return;
        }
        let inputs = match self.inputs(task, prompts).await {
            Ok(inputs) => inputs,
            Err(e) => {
                self.failed(task, job, format!("{e:#}")).await;
                return;
            }
        };
        tracing::info!(task, inputs = inputs.len(), "generating adapter");
        let t = Instant::now();
        let generator = self.generator.clone();
        let result = tokio::task::spawn_blocking(move || generator.generate_timed(&inputs))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        self.metrics
            .generation_seconds
            .observe(t.elapsed().as_secs_f64());
        let result = match result {
            Ok((adapter, stages)) => self.check_and_install(task, job, &adapter, stages, t).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(Outcome::Installed(stages)) => self.succeeded(task, job, stages, t).await,
            Ok(Outcome::Rejected(verdict)) => self.rejected(task, job, verdict).await,
            Err(e) if self.is_current(task, job) => self.failed(task, job, format!("{e:#}")).await,
            // The table did not install it, as the job is no longer the task's.
            _ => tracing::info!(
                task,
                "the task was forgotten during its generation: the result is dropped"
            ),
        }
    }

    /// What the generator reads of `task`: its kept `prompts`, or its examples, each read
    /// as its prompt and answer ([`Condition::text`]).
    async fn inputs(&self, task: &str, prompts: Vec<String>) -> Result<Vec<String>> {
        let condition = self.generator.condition();
        if condition == Condition::Prompts {
            return Ok(prompts);
        }
        let examples = self.examples(task).await?;
        anyhow::ensure!(
            !examples.is_empty(),
            "the generator reads labelled examples and the task has none (they were deleted)"
        );
        Ok(examples
            .iter()
            .map(|e| condition.text(&e.prompt, &e.answer))
            .collect())
    }

    /// The no-harm check of a generated adapter (when the task has examples), then its
    /// installation if it passed; `stages` gains the time of each.
    async fn check_and_install(
        self: &Arc<Self>,
        task: &str,
        job: u64,
        adapter: &LoraAdapter,
        mut stages: Vec<(String, Duration)>,
        started: Instant,
    ) -> Result<Outcome> {
        if let Some((verdict, took)) = self.check(task, adapter).await? {
            if !verdict.accepted {
                return Ok(Outcome::Rejected(verdict));
            }
            stages.push(("check".to_string(), took));
            if let Some(b) = self.lock().get_mut(task).filter(|b| b.job == job) {
                b.last_check = Some(verdict);
            }
        }
        let t = Instant::now();
        let (me, task_s) = (self.clone(), task.to_string());
        let installed = self
            .table
            .install_if(task, adapter, Source::Generated, move || {
                me.is_current(&task_s, job)
            })
            .await;
        self.metrics
            .registration_seconds
            .observe(t.elapsed().as_secs_f64());
        Ok(match installed? {
            Some((_, install)) => {
                stages.extend(install);
                stages.push(("total".to_string(), started.elapsed()));
                Outcome::Installed(stages)
            }
            None => Outcome::Dropped,
        })
    }

    async fn succeeded(
        self: &Arc<Self>,
        task: &str,
        job: u64,
        stages: Vec<(String, Duration)>,
        started: Instant,
    ) {
        let history = {
            let mut tasks = self.lock();
            let Some(b) = tasks.get_mut(task).filter(|b| b.job == job) else {
                return;
            };
            b.last_timings = stages
                .into_iter()
                .map(|(k, d)| (k, d.as_secs_f64() * 1e3))
                .collect();
            b.state = GenState::Done;
            b.attempts = 0;
            b.since_generation = 0;
            b.has_adapter = true;
            b.record()
        };
        if let Err(e) = self.save_history(task, history).await {
            tracing::warn!(task, error = %e, "recording a generation's success failed; a restart counts it as failed");
        }
        if let Err(e) = self
            .table
            .prune_versions(task, self.settings.max_versions)
            .await
        {
            tracing::warn!(task, error = %e, "pruning old versions failed");
        }
        tracing::info!(
            task,
            secs = started.elapsed().as_secs_f64(),
            "adapter generated and routed"
        );
    }

    /// The no-harm check of a new adapter of `task` against the base model on the task's
    /// examples, and how long it took; `None` when the task has none.
    async fn check(
        &self,
        task: &str,
        adapter: &LoraAdapter,
    ) -> Result<Option<(Verdict, Duration)>> {
        let examples = self.examples(task).await?;
        if examples.is_empty() {
            return Ok(None);
        }
        let t = Instant::now();
        let current = self.table.current_model(task).await.unwrap_or_else(|e| {
            tracing::warn!(task, error = %e, "the task's adapter could not be loaded: the no-harm check compares with the base model only");
            None
        });
        let probe_id = format!("dnd-probe:{task}");
        let probe_dir = self.table.store_root().join(PROBE_DIR).join(task);
        let verdict = guard::check(
            self.table.engine().as_ref(),
            adapter,
            current.as_ref().map(|m| m.engine_id.as_str()),
            &examples,
            &probe_id,
            &probe_dir,
            self.settings.guard_max_tokens,
        )
        .await?;
        let outcome = if verdict.accepted {
            "accepted"
        } else {
            "rejected"
        };
        self.metrics.checks.with_label_values(&[outcome]).inc();
        tracing::info!(
            task,
            examples = verdict.examples,
            base_hits = verdict.base_hits,
            current_hits = verdict.current_hits,
            adapter_hits = verdict.adapter_hits,
            outcome,
            "no-harm check"
        );
        Ok(Some((verdict, t.elapsed())))
    }

    /// A new adapter of `task` lost the no-harm check: nothing is installed.
    async fn rejected(self: &Arc<Self>, task: &str, job: u64, verdict: Verdict) {
        let history = {
            let mut tasks = self.lock();
            let Some(b) = tasks.get_mut(task).filter(|b| b.job == job) else {
                return;
            };
            b.state = GenState::Rejected(verdict);
            b.last_check = Some(verdict);
            b.attempts = 0;
            b.since_generation = 0;
            b.record()
        };
        tracing::warn!(
            task,
            "the generated adapter answered fewer examples than the model answering the task: not routed"
        );
        if let Err(e) = self.save_history(task, history).await {
            tracing::warn!(task, error = %e, "recording a rejected generation failed");
        }
    }

    /// The task's labelled examples (none when it has no file).
    pub async fn examples(&self, task: &str) -> Result<Vec<Example>> {
        let path = self.task_file(task, EXAMPLES_FILE);
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(anyhow::Error::from(e).context(format!("reading {}", path.display()))),
        })
        .await?
    }

    /// Replaces the task's labelled examples (checked first: 400 with the reason, nothing
    /// changed), or removes them when `examples` is `None`.
    pub async fn set_examples(
        &self,
        task: &str,
        examples: Option<Vec<Example>>,
    ) -> Result<(), ApiError> {
        if let Some(ex) = &examples {
            guard::validate(ex, self.settings.max_prompt_bytes)
                .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        }
        let path = self.task_file(task, EXAMPLES_FILE);
        let given = examples.is_some();
        tokio::task::spawn_blocking(move || match examples {
            Some(ex) => write_atomic(&path, &serde_json::to_vec(&ex)?),
            None => {
                remove_if_present(&path)?;
                if let Some(dir) = path.parent() {
                    sync_dir(dir);
                }
                Ok(())
            }
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .map_err(|e| ApiError::internal(format!("storing the examples: {e:#}")))?;
        match given {
            true => self.examples_set().insert(task.to_string()),
            false => self.examples_set().remove(task),
        };
        // A task that waited for its examples is due now.
        self.maybe_enqueue(task);
        Ok(())
    }

    /// A generation of `task` (its job `job`, counted as an attempt when it started) failed.
    async fn failed(self: &Arc<Self>, task: &str, job: u64, error: String) {
        let (retry, history) = {
            let mut tasks = self.lock();
            let Some(b) = tasks.get_mut(task).filter(|b| b.job == job) else {
                return;
            };
            let retry = self.retry_delay(b.attempts);
            b.state = GenState::Failed {
                error: error.clone(),
                attempts: b.attempts,
                retry_at: retry.map(|d| now_secs() + d.as_secs()),
            };
            (retry, b.record())
        };
        self.metrics
            .failures
            .with_label_values(&["generation"])
            .inc();
        tracing::warn!(
            task,
            error,
            "generation failed; the base model keeps answering"
        );
        self.table
            .mark_failed(task, format!("generation failed: {error}"));
        if let Err(e) = self.save_history(task, history).await {
            tracing::warn!(task, error = %e, "recording a generation's failure failed");
        }
        if let Some(delay) = retry {
            self.retry_later(task, delay);
        }
    }

    /// The wait before retrying after `attempts` failed generations in a row; `None` when
    /// no retry is left.
    fn retry_delay(&self, attempts: u32) -> Option<Duration> {
        (attempts <= self.settings.max_retries).then(|| {
            self.settings
                .retry_base
                .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1)))
        })
    }

    fn retry_later(self: &Arc<Self>, task: &str, delay: Duration) {
        let me = Arc::downgrade(self);
        let task = task.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(me) = me.upgrade() {
                me.maybe_enqueue(&task);
            }
        });
    }

    /// Forgets a task's prompts and generation history (with `DELETE ...?forget=true`);
    /// a generation of the task in progress is dropped when it ends. Returns whether the
    /// task was tracked.
    pub fn forget(&self, task: &str) -> bool {
        let tracked = self.lock().remove(task).is_some();
        self.persist(task);
        tracked
    }

    /// Whether `job` is still the generation of `task`'s buffer (not forgotten since).
    fn is_current(&self, task: &str, job: u64) -> bool {
        self.lock().get(task).is_some_and(|b| b.job == job)
    }

    /// Writes a task's generation history (atomically, durably) and waits for it.
    async fn save_history(&self, task: &str, record: GenRecord) -> Result<()> {
        let path = self.task_file(task, GENERATION_FILE);
        tokio::task::spawn_blocking(move || write_atomic(&path, &serde_json::to_vec(&record)?))
            .await?
    }

    pub fn info(&self, task: &str) -> Option<GenInfo> {
        let tasks = self.lock();
        tasks.get(task).map(|b| self.info_of(b))
    }

    fn info_of(&self, b: &TaskBuf) -> GenInfo {
        GenInfo {
            state: b.state.clone(),
            prompts: b.prompts.len(),
            prompts_needed: self.settings.k,
            since_generation: b.since_generation,
            last_timings_ms: b.last_timings.clone(),
            last_check: b.last_check,
        }
    }

    /// Every tracked task, and the most recently dropped ones.
    pub fn list(&self) -> (Vec<(String, GenInfo)>, Vec<String>) {
        let tasks = self.lock();
        let mut v: Vec<_> = tasks
            .iter()
            .map(|(t, b)| (t.clone(), self.info_of(b)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        (v, dropped.iter().cloned().collect())
    }
}

fn state_name(s: &GenState) -> &'static str {
    match s {
        GenState::Collecting => "collecting",
        GenState::Queued => "queued",
        GenState::Generating => "generating",
        GenState::Done => "done",
        GenState::Rejected(_) => "rejected",
        GenState::Failed { .. } => "failed",
    }
}

/// Writes the prompt files of the tasks marked since its last round (whole file,
/// atomically), each once however many prompts it got meanwhile, from the buffer as it is
/// then; removes those of tasks no longer tracked.
async fn write_prompts(me: std::sync::Weak<Specialiser>, mut wake: mpsc::Receiver<()>) {
    while wake.recv().await.is_some() {
        let Some(me) = me.upgrade() else { return };
        let batch = std::mem::take(&mut *me.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        for task in batch {
            let lines = me.lock().get(&task).map(|b| {
                b.prompts
                    .iter()
                    .map(|p| serde_json::to_string(p).unwrap_or_default() + "\n")
                    .collect::<String>()
            });
            let path = me.prompts_path(&task);
            let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                match lines {
                    None => remove_prompts(&path),
                    Some(text) => {
                        write_atomic(&path, text.as_bytes()).map_err(std::io::Error::other)
                    }
                }
            })
            .await;
            me.prompt_writes.fetch_add(1, Ordering::Relaxed);
            if let Ok(Err(e)) | Err(e) = r.map_err(std::io::Error::other) {
                tracing::warn!(task, error = %e, "writing prompt buffer failed");
            }
        }
    }
}

/// Removes a dropped task's prompt file, and its folder when nothing else is in it (no
/// adapter was ever stored for the task: an id that was only seen leaves nothing behind).
/// Fsynced, so that a dropped buffer does not come back after a power cut.
fn remove_prompts(path: &Path) -> std::io::Result<()> {
    // The generation history goes with the buffer.
    for file in [PROMPTS_FILE, GENERATION_FILE] {
        remove_if_present(&path.with_file_name(file))?;
    }
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    // Fails, and leaves the folder, when it holds an adapter.
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            if let Some(root) = dir.parent() {
                sync_dir(root);
            }
        }
        Err(_) => sync_dir(dir),
    }
    Ok(())
}

/// The prompt text of an OpenAI request: the user turns of a chat, or the completion prompt.
pub fn prompt_text(body: &serde_json::Map<String, Value>) -> Option<String> {
    let text_of = |c: &Value| -> String {
        match c {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    };
    if let Some(Value::Array(msgs)) = body.get("messages") {
        let users: Vec<String> = msgs
            .iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .filter_map(|m| m.get("content").map(text_of))
            .filter(|s| !s.is_empty())
            .collect();
        return (!users.is_empty()).then(|| users.join("\n"));
    }
    match body.get("prompt") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Keeps the newest `n` items of a queue held oldest first. Prompt buffers keep their last
/// K so that a generation sees the task as it is asked now; the dropped-task list keeps
/// what the admin API shows.
fn keep_last<T>(queue: &mut VecDeque<T>, n: usize) {
    let excess = queue.len().saturating_sub(n);
    queue.drain(..excess);
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests;
