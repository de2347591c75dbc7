//! Hyper-convolutional decoder: prompt embeddings (N, L, 384) -> weight tokens
//! (T, r + 2, C + 2) (DnD method, section 3).
//!
//! Activations are (B, N, H, W): batch, then N (prompts at the input, weight tokens at the
//! output), H (text positions, then token rows) and W (embedding width, then token
//! columns). The decoder is a list of shapes s0 -> s1 -> ... -> sk, one [`HyperConvLayer`]
//! per step, every convolution k x k with "same" padding (k odd). A layer from (N, H, W) to
//! (N', H', W'):
//! 1. LayerNorm over the (H, W) plane jointly, affine (H, W) weight and bias, eps 1e-5,
//!    written with differentiable ops (candle's fused `layer_norm` drops gradients);
//! 2. path a: conv W -> W' (W as channels) over the (H, N) plane, then H -> H' over the
//!    (N, W') plane;
//! 3. path b: conv H -> H' over the (N, W) plane, then W -> W' over the (H', N) plane, tanh;
//! 4. y = (a + b + bias) / 3 with a learned (H', W') bias, init U(-1/(H'W'), 1/(H'W'));
//!    the four convolutions above have no bias;
//! 5. conv N -> N' over the (H', W') plane, with bias;
//! 6. a residual add only when (N, H, W) = (N', H', W').
//!
//! The axis swaps are permutes around a k x k convolution ([`conv_same`]: equal to
//! [`Tensor::conv2d`], computed as im2col + matmul because candle's CPU conv2d backward is
//! too slow to train on); kernels keep PyTorch's (out, in, kh, kw) layout and the
//! reference's plane orientation. Other initialisations follow PyTorch: LayerNorm 1 / 0,
//! convolutions U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
//!
//! A trained decoder is a folder with `decoder.json` ([`DecoderConfig`]: the shapes, k and
//! everything the decoder was built for: base model dims, rank, alpha, target modules, C,
//! N, L, encoder) and `decoder.safetensors` (the [`VarMap`]).
//!
//! [`DecoderConfig::smollm2_default`] is the project's default for SmolLM2-135M, sized to
//! train on a 2-core CPU:
//! - q_proj and v_proj, r = 8, alpha = 16, C = 192, with the shared frozen A of seed 0
//!   (LoRA-FA; see [`crate::format::frozen_a`]): the decoder outputs the B
//!   matrices only, 4 tokens per layer, T = 120 weight tokens of (10, 194) carrying 184,320
//!   LoRA weights;
//! - N = 16 prompts of L = 32 tokens, k = 3;
//! - shapes (16, 32, 384) -> (32, 16, 32) -> (32, 10, 64) -> (120, 10, 194);
//! - 573,972 parameters and 0.58 GFLOP per adapter (forward, 579,230,208 FLOPs; see
//!   [`DecoderConfig::param_count`] and [`DecoderConfig::flops`], printed by
//!   `mistralrs-dnd bench generator`).
//!
//! **Input standardisation** (`input_norm` in `decoder.json`, `train --input-norm`): the
//! input, before any layer, centred and scaled cell by cell, `(x - centre) / scale` with
//! (L, 384) statistics of the training tasks' encoded pools ([`Decoder::set_input_norm`],
//! stored in the weights file as `input.centre` and `input.scale`, never trained). Why: the
//! first LayerNorm centres each prompt's plane on its own mean only, so the encoder's
//! states, much the same for every task (MiniLM's large constant features, `[CLS]`,
//! padding), dominate the plane, and what tells two tasks apart (a rule's value) reaches
//! the layers as a small part of it.
//!
//! A **mixture head** ([`MixHead`], `train --mix K`) replaces the hyper-convolutions: the
//! mean of the input over prompts and positions, LayerNorm (affine), a tanh MLP to K
//! weights, and the token stack as those weights times K learned directions, (B, K) x (K,
//! T (r+2) (C+2)). Why: the convolutions treat the encoder's 384 dimensions as a spatial
//! axis; the head maps a task's embedding to a point in a learned span of adapters
//! (Text-to-LoRA's head reads an embedding the same way), so what it can say about a new
//! task is a combination of what it learnt for the others. Its shapes are the input and
//! the token stack only. Measured behind the hyper-convolutions on held-out tasks (README,
//! "A mixture head"): kept as an option, not the default.
//!
//! A **neighbour head** (`MixHead::neighbours`, `train --neighbours`) is a mixture head
//! with one direction per training task and no MLP, plus a shared direction every input
//! gets whole: the weights are a softmax over the cosine similarity of the input's
//! standardised mean to each task's key (the same mean of that task's encoded pool, minus a
//! learned centre), times a learned scale. Training masks the sample's own task out of the
//! softmax ([`Decoder::forward_excluding`]), so every task's direction is trained only by
//! what it does for the *other* tasks whose examples read like its own: leave-one-out, the
//! situation of a held-out task, instead of a per-task adapter that the task's own key
//! would select (why the convolutions and the mixture head learn the training tasks, not a
//! map between them). The shared direction takes what helps every task (what a shuffled
//! task's examples would give too), so that the directions hold only what depends on the
//! input. Measured inside the hyper-convolutions' spread over seeds on held-out tasks
//! (README, "A neighbour head"): kept as an option, not the default.
//!
//! An **attention head** ([`AttendHead`], `train --attend K`, [`super::attend`]) replaces
//! them too: r learned queries pool the input's token states, a linear map through K
//! dimensions makes the matrices, which are then tokenised. Its shapes are the input and the
//! token stack only.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::attend::{attend_flops, attend_params, AttendLayer};
use super::conv::conv_same;
use super::tokenizer::{smollm2_135m_dims, TokenLayout};
use crate::format::peft::{LlamaDims, Module};

pub const CONFIG_FILE: &str = "decoder.json";
pub const WEIGHTS_FILE: &str = "decoder.safetensors";
/// The prompt encoder every generator of this project is built for.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Hidden width of MiniLM-L6: W at the decoder input.
pub const MINILM_HIDDEN: usize = 384;
const LN_EPS: f64 = 1e-5;

/// `decoder.json`: the decoder's shapes and what it was built for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Name of the frozen prompt encoder.
    pub encoder: String,
    /// Hidden width of the encoder (W of the first shape).
    pub encoder_hidden: usize,
    /// Name of the base model, written into the adapters' `base_model_name_or_path`.
    pub base_model: String,
    /// Shape facts of the base model the adapters are for.
    pub base: LlamaDims,
    pub rank: usize,
    pub lora_alpha: f64,
    /// PEFT module names, e.g. `["q_proj", "v_proj"]`.
    pub target_modules: Vec<String>,
    /// Chunk width C of the checkpoint tokenizer.
    pub chunk: usize,
    /// N: prompts per adapter.
    pub prompts: usize,
    /// L: tokens per prompt (padded or truncated); 1: each prompt's sentence vector (pooled).
    pub prompt_tokens: usize,
    /// Activation shapes (N, H, W), input first, weight tokens last.
    pub shapes: Vec<[usize; 3]>,
    /// Kernel size k (odd).
    pub kernel: usize,
    /// Set when the adapters' A matrices are the shared frozen ones of a LoRA-FA
    /// collection ([`crate::format::frozen_a`]): the decoder outputs the B matrices only
    /// and the generator adds this A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_a_seed: Option<u64>,
    /// Set when the decoded matrices are a residual on a base adapter, with a gate per
    /// matrix ([`crate::generator::residual`], `residual.safetensors` in the folder).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub residual: bool,
    /// What the encoder reads of a task (absent: its prompts, as the method does).
    #[serde(default, skip_serializing_if = "Condition::is_prompts")]
    pub condition: Condition,
    /// Set for a mixture head instead of the hyper-convolutions (see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<MixHead>,
    /// Set when the decoder standardises its input cell by cell with fixed statistics of
    /// its training tasks (see the module doc).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub input_norm: bool,
    /// Set for an attention head instead of the hyper-convolutions (see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attend: Option<AttendHead>,
}

