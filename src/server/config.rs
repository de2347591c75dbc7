//! The server's TOML configuration (`configs/*.toml`); every key has a default, documented
//! in `plugin.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::specialise::guard;
use crate::engine::AdapterMode;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub plugin: PluginConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (adapter uploads included).
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            max_body_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Asset root; the default base model and encoder are fetched there when missing.
    pub assets: PathBuf,
    /// Hugging Face llama folder of the base model; default: the converted SmolLM2 in `assets`.
    pub base: Option<PathBuf>,
    pub dtype: String,
    /// Sequences the engine schedules at once, per model (the base, or one adapter): they
    /// share its decode batches; the others wait in the engine's queue.
    pub max_seqs: usize,
    /// How an adapter model holds its weights: "shared" (the base's, LoRA unmerged) or
    /// "merged" (a whole base copy with the LoRA merged in).
    pub adapter_mode: AdapterMode,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            assets: PathBuf::from("assets"),
            base: None,
            dtype: "f32".into(),
            max_seqs: 16,
            adapter_mode: AdapterMode::default(),
        }
    }
}

/// Where a request's task id may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskSource {
    /// The `task_header` request header (default `X-Task-Id`).
    Header,
    /// A top-level `task_id` field of the JSON body (OpenAI clients: `extra_body`).
    Body,
    /// The OpenAI `user` field (tenant mode).
    User,
}

