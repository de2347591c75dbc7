//! `mistralrs-dnd bench ...`: benchmarks that print their numbers and the setup they ran on.
//! `bench hotload` times hot-loading adapters into the server; `bench generator` times the
//! generation of one SmolLM2-135M adapter from 32 prompts of about 64 tokens, stage by
//! stage, with the peak resident memory (VmHWM); `bench time-to-adapter` times automatic
//! specialisation end to end (K-th request -> first token through the generated adapter).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use candle_core::Device;
use futures::StreamExt;

use crate::assets::{default_root, given_or_default, Assets};
use crate::format::{LlamaDims, Module};
use crate::generator::{self, decoder::DecoderConfig, Decoder, Generator, PromptEncoder};
use crate::server::{self, Config};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Hot-load latency (upload -> first token through the adapter) and RSS per resident
    /// adapter, on the real SmolLM2 base model.
    Hotload(HotloadArgs),
    /// Time prompt encoding, decoding and detokenising of one adapter.
    Generator(GeneratorArgs),
    /// Time-to-adapter of automatic specialisation on SmolLM2: from the K-th request of a
    /// task to the first token through its generated adapter, with its parts.
    TimeToAdapter(TimeToAdapterArgs),
}

#[derive(Debug, clap::Args)]
pub struct TimeToAdapterArgs {
    /// Tasks to specialise, one after the other (built-in suite tasks, their test prompts).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "add,uppercase,count_items,month_shift,parity"
    )]
    pub tasks: Vec<String>,
    /// Generator folder (default: the shipped SmolLM2 generator).
    #[arg(long, default_value = crate::generator::SHIPPED_SMOLLM2)]
    pub generator: PathBuf,
    /// Serving dtype.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct HotloadArgs {
    /// Adapters to hot-load, one after the other (all stay resident).
    #[arg(long, default_value_t = 5)]
    pub n: usize,
    /// Serving dtype.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct GeneratorArgs {
    /// Generator folder; default: a randomly initialised SmolLM2-135M default generator.
    #[arg(long)]
    pub generator: Option<PathBuf>,
    /// Prompt encoder folder (default: all-MiniLM-L6-v2 in the asset root, fetched if
    /// missing).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Number of prompts given to the generator.
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    /// Timed runs after one warm-up run; the median is printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

pub fn run(args: Args) -> Result<()> {
    match args.bench {
        Bench::Hotload(a) => tokio::runtime::Runtime::new()?.block_on(hotload(a)),
        Bench::Generator(a) => generator(a),
        Bench::TimeToAdapter(a) => tokio::runtime::Runtime::new()?.block_on(time_to_adapter(a)),
    }
}

/// Resident set size of this process (bytes), from /proc.
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

/// Peak resident set size of this process (bytes), from /proc.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "machine: {cores} cores, {cpu}; device: {:?}",
        crate::engine::device()
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// "median X ms, min Y ms, max Z ms".
fn spread(v: &[Duration]) -> Result<String> {
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    Ok(format!(
        "median {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms(&median(&mut v.to_vec())),
        ms(v.iter().min().context("no runs")?),
        ms(v.iter().max().context("no runs")?)
    ))
}

/// The real assets (fetched if missing) and a server config for SmolLM2 in `dtype` with a
/// temporary store (kept alive by the returned guard) and room for `resident` adapters.
fn smollm2_config(
    root: Option<PathBuf>,
    dtype: &str,
    resident: usize,
) -> Result<(Assets, tempfile::TempDir, Config)> {
    let assets = Assets::new(root.unwrap_or_else(default_root));
    assets.ensure()?;
    let store = tempfile::tempdir()?;
    let mut config = Config::default();
    config.model.base = Some(assets.smollm2());
    config.model.dtype = dtype.to_string();
    config.plugin.store = store.path().join("store");
    config.plugin.max_resident = resident;
    config.plugin.max_resident_mib = 1 << 20;
    Ok((assets, store, config))
}

