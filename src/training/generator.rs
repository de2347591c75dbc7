//! Generator training (DnD method, section 4): (prompt batch, checkpoint) pairs from a
//! `collect` output -> a trained generator folder (its decoder; the encoder is frozen).
//!
//! - **Data.** Every completed task of the collection gives its checkpoints, tokenized with
//!   the decoder's layout, and a pool of its first *training* prompts encoded once by the
//!   frozen MiniLM (cached in the collection's `.encoder-cache/`; with `--condition
//!   examples`, each prompt with its answer: [`crate::generator::decoder::Condition`]). A
//!   sample is one checkpoint of one task and N prompts drawn at random, in random order,
//!   from that task's pool: fresh pairs at every step.
//! - **Loss.** Mean squared error over the non-NaN cells, each token weighted by how much it
//!   varies across checkpoints: per task the elementwise std over its checkpoints divided by
//!   that task's mean std, averaged inside the token, then averaged over tasks, normalised
//!   to mean 1.
//! - **Optimiser.** AdamW with decoupled weight decay, global-norm gradient clipping,
//!   linear warm-up then cosine decay to 0, Gaussian noise on inputs and targets
//!   ([`super::optim`]; its AdamW's moments are saved for an exact resume).
//! - **Resume.** Every `save_every` steps the weights, the AdamW moments and the log are
//!   written to `OUT/checkpoint/` in one atomic folder swap; a rerun with the same settings
//!   continues from there. A step's randomness is derived from (seed, step), so a resumed
//!   run is bit-for-bit the uninterrupted one.
//! - **Held-out protocol.** Whole tasks (or a whole family) are left out of training; their
//!   checkpoints give the held-out loss in the log, and `eval --generator` evaluates on them.
//!
//! The output folder is a generator (`decoder.json`, `decoder.safetensors`) plus
//! `train.json` (settings, tasks used and held out, loss log), refreshed at every save, and
//! the resume state in `checkpoint/` (weights and AdamW moments; not needed to generate).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::collection::{Collection, TaskDone, DONE_FILE};
use super::optim::{
    clip_grad_norm, print_above, progress_bar, restore_resume_state, resume_state,
    safetensors_bytes, AdamW, AdamWParams, StepBudget, WarmupCosine, RESUME_STATE_FILE,
};
use super::sft::SftData;
use crate::format::frozen_a::check_frozen_a;
use crate::format::fsio::write_folder_atomic;
use crate::format::peft::LoraAdapter;
use crate::format::rng::Rng;
use crate::generator::decoder::{Decoder, DecoderConfig};
use crate::generator::encoder::ConditionEncoder;
use crate::generator::residual::RESIDUAL_FILE;
use crate::generator::Residual;
use crate::tasks::Task;

pub const TRAIN_FILE: &str = "train.json";
const STATE_DIR: &str = "checkpoint";
/// The residual gates' name in the resume state.
const GATE_VAR: &str = "residual.gate";
/// Encoded prompt pools, under the collection folder (hidden: not a task).
pub const CACHE_DIR: &str = ".encoder-cache";

/// Which tasks are kept out of training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Holdout {
    /// Train on every task (the shipped generator).
    #[default]
    None,
    /// Leave these tasks out.
    Tasks(Vec<String>),
    /// Leave every task of this family out.
    Family(String),
}

impl Holdout {
    fn holds_out(&self, task: &str, family: &str) -> bool {
        match self {
            Holdout::None => false,
            Holdout::Tasks(t) => t.iter().any(|n| n == task),
            Holdout::Family(f) => f == family,
        }
    }
}

/// Settings of one decoder training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainDecoderConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate after `warmup_steps` of linear warm-up; cosine decay to 0.
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Std of the Gaussian noise added to the encoder outputs.
    pub input_noise: f64,
    /// Std of the Gaussian noise added to the target tokens.
    pub target_noise: f64,
    /// Training prompts per task that are encoded and drawn from.
    pub prompt_pool: usize,
    pub seed: u64,
    pub holdout: Holdout,
    /// Steps between saves (and log lines).
    pub save_every: usize,
    /// Weight tokens by their variability across checkpoints (the method); off: plain
    /// masked MSE (an ablation).
    #[serde(default = "yes")]
    pub token_weighting: bool,
    /// Train on this many of each task's checkpoints, evenly spaced and ending with the
    /// last one (an ablation); `None`: all of them.
    #[serde(default)]
    pub checkpoints_per_task: Option<usize>,
    /// Share of training pairs whose prompt batch mixes two tasks, paired with the blend
    /// of their checkpoints in the same proportion, and end to end with the two tasks'
    /// losses so weighted (not in the method: a way to make the map from prompts to
    /// weights smooth between the few tasks there are). 0: off.
    #[serde(default)]
    pub task_mixup: f64,
    /// What the decoder is trained to minimise (see [`Objective`]).
    #[serde(default)]
    pub objective: Objective,
    /// End-to-end objective: training examples per (task, prompt batch) sample.
    #[serde(default = "four")]
    pub sft_examples: usize,
    /// End-to-end objective: weight of the residual's squared norm (relative to the base
    /// adapter's) in the loss.
    #[serde(default)]
    pub residual_l2: f64,
    /// `mix`: weight of the reconstruction loss beside the end-to-end one.
    #[serde(default)]
    pub mix_weight: f64,
    /// Start from this generator's decoder weights (same shapes) instead of a seeded
    /// initialisation: e.g. an end-to-end run warm-started from a reconstruction run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// End-to-end objective: the adapter (a PEFT folder with the shared frozen A) the
    /// residual is added to, e.g. the multi-task LoRA of the training tasks; `None`: the
    /// mean of the training tasks' final checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_from: Option<PathBuf>,
    /// End-to-end objective: training tasks whose residual sits on another adapter while
    /// training (`[adapter, tasks]`), e.g. k folds of the training tasks, each task's
    /// residual on the multi-task LoRA of the other folds, so that on every training task
    /// the residual must supply what a LoRA that never saw the task lacks, as on a new
    /// task. The generator written still sits on `residual_from`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub residual_folds: Vec<ResidualFold>,
    /// End-to-end objective: how the residual starts at zero (see [`ResidualInit`]).
    #[serde(default)]
    pub residual_init: ResidualInit,
    /// End-to-end objective: weight of the condition-contrast term (0: off): each sample's
    /// examples also go through the adapter generated from another training task's
    /// condition, and the loss takes how far that falls short of the task's own adapter by
    /// `contrast_margin` nats (see [`super::sft::SftData::task_loss`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub contrast: f64,
    /// The contrast term's margin in nats of answer cross-entropy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub contrast_margin: f64,
    /// End-to-end objective: weight of the greedy-error term (0: off), a hinge on each
    /// answer token's logit margin over the best other token (see
    /// [`super::sft::greedy_hinge`]): the loss of a greedy answer, not of its likelihood.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub greedy: f64,
    /// The greedy-error term's margin, in logits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub greedy_margin: f64,
    /// End-to-end objective: the task's first `shown` training examples as earlier chat
    /// turns before each training example's prompt, for the distillation teacher or the
    /// adapter ([`super::sft::SftData::with_shown`]; 0: none).
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub shown: usize,
    /// End-to-end objective: weight of the distillation term (0: off): how far the adapter's
    /// answer distribution is from the base model's shown the examples, the in-context
    /// teacher (see [`super::sft::distill_kl`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub distill: f64,
    /// End-to-end objective: the adapter is trained with the examples shown before every
    /// prompt, a residual on in-context learning (what it adds to the examples a server
    /// shows, `plugin.demonstrations`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adapter_sees_shown: bool,
}

