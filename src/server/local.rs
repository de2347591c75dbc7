//! An in-process server on a loopback port plus a small client for the plugin's routes,
//! used by eval, bench and the integration tests: [`LocalServer::start`] builds the server
//! from a [`Config`] exactly as `serve` does and serves it on `127.0.0.1:0`
//! ([`LocalServer::start_beside_stock`] serves the stock router alone beside it, on the same
//! engine, for `bench overhead`); its methods send
//! chat completions (tagged with `X-Task-Id` or not), stream one until its first token, call
//! the admin API with the configured token and upload adapters as the multipart form
//! `PUT /admin/adapters/{task}` takes ([`upload_form`]).

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use super::{assemble, build_with, specialise::AdapterGenerator, Config, Plugin, Routers};
use crate::format::peft::{LoraAdapter, CONFIG_FILE, WEIGHTS_FILE};

/// The server with the plugin, serving on a loopback port until dropped.
pub struct LocalServer {
    /// `http://127.0.0.1:{port}`.
    pub url: String,
    pub plugin: Arc<Plugin>,
    pub client: reqwest::Client,
    serving: tokio::task::JoinHandle<()>,
}

impl LocalServer {
    /// Builds the server `config` describes (the plugin must be enabled) and serves it.
    pub async fn start(config: Config) -> Result<Self> {
        Self::start_with(config, None).await
    }

    /// [`LocalServer::start`] with a given generator for automatic specialisation (see
    /// [`build_with`]).
    pub async fn start_with(
        config: Config,
        generator: Option<Arc<dyn AdapterGenerator>>,
    ) -> Result<Self> {
        let (router, plugin) = build_with(config, generator).await?;
        let plugin = plugin.context("the config disables the plugin")?;
        Self::serve(router, plugin).await
    }

    /// [`LocalServer::start`] plus the stock mistral.rs router alone, without the plugin's
    /// layer, on another loopback port and the same engine: what the plugin's cost is
    /// measured against (`bench overhead`). `in_plugins_place` chooses what serves on the
    /// plugin's port, given the stock router, the plugin's router and the plugin: the
    /// plugin's router for the measurement, the stock router for a control run (the two
    /// ports then differ only by chance), or a probe.
    pub async fn start_beside_stock(
        config: Config,
        in_plugins_place: impl FnOnce(axum::Router, axum::Router, &Arc<Plugin>) -> axum::Router,
    ) -> Result<(Self, StockServer)> {
        let Routers { stock, plugin } = assemble(config, None).await?;
        let (router, plugin) = plugin.context("the config disables the plugin")?;
        let router = in_plugins_place(stock.clone(), router, &plugin);
        let (url, serving) = serve_on_loopback(stock).await?;
        Ok((
            Self::serve(router, plugin).await?,
            StockServer { url, serving },
        ))
    }

    async fn serve(router: axum::Router, plugin: Arc<Plugin>) -> Result<Self> {
        let (url, serving) = serve_on_loopback(router).await?;
        Ok(Self {
            url,
            plugin,
            client: reqwest::Client::new(),
            serving,
        })
    }

    /// `POST /v1/chat/completions`, tagged with `task` when given; the caller adds the body.
    pub fn chat_request(&self, task: Option<&str>) -> reqwest::RequestBuilder {
        let req = self
            .client
            .post(format!("{}/v1/chat/completions", self.url));
        match task {
            Some(t) => req.header("X-Task-Id", t),
            None => req,
        }
    }

    /// Sends a chat completion `body` (tagged with `task` when given) and reads the reply.
    pub async fn send_chat(&self, task: Option<&str>, body: &Value) -> Result<Reply> {
        Reply::read(self.chat_request(task).json(body).send().await?).await
    }

    /// Streams a one-token chat completion and returns the `x-dnd-adapter` label once the
    /// first content token arrives.
    pub async fn first_token(&self, task: Option<&str>) -> Result<String> {
        // One token: the stream ends with it, so timed requests never overlap.
        let s = self
            .stream_chat(task, &chat_body("Name a colour.", 1))
            .await?;
        ensure!(s.tokens > 0, "stream ended without a content token");
        Ok(s.label)
    }

