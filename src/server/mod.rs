//! The serving plugin: the server's [`config`], task [`tagging`] over the stock OpenAI
//! routes (a chat or completion body read, checked and rewritten by [`request`]), tenant API [`keys`], the [`admin`] API with `/metrics` and who may call them,
//! and [`build`]/[`serve`] that embed mistral.rs; [`local`] runs it in-process on a
//! loopback port with a small client (eval, bench, tests).
//!
//! A request goes: HTTP -> [`error::openai_shape`] (errors in the OpenAI shape) ->
//! [`tagging::tag_request`] (API key in keys mode, task id, route, `model` rewrite, places
//! of the task and on the engine model from [`admission`]) -> mistral.rs server-core handler
//! -> the engine model of the base (shared adapters included) or of the task's merged
//! adapter.

pub mod admin;
pub mod admission;
pub mod config;
pub mod error;
pub mod keys;
pub mod local;
pub(crate) mod member;
pub mod metrics;
pub mod request;
pub mod specialise;
pub mod tagging;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use axum::Router;
use mistralrs_server_core::mistralrs_server_router_builder::MistralRsServerRouterBuilder;

pub use config::Config;
use config::TenantMode;

use crate::adapters::{AdapterTable, Limits, Store, StoreLimits, StoreLock};

use crate::engine::{parse_dtype, AdapterMode, MistralRsEngine};
use crate::format::{peft, LlamaDims, LoraAdapter};
use crate::generator::decoder::Condition;
use crate::generator::PromptEncoder;
use crate::training::states::StateEncoder;

/// The plugin's shared state.
pub struct Plugin {
    pub config: Config,
    /// The base model folder as configured and as the engine resolved it: engine-internal
    /// names that a client's `model` may not use.
    pub base_dirs: Vec<String>,
    pub admin_token: Option<String>,
    /// Tenant API keys (used in `plugin.tenants = "keys"`, managed in either mode).
    pub keys: keys::KeyStore,
    pub table: Arc<AdapterTable>,
    /// Places per engine model for chat and completion requests.
    pub admission: admission::Admission,
    pub metrics: Arc<metrics::Metrics>,
    /// Automatic specialisation, when a generator is configured.
    pub specialiser: Option<Arc<specialise::Specialiser>>,
    /// The base model's context in tokens (its `max_position_embeddings`).
    pub context_tokens: usize,
    /// The store's lock, held while the plugin lives (see [`Plugin::release_store`]).
    store_lock: std::sync::Mutex<Option<StoreLock>>,
}

