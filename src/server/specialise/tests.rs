//! The specialiser's state machine with a fake generator and the fake engine: collecting to
//! K, single flight, retries with backoff, manual and automatic regeneration, the hourly
//! cap, the tracked-task limit against a flood of new ids, the store's limits, a full
//! queue, forgetting, coalesced prompt writes, restoring after a restart, and the no-harm
//! check.
//! `tests/specialise.rs` covers the same paths end to end through HTTP on a tiny model.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use anyhow::bail;

use super::*;
use crate::adapters::{Limits, State, Store};
use crate::engine::fake::{eventually, FakeEngine};
use crate::format::Module;
use crate::testing::{random_adapter, tiny_dims};

/// A stand-in for the DnD generator: an adapter seeded by the prompts (different prompts,
/// different adapter). It records each call's prompts and time when the call starts, can
/// be held (a generation in progress) and made to fail.
#[derive(Default)]
struct FakeGenerator {
    calls: Mutex<Vec<(Instant, Vec<String>)>>,
    fail: AtomicBool,
    /// Reads a task's labelled examples instead of its prompts.
    reads_examples: bool,
    /// A residual generator's base adapter.
    base: Option<LoraAdapter>,
    held: Mutex<bool>,
    released: Condvar,
}

impl FakeGenerator {
    fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn prompts_of_call(&self, i: usize) -> Vec<String> {
        self.calls.lock().unwrap()[i].1.clone()
    }

    fn started_at(&self, i: usize) -> Instant {
        self.calls.lock().unwrap()[i].0
    }
}

impl AdapterGenerator for FakeGenerator {
    fn batch_size(&self) -> usize {
        3
    }

    fn condition(&self) -> Condition {
        match self.reads_examples {
            true => Condition::Examples,
            false => Condition::Prompts,
        }
    }

    fn base_adapter(&self) -> Option<LoraAdapter> {
        self.base.clone()
    }

    fn generate(&self, prompts: &[String]) -> Result<LoraAdapter> {
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), prompts.to_vec()));
        // Bounded, so that a failing test cannot hang the runtime's shutdown.
        let held = self.held.lock().unwrap();
        drop(
            self.released
                .wait_timeout_while(held, Duration::from_secs(10), |h| *h)
                .unwrap(),
        );
        if self.fail.load(Ordering::SeqCst) {
            bail!("generator failed (test)");
        }
        let seed = prompts
            .iter()
            .flat_map(|p| p.bytes())
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, seed, 0.5, 0.5)
    }
}

fn settings() -> Settings {
    Settings {
        k: 3,
        max_prompt_bytes: 4096,
        max_tracked_tasks: 100,
        concurrency: 1,
        queue: 16,
        retry_base: Duration::from_secs(60),
        max_retries: 0,
        regenerate_after: None,
        guard_max_tokens: 16,
        check_tolerance: Default::default(),
        guard_fallback: true,
        fallback_adapter: None,
        max_generations_per_hour: 100,
        max_versions: 5,
        prepare_on_arrival: true,
        library: None,
        demonstrations: 0,
        demonstrations_pool: 0,
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    engine: Arc<FakeEngine>,
    table: Arc<AdapterTable>,
    metrics: Arc<Metrics>,
    generator: Arc<FakeGenerator>,
    examples_generator: Option<Arc<FakeGenerator>>,
    sp: Arc<Specialiser>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A generation still held would keep a blocking thread (and the runtime) alive.
        self.generator.release();
    }
}

fn start_in(dir: tempfile::TempDir, settings: Settings) -> Fixture {
    start_with(dir, settings, FakeGenerator::default())
}

fn start_with(dir: tempfile::TempDir, settings: Settings, generator: FakeGenerator) -> Fixture {
    start_with_both(dir, settings, generator, None)
}

/// A fixture whose specialiser has `examples` as its examples generator too
/// ([`Fixture::examples_generator`]).
fn start_with_both(
    dir: tempfile::TempDir,
    settings: Settings,
    generator: FakeGenerator,
    examples: Option<FakeGenerator>,
) -> Fixture {
    let limits = Limits {
        max_resident: 16,
        max_resident_bytes: u64::MAX,
        bytes_per_model: 1,
        retire_ceiling: Duration::from_secs(3600),
        load_queue: Duration::from_secs(5),
    };
    let store = Store::open(&dir.path().join("store")).unwrap();
    let engine = Arc::new(FakeEngine::new());
    let table = AdapterTable::new(engine.clone(), store, tiny_dims(), limits).unwrap();
    let metrics = Arc::new(Metrics::new());
    let generator = Arc::new(generator);
    let examples_generator = examples.map(Arc::new);
    let generators = Generators {
        main: generator.clone(),
        examples: examples_generator
            .clone()
            .map(|g| g as Arc<dyn AdapterGenerator>),
    };
    let sp = Specialiser::start(generators, table.clone(), metrics.clone(), settings);
    Fixture {
        dir,
        engine,
        table,
        metrics,
        generator,
        examples_generator,
        sp,
    }
}

fn start(settings: Settings) -> Fixture {
    start_in(tempfile::tempdir().unwrap(), settings)
}

impl Fixture {
    fn observe(&self, task: &str, prompt: &str) {
        self.sp.observe(task, Some(prompt.to_string())).unwrap();
    }

    /// Gives `task` labelled examples (each answer its prompt), then the K prompts that
    /// start its generation.
    async fn examples_then_k<S: AsRef<str>>(&self, task: &str, prompts: &[S]) {
        self.sp.set_examples(task, examples(prompts)).await.unwrap();
        for i in 0..self.sp.settings.k {
            self.observe(task, &format!("p{i}"));
        }
    }

    /// Holds the generator, sends `task` its K prompts (`PREFIX0` on) and waits until its
    /// generation has started, held.
    async fn held_generation(&self, task: &str, prefix: &str) {
        self.generator.hold();
        let calls = self.generator.calls();
        for i in 0..self.sp.settings.k {
            self.observe(task, &format!("{prefix}{i}"));
        }
        eventually("the generation to start", || {
            self.generator.calls() == calls + 1
        })
        .await;
    }

    fn store_dir(&self, task: &str) -> PathBuf {
        self.dir.path().join("store").join(task)
    }

    fn tracked(&self) -> Vec<String> {
        self.sp.list().0.into_iter().map(|t| t.0).collect()
    }

    fn gen(&self, task: &str) -> Option<GenState> {
        self.sp.info(task).map(|i| i.state)
    }

    fn adapter_state(&self, task: &str) -> Option<State> {
        self.table.info(task).map(|i| i.state)
    }

    fn versions(&self, task: &str) -> usize {
        self.table.info(task).map_or(0, |i| i.versions.len())
    }

    fn prompts_file(&self, task: &str) -> PathBuf {
        self.dir.path().join("store").join(task).join(PROMPTS_FILE)
    }

    /// The generation history persisted for `task` (`None`: no file).
    fn history(&self, task: &str) -> Option<GenRecord> {
        let path = self
            .dir
            .path()
            .join("store")
            .join(task)
            .join(GENERATION_FILE);
        GenRecord::read(&path)
    }

    /// The prompts persisted for `task` (`None`: no file).
    fn persisted(&self, task: &str) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.prompts_file(task)).ok()?;
        Some(
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    }

    async fn until_gen(&self, task: &str, want: GenState) {
        eventually(&format!("{task} to be {want:?}"), || {
            self.gen(task).as_ref() == Some(&want)
        })
        .await;
    }

    fn generation_failures(&self) -> u64 {
        self.metrics
            .failures
            .with_label_values(&["generation"])
            .get()
    }
}

