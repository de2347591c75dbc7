//! The end-to-end objective (`train --objective sft|mix`): judge the generator by what its
//! adapters do, not by how close they are to a checkpoint (Text-to-LoRA, arXiv 2506.06105,
//! found this generalises better than reconstruction).
//!
//! One sample: a task's prompt batch -> decoder tokens -> B matrices (the detokeniser as
//! tensor ops, [`TokenLayout::detokenize_tensors`]) -> `B = base + gate * decoded`
//! ([`Residual`]: base is the mean of the training tasks' final B matrices, gates start at
//! zero, so training starts at the averaged-adapter baseline) -> SmolLM2 with that LoRA
//! (the shared frozen A) on a few of the task's training examples -> cross-entropy on the
//! answer tokens (and the end-of-turn token, so the model learns to stop), plus
//! `residual_l2` times the residual's squared norm relative to the base's. The gradients
//! flow through the LoRA matrices (plain tensors, [`LoraWeights::from_tensors`]) into the
//! gates and the decoder. SmolLM2 stays frozen. A generator that reads examples can also
//! be trained with the task's first examples shown ([`SftData::with_shown`]): to the base
//! model as a distillation teacher ([`distill_kl`]), or to the adapter itself.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

use super::generator::{ResidualFold, TaskData, TrainDecoderConfig, TrainingSet};
use super::llama::batch::Batch;
use super::llama::chat::{demonstration_turns, ChatTokenizer, Encoded};
use super::llama::Llama;
use super::lora::{LoraConfig, LoraWeights};
use crate::format::frozen_a::check_frozen_a;
use crate::format::peft::{LoraAdapter, Module};
use crate::format::rng::Rng;
use crate::generator::decoder::{Condition, Decoder, DecoderConfig};
use crate::generator::{Residual, TokenLayout};

/// The frozen model and everything fixed about the adapters it is trained through.
pub struct SftModel {
    llama: Llama,
    tokenizer: ChatTokenizer,
    lora: LoraConfig,
    frozen_a: BTreeMap<(usize, Module), Tensor>,
    layout: TokenLayout,
    /// Base matrices and the initial (zero) gates.
    pub residual: Residual,
    /// The folds' base matrices (gates unused), see [`TrainDecoderConfig::residual_folds`].
    folds: Vec<Residual>,
    /// Squared norm of each base (the residual's, then the folds'): the residual penalty's
    /// scale, fixed.
    norms2: Vec<f64>,
    condition: Condition,
}

/// A task's examples, tokenized with the chat template the server uses.
pub struct SftExamples {
    pub train: Vec<Encoded>,
    pub test: Vec<Encoded>,
    /// `train` after the task's first examples as earlier turns ([`SftData::with_shown`]),
    /// as the distillation teacher or an adapter trained beside them reads them (for a
    /// held-out task, `test` so); empty without.
    pub shown: Vec<Encoded>,
}

