//! LoRA fine-tuning of a llama model on CPU with candle: a differentiable forward pass, the
//! chat-format data pipeline and the trainer whose checkpoints become the generator's
//! training data (DnD paper, section 5; LoRA: Hu et al. 2021).
//!
//! The forward pass is written out here because candle-transformers' llama uses fused
//! kernels that have no backward pass (see `docs/candle-training.md`). Grouped-query
//! attention groups the query heads of one key/value head instead of copying keys and
//! values. A test checks its logits against candle-transformers' inference model.
//!
//! Speed: a CPU step is what bounds how many checkpoints the project can collect, so the
//! hot ops are custom ops with hand-written backward passes ([`CustomGrad`]):
//! - [`frozen_linear`]: candle's `matmul` backward also computes the (unused) gradient of
//!   the frozen weight, a third of the matmul work;
//! - [`rms_norm`], [`rope`] (Hugging Face half-split layout), [`masked_softmax`]: candle's
//!   fused kernels forward, the analytic gradient backward. Differentiating the slow
//!   composite versions (`rms_norm_slow`, `rope_slow`, `softmax` over a dim) op by op also
//!   computes gradients of every constant (norm weights, rotary tables, mask), which are
//!   thrown away.
//!
//! With `BaseModel::fused = false` the slow differentiable versions are used; tests check
//! that both give the same values and LoRA gradients. Finally, the ~30 tokens every
//! templated example starts with (system prompt, ChatML markers) are computed once per
//! batch ([`BaseModel::hidden_states_with_prefix`]): at batch 4 that is about 40 % fewer
//! positions, with the same loss and gradients (tested).
//!
//! LoRA: for a target module with frozen weight `W` (out, in), `y = x W^T + s (x A^T) B^T`
//! with `A` (r, in) drawn from U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with
//! a = sqrt(5)), `B` (out, r) zero, and `s = alpha / r`. With `B = 0` the first backward pass
//! gives `A` a zero gradient; it moves once `B` has.
//!
//! Data: a prompt is wrapped in the model's chat template exactly as the server renders a
//! single user message with the generation prompt (for SmolLM2 this includes its default
//! system prompt), the answer follows with the end-of-turn token, and the loss is the mean
//! cross-entropy over the answer tokens only. Prompt and answer are tokenized separately, as
//! at inference time the prompt is tokenized and the answer generated token by token.
//! Batches are right-padded; with a causal mask padding never influences real tokens.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use candle_transformers::models::llama::LlamaConfig;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::format::peft::{tensor_name, LlamaDims, LoraAdapter, Module, PeftConfig};
use crate::format::rng::Rng;

// ---------------------------------------------------------------------------------------
// Frozen linear without weight gradient

/// `x W^T` for a frozen `W` (out, in) and a 2-D `x` (n, in), whose backward pass returns
/// only the input gradient `g W`. On devices other than the CPU it falls back to `matmul`.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.rank() == 2 && w.rank() == 2 && x.dtype() == w.dtype() {
        Ok(x.apply_op1(FrozenLinear { w: w.clone() })?)
    } else {
        Ok(x.broadcast_matmul(&w.t()?)?)
    }
}

struct FrozenLinear {
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = x_l.shape().dims2()?;
        let (n, k_w) = self.w.dims2()?;
        if k != k_w {
            candle_core::bail!("frozen-linear: input has {k} features, weight expects {k_w}");
        }
        let (w, w_l) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen-linear: weight is not on the CPU");
        };
        let wt_l = w_l.transpose(0, 1)?;
        let out = x.matmul(w, (1, m, n, k), x_l, &wt_l)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

// ---------------------------------------------------------------------------------------
// Fused ops with an explicit backward pass

type FwdFn = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync;
type BwdFn = dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// A unary op on the CPU whose forward pass is any graph-free computation (typically one
/// of candle's fused kernels) and whose backward pass is given explicitly as
/// `bwd(x, y, grad_y) -> grad_x`. candle's autograd otherwise differentiates the slow
/// composite versions op by op, also computing gradients of constants (norm weights,
/// rotary tables, masks) that are thrown away.
struct CustomGrad {
    name: &'static str,
    fwd: Box<FwdFn>,
    bwd: Box<BwdFn>,
}

impl CustomOp1 for CustomGrad {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: input must be contiguous", self.name);
        };
        let x = Tensor::from_slice(&x.as_slice::<f32>()?[start..end], l.shape(), &Device::Cpu)?;
        let y = (self.fwd)(&x)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((self.bwd)(&x.detach(), &y.detach(), grad)?))
    }
}

fn fused_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// RMSNorm over the last dimension: fused forward, backward
/// `g_x = r (g a - x r^2 mean(g a x))` with `r = 1 / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f32, fused: bool) -> Result<Tensor> {
    if !fused || !fused_ok(x) {
        return Ok(candle_nn::ops::rms_norm_slow(x, alpha, eps)?);
    }
    let (a1, a2) = (alpha.clone(), alpha.clone());
    let op = CustomGrad {
        name: "rms-norm-grad",
        fwd: Box::new(move |x| candle_nn::ops::rms_norm(x, &a1, eps)),
        bwd: Box::new(move |x, _y, g| {
            let ga = g.broadcast_mul(&a2)?;
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + f64::from(eps))?
                .sqrt()?
                .recip()?;
            let dot = (&ga * x)?.mean_keepdim(D::Minus1)?;
            let inner = (ga - x.broadcast_mul(&(dot * r.sqr()?)?)?)?;
            inner.broadcast_mul(&r)
        }),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// Rotary embedding, Hugging Face half-split layout, on (b, h, t, d) with tables (t, d/2):
