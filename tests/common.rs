//! Harness: a tiny llama model, an in-process server on 127.0.0.1, and request helpers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use mistralrs_dnd::format::LoraAdapter;
use mistralrs_dnd::server::{self, Config, Plugin};
use serde_json::{json, Value};

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

pub struct TestServer {
    pub url: String,
    pub plugin: Arc<Plugin>,
    pub client: reqwest::Client,
    pub task: tokio::task::JoinHandle<()>,
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
    let (router, plugin) = server::build_with(config, generator).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    TestServer {
        url,
        plugin: plugin.expect("plugin enabled"),
        client: reqwest::Client::new(),
        task,
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Reply {
    pub status: u16,
    pub adapter: Option<String>,
    pub json: Value,
}

impl TestServer {
    /// A greedy chat completion; `tag` is applied by `tagger`.
    pub async fn chat(
        &self,
        prompt: &str,
        tagger: impl FnOnce(reqwest::RequestBuilder, &mut Value) -> reqwest::RequestBuilder,
    ) -> Reply {
        let mut body = json!({
            "model": "default",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 6,
            "temperature": 0.0,
        });
        let rb = self
            .client
            .post(format!("{}/v1/chat/completions", self.url));
        let rb = tagger(rb, &mut body);
        let resp = rb.json(&body).send().await.unwrap();
        reply(resp).await
    }

    /// Posts a chat completion body as it is.
    pub async fn post_chat(&self, body: &Value) -> Reply {
        let resp = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        reply(resp).await
    }

    pub async fn chat_task(&self, prompt: &str, task: &str) -> Reply {
        let task = task.to_string();
        self.chat(prompt, move |rb, _| rb.header("X-Task-Id", task))
            .await
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/admin{path}", self.url))
            .bearer_auth(TOKEN)
    }

    /// Hot-loads `adapter` for `task` by multipart upload.
    pub async fn upload(&self, task: &str, adapter: &LoraAdapter) -> Reply {
        let form = upload_form(
            serde_json::to_vec(&adapter.config).unwrap(),
            adapter.safetensors_bytes().unwrap(),
        );
        let resp = self
            .admin(reqwest::Method::PUT, &format!("/adapters/{task}"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        reply(resp).await
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
        let r = self
            .admin(reqwest::Method::GET, &format!("/adapters/{task}"))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["state"].as_str().unwrap_or("").to_string()
    }

    /// Waits (bounded) until `task` reaches `state`.
    pub async fn wait_state(&self, task: &str, state: &str) {
        for _ in 0..500 {
            if self.state(task).await == state {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!(
            "task {task} never reached state {state}, is {}",
            self.state(task).await
        );
    }
}

pub fn upload_form(config: Vec<u8>, weights: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            "adapter_config.json",
            reqwest::multipart::Part::bytes(config).file_name("adapter_config.json"),
        )
        .part(
            "adapter_model.safetensors",
            reqwest::multipart::Part::bytes(weights).file_name("adapter_model.safetensors"),
        )
}

pub async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let adapter = resp
        .headers()
        .get("x-dnd-adapter")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        adapter,
        json,
    }
}

impl Reply {
    pub fn content(&self) -> String {
        let text = self.json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content in {}", self.json));
        // Comparing empty outputs would prove nothing.
        assert!(!text.is_empty(), "empty content in {}", self.json);
        text.to_string()
    }
}

pub use mistralrs_dnd::cli::bench::rss_bytes;

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
    use mistralrs_dnd::training::collect::{collect, CollectConfig, CollectOptions};
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
            &TrainOptions {
                stop_after_steps: None,
                quiet: true,
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
