//! `bench tenants`: many authenticated tenants on one server for a long run. The server (in
//! this process, on loopback) serves SmolLM2 in keys mode (`plugin.tenants = "keys"`) with a
//! small resident capacity (`--resident`, default 2 adapter models) and, unless
//! `--no-generator`, automatic specialisation with the shipped generator and a small K
//! (`--k`, default 4). Before the clock starts, the admin API makes one key per tenant
//! (`--tenants`, default 1000) and hot-loads random r=8 adapters for `--uploaded` of them
//! (default 32, spread evenly over the tenants, hot and cold alike), so that evictions and
//! reloads happen whatever the generator does.
//!
//! Then for `--minutes` (default 10) `--concurrency` workers (default 8) send short greedy
//! chats (`--tokens`, default 4), each for a tenant drawn from a Zipf law (tenant i, from
//! 0, with weight 1/(i+1)^s, `--zipf` s, default 1; 0 is uniform) with that tenant's key.
//! Every answer is sorted: 2xx; a documented refusal (429 `rate_limit_exceeded` of a key's
//! limit or an adapter's in-flight bound, 503 `server_overloaded` or `too_many_tasks`); or
//! a failure (any other status, or no answer within 300 s), grouped by status and error
//! code. Meanwhile the process's RSS is sampled every second and `GET /admin/adapters`
//! every `--admin-every-ms` (default 250); `/metrics` before and after gives the evictions
//! and adapter loads of the run. One summary table with the bars: no failures, RSS
//! under the ceiling stated in the setup line, evictions and reloads seen, admin p99 < 100
//! ms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use super::{p50_p99, peak_rss_bytes, print_machine, quantile_ms, rss_bytes, smollm2_config};
use crate::format::peft::random_adapter;
use crate::format::{LlamaDims, Module};
use crate::server::config::TenantMode;
use crate::server::local::{adapter_form, chat_body, LocalServer, Reply};

const TOKEN: &str = "bench";
/// Refusals the API documents (status, `error.code`): clients retry them after
/// `Retry-After`; anything else that is not a 2xx is a failure.
const DOCUMENTED: [(u16, &str); 3] = [
    (429, "rate_limit_exceeded"),
    (503, "server_overloaded"),
    (503, "too_many_tasks"),
];
/// The admin API's bar (issue 15): p99 under this many ms.
const ADMIN_P99_MS: f64 = 100.0;
/// RSS ceiling: the RSS before any adapter is loaded, plus this many times the memory
/// budgeted per resident adapter (`server::adapter_model_bytes`: a merged copy measured
/// 1.32x its weights in `bench hotload`), plus the most KV cache the load can make the
/// engine hold (`server::kv_cache_bytes`: 2n - 1 sequences' caches for a batch of n, the
/// workers or the engine's `max_seqs` if fewer), plus [`HEADROOM_MIB`] (a step's
/// activations, generations, the allocator's free memory, this load generator).
const PER_MODEL: f64 = 1.5;
const HEADROOM_MIB: u64 = 256;
/// Tokens of a chat's prompt at most: SmolLM2's chat template and the longest of
/// [`PROMPTS`], rounded up.
const PROMPT_TOKENS: usize = 64;

const PROMPTS: [&str; 8] = [
    "Translate 'good morning' into French.",
    "What is 17 plus 25?",
    "Write the word 'table' in capital letters.",
    "Name the month after March.",
    "Is 91 a prime number?",
    "Give a synonym of 'quick'.",
    "Sort these words: pear, apple, fig.",
    "How many legs does a spider have?",
];

/// What to run.
pub struct Setup {
    pub tenants: usize,
    pub minutes: f64,
    pub concurrency: usize,
    /// Zipf exponent of the tenant draw (0: uniform).
    pub zipf: f64,
    /// `plugin.prompts_k`.
    pub k: usize,
    /// `plugin.max_resident`.
    pub resident: usize,
    /// Tenants given a random adapter before the run.
    pub uploaded: usize,
    /// Requests per minute of every tenant's key.
    pub rpm: u32,
    /// `max_tokens` of every chat.
    pub tokens: usize,
    /// Generator folder; `None`: no automatic specialisation.
    pub generator: Option<PathBuf>,
    pub dtype: String,
    pub admin_every: Duration,
    pub assets: Option<PathBuf>,
}

