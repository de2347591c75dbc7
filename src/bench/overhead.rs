//! `bench overhead`: what the plugin's layer costs a request. One engine serves two routers
//! in this process, each on its own loopback port ([`LocalServer::start_beside_stock`]):
//! mistral.rs's stock OpenAI router alone, and the plugin's (the same router under the
//! tagging layer, with the admin API beside it). A closed-loop load generator (reqwest, in
//! this process: `c` workers, each sending its next request when the last answer has been
//! read) sends short non-streamed greedy chats (`--tokens`, default 4) at concurrency 1, 8
//! and 32 (`--levels`), untagged and tagged (`X-Task-Id` of 8 tasks with no adapter, so that
//! the plugin tags and routes them and both routers end on the same base model).
//!
//! Interleaved: each of the `--rounds` rounds runs every cell (level x tagging) on both
//! routers, `--requests` requests each, the stock router first in even rounds and the
//! plugin's first in odd ones, so that drift (a warming cache, a neighbour on the host)
//! falls on both alike. Per row: requests/s (answers over the cells' wall time, summed over
//! the rounds), latency p50 / p99 (every request of every round) and, for the plugin, the
//! ratio to the stock router's row, with a 95 % interval from a bootstrap over the rounds
//! ([`paired_ratio_interval`]). The bar (issue 15): throughput >= 0.99x and p99 within +5 %.
//!
//! What serves on the plugin's port ([`Place`]): the plugin's router; the stock router
//! again (`--stock-twice`, the control run); or a [`Probe`] (`--probe`), the plugin's router
//! with a layer in the tagging layer's place that does one part of its work, so that runs
//! side by side tell where its cost is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{print_machine, quantile_ms, smollm2_config};
use crate::server::config::PluginConfig;
use crate::server::local::{chat_body, LocalServer};
use crate::server::member::with_member;
use crate::server::request::{EngineBody, Fields};
use crate::server::{compose, Config, Plugin};

/// The bar of issue 15: the plugin's throughput at least this fraction of the stock
/// router's ...
const MIN_THROUGHPUT_RATIO: f64 = 0.99;
/// ... and its p99 latency at most this much above the stock router's.
const MAX_P99_RATIO: f64 = 1.05;

/// Task ids the tagged requests name, in turn.
const TASKS: usize = 8;

const PROMPTS: [&str; 8] = [
    "Name a colour.",
    "Say hello.",
    "Name a fruit.",
    "Count to three.",
    "Name an animal.",
    "Say yes or no.",
    "Name a city.",
    "Name a number.",
];

/// The model both routers serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// The tests' tiny llama (2 layers, hidden size 64, seeded random weights,
    /// [`crate::testing::write_tiny_llama`]): the engine's share of a request is small, so
    /// the layer's shows.
    Tiny,
    /// SmolLM2-135M-Instruct from the asset folder (fetched if missing).
    Smollm2,
}

/// What to run.
pub struct Setup {
    pub model: Model,
    pub dtype: String,
    /// Concurrent requests per cell.
    pub levels: Vec<usize>,
    pub rounds: usize,
    /// Requests per cell and round.
    pub requests: usize,
    /// `max_tokens` of every chat.
    pub tokens: usize,
    pub assets: Option<PathBuf>,
    /// What serves on the plugin's port.
    pub place: Place,
}

/// What serves on the plugin's port: the plugin, or a control or probe that tells its cost
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The plugin's router: the measurement.
    Plugin,
    /// The stock router again (`--stock-twice`): the control run, whose ratios are the
    /// bench's own noise.
    Stock,
    /// The plugin's router with a probe in the tagging layer's place (`--probe`).
    Probe(Probe),
}

/// A layer in the tagging layer's place that does one part of its work and nothing else,
/// so that runs with each tell where the plugin's cost is. Each keeps the stock answer
/// right: the same model serves, and a rewritten `model` is the one the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// Nothing: what the router's structure costs (two middleware layers, the admin
    /// routes beside the stock ones).
    Passthrough,
    /// Reads the request body whole and hands the same bytes on.
    Body,
    /// Reads the request body as the plugin does, with none of its checks: the members it
    /// reads in one typed pass, then the engine's text with `model` set to the engine's
    /// base model id (`server::request`).
    Request,
    /// Reads the answer whole and sets its `model` back to the client's (`default`).
    Answer,
    /// `request` and `answer` both: the tagging layer's JSON work without its checks,
    /// state or routing.
    Json,
}