async fn hotload(args: HotloadArgs) -> Result<()> {
    ensure!(args.n >= 1, "--n must be at least 1");
    let (assets, _store, config) = smollm2_config(args.assets, &args.dtype, args.n + 1)?;
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct {} on the engine, LoRA r=8 on q_proj+v_proj, {} adapters hot-loaded in turn over HTTP on loopback, all kept resident",
        args.dtype, args.n
    );
    let t = Instant::now();
    let (router, _plugin) = server::build(config).await?;
    println!("base model load: {:.2} s", t.elapsed().as_secs_f64());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let dims = LlamaDims::from_config_file(&assets.smollm2().join("config.json"))?;

    // Warm the base path once so the first measurement does not pay for it.
    first_token(&client, &url, None).await?;
    let rss0 = rss_bytes();
    let (mut totals, mut puts) = (Vec::new(), Vec::new());
    println!(
        "{:>3} {:>12} {:>12} {:>14} {:>12} {:>8}",
        "#", "upload+load", "first token", "upload->token", "warm request", "RSS MB"
    );
    for i in 0..args.n {
        let adapter = crate::testing::random_adapter(
            &dims,
            &[Module::Q, Module::V],
            8,
            i as u64,
            0.02,
            0.02,
        )?;
        let config_bytes = serde_json::to_vec(&adapter.config)?;
        let weights = adapter.safetensors_bytes()?;
        let task = format!("bench-{i}");
        let form = reqwest::multipart::Form::new()
            .part(
                "adapter_config.json",
                reqwest::multipart::Part::bytes(config_bytes).file_name("adapter_config.json"),
            )
            .part(
                "adapter_model.safetensors",
                reqwest::multipart::Part::bytes(weights).file_name("adapter_model.safetensors"),
            );
        let t = Instant::now();
        let resp = client
            .put(format!("{url}/admin/adapters/{task}"))
            .multipart(form)
            .send()
            .await?;
        ensure!(
            resp.status().as_u16() == 201,
            "upload failed: {}",
            resp.text().await?
        );
        let put = t.elapsed();
        let label = first_token(&client, &url, Some(&task)).await?;
        let total = t.elapsed();
        ensure!(
            label.starts_with(&task),
            "served by {label}, not the adapter"
        );
        let t2 = Instant::now();
        first_token(&client, &url, Some(&task)).await?;
        let warm = t2.elapsed();
        println!(
            "{:>3} {:>10.0}ms {:>10.0}ms {:>12.0}ms {:>10.0}ms {:>8.0}",
            i,
            put.as_secs_f64() * 1e3,
            (total - put).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            rss_bytes() as f64 / 1e6
        );
        puts.push(put);
        totals.push(total);
    }
    let per_adapter = (rss_bytes().saturating_sub(rss0)) as f64 / args.n as f64 / 1e6;
    println!(
        "hot-load latency (upload -> first token through the adapter): {}",
        spread(&totals)?
    );
    println!(
        "upload + validate + store + load + merge + register: median {:.0} ms",
        median(&mut puts).as_secs_f64() * 1e3
    );
    println!("RSS per resident adapter: {per_adapter:.0} MB");
    server.abort();
    Ok(())
}

