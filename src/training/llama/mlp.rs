//! The llama feed-forward block: `down(silu(gate(x)) * up(x))`.

use anyhow::Result;
use candle_core::Tensor;

use super::linear::Linear;
use crate::training::lora::LoraWeights;

pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    /// `x` (n, hidden), already normed -> (n, hidden).
    pub fn forward(&self, x: &Tensor, lora: Option<&LoraWeights>) -> Result<Tensor> {
        let g = self.gate.forward(x, lora)?.silu()?;
        let u = self.up.forward(x, lora)?;
        self.down.forward(&(g * u)?, lora)
    }
}
