//! A frozen linear layer of the base model plus, when the adapter targets it, its LoRA
//! update: `y = x W^T + s (x A^T) B^T` (the LoRA formula of [`crate::training::lora`]).

use anyhow::Result;
use candle_core::Tensor;

use super::ops::frozen_linear;
use crate::format::peft::Module;
use crate::training::lora::LoraWeights;

/// One of a layer's seven projections: its frozen weight (out, in), and where the adapter
/// keeps its LoRA pair.
pub struct Linear {
    weight: Tensor,
    layer: usize,
    module: Module,
}

impl Linear {
    pub fn new(weight: Tensor, layer: usize, module: Module) -> Self {
        Self {
            weight,
            layer,
            module,
        }
    }

    /// `x` (n, in) -> (n, out).
    pub fn forward(&self, x: &Tensor, lora: Option<&LoraWeights>) -> Result<Tensor> {
        let y = frozen_linear(x, &self.weight)?;
        let pair = lora.and_then(|l| {
            l.pair(self.layer, self.module)
                .map(|(a, b)| (a, b, l.config.scale()))
        });
        match pair {
            Some((a, b, s)) => {
                // A frozen A is detached so that backward does not compute its gradient.
                let a = match lora.is_some_and(|l| l.a_frozen()) {
                    true => a.detach(),
                    false => a.clone(),
                };
                let delta = x.matmul(&a.t()?)?.matmul(&b.t()?)?;
                Ok((y + (delta * s)?)?)
            }
            None => Ok(y),
        }
    }
}
