//! Attention head: a task's examples, read as token states, -> its adapter's matrices by
//! attention pooling and a factored linear map, then the checkpoint tokens
//! (`train --attend K`, [`super::decoder::AttendHead`]).
//!
//! Why: the hyper-convolutions treat the encoder's width as a spatial axis and emit
//! normalised chunks, so what the examples say that no training task said (an unseen rule
//! value, `summer -> summerbad`'s `bad`) reaches the weights only through convolutions
//! over that axis; measured, they read unseen values slowly, and the base model's own
//! states no better than MiniLM's (README, "The base model's own states as the
//! condition"). This head is linear in the states it attends to: a direction of the states
//! that says what a task wants maps to a direction of the weights, and a new combination
//! of such directions to the same combination of their weights (after Generative Adapter,
//! Chen et al. 2024, arXiv 2411.05877, which maps the frozen model's own states to
//! adapters in this way).
//!
//! For an input (B, N, L, E), N examples of L token states each:
//! 1. each token's state is standardised over E (no affine); a row of RMS under
//!    [`PAD_RMS`] is padding (the states encoder's zero rows, with training's 1e-4 input
//!    noise on them) and gets no attention;
//! 2. r learned queries Q (r, E), one per rank: the weights softmax_j(q_i . h_j / sqrt(E))
//!    over all N L tokens of the task, Z (r, E) the weighted sum of the states (so the
//!    examples' order does not matter, unlike the convolutions');
//! 3. Y = Z U with U (E, k), then every matrix of the layout as the tokenizer stores it
//!    (B transposed) is Y V_m, (r, len_m): one product Y V with V (k, sum of len);
//! 4. the matrices tokenised ([`TokenLayout::tokenize_tensors`]), so that the rest of the
//!    generator (residual, detokeniser, training's losses, serving) reads this head like any
//!    other.
//!
//! Parameters r E + E k + k sum(len): for SmolLM2's q and v at r = 8, k = 64, E = 576 (its
//! states) 4,608 + 36,864 + 1,474,560 = 1,516,032. Q and U start as PyTorch's linear
//! layers, U(-1/sqrt(E), 1/sqrt(E)), so that the first weights are near uniform (mean
//! pooling); V U(-1/sqrt(k), 1/sqrt(k)).

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use super::decoder::{param, standardize, uniform, ParamSpec};
use super::tokenizer::TokenLayout;

/// A token state of RMS under this is padding.
pub const PAD_RMS: f64 = 1e-2;

/// The head's parameters for rank `r`, encoder width `e`, width `k` and matrices of `len`
/// columns in all (as the tokenizer stores them): the one place that names and shapes them.
pub fn attend_params(r: usize, e: usize, k: usize, len: usize) -> Vec<ParamSpec> {
    vec![
        uniform("queries", vec![r, e], e),
        uniform("u", vec![e, k], e),
        uniform("v", vec![k, len], k),
    ]
}

/// Multiply-add FLOPs (2 per MAC) of one adapter: the weights, the pooling, Y and Y V.
pub fn attend_flops(r: usize, tokens: usize, e: usize, k: usize, len: usize) -> u64 {
    let [r, t, e, k, len] = [r, tokens, e, k, len].map(|v| v as u64);
    2 * (2 * r * t * e + r * e * k + r * k * len)
}

#[derive(Debug, Clone)]
pub struct AttendLayer {
    queries: Tensor,
    u: Tensor,
    v: Tensor,
    layout: TokenLayout,
}

impl AttendLayer {
    pub fn new(vb: VarBuilder, layout: TokenLayout, e: usize, k: usize) -> Result<Self> {
        let specs = attend_params(layout.rank, e, k, layout.columns());
        let get = |name: &str| param(&vb, &specs, name);
        Ok(Self {
            queries: get("queries")?,
            u: get("u")?,
            v: get("v")?,
            layout,
        })
    }

