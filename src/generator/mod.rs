//! The DnD generator: prompts -> frozen MiniLM [`encoder`] -> hyper-convolutional
//! [`decoder`] -> checkpoint detokeniser ([`tokenizer`]) -> [`LoraAdapter`].
//!
//! [`Generator::load`] reads a generator folder (`decoder.json`, `decoder.safetensors`) and
//! the encoder folder; [`Generator::generate`] turns a batch of a task's unlabelled prompts
//! into one adapter in a single forward pass, with notes and per-stage timings. The adapter's
//! tensors are F32 on the CPU; write it with [`LoraAdapter::write_peft`].
//!
//! Prompt count and order: the decoder takes exactly N prompts (its `decoder.json`). Fewer
//! are cycled in order, more are cut to the first N ([`prompts::fit_to_n`]); both are
//! reported in [`Generated::notes`]. The method convolves along the prompt axis (k x k
//! kernels with zero padding at the ends), so the decoder is *not* permutation invariant:
//! the same prompts in another order give a different (for a trained generator, similar)
//! adapter, and a prompt's influence depends on its position and neighbours. The reference
//! trains on random draws of prompts, so a trained generator sees every order; this module
//! keeps the caller's order and is deterministic for it (same prompts, same order, same
//! bits on the CPU). Callers that need one adapter per *set* of prompts should sort them.
//!
//! Runs on the CPU; with the crate's `cuda` feature [`default_device`] picks the first GPU
//! when there is one. [`Generator`] is `Send + Sync` and [`Generator::generate`] is a
//! blocking, CPU-bound call (about half a second for the default config on 2 cores): an
//! async server should run it with `spawn_blocking`.
//!
//! [`retrieval`] is the training-free baseline beside it: the mean of the stored LoRAs of
//! the tasks whose text reads most like a task's.

pub mod attend;
pub mod conv;
pub mod decoder;
pub mod encoder;
pub mod prompts;
pub mod residual;
pub mod retrieval;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use lru::LruCache;

pub use decoder::{Decoder, DecoderConfig};
pub use encoder::{ConditionEncoder, PromptEncoder};
pub use residual::Residual;
pub use tokenizer::TokenLayout;

use crate::format::frozen_a::check_frozen_a;
use crate::format::peft::{tensor_name, LlamaDims, LoraAdapter, PeftConfig};

/// The trained generator for SmolLM2-135M-Instruct shipped with the project (decoder
/// weights, config and `train.json`; reproduced by the README's commands, which a newer
/// `train.json` also records in `made_by`), relative to the repository root. The default of `generate`, the benches and
/// `configs/default.toml`.
pub const SHIPPED_SMOLLM2: &str = "generators/smollm2-135m";
/// The shipped generator that reads labelled examples (`plugin.examples_generator`).
pub const SHIPPED_SMOLLM2_EXAMPLES: &str = "generators/smollm2-135m-examples";

/// The device the generator runs on: the CPU, or with the `cuda` feature the first GPU if
/// there is one.
pub fn default_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(Device::cuda_if_available(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

/// Wall-clock time of each stage of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub encode: Duration,
    pub decode: Duration,
    pub detokenise: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.encode + self.decode + self.detokenise
    }
}

/// One generated adapter with what happened on the way.
#[derive(Debug, Clone)]
pub struct Generated {
    pub adapter: LoraAdapter,
    /// Human-readable notes, e.g. "repeated 5 prompts in order to fill N=16".
    pub notes: Vec<String>,
    pub timings: Timings,
}

/// What reads a generator's condition: MiniLM, or the base model's states.
pub type ConditionReader = Arc<dyn ConditionEncoder + Send + Sync>;

/// Encoder + decoder + detokeniser.
pub struct Generator {
    /// Shared by the generators a server loads with one encoder ([`Generator::load_sharing`]).
    encoder: Arc<PromptEncoder>,
    /// What reads the condition: `encoder`, or what [`Generator::load_reading`] was given
    /// (the base model's states, `training::states`).
    condition: ConditionReader,
    decoder: Decoder,
    layout: TokenLayout,
    /// PEFT name -> the frozen A matrix, for a decoder that outputs B only.
    frozen_a: BTreeMap<String, Tensor>,
    /// Base adapter and gates of a residual generator (`decoder.json`'s `residual`).
    residual: Option<Residual>,
    /// Encodings of recent prompts, (1, L, hidden) each: a server encodes a task's prompts
    /// as they arrive ([`Generator::prepare`]), so that at the K-th only the K-th is left.
    encodings: Mutex<LruCache<String, Tensor>>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("config", self.config())
            .finish_non_exhaustive()
    }
}