/// How an end-to-end run starts its residual `gate * decoded` at zero, so that training
/// starts at the base adapter either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ResidualInit {
    /// Gates at zero, the decoder as initialised (the first design). A decoder change then
    /// moves the adapter only as far as the gates have opened (about 0.03 in the shipped
    /// run).
    #[default]
    Gates,
    /// Gates at one, the decoder's last convolution (over the token axis, with its bias)
    /// at zero: the decoder's output is zero at the start, and every decoder change moves
    /// the adapter in full.
    Output,
}

/// Training tasks whose residual sits on `adapter` while training (see
/// [`TrainDecoderConfig::residual_folds`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResidualFold {
    pub adapter: PathBuf,
    pub tasks: Vec<String>,
}

impl std::str::FromStr for ResidualFold {
    type Err = anyhow::Error;
    /// `ADAPTER=task,task,...`
    fn from_str(s: &str) -> Result<Self> {
        let (adapter, tasks) = s
            .split_once('=')
            .context("a residual fold is ADAPTER=task,task,...")?;
        let tasks: Vec<String> = tasks
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        ensure!(
            !tasks.is_empty(),
            "residual fold {adapter:?} names no tasks"
        );
        Ok(Self {
            adapter: adapter.into(),
            tasks,
        })
    }
}

/// The decoder's training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The method's: weighted MSE between the decoder's tokens and a checkpoint's.
    #[default]
    Reconstruction,
    /// End to end through the frozen base model ([`super::sft`]): the answer tokens'
    /// cross-entropy under the generated adapter, which is a residual on the training
    /// tasks' mean adapter.
    Sft,
    /// `sft` plus `mix_weight` times the reconstruction loss of the decoder's raw tokens.
    Mix,
}

impl Objective {
    /// Whether the base model is needed (and the generator is a residual one).
    pub fn end_to_end(self) -> bool {
        self != Objective::Reconstruction
    }
}

fn yes() -> bool {
    true
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero_count(x: &usize) -> bool {
    *x == 0
}

fn four() -> usize {
    4
}

impl Default for TrainDecoderConfig {
    fn default() -> Self {
        Self {
            steps: 1200,
            batch_size: 4,
            lr: 1e-3,
            warmup_steps: 50,
            weight_decay: 0.1,
            grad_clip: 1.0,
            input_noise: 1e-4,
            target_noise: 1e-5,
            prompt_pool: 128,
            seed: 0,
            holdout: Holdout::None,
            save_every: 100,
            token_weighting: true,
            checkpoints_per_task: None,
            task_mixup: 0.0,
            objective: Objective::Reconstruction,
            sft_examples: 4,
            residual_l2: 0.0,
            mix_weight: 0.0,
            init_from: None,
            residual_from: None,
            residual_folds: Vec::new(),
            residual_init: ResidualInit::Gates,
            contrast: 0.0,
            contrast_margin: 0.0,
            greedy: 0.0,
            greedy_margin: 0.0,
            shown: 0,
            distill: 0.0,
            adapter_sees_shown: false,
        }
    }
}

impl TrainDecoderConfig {
    /// Warm-up, then cosine decay to 0, reached one step after the last.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            peak: self.lr,
            warmup: self.warmup_steps,
            end: self.steps,
            floor: 0.0,
        }
    }

    pub fn lr_at(&self, step: usize) -> f64 {
        self.schedule().lr_at(step)
    }
}

/// One line of the loss log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub step: usize,
    /// Mean training loss over the steps since the previous line.
    pub loss: f32,
    /// Loss on a fixed set of held-out (prompt batch, checkpoint) pairs, if any are held out.
    pub heldout_loss: Option<f32>,
    /// End-to-end objective: the answer tokens' cross-entropy on a fixed set of held-out
    /// test examples under the generated adapters, if any tasks are held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_nll: Option<f32>,
    /// The same with every held-out task's adapter generated from the next held-out
    /// task's condition (the condition-shuffle control), if two or more are held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_nll_shuffled: Option<f32>,
    pub lr: f64,
    pub grad_norm: f32,
    pub seconds: f64,
}

/// `train.json`: what the generator was trained on and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub config: TrainDecoderConfig,
    pub decoder: DecoderConfig,
    /// The collection folder it was trained from.
    pub checkpoints: PathBuf,
    pub train_tasks: Vec<String>,
    pub heldout_tasks: Vec<String>,
    pub step: usize,
    pub log: Vec<LogLine>,
    /// End-to-end objective: `heldout_nll` of the starting point (the training tasks' mean
    /// adapter, gates at zero), to read the log against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_nll_at_start: Option<f32>,
    /// How it was made, in order: the command that trained the adapter it sits on (from
    /// that checkpoint's `done.json`, when recorded) and each call of `train` (a resumed
    /// run has one line per call). Not recorded: the commands behind `--residual-fold`
    /// adapters and `--init-from`, and anything before the field existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub made_by: Vec<String>,
}

impl TrainRecord {
    /// Whether held-out evaluation scores `task`: one of the generator's held-out tasks, or
    /// a task read from a file (a tenant's own, the external set) that it did not train on.
    pub fn evaluates(&self, task: &Task) -> bool {
        self.heldout_tasks.contains(&task.name)
            || (task.family == crate::tasks::taskfile::EXTERNAL_FAMILY
                && !self.train_tasks.contains(&task.name))
    }