impl SftModel {
    /// Loads the base model from `base_dir`; the base adapter is `residual_from`, or else
    /// the mean of the last checkpoint of every training task.
    pub fn load(
        base_dir: &Path,
        cfg: &DecoderConfig,
        train: &[TaskData],
        residual_from: Option<&Path>,
        folds: &[ResidualFold],
    ) -> Result<Self> {
        let frozen_a = cfg
            .frozen_a()?
            .context("the end-to-end objective needs a collection with a frozen shared A")?;
        let layout = cfg.layout()?;
        let device = Device::Cpu;
        let llama = Llama::load(base_dir, &device)?;
        cfg.check_base(&llama.dims)?;
        let tokenizer = ChatTokenizer::load(base_dir)?;
        let read = |dir: &Path| -> Result<LoraAdapter> {
            let adapter = LoraAdapter::read_peft(dir)?;
            check_frozen_a(&adapter, &frozen_a).with_context(|| format!("{}", dir.display()))?;
            Ok(adapter)
        };
        let folds = folds
            .iter()
            .map(|f| Residual::mean_of(&layout, &[read(&f.adapter)?]))
            .collect::<Result<Vec<_>>>()?;
        let residual = match residual_from {
            Some(dir) if dir.join(crate::generator::decoder::CONFIG_FILE).is_file() => {
                generator_base(dir, cfg, &layout).context("--residual-from")?
            }
            Some(dir) => Residual::mean_of(&layout, &[read(dir).context("--residual-from")?])?,
            None => {
                let last = train
                    .iter()
                    .map(|d| {
                        let tokens = d.checkpoints()?;
                        let k = tokens.dim(0)?;
                        layout.detokenize(&tokens.get(k - 1)?, cfg.lora_alpha, &cfg.base_model)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Residual::mean_of(&layout, &last)?
            }
        };
        let norms2 = std::iter::once(&residual)
            .chain(&folds)
            .map(|r| {
                r.base.iter().try_fold(0f64, |acc, b| {
                    Ok::<_, anyhow::Error>(acc + f64::from(b.sqr()?.sum_all()?.to_scalar::<f32>()?))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            llama,
            tokenizer,
            lora: LoraConfig {
                rank: cfg.rank,
                alpha: cfg.lora_alpha,
                modules: cfg.modules()?,
                frozen_a_seed: cfg.frozen_a_seed,
            },
            frozen_a,
            layout,
            residual,
            folds,
            norms2,
            condition: cfg.condition,
        })
    }

    /// Tokenizes a task's examples (its train and test splits, as `TaskData` keeps them).
    /// A generator that reads labelled examples is trained on the training examples its
    /// pool does not hold (all of them when none are left), so that no loss is taken on an
    /// answer it was shown.
    pub fn examples(&self, task: &TaskData) -> Result<SftExamples> {
        let enc = |e: &crate::tasks::Example| self.tokenizer.encode_example(&e.prompt, &e.answer);
        let shown = match self.condition {
            Condition::Examples if task.train.len() > task.pool.dim(0)? => task.pool.dim(0)?,
            _ => 0,
        };
        Ok(SftExamples {
            train: task.train[shown..].iter().map(enc).collect::<Result<_>>()?,
            test: task.test.iter().map(enc).collect::<Result<_>>()?,
            shown: Vec::new(),
        })
    }

    /// `n` indices of a pool of `len` drawn without replacement (all when there are fewer).
    fn draw(len: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..len).collect();
        let n = n.min(len);
        for i in 0..n {
            let j = i + rng.below(len - i);
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx
    }

    pub fn batch(&self, items: &[&Encoded]) -> Result<Batch> {
        Batch::new(items, self.tokenizer.end_of_turn, self.llama.device())
    }

    /// For one sample's decoder tokens (T, h, w): the cross-entropy of `batch` through the
    /// adapter they give on a base (`fold`'s, or with `None` the residual's), and the
    /// residual's squared norm relative to that base's.
    pub fn loss(
        &self,
        fold: Option<usize>,
        tokens: &Tensor,
        gate: &Tensor,
        batch: &Batch,
    ) -> Result<(Tensor, Tensor)> {
        let (logits, rel) = self.answer_logits(fold, tokens, gate, batch)?;
        let ce = candle_nn::loss::cross_entropy(&logits, &batch.targets)?;
        Ok((ce, rel))
    }

    /// As [`Self::loss`], the answer tokens' logits instead of their cross-entropy.
    pub fn answer_logits(
        &self,
        fold: Option<usize>,
        tokens: &Tensor,
        gate: &Tensor,
        batch: &Batch,
    ) -> Result<(Tensor, Tensor)> {
        let (base, norm2) = match fold {
            Some(k) => (&self.folds[k], self.norms2[k + 1]),
            None => (&self.residual, self.norms2[0]),
        };
        let decoded = self.layout.detokenize_tensors(tokens)?;
        let b = base.combine(gate, &decoded)?;
        let mut pairs = BTreeMap::new();
        let mut res = None::<Tensor>;
        let slots = self.layout.slots.iter().zip(b);
        for (i, ((slot, b), d)) in slots.zip(&decoded).enumerate() {
            let a = self.frozen_a[&(slot.layer, slot.module)].clone();
            pairs.insert((slot.layer, slot.module), (a, b));
            let r = d.broadcast_mul(&gate.narrow(0, i, 1)?)?.sqr()?.sum_all()?;
            res = Some(match res {
                None => r,
                Some(acc) => (acc + r)?,
            });
        }
        let lora = LoraWeights::from_tensors(self.lora.clone(), pairs);
        let logits = self.llama.answer_logits(batch, Some(&lora))?;
        let rel = (res.expect("at least one matrix") / norm2.max(1e-12))?;
        Ok((logits, rel))
    }
}

/// A residual generator's base adapter, gates at zero: retraining on the base a shipped
/// generator sits on needs neither its collection nor that LoRA's folder.
fn generator_base(dir: &Path, cfg: &DecoderConfig, layout: &TokenLayout) -> Result<Residual> {
    let theirs = DecoderConfig::load(dir)?;
    ensure!(
        theirs.residual,
        "{} is a generator without a base adapter (not residual)",
        dir.display()
    );
    ensure!(
        theirs.frozen_a_seed == cfg.frozen_a_seed
            && theirs.lora_alpha == cfg.lora_alpha
            && theirs.layout()? == *layout,
        "{}: its adapters have another layout, alpha or frozen A than this generator's",
        dir.display()
    );
    let loaded = Residual::load(dir, layout)?;
    Ok(Residual {
        gate: loaded.gate.zeros_like()?,
        base: loaded.base,
    })
}

/// The greedy-error term: the mean over answer tokens of how far each token's logit falls
/// short of beating every other token's by `margin`, `relu(margin - (z_target - max_other
/// z))`. Zero on a token that greedy decoding gets right by the margin, so that, unlike the
/// cross-entropy, it spends nothing on answers already right and everything on the tokens
/// where a greedy answer goes wrong (teacher-forced).
pub fn greedy_hinge(logits: &Tensor, targets: &Tensor, margin: f64) -> Result<Tensor> {
    let (_, vocab) = logits.dims2()?;
    let ids = Tensor::arange(0u32, vocab as u32, logits.device())?.unsqueeze(0)?;
    let is_target = targets
        .unsqueeze(1)?
        .broadcast_eq(&ids)?
        .to_dtype(logits.dtype())?;
    let target = (logits * &is_target)?.sum_keepdim(1)?;
    // The target's own logit pushed far below every other, so that the max is the best other.
    let other = (logits - (is_target * 1e4)?)?.max_keepdim(1)?;
    Ok(((other - target)? + margin)?.relu()?.mean_all()?)
}

/// The distillation term: the mean over answer tokens of KL(teacher || student), the
/// teacher's distribution (its logits, no gradient) against the adapter's. Where the
/// cross-entropy pays only for the one right token, this pays for every token the in-context
/// teacher finds likely, what a task's examples imply beyond its answers.
pub fn distill_kl(teacher: &Tensor, student: &Tensor) -> Result<Tensor> {
    let t = candle_nn::ops::log_softmax(&teacher.detach(), 1)?;
    let s = candle_nn::ops::log_softmax(student, 1)?;
    Ok((t.exp()? * (t - s)?)?.sum(1)?.mean_all()?)
}

/// Held-out test examples per task in the log's `heldout_nll`.
const HELDOUT_EXAMPLES: usize = 8;

/// The model plus every task's tokenized examples, in the order of the training set.
pub struct SftData {
    pub model: SftModel,
    pub train: Vec<SftExamples>,
    pub heldout: Vec<SftExamples>,
    /// Per training task: the index of its fold in `model.folds`, or `None` (the
    /// residual's base).
    train_fold: Vec<Option<usize>>,
    /// The held-out tasks' encoded prompt pools (the log's fixed prompt batches: the first
    /// N of each).
    heldout_pools: Vec<Tensor>,
}

impl SftData {
    pub fn load(
        base_dir: &Path,
        cfg: &DecoderConfig,
        set: &TrainingSet,
        residual_from: Option<&Path>,
        folds: &[ResidualFold],
    ) -> Result<Self> {
        let names: Vec<&str> = set.train.iter().map(|t| t.name.as_str()).collect();
        let mut train_fold = vec![None; names.len()];
        for (k, fold) in folds.iter().enumerate() {
            for task in &fold.tasks {
                let i = names
                    .iter()
                    .position(|n| n == task)
                    .with_context(|| format!("residual fold task {task} is not a training task"))?;
                ensure!(
                    train_fold[i].is_none(),
                    "task {task} is in two residual folds"
                );
                train_fold[i] = Some(k);
            }
        }
        let model = SftModel::load(base_dir, cfg, &set.train, residual_from, folds)?;
        let encode = |tasks: &[TaskData]| {
            tasks
                .iter()
                .map(|t| model.examples(t))
                .collect::<Result<Vec<_>>>()
        };
        let (train, heldout) = (encode(&set.train)?, encode(&set.heldout)?);
        Ok(Self {
            model,
            train,
            heldout,
            train_fold,
            heldout_pools: set.heldout.iter().map(|t| t.pool.clone()).collect(),
        })
    }

    /// Encodes every training task's examples after its first `shown` training examples as
    /// earlier chat turns (the server's `plugin.demonstrations`), for the distillation
    /// teacher or an adapter trained beside the examples. Those examples must be ones the
    /// loss never takes (a generator reading examples is trained on those after its pool);
    /// `shown` 0: none. With `beside` (an adapter trained beside them), the held-out tasks'
    /// test examples too, which the log's held-out NLL then reads, as a server showing them
    /// would answer.
    pub fn with_shown(mut self, set: &TrainingSet, shown: usize, beside: bool) -> Result<Self> {
        if shown == 0 {
            return Ok(self);
        }
        let tokenizer = &self.model.tokenizer;
        let after = |task: &TaskData, examples: &[crate::tasks::Example]| {
            let turns = demonstration_turns(&task.train[..shown]);
            examples
                .iter()
                .map(|e| tokenizer.encode_example(&format!("{turns}{}", e.prompt), &e.answer))
                .collect::<Result<Vec<_>>>()
        };
        for (task, ex) in set.train.iter().zip(&mut self.train) {
            let skipped = task.train.len() - ex.train.len();
            ensure!(
                skipped >= shown,
                "task {}: the {shown} examples shown would be trained on (it needs \
                 --condition examples and a pool of at least {shown})",
                task.name
            );
            ex.shown = after(task, &task.train[skipped..])?;
        }
        if beside {
            for (task, ex) in set.heldout.iter().zip(&mut self.heldout) {
                ensure!(
                    task.train.len() >= shown,
                    "held-out task {}: fewer than {shown} examples to show",
                    task.name
                );
                ex.shown = after(task, &task.test)?;
            }
        }
        Ok(self)
    }

    /// One training sample's loss: `cfg.sft_examples` examples of training task `task`
    /// drawn from `rng`, their cross-entropy through the adapter of decoder tokens `tokens`,
    /// plus the residual penalty (and `cfg.greedy` times [`greedy_hinge`]). With `contrast`, the tokens generated from another task's
    /// condition as well: `cfg.contrast` times how far the task's cross-entropy through
    /// that adapter falls short of its own plus `cfg.contrast_margin` (zero past it), so that
    /// the generator is paid for reading its input, not only for a correction that helps
    /// every task alike.
    pub fn task_loss(
        &self,
        task: usize,
        tokens: &Tensor,
        gate: &Tensor,
        cfg: &TrainDecoderConfig,
        contrast: Option<&Tensor>,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let data = &self.train[task];
        let drawn = SftModel::draw(data.train.len(), cfg.sft_examples, rng);
        // The drawn examples of `train`, or as the examples shown before them encode them.
        let batch_of = |pool: &[Encoded]| -> Result<Batch> {
            self.model
                .batch(&drawn.iter().map(|&i| &pool[i]).collect::<Vec<_>>())
        };
        let shown = |what: &str| -> Result<Batch> {
            ensure!(
                !data.shown.is_empty(),
                "{what} needs the examples shown (SftData::with_shown)"
            );
            batch_of(&data.shown)
        };
        let batch = match cfg.adapter_sees_shown {
            true => shown("--adapter-sees-shown")?,
            false => batch_of(&data.train)?,
        };
        let fold = self.train_fold[task];
        let (logits, rel) = self.model.answer_logits(fold, tokens, gate, &batch)?;
        let ce = candle_nn::loss::cross_entropy(&logits, &batch.targets)?;
        let mut own = (&ce + (rel * cfg.residual_l2)?)?;
        if cfg.greedy > 0.0 {
            let hinge = greedy_hinge(&logits, &batch.targets, cfg.greedy_margin)?;
            own = (own + (hinge * cfg.greedy)?)?;
        }
        if cfg.distill > 0.0 {
            let shown = shown("the distillation term")?;
            // The same answer tokens after the examples: the rows line up one to one.
            ensure!(
                shown.targets.to_vec1::<u32>()? == batch.targets.to_vec1::<u32>()?,
                "the teacher's answer tokens differ from the adapter's"
            );
            let teacher = self.model.llama.answer_logits(&shown, None)?;
            own = (own + (distill_kl(&teacher, &logits)? * cfg.distill)?)?;
        }
        match contrast {
            None => Ok(own),
            Some(other) => {
                let (ce_other, _) = self.model.loss(fold, other, gate, &batch)?;
                let short = ((ce + cfg.contrast_margin)? - ce_other)?.relu()?;
                Ok((own + (short * cfg.contrast)?)?)
            }
        }
    }

    /// Mean answer cross-entropy over the held-out tasks (the first few test examples of
    /// each, through the adapter generated from the first N prompts of a pool); `None`
    /// without held-out tasks. `shift` 0 conditions each task on its own pool; `shift` k on
    /// the pool k tasks further on (cyclically), the condition-shuffle control: if the
    /// generator reads its input, the shifted NLL is higher. The test examples are read
    /// after the examples shown where [`Self::with_shown`] encoded them so.
    pub fn heldout_nll(
        &self,
        decoder: &Decoder,
        gate: &Tensor,
        n: usize,
        shift: usize,
    ) -> Result<Option<f32>> {
        let h = self.heldout.len();
        if h == 0 {
            return Ok(None);
        }
        let mut sum = 0f32;
        for (k, ex) in self.heldout.iter().enumerate() {
            let pool = &self.heldout_pools[(k + shift) % h];
            let cond = pool.narrow(0, 0, n.min(pool.dim(0)?))?;
            let pred = decoder.forward(&cond.unsqueeze(0)?)?;
            let test = match ex.shown.is_empty() {
                true => &ex.test,
                false => &ex.shown,
            };
            let items: Vec<&Encoded> = test.iter().take(HELDOUT_EXAMPLES).collect();
            let (ce, _) = self
                .model
                .loss(None, &pred.get(0)?, gate, &self.model.batch(&items)?)?;
            sum += ce.to_scalar::<f32>()?;
        }
        Ok(Some(sum / h as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distillation term by hand: KL(softmax(t) || softmax(s)) per row, averaged; zero
    /// where the adapter already answers as the teacher does; a gradient of
    /// (softmax(s) - softmax(t)) / rows on the adapter's logits and none on the teacher's.
    #[test]
    fn the_distillation_term_is_the_teachers_kl_divergence_per_answer_token() {
        let dev = Device::Cpu;
        let teacher =
            candle_core::Var::from_vec(vec![2.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], (2, 3), &dev)
                .unwrap();
        let student =
            candle_core::Var::from_vec(vec![2.0f32, 0.0, 0.0, 0.0, 3.0, 0.0], (2, 3), &dev)
                .unwrap();
        let kl = distill_kl(teacher.as_tensor(), student.as_tensor()).unwrap();
        let softmax = |z: [f64; 3]| {
            let e: Vec<f64> = z.iter().map(|x| x.exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|x| x / sum).collect::<Vec<_>>()
        };
        let (p, q) = (softmax([1.0, 1.0, 1.0]), softmax([0.0, 3.0, 0.0]));
        let row2: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        let got = f64::from(kl.to_scalar::<f32>().unwrap());
        assert!(
            (got - row2 / 2.0).abs() < 1e-5,
            "{got} against {}",
            row2 / 2.0
        );
        let grads = kl.backward().unwrap();
        assert!(
            grads.get(&teacher).is_none(),
            "the teacher is a fixed target"
        );
        let g = grads.get(&student).unwrap().to_vec2::<f32>().unwrap();
        for x in &g[0] {
            assert!(
                x.abs() < 1e-6,
                "row 1 already answers as the teacher: {g:?}"
            );
        }
        for k in 0..3 {
            let want = (q[k] - p[k]) / 2.0;
            assert!((f64::from(g[1][k]) - want).abs() < 1e-5, "{g:?}");
        }
    }

    /// The hinge by hand: zero where the target wins by the margin, the shortfall where it
    /// does not, and a gradient only on the target and the best other token of those.
    #[test]
    fn the_greedy_hinge_counts_only_tokens_not_won_by_the_margin() {
        let dev = Device::Cpu;
        #[rustfmt::skip]
        let logits = candle_core::Var::from_vec(
            vec![
                5.0f32, 1.0, 0.0, // target 0 wins by 4: nothing
                1.0, 1.5, 0.0, // target 0 loses to 1.5: 1 + 0.5
                0.0, 2.0, 2.5, // target 1 loses to 2.5: 1 + 0.5
                0.2, 0.0, 0.5, // target 2 wins by 0.3: 1 - 0.3
            ],
            (4, 3),
            &dev,
        )
        .unwrap();
        let targets = Tensor::new(&[0u32, 0, 1, 2], &dev).unwrap();
        let hinge = greedy_hinge(logits.as_tensor(), &targets, 1.0).unwrap();
        let got = hinge.to_scalar::<f32>().unwrap();
        assert!((got - (1.5 + 1.5 + 0.7) / 4.0).abs() < 1e-6, "{got}");
        let grads = hinge.backward().unwrap();
        let g = grads.get(&logits).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g[0], [0.0, 0.0, 0.0]);
        assert_eq!(g[1], [-0.25, 0.25, 0.0]);
        assert_eq!(g[2], [0.0, -0.25, 0.25]);
        assert_eq!(g[3], [0.25, 0.0, -0.25]);
    }
}
