//! The LoRA trainer's own llama: a differentiable forward pass on CPU with candle, with
//! the LoRA update on any of the seven projections, split the way candle-transformers
//! splits a model ([`Llama`] -> [`block::Block`] -> [`attention::Attention`] and
//! [`mlp::Mlp`] -> [`linear::Linear`]), plus the chat-format data pipeline ([`chat`],
//! [`batch`]).
//!
//! The forward pass is written out here because candle-transformers' llama uses fused
//! kernels that have no backward pass: `softmax_last_dim`, `rms_norm`, `rope` and `sdpa`
//! silently cut the autograd graph (the forward works, `backward` succeeds, and the
//! parameters before the op get no gradient). Grouped-query attention groups the query
//! heads of one key/value head instead of copying keys and values. A test checks the
//! logits against candle-transformers' inference model.
//!
//! Speed: a CPU step is what bounds how many checkpoints the project can collect, so the
//! hot ops are custom ops with hand-written backward passes ([`ops`]):
//! - [`ops::frozen_linear`]: candle's `matmul` backward also computes the (unused) gradient
//!   of the frozen weight, a third of the matmul work;
//! - [`ops::rms_norm`], [`ops::rope`] (Hugging Face half-split layout),
//!   [`ops::masked_softmax`]: candle's fused kernels forward, the analytic gradient
//!   backward. Differentiating the slow composite versions (`rms_norm_slow`, `rope_slow`,
//!   `softmax` over a dim) op by op also computes gradients of every constant (norm
//!   weights, rotary tables, mask), which are thrown away.
//!
//! With `Llama::fused = false` the slow differentiable versions are used; tests check
//! that both give the same values and LoRA gradients. Finally, the ~30 tokens every
//! templated example starts with (system prompt, ChatML markers) are computed once per
//! batch ([`Llama::forward`] with a prefix): at batch 4 that is about 40 % fewer
//! positions, with the same loss and gradients (tested).

pub mod attention;
pub mod batch;
pub mod block;
pub mod chat;
pub mod linear;
pub mod mlp;
pub mod ops;
pub mod score;

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama::LlamaConfig;

use crate::format::peft::{LlamaDims, Module};
use crate::training::lora::LoraWeights;
use attention::{Attention, Positions};
use batch::Batch;
use block::Block;
use linear::Linear;
use mlp::Mlp;
use ops::{frozen_linear, rms_norm};

/// A llama model's frozen weights in F32, read from a Hugging Face folder.
pub struct Llama {
    pub config: LlamaConfig,
    pub dims: LlamaDims,
    /// Folder name, recorded as `base_model_name_or_path` in adapters.
    pub name: String,
    embed: Tensor,
    lm_head: Tensor,
    norm: Tensor,
    layers: Vec<Block>,
    device: Device,
    /// Fused ops with explicit backward passes (default) or candle's slow composite ops;
    /// both give the same values and gradients (tested).
    pub fused: bool,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("name", &self.name)
            .field("dims", &self.dims)
            .finish()
    }
}