/// Who a client of the OpenAI routes is (`plugin.tenants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantMode {
    /// A client names its task itself (`task_id_sources`), with no credentials: any client
    /// may use any task's adapter. For loopback and development.
    #[default]
    Open,
    /// Every `/v1/` request needs an API key (`POST /admin/keys`), and the key's tenant is
    /// its task, whatever the request says ([`super::keys`]).
    Keys,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    pub enabled: bool,
    /// `open` (default) or `keys`: see [`TenantMode`].
    pub tenants: TenantMode,
    /// Requests per minute of a new API key that names no `rpm`.
    pub default_key_rpm: u32,
    /// Adapter store; every accepted adapter version lives here.
    pub store: PathBuf,
    /// `PUT /admin/adapters/{task}` with `{"path": DIR}` only reads inside this folder.
    pub import_root: Option<PathBuf>,
    /// Bearer token of the admin API; `DND_ADMIN_TOKEN` overrides it.
    pub admin_token: Option<String>,
    /// With an admin token set, `/metrics` needs it too (off: open to any client that
    /// reaches the port, e.g. a scraper without credentials).
    pub metrics_need_token: bool,
    /// Sources of the task id, first match wins.
    pub task_id_sources: Vec<TaskSource>,
    pub task_header: String,
    /// Resident adapters at most (loading and retiring ones counted too).
    pub max_resident: usize,
    /// Resident adapter memory at most, in MiB.
    pub max_resident_mib: u64,
    /// How long a request for a stored, not resident adapter waits for it to load before
    /// the base model answers it, in milliseconds.
    pub load_wait_ms: u64,
    /// How long an adapter load waits for room under `max_resident` and `max_resident_mib`
    /// (which count models loading and models being removed too) before it is given up, in
    /// milliseconds: the task's requests go to the base until one starts it again; an
    /// upload or pin fails.
    pub load_queue_ms: u64,
    /// Generator folder (DnD decoder); unset: no automatic specialisation.
    pub generator: Option<PathBuf>,
    /// A generator that reads labelled examples (`train --condition examples`), for the
    /// tasks that have examples instead of `generator`.
    pub examples_generator: Option<PathBuf>,
    /// Prompt encoder folder; default: MiniLM in the asset folder.
    pub encoder: Option<PathBuf>,
    /// Prompts of a task that trigger its generation; default: the generator's N.
    pub prompts_k: Option<usize>,
    /// Longer prompts are cut to this many bytes before they are kept.
    pub max_prompt_bytes: usize,
    /// Tasks whose prompts are kept at once; past it the collecting-only task seen longest
    /// ago is dropped (never one with an adapter or a generation under way); when none can
    /// be, a new task's request is a 503.
    pub max_tracked_tasks: usize,
    /// Tasks with a stored adapter at most: past it a task without one gets none (an upload
    /// is a 507, a generation waits).
    pub max_stored_tasks: usize,
    /// Stored adapter weights, every version of every task, at most, in MiB (as
    /// `max_stored_tasks`).
    pub max_store_mib: u64,
    /// Generations running at once.
    pub generation_concurrency: usize,
    /// Generation jobs waiting at most.
    pub generation_queue: usize,
    /// First retry of a failed generation after this many seconds, doubling each time.
    pub retry_base_s: u64,
    /// Automatic retries of a failed generation; one cut short by the end of the process
    /// counts as failed (the count survives restarts).
    pub max_retries: u32,
    /// Regenerate a task's adapter after this many more of its prompts (unset: never).
    pub regenerate_after: Option<usize>,
    /// Tokens the base model and a new adapter may answer each of a task's labelled
    /// examples with in the no-harm check (`specialise::guard`).
    pub guard_max_tokens: usize,
    /// The share of a task's examples a new adapter's hits may fall short of the base
    /// model's in the no-harm check and still be routed, rounded down, in [0, 1)
    /// (`specialise::guard::Tolerance`).
    pub check_tolerance: f64,
    /// Check the generator's base adapter (a residual generator's, e.g. its multi-task
    /// LoRA) beside each generated adapter, and route it instead when it answers more of
    /// the task's examples (and passes the check itself).
    pub guard_fallback: bool,
    /// The adapter (PEFT folder) `guard_fallback` checks and routes instead of the
    /// generator's base adapter, e.g. a multi-task LoRA of more tasks than the one the
    /// generator sits on; it also serves generators that have none.
    pub fallback_adapter: Option<PathBuf>,
    /// An adapter library (a `collect` output folder, e.g. the LoRAs the generator was
    /// trained from): for a task with labelled examples, the stored adapter that predicts
    /// them best is checked and routed beside the generated one
    /// (`server::specialise::library`). Unset: none. Costs the base model once more in
    /// memory (F32) and seconds per generation.
    pub library: Option<PathBuf>,
    /// Examples shown (`PUT /admin/adapters/{task}/examples`, the first K) before a task's
    /// chat requests, as earlier turns: one more candidate of the no-harm check, the base
    /// model with them, routed like the others (`specialise::guard`). 0: none.
    pub demonstrations: usize,
    /// More than `demonstrations`: up to this many of a task's first examples are a pool
    /// (as many as leave the check 16 after them, `guard::Split`), and each prompt (the
    /// check's and the requests') is shown its `demonstrations` nearest of them
    /// (`tasks::nearest`). 0: the first `demonstrations` for every prompt.
    pub demonstrations_pool: usize,
    /// The library's adapters a selection weighs: those of the tasks whose examples read
    /// most like the task's.
    pub library_nearest: usize,
    /// Generations started per task (tenant) and hour at most, failed ones included (the
    /// count survives restarts).
    pub max_generations_per_hour: usize,
    /// Stored adapter versions kept per task (tenant).
    pub max_versions: usize,
    /// Encode each kept prompt with the generator's encoder as it arrives (one at a time,
    /// off the request path), so that a generation only encodes what is new.
    pub encode_on_arrival: bool,
    /// Largest chat or completion request body, in bytes; 413 past it
    /// (`server.max_body_bytes` is for adapter uploads).
    pub max_request_bytes: usize,
    /// `max_tokens` of a request that names none.
    pub default_max_tokens: usize,
    /// Largest `max_tokens` (or `max_completion_tokens`) a request may ask for; 400 past it.
    pub max_tokens_limit: usize,
    /// Largest `n` (and `best_of`): answers generated per request.
    pub max_n: usize,
    /// Messages of a chat request at most.
    pub max_messages: usize,
    /// Text of a request's messages (or prompt) at most, in bytes.
    pub max_input_bytes: usize,
    /// Chat and completion requests in flight at once per engine model (the base, with
    /// shared adapters every adapter's requests too; or a merged adapter's own model), from
    /// admission until their answer has been sent or dropped.
    pub max_in_flight_per_model: usize,
    /// Chat and completion requests in flight at once per task served by an adapter: its
    /// share of the engine model it runs on (with shared adapters, the base that every
    /// task and untagged request share), so that one task cannot take every place.
    pub max_in_flight_per_task: usize,
    /// How long a request waits for a place on its model, in milliseconds, before it is
    /// refused (503 on the shared base model, 429 on a task's adapter; `Retry-After`).
    pub admission_wait_ms: u64,
    /// How long a replaced or evicted adapter model waits for the requests still using it
    /// before it is removed anyway (logged), in seconds.
    pub retire_ceiling_s: u64,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tenants: TenantMode::Open,
            default_key_rpm: 60,
            store: PathBuf::from("data/adapters"),
            import_root: None,
            admin_token: None,
            metrics_need_token: true,
            task_id_sources: vec![TaskSource::Header, TaskSource::Body, TaskSource::User],
            task_header: "x-task-id".into(),
            max_resident: 128,
            max_resident_mib: 4096,
            load_wait_ms: 0,
            load_queue_ms: 60_000,
            generator: None,
            examples_generator: None,
            encoder: None,
            prompts_k: None,
            max_prompt_bytes: 4096,
            max_tracked_tasks: 10_000,
            max_stored_tasks: 1_000,
            max_store_mib: 8192,
            generation_concurrency: 1,
            generation_queue: 256,
            retry_base_s: 30,
            max_retries: 5,
            regenerate_after: None,
            guard_max_tokens: 16,
            check_tolerance: super::specialise::guard::Tolerance::default().share(),
            guard_fallback: true,
            fallback_adapter: None,
            library: None,
            library_nearest: 5,
            demonstrations: 0,
            demonstrations_pool: 0,
            max_generations_per_hour: 6,
            max_versions: 5,
            encode_on_arrival: true,
            max_request_bytes: 1 << 20,
            default_max_tokens: 256,
            max_tokens_limit: 4096,
            max_n: 8,
            max_messages: 256,
            max_input_bytes: 256 << 10,
            max_in_flight_per_model: 64,
            max_in_flight_per_task: 16,
            admission_wait_ms: 5000,
            retire_ceiling_s: 3600,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The admin token in force (environment first).
    pub fn admin_token(&self) -> Option<String> {
        std::env::var("DND_ADMIN_TOKEN")
            .ok()
            .or_else(|| self.plugin.admin_token.clone())
            .filter(|t| !t.is_empty())
    }

    pub fn check(&self) -> Result<()> {
        if self.plugin.enabled {
            if !self.server.listen.ip().is_loopback() && self.admin_token().is_none() {
                bail!(
                    "refusing to start: the plugin's admin API would listen on {} (not loopback) without a token; set plugin.admin_token or DND_ADMIN_TOKEN",
                    self.server.listen
                );
            }
            if self.plugin.task_id_sources.is_empty() {
                bail!("plugin.task_id_sources is empty: name at least one of header, body, user");
            }
            if self.plugin.max_resident == 0 {
                bail!("plugin.max_resident must be at least 1");
            }
            let p = &self.plugin;
            if p.default_max_tokens == 0 || p.default_max_tokens > p.max_tokens_limit {
                bail!(
                    "plugin.default_max_tokens ({}) must be between 1 and plugin.max_tokens_limit ({})",
                    p.default_max_tokens,
                    p.max_tokens_limit
                );
            }
            let most_shown = guard::MAX_EXAMPLES - guard::MIN_UNSEEN;
            if p.demonstrations > most_shown || p.demonstrations_pool > most_shown {
                bail!(
                    "plugin.demonstrations ({}) and plugin.demonstrations_pool ({}) must be at most {most_shown}: the no-harm check reads at least {} examples after those shown, of at most {}",
                    p.demonstrations,
                    p.demonstrations_pool,
                    guard::MIN_UNSEEN,
                    guard::MAX_EXAMPLES
                );
            }
            if p.demonstrations_pool > 0
                && (p.demonstrations == 0 || p.demonstrations_pool <= p.demonstrations)
            {
                bail!(
                    "plugin.demonstrations_pool ({}) must be more than plugin.demonstrations ({}, set) to choose from, or 0",
                    p.demonstrations_pool,
                    p.demonstrations
                );
            }
            for (key, v) in [
                ("max_n", p.max_n),
                ("max_messages", p.max_messages),
                ("max_input_bytes", p.max_input_bytes),
                ("max_request_bytes", p.max_request_bytes),
                ("default_key_rpm", p.default_key_rpm as usize),
                ("max_in_flight_per_model", p.max_in_flight_per_model),
                ("max_in_flight_per_task", p.max_in_flight_per_task),
                ("max_tracked_tasks", p.max_tracked_tasks),
                ("max_stored_tasks", p.max_stored_tasks),
                ("max_store_mib", p.max_store_mib as usize),
                ("library_nearest", p.library_nearest),
            ] {
                if v == 0 {
                    bail!("plugin.{key} must be at least 1");
                }
            }
        }
        crate::engine::parse_dtype(&self.model.dtype)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bounds_are_checked_and_documented_defaults_parse() {
        let cfg: Config = toml::from_str(
            "[plugin]\ndefault_max_tokens = 16\nmax_tokens_limit = 32\nmax_n = 2\nmax_request_bytes = 4096\n",
        )
        .unwrap();
        cfg.check().unwrap();
        assert_eq!((cfg.plugin.default_max_tokens, cfg.plugin.max_n), (16, 2));
        let mut bad = cfg.clone();
        bad.plugin.default_max_tokens = 64;
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("max_tokens_limit"));
        let mut bad = cfg.clone();
        bad.plugin.max_n = 0;
        assert!(bad.check().unwrap_err().to_string().contains("max_n"));
        // A pool must hold more than the examples shown, and leave the check room.
        let mut pooled = cfg.clone();
        (
            pooled.plugin.demonstrations,
            pooled.plugin.demonstrations_pool,
        ) = (4, 32);
        pooled.check().unwrap();
        for (k, pool) in [(4, 4), (4, 2), (4, 57), (0, 8)] {
            (
                pooled.plugin.demonstrations,
                pooled.plugin.demonstrations_pool,
            ) = (k, pool);
            let err = pooled.check().unwrap_err().to_string();
            assert!(
                err.contains("plugin.demonstrations_pool"),
                "{k} {pool}: {err}"
            );
        }
        let mut bad = cfg;
        bad.plugin.max_stored_tasks = 0;
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("max_stored_tasks"));
        for path in ["configs/default.toml", "configs/tenant.toml"] {
            let text = std::fs::read_to_string(path).unwrap();
            let c: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(c.plugin.default_max_tokens, 256, "{path}");
            let p = &c.plugin;
            let d = PluginConfig::default();
            assert_eq!(
                (p.max_tracked_tasks, p.max_stored_tasks, p.max_store_mib),
                (d.max_tracked_tasks, d.max_stored_tasks, d.max_store_mib),
                "{path}"
            );
            assert_eq!(p.load_queue_ms, d.load_queue_ms, "{path}");
        }
    }

    #[test]
    fn open_tenants_are_the_default_and_the_tenant_config_uses_keys() {
        assert_eq!(Config::default().plugin.tenants, TenantMode::Open);
        let cfg: Config =
            toml::from_str("[plugin]\ntenants = \"keys\"\ndefault_key_rpm = 5\n").unwrap();
        cfg.check().unwrap();
        assert_eq!(
            (cfg.plugin.tenants, cfg.plugin.default_key_rpm),
            (TenantMode::Keys, 5)
        );
        assert!(toml::from_str::<Config>("[plugin]\ntenants = \"user\"\n").is_err());
        let mut bad = cfg;
        bad.plugin.default_key_rpm = 0;
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("default_key_rpm"));
        let text = std::fs::read_to_string("configs/tenant.toml").unwrap();
        let c: Config = toml::from_str(&text).unwrap();
        assert_eq!(c.plugin.tenants, TenantMode::Keys);
    }
}