/// Runs the bench and prints the summary.
pub async fn run(setup: &Setup) -> Result<()> {
    ensure!(setup.tenants >= 1, "--tenants must be at least 1");
    ensure!(
        setup.uploaded <= setup.tenants,
        "--uploaded must be at most --tenants"
    );
    ensure!(
        setup.concurrency >= 1 && setup.k >= 1 && setup.resident >= 1 && setup.tokens >= 1,
        "--concurrency, --k, --resident and --tokens must be at least 1"
    );
    ensure!(
        setup.minutes > 0.0 && setup.zipf >= 0.0,
        "--minutes must be positive, --zipf at least 0"
    );
    let (assets, _store, mut config) =
        smollm2_config(setup.assets.clone(), &setup.dtype, setup.resident)?;
    config.plugin.tenants = TenantMode::Keys;
    config.plugin.admin_token = Some(TOKEN.into());
    config.plugin.prompts_k = Some(setup.k);
    if let Some(g) = &setup.generator {
        config.plugin.generator = Some(g.clone());
        config.plugin.encoder = Some(assets.minilm());
    }
    let dims = LlamaDims::from_config_file(&assets.smollm2().join("config.json"))?;
    let model_bytes = crate::server::adapter_model_bytes(
        &assets.smollm2(),
        &dims,
        &setup.dtype,
        config.model.adapter_mode,
    )?;
    // The engine runs a `max_seqs` of 0 as 1 (`engine::scheduler`).
    let max_seqs = config.model.max_seqs.max(1);
    let batch = setup.concurrency.min(max_seqs);
    let kv_bytes =
        crate::server::kv_bound_bytes(&dims, &setup.dtype, batch, PROMPT_TOKENS + setup.tokens);
    let mode = config.model.adapter_mode;
    let picker = Zipf::new(setup.tenants, setup.zipf);
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct {} on the engine, keys mode, {} tenants (one key each, \
         {} requests/min), max_resident {}, {}; random r=8 q+v adapters uploaded for {} \
         tenants spread evenly; {} workers for {} min, each sending non-streamed greedy \
         chats (max_tokens {}) for a tenant drawn {} (the most requested tenant gets {:.1} % \
         of the requests); GET /admin/adapters every {} ms; RSS every 1 s",
        setup.dtype,
        setup.tenants,
        setup.rpm,
        setup.resident,
        match &setup.generator {
            Some(g) => format!("generator {} with K = {}", g.display(), setup.k),
            None => "no generator".into(),
        },
        setup.uploaded,
        setup.concurrency,
        setup.minutes,
        setup.tokens,
        if setup.zipf == 0.0 {
            "uniformly".to_string()
        } else {
            format!("from a Zipf law (weight 1/(rank+1)^{})", setup.zipf)
        },
        100.0 * picker.share(0),
        setup.admin_every.as_millis(),
    );

    let t = Instant::now();
    let server = LocalServer::start(config).await?;
    eprintln!("server started in {:.1} s", t.elapsed().as_secs_f64());
    // A tenant of its own warms the engine, so that the RSS below includes a served request.
    let warm = create_key(&server, "bench-warmup", setup.rpm).await?;
    let reply = Reply::read(
        server
            .chat_request(None)
            .bearer_auth(warm)
            .json(&chat_body("Name a colour.", 1))
            .send()
            .await?,
    )
    .await?;
    ensure!(reply.is_success(), "warm-up chat failed: {}", reply.json);
    let rss_start = rss_bytes();

    let t = Instant::now();
    let mut keys = Vec::with_capacity(setup.tenants);
    for i in 0..setup.tenants {
        keys.push(create_key(&server, &tenant(i), setup.rpm).await?);
    }
    eprintln!(
        "{} keys made in {:.1} s",
        setup.tenants,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for j in 0..setup.uploaded {
        let i = j * setup.tenants / setup.uploaded;
        let adapter = random_adapter(&dims, &[Module::Q, Module::V], 8, i as u64, 0.02, 0.02)?;
        let up = server
            .upload_with(&tenant(i), adapter_form(&adapter)?)
            .await?;
        ensure!(
            up.status == 201,
            "upload for {} failed: {}",
            tenant(i),
            up.json
        );
    }
    eprintln!(
        "{} adapters uploaded in {:.1} s",
        setup.uploaded,
        t.elapsed().as_secs_f64()
    );
    let ceiling = rss_start
        + (setup.resident as f64 * PER_MODEL * model_bytes as f64) as u64
        + kv_bytes
        + (HEADROOM_MIB << 20);
    println!(
        "RSS ceiling: {} MiB = {} MiB before any adapter (base model, generator, one request) \
         + {} resident x {PER_MODEL} x {} MiB (an adapter's budget, {:?} mode, {}) + {} MiB \
         (KV cache: 2 x {batch} - 1 sequences for a batch of min(workers, max_seqs \
         {max_seqs})) + {HEADROOM_MIB} MiB headroom",
        ceiling >> 20,
        rss_start >> 20,
        setup.resident,
        model_bytes >> 20,
        mode,
        setup.dtype,
        kv_bytes >> 20,
    );

    let before = scrape_metrics(&server).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(setup.minutes * 60.0);
    let load = Arc::new(Load {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?,
        url: format!("{}/v1/chat/completions", server.url),
        keys,
        picker,
        tokens: setup.tokens,
        deadline,
        answered: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let t = Instant::now();
    let workers: Vec<_> = (0..setup.concurrency)
        .map(|w| tokio::spawn(send_chats(load.clone(), w as u64)))
        .collect();
    let done = AtomicBool::new(false);
    let sending = async {
        let results = futures::future::join_all(workers).await;
        done.store(true, Ordering::Relaxed);
        results
    };
    let (results, admin, rss_peak) = tokio::join!(
        sending,
        sample_admin(&server, setup.admin_every, &done),
        sample_rss(&load, &done)
    );
    let wall = t.elapsed();
    let mut tally = Tally::default();
    for r in results {
        tally.merge(r?);
    }
    let after = scrape_metrics(&server).await?;

    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    let evictions = delta("dnd_evictions_total");
    let loads = delta("dnd_adapter_loads_total");
    // Regeneration is off (plugin.regenerate_after unset), so a load is either a task's
    // first adapter (the stored count grows) or a reload of one evicted before.
    let new_adapters = delta("dnd_adapters{where=\"stored\"}");
    let reloads = loads - new_adapters;
    let answered = tally.latencies.len();
    let refused: usize = tally.refused.values().sum();
    let failed: usize = tally.failed.values().map(|(n, _)| n).sum();
    let admin_p99 = quantile_ms(&admin.latencies, 0.99);
    let mark = |ok: bool| if ok { "met" } else { "missed" };

    println!("| measure | value | bar | |");
    println!("|---|---|---|---|");
    println!(
        "| requests answered (2xx) | {answered} in {:.0} s ({:.1} req/s), latency p50 / p99 {} ms | | |",
        wall.as_secs_f64(),
        answered as f64 / wall.as_secs_f64(),
        p50_p99(&tally.latencies)
    );
    println!(
        "| of which served by the tenant's adapter | {} ({:.1} %) | | |",
        tally.by_adapter,
        100.0 * tally.by_adapter as f64 / answered.max(1) as f64
    );
    println!("| documented refusals (429, 503) | {refused} | allowed | |");
    println!(
        "| failed requests (any other non-2xx, or no answer) | {failed} | 0 | {} |",
        mark(failed == 0)
    );
    println!(
        "| evictions during the run (/metrics) | {evictions:.0} | > 0 | {} |",
        mark(evictions > 0.0)
    );
    println!(
        "| adapter loads during the run (/metrics) | {loads:.0}: {new_adapters:.0} first adapters (generated), {reloads:.0} reloads | reloads > 0 | {} |",
        mark(reloads > 0.0)
    );
    println!(
        "| generations finished / failed (/metrics) | {:.0} / {:.0} | | |",
        delta("dnd_generation_seconds_count"),
        delta("dnd_failures_total{kind=\"generation\"}")
    );
    println!(
        "| RSS peak, sampled every 1 s (VmHWM of the whole process) | {} MiB ({} MiB) | < {} MiB | {} |",
        rss_peak >> 20,
        peak_rss_bytes() >> 20,
        ceiling >> 20,
        mark(rss_peak < ceiling)
    );
    println!(
        "| GET /admin/adapters p50 / p99 / max, {} calls, {} not 200 | {:.1} / {:.1} / {:.1} ms | p99 < {ADMIN_P99_MS} ms | {} |",
        admin.latencies.len() + admin.errors.len(),
        admin.errors.len(),
        quantile_ms(&admin.latencies, 0.5),
        admin_p99,
        quantile_ms(&admin.latencies, 1.0),
        mark(admin_p99 < ADMIN_P99_MS && admin.errors.is_empty())
    );
    for (kind, n) in &tally.refused {
        println!("refused: {n} x {kind}");
    }
    for (kind, (n, example)) in &tally.failed {
        println!("failed: {n} x {kind}, e.g. {example}");
    }
    if let Some(e) = admin.errors.first() {
        println!("admin API error, e.g. {e}");
    }
    Ok(())
}

/// The task id (and key tenant) of tenant `i`.
fn tenant(i: usize) -> String {
    format!("tenant-{i:04}")
}

/// `POST /admin/keys` for `tenant`; the key.
async fn create_key(server: &LocalServer, tenant: &str, rpm: u32) -> Result<String> {
    let reply = Reply::read(
        server
            .admin(Method::POST, "/keys")
            .json(&json!({ "tenant": tenant, "rpm": rpm }))
            .send()
            .await?,
    )
    .await?;
    ensure!(
        reply.status == 201,
        "making a key for {tenant} failed: {}",
        reply.json
    );
    reply.json["key"]
        .as_str()
        .map(str::to_string)
        .context("no key in the answer of POST /admin/keys")
}

/// `GET /metrics` with the admin token.
async fn scrape_metrics(server: &LocalServer) -> Result<String> {
    let mut req = server.client.get(format!("{}/metrics", server.url));
    if let Some(token) = &server.plugin.admin_token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    ensure!(resp.status().is_success(), "/metrics: {}", resp.status());
    Ok(resp.text().await?)
}

/// The value of sample `name` (with its labels, as the text format writes them) in a
/// `/metrics` text; 0 when absent (a labelled counter appears once it has counted).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Tenant `i` (from 0) drawn with weight 1/(i+1)^s.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|i| {
                total += ((i + 1) as f64).powf(-s);
                total
            })
            .collect();
        Self { cumulative }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().expect("at least one tenant");
        let u = rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }

    /// The fraction of draws that give tenant `i`.
    fn share(&self, i: usize) -> f64 {
        let below = if i == 0 { 0.0 } else { self.cumulative[i - 1] };
        (self.cumulative[i] - below) / self.cumulative.last().expect("at least one tenant")
    }
}

