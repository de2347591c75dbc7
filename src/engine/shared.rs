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
    bytes: usize,
}

impl AdapterWeights {
    /// Converts a PEFT adapter to `dtype` on `device`. Fails on a tensor that is not the A
    /// or B matrix of a projection (validation on upload rejects those first).
    pub fn new(adapter: &LoraAdapter, dtype: DType, device: &Device) -> Result<Self> {
        let scale = adapter.config.lora_alpha / adapter.config.r as f64;
        let mut layers = HashMap::new();
        let mut bytes = 0;
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
            bytes += (a_t.elem_count() + b_t.elem_count()) * dtype.size_in_bytes();
            layers.insert(path.to_string(), (a_t, b_t));
        }
        ensure!(
            2 * layers.len() == adapter.tensors.len(),
            "the adapter has B matrices without their A"
        );
        Ok(Self { layers, bytes })
    }

    /// Bytes of its matrices in the serving dtype.
    pub fn bytes(&self) -> usize {
        self.bytes
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

    /// The rows of the current batch grouped by adapter (rows of no adapter left out).
    fn groups(&self, rows: &[Option<String>]) -> Vec<(Arc<AdapterWeights>, Vec<u32>)> {
        let adapters = self.read();
        let mut groups: Vec<(&String, Arc<AdapterWeights>, Vec<u32>)> = Vec::new();
        for (row, id) in rows.iter().enumerate() {
            let Some(id) = id else { continue };
            match groups.iter_mut().find(|(g, ..)| *g == id) {
                Some((.., idx)) => idx.push(row as u32),
                None => {
                    if let Some(w) = adapters.get(id) {
                        groups.push((id, w.clone(), vec![row as u32]));
                    }
                }
            }
        }
        groups.into_iter().map(|(_, w, idx)| (w, idx)).collect()
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
        let mut y = self.base.forward(x)?;
        let groups = mistralrs_core::batch_rows::with(|rows| {
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
            Ok(self.set.groups(rows))
        })?;
        for (weights, rows) in groups {
            let Some((a_t, b_t)) = weights.layers.get(&self.path) else {
                continue;
            };
            if rows.len() == x.dim(0)? {
                y = (y + low_rank(x, a_t, b_t)?)?;
            } else {
                let idx = Tensor::new(rows.as_slice(), x.device())?;
                let delta = low_rank(&x.index_select(&idx, 0)?, a_t, b_t)?;
                y = y.index_add(&idx, &delta, 0)?;
            }
        }
        Ok(y)
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
