//! A generator's base adapter and gates: with them the decoder's matrices are a residual on
//! top of a fixed adapter, `B_i = base_i + gate_i * D_i` for every B matrix i of the layout
//! (D_i: what the detokeniser reads from the decoder's tokens; `gate`: one scalar per
//! matrix).
//!
//! Why: a generator trained end to end (`train --objective sft`) starts from `base` = the
//! mean of its training tasks' B matrices (the averaged-adapter baseline) with every gate at
//! zero, so its first adapters *are* that baseline, and training can only be judged by
//! what the prompts add to it. The gates start at zero so that the decoder's random or
//! reconstruction-trained output does not move the start away from the baseline; gradients
//! reach the gates at once and the decoder as soon as the gates leave zero.
//!
//! Stored as `residual.safetensors` in the generator folder: `base.<PEFT B name>` (out, r)
//! and `gate` (matrices,); `decoder.json` says `"residual": true`, so a folder missing the
//! file is an error rather than a silently different generator. Only for B-only layouts
//! (a frozen shared A).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::tokenizer::TokenLayout;
use crate::format::peft::LoraAdapter;

pub const RESIDUAL_FILE: &str = "residual.safetensors";

#[derive(Debug, Clone)]
pub struct Residual {
    /// One (out, r) matrix per slot of the layout, in slot order.
    pub base: Vec<Tensor>,
    /// (slots,): the scale of each decoded matrix.
    pub gate: Tensor,
}

impl Residual {
    /// The mean of `adapters`' B matrices, gates at zero.
    pub fn mean_of(layout: &TokenLayout, adapters: &[LoraAdapter]) -> Result<Self> {
        ensure!(
            !layout.with_a,
            "a residual generator needs a B-only layout (frozen A)"
        );
        ensure!(!adapters.is_empty(), "the mean of no adapters");
        let base = layout
            .slots
            .iter()
            .map(|slot| {
                let name = slot.name();
                let parts = adapters
                    .iter()
                    .map(|a| {
                        a.tensors
                            .get(&name)
                            .with_context(|| format!("adapter has no {name}"))?
                            .to_dtype(DType::F32)?
                            .to_device(&Device::Cpu)
                            .map_err(Into::into)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::stack(&parts, 0)?.mean(0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let gate = Tensor::zeros(layout.slots.len(), DType::F32, &Device::Cpu)?;
        Ok(Self { base, gate })
    }

    /// The same gates on another base: `adapter`'s B matrices.
    pub fn rebased(&self, layout: &TokenLayout, adapter: &LoraAdapter) -> Result<Self> {
        let base = Self::mean_of(layout, std::slice::from_ref(adapter))?.base;
        check_shapes(layout, &base).context("the new base")?;
        Ok(Self {
            base,
            gate: self.gate.clone(),
        })
    }

    /// `base_i + gate_i * decoded_i` for every slot; differentiable in `decoded` and
    /// `gate` (the training path passes its gate variable).
    pub fn combine(&self, gate: &Tensor, decoded: &[Tensor]) -> Result<Vec<Tensor>> {
        ensure!(
            decoded.len() == self.base.len(),
            "{} decoded matrices for {} base matrices",
            decoded.len(),
            self.base.len()
        );
        self.base
            .iter()
            .zip(decoded)
            .enumerate()
            .map(|(i, (base, d))| {
                let g = gate.narrow(0, i, 1)?;
                Ok((d.broadcast_mul(&g)? + base.to_device(d.device())?)?)
            })
            .collect()
    }

    /// Applies base and gates to an adapter detokenised from the decoder's tokens.
    pub fn apply(&self, layout: &TokenLayout, adapter: &mut LoraAdapter) -> Result<()> {
        let decoded = layout
            .slots
            .iter()
            .map(|s| {
                adapter
                    .tensors
                    .get(&s.name())
                    .cloned()
                    .with_context(|| format!("adapter has no {}", s.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        for (slot, b) in layout.slots.iter().zip(self.combine(&self.gate, &decoded)?) {
            adapter.tensors.insert(slot.name(), b);
        }
        Ok(())
    }

    pub fn load(dir: &Path, layout: &TokenLayout) -> Result<Self> {
        let path = dir.join(RESIDUAL_FILE);
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut take = |k: &str| {
            t.remove(k)
                .with_context(|| format!("{} has no tensor {k}", path.display()))
        };
        let gate = take("gate")?;
        ensure!(
            gate.dims() == [layout.slots.len()],
            "{}: gate has shape {:?}, the layout has {} matrices",
            path.display(),
            gate.dims(),
            layout.slots.len()
        );
        let base = layout
            .slots
            .iter()
            .map(|s| take(&format!("base.{}", s.name())))
            .collect::<Result<Vec<_>>>()?;
        check_shapes(layout, &base).with_context(|| path.display().to_string())?;
        Ok(Self { base, gate })
    }

    /// The file's bytes (written by the caller, atomically).
    pub fn to_bytes(&self, layout: &TokenLayout) -> Result<Vec<u8>> {
        let mut t = BTreeMap::new();
        t.insert("gate".to_string(), self.gate.to_device(&Device::Cpu)?);
        for (s, b) in layout.slots.iter().zip(&self.base) {
            t.insert(format!("base.{}", s.name()), b.clone());
        }
        let views: Vec<(&str, &Tensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Ok(safetensors::serialize(views, None)?)
    }
}

/// Errors unless every base matrix has its slot's shape (out, r).
fn check_shapes(layout: &TokenLayout, base: &[Tensor]) -> Result<()> {
    for (s, b) in layout.slots.iter().zip(base) {
        ensure!(
            b.dims() == [s.len, layout.rank],
            "base.{} has shape {:?}, the layout wants ({}, {})",
            s.name(),
            b.dims(),
            s.len,
            layout.rank
        );
    }
    Ok(())
}