impl Plugin {
    /// Lets go of the store's lock before the process ends, for an in-process server that
    /// is stopped and started again on the same store ([`local::LocalServer`] on drop). Its
    /// background tasks may still be writing, as those of an ended process would not be.
    pub fn release_store(&self) {
        self.store_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// The base model folder the config names, fetching the default assets when needed.
pub fn resolve_base(config: &Config) -> Result<PathBuf> {
    crate::assets::Assets::new(&config.model.assets)
        .given_or(config.model.base.as_deref(), crate::assets::Assets::smollm2)
}

/// Memory budgeted for one resident adapter (`Limits::bytes_per_model`): a whole base copy
/// when merged; when shared, its matrices for a rank-16 LoRA on all seven modules in
/// `dtype` (the collector and the generators write rank 8 on two).
pub fn adapter_model_bytes(
    base: &Path,
    dims: &LlamaDims,
    dtype: &str,
    mode: AdapterMode,
) -> Result<u64> {
    match mode {
        AdapterMode::Merged => model_bytes(base, dtype),
        AdapterMode::Shared => {
            let per_layer: usize = peft::Module::ALL
                .iter()
                .map(|m| {
                    let (i, o) = m.dims(dims);
                    16 * (i + o)
                })
                .sum();
            let params = (per_layer * dims.num_hidden_layers) as u64;
            Ok(params * dtype_width(dtype))
        }
    }
}

/// Bytes of one sequence's KV cache in the engine's batch cache for a context of `tokens`
/// (prompt and answer): K and V of every layer, with room for a whole number of 512-position
/// blocks (mistral.rs 0.8.1 grows a cache by `NormalCache::CACHE_GROW_SIZE`). An engine
/// model's KV cache is at most `2 max_seqs - 1` of these: a batch of at most `max_seqs`
/// (vendor patch 0009) in one copy (patch 0008), and while sequences join it after others
/// finished, their prompt steps' caches beside it, whose finished rows stay allocated until
/// the next decode step.
pub fn kv_cache_bytes(dims: &LlamaDims, dtype: &str, tokens: usize) -> u64 {
    const BLOCK: usize = 512;
    let positions = tokens.max(1).div_ceil(BLOCK) * BLOCK;
    let per_position = dims.num_hidden_layers * 2 * dims.num_key_value_heads * dims.head_dim();
    (per_position * positions) as u64 * dtype_width(dtype)
}

/// Bytes of KV cache an engine model holds at most when each of its sequences has a
/// context of `tokens`: `2 batch - 1` sequences' caches ([`kv_cache_bytes`]) for batches of
/// at most `batch` (`model.max_seqs`; the engine runs 0 as 1).
pub fn kv_bound_bytes(dims: &LlamaDims, dtype: &str, batch: usize, tokens: usize) -> u64 {
    (2 * batch.max(1) - 1) as u64 * kv_cache_bytes(dims, dtype, tokens)
}

/// Logs what the engine's KV cache can take per engine model (the base, which runs every
/// shared adapter too, or a merged adapter's copy), from the configuration: for requests of
/// one 512-position block, and for requests that fill the model's context.
fn log_kv_bound(context: usize, dims: &LlamaDims, model: &config::ModelConfig) {
    let mib = |tokens| kv_bound_bytes(dims, &model.dtype, model.max_seqs, tokens) >> 20;
    tracing::info!(
        max_seqs = model.max_seqs,
        context,
        mib_at_512_positions = mib(512),
        mib_at_full_context = mib(context),
        "engine KV cache bound per engine model (model.max_seqs bounds it)"
    );
}

/// The context of the base model in folder `base`, in tokens: its config's
/// `max_position_embeddings`, 512 where it does not say.
fn context_tokens(base: &Path) -> usize {
    std::fs::read(base.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("max_position_embeddings")?.as_u64())
        .map_or(512, |n| n as usize)
}

fn dtype_width(dtype: &str) -> u64 {
    if dtype.eq_ignore_ascii_case("f32") {
        4
    } else {
        2
    }
}

/// Bytes a loaded copy of the model takes in `dtype`, from its safetensors header.
pub fn model_bytes(base: &Path, dtype: &str) -> Result<u64> {
    use std::io::Read;
    let path = base.join("model.safetensors");
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)?;
    let params: u64 = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("shape")?.as_array().cloned())
        .map(|s| s.iter().map(|d| d.as_u64().unwrap_or(0)).product::<u64>())
        .sum();
    Ok(params * dtype_width(dtype))
}

/// Loads the engine, the adapter table and the generator the config names, and assembles
/// the router.
pub async fn build(config: Config) -> Result<(Router, Option<Arc<Plugin>>)> {
    build_with(config, None).await
}

/// [`build`] with a given generator (instead of the config's) for automatic specialisation.
pub async fn build_with(
    config: Config,
    generator: Option<Arc<dyn specialise::AdapterGenerator>>,
) -> Result<(Router, Option<Arc<Plugin>>)> {
    let Routers { stock, plugin } = assemble(config, generator).await?;
    Ok(match plugin {
        Some((router, plugin)) => (router, Some(plugin)),
        None => (stock, None),
    })
}

