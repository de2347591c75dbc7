//! The adapter table: per task, what serves it (nothing, an adapter loading, resident,
//! stored but not resident, or failed) and the LRU of resident adapter models.
//!
//! Requests only take the table's short lock (no I/O, no await under it) to pick a route;
//! loading, registering and removing engine models run in background tasks, one operation
//! at a time per task. A request routed to an adapter holds an `Arc` of that version, so
//! replacing or evicting it only retires the engine model once those requests are done (or
//! at the retire ceiling, logged). Forgetting a task takes it out of the store before the
//! table, and a generation that ends after a forget is not installed.
//!
//! Memory admission: the limits (`max_resident`, `max_resident_bytes`) bound every engine
//! model an adapter has, resident, loading, or retired and not yet removed. A load starts
//! only when one more fits; the others wait (at most `load_queue`, then their task stays
//! with the base model until its next request), and while they wait the least recently used
//! residents are evicted until every waiting load will fit once the retired ones are gone.
//! So many requests for evicted adapters at once start as many loads as fit, not one each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use dashmap::DashMap;
use lru::LruCache;
use serde::Serialize;

use super::store::{now_secs, Quarantined, Source, Store, TaskRecord};
use crate::engine::AdapterEngine;
use crate::format::{LlamaDims, LoraAdapter};

/// Engine model ids of adapters start with this (`dnd:TASK:HASH:SERIAL`), so that the
/// server can tell them from the base model and hide them from clients.
pub const ADAPTER_MODEL_PREFIX: &str = "dnd:";

/// Limits on resident adapter models.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_resident: usize,
    pub max_resident_bytes: u64,
    /// Memory one resident adapter is budgeted (set by the server from the adapter mode).
    pub bytes_per_model: u64,
    /// How long a replaced or evicted engine model waits for the requests still using it
    /// before it is removed anyway (logged).
    pub retire_ceiling: Duration,
    /// How long a load waits for room under the limits before it is given up: a request's
    /// task stays with the base model until its next request, an upload or pin fails.
    pub load_queue: Duration,
}

/// Limits of the store over all tasks ([`AdapterTable::set_store_limits`]; unbounded until
/// set). A version that would pass them is refused with [`StoreFull`] before anything is
/// written.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Tasks with a stored adapter at most: a task without one gets none past it.
    pub max_tasks: usize,
    /// Bytes of stored adapter weights (every version of every task) at most.
    pub max_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_tasks: usize::MAX,
            max_bytes: u64::MAX,
        }
    }
}

/// An adapter version refused because the store is full ([`StoreLimits`]); nothing was
/// written. The admin API answers it with 507, a generation stays collecting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreFull(pub String);

/// State of a task's adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "error", rename_all = "snake_case")]
pub enum State {
    None,
    Loading,
    Resident,
    Stored,
    Failed(String),
}

/// An adapter version registered in the engine. In-flight requests hold clones.
#[derive(Debug)]
pub struct ResidentModel {
    pub task: String,
    pub hash: String,
    pub engine_id: String,
    /// How long the engine took to make it servable (`AdapterEngine::register`).
    pub load: Duration,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Route {
    Base,
    Adapter(Arc<ResidentModel>),
}

#[derive(Debug, Default)]
struct Entry {
    record: TaskRecord,
    state: Option<State>,
    resident: Option<Arc<ResidentModel>>,
    hits: u64,
    last_used: Option<u64>,
    /// Engine loads of the current version that failed in a row, and when a request may
    /// try again (see [`LOAD_RETRY_BASE`]).
    load_failures: u32,
    retry_load_at: Option<Instant>,
    /// Requests in [`AdapterTable::route`] waiting for this task's load: its model is not
    /// evicted to make room for another load before they have taken it.
    waiting: usize,
    /// [`Inner::installs`] at this task's last install (0: none since the start).
    installed: u64,
}

/// A stored adapter whose engine load failed (a transient fault: memory, a file briefly
/// unreadable) is tried again by the first request after this wait, doubled after every
/// failure up to [`LOAD_RETRY_MAX`]; until then its requests go to the base model.
const LOAD_RETRY_BASE: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(5)
};
const LOAD_RETRY_MAX: Duration = Duration::from_secs(600);

/// How often a request waiting for its load, and a load waiting for room, look again.
const POLL: Duration = Duration::from_millis(20);

