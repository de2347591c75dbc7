//! Checkpoint tokenizer: a LoRA adapter <-> a stack of weight tokens (DnD method, section 2).
//!
//! The matrices are visited in a fixed order: layer by layer; inside a layer the target
//! modules in the order q, k, v, o, up, gate, down; A before B. A has shape (r, in); B has
//! shape (out, r) and is transposed to (r, out). Each matrix is cut along its long (second)
//! axis into chunks of width C, so a chunk is (r, w) with w <= C.
//!
//! A chunk becomes one token of shape (r + 2, C + 2):
//! - the chunk, normalised by its own mean m and standard deviation s (unbiased, as
//!   `torch.std`; s = 1 when it is undefined, i.e. a one-element chunk, or zero, i.e. a
//!   constant chunk, where the reference would divide by zero), sits in the top-left corner;
//! - cells that carry no weight (a chunk narrower than C) are NaN;
//! - with m' = 8 m and s' = ln(0.9 s + 0.1) + 1.6, the last two rows hold the repeating pair
//!   [m', s'] along the width and the last two columns hold [m', s'] in every row.
//!
//! Decoding reads the statistics back the way the reference does: for each row parity g
//! (0, 1) it averages the width border (row r + g) and the height border (the rows of parity
//! g), inverts the two maps, then averages the two parities; the chunk is de-normalised
//! with them. The NaN cells are never read, so decoding works on any decoder output.
//!
//! Precision: a round trip is exact to ~1e-6 relative for chunks with std >= 1e-3. Below
//! that the border's f32 s' limits it: inverting s' subtracts 0.1 from exp(s' - 1.6), so a
//! chunk of std s comes back with a relative error of about 4e-9 / s. This is the method's
//! format, kept as is so that tokens match the reference.
//!
//! [`TokenLayout`] is derived from [`LlamaDims`], the rank, the target modules and C, so it
//! covers any llama-family model including grouped-query attention.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::format::peft::{tensor_name, LlamaDims, LoraAdapter, Module, PeftConfig};

/// Scale of the mean in the border: m' = MEAN_SCALE * m.
pub const MEAN_SCALE: f64 = 8.0;
/// Offset of the log-std in the border: s' = ln(0.9 s + 0.1) + STD_BIAS.
pub const STD_BIAS: f64 = 1.6;

/// One LoRA matrix in the token stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixSlot {
    pub layer: usize,
    pub module: Module,
    /// `false` for A (r, in), `true` for B (out, r) stored transposed as (r, out).
    pub is_b: bool,
    /// Length of the long axis: `in` for A, `out` for B.
    pub len: usize,
    /// Index of the first token of this matrix.
    pub first_token: usize,
    /// Number of tokens, `ceil(len / C)`.
    pub n_tokens: usize,
}

impl MatrixSlot {
    /// PEFT tensor name of this matrix.
    pub fn name(&self) -> String {
        tensor_name(self.layer, self.module, self.is_b)
    }
}

/// Where every matrix of an adapter lives in the token stream, for one base model, rank,
/// set of target modules and chunk width.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLayout {
    pub dims: LlamaDims,
    pub rank: usize,
    /// Target modules in checkpoint order (q, k, v, o, up, gate, down), deduplicated.
    pub modules: Vec<Module>,
    /// Chunk width C (even, so that the [m', s'] pairs tile the width border).
    pub chunk: usize,
    pub slots: Vec<MatrixSlot>,
    pub n_tokens: usize,
    /// Whether the A matrices are tokens too; false for a generator whose A is frozen and
    /// shared (`DecoderConfig::frozen_a_seed`): its tokens are the B matrices only.
    pub with_a: bool,
}

impl TokenLayout {
    /// Every A and B matrix (the method's layout).
    pub fn new(dims: &LlamaDims, rank: usize, modules: &[Module], chunk: usize) -> Result<Self> {
        Self::build(dims, rank, modules, chunk, true)
    }

    /// The B matrices only, in the same order.
    pub fn b_only(dims: &LlamaDims, rank: usize, modules: &[Module], chunk: usize) -> Result<Self> {
        Self::build(dims, rank, modules, chunk, false)
    }