    /// The attention weights, (B, N, L, E) -> (B, r, N L), and the standardised states
    /// (B, N L, E) they weigh.
    fn weights(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, n, l, e) = x.dims4()?;
        let x = x.reshape((b, n * l, e))?;
        let pad = x
            .sqr()?
            .mean_keepdim(D::Minus1)?
            .lt(PAD_RMS * PAD_RMS)?
            .to_dtype(DType::F32)?
            .transpose(1, 2)?; // (B, 1, N L)
        let h = standardize(&x)?;
        let logits = self
            .queries
            .broadcast_matmul(&h.transpose(1, 2)?)?
            .affine(1.0 / (e as f64).sqrt(), 0.0)?
            .broadcast_add(&(pad * -1e9)?)?;
        // Softmax from differentiable ops (candle's fused one drops gradients), the max
        // detached, as the neighbour head's.
        let z = logits
            .broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?
            .exp()?;
        Ok((z.broadcast_div(&z.sum_keepdim(D::Minus1)?)?, h))
    }

    /// Every matrix of the layout as the tokenizer stores it, side by side: (B, N, L, E) ->
    /// (B, r, sum of len).
    fn rows(&self, x: &Tensor) -> Result<Tensor> {
        let (p, h) = self.weights(x)?;
        let z = p.matmul(&h)?; // (B, r, E)
        Ok(z.broadcast_matmul(&self.u)?.broadcast_matmul(&self.v)?)
    }

    /// (B, N, L, E) -> (B, T, r + 2, C + 2).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = self.rows(x)?;
        let out = (0..rows.dim(0)?)
            .map(|i| self.layout.tokenize_rows(&rows.get(i)?))
            .collect::<Result<Vec<_>>>()?;
        ensure!(!out.is_empty(), "an empty batch");
        Ok(Tensor::stack(&out, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::peft::Module;
    use crate::generator::decoder::tests::tiny_dims;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn layer(e: usize, k: usize) -> (AttendLayer, VarMap) {
        let layout = TokenLayout::b_only(&tiny_dims(), 2, &[Module::Q, Module::V], 16).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        (AttendLayer::new(vb, layout, e, k).unwrap(), varmap)
    }

    fn set(varmap: &VarMap, name: &str, t: Tensor) {
        varmap.data().lock().unwrap()[name].set(&t).unwrap();
    }

    fn input(dims: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// One query over two hand-picked tokens: the weights and the matrices by hand; zero
    /// rows (padding) and the examples' order change nothing.
    #[test]
    fn attention_head_by_hand() {
        let (head, varmap) = layer(2, 1);
        // Tokens [3, 1] and [1, 3] standardise to [1, -1] and [-1, 1].
        let q = Tensor::new(&[[2f32, 0.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        set(&varmap, "queries", q);
        set(
            &varmap,
            "u",
            Tensor::new(&[[1f32], [0.0]], &Device::Cpu).unwrap(),
        );
        let len = head.layout.columns();
        let v: Vec<f32> = (0..len).map(|i| i as f32 / len as f32).collect();
        set(
            &varmap,
            "v",
            Tensor::from_vec(v.clone(), (1, len), &Device::Cpu).unwrap(),
        );
        let two = Tensor::new(&[[[[3f32, 1.0]], [[1.0, 3.0]]]], &Device::Cpu).unwrap();
        let (p, _) = head.weights(&two).unwrap();
        // Query 0: logits (2, -2) / sqrt(2); query 1: uniform.
        let a = (2f32 * 2f32.sqrt()).exp();
        let want0 = [a / (a + 1.0), 1.0 / (a + 1.0)];
        let got = p.get(0).unwrap().to_vec2::<f32>().unwrap();
        // (Within 1e-4: the standardisation's epsilon.)
        for (g, w) in got[0].iter().zip(want0) {
            assert!((g - w).abs() < 1e-4, "{got:?}");
        }
        assert!(got[1].iter().all(|g| (g - 0.5).abs() < 1e-6), "{got:?}");
        // Z U is h's first coordinate weighted: w0 - w1 for query 0, 0 for query 1.
        let rows_of = |x: &Tensor| -> Vec<Vec<f32>> {
            head.rows(x).unwrap().get(0).unwrap().to_vec2().unwrap()
        };
        let rows = rows_of(&two);
        let y0 = want0[0] - want0[1];
        for (j, want) in v.iter().enumerate() {
            assert!((rows[0][j] - y0 * want).abs() < 1e-4);
            assert!(rows[1][j].abs() < 1e-6);
        }
        // A padding row (zero, or the training noise on it) and the other order: same.
        let padded = Tensor::new(
            &[[[[1f32, 3.0], [0.0, 0.0]], [[1e-4, -1e-4], [3.0, 1.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        let same = rows_of(&padded);
        for (a, b) in same.iter().flatten().zip(rows.iter().flatten()) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    /// The token stack is the layout's tokens of the head's matrices, every parameter gets
    /// a gradient through it, and each sample of a batch is its own.
    #[test]
    fn attention_head_gives_tokens_and_gradients() {
        let (head, varmap) = layer(8, 4);
        let x = input((2, 3, 5, 8), 1);
        let y = head.forward(&x).unwrap();
        let (t, h, w) = head.layout.shape();
        assert_eq!(y.dims(), [2, t, h, w]);
        let alone = head.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
        let diff = crate::testing::max_abs_diff(&y.get(1).unwrap(), &alone.get(0).unwrap());
        assert!(diff < 1e-6);
        let loss = head
            .layout
            .detokenize_tensors(&y.get(0).unwrap())
            .unwrap()
            .iter()
            .map(|m| m.sqr().unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let g = crate::testing::abs_sum(grads.get(var.as_tensor()).expect(name));
            assert!(g > 0.0 && g.is_finite(), "{name}: {g}");
        }
    }
}
