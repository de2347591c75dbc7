//! `mistralrs-dnd bench`: measurements. `bench generator` times the generation of one
//! SmolLM2-135M adapter from 32 prompts of about 64 tokens, stage by stage, and prints the
//! peak resident memory (VmHWM).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::generator::{self, decoder::DecoderConfig, Decoder, Generator, PromptEncoder};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Time prompt encoding, decoding and detokenising of one adapter.
    Generator(GeneratorArgs),
}

#[derive(Debug, clap::Args)]
pub struct GeneratorArgs {
    /// Generator folder; default: a randomly initialised SmolLM2-135M default generator.
    #[arg(long)]
    pub generator: Option<PathBuf>,
    /// Prompt encoder folder (all-MiniLM-L6-v2).
    #[arg(long, default_value = "assets/minilm")]
    pub encoder: PathBuf,
    /// Number of prompts given to the generator.
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    /// Timed runs after one warm-up run; the median is printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Generator(a) => generator(a),
    }
}

/// Peak resident set size of this process in KiB (VmHWM), if the kernel reports it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
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
    let encoder = PromptEncoder::load(&a.encoder, &device)
        .with_context(|| format!("bench needs the prompt encoder at {}", a.encoder.display()))?;
    let g = Generator::new(encoder, decoder)?;
    let cfg = g.config().clone();
    let layout = g.layout().clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let b = &cfg.base;
    println!("== bench generator ==");
    println!("machine: {cores} cores, device {device:?}");
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
    let enc = median(runs.iter().map(|t| t.encode).collect());
    let dec = median(runs.iter().map(|t| t.decode).collect());
    let det = median(runs.iter().map(|t| t.detokenise).collect());
    let tot = median(runs.iter().map(|t| t.total()).collect());
    println!("median of {} runs (after 1 warm-up):", runs.len());
    println!("  encoder     {:8.1} ms", enc.as_secs_f64() * 1e3);
    println!(
        "  decoder     {:8.1} ms  ({:.1} GFLOP/s)",
        dec.as_secs_f64() * 1e3,
        cfg.flops() as f64 / 1e9 / dec.as_secs_f64()
    );
    println!("  detokenise  {:8.1} ms", det.as_secs_f64() * 1e3);
    println!("  total       {:8.1} ms", tot.as_secs_f64() * 1e3);
    match peak_rss_kib() {
        Some(kib) => println!("peak RSS: {:.1} MiB", kib as f64 / 1024.0),
        None => println!("peak RSS: unavailable (/proc/self/status has no VmHWM)"),
    }
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
        let t = median((0..3).map(|_| step()).collect::<Result<_>>()?);
        println!(
            "training cost (CPU): forward+backward of a batch of 4 in {:.0} ms -> {:.0} samples/hour",
            t.as_secs_f64() * 1e3,
            4.0 * 3600.0 / t.as_secs_f64()
        );
    }
    Ok(())
}