/// What [`assemble`] builds on one engine: the stock mistral.rs router, and, when the plugin
/// is enabled, the plugin's router (the same stock router under the tagging layer, with the
/// admin API and `/metrics`) and its state. Serving the stock one too is for measuring what
/// the plugin's layer costs (`bench overhead`); `plugin.enabled = false` serves it alone.
pub struct Routers {
    pub stock: Router,
    pub plugin: Option<(Router, Arc<Plugin>)>,
}

/// Loads the engine, the adapter table and the generator (`generator`, else the config's),
/// and assembles the routers.
pub async fn assemble(
    config: Config,
    generator: Option<Arc<dyn specialise::AdapterGenerator>>,
) -> Result<Routers> {
    config.check()?;
    crate::engine::tune_allocator();
    // Before the engine loads, so that a second server on the same store fails at once.
    let store_lock = config
        .plugin
        .enabled
        .then(|| StoreLock::acquire(&config.plugin.store))
        .transpose()?;
    let base = resolve_base(&config)?;
    let dtype = parse_dtype(&config.model.dtype)?;
    let engine = Arc::new(
        MistralRsEngine::start(
            &base,
            dtype,
            config.model.max_seqs,
            config.model.adapter_mode,
        )
        .await?,
    );
    let stock = MistralRsServerRouterBuilder::new()
        .with_mistralrs(engine.mistralrs())
        .with_max_body_limit(config.server.max_body_bytes)
        .build()
        .await?;
    if !config.plugin.enabled {
        return Ok(Routers {
            stock,
            plugin: None,
        });
    }
    let dims = LlamaDims::from_config_file(&base.join("config.json"))?;
    let context = context_tokens(&base);
    log_kv_bound(context, &dims, &config.model);
    let base_dirs = vec![
        base.display().to_string(),
        engine.base_dir().display().to_string(),
    ];
    let limits = Limits {
        max_resident: config.plugin.max_resident,
        max_resident_bytes: config.plugin.max_resident_mib << 20,
        bytes_per_model: adapter_model_bytes(
            &base,
            &dims,
            &config.model.dtype,
            config.model.adapter_mode,
        )?,
        retire_ceiling: std::time::Duration::from_secs(config.plugin.retire_ceiling_s),
        load_queue: std::time::Duration::from_millis(config.plugin.load_queue_ms),
    };
    let mut encoder = None;
    let generators = load_generators(&config, &dims, &base, generator, &mut encoder)?;
    let library = match (&config.plugin.library, &generators) {
        (Some(dir), Some(g)) => Some(load_library(&config, &base, &dims, dir, g, &mut encoder)?),
        (Some(_), None) => bail!(
            "plugin.library is set but no generator is: the library serves generations (set plugin.generator or plugin.examples_generator)"
        ),
        (None, _) => None,
    };
    let check_tolerance = specialise::guard::Tolerance::new(config.plugin.check_tolerance)
        .context("plugin.check_tolerance")?;
    let fallback_adapter = match &config.plugin.fallback_adapter {
        Some(dir) => Some(
            LoraAdapter::read_peft(dir)
                .and_then(|a| a.validate(&dims).map(|()| a))
                .with_context(|| format!("plugin.fallback_adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let store_lock = store_lock.context("the plugin is enabled, so its store is locked")?;
    let store = Store::open(&config.plugin.store)?;
    store.remove_leftovers(&store_lock)?;
    let key_store = keys::KeyStore::open(&config.plugin.store.join(keys::KEYS_FILE))?;
    if let Some(root) = &config.plugin.import_root {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating import root {}", root.display()))?;
    }
    let table = AdapterTable::new(engine, store, dims, limits)?;
    table.set_store_limits(StoreLimits {
        max_tasks: config.plugin.max_stored_tasks,
        max_bytes: config.plugin.max_store_mib.saturating_mul(1 << 20),
    });
    table.load_pinned().await;
    let metrics = Arc::new(metrics::Metrics::new());
    let specialiser = generators.map(|g| {
        let pc = &config.plugin;
        let settings = specialise::Settings {
            k: pc.prompts_k.unwrap_or_else(|| g.main.batch_size()).max(1),
            max_prompt_bytes: pc.max_prompt_bytes,
            max_tracked_tasks: pc.max_tracked_tasks.max(1),
            concurrency: pc.generation_concurrency,
            queue: pc.generation_queue,
            retry_base: std::time::Duration::from_secs(pc.retry_base_s),
            max_retries: pc.max_retries,
            regenerate_after: pc.regenerate_after,
            guard_max_tokens: pc.guard_max_tokens.max(1),
            check_tolerance,
            guard_fallback: pc.guard_fallback,
            fallback_adapter,
            max_generations_per_hour: pc.max_generations_per_hour,
            max_versions: pc.max_versions,
            prepare_on_arrival: pc.encode_on_arrival,
            library,
            demonstrations: pc.demonstrations,
            demonstrations_pool: pc.demonstrations_pool,
        };
        specialise::Specialiser::start(g, table.clone(), metrics.clone(), settings)
    });
    let admission = admission::Admission::new(
        config.plugin.max_in_flight_per_model,
        config.plugin.max_in_flight_per_task,
        std::time::Duration::from_millis(config.plugin.admission_wait_ms),
    );
    let admin_token = config.admin_token();
    if admin_token.is_none() {
        tracing::warn!("no admin token set: the admin API is open to local clients");
    }
    if config.plugin.tenants == TenantMode::Open && !config.server.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.server.listen,
            "plugin.tenants = \"open\" off loopback: any client may use any task's adapter; set plugin.tenants = \"keys\""
        );
    }
    let plugin = Arc::new(Plugin {
        config,
        base_dirs,
        admin_token,
        keys: key_store,
        table,
        admission,
        metrics,
        specialiser,
        context_tokens: context,
        store_lock: std::sync::Mutex::new(Some(store_lock)),
    });
    let router = compose(stock.clone(), &plugin, |r| {
        r.layer(axum::middleware::from_fn_with_state(
            plugin.clone(),
            tagging::tag_request,
        ))
    });
    Ok(Routers {
        stock,
        plugin: Some((router, plugin)),
    })
}

/// The plugin's router: the stock routes under `tagging` (the tagging layer; `bench
/// overhead` puts probes in its place to see what the rest of this structure costs), the
/// admin API beside them, and the OpenAI error shape over all.
pub(crate) fn compose(
    stock: Router,
    plugin: &Arc<Plugin>,
    tagging: impl FnOnce(Router) -> Router,
) -> Router {
    tagging(stock)
        .merge(admin::router(plugin.clone()))
        .fallback(error::no_route)
        // Last, so that it sees every answer: errors not yet in the OpenAI shape get it.
        .layer(axum::middleware::from_fn(error::openai_shape))
}

/// The generators the config names (`generator`, `examples_generator`), checked against
/// the base model; `main` when given replaces the config's `generator`.
/// The generators, around `encoder` (loaded into it first if empty: once for both
/// generators and the library).
fn load_generators(
    config: &Config,
    dims: &LlamaDims,
    base: &Path,
    main: Option<Arc<dyn specialise::AdapterGenerator>>,
    encoder: &mut Option<Arc<PromptEncoder>>,
) -> Result<Option<specialise::Generators>> {
    let main = match (main, &config.plugin.generator) {
        (Some(g), _) => Some(g),
        (None, Some(dir)) => Some(load_generator(config, dims, base, dir, encoder)?),
        (None, None) => None,
    };
    let examples = match &config.plugin.examples_generator {
        Some(dir) => {
            let g = load_generator(config, dims, base, dir, encoder)?;
            ensure!(
                g.condition() == Condition::Examples,
                "plugin.examples_generator {} reads prompts: it is a plugin.generator",
                dir.display()
            );
            Some(g)
        }
        None => None,
    };
    Ok(match (main, examples) {
        (Some(main), examples) => Some(specialise::Generators { main, examples }),
        (None, Some(g)) => Some(g.into()),
        (None, None) => None,
    })
}

/// The generator in `dir`, checked against the base model, around `encoder` (loaded into
/// it first if empty). A generator of the base model's states (`train --read-states`)
/// reads them from `base`, through its own CPU copy of the blocks it runs.
fn load_generator(
    config: &Config,
    dims: &LlamaDims,
    base: &Path,
    dir: &Path,
    encoder: &mut Option<Arc<PromptEncoder>>,
) -> Result<Arc<dyn specialise::AdapterGenerator>> {
    let device = crate::generator::default_device()?;
    let encoder = shared_encoder(config, encoder, &device)?;
    let states = StateEncoder::reader(dir, base)?;
    let g = crate::generator::Generator::load_sharing(dir, encoder, states, &device)?;
    g.check_base(dims)
        .with_context(|| format!("generator {} does not fit the base model", dir.display()))?;
    tracing::info!(generator = %dir.display(), prompts = g.config().prompts, condition = ?g.config().condition, "automatic specialisation on");
    Ok(Arc::new(g))
}

/// The prompt encoder in `encoder`, loaded into it first if empty.
fn shared_encoder(
    config: &Config,
    encoder: &mut Option<Arc<PromptEncoder>>,
    device: &candle_core::Device,
) -> Result<Arc<PromptEncoder>> {
    if let Some(e) = encoder {
        return Ok(e.clone());
    }
    let folder = crate::assets::Assets::new(&config.model.assets).given_or(
        config.plugin.encoder.as_deref(),
        crate::assets::Assets::minilm,
    )?;
    Ok(encoder
        .insert(Arc::new(PromptEncoder::load(&folder, device)?))
        .clone())
}

/// The adapter library in `dir` (`plugin.library`), each stored task read by as many of
/// its examples as the generators' N.
fn load_library(
    config: &Config,
    base: &Path,
    dims: &LlamaDims,
    dir: &Path,
    generators: &specialise::Generators,
    encoder: &mut Option<Arc<PromptEncoder>>,
) -> Result<Arc<dyn specialise::AdapterSelector>> {
    let t = std::time::Instant::now();
    let device = crate::generator::default_device()?;
    let encoder = shared_encoder(config, encoder, &device)?;
    let texts = generators
        .examples
        .as_ref()
        .unwrap_or(&generators.main)
        .batch_size();
    let library = specialise::library::AdapterLibrary::load(
        dir,
        base,
        dims,
        encoder,
        texts,
        config.plugin.library_nearest,
    )
    .with_context(|| format!("plugin.library {}", dir.display()))?;
    tracing::info!(library = %dir.display(), tasks = library.tasks(), nearest = config.plugin.library_nearest, secs = t.elapsed().as_secs_f64(), "adapter library loaded");
    Ok(Arc::new(library))
}

/// Builds and serves until the process ends.
pub async fn serve(config: Config) -> Result<()> {
    let listen = config.server.listen;
    let (router, _plugin) = build(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "mistralrs-dnd serving");
    axum::serve(listener, router).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequences_kv_cache_grows_in_blocks_of_512_positions() {
        let d = crate::generator::tokenizer::smollm2_135m_dims();
        // 30 layers x (K, V) x 3 heads x 64 x 512 positions x 4 bytes.
        let block = 30 * 2 * 3 * 64 * 512 * 4;
        assert_eq!(kv_cache_bytes(&d, "f32", 1), block);
        assert_eq!(kv_cache_bytes(&d, "f32", 512), block);
        assert_eq!(kv_cache_bytes(&d, "f32", 513), 2 * block);
        assert_eq!(kv_cache_bytes(&d, "f16", 100), block / 2);
        assert_eq!(kv_bound_bytes(&d, "f32", 16, 600), 31 * 2 * block);
        assert_eq!(kv_bound_bytes(&d, "f32", 0, 1), block);
    }
}
