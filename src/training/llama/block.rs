//! One llama decoder layer: pre-norm attention and pre-norm MLP, each added to the residual
//! stream.

use anyhow::Result;
use candle_core::Tensor;

use super::attention::{Attention, Positions};
use super::mlp::Mlp;
use super::ops::rms_norm;
use crate::training::lora::LoraWeights;

pub struct Block {
    /// `input_layernorm`.
    pub attn_norm: Tensor,
    pub attention: Attention,
    /// `post_attention_layernorm`.
    pub mlp_norm: Tensor,
    pub mlp: Mlp,
}

impl Block {
    /// The residual stream `x` (rows of [`Positions`], hidden) after this layer.
    pub fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        lora: Option<&LoraWeights>,
    ) -> Result<Tensor> {
        let h = rms_norm(x, &self.attn_norm, pos.eps, pos.fused)?;
        let x = (x + self.attention.forward(&h, pos, lora)?)?;
        let h = rms_norm(&x, &self.mlp_norm, pos.eps, pos.fused)?;
        Ok((x + self.mlp.forward(&h, lora)?)?)
    }
}