/// Prompt encodings kept (49 KB each for L = 32 and MiniLM's 384: 25 MB).
const ENCODINGS_KEPT: usize = 512;

impl Generator {
    /// Loads a generator folder and the prompt encoder folder onto `device`.
    pub fn load(generator_dir: &Path, encoder_dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with(generator_dir, device, None, || {
            Ok(Arc::new(PromptEncoder::load(encoder_dir, device)?))
        })
    }

    /// Loads a generator folder around an encoder already loaded, which it shares (a
    /// server with two generators keeps one copy of MiniLM's 90 MB); its condition read by
    /// `condition` when given (see [`Generator::load_reading`]), else by that encoder.
    pub fn load_sharing(
        generator_dir: &Path,
        encoder: Arc<PromptEncoder>,
        condition: Option<ConditionReader>,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with(generator_dir, device, condition, || Ok(encoder))
    }

    /// Loads a generator folder whose decoder reads `condition` when given (a generator
    /// trained with `train --read-states`), beside MiniLM for whatever else reads prompts (a
    /// library); without one, [`Generator::load`].
    pub fn load_reading(
        generator_dir: &Path,
        encoder_dir: &Path,
        condition: Option<ConditionReader>,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with(generator_dir, device, condition, || {
            Ok(Arc::new(PromptEncoder::load(encoder_dir, device)?))
        })
    }

    /// The generator folder first, so that its errors come before the encoder's; the
    /// condition read by `condition`, or by MiniLM without one.
    fn load_with(
        generator_dir: &Path,
        device: &Device,
        condition: Option<ConditionReader>,
        encoder: impl FnOnce() -> Result<Arc<PromptEncoder>>,
    ) -> Result<Self> {
        let (decoder, _) = Decoder::load(generator_dir, device)
            .with_context(|| format!("loading generator {}", generator_dir.display()))?;
        let residual = match decoder.config().residual {
            true => Some(Residual::load(generator_dir, &decoder.config().layout()?)?),
            false => None,
        };
        let encoder = encoder()?;
        let condition = condition.unwrap_or_else(|| encoder.clone());
        Self::reading(encoder, condition, decoder)?.with_residual(residual)
    }

    /// Sets the base adapter and gates of a residual generator (see [`residual`]).
    pub fn with_residual(mut self, residual: Option<Residual>) -> Result<Self> {
        ensure!(
            residual.is_some() == self.config().residual,
            "decoder.json says residual = {}, and a residual was{} given",
            self.config().residual,
            if residual.is_some() { "" } else { " not" }
        );
        self.residual = residual;
        Ok(self)
    }

    /// Puts together an encoder and a decoder built for it.
    pub fn new(encoder: impl Into<Arc<PromptEncoder>>, decoder: Decoder) -> Result<Self> {
        let encoder = encoder.into();
        Self::reading(encoder.clone(), encoder, decoder)
    }