async fn time_to_adapter(args: TimeToAdapterArgs) -> Result<()> {
    const TOKEN: &str = "bench";
    let (assets, _store, mut config) =
        smollm2_config(args.assets, &args.dtype, args.tasks.len() + 1)?;
    config.plugin.generator = Some(args.generator.clone());
    config.plugin.encoder = Some(assets.minilm());
    config.plugin.admin_token = Some(TOKEN.into());
    let k = crate::generator::decoder::DecoderConfig::load(&args.generator)?.prompts;
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct {} on the engine, generator {} (K = N = {k} prompts), \
         tasks {} in turn; each task gets K tagged requests (max_tokens 1), the clock starts \
         when the K-th is sent and stops at the first streamed token through the adapter",
        args.dtype,
        args.generator.display(),
        args.tasks.join(", ")
    );
    let (router, _plugin) = server::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    first_token(&client, &url, None).await?;
    let stages = [
        "encode",
        "decode",
        "detokenise",
        "write",
        "load_merge",
        "register",
    ];
    println!(
        "{:<14} {} {:>12} {:>12}",
        "task",
        stages.map(|s| format!("{s:>11}")).join(""),
        "first token",
        "total"
    );
    let mut totals = Vec::new();
    let mut parts: Vec<Vec<f64>> = vec![Vec::new(); stages.len()];
    for name in &args.tasks {
        let task = crate::tasks::builtin_task(name, &Default::default())?;
        let prompts: Vec<&str> = task
            .test
            .iter()
            .map(|e| e.prompt.as_str())
            .take(k)
            .collect();
        ensure!(
            prompts.len() == k,
            "task {name} has fewer than {k} test prompts"
        );
        let ask = |prompt: &str| {
            client
                .post(format!("{url}/v1/chat/completions"))
                .header("X-Task-Id", name.as_str())
                .json(&serde_json::json!({
                    "model": "default",
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 1,
                    "temperature": 0.0,
                }))
                .send()
        };
        for p in &prompts[..k - 1] {
            ensure!(ask(p).await?.status().is_success(), "request failed");
        }
        let t0 = Instant::now();
        ensure!(
            ask(prompts[k - 1]).await?.status().is_success(),
            "request failed"
        );
        let info = loop {
            let v: serde_json::Value = client
                .get(format!("{url}/admin/adapters/{name}"))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .json()
                .await?;
            if v["state"] == "resident" {
                break v;
            }
            if v["generation"]["state"] == "failed" {
                anyhow::bail!("generation failed: {}", v["generation"]);
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(120),
                "no adapter after 120 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let t1 = Instant::now();
        let label = first_token(&client, &url, Some(name)).await?;
        let total = t0.elapsed();
        ensure!(
            label.starts_with(name.as_str()),
            "served by {label}, not the adapter"
        );
        let timings: std::collections::HashMap<String, f64> =
            serde_json::from_value(info["generation"]["last_timings_ms"].clone())
                .map(|v: Vec<(String, f64)>| v.into_iter().collect())
                .context("no stage timings in the admin API")?;
        let row: Vec<f64> = stages
            .iter()
            .map(|s| timings.get(*s).copied().unwrap_or(f64::NAN))
            .collect();
        println!(
            "{:<14} {} {:>10.0}ms {:>10.0}ms",
            name,
            row.iter()
                .map(|ms| format!("{ms:>9.0}ms"))
                .collect::<String>(),
            t1.elapsed().as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
        for (p, v) in parts.iter_mut().zip(row) {
            p.push(v);
        }
        totals.push(total);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "time-to-adapter (K-th request sent -> first token through the adapter): {}",
        spread(&totals)?
    );
    println!(
        "median parts: {}",
        stages
            .iter()
            .zip(parts.iter_mut())
            .map(|(s, v)| format!("{s} {:.0} ms", med(v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    server.abort();
    Ok(())
}

/// Streams a one-token chat completion and returns the `x-dnd-adapter` label once the first
/// content token arrives.
async fn first_token(client: &reqwest::Client, url: &str, task: Option<&str>) -> Result<String> {
    let mut req = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "default",
            "messages": [{"role": "user", "content": "Name a colour."}],
            // One token: the stream ends with it, so timed requests never overlap.
            "max_tokens": 1,
            "temperature": 0.0,
            "stream": true,
        }));
    if let Some(t) = task {
        req = req.header("X-Task-Id", t);
    }
    let resp = req.send().await?;
    ensure!(resp.status().is_success(), "chat failed: {}", resp.status());
    let label = resp
        .headers()
        .get("x-dnd-adapter")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        for line in buf.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
            {
                return Ok(label);
            }
        }
    }
    anyhow::bail!("stream ended without a content token")
}

/// `n` distinct prompts of about 64 MiniLM tokens each.
fn bench_prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Question {i}: A farmer has {a} apples and buys {b} more baskets with {c} apples \
                 in each basket. He then gives away {d} apples to his neighbours and sells half \
                 of what is left at the market. How many apples does the \
                 farmer have at the end of the day? Explain your reasoning and give \
                 the final number.",
                a = 10 + i,
                b = 2 + i % 5,
                c = 6 + i % 7,
                d = 3 + i % 4
            )
        })
        .collect()
}

