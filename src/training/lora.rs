//! LoRA fine-tuning on CPU: the LoRA weights on the trainer's own llama ([`super::llama`])
//! and the trainer whose checkpoints become the generator's training data (DnD paper,
//! section 5; LoRA: Hu et al. 2021).
//!
//! LoRA: for a target module with frozen weight `W` (out, in), `y = x W^T + s (x A^T) B^T`
//! with `A` (r, in) drawn from U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with
//! a = sqrt(5)), `B` (out, r) zero, and `s = alpha / r`. With `B = 0` the first backward pass
//! gives `A` a zero gradient; it moves once `B` has.
//!
//! Training: the loss is the mean cross-entropy over the answer tokens of a batch of
//! chat-templated examples ([`super::llama::batch`]); AdamW, linear warm-up then cosine
//! decay, global-norm gradient clipping.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::llama::batch::Batch;
use super::llama::Llama;
use super::optim::{
    clip_grad_norm, restore_resume_state, resume_state, AdamW, AdamWParams, WarmupCosine,
};
use crate::format::frozen_a::{frozen_a, initial_a};
use crate::format::peft::{tensor_name, LlamaDims, LoraAdapter, Module, PeftConfig};
use crate::format::rng::Rng;

// ---------------------------------------------------------------------------------------
// LoRA weights

/// Rank, scale and target modules of a LoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub modules: Vec<Module>,
    /// When set, every A matrix is drawn from this seed ([`frozen_a`]) and never trained;
    /// only B learns (LoRA-FA). All runs of a collection then share one A, so their B
    /// matrices live in one basis that a generator can learn and average over; with a
    /// random A per run the A targets are noise no decoder can predict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_a_seed: Option<u64>,
}

impl Default for LoraConfig {
    /// r = 8, alpha = 16 on q_proj and v_proj: the generator's default target.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            modules: vec![Module::Q, Module::V],
            frozen_a_seed: None,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The LoRA matrices (A, B) of every layer and target module. Trained directly they are
/// candle `Var`s ([`Self::init`], [`Self::from_adapter`]); made by a generator inside an
/// autograd graph they are plain tensors ([`Self::from_tensors`]), because a `Var` copy
/// would cut the graph between the LoRA and the generator.
#[derive(Debug)]
pub struct LoraWeights {
    pub config: LoraConfig,
    pairs: BTreeMap<(usize, Module), (Tensor, Tensor)>,
    /// The same matrices as variables, when they are trained directly.
    vars: BTreeMap<(usize, Module), (Var, Var)>,
}

impl LoraWeights {
    /// Fresh LoRA: A ~ U(-1/sqrt(in), 1/sqrt(in)) (from `rng`, or the shared frozen A of
    /// `config.frozen_a_seed`), B = 0.
    pub fn init(
        config: &LoraConfig,
        dims: &LlamaDims,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        ensure!(config.rank >= 1, "LoRA rank must be at least 1");
        ensure!(
            !config.modules.is_empty(),
            "LoRA needs at least one target module"
        );
        let mut modules = config.modules.clone();
        modules.sort();
        modules.dedup();
        let a_init = match config.frozen_a_seed {
            Some(seed) => frozen_a(dims, config.rank, &modules, seed, device)?,
            None => initial_a(dims, config.rank, &modules, rng, device)?,
        };
        let mut vars = BTreeMap::new();
        for ((layer, m), a) in a_init {
            let (_, out) = m.dims(dims);
            let a = Var::from_tensor(&a)?;
            let b = Var::zeros((out, config.rank), DType::F32, device)?;
            vars.insert((layer, m), (a, b));
        }
        Ok(Self::from_vars(
            LoraConfig {
                modules,
                ..config.clone()
            },
            vars,
        ))
    }