/// A new folder holding a copy of `f`'s store as it is now: what the process would leave
/// on disk if it were killed now, for a restart that shares nothing else with `f`.
fn copy_of_store(f: &Fixture) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let to = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to);
            } else {
                std::fs::copy(entry.path(), to).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&f.dir.path().join("store"), &dir.path().join("store"));
    dir
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn k_prompts_start_one_generation_from_those_prompts() {
    let f = start(settings());
    f.sp.observe("t", None).unwrap();
    f.observe("t", "   ");
    assert!(f.sp.info("t").is_none(), "no prompt, nothing tracked");

    f.observe("t", "q0");
    f.observe("t", "q1");
    let info = f.sp.info("t").unwrap();
    assert_eq!(info.state, GenState::Collecting);
    assert_eq!((info.prompts, info.prompts_needed), (2, 3));
    assert_eq!(f.adapter_state("t"), None, "the base answers meanwhile");

    f.observe("t", "q2");
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.generator.calls(), 1);
    assert_eq!(f.generator.prompts_of_call(0), strings(&["q0", "q1", "q2"]));
    let adapter = f.table.info("t").unwrap();
    assert_eq!(adapter.state, State::Resident);
    assert_eq!(adapter.source, Some(Source::Generated));
    let info = f.sp.info("t").unwrap();
    assert_eq!(info.since_generation, 0);
    let stages: Vec<&str> = info.last_timings_ms.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(stages, ["write", "load_merge", "register", "total"]);
    assert_eq!(f.metrics.generation_seconds.get_sample_count(), 1);
    assert_eq!(f.metrics.queue_depth.get(), 0);

    // With an adapter and no regeneration setting, more prompts start nothing.
    f.observe("t", "q3");
    assert_eq!(f.gen("t"), Some(GenState::Done));
    assert_eq!(f.sp.info("t").unwrap().since_generation, 1);
}

#[tokio::test]
async fn prompts_during_a_generation_start_no_second_one_and_keep_the_last_k() {
    let f = start(settings());
    f.held_generation("t", "p").await;
    assert_eq!(f.gen("t"), Some(GenState::Generating));
    for i in 3..23 {
        f.observe("t", &format!("p{i}"));
    }
    let info = f.sp.info("t").unwrap();
    assert_eq!(info.state, GenState::Generating);
    assert_eq!((info.prompts, info.since_generation), (3, 23));
    eventually("the buffer to be written", || {
        f.persisted("t") == Some(strings(&["p20", "p21", "p22"]))
    })
    .await;

    f.generator.release();
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.generator.calls(), 1, "single flight per task");
    assert_eq!(f.generator.prompts_of_call(0), strings(&["p0", "p1", "p2"]));
}

#[tokio::test]
async fn a_failed_generation_keeps_the_base_and_retries_with_doubling_delays() {
    let base = Duration::from_millis(20);
    let f = start(Settings {
        retry_base: base,
        max_retries: 2,
        ..settings()
    });
    f.generator.fail.store(true, Ordering::SeqCst);
    for i in 0..3 {
        f.observe("t", &format!("q{i}"));
    }
    let last = GenState::Failed {
        error: "generator failed (test)".into(),
        attempts: 3,
        retry_at: None,
    };
    f.until_gen("t", last).await;
    assert_eq!(f.generator.calls(), 3, "the first try and two retries");
    let gap = |i: usize| f.generator.started_at(i) - f.generator.started_at(i - 1);
    assert!(gap(1) >= base, "{:?}", gap(1));
    assert!(gap(2) >= 2 * base, "{:?}", gap(2));
    assert_eq!(f.generation_failures(), 3);
    assert_eq!(
        f.adapter_state("t"),
        Some(State::Failed(
            "generation failed: generator failed (test)".into()
        ))
    );
    assert!(matches!(
        f.table.route("t", Duration::ZERO).await,
        crate::adapters::Route::Base
    ));

    // No retry is left: neither time nor new prompts start one.
    tokio::time::sleep(4 * base).await;
    f.observe("t", "q3");
    assert!(matches!(
        f.gen("t"),
        Some(GenState::Failed { attempts: 3, .. })
    ));
    assert_eq!(f.generator.calls(), 3);
}

#[tokio::test]
async fn a_retry_waits_for_its_time_and_regenerate_retries_at_once() {
    let f = start(Settings {
        max_retries: 3,
        ..settings()
    });
    f.generator.fail.store(true, Ordering::SeqCst);
    for i in 0..3 {
        f.observe("t", &format!("q{i}"));
    }
    eventually("the generation to fail", || {
        matches!(f.gen("t"), Some(GenState::Failed { .. }))
    })
    .await;
    let Some(GenState::Failed {
        attempts, retry_at, ..
    }) = f.gen("t")
    else {
        unreachable!()
    };
    assert_eq!(attempts, 1);
    let retry_at = retry_at.expect("a retry is left");
    assert!(retry_at >= now_secs() + 59, "retry_base (60 s) from now");
    f.observe("t", "q3");
    assert!(matches!(f.gen("t"), Some(GenState::Failed { .. })));
    assert_eq!(
        f.generator.calls(),
        1,
        "a new prompt does not jump the delay"
    );

    f.generator.fail.store(false, Ordering::SeqCst);
    f.sp.regenerate("t", None).unwrap();
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.generator.calls(), 2);
    assert_eq!(f.generator.prompts_of_call(1), strings(&["q1", "q2", "q3"]));
    assert_eq!(f.adapter_state("t"), Some(State::Resident));
}

/// Issue 15 (bad input changes nothing): a regeneration refused for want of prompts neither
/// empties the task's kept prompts (blank ones given) nor starts tracking an unknown task.
#[tokio::test]
async fn a_refused_regenerate_changes_nothing() {
    let f = start(settings());
    f.observe("t", "p1");
    f.observe("t", "p2");
    for given in [Some(strings(&[])), Some(strings(&["", "  "]))] {
        let err = f.sp.regenerate("t", given).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::CONFLICT);
        assert!(err.message.contains("has no prompts"), "{err:?}");
    }
    assert_eq!(f.sp.info("t").unwrap().prompts, 2, "the kept prompts stay");
    assert_eq!(f.gen("t"), Some(GenState::Collecting));
    for given in [None, Some(strings(&[" "]))] {
        let err = f.sp.regenerate("nobody", given).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::CONFLICT);
    }
    assert_eq!(
        f.tracked(),
        strings(&["t"]),
        "no task tracked for a refused call"
    );
    assert_eq!(f.generator.calls(), 0);
    // The same prompts, regenerated from the buffer, are the ones generated from.
    f.sp.regenerate("t", None).unwrap();
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.generator.prompts_of_call(0), strings(&["p1", "p2"]));
}

#[tokio::test]
async fn regenerate_takes_given_prompts_and_refuses_while_busy() {
    let f = start(Settings {
        max_prompt_bytes: 4,
        ..settings()
    });
    let err = f.sp.regenerate("t", None).unwrap_err();
    assert!(err.message.contains("has no prompts"), "{err:?}");
    assert_eq!(err.status, axum::http::StatusCode::CONFLICT);
    assert_eq!(f.generator.calls(), 0);

    f.generator.hold();
    let given = strings(&["", "skipped", "a", "  ", "bb", "aéé"]);
    let info = f.sp.regenerate("t", Some(given)).unwrap();
    assert_eq!(info.prompts, 3, "blank ones dropped, the last K kept");
    eventually("the generation to start", || f.generator.calls() == 1).await;
    // Cut to 4 bytes on a character boundary: "aé" (3 bytes), not half of the second é.
    assert_eq!(f.generator.prompts_of_call(0), strings(&["a", "bb", "aé"]));
    let err = f.sp.regenerate("t", None).unwrap_err();
    assert!(err.message.contains("already generating"), "{err:?}");
    assert_eq!(err.status, axum::http::StatusCode::CONFLICT);

    f.generator.release();
    f.until_gen("t", GenState::Done).await;
    // From the buffer: the same prompts again.
    f.sp.regenerate("t", None).unwrap();
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.generator.calls(), 2);
    assert_eq!(
        f.generator.prompts_of_call(1),
        f.generator.prompts_of_call(0)
    );
}

#[tokio::test]
async fn generated_adapters_are_regenerated_after_m_more_prompts_uploaded_ones_never() {
    let f = start(Settings {
        regenerate_after: Some(2),
        ..settings()
    });
    for i in 0..3 {
        f.observe("t", &format!("p{i}"));
    }
    f.until_gen("t", GenState::Done).await;
    let first = f.table.info("t").unwrap().hash;
    f.observe("t", "p3");
    assert_eq!(f.gen("t"), Some(GenState::Done), "one more is not enough");
    f.observe("t", "p4");
    eventually("the second generation", || f.versions("t") == 2).await;
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.generator.calls(), 2);
    assert_eq!(f.generator.prompts_of_call(1), strings(&["p2", "p3", "p4"]));
    assert_ne!(f.table.info("t").unwrap().hash, first);

    let uploaded = random_adapter(&tiny_dims(), &[Module::Q], 4, 5, 0.5, 0.5).unwrap();
    f.table
        .install("manual", &uploaded, Source::Upload)
        .await
        .unwrap();
    for i in 0..6 {
        f.observe("manual", &format!("m{i}"));
    }
    assert_eq!(f.gen("manual"), Some(GenState::Collecting));
    assert_eq!(f.generator.calls(), 2);
}