    fn build(
        dims: &LlamaDims,
        rank: usize,
        modules: &[Module],
        chunk: usize,
        with_a: bool,
    ) -> Result<Self> {
        ensure!(rank >= 1, "LoRA rank must be at least 1");
        ensure!(
            chunk >= 2 && chunk.is_multiple_of(2),
            "chunk width C must be an even number >= 2, got {chunk}"
        );
        ensure!(!modules.is_empty(), "no target modules");
        ensure!(dims.num_hidden_layers >= 1, "base model has no layers");
        let mut modules = modules.to_vec();
        modules.sort();
        modules.dedup();
        let mut slots = Vec::new();
        let mut next = 0;
        for layer in 0..dims.num_hidden_layers {
            for &module in &modules {
                let (inp, out) = module.dims(dims);
                for (is_b, len) in [(false, inp), (true, out)] {
                    ensure!(len >= 1, "{} has a zero dimension", module.name());
                    if !is_b && !with_a {
                        continue;
                    }
                    let n_tokens = len.div_ceil(chunk);
                    slots.push(MatrixSlot {
                        layer,
                        module,
                        is_b,
                        len,
                        first_token: next,
                        n_tokens,
                    });
                    next += n_tokens;
                }
            }
        }
        Ok(Self {
            dims: dims.clone(),
            rank,
            modules,
            chunk,
            slots,
            n_tokens: next,
            with_a,
        })
    }

    /// Token height r + 2.
    pub fn token_h(&self) -> usize {
        self.rank + 2
    }

    /// Token width C + 2.
    pub fn token_w(&self) -> usize {
        self.chunk + 2
    }