/// fused forward; the backward pass is the inverse rotation (the same op with `-sin`).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, fused: bool) -> Result<Tensor> {
    if !fused || !fused_ok(x) {
        return Ok(candle_nn::rotary_emb::rope_slow(x, cos, sin)?);
    }
    let (c1, s1) = (cos.contiguous()?, sin.contiguous()?);
    let (c2, s2) = (c1.clone(), s1.neg()?);
    let op = CustomGrad {
        name: "rope-grad",
        fwd: Box::new(move |x| candle_nn::rotary_emb::rope(x, &c1, &s1)),
        bwd: Box::new(move |_x, _y, g| candle_nn::rotary_emb::rope(&g.contiguous()?, &c2, &s2)),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// `softmax(x * scale + mask)` over the last dimension (mask broadcast from its shape):
/// fused forward, backward `scale * y (g - sum(g y))`.
pub fn masked_softmax(x: &Tensor, scale: f64, mask: &Tensor, fused: bool) -> Result<Tensor> {
    if !fused || !fused_ok(x) {
        let att = (x * scale)?.broadcast_add(mask)?;
        return Ok(candle_nn::ops::softmax(&att, D::Minus1)?);
    }
    let m = mask.clone();
    let op = CustomGrad {
        name: "masked-softmax-grad",
        fwd: Box::new(move |x| candle_nn::ops::softmax_last_dim(&(x * scale)?.broadcast_add(&m)?)),
        bwd: Box::new(move |_x, y, g| {
            let dot = (g * y)?.sum_keepdim(D::Minus1)?;
            (y * g.broadcast_sub(&dot)?)? * scale
        }),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

// ---------------------------------------------------------------------------------------
// Chat template and tokenization

/// The model's chat template, reduced to what training needs: how one user message with
/// the generation prompt renders. Only ChatML templates (`<|im_start|>role\n...<|im_end|>\n`)
/// are supported; a template that adds a default system prompt when the first message is
/// not a system message (SmolLM2's) has it extracted verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    pub default_system: Option<String>,
}

impl ChatTemplate {
    /// Reads `chat_template` from a `tokenizer_config.json` value.
    pub fn from_tokenizer_config(cfg: &serde_json::Value) -> Result<Self> {
        let Some(t) = cfg.get("chat_template").and_then(|v| v.as_str()) else {
            bail!("tokenizer_config.json has no string \"chat_template\"");
        };
        Self::parse(t)
    }

    /// Recognises a ChatML Jinja template. The template must emit each message as
    /// `'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'`
    /// and the generation prompt `<|im_start|>assistant\n`.
    pub fn parse(template: &str) -> Result<Self> {
        let compact: String = template.chars().filter(|c| !c.is_whitespace()).collect();
        let message = "'<|im_start|>'+message['role']+'\\n'+message['content']+'<|im_end|>'+'\\n'";
        let message_nl = message.replace("\\n", "");
        let has_message = compact.contains(message) || compact.contains(&message_nl);
        let has_gen = compact.contains("<|im_start|>assistant");
        if !has_message || !has_gen {
            bail!("unsupported chat template (only ChatML templates are supported): {template:?}");
        }
        const START: &str = "<|im_start|>system";
        let default_system = match template.find(START) {
            Some(i) if template.contains("!= 'system'") || template.contains("!='system'") => {
                let rest = &template[i + START.len()..];
                let rest = rest
                    .strip_prefix('\n')
                    .or_else(|| rest.strip_prefix("\\n"))
                    .context("chat template: no newline after the system role")?;
                let end = rest
                    .find("<|im_end|>")
                    .context("chat template: default system prompt has no <|im_end|>")?;
                Some(rest[..end].to_string())
            }
            _ => None,
        };
        Ok(Self { default_system })
    }

    /// `messages = [{"role": "user", "content": prompt}]`, `add_generation_prompt = true`.
    pub fn render_user(&self, prompt: &str) -> String {
        let mut s = String::new();
        if let Some(sys) = &self.default_system {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        s.push_str(&format!(
            "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        ));
        s
    }
}

/// A tokenized example: `ids` = prompt tokens then answer tokens (ending with the
/// end-of-turn token); the loss covers `ids[prompt_len..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// The model's tokenizer with its chat template.
pub struct ChatTokenizer {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// `<|im_end|>`: ends the answer.
    pub end_of_turn: u32,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("template", &self.template)
            .field("end_of_turn", &self.end_of_turn)
            .finish()
    }
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from a Hugging Face folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            anyhow::anyhow!("loading {}: {e}", dir.join("tokenizer.json").display())
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?,
        )
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let template = ChatTemplate::from_tokenizer_config(&cfg)?;
        let end_of_turn = tokenizer
            .token_to_id("<|im_end|>")
            .context("tokenizer has no <|im_end|> token")?;
        Ok(Self {
            tokenizer,
            template,
            end_of_turn,
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// The prompt as the server sends it to the model (chat template applied), tokenized.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode(&self.template.render_user(prompt))
    }

    pub fn encode_example(&self, prompt: &str, answer: &str) -> Result<Encoded> {
        let mut ids = self.encode_prompt(prompt)?;
        let prompt_len = ids.len();
        ids.extend(self.encode(answer)?);
        ids.push(self.end_of_turn);
        Ok(Encoded { ids, prompt_len })
    }
}

// ---------------------------------------------------------------------------------------
// Frozen base model

/// One frozen decoder layer: its two norms and seven linear weights (out, in), indexed by
/// [`Module`] in checkpoint order.
struct BaseLayer {
    attn_norm: Tensor,
    mlp_norm: Tensor,
    weights: [Tensor; 7],
}

/// A llama model's frozen weights in F32, read from a Hugging Face folder.
pub struct BaseModel {
    pub config: LlamaConfig,
    pub dims: LlamaDims,
    /// Folder name, recorded as `base_model_name_or_path` in adapters.
    pub name: String,
    embed: Tensor,
    lm_head: Tensor,
    norm: Tensor,
    layers: Vec<BaseLayer>,
    device: Device,
    /// Fused ops with explicit backward passes (default) or candle's slow composite ops;
    /// both give the same values and gradients (tested).
    pub fused: bool,
}

impl std::fmt::Debug for BaseModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseModel")
            .field("name", &self.name)
            .field("dims", &self.dims)
            .finish()
    }
}

impl BaseModel {
    /// Loads `config.json` and `model.safetensors` (any float dtype, converted to F32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: LlamaConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a llama config", cfg_path.display()))?;
        let dims: LlamaDims = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a llama config", cfg_path.display()))?;
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .with_context(|| format!("reading {}", weights_path.display()))?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        Self::from_tensors(config, dims, tensors, &name, device)
            .with_context(|| format!("loading {}", weights_path.display()))
    }

    /// Builds the model from Hugging Face-named tensors (any float dtype, converted to F32).
    pub fn from_tensors(
        config: LlamaConfig,
        dims: LlamaDims,
        mut tensors: std::collections::HashMap<String, Tensor>,
        name: &str,
        device: &Device,
    ) -> Result<Self> {
        ensure!(
            config.rope_scaling.is_none(),
            "rope_scaling is not supported by the trainer"
        );
        ensure!(
            dims.head_dim() * dims.num_attention_heads == dims.hidden_size,
            "head_dim other than hidden_size / num_attention_heads is not supported"
        );
        ensure!(
            dims.num_attention_heads
                .is_multiple_of(dims.num_key_value_heads),
            "num_attention_heads must be a multiple of num_key_value_heads"
        );
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .with_context(|| format!("no tensor {name}"))?;
            ensure!(
                t.dims() == shape,
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.dims()
            );
            Ok(t.to_dtype(DType::F32)?.to_device(device)?)
        };
        let h = dims.hidden_size;
        let embed = take("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let norm = take("model.norm.weight", &[h])?;
        let lm_head = if config.tie_word_embeddings.unwrap_or(false) {
            embed.clone()
        } else {
            take("lm_head.weight", &[config.vocab_size, h])?
        };
        let mut layers = Vec::with_capacity(dims.num_hidden_layers);
        for i in 0..dims.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut w = Vec::with_capacity(7);
            for m in Module::ALL {
                let (inp, out) = m.dims(&dims);
                w.push(take(
                    &format!("{p}.{}.{}.weight", m.block(), m.name()),
                    &[out, inp],
                )?);
            }
            layers.push(BaseLayer {
                attn_norm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                mlp_norm: take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                weights: w.try_into().map_err(|_| anyhow::anyhow!("seven modules"))?,
            });
        }
        Ok(Self {
            config,
            dims,
            name: name.to_string(),
            embed,
            lm_head,
            norm,
            layers,
            device: device.clone(),
            fused: true,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn eps(&self) -> f32 {
        self.config.rms_norm_eps as f32
    }

    /// cos and sin tables (t, head_dim / 2) for positions 0..t, as Hugging Face computes
    /// them: inv_freq_i = theta^(-2i / head_dim).
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.dims.head_dim();
        let theta = f64::from(self.config.rope_theta);
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let mut freqs = Vec::with_capacity(t * hd / 2);
        for p in 0..t {
            freqs.extend(inv.iter().map(|f| p as f32 * f));
        }
        let freqs = Tensor::from_vec(freqs, (t, hd / 2), &self.device)?;
        Ok((freqs.cos()?, freqs.sin()?))
    }

    /// A frozen linear of a layer, plus the LoRA update when the adapter targets it.
    fn linear(
        &self,
        x: &Tensor,
        layer: usize,
        m: Module,
        lora: Option<&LoraWeights>,
    ) -> Result<Tensor> {
        let y = frozen_linear(x, &self.layers[layer].weights[m as usize])?;
        match lora.and_then(|l| l.pair(layer, m).map(|(a, b)| (a, b, l.config.scale()))) {
            Some((a, b, s)) => {
                // A frozen A is detached so that backward does not compute its gradient.
                let a = match lora.is_some_and(|l| l.a_frozen()) {
                    true => a.as_tensor().detach(),
                    false => a.as_tensor().clone(),
                };
                let delta = x.matmul(&a.t()?)?.matmul(&b.as_tensor().t()?)?;
                Ok((y + (delta * s)?)?)
            }
            None => Ok(y),
        }
    }

    /// Final hidden states (after the last norm), shape (b * t, hidden), for token ids
    /// (b, t) at positions 0..t with a causal mask.
    pub fn hidden_states(&self, ids: &Tensor, lora: Option<&LoraWeights>) -> Result<Tensor> {
        self.hidden_states_with_prefix(&[], ids, lora)
    }

    /// Additive mask (rep * tq, tp + tq) for query rows ordered (rep, position) inside a
    /// key/value head: all `tp` prefix keys are visible, the query's own keys causally.
    fn mask(&self, rep: usize, tp: usize, tq: usize) -> Result<Tensor> {
        let mut mask = Vec::with_capacity(rep * tq * (tp + tq));
        for _ in 0..rep {
            for i in 0..tq {
                mask.extend(
                    (0..tp + tq).map(|j| if j <= tp + i { 0f32 } else { f32::NEG_INFINITY }),
                );
            }
        }
        Ok(Tensor::from_vec(mask, (rep * tq, tp + tq), &self.device)?)
    }

    /// Attention of queries (bb, nh, tq, hd) over keys and values (bb, nkv, tk, hd), as
    /// rows (bb * tq, nh * hd). Query heads h = kv * rep + r share key/value head kv.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (bb, nh, tq, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let q = q.reshape((bb, nkv, nh / nkv * tq, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = masked_softmax(&q.matmul(&k.t()?.contiguous()?)?, scale, mask, self.fused)?;
        let y = att.matmul(v)?.reshape((bb, nh, tq, hd))?;
        Ok(y.transpose(1, 2)?
            .contiguous()?
            .reshape((bb * tq, nh * hd))?)
    }

    /// Final hidden states of the sequences `prefix ++ ids[i]` (ids: (b, s)), computing the
    /// shared prefix once: rows `0..p` are the prefix, then `b * s` rows of the suffixes.
    /// Every templated example starts with the same system prompt and ChatML markers (about
    /// 30 of ~50 tokens), so this removes most of the duplicated work of a batch. The values
    /// equal those of [`Self::hidden_states`] on the full sequences (tested).
    pub fn hidden_states_with_prefix(
        &self,
        prefix: &[u32],
        ids: &Tensor,
        lora: Option<&LoraWeights>,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let p = prefix.len();
        let d = &self.dims;
        let (nh, nkv, hd) = (d.num_attention_heads, d.num_key_value_heads, d.head_dim());
        let rep = nh / nkv;
        let (cos, sin) = self.rope_tables(p + s)?;
        let (cos_s, sin_s) = (cos.narrow(0, p, s)?, sin.narrow(0, p, s)?);
        let mask_s = self.mask(rep, p, s)?;
        let mask_p = self.mask(rep, 0, p)?;
        let all_ids = if p > 0 {
            let prefix = Tensor::new(prefix, &self.device)?;
            Tensor::cat(&[&prefix, &ids.flatten_all()?], 0)?
        } else {
            ids.flatten_all()?
        };
        let heads = |x: Tensor, bb: usize, t: usize, n: usize| -> Result<Tensor> {
            Ok(x.reshape((bb, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let mut x = self.embed.index_select(&all_ids, 0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, self.eps(), self.fused)?;
            let q = self.linear(&h, i, Module::Q, lora)?;
            let k = self.linear(&h, i, Module::K, lora)?;
            let v = self.linear(&h, i, Module::V, lora)?;
            let q_s = rope(
                &heads(q.narrow(0, p, b * s)?, b, s, nh)?,
                &cos_s,
                &sin_s,
                self.fused,
            )?;
            let k_s = rope(
                &heads(k.narrow(0, p, b * s)?, b, s, nkv)?,
                &cos_s,
                &sin_s,
                self.fused,
            )?;
            let v_s = heads(v.narrow(0, p, b * s)?, b, s, nkv)?;
            let y = if p > 0 {
                let (cos_p, sin_p) = (cos.narrow(0, 0, p)?, sin.narrow(0, 0, p)?);
                let q_p = rope(
                    &heads(q.narrow(0, 0, p)?, 1, p, nh)?,
                    &cos_p,
                    &sin_p,
                    self.fused,
                )?;
                let k_p = rope(
                    &heads(k.narrow(0, 0, p)?, 1, p, nkv)?,
                    &cos_p,
                    &sin_p,
                    self.fused,
                )?;
                let v_p = heads(v.narrow(0, 0, p)?, 1, p, nkv)?;
                let y_p = self.attend(&q_p, &k_p, &v_p, &mask_p)?;
                let shape = (b, nkv, p, hd);
                let k_all = Tensor::cat(&[&k_p.broadcast_as(shape)?.contiguous()?, &k_s], 2)?;
                let v_all = Tensor::cat(&[&v_p.broadcast_as(shape)?.contiguous()?, &v_s], 2)?;
                let y_s = self.attend(&q_s, &k_all, &v_all, &mask_s)?;
                Tensor::cat(&[&y_p, &y_s], 0)?
            } else {
                self.attend(&q_s, &k_s, &v_s, &mask_s)?
            };
            x = (x + self.linear(&y, i, Module::O, lora)?)?;
            let h = rms_norm(&x, &layer.mlp_norm, self.eps(), self.fused)?;
            let g = self.linear(&h, i, Module::Gate, lora)?.silu()?;
            let u = self.linear(&h, i, Module::Up, lora)?;
            x = (x + self.linear(&(g * u)?, i, Module::Down, lora)?)?;
        }
        rms_norm(&x, &self.norm, self.eps(), self.fused)
    }

    /// Logits (rows, vocab) of selected rows of [`Self::hidden_states`].
    pub fn logits_at(&self, hidden: &Tensor, rows: &Tensor) -> Result<Tensor> {
        frozen_linear(&hidden.index_select(rows, 0)?, &self.lm_head)
    }

    /// Mean cross-entropy of the batch's answer tokens.
    pub fn loss(&self, batch: &Batch, lora: Option<&LoraWeights>) -> Result<Tensor> {
        let hidden = self.hidden_states_with_prefix(&batch.prefix, &batch.ids, lora)?;
        let logits = self.logits_at(&hidden, &batch.rows)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &batch.targets)?)
    }
}

// ---------------------------------------------------------------------------------------
// Batches

/// A padded batch: the prefix all its sequences share, the rest of each sequence (b, s),
/// and for every answer token the row of [`BaseModel::hidden_states_with_prefix`] that
/// predicts it and the token itself.
#[derive(Debug)]
pub struct Batch {
    pub prefix: Vec<u32>,
    pub ids: Tensor,
    pub rows: Tensor,
    pub targets: Tensor,
    /// Number of positions the forward pass runs over (prefix + b * s).
    pub positions: usize,
}

impl Batch {
    /// A batch sharing the longest common prefix of its sequences (within the prompts).
    pub fn new(items: &[&Encoded], pad: u32, device: &Device) -> Result<Self> {
        Self::build(items, pad, device, true)
    }

    /// `share_prefix = false` runs every sequence in full (the reference in tests).
    pub fn build(
        items: &[&Encoded],
        pad: u32,
        device: &Device,
        share_prefix: bool,
    ) -> Result<Self> {
        ensure!(!items.is_empty(), "empty batch");
        for e in items {
            ensure!(
                e.prompt_len >= 1 && e.prompt_len < e.ids.len(),
                "example has no prompt or no answer tokens"
            );
        }
        // Longest common prefix, ending before the first position that predicts an answer.
        let mut p = if share_prefix {
            items.iter().map(|e| e.prompt_len - 1).min().unwrap_or(0)
        } else {
            0
        };
        for e in &items[1..] {
            p = p.min(
                items[0]
                    .ids
                    .iter()
                    .zip(&e.ids)
                    .take_while(|(a, b)| a == b)
                    .count(),
            );
        }
        let s = items.iter().map(|e| e.ids.len() - p).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(items.len() * s);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, e) in items.iter().enumerate() {
            ids.extend(&e.ids[p..]);
            ids.extend(std::iter::repeat_n(pad, s - (e.ids.len() - p)));
            for j in e.prompt_len..e.ids.len() {
                rows.push((p + i * s + (j - 1 - p)) as u32);
                targets.push(e.ids[j]);
            }
        }
        let n = rows.len();
        Ok(Self {
            prefix: items[0].ids[..p].to_vec(),
            ids: Tensor::from_vec(ids, (items.len(), s), device)?,
            rows: Tensor::from_vec(rows, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            positions: p + items.len() * s,
        })
    }
}

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

/// The A matrices a fresh LoRA starts from, U(-1/sqrt(in), 1/sqrt(in)) per layer and module
/// in checkpoint order, drawn from `rng`. With [`LoraConfig::frozen_a_seed`] they are drawn
/// from `Rng::derive(seed, "lora-a")` and the generator rebuilds the same ones.
pub fn initial_a(
    dims: &LlamaDims,
    rank: usize,
    modules: &[Module],
    rng: &mut Rng,
    device: &Device,
) -> Result<BTreeMap<(usize, Module), Tensor>> {
    let mut modules = modules.to_vec();
    modules.sort();
    modules.dedup();
    let mut out = BTreeMap::new();
    for layer in 0..dims.num_hidden_layers {
        for &m in &modules {
            let (inp, _) = m.dims(dims);
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..rank * inp)
                .map(|_| (2.0 * rng.unit_f32() - 1.0) * bound)
                .collect();
            out.insert((layer, m), Tensor::from_vec(a, (rank, inp), device)?);
        }
    }
    Ok(out)
}

/// The shared, frozen A matrices of a LoRA-FA collection seeded with `seed`.
pub fn frozen_a(
    dims: &LlamaDims,
    rank: usize,
    modules: &[Module],
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<(usize, Module), Tensor>> {
    initial_a(
        dims,
        rank,
        modules,
        &mut Rng::derive(seed, "lora-a"),
        device,
    )
}

/// The trainable LoRA matrices of every layer and target module, as candle `Var`s.
#[derive(Debug)]
pub struct LoraWeights {
    pub config: LoraConfig,
    pairs: BTreeMap<(usize, Module), (Var, Var)>,
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
        let mut pairs = BTreeMap::new();
        for ((layer, m), a) in a_init {
            let (_, out) = m.dims(dims);
            let a = Var::from_tensor(&a)?;
            let b = Var::zeros((out, config.rank), DType::F32, device)?;
            pairs.insert((layer, m), (a, b));
        }
        Ok(Self {
            config: LoraConfig {
                modules,
                ..config.clone()
            },
            pairs,
        })
    }

    /// Trainable copies of an adapter's matrices.
    pub fn from_adapter(adapter: &LoraAdapter, dims: &LlamaDims, device: &Device) -> Result<Self> {
        adapter.validate(dims)?;
        let modules = adapter.config.modules()?;
        let mut pairs = BTreeMap::new();
        for layer in 0..dims.num_hidden_layers {
            for &m in &modules {
                let (a, b) = adapter.pair(layer, m)?;
                pairs.insert(
                    (layer, m),
                    (
                        Var::from_tensor(&a.to_device(device)?.copy()?)?,
                        Var::from_tensor(&b.to_device(device)?.copy()?)?,
                    ),
                );
            }
        }
        Ok(Self {
            config: LoraConfig {
                rank: adapter.config.r,
                alpha: adapter.config.lora_alpha,
                modules,
                frozen_a_seed: None,
            },
            pairs,
        })
    }

    pub fn pair(&self, layer: usize, m: Module) -> Option<(&Var, &Var)> {
        self.pairs.get(&(layer, m)).map(|(a, b)| (a, b))
    }

    /// Every trainable variable: per layer and module, A then B (only B when A is frozen).
    pub fn vars(&self) -> Vec<Var> {
        let frozen = self.a_frozen();
        self.pairs
            .values()
            .flat_map(|(a, b)| [(!frozen).then(|| a.clone()), Some(b.clone())])
            .flatten()
            .collect()
    }

    pub fn a_frozen(&self) -> bool {
        self.config.frozen_a_seed.is_some()
    }

    /// `(PEFT tensor name, variable)` for every matrix.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        self.pairs
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
        for (name, v) in self.named_vars() {
            tensors.insert(name, v.as_tensor().to_device(&Device::Cpu)?.copy()?);
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
    /// Learning rate of optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self
            .steps
            .saturating_sub(self.warmup_steps)
            .saturating_sub(1)
            .max(1);
        let p = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
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

/// Global L2 norm of the gradients of `vars`, and the gradients scaled so that it is at
/// most `clip` (unchanged when `clip <= 0` or the norm is below it).
pub fn clip_grad_norm(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    clip: f64,
) -> Result<f32> {
    let mut sum = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sum.sqrt();
    if clip > 0.0 && norm > clip {
        let s = clip / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * s)?);
            }
        }
    }
    Ok(norm as f32)
}