#[tokio::test]
async fn an_adapter_uploaded_during_a_generation_is_not_replaced_by_its_result() {
    let f = start(settings());
    f.held_generation("t", "p").await;
    let uploaded = random_adapter(&tiny_dims(), &[Module::Q], 4, 5, 0.5, 0.5).unwrap();
    let info = f
        .table
        .install("t", &uploaded, Source::Upload)
        .await
        .unwrap();
    f.generator.release();
    f.until_gen("t", GenState::Done).await;
    let now = f.table.info("t").unwrap();
    assert_eq!((now.hash, now.source), (info.hash, Some(Source::Upload)));
    assert_eq!(f.versions("t"), 1, "the generated adapter is not stored");

    // Generations queued before an upload: one the admin API has ended does not run; one
    // that starts before it could (the upload stored, the API not yet back) runs but does
    // not install.
    f.generator.hold();
    f.sp.regenerate("t", None).unwrap();
    for task in ["u", "v"] {
        f.observe(task, "q0");
        f.sp.regenerate(task, Some(strings(&["q0"]))).unwrap();
        f.table
            .install(task, &uploaded, Source::Upload)
            .await
            .unwrap();
    }
    f.sp.adapter_uploaded("v").await;
    f.generator.release();
    for task in ["t", "u", "v"] {
        f.until_gen(task, GenState::Done).await;
    }
    assert_eq!(f.generator.calls(), 3, "t's and u's");
    for task in ["u", "v"] {
        let now = f.table.info(task).unwrap();
        assert_eq!((now.source, f.versions(task)), (Some(Source::Upload), 1));
    }
}

#[tokio::test]
async fn the_hourly_cap_defers_regeneration() {
    let f = start(Settings {
        regenerate_after: Some(1),
        max_generations_per_hour: 1,
        ..settings()
    });
    for i in 0..3 {
        f.observe("t", &format!("p{i}"));
    }
    f.until_gen("t", GenState::Done).await;
    for i in 3..6 {
        f.observe("t", &format!("p{i}"));
        assert_eq!(f.gen("t"), Some(GenState::Done));
    }
    assert_eq!(f.generator.calls(), 1);
}

#[tokio::test]
async fn the_tracked_task_limit_drops_the_oldest_idle_task_never_a_busy_or_specialised_one() {
    let f = start(Settings {
        max_tracked_tasks: 2,
        ..settings()
    });
    f.generator.hold();
    f.sp.regenerate("busy", Some(strings(&["p"]))).unwrap();
    eventually("the generation to start", || f.generator.calls() == 1).await;
    f.observe("x", "one");
    eventually("x's buffer to be written", || f.persisted("x").is_some()).await;
    // "busy" is the oldest but generating: "x" goes.
    f.observe("y", "one");
    let (tasks, dropped) = f.sp.list();
    let names: Vec<&str> = tasks.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["busy", "y"]);
    assert_eq!(dropped, ["x"]);
    assert_eq!(f.metrics.dropped_tasks.get(), 1);
    eventually("x's buffer to be deleted", || f.persisted("x").is_none()).await;

    f.generator.release();
    f.until_gen("busy", GenState::Done).await;
    // Idle and the oldest, but with an adapter now: "y" goes.
    f.observe("z", "one");
    let (tasks, dropped) = f.sp.list();
    let names: Vec<&str> = tasks.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["busy", "z"]);
    assert_eq!(dropped, ["x", "y"]);
}

#[tokio::test]
async fn a_flood_of_new_ids_drops_collecting_tasks_only_then_is_refused() {
    let f = start(Settings {
        max_tracked_tasks: 3,
        ..settings()
    });
    let uploaded = random_adapter(&tiny_dims(), &[Module::Q], 4, 5, 0.5, 0.5).unwrap();
    f.table
        .install("real", &uploaded, Source::Upload)
        .await
        .unwrap();
    f.observe("real", "r0");
    for i in 0..3 {
        f.observe("gen", &format!("g{i}"));
    }
    f.until_gen("gen", GenState::Done).await;
    f.observe("c1", "collecting");
    eventually("c1's buffer to be written", || f.persisted("c1").is_some()).await;

    // One client rotating through new ids: each pushes out the collecting-only task seen
    // longest ago, never a task with an adapter.
    for i in 0..20 {
        f.observe(&format!("f{i}"), "flood");
    }
    assert_eq!(f.tracked(), ["f19", "gen", "real"]);
    let dropped = f.sp.list().1;
    assert_eq!(dropped.len(), 20);
    assert_eq!(dropped[0], "c1");
    assert_eq!(f.metrics.dropped_tasks.get(), 20);
    for t in ["real", "gen"] {
        assert_eq!(f.adapter_state(t), Some(State::Resident), "{t}");
    }
    // A dropped id that never got an adapter leaves nothing in the store.
    eventually("the dropped tasks' folders to go", || {
        !f.store_dir("c1").exists() && (0..19).all(|i| !f.store_dir(&format!("f{i}")).exists())
    })
    .await;
    eventually("f19's buffer to be written", || {
        f.persisted("f19").is_some()
    })
    .await;
    assert!(f.store_dir("real").join("meta.json").exists());

    // The last collecting-only slot taken by a generation: nothing can be dropped.
    f.generator.hold();
    f.sp.regenerate("busy", Some(strings(&["p"]))).unwrap();
    eventually("the generation to start", || f.generator.calls() == 2).await;
    assert_eq!(f.tracked(), ["busy", "gen", "real"]);
    let err = f.sp.observe("new", Some("hello".into())).unwrap_err();
    assert_eq!(err.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.code, Some("too_many_tasks"));
    assert!(err.retry_after.is_some(), "clients are told when to retry");
    assert!(err.message.contains("max_tracked_tasks"), "{err:?}");
    assert_eq!(f.metrics.refused_tasks.get(), 1);
    assert!(f.sp.info("new").is_none());
    // Known tasks go on; a task with an adapter is served without its prompt being kept.
    f.observe("real", "r1");
    f.table
        .install("other", &uploaded, Source::Upload)
        .await
        .unwrap();
    f.sp.observe("other", Some("hello".into())).unwrap();
    assert!(f.sp.info("other").is_none());

    // Generated, "busy" has an adapter too: still nothing to drop.
    f.generator.release();
    f.until_gen("busy", GenState::Done).await;
    assert!(f.sp.observe("new", Some("hello".into())).is_err());
    assert_eq!(f.metrics.refused_tasks.get(), 2);
    assert!(!f.store_dir("new").exists());
}

