//! `mistralrs-dnd train`: a collection's checkpoints -> a trained generator folder.

use std::path::PathBuf;

use anyhow::{bail, ensure, Result};

use crate::assets::{given_or_default, Assets};
use crate::format::peft::LlamaDims;
use crate::generator::decoder::Condition;
use crate::generator::encoder::ConditionEncoder;
use crate::generator::PromptEncoder;
use crate::training::generator::{
    decoder_config_for, load_training_set, train_decoder, Holdout, Objective, ResidualFold,
    ResidualInit, TrainDecoderConfig, TrainOptions, CACHE_DIR,
};
use crate::training::sft::SftData;
use crate::training::states::StateEncoder;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `collect` output folder.
    #[arg(long)]
    pub checkpoints: PathBuf,
    /// Output generator folder (also holds the resume state; rerun to resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Prompt encoder folder (default: all-MiniLM-L6-v2 in the asset root, fetched if
    /// missing).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Base model folder the checkpoints were trained on (its config.json gives the
    /// dims; default: SmolLM2 in the asset root, fetched if missing).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Leave these tasks out of training (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub hold_out: Vec<String>,
    /// Leave every task of this family out of training.
    #[arg(long, conflicts_with = "hold_out")]
    pub hold_out_family: Option<String>,
    #[arg(long, default_value_t = TrainDecoderConfig::default().steps)]
    pub steps: usize,
    /// (prompt batch, checkpoint) pairs per step.
    #[arg(long, default_value_t = TrainDecoderConfig::default().batch_size)]
    pub batch: usize,
    #[arg(long, default_value_t = TrainDecoderConfig::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = TrainDecoderConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Training prompts per task encoded and drawn from.
    #[arg(long, default_value_t = TrainDecoderConfig::default().prompt_pool)]
    pub prompt_pool: usize,
    #[arg(long, default_value_t = TrainDecoderConfig::default().seed)]
    pub seed: u64,
    /// Steps between saves and log lines.
    #[arg(long, default_value_t = TrainDecoderConfig::default().save_every)]
    pub save_every: usize,
    /// Plain masked MSE instead of weighting tokens by their variability (an ablation).
    #[arg(long)]
    pub no_token_weighting: bool,
    /// Train on this many checkpoints of each task, evenly spaced and ending with the last
    /// (an ablation; default: every checkpoint kept).
    #[arg(long)]
    pub checkpoints_per_task: Option<usize>,
    /// Share of training pairs whose prompt batch mixes two tasks, with the blended
    /// checkpoint as target, or end to end both tasks' losses in the same proportion (not
    /// in the method; 0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub task_mixup: f64,
    /// reconstruction (the method's), sft (end to end through the base model: the
    /// generated adapter's loss on the task's training answers) or mix (both).
    #[arg(long, default_value = "reconstruction")]
    pub objective: Objective,
    /// What the generator reads of a task: prompts (the method's) or examples (each prompt
    /// with its answer; the end-to-end loss then takes the training examples the pool does
    /// not hold, and `eval` conditions on a held-out task's training examples).
    #[arg(long, value_enum, default_value_t = Condition::Prompts)]
    pub condition: Condition,
    /// sft / mix: training examples per (task, prompt batch) sample.
    #[arg(long, default_value_t = TrainDecoderConfig::default().sft_examples)]
    pub sft_examples: usize,
    /// sft / mix: weight of the residual's squared norm, relative to the mean adapter's.
    #[arg(long, default_value_t = 0.0)]
    pub residual_l2: f64,
    /// mix: weight of the reconstruction loss.
    #[arg(long, default_value_t = 1.0)]
    pub mix_weight: f64,
    /// Start from this generator's decoder weights (e.g. a reconstruction-trained one).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// sft: the adapter (PEFT folder, e.g. `collect --pool`'s multi-task LoRA) the
    /// generated residual is added to (default: the mean of the training checkpoints); a
    /// residual generator's folder gives the adapter it sits on.
    #[arg(long)]
    pub residual_from: Option<PathBuf>,
    /// sft: `ADAPTER=task,task,...`: while training, these tasks' residual sits on ADAPTER
    /// instead (repeatable; e.g. two folds, each on the multi-task LoRA of the other); the
    /// generator written sits on --residual-from.
    #[arg(long, requires = "residual_from")]
    pub residual_fold: Vec<ResidualFold>,
    /// sft / mix: how the residual starts at zero: `gates` (gates at zero) or `output`
    /// (gates at one, the decoder's last convolution at zero, so that decoder changes
    /// count in full from the first step).
    #[arg(long, default_value = "gates")]
    pub residual_init: ResidualInit,
    /// A mixture head of K learned directions instead of the hyper-convolutions (module doc
    /// of `generator::decoder`).
    #[arg(long, value_name = "K")]
    pub mix: Option<usize>,
    /// A neighbour head instead of the hyper-convolutions: one direction per training task,
    /// trained leave-one-out (module doc of `generator::decoder`).
    #[arg(long, conflicts_with = "mix")]
    pub neighbours: bool,
    /// An attention head of bottleneck width K instead of the hyper-convolutions: r learned
    /// queries pool the examples' token states, a linear map through K dimensions makes the
    /// matrices (module doc of `generator::attend`).
    #[arg(long, value_name = "K", conflicts_with_all = ["mix", "neighbours", "input_norm"])]
    pub attend: Option<usize>,
    /// Standardise the decoder's input cell by cell (each of its L x 384 cells centred and
    /// scaled by the training tasks' statistics, stored with the generator), so that what
    /// tells tasks apart is not drowned by what every input shares.
    #[arg(long)]
    pub input_norm: bool,
    /// Read each example through the base model instead of MiniLM: its residual stream
    /// entering block K, at the example's last --prompt-tokens tokens, right-aligned
    /// (`training::states`). `eval --nll` and the server read such a generator (as
    /// `plugin.examples_generator`); `eval` without `--nll` does not yet.
    #[arg(long, value_name = "K", conflicts_with = "encoder")]
    pub read_states: Option<usize>,
    /// sft / mix: weight of the condition-contrast term (0: off): each sample's examples
    /// also go through the adapter generated from another training task, and the loss takes
    /// how far it falls short of the task's own adapter by --contrast-margin nats (twice the
    /// base model's work per step).
    #[arg(long, default_value_t = 0.0)]
    pub contrast: f64,
    /// The contrast term's margin, in nats of answer cross-entropy.
    #[arg(long, default_value_t = 0.1)]
    pub contrast_margin: f64,
    /// sft / mix: weight of the greedy-error term (0: off): on every answer token, how far
    /// its logit falls short of beating the best other token's by --greedy-margin.
    #[arg(long, default_value_t = 0.0)]
    pub greedy: f64,
    /// The greedy-error term's margin, in logits.
    #[arg(long, default_value_t = 1.0)]
    pub greedy_margin: f64,
    /// sft / mix with --condition examples: weight of the distillation term (0: off): on
    /// each training example, the KL divergence from the base model shown the task's first
    /// --shown examples (the in-context teacher, which no adapter here matches) to the
    /// generated adapter, over the answer tokens.
    #[arg(long, default_value_t = 0.0)]
    pub distill: f64,
    /// sft / mix with --condition examples: the adapter is trained with the task's first
    /// --shown examples before every prompt, as a residual on in-context learning (served
    /// beside `plugin.demonstrations`).
    #[arg(long, conflicts_with = "distill")]
    pub adapter_sees_shown: bool,
    /// The examples shown to the distillation teacher or the adapter (the server's
    /// `plugin.demonstrations`).
    #[arg(long, default_value_t = 4)]
    pub shown: usize,
    /// Train on these tasks (`builtin`, or task files) instead of the collection's: the
    /// collection then only lends the checkpoints it has (sft needs none).
    #[arg(long, num_args = 1..)]
    pub suite: Vec<String>,
    #[command(flatten)]
    pub suite_args: super::collect::SuiteArgs,
    /// With --suite: leave these tasks out altogether (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "suite")]
    pub except: Vec<String>,
    /// With --suite: hold out, in every family, the 2nd task and every K-th after it
    /// (suite order), see `tasks::holdout_every`.
    #[arg(long, requires = "suite", conflicts_with_all = ["hold_out", "hold_out_family"])]
    pub hold_out_every: Option<usize>,
    /// With --hold-out-every K: which of the K folds (0 to K-1) to hold out; each task is
    /// held out in exactly one (k-fold evaluation).
    #[arg(long, default_value_t = 0, requires = "hold_out_every")]
    pub fold: usize,
    #[command(flatten)]
    pub shape: super::generate::DecoderShapeArgs,
    /// Stop after this many steps, as if killed (for testing resumption).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let base = given_or_default(args.base.as_deref(), Assets::smollm2)?;
    let dims = LlamaDims::from_config_file(&base.join("config.json"))?;
    let base_name = match base.file_name() {
        Some(n) => n.to_string_lossy().to_string(),
        None => bail!("--base {} has no folder name", base.display()),
    };
    let mut decoder = decoder_config_for(
        &args.checkpoints,
        &base_name,
        &dims,
        args.shape.chunk,
        args.shape.n_prompts,
        args.shape.prompt_tokens,
    )?;
    decoder.residual = args.objective.end_to_end();
    decoder.condition = args.condition;
    decoder.input_norm = args.input_norm;
    if let Some(k) = args.mix {
        decoder = decoder.with_mix(k)?;
    }
    if let Some(k) = args.attend {
        decoder = decoder.with_attend(k)?;
    }
    // The held-out split is taken on the whole suite, so that --except (tasks dropped by
    // a filter) does not move it.
    let (suite, every) = match args.suite.is_empty() {
        true => (None, None),
        false => {
            let tasks = crate::tasks::suite(&args.suite, &[], &args.suite_args.config())?;
            let every = match args.hold_out_every {
                Some(k) => Some(crate::tasks::holdout_every(&tasks, k, args.fold)?),
                None => None,
            };
            let tasks = crate::tasks::without(tasks, &args.except)?;
            let every = every.map(|names| {
                names
                    .into_iter()
                    .filter(|n| !args.except.contains(n))
                    .collect()
            });
            (Some(tasks), every)
        }
    };
    let holdout = match (&args.hold_out_family, args.hold_out.is_empty(), every) {
        (Some(f), _, _) => Holdout::Family(f.clone()),
        (None, false, _) => Holdout::Tasks(args.hold_out.clone()),
        (None, true, Some(names)) => Holdout::Tasks(names),
        (None, true, None) => Holdout::None,
    };
    ensure!(
        args.residual_from.is_none() || args.objective.end_to_end(),
        "--residual-from is for the end-to-end objectives (sft, mix)"
    );
    ensure!(
        (args.contrast == 0.0
            && args.greedy == 0.0
            && args.distill == 0.0
            && !args.adapter_sees_shown)
            || args.objective.end_to_end(),
        "--contrast, --greedy, --distill and --adapter-sees-shown are for the end-to-end \
         objectives (sft, mix)"
    );
    let cfg = TrainDecoderConfig {
        steps: args.steps,
        batch_size: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        prompt_pool: args.prompt_pool,
        seed: args.seed,
        holdout,
        save_every: args.save_every,
        token_weighting: !args.no_token_weighting,
        checkpoints_per_task: args.checkpoints_per_task,
        task_mixup: args.task_mixup,
        objective: args.objective,
        sft_examples: args.sft_examples,
        residual_l2: args.residual_l2,
        mix_weight: match args.objective {
            Objective::Mix => args.mix_weight,
            _ => 0.0,
        },
        init_from: args.init_from.clone(),
        residual_from: args.residual_from.clone(),
        residual_folds: args.residual_fold.clone(),
        residual_init: args.residual_init,
        contrast: args.contrast,
        contrast_margin: match args.contrast > 0.0 {
            true => args.contrast_margin,
            false => 0.0,
        },
        greedy: args.greedy,
        greedy_margin: match args.greedy > 0.0 {
            true => args.greedy_margin,
            false => 0.0,
        },
        shown: match args.distill > 0.0 || args.adapter_sees_shown {
            true => args.shown,
            false => 0,
        },
        distill: args.distill,
        adapter_sees_shown: args.adapter_sees_shown,
        ..TrainDecoderConfig::default()
    };
    ensure!(
        args.read_states.is_none() || args.condition == Condition::Examples,
        "--read-states reads labelled examples: it needs --condition examples"
    );
    let encoder: Box<dyn ConditionEncoder> = match args.read_states {
        Some(k) => {
            let states = StateEncoder::load(&base, k)?;
            decoder = decoder.with_encoder(&states.name(), states.hidden_size())?;
            Box::new(states)
        }
        None => {
            let dir = given_or_default(args.encoder.as_deref(), Assets::minilm)?;
            Box::new(PromptEncoder::load(&dir, &candle_core::Device::Cpu)?)
        }
    };
    let t0 = std::time::Instant::now();
    let set = load_training_set(
        &args.checkpoints,
        suite.as_deref(),
        &decoder,
        encoder.as_ref(),
        &cfg,
        &args.checkpoints.join(CACHE_DIR),
    )?;
    // The neighbour head's size is the number of training tasks, known only now.
    if args.neighbours {
        decoder = decoder.with_neighbours(set.train.len())?;
    }
    let sft = match args.objective.end_to_end() {
        true => Some(
            SftData::load(
                &base,
                &decoder,
                &set,
                args.residual_from.as_deref(),
                &cfg.residual_folds,
            )?
            .with_shown(&set, cfg.shown, cfg.adapter_sees_shown)?,
        ),
        false => None,
    };
    println!(
        "train: {} tasks ({}), held out {} ({}); {} parameters; data ready in {:.1} s",
        set.train.len(),
        names(&set.train),
        set.heldout.len(),
        names(&set.heldout),
        decoder.param_count(),
        t0.elapsed().as_secs_f64()
    );
    let outcome = train_decoder(
        &set,
        &decoder,
        &cfg,
        &args.checkpoints,
        &args.out,
        sft.as_ref(),
        &TrainOptions {
            stop_after_steps: args.stop_after_steps,
            quiet: false,
            command: Some(super::command_line()),
        },
    )?;
    let last = outcome.record.log.last();
    println!(
        "train: steps {}..{} in {:.1} min; last loss {}; generator in {}",
        outcome.resumed_from,
        outcome.record.step,
        outcome.seconds / 60.0,
        last.map(|l| format!("{:.4}", l.loss)).unwrap_or("-".into()),
        args.out.display()
    );
    Ok(())
}

fn names(tasks: &[crate::training::generator::TaskData]) -> String {
    tasks
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
