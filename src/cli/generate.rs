//! `mistralrs-dnd generate`: prompts file -> PEFT adapter folder, or (`--init-random`) a new
//! randomly initialised generator folder.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};

use crate::assets::{given_or_default, Assets};
use crate::format::peft::{LlamaDims, LoraAdapter, Module};
use crate::generator::decoder::{Condition, DecoderConfig};
use crate::generator::{self, prompts, Generator};

#[derive(Debug, clap::Args)]
#[command(about = "Generate a LoRA adapter from a task's prompts (or create a random generator)")]
pub struct Args {
    /// Generator folder (decoder.json + decoder.safetensors); default: the shipped one.
    #[arg(long, default_value = generator::SHIPPED_SMOLLM2)]
    pub generator: PathBuf,
    /// Prompts: one per line, or JSONL objects with a "prompt" field.
    #[arg(long, required_unless_present_any = ["init_random", "rebase"])]
    pub prompts: Option<PathBuf>,
    /// Output PEFT adapter folder.
    #[arg(long, required_unless_present_any = ["init_random", "rebase"])]
    pub out: Option<PathBuf>,
    /// Prompt encoder folder (default: all-MiniLM-L6-v2 in the asset root, fetched if
    /// missing).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Base model config.json: the generator is checked against it (generate), or built
    /// for it (--init-random; default: the SmolLM2-135M default generator).
    #[arg(long)]
    pub base_config: Option<PathBuf>,
    /// Create a randomly initialised generator folder instead of generating.
    #[arg(long, requires = "out_generator", conflicts_with_all = ["generator", "prompts", "out"])]
    pub init_random: bool,
    /// Write a copy of the residual `--generator` to `--out-generator` with its base
    /// replaced by this adapter's B matrices (a PEFT folder with the generator's frozen A,
    /// e.g. the multi-task LoRA of all training tasks); decoder and gates unchanged.
    #[arg(long, requires = "out_generator", conflicts_with_all = ["prompts", "out", "init_random"])]
    pub rebase: Option<PathBuf>,
    /// Where --init-random and --rebase write the generator folder.
    #[arg(long)]
    pub out_generator: Option<PathBuf>,
    /// Seed of --init-random.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// --init-random with --base-config: LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// --init-random with --base-config: LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// --init-random with --base-config: target modules.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub modules: Vec<String>,
    /// --init-random with --base-config: the decoder's chunk width, N and L.
    #[command(flatten)]
    pub shape: DecoderShapeArgs,
}

/// Chunk width and prompt shape of a new decoder (`generate --init-random`, `train`).
#[derive(Debug, clap::Args)]
pub struct DecoderShapeArgs {
    /// Chunk width C of the checkpoint tokens (even).
    #[arg(long, default_value_t = 192)]
    pub chunk: usize,
    /// N, prompts per adapter.
    #[arg(long, default_value_t = 16)]
    pub n_prompts: usize,
    /// L, tokens per prompt (1: each prompt's sentence vector, the pooled condition).
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
}

pub fn run(args: Args) -> Result<()> {
    if args.init_random {
        return init_random(&args);
    }
    if let Some(adapter_dir) = &args.rebase {
        let out = args
            .out_generator
            .as_ref()
            .context("--out-generator is required")?;
        let adapter = LoraAdapter::read_peft(adapter_dir)?;
        generator::rebase_generator(&args.generator, &adapter, adapter_dir, out)?;
        println!(
            "wrote {} ({} on {})",
            out.display(),
            args.generator.display(),
            adapter_dir.display()
        );
        return Ok(());
    }
    let (gen_dir, prompts_path, out) = (
        &args.generator,
        args.prompts.as_ref().context("--prompts is required")?,
        args.out.as_ref().context("--out is required")?,
    );
    let prompts = prompts::read_prompts(prompts_path)?;
    let device = generator::default_device()?;
    let encoder = given_or_default(args.encoder.as_deref(), Assets::minilm)?;
    let g = Generator::load(gen_dir, &encoder, &device)?;
    ensure!(
        g.config().condition == Condition::Prompts,
        "{} reads labelled examples (trained with --condition examples); generate takes prompts only",
        gen_dir.display()
    );
    if let Some(path) = &args.base_config {
        g.check_base(&LlamaDims::from_config_file(path)?)?;
    }
    let result = g.generate(&prompts)?;
    result.adapter.validate(&g.config().base)?;
    result.adapter.write_peft(out)?;
    for note in &result.notes {
        println!("note: {note}");
    }
    let t = result.timings;
    println!(
        "wrote {} ({} prompts; encode {:.3} s, decode {:.3} s, detokenise {:.3} s, total {:.3} s)",
        out.display(),
        prompts.len(),
        t.encode.as_secs_f64(),
        t.decode.as_secs_f64(),
        t.detokenise.as_secs_f64(),
        t.total().as_secs_f64()
    );
    Ok(())
}