/// The mixture head's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixHead {
    /// K: learned directions (adapters' token stacks) the head mixes.
    pub directions: usize,
    /// Width of the MLP's hidden layer (0 for a neighbour head).
    pub hidden: usize,
    /// A neighbour head: one direction per training task, weighted by the input's
    /// similarity to each task's key (see the module doc).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub neighbours: bool,
}

impl MixHead {
    /// The hidden width `train --mix K` uses.
    pub const HIDDEN: usize = 256;
}

/// The attention head's size ([`super::attend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttendHead {
    /// k: the width of the linear map's bottleneck, states (E) -> k -> weights.
    pub width: usize,
}

/// What a generator reads of a task: its prompts (the method's: unlabelled requests), or
/// labelled examples, each read as its prompt and answer in one text. Answers say what
/// prompts cannot (the format a task wants, which of two readings it means); the base
/// model sees the prompt of every request anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    #[default]
    Prompts,
    Examples,
}

impl Condition {
    fn is_prompts(&self) -> bool {
        *self == Self::Prompts
    }

    /// The text the encoder reads for one example of a task.
    pub fn text(self, prompt: &str, answer: &str) -> String {
        match self {
            Self::Prompts => prompt.to_string(),
            Self::Examples => format!("{prompt}\nAnswer: {answer}"),
        }
    }
}