impl Place {
    fn name(self) -> String {
        match self {
            Place::Plugin => "plugin".into(),
            Place::Stock => "stock (2nd port)".into(),
            Place::Probe(p) => format!("probe: {p:?}").to_lowercase(),
        }
    }

    /// The router for the plugin's port, from the stock router, the plugin's and the plugin;
    /// a probe adds its own time to `time`.
    fn router(
        self,
        stock: axum::Router,
        plugin_router: axum::Router,
        plugin: &Arc<Plugin>,
        time: Arc<ProbeTime>,
    ) -> axum::Router {
        match self {
            Place::Plugin => plugin_router,
            Place::Stock => stock,
            Place::Probe(probe) => {
                let state = Arc::new(ProbeState {
                    probe,
                    model: plugin.table.engine().base_id().to_string(),
                    config: plugin.config.plugin.clone(),
                    time,
                });
                compose(stock, plugin, |r| {
                    r.layer(axum::middleware::from_fn_with_state(state, probe_layer))
                })
            }
        }
    }
}

/// A probe layer's own time, summed over its requests: before the stock handler (its
/// request part) and after it (its answer part), as the plugin's `dnd_layer_seconds`.
#[derive(Default)]
struct ProbeTime {
    before_ns: AtomicU64,
    after_ns: AtomicU64,
    requests: AtomicU64,
}

impl ProbeTime {
    fn add(&self, before: Duration, after: Duration) {
        self.before_ns
            .fetch_add(before.as_nanos() as u64, Ordering::Relaxed);
        self.after_ns
            .fetch_add(after.as_nanos() as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Mean microseconds before and after the stock handler, and the requests.
    fn means_us(&self) -> (f64, f64, u64) {
        let n = self.requests.load(Ordering::Relaxed);
        let mean = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / n.max(1) as f64 / 1e3;
        (mean(&self.before_ns), mean(&self.after_ns), n)
    }
}

struct ProbeState {
    probe: Probe,
    /// The engine's base model id, which `request` and `json` put in the body.
    model: String,
    /// The plugin's config, for the default `max_tokens` that `request` adds.
    config: PluginConfig,
    time: Arc<ProbeTime>,
}

/// The layer of a [`Probe`].
async fn probe_layer(State(state): State<Arc<ProbeState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let probe = state.probe;
    let fail = |what: &str| (StatusCode::BAD_REQUEST, what.to_string()).into_response();
    let req = match probe {
        Probe::Passthrough | Probe::Answer => req,
        Probe::Body | Probe::Request | Probe::Json => {
            let (mut parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
                return fail("reading the body");
            };
            let body = if probe == Probe::Body {
                Body::from(bytes)
            } else {
                let engine = Fields::parse(&bytes)
                    .and_then(|f| EngineBody::new(&state.config, &bytes, &f, &state.model));
                let Ok(engine) = engine else {
                    return fail("not a JSON object");
                };
                Body::from(engine.into_text())
            };
            parts.headers.remove(header::CONTENT_LENGTH);
            Request::from_parts(parts, body)
        }
    };
    let before = started.elapsed();
    let resp = next.run(req).await;
    let answered = Instant::now();
    let resp = match probe {
        Probe::Answer | Probe::Json => client_model(resp).await,
        _ => resp,
    };
    state.time.add(before, answered.elapsed());
    resp
}

/// The answer read whole, its `model` set back to the client's (`default`).
async fn client_model(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "reading the answer").into_response();
    };
    match with_member(&bytes, "model", "default") {
        Some(rewritten) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(rewritten))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

/// Which router a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Served {
    Stock,
    Plugin,
}

impl Served {
    fn name(self) -> &'static str {
        match self {
            Served::Stock => "stock",
            Served::Plugin => "plugin",
        }
    }
}

/// A cell's requests over all rounds.
#[derive(Default)]
struct Cell {
    latencies: Vec<Duration>,
    /// Per round: answers and wall seconds.
    rounds: Vec<(usize, f64)>,
    errors: usize,
    first_error: Option<String>,
}