    /// Trainable copies of an adapter's matrices.
    pub fn from_adapter(adapter: &LoraAdapter, dims: &LlamaDims, device: &Device) -> Result<Self> {
        adapter.validate(dims)?;
        let modules = adapter.config.modules()?;
        let mut vars = BTreeMap::new();
        for layer in 0..dims.num_hidden_layers {
            for &m in &modules {
                let (a, b) = adapter.pair(layer, m)?;
                vars.insert(
                    (layer, m),
                    (
                        Var::from_tensor(&a.to_device(device)?.copy()?)?,
                        Var::from_tensor(&b.to_device(device)?.copy()?)?,
                    ),
                );
            }
        }
        Ok(Self::from_vars(
            LoraConfig {
                rank: adapter.config.r,
                alpha: adapter.config.lora_alpha,
                modules,
                frozen_a_seed: None,
            },
            vars,
        ))
    }

    fn from_vars(config: LoraConfig, vars: BTreeMap<(usize, Module), (Var, Var)>) -> Self {
        let pairs = vars
            .iter()
            .map(|(&k, (a, b))| (k, (a.as_tensor().clone(), b.as_tensor().clone())))
            .collect();
        Self {
            config,
            pairs,
            vars,
        }
    }

    /// Matrices computed by a graph (A (r, in), B (out, r) per layer and module of
    /// `config`), used as they are: gradients flow through them into whatever made them.
    /// A is detached when `config` freezes it.
    pub fn from_tensors(
        config: LoraConfig,
        pairs: BTreeMap<(usize, Module), (Tensor, Tensor)>,
    ) -> Self {
        Self {
            config,
            pairs,
            vars: BTreeMap::new(),
        }
    }

    pub fn pair(&self, layer: usize, m: Module) -> Option<(&Tensor, &Tensor)> {
        self.pairs.get(&(layer, m)).map(|(a, b)| (a, b))
    }

    /// Every trainable variable: per layer and module, A then B (only B when A is frozen);
    /// none for [`Self::from_tensors`].
    pub fn vars(&self) -> Vec<Var> {
        self.trainable().into_iter().map(|(_, v)| v).collect()
    }

    /// [`Self::vars`] with their PEFT tensor names.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let frozen = self.a_frozen();
        self.vars
            .iter()
            .flat_map(|(&(l, m), (a, b))| {
                [
                    (!frozen).then(|| (tensor_name(l, m, false), a.clone())),
                    Some((tensor_name(l, m, true), b.clone())),
                ]
            })
            .flatten()
            .collect()
    }

    pub fn a_frozen(&self) -> bool {
        self.config.frozen_a_seed.is_some()
    }

    /// `(PEFT tensor name, variable)` for every matrix (none for [`Self::from_tensors`]).
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        self.vars
            .iter()
            .flat_map(|(&(l, m), (a, b))| {
                [(tensor_name(l, m, false), a), (tensor_name(l, m, true), b)]
            })
            .collect()
    }

    /// A snapshot as a PEFT adapter (deep copies on the CPU: the optimiser updates the
    /// variables in place).
    pub fn to_adapter(&self, base_name: &str) -> Result<LoraAdapter> {
        let mut tensors = BTreeMap::new();
        for (&(l, m), (a, b)) in &self.pairs {
            for (is_b, t) in [(false, a), (true, b)] {
                tensors.insert(tensor_name(l, m, is_b), t.to_device(&Device::Cpu)?.copy()?);
            }
        }
        Ok(LoraAdapter {
            config: PeftConfig::new(
                self.config.rank,
                self.config.alpha,
                &self.config.modules,
                base_name,
            ),
            tensors,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Trainer

/// Optimisation settings of one LoRA run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate, reached after `warmup_steps` of linear warm-up.
    pub lr: f64,
    pub warmup_steps: usize,
    /// Cosine decay from `lr` to `lr * min_lr_ratio` at the last step.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            steps: 80,
            batch_size: 4,
            lr: 1e-3,
            warmup_steps: 5,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Warm-up, then cosine decay to `lr * min_lr_ratio`, reached at the last step.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            peak: self.lr,
            warmup: self.warmup_steps,
            end: self.steps.saturating_sub(1),
            floor: self.min_lr_ratio,
        }
    }

    /// Learning rate of optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.schedule().lr_at(step)
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub lr: f64,
}