impl Entry {
    /// Whether a request should start loading the stored current version.
    fn should_load(&self) -> bool {
        match self.state() {
            State::Stored => true,
            State::Failed(_) => self
                .retry_load_at
                .is_some_and(|t| Instant::now() >= t && self.record.current.is_some()),
            _ => false,
        }
    }

    fn state(&self) -> State {
        self.state
            .clone()
            .unwrap_or(if self.record.current.is_some() {
                State::Stored
            } else {
                State::None
            })
    }
}

/// What the admin API shows of a task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskInfo {
    pub task: String,
    #[serde(flatten)]
    pub state: State,
    pub pinned: bool,
    pub source: Option<Source>,
    pub rank: Option<usize>,
    pub target_modules: Vec<String>,
    pub hash: Option<String>,
    pub created: Option<u64>,
    pub hits: u64,
    pub last_used: Option<u64>,
    /// Stored weight bytes of the current version.
    pub bytes: u64,
    /// Memory of its engine model when resident.
    pub resident_bytes: u64,
    /// How long the engine took to make it servable, in ms (reading its matrices, or
    /// loading a merged copy; not counting the wait for room).
    pub load_ms: Option<u64>,
    pub versions: Vec<super::store::Version>,
}

struct Inner {
    tasks: HashMap<String, Entry>,
    /// Resident tasks, most recently used first.
    lru: LruCache<String, ()>,
    /// Loads admitted and not yet ended, each an engine model on its way.
    loading: usize,
    /// Loads waiting for room.
    queued: usize,
    /// Models out of the LRU (evicted, replaced) that the engine has not removed yet.
    retiring: usize,
    /// Installs since the start, of every task: tells a generation whether an adapter was
    /// installed for its task while it ran ([`AdapterTable::installs`]).
    installs: u64,
}

impl Inner {
    /// Engine models of adapters: resident, loading and retiring.
    fn models(&self) -> usize {
        self.lru.len() + self.loading + self.retiring
    }

    /// Takes `task`'s resident model out of the LRU, to be retired: it counts as retiring
    /// until [`AdapterTable::retire`] has removed it.
    fn take_resident(&mut self, task: &str) -> Option<Arc<ResidentModel>> {
        self.lru.pop(task);
        let r = self.tasks.get_mut(task)?.resident.take()?;
        self.retiring += 1;
        Some(r)
    }

    fn count(&mut self, count: Count) -> &mut usize {
        match count {
            Count::Loading => &mut self.loading,
            Count::Queued => &mut self.queued,
            Count::Retiring => &mut self.retiring,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Count {
    Loading,
    Queued,
    Retiring,
}

/// One unit of a count in [`Inner`] that an operation holds (a load admitted or waiting,
/// a model retiring): given back by [`Held::release`] under the table's lock, or when it is
/// dropped, however the operation ends, so that no room is lost for good.
struct Held<'a> {
    table: &'a AdapterTable,
    count: Count,
    held: bool,
}

impl Held<'_> {
    fn release(&mut self, inner: &mut Inner) {
        if std::mem::take(&mut self.held) {
            let n = inner.count(self.count);
            *n = n.saturating_sub(1);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.held {
            let table = self.table;
            self.release(&mut table.lock());
        }
    }
}

/// A request of [`AdapterTable::route`] counted in its task's [`Entry::waiting`], uncounted
/// when it takes the model, or when it ends otherwise (gives up, or its client goes away).
struct Waiter<'a> {
    table: &'a AdapterTable,
    task: &'a str,
    counted: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.counted {
            if let Some(e) = self.table.lock().tasks.get_mut(self.task) {
                e.waiting = e.waiting.saturating_sub(1);
            }
        }
    }
}

pub struct AdapterTable {
    engine: Arc<dyn AdapterEngine>,
    store: Store,
    dims: LlamaDims,
    limits: Limits,
    inner: Mutex<Inner>,
    /// Serialises load/replace/evict per task; requests never take it.
    ops: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    serial: AtomicU64,
    /// Resident models evicted by the LRU, for metrics.
    pub evictions: AtomicU64,
    /// Adapter models loaded into the engine (uploads, generations, and stored adapters
    /// loaded again for a request or a pin), for metrics.
    pub loads: AtomicU64,
    /// Adapter loads that failed, for metrics.
    pub load_failures: AtomicU64,
    store_limits: Mutex<StoreLimits>,
    /// Held from the store-limit check of a new version until the table counts it, so that
    /// concurrent installs cannot pass the limits together.
    store_room: tokio::sync::Mutex<()>,
}