impl Cell {
    fn add(&mut self, wall: Duration, results: Vec<Result<Duration, String>>) {
        let answered = results.iter().filter(|r| r.is_ok()).count();
        self.rounds.push((answered, wall.as_secs_f64()));
        for r in results {
            match r {
                Ok(latency) => self.latencies.push(latency),
                Err(e) => {
                    self.errors += 1;
                    self.first_error.get_or_insert(e);
                }
            }
        }
    }

    fn per_second(&self) -> f64 {
        rate(&self.rounds)
    }
}

/// Bootstrap draws for [`paired_ratio_interval`].
const DRAWS: usize = 2000;

/// Requests/s over rounds (answers, wall seconds): all answers over all wall time.
fn rate<'a>(rounds: impl IntoIterator<Item = &'a (usize, f64)>) -> f64 {
    let (answered, wall) = rounds
        .into_iter()
        .fold((0, 0.0), |(n, w), &(rn, rw)| (n + rn, w + rw));
    answered as f64 / wall
}

/// The 95 % interval (2.5th and 97.5th percentiles of `draws` bootstrap draws) of the
/// ratio of `b`'s requests/s to `a`'s, the rounds drawn with replacement and in pairs:
/// round `i` of both, which ran side by side, so that drift common to both cancels. Why:
/// one ratio cannot say whether a 1 % cost is the layer or the machine; the spread of the
/// rounds can.
fn paired_ratio_interval(
    a: &[(usize, f64)],
    b: &[(usize, f64)],
    draws: usize,
    seed: u64,
) -> (f64, f64) {
    let n = a.len().min(b.len());
    crate::format::rng::bootstrap_95(n, draws, seed, |pick| {
        rate(pick.iter().map(|&i| &b[i])) / rate(pick.iter().map(|&i| &a[i]))
    })
}

