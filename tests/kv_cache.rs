//! The engine's KV cache memory (vendor patches 0008 and 0009): when a decode batch changes,
//! the last batch's cache is freed as the new one is built, a sequence waiting for its place
//! holds no cache of its own, and no batch has more than `max_seqs` sequences.
//!
//! Each measurement runs in a child process that runs nothing else (the test binary's
//! counting allocator, `common::heap`, sees the whole process) and prints one line: the
//! heap's peak above its level before the requests, and the batch's KV cache.

use std::process::Command;

use mistralrs_core::{MistralRs, ModelDType, Response, SamplingParams};
use mistralrs_dnd::engine::{AdapterMode, MistralRsEngine};
use mistralrs_dnd::format::LlamaDims;
use mistralrs_dnd::server::kv_cache_bytes;

use crate::common::heap;
use crate::real_models::{assets, smollm2_ids, HEAVY};
use crate::shared_base::send;

/// How many tokens each of the batch's sequences generates: one finishes every 8 steps, so
/// the batch changes 7 times after its prompt step.
const MAX_TOKENS: [usize; 8] = [16, 24, 32, 40, 48, 56, 64, 72];

/// Marks the line the child prints: heap peak above the start, and the batch's KV cache.
const REPORT: &str = "kv-cache-report";

/// Greedy completion of `tokens` by the base model, `max_tokens` long.
async fn complete(m: &MistralRs, tokens: Vec<u32>, max_tokens: usize) -> Response {
    let mut params = SamplingParams::neutral();
    params.temperature = Some(0.0);
    params.max_len = Some(max_tokens);
    send(m, "base", tokens, params, |_| {}).await
}

/// SmolLM2 in F32 on the engine with room for `max_seqs` sequences in a batch, after one
/// request (so that one-off allocations of a first step are not counted) and a moment for
/// the idle engine to drop its cache (patch 0006); and a prompt.
async fn warm_engine(max_seqs: usize) -> (MistralRsEngine, Vec<u32>) {
    let a = assets();
    let engine =
        MistralRsEngine::start(&a.smollm2(), ModelDType::F32, max_seqs, AdapterMode::Shared)
            .await
            .unwrap();
    let prompt = smollm2_ids("Count from one to a hundred: one, two, three,");
    assert!(matches!(
        complete(&engine.mistralrs(), prompt.clone(), 4).await,
        Response::CompletionDone(_)
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    (engine, prompt)
}

/// Sends `prompt` once for each of `max_tokens` at once and prints the report line: the
/// heap's peak while they ran, and the KV cache of `batch` sequences (one 512-position block
/// each here).
async fn report_peak(engine: &MistralRsEngine, prompt: &[u32], max_tokens: &[usize], batch: usize) {
    let m = engine.mistralrs();
    let before = heap::reset_peak();
    let answers =
        futures::future::join_all(max_tokens.iter().map(|&n| complete(&m, prompt.to_vec(), n)))
            .await;
    let peak = heap::peak() - before;
    for a in answers {
        assert!(matches!(a, Response::CompletionDone(_)), "a completion");
    }
    let d = LlamaDims::from_config_file(&assets().smollm2().join("config.json")).unwrap();
    let longest = prompt.len() + max_tokens.iter().max().unwrap();
    let per_sequence = kv_cache_bytes(&d, "f32", longest) as usize;
    println!("{REPORT} {peak} {}", per_sequence * batch);
}

/// Run by [`a_changing_batch_holds_one_copy_of_its_kv_cache_on_smollm2`]: eight sequences
/// of one prompt, prefilled together, finishing one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by a_changing_batch_holds_one_copy_of_its_kv_cache_on_smollm2"]
async fn kv_cache_of_a_changing_batch() {
    let (engine, prompt) = warm_engine(16).await;
    report_peak(&engine, &prompt, &MAX_TOKENS, MAX_TOKENS.len()).await;
}

/// Run by [`waiting_sequences_hold_no_kv_cache_on_smollm2`]: sixteen sequences for a batch
/// of two, so that fourteen wait at first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by waiting_sequences_hold_no_kv_cache_on_smollm2"]
async fn kv_cache_of_waiting_sequences() {
    let (engine, prompt) = warm_engine(2).await;
    report_peak(&engine, &prompt, &[8; 16], 2).await;
}

/// Runs the child test `name` in a process of its own; its report: (heap peak, batch KV
/// cache) in bytes.
fn child_report(name: &str) -> (usize, usize) {
    let _heavy = HEAVY.blocking_lock();
    assets();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("kv_cache::{name}"),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .find_map(|l| l.split_once(REPORT).map(|(_, numbers)| numbers))
        .unwrap_or_else(|| {
            panic!(
                "no report from the child: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let [peak, cache]: [usize; 2] = report
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    eprintln!(
        "{name}: heap peak {:.0} MiB above the start for a batch KV cache of {:.0} MiB",
        mib(peak),
        mib(cache)
    );
    (peak, cache)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Before patch 0008 the prompt step held the sequences' preallocated caches, their `cat`
/// and the zeroed batch cache (three copies), and every batch change the last batch beside
/// the new one plus the preallocated caches (three again). Now: about one, plus the
/// activations of a step.
#[test]
fn a_changing_batch_holds_one_copy_of_its_kv_cache_on_smollm2() {
    let (peak, cache) = child_report("kv_cache_of_a_changing_batch");
    assert!(
        peak < cache * 3 / 2,
        "the batch held {:.0} MiB at its peak for {:.0} MiB of KV cache",
        mib(peak),
        mib(cache)
    );
}

/// Before patch 0008 every sequence got a zeroed cache of its own when it was added (11
/// MiB here) and kept it while it waited for a place in the batch, and before patch 0009 an
/// idle engine ran all sixteen in one batch (372 MiB at the peak). Now at most two run and
/// the waiting hold nothing. The bar allows twice the batch's cache: a sequence that joins
/// a batch after another finished has its prompt step's cache beside the old batch cache,
/// which the one still running keeps alive (its view) until the next decode step merges
/// them.
#[test]
fn waiting_sequences_hold_no_kv_cache_on_smollm2() {
    let (peak, cache) = child_report("kv_cache_of_waiting_sequences");
    assert!(
        peak < cache * 2,
        "a batch of two with fourteen waiting held {:.0} MiB at its peak for {:.0} MiB of \
         batch KV cache",
        mib(peak),
        mib(cache)
    );
}
