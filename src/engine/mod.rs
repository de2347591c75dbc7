//! The engine side: base and adapter models in mistral.rs 0.8.1, behind [`AdapterEngine`].
//!
//! 0.8.1 has no per-request LoRA. An adapter is addressed by a model id of its own in the
//! one `MistralRs` instance, served in one of two shapes ([`AdapterMode`]): by the base
//! model itself, as an alias of it whose rows get the LoRA unmerged in the same batches as
//! every other adapter's and the base's ([`shared`], the default: a few MB and
//! milliseconds per adapter; vendor patches 0005 and 0007), or by an engine model of its
//! own, a whole base copy loaded with the LoRA merged in (0.8.1's own LoRA loading:
//! hundreds of MB and about a second each). A later mistral.rs with a dynamic LoRA table
//! can implement [`AdapterEngine`] without the plugin changing.
//!
//! The traps of 0.8.1 are handled here and only here:
//! every pipeline loads on a fresh OS thread with the thread-local LoRA list cleared before
//! and after (trap 1); `remove_model` runs on a blocking thread (trap 2) followed by
//! `malloc_trim` so the memory goes back to the OS (trap 3); adapters are read from their
//! own folders, never the base folder (trap 4).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use candle_core::{DType, Device};
use mistralrs_core::{
    AdapterPaths, AddModelConfig, DefaultSchedulerMethod, DeviceMapMetadata, DeviceMapSetting,
    EngineConfig, LocalModelPaths, LoraAdapterPaths, MistralRs, MistralRsBuilder, ModelDType,
    ModelPaths, NormalLoaderBuilder, NormalLoaderType, NormalSpecificConfig, Pipeline,
    SchedulerConfig,
};

use crate::format::peft::{self, LoraAdapter};
use shared::{AdapterSet, AdapterWeights, MultiLoraLinear};

#[cfg(test)]
pub(crate) mod fake;
pub mod shared;

/// How an adapter is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterMode {
    /// By the base model, its LoRA applied unmerged to its requests' rows ([`shared`]).
    #[default]
    Shared,
    /// A whole copy of the base with the LoRA merged into it (mistral.rs 0.8.1's loader).
    Merged,
}

impl AdapterMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "shared" => Ok(Self::Shared),
            "merged" => Ok(Self::Merged),
            other => Err(anyhow!(
                "unknown adapter mode {other:?}: use shared or merged"
            )),
        }
    }
}

/// What the plugin needs from an inference engine.
#[async_trait]
pub trait AdapterEngine: Send + Sync {
    /// Model id of the base model.
    fn base_id(&self) -> &str;
    /// Makes the PEFT adapter in `adapter_dir` servable as `model_id`. Returns how long
    /// that took (reading and converting its matrices, or loading a merged base copy).
    async fn register(&self, model_id: &str, adapter_dir: &Path) -> Result<Duration>;
    /// Removes a registered adapter model and frees its memory.
    async fn unregister(&self, model_id: &str) -> Result<()>;
    /// `model_id`'s greedy answer to `prompt` as the last user message, at most
    /// `max_tokens` tokens: what a client's chat request would get (the no-harm check).
    /// `shown`: (user, assistant) turns before it, as the plugin inserts a task's examples
    /// into its chat requests; usually none.
    async fn answer(
        &self,
        model_id: &str,
        shown: &[(&str, &str)],
        prompt: &str,
        max_tokens: usize,
    ) -> Result<String>;
}

/// The chat messages of (user, assistant) `turns`, two each, in order: how a task's examples
/// are shown before a conversation.
pub fn turn_messages<'t>(
    turns: impl IntoIterator<Item = (&'t str, &'t str)>,
) -> Vec<serde_json::Value> {
    let message = |role, content| serde_json::json!({"role": role, "content": content});
    turns
        .into_iter()
        .flat_map(|(user, assistant)| [message("user", user), message("assistant", assistant)])
        .collect()
}

/// Numeric type the models are served in.
pub fn parse_dtype(s: &str) -> Result<ModelDType> {
    match s.to_ascii_lowercase().as_str() {
        "f16" => Ok(ModelDType::F16),
        "f32" => Ok(ModelDType::F32),
        "bf16" => Ok(ModelDType::BF16),
        "auto" => Ok(ModelDType::Auto),
        other => Err(anyhow!(
            "unknown dtype {other:?}: use f16, f32, bf16 or auto"
        )),
    }
}

/// mistral.rs 0.8.1 as an [`AdapterEngine`].
pub struct MistralRsEngine {
    mistralrs: Arc<MistralRs>,
    base_dir: PathBuf,
    dtype: ModelDType,
    max_seqs: usize,
    base_id: String,
    mode: AdapterMode,
    /// Shared mode: the adapters the base model serves, and the dtype and device their
    /// matrices are converted to.
    shared: Option<(Arc<AdapterSet>, DType, Device)>,
}