/// Runs the bench and prints the table.
pub async fn run(setup: &Setup) -> Result<()> {
    ensure!(
        setup.rounds >= 1 && setup.requests >= 1 && setup.tokens >= 1,
        "--rounds, --requests and --tokens must be at least 1"
    );
    ensure!(
        !setup.levels.is_empty() && setup.levels.iter().all(|&c| c >= 1),
        "--levels: at least one, each at least 1"
    );
    let (config, model, _dirs) = config_for(setup)?;
    let max_seqs = config.model.max_seqs;
    let t = Instant::now();
    let place = setup.place;
    let probe_time = Arc::new(ProbeTime::default());
    let time = probe_time.clone();
    let (plugin, stock) = LocalServer::start_beside_stock(config, |stock, router, plugin| {
        place.router(stock, router, plugin, time)
    })
    .await?;
    let load = t.elapsed();
    print_machine();
    println!(
        "setup: {model} {} on one engine (max_seqs {max_seqs}, loaded in {:.1} s) behind two \
         routers in this process: the stock mistral.rs router alone and the plugin's (open \
         mode, no adapters); non-streamed greedy chats, max_tokens {}; untagged, or tagged \
         with X-Task-Id (8 task ids, none with an adapter); closed loop: c workers each send \
         the next request when the last answer is read (reqwest, in this process); {} rounds \
         of {} requests per cell and router, the order of the routers swapped every round",
        setup.dtype,
        load.as_secs_f64(),
        setup.tokens,
        setup.rounds,
        setup.requests,
    );
    match place {
        Place::Plugin => {}
        Place::Stock => println!(
            "control run (--stock-twice): the stock router serves in the plugin's place too, \
             on a second port"
        ),
        Place::Probe(p) => println!(
            "probe run (--probe {}): the plugin's router with a layer in the tagging layer's \
             place that does only this part of its work",
            format!("{p:?}").to_lowercase()
        ),
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let url = |served: Served| {
        let base = match served {
            Served::Stock => &stock.url,
            Served::Plugin => &plugin.url,
        };
        format!("{base}/v1/chat/completions")
    };
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        PROMPTS
            .iter()
            .map(|p| serde_json::to_vec(&chat_body(p, setup.tokens)).map(Bytes::from))
            .collect::<Result<Vec<Bytes>, _>>()?,
    );
    let top = *setup.levels.iter().max().expect("levels checked non-empty");

    // Warm both routers (connections, the engine's first batches) before the clock runs.
    for served in [Served::Stock, Served::Plugin] {
        for tagged in [false, true] {
            let (_, results) =
                run_cell(&client, &url(served), tagged, top, 2 * top, &bodies).await?;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                bail!(
                    "warm-up request to the {} router failed: {e}",
                    served.name()
                );
            }
        }
    }

    let mut cells: HashMap<(bool, usize, Served), Cell> = HashMap::new();
    for round in 0..setup.rounds {
        let order = if round % 2 == 0 {
            [Served::Stock, Served::Plugin]
        } else {
            [Served::Plugin, Served::Stock]
        };
        for &c in &setup.levels {
            for tagged in [false, true] {
                for served in order {
                    let (wall, results) =
                        run_cell(&client, &url(served), tagged, c, setup.requests, &bodies).await?;
                    cells
                        .entry((tagged, c, served))
                        .or_default()
                        .add(wall, results);
                }
            }
        }
        eprintln!("round {} of {} done", round + 1, setup.rounds);
    }

    println!(
        "| requests | concurrency | router | req/s | p50 ms | p99 ms | x stock req/s | 95 % interval | p99 vs stock | errors | bar |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let (mut met, mut rows, mut below) = (0, 0, 0);
    let mut errors = Vec::new();
    for tagged in [false, true] {
        let label = if tagged { "tagged" } else { "untagged" };
        for &c in &setup.levels {
            let base = &cells[&(tagged, c, Served::Stock)];
            let layered = &cells[&(tagged, c, Served::Plugin)];
            let ratio = layered.per_second() / base.per_second();
            let p99_ratio =
                quantile_ms(&layered.latencies, 0.99) / quantile_ms(&base.latencies, 0.99);
            let ok = ratio >= MIN_THROUGHPUT_RATIO
                && p99_ratio <= MAX_P99_RATIO
                && base.errors + layered.errors == 0;
            let (lo, hi) = paired_ratio_interval(&base.rounds, &layered.rounds, DRAWS, 15);
            rows += 1;
            met += usize::from(ok);
            below += usize::from(hi < MIN_THROUGHPUT_RATIO);
            for (served, cell) in [(Served::Stock, base), (Served::Plugin, layered)] {
                let is_plugin = served == Served::Plugin;
                println!(
                    "| {label} | {c} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                    if is_plugin {
                        place.name()
                    } else {
                        served.name().into()
                    },
                    cell.per_second(),
                    quantile_ms(&cell.latencies, 0.5),
                    quantile_ms(&cell.latencies, 0.99),
                    if is_plugin {
                        format!("{ratio:.3}x")
                    } else {
                        "1.000x".into()
                    },
                    if is_plugin {
                        format!("{lo:.3}-{hi:.3}")
                    } else {
                        "-".into()
                    },
                    if is_plugin {
                        format!("{:+.1} %", (p99_ratio - 1.0) * 100.0)
                    } else {
                        "-".into()
                    },
                    cell.errors,
                    match (is_plugin, ok) {
                        (false, _) => "-",
                        (true, true) => "met",
                        (true, false) => "missed",
                    }
                );
                if let Some(e) = &cell.first_error {
                    errors.push(format!("{label}, c={c}, {}: {e}", served.name()));
                }
            }
        }
    }
    println!(
        "bar (issue 15: the plugin's throughput >= {MIN_THROUGHPUT_RATIO}x the stock router's, \
         p99 within +{:.0} %, no errors): met in {met} of {rows} rows; the throughput ratio's \
         95 % interval (bootstrap over the {} paired rounds) lies wholly below \
         {MIN_THROUGHPUT_RATIO}x in {below} of {rows}",
        (MAX_P99_RATIO - 1.0) * 100.0,
        setup.rounds,
    );
    for e in errors {
        println!("first error: {e}");
    }
    if let Place::Probe(_) = place {
        let (before, after, n) = probe_time.means_us();
        println!(
            "the probe's own time (every request to its port, warm-up included): mean {before:.1} us \
             before the stock handler and {after:.1} us after it, over {n} requests"
        );
    }
    if place != Place::Plugin {
        return Ok(());
    }
    let layer = &plugin.plugin.metrics.layer_seconds;
    let mean_us = layer.get_sample_sum() / layer.get_sample_count().max(1) as f64 * 1e6;
    let lowest = *setup.levels.iter().min().expect("levels checked non-empty");
    let p50_us = quantile_ms(&cells[&(false, lowest, Served::Plugin)].latencies, 0.5) * 1e3;
    println!(
        "the layer's own time (dnd_layer_seconds: before and after the stock handler, every \
         plugin request of the run): mean {mean_us:.1} us over {} requests, {:.2} % of the \
         plugin's untagged p50 latency at concurrency {lowest}",
        layer.get_sample_count(),
        mean_us / p50_us * 100.0
    );
    Ok(())
}

