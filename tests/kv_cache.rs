//! The engine's KV cache memory (vendor patch 0008): when a decode batch changes, the last
//! batch's cache is freed as the new one is built, and a sequence's preallocated cache is
//! freed at its prompt step, so a batch holds about one copy of its cache.

use std::process::Command;

use mistralrs_core::{MistralRs, ModelDType, Response, SamplingParams};
use mistralrs_dnd::engine::{AdapterMode, MistralRsEngine};
use mistralrs_dnd::format::LlamaDims;

use crate::common::heap;
use crate::real_models::{assets, HEAVY};
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

/// Run by [`a_changing_batch_holds_one_copy_of_its_kv_cache_on_smollm2`] in a process of its
/// own, where the heap counts nothing but this: eight sequences of one prompt, prefilled
/// together, finishing one by one. Prints the heap's peak above its level before them and
/// the KV cache of all eight (512 positions each: one block, as none passes 512 tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by a_changing_batch_holds_one_copy_of_its_kv_cache_on_smollm2"]
async fn kv_cache_of_a_changing_batch() {
    let a = assets();
    let engine = MistralRsEngine::start(&a.smollm2(), ModelDType::F32, 16, AdapterMode::Shared)
        .await
        .unwrap();
    let m = engine.mistralrs();
    let tok = tokenizers::Tokenizer::from_file(a.smollm2().join("tokenizer.json")).unwrap();
    let prompt = tok
        .encode("Count from one to a hundred: one, two, three,", false)
        .unwrap()
        .get_ids()
        .to_vec();
    // One request first, so that one-off allocations of a first step are not counted, and
    // a moment for the idle engine to drop its cache (patch 0006).
    assert!(matches!(
        complete(&m, prompt.clone(), 4).await,
        Response::CompletionDone(_)
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let before = heap::reset_peak();
    let answers =
        futures::future::join_all(MAX_TOKENS.map(|n| complete(&m, prompt.clone(), n))).await;
    let peak = heap::peak() - before;
    for a in answers {
        assert!(matches!(a, Response::CompletionDone(_)), "a completion");
    }
    let d = LlamaDims::from_config_file(&a.smollm2().join("config.json")).unwrap();
    let per_sequence = d.num_hidden_layers * 2 * d.num_key_value_heads * d.head_dim() * 512 * 4;
    println!("{REPORT} {peak} {}", per_sequence * MAX_TOKENS.len());
}

/// Before patch 0008 the prompt step held the sequences' preallocated caches, their `cat`
/// and the zeroed batch cache (three copies), and every batch change the last batch beside
/// the new one plus the preallocated caches (three again). Now: about one, plus the
/// activations of a step.
#[test]
fn a_changing_batch_holds_one_copy_of_its_kv_cache_on_smollm2() {
    let _heavy = HEAVY.blocking_lock();
    assets();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "kv_cache::kv_cache_of_a_changing_batch",
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
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "heap peak {:.0} MiB above the start for a batch KV cache of {:.0} MiB",
        mib(peak),
        mib(cache)
    );
    assert!(
        peak < cache * 3 / 2,
        "the batch held {:.0} MiB at its peak for {:.0} MiB of KV cache",
        mib(peak),
        mib(cache)
    );
}
