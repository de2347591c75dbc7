//! Causal grouped-query self-attention with rotary embeddings (Hugging Face half-split
//! layout), over a batch whose sequences may share a prefix that is computed once.
//!
//! Grouped-query attention groups the query heads of one key/value head instead of copying
//! keys and values: query heads `h = kv * rep + r` share key/value head `kv`, and their rows
//! are stacked inside that head (see [`attend`]).

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::linear::Linear;
use super::ops::{masked_softmax, rope};
use crate::format::peft::LlamaDims;
use crate::training::lora::LoraWeights;

/// What every layer shares in one forward pass: the row layout (a prefix of `p` rows that
/// `b` sequences of `s` further rows share), rotary tables, masks, and the op settings.
pub struct Positions {
    pub b: usize,
    pub s: usize,
    pub p: usize,
    /// Rotary tables of the suffix positions `p..p + s`.
    cos_s: Tensor,
    sin_s: Tensor,
    /// Rotary tables of the prefix positions `0..p` (`None` without a prefix).
    prefix_tables: Option<(Tensor, Tensor)>,
    /// Suffix queries see the whole prefix and their own sequence causally.
    mask_s: Tensor,
    /// Prefix queries see the prefix causally.
    mask_p: Tensor,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Fused ops with explicit backward passes, or candle's slow composite ops.
    pub fused: bool,
}

impl Positions {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dims: &LlamaDims,
        rope_theta: f32,
        p: usize,
        b: usize,
        s: usize,
        eps: f32,
        fused: bool,
        device: &Device,
    ) -> Result<Self> {
        let rep = dims.num_attention_heads / dims.num_key_value_heads;
        let (cos, sin) = rope_tables(dims.head_dim(), rope_theta, p + s, device)?;
        let prefix_tables = match p > 0 {
            true => Some((cos.narrow(0, 0, p)?, sin.narrow(0, 0, p)?)),
            false => None,
        };
        Ok(Self {
            b,
            s,
            p,
            cos_s: cos.narrow(0, p, s)?,
            sin_s: sin.narrow(0, p, s)?,
            prefix_tables,
            mask_s: mask(rep, p, s, device)?,
            mask_p: mask(rep, 0, p, device)?,
            eps,
            fused,
        })
    }
}

/// cos and sin tables (t, head_dim / 2) for positions 0..t, as Hugging Face computes
/// them: inv_freq_i = theta^(-2i / head_dim).
fn rope_tables(hd: usize, rope_theta: f32, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta = f64::from(rope_theta);
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let mut freqs = Vec::with_capacity(t * hd / 2);
    for p in 0..t {
        freqs.extend(inv.iter().map(|f| p as f32 * f));
    }
    let freqs = Tensor::from_vec(freqs, (t, hd / 2), device)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Additive mask (rep * tq, tp + tq) for query rows ordered (rep, position) inside a
/// key/value head: all `tp` prefix keys are visible, the query's own keys causally.
fn mask(rep: usize, tp: usize, tq: usize, device: &Device) -> Result<Tensor> {
    let mut mask = Vec::with_capacity(rep * tq * (tp + tq));
    for _ in 0..rep {
        for i in 0..tq {
            mask.extend((0..tp + tq).map(|j| if j <= tp + i { 0f32 } else { f32::NEG_INFINITY }));
        }
    }
    Ok(Tensor::from_vec(mask, (rep * tq, tp + tq), device)?)
}

/// Attention of queries (bb, nh, tq, hd) over keys and values (bb, nkv, tk, hd), as
/// rows (bb * tq, nh * hd). Query heads h = kv * rep + r share key/value head kv.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, fused: bool) -> Result<Tensor> {
    let (bb, nh, tq, hd) = q.dims4()?;
    let nkv = k.dim(1)?;
    let q = q.reshape((bb, nkv, nh / nkv * tq, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let att = masked_softmax(&q.matmul(&k.t()?.contiguous()?)?, scale, mask, fused)?;
    let y = att.matmul(v)?.reshape((bb, nh, tq, hd))?;
    Ok(y.transpose(1, 2)?
        .contiguous()?
        .reshape((bb * tq, nh * hd))?)
}

/// A layer's attention: the q, k, v, o projections and the head layout.
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `x` (rows of `pos`, hidden), already normed -> the `o_proj` output, same shape. The
    /// prefix rows attend among themselves; every suffix row attends to the whole prefix
    /// (its keys and values broadcast over the batch) and causally to its own sequence.
    pub fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        lora: Option<&LoraWeights>,
    ) -> Result<Tensor> {
        let (b, s, p) = (pos.b, pos.s, pos.p);
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |x: Tensor, bb: usize, t: usize, n: usize| -> Result<Tensor> {
            Ok(x.reshape((bb, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = self.q.forward(x, lora)?;
        let k = self.k.forward(x, lora)?;
        let v = self.v.forward(x, lora)?;
        let (cos_s, sin_s) = (&pos.cos_s, &pos.sin_s);
        let q_s = rope(
            &heads(q.narrow(0, p, b * s)?, b, s, nh)?,
            cos_s,
            sin_s,
            pos.fused,
        )?;
        let k_s = rope(
            &heads(k.narrow(0, p, b * s)?, b, s, nkv)?,
            cos_s,
            sin_s,
            pos.fused,
        )?;
        let v_s = heads(v.narrow(0, p, b * s)?, b, s, nkv)?;
        let y = match &pos.prefix_tables {
            Some((cos_p, sin_p)) => {
                let q_p = rope(
                    &heads(q.narrow(0, 0, p)?, 1, p, nh)?,
                    cos_p,
                    sin_p,
                    pos.fused,
                )?;
                let k_p = rope(
                    &heads(k.narrow(0, 0, p)?, 1, p, nkv)?,
                    cos_p,
                    sin_p,
                    pos.fused,
                )?;
                let v_p = heads(v.narrow(0, 0, p)?, 1, p, nkv)?;
                let y_p = attend(&q_p, &k_p, &v_p, &pos.mask_p, pos.fused)?;
                let shape = (b, nkv, p, hd);
                let k_all = Tensor::cat(&[&k_p.broadcast_as(shape)?.contiguous()?, &k_s], 2)?;
                let v_all = Tensor::cat(&[&v_p.broadcast_as(shape)?.contiguous()?, &v_s], 2)?;
                let y_s = attend(&q_s, &k_all, &v_all, &pos.mask_s, pos.fused)?;
                Tensor::cat(&[&y_p, &y_s], 0)?
            }
            None => attend(&q_s, &k_s, &v_s, &pos.mask_s, pos.fused)?,
        };
        self.o.forward(&y, lora)
    }
}