impl MistralRsEngine {
    /// Loads the base model from a Hugging Face llama folder and starts the engine. In
    /// shared mode the engine's base model is a fork of it with every projection wrapped
    /// to serve the adapters ([`shared`]).
    pub async fn start(
        base_dir: &Path,
        dtype: ModelDType,
        max_seqs: usize,
        mode: AdapterMode,
    ) -> Result<Self> {
        let base_dir = base_dir
            .canonicalize()
            .with_context(|| format!("base model folder {}", base_dir.display()))?;
        let mut pipeline = load_pipeline_on_fresh_thread(base_dir.clone(), None, dtype).await?;
        let mut shared = None;
        if mode == AdapterMode::Shared {
            let set = Arc::new(AdapterSet::default());
            let base = pipeline.lock().await;
            let fork = base
                .fork_with_linear_layers(&mut |path, layer| {
                    Ok(MultiLoraLinear::wrap(path, layer, &set))
                })
                .context("adapter_mode = \"shared\" needs a llama base model")?;
            shared = Some((set, base.get_metadata().activation_dtype, base.device()));
            drop(base);
            // The unwrapped pipeline goes; its weights live on in the fork.
            pipeline = fork;
        }
        let base_id = "base".to_string();
        let mistralrs = MistralRsBuilder::new(pipeline, scheduler(max_seqs), false, None)
            .with_model_id(base_id.clone())
            .with_no_prefix_cache(true)
            .build()
            .await;
        Ok(Self {
            mistralrs,
            base_dir,
            dtype,
            max_seqs,
            base_id,
            mode,
            shared,
        })
    }

    pub fn mistralrs(&self) -> Arc<MistralRs> {
        self.mistralrs.clone()
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// [`AdapterEngine::register`] in the given shape, whatever the configured one (the
    /// parity test compares both in one engine started in shared mode).
    pub async fn register_as(
        &self,
        model_id: &str,
        adapter_dir: &Path,
        mode: AdapterMode,
    ) -> Result<Duration> {
        let t = Instant::now();
        match mode {
            AdapterMode::Shared => {
                let (set, dtype, device) = self
                    .shared
                    .clone()
                    .context("this engine was started with adapter_mode = \"merged\"")?;
                let dir = adapter_dir.to_path_buf();
                // File reads and tensor conversions: off the async threads.
                let weights = tokio::task::spawn_blocking(move || {
                    AdapterWeights::new(&LoraAdapter::read_peft(&dir)?, dtype, &device)
                })
                .await??;
                set.insert(model_id, weights);
                if let Err(e) = self.mistralrs.register_model_alias(model_id, &self.base_id) {
                    set.remove(model_id);
                    bail!("registering {model_id}: {e}");
                }
            }
            AdapterMode::Merged => {
                let pipeline = load_pipeline_on_fresh_thread(
                    self.base_dir.clone(),
                    Some(adapter_dir.to_path_buf()),
                    self.dtype,
                )
                .await?;
                let mut config = AddModelConfig::new(EngineConfig {
                    throughput_logging_enabled: false,
                    no_prefix_cache: true,
                    ..Default::default()
                });
                config.loader_config = None; // no stock reload for adapter models (trap 1)
                self.mistralrs
                    .add_model(
                        model_id.to_string(),
                        pipeline,
                        scheduler(self.max_seqs),
                        config,
                    )
                    .await
                    .map_err(|e| anyhow!("registering {model_id}: {e}"))?;
            }
        }
        Ok(t.elapsed())
    }
}

fn scheduler(max_seqs: usize) -> SchedulerConfig {
    SchedulerConfig::DefaultScheduler {
        method: DefaultSchedulerMethod::Fixed(max_seqs.max(1).try_into().expect("max_seqs >= 1")),
    }
}

#[async_trait]
impl AdapterEngine for MistralRsEngine {
    fn base_id(&self) -> &str {
        &self.base_id
    }

    async fn register(&self, model_id: &str, adapter_dir: &Path) -> Result<Duration> {
        self.register_as(model_id, adapter_dir, self.mode).await
    }

    async fn unregister(&self, model_id: &str) -> Result<()> {
        if let Some((set, ..)) = &self.shared {
            if set.remove(model_id) {
                self.mistralrs
                    .remove_model_alias(model_id)
                    .map_err(|e| anyhow!("removing {model_id}: {e}"))?;
                return Ok(());
            }
        }
        let mistralrs = self.mistralrs.clone();
        let id = model_id.to_string();
        // `remove_model` blocks on a channel send: never inside an async task (trap 2).
        let result = tokio::task::spawn_blocking(move || {
            let r = mistralrs.remove_model(&id);
            trim_heap();
            r
        })
        .await?;
        result.map_err(|e| anyhow!("removing {model_id}: {e}"))
    }