/// LoRA training on a frozen base model: AdamW, warm-up + cosine schedule, global-norm
/// gradient clipping.
pub struct Trainer<'a> {
    pub base: &'a BaseModel,
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
    pub fn new(base: &'a BaseModel, config: TrainConfig) -> Result<Self> {
        let mut rng = Rng::derive(config.seed, "lora-init");
        let lora = LoraWeights::init(&config.lora, &base.dims, &mut rng, base.device())?;
        Self::with_lora(base, lora, config)
    }

    pub fn with_lora(base: &'a BaseModel, lora: LoraWeights, config: TrainConfig) -> Result<Self> {
        let vars = lora.vars();
        let opt = AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr: config.lr_at(0),
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: config.weight_decay,
            },
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
        self.opt.set_learning_rate(lr);
        self.opt.step(&grads)?;
        self.step += 1;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
        })
    }
}

/// Endless deterministic stream of batches over a set of examples: shuffled every epoch
/// from the seed.
#[derive(Debug)]
pub struct BatchStream {
    items: Vec<Encoded>,
    order: Vec<usize>,
    pos: usize,
    rng: Rng,
    batch_size: usize,
    pad: u32,
}

impl BatchStream {
    pub fn new(items: Vec<Encoded>, batch_size: usize, pad: u32, seed: u64) -> Result<Self> {
        ensure!(!items.is_empty(), "no training examples");
        ensure!(batch_size >= 1, "batch size must be at least 1");
        let order: Vec<usize> = (0..items.len()).collect();
        Ok(Self {
            items,
            order,
            pos: usize::MAX,
            rng: Rng::derive(seed, "batch-order"),
            batch_size,
            pad,
        })
    }

