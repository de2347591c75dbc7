//! Shared-base adapters (vendor patches 0005 and 0007, `engine::shared`: the base model
//! serves every adapter in mixed batches) against merged ones (mistral.rs 0.8.1's own LoRA
//! loading: an engine model per adapter), on the real SmolLM2 in F32.

use std::sync::atomic::{AtomicUsize, Ordering};

use mistralrs_core::{
    CompletionResponse, MistralRs, ModelDType, NormalRequest, Request, RequestMessage, Response,
    SamplingParams,
};
use mistralrs_dnd::engine::{AdapterMode, MistralRsEngine};
use mistralrs_dnd::format::{LlamaDims, Module};

use crate::common::*;
use crate::real_models::{assets, smollm2_ids, HEAVY};

/// Prompts of different lengths (7 to 60-odd tokens), sent at once so that they share
/// batches.
const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Write a short poem about the sea, the wind and the gulls that cry over the harbour.",
    "Question: which is heavier, a kilogram of feathers or a kilogram of iron? Answer:",
    "Translate to French: the cat sits on the mat, the dog sleeps by the fire, and the \
     children play in the garden until the sun goes down behind the hills.",
];

/// One completion request to `model`: the raw logits of every prompt position (`raw`), or
/// 32 greedy tokens with the top 5 log-probabilities of each step.
async fn ask(m: &MistralRs, model: &str, tokens: Vec<u32>, raw: bool) -> Response {
    let mut params = SamplingParams::neutral();
    // Greedy: the engine takes no temperature as 1.0 (sampling), 0 as argmax.
    params.temperature = Some(0.0);
    params.max_len = Some(32);
    params.top_n_logprobs = 5;
    send(m, model, tokens, params, |req| {
        req.return_logprobs = !raw;
        req.return_raw_logits = raw;
    })
    .await
}

/// Sends a completion request for `tokens` to `model` (after `adjust` on it) and waits for
/// its one response.
pub async fn send(
    m: &MistralRs,
    model: &str,
    tokens: Vec<u32>,
    params: SamplingParams,
    adjust: impl FnOnce(&mut NormalRequest),
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
    let mut req = NormalRequest::new_simple(
        RequestMessage::CompletionTokens(tokens),
        params,
        tx,
        NEXT_ID.fetch_add(1, Ordering::Relaxed),
        None,
        None,
    );
    adjust(&mut req);
    req.model_id = Some(model.to_string());
    m.get_sender(Some(model))
        .unwrap()
        .send(Request::Normal(Box::new(req)))
        .await
        .unwrap();
    rx.recv().await.expect("a response")
}

/// What a response is, for a failure message (`Response` is not `Debug`).
fn describe(r: &Response) -> String {
    match r {
        Response::InternalError(e) | Response::ValidationError(e) => format!("error: {e}"),
        Response::CompletionModelError(e, _) | Response::ModelError(e, _) => {
            format!("model error: {e}")
        }
        _ => "another kind of response".into(),
    }
}

fn completion(r: Response) -> CompletionResponse {
    match r {
        Response::CompletionDone(c) => c,
        other => panic!("expected a completion, got {}", describe(&other)),
    }
}