/// What the workers share.
struct Load {
    client: reqwest::Client,
    /// The chat completions URL.
    url: String,
    /// Tenant i's key.
    keys: Vec<String>,
    picker: Zipf,
    tokens: usize,
    deadline: Instant,
    /// For the progress line.
    answered: AtomicUsize,
    failed: AtomicUsize,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    /// Of the 2xx answers.
    latencies: Vec<Duration>,
    by_adapter: usize,
    /// Documented refusals by "status code".
    refused: BTreeMap<String, usize>,
    /// Failures by kind, with one example each.
    failed: BTreeMap<String, (usize, String)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.by_adapter += other.by_adapter;
        for (k, n) in other.refused {
            *self.refused.entry(k).or_default() += n;
        }
        for (k, (n, example)) in other.failed {
            self.failed.entry(k).or_insert((0, example)).0 += n;
        }
    }

    fn fail(&mut self, kind: String, example: String) {
        self.failed.entry(kind).or_insert((0, example)).0 += 1;
    }
}

/// One worker: chats for random tenants until the deadline, one at a time.
async fn send_chats(load: Arc<Load>, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let mut i = 0;
    while Instant::now() < load.deadline {
        let tenant = load.picker.sample(&mut rng);
        let prompt = format!(
            "{} ({seed}.{i})",
            PROMPTS[(seed as usize + i) % PROMPTS.len()]
        );
        i += 1;
        let t = Instant::now();
        let sent = load
            .client
            .post(&load.url)
            .bearer_auth(&load.keys[tenant])
            .json(&chat_body(&prompt, load.tokens))
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                load.failed.fetch_add(1, Ordering::Relaxed);
                tally.fail(transport_kind(&e), e.to_string());
                continue;
            }
        };
        let status = resp.status().as_u16();
        let adapter = resp
            .headers()
            .get("x-dnd-adapter")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "base");
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                load.failed.fetch_add(1, Ordering::Relaxed);
                tally.fail(transport_kind(&e), e.to_string());
                continue;
            }
        };
        if (200..300).contains(&status) {
            load.answered.fetch_add(1, Ordering::Relaxed);
            tally.latencies.push(t.elapsed());
            tally.by_adapter += usize::from(adapter);
            continue;
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = v["error"]["code"].as_str().unwrap_or("-").to_string();
        let kind = format!("{status} {code}");
        if DOCUMENTED.iter().any(|&(s, c)| s == status && c == code) {
            *tally.refused.entry(kind).or_default() += 1;
        } else {
            load.failed.fetch_add(1, Ordering::Relaxed);
            let text = String::from_utf8_lossy(&body);
            tally.fail(kind, text.chars().take(300).collect());
        }
    }
    tally
}