impl Llama {
    /// Loads `config.json` and `model.safetensors` (any float dtype, converted to F32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_first(dir, usize::MAX, device)
    }

    /// [`Llama::load`] cut after its first `blocks` blocks (its `dims` say so, so it is a
    /// shallower model, not the base): a reader of the states entering block K needs K + 1
    /// of them, not the memory of the rest (the server's states reader keeps 7 of
    /// SmolLM2-135M's 30 blocks).
    pub fn load_first(dir: &Path, blocks: usize, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: LlamaConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a llama config", cfg_path.display()))?;
        let mut dims: LlamaDims = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a llama config", cfg_path.display()))?;
        dims.num_hidden_layers = dims.num_hidden_layers.min(blocks);
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
            let mut linear = |m: Module| -> Result<Linear> {
                let (inp, out) = m.dims(&dims);
                let w = take(
                    &format!("{p}.{}.{}.weight", m.block(), m.name()),
                    &[out, inp],
                )?;
                Ok(Linear::new(w, i, m))
            };
            let attention = Attention {
                q: linear(Module::Q)?,
                k: linear(Module::K)?,
                v: linear(Module::V)?,
                o: linear(Module::O)?,
                n_heads: dims.num_attention_heads,
                n_kv_heads: dims.num_key_value_heads,
                head_dim: dims.head_dim(),
            };
            let mlp = Mlp {
                gate: linear(Module::Gate)?,
                up: linear(Module::Up)?,
                down: linear(Module::Down)?,
            };
            layers.push(Block {
                attn_norm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                attention,
                mlp_norm: take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp,
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

    /// Final hidden states (after the last norm), shape (b * t, hidden), for token ids
    /// (b, t) at positions 0..t with a causal mask.
    pub fn hidden_states(&self, ids: &Tensor, lora: Option<&LoraWeights>) -> Result<Tensor> {
        self.forward(&[], ids, lora)
    }

    /// Final hidden states of the sequences `prefix ++ ids[i]` (ids: (b, s)), computing the
    /// shared prefix once: rows `0..p` are the prefix, then `b * s` rows of the suffixes.
    /// Every templated example starts with the same system prompt and ChatML markers (about
    /// 30 of ~50 tokens), so this removes most of the duplicated work of a batch. The values
    /// equal those of [`Self::hidden_states`] on the full sequences (tested).
    pub fn forward(
        &self,
        prefix: &[u32],
        ids: &Tensor,
        lora: Option<&LoraWeights>,
    ) -> Result<Tensor> {
        let x = self.blocks(prefix, ids, lora, self.layers.len(), |_| Ok(()))?;
        rms_norm(&x, &self.norm, self.eps(), self.fused)
    }

    /// The residual stream of one sequence after each block (no final norm) at `rows`: one
    /// (rows, hidden) tensor per layer. What the model represents part-way through, for
    /// probes (`bench condition`); no LoRA.
    pub fn layer_states(&self, ids: &[u32], rows: &[u32]) -> Result<Vec<Tensor>> {
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let rows = Tensor::new(rows, &self.device)?;
        let mut states = Vec::with_capacity(self.layers.len());
        self.blocks(&[], &ids, None, self.layers.len(), |x| {
            states.push(x.index_select(&rows, 0)?);
            Ok(())
        })?;
        Ok(states)
    }

    /// The residual stream entering block `layer` (0: the token embeddings) of each
    /// sequence of `ids` (b, s), shape (b, s, hidden): what that block's norm and
    /// projections read. Runs the first `layer` blocks only; no LoRA. Rows past a
    /// sequence's end may hold padding: the causal mask keeps it out of earlier rows.
    pub fn block_input(&self, ids: &Tensor, layer: usize) -> Result<Tensor> {
        ensure!(
            layer < self.layers.len(),
            "block {layer} does not exist (the model has {})",
            self.layers.len()
        );
        let (b, s) = ids.dims2()?;
        let x = self.blocks(&[], ids, None, layer, |_| Ok(()))?;
        Ok(x.reshape((b, s, self.dims.hidden_size))?)
    }

    /// The residual stream (rows of `prefix ++ ids[i]`, hidden) after the first `depth`
    /// blocks, before the final norm; `each` sees it after every block.
    fn blocks(
        &self,
        prefix: &[u32],
        ids: &Tensor,
        lora: Option<&LoraWeights>,
        depth: usize,
        mut each: impl FnMut(&Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let p = prefix.len();
        let pos = Positions::new(
            &self.dims,
            self.config.rope_theta,
            p,
            b,
            s,
            self.eps(),
            self.fused,
            &self.device,
        )?;
        let all_ids = if p > 0 {
            let prefix = Tensor::new(prefix, &self.device)?;
            Tensor::cat(&[&prefix, &ids.flatten_all()?], 0)?
        } else {
            ids.flatten_all()?
        };
        let mut x = self.embed.index_select(&all_ids, 0)?;
        for layer in &self.layers[..depth] {
            x = layer.forward(&x, &pos, lora)?;
            each(&x)?;
        }
        Ok(x)
    }

    /// Logits (rows, vocab) of selected rows of [`Self::forward`].
    pub fn logits_at(&self, hidden: &Tensor, rows: &Tensor) -> Result<Tensor> {
        frozen_linear(&hidden.index_select(rows, 0)?, &self.lm_head)
    }

    /// Logits (answer tokens, vocab) at the rows that predict the batch's answer tokens
    /// (`batch.targets`).
    pub fn answer_logits(&self, batch: &Batch, lora: Option<&LoraWeights>) -> Result<Tensor> {
        let hidden = self.forward(&batch.prefix, &batch.ids, lora)?;
        self.logits_at(&hidden, &batch.rows)
    }

    /// Mean cross-entropy of the batch's answer tokens.
    pub fn loss(&self, batch: &Batch, lora: Option<&LoraWeights>) -> Result<Tensor> {
        let logits = self.answer_logits(batch, lora)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &batch.targets)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::rng::Rng;
    use crate::testing::tiny_model_dir;
    use crate::training::lora::LoraConfig;
    use chat::ChatTokenizer;

    pub(crate) fn load_tiny(dir: &Path) -> (Llama, ChatTokenizer) {
        let base = Llama::load(dir, &Device::Cpu).unwrap();
        let tok = ChatTokenizer::load(dir).unwrap();
        (base, tok)
    }

    pub(crate) fn batch(tok: &ChatTokenizer, dev: &Device) -> Batch {
        let a = tok.encode_example("what is 2 plus 3 ?", "5").unwrap();
        let b = tok.encode_example("reverse the word cat", "tac").unwrap();
        let c = tok.encode_example("is 7 even or odd ?", "B").unwrap();
        Batch::new(&[&a, &b, &c], 0, dev).unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::testing::max_abs_diff(a, b)
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Asserts two gradient lists agree to 1e-3 of each gradient's largest magnitude.
    pub(crate) fn assert_grads_close(a: &[Tensor], b: &[Tensor]) {
        for (x, y) in a.iter().zip(b) {
            let scale = max_abs(y).max(1e-3);
            assert!(
                max_diff(x, y) / scale < 1e-3,
                "gradients differ by {}",
                max_diff(x, y)
            );
        }
    }

    /// Logits of the last position of one sequence, through our forward pass.
    pub(crate) fn last_logits(base: &Llama, ids: &[u32], lora: Option<&LoraWeights>) -> Tensor {
        let t = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = base.hidden_states(&t, lora).unwrap();
        let row = Tensor::new(&[(ids.len() - 1) as u32], &Device::Cpu).unwrap();
        base.logits_at(&h, &row).unwrap().squeeze(0).unwrap()
    }

    /// Logits of the last position through candle-transformers' llama, on given weights.
    pub(crate) fn reference_logits(
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

    /// The batch's loss and the gradient of every LoRA variable.
    fn loss_and_lora_grads(base: &Llama, b: &Batch, lora: &LoraWeights) -> (f32, Vec<Tensor>) {
        let loss = base.loss(b, Some(lora)).unwrap();
        let grads = loss.backward().unwrap();
        let g = lora
            .vars()
            .iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        (loss.to_scalar::<f32>().unwrap(), g)
    }

    /// A LoRA on every module of the tiny model, every entry uniform in [-0.5, 0.5) from
    /// `seed`, so that its gradients are far from zero everywhere.
    fn randomised_lora(base: &Llama, seed: u64) -> LoraWeights {
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            modules: Module::ALL.to_vec(),
            frozen_a_seed: None,
        };
        let lora = LoraWeights::init(&cfg, &base.dims, &mut Rng::new(3), &Device::Cpu).unwrap();
        let mut rng = Rng::new(seed);
        for (_, v) in lora.named_vars() {
            let vals: Vec<f32> = (0..v.as_tensor().elem_count())
                .map(|_| rng.unit_f32() - 0.5)
                .collect();
            v.set(&Tensor::from_vec(vals, v.as_tensor().shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        lora
    }

    #[test]
    fn shared_prefix_gives_the_same_loss_and_gradients() {
        let dir = tiny_model_dir();
        let (base, tok) = load_tiny(dir.path());
        let lora = randomised_lora(&base, 6);
        let a = tok.encode_example("what is 2 plus 3 ?", "5").unwrap();
        let b = tok.encode_example("reverse the word cat", "tac").unwrap();
        let c = tok.encode_example("is 7 even or odd ?", "B").unwrap();
        let run = |share: bool| {
            let bt = Batch::build(&[&a, &b, &c], 0, &Device::Cpu, share).unwrap();
            let (loss, g) = loss_and_lora_grads(&base, &bt, &lora);
            (loss, g, bt.positions)
        };
        let (l1, g1, n1) = run(true);
        let (l2, g2, n2) = run(false);
        assert!(n1 < n2, "sharing computes fewer positions ({n1} vs {n2})");
        assert!((l1 - l2).abs() < 1e-4, "loss {l1} vs {l2}");
        assert_grads_close(&g1, &g2);
    }

    #[test]
    fn last_layer_state_normed_is_the_hidden_state() {
        let dir = tiny_model_dir();
        let (base, tok) = load_tiny(dir.path());
        let ids = tok.encode_example("what is 2 plus 3 ?", "5").unwrap().ids;
        let rows = [1u32, (ids.len() - 1) as u32];
        let states = base.layer_states(&ids, &rows).unwrap();
        assert_eq!(states.len(), base.layers.len());
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let full = base.hidden_states(&t, None).unwrap();
        let full = full
            .index_select(&Tensor::new(&rows, &Device::Cpu).unwrap(), 0)
            .unwrap();
        let last = rms_norm(states.last().unwrap(), &base.norm, base.eps(), true).unwrap();
        assert!(max_diff(&last, &full) < 1e-5);
        // Earlier layers are other states, not copies of the last.
        assert!(max_diff(&states[0], states.last().unwrap()) > 1e-3);
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
                let delta = (b.matmul(a).unwrap() * cfg.scale()).unwrap();
                let w = (merged[&name].clone() + delta).unwrap();
                merged.insert(name, w);
            }
        }
        let theirs = reference_logits(dir.path(), merged, &ids);
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-4, "LoRA logits differ from the merged model by {d}");
    }

    #[test]
    fn fused_and_slow_forward_give_the_same_lora_gradients() {
        let dir = tiny_model_dir();
        let (mut base, tok) = load_tiny(dir.path());
        let lora = randomised_lora(&base, 5);
        let b = batch(&tok, &Device::Cpu);
        let run = |base: &Llama| loss_and_lora_grads(base, &b, &lora);
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
}
