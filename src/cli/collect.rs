//! `mistralrs-dnd collect`: train a LoRA per task and keep the late checkpoints, the
//! generator's training data ([`crate::training::collect`]).

use std::path::PathBuf;

use anyhow::Result;

use crate::assets::{given_or_default, Assets};
use crate::format::Module;
use crate::tasks::{SuiteConfig, Task};
use crate::training::collect::{collect, CollectOptions};
use crate::training::collection::CollectConfig;
use crate::training::lora::{LoraConfig, TrainConfig};

#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// `builtin`, or task files (JSONL, one task each).
    #[arg(long, num_args = 1.., default_value = "builtin")]
    pub suite: Vec<String>,
    /// Only these tasks of the suite (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Hugging Face llama folder of the base model (default: SmolLM2 in the asset root,
    /// fetched if missing).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Output folder: OUT/TASK/step-NNNNNN/ PEFT checkpoints; rerun to resume.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimiser steps per task.
    #[arg(long, default_value_t = CollectConfig::default().train.steps)]
    pub steps: usize,
    /// Checkpoints kept per task: one after each of the last N steps.
    #[arg(long, default_value_t = CollectConfig::default().checkpoints)]
    pub checkpoints: usize,
    /// Examples per step.
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch: usize,
    /// Peak learning rate (AdamW, cosine decay to a tenth).
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = TrainConfig::default().warmup_steps)]
    pub warmup: usize,
    /// LoRA rank r.
    #[arg(long, default_value_t = LoraConfig::default().rank)]
    pub rank: usize,
    /// LoRA alpha (scale alpha / r).
    #[arg(long, default_value_t = LoraConfig::default().alpha)]
    pub alpha: f64,
    /// LoRA target modules (comma-separated, e.g. q_proj,v_proj).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub modules: Vec<String>,
    /// Seed of the LoRA runs (each task derives its own from it and its name).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub suite_args: SuiteArgs,
    /// Seed of the A matrices every task shares and keeps frozen (only B is trained).
    #[arg(long, default_value_t = 0)]
    pub a_seed: u64,
    /// Train A too, from a random init per task (plain LoRA; the generator cannot learn
    /// such checkpoints well, see `LoraConfig::frozen_a_seed`).
    #[arg(long)]
    pub train_a: bool,
    /// Leave these tasks out (comma-separated), e.g. a generator's held-out tasks.
    #[arg(long, value_delimiter = ',')]
    pub except: Vec<String>,
    /// Train one LoRA on the selected tasks' pooled training examples, as one task of this
    /// name: the multi-task LoRA baseline of `eval --generator --nll --multitask`. Give it
    /// about as many steps as the tasks' own runs have in all.
    #[arg(long)]
    pub pool: Option<String>,
    /// Save a task's resume state every this many steps, so that a killed run continues
    /// from there (0: a killed task starts again).
    #[arg(long, default_value_t = 25)]
    pub resume_every: usize,
    /// Stop after this many steps in total, as if killed (for testing resumption).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<usize>,
}

/// The environment variable that chooses the built-in suite's version where no
/// `--suite-version` is given (README's earlier runs export it as 1).
pub const SUITE_VERSION_ENV: &str = "DND_SUITE_VERSION";

/// Seed, sizes and version of the built-in suite (the same flags wherever the suite is built).
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Seed of the built-in suite's questions.
    #[arg(long, default_value_t = SuiteConfig::default().seed)]
    pub suite_seed: u64,
    /// Training examples per built-in task.
    #[arg(long, default_value_t = SuiteConfig::default().train)]
    pub train_size: usize,
    /// Test examples per built-in task.
    #[arg(long, default_value_t = SuiteConfig::default().test)]
    pub test_size: usize,
    /// Version of the built-in suite: 1 is the 130 tasks of the runs README records before
    /// 2026-12-03; each later version appends families (the default is 3; 4 adds the rule
    /// tasks, 5 another 49 tasks in five families).
    #[arg(long, env = SUITE_VERSION_ENV, default_value_t = SuiteConfig::default().version)]
    pub suite_version: u32,
}

impl SuiteArgs {
    pub fn config(&self) -> SuiteConfig {
        SuiteConfig {
            seed: self.suite_seed,
            train: self.train_size,
            test: self.test_size,
            version: self.suite_version,
        }
    }
}

/// The tasks named by `--suite` and `--only`.
pub fn load_suite(args: &CollectArgs) -> Result<Vec<Task>> {
    let tasks = crate::tasks::suite(&args.suite, &args.only, &args.suite_args.config())?;
    let tasks = crate::tasks::without(tasks, &args.except)?;
    Ok(match &args.pool {
        Some(name) => vec![crate::tasks::pooled(name, &tasks)?],
        None => tasks,
    })
}

pub fn run(args: CollectArgs) -> Result<()> {
    let tasks = load_suite(&args)?;
    let modules = args
        .modules
        .iter()
        .map(|m| Module::from_name(m).ok_or_else(|| anyhow::anyhow!("unknown module {m:?}")))
        .collect::<Result<Vec<_>>>()?;
    let cfg = CollectConfig {
        train: TrainConfig {
            lora: LoraConfig {
                rank: args.rank,
                alpha: args.alpha,
                modules,
                frozen_a_seed: (!args.train_a).then_some(args.a_seed),
            },
            steps: args.steps,
            batch_size: args.batch,
            lr: args.lr,
            warmup_steps: args.warmup,
            seed: args.seed,
            ..TrainConfig::default()
        },
        checkpoints: args.checkpoints,
    };
    let started = std::time::Instant::now();
    let base = given_or_default(args.base.as_deref(), Assets::smollm2)?;
    let report = collect(
        &base,
        &tasks,
        &args.out,
        &cfg,
        &CollectOptions {
            stop_after_steps: args.stop_after_steps,
            quiet: false,
            command: Some(super::command_line()),
            resume_every: args.resume_every,
        },
    )?;
    println!(
        "collect: {} trained, {} already complete, {:.1} min",
        report.trained.len(),
        report.skipped.len(),
        started.elapsed().as_secs_f64() / 60.0
    );
    if let Some(t) = report.interrupted {
        println!("collect: stopped in task {t}; run again to resume");
    }
    Ok(())
}