    async fn answer(
        &self,
        model_id: &str,
        shown: &[(&str, &str)],
        prompt: &str,
        max_tokens: usize,
    ) -> Result<String> {
        use mistralrs_server_core::chat_completion::parse_request;
        use mistralrs_server_core::handler_core::{
            create_response_channel, send_request_with_model,
        };
        let mut messages = turn_messages(shown.iter().copied());
        messages.push(serde_json::json!({"role": "user", "content": prompt}));
        // The request a client would send, through the stock handler's own parsing.
        let request = serde_json::from_value(serde_json::json!({
            "model": model_id,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }))?;
        let (tx, mut rx) = create_response_channel(Some(1));
        let (request, _) = parse_request(request, self.mistralrs.clone(), tx).await?;
        send_request_with_model(&self.mistralrs, request, Some(model_id)).await?;
        match rx.recv().await {
            Some(mistralrs_core::Response::Done(r)) => Ok(r
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content)
                .unwrap_or_default()),
            Some(mistralrs_core::Response::ModelError(e, _))
            | Some(mistralrs_core::Response::CompletionModelError(e, _)) => {
                bail!("{model_id} failed to answer: {e}")
            }
            Some(mistralrs_core::Response::InternalError(e))
            | Some(mistralrs_core::Response::ValidationError(e)) => {
                bail!("{model_id} failed to answer: {e}")
            }
            Some(_) => bail!("{model_id} answered with an unexpected response kind"),
            None => bail!("{model_id}: the engine dropped the request"),
        }
    }
}

/// Sets glibc's allocator for a server: the mmap threshold fixed at its 128 KiB default, and
/// 16 MiB of padding at the top of each heap.
///
/// The threshold: left dynamic, it rises to the size of the largest block freed, so after
/// the first large tensor is freed, tensors come from the per-thread arenas, which keep
/// what is freed: under load (`bench tenants`, README) the server's RSS grew by hundreds of
/// MiB that nothing used. Fixed, every tensor of 128 KiB or more is its own mapping,
/// returned to the OS when freed; throughput was the same in side-by-side runs.
///
/// The padding: fixing the threshold also fixes the trim threshold (128 KiB), so the top
/// of a heap went back to the kernel and was faulted in again around every request: 127
/// minor faults a request on the tests' tiny model (`bench overhead`), 1.55 million in a
/// short SmolLM2 `bench throughput`. Trims keep the padding: 2.3 thousand and 0.6 million
/// faults, the same peak RSS (README, "Overhead").
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

/// Returns freed heap pages to the OS (glibc keeps them otherwise, trap 3).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

type SharedPipeline = Arc<tokio::sync::Mutex<dyn Pipeline + Send + Sync>>;

/// Loads a pipeline (base, or base + one merged LoRA) on a new OS thread: mistral.rs keeps
/// the list of LoRAs to merge in a thread-local that is never cleared, so any reused thread
/// would merge earlier adapters in again.
async fn load_pipeline_on_fresh_thread(
    base_dir: PathBuf,
    adapter_dir: Option<PathBuf>,
    dtype: ModelDType,
) -> Result<SharedPipeline> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("dnd-load".into())
        .spawn(move || {
            mistralrs_quant::clear_applied_loras();
            let r = load_pipeline(&base_dir, adapter_dir.as_deref(), dtype);
            mistralrs_quant::clear_applied_loras();
            let _ = tx.send(r);
        })
        .context("spawning a loader thread")?;
    rx.await.context("loader thread died")?
}

fn load_pipeline(
    base_dir: &Path,
    adapter_dir: Option<&Path>,
    dtype: ModelDType,
) -> Result<SharedPipeline> {
    let adapter_paths = match adapter_dir {
        None => AdapterPaths::None,
        Some(dir) => {
            let text = std::fs::read_to_string(dir.join(peft::CONFIG_FILE))?;
            let lora_config: mistralrs_quant::LoraConfig = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", dir.join(peft::CONFIG_FILE).display()))?;
            AdapterPaths::Lora(vec![LoraAdapterPaths {
                lora_config,
                adapter_path: dir.join(peft::WEIGHTS_FILE),
            }])
        }
    };
    let opt = |name: &str| {
        let p = base_dir.join(name);
        p.exists().then_some(p)
    };
    let paths: Box<dyn ModelPaths> = Box::new(LocalModelPaths {
        tokenizer_filename: base_dir.join("tokenizer.json"),
        config_filename: base_dir.join("config.json"),
        template_filename: opt("tokenizer_config.json"),
        filenames: vec![base_dir.join("model.safetensors")],
        adapter_paths,
        gen_conf: opt("generation_config.json"),
        preprocessor_config: None,
        processor_config: None,
        chat_template_json_filename: None,
    });
    let mut builder = NormalLoaderBuilder::new(
        NormalSpecificConfig::default(),
        None,
        None,
        Some(base_dir.to_string_lossy().to_string()),
        false,
        None,
    );
    if let Some(dir) = adapter_dir {
        builder = builder.with_lora(vec![dir.to_string_lossy().to_string()]);
    }
    let loader = builder.build(Some(NormalLoaderType::Llama))?;
    loader.load_model_from_path(
        &paths,
        &dtype,
        &device(),
        true,
        DeviceMapSetting::Map(DeviceMapMetadata::dummy()),
        None,
        None,
    )
}

/// CPU, or the first GPU with the `cuda` feature.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}
