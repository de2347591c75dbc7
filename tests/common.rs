//! Harness: a tiny llama model, the library's in-process server on 127.0.0.1
//! ([`LocalServer`]) with unwrapping request helpers, and a trained tiny generator.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use mistralrs_dnd::format::LoraAdapter;
pub use mistralrs_dnd::server::local::{chat_body, upload_form, LocalServer, Reply};
use mistralrs_dnd::server::Config;
use serde_json::Value;

pub const TOKEN: &str = "test-token";

/// The tiny model, written once per test process.
pub fn tiny_model() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        mistralrs_dnd::testing::write_tiny_llama(d.path(), 7).unwrap();
        d
    })
    .path()
    .to_path_buf()
}

/// The library's in-process server; the harness methods below unwrap its client's results
/// and take the tests' shapes (a tagger closure, a state string).
pub struct TestServer(pub LocalServer);

impl std::ops::Deref for TestServer {
    type Target = LocalServer;
    fn deref(&self) -> &LocalServer {
        &self.0
    }
}

/// A config for the tiny model with its store under `dir`.
pub fn tiny_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.model.base = Some(tiny_model());
    c.model.dtype = "f32".into();
    c.plugin.store = dir.join("store");
    c.plugin.import_root = Some(dir.join("import"));
    std::fs::create_dir_all(dir.join("import")).unwrap();
    c.plugin.admin_token = Some(TOKEN.into());
    c
}

pub async fn start(config: Config) -> TestServer {
    start_with(config, None).await
}

pub async fn start_with(
    config: Config,
    generator: Option<Arc<dyn mistralrs_dnd::server::specialise::AdapterGenerator>>,
) -> TestServer {
    TestServer(LocalServer::start_with(config, generator).await.unwrap())
}

impl TestServer {
    /// A greedy chat completion; `tag` is applied by `tagger`.
    pub async fn chat(
        &self,
        prompt: &str,
        tagger: impl FnOnce(reqwest::RequestBuilder, &mut Value) -> reqwest::RequestBuilder,
    ) -> Reply {
        let mut body = chat_body(prompt, 6);
        let rb = tagger(self.chat_request(None), &mut body);
        reply(rb.json(&body).send().await.unwrap()).await
    }

    /// Posts a chat completion body as it is.
    pub async fn post_chat(&self, body: &Value) -> Reply {
        self.send_chat(None, body).await.unwrap()
    }

    pub async fn chat_task(&self, prompt: &str, task: &str) -> Reply {
        let task = task.to_string();
        self.chat(prompt, move |rb, _| rb.header("X-Task-Id", task))
            .await
    }

    /// Hot-loads `adapter` for `task` by multipart upload.
    pub async fn upload(&self, task: &str, adapter: &LoraAdapter) -> Reply {
        self.0.upload(task, adapter).await.unwrap()
    }

