//! `kill -9` (issue 15, item 17): the server binary runs as a child process on the tiny
//! model and is killed with SIGKILL during a generation, during an upload's engine load and
//! during an eviction, and started again on the same store each time. After every restart
//! each adapter whose upload or generation had completed is there, as the version it was,
//! and serves its task; every prompt the store had kept is there; the base model serves.
//!
//! The child generates with a random (untrained) DnD generator for the tiny model and the
//! real MiniLM, so its generations are real ones, written by the server itself; what it
//! generates does not matter here. Requests that only check what serves send a blank
//! prompt, which the server does not keep, so that the prompt files change only where the
//! test means them to.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mistralrs_dnd::format::{LoraAdapter, Module};
use mistralrs_dnd::generator::{write_random_generator, DecoderConfig};
use mistralrs_dnd::server::local::adapter_form;
use mistralrs_dnd::testing::{random_adapter, tiny_dims};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{chat_body, tiny_model, wait_for, Reply, TOKEN};

/// Prompts of a task that start its generation (the generator's N).
const K: usize = 4;
/// A prompt the server does not keep.
const BLANK: &str = " ";

fn adapter(seed: u64) -> LoraAdapter {
    random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, seed, 0.5, 0.5).unwrap()
}

/// The child's config in `dir`: the tiny model, a random DnD generator for it with the real
/// MiniLM, room for two adapter models, requests that wait for their adapter's load, and a
/// generation cut short retried at once.
fn write_config(dir: &Path) {
    let generator = dir.join("generator");
    let cfg = DecoderConfig::for_model_default_shapes(
        "tiny-llama",
        &tiny_dims(),
        4,
        8.0,
        &[Module::Q, Module::V],
        32,
        K,
        16,
    )
    .unwrap();
    write_random_generator(&cfg, 1, &generator).unwrap();
    let minilm = std::fs::canonicalize(mistralrs_dnd::testing::real_assets().minilm()).unwrap();
    let q = |p: &Path| Value::from(p.to_str().unwrap()).to_string();
    let toml = format!(
        "[model]\nbase = {base}\ndtype = \"f32\"\n\n[plugin]\nstore = {store}\n\
         admin_token = {token}\ngenerator = {generator}\nencoder = {encoder}\nprompts_k = {k}\n\
         max_resident = 2\nload_wait_ms = 10000\nretry_base_s = 0\n",
        base = q(&tiny_model()),
        store = q(&dir.join("store")),
        token = Value::from(TOKEN),
        generator = q(&generator),
        encoder = q(&minilm),
        k = K,
    );
    std::fs::write(dir.join("config.toml"), toml).unwrap();
}