    pub fn load(generator_dir: &Path) -> Result<Self> {
        let path = generator_dir.join(TRAIN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// One task's training material.
#[derive(Debug)]
pub struct TaskData {
    pub name: String,
    pub family: String,
    /// Encoded prompt pool (P, L, 384).
    pub pool: Tensor,
    /// Checkpoint tokens (K, T, r + 2, C + 2), NaN cells set to 0; `None` for a task of
    /// the suite that was never collected (the end-to-end objective needs only examples).
    pub tokens: Option<Tensor>,
    /// The task's examples (the end-to-end objective trains on `train` and reports its
    /// held-out loss on `test`).
    pub train: Vec<crate::tasks::Example>,
    pub test: Vec<crate::tasks::Example>,
}

impl TaskData {
    /// The checkpoint tokens, which reconstruction needs.
    pub fn checkpoints(&self) -> Result<&Tensor> {
        self.tokens.as_ref().with_context(|| {
            format!(
                "task {} has no collected checkpoints (collect it, or train it with \
                 --objective sft)",
                self.name
            )
        })
    }
}

/// `n` items of `all`, evenly spaced and ending with the last (all of them for `None`).
fn spaced<T>(all: &[T], n: Option<usize>) -> Vec<&T> {
    let k = all.len();
    match n {
        Some(n) if n > 0 && n < k => {
            let mut picked: Vec<&T> = (0..n).map(|j| &all[k - 1 - j * k / n]).collect();
            picked.reverse();
            picked
        }
        _ => all.iter().collect(),
    }
}

/// The tasks of a collection, split by the held-out protocol.
#[derive(Debug)]
pub struct TrainingSet {
    pub train: Vec<TaskData>,
    pub heldout: Vec<TaskData>,
}

/// Reads the completed tasks of a collection for `cfg`'s layout, with the checkpoints,
/// prompt pool and held-out protocol `train` asks for, encoding prompt pools with
/// `encoder` (cached under `cache_dir`). With `suite`, the tasks are the suite's instead,
/// each with its checkpoints when the collection completed it (the end-to-end objective
/// trains on tasks that were never collected).
pub fn load_training_set(
    collect_dir: &Path,
    suite: Option<&[Task]>,
    cfg: &DecoderConfig,
    encoder: &dyn ConditionEncoder,
    train: &TrainDecoderConfig,
    cache_dir: &Path,
) -> Result<TrainingSet> {
    let (prompt_pool, holdout) = (train.prompt_pool, &train.holdout);
    let layout = cfg.layout()?;
    let frozen = cfg.frozen_a()?;
    let collection = Collection::new(collect_dir);
    let tasks: Vec<Task> = match suite {
        Some(tasks) => tasks.to_vec(),
        None => collection
            .tasks()?
            .iter()
            .map(|name| {
                // A task file says `external`; the collection remembers the family.
                let mut task = collection.task(name)?;
                task.family = collection.done(name)?.family;
                Ok(task)
            })
            .collect::<Result<_>>()?,
    };
    ensure!(
        !tasks.is_empty(),
        "{} holds no completed task (run `collect` first)",
        collect_dir.display()
    );
    let mut set = TrainingSet {
        train: Vec::new(),
        heldout: Vec::new(),
    };
    for task in tasks {
        let name = task.name.clone();
        let tokens = match collection.completed(&name) {
            None => None,
            Some(_) => {
                let dir = collect_dir.join(&name);
                let done = collection.done(&name)?;
                let mut tokens = Vec::new();
                for ck in spaced(&done.checkpoints, train.checkpoints_per_task) {
                    let adapter = LoraAdapter::read_peft(&dir.join(ck))?;
                    if let Some(frozen) = &frozen {
                        check_frozen_a(&adapter, frozen)
                            .with_context(|| format!("checkpoint {}/{ck}", dir.display()))?;
                    }
                    tokens.push(layout.tokenize(&adapter).with_context(|| {
                        format!(
                            "checkpoint {}/{ck} does not fit the generator's layout",
                            dir.display()
                        )
                    })?);
                }
                ensure!(!tokens.is_empty(), "task {name} has no checkpoints");
                let tokens = Tensor::stack(&tokens, 0)?;
                // NaN cells carry no weight; 0 keeps them out of the arithmetic (the mask
                // drops them).
                Some(
                    tokens
                        .ne(&tokens)?
                        .where_cond(&tokens.zeros_like()?, &tokens)?,
                )
            }
        };
        let prompts: Vec<String> = task
            .train
            .iter()
            .take(prompt_pool)
            .map(|e| cfg.condition.text(&e.prompt, &e.answer))
            .collect();
        ensure!(!prompts.is_empty(), "task {name} has no training prompts");
        let pool = encode_cached(encoder, &prompts, cfg.prompt_tokens, &name, cache_dir)?;
        let data = TaskData {
            name: name.clone(),
            family: task.family.clone(),
            pool,
            tokens,
            train: task.train,
            test: task.test,
        };
        if holdout.holds_out(&name, &data.family) {
            set.heldout.push(data);
        } else {
            set.train.push(data);
        }
    }
    ensure!(
        !set.train.is_empty(),
        "the held-out protocol {holdout:?} leaves no task to train on"
    );
    if let Holdout::Tasks(t) = holdout {
        for n in t {
            ensure!(
                set.heldout.iter().any(|d| &d.name == n),
                "held-out task {n:?} is not among the tasks of {}",
                collect_dir.display()
            );
        }
    }
    Ok(set)
}

/// The encoder's outputs for `prompts`, from the cache when the same prompts and L were
/// encoded before.
fn encode_cached(
    encoder: &dyn ConditionEncoder,
    prompts: &[String],
    l: usize,
    task: &str,
    cache_dir: &Path,
) -> Result<Tensor> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&(prompts, l))?);
    if let Some(tag) = encoder.cache_tag() {
        h.update(tag.as_bytes());
    }
    let key = hex::encode(&h.finalize()[..8]);
    let path = cache_dir.join(format!("{task}-{key}.safetensors"));
    if let Ok(mut t) = candle_core::safetensors::load(&path, &Device::Cpu) {
        if let Some(pool) = t.remove("pool") {
            return Ok(pool);
        }
    }
    let mut parts = Vec::new();
    for chunk in prompts.chunks(32) {
        parts.push(encoder.encode(chunk, l)?.0.to_device(&Device::Cpu)?);
    }
    let pool = Tensor::cat(&parts, 0)?;
    let file = std::collections::HashMap::from([("pool".to_string(), pool.clone())]);
    crate::format::fsio::write_atomic_with(&path, |tmp| {
        Ok(candle_core::safetensors::save(&file, tmp)?)
    })?;
    Ok(pool)
}

