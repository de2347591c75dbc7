//! An in-memory [`AdapterEngine`] for the unit tests of the layers above the engine (the
//! adapter table, automatic specialisation), so that their state machines can be driven
//! through real transitions in milliseconds, without a model.
//!
//! It loads nothing, but keeps what a real engine would show: which model ids are
//! registered, how many loads and removals it was asked for, and the most models it held
//! at once, loads in flight included (what memory admission bounds). A test can hold loads
//! at a gate (to look at the table while a load is in flight) and make them fail. Like the
//! real engine it reads the adapter's own folder, so a load of a folder without a PEFT
//! config fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use async_trait::async_trait;
use tokio::sync::watch;

use super::{peft, AdapterEngine};

pub(crate) struct FakeEngine {
    /// Registered model ids with the folder each was loaded from, in registration order.
    registered: Mutex<Vec<(String, PathBuf)>>,
    loads: AtomicUsize,
    unloads: AtomicUsize,
    /// Loads started and not ended; changed under the `registered` lock.
    loading: AtomicUsize,
    /// The most models registered and loading at once so far.
    peak: AtomicUsize,
    fail: AtomicBool,
    /// `true` while loads may finish; a load started while it is `false` waits for it.
    gate: watch::Sender<bool>,
    /// What [`AdapterEngine::answer`] says, from the model id and the prompt (the shown
    /// turns written before it, one `USER => ASSISTANT` line each).
    answerer: Mutex<Answerer>,
}

type Answerer = Box<dyn Fn(&str, &str) -> String + Send + Sync>;

impl FakeEngine {
    pub(crate) fn new() -> Self {
        Self {
            registered: Mutex::new(Vec::new()),
            loads: AtomicUsize::new(0),
            unloads: AtomicUsize::new(0),
            loading: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            gate: watch::Sender::new(true),
            answerer: Mutex::new(Box::new(|_, _| String::new())),
        }
    }

    /// Makes `answer(model_id, shown, prompt, _)` return `f(model_id, text)`, `text` the
    /// prompt after the shown turns' lines (by default: "").
    pub(crate) fn answer_with(&self, f: impl Fn(&str, &str) -> String + Send + Sync + 'static) {
        *self.answerer.lock().unwrap_or_else(|p| p.into_inner()) = Box::new(f);
    }

    /// Loads started from now on wait until [`FakeEngine::open`].
    pub(crate) fn hold(&self) {
        self.gate.send_replace(false);
    }

    /// Lets every held load (and later ones) finish.
    pub(crate) fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Makes loads that reach the end of the gate fail (or succeed again).
    pub(crate) fn fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// `register` calls so far, including held and failed ones.
    pub(crate) fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// Successful `unregister` calls so far.
    pub(crate) fn unloads(&self) -> usize {
        self.unloads.load(Ordering::SeqCst)
    }

    /// The most models registered and loading at once so far (a model's memory is taken
    /// from the start of its load to its removal).
    pub(crate) fn peak_models(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Models registered and loading now.
    pub(crate) fn models(&self) -> usize {
        let registered = self.lock();
        registered.len() + self.loading.load(Ordering::SeqCst)
    }

    /// Model ids registered now, in registration order.
    pub(crate) fn registered(&self) -> Vec<String> {
        self.lock().iter().map(|(id, _)| id.clone()).collect()
    }

    /// The folder `model_id` was loaded from, while it is registered.
    pub(crate) fn folder_of(&self, model_id: &str) -> Option<PathBuf> {
        self.lock()
            .iter()
            .find(|(id, _)| id == model_id)
            .map(|(_, dir)| dir.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, PathBuf)>> {
        self.registered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits at the gate, then fails the load if the test asks so or the folder has no
    /// adapter.
    async fn ready(&self, model_id: &str, adapter_dir: &Path) -> Result<()> {
        let mut gate = self.gate.subscribe();
        gate.wait_for(|open| *open).await?;
        if self.fail.load(Ordering::SeqCst) {
            bail!("fake engine: load of {model_id} failed (test)");
        }
        if !adapter_dir.join(peft::CONFIG_FILE).is_file() {
            bail!("fake engine: no adapter in {}", adapter_dir.display());
        }
        Ok(())
    }
}

#[async_trait]
impl AdapterEngine for FakeEngine {
    fn base_id(&self) -> &str {
        "base"
    }

    async fn register(&self, model_id: &str, adapter_dir: &Path) -> Result<Duration> {
        let t = Instant::now();
        self.loads.fetch_add(1, Ordering::SeqCst);
        {
            // The count of models only grows here: its peak is taken at the start of loads.
            let registered = self.lock();
            let loading = self.loading.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak
                .fetch_max(registered.len() + loading, Ordering::SeqCst);
        }
        let ready = self.ready(model_id, adapter_dir).await;
        let mut registered = self.lock();
        self.loading.fetch_sub(1, Ordering::SeqCst);
        ready?;
        if registered.iter().any(|(id, _)| id == model_id) {
            bail!("fake engine: model id {model_id} is already registered");
        }
        registered.push((model_id.to_string(), adapter_dir.to_path_buf()));
        Ok(t.elapsed())
    }

    async fn unregister(&self, model_id: &str) -> Result<()> {
        let mut registered = self.lock();
        let Some(i) = registered.iter().position(|(id, _)| id == model_id) else {
            bail!("fake engine: no model {model_id}");
        };
        registered.remove(i);
        self.unloads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn answer(
        &self,
        model_id: &str,
        shown: &[(&str, &str)],
        prompt: &str,
        _max_tokens: usize,
    ) -> Result<String> {
        if model_id != self.base_id() && !self.lock().iter().any(|(id, _)| id == model_id) {
            bail!("fake engine: no model {model_id}");
        }
        let mut text: String = shown.iter().map(|(u, a)| format!("{u} => {a}\n")).collect();
        text.push_str(prompt);
        let f = self.answerer.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(model_id, &text))
    }
}

/// Waits until `cond` holds, checking every millisecond; panics with `what` after 5 s.
/// For state that background tasks change (loads, retirements, generations).
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