/// The logits of an adapter served by the shared base (LoRA unmerged, its rows batched
/// with the base's) equal those of the same adapter merged into a base copy, within 1e-3:
/// at every position of four prompts of different lengths (prefill, one at a time), and
/// over 32 greedy decode steps (the top 5 log-probabilities of each step, which are logits
/// less one log-sum-exp; the first step's come from the prefill), with the same tokens.
/// There the adapter's four prompts and the base's four go to the base model at once, so
/// its batches mix both; the base's answers must be those it gives alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_adapters_compute_what_merged_ones_do_on_smollm2() {
    let _heavy = HEAVY.lock().await;
    let a = assets();
    let engine = MistralRsEngine::start(&a.smollm2(), ModelDType::F32, 16, AdapterMode::Shared)
        .await
        .unwrap();
    let dims = LlamaDims::from_config_file(&a.smollm2().join("config.json")).unwrap();
    // All seven modules, B not zero: every wrapped projection changes the output.
    let adapter =
        mistralrs_dnd::testing::random_adapter(&dims, &Module::ALL, 8, 3, 0.05, 0.05).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    adapter.write_peft(&adapter_dir).unwrap();
    for (id, mode) in [
        ("shared", AdapterMode::Shared),
        ("merged", AdapterMode::Merged),
    ] {
        engine.register_as(id, &adapter_dir, mode).await.unwrap();
    }
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| smollm2_ids(p)).collect();
    let m = engine.mistralrs();
    let all = |model: &'static str, raw: bool| {
        let m = m.clone();
        let prompts = prompts.clone();
        async move {
            futures::future::join_all(prompts.into_iter().map(|p| ask(&m, model, p, raw))).await
        }
    };

    // Prefill: the logits of every position, one request at a time (the engine returns raw
    // logits for batches of one only).
    let (mut shared, mut merged, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for p in &prompts {
        shared.push(ask(&m, "shared", p.clone(), true).await);
        merged.push(ask(&m, "merged", p.clone(), true).await);
        base.push(ask(&m, "base", p.clone(), true).await);
    }
    let logits = |r: Response| match r {
        Response::Raw { logits_chunks, .. } => candle_core::Tensor::cat(&logits_chunks, 0).unwrap(),
        other => panic!("expected raw logits, got {}", describe(&other)),
    };
    let max_diff = mistralrs_dnd::testing::max_abs_diff;
    let (mut worst, mut moved) = (0f32, 0f32);
    for ((s, m), b) in shared.into_iter().zip(merged).zip(base) {
        let (s, m, b) = (logits(s), logits(m), logits(b));
        worst = worst.max(max_diff(&s, &m));
        moved = moved.max(max_diff(&s, &b));
    }
    eprintln!("prefill: shared vs merged max |logit diff| {worst:.2e}; adapter vs base {moved:.2}");
    assert!(worst < 1e-3, "prefill logits differ by {worst}");
    assert!(
        moved > 0.1,
        "the adapter must change the logits (moved {moved})"
    );

    // Decode: 32 greedy steps with their top log-probabilities.
    let (shared, merged, base) = tokio::join!(
        all("shared", false),
        all("merged", false),
        all("base", false)
    );
    let base_alone = all("base", false).await;
    let text = |r: Response| completion(r).choices[0].text.clone();
    let base: Vec<String> = base.into_iter().map(text).collect();
    let base_alone: Vec<String> = base_alone.into_iter().map(text).collect();
    assert_eq!(
        base, base_alone,
        "greedy base answers beside an adapter's and alone"
    );
    let mut worst = 0f32;
    let mut steps = 0;
    for (s, m) in shared.into_iter().zip(merged) {
        let (s, m) = (completion(s), completion(m));
        let steps_of =
            |c: &CompletionResponse| c.choices[0].logprobs.clone().unwrap().content.unwrap();
        let (ss, ms) = (steps_of(&s), steps_of(&m));
        assert_eq!(s.choices[0].text, m.choices[0].text);
        assert_eq!(ss.len(), ms.len());
        for (x, y) in ss.iter().zip(&ms) {
            assert_eq!(x.top_logprobs.len(), y.top_logprobs.len());
            for (tx, ty) in x.top_logprobs.iter().zip(&y.top_logprobs) {
                assert_eq!(tx.token, ty.token, "top tokens in the same order");
                worst = worst.max((tx.logprob - ty.logprob).abs());
            }
            steps += 1;
        }
    }
    eprintln!("decode: {steps} steps, shared vs merged max |log-prob diff| {worst:.2e}");
    assert!(
        steps >= 4 * 16,
        "at least 16 decode steps per prompt, got {steps}"
    );
    assert!(worst < 1e-3, "decode log-probabilities differ by {worst}");
}

/// Greedy answers through the server are the same whether adapters are shared or merged
/// (F32, four chats to one uploaded adapter at once), and registering a shared adapter
/// costs less than 36 MB of RSS (a tenth of an F16 base copy), a merged one a base copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_alike_in_both_adapter_modes_on_smollm2() {
    let _heavy = HEAVY.lock().await;
    let a = assets();
    let dims = LlamaDims::from_config_file(&a.smollm2().join("config.json")).unwrap();
    let adapter =
        mistralrs_dnd::testing::random_adapter(&dims, &[Module::Q, Module::V], 8, 5, 0.05, 0.05)
            .unwrap();
    let mut answers = Vec::new();
    for mode in [AdapterMode::Shared, AdapterMode::Merged] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = tiny_config(dir.path());
        c.model.base = Some(a.smollm2());
        c.model.dtype = "f32".into();
        c.model.adapter_mode = mode;
        let s = start(c).await;
        // The base answers first, so that the engine's first-run allocations are not
        // counted as the adapter's.
        futures::future::join_all(PROMPTS.iter().map(|p| s.chat(p, |rb, _| rb))).await;
        mistralrs_dnd::engine::trim_heap();
        let rss_before = rss_bytes();
        let up = s.upload("t", &adapter).await;
        assert_eq!(up.status, 201, "{}", up.json);
        mistralrs_dnd::engine::trim_heap();
        let rss_registered = rss_bytes();
        let got = futures::future::join_all(PROMPTS.iter().map(|p| s.chat_task(p, "t"))).await;
        mistralrs_dnd::engine::trim_heap();
        let rss_loaded = rss_bytes();
        let texts: Vec<String> = got
            .iter()
            .map(|r| {
                assert!(
                    r.adapter.as_deref().unwrap().starts_with("t@"),
                    "{}",
                    r.json
                );
                r.content().to_string()
            })
            .collect();
        // What registering the adapter added; after the chats the allocator's own growth
        // (activations, KV caches it keeps pages of) is in the figure too, so it is printed
        // only (`bench hotload` measures RSS per adapter over many).
        let delta = rss_registered.saturating_sub(rss_before) as f64 / 1e6;
        eprintln!(
            "{mode:?}: RSS +{delta:.1} MB with the adapter registered, +{:.1} MB after its chats",
            rss_loaded.saturating_sub(rss_before) as f64 / 1e6
        );
        if mode == AdapterMode::Shared {
            assert!(delta < 36.0, "a shared adapter took {delta:.1} MB");
        } else {
            assert!(
                delta > 300.0,
                "a merged adapter is a base copy ({delta:.1} MB)"
            );
        }
        answers.push(texts);
    }
    assert_eq!(answers[0], answers[1]);
}