/// `bench generator`: prints the setup, per-stage median times, peak RSS and (for the random
/// default config) the CPU cost of a training step.
pub fn generator(a: GeneratorArgs) -> Result<()> {
    let device = generator::default_device()?;
    let random = a.generator.is_none();
    let (decoder, _) = match &a.generator {
        Some(dir) => Decoder::load(dir, &device)?,
        None => Decoder::seeded(&DecoderConfig::smollm2_default(), 0, &device)?,
    };
    let encoder = given_or_default(a.encoder.as_deref(), Assets::minilm)?;
    let encoder = PromptEncoder::load(&encoder, &device)
        .with_context(|| format!("bench needs the prompt encoder at {}", encoder.display()))?;
    let g = Generator::new(encoder, decoder)?;
    let cfg = g.config().clone();
    let layout = g.layout().clone();
    let b = &cfg.base;
    println!("== bench generator ==");
    print_machine();
    println!(
        "generator: {}",
        match &a.generator {
            Some(d) => d.display().to_string(),
            None => "RANDOMLY INITIALISED default SmolLM2-135M config (no trained generator; \
                     timings are what a trained one of the same config costs)"
                .to_string(),
        }
    );
    println!(
        "base model: {} (hidden {}, intermediate {}, {} heads, {} KV heads, head_dim {}, {} layers)",
        cfg.base_model,
        b.hidden_size,
        b.intermediate_size,
        b.num_attention_heads,
        b.num_key_value_heads,
        b.head_dim(),
        b.num_hidden_layers
    );
    println!(
        "adapter: r={} alpha={} modules={:?}, C={} -> {} weight tokens of ({}, {}), {} LoRA weights",
        cfg.rank,
        cfg.lora_alpha,
        cfg.target_modules,
        cfg.chunk,
        layout.n_tokens,
        layout.token_h(),
        layout.token_w(),
        layout.n_weights()
    );
    println!(
        "decoder: N={} L={} k={} shapes {:?}; {} parameters; {:.3} GFLOP per adapter",
        cfg.prompts,
        cfg.prompt_tokens,
        cfg.kernel,
        cfg.shapes,
        cfg.param_count(),
        cfg.flops() as f64 / 1e9
    );
    let prompts = bench_prompts(a.prompts);
    let (_, mask) = g.encoder().encode(&prompts[..1], 512)?;
    let tokens = mask.sum_all()?.to_scalar::<f32>()?;
    println!(
        "input: {} prompts of ~{tokens} MiniLM tokens (cut to L={})",
        prompts.len(),
        cfg.prompt_tokens
    );
    let warm = g.generate(&prompts)?;
    for note in &warm.notes {
        println!("note: {note}");
    }
    let runs: Vec<_> = (0..a.runs.max(1))
        .map(|_| g.generate(&prompts).map(|r| r.timings))
        .collect::<Result<_>>()?;
    let stage = |f: fn(&crate::generator::Timings) -> Duration| {
        median(&mut runs.iter().map(f).collect::<Vec<_>>())
    };
    let enc = stage(|t| t.encode);
    let dec = stage(|t| t.decode);
    let det = stage(|t| t.detokenise);
    let tot = stage(|t| t.total());
    println!("median of {} runs (after 1 warm-up):", runs.len());
    println!("  encoder     {:8.1} ms", enc.as_secs_f64() * 1e3);
    println!(
        "  decoder     {:8.1} ms  ({:.1} GFLOP/s)",
        dec.as_secs_f64() * 1e3,
        cfg.flops() as f64 / 1e9 / dec.as_secs_f64()
    );
    println!("  detokenise  {:8.1} ms", det.as_secs_f64() * 1e3);
    println!("  total       {:8.1} ms", tot.as_secs_f64() * 1e3);
    println!(
        "peak RSS: {:.1} MiB",
        peak_rss_bytes() as f64 / (1 << 20) as f64
    );
    if random {
        // What training this config costs: one forward + backward pass on a batch of 4.
        let (dec, _) = Decoder::seeded(&cfg, 1, &Device::Cpu)?;
        let [n, l, w] = cfg.shapes[0];
        let x = candle_core::Tensor::randn(0f32, 1.0, (4, n, l, w), &Device::Cpu)?;
        let step = || -> Result<Duration> {
            let t = std::time::Instant::now();
            let loss = dec.forward(&x)?.sqr()?.mean_all()?;
            let _grads = loss.backward()?;
            Ok(t.elapsed())
        };
        step()?;
        let t = median(&mut (0..3).map(|_| step()).collect::<Result<Vec<_>>>()?);
        println!(
            "training cost (CPU): forward+backward of a batch of 4 in {:.0} ms -> {:.0} samples/hour",
            t.as_secs_f64() * 1e3,
            4.0 * 3600.0 / t.as_secs_f64()
        );
    }
    Ok(())
}