    pub fn next_batch(&mut self, device: &Device) -> Result<Batch> {
        let mut picked = Vec::with_capacity(self.batch_size);
        while picked.len() < self.batch_size {
            if self.pos >= self.order.len() {
                self.rng.shuffle(&mut self.order);
                self.pos = 0;
            }
            picked.push(&self.items[self.order[self.pos]]);
            self.pos += 1;
        }
        Batch::new(&picked, self.pad, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tiny_model_dir, SMOLLM2_TEMPLATE};

    fn load_tiny(dir: &Path) -> (BaseModel, ChatTokenizer) {
        let base = BaseModel::load(dir, &Device::Cpu).unwrap();
        let tok = ChatTokenizer::load(dir).unwrap();
        (base, tok)
    }

    fn batch(tok: &ChatTokenizer, dev: &Device) -> Batch {
        let a = tok.encode_example("what is 2 plus 3 ?", "5").unwrap();
        let b = tok.encode_example("reverse the word cat", "tac").unwrap();
        let c = tok.encode_example("is 7 even or odd ?", "B").unwrap();
        Batch::new(&[&a, &b, &c], 0, dev).unwrap()
    }

    #[test]
    fn smollm2_template_renders_like_jinja() {
        let t = ChatTemplate::parse(SMOLLM2_TEMPLATE).unwrap();
        assert_eq!(
            t.render_user("Hi"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        assert_eq!(ChatTemplate::parse(plain).unwrap().default_system, None);
        assert!(ChatTemplate::parse("{{ bos_token }}[INST] {{ m }} [/INST]").is_err());
    }

    #[test]
    fn real_model_template_when_present() {
        // The converted SmolLM2 folder appears once the asset step has run.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2");
        if !dir.join("tokenizer_config.json").exists() {
            return;
        }
        let tok = ChatTokenizer::load(&dir).unwrap();
        assert_eq!(
            tok.template.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(tok.end_of_turn, 2);
        let e = tok.encode_example("What is 2 + 3?", "5").unwrap();
        assert_eq!(e.ids[0], 1, "starts with <|im_start|>");
        assert_eq!(*e.ids.last().unwrap(), 2);
    }

    #[test]
    fn batch_targets_are_the_answer_tokens() {
        let dir = tiny_model_dir();
        let (_, tok) = load_tiny(dir.path());
        let a = tok.encode_example("what is 2 plus 3 ?", "5").unwrap();
        let b = tok
            .encode_example("reverse the word cat please now", "tac")
            .unwrap();
        for share in [true, false] {
            let bt = Batch::build(&[&a, &b], 0, &Device::Cpu, share).unwrap();
            let p = bt.prefix.len();
            if share {
                // The system prompt and "<|im_start|>user\n" are shared.
                assert!(p > 10, "shared prefix of {p} tokens");
                assert_eq!(&a.ids[..p], &b.ids[..p]);
            } else {
                assert_eq!(p, 0);
            }
            let ids = bt.ids.to_vec2::<u32>().unwrap();
            let s = ids[0].len();
            let full: Vec<Vec<u32>> = ids
                .iter()
                .map(|r| [bt.prefix.clone(), r.clone()].concat())
                .collect();
            let rows = bt.rows.to_vec1::<u32>().unwrap();
            let targets = bt.targets.to_vec1::<u32>().unwrap();
            let answers = (a.ids.len() - a.prompt_len) + (b.ids.len() - b.prompt_len);
            assert_eq!(targets.len(), answers, "both answers and their end of turn");
            for (r, tg) in rows.iter().zip(&targets) {
                let r = *r as usize - p;
                let (seq, pos) = (r / s, r % s + p);
                assert_eq!(full[seq][pos + 1], *tg);
            }
            assert_eq!(*targets.last().unwrap(), tok.end_of_turn);
            assert_eq!(bt.positions, p + 2 * s);
        }
    }

    #[test]
    fn shared_prefix_gives_the_same_loss_and_gradients() {
        let dir = tiny_model_dir();
        let (base, tok) = load_tiny(dir.path());
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            modules: Module::ALL.to_vec(),
            frozen_a_seed: None,
        };
        let lora = LoraWeights::init(&cfg, &base.dims, &mut Rng::new(3), &Device::Cpu).unwrap();
        let mut rng = Rng::new(6);
        for (_, v) in lora.named_vars() {
            let vals: Vec<f32> = (0..v.as_tensor().elem_count())
                .map(|_| rng.unit_f32() - 0.5)
                .collect();
            v.set(&Tensor::from_vec(vals, v.as_tensor().shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let a = tok.encode_example("what is 2 plus 3 ?", "5").unwrap();
        let b = tok.encode_example("reverse the word cat", "tac").unwrap();
        let c = tok.encode_example("is 7 even or odd ?", "B").unwrap();
        let run = |share: bool| {
            let bt = Batch::build(&[&a, &b, &c], 0, &Device::Cpu, share).unwrap();
            let loss = base.loss(&bt, Some(&lora)).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Tensor> = lora
                .vars()
                .iter()
                .map(|v| grads.get(v.as_tensor()).unwrap().clone())
                .collect();
            (loss.to_scalar::<f32>().unwrap(), g, bt.positions)
        };
        let (l1, g1, n1) = run(true);
        let (l2, g2, n2) = run(false);
        assert!(n1 < n2, "sharing computes fewer positions ({n1} vs {n2})");
        assert!((l1 - l2).abs() < 1e-4, "loss {l1} vs {l2}");
        assert_grads_close(&g1, &g2);
    }

    #[test]
    fn frozen_linear_matches_matmul_and_its_input_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (5, 7), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (3, 7), &dev).unwrap();
        let y1 = frozen_linear(x.as_tensor(), &w).unwrap();
        let y2 = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let diff = (&y1 - &y2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let g1 = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = y2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let d = (g1.get(x.as_tensor()).unwrap() - g2.get(x.as_tensor()).unwrap()).unwrap();
        assert!(
            d.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-4
        );
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Asserts two gradient lists agree to 1e-3 of each gradient's largest magnitude.
    fn assert_grads_close(a: &[Tensor], b: &[Tensor]) {
        for (x, y) in a.iter().zip(b) {
            let scale = y
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1e-3);
            assert!(
                max_diff(x, y) / scale < 1e-3,
                "gradients differ by {}",
                max_diff(x, y)
            );
        }
    }

    /// Logits of the last position of one sequence, through our forward pass.
    fn last_logits(base: &BaseModel, ids: &[u32], lora: Option<&LoraWeights>) -> Tensor {
        let t = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = base.hidden_states(&t, lora).unwrap();
        let row = Tensor::new(&[(ids.len() - 1) as u32], &Device::Cpu).unwrap();
        base.logits_at(&h, &row).unwrap().squeeze(0).unwrap()
    }

    /// Logits of the last position through candle-transformers' llama, on given weights.
    fn reference_logits(
        dir: &Path,
        weights: std::collections::HashMap<String, Tensor>,
        ids: &[u32],
    ) -> Tensor {
        use candle_transformers::models::llama as ref_llama;
        let cfg: LlamaConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let cfg = cfg.into_config(false);
        let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let model = ref_llama::Llama::load(vb, &cfg).unwrap();
        let mut cache = ref_llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
        let t = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model
            .forward(&t, 0, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap()
    }

    #[test]
    fn logits_match_candle_transformers_llama() {
        let dir = tiny_model_dir();
        let (base, tok) = load_tiny(dir.path());
        let weights =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let ids = tok.encode_example("what is 2 plus 3 ?", "5").unwrap().ids;
        assert!(ids.len() > 20);
        let ours = last_logits(&base, &ids, None);
        let theirs = reference_logits(dir.path(), weights.clone(), &ids);
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-4, "base logits differ by {d}");

        // A LoRA with non-zero B on q, v, up, down: unmerged forward vs merged weights.
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            modules: vec![Module::Q, Module::V, Module::Up, Module::Down],
            frozen_a_seed: None,
        };
        let lora = LoraWeights::init(&cfg, &base.dims, &mut Rng::new(3), &Device::Cpu).unwrap();
        let mut rng = Rng::new(4);
        for (_, v) in lora.named_vars() {
            let n = v.as_tensor().elem_count();
            let vals: Vec<f32> = (0..n).map(|_| rng.unit_f32() - 0.5).collect();
            v.set(&Tensor::from_vec(vals, v.as_tensor().shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let ours = last_logits(&base, &ids, Some(&lora));
        let d0 = max_diff(&ours, &theirs);
        assert!(d0 > 1e-2, "the LoRA changes the logits ({d0})");
        let mut merged = weights;
        for layer in 0..base.dims.num_hidden_layers {
            for &m in &cfg.modules {
                let (a, b) = lora.pair(layer, m).unwrap();
                let name = format!("model.layers.{layer}.{}.{}.weight", m.block(), m.name());
                let delta = (b.as_tensor().matmul(a.as_tensor()).unwrap() * cfg.scale()).unwrap();
                let w = (merged[&name].clone() + delta).unwrap();
                merged.insert(name, w);
            }
        }
        let theirs = reference_logits(dir.path(), merged, &ids);
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-4, "LoRA logits differ from the merged model by {d}");
    }

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

    fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        let mut r = Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| 2.0 * r.unit_f32() - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Value and input gradient (of sum(y * w) for a fixed random w) of a unary op.
    fn value_and_grad(x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor());
        let w = rand_t(y.dims(), 99);
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(v.as_tensor()).unwrap().clone())
    }

    #[test]
    fn fused_ops_match_slow_ops_in_value_and_gradient() {
        let x = rand_t(&[2, 3, 5, 8], 1);
        let alpha = (rand_t(&[8], 2) + 1.0).unwrap();
        let (cos, sin) = {
            let f = rand_t(&[5, 4], 3);
            (f.cos().unwrap(), f.sin().unwrap())
        };
        let mask = Tensor::from_vec(
            (0..25)
                .map(|i| {
                    if i % 5 <= i / 5 {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect(),
            (5, 5),
            &Device::Cpu,
        )
        .unwrap();
        let xm = rand_t(&[2, 3, 5, 5], 4);
        type Op<'a> = Box<dyn Fn(&Tensor, bool) -> Tensor + 'a>;
        let cases: Vec<(&str, &Tensor, Op)> = vec![
            (
                "rms_norm",
                &x,
                Box::new(|x, f| rms_norm(x, &alpha, 1e-5, f).unwrap()),
            ),
            ("rope", &x, Box::new(|x, f| rope(x, &cos, &sin, f).unwrap())),
            (
                "masked_softmax",
                &xm,
                Box::new(|x, f| masked_softmax(x, 0.7, &mask, f).unwrap()),
            ),
        ];
        for (name, input, op) in cases {
            let (y1, g1) = value_and_grad(input, &|x| op(x, true));
            let (y2, g2) = value_and_grad(input, &|x| op(x, false));
            assert!(max_diff(&y1, &y2) < 1e-5, "{name}: values differ");
            assert!(
                max_diff(&g1, &g2) < 1e-4,
                "{name}: gradients differ by {}",
                max_diff(&g1, &g2)
            );
        }
    }

    #[test]
    fn fused_and_slow_forward_give_the_same_lora_gradients() {
        let dir = tiny_model_dir();
        let (mut base, tok) = load_tiny(dir.path());
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            modules: Module::ALL.to_vec(),
            frozen_a_seed: None,
        };
        let lora = LoraWeights::init(&cfg, &base.dims, &mut Rng::new(3), &Device::Cpu).unwrap();
        let mut rng = Rng::new(5);
        for (_, v) in lora.named_vars() {
            let vals: Vec<f32> = (0..v.as_tensor().elem_count())
                .map(|_| rng.unit_f32() - 0.5)
                .collect();
            v.set(&Tensor::from_vec(vals, v.as_tensor().shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let b = batch(&tok, &Device::Cpu);
        let run = |base: &BaseModel| {
            let loss = base.loss(&b, Some(&lora)).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Tensor> = lora
                .vars()
                .iter()
                .map(|v| grads.get(v.as_tensor()).unwrap().clone())
                .collect();
            (loss.to_scalar::<f32>().unwrap(), g)
        };
        base.fused = true;
        let (l1, g1) = run(&base);
        base.fused = false;
        let (l2, g2) = run(&base);
        assert!((l1 - l2).abs() < 1e-4, "loss {l1} vs {l2}");
        assert_grads_close(&g1, &g2);
    }

    /// The real SmolLM2 folder (when converted): our forward pass against
    /// candle-transformers' llama on the real weights (F16 file, F32 compute).
    #[test]
    #[ignore]
    fn real_model_matches_candle_transformers() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2");
        let (base, tok) = load_tiny(&dir);
        let ids = tok.encode_prompt("What is the capital of France?").unwrap();
        let ours = last_logits(&base, &ids, None);
        let weights =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let weights = weights
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
            .collect();
        let theirs = reference_logits(&dir, weights, &ids);
        let d = max_diff(&ours, &theirs);
        let top = ours.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        println!(
            "max logit difference {d}, next token {:?}",
            tok.tokenizer.decode(&[top], false).unwrap()
        );
        assert!(d < 1e-2, "logits differ by {d}");
        assert_eq!(top, theirs.argmax(0).unwrap().to_scalar::<u32>().unwrap());
    }

    /// Cost of a training step at SmolLM2-135M's shapes (random weights unless the
    /// converted model is in `assets/smollm2`): `cargo test --lib bench_smollm2 -- --ignored
    /// --nocapture`. Timing does not depend on the weights' values.
    #[test]
    #[ignore]
    fn bench_smollm2_step() {
        use std::time::Instant;
        let dev = Device::Cpu;
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2");
        let base = if real.join("model.safetensors").exists() {
            BaseModel::load(&real, &dev).unwrap()
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
            BaseModel::from_tensors(config, dims, t, "random", &dev).unwrap()
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