    /// Shape of the whole token stack: (T, r + 2, C + 2).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.n_tokens, self.token_h(), self.token_w())
    }

    /// Number of tokens of one layer (every layer has the same count).
    pub fn tokens_per_layer(&self) -> usize {
        self.n_tokens / self.dims.num_hidden_layers
    }

    /// Number of LoRA weights the tokens carry.
    pub fn n_weights(&self) -> usize {
        self.columns() * self.rank
    }

    /// Columns of every matrix as the tokenizer stores it ((r, len), B transposed), in all.
    pub fn columns(&self) -> usize {
        self.slots.iter().map(|s| s.len).sum()
    }

    /// The matrices as (r, len) row-major f32 data, in slot order, taken from an adapter whose
    /// rank and tensor shapes must match this layout.
    fn matrices(&self, adapter: &LoraAdapter) -> Result<Vec<Vec<f32>>> {
        ensure!(
            adapter.config.r == self.rank,
            "adapter has rank {}, the token layout expects {}",
            adapter.config.r,
            self.rank
        );
        let r = self.rank;
        let mut out = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let name = slot.name();
            let t = adapter
                .tensors
                .get(&name)
                .with_context(|| format!("adapter has no tensor {name}"))?;
            let expected = if slot.is_b {
                [slot.len, r]
            } else {
                [r, slot.len]
            };
            ensure!(
                t.dims() == expected,
                "tensor {name} has shape {:?}, expected {:?}",
                t.dims(),
                expected
            );
            let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let t = if slot.is_b { t.t()? } else { t };
            out.push(t.contiguous()?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Tokenizes an adapter into a (T, r + 2, C + 2) F32 CPU tensor; empty cells are NaN.
    pub fn tokenize(&self, adapter: &LoraAdapter) -> Result<Tensor> {
        let mats = self.matrices(adapter)?;
        let (h, w) = (self.token_h(), self.token_w());
        let (r, c) = (self.rank, self.chunk);
        let mut data = vec![f32::NAN; self.n_tokens * h * w];
        for (slot, mat) in self.slots.iter().zip(&mats) {
            for j in 0..slot.n_tokens {
                let start = j * c;
                let width = c.min(slot.len - start);
                let (m, s) = chunk_stats(mat, slot.len, start, width, r);
                let token = &mut data[(slot.first_token + j) * h * w..][..h * w];
                for i in 0..r {
                    for k in 0..width {
                        let x = mat[i * slot.len + start + k] as f64;
                        token[i * w + k] = ((x - m) / s) as f32;
                    }
                }
                let mp = (MEAN_SCALE * m) as f32;
                let sp = ((0.9 * s + 0.1).ln() + STD_BIAS) as f32;
                for row in r..h {
                    for k in 0..w {
                        token[row * w + k] = if k % 2 == 0 { mp } else { sp };
                    }
                }
                for row in 0..h {
                    token[row * w + c] = mp;
                    token[row * w + c + 1] = sp;
                }
            }
        }
        Ok(Tensor::from_vec(data, (self.n_tokens, h, w), &Device::Cpu)?)
    }

    /// 1 where a token cell carries a weight or a statistic, 0 where it is NaN (empty):
    /// shape (T, r + 2, C + 2), F32 on the CPU. The training loss uses it.
    pub fn valid_mask(&self) -> Result<Tensor> {
        let (h, w) = (self.token_h(), self.token_w());
        let (r, c) = (self.rank, self.chunk);
        let mut data = vec![0f32; self.n_tokens * h * w];
        for slot in &self.slots {
            for j in 0..slot.n_tokens {
                let width = c.min(slot.len - j * c);
                let token = &mut data[(slot.first_token + j) * h * w..][..h * w];
                for (row, cells) in token.chunks_mut(w).enumerate() {
                    for (k, cell) in cells.iter_mut().enumerate() {
                        if row >= r || k >= c || k < width {
                            *cell = 1.0;
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(data, (self.n_tokens, h, w), &Device::Cpu)?)
    }

    /// Turns a token stack (T, r + 2, C + 2), or (1, T, r + 2, C + 2), back into an adapter
    /// with F32 CPU tensors and a PEFT config for this layout (B matrices only when the
    /// layout has no A: the caller adds the frozen A).
    pub fn detokenize(&self, tokens: &Tensor, lora_alpha: f64, base: &str) -> Result<LoraAdapter> {
        let tokens = match tokens.rank() {
            4 if tokens.dim(0)? == 1 => tokens.squeeze(0)?,
            _ => tokens.clone(),
        };
        let (t, h, w) = tokens.dims3().context("tokens must be (T, r + 2, C + 2)")?;
        if (t, h, w) != self.shape() {
            bail!(
                "token stack has shape ({t}, {h}, {w}), the layout expects {:?}",
                self.shape()
            );
        }
        let data = tokens
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (r, c) = (self.rank, self.chunk);
        let mut tensors = std::collections::BTreeMap::new();
        for slot in &self.slots {
            let mut mat = vec![0f32; r * slot.len];
            for j in 0..slot.n_tokens {
                let start = j * c;
                let width = c.min(slot.len - start);
                let token = &data[(slot.first_token + j) * h * w..][..h * w];
                let (m, s) = border_stats(token, h, w, c);
                for i in 0..r {
                    for k in 0..width {
                        let z = token[i * w + k] as f64;
                        mat[i * slot.len + start + k] = (z * s + m) as f32;
                    }
                }
            }
            let mat = Tensor::from_vec(mat, (r, slot.len), &Device::Cpu)?;
            let mat = if slot.is_b {
                mat.t()?.contiguous()?
            } else {
                mat
            };
            tensors.insert(slot.name(), mat);
        }
        Ok(LoraAdapter {
            config: PeftConfig::new(r, lora_alpha, &self.modules, base),
            tensors,
        })
    }

    /// [`Self::detokenize`] as tensor operations, so that gradients flow from the matrices
    /// back into the tokens (end-to-end generator training): a (T, r + 2, C + 2) stack ->
    /// one matrix per slot, in slot order and PEFT orientation (A (r, in), B (out, r)), on the
    /// stack's device. Same reading of the border as [`border_stats`], in F32 (tested equal
    /// to [`Self::detokenize`]).
    pub fn detokenize_tensors(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        let (t, h, w) = tokens.dims3().context("tokens must be (T, r + 2, C + 2)")?;
        ensure!(
            (t, h, w) == self.shape(),
            "token stack has shape ({t}, {h}, {w}), the layout expects {:?}",
            self.shape()
        );
        let (r, c) = (self.rank, self.chunk);
        let (mut mean, mut std) = (None::<Tensor>, None::<Tensor>);
        for g in 0..2 {
            // Width border: row h - 2 + g holds [m', s'] pairs; height border: columns
            // c, c + 1 of the rows of parity g.
            let width = tokens
                .narrow(1, h - 2 + g, 1)?
                .reshape((t, w / 2, 2))?
                .mean(1)?;
            let rows: Vec<u32> = (g..h).step_by(2).map(|i| i as u32).collect();
            let rows = Tensor::new(rows.as_slice(), tokens.device())?;
            let height = tokens.index_select(&rows, 1)?.narrow(2, c, 2)?.mean(1)?;
            let both = ((width + height)? * 0.5)?;
            let m = (both.narrow(1, 0, 1)? / MEAN_SCALE)?;
            let s = ((both.narrow(1, 1, 1)? - STD_BIAS)?.exp()? - 0.1)?;
            let s = (s / 0.9)?;
            mean = Some(match mean {
                None => m,
                Some(acc) => (acc + m)?,
            });
            std = Some(match std {
                None => s,
                Some(acc) => (acc + s)?,
            });
        }
        let mean = (mean.expect("two parities") * 0.5)?.reshape((t, 1, 1))?;
        let std = (std.expect("two parities") * 0.5)?.reshape((t, 1, 1))?;
        let chunks = tokens
            .narrow(1, 0, r)?
            .narrow(2, 0, c)?
            .broadcast_mul(&std)?
            .broadcast_add(&mean)?;
        self.slots
            .iter()
            .map(|slot| {
                let n = slot.n_tokens;
                let mat = chunks
                    .narrow(0, slot.first_token, n)?
                    .transpose(0, 1)?
                    .reshape((r, n * c))?
                    .narrow(1, 0, slot.len)?;
                Ok(match slot.is_b {
                    true => mat.t()?,
                    false => mat,
                })
            })
            .collect()
    }
}

impl TokenLayout {
    /// [`Self::tokenize`] as tensor operations, the inverse of
    /// [`Self::detokenize_tensors`]: one matrix per slot, in slot order and PEFT
    /// orientation -> the (T, r + 2, C + 2) stack, differentiable in the matrices, so that a
    /// head that makes matrices (`generator::attend`) gives the token stack that every other
    /// part reads. Empty cells are 0 instead of NaN: no reader looks at them, and a NaN
    /// would poison the gradients (tested equal to [`Self::tokenize`] elsewhere).
    pub fn tokenize_tensors(&self, mats: &[Tensor]) -> Result<Tensor> {
        ensure!(
            mats.len() == self.slots.len(),
            "{} matrices for {} slots",
            mats.len(),
            self.slots.len()
        );
        let r = self.rank;
        let stored = self
            .slots
            .iter()
            .zip(mats)
            .map(|(slot, mat)| {
                let mat = match slot.is_b {
                    true => mat.t()?,
                    false => mat.clone(),
                };
                ensure!(
                    mat.dims() == [r, slot.len],
                    "{}: a ({r}, {}) matrix as the tokenizer stores it, got {:?}",
                    slot.name(),
                    slot.len,
                    mat.dims()
                );
                Ok(mat)
            })
            .collect::<Result<Vec<_>>>()?;
        self.tokenize_rows(&Tensor::cat(&stored, 1)?)
    }

    /// [`Self::tokenize_tensors`] of the matrices as the tokenizer stores them, side by side
    /// in slot order: (r, [`Self::columns`]) -> (T, r + 2, C + 2).
    pub fn tokenize_rows(&self, rows: &Tensor) -> Result<Tensor> {
        let (r, c) = (self.rank, self.chunk);
        ensure!(
            rows.dims() == [r, self.columns()],
            "matrices side by side must be ({r}, {}), got {:?}",
            self.columns(),
            rows.dims()
        );
        let mut tokens = Vec::with_capacity(self.slots.len() * 2);
        let mut start = 0;
        for slot in &self.slots {
            let mat = rows.narrow(1, start, slot.len)?;
            start += slot.len;
            let full = slot.len / c;
            if full > 0 {
                let chunks = mat.narrow(1, 0, full * c)?.reshape((r, full, c))?;
                tokens.push(self.tokens_of(&chunks.transpose(0, 1)?)?);
            }
            if slot.len > full * c {
                let rest = mat.narrow(1, full * c, slot.len - full * c)?;
                tokens.push(self.tokens_of(&rest.unsqueeze(0)?)?);
            }
        }
        Ok(Tensor::cat(&tokens, 0)?)
    }

    /// (n, r, width) chunks -> (n, r + 2, C + 2) tokens as the module doc lays them out.
    fn tokens_of(&self, chunks: &Tensor) -> Result<Tensor> {
        let (n, r, width) = chunks.dims3()?;
        let c = self.chunk;
        let flat = chunks.reshape((n, r * width))?;
        let mean = flat.mean_keepdim(1)?;
        let std = match r * width {
            1 => mean.ones_like()?,
            k => {
                let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)? / (k - 1) as f64)?;
                // Floored before the root, whose gradient at zero is infinite.
                let std = var.maximum(f32::MIN_POSITIVE)?.sqrt()?;
                var.gt(0.0)?.where_cond(&std, &std.ones_like()?)?
            }
        };
        let z = chunks
            .broadcast_sub(&mean.unsqueeze(2)?)?
            .broadcast_div(&std.unsqueeze(2)?)?
            .pad_with_zeros(2, 0, c - width)?;
        let mp = (&mean * MEAN_SCALE)?;
        let sp = (((std * 0.9)? + 0.1)?.log()? + STD_BIAS)?;
        let pair = Tensor::cat(&[&mp, &sp], 1)?.unsqueeze(1)?; // (n, 1, 2)
        let column = pair.broadcast_as((n, r, 2))?;
        let border = pair
            .broadcast_as((n, (c + 2) / 2, 2))?
            .reshape((n, 1, c + 2))?
            .broadcast_as((n, 2, c + 2))?;
        Ok(Tensor::cat(
            &[&Tensor::cat(&[&z, &column], 2)?, &border],
            1,
        )?)
    }
}

/// Mean and unbiased std of the (r, width) chunk starting at column `start` of a row-major
/// (r, len) matrix; std 1 when undefined or zero.
fn chunk_stats(mat: &[f32], len: usize, start: usize, width: usize, r: usize) -> (f64, f64) {
    let n = (r * width) as f64;
    let values = (0..r).flat_map(|i| mat[i * len + start..][..width].iter().map(|&x| x as f64));
    let mean = values.clone().sum::<f64>() / n;
    let var = values.map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    let std = var.sqrt();
    let std = if std.is_finite() && std > 0.0 {
        std
    } else {
        1.0
    };
    (mean, std)
}

/// Mean and std read back from a token's border (see the module doc).
fn border_stats(token: &[f32], h: usize, w: usize, c: usize) -> (f64, f64) {
    let (mut mean, mut std) = (0.0, 0.0);
    for g in 0..2 {
        // Width border: row h - 2 + g, pairs [m', s'] along the width.
        let row = &token[(h - 2 + g) * w..][..w];
        let (mut wm, mut ws) = (0.0f64, 0.0f64);
        for k in (0..w).step_by(2) {
            wm += row[k] as f64;
            ws += row[k + 1] as f64;
        }
        let pairs = (w / 2) as f64;
        let (wm, ws) = (wm / pairs, ws / pairs);
        // Height border: columns c, c + 1 of the rows with parity g.
        let (mut hm, mut hs, mut count) = (0.0f64, 0.0f64, 0.0f64);
        for i in (g..h).step_by(2) {
            hm += token[i * w + c] as f64;
            hs += token[i * w + c + 1] as f64;
            count += 1.0;
        }
        let mp = 0.5 * (wm + hm / count);
        let sp = 0.5 * (ws + hs / count);
        mean += mp / MEAN_SCALE;
        std += ((sp - STD_BIAS).exp() - 0.1) / 0.9;
    }
    (mean / 2.0, std / 2.0)
}

/// Dims of SmolLM2-135M, the project's default base model.
pub fn smollm2_135m_dims() -> LlamaDims {
    LlamaDims {
        hidden_size: 576,
        intermediate_size: 1536,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        num_hidden_layers: 30,
        head_dim: Some(64),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A random adapter for a layout: entries N(0, scale) drawn from a seeded RNG.
    pub(crate) fn random_adapter(layout: &TokenLayout, scale: f32, seed: u64) -> LoraAdapter {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = std::collections::BTreeMap::new();
        for slot in &layout.slots {
            let n = layout.rank * slot.len;
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    // Box-Muller
                    let u1: f32 = rng.random_range(1e-7..1.0);
                    let u2: f32 = rng.random();
                    scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect();
            let shape = if slot.is_b {
                (slot.len, layout.rank)
            } else {
                (layout.rank, slot.len)
            };
            tensors.insert(
                slot.name(),
                Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
            );
        }
        LoraAdapter {
            config: PeftConfig::new(layout.rank, 16.0, &layout.modules, "test"),
            tensors,
        }
    }

    fn max_rel_err(a: &LoraAdapter, b: &LoraAdapter) -> f32 {
        let mut worst = 0f32;
        assert_eq!(a.tensors.len(), b.tensors.len());
        for (name, x) in &a.tensors {
            let y = &b.tensors[name];
            assert_eq!(x.dims(), y.dims(), "{name}");
            let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            for (p, q) in x.iter().zip(&y) {
                worst = worst.max((p - q).abs() / scale);
            }
        }
        worst
    }

    /// The test model's dims with 48 and 80 wide layers, which are not multiples of the
    /// chunk width 32, so partial chunks are exercised.
    fn tiny_dims() -> LlamaDims {
        LlamaDims {
            hidden_size: 48,
            intermediate_size: 80,
            head_dim: None,
            ..crate::testing::tiny_dims()
        }
    }

    #[test]
    fn smollm2_layout_matches_hand_count() {
        let d = smollm2_135m_dims();
        // q: 576 -> 576, v: 576 -> 3 * 64 = 192. C = 64:
        // q A 576/64 = 9, q B 9, v A 9, v B 192/64 = 3 -> 30 tokens per layer.
        let l = TokenLayout::new(&d, 8, &[Module::V, Module::Q], 64).unwrap();
        assert_eq!(l.modules, vec![Module::Q, Module::V]);
        assert_eq!(l.tokens_per_layer(), 30);
        assert_eq!(l.shape(), (900, 10, 66));
        let lens: Vec<_> = l.slots[..4].iter().map(|s| (s.len, s.n_tokens)).collect();
        assert_eq!(lens, vec![(576, 9), (576, 9), (576, 9), (192, 3)]);
        assert_eq!(l.slots[4].first_token, 30);
        assert_eq!(l.slots[4].layer, 1);
        // All seven modules, C = 96: q 6+6, k 6+2, v 6+2, o 6+6, up 6+16, gate 6+16,
        // down 16+6 -> 106 tokens per layer.
        let l = TokenLayout::new(&d, 8, &Module::ALL, 96).unwrap();
        assert_eq!(l.tokens_per_layer(), 106);
        assert_eq!(l.n_tokens, 106 * 30);
        let names: Vec<_> = l.slots[..4].iter().map(|s| (s.module, s.is_b)).collect();
        assert_eq!(
            names,
            vec![
                (Module::Q, false),
                (Module::Q, true),
                (Module::K, false),
                (Module::K, true)
            ]
        );
    }

    #[test]
    fn qwen_0_5b_layout_matches_paper() {
        // Qwen2.5-0.5B, r = 8, C = 128: 179 tokens per layer, 4296 in all (method doc).
        let d = LlamaDims {
            hidden_size: 896,
            intermediate_size: 4864,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            num_hidden_layers: 24,
            head_dim: None,
        };
        let l = TokenLayout::new(&d, 8, &Module::ALL, 128).unwrap();
        assert_eq!(l.tokens_per_layer(), 179);
        assert_eq!(l.shape(), (4296, 10, 130));
    }

    #[test]
    fn round_trip_random_and_realistic() {
        let d = tiny_dims();
        // 48 and 80 are not multiples of 32: partial chunks with NaN cells are exercised.
        let l = TokenLayout::new(&d, 4, &Module::ALL, 32).unwrap();
        // Scales of LoRA entries: unit, A after init (~0.02), B after training (~1e-3).
        for (scale, seed) in [(1.0, 1), (0.02, 2), (1e-3, 3)] {
            let a = random_adapter(&l, scale, seed);
            let t = l.tokenize(&a).unwrap();
            assert_eq!(t.dims3().unwrap(), l.shape());
            let b = l.detokenize(&t, 16.0, "test").unwrap();
            b.validate(&d).unwrap();
            let err = max_rel_err(&a, &b);
            assert!(err < 1e-5, "scale {scale}: relative error {err}");
        }
        // The format's own limit: s' = ln(0.9 s + 0.1) + 1.6 is stored in f32, and inverting
        // it subtracts 0.1 from exp(s' - 1.6) ~ 0.1 + 0.9 s, so a chunk of std s comes back
        // with a relative error of about 4e-9 / s (1.5e-5 at s = 3e-4).
        let a = random_adapter(&l, 3e-4, 5);
        let b = l
            .detokenize(&l.tokenize(&a).unwrap(), 16.0, "test")
            .unwrap();
        let err = max_rel_err(&a, &b);
        assert!(err < 5e-5, "scale 3e-4: relative error {err}");
        // Realistic: B near zero (just after LoRA init) and one constant chunk.
        let mut a = random_adapter(&l, 0.01, 4);
        let name = tensor_name(0, Module::Q, true);
        let (out, r) = a.tensors[&name].dims2().unwrap();
        a.tensors.insert(
            name,
            Tensor::zeros((out, r), DType::F32, &Device::Cpu).unwrap(),
        );
        let name = tensor_name(1, Module::Down, false);
        let (r, inp) = a.tensors[&name].dims2().unwrap();
        a.tensors
            .insert(name, Tensor::full(0.25f32, (r, inp), &Device::Cpu).unwrap());
        let t = l.tokenize(&a).unwrap();
        let b = l.detokenize(&t, 16.0, "test").unwrap();
        let err = max_rel_err(&a, &b);
        assert!(err < 1e-5, "realistic: relative error {err}");
    }

    #[test]
    fn tensor_detokenize_equals_detokenize_and_passes_gradients() {
        let layout = TokenLayout::new(&tiny_dims(), 4, &[Module::Q, Module::V], 32).unwrap();
        let adapter = random_adapter(&layout, 0.02, 3);
        let tokens = layout.tokenize(&adapter).unwrap();
        // Any decoder output must decode, so fill the NaN cells with noise.
        let tokens = tokens
            .ne(&tokens)
            .unwrap()
            .where_cond(&tokens.ones_like().unwrap(), &tokens)
            .unwrap();
        let want = layout.detokenize(&tokens, 16.0, "test").unwrap();
        let var = candle_core::Var::from_tensor(&tokens).unwrap();
        let mats = layout.detokenize_tensors(var.as_tensor()).unwrap();
        assert_eq!(mats.len(), layout.slots.len());
        let mut sum = None::<Tensor>;
        for (slot, m) in layout.slots.iter().zip(&mats) {
            let w = &want.tensors[&slot.name()];
            assert_eq!(m.dims(), w.dims(), "{}", slot.name());
            let err = (m - w).unwrap().abs().unwrap().max_all().unwrap();
            let scale = w
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                err.to_scalar::<f32>().unwrap() <= 1e-5 * scale,
                "{}",
                slot.name()
            );
            let s = m.sqr().unwrap().sum_all().unwrap();
            sum = Some(match sum {
                None => s,
                Some(acc) => (acc + s).unwrap(),
            });
        }
        let grads = sum.unwrap().backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .expect("a gradient for the tokens");
        let g_abs = crate::testing::abs_sum(g);
        assert!(g_abs > 0.0 && g_abs.is_finite());
    }

    #[test]
    fn tensor_tokenize_equals_tokenize_and_inverts_detokenize() {
        // tiny_dims' 48- and 80-wide matrices leave partial chunks at C = 32.
        let layout = TokenLayout::new(&tiny_dims(), 4, &[Module::Q, Module::V], 32).unwrap();
        let adapter = random_adapter(&layout, 0.02, 5);
        let mats: Vec<Tensor> = layout
            .slots
            .iter()
            .map(|s| adapter.tensors[&s.name()].clone())
            .collect();
        let vars: Vec<candle_core::Var> = mats
            .iter()
            .map(|m| candle_core::Var::from_tensor(m).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let got = layout.tokenize_tensors(&tensors).unwrap();
        let want = layout.tokenize(&adapter).unwrap();
        assert_eq!(got.dims(), want.dims());
        let got_v = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want_v = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (g, w)) in got_v.iter().zip(&want_v).enumerate() {
            match w.is_nan() {
                true => assert_eq!(*g, 0.0, "empty cell {i}"),
                false => assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "cell {i}: {g} {w}"
                ),
            }
        }
        let back = layout.detokenize_tensors(&got).unwrap();
        for (m, b) in mats.iter().zip(&back) {
            assert!(crate::testing::max_abs_diff(m, b) < 1e-6);
        }
        // The round trip is the identity, so its gradient is too (1.5 everywhere).
        let sum = back
            .iter()
            .map(|b| (b * 1.5).unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let grads = sum.backward().unwrap();
        for v in &vars {
            let g = grads
                .get(v.as_tensor())
                .expect("a gradient for every matrix");
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(g.iter().all(|x| (x - 1.5).abs() < 1e-3), "{g:?}");
        }
        // A constant chunk (std 0) reads back as itself, its gradient finite.
        let mut flat = mats.clone();
        flat[0] = flat[0].ones_like().unwrap();
        let back = layout
            .detokenize_tensors(&layout.tokenize_tensors(&flat).unwrap())
            .unwrap();
        assert!(crate::testing::max_abs_diff(&back[0], &flat[0]) < 1e-6);
    }

    #[test]
    fn token_format_border_and_nan() {
        let d = tiny_dims();
        let l = TokenLayout::new(&d, 2, &[Module::Q], 32).unwrap();
        let a = random_adapter(&l, 0.5, 7);
        let t = l.tokenize(&a).unwrap();
        // q A is (2, 48): chunks of width 32 and 16; the second has NaN in columns 16..32.
        let second = t.get(1).unwrap().to_vec2::<f32>().unwrap();
        assert!(second[0][15].is_finite() && second[0][16].is_nan() && second[1][31].is_nan());
        let (mp, sp) = (second[0][32], second[0][33]);
        for row in &second {
            assert_eq!((row[32], row[33]), (mp, sp));
        }
        for row in &second[2..] {
            for (k, v) in row.iter().enumerate() {
                assert_eq!(*v, if k % 2 == 0 { mp } else { sp });
            }
        }
        // The normalised chunk has mean 0 and unbiased std 1.
        let vals: Vec<f64> = second[..2]
            .iter()
            .flat_map(|r| r[..16].iter().map(|&v| v as f64))
            .collect();
        let mean = vals.iter().sum::<f64>() / 32.0;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 31.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4);
        let mask = l
            .valid_mask()
            .unwrap()
            .get(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, mrow) in second.iter().zip(&mask) {
            for (v, m) in row.iter().zip(mrow) {
                assert_eq!(v.is_nan(), *m == 0.0);
            }
        }
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let d = tiny_dims();
        assert!(TokenLayout::new(&d, 4, &[Module::Q], 33).is_err());
        let l = TokenLayout::new(&d, 4, &[Module::Q], 32).unwrap();
        let l8 = TokenLayout::new(&d, 8, &[Module::Q], 32).unwrap();
        let a = random_adapter(&l8, 1.0, 1);
        let e = l.tokenize(&a).unwrap_err().to_string();
        assert!(e.contains("rank 8"), "{e}");
        let t = Tensor::zeros((3, 6, 34), DType::F32, &Device::Cpu).unwrap();
        let e = l.detokenize(&t, 16.0, "").unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
    }
}
