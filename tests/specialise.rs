//! Automatic specialisation on the tiny model: K tagged requests make an adapter appear,
//! single-flight generation, tenant mode, failures, restart, regeneration and metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use mistralrs_dnd::format::{LoraAdapter, Module};
use mistralrs_dnd::server::config::TaskSource;
use mistralrs_dnd::server::specialise::AdapterGenerator;
use mistralrs_dnd::testing::{random_adapter, tiny_dims};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

/// A stand-in generator for the plumbing: a random adapter seeded by the prompts, so
/// different prompts give different adapters. It counts its calls, can be made to fail,
/// and can be slowed down.
#[derive(Default)]
struct TestGenerator {
    calls: AtomicUsize,
    fail: AtomicBool,
    delay_ms: u64,
    /// While set, `generate` does not return (a generation cut short by a kill).
    hold: AtomicBool,
}

impl AdapterGenerator for TestGenerator {
    fn batch_size(&self) -> usize {
        3
    }
    fn generate(&self, prompts: &[String]) -> Result<LoraAdapter> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(self.delay_ms));
        while self.hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.fail.load(Ordering::SeqCst) {
            bail!("generator folder unreadable (test)");
        }
        let seed = prompts
            .iter()
            .flat_map(|p| p.bytes())
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, seed, 0.5, 0.5)
    }
}