/// Per-token loss weights (T,) from the checkpoints' variability (see the module doc).
pub fn token_weights(tasks: &[TaskData], mask: &Tensor) -> Result<Tensor> {
    let (t, h, w) = mask.dims3()?;
    let cells = mask.sum_keepdim((1, 2))?.reshape(t)?;
    let valid = mask.sum_all()?.to_scalar::<f32>()?;
    let mut acc = Tensor::zeros(t, DType::F32, &Device::Cpu)?;
    for d in tasks {
        let tokens = d.checkpoints()?;
        let k = tokens.dim(0)?;
        let std = if k > 1 {
            let mean = tokens.mean_keepdim(0)?;
            (tokens.broadcast_sub(&mean)?.sqr()?.sum_keepdim(0)? / (k - 1) as f64)?
                .sqrt()?
                .reshape((t, h, w))?
        } else {
            Tensor::ones((t, h, w), DType::F32, &Device::Cpu)?
        };
        let std = (std * mask)?;
        let global = std.sum_all()?.to_scalar::<f32>()? / valid;
        let global = if global > 0.0 { global } else { 1.0 };
        let per_token = (std.sum_keepdim((1, 2))?.reshape(t)? / &cells)?;
        acc = (acc + (per_token / f64::from(global))?)?;
    }
    let acc = (acc / tasks.len() as f64)?;
    let mean = acc.mean_all()?.to_scalar::<f32>()?;
    if mean > 0.0 && mean.is_finite() {
        Ok((acc / f64::from(mean))?)
    } else {
        Ok(Tensor::ones(t, DType::F32, &Device::Cpu)?)
    }
}

/// Gaussian noise of std `std` from `rng` (Box-Muller), so that it is reproducible.
fn noise(shape: &[usize], std: f64, rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1 = (rng.unit_f32() as f64).max(1e-12);
        let u2 = rng.unit_f32() as f64;
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let th = 2.0 * std::f64::consts::PI * u2;
        v.push((r * th.cos()) as f32);
        v.push((r * th.sin()) as f32);
    }
    v.truncate(n);
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// A batch: conditions (B, N, L, 384) and target tokens (B, T, h, w).
fn sample_batch(
    tasks: &[TaskData],
    n: usize,
    batch: usize,
    mixup: f64,
    rng: &mut Rng,
) -> Result<(Tensor, Tensor)> {
    let mut conds = Vec::with_capacity(batch);
    let mut targets = Vec::with_capacity(batch);
    for _ in 0..batch {
        let i = rng.below(tasks.len());
        let d = &tasks[i];
        let k = rng.below(d.checkpoints()?.dim(0)?);
        let mut cond = d.pool.index_select(&prompt_indices(d, n, rng)?, 0)?;
        let mut target = d.checkpoints()?.get(k)?;
        // Only a mixing run draws the extra numbers: without it the stream is unchanged.
        if mixup > 0.0 && tasks.len() > 1 && n > 1 && f64::from(rng.unit_f32()) < mixup {
            // m of the n prompts come from another task, and the target is the blend of
            // the two checkpoints in that proportion.
            let e = &tasks[another_task(i, tasks.len(), rng)];
            let ke = rng.below(e.checkpoints()?.dim(0)?);
            let other = e.pool.index_select(&prompt_indices(e, n, rng)?, 0)?;
            let lambda;
            (cond, lambda) = mix_rows(&cond, &other, rng)?;
            target = ((target * (1.0 - lambda))? + (e.checkpoints()?.get(ke)? * lambda)?)?;
        }
        conds.push(cond);
        targets.push(target);
    }
    Ok((Tensor::stack(&conds, 0)?, Tensor::stack(&targets, 0)?))
}

/// A task index other than `i` of `len` (> 1), uniformly: the partner of a mixed sample or
/// a contrast.
fn another_task(i: usize, len: usize, rng: &mut Rng) -> usize {
    (i + 1 + rng.below(len - 1)) % len
}

