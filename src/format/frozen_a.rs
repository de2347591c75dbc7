//! The frozen LoRA A of a LoRA-FA collection: part of the adapter format, since a
//! generator that outputs only the B matrices completes its adapters with these.
//!
//! With a frozen-A seed, every A matrix of a collection is drawn from that seed and never
//! trained; only B learns (LoRA-FA). All runs of a collection then share one A, so their B
//! matrices live in one basis that a generator can learn and average over. The trainer draws
//! the A of a fresh LoRA with [`initial_a`] (from the seed's stream, or from a run's own
//! stream for plain LoRA), the generator rebuilds the same A with [`frozen_a`]: the values
//! depend on [`super::rng`] and on the order of the draws, which must not change.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

use super::peft::{tensor_name, LlamaDims, LoraAdapter, Module};
use super::rng::Rng;

/// The A matrices a fresh LoRA starts from, U(-1/sqrt(in), 1/sqrt(in)) per layer and module
/// in checkpoint order, drawn from `rng`. With a frozen-A seed (the trainer's
/// `LoraConfig::frozen_a_seed`) they are drawn from `Rng::derive(seed, "lora-a")`
/// ([`frozen_a`]) and the generator rebuilds the same ones.
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

/// Errors unless `adapter`'s A matrices are `frozen` (a collection's frozen A): B matrices
/// drawn against another A mean something else.
pub fn check_frozen_a(
    adapter: &LoraAdapter,
    frozen: &BTreeMap<(usize, Module), Tensor>,
) -> Result<()> {
    for (&(layer, m), a) in frozen {
        let name = tensor_name(layer, m, false);
        let t = adapter
            .tensors
            .get(&name)
            .with_context(|| format!("no tensor {name}"))?;
        let diff = (t.to_dtype(candle_core::DType::F32)? - a)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        ensure!(
            diff <= 1e-6,
            "{name} differs from the generator's frozen A by {diff}: the checkpoints were \
             collected with another A (collect's --a-seed, or --train-a)"
        );
    }
    Ok(())
}
