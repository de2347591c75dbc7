//! Benchmarks that print their numbers and the setup they ran on (`mistralrs-dnd bench ...`):
//! [`hotload`] times hot-loading adapters into the server; [`generator`] times the generation
//! of one SmolLM2-135M adapter from 32 prompts of about 64 tokens, stage by stage, with the
//! peak resident memory (VmHWM); [`time_to_adapter`] times automatic specialisation end to
//! end (K-th request -> first token through the generated adapter); [`throughput`] measures
//! decode throughput under 1 to 16 concurrent streams, on the base and over 4 adapters;
//! [`overhead`] compares the plugin's router with the stock mistral.rs router on one engine
//! (requests/s, p50/p99); [`condition`] scores how well candidate generator conditions tell
//! tasks apart (no timing); [`tenants`] runs 1000 keyed tenants against a small resident
//! capacity for 10 minutes (failures, RSS, evictions and reloads, admin API latency). The
//! server benchmarks run it in-process on loopback ([`crate::server::local`]), on the real
//! SmolLM2 unless they say otherwise; this module holds what they share: the machine line,
//! memory from /proc, and the spread of timings.

pub mod condition;
pub mod generator;
pub mod hotload;
pub mod overhead;
pub mod served;
pub mod tenants;
pub mod throughput;
pub mod time_to_adapter;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::assets::{default_root, Assets};
use crate::server::Config;

/// Resident set size of this process (bytes), from /proc.
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

/// Peak resident set size of this process (bytes), from /proc.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Prints "machine: N cores, CPU model; device: ..." so that every result says where it ran.
pub fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "machine: {cores} cores, {cpu}; device: {:?}",
        crate::engine::device()
    );
}

/// [`smollm2_config`] with automatic specialisation on: `generator`, the assets' MiniLM as
/// its encoder, and an admin token for the admin API the benches read.
fn specialising_config(
    root: Option<PathBuf>,
    dtype: &str,
    resident: usize,
    generator: &std::path::Path,
) -> Result<(tempfile::TempDir, Config)> {
    let (assets, store, mut config) = smollm2_config(root, dtype, resident)?;
    config.plugin.generator = Some(generator.to_path_buf());
    config.plugin.encoder = Some(assets.minilm());
    config.plugin.admin_token = Some("bench".into());
    Ok((store, config))
}

/// Gives `task` its first `n` training examples (`PUT /admin/adapters/{task}/examples`), the
/// labelled examples of the no-harm check (and of an examples generator).
async fn give_examples(
    server: &crate::server::local::LocalServer,
    task: &crate::tasks::Task,
    n: usize,
) -> Result<()> {
    let examples: Vec<serde_json::Value> = task.train[..n.min(task.train.len())]
        .iter()
        .map(|e| serde_json::json!({"prompt": e.prompt, "answer": e.answer}))
        .collect();
    let put = server
        .admin(
            reqwest::Method::PUT,
            &format!("/adapters/{}/examples", task.name),
        )
        .json(&serde_json::json!({ "examples": examples }))
        .send()
        .await?;
    anyhow::ensure!(
        put.status().is_success(),
        "giving examples: {}",
        put.status()
    );
    Ok(())
}

/// The `p` quantile (0 to 1, nearest rank) of `v` in ms; NaN when `v` is empty.
fn quantile_ms(v: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return f64::NAN;
    }
    ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1]
}

/// "p50 / p99" of durations in ms (nearest rank); "-" when there are none.
fn p50_p99(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    format!("{:.0} / {:.0}", quantile_ms(v, 0.5), quantile_ms(v, 0.99))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// "median X ms, min Y ms, max Z ms".
fn spread(v: &[Duration]) -> Result<String> {
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    Ok(format!(
        "median {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms(&median(&mut v.to_vec())),
        ms(v.iter().min().context("no runs")?),
        ms(v.iter().max().context("no runs")?)
    ))
}

/// The real assets (fetched if missing) and a server config for SmolLM2 in `dtype` with a
/// temporary store (kept alive by the returned guard) and room for `resident` adapters.
fn smollm2_config(
    root: Option<PathBuf>,
    dtype: &str,
    resident: usize,
) -> Result<(Assets, tempfile::TempDir, Config)> {
    let assets = Assets::new(root.unwrap_or_else(default_root));
    assets.ensure()?;
    let store = tempfile::tempdir()?;
    let mut config = Config::default();
    config.model.base = Some(assets.smollm2());
    config.model.dtype = dtype.to_string();
    config.plugin.store = store.path().join("store");
    config.plugin.max_resident = resident;
    config.plugin.max_resident_mib = 1 << 20;
    Ok((assets, store, config))
}
