//! `bench time-to-adapter`: automatic specialisation on SmolLM2 timed end to end. Each task
//! gets K tagged requests (max_tokens 1); the clock starts when the K-th is sent and stops at
//! the first streamed token through the routed adapter, and the generator's stage timings
//! (from the admin API) give its parts. With `examples`, each task is first given that many
//! of its training examples, so the no-harm check runs (stage `check`), and with a
//! `library` (`plugin.library`) the selection too (stage `select`); a task whose candidates
//! all lose the check has no adapter, and its row says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{print_machine, specialising_config, spread};
use crate::server::local::{chat_body, LocalServer};

/// The generator's stages, as the admin API reports their timings.
const STAGES: [&str; 8] = [
    "encode",
    "decode",
    "detokenise",
    "select",
    "check",
    "write",
    "load_merge",
    "register",
];

/// What a run specialises with, beside the generator.
pub struct Options {
    /// Training examples given to each task first (0: none, no check).
    pub examples: usize,
    /// `plugin.library`.
    pub library: Option<PathBuf>,
}

/// Specialises SmolLM2 served in `dtype` (assets under `assets`, or the default root) with
/// the generator in `generator` to each of `tasks` (built-in suite tasks, their test
/// prompts) in turn, and prints one row per task and the summary.
pub async fn run(
    tasks: &[String],
    generator: &Path,
    dtype: &str,
    assets: Option<PathBuf>,
    options: Options,
) -> Result<()> {
    let (_store, mut config) = specialising_config(assets, dtype, tasks.len() + 1, generator)?;
    config.plugin.library = options.library.clone();
    let k = crate::generator::decoder::DecoderConfig::load(generator)?.prompts;
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct {} on the engine, generator {} (K = N = {k} prompts), \
         tasks {} in turn; each given {} training examples first, library {}; each task gets \
         K tagged requests (max_tokens 1), the clock starts when the K-th is sent and stops \
         at the first streamed token through the routed adapter",
        dtype,
        generator.display(),
        tasks.join(", "),
        options.examples,
        options
            .library
            .as_ref()
            .map_or("none".to_string(), |d| d.display().to_string())
    );
    let server = LocalServer::start(config).await?;
    server.first_token(None).await?;
    println!(
        "{:<14} {} {:>12} {:>12}",
        "task",
        STAGES.map(|s| format!("{s:>11}")).join(""),
        "first token",
        "total"
    );
    let mut totals = Vec::new();
    let mut parts: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    for name in tasks {
        let task = crate::tasks::builtin_task(name, &Default::default())?;
        let prompts: Vec<&str> = task
            .test
            .iter()
            .map(|e| e.prompt.as_str())
            .take(k)
            .collect();
        ensure!(
            prompts.len() == k,
            "task {name} has fewer than {k} test prompts"
        );
        if options.examples > 0 {
            super::give_examples(&server, &task, options.examples).await?;
        }
        let ask = |prompt: &str| {
            let (server, body) = (&server, chat_body(prompt, 1));
            async move { server.send_chat(Some(name), &body).await }
        };
        for p in &prompts[..k - 1] {
            ensure!(ask(p).await?.is_success(), "request failed");
        }
        let t0 = Instant::now();
        ensure!(ask(prompts[k - 1]).await?.is_success(), "request failed");
        let info = loop {
            let v = server.adapter_info(name).await?;
            if v["state"] == "resident" {
                break v;
            }
            if v["generation"]["state"] == "failed" {
                anyhow::bail!("generation failed: {}", v["generation"]);
            }
            if v["generation"]["state"] == "rejected" {
                break v;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(120),
                "no adapter after 120 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let routed = match &info["generation"] {
            g if g["state"] == "rejected" => "none: every candidate lost the check",
            g if g["library_routed"] == true => "library",
            g if g["fallback_routed"] == true => "fallback",
            _ => "generated",
        };
        if info["generation"]["state"] == "rejected" {
            println!("{name:<14} {routed} ({})", info["generation"]);
            continue;
        }
        let t1 = Instant::now();
        let label = server.first_token(Some(name)).await?;
        let total = t0.elapsed();
        ensure!(
            label.starts_with(name.as_str()),
            "served by {label}, not the adapter"
        );
        let timings: std::collections::HashMap<String, f64> =
            serde_json::from_value(info["generation"]["last_timings_ms"].clone())
                .map(|v: Vec<(String, f64)>| v.into_iter().collect())
                .context("no stage timings in the admin API")?;
        let row: Vec<f64> = STAGES
            .iter()
            .map(|s| timings.get(*s).copied().unwrap_or(f64::NAN))
            .collect();
        println!(
            "{:<14} {} {:>10.0}ms {:>10.0}ms  {routed}{}",
            name,
            row.iter()
                .map(|ms| format!("{ms:>9.0}ms"))
                .collect::<String>(),
            t1.elapsed().as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            info["generation"]["library_pick"]
                .as_str()
                .map_or(String::new(), |p| format!(" (library pick {p})"))
        );
        for (p, v) in parts.iter_mut().zip(row) {
            p.push(v);
        }
        totals.push(total);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "time-to-adapter (K-th request sent -> first token through the adapter): {}",
        spread(&totals)?
    );
    println!(
        "median parts: {}",
        STAGES
            .iter()
            .zip(parts.iter_mut())
            .map(|(s, v)| format!("{s} {:.0} ms", med(v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
