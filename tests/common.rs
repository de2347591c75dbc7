//! Harness: a tiny llama model, an in-process server on 127.0.0.1, and request helpers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use mistralrs_dnd::adapters::LoraAdapter;
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
