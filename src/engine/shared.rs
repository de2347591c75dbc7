//! Shared-base adapters: the base engine model serves every adapter itself, in mixed
//! batches, with each adapter's LoRA applied unmerged to the rows that asked for it.
//!
//! Two vendor patches make this possible. 0005 forks a pipeline over the same weights with
//! its linear layers passed through a function: at start, every projection of the base
//! (`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `...mlp.{gate,up,down}_proj`) is wrapped
//! in a [`MultiLoraLinear`] over one [`AdapterSet`], and that fork is the engine's base
//! model. 0007 remembers the model id each request named and publishes, around every
//! forward pass, the id of each batch row (`mistralrs_core::batch_rows`). An adapter is
//! registered as an alias of the base model (`MistralRs::register_model_alias`) plus its
//! matrices in the set under that id, so its requests reach the base model's scheduler
//! and share its batches with the base's and every other adapter's requests. For the rows
//! of adapter `j`, a wrapped projection computes
//!
//! `y = x W^T + s_j (x A_j^T) B_j^T`, with `s_j = lora_alpha / r` (PEFT's scale; mistral.rs
//! merges `W + s B A` with the same `s`),
//!
//! and `x W^T` for the rest. An adapter costs its matrices, r (in + out) numbers per module,
//! in the serving dtype; registering it is reading them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use mistralrs_quant::{IsqType, QuantMethod, QuantMethodConfig, QuantizeOntoGuard, QuantizedSerde};

use crate::format::peft::{LoraAdapter, Module};

/// The modules a shared base wraps: every projection of every layer (the LM head is not
/// one an adapter may target).
fn wraps(path: &str) -> bool {
    path.rsplit('.')
        .next()
        .and_then(Module::from_name)
        .is_some()
}

/// One adapter's matrices, by module path (`model.layers.3.self_attn.q_proj`), in the
/// serving dtype: A transposed (in, r) and B transposed and scaled by `s` (r, out).
pub struct AdapterWeights {
    layers: HashMap<String, (Tensor, Tensor)>,
}

impl AdapterWeights {
    /// Converts a PEFT adapter to `dtype` on `device`. Fails on a tensor that is not the A
    /// or B matrix of a projection (validation on upload rejects those first).
    pub fn new(adapter: &LoraAdapter, dtype: DType, device: &Device) -> Result<Self> {
        let scale = adapter.config.lora_alpha / adapter.config.r as f64;
        let mut layers = HashMap::new();
        for (name, a) in &adapter.tensors {
            let Some(path) = name
                .strip_prefix("base_model.model.")
                .and_then(|n| n.strip_suffix(".lora_A.weight"))
            else {
                ensure!(
                    name.ends_with(".lora_B.weight"),
                    "{name} is not a LoRA matrix"
                );
                continue;
            };
            ensure!(wraps(path), "{name}: not a projection of a llama layer");
            let b_name = format!("base_model.model.{path}.lora_B.weight");
            let b = adapter
                .tensors
                .get(&b_name)
                .ok_or_else(|| anyhow::anyhow!("{name} has no {b_name}"))?;
            let a_t = a.t()?.to_dtype(dtype)?.to_device(device)?.contiguous()?;
            let b_t = (b.to_dtype(DType::F32)? * scale)?
                .t()?
                .to_dtype(dtype)?
                .to_device(device)?
                .contiguous()?;
            layers.insert(path.to_string(), (a_t, b_t));
        }
        ensure!(
            2 * layers.len() == adapter.tensors.len(),
            "the adapter has B matrices without their A"
        );
        Ok(Self { layers })
    }
}

/// The adapters a shared base serves, by the model id their requests name.
#[derive(Default)]
pub struct AdapterSet {
    adapters: RwLock<HashMap<String, Arc<AdapterWeights>>>,
}

impl AdapterSet {
    pub fn insert(&self, model_id: &str, weights: AdapterWeights) {
        self.write().insert(model_id.to_string(), Arc::new(weights));
    }

