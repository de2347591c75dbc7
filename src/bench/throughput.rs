//! `bench throughput`: decode throughput of the engine under concurrent streams, on the real
//! SmolLM2: 1, 4, 8 and 16 (`--levels`) concurrent streaming chats on the base model, then the
//! same spread round-robin over 4 (`--adapters`) resident adapters; for each `--dtype` given
//! (e.g. `f16,f32`: one server after the other, in one run). Each stream asks a different question (greedy,
//! `max_tokens` fixed), and each concurrency level runs enough rounds for 16 streams. Per
//! level it prints the aggregate tokens/s (all tokens over the wall time), tokens/s per
//! stream (its tokens over its own time), time to first token and stream latency (p50,
//! p99). All levels run in one process, one after the other, so they compare side by side.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::{p50_p99, print_machine, smollm2_config};
use crate::format::peft::random_adapter;
use crate::format::{LlamaDims, Module};
use crate::server::local::{adapter_form, chat_body, LocalServer, Streamed};

const QUESTIONS: [&str; 16] = [
    "Tell me about the sea.",
    "Describe a forest in autumn.",
    "Explain how a bicycle works.",
    "Write a short story about a cat.",
    "What do bees do all day?",
    "Describe your favourite meal.",
    "How does rain form?",
    "Tell me about the moon.",
    "Describe a busy market.",
    "Why do leaves change colour?",
    "Write a poem about winter.",
    "Explain what a library is for.",
    "Describe a train journey.",
    "What makes a good friend?",
    "Tell me about mountains.",
    "How do birds fly?",
];

/// What to run: every dtype, each at every level, on the base and spread over `adapters`.
pub struct Setup {
    pub dtypes: Vec<String>,
    pub levels: Vec<usize>,
    /// Resident adapters the second half spreads over; 0: the base model only.
    pub adapters: usize,
    pub tokens: usize,
    pub assets: Option<PathBuf>,
}

/// Runs the bench: one table, a server per dtype.
pub async fn run(setup: &Setup) -> Result<()> {
    ensure!(setup.tokens >= 2, "--tokens must be at least 2");
    ensure!(
        !setup.dtypes.is_empty() && !setup.levels.is_empty(),
        "at least one dtype and one level"
    );
    ensure!(
        setup
            .levels
            .iter()
            .all(|&c| (1..=QUESTIONS.len()).contains(&c)),
        "levels run 1 to {} streams",
        QUESTIONS.len()
    );
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct, streaming chats of {} tokens (greedy), 16 streams per level; adapters: {} random r=8 on q_proj+v_proj, streams round-robin over them",
        setup.tokens, setup.adapters
    );
    println!(
        "| dtype | served by | streams | aggregate tok/s | per-stream tok/s | TTFT p50 / p99 ms | latency p50 / p99 ms | x one stream |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for dtype in &setup.dtypes {
        run_dtype(setup, dtype).await?;
    }
    Ok(())
}

async fn run_dtype(setup: &Setup, dtype: &str) -> Result<()> {
    let (adapters, tokens) = (setup.adapters, setup.tokens);
    let (assets, _store, config) = smollm2_config(setup.assets.clone(), dtype, adapters + 1)?;
    eprintln!("{dtype}: engine max_seqs {}", config.model.max_seqs);
    let server = LocalServer::start(config).await?;
    let dims = LlamaDims::from_config_file(&assets.smollm2().join("config.json"))?;
    let mut tasks = Vec::new();
    for i in 0..adapters {
        let adapter = random_adapter(&dims, &[Module::Q, Module::V], 8, i as u64, 0.02, 0.02)?;
        let task = format!("bench-{i}");
        let up = server.upload_with(&task, adapter_form(&adapter)?).await?;
        ensure!(up.status == 201, "upload failed: {}", up.json);
        // Loaded and warm before the clock starts.
        ensure!(server.first_token(Some(&task)).await?.starts_with(&task));
        tasks.push(task);
    }
    server.first_token(None).await?;

    let spread_label = format!("{adapters} adapters");
    let runs = [("base", false), (spread_label.as_str(), true)];
    for (label, spread) in &runs[..1 + usize::from(adapters > 0)] {
        let mut one = None;
        for &c in &setup.levels {
            let mut streams: Vec<Streamed> = Vec::new();
            let t = Instant::now();
            for round in 0..QUESTIONS.len() / c {
                let batch = (0..c).map(|i| {
                    let q = round * c + i;
                    let task = spread.then(|| tasks[q % adapters].as_str());
                    let body = chat_body(QUESTIONS[q], tokens);
                    let server = &server;
                    async move { server.stream_chat(task, &body).await }
                });
                for s in futures::future::join_all(batch).await {
                    streams.push(s?);
                }
            }
            let wall = t.elapsed().as_secs_f64();
            let total: usize = streams.iter().map(|s| s.tokens).sum();
            let aggregate = total as f64 / wall;
            let per_stream = streams
                .iter()
                .map(|s| s.tokens as f64 / s.total.as_secs_f64())
                .sum::<f64>()
                / streams.len() as f64;
            let ttft: Vec<Duration> = streams.iter().filter_map(|s| s.first_token).collect();
            let latency: Vec<Duration> = streams.iter().map(|s| s.total).collect();
            // Against the first level run (1 stream with the default levels).
            let base = *one.get_or_insert(aggregate);
            println!(
                "| {dtype} | {label} | {c} | {aggregate:.1} | {per_stream:.1} | {} | {} | {:.2}x |",
                p50_p99(&ttft),
                p50_p99(&latency),
                aggregate / base
            );
        }
    }
    Ok(())
}