/// `mistralrs-dnd serve` as a child process on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Server {
    /// Starts the binary on `dir/config.toml` and waits until it answers `/health`.
    async fn start(dir: &Path, run: usize) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("server-{run}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mistralrs-dnd"))
            .arg("serve")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir)
            .env("RUST_LOG", "info,mistralrs_core=warn")
            .env_remove("DND_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            // No request may hang the test on a server that stopped answering.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("server {run} ended ({status}) before it served");
            }
            let health = server
                .client
                .get(format!("{}/health", server.url))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            assert!(Instant::now() < deadline, "server {run} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: SIGKILL, which the process can neither catch nor clean up after.
    fn kill(mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/admin{path}", self.url))
            .bearer_auth(TOKEN)
    }

    /// A chat completion of `prompt`, tagged with `task` when given.
    fn chat_request(&self, task: Option<&str>, prompt: &str) -> reqwest::RequestBuilder {
        let req = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&chat_body(prompt, 2));
        match task {
            Some(t) => req.header("X-Task-Id", t),
            None => req,
        }
    }

    async fn chat(&self, task: Option<&str>, prompt: &str) -> Reply {
        let resp = self.chat_request(task, prompt).send().await.unwrap();
        Reply::read(resp).await.unwrap()
    }

    async fn upload(&self, task: &str, adapter: &LoraAdapter) -> Reply {
        let resp = self
            .admin(Method::PUT, &format!("/adapters/{task}"))
            .multipart(adapter_form(adapter).unwrap())
            .send()
            .await
            .unwrap();
        Reply::read(resp).await.unwrap()
    }

    /// The admin API's view of `task` (`None`: unknown).
    async fn task(&self, task: &str) -> Option<Value> {
        let resp = self
            .admin(Method::GET, &format!("/adapters/{task}"))
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            return None;
        }
        assert!(resp.status().is_success(), "{}", resp.status());
        Some(resp.json().await.unwrap())
    }

    /// The table state of `task` (`""`: unknown).
    async fn state(&self, task: &str) -> String {
        let v = self.task(task).await.unwrap_or_default();
        v["state"].as_str().unwrap_or_default().to_string()
    }

    /// Polls `task` (every 2 ms, at most 30 s) until `done` holds of its admin view.
    async fn until(&self, task: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.task(task).await.filter(|v| done(v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{task}: no {what} within 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Every adapter in `adapters` (task -> hash) is its task's current version and serves
    /// it (loaded on demand, evicting others), and the base serves untagged requests.
    async fn assert_serves(&self, adapters: &BTreeMap<String, String>) {
        for (task, hash) in adapters {
            let v = self
                .task(task)
                .await
                .unwrap_or_else(|| panic!("{task} is gone"));
            assert_eq!(v["hash"].as_str(), Some(hash.as_str()), "{v}");
            let r = self.chat(Some(task), BLANK).await;
            assert_eq!(r.status, 200, "{}", r.json);
            assert_eq!(r.adapter, Some(format!("{task}@{hash}")), "{}", r.json);
        }
        let r = self.chat(None, BLANK).await;
        assert_eq!((r.status, r.adapter.as_deref()), (200, Some("base")));
        let list: Value = self
            .admin(Method::GET, "/adapters")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["quarantined"], json!([]), "no record went corrupt");
    }

    /// Every prompt of `kept` (as the store held them before a kill) is in the store and
    /// known to this server.
    async fn assert_kept(&self, store: &Path, kept: &BTreeMap<String, Vec<String>>) {
        let now = kept_prompts(store);
        for (task, prompts) in kept {
            let after = now
                .get(task)
                .unwrap_or_else(|| panic!("the prompts of {task} are gone"));
            for p in prompts {
                assert!(after.contains(p), "{task}: {p:?} lost, kept {after:?}");
            }
            let v = self
                .task(task)
                .await
                .unwrap_or_else(|| panic!("{task} is gone"));
            let n = v["generation"]["prompts"].as_u64().unwrap_or_default();
            assert!(n as usize >= prompts.len(), "{task}: {v}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.log.display(), self.log_tail());
        }
    }
}

/// The prompts the store keeps, per task, as its files hold them now.
fn kept_prompts(store: &Path) -> BTreeMap<String, Vec<String>> {
    let mut kept = BTreeMap::new();
    for entry in std::fs::read_dir(store).unwrap() {
        let entry = entry.unwrap();
        let task = entry.file_name().to_string_lossy().into_owned();
        if task.starts_with('.') {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(entry.path().join("prompts.jsonl")) {
            let prompts = text.lines().map(|l| serde_json::from_str(l).unwrap());
            kept.insert(task, prompts.collect());
        }
    }
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_generation_an_upload_and_an_eviction_loses_nothing_completed() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let store = dir.path().join("store");
    // Adapters whose upload or generation completed: task -> hash.
    let mut adapters = BTreeMap::new();

    // 1. During a generation: K prompts of "gen" start one, killed once it is under way
    // (queued or generating) and its prompts are kept: a prompt not written yet would go
    // with the kill, and the restarted server would not generate again. If the generation
    // ends first, another one is started (given prompts) and tried again.
    let s = Server::start(dir.path(), 1).await;
    let up = s.upload("up1", &adapter(1)).await;
    assert_eq!(up.status, 201, "{}", up.json);
    adapters.insert("up1".to_string(), adapter(1).content_hash().unwrap());
    for i in 0..2 {
        let r = s
            .chat(Some("collect"), &format!("collected prompt {i}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    wait_for("collected prompts on disk", Duration::from_secs(30), || {
        kept_prompts(&store).get("collect").map(Vec::len) == Some(2)
    })
    .await;
    let mut cut_short = false;
    let mut last = None;
    for attempt in 0..3 {
        let prompts: Vec<String> = (0..K)
            .map(|i| format!("prompt {i} of generation {attempt}"))
            .collect();
        if attempt == 0 {
            for p in &prompts[..K - 1] {
                let r = s.chat(Some("gen"), p).await;
                assert_eq!(r.status, 200, "{}", r.json);
            }
            // Not waited for: the generation starts while it is answered.
            last = Some(tokio::spawn(
                s.chat_request(Some("gen"), &prompts[K - 1]).send(),
            ));
        } else {
            let r = s
                .admin(Method::POST, "/adapters/gen/regenerate")
                .json(&json!({ "prompts": prompts }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let state = loop {
            let v = s.task("gen").await.unwrap_or_default();
            let state = v["generation"]["state"].as_str().unwrap_or_default();
            let kept = || kept_prompts(&store).get("gen") == Some(&prompts);
            match state {
                "done" | "failed" => break state.to_string(),
                "queued" | "generating" if kept() => break state.to_string(),
                _ => {}
            }
            assert!(Instant::now() < deadline, "no generation within 30 s: {v}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        match state.as_str() {
            "done" => continue,
            "failed" => panic!("the generation failed: {}", s.task("gen").await.unwrap()),
            _ => {
                cut_short = true;
                break;
            }
        }
    }
    let kept = kept_prompts(&store);
    s.kill();
    if let Some(last) = last {
        let _ = last.await;
    }
    if !cut_short {
        eprintln!("note: every generation ended before the kill could land");
    }
    assert_eq!(kept["collect"].len(), 2, "{kept:?}");

    let s = Server::start(dir.path(), 2).await;
    s.assert_kept(&store, &kept).await;
    // Its adapter: stored before the kill, or made by the generation requeued at start.
    let v = s.until("gen", "adapter", |v| v["hash"].is_string()).await;
    adapters.insert("gen".to_string(), v["hash"].as_str().unwrap().to_string());
    s.assert_serves(&adapters).await;

    // 2. During an upload: killed while the engine loads it (its version is stored by then,
    // so it must be there after the restart), or after it completed.
    let put = s
        .admin(Method::PUT, "/adapters/up2")
        .multipart(adapter_form(&adapter(2)).unwrap());
    let put = tokio::spawn(async move { put.send().await.map(|r| r.status().as_u16()) });
    let mut loading = false;
    while !put.is_finished() {
        if s.state("up2").await == "loading" {
            loading = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let kept = kept_prompts(&store);
    s.kill();
    let answer = put.await.unwrap().ok();
    assert!(loading || answer == Some(201), "upload answered {answer:?}");
    adapters.insert("up2".to_string(), adapter(2).content_hash().unwrap());

    let s = Server::start(dir.path(), 3).await;
    s.assert_kept(&store, &kept).await;
    // Checked in name order: "up1" and "up2" are resident after this, "gen" is stored.
    s.assert_serves(&adapters).await;

    // 3. During an eviction: a request for "gen" evicts the least recently used adapter
    // ("up1") to make room for its load while "up2" is evicted by hand; killed as soon as
    // one of them is out of the table, its engine model being removed.
    let load = tokio::spawn(s.chat_request(Some("gen"), BLANK).send());
    let evict = tokio::spawn(s.admin(Method::DELETE, "/adapters/up2").send());
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.state("up1").await != "stored" && s.state("up2").await != "stored" {
        assert!(Instant::now() < deadline, "nothing was evicted within 30 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let kept = kept_prompts(&store);
    s.kill();
    let _ = (load.await, evict.await);

    let s = Server::start(dir.path(), 4).await;
    s.assert_kept(&store, &kept).await;
    s.assert_serves(&adapters).await;
}
