//! `bench hotload`: hot-load latency (upload -> first token through the adapter), engine
//! build time and RSS per resident adapter on the real SmolLM2, with random r=8 adapters on
//! q_proj+v_proj uploaded one after the other over HTTP and all kept resident; for each
//! adapter mode given (`--modes shared,merged`: one server after the other, one table).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{median, print_machine, rss_bytes, smollm2_config, spread};
use crate::engine::AdapterMode;
use crate::format::peft::random_adapter;
use crate::format::{LlamaDims, Module};
use crate::server::local::{adapter_form, LocalServer};

/// Hot-loads `n` adapters in turn into SmolLM2 served in `dtype` (assets under `assets`, or
/// the default root), once per mode, and prints one row per adapter and a summary table.
pub async fn run(
    n: usize,
    dtype: &str,
    modes: &[AdapterMode],
    assets: Option<PathBuf>,
) -> Result<()> {
    ensure!(n >= 1, "--n must be at least 1");
    ensure!(!modes.is_empty(), "at least one mode");
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct {dtype} on the engine, LoRA r=8 on q_proj+v_proj, {n} adapters hot-loaded in turn over HTTP on loopback, all kept resident; modes {modes:?}, one server each, one after the other"
    );
    let mut summary = Vec::new();
    for &mode in modes {
        summary.push(run_mode(n, dtype, mode, assets.clone()).await?);
    }
    println!(
        "\n| mode | register (read + convert, or load + merge) median | upload..registered median | upload -> first token median / max | RSS per resident adapter | idle CPU, {n} adapters |"
    );
    println!("|---|---|---|---|---|---|");
    for row in summary {
        println!("{row}");
    }
    Ok(())
}

/// One mode's rows; returns its summary row.
async fn run_mode(
    n: usize,
    dtype: &str,
    mode: AdapterMode,
    assets: Option<PathBuf>,
) -> Result<String> {
    let (assets, _store, mut config) = smollm2_config(assets, dtype, n + 1)?;
    config.model.adapter_mode = mode;
    let t = Instant::now();
    let server = LocalServer::start(config).await?;
    println!(
        "{mode:?}: base model load {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let dims = LlamaDims::from_config_file(&assets.smollm2().join("config.json"))?;

    // Warm the base path once so the first measurement does not pay for it.
    server.first_token(None).await?;
    crate::engine::trim_heap();
    let rss0 = rss_bytes();
    let (mut totals, mut puts, mut builds) = (Vec::new(), Vec::new(), Vec::new());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:>8} {:>3} {:>12} {:>12} {:>12} {:>14} {:>12} {:>8}",
        "mode",
        "#",
        "register",
        "upload..reg",
        "first token",
        "upload->token",
        "warm request",
        "RSS MB"
    );
    for i in 0..n {
        let adapter = random_adapter(&dims, &[Module::Q, Module::V], 8, i as u64, 0.02, 0.02)?;
        // The form is built before the clock starts: the timing is upload, not serialising.
        let form = adapter_form(&adapter)?;
        let task = format!("bench-{i}");
        let t = Instant::now();
        let up = server.upload_with(&task, form).await?;
        ensure!(up.status == 201, "upload failed: {}", up.json);
        let put = t.elapsed();
        let label = server.first_token(Some(&task)).await?;
        let total = t.elapsed();
        ensure!(
            label.starts_with(&task),
            "served by {label}, not the adapter"
        );
        let t2 = Instant::now();
        server.first_token(Some(&task)).await?;
        let warm = t2.elapsed();
        let build = Duration::from_millis(
            server.adapter_info(&task).await?["load_ms"]
                .as_u64()
                .context("the resident adapter reports its load_ms")?,
        );
        println!(
            "{:>8} {:>3} {:>10.0}ms {:>10.0}ms {:>10.0}ms {:>12.0}ms {:>10.0}ms {:>8.0}",
            format!("{mode:?}"),
            i,
            ms(build),
            ms(put),
            ms(total - put),
            ms(total),
            ms(warm),
            rss_bytes() as f64 / 1e6
        );
        puts.push(put);
        totals.push(total);
        builds.push(build);
    }
    crate::engine::trim_heap();
    let per_adapter = (rss_bytes().saturating_sub(rss0)) as f64 / n as f64 / 1e6;
    // Idle engines: every resident model has its own engine thread; they should sleep.
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = 100.0 * (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let max = totals.iter().max().copied().unwrap_or_default();
    println!(
        "{mode:?}: hot-load latency (upload -> first token through the adapter): {}",
        spread(&totals)?
    );
    Ok(format!(
        "| {mode:?} | {:.0} ms | {:.0} ms | {:.0} / {:.0} ms | {per_adapter:.1} MB | {idle:.1} % of a core |",
        ms(median(&mut builds)),
        ms(median(&mut puts)),
        ms(median(&mut totals.clone())),
        ms(max),
    ))
}

/// CPU time (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 counting from 0 after the name.
    (ticks(11) + ticks(12)) / ticks_per_second()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