impl AdapterTable {
    /// Builds the table from the store (every stored task is `Stored`).
    pub fn new(
        engine: Arc<dyn AdapterEngine>,
        store: Store,
        dims: LlamaDims,
        limits: Limits,
    ) -> Result<Arc<Self>> {
        let mut tasks = HashMap::new();
        for record in store.load_all()? {
            tasks.insert(
                record.task.clone(),
                Entry {
                    record,
                    ..Default::default()
                },
            );
        }
        Ok(Arc::new(Self {
            engine,
            store,
            dims,
            limits,
            inner: Mutex::new(Inner {
                tasks,
                lru: LruCache::unbounded(),
                loading: 0,
                queued: 0,
                retiring: 0,
                installs: 0,
            }),
            ops: DashMap::new(),
            serial: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
            store_limits: Mutex::new(StoreLimits::default()),
            store_room: tokio::sync::Mutex::new(()),
        }))
    }

    /// Sets the store's limits (at start).
    pub fn set_store_limits(&self, limits: StoreLimits) {
        *self.store_limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Fails with [`StoreFull`] when a new version of `bytes` bytes for `task` (0: of a size
    /// not known yet) would pass the store's limits: a task without a stored adapter while
    /// `max_tasks` tasks have one, or more than `max_bytes` of weights in all (versions
    /// pruned after the new one is stored are not counted). A version already stored
    /// (`hash`) adds nothing.
    pub fn check_store_room(&self, task: &str, hash: Option<&str>, bytes: u64) -> Result<()> {
        let limits = *self.store_limits.lock().unwrap_or_else(|p| p.into_inner());
        let inner = self.lock();
        let own = inner.tasks.get(task).map(|e| &e.record.versions);
        if let (Some(own), Some(hash)) = (own, hash) {
            if own.iter().any(|v| v.hash == hash) {
                return Ok(());
            }
        }
        if own.is_none_or(|v| v.is_empty()) {
            let stored = inner
                .tasks
                .values()
                .filter(|e| !e.record.versions.is_empty())
                .count();
            if stored >= limits.max_tasks {
                return Err(StoreFull(format!(
                    "the adapter store holds adapters of {stored} tasks, its limit (plugin.max_stored_tasks); task {task} has none and gets none until one is deleted"
                ))
                .into());
            }
        }
        let used: u64 = inner
            .tasks
            .values()
            .flat_map(|e| &e.record.versions)
            .map(|v| v.bytes)
            .sum();
        if used.saturating_add(bytes.max(1)) > limits.max_bytes {
            return Err(StoreFull(format!(
                "the adapter store holds {used} bytes of adapters, against a limit of {} bytes (plugin.max_store_mib): no room for a new version of task {task}",
                limits.max_bytes
            ))
            .into());
        }
        Ok(())
    }

    pub fn dims(&self) -> &LlamaDims {
        &self.dims
    }

    pub fn engine(&self) -> &Arc<dyn AdapterEngine> {
        &self.engine
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn op_lock(&self, task: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.ops.entry(task.to_string()).or_default().clone()
    }

    /// Loads every pinned adapter (at start).
    pub async fn load_pinned(self: &Arc<Self>) {
        let pinned: Vec<String> = {
            let inner = self.lock();
            inner
                .tasks
                .values()
                .filter(|e| e.record.pinned && e.record.current.is_some())
                .map(|e| e.record.task.clone())
                .collect()
        };
        for task in pinned {
            if let Err(e) = self.ensure_resident(&task).await {
                tracing::warn!(task, error = %e, "pinned adapter failed to load");
            }
        }
    }

    /// Picks the route for a request of `task` and counts the hit. A stored adapter that is
    /// not resident starts loading in the background (when there is room, see the module
    /// doc); the request waits for it at most `wait` and otherwise goes to the base model.
    pub async fn route(self: &Arc<Self>, task: &str, wait: Duration) -> Route {
        let deadline = Instant::now() + wait;
        let mut started = false;
        let mut waiter = Waiter {
            table: self,
            task,
            counted: false,
        };
        loop {
            let (needs_load, loading) = {
                let mut inner = self.lock();
                let Inner { tasks, lru, .. } = &mut *inner;
                let Some(entry) = tasks.get_mut(task) else {
                    waiter.counted = false;
                    return Route::Base;
                };
                if let Some(r) = &entry.resident {
                    entry.hits += 1;
                    entry.last_used = Some(now_secs());
                    lru.promote(task);
                    if std::mem::take(&mut waiter.counted) {
                        entry.waiting = entry.waiting.saturating_sub(1);
                    }
                    return Route::Adapter(r.clone());
                }
                if !waiter.counted && Instant::now() < deadline {
                    waiter.counted = true;
                    entry.waiting += 1;
                }
                (entry.should_load(), entry.state() == State::Loading)
            };
            if needs_load && !started {
                started = true;
                let this = self.clone();
                let task = task.to_string();
                tokio::spawn(async move {
                    if let Err(e) = this.ensure_resident(&task).await {
                        tracing::warn!(task, error = %e, "loading adapter failed");
                    }
                });
            }
            // Wait for a load in progress too (another request may have started it).
            if Instant::now() >= deadline || !(needs_load || loading || started) {
                return Route::Base;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Validates, stores and loads a new adapter version for `task`, then routes the task
    /// to it. The old version keeps serving until the new one is registered.
    pub async fn install(
        self: &Arc<Self>,
        task: &str,
        adapter: &LoraAdapter,
        source: Source,
    ) -> Result<TaskInfo> {
        Ok(self.install_timed(task, adapter, source).await?.0)
    }

    /// [`AdapterTable::install`], also returning the time of its stages: `write` (validate
    /// and store), `load_merge` (the engine makes it servable: reads its matrices when
    /// adapters are shared, loads a base copy with it merged when merged) and `register`
    /// (the rest: routing).
    pub async fn install_timed(
        self: &Arc<Self>,
        task: &str,
        adapter: &LoraAdapter,
        source: Source,
    ) -> Result<(TaskInfo, Vec<(String, Duration)>)> {
        self.install_if(task, adapter, source, || true)
            .await?
            .ok_or_else(|| anyhow!("installing an adapter for task {task} was refused"))
    }

    /// [`AdapterTable::install_timed`] for an adapter made while its task could be
    /// forgotten (a generation): `wanted` is asked under the task's operation lock, before
    /// anything is stored, and `Ok(None)` means it said no and nothing changed. A forget
    /// ([`AdapterTable::evict`]) takes the same lock, so it comes either before the
    /// question, which `wanted` then answers no, or after the install, which it deletes.
    pub async fn install_if(
        self: &Arc<Self>,
        task: &str,
        adapter: &LoraAdapter,
        source: Source,
        wanted: impl FnOnce() -> bool + Send + 'static,
    ) -> Result<Option<(TaskInfo, Vec<(String, Duration)>)>> {
        adapter.validate(&self.dims)?;
        let (me, task, adapter) = (self.clone(), task.to_string(), adapter.clone());
        detached(async move { me.install_now(&task, &adapter, source, wanted).await }).await
    }

    async fn install_now(
        self: &Arc<Self>,
        task: &str,
        adapter: &LoraAdapter,
        source: Source,
        wanted: impl FnOnce() -> bool + Send,
    ) -> Result<Option<(TaskInfo, Vec<(String, Duration)>)>> {
        let t = Instant::now();
        let op = self.op_lock(task);
        let _guard = op.lock().await;
        if !wanted() {
            return Ok(None);
        }
        let room = self.store_room.lock().await;
        let hash = adapter.content_hash()?;
        self.check_store_room(task, Some(hash.as_str()), adapter.weight_bytes() as u64)?;
        let store = self.store.clone();
        let (task_s, adapter_c) = (task.to_string(), adapter.clone());
        let record =
            tokio::task::spawn_blocking(move || store.put(&task_s, &adapter_c, source)).await??;
        let write = t.elapsed();
        {
            let mut inner = self.lock();
            inner.installs += 1;
            let installs = inner.installs;
            let entry = inner.tasks.entry(task.to_string()).or_default();
            let pinned = entry.record.pinned;
            entry.record = record;
            entry.record.pinned = pinned;
            entry.installed = installs;
        }
        drop(room);
        let t = Instant::now();
        let load = self.load_current(task).await?.unwrap_or_default();
        let rest = t.elapsed().saturating_sub(load);
        let info = self
            .info(task)
            .ok_or_else(|| anyhow!("task {task} vanished"))?;
        let stages = vec![
            ("write".to_string(), write),
            ("load_merge".to_string(), load),
            ("register".to_string(), rest),
        ];
        Ok(Some((info, stages)))
    }

    /// The task's current version as a resident model, loaded first if it is only stored,
    /// for a caller that answers with it as a request would (holding it keeps it from being
    /// removed) without counting a hit; `None` when the task has no adapter, or lost it to
    /// an eviction right after the load.
    pub async fn current_model(self: &Arc<Self>, task: &str) -> Result<Option<Arc<ResidentModel>>> {
        let stored = self
            .lock()
            .tasks
            .get(task)
            .is_some_and(|e| e.record.current.is_some());
        if !stored {
            return Ok(None);
        }
        self.ensure_resident(task).await?;
        Ok(self.lock().tasks.get(task).and_then(|e| e.resident.clone()))
    }

    /// Makes the task's current version resident (no-op if it already is).
    pub async fn ensure_resident(self: &Arc<Self>, task: &str) -> Result<()> {
        let (me, task) = (self.clone(), task.to_string());
        detached(async move {
            let op = me.op_lock(&task);
            let _guard = op.lock().await;
            me.load_current(&task).await.map(|_| ())
        })
        .await
    }

    /// Loads the current version if the resident one differs, returning the engine's load
    /// time (`None` when it was already resident). Caller holds the op lock.
    async fn load_current(self: &Arc<Self>, task: &str) -> Result<Option<Duration>> {
        let hash = {
            let mut inner = self.lock();
            let entry = inner
                .tasks
                .get_mut(task)
                .ok_or_else(|| anyhow!("no adapter stored for task {task}"))?;
            let hash = entry
                .record
                .current
                .clone()
                .ok_or_else(|| anyhow!("no adapter stored for task {task}"))?;
            if entry.resident.as_ref().is_some_and(|r| r.hash == hash) {
                return Ok(None);
            }
            entry.state = Some(State::Loading);
            hash
        };
        if let Err(e) = self.check_capacity(task) {
            self.set_state(task, Some(State::Stored));
            return Err(e);
        }
        let mut admitted = match self.admit(task).await {
            Ok(a) => a,
            Err(e) => {
                // Not a failed load: the task's next request tries again.
                self.set_state(task, None);
                return Err(e);
            }
        };
        let engine_id = format!(
            "{}{task}:{hash}:{}",
            ADAPTER_MODEL_PREFIX,
            self.serial.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.store.version_dir(task, &hash);
        let t = Instant::now();
        match self.engine.register(&engine_id, &dir).await {
            Ok(load) => {
                self.loads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    task,
                    hash,
                    engine_id,
                    load_ms = load.as_millis() as u64,
                    total_ms = t.elapsed().as_millis() as u64,
                    "adapter resident"
                );
                let new = Arc::new(ResidentModel {
                    task: task.to_string(),
                    hash,
                    engine_id,
                    load,
                });
                // Loading becomes resident in one step: the count of models does not move.
                let old = {
                    let mut inner = self.lock();
                    admitted.release(&mut inner);
                    let Inner {
                        tasks,
                        lru,
                        retiring,
                        ..
                    } = &mut *inner;
                    let entry = tasks.entry(task.to_string()).or_default();
                    let old = entry.resident.replace(new);
                    if old.is_some() {
                        *retiring += 1;
                    }
                    entry.state = None;
                    entry.load_failures = 0;
                    entry.retry_load_at = None;
                    lru.put(task.to_string(), ());
                    old
                };
                if let Some(old) = old {
                    self.retire(old);
                }
                Ok(Some(load))
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!(task, error = msg, "adapter failed to load");
                self.load_failures.fetch_add(1, Ordering::Relaxed);
                let mut inner = self.lock();
                admitted.release(&mut inner);
                if let Some(e) = inner.tasks.get_mut(task) {
                    e.state = Some(State::Failed(msg.clone()));
                    e.load_failures += 1;
                    let wait = LOAD_RETRY_BASE
                        .saturating_mul(1 << (e.load_failures - 1).min(16))
                        .min(LOAD_RETRY_MAX);
                    e.retry_load_at = Some(Instant::now() + wait);
                }
                Err(anyhow!(msg))
            }
        }
    }

    fn set_state(&self, task: &str, state: Option<State>) {
        if let Some(e) = self.lock().tasks.get_mut(task) {
            e.state = state;
        }
    }

    fn resident_bytes(&self, n: usize) -> u64 {
        self.limits.bytes_per_model.saturating_mul(n as u64)
    }

    /// Whether `n` adapter engine models fit the limits.
    fn fits(&self, n: usize) -> bool {
        n <= self.limits.max_resident && self.resident_bytes(n) <= self.limits.max_resident_bytes
    }

    /// Fails when the new model cannot fit even after evicting every unpinned one.
    fn check_capacity(&self, task: &str) -> Result<()> {
        let inner = self.lock();
        let pinned = inner
            .tasks
            .values()
            .filter(|e| e.resident.is_some() && e.record.pinned && e.record.task != task)
            .count();
        if !self.fits(pinned + 1) {
            bail!(
                "no room for another resident adapter: limits are {} models / {} bytes and {pinned} pinned adapters are resident",
                self.limits.max_resident,
                self.limits.max_resident_bytes
            );
        }
        Ok(())
    }

    /// Waits until one more engine model fits the limits beside the resident, loading and
    /// retiring ones, and returns it counted as loading; makes room meanwhile (see
    /// [`AdapterTable::make_room`]). A load that finds others waiting waits behind them.
    /// Fails after `limits.load_queue`.
    async fn admit<'a>(self: &'a Arc<Self>, task: &str) -> Result<Held<'a>> {
        let deadline = Instant::now() + self.limits.load_queue;
        let mut queued = Held {
            table: self,
            count: Count::Queued,
            held: false,
        };
        loop {
            let evicted = {
                let mut inner = self.lock();
                let ahead = if queued.held { 0 } else { inner.queued };
                if self.fits(inner.models() + ahead + 1) {
                    queued.release(&mut inner);
                    inner.loading += 1;
                    return Ok(Held {
                        table: self,
                        count: Count::Loading,
                        held: true,
                    });
                }
                if !queued.held {
                    inner.queued += 1;
                    queued.held = true;
                }
                if Instant::now() >= deadline {
                    queued.release(&mut inner);
                    bail!(
                        "no room to load the adapter of task {task} within {} ms (plugin.load_queue_ms): {} adapter models resident, {} loading and {} being removed, against limits of {} models / {} bytes",
                        self.limits.load_queue.as_millis(),
                        inner.lru.len(),
                        inner.loading,
                        inner.retiring,
                        self.limits.max_resident,
                        self.limits.max_resident_bytes
                    );
                }
                self.make_room(&mut inner, task)
            };
            for r in evicted {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    task = r.task,
                    hash = r.hash,
                    to_load = task,
                    "evicted (LRU)"
                );
                self.retire(r);
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Evicts least recently used residents until every load waiting for room fits beside
    /// the resident and loading models once the retiring ones are gone: never a pinned one,
    /// nor one that requests are waiting to take ([`Entry::waiting`]); the old version of
    /// `task`, which its load replaces, only when no other can go.
    fn make_room(&self, inner: &mut Inner, task: &str) -> Vec<Arc<ResidentModel>> {
        let mut out = Vec::new();
        while !self.fits(inner.lru.len() + inner.loading + inner.queued) {
            let other = inner
                .lru
                .iter()
                .rev()
                .map(|(t, _)| t)
                .find(|t| {
                    t.as_str() != task
                        && inner
                            .tasks
                            .get(t.as_str())
                            .is_some_and(|e| !e.record.pinned && e.waiting == 0)
                })
                .cloned();
            let Some(victim) = other.or_else(|| inner.lru.contains(task).then(|| task.to_string()))
            else {
                break;
            };
            out.extend(inner.take_resident(&victim));
        }
        out
    }

    /// Unregisters an engine model once no request uses it any more: a request holds its
    /// route from routing until its answer has been sent or dropped, through its wait for
    /// admission and the engine's queue (see `server::admission`). Only the retire ceiling
    /// cuts that short, for requests that never end (a client that stops reading a stream),
    /// so that its memory (a whole model copy when merged) is not kept for good; that is
    /// logged with the requests cut off.
    ///
    /// The model must have been counted as retiring ([`Inner::take_resident`]) when it left
    /// the LRU; it stops counting once removed.
    fn retire(self: &Arc<Self>, model: Arc<ResidentModel>) {
        let this = self.clone();
        let ceiling = self.limits.retire_ceiling;
        tokio::spawn(async move {
            let _room = Held {
                table: &this,
                count: Count::Retiring,
                held: true,
            };
            let start = Instant::now();
            while Arc::strong_count(&model) > 1 {
                let waited = start.elapsed();
                if waited >= ceiling {
                    tracing::warn!(
                        task = model.task,
                        engine_id = model.engine_id,
                        requests = Arc::strong_count(&model) - 1,
                        waited_s = waited.as_secs(),
                        "removing a retired adapter model that requests still use: the retire ceiling (plugin.retire_ceiling_s) is reached"
                    );
                    break;
                }
                // Checked often at first (most requests end within seconds), then less.
                let poll = (waited / 50).clamp(Duration::from_millis(20), Duration::from_secs(1));
                tokio::time::sleep(poll.min(ceiling - waited)).await;
            }
            if let Err(e) = this.engine.unregister(&model.engine_id).await {
                tracing::warn!(engine_id = model.engine_id, error = %e, "removing engine model failed");
            }
        });
    }

    /// Evicts a task's resident model; with `forget` also deletes its stored files (its
    /// whole store folder, also when the table has no entry for it: the prompts and
    /// generation history automatic specialisation keeps there). Returns whether there was
    /// anything to evict or forget.
    ///
    /// Forgetting takes the task out of the store (see [`Store::forget`]) before its entry
    /// leaves the table: if that fails, nothing has changed; once it has succeeded, the task
    /// cannot come back at the next start, whatever happens to the deletion of its files.
    /// A generation finishing later cannot bring it back either: it installs through
    /// [`AdapterTable::install_if`], which asks under the same operation lock.
    pub async fn evict(self: &Arc<Self>, task: &str, forget: bool) -> Result<bool> {
        let op = self.op_lock(task);
        let _guard = op.lock().await;
        let known = match self.lock().tasks.get(task) {
            Some(entry) if entry.record.pinned => bail!("task {task} is pinned: unpin it first"),
            Some(_) => true,
            None if !forget => return Ok(false),
            None => false,
        };
        let mut stored = false;
        if forget {
            let store = self.store.clone();
            let task = task.to_string();
            stored = tokio::task::spawn_blocking(move || store.forget(&task)).await??;
        }
        let resident = {
            let mut inner = self.lock();
            let r = inner.take_resident(task);
            if let Some(entry) = inner.tasks.get_mut(task) {
                entry.state = None;
            }
            if forget {
                inner.tasks.remove(task);
            }
            r
        };
        if let Some(r) = resident {
            self.retire(r);
        }
        Ok(known || stored)
    }

    /// Pins (loads now and never evicts) or unpins a task's adapter.
    pub async fn set_pinned(self: &Arc<Self>, task: &str, pinned: bool) -> Result<TaskInfo> {
        let (me, task) = (self.clone(), task.to_string());
        detached(async move { me.set_pinned_now(&task, pinned).await }).await
    }

    async fn set_pinned_now(self: &Arc<Self>, task: &str, pinned: bool) -> Result<TaskInfo> {
        {
            let op = self.op_lock(task);
            let _guard = op.lock().await;
            let record = {
                let mut inner = self.lock();
                let entry = inner
                    .tasks
                    .get_mut(task)
                    .filter(|e| e.record.current.is_some())
                    .ok_or_else(|| anyhow!("no adapter stored for task {task}"))?;
                entry.record.pinned = pinned;
                entry.record.clone()
            };
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.save(&record)).await??;
        }
        if pinned {
            self.ensure_resident(task).await?;
        }
        self.info(task)
            .ok_or_else(|| anyhow!("task {task} vanished"))
    }

    /// Marks a task failed (e.g. its generation), unless it has an adapter: then that
    /// adapter keeps serving (and is loaded again after an eviction or a restart) and the
    /// failure shows in the generation state only. A task marked failed with a stored
    /// adapter would never load it again: its requests only retry failed loads.
    pub fn mark_failed(&self, task: &str, error: String) {
        let mut inner = self.lock();
        let entry = inner
            .tasks
            .entry(task.to_string())
            .or_insert_with(|| Entry {
                record: TaskRecord {
                    task: task.to_string(),
                    ..Default::default()
                },
                ..Default::default()
            });
        if entry.resident.is_none() && entry.record.current.is_none() {
            entry.state = Some(State::Failed(error));
        }
    }

    /// Deletes the oldest stored versions of a task beyond `keep` (never the current one).
    pub async fn prune_versions(&self, task: &str, keep: usize) -> Result<()> {
        let op = self.op_lock(task);
        let _guard = op.lock().await;
        let (record, doomed) = {
            let mut inner = self.lock();
            let Some(entry) = inner.tasks.get_mut(task) else {
                return Ok(());
            };
            let r = &mut entry.record;
            let mut doomed = Vec::new();
            while r.versions.len() > keep.max(1) {
                let Some(i) = r
                    .versions
                    .iter()
                    .position(|v| Some(&v.hash) != r.current.as_ref())
                else {
                    break;
                };
                doomed.push(r.versions.remove(i).hash);
            }
            (r.clone(), doomed)
        };
        if doomed.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let task = task.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            store.save(&record)?;
            store.remove_versions(&task, &doomed);
            Ok(())
        })
        .await?
    }

    /// Adapters installed since the start, of every task: a reading of it tells whether
    /// a task's adapter was installed after it ([`AdapterTable::installed_at`]).
    pub fn installs(&self) -> u64 {
        self.lock().installs
    }

    /// [`AdapterTable::installs`] at `task`'s last install (0: none since the start). It
    /// moves under the task's operation lock: an [`AdapterTable::install_if`] condition sees
    /// every install of the task before its own.
    pub fn installed_at(&self, task: &str) -> u64 {
        self.lock().tasks.get(task).map_or(0, |e| e.installed)
    }

    pub fn info(&self, task: &str) -> Option<TaskInfo> {
        let inner = self.lock();
        inner.tasks.get(task).map(|e| self.info_of(e))
    }

    pub fn list(&self) -> Vec<TaskInfo> {
        let inner = self.lock();
        let mut v: Vec<TaskInfo> = inner.tasks.values().map(|e| self.info_of(e)).collect();
        v.sort_by(|a, b| a.task.cmp(&b.task));
        v
    }

    fn info_of(&self, e: &Entry) -> TaskInfo {
        let cur = e.record.current_version();
        TaskInfo {
            task: e.record.task.clone(),
            state: if e.resident.is_some() && e.state.is_none() {
                State::Resident
            } else {
                e.state()
            },
            pinned: e.record.pinned,
            source: cur.map(|v| v.source),
            rank: cur.map(|v| v.rank),
            target_modules: cur.map(|v| v.target_modules.clone()).unwrap_or_default(),
            hash: e.record.current.clone(),
            created: cur.map(|v| v.created),
            hits: e.hits,
            last_used: e.last_used,
            bytes: cur.map(|v| v.bytes).unwrap_or(0),
            resident_bytes: if e.resident.is_some() {
                self.limits.bytes_per_model
            } else {
                0
            },
            load_ms: e.resident.as_ref().map(|r| r.load.as_millis() as u64),
            versions: e.record.versions.clone(),
        }
    }

    /// Engine model ids currently registered for adapters.
    pub fn resident_ids(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .tasks
            .values()
            .filter_map(|e| e.resident.as_ref().map(|r| r.engine_id.clone()))
            .collect()
    }

    /// Corrupt task records the store moved to quarantine since start (their tasks start
    /// afresh with their next upload).
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.store.quarantined()
    }

    pub fn store_root(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }
}

/// Runs a table operation on its own task and waits for it. Handlers' futures are dropped
/// when their client disconnects; a load cancelled half-way would leave its task `loading`
/// for good (and the engine's model registered but unknown to the table), so every
/// operation that loads runs to its end whoever waits for it.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(op)
        .await
        .map_err(|e| anyhow!("adapter table operation panicked or was aborted: {e}"))?
}

#[cfg(test)]
mod tests;