#[tokio::test]
async fn a_task_without_an_adapter_is_not_generated_while_the_store_is_full() {
    let f = start(settings());
    f.table.set_store_limits(crate::adapters::StoreLimits {
        max_tasks: 1,
        max_bytes: u64::MAX,
    });
    let uploaded = random_adapter(&tiny_dims(), &[Module::Q], 4, 5, 0.5, 0.5).unwrap();
    f.table
        .install("a", &uploaded, Source::Upload)
        .await
        .unwrap();
    for i in 0..4 {
        f.observe("b", &format!("b{i}"));
    }
    assert_eq!(f.gen("b"), Some(GenState::Collecting));
    let err = f.sp.regenerate("b", None).unwrap_err();
    assert_eq!(err.status, axum::http::StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(err.code, Some("store_full"));
    assert!(err.message.contains("max_stored_tasks"), "{err:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.generator.calls(), 0);

    // Room again: the task's next prompt starts its generation.
    assert!(f.table.evict("a", true).await.unwrap());
    f.observe("b", "b4");
    f.until_gen("b", GenState::Done).await;
    assert_eq!(f.generator.prompts_of_call(0), strings(&["b2", "b3", "b4"]));
}

#[tokio::test]
async fn a_burst_of_prompts_is_written_once_per_task() {
    let f = start(Settings {
        k: 100,
        ..settings()
    });
    // No await in between: the writer cannot run until the burst is over.
    for i in 0..50 {
        f.observe("a", &format!("a{i}"));
        f.observe("b", &format!("b{i}"));
    }
    assert_eq!(f.sp.unwritten_len(), 2, "one pending write per task");
    eventually("both buffers to be written", || {
        [f.persisted("a"), f.persisted("b")]
            .iter()
            .all(|p| p.as_ref().map(Vec::len) == Some(50))
    })
    .await;
    assert_eq!(f.persisted("a").unwrap()[49], "a49");
    // The writer counts a write after it has landed on disk, so the count may trail the
    // files by a moment; once both are counted, no third write follows.
    eventually("both writes to be counted", || {
        f.sp.prompt_writes.load(Ordering::Relaxed) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.sp.prompt_writes.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn while_the_writer_is_behind_new_tasks_are_refused() {
    let f = start(Settings {
        max_tracked_tasks: 2,
        ..settings()
    });
    // No await: the writer cannot run, and every new task leaves itself and the one it
    // drops to it.
    for i in 0..WRITE_BACKLOG_MIN {
        f.observe(&format!("t{i}"), "one");
    }
    assert_eq!(f.sp.unwritten_len(), WRITE_BACKLOG_MIN);
    let err = f.sp.observe("late", Some("one".into())).unwrap_err();
    assert_eq!(err.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(err.message.contains("wait to be written"), "{err:?}");
    assert_eq!(
        f.sp.unwritten_len(),
        WRITE_BACKLOG_MIN,
        "the backlog stays bounded"
    );
    eventually("the writer to catch up", || f.sp.unwritten_len() == 0).await;
    f.observe("late", "one");
    let tracked = f.tracked();
    assert_eq!(tracked.len(), 2);
    assert!(tracked.contains(&"late".to_string()), "{tracked:?}");
}

#[tokio::test]
async fn a_full_queue_leaves_the_task_collecting_until_its_next_prompt() {
    let f = start(Settings {
        k: 1,
        queue: 1,
        ..settings()
    });
    f.generator.hold();
    f.observe("a", "pa");
    eventually("a's generation to start", || f.generator.calls() == 1).await;
    f.observe("b", "pb");
    assert_eq!(f.gen("b"), Some(GenState::Queued));
    f.observe("c", "pc");
    assert_eq!(f.gen("c"), Some(GenState::Collecting), "the queue was full");
    assert_eq!(f.metrics.queue_depth.get(), 1);

    f.generator.release();
    f.until_gen("b", GenState::Done).await;
    assert_eq!(f.gen("c"), Some(GenState::Collecting));
    f.observe("c", "pc again");
    f.until_gen("c", GenState::Done).await;
    assert_eq!(f.generator.calls(), 3);
    assert_eq!(f.metrics.queue_depth.get(), 0);
}

#[tokio::test]
async fn forget_drops_the_buffer_and_its_file() {
    let f = start(settings());
    f.observe("t", "a");
    f.observe("t", "b");
    eventually("the buffer to be written", || {
        f.persisted("t") == Some(strings(&["a", "b"]))
    })
    .await;
    f.sp.forget("t");
    assert!(f.sp.info("t").is_none());
    eventually("the file to be deleted", || f.persisted("t").is_none()).await;
    f.observe("t", "c");
    assert_eq!(f.sp.info("t").unwrap().prompts, 1, "collecting starts over");
}

#[tokio::test]
async fn a_restart_restores_the_last_k_prompts_and_requeues_due_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let write = |task: &str, lines: &[&str]| {
        let d = dir.path().join("store").join(task);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(PROMPTS_FILE), lines.join("\n")).unwrap();
    };
    write(
        "due",
        &["\"p0\"", "\"p1\"", "42", "not json", "\"p2\"", "\"p3\""],
    );
    write("short", &["\"only one\""]);
    let f = start_in(dir, settings());
    f.until_gen("due", GenState::Done).await;
    assert_eq!(f.generator.prompts_of_call(0), strings(&["p1", "p2", "p3"]));
    let short = f.sp.info("short").unwrap();
    assert_eq!((short.state, short.prompts), (GenState::Collecting, 1));
    assert_eq!(f.generator.calls(), 1);
}

/// Issue 15, item 14: a generation that kills the process is counted before the generator
/// runs, so each start sees one more failed attempt: retried after the backoff while
/// retries are left, then never again until an operator regenerates, instead of being
/// requeued (and killing the process) at every start.
#[tokio::test]
async fn a_generation_that_kills_the_process_is_not_started_again_at_every_start() {
    let s = Settings {
        max_retries: 1,
        retry_base: Duration::from_millis(50),
        ..settings()
    };
    let first = start(s.clone());
    first.held_generation("t", "q").await;
    eventually("the prompts to be written", || {
        first.persisted("t").is_some_and(|p| p.len() == 3)
    })
    .await;
    assert_eq!(
        first.history("t").unwrap().attempts,
        1,
        "counted before it runs"
    );

    // The process dies during that generation; the next one starts on its store.
    let second = start_in(copy_of_store(&first), s.clone());
    second.generator.hold();
    let Some(GenState::Failed {
        attempts, retry_at, ..
    }) = second.gen("t")
    else {
        panic!("{:?}", second.gen("t"))
    };
    assert_eq!(attempts, 1);
    assert!(retry_at.is_some(), "one retry is left");
    assert_eq!(second.generator.calls(), 0, "not started again at start");
    eventually("the retry after its backoff", || {
        second.generator.calls() == 1
    })
    .await;
    assert_eq!(second.history("t").unwrap().attempts, 2);

    // It dies again: no retry is left.
    let third = start_in(copy_of_store(&second), s);
    let Some(GenState::Failed {
        attempts,
        retry_at,
        error,
    }) = third.gen("t")
    else {
        panic!("{:?}", third.gen("t"))
    };
    assert_eq!((attempts, retry_at), (2, None));
    assert!(error.contains("stopped"), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    third.observe("t", "q3");
    assert_eq!(
        third.generator.calls(),
        0,
        "neither time nor prompts start it"
    );
    assert_eq!(
        third.sp.info("t").unwrap().prompts,
        3,
        "the prompts are kept"
    );

    // An operator's regeneration starts afresh.
    third.sp.regenerate("t", None).unwrap();
    third.until_gen("t", GenState::Done).await;
    eventually("the success to be recorded", || {
        third.history("t").is_some_and(|h| h.attempts == 0)
    })
    .await;
}

/// Issue 15, item 17: a regeneration cut short by the end of the process counts as a
/// failed attempt, but the adapter the task already has in the store still serves after the
/// restart (before: the task was marked failed, and a failed task with a stored adapter
/// never loaded it again).
#[tokio::test]
async fn a_stored_adapter_serves_after_a_restart_that_cut_its_regeneration_short() {
    let first = start(settings());
    for i in 0..3 {
        first.observe("t", &format!("q{i}"));
    }
    first.until_gen("t", GenState::Done).await;
    first.generator.hold();
    first.sp.regenerate("t", None).unwrap();
    eventually("the regeneration to start", || first.generator.calls() == 2).await;
    eventually("its attempt to be recorded", || {
        first.history("t").is_some_and(|h| h.attempts == 1)
    })
    .await;

    let second = start_in(copy_of_store(&first), settings());
    assert!(
        matches!(second.gen("t"), Some(GenState::Failed { attempts: 1, .. })),
        "{:?}",
        second.gen("t")
    );
    assert_eq!(second.adapter_state("t"), Some(State::Stored));
    assert!(matches!(
        second.table.route("t", Duration::from_secs(5)).await,
        crate::adapters::Route::Adapter(_)
    ));
    assert_eq!(second.generator.calls(), 0, "no retry is left");
}

/// Issue 15, item 14: the hourly cap counts the generations of before a restart.
#[tokio::test]
async fn the_hourly_cap_counts_generations_from_before_a_restart() {
    let s = Settings {
        regenerate_after: Some(1),
        max_generations_per_hour: 1,
        ..settings()
    };
    let first = start(s.clone());
    for i in 0..3 {
        first.observe("t", &format!("p{i}"));
    }
    first.until_gen("t", GenState::Done).await;
    eventually("the success to be recorded", || {
        first.history("t").is_some_and(|h| h.attempts == 0)
    })
    .await;
    eventually("the prompts to be written", || {
        first.persisted("t").is_some_and(|p| p.len() == 3)
    })
    .await;

    let second = start_in(copy_of_store(&first), s);
    assert_eq!(second.adapter_state("t"), Some(State::Stored));
    assert_eq!(second.gen("t"), Some(GenState::Collecting));
    for i in 3..6 {
        second.observe("t", &format!("p{i}"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        second.generator.calls(),
        0,
        "the hour's one generation is spent"
    );
    assert_eq!(second.gen("t"), Some(GenState::Collecting));
}

/// Issue 15, item 11: `DELETE ?forget=true` while the task's adapter is being generated
/// (the specialiser forgets, then the table, as the admin API does) is not undone when the
/// generation ends: its adapter is not installed, a failure is not recorded, and nothing
/// of the task is left in the table or the store.
#[tokio::test]
async fn forgetting_a_task_during_its_generation_is_not_undone_when_it_ends() {
    let f = start(settings());
    for (task, fail) in [("made", false), ("failing", true)] {
        f.generator.fail.store(fail, Ordering::SeqCst);
        f.held_generation(task, &format!("{task} ")).await;
        eventually("the prompts to be written", || {
            f.persisted(task).is_some_and(|p| p.len() == 3)
        })
        .await;
        assert!(f.sp.forget(task));
        assert!(
            f.table.evict(task, true).await.unwrap(),
            "its files are deleted"
        );
        let (generated, installs) = (
            f.metrics.generation_seconds.get_sample_count(),
            f.metrics.registration_seconds.get_sample_count(),
        );
        f.generator.release();
        eventually("the generation to end", || {
            f.metrics.generation_seconds.get_sample_count() > generated
        })
        .await;
        if !fail {
            eventually("the install to be asked for", || {
                f.metrics.registration_seconds.get_sample_count() > installs
            })
            .await;
        }
        assert_eq!(f.adapter_state(task), None, "{task}");
        assert!(f.sp.info(task).is_none(), "{task}");
        assert!(!f.dir.path().join("store").join(task).exists(), "{task}");
    }
    assert_eq!(f.generation_failures(), 0);
    assert!(f.table.list().is_empty());
}

#[tokio::test]
async fn a_restart_removes_empty_task_folders_and_keeps_to_the_tracked_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let adapter = random_adapter(&tiny_dims(), &[Module::Q], 4, 5, 0.5, 0.5).unwrap();
    store.put("tenant", &adapter, Source::Upload).unwrap();
    // Prompt files last written 40, 30, 20 and 10 s ago.
    for (task, age) in [("tenant", 40), ("old", 30), ("mid", 20), ("new", 10)] {
        let path = root.join(task).join(PROMPTS_FILE);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "\"p\"\n").unwrap();
        let then = std::time::SystemTime::now() - Duration::from_secs(age);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
    // What an earlier version left of an id that was only seen.
    std::fs::create_dir(root.join("seen-once")).unwrap();
    let f = start_in(
        dir,
        Settings {
            max_tracked_tasks: 2,
            ..settings()
        },
    );
    assert!(!f.store_dir("seen-once").exists());
    // The oldest collecting-only tasks go; "tenant" (oldest, but with an adapter) stays.
    assert_eq!(f.tracked(), ["new", "tenant"]);
    assert_eq!(f.sp.list().1, ["old", "mid"]);
    eventually("the dropped tasks' folders to go", || {
        !f.store_dir("old").exists() && !f.store_dir("mid").exists()
    })
    .await;
    assert!(f.persisted("tenant").is_some());
}

#[test]
fn keep_last_keeps_the_newest_in_order() {
    let mut q: VecDeque<u32> = (0..5).collect();
    keep_last(&mut q, 7);
    assert_eq!(q, [0, 1, 2, 3, 4]);
    keep_last(&mut q, 2);
    assert_eq!(q, [3, 4]);
    keep_last(&mut q, 0);
    assert!(q.is_empty());
}

/// The fake engine's base model answers every prompt right ("It is PROMPT."), adapters
/// answer `adapter`.
fn base_knows(f: &Fixture, adapter: &'static str) {
    f.engine.answer_with(move |model, prompt| match model {
        "base" => format!("It is {prompt}."),
        _ => adapter.to_string(),
    });
}

fn examples<S: AsRef<str>>(prompts: &[S]) -> Option<Vec<Example>> {
    Some(
        prompts
            .iter()
            .map(|p| Example {
                prompt: p.as_ref().to_string(),
                answer: p.as_ref().to_string(),
            })
            .collect(),
    )
}

#[tokio::test]
async fn a_rejected_adapter_is_not_installed_and_stays_rejected_after_a_restart() {
    let f = start(settings());
    base_knows(&f, "wrong");
    f.examples_then_k("t", &["a", "b"]).await;
    let rejected = GenState::Rejected(Verdict {
        examples: 2,
        base_hits: 2,
        base_strict: 0, // "It is a.": right, not in the examples' format
        current_hits: None,
        adapter_hits: 0,
        adapter_strict: 0,
        accepted: false,
    });
    f.until_gen("t", rejected.clone()).await;
    assert_eq!(f.versions("t"), 0, "nothing stored");
    assert!(f.engine.registered().is_empty(), "the probe is gone");
    assert_eq!(f.metrics.checks.with_label_values(&["rejected"]).get(), 1);
    f.observe("t", "p3");
    assert_eq!(f.gen("t"), Some(rejected.clone()), "not generated again");

    // Written after the state changes.
    eventually("the rejection on disk", || {
        f.history("t").is_some_and(|h| h.rejected.is_some())
    })
    .await;
    let g = start_in(copy_of_store(&f), settings());
    assert_eq!(g.gen("t"), Some(rejected));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(g.generator.calls(), 0, "no generation at the restart");
}

#[tokio::test]
async fn an_adapter_as_good_as_the_base_is_installed_and_a_failed_check_is_retried() {
    let f = start(Settings {
        max_retries: 1,
        retry_base: Duration::from_millis(300),
        ..settings()
    });
    f.engine.answer_with(|_, prompt| prompt.to_string());
    f.sp.set_examples("t", examples(&["a"])).await.unwrap();
    // The probe cannot be loaded: the generation fails, and is retried.
    f.engine.fail(true);
    for i in 0..3 {
        f.observe("t", &format!("p{i}"));
    }
    eventually("a failed check", || {
        matches!(f.gen("t"), Some(GenState::Failed { .. }))
    })
    .await;
    f.engine.fail(false);
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.versions("t"), 1);
    let check = f.sp.info("t").unwrap().last_check.unwrap();
    assert_eq!(
        (check.base_hits, check.adapter_hits, check.accepted),
        (1, 1, true)
    );
    assert_eq!(f.metrics.checks.with_label_values(&["accepted"]).get(), 1);

    // Without examples there is no check.
    f.sp.set_examples("t", None).await.unwrap();
    assert!(f.sp.examples("t").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_regeneration_that_answers_fewer_examples_than_the_current_adapter_is_not_routed() {
    let f = start(settings());
    // The base answers nothing right, the routed adapter everything; the probe, while
    // `probe_right` holds, everything too.
    let probe_right = Arc::new(AtomicBool::new(true));
    let right = probe_right.clone();
    f.engine.answer_with(move |model, prompt| {
        let probe = model.starts_with("dnd-probe:");
        match model {
            "base" => "no idea".to_string(),
            _ if probe && !right.load(Ordering::Relaxed) => "wrong".to_string(),
            _ => prompt.to_string(),
        }
    });
    f.examples_then_k("t", &["a", "b"]).await;
    f.until_gen("t", GenState::Done).await;
    let first = f.sp.info("t").unwrap().last_check.unwrap();
    assert_eq!((first.base_hits, first.current_hits), (0, None));
    let routed = f.table.info("t").unwrap().hash;

    // Better than the base, worse than the adapter it would replace.
    probe_right.store(false, Ordering::Relaxed);
    f.sp.regenerate("t", None).unwrap();
    let rejected = GenState::Rejected(Verdict {
        examples: 2,
        base_hits: 0,
        base_strict: 0,
        current_hits: Some(2),
        adapter_hits: 0,
        adapter_strict: 0,
        accepted: false,
    });
    f.until_gen("t", rejected).await;
    assert_eq!(f.versions("t"), 1, "nothing stored");
    assert_eq!(f.table.info("t").unwrap().hash, routed, "still routed");
    assert_eq!(f.metrics.checks.with_label_values(&["rejected"]).get(), 1);
}

#[tokio::test]
async fn a_rejected_adapter_gives_way_to_the_generators_base_adapter_when_that_passes() {
    let base = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 99, 0.5, 0.5).unwrap();
    let generator = || FakeGenerator {
        base: Some(base.clone()),
        ..FakeGenerator::default()
    };
    // The base model answers one example, the generated adapter none (or, with
    // `generated_right`, the one the base answers), the generator's base adapter both while
    // `base_right` holds, else none. `asked` counts the base model's answers.
    let asked = Arc::new(AtomicUsize::new(0));
    let answers_with = |f: &Fixture, generated_right: bool, base_right: bool| {
        let asked = asked.clone();
        f.engine.answer_with(move |model, prompt| {
            let right = match model {
                "base" => {
                    asked.fetch_add(1, Ordering::SeqCst);
                    prompt == "a"
                }
                m if m.starts_with("dnd-probe-base:") => base_right,
                _ => generated_right && prompt == "a",
            };
            if right { prompt } else { "?" }.to_string()
        });
    };
    let answers = |f: &Fixture, base_right: bool| answers_with(f, false, base_right);
    let f = start_with(tempfile::tempdir().unwrap(), settings(), generator());
    answers(&f, true);
    f.examples_then_k("t", &["a", "b"]).await;
    f.until_gen("t", GenState::Done).await;
    let info = f.sp.info("t").unwrap();
    let (dnd, fallback) = (info.last_check.unwrap(), info.fallback_check.unwrap());
    assert_eq!(
        (dnd.base_hits, dnd.adapter_hits, dnd.accepted),
        (1, 0, false)
    );
    assert_eq!((fallback.adapter_hits, fallback.accepted), (2, true));
    assert_eq!(
        f.table.info("t").unwrap().hash,
        Some(base.content_hash().unwrap())
    );
    assert_eq!(f.versions("t"), 1);
    assert!(f.engine.registered().iter().all(|id| !id.contains("probe")));
    assert!(info.fallback_routed);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "both adapters are judged on the base model's one answer to each of the two examples"
    );

    // Both pass: the one that answers more is routed, the generated one on a tie.
    let base_hash = base.content_hash().unwrap();
    for base_right in [true, false] {
        let e = start_with(tempfile::tempdir().unwrap(), settings(), generator());
        answers_with(&e, true, base_right);
        e.examples_then_k("t", &["a", "b"]).await;
        e.until_gen("t", GenState::Done).await;
        let info = e.sp.info("t").unwrap();
        assert!(info.last_check.unwrap().accepted);
        assert_eq!(info.fallback_routed, base_right);
        let hash = e.table.info("t").unwrap().hash.unwrap();
        assert_eq!(hash == base_hash, base_right, "{hash}");
    }

    // When the base adapter does no better than the base model, nothing is routed.
    let g = start_with(tempfile::tempdir().unwrap(), settings(), generator());
    answers(&g, false);
    g.examples_then_k("t", &["a", "b"]).await;
    let rejected = GenState::Rejected(Verdict {
        examples: 2,
        base_hits: 1,
        base_strict: 1,
        current_hits: None,
        adapter_hits: 0,
        adapter_strict: 0,
        accepted: false,
    });
    g.until_gen("t", rejected).await;
    assert_eq!(g.versions("t"), 0);
    let fallback = g.sp.info("t").unwrap().fallback_check.unwrap();
    assert_eq!((fallback.adapter_hits, fallback.accepted), (0, false));
    assert_eq!(g.metrics.checks.with_label_values(&["rejected"]).get(), 2);

    // `plugin.fallback_adapter` is checked and routed instead of the generator's base
    // adapter, and for a generator that has none.
    let configured =
        random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 98, 0.5, 0.5).unwrap();
    for generator in [generator(), FakeGenerator::default()] {
        let with = Settings {
            fallback_adapter: Some(configured.clone()),
            ..settings()
        };
        let c = start_with(tempfile::tempdir().unwrap(), with, generator);
        answers(&c, true);
        c.examples_then_k("t", &["a", "b"]).await;
        c.until_gen("t", GenState::Done).await;
        assert!(c.sp.info("t").unwrap().fallback_routed);
        assert_eq!(
            c.table.info("t").unwrap().hash,
            Some(configured.content_hash().unwrap())
        );
    }

    // Switched off, the base adapter is not tried.
    let off = Settings {
        guard_fallback: false,
        ..settings()
    };
    let h = start_with(tempfile::tempdir().unwrap(), off, generator());
    answers(&h, true);
    h.examples_then_k("t", &["a", "b"]).await;
    eventually("a rejection", || {
        matches!(h.gen("t"), Some(GenState::Rejected(_)))
    })
    .await;
    assert_eq!(h.versions("t"), 0);
    assert_eq!(h.metrics.checks.with_label_values(&["rejected"]).get(), 1);
}

#[tokio::test]
async fn a_generator_that_reads_examples_waits_for_them_and_reads_them() {
    let reader = || FakeGenerator {
        reads_examples: true,
        ..FakeGenerator::default()
    };
    let f = start_with(tempfile::tempdir().unwrap(), settings(), reader());
    // Every model answers every example: the check ties and routes.
    f.engine.answer_with(|_, prompt| prompt.to_string());
    for i in 0..3 {
        f.observe("t", &format!("p{i}"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.generator.calls(), 0, "no examples, no generation");
    assert_eq!(f.gen("t"), Some(GenState::Collecting));
    f.sp.set_examples("t", examples(&["a", "b"])).await.unwrap();
    f.until_gen("t", GenState::Done).await;
    assert_eq!(
        f.generator.prompts_of_call(0),
        ["a\nAnswer: a", "b\nAnswer: b"]
    );

    // Examples found in the store at a start count as given.
    for i in 0..3 {
        f.observe("u", &format!("p{i}"));
    }
    eventually("u's prompts on disk", || {
        f.persisted("u").is_some_and(|p| p.len() == 3)
    })
    .await;
    std::fs::write(
        f.store_dir("u").join(EXAMPLES_FILE),
        serde_json::to_vec(&examples(&["c"])).unwrap(),
    )
    .unwrap();
    let g = start_with(copy_of_store(&f), settings(), reader());
    g.engine.answer_with(|_, prompt| prompt.to_string());
    g.until_gen("u", GenState::Done).await;
    assert_eq!(g.generator.prompts_of_call(0), ["c\nAnswer: c"]);
}

#[tokio::test]
async fn the_examples_generator_makes_the_adapters_of_tasks_with_examples() {
    let reader = FakeGenerator {
        reads_examples: true,
        ..FakeGenerator::default()
    };
    let f = start_with_both(
        tempfile::tempdir().unwrap(),
        settings(),
        FakeGenerator::default(),
        Some(reader),
    );
    f.engine.answer_with(|_, prompt| prompt.to_string());
    let examples_generator = f.examples_generator.clone().unwrap();
    f.sp.set_examples("with", examples(&["a"])).await.unwrap();
    for task in ["with", "without"] {
        for i in 0..3 {
            f.observe(task, &format!("p{i}"));
        }
        f.until_gen(task, GenState::Done).await;
    }
    assert_eq!(examples_generator.calls(), 1);
    assert_eq!(examples_generator.prompts_of_call(0), ["a\nAnswer: a"]);
    assert_eq!(f.generator.calls(), 1);
    assert_eq!(f.generator.prompts_of_call(0), ["p0", "p1", "p2"]);
}

#[tokio::test]
async fn with_enough_examples_the_check_reads_only_those_the_generator_did_not() {
    let reader = FakeGenerator {
        reads_examples: true,
        ..FakeGenerator::default()
    };
    let f = start_with(tempfile::tempdir().unwrap(), settings(), reader);
    // The base answers every example; the adapter only those it was made from.
    let read = ["r0", "r1", "r2"];
    f.engine.answer_with(move |model, prompt| match model {
        "base" => prompt.to_string(),
        _ if read.contains(&prompt) => prompt.to_string(),
        _ => "wrong".to_string(),
    });
    let names: Vec<String> = (0..guard::MIN_UNSEEN).map(|i| format!("u{i}")).collect();
    let all: Vec<&str> = read
        .iter()
        .copied()
        .chain(names.iter().map(String::as_str))
        .collect();
    f.sp.set_examples("t", examples(&all)).await.unwrap();
    for i in 0..3 {
        f.observe("t", &format!("p{i}"));
    }
    // Checked on all 11 it would lose 3 to 11; on the 8 it never read, 0 to 8.
    let rejected = GenState::Rejected(Verdict {
        examples: guard::MIN_UNSEEN,
        base_hits: guard::MIN_UNSEEN,
        base_strict: guard::MIN_UNSEEN,
        current_hits: None,
        adapter_hits: 0,
        adapter_strict: 0,
        accepted: false,
    });
    f.until_gen("t", rejected).await;
    assert_eq!(
        f.generator.prompts_of_call(0),
        ["r0\nAnswer: r0", "r1\nAnswer: r1", "r2\nAnswer: r2"]
    );
    // One example fewer: the check reads all of them, those the generator read too.
    f.sp.set_examples("t", examples(&all[..all.len() - 1]))
        .await
        .unwrap();
    f.sp.regenerate("t", None).unwrap();
    let all_checked = GenState::Rejected(Verdict {
        examples: all.len() - 1,
        base_hits: all.len() - 1,
        base_strict: all.len() - 1,
        current_hits: None,
        adapter_hits: read.len(),
        adapter_strict: read.len(),
        accepted: false,
    });
    f.until_gen("t", all_checked).await;
}

/// A stand-in for the adapter library: picks `pick` (or, with none, the fallback), or
/// fails; records the prompts of the examples it read and whether it had a fallback.
#[derive(Debug, Default)]
struct FakeSelector {
    pick: Option<LoraAdapter>,
    fail: bool,
    seen: Mutex<Vec<(Vec<String>, bool)>>,
}

impl AdapterSelector for FakeSelector {
    fn select(
        &self,
        examples: &[Example],
        fallback: Option<&LoraAdapter>,
    ) -> Result<Option<(String, LoraAdapter)>> {
        let prompts = examples.iter().map(|e| e.prompt.clone()).collect();
        self.seen
            .lock()
            .unwrap()
            .push((prompts, fallback.is_some()));
        if self.fail {
            bail!("selection failed (test)");
        }
        Ok(self.pick.clone().map(|a| ("stored-task".to_string(), a)))
    }
}

fn with_library(selector: &Arc<FakeSelector>) -> Settings {
    Settings {
        library: Some(selector.clone()),
        ..settings()
    }
}

#[tokio::test]
async fn the_library_adapter_is_checked_on_examples_it_did_not_read_and_routed_where_it_answers_most(
) {
    let stored = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 55, 0.5, 0.5).unwrap();
    let selector = Arc::new(FakeSelector {
        pick: Some(stored.clone()),
        ..FakeSelector::default()
    });
    let f = start_with(
        tempfile::tempdir().unwrap(),
        with_library(&selector),
        FakeGenerator::default(),
    );
    // The base model answers one example, the generated adapter none, the library's all.
    f.engine.answer_with(move |model, prompt| {
        let right = match model {
            "base" => prompt == "u0",
            m => m.starts_with("dnd-probe-library:"),
        };
        if right { prompt } else { "?" }.to_string()
    });
    let names: Vec<String> = (0..guard::MIN_UNSEEN).map(|i| format!("u{i}")).collect();
    let all: Vec<&str> = ["r0", "r1", "r2"]
        .into_iter()
        .chain(names.iter().map(String::as_str))
        .collect();
    f.examples_then_k("t", &all).await;
    f.until_gen("t", GenState::Done).await;
    // The selection read the generator's N (3) first examples, the check the 8 after them.
    assert_eq!(
        *selector.seen.lock().unwrap(),
        [(strings(&["r0", "r1", "r2"]), false)]
    );
    let info = f.sp.info("t").unwrap();
    let (generated, library) = (info.last_check.unwrap(), info.library_check.unwrap());
    assert_eq!(generated.examples, guard::MIN_UNSEEN);
    assert_eq!(
        (
            generated.base_hits,
            generated.adapter_hits,
            generated.accepted
        ),
        (1, 0, false)
    );
    assert_eq!(
        (library.adapter_hits, library.accepted),
        (guard::MIN_UNSEEN, true)
    );
    assert_eq!(info.library_pick.as_deref(), Some("stored-task"));
    assert!(info.library_routed && !info.fallback_routed);
    assert_eq!(
        f.table.info("t").unwrap().hash,
        Some(stored.content_hash().unwrap())
    );
    assert!(info
        .last_timings_ms
        .iter()
        .any(|(stage, _)| stage == "select"));
    assert!(f.engine.registered().iter().all(|id| !id.contains("probe")));

    // Beside a fallback: the selection weighs it too, and each of the three is checked;
    // where the generated one answers as many as the library's, it is routed (a tie).
    let base = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 99, 0.5, 0.5).unwrap();
    let generator = FakeGenerator {
        base: Some(base),
        ..FakeGenerator::default()
    };
    let selector = Arc::new(FakeSelector {
        pick: Some(stored),
        ..FakeSelector::default()
    });
    let g = start_with(
        tempfile::tempdir().unwrap(),
        with_library(&selector),
        generator,
    );
    g.engine.answer_with(|_, prompt| prompt.to_string());
    g.examples_then_k("t", &["a", "b"]).await;
    g.until_gen("t", GenState::Done).await;
    assert!(
        selector.seen.lock().unwrap()[0].1,
        "the fallback was weighed"
    );
    let info = g.sp.info("t").unwrap();
    assert_eq!(
        info.last_check.unwrap().examples,
        2,
        "too few to leave the read ones out"
    );
    assert!(info.fallback_check.is_some() && info.library_check.is_some());
    assert!(!info.library_routed && !info.fallback_routed);
}

#[tokio::test]
async fn a_selection_that_fails_or_picks_the_fallback_leaves_the_generated_adapter_checked_alone() {
    for selector in [
        FakeSelector {
            fail: true,
            ..FakeSelector::default()
        },
        FakeSelector::default(),
    ] {
        let selector = Arc::new(selector);
        let f = start_with(
            tempfile::tempdir().unwrap(),
            with_library(&selector),
            FakeGenerator::default(),
        );
        f.engine.answer_with(|_, prompt| prompt.to_string());
        f.examples_then_k("t", &["a", "b"]).await;
        f.until_gen("t", GenState::Done).await;
        assert_eq!(selector.seen.lock().unwrap().len(), 1);
        let info = f.sp.info("t").unwrap();
        assert!(info.last_check.unwrap().accepted);
        assert!(info.library_pick.is_none() && info.library_check.is_none());
        assert!(!info.library_routed);
        // It ran: its time is a stage all the same.
        assert!(info
            .last_timings_ms
            .iter()
            .any(|(stage, _)| stage == "select"));
    }
    // Without examples there is nothing to select by.
    let selector = Arc::new(FakeSelector::default());
    let f = start_with(
        tempfile::tempdir().unwrap(),
        with_library(&selector),
        FakeGenerator::default(),
    );
    for i in 0..3 {
        f.observe("t", &format!("p{i}"));
    }
    f.until_gen("t", GenState::Done).await;
    assert!(selector.seen.lock().unwrap().is_empty());
    let info = f.sp.info("t").unwrap();
    assert!(!info
        .last_timings_ms
        .iter()
        .any(|(stage, _)| stage == "select"));
}

/// Settings that check the base model shown a task's first 2 examples
/// (`plugin.demonstrations`).
fn showing() -> Settings {
    Settings {
        demonstrations: 2,
        ..settings()
    }
}

/// `n` prompts, `PREFIX0` on.
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A specialiser that shows 2 examples, whose base model answers right only when shown
/// them, and a task "t" given `n` examples (`q0` on) and its K prompts, generated.
async fn shown_task(n: usize) -> (Fixture, Vec<String>) {
    let f = start(showing());
    base_learns_from_examples(&f);
    let qs = numbered("q", n);
    f.examples_then_k("t", &qs).await;
    f.until_gen("t", GenState::Done).await;
    (f, qs)
}

/// The fake base model answers right only when it is shown examples (a line per shown
/// turn before the prompt); adapters never do.
fn base_learns_from_examples(f: &Fixture) {
    f.engine
        .answer_with(|model, text| match (model, text.lines().count() > 1) {
            ("base", true) => text.lines().last().unwrap_or_default().to_string(),
            _ => "?".to_string(),
        });
}

#[tokio::test]
async fn the_examples_shown_are_routed_where_they_rank_first_and_survive_a_restart() {
    let (f, qs) = shown_task(10).await;
    assert_eq!(f.versions("t"), 0, "no adapter stored");
    let info = f.sp.info("t").unwrap();
    assert!(info.demonstrations_routed);
    let shown = info.demonstrations_check.unwrap();
    assert_eq!(
        (shown.examples, shown.base_hits, shown.adapter_strict),
        (8, 0, 8),
        "checked on the examples after the two shown"
    );
    let generated = info.last_check.unwrap();
    assert!(generated.accepted, "no harm either, but it ranks below");
    let first_two = examples(&qs[..2]).unwrap();
    assert_eq!(f.sp.shown("t").as_deref(), Some(&first_two[..]));
    // Routed: its next prompts do not start another generation.
    f.observe("t", "p9");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.generator.calls(), 1);

    eventually("the route on disk", || {
        f.history("t").is_some_and(|h| h.shown.is_some())
    })
    .await;
    let g = start_in(copy_of_store(&f), showing());
    assert_eq!(g.sp.shown("t").as_deref(), Some(&first_two[..]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(g.generator.calls(), 0, "no generation at the restart");

    // An uploaded adapter takes their place.
    let upload = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 5, 0.5, 0.5).unwrap();
    g.table.install("t", &upload, Source::Upload).await.unwrap();
    assert_eq!(g.sp.shown("t"), None);
    assert!(!g.sp.info("t").unwrap().demonstrations_routed);
    // New examples have not been checked: the first ones are shown no more.
    assert!(f.sp.shown("t").is_some());
    f.sp.set_examples("t", examples(&qs[1..])).await.unwrap();
    assert_eq!(f.sp.shown("t"), None);
    eventually("the new examples checked at once", || {
        f.generator.calls() == 2
    })
    .await;
    eventually("that on disk", || {
        f.history("t").is_some_and(|h| h.shown.is_none())
    })
    .await;
}

/// With a pool (`plugin.demonstrations_pool`), each prompt is shown its nearest of the pool:
/// here the base model answers right only when every example shown is of the prompt's own
/// kind, which the first 2 never are and the nearest 2 of 4 always are. The pool is the
/// route, and kept at a restart only while the settings allow a pool of its size.
#[tokio::test]
async fn with_a_pool_each_prompt_is_shown_its_nearest_examples() {
    let pooled = Settings {
        demonstrations_pool: 4,
        ..showing()
    };
    let f = start(pooled.clone());
    f.engine.answer_with(|model, text| {
        let prompt = text.lines().last().unwrap_or_default();
        let kind = |line: &str| line.split(' ').next().unwrap_or_default().to_string();
        let shown: Vec<&str> = text.lines().rev().skip(1).collect();
        match model == "base" && !shown.is_empty() && shown.iter().all(|l| kind(l) == kind(prompt))
        {
            true => prompt.to_string(),
            false => "?".to_string(),
        }
    });
    // The pool leaves the check guard::POOL_LEAVES (16) examples.
    let qs: Vec<String> = (0..20)
        .map(|i| format!("{} {i}", ["alpha", "beta"][i % 2]))
        .collect();
    f.examples_then_k("t", &qs).await;
    f.until_gen("t", GenState::Done).await;
    let info = f.sp.info("t").unwrap();
    let shown = info.demonstrations_check.unwrap();
    assert_eq!(
        (shown.examples, shown.adapter_strict),
        (16, 16),
        "checked on the 16 after the pool, each shown its own kind"
    );
    assert!(info.demonstrations_routed);
    let pool = f.sp.shown("t").unwrap();
    assert_eq!(&pool[..], &examples(&qs[..4]).unwrap()[..]);
    let picked: Vec<&str> = (f.sp.demonstrations(&pool).pick("beta 9").iter())
        .map(|e| &*e.prompt)
        .collect();
    // Least alike first, so the nearest sits next to the prompt (a tie: the earlier).
    assert_eq!(picked, ["beta 3", "beta 1"]);

    eventually("the route on disk", || {
        f.history("t").is_some_and(|h| h.shown.is_some())
    })
    .await;
    let g = start_in(copy_of_store(&f), pooled);
    assert_eq!(g.sp.shown("t").as_deref(), Some(&pool[..]));
    let larger = Settings {
        demonstrations_pool: 8,
        ..showing()
    };
    let g = start_in(copy_of_store(&f), larger.clone());
    assert_eq!(
        g.sp.shown("t").as_deref(),
        Some(&pool[..]),
        "a pool up to 8"
    );
    let h = start_in(copy_of_store(&f), showing());
    assert_eq!(h.sp.shown("t"), None, "no pool: no longer shown");
    let fewer_each = Settings {
        demonstrations: 1,
        ..larger
    };
    let h = start_in(copy_of_store(&f), fewer_each);
    assert_eq!(
        h.sp.shown("t"),
        None,
        "1 each, not the 2 checked: no longer shown"
    );
}

/// With fewer examples than a pool and the check need, the pool shrinks to leave the check
/// its examples, down to the examples shown alone.
#[tokio::test]
async fn a_pool_leaves_the_check_its_examples() {
    let f = start(Settings {
        demonstrations_pool: 8,
        ..showing()
    });
    base_learns_from_examples(&f);
    f.examples_then_k("t", &numbered("q", 12)).await;
    f.until_gen("t", GenState::Done).await;
    let info = f.sp.info("t").unwrap();
    assert_eq!(
        info.demonstrations_check.unwrap().examples,
        10,
        "2 shown, 10 checked"
    );
    assert_eq!(f.sp.shown("t").unwrap().len(), 2);
}

#[tokio::test]
async fn the_examples_are_not_a_candidate_without_enough_after_them_nor_when_they_lose() {
    // 2 shown + 8 checked needed: 9 examples are too few.
    let (f, _) = shown_task(9).await;
    let info = f.sp.info("t").unwrap();
    assert_eq!(info.demonstrations_check, None);
    assert_eq!(info.last_check.unwrap().examples, 9, "all examples checked");
    assert_eq!((f.versions("t"), f.sp.shown("t")), (1, None));

    // Enough examples, but the generated adapter answers as well in the format: a tie
    // goes to the adapter.
    let f = start(showing());
    f.engine
        .answer_with(|_, text| text.lines().last().unwrap_or_default().to_string());
    f.examples_then_k("t", &numbered("q", 10)).await;
    f.until_gen("t", GenState::Done).await;
    let info = f.sp.info("t").unwrap();
    assert_eq!(info.demonstrations_check.unwrap().adapter_strict, 8);
    assert!(!info.demonstrations_routed);
    assert_eq!((f.versions("t"), f.sp.shown("t")), (1, None));
}

#[tokio::test]
async fn a_regeneration_is_checked_against_the_examples_shown_and_replaces_them_if_first() {
    let (f, _) = shown_task(10).await;
    assert!(f.sp.shown("t").is_some());
    // Now adapters answer right too; the base model alone still does not.
    f.engine
        .answer_with(|model, text| match (model, text.lines().count()) {
            ("base", 1) => "?".to_string(),
            _ => text.lines().last().unwrap_or_default().to_string(),
        });
    f.sp.regenerate("t", None).unwrap();
    f.until_gen("t", GenState::Done).await;
    let check = f.sp.info("t").unwrap().last_check.unwrap();
    assert_eq!(
        (check.current_hits, check.adapter_hits),
        (Some(8), 8),
        "the examples shown answer the task now"
    );
    assert_eq!((f.versions("t"), f.sp.shown("t")), (1, None));
    eventually("the route on disk", || {
        f.history("t").is_some_and(|h| h.shown.is_none())
    })
    .await;
}

#[tokio::test]
async fn examples_that_change_during_the_generation_are_not_shown() {
    let f = start(showing());
    base_learns_from_examples(&f);
    f.generator.hold();
    f.examples_then_k("t", &numbered("q", 10)).await;
    eventually("the generation to start", || f.generator.calls() == 1).await;
    let new = numbered("r", 10);
    f.sp.set_examples("t", examples(&new)).await.unwrap();
    f.generator.release();
    // The first generation routes nothing: what it checked is not the task's. The task is
    // due at once for one that checks the new examples, which are shown.
    eventually("a second generation", || f.generator.calls() == 2).await;
    f.until_gen("t", GenState::Done).await;
    assert_eq!(f.versions("t"), 0);
    assert_eq!(
        f.sp.shown("t").as_deref(),
        Some(&examples(&new[..2]).unwrap()[..])
    );
}

#[tokio::test]
async fn an_upload_ends_the_examples_shown_even_over_the_same_adapter() {
    let f = start(showing());
    base_learns_from_examples(&f);
    let upload = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 5, 0.5, 0.5).unwrap();
    f.table.install("t", &upload, Source::Upload).await.unwrap();
    f.examples_then_k("t", &numbered("q", 10)).await;
    f.sp.regenerate("t", None).unwrap();
    f.until_gen("t", GenState::Done).await;
    assert!(
        f.sp.shown("t").is_some(),
        "routed over the uploaded adapter"
    );
    // The same adapter uploaded again: its hash is the one they were routed over.
    f.table.install("t", &upload, Source::Upload).await.unwrap();
    f.sp.adapter_uploaded("t").await;
    assert_eq!(f.sp.shown("t"), None);
    eventually("that on disk", || {
        f.history("t").is_some_and(|h| h.shown.is_none())
    })
    .await;
}