    pub async fn list(&self) -> Value {
        let r = self
            .admin(reqwest::Method::GET, "/adapters")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    pub async fn state(&self, task: &str) -> String {
        let v = self.adapter_info(task).await.unwrap();
        v["state"].as_str().unwrap_or("").to_string()
    }

    /// `task`'s admin entry.
    pub async fn entry(&self, task: &str) -> Value {
        self.adapter_info(task).await.unwrap()
    }

    /// `task`'s admin entry once `cond` holds of it, polled every 20 ms; fails the test
    /// with the last entry if it does not within `within`.
    pub async fn entry_when(
        &self,
        task: &str,
        within: std::time::Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let v = self.entry(task).await;
            if cond(&v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{task} not there within {within:?}: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until `task` reaches `state`.
    pub async fn wait_state(&self, task: &str, state: &str) {
        let within = std::time::Duration::from_secs(10);
        self.entry_when(task, within, |v| v["state"] == state).await;
    }
}

pub async fn reply(resp: reqwest::Response) -> Reply {
    Reply::read(resp).await.unwrap()
}

/// `GET /metrics` with the token.
pub async fn metrics(s: &TestServer) -> String {
    s.client
        .get(format!("{}/metrics", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample of metric `name` in a `/metrics` text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The tests read a chat reply's content through this.
pub trait Content {
    fn content(&self) -> String;
}

impl Content for Reply {
    fn content(&self) -> String {
        let text = self
            .message()
            .unwrap_or_else(|| panic!("no content in {}", self.json));
        // Comparing empty outputs would prove nothing.
        assert!(!text.is_empty(), "empty content in {}", self.json);
        text.to_string()
    }
}

pub use mistralrs_dnd::bench::rss_bytes;

/// Polls `cond` every millisecond until it holds; panics naming `what` after `within`.
/// For state that the server changes in the background (files, counters).
pub async fn wait_for(what: &str, within: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A collection of three small tasks on the tiny model (shared frozen A, as `collect`
/// does by default) and a generator trained on two of them, `first_letter` held out: built
/// once per test process by the real `collect` and `train` code, with the real MiniLM.
pub struct TrainedGenerator {
    _dir: tempfile::TempDir,
    pub collection: PathBuf,
    pub generator: PathBuf,
    pub tasks: Vec<mistralrs_dnd::tasks::Task>,
}

pub const HELD_OUT: &str = "first_letter";

pub fn trained_tiny_generator() -> &'static TrainedGenerator {
    use mistralrs_dnd::format::Module;
    use mistralrs_dnd::generator::PromptEncoder;
    use mistralrs_dnd::tasks::{builtin_task, SuiteConfig};
    use mistralrs_dnd::training::collect::{collect, CollectOptions};
    use mistralrs_dnd::training::collection::CollectConfig;
    use mistralrs_dnd::training::generator::{
        decoder_config_for, load_training_set, train_decoder, Holdout, TrainDecoderConfig,
        TrainOptions,
    };
    use mistralrs_dnd::training::lora::{LoraConfig, TrainConfig};
    static FIXTURE: OnceLock<TrainedGenerator> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let sc = SuiteConfig {
            seed: 5,
            train: 16,
            test: 6,
            ..SuiteConfig::default()
        };
        let tasks: Vec<_> = ["add", "uppercase", HELD_OUT]
            .iter()
            .map(|n| builtin_task(n, &sc).unwrap())
            .collect();
        let collection = dir.path().join("collection");
        let cfg = CollectConfig {
            train: TrainConfig {
                lora: LoraConfig {
                    rank: 4,
                    alpha: 8.0,
                    modules: vec![Module::Q, Module::V],
                    frozen_a_seed: Some(0),
                },
                steps: 6,
                batch_size: 2,
                lr: 5e-2,
                warmup_steps: 1,
                ..TrainConfig::default()
            },
            checkpoints: 4,
        };
        let quiet = CollectOptions {
            stop_after_steps: None,
            quiet: true,
            ..Default::default()
        };
        collect(&tiny_model(), &tasks, &collection, &cfg, &quiet).unwrap();
        let decoder = decoder_config_for(
            &collection,
            "tiny-llama",
            &mistralrs_dnd::testing::tiny_dims(),
            32,
            4,
            16,
        )
        .unwrap();
        let settings = TrainDecoderConfig {
            steps: 30,
            batch_size: 2,
            lr: 1e-2,
            warmup_steps: 2,
            prompt_pool: 16,
            save_every: 10,
            holdout: Holdout::Tasks(vec![HELD_OUT.into()]),
            ..TrainDecoderConfig::default()
        };
        let encoder = PromptEncoder::load(
            &mistralrs_dnd::testing::real_assets().minilm(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let generator = dir.path().join("generator");
        let set = load_training_set(
            &collection,
            None,
            &decoder,
            &encoder,
            &settings,
            &generator.join("cache"),
        )
        .unwrap();
        let outcome = train_decoder(
            &set,
            &decoder,
            &settings,
            &collection,
            &generator,
            None,
            &TrainOptions {
                stop_after_steps: None,
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
        let log = &outcome.record.log;
        assert!(
            log.last().unwrap().loss < log[0].loss,
            "decoder training did not lower the loss: {log:?}"
        );
        TrainedGenerator {
            _dir: dir,
            collection,
            generator,
            tasks,
        }
    })
}

/// A global allocator that counts the heap's live bytes and their peak: what a test that
/// runs alone in its process (`kv_cache`) allocates, deterministically, where RSS would
/// depend on the allocator's reuse of freed memory.
pub mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    pub struct Counting;

    fn grew(n: usize) {
        PEAK.fetch_max(LIVE.fetch_add(n, Relaxed) + n, Relaxed);
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                if new_size >= layout.size() {
                    grew(new_size - layout.size());
                } else {
                    LIVE.fetch_sub(layout.size() - new_size, Relaxed);
                }
            }
            p
        }
    }

    /// Starts a new peak at the live bytes now, which it returns.
    pub fn reset_peak() -> usize {
        let live = LIVE.load(Relaxed);
        PEAK.store(live, Relaxed);
        live
    }

    /// The most live bytes since the last [`reset_peak`].
    pub fn peak() -> usize {
        PEAK.load(Relaxed)
    }
}