    /// A decoder built for `condition`, beside MiniLM.
    fn reading(
        encoder: Arc<PromptEncoder>,
        condition: ConditionReader,
        decoder: Decoder,
    ) -> Result<Self> {
        let cfg = decoder.config();
        ensure!(
            condition.hidden_size() == cfg.encoder_hidden,
            "generator was built for an encoder of width {} ({}), the encoder has width {}",
            cfg.encoder_hidden,
            cfg.encoder,
            condition.hidden_size()
        );
        let layout = cfg.layout()?;
        let frozen_a = cfg
            .frozen_a()?
            .unwrap_or_default()
            .into_iter()
            .map(|((layer, m), t)| (tensor_name(layer, m, false), t))
            .collect();
        Ok(Self {
            encoder,
            condition,
            decoder,
            layout,
            frozen_a,
            residual: None,
            encodings: Mutex::new(LruCache::new(
                NonZeroUsize::new(ENCODINGS_KEPT).expect("non-zero"),
            )),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        self.decoder.config()
    }

    pub fn layout(&self) -> &TokenLayout {
        &self.layout
    }

    pub fn encoder(&self) -> &PromptEncoder {
        &self.encoder
    }

    /// A residual generator's base adapter (e.g. the multi-task LoRA it was trained on):
    /// what it generates with every gate at zero. `None` for other generators.
    pub fn base_adapter(&self) -> Option<LoraAdapter> {
        let residual = self.residual.as_ref()?;
        let cfg = self.config();
        let mut tensors = self.frozen_a.clone();
        for (slot, b) in self.layout.slots.iter().zip(&residual.base) {
            tensors.insert(slot.name(), b.clone());
        }
        Some(LoraAdapter {
            config: PeftConfig::new(
                self.layout.rank,
                cfg.lora_alpha,
                &self.layout.modules,
                &cfg.base_model,
            ),
            tensors,
        })
    }

    /// Errors with both sets of dims when this generator's adapters do not fit `dims`.
    pub fn check_base(&self, dims: &LlamaDims) -> Result<()> {
        self.config().check_base(dims)
    }

    /// Encodes `prompt` ahead of a generation that may use it (kept among the last
    /// [`ENCODINGS_KEPT`]); a generation takes it from there instead of encoding it again.
    pub fn prepare(&self, prompt: &str) -> Result<()> {
        self.encoding(prompt).map(|_| ())
    }

    /// The condition of one prompt, (1, L, hidden): kept, or encoded now and kept. Each
    /// prompt is encoded alone (padded to L), so a generation's condition does not depend
    /// on which of its prompts were encoded ahead.
    fn encoding(&self, prompt: &str) -> Result<Tensor> {
        if let Some(t) = self.kept().get(prompt) {
            return Ok(t.clone());
        }
        let (t, _mask) = self
            .condition
            .encode(&[prompt.to_string()], self.config().prompt_tokens)?;
        // The base model's states are read on the CPU; the decoder sits with MiniLM.
        let t = t.to_device(self.encoder.device())?;
        self.kept().put(prompt.to_string(), t.clone());
        Ok(t)
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, LruCache<String, Tensor>> {
        self.encodings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One adapter from a batch of prompts (fitted to N, see the module doc).
    pub fn generate(&self, prompts: &[String]) -> Result<Generated> {
        let cfg = self.config();
        let (fitted, note) = prompts::fit_to_n(prompts, cfg.prompts)?;
        let t0 = Instant::now();
        let parts = fitted
            .iter()
            .map(|p| self.encoding(p))
            .collect::<Result<Vec<_>>>()?;
        let cond = Tensor::cat(&parts, 0)?;
        let encode = t0.elapsed();
        let (adapter, decode, detokenise) = self.decode_timed(&cond)?;
        Ok(Generated {
            adapter,
            notes: note.into_iter().collect(),
            timings: Timings {
                encode,
                decode,
                detokenise,
            },
        })
    }

    fn decode_timed(&self, cond: &Tensor) -> Result<(LoraAdapter, Duration, Duration)> {
        let t0 = Instant::now();
        let tokens = self
            .decoder
            .forward(&cond.to_dtype(DType::F32)?)?
            .to_device(&Device::Cpu)?;
        let decode = t0.elapsed();
        let t1 = Instant::now();
        let cfg = self.config();
        ensure!(
            self.residual.is_some() == cfg.residual,
            "a residual generator needs its base adapter and gates (Generator::with_residual)"
        );
        let mut adapter = self
            .layout
            .detokenize(&tokens, cfg.lora_alpha, &cfg.base_model)?;
        if let Some(r) = &self.residual {
            r.apply(&self.layout, &mut adapter)?;
        }
        adapter.tensors.extend(self.frozen_a.clone());
        Ok((adapter, decode, t1.elapsed()))
    }
}

/// Writes a randomly initialised (seeded) generator folder for `cfg`: for tests, benches and
/// as the starting point of training.
pub fn write_random_generator(cfg: &DecoderConfig, seed: u64, dir: &Path) -> Result<()> {
    let (decoder, varmap) = Decoder::seeded(cfg, seed, &Device::Cpu)?;
    decoder.save(&varmap, dir)
}

/// Writes `out`: the residual generator in `src` with its base replaced by `adapter`'s B
/// matrices, decoder and gates unchanged (the other files of `src`, e.g. its training
/// record, copied; sub-folders such as a resumable training state are not). `rebase.json`
/// says where it came from.
///
/// Why: to put a residual trained on one adapter (e.g. the multi-task LoRA of half the
/// training tasks) on another (that of all of them); README has what that gave. `adapter`
/// must have been trained with the generator's frozen A.
pub fn rebase_generator(
    src: &Path,
    adapter: &LoraAdapter,
    adapter_dir: &Path,
    out: &Path,
) -> Result<()> {
    let cfg = DecoderConfig::load(src)?;
    ensure!(
        cfg.residual,
        "{} is not a residual generator (decoder.json: residual = false)",
        src.display()
    );
    let layout = cfg.layout()?;
    let frozen = cfg
        .frozen_a()?
        .context("a residual generator has a frozen A")?;
    check_frozen_a(adapter, &frozen).with_context(|| format!("{}", adapter_dir.display()))?;
    let rebased = Residual::load(src, &layout)?.rebased(&layout, adapter)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && name != residual::RESIDUAL_FILE && name != REBASE_FILE {
            files.push((name, std::fs::read(entry.path())?));
        }
    }
    files.push((residual::RESIDUAL_FILE.into(), rebased.to_bytes(&layout)?));
    let note = serde_json::json!({ "generator": src, "base_adapter": adapter_dir });
    files.push((REBASE_FILE.into(), serde_json::to_vec_pretty(&note)?));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    crate::format::fsio::write_folder_atomic(out, &refs)
}

/// Written by [`rebase_generator`]: the generator and adapter a rebased generator came from.
pub const REBASE_FILE: &str = "rebase.json";

#[cfg(test)]
mod tests {
    use super::decoder::tests::{tiny_config, tiny_dims};
    use super::*;
    use rand::{Rng, SeedableRng};

    fn minilm_dir() -> Option<std::path::PathBuf> {
        Some(crate::testing::real_assets().minilm())
    }

    fn tiny_generator(seed: u64) -> Option<(Generator, tempfile::TempDir)> {
        let enc = minilm_dir()?;
        let dir = tempfile::tempdir().unwrap();
        write_random_generator(&tiny_config(), seed, dir.path()).unwrap();
        let g = Generator::load(dir.path(), &enc, &Device::Cpu).unwrap();
        Some((g, dir))
    }

    fn flat(a: &LoraAdapter) -> Vec<f32> {
        a.tensors
            .values()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn prompts(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("Question {i}: what is {i} plus {}?", i * 3))
            .collect()
    }

    #[test]
    fn condition_to_adapter_without_encoder() {
        // The decode + detokenise path on a synthetic condition, no asset needed.
        let cfg = tiny_config();
        let layout = cfg.layout().unwrap();
        let (dec, _) = Decoder::seeded(&cfg, 3, &Device::Cpu).unwrap();
        let [n, l, w] = cfg.shapes[0];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let v: Vec<f32> = (0..n * l * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let cond = Tensor::from_vec(v, (n, l, w), &Device::Cpu).unwrap();
        let run = |c: &Tensor| {
            let tokens = dec.forward(c).unwrap();
            layout.detokenize(&tokens, cfg.lora_alpha, "tiny").unwrap()
        };
        let a = run(&cond);
        a.validate(&tiny_dims()).unwrap();
        assert_eq!(a.config.r, 2);
        assert_eq!(a.config.target_modules, vec!["q_proj", "v_proj"]);
        // Deterministic: bit-identical on a second run.
        assert_eq!(flat(&a), flat(&run(&cond)));
        // Order matters: swapping two prompts' conditions changes the adapter.
        let idx = Tensor::new(&[1u32, 0, 2, 3], &Device::Cpu).unwrap();
        let swapped = cond.index_select(&idx, 0).unwrap();
        assert_ne!(flat(&a), flat(&run(&swapped)));
    }

    #[test]
    fn generate_end_to_end_with_minilm() {
        let Some((g, dir)) = tiny_generator(11) else {
            return;
        };
        let p = prompts(4);
        let out = g.generate(&p).unwrap();
        assert!(out.notes.is_empty());
        out.adapter.validate(&tiny_dims()).unwrap();
        assert!(out.timings.total() >= out.timings.decode);
        // Deterministic on the CPU.
        let again = g.generate(&p).unwrap();
        assert_eq!(flat(&out.adapter), flat(&again.adapter));
        // Written through the one PEFT writer, read back identical.
        let peft = dir.path().join("adapter");
        out.adapter.write_peft(&peft).unwrap();
        let back = LoraAdapter::read_peft(&peft).unwrap();
        assert_eq!(flat(&back), flat(&out.adapter));
        assert_eq!(back.config.base_model_name_or_path, "tiny");
        // Order of prompts matters (the decoder convolves over the prompt axis).
        let mut rev = p.clone();
        rev.reverse();
        assert_ne!(flat(&g.generate(&rev).unwrap().adapter), flat(&out.adapter));
        // Fewer prompts are cycled, more are cut, and both are said.
        let few = g.generate(&p[..1]).unwrap();
        assert_eq!(few.notes, vec!["repeated 1 prompt in order to fill N=4"]);
        let cycled = g.generate(&[p[0].clone(), p[1].clone()]).unwrap();
        let explicit = g
            .generate(&[p[0].clone(), p[1].clone(), p[0].clone(), p[1].clone()])
            .unwrap();
        assert_eq!(flat(&cycled.adapter), flat(&explicit.adapter));
        let many = g.generate(&prompts(6)).unwrap();
        assert!(many.notes[0].contains("first 4 of 6"));
        assert_eq!(flat(&many.adapter), flat(&out.adapter));
        // Bad inputs.
        assert!(g
            .generate(&[])
            .unwrap_err()
            .to_string()
            .contains("no prompts"));
        let e = g
            .check_base(&tokenizer::smollm2_135m_dims())
            .unwrap_err()
            .to_string();
        assert!(e.contains("generator was built for hidden 32"), "{e}");
        g.check_base(&tiny_dims()).unwrap();
    }

    #[test]
    fn base_adapter_is_what_closed_gates_generate() {
        let Some(enc) = minilm_dir() else {
            return;
        };
        let mut cfg = tiny_config().with_frozen_a(Some(5)).unwrap();
        cfg.residual = true;
        let (decoder, _) = Decoder::seeded(&cfg, 2, &Device::Cpu).unwrap();
        let encoder = PromptEncoder::load(&enc, &Device::Cpu).unwrap();
        let plain = Generator::new(encoder, decoder).unwrap();
        assert!(plain.base_adapter().is_none());
        // A base unlike anything the decoder outputs.
        let layout = plain.layout().clone();
        let base: Vec<Tensor> = layout
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let v = (0..s.len * layout.rank)
                    .map(|k| (k + i) as f32 * 0.01)
                    .collect();
                Tensor::from_vec(v, (s.len, layout.rank), &Device::Cpu).unwrap()
            })
            .collect();
        let gate = Tensor::zeros(layout.slots.len(), DType::F32, &Device::Cpu).unwrap();
        let residual = Residual {
            base: base.clone(),
            gate,
        };
        let g = plain.with_residual(Some(residual)).unwrap();
        let got = g.base_adapter().unwrap();
        // Gates start at zero: every generated adapter is the base adapter.
        let generated = g.generate(&prompts(4)).unwrap().adapter;
        assert_eq!(flat(&got), flat(&generated));
        assert_eq!(got.config, generated.config);
        got.validate(&tiny_dims()).unwrap();
        // Its B matrices are the base's.
        let vec = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (slot, want) in layout.slots.iter().zip(&base) {
            assert_eq!(vec(&got.tensors[&slot.name()]), vec(want));
        }
    }

    #[test]
    fn generator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Generator>();
        check::<Generated>();
    }

    #[test]
    fn load_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = Generator::load(dir.path(), dir.path(), &Device::Cpu).unwrap_err();
        assert!(format!("{e:#}").contains("decoder.json"), "{e:#}");
        write_random_generator(&tiny_config(), 0, dir.path()).unwrap();
        let e = Generator::load(dir.path(), &dir.path().join("nope"), &Device::Cpu).unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
    }
}