/// LoRA training on a frozen base model: AdamW, warm-up + cosine schedule, global-norm
/// gradient clipping.
pub struct Trainer<'a> {
    pub base: &'a Llama,
    pub lora: LoraWeights,
    pub config: TrainConfig,
    opt: AdamW,
    vars: Vec<Var>,
    step: usize,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .finish()
    }
}

impl<'a> Trainer<'a> {
    /// A fresh LoRA initialised from `config.seed`.
    pub fn new(base: &'a Llama, config: TrainConfig) -> Result<Self> {
        let mut rng = Rng::derive(config.seed, "lora-init");
        let lora = LoraWeights::init(&config.lora, &base.dims, &mut rng, base.device())?;
        Self::with_lora(base, lora, config)
    }

    pub fn with_lora(base: &'a Llama, lora: LoraWeights, config: TrainConfig) -> Result<Self> {
        let vars = lora.vars();
        let opt = AdamW::new(
            vars.clone(),
            AdamWParams::with_weight_decay(config.weight_decay),
        )?;
        Ok(Self {
            base,
            lora,
            config,
            opt,
            vars,
            step: 0,
        })
    }

    /// Optimiser steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The weights and AdamW moments that [`Self::restore`] continues from exactly.
    pub fn resume_state(&self) -> BTreeMap<String, Tensor> {
        // `trainable` names the variables in `vars`' order, the optimiser's.
        resume_state(&self.lora.trainable(), &self.opt)
    }

    /// Continues a run from its [`Self::resume_state`] after `steps_done` steps.
    pub fn restore(
        &mut self,
        state: std::collections::HashMap<String, Tensor>,
        steps_done: usize,
    ) -> Result<()> {
        restore_resume_state(&self.lora.trainable(), &mut self.opt, state, steps_done)?;
        self.step = steps_done;
        Ok(())
    }

    /// Gradients of the batch loss with respect to every LoRA variable (no update).
    pub fn gradients(&self, batch: &Batch) -> Result<(f32, candle_core::backprop::GradStore)> {
        let loss = self.base.loss(batch, Some(&self.lora))?;
        let grads = loss.backward()?;
        Ok((loss.to_scalar::<f32>()?, grads))
    }

    /// One optimiser step on a batch.
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let (loss, mut grads) = self.gradients(batch)?;
        ensure!(loss.is_finite(), "loss is not finite at step {}", self.step);
        let grad_norm = clip_grad_norm(&mut grads, &self.vars, self.config.grad_clip)?;
        let lr = self.config.lr_at(self.step);
        self.opt.step(&grads, lr)?;
        self.step += 1;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model_dir;
    use crate::training::llama::chat::Encoded;
    use crate::training::llama::ops::frozen_linear;
    use crate::training::llama::tests::{batch, load_tiny};
    use candle_core::Tensor;
    use candle_transformers::models::llama::LlamaConfig;
    use std::path::Path;