    /// Sends a chat completion `body` with `"stream": true` and reads its server-sent events
    /// to the end, timing the first content token.
    pub async fn stream_chat(&self, task: Option<&str>, body: &Value) -> Result<Streamed> {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let start = std::time::Instant::now();
        let resp = self.chat_request(task).json(&body).send().await?;
        ensure!(resp.status().is_success(), "chat failed: {}", resp.status());
        let label = resp
            .headers()
            .get("x-dnd-adapter")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut out = Streamed {
            label,
            text: String::new(),
            tokens: 0,
            first_token: None,
            total: Default::default(),
        };
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            // Complete lines only; a partial event waits for the rest of its bytes.
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let Some(data) = line.trim_end().strip_prefix("data: ") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let Some(d) = v["choices"][0]["delta"]["content"].as_str() {
                    if !d.is_empty() {
                        out.first_token.get_or_insert_with(|| start.elapsed());
                        out.tokens += 1;
                        out.text.push_str(d);
                    }
                }
            }
        }
        out.total = start.elapsed();
        Ok(out)
    }

    /// A request to the admin API (`path` after `/admin`), with the admin token when one is
    /// configured.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .client
            .request(method, format!("{}/admin{path}", self.url));
        match &self.plugin.admin_token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Hot-loads `adapter` for `task` by multipart upload.
    pub async fn upload(&self, task: &str, adapter: &LoraAdapter) -> Result<Reply> {
        self.upload_with(task, adapter_form(adapter)?).await
    }

    /// `PUT /admin/adapters/{task}` with a ready multipart `form` (see [`upload_form`]).
    pub async fn upload_with(&self, task: &str, form: reqwest::multipart::Form) -> Result<Reply> {
        let resp = self
            .admin(reqwest::Method::PUT, &format!("/adapters/{task}"))
            .multipart(form)
            .send()
            .await?;
        Reply::read(resp).await
    }

    /// `GET /admin/adapters/{task}`: the task's state, versions and generation, as JSON.
    pub async fn adapter_info(&self, task: &str) -> Result<Value> {
        let resp = self
            .admin(reqwest::Method::GET, &format!("/adapters/{task}"))
            .send()
            .await?;
        Ok(resp.json().await?)
    }
}

/// Serves `router` on `127.0.0.1:0` until the returned task is aborted: its URL and the task.
async fn serve_on_loopback(router: axum::Router) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let serving = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("local server stopped: {e}");
        }
    });
    Ok((url, serving))
}

/// The stock mistral.rs router alone on a loopback port, beside a [`LocalServer`] on the
/// same engine ([`LocalServer::start_beside_stock`]), serving until dropped.
pub struct StockServer {
    /// `http://127.0.0.1:{port}`.
    pub url: String,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for StockServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.serving.abort();
        // As the end of a process would: a server started next on this store may take it.
        self.plugin.release_store();
    }
}

/// A greedy chat completion body for the default model: one user message, at most
/// `max_tokens` generated tokens.
pub fn chat_body(prompt: &str, max_tokens: usize) -> Value {
    json!({
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    })
}

/// The multipart form of an upload: the PEFT config and weights as the two file parts the
/// admin API reads (bytes as given, so that malformed ones can be sent too).
pub fn upload_form(config: Vec<u8>, weights: Vec<u8>) -> reqwest::multipart::Form {
    use reqwest::multipart::{Form, Part};
    Form::new()
        .part(CONFIG_FILE, Part::bytes(config).file_name(CONFIG_FILE))
        .part(WEIGHTS_FILE, Part::bytes(weights).file_name(WEIGHTS_FILE))
}

/// The upload form of `adapter`.
pub fn adapter_form(adapter: &LoraAdapter) -> Result<reqwest::multipart::Form> {
    Ok(upload_form(
        serde_json::to_vec(&adapter.config)?,
        adapter.safetensors_bytes()?,
    ))
}

/// A reply read whole: status, the `x-dnd-adapter` label that served it, and the body as
/// JSON (a JSON string holding the text when the body is not JSON).
/// A streamed chat completion, read to its end.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// The `x-dnd-adapter` label.
    pub label: String,
    pub text: String,
    /// Events with content: one per generated token.
    pub tokens: usize,
    /// From sending the request to the first content token.
    pub first_token: Option<std::time::Duration>,
    /// From sending the request to the end of the stream.
    pub total: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub adapter: Option<String>,
    pub json: Value,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Result<Self> {
        let status = resp.status().as_u16();
        let adapter = resp
            .headers()
            .get("x-dnd-adapter")
            .map(|v| v.to_str().map(str::to_string))
            .transpose()
            .context("x-dnd-adapter is not ASCII")?;
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Self {
            status,
            adapter,
            json,
        })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first choice's message content of a chat completion.
    pub fn message(&self) -> Option<&str> {
        self.json["choices"][0]["message"]["content"].as_str()
    }
}
