//! `bench generator`: the generation of one SmolLM2-135M adapter from 32 prompts of about
//! 64 tokens, stage by stage (encode, decode, detokenise), with the peak resident memory
//! (VmHWM); for a randomly initialised generator also what training its config costs.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::Device;

use super::{median, peak_rss_bytes, print_machine};
use crate::assets::{given_or_default, Assets};
use crate::generator::{
    decoder::DecoderConfig, default_device, Decoder, Generator, PromptEncoder, Timings,
};

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

/// Generates one adapter from `prompts` prompts with the generator in `generator` (default:
/// a randomly initialised SmolLM2-135M default generator) and the prompt encoder in
/// `encoder` (default: all-MiniLM-L6-v2 in the asset root, fetched if missing), one warm-up
/// and `runs` timed runs; prints the setup, per-stage median times, peak RSS and (for the
/// random default config) the CPU cost of a training step.
pub fn run(
    generator: Option<&Path>,
    encoder: Option<&Path>,
    prompts: usize,
    runs: usize,
) -> Result<()> {
    let device = default_device()?;
    let random = generator.is_none();
    let (decoder, _) = match generator {
        Some(dir) => Decoder::load(dir, &device)?,
        None => Decoder::seeded(&DecoderConfig::smollm2_default(), 0, &device)?,
    };
    let encoder = given_or_default(encoder, Assets::minilm)?;
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
        match generator {
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
    let prompts = bench_prompts(prompts);
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
    let runs: Vec<_> = (0..runs.max(1))
        .map(|_| g.generate(&prompts).map(|r| r.timings))
        .collect::<Result<_>>()?;
    let stage = |f: fn(&Timings) -> Duration| median(&mut runs.iter().map(f).collect::<Vec<_>>());
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