/// The config of the plugin's server for `setup`, the model's name, and the temporary
/// folders it uses (the model, the store), kept while they are in use.
fn config_for(setup: &Setup) -> Result<(Config, String, Vec<tempfile::TempDir>)> {
    match setup.model {
        Model::Tiny => {
            let (model, store) = (tempfile::tempdir()?, tempfile::tempdir()?);
            crate::testing::write_tiny_llama(model.path(), 7)?;
            let mut config = Config::default();
            config.model.base = Some(model.path().to_path_buf());
            config.model.dtype = setup.dtype.clone();
            config.plugin.store = store.path().join("store");
            Ok((
                config,
                "tiny llama (2 layers, hidden 64, random weights)".into(),
                vec![model, store],
            ))
        }
        Model::Smollm2 => {
            let (_assets, store, config) = smollm2_config(setup.assets.clone(), &setup.dtype, 1)?;
            Ok((config, "SmolLM2-135M-Instruct".into(), vec![store]))
        }
    }
}

/// Sends `n` chats to `url` from `c` workers; the cell's wall time and each request's
/// latency (send to the last byte of the answer) or error.
async fn run_cell(
    client: &reqwest::Client,
    url: &str,
    tagged: bool,
    c: usize,
    n: usize,
    bodies: &Arc<Vec<Bytes>>,
) -> Result<(Duration, Vec<Result<Duration, String>>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..c)
        .map(|_| {
            let (client, url, bodies, next) = (
                client.clone(),
                url.to_string(),
                bodies.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break out;
                    }
                    out.push(chat(&client, &url, tagged, i, &bodies).await);
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for w in futures::future::join_all(workers).await {
        results.extend(w?);
    }
    Ok((t.elapsed(), results))
}

/// One chat, request `i` of its cell; its latency, or what went wrong.
async fn chat(
    client: &reqwest::Client,
    url: &str,
    tagged: bool,
    i: usize,
    bodies: &[Bytes],
) -> Result<Duration, String> {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bodies[i % bodies.len()].clone());
    if tagged {
        req = req.header("X-Task-Id", format!("bench-{}", i % TASKS));
    }
    let t = Instant::now();
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let latency = t.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "{status}: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_of_identical_rounds_is_one() {
        let rounds: Vec<(usize, f64)> = (0..20).map(|i| (4, 0.01 + i as f64 * 1e-3)).collect();
        assert_eq!(paired_ratio_interval(&rounds, &rounds, 200, 1), (1.0, 1.0));
    }

    #[test]
    fn the_interval_holds_a_steady_cost_and_pairing_cancels_drift() {
        // The machine's speed drifts 2x over the run; b is 3 % slower in every round, with
        // a little noise of its own.
        let mut rng = crate::format::rng::Rng::new(3);
        let a: Vec<(usize, f64)> = (0..100)
            .map(|i| (4, 0.01 * (1.0 + i as f64 / 100.0)))
            .collect();
        let b: Vec<(usize, f64)> = a
            .iter()
            .map(|&(n, w)| (n, w * 1.03 * (1.0 + 0.01 * (rng.unit_f32() as f64 - 0.5))))
            .collect();
        let (lo, hi) = paired_ratio_interval(&a, &b, DRAWS, 1);
        assert!(lo < 1.0 / 1.03 && 1.0 / 1.03 < hi, "{lo} {hi}");
        assert!(hi < 0.99, "a steady 3 % cost is told from none: {lo} {hi}");
        assert!(hi - lo < 0.005, "paired rounds cancel the drift: {lo} {hi}");
    }
}