    pub fn remove(&self, model_id: &str) -> bool {
        self.write().remove(model_id).is_some()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The adapter of each row of the current batch (`None`: the base, or an id that is
    /// not an adapter).
    fn of_rows(&self, rows: &[Option<String>]) -> Vec<Option<Arc<AdapterWeights>>> {
        let adapters = self.read();
        rows.iter()
            .map(|id| id.as_ref().and_then(|id| adapters.get(id).cloned()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<AdapterWeights>>> {
        self.adapters.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<AdapterWeights>>> {
        self.adapters.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A base projection that adds, to each batch row, the low-rank path of the adapter the
/// row's request named.
pub struct MultiLoraLinear {
    base: Arc<dyn QuantMethod>,
    path: String,
    set: Arc<AdapterSet>,
}

impl MultiLoraLinear {
    /// Wraps `base` (the layer at `path`) when it is a projection; other layers as they are.
    pub fn wrap(
        path: &str,
        base: Arc<dyn QuantMethod>,
        set: &Arc<AdapterSet>,
    ) -> Arc<dyn QuantMethod> {
        if !wraps(path) {
            return base;
        }
        Arc::new(Self {
            base,
            path: path.to_string(),
            set: set.clone(),
        })
    }
}

/// `x` (rows, ..., in) through `a_t` (in, r) then `b_t` (r, out): (rows, ..., out).
fn low_rank(x: &Tensor, a_t: &Tensor, b_t: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let inp = dims[dims.len() - 1];
    let mut out = dims.to_vec();
    *out.last_mut().expect("x has dims") = b_t.dim(1)?;
    // Flattened to rows: one plain matmul each instead of batched broadcasts.
    x.reshape((x.elem_count() / inp, inp))?
        .matmul(a_t)?
        .matmul(b_t)?
        .reshape(out)
}

/// Each row of `x` (rows, ..., in) through its own (A^T, s B^T), or none (zero): the
/// matrices stacked into one batched matmul, lower ranks padded with zeros (exact).
fn low_rank_per_row(x: &Tensor, mats: &[Option<&(Tensor, Tensor)>]) -> candle_core::Result<Tensor> {
    let (rows, inp) = (x.dim(0)?, x.dim(candle_core::D::Minus1)?);
    let some = mats.iter().flatten();
    let rank = some
        .clone()
        .map(|m| m.0.dim(1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let r = rank.into_iter().max().unwrap_or(0);
    let first = some
        .clone()
        .next()
        .expect("at least one row has an adapter");
    let out = first.1.dim(1)?;
    let (dtype, device) = (first.0.dtype(), first.0.device());
    let (zero_a, zero_b) = (
        Tensor::zeros((inp, r), dtype, device)?,
        Tensor::zeros((r, out), dtype, device)?,
    );
    let mut a = Vec::with_capacity(rows);
    let mut b = Vec::with_capacity(rows);
    for m in mats {
        match m {
            Some((a_t, b_t)) => {
                let pad = r - a_t.dim(1)?;
                a.push(a_t.pad_with_zeros(1, 0, pad)?);
                b.push(b_t.pad_with_zeros(0, 0, pad)?);
            }
            None => {
                a.push(zero_a.clone());
                b.push(zero_b.clone());
            }
        }
    }
    let x = x.reshape((rows, x.elem_count() / (rows * inp), inp))?;
    x.matmul(&Tensor::stack(&a, 0)?)?
        .matmul(&Tensor::stack(&b, 0)?)
}

impl fmt::Debug for MultiLoraLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiLoraLinear")
            .field("base", &self.base)
            .field("path", &self.path)
            .finish()
    }
}

impl QuantizedSerde for MultiLoraLinear {
    fn name(&self) -> &'static str {
        "multi-lora-linear"
    }
}

impl QuantMethod for MultiLoraLinear {
    fn new(_method: QuantMethodConfig) -> candle_core::Result<Self> {
        candle_core::bail!("a MultiLoraLinear wraps a loaded layer only")
    }

    fn dequantize_w(&self) -> candle_core::Result<Tensor> {
        self.base.dequantize_w()
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.base.forward(x)?;
        let rows = mistralrs_core::batch_rows::with(|rows| {
            if rows.is_empty() || self.set.is_empty() {
                return Ok(Vec::new());
            }
            if rows.len() != x.dim(0)? {
                candle_core::bail!(
                    "{}: {} batch rows named, {} computed",
                    self.path,
                    rows.len(),
                    x.dim(0)?
                );
            }
            Ok(self.set.of_rows(rows))
        })?;
        if let Some(Some(first)) = rows.first() {
            if rows
                .iter()
                .all(|w| w.as_ref().is_some_and(|w| Arc::ptr_eq(w, first)))
            {
                // One adapter for the whole batch: one low-rank product, if it has this layer.
                return match first.layers.get(&self.path) {
                    Some((a_t, b_t)) => y + low_rank(x, a_t, b_t)?,
                    None => Ok(y),
                };
            }
        }
        // This layer's (A^T, s B^T) for each row.
        let mats: Vec<Option<&(Tensor, Tensor)>> = rows
            .iter()
            .map(|w| w.as_ref().and_then(|w| w.layers.get(&self.path)))
            .collect();
        if mats.iter().all(Option::is_none) {
            return Ok(y);
        }
        let delta = low_rank_per_row(x, &mats)?.reshape(y.shape())?;
        y + delta
    }

    fn quantized_act_type(&self) -> Option<DType> {
        self.base.quantized_act_type()
    }

    fn dtype_and_device(&self) -> (DType, Device) {
        self.base.dtype_and_device()
    }

    fn add_delta_w(&self, delta: &Tensor) -> candle_core::Result<Arc<dyn QuantMethod>> {
        Ok(Arc::new(Self {
            base: self.base.add_delta_w(delta)?,
            path: self.path.clone(),
            set: self.set.clone(),
        }))
    }

    fn apply_isq(
        self: Arc<Self>,
        _dtype: Option<IsqType>,
        _device: Device,
        _n_quantized: &AtomicUsize,
        _imatrix_weight: Option<Vec<f32>>,
        _guard: QuantizeOntoGuard,
    ) -> candle_core::Result<Arc<dyn QuantMethod>> {
        candle_core::bail!("in-situ quantization of a shared base is not supported")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        crate::format::peft::uniform(&mut rng, shape, 1.0).unwrap()
    }

    /// The stacked product equals each row through its own matrices alone (ranks 2 and 4,
    /// a row with none), for prefill-shaped (3 positions) and decode-shaped rows.
    #[test]
    fn rows_through_their_own_matrices() {
        let m1 = (rand(&[6, 2], 1), rand(&[2, 5], 2));
        let m2 = (rand(&[6, 4], 3), rand(&[4, 5], 4));
        let mats = [Some(&m1), None, Some(&m2), Some(&m1)];
        for positions in [3, 1] {
            let x = rand(&[4, positions, 6], 5);
            let got = low_rank_per_row(&x, &mats).unwrap();
            assert_eq!(got.dims(), [4, positions, 5]);
            for (row, m) in mats.iter().enumerate() {
                let xr = x.get(row).unwrap().unsqueeze(0).unwrap();
                let want = match m {
                    Some((a, b)) => low_rank(&xr, a, b).unwrap(),
                    None => Tensor::zeros((1, positions, 5), DType::F32, &Device::Cpu).unwrap(),
                };
                let got_row = got.get(row).unwrap().unsqueeze(0).unwrap();
                let diff = crate::testing::max_abs_diff(&got_row, &want);
                assert!(diff < 1e-5, "row {row}: {diff}");
            }
        }
    }
}