/// A request that got no answer, by why.
fn transport_kind(e: &reqwest::Error) -> String {
    let why = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "reading the body"
    } else {
        "other"
    };
    format!("no answer ({why})")
}

/// Latencies of `GET /admin/adapters` (send to the answer's last byte).
#[derive(Default)]
struct AdminSamples {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// Calls `GET /admin/adapters` every `every` until `done`.
async fn sample_admin(server: &LocalServer, every: Duration, done: &AtomicBool) -> AdminSamples {
    let mut out = AdminSamples::default();
    while !done.load(Ordering::Relaxed) {
        let t = Instant::now();
        match server.admin(Method::GET, "/adapters").send().await {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(_) if status.is_success() => out.latencies.push(t.elapsed()),
                    Ok(body) => out
                        .errors
                        .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => out.errors.push(e.to_string()),
                }
            }
            Err(e) => out.errors.push(e.to_string()),
        }
        tokio::time::sleep(every).await;
    }
    out
}

/// Samples the process's RSS every second until `done`, with a progress line on stderr
/// every minute; the peak.
async fn sample_rss(load: &Load, done: &AtomicBool) -> u64 {
    let (mut peak, mut seconds) = (0, 0u64);
    while !done.load(Ordering::Relaxed) {
        peak = peak.max(rss_bytes());
        tokio::time::sleep(Duration::from_secs(1)).await;
        seconds += 1;
        if seconds % 60 == 0 {
            eprintln!(
                "{} min: {} answered, {} failed, RSS {} MiB",
                seconds / 60,
                load.answered.load(Ordering::Relaxed),
                load.failed.load(Ordering::Relaxed),
                rss_bytes() >> 20
            );
        }
    }
    peak.max(rss_bytes())
}