    #[test]
    fn every_lora_matrix_gets_a_gradient() {
        let dir = tiny_model_dir();
        let (base, tok) = load_tiny(dir.path());
        let cfg = TrainConfig {
            lora: LoraConfig {
                rank: 4,
                alpha: 8.0,
                modules: Module::ALL.to_vec(),
                frozen_a_seed: None,
            },
            lr: 1e-2,
            warmup_steps: 0,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(&base, cfg).unwrap();
        let b = batch(&tok, &Device::Cpu);
        let norm = |g: Option<&Tensor>| -> f32 {
            g.map_or(0.0, |g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
        };
        // With B = 0, only B has a gradient: A's gradient is scale * B^T (...) = 0.
        let (_, grads) = trainer.gradients(&b).unwrap();
        for (name, v) in trainer.lora.named_vars() {
            let n = norm(grads.get(v.as_tensor()));
            if name.ends_with("lora_B.weight") {
                assert!(n > 0.0, "{name} has no gradient");
            } else {
                assert_eq!(n, 0.0, "{name}: B = 0 gives A a zero gradient");
            }
        }
        // After one step B is non-zero and every matrix of every layer gets a gradient.
        trainer.step(&b).unwrap();
        let (_, grads) = trainer.gradients(&b).unwrap();
        let named = trainer.lora.named_vars();
        assert_eq!(named.len(), 2 * 7 * base.dims.num_hidden_layers);
        for (name, v) in named {
            assert!(
                norm(grads.get(v.as_tensor())) > 0.0,
                "{name} has no gradient"
            );
        }
    }

    #[test]
    fn two_steps_lower_the_loss_and_clipping_bounds_the_norm() {
        let dir = tiny_model_dir();
        let (base, tok) = load_tiny(dir.path());
        let cfg = TrainConfig {
            lr: 1e-2,
            warmup_steps: 0,
            steps: 2,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(&base, cfg).unwrap();
        let b = batch(&tok, &Device::Cpu);
        let before = base
            .loss(&b, Some(&trainer.lora))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let s1 = trainer.step(&b).unwrap();
        assert_eq!(s1.loss, before);
        trainer.step(&b).unwrap();
        let after = base
            .loss(&b, Some(&trainer.lora))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(after < before - 1e-3, "loss {before} -> {after}");

        let (_, mut grads) = trainer.gradients(&b).unwrap();
        let vars = trainer.lora.vars();
        let raw = clip_grad_norm(&mut grads, &vars, 0.0).unwrap();
        assert!(raw > 0.0);
        clip_grad_norm(&mut grads, &vars, f64::from(raw) / 4.0).unwrap();
        let clipped = clip_grad_norm(&mut grads, &vars, 0.0).unwrap();
        assert!(
            (clipped - raw / 4.0).abs() < 1e-3 * raw,
            "{raw} -> {clipped}"
        );
    }

    #[test]
    fn schedule_warms_up_and_decays_to_the_floor() {
        let c = TrainConfig {
            steps: 20,
            warmup_steps: 4,
            lr: 1.0,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((c.lr_at(0) - 0.25).abs() < 1e-9);
        assert!((c.lr_at(3) - 1.0).abs() < 1e-9);
        assert!((c.lr_at(4) - 1.0).abs() < 1e-9);
        assert!((c.lr_at(19) - 0.1).abs() < 1e-9);
        assert!((4..19).all(|s| c.lr_at(s) >= c.lr_at(s + 1)));
    }

    #[test]
    fn adapter_export_round_trips() {
        let dir = tiny_model_dir();
        let (base, _) = load_tiny(dir.path());
        let lora = LoraWeights::init(
            &LoraConfig::default(),
            &base.dims,
            &mut Rng::new(1),
            &Device::Cpu,
        )
        .unwrap();
        let adapter = lora.to_adapter("tiny").unwrap();
        adapter.validate(&base.dims).unwrap();
        assert_eq!(adapter.config.target_modules, vec!["q_proj", "v_proj"]);
        let back = LoraWeights::from_adapter(&adapter, &base.dims, &Device::Cpu).unwrap();
        assert_eq!(
            back.to_adapter("tiny").unwrap().content_hash().unwrap(),
            adapter.content_hash().unwrap()
        );
    }

    /// converted model is in `assets/smollm2`): `cargo test --lib bench_smollm2 -- --ignored
    /// --nocapture`. Timing does not depend on the weights' values.
    #[test]
    #[ignore]
    fn bench_smollm2_step() {
        use std::time::Instant;
        let dev = Device::Cpu;
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2");
        let base = if real.join("model.safetensors").exists() {
            Llama::load(&real, &dev).unwrap()
        } else {
            let text = r#"{"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152,
                "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
                "tie_word_embeddings": true}"#;
            let config: LlamaConfig = serde_json::from_str(text).unwrap();
            let dims: LlamaDims = serde_json::from_str(text).unwrap();
            let mut t = std::collections::HashMap::new();
            let r = |s: &[usize]| Tensor::randn(0f32, 0.02, s, &dev).unwrap();
            t.insert("model.embed_tokens.weight".to_string(), r(&[49152, 576]));
            t.insert(
                "model.norm.weight".to_string(),
                Tensor::ones(576, DType::F32, &dev).unwrap(),
            );
            for l in 0..30 {
                for m in Module::ALL {
                    let (i, o) = m.dims(&dims);
                    t.insert(
                        format!("model.layers.{l}.{}.{}.weight", m.block(), m.name()),
                        r(&[o, i]),
                    );
                }
                for n in ["input_layernorm", "post_attention_layernorm"] {
                    t.insert(
                        format!("model.layers.{l}.{n}.weight"),
                        Tensor::ones(576, DType::F32, &dev).unwrap(),
                    );
                }
            }
            Llama::from_tensors(config, dims, t, "random", &dev).unwrap()
        };
        let seq: usize = std::env::var("DND_BENCH_SEQ")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(52);
        let batches = std::env::var("DND_BENCH_BATCH").unwrap_or_else(|_| "4,8".into());
        let mut trainer = Trainer::new(&base, TrainConfig::default()).unwrap();
        let mut rng = Rng::new(1);
        let mut bs = 0;
        for b_str in batches.split(',') {
            bs = b_str.parse().unwrap();
            // Templated examples share their first ~30 tokens (system prompt, markers).
            let shared: Vec<u32> = (0..30).map(|_| rng.below(49152) as u32).collect();
            let items: Vec<Encoded> = (0..bs)
                .map(|_| Encoded {
                    ids: shared
                        .iter()
                        .copied()
                        .chain((30..seq).map(|_| rng.below(49152) as u32))
                        .collect(),
                    prompt_len: seq - 3,
                })
                .collect();
            let refs: Vec<&Encoded> = items.iter().collect();
            let b = Batch::new(&refs, 0, &dev).unwrap();
            trainer.step(&b).unwrap();
            let n = 3;
            let t0 = Instant::now();
            for _ in 0..n {
                base.loss(&b, Some(&trainer.lora)).unwrap();
            }
            let fwd = t0.elapsed().as_secs_f64() / n as f64;
            let t0 = Instant::now();
            for _ in 0..n {
                trainer.step(&b).unwrap();
            }
            let step = t0.elapsed().as_secs_f64() / n as f64;
            let full = Batch::build(&refs, 0, &dev, false).unwrap();
            let t0 = Instant::now();
            for _ in 0..n {
                trainer.step(&full).unwrap();
            }
            let unshared = t0.elapsed().as_secs_f64() / n as f64;
            println!(
                "batch {bs} x {seq} tokens (30 shared): forward {fwd:.2} s, step (forward+backward+AdamW) {step:.2} s; without prefix sharing {unshared:.2} s"
            );
        }
        // One frozen linear's backward: custom op vs matmul (which also computes dW).
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (bs * seq, 576), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 0.02, (1536, 576), &dev).unwrap();
        let time = |f: &dyn Fn() -> Tensor| {
            let t0 = Instant::now();
            for _ in 0..5 {
                f().sum_all().unwrap().backward().unwrap();
            }
            t0.elapsed().as_secs_f64() / 5.0
        };
        let ours = time(&|| frozen_linear(x.as_tensor(), &w).unwrap());
        let plain = time(&|| x.as_tensor().matmul(&w.t().unwrap()).unwrap());
        println!(
            "up_proj fwd+bwd at {bs} x {seq} tokens: frozen op {:.1} ms, matmul {:.1} ms",
            ours * 1e3,
            plain * 1e3
        );
    }
}
