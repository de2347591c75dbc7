//! LoRA adapters in memory and as PEFT folders: the one place that reads, writes and
//! validates `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Tensor names follow PEFT for a llama model:
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`, A of shape
//! (r, in) and B of shape (out, r). mistral.rs 0.8.1 reads exactly these names when it merges
//! an adapter at load time.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The seven linear modules of a llama layer, in the DnD checkpoint order (q, k, v, o, up,
/// gate, down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Module {
    Q,
    K,
    V,
    O,
    Up,
    Gate,
    Down,
}

impl Module {
    pub const ALL: [Module; 7] = [
        Module::Q,
        Module::K,
        Module::V,
        Module::O,
        Module::Up,
        Module::Gate,
        Module::Down,
    ];

    /// PEFT / Hugging Face module name, e.g. `q_proj`.
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Up => "up_proj",
            Module::Gate => "gate_proj",
            Module::Down => "down_proj",
        }
    }

    /// Sub-block of the layer the module lives in.
    pub fn block(self) -> &'static str {
        match self {
            Module::Q | Module::K | Module::V | Module::O => "self_attn",
            Module::Up | Module::Gate | Module::Down => "mlp",
        }
    }

    pub fn from_name(name: &str) -> Option<Module> {
        Module::ALL.into_iter().find(|m| m.name() == name)
    }

    /// (in, out) features of this module's weight for a given model.
    pub fn dims(self, d: &LlamaDims) -> (usize, usize) {
        let q = d.num_attention_heads * d.head_dim();
        let kv = d.num_key_value_heads * d.head_dim();
        match self {
            Module::Q => (d.hidden_size, q),
            Module::K | Module::V => (d.hidden_size, kv),
            Module::O => (q, d.hidden_size),
            Module::Up | Module::Gate => (d.hidden_size, d.intermediate_size),
            Module::Down => (d.intermediate_size, d.hidden_size),
        }
    }
}

/// The shape facts of a llama-family base model that adapters depend on, read from its
/// Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlamaDims {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub num_hidden_layers: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
}

impl LlamaDims {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn from_config_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading base model config {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing base model config {}", path.display()))
    }
}

/// `adapter_config.json`, the fields mistral.rs reads plus what PEFT writes for a plain LoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub base_model_name_or_path: String,
    #[serde(default = "lora")]
    pub peft_type: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_pattern: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_to_save: Option<serde_json::Value>,
}

fn lora() -> String {
    "LORA".into()
}

impl PeftConfig {
    pub fn new(r: usize, lora_alpha: f64, modules: &[Module], base: &str) -> Self {
        Self {
            r,
            lora_alpha,
            target_modules: modules.iter().map(|m| m.name().to_string()).collect(),
            base_model_name_or_path: base.to_string(),
            peft_type: lora(),
            use_rslora: false,
            use_dora: false,
            bias: Some("none".into()),
            rank_pattern: None,
            modules_to_save: None,
        }
    }

    /// The target modules as [`Module`]s, in checkpoint order; unknown names are an error.
    pub fn modules(&self) -> Result<Vec<Module>> {
        let mut out = Vec::new();
        for name in &self.target_modules {
            let short = name.rsplit('.').next().unwrap_or(name);
            match Module::from_name(short) {
                Some(m) => out.push(m),
                None => bail!(
                    "unsupported target module {name:?}: supported are q_proj, k_proj, v_proj, o_proj, up_proj, gate_proj, down_proj"
                ),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// PEFT tensor name of one LoRA matrix.
pub fn tensor_name(layer: usize, module: Module, b: bool) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{}.weight",
        module.block(),
        module.name(),
        if b { "B" } else { "A" }
    )
}

/// A LoRA adapter for `dims` with seeded uniform values of magnitude `scale` (A) and
/// `b_scale` (B; 0 gives an adapter that changes nothing): an adapter of the right shapes
/// without training, for the hot-load benchmark and the tests.
pub fn random_adapter(
    dims: &LlamaDims,
    modules: &[Module],
    r: usize,
    seed: u64,
    scale: f32,
    b_scale: f32,
) -> Result<LoraAdapter> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    for l in 0..dims.num_hidden_layers {
        for &m in modules {
            let (i, o) = m.dims(dims);
            tensors.insert(tensor_name(l, m, false), uniform(&mut rng, &[r, i], scale)?);
            let b = if b_scale == 0.0 {
                Tensor::zeros((o, r), DType::F32, &Device::Cpu)?
            } else {
                uniform(&mut rng, &[o, r], b_scale)?
            };
            tensors.insert(tensor_name(l, m, true), b);
        }
    }
    Ok(LoraAdapter {
        config: PeftConfig::new(r, (2 * r) as f64, modules, "tiny-llama"),
        tensors,
    })
}

/// An F32 CPU tensor of `shape` with values uniform in `(-scale, scale)` from `rng`.
pub(crate) fn uniform(rng: &mut StdRng, shape: &[usize], scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// A LoRA adapter in memory: its PEFT config and every A/B matrix (F32, CPU).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub config: PeftConfig,
    /// Keyed by PEFT tensor name ([`tensor_name`]).
    pub tensors: BTreeMap<String, Tensor>,
}

impl LoraAdapter {
    /// The (A, B) pair of one layer and module.
    pub fn pair(&self, layer: usize, module: Module) -> Result<(&Tensor, &Tensor)> {
        let a = tensor_name(layer, module, false);
        let b = tensor_name(layer, module, true);
        match (self.tensors.get(&a), self.tensors.get(&b)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!(
                "adapter has no LoRA pair for layer {layer} {}",
                module.name()
            ),
        }
    }

    /// Checks the adapter against a base model before anything uses it: supported config,
    /// every expected tensor present with the right shape, no extra tensors, finite values.
    pub fn validate(&self, dims: &LlamaDims) -> Result<()> {
        let c = &self.config;
        ensure!(
            c.peft_type.eq_ignore_ascii_case("lora"),
            "peft_type must be LORA, got {:?}",
            c.peft_type
        );
        ensure!(
            c.r >= 1 && c.r <= 256,
            "rank r must be in 1..=256, got {}",
            c.r
        );
        ensure!(
            c.lora_alpha.is_finite() && c.lora_alpha > 0.0,
            "lora_alpha must be a positive number, got {}",
            c.lora_alpha
        );
        ensure!(!c.use_rslora, "rsLoRA is not supported by mistral.rs 0.8.1");
        ensure!(!c.use_dora, "DoRA is not supported by mistral.rs 0.8.1");
        ensure!(
            c.rank_pattern
                .as_ref()
                .is_none_or(|v| v.as_object().is_none_or(|o| o.is_empty())),
            "rank_pattern is not supported"
        );
        ensure!(
            c.modules_to_save.as_ref().is_none_or(|v| v.is_null()),
            "modules_to_save is not supported"
        );
        let modules = c.modules()?;
        ensure!(!modules.is_empty(), "target_modules is empty");
        let mut expected = 0;
        for layer in 0..dims.num_hidden_layers {
            for &m in &modules {
                let (inp, out) = m.dims(dims);
                for (b, shape) in [(false, [c.r, inp]), (true, [out, c.r])] {
                    let name = tensor_name(layer, m, b);
                    let t = self
                        .tensors
                        .get(&name)
                        .with_context(|| format!("missing tensor {name}"))?;
                    ensure!(
                        t.dims() == shape,
                        "tensor {name} has shape {:?}, expected {:?}",
                        t.dims(),
                        shape
                    );
                    let sum_sq = t
                        .to_dtype(DType::F32)?
                        .sqr()?
                        .sum_all()?
                        .to_scalar::<f32>()?;
                    ensure!(sum_sq.is_finite(), "tensor {name} has non-finite values");
                    expected += 1;
                }
            }
        }
        if self.tensors.len() != expected {
            let extra = self
                .tensors
                .keys()
                .find(|k| {
                    !(0..dims.num_hidden_layers).any(|l| {
                        modules.iter().any(|&m| {
                            **k == tensor_name(l, m, false) || **k == tensor_name(l, m, true)
                        })
                    })
                })
                .cloned()
                .unwrap_or_default();
            bail!("unexpected tensor {extra} (not a LoRA matrix of a target module)");
        }
        Ok(())
    }

    /// Reads a PEFT folder (tensors converted to F32 on the CPU). Does not validate.
    pub fn read_peft(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: PeftConfig = serde_json::from_str(&text)
            .with_context(|| format!("{CONFIG_FILE} is not a valid LoRA config"))?;
        let bytes = std::fs::read(dir.join(WEIGHTS_FILE))
            .with_context(|| format!("reading {}", dir.join(WEIGHTS_FILE).display()))?;
        Self::from_parts(config, &bytes)
    }

    /// Builds an adapter from a parsed config and the bytes of a safetensors file.
    pub fn from_parts(config: PeftConfig, safetensors_bytes: &[u8]) -> Result<Self> {
        let raw = candle_core::safetensors::load_buffer(safetensors_bytes, &Device::Cpu)
            .with_context(|| format!("{WEIGHTS_FILE} is not a valid safetensors file"))?;
        let mut tensors = BTreeMap::new();
        for (name, t) in raw {
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
        Ok(Self { config, tensors })
    }

    /// The safetensors bytes of this adapter (F32), deterministic for equal tensors.
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>> {
        let data: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<Result<_>>()?;
        let views: Vec<(&str, &Tensor)> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Ok(safetensors::serialize(views, None)?)
    }

    /// Writes the PEFT folder atomically: into a sibling temp folder, then renamed over `dir`.
    pub fn write_peft(&self, dir: &Path) -> Result<()> {
        let weights = self.safetensors_bytes()?;
        let config = serde_json::to_vec_pretty(&self.config)?;
        super::fsio::write_folder_atomic(dir, &[(CONFIG_FILE, &config), (WEIGHTS_FILE, &weights)])
    }

    /// Short content hash over config and weights: names a version of an adapter.
    pub fn content_hash(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.config)?);
        h.update(self.safetensors_bytes()?);
        Ok(hex::encode(&h.finalize()[..6]))
    }

    /// Bytes of the weights as stored (F32).
    pub fn weight_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count() * 4).sum()
    }
}