/// Two tasks' prompt batches (n, L, 384) mixed: m of the n rows, 1 <= m < n at random
/// positions, taken from `other`; returns the mix and m / n, the share of `other`.
fn mix_rows(cond: &Tensor, other: &Tensor, rng: &mut Rng) -> Result<(Tensor, f64)> {
    let n = cond.dim(0)?;
    ensure!(
        n > 1 && other.dim(0)? == n,
        "mixing needs two batches of n > 1 rows"
    );
    let m = 1 + rng.below(n - 1);
    let mut positions: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut positions);
    let from_other = &positions[..m];
    let rows = (0..n)
        .map(|p| match from_other.contains(&p) {
            true => other.get(p),
            false => cond.get(p),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((Tensor::stack(&rows, 0)?, m as f64 / n as f64))
}

/// Indices of n prompts of a task's pool: n distinct ones in random order when the pool
/// has that many, else drawn with replacement.
fn prompt_indices(d: &TaskData, n: usize, rng: &mut Rng) -> Result<Tensor> {
    let p = d.pool.dim(0)?;
    let idx: Vec<u32> = if p >= n {
        // The first n of a partial Fisher-Yates shuffle.
        let mut order: Vec<u32> = (0..p as u32).collect();
        for i in 0..n {
            let j = i + rng.below(p - i);
            order.swap(i, j);
        }
        order.truncate(n);
        order
    } else {
        (0..n).map(|_| rng.below(p) as u32).collect()
    };
    Ok(Tensor::new(idx.as_slice(), &Device::Cpu)?)
}

/// Weighted masked MSE: `cell_w` is (T, h, w), the token weight on valid cells and 0 on NaN
/// cells; the sum is divided by the number of valid cells in the batch.
fn weighted_mse(pred: &Tensor, target: &Tensor, cell_w: &Tensor, valid: f64) -> Result<Tensor> {
    let b = pred.dim(0)?;
    let d = (pred - target)?.sqr()?.broadcast_mul(cell_w)?;
    Ok((d.sum_all()? / (valid * b as f64))?)
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(k, _)| !DecoderConfig::is_statistic(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Options that do not change the trained weights.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Stop (as if killed) after this many steps in this call.
    pub stop_after_steps: Option<usize>,
    /// No progress bar or log lines.
    pub quiet: bool,
    /// The command line of this call, recorded in `train.json`'s `made_by`.
    pub command: Option<String>,
}

/// What a call to [`train_decoder`] did.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The step it started from (0 for a fresh run).
    pub resumed_from: usize,
    pub record: TrainRecord,
    pub seconds: f64,
}

/// The recorded command that trained the adapter at `residual_from` (a checkpoint folder
/// inside a collection's task folder), if any.
fn base_adapter_command(residual_from: Option<&Path>) -> Option<String> {
    let done = residual_from?.parent()?.join(DONE_FILE);
    let done: TaskDone = serde_json::from_slice(&std::fs::read(done).ok()?).ok()?;
    done.command
}

/// Sets the decoder's output layer ([`DecoderConfig::output_params`]) to zero, so that its
/// output is zero whatever the prompts ([`ResidualInit::Output`]).
fn zero_output_layer(varmap: &VarMap, cfg: &DecoderConfig) -> Result<()> {
    let names = cfg
        .output_params()
        .context("--residual-init output needs a decoder whose output layer can be zeroed")?;
    let data = varmap.data().lock().unwrap();
    for key in names {
        let var = data
            .get(&key)
            .with_context(|| format!("decoder has no {key}"))?;
        var.set(&var.zeros_like()?)?;
    }
    Ok(())
}

/// Trains (or resumes training) a decoder for `decoder_cfg` on `set`, writing the generator
/// and its state to `out`.
pub fn train_decoder(
    set: &TrainingSet,
    decoder_cfg: &DecoderConfig,
    cfg: &TrainDecoderConfig,
    checkpoints: &Path,
    out: &Path,
    sft: Option<&SftData>,
    opts: &TrainOptions,
) -> Result<TrainOutcome> {
    ensure!(
        cfg.steps >= 1 && cfg.batch_size >= 1,
        "steps and batch size must be >= 1"
    );
    let sft = match cfg.objective.end_to_end() {
        true => Some(sft.context("the end-to-end objective needs the base model")?),
        false => None,
    };
    ensure!(
        decoder_cfg.residual == sft.is_some(),
        "a residual decoder goes with the end-to-end objective and only with it"
    );
    ensure!(cfg.save_every >= 1, "save_every must be >= 1");
    let started = Instant::now();
    let device = Device::Cpu;
    let layout = decoder_cfg.layout()?;
    let mask = layout.valid_mask()?;
    let (t, _, _) = layout.shape();
    if cfg.objective != Objective::Sft {
        for d in &set.train {
            d.checkpoints()?;
        }
    }
    let collected = |tasks: &[TaskData]| tasks.iter().all(|d| d.tokens.is_some());
    let weights = match cfg.token_weighting && collected(&set.train) {
        true => token_weights(&set.train, &mask)?,
        false => Tensor::ones(t, DType::F32, &Device::Cpu)?,
    };
    let cell_w = mask.broadcast_mul(&weights.reshape((t, 1, 1))?)?;
    let valid = f64::from(mask.sum_all()?.to_scalar::<f32>()?);
    let n = decoder_cfg.prompts;

    let state_dir = out.join(STATE_DIR);
    let mut record = TrainRecord {
        config: cfg.clone(),
        decoder: decoder_cfg.clone(),
        checkpoints: checkpoints.to_path_buf(),
        train_tasks: set.train.iter().map(|d| d.name.clone()).collect(),
        heldout_tasks: set.heldout.iter().map(|d| d.name.clone()).collect(),
        step: 0,
        log: Vec::new(),
        heldout_nll_at_start: None,
        made_by: base_adapter_command(cfg.residual_from.as_deref())
            .into_iter()
            .chain(opts.command.clone())
            .collect(),
    };
    let (decoder, mut varmap) = Decoder::seeded(decoder_cfg, cfg.seed, &device)?;
    if let Some(dir) = &cfg.init_from {
        let from = DecoderConfig::load(dir)?;
        ensure!(
            from.shapes == decoder_cfg.shapes
                && from.kernel == decoder_cfg.kernel
                && from.mix == decoder_cfg.mix
                && from.attend == decoder_cfg.attend
                && from.input_norm == decoder_cfg.input_norm,
            "--init-from {}: its decoder has other shapes",
            dir.display()
        );
        varmap.load(dir.join(crate::generator::decoder::WEIGHTS_FILE))?;
    } else {
        let pools: Vec<&Tensor> = set.train.iter().map(|d| &d.pool).collect();
        if decoder_cfg.input_norm {
            decoder.set_input_norm(&varmap, &pools)?;
        }
        if decoder_cfg.is_neighbour_head() {
            decoder.set_neighbour_keys(&varmap, &pools)?;
        }
    }
    let gate = match sft {
        Some(s) => Some(match cfg.residual_init {
            ResidualInit::Gates => Var::from_tensor(&s.model.residual.gate)?,
            ResidualInit::Output => {
                zero_output_layer(&varmap, decoder_cfg)?;
                Var::from_tensor(&s.model.residual.gate.ones_like()?)?
            }
        }),
        None => None,
    };
    let mut vars = sorted_vars(&varmap);
    if let (Some(s), Some(gate)) = (sft, &gate) {
        vars.push((GATE_VAR.to_string(), gate.clone()));
        record.heldout_nll_at_start = s.heldout_nll(&decoder, gate.as_tensor(), n, 0)?;
    }
    let plain: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut adam = AdamW::new(
        plain.clone(),
        AdamWParams::with_weight_decay(cfg.weight_decay),
    )?;
    if state_dir.join(TRAIN_FILE).is_file() {
        let saved = TrainRecord::load(&state_dir)?;
        let same = TrainRecord {
            step: saved.step,
            log: saved.log.clone(),
            made_by: saved.made_by.clone(),
            ..record.clone()
        };
        if saved != same {
            bail!(
                "{} holds a run with other settings or data; use another --out or delete it",
                out.display()
            );
        }
        let state = candle_core::safetensors::load(state_dir.join(RESUME_STATE_FILE), &device)?;
        restore_resume_state(&vars, &mut adam, state, saved.step)?;
        record = saved;
        record.made_by.extend(opts.command.clone());
    }
    let resumed_from = record.step;

    let heldout_batch = if set.heldout.is_empty() || !collected(&set.heldout) {
        None
    } else {
        let mut rng = Rng::derive(cfg.seed, "heldout-batch");
        Some(sample_batch(&set.heldout, n, 8, 0.0, &mut rng)?)
    };
    let bar = progress_bar(cfg.steps, opts.quiet, "train");
    bar.set_position(record.step as u64);

    let mut budget = StepBudget::new(opts.stop_after_steps);
    let (mut loss_sum, mut loss_n) = (0f64, 0usize);
    while record.step < cfg.steps {
        if !budget.take() {
            break;
        }
        let step = record.step;
        let mut rng = Rng::derive(cfg.seed, &format!("step-{step}"));
        let loss = match (sft, &gate) {
            (Some(s), Some(gate)) => {
                let batch_of = |d: &TaskData, rng: &mut Rng| -> Result<Tensor> {
                    Ok(d.pool.index_select(&prompt_indices(d, n, rng)?, 0)?)
                };
                // A noisy prompt batch of training task `own` through the decoder: (T, h,
                // w) tokens; a neighbour head leaves that task's direction out.
                let leave_out = decoder_cfg.is_neighbour_head();
                let through = |cond: Tensor, own: usize, rng: &mut Rng| -> Result<Tensor> {
                    let cond = (&cond + noise(cond.dims(), cfg.input_noise, rng)?)?;
                    let own = leave_out.then_some(own);
                    Ok(decoder
                        .forward_excluding(&cond.unsqueeze(0)?, own)?
                        .get(0)?)
                };
                let tasks = set.train.len();
                let mut total = None::<Tensor>;
                for _ in 0..cfg.batch_size {
                    let i = rng.below(tasks);
                    let d = &set.train[i];
                    let mut cond = batch_of(d, &mut rng)?;
                    // Mixed: the batch's rows partly another task's, the loss both tasks'
                    // in the same proportion, as the reconstruction's blended targets.
                    // Only a mixing run draws the extra numbers.
                    let mixed = match cfg.task_mixup > 0.0
                        && tasks > 1
                        && n > 1
                        && f64::from(rng.unit_f32()) < cfg.task_mixup
                    {
                        true => {
                            let j = another_task(i, tasks, &mut rng);
                            let lambda;
                            (cond, lambda) =
                                mix_rows(&cond, &batch_of(&set.train[j], &mut rng)?, &mut rng)?;
                            Some((j, lambda))
                        }
                        false => None,
                    };
                    let pred = through(cond, i, &mut rng)?;
                    let other = match cfg.contrast > 0.0 && tasks > 1 && mixed.is_none() {
                        true => {
                            let j = another_task(i, tasks, &mut rng);
                            Some(through(batch_of(&set.train[j], &mut rng)?, j, &mut rng)?)
                        }
                        false => None,
                    };
                    let mut l = s.task_loss(i, &pred, gate, cfg, other.as_ref(), &mut rng)?;
                    if let Some((j, lambda)) = mixed {
                        let lj = s.task_loss(j, &pred, gate, cfg, None, &mut rng)?;
                        l = ((l * (1.0 - lambda))? + (lj * lambda)?)?;
                    }
                    if cfg.objective == Objective::Mix {
                        let pick = |d: &TaskData, rng: &mut Rng| -> Result<Tensor> {
                            let tokens = d.checkpoints()?;
                            Ok(tokens.get(rng.below(tokens.dim(0)?))?)
                        };
                        let mut target = pick(d, &mut rng)?;
                        if let Some((j, lambda)) = mixed {
                            let other = pick(&set.train[j], &mut rng)?;
                            target = ((target * (1.0 - lambda))? + (other * lambda)?)?;
                        }
                        let target = target.unsqueeze(0)?;
                        let target = (&target + noise(target.dims(), cfg.target_noise, &mut rng)?)?;
                        let rec = weighted_mse(&pred.unsqueeze(0)?, &target, &cell_w, valid)?;
                        l = (l + (rec * cfg.mix_weight)?)?;
                    }
                    total = Some(match total {
                        None => l,
                        Some(acc) => (acc + l)?,
                    });
                }
                (total.expect("batch size >= 1") / cfg.batch_size as f64)?
            }
            _ => {
                let (cond, target) =
                    sample_batch(&set.train, n, cfg.batch_size, cfg.task_mixup, &mut rng)?;
                let cond = (&cond + noise(cond.dims(), cfg.input_noise, &mut rng)?)?;
                let target = (&target + noise(target.dims(), cfg.target_noise, &mut rng)?)?;
                let pred = decoder.forward(&cond)?;
                weighted_mse(&pred, &target, &cell_w, valid)?
            }
        };
        let loss_v = loss.to_scalar::<f32>()?;
        ensure!(loss_v.is_finite(), "loss is not finite at step {step}");
        let mut grads = loss.backward()?;
        let grad_norm = clip_grad_norm(&mut grads, &plain, cfg.grad_clip)?;
        let lr = cfg.lr_at(step);
        adam.step(&grads, lr)?;
        record.step += 1;
        loss_sum += f64::from(loss_v);
        loss_n += 1;
        bar.set_message(format!("loss {loss_v:.4}"));
        bar.inc(1);
        if record.step.is_multiple_of(cfg.save_every) || record.step == cfg.steps {
            let heldout_loss = match &heldout_batch {
                Some((c, tg)) => Some(
                    weighted_mse(&decoder.forward(c)?, tg, &cell_w, valid)?.to_scalar::<f32>()?,
                ),
                None => None,
            };
            let (heldout_nll, heldout_nll_shuffled) = match (sft, &gate) {
                (Some(s), Some(g)) => (
                    s.heldout_nll(&decoder, g.as_tensor(), n, 0)?,
                    match set.heldout.len() > 1 {
                        true => s.heldout_nll(&decoder, g.as_tensor(), n, 1)?,
                        false => None,
                    },
                ),
                _ => (None, None),
            };
            let line = LogLine {
                step: record.step,
                loss: (loss_sum / loss_n as f64) as f32,
                heldout_loss,
                heldout_nll,
                heldout_nll_shuffled,
                lr,
                grad_norm,
                seconds: started.elapsed().as_secs_f64(),
            };
            if !opts.quiet {
                let text = format!(
                    "step {:>6}  loss {:.4}{}  lr {:.2e}  |g| {:.3}",
                    line.step,
                    line.loss,
                    line.heldout_loss
                        .map(|h| format!("  held-out {h:.4}"))
                        .unwrap_or_default()
                        + &line
                            .heldout_nll
                            .map(|h| format!("  held-out nll {h:.4}"))
                            .unwrap_or_default()
                        + &line
                            .heldout_nll_shuffled
                            .map(|h| format!(" (shuffled {h:.4})"))
                            .unwrap_or_default(),
                    line.lr,
                    line.grad_norm
                );
                print_above(&bar, text);
            }
            record.log.push(line);
            (loss_sum, loss_n) = (0.0, 0);
            let residual = match (sft, &gate) {
                (Some(s), Some(g)) => Some(Residual {
                    base: s.model.residual.base.clone(),
                    gate: g.as_tensor().copy()?,
                }),
                _ => None,
            };
            save(
                &decoder,
                &varmap,
                &vars,
                &adam,
                &record,
                residual.as_ref(),
                out,
            )?;
        }
    }
    bar.finish_and_clear();
    Ok(TrainOutcome {
        resumed_from,
        record,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes the resume state (one atomic folder) and then the generator folder.
fn save(
    decoder: &Decoder,
    varmap: &VarMap,
    vars: &[(String, Var)],
    adam: &AdamW,
    record: &TrainRecord,
    residual: Option<&Residual>,
    out: &Path,
) -> Result<()> {
    let state = resume_state(vars, adam);
    let record_json = serde_json::to_vec_pretty(record)?;
    write_folder_atomic(
        &out.join(STATE_DIR),
        &[
            (RESUME_STATE_FILE, &safetensors_bytes(&state)?),
            (TRAIN_FILE, &record_json),
        ],
    )?;
    decoder.save(varmap, out)?;
    if let Some(r) = residual {
        let bytes = r.to_bytes(&decoder.config().layout()?)?;
        crate::format::fsio::write_atomic(&out.join(RESIDUAL_FILE), &bytes)?;
    }
    crate::format::fsio::write_atomic(&out.join(TRAIN_FILE), &record_json)?;
    Ok(())
}

/// The decoder for a collection: its LoRA settings (rank, alpha, modules, frozen A) read
/// from `collect.json`, the base model's dims, the project's default hidden shapes.
pub fn decoder_config_for(
    collect_dir: &Path,
    base_name: &str,
    dims: &crate::format::peft::LlamaDims,
    chunk: usize,
    n: usize,
    l: usize,
) -> Result<DecoderConfig> {
    let collect = Collection::new(collect_dir).settings()?;
    let lora = &collect.train.lora;
    DecoderConfig::for_model_default_shapes(
        base_name,
        dims,
        lora.rank,
        lora.alpha,
        &lora.modules,
        chunk,
        n,
        l,
    )?
    .with_frozen_a(lora.frozen_a_seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::peft::Module;
    use crate::generator::decoder::tests::{tiny_config, tiny_dims};

    #[test]
    fn task_mixup_blends_targets_in_the_batch_proportion() {
        let task = |name: &str, v: f64| {
            let full = |shape: &[usize]| {
                (Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap() * v).unwrap()
            };
            TaskData {
                name: name.into(),
                family: "f".into(),
                pool: full(&[6, 2, 3]),
                tokens: Some(full(&[2, 1, 2, 2])),
                train: Vec::new(),
                test: Vec::new(),
            }
        };
        let tasks = [task("zeros", 0.0), task("ones", 1.0)];
        let mut rng = Rng::new(3);
        for (mixup, want_mixed) in [(1.0, 32), (0.0, 0)] {
            let (cond, target) = sample_batch(&tasks, 4, 32, mixup, &mut rng).unwrap();
            let mut mixed = 0;
            for b in 0..32 {
                // Each prompt is all zeros or all ones: its task.
                let rows: Vec<f32> = cond
                    .get(b)
                    .unwrap()
                    .mean((1, 2))
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(rows.iter().all(|r| *r == 0.0 || *r == 1.0), "{rows:?}");
                let share = rows.iter().sum::<f32>() / 4.0;
                let t: Vec<f32> = target
                    .get(b)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(
                    t.iter().all(|x| (x - share).abs() < 1e-6),
                    "{t:?} vs {share}"
                );
                mixed += usize::from(share > 0.0 && share < 1.0);
            }
            assert_eq!(mixed, want_mixed, "mixup {mixup}");
        }
    }

    #[test]
    fn a_zeroed_output_layer_outputs_zero_for_every_head() {
        let dev = Device::Cpu;
        for cfg in [
            tiny_config(),
            tiny_config().with_mix(3).unwrap(),
            tiny_config().with_neighbours(3).unwrap(),
        ] {
            let (decoder, varmap) = Decoder::seeded(&cfg, 1, &dev).unwrap();
            let [n, l, w] = cfg.shapes[0];
            let x = Tensor::ones((1, n, l, w), DType::F32, &dev).unwrap();
            let abs_max = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>();
            assert!(abs_max(decoder.forward(&x).unwrap()).unwrap() > 0.0);
            zero_output_layer(&varmap, &cfg).unwrap();
            assert_eq!(
                abs_max(decoder.forward(&x).unwrap()).unwrap(),
                0.0,
                "{:?}",
                cfg.mix
            );
        }
    }

    #[test]
    fn checkpoint_subsets_are_spaced_and_end_with_the_last() {
        let all: Vec<usize> = (25..65).collect();
        let ten = spaced(&all, Some(10));
        assert_eq!(ten, [&28, &32, &36, &40, &44, &48, &52, &56, &60, &64]);
        assert_eq!(spaced(&all, Some(1)), [&64]);
        assert_eq!(spaced(&all, None).len(), 40);
        assert_eq!(spaced(&all, Some(99)).len(), 40);
    }

    /// Two tasks of three random checkpoints each, random prompt pools, one task held out.
    fn synthetic_set(cfg: &DecoderConfig) -> TrainingSet {
        let layout = cfg.layout().unwrap();
        let [_, l, w] = cfg.shapes[0];
        let task = |name: &str, seed: u64| {
            let tokens: Vec<Tensor> = (0..3)
                .map(|k| {
                    let a = crate::testing::random_adapter(
                        &tiny_dims(),
                        &[Module::Q, Module::V],
                        cfg.rank,
                        seed * 10 + k,
                        0.3,
                        0.1,
                    )
                    .unwrap();
                    let t = layout.tokenize(&a).unwrap();
                    t.ne(&t)
                        .unwrap()
                        .where_cond(&t.zeros_like().unwrap(), &t)
                        .unwrap()
                })
                .collect();
            TaskData {
                name: name.into(),
                family: "f".into(),
                pool: Tensor::randn(0f32, 1.0, (6, l, w), &Device::Cpu).unwrap(),
                tokens: Some(Tensor::stack(&tokens, 0).unwrap()),
                train: Vec::new(),
                test: Vec::new(),
            }
        };
        TrainingSet {
            train: vec![task("a", 1), task("b", 2)],
            heldout: vec![task("c", 3)],
        }
    }

    /// A generator records the command that trained the checkpoint it sits on, read from
    /// the `done.json` of that checkpoint's task folder; without one, nothing.
    #[test]
    fn base_adapter_command_comes_from_the_checkpoints_task() {
        let dir = tempfile::tempdir().unwrap();
        let step = dir.path().join("pool").join("step-000010");
        std::fs::create_dir_all(&step).unwrap();
        assert_eq!(base_adapter_command(Some(&step)), None);
        let done = TaskDone {
            task: "pool".into(),
            family: "pooled".into(),
            train_hash: "0".into(),
            seed: 0,
            steps: 10,
            checkpoints: vec!["step-000010".into()],
            losses: vec![],
            seconds: 0.0,
            command: Some("mistralrs-dnd collect --pool pool".into()),
        };
        std::fs::write(
            step.parent().unwrap().join(DONE_FILE),
            serde_json::to_vec(&done).unwrap(),
        )
        .unwrap();
        assert_eq!(base_adapter_command(Some(&step)), done.command);
        assert_eq!(base_adapter_command(None), None);
    }

    fn settings(steps: usize) -> TrainDecoderConfig {
        TrainDecoderConfig {
            steps,
            batch_size: 2,
            lr: 1e-2,
            warmup_steps: 2,
            save_every: 4,
            holdout: Holdout::Tasks(vec!["c".into()]),
            ..TrainDecoderConfig::default()
        }
    }

    fn quiet(stop: Option<usize>) -> TrainOptions {
        TrainOptions {
            stop_after_steps: stop,
            quiet: true,
            ..Default::default()
        }
    }

    #[test]
    fn training_lowers_the_loss_and_writes_a_loadable_generator() {
        let cfg = tiny_config();
        let set = synthetic_set(&cfg);
        let out = tempfile::tempdir().unwrap();
        let o = train_decoder(
            &set,
            &cfg,
            &settings(40),
            Path::new("c"),
            out.path(),
            None,
            &quiet(None),
        )
        .unwrap();
        let log = &o.record.log;
        assert_eq!(log.len(), 10);
        assert!(
            log.last().unwrap().loss < 0.8 * log[0].loss,
            "loss did not fall: {:?}",
            log.iter().map(|l| l.loss).collect::<Vec<_>>()
        );
        assert!(log.iter().all(|l| l.heldout_loss.is_some()));
        assert_eq!(o.record.train_tasks, ["a", "b"]);
        assert_eq!(o.record.heldout_tasks, ["c"]);
        let (dec, _) = Decoder::load(out.path(), &Device::Cpu).unwrap();
        assert_eq!(dec.config(), &cfg);
        assert_eq!(TrainRecord::load(out.path()).unwrap().step, 40);
    }

    #[test]
    fn a_resumed_run_equals_an_uninterrupted_one() {
        let cfg = tiny_config();
        resumed_equals_uninterrupted(&cfg, &synthetic_set(&cfg));
    }

    /// With the input standardised: the statistics are the training tasks' (not the
    /// held-out one's), stay as set while the layers train, and survive a resume.
    #[test]
    fn input_statistics_come_from_the_training_tasks_and_are_not_trained() {
        let cfg = DecoderConfig {
            input_norm: true,
            ..tiny_config()
        };
        let set = synthetic_set(&cfg);
        let out = resumed_equals_uninterrupted(&cfg, &set);
        let (fresh, vm) = Decoder::seeded(&cfg, 0, &Device::Cpu).unwrap();
        fresh
            .set_input_norm(&vm, &[&set.train[0].pool, &set.train[1].pool])
            .unwrap();
        let saved = candle_core::safetensors::load(
            out.path().join(crate::generator::decoder::WEIGHTS_FILE),
            &Device::Cpu,
        )
        .unwrap();
        let data = vm.data().lock().unwrap();
        for name in ["input.centre", "input.scale"] {
            let want: Vec<f32> = data[name].flatten_all().unwrap().to_vec1().unwrap();
            let got: Vec<f32> = saved[name].flatten_all().unwrap().to_vec1().unwrap();
            assert!(got == want, "{name} is not the training tasks' statistic");
        }
        let layer: Vec<f32> = saved["layers.0.bias"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let start: Vec<f32> = data["layers.0.bias"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(layer, start, "the layers did not train");
    }

    /// Trains `cfg` 8 steps whole and in two calls (killed after step 5): the same weights
    /// and log; another setting on the same folder is refused. Returns the folder.
    fn resumed_equals_uninterrupted(cfg: &DecoderConfig, set: &TrainingSet) -> tempfile::TempDir {
        let whole = tempfile::tempdir().unwrap();
        train_decoder(
            set,
            cfg,
            &settings(8),
            Path::new("c"),
            whole.path(),
            None,
            &quiet(None),
        )
        .unwrap();
        let parts = tempfile::tempdir().unwrap();
        let first = train_decoder(
            set,
            cfg,
            &settings(8),
            Path::new("c"),
            parts.path(),
            None,
            &quiet(Some(5)),
        )
        .unwrap();
        assert_eq!(first.record.step, 5);
        // Killed after step 5: the state on disk is the one saved at step 4.
        let second = train_decoder(
            set,
            cfg,
            &settings(8),
            Path::new("c"),
            parts.path(),
            None,
            &quiet(None),
        )
        .unwrap();
        assert_eq!(second.resumed_from, 4);
        let bytes =
            |d: &Path| std::fs::read(d.join(crate::generator::decoder::WEIGHTS_FILE)).unwrap();
        assert!(
            bytes(whole.path()) == bytes(parts.path()),
            "weights differ after resume"
        );
        let losses = |d: &Path| {
            TrainRecord::load(d)
                .unwrap()
                .log
                .iter()
                .map(|l| l.loss)
                .collect::<Vec<_>>()
        };
        assert_eq!(losses(whole.path()), losses(parts.path()));

        // Other settings on the same folder are refused rather than mixed.
        let err = train_decoder(
            set,
            cfg,
            &settings(9),
            Path::new("c"),
            parts.path(),
            None,
            &quiet(None),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("other settings"), "{err:#}");
        parts
    }
}