fn init_random(args: &Args) -> Result<()> {
    let out = args
        .out_generator
        .as_ref()
        .context("--out-generator is required with --init-random")?;
    let cfg = match &args.base_config {
        None => DecoderConfig::smollm2_default(),
        Some(path) => {
            let dims = LlamaDims::from_config_file(path)?;
            let modules = args
                .modules
                .iter()
                .map(|m| {
                    Module::from_name(m.trim())
                        .with_context(|| format!("unknown target module {m:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            // The model's folder names it (config.json sits in the model folder).
            let name = match path.parent() {
                Some(dir) if path.ends_with("config.json") && !dir.as_os_str().is_empty() => {
                    dir.display().to_string()
                }
                _ => path.display().to_string(),
            };
            DecoderConfig::for_model_default_shapes(
                &name,
                &dims,
                args.rank,
                args.alpha,
                &modules,
                args.shape.chunk,
                args.shape.n_prompts,
                args.shape.prompt_tokens,
            )?
        }
    };
    generator::write_random_generator(&cfg, args.seed, out)?;
    println!(
        "wrote random generator {} (seed {}): shapes {:?}, {} parameters, {} weight tokens",
        out.display(),
        args.seed,
        cfg.shapes,
        cfg.param_count(),
        cfg.shapes.last().map_or(0, |s| s[0])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("generate").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn argument_rules() {
        assert!(parse(&["--prompts", "p.txt"]).is_err());
        assert!(parse(&["--init-random"]).is_err());
        assert!(parse(&["--init-random", "--out-generator", "g", "--prompts", "p"]).is_err());
        let a = parse(&["--generator", "g", "--prompts", "p", "--out", "o"]).unwrap();
        assert_eq!(a.encoder, None);
        let a = parse(&[
            "--init-random",
            "--out-generator",
            "g",
            "--modules",
            "q_proj,k_proj",
        ])
        .unwrap();
        assert_eq!(a.modules, vec!["q_proj", "k_proj"]);
    }

    #[test]
    fn init_random_then_generate_for_a_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let model = d.join("tiny-llama");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(
            model.join("config.json"),
            r#"{"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2}"#,
        )
        .unwrap();
        let cfg = model.join("config.json");
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let argv = [
            "--init-random",
            "--out-generator",
            &s(&d.join("gen")),
            "--base-config",
            &s(&cfg),
            "--chunk",
            "32",
            "--n-prompts",
            "4",
            "--prompt-tokens",
            "8",
            "--seed",
            "7",
        ];
        run(parse(&argv).unwrap()).unwrap();
        let dc = DecoderConfig::load(&d.join("gen")).unwrap();
        assert_eq!(dc.base_model, s(&model));
        assert_eq!((dc.prompts, dc.prompt_tokens, dc.chunk), (4, 8, 32));
        let enc = crate::testing::real_assets().minilm();
        std::fs::write(d.join("p.txt"), "What is 2+2?\nName a colour.\n").unwrap();
        let argv = [
            "--generator",
            &s(&d.join("gen")),
            "--prompts",
            &s(&d.join("p.txt")),
            "--out",
            &s(&d.join("adapter")),
            "--encoder",
            &s(&enc),
            "--base-config",
            &s(&cfg),
        ];
        run(parse(&argv).unwrap()).unwrap();
        let a = crate::format::LoraAdapter::read_peft(&d.join("adapter")).unwrap();
        a.validate(&LlamaDims::from_config_file(&cfg).unwrap())
            .unwrap();
    }
}