async fn admin_get(s: &TestServer, path: &str) -> Value {
    s.admin(Method::GET, path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_requests_make_an_adapter_that_later_requests_use() {
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(TestGenerator::default());
    let s = start_with(tiny_config(dir.path()), Some(g.clone())).await;
    let m0 = metrics(&s).await;
    let base = s.chat("question 0", |rb, _| rb).await.content();
    for i in 0..3 {
        let r = s.chat_task(&format!("question {i}"), "qa").await;
        assert_eq!(
            r.adapter.as_deref(),
            Some("base"),
            "before K prompts the base answers"
        );
    }
    s.wait_state("qa", "resident").await;
    let r = s.chat_task("question 0", "qa").await;
    assert!(
        r.adapter.as_deref().unwrap().starts_with("qa@"),
        "{:?}",
        r.adapter
    );
    assert_ne!(
        r.content(),
        base,
        "the generated adapter changes the output"
    );
    let v = s.entry("qa").await;
    assert_eq!(v["source"], "generated");
    assert_eq!(v["generation"]["state"], "done");
    assert_eq!(g.calls.load(Ordering::SeqCst), 1);

    let m1 = metrics(&s).await;
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    assert_eq!(d("dnd_requests_total{served_by=\"base\"}"), 4.0);
    assert_eq!(d("dnd_requests_total{served_by=\"adapter\"}"), 1.0);
    assert_eq!(d("dnd_generation_seconds_count"), 1.0);
    assert_eq!(d("dnd_registration_seconds_count"), 1.0);
    assert_eq!(metric(&m1, "dnd_adapters{where=\"resident\"}"), 1.0);
    assert_eq!(metric(&m1, "dnd_tasks{state=\"resident\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_start_one_generation() {
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(TestGenerator {
        delay_ms: 300,
        ..Default::default()
    });
    let s = Arc::new(start_with(tiny_config(dir.path()), Some(g.clone())).await);
    let jobs: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.chat_task(&format!("burst {i}"), "burst").await.status })
        })
        .collect();
    for j in jobs {
        assert_eq!(j.await.unwrap(), 200);
    }
    s.wait_state("burst", "resident").await;
    assert_eq!(g.calls.load(Ordering::SeqCst), 1, "single flight per task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_mode_gives_each_tenant_its_own_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.task_id_sources = vec![TaskSource::User];
    let g = Arc::new(TestGenerator::default());
    let s = start_with(c, Some(g)).await;
    for tenant in ["alice", "bob"] {
        for i in 0..3 {
            let r = s
                .chat(&format!("{tenant} asks {i}"), |rb, b| {
                    b["user"] = json!(tenant);
                    rb
                })
                .await;
            assert_eq!(r.status, 200);
        }
    }
    s.wait_state("alice", "resident").await;
    s.wait_state("bob", "resident").await;
    let (a, b) = (s.entry("alice").await, s.entry("bob").await);
    assert_ne!(a["hash"], b["hash"]);
    let r = s
        .chat("hi", |rb, b| {
            b["user"] = json!("alice");
            rb
        })
        .await;
    assert!(r.adapter.as_deref().unwrap().starts_with("alice@"));
    // In tenant mode the header does not name a task.
    let r = s.chat_task("hi", "alice").await;
    assert_eq!(r.adapter.as_deref(), Some("base"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_generation_keeps_the_base_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.max_retries = 0;
    let g = Arc::new(TestGenerator::default());
    g.fail.store(true, Ordering::SeqCst);
    let s = start_with(c, Some(g.clone())).await;
    for i in 0..3 {
        assert_eq!(s.chat_task(&format!("q{i}"), "flaky").await.status, 200);
    }
    s.wait_state("flaky", "failed").await;
    let v = s.entry("flaky").await;
    assert!(v["error"].as_str().unwrap().contains("unreadable"), "{v}");
    assert_eq!(v["generation"]["state"], "failed");
    let r = s.chat_task("q", "flaky").await;
    assert_eq!((r.status, r.adapter.as_deref()), (200, Some("base")));
    assert!(
        metric(
            &metrics(&s).await,
            "dnd_failures_total{kind=\"generation\"}"
        ) >= 1.0
    );

    g.fail.store(false, Ordering::SeqCst);
    let r = s
        .admin(Method::POST, "/adapters/flaky/regenerate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    s.wait_state("flaky", "resident").await;

    // Regenerating from given prompts makes a new version.
    let h1 = s.entry("flaky").await["hash"].clone();
    let r = s
        .admin(Method::POST, "/adapters/flaky/regenerate")
        .json(&json!({"prompts": ["other a", "other b", "other c"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v = s
        .entry_when("flaky", Duration::from_secs(5), |v| v["hash"] != h1)
        .await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_regeneration_after_m_more_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.regenerate_after = Some(2);
    let g = Arc::new(TestGenerator::default());
    let s = start_with(c, Some(g.clone())).await;
    for i in 0..3 {
        s.chat_task(&format!("p{i}"), "t").await;
    }
    s.wait_state("t", "resident").await;
    let h1 = s.entry("t").await["hash"].clone();
    for i in 3..5 {
        s.chat_task(&format!("p{i}"), "t").await;
    }
    let two = |v: &Value| v["versions"].as_array().unwrap().len() == 2;
    let v = s.entry_when("t", Duration::from_secs(5), two).await;
    assert_ne!(v["hash"], h1);
    assert_eq!(g.calls.load(Ordering::SeqCst), 2);

    // An adapter an operator uploaded is never replaced automatically.
    let up = s
        .upload(
            "manual",
            &random_adapter(&tiny_dims(), &[Module::Q], 4, 5, 0.5, 0.5).unwrap(),
        )
        .await;
    assert_eq!(up.status, 201);
    for i in 0..6 {
        s.chat_task(&format!("m{i}"), "manual").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(g.calls.load(Ordering::SeqCst), 2);
    assert_eq!(s.entry("manual").await["source"], "upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_task_limit_drops_the_oldest_idle_task_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.max_tracked_tasks = 2;
    let s = start_with(c, Some(Arc::new(TestGenerator::default()))).await;
    for t in ["first", "second", "third"] {
        s.chat_task("one prompt", t).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let list = s.list().await;
    assert_eq!(list["dropped_tasks"], json!(["first"]));
    let tasks: Vec<&str> = list["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["second", "third"]);
    assert_eq!(metric(&metrics(&s).await, "dnd_dropped_tasks_total"), 1.0);
}

/// A server at its task limits answers a new task's request 503 and a new task's upload
/// 507, in the OpenAI error shape, leaves nothing of them in the store, and goes on serving
/// the tenants it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_new_tasks_but_serves_its_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.max_tracked_tasks = 1;
    c.plugin.max_stored_tasks = 1;
    let s = start_with(c, Some(Arc::new(TestGenerator::default()))).await;
    let adapter = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 1, 0.5, 0.5).unwrap();
    assert_eq!(s.upload("tenant", &adapter).await.status, 201);
    let r = s.chat_task("hello", "tenant").await;
    assert!(
        r.adapter.as_deref().unwrap().starts_with("tenant@"),
        "{:?}",
        r.adapter
    );

    // A client rotating through new ids: no collecting task to drop for it.
    let r = s.chat_task("hello", "rotated-1").await;
    assert_eq!(r.status, 503, "{}", r.json);
    assert_eq!(r.json["error"]["type"], "server_error");
    assert_eq!(r.json["error"]["code"], "too_many_tasks");
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_tracked_tasks"), "{message}");
    assert_eq!(metric(&metrics(&s).await, "dnd_refused_tasks_total"), 1.0);
    let r = s.chat_task("hello again", "tenant").await;
    assert_eq!(r.status, 200);
    assert!(r.adapter.as_deref().unwrap().starts_with("tenant@"));
    assert_eq!(s.chat("hello", |rb, _| rb).await.status, 200);

    let up = s.upload("second", &adapter).await;
    assert_eq!(up.status, 507, "{}", up.json);
    assert_eq!(up.json["error"]["code"], "store_full");
    assert_eq!(up.json["error"]["type"], "server_error");
    for t in ["second", "rotated-1"] {
        assert!(!dir.path().join("store").join(t).exists(), "{t}");
    }
}

/// The generation cut short counts as a failed attempt (it may be what ended the process):
/// it is started again after `retry_base_s`, here at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_generation_keeps_the_prompts_and_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.retry_base_s = 0;
    // This server's generator does not finish while the test runs: it stands for a killed
    // one (released at the end, failing, so that the runtime can shut down).
    let hung = Arc::new(TestGenerator::default());
    hung.hold.store(true, Ordering::SeqCst);
    hung.fail.store(true, Ordering::SeqCst);
    // Released however the test ends: a failed assertion must fail the test, not leave the
    // runtime's shutdown waiting for this generation forever.
    let _release = Release(hung.clone());
    {
        let s = start_with(c.clone(), Some(hung.clone())).await;
        for i in 0..3 {
            s.chat_task(&format!("kept {i}"), "survivor").await;
        }
        until_generation(&s, "survivor", "generating").await;
        // The prompt writer runs beside the generation: the file comes soon after.
        let prompts = dir.path().join("store/survivor/prompts.jsonl");
        let soon = Duration::from_secs(5);
        wait_for("prompt file", soon, || prompts.exists()).await;
        // The attempt is on disk before the generator is called.
        wait_for("generator call", soon, || {
            hung.calls.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(dir.path().join("store/survivor/generation.json").exists());
    }
    let g = Arc::new(TestGenerator::default());
    let s = start_with(c, Some(g.clone())).await;
    s.wait_state("survivor", "resident").await;
    assert_eq!(
        g.calls.load(Ordering::SeqCst),
        1,
        "the restarted server requeued the job"
    );
    assert_eq!(s.entry("survivor").await["generation"]["prompts"], 3);
}

/// Lets a held [`TestGenerator`] return when dropped.
struct Release(Arc<TestGenerator>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.hold.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dnd_generator_specialises_a_task_end_to_end() {
    use mistralrs_dnd::generator::{write_random_generator, DecoderConfig};
    // A generator trained in this test process (collect + train on the tiny model); the
    // task below is its held-out one.
    let trained = trained_tiny_generator();
    let assets = mistralrs_dnd::testing::real_assets();
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.generator = Some(trained.generator.clone());
    c.plugin.encoder = Some(assets.minilm());
    let s = start(c.clone()).await;
    let task = trained.tasks.iter().find(|t| t.name == HELD_OUT).unwrap();
    let probe = &task.test[0].prompt;
    let before = s.chat_task(probe, "dnd").await;
    assert_eq!(before.adapter.as_deref(), Some("base"));
    for ex in &task.test[1..4] {
        let r = s.chat_task(&ex.prompt, "dnd").await;
        assert_eq!(r.adapter.as_deref(), Some("base"));
    }
    s.wait_state("dnd", "resident").await;
    let v = s.entry("dnd").await;
    assert_eq!(v["source"], "generated");
    assert_eq!(v["target_modules"], json!(["q_proj", "v_proj"]));
    let after = s.chat_task(probe, "dnd").await;
    assert_eq!(
        after.adapter,
        Some(format!("dnd@{}", v["hash"].as_str().unwrap()))
    );
    assert_ne!(
        after.content(),
        before.content(),
        "the generated adapter must change the model's answer"
    );

    // A generator built for another base model is refused at start, with both shapes named.
    let mut other = tiny_dims();
    other.hidden_size = 32;
    let cfg =
        DecoderConfig::for_model_default_shapes("other", &other, 4, 8.0, &[Module::Q], 32, 4, 16)
            .unwrap();
    write_random_generator(&cfg, 1, &dir.path().join("other")).unwrap();
    let mut c2 = c;
    c2.plugin.generator = Some(dir.path().join("other"));
    // Its own store: the running server holds the first one's lock.
    c2.plugin.store = dir.path().join("store-other");
    let err = match mistralrs_dnd::server::build(c2.clone()).await {
        Ok(_) => panic!("a generator for another base model must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("does not fit the base model") && err.contains("hidden"),
        "{err}"
    );

    // So is a plugin.fallback_adapter for another base model.
    let mut c3 = c2;
    c3.plugin.generator = Some(trained.generator.clone());
    c3.plugin.store = dir.path().join("store-fallback");
    let fallback = dir.path().join("fallback-other");
    random_adapter(&other, &[Module::Q, Module::V], 4, 5, 0.5, 0.5)
        .unwrap()
        .write_peft(&fallback)
        .unwrap();
    c3.plugin.fallback_adapter = Some(fallback);
    let err = match mistralrs_dnd::server::build(c3).await {
        Ok(_) => panic!("a fallback adapter for another base model must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("plugin.fallback_adapter"), "{err}");
}

/// A generator of the base model's states (`train --read-states`) as the examples
/// generator: the server reads a task's examples through the base model's first block and
/// generates from them (checked, so done or rejected, never failed); one that reads
/// another model's states is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_of_the_base_models_states_serves_tasks_with_examples() {
    use mistralrs_dnd::generator::decoder::Condition;
    use mistralrs_dnd::generator::{write_random_generator, ConditionEncoder, DecoderConfig};
    use mistralrs_dnd::training::states::StateEncoder;
    let dir = tempfile::tempdir().unwrap();
    let states = StateEncoder::load(&tiny_model(), 1).unwrap();
    let write = |encoder: &str, folder: &str| {
        let mut cfg = DecoderConfig::for_model_default_shapes(
            "tiny",
            &tiny_dims(),
            4,
            8.0,
            &[Module::Q, Module::V],
            32,
            3,
            16,
        )
        .unwrap()
        .with_encoder(encoder, states.hidden_size())
        .unwrap();
        cfg.condition = Condition::Examples;
        write_random_generator(&cfg, 1, &dir.path().join(folder)).unwrap();
        dir.path().join(folder)
    };
    let mut c = tiny_config(dir.path());
    c.plugin.examples_generator = Some(write(&states.name(), "states"));
    c.plugin.encoder = Some(mistralrs_dnd::testing::real_assets().minilm());
    c.plugin.guard_max_tokens = 6;
    let s = start(c.clone()).await;
    let examples: Vec<Value> = (0..8)
        .map(|i| json!({"prompt": format!("question {i}"), "answer": format!("answer {i}")}))
        .collect();
    examples_then_prompts(&s, "st", examples).await;
    let v = s
        .entry_when("st", Duration::from_secs(20), |v| {
            ["done", "rejected", "failed"]
                .contains(&v["generation"]["state"].as_str().unwrap_or(""))
        })
        .await;
    assert_ne!(v["generation"]["state"], "failed", "{v}");

    let mut c2 = c;
    c2.plugin.examples_generator = Some(write("other block 1 input", "other"));
    c2.plugin.store = dir.path().join("store-other");
    let err = match mistralrs_dnd::server::build(c2).await {
        Ok(_) => panic!("a generator of another model's states must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("the generator reads"), "{err}");
}

/// `plugin.library` end to end: the real selection (the tiny model scoring the LoRAs of a
/// real collection, MiniLM retrieving them) picks a library adapter for a task with
/// examples, and the no-harm check judges it beside the generated one. A folder that is not
/// a collection is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_selects_a_stored_adapter_for_a_task_with_examples() {
    let trained = trained_tiny_generator();
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.library = Some(trained.collection.clone());
    c.plugin.library_nearest = 2;
    c.plugin.encoder = Some(mistralrs_dnd::testing::real_assets().minilm());
    let s = start_with(c.clone(), Some(Arc::new(TestGenerator::default()))).await;
    let task = trained.tasks.iter().find(|t| t.name == "add").unwrap();
    let examples: Vec<Value> = task.train[..4]
        .iter()
        .map(|e| json!({"prompt": e.prompt, "answer": e.answer}))
        .collect();
    put_examples(&s, "sums", examples).await;
    for ex in &task.test[..3] {
        s.chat_task(&ex.prompt, "sums").await;
    }
    let ended =
        |v: &Value| ["done", "rejected"].contains(&v["generation"]["state"].as_str().unwrap_or(""));
    let v = s.entry_when("sums", Duration::from_secs(30), ended).await;
    let generation = &v["generation"];
    let names: Vec<&str> = trained.tasks.iter().map(|t| t.name.as_str()).collect();
    let pick = generation["library_pick"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(names.contains(&pick), "{pick}");
    assert_eq!(generation["library_check"]["examples"], 4, "{v}");
    assert!(generation["last_check"].is_object(), "{v}");
    assert!(!dir.path().join("store/.probes/sums").exists());

    let refused = |config: mistralrs_dnd::server::Config| async move {
        match mistralrs_dnd::server::build(config).await {
            Ok(_) => panic!("must be refused"),
            Err(e) => format!("{e:#}"),
        }
    };
    let mut bad = c;
    bad.plugin.store = dir.path().join("store-bad");
    let err = refused(bad.clone()).await;
    assert!(
        err.contains("plugin.library") && err.contains("no generator"),
        "{err}"
    );
    bad.plugin.generator = Some(trained.generator.clone());
    bad.plugin.library = Some(dir.path().join("no-collection"));
    std::fs::create_dir_all(dir.path().join("no-collection")).unwrap();
    let err = refused(bad).await;
    assert!(
        err.contains("plugin.library") && err.contains("no completed task"),
        "{err}"
    );
}

/// Waits (bounded) until `task`'s generation is in `state`; returns the task's JSON.
/// `POST /admin/adapters/{task}/regenerate` from the task's kept prompts: accepted.
async fn regenerate(s: &TestServer, task: &str) {
    let r = s
        .admin(Method::POST, &format!("/adapters/{task}/regenerate"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn until_generation(s: &TestServer, task: &str, state: &str) -> Value {
    s.entry_when(task, Duration::from_secs(10), |v| {
        v["generation"]["state"] == state
    })
    .await
}

/// A chat request (greedy, 6 tokens) of `prompt` after `turns` as earlier user and
/// assistant messages: what a client showing those examples itself sends.
fn chat_after<'a>(turns: impl IntoIterator<Item = (&'a str, &'a str)>, prompt: &str) -> Value {
    let mut messages: Vec<Value> = turns
        .into_iter()
        .flat_map(|(u, a)| {
            [
                json!({"role": "user", "content": u}),
                json!({"role": "assistant", "content": a}),
            ]
        })
        .collect();
    messages.push(json!({"role": "user", "content": prompt}));
    json!({"model": "default", "messages": messages, "max_tokens": 6, "temperature": 0.0})
}

/// Examples whose answers are the first line the server answers each (request, prompt):
/// what the model asked so answers, in the examples' format.
async fn answered(s: &TestServer, asked: impl Iterator<Item = (Value, String)>) -> Vec<Value> {
    let mut examples = Vec::new();
    for (request, prompt) in asked {
        let answer = s.post_chat(&request).await.content();
        let first_line = answer.lines().find(|l| !l.trim().is_empty()).unwrap();
        examples.push(json!({"prompt": prompt, "answer": first_line.trim()}));
    }
    examples
}

/// Gives `task` its `examples` through the admin API (accepted).
async fn put_examples(s: &TestServer, task: &str, examples: Vec<Value>) {
    let r = s
        .admin(Method::PUT, &format!("/adapters/{task}/examples"))
        .json(&json!({ "examples": examples }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Gives `task` its `examples` and its 3 prompts: what starts its generation.
async fn examples_then_prompts(s: &TestServer, task: &str, examples: Vec<Value>) {
    put_examples(s, task, examples).await;
    for i in 0..3 {
        s.chat_task(&format!("question {i}"), task).await;
    }
}

/// [`examples_then_prompts`], then waits for its generation to be done: its entry.
async fn examples_then_generation(s: &TestServer, task: &str, examples: Vec<Value>) -> Value {
    examples_then_prompts(s, task, examples).await;
    until_generation(s, task, "done").await
}

/// `plugin.demonstrations`: where the base model shown a task's first examples answers the
/// check's examples best, the task's chat requests are answered so: the examples inserted
/// as earlier turns (the answer a client that sends them itself gets), `base+examples`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_routed_to_its_examples_is_answered_with_them_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.guard_max_tokens = 6;
    c.plugin.demonstrations = 2;
    let s = start_with(c, Some(Arc::new(TestGenerator::default()))).await;
    let shown = [("question 0", "zero"), ("question 1", "one")];
    let with_shown = |prompt: &str| chat_after(shown.iter().copied(), prompt);
    // The checked examples' answers are what the base model answers when shown the first
    // two, so that it answers them all in their format and ranks first.
    let mut examples: Vec<Value> = shown
        .iter()
        .map(|(p, a)| json!({"prompt": p, "answer": a}))
        .collect();
    let prompts = (2..10).map(|i| format!("question {i}"));
    examples.extend(answered(&s, prompts.map(|p| (with_shown(&p), p))).await);
    let v = examples_then_generation(&s, "qa", examples).await;
    let g = &v["generation"];
    assert_eq!(g["demonstrations_routed"], true, "{v}");
    assert_eq!(
        (
            &g["demonstrations_check"]["examples"],
            &g["demonstrations_check"]["adapter_strict"]
        ),
        (&json!(8), &json!(8)),
        "the examples after the two shown, all answered: {v}"
    );
    let served = s.chat_task("question 7", "qa").await;
    assert_eq!(served.adapter.as_deref(), Some("base+examples"));
    let direct = s.post_chat(&with_shown("question 7")).await;
    assert_eq!(served.content(), direct.content());
    let prompt_tokens = |r: &Reply| r.json["usage"]["prompt_tokens"].as_u64();
    assert!(prompt_tokens(&served).is_some());
    assert_eq!(
        prompt_tokens(&served),
        prompt_tokens(&direct),
        "the turns counted"
    );
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "dnd_tasks_shown_examples"), 1.0);
    assert_eq!(
        metric(&m, "dnd_requests_total{served_by=\"examples\"}"),
        1.0
    );

    // A request that might not fit the model's context with them (the tiny model's 512
    // tokens less 64, counted as bytes), though it does without them, is answered without
    // them.
    let long = format!("question 7 {}", "and so on ".repeat(27));
    let r = s.chat_task(&long, "qa").await;
    assert_eq!((r.status, r.adapter.as_deref()), (200, Some("base")));

    // An operator's upload takes their place, even the very adapter they were routed over:
    // uploaded, the examples routed over it by a regeneration, uploaded again.
    let a = random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 7, 0.5, 0.5).unwrap();
    let routed = |r: Reply| r.adapter.as_deref() == Some("base+examples");
    assert_eq!(s.upload("qa", &a).await.status, 201);
    assert!(!routed(s.chat_task("question 7", "qa").await));
    regenerate(&s, "qa").await;
    s.entry_when("qa", Duration::from_secs(10), |v| {
        v["generation"]["demonstrations_routed"] == true
    })
    .await;
    assert!(routed(s.chat_task("question 7", "qa").await));
    assert_eq!(s.upload("qa", &a).await.status, 201);
    assert!(!routed(s.chat_task("question 7", "qa").await));
}

/// `plugin.demonstrations_pool`: each request of a task routed to its examples is shown its
/// own nearest of the pool (the answer a client sending those gets), as the check was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_pool_each_request_is_shown_its_nearest_examples() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.guard_max_tokens = 6;
    (c.plugin.demonstrations, c.plugin.demonstrations_pool) = (2, 4);
    let s = start_with(c, Some(Arc::new(TestGenerator::default()))).await;
    let kind = |i: usize| ["alpha", "beta"][i % 2];
    let pool: Vec<(String, String)> = (0..4)
        .map(|i| {
            (
                format!("{} question {i}", kind(i)),
                format!("{} {i}", kind(i)),
            )
        })
        .collect();
    // The pool's two of the prompt's kind, least alike first (a tie: the later first).
    let with_nearest = |i: usize, prompt: &str| {
        let turns = [i % 2 + 2, i % 2].map(|j| (&*pool[j].0, &*pool[j].1));
        chat_after(turns, prompt)
    };
    let mut examples: Vec<Value> = pool
        .iter()
        .map(|(p, a)| json!({"prompt": p, "answer": a}))
        .collect();
    // The pool leaves the check 16 examples (guard::POOL_LEAVES).
    let prompts = (4..20).map(|i| (i, format!("{} question {i}", kind(i))));
    examples.extend(answered(&s, prompts.map(|(i, p)| (with_nearest(i, &p), p))).await);
    let v = examples_then_generation(&s, "qa", examples).await;
    let g = &v["generation"];
    assert_eq!(g["demonstrations_routed"], true, "{v}");
    assert_eq!(
        g["demonstrations_check"]["adapter_strict"],
        json!(16),
        "each check example answered as shown its nearest: {v}"
    );
    for i in [8, 9] {
        let prompt = format!("{} question {i}", kind(i));
        let served = s.chat_task(&prompt, "qa").await;
        assert_eq!(served.adapter.as_deref(), Some("base+examples"));
        let direct = s.post_chat(&with_nearest(i, &prompt)).await;
        assert_eq!(served.content(), direct.content(), "{prompt}");
        let tokens = |r: &Reply| r.json["usage"]["prompt_tokens"].as_u64();
        assert_eq!(tokens(&served), tokens(&direct), "{prompt}: the same turns");
    }
}

/// `plugin.check_tolerance` forgives that share of the examples, rounded down: half of two
/// routes an adapter one hit short of the base model; the default tenth of two forgives none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_forgives_its_tolerance_of_the_examples() {
    for (tolerance, state) in [(0.5, "done"), (0.1, "rejected")] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = tiny_config(dir.path());
        c.plugin.guard_max_tokens = 6;
        c.plugin.check_tolerance = tolerance;
        let s = start_with(c, Some(Arc::new(TestGenerator::default()))).await;
        let base = s.chat("question 0", |rb, _| rb).await.content();
        let first_line = base.lines().find(|l| !l.trim().is_empty()).unwrap().trim();
        let examples = vec![
            json!({"prompt": "question 0", "answer": first_line}),
            json!({"prompt": "question 1", "answer": "no model says this"}),
        ];
        examples_then_prompts(&s, "qa", examples).await;
        let v = until_generation(&s, "qa", state).await;
        let routed = s.chat_task("question 0", "qa").await.adapter;
        assert_eq!(
            routed.as_deref() == Some("base"),
            state == "rejected",
            "{v}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny_config(dir.path());
    c.plugin.check_tolerance = 1.0;
    let err = match mistralrs_dnd::server::build(c).await {
        Ok(_) => panic!("a tolerance of every example must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("plugin.check_tolerance"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_answers_fewer_examples_than_the_base_is_not_routed() {
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(TestGenerator::default());
    let mut c = tiny_config(dir.path());
    // The check answers as `chat` asks (6 tokens), so the base's answer is known here.
    c.plugin.guard_max_tokens = 6;
    let s = start_with(c, Some(g.clone())).await;
    let base = s.chat("question 0", |rb, _| rb).await.content();
    let first_line = base.lines().find(|l| !l.trim().is_empty()).unwrap().trim();
    let examples = |answer: &str| json!({"examples": [{"prompt": "question 0", "answer": answer}]});

    let put = |body: Value| {
        s.admin(Method::PUT, "/adapters/qa/examples")
            .json(&body)
            .send()
    };
    for bad in [
        json!({"examples": []}),
        json!({"examples": [{"prompt": "q", "answer": " "}]}),
        json!({"examples": [{"prompt": "q", "answer": "a", "extra": 1}]}),
        json!([{"prompt": "q", "answer": "a"}]),
    ] {
        let r = reply(put(bad.clone()).await.unwrap()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.json);
        assert!(r.json["error"]["message"].is_string());
    }
    let r = reply(put(examples(first_line)).await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        admin_get(&s, "/adapters/qa/examples").await,
        examples(first_line)
    );

    let m0 = metrics(&s).await;
    for i in 0..3 {
        s.chat_task(&format!("question {i}"), "qa").await;
    }
    // The base answers the example with its first line; the random adapter does not.
    let v = until_generation(&s, "qa", "rejected").await;
    assert_eq!(v["state"], "none", "nothing stored or routed: {v}");
    assert_eq!(v["generation"]["base_hits"], 1);
    assert_eq!(v["generation"]["adapter_hits"], 0);
    let r = s.chat_task("question 0", "qa").await;
    assert_eq!(r.adapter.as_deref(), Some("base"));
    assert_eq!(r.content(), base);
    let m1 = metrics(&s).await;
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    assert_eq!(d("dnd_guard_checks_total{outcome=\"rejected\"}"), 1.0);
    assert!(
        !dir.path().join("store/.probes/qa").exists(),
        "the probe adapter is removed"
    );
    // No new generation from the same prompts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(g.calls.load(Ordering::SeqCst), 1);

    // An example neither answers: a tie, and the adapter is routed.
    let r = reply(put(examples("no model says this")).await.unwrap()).await;
    assert_eq!(r.status, 200);
    regenerate(&s, "qa").await;
    s.wait_state("qa", "resident").await;
    let v = until_generation(&s, "qa", "done").await;
    assert_eq!(v["generation"]["last_check"]["accepted"], true, "{v}");
    assert_eq!(v["generation"]["last_check"]["current_hits"], Value::Null);
    assert!(s
        .chat_task("question 0", "qa")
        .await
        .adapter
        .unwrap()
        .starts_with("qa@"));

    // A regeneration is checked against the adapter it would replace too: that one answers
    // the examples through the engine beside the base and the probe.
    regenerate(&s, "qa").await;
    let checked = |v: &Value| v["generation"]["last_check"]["current_hits"].is_number();
    let v = s.entry_when("qa", Duration::from_secs(10), checked).await;
    assert_eq!(v["generation"]["last_check"]["current_hits"], 0, "{v}");
    assert_eq!(v["generation"]["last_check"]["accepted"], true, "{v}");

    let r = s
        .admin(Method::DELETE, "/adapters/qa/examples")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        admin_get(&s, "/adapters/qa/examples").await,
        json!({"examples": []})
    );
}