impl DecoderConfig {
    /// A decoder for any llama-family model: input (n, l, 384), then `hidden` shapes, then
    /// the token stack of the layout given by (dims, rank, modules, chunk).
    #[allow(clippy::too_many_arguments)]
    pub fn for_model(
        base_model: &str,
        dims: &LlamaDims,
        rank: usize,
        lora_alpha: f64,
        modules: &[Module],
        chunk: usize,
        n: usize,
        l: usize,
        hidden: &[[usize; 3]],
        kernel: usize,
    ) -> Result<Self> {
        let layout = TokenLayout::new(dims, rank, modules, chunk)?;
        let (t, h, w) = layout.shape();
        let mut shapes = vec![[n, l, MINILM_HIDDEN]];
        shapes.extend_from_slice(hidden);
        shapes.push([t, h, w]);
        let cfg = Self {
            encoder: MINILM.to_string(),
            encoder_hidden: MINILM_HIDDEN,
            base_model: base_model.to_string(),
            base: dims.clone(),
            rank,
            lora_alpha,
            target_modules: layout
                .modules
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            chunk,
            prompts: n,
            prompt_tokens: l,
            shapes,
            kernel,
            frozen_a_seed: None,
            residual: false,
            condition: Condition::Prompts,
            mix: None,
            input_norm: false,
            attend: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The same decoder for adapters whose A is frozen from `seed` (B tokens only), or for
    /// full adapters (`None`): the output shape follows the layout.
    pub fn with_frozen_a(mut self, seed: Option<u64>) -> Result<Self> {
        self.frozen_a_seed = seed;
        let (t, h, w) = self.layout()?.shape();
        *self.shapes.last_mut().expect("validated") = [t, h, w];
        self.validate()?;
        Ok(self)
    }

    /// The same decoder reading another encoder, of width `hidden` (the input shape's W).
    pub fn with_encoder(mut self, name: &str, hidden: usize) -> Result<Self> {
        self.encoder = name.to_string();
        self.encoder_hidden = hidden;
        self.shapes[0][2] = hidden;
        self.validate()?;
        Ok(self)
    }

    /// The same input and token stack through a mixture head of `directions` directions
    /// (the hidden shapes dropped).
    pub fn with_mix(self, directions: usize) -> Result<Self> {
        self.with_head(MixHead {
            directions,
            hidden: MixHead::HIDDEN,
            neighbours: false,
        })
    }

    /// The same input and token stack through a neighbour head over `tasks` training tasks
    /// (the hidden shapes dropped; see the module doc).
    pub fn with_neighbours(self, tasks: usize) -> Result<Self> {
        self.with_head(MixHead {
            directions: tasks,
            hidden: 0,
            neighbours: true,
        })
    }

    /// Whether the head is a neighbour head (see the module doc).
    pub fn is_neighbour_head(&self) -> bool {
        self.mix.is_some_and(|m| m.neighbours)
    }

    /// The same input and token stack through an attention head of bottleneck width
    /// `width` (the hidden shapes dropped; [`super::attend`]).
    pub fn with_attend(mut self, width: usize) -> Result<Self> {
        self.attend = Some(AttendHead { width });
        self.input_and_tokens_only()
    }

    fn with_head(mut self, head: MixHead) -> Result<Self> {
        self.mix = Some(head);
        self.input_and_tokens_only()
    }

    /// The hidden shapes dropped, as a head that maps the input to the tokens directly has.
    fn input_and_tokens_only(mut self) -> Result<Self> {
        let last = *self.shapes.last().expect("validated");
        self.shapes = vec![self.shapes[0], last];
        self.validate()?;
        Ok(self)
    }

    /// [`DecoderConfig::for_model`] with the project's default hidden shapes and k = 3:
    /// (N, L, 384) -> (2N, max(L/2, r+2), 32) -> (2N, r+2, 64) -> (T, r+2, C+2). The first
    /// layer shrinks the wide encoder axis at once (its W -> W' convolutions dominate the
    /// cost), the last one spreads 2N channels over the T weight tokens.
    #[allow(clippy::too_many_arguments)]
    pub fn for_model_default_shapes(
        base_model: &str,
        dims: &LlamaDims,
        rank: usize,
        lora_alpha: f64,
        modules: &[Module],
        chunk: usize,
        n: usize,
        l: usize,
    ) -> Result<Self> {
        let h = rank + 2;
        let hidden = [[2 * n, (l / 2).max(h), 32], [2 * n, h, 64]];
        Self::for_model(
            base_model, dims, rank, lora_alpha, modules, chunk, n, l, &hidden, 3,
        )
    }

    /// The default generator for SmolLM2-135M-Instruct (see the module doc for its size).
    pub fn smollm2_default() -> Self {
        Self::for_model_default_shapes(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            &smollm2_135m_dims(),
            8,
            16.0,
            &[Module::Q, Module::V],
            192,
            16,
            32,
        )
        .and_then(|c| c.with_frozen_a(Some(0)))
        .expect("the default decoder config is valid")
    }

    /// Target modules as [`Module`]s in checkpoint order.
    pub fn modules(&self) -> Result<Vec<Module>> {
        let mut out = Vec::new();
        for name in &self.target_modules {
            match Module::from_name(name) {
                Some(m) => out.push(m),
                None => bail!("decoder config: unknown target module {name:?}"),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The frozen A matrices its adapters are completed with (a B-only decoder's), by
    /// layer and module; `None` without a frozen-A seed.
    pub fn frozen_a(&self) -> Result<Option<BTreeMap<(usize, Module), Tensor>>> {
        self.frozen_a_seed
            .map(|seed| {
                crate::format::frozen_a::frozen_a(
                    &self.base,
                    self.rank,
                    &self.modules()?,
                    seed,
                    &Device::Cpu,
                )
            })
            .transpose()
    }

    /// The checkpoint token layout the decoder's output follows.
    pub fn layout(&self) -> Result<TokenLayout> {
        match self.frozen_a_seed {
            Some(_) => TokenLayout::b_only(&self.base, self.rank, &self.modules()?, self.chunk),
            None => TokenLayout::new(&self.base, self.rank, &self.modules()?, self.chunk),
        }
    }

    /// Checks that the shapes chain from the encoder output to the token stack.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.kernel % 2 == 1,
            "decoder kernel size must be odd for \"same\" padding, got {}",
            self.kernel
        );
        ensure!(self.shapes.len() >= 2, "decoder needs at least two shapes");
        ensure!(
            self.shapes.iter().all(|s| s.iter().all(|&d| d >= 1)),
            "decoder shapes must be positive: {:?}",
            self.shapes
        );
        ensure!(
            self.prompts >= 1 && self.prompt_tokens >= 1 && self.prompt_tokens <= 512,
            "N must be >= 1 and L in 1..=512 (MiniLM has 512 positions; 1: pooled), got N={} L={}",
            self.prompts,
            self.prompt_tokens
        );
        let input = [self.prompts, self.prompt_tokens, self.encoder_hidden];
        ensure!(
            self.shapes[0] == input,
            "first decoder shape {:?} must be (N, L, encoder hidden) = {:?}",
            self.shapes[0],
            input
        );
        let (t, h, w) = self.layout()?.shape();
        let last = *self.shapes.last().unwrap();
        ensure!(
            last == [t, h, w],
            "last decoder shape {last:?} must be the token stack (T, r + 2, C + 2) = {:?}",
            [t, h, w]
        );
        ensure!(self.lora_alpha > 0.0, "lora_alpha must be positive");
        if let Some(m) = self.mix {
            ensure!(
                m.directions >= 1 && (m.hidden >= 1) != m.neighbours && self.shapes.len() == 2,
                "a mixture head needs K >= 1, a hidden width >= 1 (0 for a neighbour head) and \
                 shapes (input, tokens) only"
            );
        }
        if let Some(a) = self.attend {
            ensure!(
                a.width >= 1 && self.shapes.len() == 2 && self.mix.is_none(),
                "an attention head needs a width >= 1, shapes (input, tokens) only and no \
                 mixture head"
            );
            // Standardised cell by cell, padding rows would no longer read as padding.
            ensure!(
                !self.input_norm,
                "an attention head reads its input as it is (no input standardisation)"
            );
        }
        Ok(())
    }

    /// Every parameter: its name in the [`VarMap`] and its spec, in one order.
    fn params(&self) -> Vec<(String, ParamSpec)> {
        if let Some(a) = self.attend {
            let len = self.layout().expect("validated").columns();
            return attend_params(self.rank, self.encoder_hidden, a.width, len)
                .into_iter()
                .map(|p| (format!("{ATTEND_PREFIX}.{}", p.name), p))
                .collect();
        }
        match self.mix {
            Some(m) => {
                let [t, h, w] = self.shapes[1];
                mix_params(self.encoder_hidden, m, t * h * w)
                    .into_iter()
                    .map(|p| (format!("{MIX_PREFIX}.{}", p.name), p))
                    .collect()
            }
            None => self
                .shapes
                .windows(2)
                .enumerate()
                .flat_map(|(i, p)| {
                    layer_params(p[0], p[1], self.kernel)
                        .into_iter()
                        .map(move |p| (format!("{}.{}", layer_prefix(i), p.name), p))
                })
                .collect(),
        }
    }

    /// The input standardisation's statistics ([`DecoderConfig::input_norm`]): in the
    /// [`VarMap`] beside the parameters, set from the training tasks
    /// ([`Decoder::set_input_norm`]) and never trained.
    fn statistics(&self) -> Vec<(String, ParamSpec)> {
        if !self.input_norm {
            return Vec::new();
        }
        let [_, l, e] = self.shapes[0];
        [("centre", 0.0), ("scale", 1.0)]
            .into_iter()
            .map(|(name, v)| {
                let spec = ParamSpec {
                    name,
                    shape: vec![l, e],
                    init: Init::Const(v),
                };
                (format!("{INPUT_PREFIX}.{name}"), spec)
            })
            .collect()
    }

    /// Whether the [`VarMap`] entry `name` is a statistic, set once and not trained.
    pub fn is_statistic(name: &str) -> bool {
        name.strip_prefix(INPUT_PREFIX)
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The [`VarMap`] names of the parameters that make the output last: the last
    /// convolution over the token axis (weight and bias), the mixture head's last linear
    /// layer, or the attention head's V. Set to zero, they make the output zero whatever the
    /// input (an attention head's: the tokens of zero matrices); refused when the
    /// last layer keeps its shape, since it then adds its input to what it computes.
    pub fn output_params(&self) -> Result<Vec<String>> {
        if self.attend.is_some() {
            return Ok(vec![format!("{ATTEND_PREFIX}.v")]);
        }
        match self.mix {
            Some(m) if m.neighbours => {
                return Ok(["directions", "shared"]
                    .iter()
                    .map(|n| format!("{MIX_PREFIX}.{n}"))
                    .collect())
            }
            Some(_) => {
                return Ok(vec![
                    format!("{MIX_PREFIX}.out.weight"),
                    format!("{MIX_PREFIX}.out.bias"),
                ])
            }
            None => {}
        }
        let last = self.shapes.len() - 2;
        ensure!(
            self.shapes[last] != self.shapes[last + 1],
            "the decoder's last layer keeps its shape (a residual add): zeroing it would not zero its output"
        );
        Ok(["nconv.weight", "nconv.bias"]
            .iter()
            .map(|n| format!("{}.{n}", layer_prefix(last)))
            .collect())
    }

    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        self.params()
            .iter()
            .map(|(_, p)| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Multiply-add FLOPs (2 per MAC) of one forward pass for one adapter: the five
    /// convolutions of each layer, or the mixture head's three matrix products (norm, tanh,
    /// means and adds are negligible).
    pub fn flops(&self) -> u64 {
        if let Some(a) = self.attend {
            let [n, l, e] = self.shapes[0];
            let len = self.layout().expect("validated").columns();
            return attend_flops(self.rank, n * l, e, a.width, len);
        }
        if let Some(m) = self.mix {
            let [t, h, w] = self.shapes[1];
            let (k, hid, e) = (
                m.directions as u64,
                m.hidden as u64,
                self.encoder_hidden as u64,
            );
            let weights = match m.neighbours {
                true => e * k,
                false => e * hid + hid * k,
            };
            return 2 * (weights + k * (t * h * w) as u64);
        }
        let k2 = (self.kernel * self.kernel) as u64;
        self.shapes
            .windows(2)
            .map(|p| {
                let [n, h, w] = p[0].map(|v| v as u64);
                let [n2, h2, w2] = p[1].map(|v| v as u64);
                let conv1w = w * w2 * h * n;
                let conv1h = h * h2 * n * w2;
                let conv2h = h * h2 * n * w;
                let conv2w = w * w2 * h2 * n;
                let nconv = n * n2 * h2 * w2;
                2 * k2 * (conv1w + conv1h + conv2h + conv2w + nconv)
            })
            .sum()
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading decoder config {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("parsing decoder config {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid decoder config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks that adapters from this decoder fit a base model.
    pub fn check_base(&self, dims: &LlamaDims) -> Result<()> {
        let b = &self.base;
        if b.hidden_size != dims.hidden_size
            || b.intermediate_size != dims.intermediate_size
            || b.num_attention_heads != dims.num_attention_heads
            || b.num_key_value_heads != dims.num_key_value_heads
            || b.num_hidden_layers != dims.num_hidden_layers
            || b.head_dim() != dims.head_dim()
        {
            bail!(
                "generator was built for {} but base model has {}",
                describe(b),
                describe(dims)
            );
        }
        Ok(())
    }
}

fn describe(d: &LlamaDims) -> String {
    format!(
        "hidden {}, intermediate {}, {} heads, {} KV heads, head_dim {}, {} layers",
        d.hidden_size,
        d.intermediate_size,
        d.num_attention_heads,
        d.num_key_value_heads,
        d.head_dim(),
        d.num_hidden_layers
    )
}

/// One parameter of a layer: name (relative to the layer), shape and initialisation.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Where the mixture head's parameters are in the [`VarMap`].
const MIX_PREFIX: &str = "mix";
/// Where the attention head's parameters are in the [`VarMap`].
const ATTEND_PREFIX: &str = "attend";
/// Where the input standardisation's statistics are in the [`VarMap`].
const INPUT_PREFIX: &str = "input";
/// Floor of a statistic's variance: a cell that hardly varies over the training tasks
/// (padding, `[CLS]`) is scaled by at most 1/sqrt of it, not blown up.
const INPUT_VAR_FLOOR: f64 = 1e-4;

/// Where hyper-convolution layer `i`'s parameters are in the [`VarMap`].
fn layer_prefix(i: usize) -> String {
    format!("layers.{i}")
}

/// The parameter `name` of `specs`, from `vb` (created there as its spec says if new).
pub(super) fn param(vb: &VarBuilder, specs: &[ParamSpec], name: &str) -> Result<Tensor> {
    let s = specs.iter().find(|s| s.name == name).expect("known name");
    Ok(vb.get_with_hints(s.shape.clone(), name, s.init)?)
}

/// Sets the [`VarMap`] entries `{prefix}.{name}` to their values (values computed from
/// data rather than drawn: a neighbour head's keys, the input statistics).
fn set_vars<const K: usize>(
    varmap: &VarMap,
    prefix: &str,
    values: [(&str, Tensor); K],
) -> Result<()> {
    let data = varmap.data().lock().unwrap();
    for (name, value) in values {
        let key = format!("{prefix}.{name}");
        data.get(&key)
            .with_context(|| format!("decoder has no {key}"))?
            .set(&value)?;
    }
    Ok(())
}

/// `x` standardised over its last axis (LayerNorm without the affine part), from
/// differentiable ops: candle's fused `layer_norm` drops gradients.
pub(super) fn standardize(x: &Tensor) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)?)
}

/// The parameters of one layer from `i` to `o` with kernel k: the one place that names them,
/// shapes them and says how they start.
fn layer_params(i: [usize; 3], o: [usize; 3], k: usize) -> Vec<ParamSpec> {
    let [n, h, w] = i;
    let [n2, h2, w2] = o;
    let conv = |name, c_out: usize, c_in: usize| {
        let b = 1.0 / ((c_in * k * k) as f64).sqrt();
        ParamSpec {
            name,
            shape: vec![c_out, c_in, k, k],
            init: Init::Uniform { lo: -b, up: b },
        }
    };
    let hb = 1.0 / (h2 * w2) as f64;
    let nb = 1.0 / ((n * k * k) as f64).sqrt();
    vec![
        ParamSpec {
            name: "norm.weight",
            shape: vec![h, w],
            init: Init::Const(1.0),
        },
        ParamSpec {
            name: "norm.bias",
            shape: vec![h, w],
            init: Init::Const(0.0),
        },
        conv("conv1w.weight", w2, w),
        conv("conv1h.weight", h2, h),
        conv("conv2h.weight", h2, h),
        conv("conv2w.weight", w2, w),
        ParamSpec {
            name: "bias",
            shape: vec![h2, w2],
            init: Init::Uniform { lo: -hb, up: hb },
        },
        conv("nconv.weight", n2, n),
        ParamSpec {
            name: "nconv.bias",
            shape: vec![n2],
            init: Init::Uniform { lo: -nb, up: nb },
        },
    ]
}

/// A parameter drawn as PyTorch draws a linear layer's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(super) fn uniform(name: &'static str, shape: Vec<usize>, fan_in: usize) -> ParamSpec {
    let b = 1.0 / (fan_in as f64).sqrt();
    ParamSpec {
        name,
        shape,
        init: Init::Uniform { lo: -b, up: b },
    }
}

/// The mixture head's parameters for an encoder width `e` and a token stack of `cells`
/// values; linear layers initialised as PyTorch's, directions U(-1/sqrt(K), 1/sqrt(K)) so
/// that the stack starts at the scale of unit mixture weights.
fn mix_params(e: usize, m: MixHead, cells: usize) -> Vec<ParamSpec> {
    let (k, h) = (m.directions, m.hidden);
    if m.neighbours {
        // Keys and centre start at zero: training sets them from its tasks' pools
        // (`set_neighbour_keys`); the scale starts at 10, so that a task's closest
        // neighbours carry most of the weight.
        let zero = |name, shape| ParamSpec {
            name,
            shape,
            init: Init::Const(0.0),
        };
        return vec![
            zero("keys", vec![k, e]),
            zero("centre", vec![e]),
            ParamSpec {
                name: "log_scale",
                shape: vec![1],
                init: Init::Const(10f64.ln()),
            },
            uniform("directions", vec![k, cells], k),
            uniform("shared", vec![cells], k),
        ];
    }
    vec![
        ParamSpec {
            name: "norm.weight",
            shape: vec![e],
            init: Init::Const(1.0),
        },
        ParamSpec {
            name: "norm.bias",
            shape: vec![e],
            init: Init::Const(0.0),
        },
        uniform("in.weight", vec![h, e], e),
        uniform("in.bias", vec![h], e),
        uniform("out.weight", vec![k, h], h),
        uniform("out.bias", vec![k], h),
        uniform("directions", vec![k, cells], k),
    ]
}

/// The mixture head (see the module doc).
#[derive(Debug, Clone)]
struct MixLayer {
    weighting: Weighting,
    directions: Tensor,
    tokens: [usize; 3],
}

/// How a mixture head weighs its directions.
#[derive(Debug, Clone)]
enum Weighting {
    /// LayerNorm, then a tanh MLP.
    Mlp {
        norm_weight: Tensor,
        norm_bias: Tensor,
        in_weight: Tensor,
        in_bias: Tensor,
        out_weight: Tensor,
        out_bias: Tensor,
    },
    /// A softmax over the similarity to each training task's key; the shared direction
    /// added whole.
    Neighbours {
        keys: Tensor,
        centre: Tensor,
        log_scale: Tensor,
        shared: Tensor,
    },
}

impl MixLayer {
    fn new(vb: VarBuilder, cfg: &DecoderConfig, m: MixHead) -> Result<Self> {
        let tokens = cfg.shapes[1];
        let specs = mix_params(cfg.encoder_hidden, m, tokens.iter().product());
        let get = |name: &str| param(&vb, &specs, name);
        let weighting = match m.neighbours {
            true => Weighting::Neighbours {
                keys: get("keys")?,
                centre: get("centre")?,
                log_scale: get("log_scale")?,
                shared: get("shared")?,
            },
            false => Weighting::Mlp {
                norm_weight: get("norm.weight")?,
                norm_bias: get("norm.bias")?,
                in_weight: get("in.weight")?,
                in_bias: get("in.bias")?,
                out_weight: get("out.weight")?,
                out_bias: get("out.bias")?,
            },
        };
        Ok(Self {
            weighting,
            directions: get("directions")?,
            tokens,
        })
    }

    /// The K mixture weights of each sample, (B, N, L, E) -> (B, K); a neighbour head
    /// gives direction `exclude` none.
    fn weights(&self, x: &Tensor, exclude: Option<usize>) -> Result<Tensor> {
        let x = pooled(x)?;
        match &self.weighting {
            Weighting::Mlp {
                norm_weight,
                norm_bias,
                in_weight,
                in_bias,
                out_weight,
                out_bias,
            } => {
                let x = x.broadcast_mul(norm_weight)?.broadcast_add(norm_bias)?;
                let h = x.matmul(&in_weight.t()?)?.broadcast_add(in_bias)?.tanh()?;
                Ok(h.matmul(&out_weight.t()?)?.broadcast_add(out_bias)?)
            }
            Weighting::Neighbours {
                keys,
                centre,
                log_scale,
                ..
            } => {
                let unit = |v: &Tensor| -> Result<Tensor> {
                    let v = v.broadcast_sub(centre)?;
                    let norm = (v.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
                    Ok(v.broadcast_div(&norm)?)
                };
                let mut logits = unit(&x)?
                    .matmul(&unit(keys)?.t()?)?
                    .broadcast_mul(&log_scale.exp()?)?;
                if let Some(i) = exclude {
                    let k = keys.dim(0)?;
                    ensure!(i < k, "excluded direction {i} of {k}");
                    let mask: Vec<f32> = (0..k).map(|j| if j == i { -1e9 } else { 0.0 }).collect();
                    logits = logits.broadcast_add(&Tensor::new(mask, keys.device())?)?;
                }
                // Softmax from differentiable ops (candle's fused one drops gradients), the
                // max detached: candle's composite softmax differentiates it too, which
                // cancels exactly but not in rounding (its trained weights differ after 4
                // steps, so README's runs would not rerun to the digit).
                let e = logits
                    .broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?
                    .exp()?;
                Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
            }
        }
    }

    /// (B, N, L, E) -> (B, T, r + 2, C + 2).
    fn forward(&self, x: &Tensor, exclude: Option<usize>) -> Result<Tensor> {
        let b = x.dim(0)?;
        let [t, h, w] = self.tokens;
        let mut stack = self.weights(x, exclude)?.matmul(&self.directions)?;
        if let Weighting::Neighbours { shared, .. } = &self.weighting {
            stack = stack.broadcast_add(shared)?;
        }
        Ok(stack.reshape((b, t, h, w))?)
    }
}

/// A task's key, or a mixture head's reading of its input: the mean over prompts (or
/// examples) and positions, standardised; (B, N, L, E) -> (B, E).
fn pooled(x: &Tensor) -> Result<Tensor> {
    let (b, n, l, e) = x.dims4()?;
    standardize(&x.reshape((b, n * l, e))?.mean(1)?)
}

/// One step of the decoder, from (N, H, W) to (N', H', W').
#[derive(Debug, Clone)]
pub struct HyperConvLayer {
    norm_weight: Tensor,
    norm_bias: Tensor,
    conv1w: Tensor,
    conv1h: Tensor,
    conv2h: Tensor,
    conv2w: Tensor,
    bias: Tensor,
    nconv_weight: Tensor,
    nconv_bias: Tensor,
    padding: usize,
    residual: bool,
}

impl HyperConvLayer {
    pub fn new(vb: VarBuilder, i: [usize; 3], o: [usize; 3], kernel: usize) -> Result<Self> {
        let specs = layer_params(i, o, kernel);
        let get = |name: &str| param(&vb, &specs, name);
        Ok(Self {
            norm_weight: get("norm.weight")?,
            norm_bias: get("norm.bias")?,
            conv1w: get("conv1w.weight")?,
            conv1h: get("conv1h.weight")?,
            conv2h: get("conv2h.weight")?,
            conv2w: get("conv2w.weight")?,
            bias: get("bias")?,
            nconv_weight: get("nconv.weight")?,
            nconv_bias: get("nconv.bias")?,
            padding: kernel / 2,
            residual: i == o,
        })
    }

    fn conv(&self, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        conv_same(x, kernel, self.padding)
    }

    /// LayerNorm over the last two axes jointly, from differentiable ops.
    fn norm(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, h, w) = x.dims4()?;
        Ok(standardize(&x.reshape((b, n, h * w))?)?
            .reshape((b, n, h, w))?
            .broadcast_mul(&self.norm_weight)?
            .broadcast_add(&self.norm_bias)?)
    }

    /// (B, N, H, W) -> (B, N', H', W').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xn = self.norm(x)?;
        // Path a: W -> W' over (H, N), then H -> H' over (N, W').
        let a = self.conv(&xn.permute((0, 3, 2, 1))?, &self.conv1w)?; // (B, W', H, N)
        let a = self.conv(&a.permute((0, 2, 3, 1))?, &self.conv1h)?; // (B, H', N, W')
        let a = a.permute((0, 2, 1, 3))?; // (B, N, H', W')
                                          // Path b: H -> H' over (N, W), then W -> W' over (H', N), tanh.
        let b = self.conv(&xn.permute((0, 2, 1, 3))?, &self.conv2h)?; // (B, H', N, W)
        let b = self.conv(&b.permute((0, 3, 1, 2))?, &self.conv2w)?; // (B, W', H', N)
        let b = b.permute((0, 3, 2, 1))?.tanh()?; // (B, N, H', W')
        let y = ((a + b)?.broadcast_add(&self.bias)? / 3.0)?;
        let y = self.conv(&y, &self.nconv_weight)?;
        let n2 = self.nconv_bias.dim(0)?;
        let y = y.broadcast_add(&self.nconv_bias.reshape((1, n2, 1, 1))?)?;
        if self.residual {
            Ok((x + y)?)
        } else {
            Ok(y)
        }
    }
}

/// The stacked decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    head: Head,
    /// The input standardisation's (centre, scale), each (L, E).
    input_norm: Option<(Tensor, Tensor)>,
    cfg: DecoderConfig,
}

/// What maps the input to the token stack.
#[derive(Debug, Clone)]
enum Head {
    Convolutions(Vec<HyperConvLayer>),
    Mix(MixLayer),
    Attend(AttendLayer),
}

impl Decoder {
    pub fn new(vb: VarBuilder, cfg: &DecoderConfig) -> Result<Self> {
        cfg.validate()?;
        let head = match (cfg.attend, cfg.mix) {
            (Some(a), _) => Head::Attend(AttendLayer::new(
                vb.pp(ATTEND_PREFIX),
                cfg.layout()?,
                cfg.encoder_hidden,
                a.width,
            )?),
            (None, Some(m)) => Head::Mix(MixLayer::new(vb.pp(MIX_PREFIX), cfg, m)?),
            (None, None) => Head::Convolutions(
                cfg.shapes
                    .windows(2)
                    .enumerate()
                    .map(|(i, p)| {
                        HyperConvLayer::new(vb.pp(layer_prefix(i)), p[0], p[1], cfg.kernel)
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        let input_norm = match cfg.input_norm {
            true => {
                let specs: Vec<ParamSpec> = cfg.statistics().into_iter().map(|(_, p)| p).collect();
                let vb = vb.pp(INPUT_PREFIX);
                Some((param(&vb, &specs, "centre")?, param(&vb, &specs, "scale")?))
            }
            false => None,
        };
        Ok(Self {
            head,
            input_norm,
            cfg: cfg.clone(),
        })
    }

    /// `x` (B, N, L, E) as the head reads it: standardised cell by cell where the decoder
    /// does so, else unchanged.
    fn normalised(&self, x: &Tensor) -> Result<Tensor> {
        match &self.input_norm {
            Some((centre, scale)) => Ok(x.broadcast_sub(centre)?.broadcast_div(scale)?),
            None => Ok(x.clone()),
        }
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// (B, N, L, 384) -> (B, T, r + 2, C + 2); a 3-D input is treated as one sample.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_excluding(x, None)
    }

    /// [`Decoder::forward`] with a neighbour head's direction `exclude` (a training task's
    /// own) out of its softmax: leave-one-out training. Other heads have no such direction
    /// and refuse one.
    pub fn forward_excluding(&self, x: &Tensor, exclude: Option<usize>) -> Result<Tensor> {
        ensure!(
            exclude.is_none() || self.cfg.is_neighbour_head(),
            "only a neighbour head leaves a direction out"
        );
        let x = if x.rank() == 3 {
            x.unsqueeze(0)?
        } else {
            x.clone()
        };
        let [n, h, w] = self.cfg.shapes[0];
        let (_, xn, xh, xw) = x.dims4()?;
        ensure!(
            (xn, xh, xw) == (n, h, w),
            "decoder input has shape ({xn}, {xh}, {xw}), expected ({n}, {h}, {w})"
        );
        let x = self.normalised(&x)?;
        match &self.head {
            Head::Mix(mix) => mix.forward(&x, exclude),
            Head::Attend(attend) => attend.forward(&x),
            Head::Convolutions(layers) => layers.iter().try_fold(x, |x, l| l.forward(&x)),
        }
    }

    /// The hyper-convolution layers (none with a mixture head).
    #[cfg(test)]
    fn layers(&self) -> &[HyperConvLayer] {
        match &self.head {
            Head::Convolutions(layers) => layers,
            Head::Mix(_) | Head::Attend(_) => &[],
        }
    }

    /// A new decoder whose parameters are drawn from `seed` (same distributions as
    /// [`Decoder::new`] on an empty [`VarMap`]), and the [`VarMap`] that holds them.
    pub fn seeded(cfg: &DecoderConfig, seed: u64, device: &Device) -> Result<(Self, VarMap)> {
        cfg.validate()?;
        let varmap = VarMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        {
            let mut data = varmap.data().lock().unwrap();
            for (name, spec) in cfg.params().into_iter().chain(cfg.statistics()) {
                let n: usize = spec.shape.iter().product();
                let values: Vec<f32> = match spec.init {
                    Init::Const(v) => vec![v as f32; n],
                    Init::Uniform { lo, up } => (0..n)
                        .map(|_| rng.random_range(lo as f32..up as f32))
                        .collect(),
                    other => bail!("unsupported init {other:?}"),
                };
                let t = Tensor::from_vec(values, spec.shape.clone(), device)?;
                data.insert(name, Var::from_tensor(&t)?);
            }
        }
        let decoder = Self::new(VarBuilder::from_varmap(&varmap, DType::F32, device), cfg)?;
        Ok((decoder, varmap))
    }

    /// Loads a decoder folder (`decoder.json` + `decoder.safetensors`) into a [`VarMap`]
    /// (so that training can resume from it).
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, VarMap)> {
        let cfg = DecoderConfig::load(dir)?;
        let mut varmap = VarMap::new();
        let decoder = Self::new(VarBuilder::from_varmap(&varmap, DType::F32, device), &cfg)?;
        let weights = dir.join(WEIGHTS_FILE);
        varmap
            .load(&weights)
            .with_context(|| format!("loading decoder weights {}", weights.display()))?;
        Ok((decoder, varmap))
    }

    /// A neighbour head's keys, one per training task from its encoded pool (P, L, E), in
    /// the head's direction order, and its centre the mean key.
    pub fn set_neighbour_keys(&self, varmap: &VarMap, pools: &[&Tensor]) -> Result<()> {
        let k = match self.cfg.mix {
            Some(m) if m.neighbours => m.directions,
            _ => bail!("only a neighbour head has keys"),
        };
        ensure!(pools.len() == k, "{} pools for {k} keys", pools.len());
        let keys = pools
            .iter()
            .map(|p| pooled(&self.normalised(&p.unsqueeze(0)?)?))
            .collect::<Result<Vec<_>>>()?;
        let keys = Tensor::cat(&keys, 0)?;
        let centre = keys.mean(0)?;
        set_vars(varmap, MIX_PREFIX, [("keys", keys), ("centre", centre)])
    }

    /// The input standardisation's statistics from the training tasks' encoded pools (each
    /// (P, L, E)), every task weighing the same: the centre is the mean of the tasks' mean
    /// inputs, the scale the root of the mean squared distance from it (floored at
    /// [`INPUT_VAR_FLOOR`]), cell by cell.
    pub fn set_input_norm(&self, varmap: &VarMap, pools: &[&Tensor]) -> Result<()> {
        ensure!(
            self.cfg.input_norm,
            "the decoder does not standardise its input"
        );
        ensure!(!pools.is_empty(), "input statistics of no tasks");
        let mean_over_tasks = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Tensor> {
            let each = pools
                .iter()
                .map(|p| f(p)?.mean(0).map_err(Into::into))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::stack(&each, 0)?.mean(0)?)
        };
        let centre = mean_over_tasks(&|p| Ok(p.clone()))?;
        let var = mean_over_tasks(&|p| Ok(p.broadcast_sub(&centre)?.sqr()?))?;
        let scale = var.maximum(INPUT_VAR_FLOOR)?.sqrt()?;
        set_vars(varmap, INPUT_PREFIX, [("centre", centre), ("scale", scale)])
    }

    /// Writes `decoder.json` and `decoder.safetensors` into `dir` (created if needed).
    pub fn save(&self, varmap: &VarMap, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(CONFIG_FILE), serde_json::to_vec_pretty(&self.cfg)?)?;
        varmap.save(dir.join(WEIGHTS_FILE))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test model's dims, halved so that decoder tests stay fast.
    pub(crate) fn tiny_dims() -> LlamaDims {
        LlamaDims {
            hidden_size: 32,
            intermediate_size: 64,
            head_dim: None,
            ..crate::testing::tiny_dims()
        }
    }

    /// A tiny decoder config: N = 4 prompts of L = 8 tokens, r = 2, C = 16, q and v.
    pub(crate) fn tiny_config() -> DecoderConfig {
        // q: 32 -> 32, v: 32 -> 16; C = 16: 2 + 2 + 2 + 1 = 7 tokens a layer, 14 in all.
        DecoderConfig::for_model(
            "tiny",
            &tiny_dims(),
            2,
            4.0,
            &[Module::Q, Module::V],
            16,
            4,
            8,
            &[[6, 6, 24], [8, 4, 18], [8, 4, 18]],
            3,
        )
        .unwrap()
    }

    fn input(cfg: &DecoderConfig, b: usize, seed: u64) -> Tensor {
        let [n, l, w] = cfg.shapes[0];
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..b * n * l * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(v, (b, n, l, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn shapes_at_every_layer() {
        let cfg = tiny_config();
        assert_eq!(cfg.shapes.last().unwrap(), &[14, 4, 18]);
        let (dec, _) = Decoder::seeded(&cfg, 0, &Device::Cpu).unwrap();
        let mut x = input(&cfg, 2, 1);
        for (layer, want) in dec.layers().iter().zip(&cfg.shapes[1..]) {
            x = layer.forward(&x).unwrap();
            assert_eq!(x.dims(), &[2, want[0], want[1], want[2]]);
        }
        assert!(dec.layers()[2].residual && !dec.layers()[1].residual);
        let y = dec.forward(&input(&cfg, 1, 1).squeeze(0).unwrap()).unwrap();
        assert_eq!(y.dims(), &[1, 14, 4, 18]);
        assert!(dec
            .forward(&input(&cfg, 1, 1).narrow(1, 0, 3).unwrap())
            .is_err());
    }

    /// Every parameter of `cfg`'s decoder is counted by `param_count` and gets a gradient.
    fn assert_every_parameter_gets_a_gradient(cfg: &DecoderConfig, vars_want: usize) {
        let varmap = VarMap::new();
        let dec = Decoder::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            cfg,
        )
        .unwrap();
        let vars = varmap.data().lock().unwrap().clone();
        assert_eq!(
            vars.values().map(|v| v.elem_count()).sum::<usize>(),
            cfg.param_count()
        );
        assert_eq!(vars.len(), vars_want);
        assert_gradients(&dec, &varmap, &input(cfg, 2, 3), None);
    }

    /// Every variable of `varmap` gets a finite, non-zero gradient from a loss on `x`'s
    /// output.
    fn assert_gradients(dec: &Decoder, varmap: &VarMap, x: &Tensor, exclude: Option<usize>) {
        let vars = varmap.data().lock().unwrap().clone();
        let y = dec.forward_excluding(x, exclude).unwrap();
        let loss = (y - 0.5).unwrap().sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let cfg = tiny_config();
        assert_every_parameter_gets_a_gradient(&cfg, 9 * (cfg.shapes.len() - 1));
    }

    /// Row `i` of a mixture head's weights of `x`.
    fn weights_row(mix: &MixLayer, x: &Tensor, exclude: Option<usize>, i: usize) -> Vec<f32> {
        mix.weights(x, exclude)
            .unwrap()
            .get(i)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn mixture_head_is_its_weights_times_its_directions() {
        let cfg = tiny_config().with_mix(3).unwrap();
        assert_eq!(cfg.shapes, vec![[4, 8, 384], [14, 4, 18]]);
        assert_every_parameter_gets_a_gradient(&cfg, 7);
        let (dec, varmap) = Decoder::seeded(&cfg, 2, &Device::Cpu).unwrap();
        let x = input(&cfg, 2, 6);
        let y = dec.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 14, 4, 18]);
        // Sample 1's stack, by hand: the weights of its mean input, times each direction.
        let Head::Mix(mix) = &dec.head else {
            panic!("a mixture head")
        };
        let w = weights_row(mix, &x, None, 1);
        let dirs: Vec<Vec<f32>> = mix.directions.to_vec2().unwrap();
        let want: Vec<f32> = (0..dirs[0].len())
            .map(|c| (0..3).map(|k| w[k] * dirs[k][c]).sum())
            .collect();
        let got: Vec<f32> = y.get(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(want.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-5));
        // Two inputs with one mean give one stack: the head reads the task, not an example.
        let swapped =
            Tensor::cat(&[x.narrow(1, 1, 3).unwrap(), x.narrow(1, 0, 1).unwrap()], 1).unwrap();
        let y2 = dec.forward(&swapped).unwrap();
        let diff = (y2 - &y).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // Saved and loaded, the same decoder.
        let dir = tempfile::tempdir().unwrap();
        dec.save(&varmap, dir.path()).unwrap();
        let (back, _) = Decoder::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config(), &cfg);
        let diff = (back.forward(&x).unwrap() - &y).unwrap().abs().unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert!(tiny_config().with_mix(0).is_err());
    }

    #[test]
    fn neighbour_head_weighs_other_tasks_by_similarity() {
        let cfg = tiny_config().with_neighbours(3).unwrap();
        assert_eq!(cfg.mix.unwrap().hidden, 0);
        let (dec, varmap) = Decoder::seeded(&cfg, 2, &Device::Cpu).unwrap();
        // Three tasks' pools, each one decoder input: a task's own input is its key.
        let pools: Vec<Tensor> = (0..3)
            .map(|i| input(&cfg, 1, 10 + i).get(0).unwrap())
            .collect();
        dec.set_neighbour_keys(&varmap, &pools.iter().collect::<Vec<_>>())
            .unwrap();
        let x = pools[1].unsqueeze(0).unwrap();
        let Head::Mix(mix) = &dec.head else {
            panic!("a mixture head")
        };
        let w = weights_row(mix, &x, None, 0);
        assert!(w[1] > w[0] && w[1] > w[2], "{w:?}");
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // Left out, task 1 gets nothing and the others keep their ratio.
        let wo = weights_row(mix, &x, Some(1), 0);
        assert_eq!(wo[1], 0.0);
        assert!((wo[0] / wo[2] - w[0] / w[2]).abs() < 1e-4 * w[0] / w[2]);
        // The stack is those weights times the directions, plus the shared direction.
        let y = dec.forward_excluding(&x, Some(1)).unwrap();
        let dirs: Vec<Vec<f32>> = mix.directions.to_vec2().unwrap();
        let Weighting::Neighbours { shared, .. } = &mix.weighting else {
            panic!("a neighbour head")
        };
        let shared: Vec<f32> = shared.to_vec1().unwrap();
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let want = (0..dirs[0].len()).map(|c| wo[0] * dirs[0][c] + wo[2] * dirs[2][c] + shared[c]);
        assert!(want.zip(&got).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_gradients(&dec, &varmap, &input(&cfg, 2, 3), Some(0));
        // Saved and loaded (keys included), the same decoder; other heads refuse exclusion.
        let dir = tempfile::tempdir().unwrap();
        dec.save(&varmap, dir.path()).unwrap();
        let (back, _) = Decoder::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config(), &cfg);
        let (a, b) = (back.forward(&x).unwrap(), dec.forward(&x).unwrap());
        assert_eq!(crate::testing::max_abs_diff(&a, &b), 0.0);
        let (conv, _) = Decoder::seeded(&tiny_config(), 2, &Device::Cpu).unwrap();
        assert!(conv.forward_excluding(&x, Some(0)).is_err());
        assert!(dec.forward_excluding(&x, Some(3)).is_err());
    }

    #[test]
    fn norm_matches_reference_layer_norm() {
        // The differentiable norm agrees with candle's (non-differentiable) fused one.
        let cfg = tiny_config();
        let (dec, _) = Decoder::seeded(&cfg, 5, &Device::Cpu).unwrap();
        let x = input(&cfg, 2, 4);
        let ours = dec.layers()[0].norm(&x).unwrap();
        let (b, n, h, w) = x.dims4().unwrap();
        let fused = candle_nn::ops::layer_norm(
            &x.reshape((b, n, h * w)).unwrap(),
            &Tensor::ones(h * w, DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros(h * w, DType::F32, &Device::Cpu).unwrap(),
            LN_EPS as f32,
        )
        .unwrap()
        .reshape((b, n, h, w))
        .unwrap();
        let diff = (ours - fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn a_config_without_a_condition_reads_prompts() {
        let cfg = tiny_config();
        let json = serde_json::to_value(&cfg).unwrap();
        assert!(
            json.get("condition").is_none(),
            "the method's default is not written"
        );
        let back: DecoderConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.condition, Condition::Prompts);
        let examples = DecoderConfig {
            condition: Condition::Examples,
            ..cfg
        };
        let json = serde_json::to_value(&examples).unwrap();
        assert_eq!(json["condition"], "examples");
        assert_eq!(
            serde_json::from_value::<DecoderConfig>(json).unwrap(),
            examples
        );
    }

    /// `cfg`'s decoder of seed 9 saved and loaded: the same config and outputs; returns the
    /// output.
    fn assert_save_load_round_trip(cfg: &DecoderConfig) -> Vec<f32> {
        let (dec, vm) = Decoder::seeded(cfg, 9, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        dec.save(&vm, dir.path()).unwrap();
        let (dec2, _) = Decoder::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(dec2.config(), cfg);
        let a = out(&dec, cfg);
        assert_eq!(a, out(&dec2, cfg));
        a
    }

    fn out(d: &Decoder, cfg: &DecoderConfig) -> Vec<f32> {
        d.forward(&input(cfg, 1, 2))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn save_load_gives_identical_outputs() {
        let cfg = tiny_config();
        let a = assert_save_load_round_trip(&cfg);
        // Same seed, same decoder; another seed, another decoder.
        let seeded = |seed| out(&Decoder::seeded(&cfg, seed, &Device::Cpu).unwrap().0, &cfg);
        assert_eq!(a, seeded(9));
        assert_ne!(a, seeded(10));
    }

    #[test]
    fn input_norm_is_the_plain_decoder_on_the_standardised_input() {
        let plain = tiny_config();
        let cfg = DecoderConfig {
            input_norm: true,
            ..plain.clone()
        };
        let (dec, vm) = Decoder::seeded(&cfg, 9, &Device::Cpu).unwrap();
        // The statistics take no draws: the layers are the plain decoder's of the same seed.
        let (reference, _) = Decoder::seeded(&plain, 9, &Device::Cpu).unwrap();
        assert_eq!(dec.config().param_count(), plain.param_count());
        // Two tasks' pools (P, L, E): unit noise around different offsets, and the first
        // cell constant (as `[CLS]` nearly is).
        let [_, l, e] = cfg.shapes[0];
        let pool = |p: usize, seed: u64, offset: f64| {
            let x = input(&cfg, p, seed)
                .narrow(1, 0, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .affine(2.0, offset)
                .unwrap();
            let keep = Tensor::ones((l, e), DType::F32, &Device::Cpu).unwrap();
            let keep = keep
                .slice_assign(
                    &[0..1, 0..1],
                    &Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap(),
                )
                .unwrap();
            x.broadcast_mul(&keep).unwrap()
        };
        let (a, b) = (pool(5, 1, 3.0), pool(7, 2, -1.0));
        dec.set_input_norm(&vm, &[&a, &b]).unwrap();
        let cell = |t: &Tensor, i: usize, j: usize| -> Vec<f32> {
            t.narrow(1, i, 1)
                .unwrap()
                .narrow(2, j, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        // Each task weighs the same: centre 1 = (3 + -1) / 2, whatever the pools' sizes;
        // the constant cell is left at 0 instead of divided by zero.
        let (na, nb) = (dec.normalised(&a).unwrap(), dec.normalised(&b).unwrap());
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        for (i, j) in [(0, 5), (3, 1), (l - 1, e - 1)] {
            let (ca, cb) = (cell(&na, i, j), cell(&nb, i, j));
            let m = (mean(&ca) + mean(&cb)) / 2.0;
            let ms = (mean(&ca.iter().map(|v| v * v).collect::<Vec<_>>())
                + mean(&cb.iter().map(|v| v * v).collect::<Vec<_>>()))
                / 2.0;
            assert!(
                m.abs() < 1e-4 && (ms - 1.0).abs() < 1e-3,
                "cell ({i}, {j}): {m} {ms}"
            );
        }
        assert!(cell(&na, 0, 0)
            .iter()
            .chain(&cell(&nb, 0, 0))
            .all(|v| *v == 0.0));
        // The decoder is the plain one on the standardised input, and keeps its
        // statistics through save and load.
        let x = a.narrow(0, 0, cfg.prompts).unwrap().unsqueeze(0).unwrap();
        let out = |d: &Decoder, x: &Tensor| -> Vec<f32> {
            d.forward(x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let got = out(&dec, &x);
        assert_eq!(got, out(&reference, &dec.normalised(&x).unwrap()));
        let dir = tempfile::tempdir().unwrap();
        dec.save(&vm, dir.path()).unwrap();
        let (loaded, _) = Decoder::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(got, out(&loaded, &x));
        assert_ne!(got, out(&reference, &x));
        assert!(DecoderConfig::is_statistic("input.centre"));
        assert!(
            !DecoderConfig::is_statistic("inputs.x")
                && !DecoderConfig::is_statistic("layers.0.bias")
        );
    }

    #[test]
    fn config_validation_and_base_check() {
        let mut cfg = tiny_config();
        cfg.kernel = 2;
        assert!(cfg.validate().unwrap_err().to_string().contains("odd"));
        let mut cfg = tiny_config();
        cfg.shapes.last_mut().unwrap()[0] = 15;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("token stack"));
        let cfg = tiny_config();
        cfg.check_base(&tiny_dims()).unwrap();
        let e = cfg
            .check_base(&smollm2_135m_dims())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("generator was built for hidden 32")
                && e.contains("base model has hidden 576"),
            "{e}"
        );
    }

    /// An attention head: its size by hand for SmolLM2 reading its own states, every
    /// parameter counted and trained, the folder round trip, and what it refuses.
    #[test]
    fn attention_head_config() {
        let cfg = DecoderConfig::smollm2_default()
            .with_encoder("smollm2 block 6 input", 576)
            .unwrap()
            .with_attend(64)
            .unwrap();
        // Q 8 x 576, U 576 x 64, V 64 x 30 (576 + 192); FLOPs over 16 x 32 tokens.
        let flops = 2 * (2 * 8 * 512 * 576 + 8 * 576 * 64 + 8 * 64 * 23_040);
        assert_eq!((cfg.param_count(), cfg.flops()), (1_516_032, flops));
        let cfg = tiny_config().with_attend(3).unwrap();
        assert_eq!(cfg.shapes.len(), 2);
        assert_every_parameter_gets_a_gradient(&cfg, 3);
        assert_save_load_round_trip(&cfg);
        let e = |c: DecoderConfig| c.validate().unwrap_err().to_string();
        let normed = DecoderConfig {
            input_norm: true,
            ..cfg.clone()
        };
        assert!(e(normed).contains("no input standardisation"));
        let both = DecoderConfig {
            mix: Some(MixHead {
                directions: 2,
                hidden: 4,
                neighbours: false,
            }),
            ..cfg
        };
        assert!(e(both).contains("no mixture head"));
    }

    #[test]
    fn smollm2_default_numbers() {
        let cfg = DecoderConfig::smollm2_default();
        cfg.validate().unwrap();
        // B only (A is the shared frozen one): q 3 + v 1 tokens a layer.
        assert_eq!(cfg.frozen_a_seed, Some(0));
        assert_eq!(cfg.layout().unwrap().shape(), (120, 10, 194));
        assert_eq!(cfg.layout().unwrap().n_weights(), 184_320);
        assert_eq!((cfg.param_count(), cfg.flops()), (573_972, 579_230_208));
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Per-layer forward / backward time of the default config (run with --ignored).
    #[test]
    #[ignore]
    fn time_default_layers() {
        let cfg = DecoderConfig::smollm2_default();
        let (dec, _) = Decoder::seeded(&cfg, 0, &Device::Cpu).unwrap();
        let [n, l, w] = cfg.shapes[0];
        let mut x = Tensor::randn(0f32, 1.0, (4, n, l, w), &Device::Cpu).unwrap();
        for (i, layer) in dec.layers().iter().enumerate() {
            let xv = Var::from_tensor(&x).unwrap();
            let t = std::time::Instant::now();
            let y = layer.forward(xv.as_tensor()).unwrap();
            let f = t.elapsed();
            let t = std::time::Instant::now();
            let _g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let b = t.elapsed();
            // Candle's own conv2d on the widest convolution of the layer, for comparison.
            let xn = layer
                .norm(&x)
                .unwrap()
                .permute((0, 3, 2, 1))
                .unwrap()
                .contiguous()
                .unwrap();
            let t = std::time::Instant::now();
            let _c = xn.conv2d(&layer.conv1w, 1, 1, 1, 1).unwrap();
            let c = t.elapsed();
            let t = std::time::Instant::now();
            let _o = conv_same(&xn, &layer.conv1w, 1).unwrap();
            let o = t.elapsed();
            eprintln!("layer {i}: forward {f:?} backward {b:?}; conv1w candle {c:?} ours {o:?}");
            x = y.detach();
        }
    }
}
