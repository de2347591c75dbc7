//! `bench hotload`: hot-load latency (upload -> first token through the adapter) and RSS per
//! resident adapter on the real SmolLM2, with random r=8 adapters on q_proj+v_proj uploaded
//! one after the other over HTTP and all kept resident.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};

use super::{median, print_machine, rss_bytes, smollm2_config, spread};
use crate::format::peft::random_adapter;
use crate::format::{LlamaDims, Module};
use crate::server::local::{adapter_form, LocalServer};

/// Hot-loads `n` adapters in turn into SmolLM2 served in `dtype` (assets under `assets`, or
/// the default root) and prints one row per adapter and the summary.
pub async fn run(n: usize, dtype: &str, assets: Option<PathBuf>) -> Result<()> {
    ensure!(n >= 1, "--n must be at least 1");
    let (assets, _store, config) = smollm2_config(assets, dtype, n + 1)?;
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct {dtype} on the engine, LoRA r=8 on q_proj+v_proj, {n} adapters hot-loaded in turn over HTTP on loopback, all kept resident"
    );
    let t = Instant::now();
    let server = LocalServer::start(config).await?;
    println!("base model load: {:.2} s", t.elapsed().as_secs_f64());
    let dims = LlamaDims::from_config_file(&assets.smollm2().join("config.json"))?;

    // Warm the base path once so the first measurement does not pay for it.
    server.first_token(None).await?;
    let rss0 = rss_bytes();
    let (mut totals, mut puts) = (Vec::new(), Vec::new());
    println!(
        "{:>3} {:>12} {:>12} {:>14} {:>12} {:>8}",
        "#", "upload+load", "first token", "upload->token", "warm request", "RSS MB"
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
        println!(
            "{:>3} {:>10.0}ms {:>10.0}ms {:>12.0}ms {:>10.0}ms {:>8.0}",
            i,
            put.as_secs_f64() * 1e3,
            (total - put).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            rss_bytes() as f64 / 1e6
        );
        puts.push(put);
        totals.push(total);
    }
    let per_adapter = (rss_bytes().saturating_sub(rss0)) as f64 / n as f64 / 1e6;
    println!(
        "hot-load latency (upload -> first token through the adapter): {}",
        spread(&totals)?
    );
    println!(
        "upload + validate + store + load + merge + register: median {:.0} ms",
        median(&mut puts).as_secs_f64() * 1e3
    );
    println!("RSS per resident adapter: {per_adapter:.0} MB");
    // Idle engines: every resident model has its own engine thread; they should sleep.
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    println!(
        "idle CPU with {n} resident adapters and the base: {:.1} % of one core over 10 s",
        100.0 * (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64()
    );
    Ok(())
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
