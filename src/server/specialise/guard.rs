//! The no-harm check: a generated adapter is routed only if, on the task's labelled
//! examples, it answers about as many as the base model does, or more.
//!
//! Nothing in a generator tests whether its adapter helps (one that reads prompts never
//! sees an answer; one that reads examples is not scored on them): on some unseen tasks
//! the adapter makes SmolLM2 answer tersely and wrongly where the base answered at length
//! and rightly (README, Measured: the harm column). A tenant who gives a few examples
//! (`PUT /admin/adapters/{task}/examples`) is protected from most of that; not from all of
//! it: 16 examples cannot tell a 10-15 point difference, and on the k-fold's fold 1 two of
//! 21 held-out tasks were still harmed as served (README, K-fold evaluation):
//!
//! - An **example** is a prompt and its answer, `{"prompt": "...", "answer": "..."}`; a task
//!   has at most [`MAX_EXAMPLES`], stored in `STORE/{task}/examples.json`.
//! - Both the base model and the new adapter answer every example once, as a client's chat
//!   request would be answered: the prompt as the one user message, greedy, at most
//!   `plugin.guard_max_tokens` tokens.
//! - When the generator read the task's examples (an examples generator reads the first
//!   N), the check reads **the examples after those N** if there are at least
//!   [`MIN_UNSEEN`] of them: a test on examples the adapter was not made from. With fewer,
//!   it reads all of them, those the generator read too.
//! - An answer **hits** when the strict scorer accepts it (its first line is the answer,
//!   case and final punctuation aside) or the lenient one does (the answer is a whole word
//!   of its first sentence): the base model's long answers count when they are right.
//! - When the task already has an adapter (a regeneration), that adapter answers every
//!   example too: a new adapter must not take back what an earlier one gave. If it cannot
//!   be made resident (no room within `load_queue_ms`, a failed load), the check compares
//!   with the base model only, and logs it.
//! - The adapter is **accepted** when its hits are at least the base model's less the
//!   [`Tolerance`] (a tenth of the examples rounded down, 1 of 16, unless
//!   `plugin.check_tolerance` gives another share), and at least the current adapter's
//!   (ties go to the new adapter: it was generated for the task from its latest prompts,
//!   and equal hits show no harm). A task without examples is not checked.
//!   The tolerance is the no-harm bar's own: it forbids 10 lenient points below the base,
//!   and by demanding every hit of the base the check turned away adapters one example
//!   short that answered far more in the examples' format (README, "The check's rule"). A
//!   regeneration gets none against the current adapter, so that accepted adapters cannot
//!   drift down one example at a time.
//! - If the generator has a base adapter (a residual generator's: the multi-task LoRA its
//!   outputs are a residual on), or `plugin.fallback_adapter` names one (which then takes
//!   its place), and `plugin.guard_fallback` is on, that adapter is checked beside the
//!   generated one, on the same answers of the base model and the current
//!   adapter: it is what the generator gives every task, and it is accepted or not by the
//!   same rule.
//! - With `plugin.demonstrations` = K (and at least K + [`MIN_UNSEEN`] examples), one more
//!   candidate is checked: **the base model with the task's first K examples shown** before
//!   each prompt as earlier chat turns (one user and one assistant message each), as the
//!   tagging layer then inserts them into the task's chat requests. The check reads the
//!   examples after the first K (and after those a generator read). Where it is the task's
//!   route, it stands in for the current adapter in a regeneration's check. With
//!   `plugin.demonstrations_pool` = N > K, up to the first N are the pool ([`Split`]) and
//!   each prompt, the check's and the requests', is shown its K nearest of them
//!   ([`Demonstrations`]); the check reads the examples after the pool.
//! - Of the candidates accepted, the one that answers the most examples **strictly** (in the
//!   examples' own format) is routed (an adapter stored); on a tie the one with the most
//!   hits, then the generated one, the shown examples last. Every accepted one has shown no
//!   harm, so among them the rule prefers what the tenant's examples ask for: by hits
//!   alone, a candidate that answers at length and rightly would beat one that answers in
//!   the format (in the runs measured so far it changed no route: README, "The check's
//!   rule").
//! - A rejected adapter is neither stored nor routed. When every candidate is rejected, the
//!   model that answered the task before (the base, the current adapter, or the base with
//!   the examples shown) goes on.
//!
//! Before it is routed the adapter is served under a probe model id of its own
//! (`dnd-probe:{task}`, the base adapter `dnd-probe-base:{task}`), which no client can
//! name (the tagging layer answers 404 to any engine model id in `model`). With shared adapters the probe costs a few MB for the
//! seconds of the check; with merged ones it is a whole base copy, outside
//! `max_resident`'s count.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::engine::AdapterEngine;
use crate::format::LoraAdapter;
use crate::tasks::nearest::Nearest;
use crate::tasks::{score_lenient, score_strict, Example as TaskExample, Scoring};
use crate::training::llama::score::Labelled;

/// Examples a task may have at most.
pub const MAX_EXAMPLES: usize = 64;

/// Examples beyond those a generator read that the check needs to read only them.
pub const MIN_UNSEEN: usize = 8;

/// Examples after a pool that a pool leaves the check before it grows: a pool takes a
/// task's examples only beyond these, so that a tenant with few examples is still checked
/// on as many (README, "The examples shown").
pub const POOL_LEAVES: usize = 16;

/// How a task's `len` examples divide for a generation: the first `shown` are the
/// candidate of `plugin.demonstrations` (K wanted; 0 unless at least [`MIN_UNSEEN`] come
/// after them), and the check reads from `checked_from` on: after those shown, and after
/// the first `read` (a generator's or a selection's, `None` when nothing read any) when at
/// least [`MIN_UNSEEN`] come after those. With `plugin.demonstrations_pool` N > K the
/// first `shown` are the pool each prompt is shown its K nearest of: as many as leave
/// [`POOL_LEAVES`] after them, at least K and at most N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub shown: usize,
    pub checked_from: usize,
}

impl Split {
    pub fn new(len: usize, demonstrations: usize, pool: usize, read: Option<usize>) -> Self {
        let shown = match demonstrations > 0 && len >= demonstrations + MIN_UNSEEN {
            true => len
                .saturating_sub(POOL_LEAVES)
                .clamp(demonstrations, pool.max(demonstrations)),
            false => 0,
        };
        let seen = match read {
            Some(read) if len.saturating_sub(read.max(shown)) >= MIN_UNSEEN => read.max(shown),
            _ => 0,
        };
        Self {
            shown,
            checked_from: seen.max(shown),
        }
    }
}

/// A labelled example of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub prompt: String,
    pub answer: String,
}

/// Whether `output` answers `example` (see the module doc).
pub fn hits(example: &Example, output: &str) -> bool {
    scored(example, output).0
}

/// Whether `output` answers `example`, and whether it does so in the examples' format
/// (the strict scorer alone).
fn scored(example: &Example, output: &str) -> (bool, bool) {
    let ex = TaskExample {
        prompt: example.prompt.clone(),
        answer: example.answer.clone(),
        choices: vec![],
    };
    let strict = score_strict(Scoring::Exact, &ex, output);
    (strict || score_lenient(Scoring::Exact, &ex, output), strict)
}

impl Labelled for Example {
    fn prompt(&self) -> &str {
        &self.prompt
    }
    fn answer(&self) -> &str {
        &self.answer
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub examples: usize,
    pub base_hits: usize,
    /// Of `base_hits`, those the strict scorer accepts (0 in checks recorded before it was
    /// counted).
    #[serde(default)]
    pub base_strict: usize,
    /// The hits of the adapter the new one would replace; `None` when there was none (or
    /// it could not be loaded for the check).
    #[serde(default)]
    pub current_hits: Option<usize>,
    pub adapter_hits: usize,
    /// Of `adapter_hits`, those the strict scorer accepts.
    #[serde(default)]
    pub adapter_strict: usize,
    pub accepted: bool,
}

/// The outputs of one check, one per example, in order.
pub struct Outputs<'a> {
    pub base: &'a [String],
    /// The current adapter's, when the task has one.
    pub current: Option<&'a [String]>,
    pub adapter: &'a [String],
}

/// The share of the examples an adapter's hits may fall short of the base model's and still
/// be accepted, rounded down (`plugin.check_tolerance`; see the module doc). A tenth by
/// default: 1 of 16, none under 10. Read back (a report's record of it) through
/// [`Tolerance::new`], so that out of range is refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Tolerance(f64);

impl TryFrom<f64> for Tolerance {
    type Error = anyhow::Error;
    fn try_from(share: f64) -> Result<Self> {
        Self::new(share)
    }
}

impl From<Tolerance> for f64 {
    fn from(t: Tolerance) -> f64 {
        t.0
    }
}

impl Default for Tolerance {
    fn default() -> Self {
        Self(0.1)
    }
}

impl Tolerance {
    /// A share in [0, 1).
    pub fn new(share: f64) -> Result<Self> {
        ensure!(
            (0.0..1.0).contains(&share),
            "the check's tolerance is a share of the examples in [0, 1), not {share}"
        );
        Ok(Self(share))
    }

    pub fn share(self) -> f64 {
        self.0
    }

    /// Hits an adapter may fall short of the base model's on `examples` examples.
    pub fn hits(self, examples: usize) -> usize {
        // The epsilon keeps shares such as 0.1 * 30 from rounding down to one hit fewer.
        (examples as f64 * self.0 + 1e-9).floor() as usize
    }
}

impl Verdict {
    /// Whether counts like these are accepted (see the module doc).
    fn passes(&self, tolerance: Tolerance) -> bool {
        self.adapter_hits + tolerance.hits(self.examples) >= self.base_hits
            && self.adapter_hits >= self.current_hits.unwrap_or(0)
    }

    /// The verdict on the same counts by the rule with `tolerance` (checks recorded under
    /// another, such as an evaluation's, judged again).
    pub fn rejudged(self, tolerance: Tolerance) -> Self {
        Self {
            accepted: self.passes(tolerance),
            ..self
        }
    }

    /// Judges the outputs of the base model, the current adapter and the new one.
    pub fn judge(examples: &[Example], outputs: Outputs, tolerance: Tolerance) -> Self {
        // (hits, strict hits) of one model's outputs.
        let count = |outs: &[String]| {
            assert_eq!(examples.len(), outs.len(), "one output per example");
            let each = examples.iter().zip(outs).map(|(ex, out)| scored(ex, out));
            each.fold((0, 0), |(h, s), (hit, strict)| {
                (h + usize::from(hit), s + usize::from(strict))
            })
        };
        let (base_hits, base_strict) = count(outputs.base);
        let (adapter_hits, adapter_strict) = count(outputs.adapter);
        Self {
            examples: examples.len(),
            base_hits,
            base_strict,
            current_hits: outputs.current.map(|c| count(c).0),
            adapter_hits,
            adapter_strict,
            accepted: false,
        }
        .rejudged(tolerance)
    }
}

/// Checks `examples`, given by a client: some, at most [`MAX_EXAMPLES`], none with an
/// empty prompt or answer or a prompt over `max_prompt_bytes`.
pub fn validate(examples: &[Example], max_prompt_bytes: usize) -> Result<()> {
    ensure!(!examples.is_empty(), "no examples given");
    ensure!(
        examples.len() <= MAX_EXAMPLES,
        "{} examples given, at most {MAX_EXAMPLES} are kept",
        examples.len()
    );
    for (i, ex) in examples.iter().enumerate() {
        ensure!(
            !ex.prompt.trim().is_empty() && !ex.answer.trim().is_empty(),
            "example {i} has an empty prompt or answer"
        );
        ensure!(
            ex.prompt.len() <= max_prompt_bytes && ex.answer.len() <= max_prompt_bytes,
            "example {i} is over {max_prompt_bytes} bytes (plugin.max_prompt_bytes)"
        );
    }
    Ok(())
}

/// An adapter to check and the probe model id it is served under while it is checked.
pub struct Candidate<'a> {
    pub adapter: &'a LoraAdapter,
    pub probe_id: String,
}

/// Which of the checked candidates is routed (see the module doc): of those accepted, the
/// one that answered the most examples strictly, then the most examples, the earliest on a
/// tie; `None` when all were rejected.
pub fn routed(verdicts: &[Verdict]) -> Option<usize> {
    let mut best: Option<(usize, (usize, usize))> = None;
    for (i, v) in verdicts.iter().enumerate().filter(|(_, v)| v.accepted) {
        let rank = (v.adapter_strict, v.adapter_hits);
        if best.is_none_or(|(_, best)| rank > best) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
}

/// The examples shown before a prompt as earlier chat turns: `each` of `pool`, the prompt's
/// nearest ([`Nearest`]) when the pool holds more, else the whole pool in its order. Of the
/// check's examples here, of a task's training examples in the evaluation.
#[derive(Debug)]
pub struct Demonstrations<'a, E = Example> {
    pub pool: &'a [E],
    pub each: usize,
}

// Not derived: the derives would ask `E: Clone`, and only the slice is copied.
impl<E> Clone for Demonstrations<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Demonstrations<'_, E> {}

impl<'a, E: Labelled> Demonstrations<'a, E> {
    pub const NONE: Self = Self { pool: &[], each: 0 };

    pub fn is_empty(&self) -> bool {
        self.pool.is_empty() || self.each == 0
    }

    /// Whether the examples shown depend on the prompt (the pool holds more than `each`);
    /// if not, [`Self::pick`] does not read it.
    pub fn chooses(&self) -> bool {
        self.each < self.pool.len()
    }

    /// The examples shown before `prompt`, least alike first. The pool's features are
    /// computed again a call: at most [`MAX_EXAMPLES`] short prompts, microseconds.
    pub fn pick(&self, prompt: &str) -> Vec<&'a E> {
        if !self.chooses() {
            return self.pool.iter().collect();
        }
        let nearest = Nearest::new(self.pool.iter().map(|e| e.prompt()));
        let pool = self.pool;
        nearest
            .pick(prompt, self.each)
            .into_iter()
            .map(|i| &pool[i])
            .collect()
    }
}

/// Who answers the examples: an engine model, with examples shown before each prompt as
/// earlier chat turns (none for an adapter; a task's first examples for the candidate of
/// `plugin.demonstrations`).
#[derive(Debug, Clone, Copy)]
pub struct Answerer<'a> {
    pub model_id: &'a str,
    pub shown: Demonstrations<'a>,
}

impl<'a> Answerer<'a> {
    /// `model_id` with nothing shown.
    pub fn model(model_id: &'a str) -> Self {
        Self {
            model_id,
            shown: Demonstrations::NONE,
        }
    }
}

/// Has the base model, the model answering the task now (`current`, if any), every
/// candidate (each registered as its probe from a folder under `probe_dir`, which this
/// function fills and removes) and, when `shown` is not empty, the base model with `shown`
/// before each prompt answer every example, all at once, and judges each candidate: one
/// verdict per candidate, in order, then one for `shown` unless it failed to answer (e.g.
/// past the model's context: logged, and it is no candidate; any other failure fails the
/// check).
#[allow(clippy::too_many_arguments)]
pub async fn check(
    engine: &dyn AdapterEngine,
    candidates: &[Candidate<'_>],
    shown: Demonstrations<'_>,
    current: Option<Answerer<'_>>,
    examples: &[Example],
    probe_dir: &Path,
    max_tokens: usize,
    tolerance: Tolerance,
) -> Result<Vec<Verdict>> {
    let answering = async {
        // All at once: with shared adapters their rows share the base model's batches.
        let current = async {
            match current {
                Some(who) => answers(engine, who, examples, max_tokens).await.map(Some),
                None => Ok(None),
            }
        };
        let base = engine.base_id();
        let each = candidates
            .iter()
            .map(|c| answers(engine, Answerer::model(&c.probe_id), examples, max_tokens));
        let with_shown = async {
            if shown.is_empty() {
                return None;
            }
            let who = Answerer {
                model_id: base,
                shown,
            };
            answers(engine, who, examples, max_tokens)
                .await
                .inspect_err(|e| tracing::warn!(error = %format!("{e:#}"), "the base model shown the examples failed to answer: not a candidate"))
                .ok()
        };
        let (all, with_shown) = futures::future::join(
            futures::future::try_join3(
                answers(engine, Answerer::model(base), examples, max_tokens),
                current,
                futures::future::try_join_all(each),
            ),
            with_shown,
        )
        .await;
        all.map(|(base, current, mut adapters)| {
            adapters.extend(with_shown);
            (base, current, adapters)
        })
    };
    let (base, current, adapters) = with_probes(engine, candidates, probe_dir, answering).await?;
    let judge = |adapter: &Vec<String>| {
        let outputs = Outputs {
            base: &base,
            current: current.as_deref(),
            adapter,
        };
        Verdict::judge(examples, outputs, tolerance)
    };
    Ok(adapters.iter().map(judge).collect())
}

/// Runs `answering` while every candidate is registered as its probe model, and removes
/// the probes and their folder after it, whatever the outcome.
async fn with_probes<T>(
    engine: &dyn AdapterEngine,
    candidates: &[Candidate<'_>],
    probe_dir: &Path,
    answering: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let mut registered = Vec::new();
    let ready: Result<()> = async {
        for (i, c) in candidates.iter().enumerate() {
            let (a, dir) = (c.adapter.clone(), probe_dir.join(i.to_string()));
            let d = dir.clone();
            tokio::task::spawn_blocking(move || a.write_peft(&d))
                .await?
                .context("writing a probe adapter")?;
            engine
                .register(&c.probe_id, &dir)
                .await
                .context("loading a probe adapter")?;
            registered.push(c.probe_id.as_str());
        }
        Ok(())
    }
    .await;
    let result = match ready {
        Ok(()) => answering.await,
        Err(e) => Err(e),
    };
    for probe_id in registered {
        if let Err(e) = engine.unregister(probe_id).await {
            tracing::warn!(probe_id, error = %e, "removing a probe adapter failed");
        }
    }
    if let Err(e) = tokio::fs::remove_dir_all(probe_dir).await {
        tracing::warn!(dir = %probe_dir.display(), error = %e, "removing a probe folder failed");
    }
    result
}

async fn answers(
    engine: &dyn AdapterEngine,
    who: Answerer<'_>,
    examples: &[Example],
    max_tokens: usize,
) -> Result<Vec<String>> {
    let shown: Vec<Vec<(&str, &str)>> = examples
        .iter()
        .map(|ex| {
            (who.shown.pick(&ex.prompt).into_iter())
                .map(|e| (&*e.prompt, &*e.answer))
                .collect()
        })
        .collect();
    futures::future::try_join_all(
        examples
            .iter()
            .zip(&shown)
            .map(|(ex, turns)| engine.answer(who.model_id, turns, &ex.prompt, max_tokens)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(prompt: &str, answer: &str) -> Example {
        Example {
            prompt: prompt.into(),
            answer: answer.into(),
        }
    }

    #[test]
    fn the_check_reads_after_the_examples_shown_and_read() {
        let split = |shown, checked_from| Split {
            shown,
            checked_from,
        };
        assert_eq!(Split::new(32, 0, 0, None), split(0, 0));
        assert_eq!(Split::new(32, 4, 0, None), split(4, 4));
        // Too few after them: none shown.
        assert_eq!(Split::new(11, 4, 0, None), split(0, 0));
        assert_eq!(Split::new(12, 4, 0, None), split(4, 4));
        assert_eq!(Split::new(32, 4, 0, Some(16)), split(4, 16));
        assert_eq!(Split::new(32, 4, 0, Some(2)), split(4, 4));
        // Too few after those read: the check reads them too, but never those shown.
        assert_eq!(Split::new(20, 4, 0, Some(16)), split(4, 4));
        assert_eq!(Split::new(20, 0, 0, Some(16)), split(0, 0));
    }

    #[test]
    fn a_pool_grows_only_while_it_leaves_the_check_its_examples() {
        let split = |shown, checked_from| Split {
            shown,
            checked_from,
        };
        // Enough examples: the whole pool, the check after it.
        assert_eq!(Split::new(48, 4, 32, Some(16)), split(32, 32));
        assert_eq!(Split::new(64, 4, 32, None), split(32, 32));
        // Fewer: the pool leaves POOL_LEAVES, as a tenant without a pool is checked on.
        assert_eq!(Split::new(32, 4, 32, Some(16)), split(16, 16));
        assert_eq!(Split::new(24, 4, 32, None), split(8, 8));
        // Never fewer than those shown: as without a pool.
        assert_eq!(Split::new(16, 4, 32, None), split(4, 4));
        assert_eq!(Split::new(11, 4, 32, None), split(0, 0));
    }

    #[test]
    fn long_right_answers_hit_and_terse_wrong_ones_do_not() {
        let e = ex("What is the largest of 3, 87, 12?", "87");
        assert!(hits(&e, "87"));
        assert!(hits(&e, "The largest number is 87."));
        assert!(!hits(&e, "12"));
        assert!(!hits(&e, "It is 870."));
        // Only the first sentence counts.
        assert!(!hits(&e, "The numbers are 3 and 12. So 87."));
    }

    #[test]
    fn the_adapter_needs_at_least_the_base_models_hits() {
        let examples = [ex("a", "1"), ex("b", "2"), ex("c", "3")];
        let out = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let base = out(&["It is 1.", "It is 2.", "no idea"]);
        let judge = |base: &[String], adapter: &[String]| {
            let outputs = Outputs {
                base,
                current: None,
                adapter,
            };
            Verdict::judge(&examples, outputs, Tolerance::default())
        };
        let v = judge(&base, &out(&["1", "5", "3"]));
        assert_eq!((v.base_hits, v.adapter_hits, v.accepted), (2, 2, true));
        assert_eq!(
            (v.base_strict, v.adapter_strict),
            (0, 2),
            "long answers are not strict"
        );
        assert_eq!(v.current_hits, None);
        let v = judge(&base, &out(&["1", "5", "6"]));
        assert_eq!((v.base_hits, v.adapter_hits, v.accepted), (2, 1, false));
        let v = judge(&out(&["", "", ""]), &out(&["", "", ""]));
        assert!(v.accepted, "no hits either way: no harm shown");
    }

    #[test]
    fn a_tenth_of_the_examples_short_of_the_base_is_accepted_not_more() {
        let v = |examples, base_hits, current_hits, adapter_hits| {
            Verdict {
                examples,
                base_hits,
                current_hits,
                adapter_hits,
                ..Verdict::default()
            }
            .rejudged(Tolerance::default())
            .accepted
        };
        let tenth = Tolerance::default();
        assert_eq!((tenth.hits(9), tenth.hits(16), tenth.hits(30)), (0, 1, 3));
        let fifth = Tolerance::new(0.2).unwrap();
        assert_eq!((fifth.hits(4), fifth.hits(16)), (0, 3));
        let strict = Tolerance::new(0.0).unwrap();
        assert!(
            !Verdict {
                examples: 16,
                base_hits: 11,
                adapter_hits: 10,
                ..Verdict::default()
            }
            .rejudged(strict)
            .accepted
        );
        for bad in [1.0, -0.1, f64::NAN] {
            assert!(Tolerance::new(bad).is_err(), "{bad}");
        }
        assert!(v(16, 11, None, 10), "one of 16 short");
        assert!(!v(16, 11, None, 9), "two short");
        assert!(!v(9, 5, None, 4), "under 10 examples, none");
        assert!(v(32, 10, None, 7));
        assert!(!v(16, 5, Some(8), 7), "none against the current adapter");
        assert!(v(16, 5, Some(7), 7));
    }

    #[test]
    fn a_regeneration_needs_at_least_the_current_adapters_hits_too() {
        let examples = [ex("a", "1"), ex("b", "2"), ex("c", "3")];
        let out = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (base, current) = (out(&["1", "", ""]), out(&["1", "2", "3"]));
        let judge = |adapter: &[String]| {
            let outputs = Outputs {
                base: &base,
                current: Some(&current),
                adapter,
            };
            Verdict::judge(&examples, outputs, Tolerance::default())
        };
        let v = judge(&out(&["1", "2", ""]));
        assert_eq!(
            (v.base_hits, v.current_hits, v.adapter_hits),
            (1, Some(3), 2)
        );
        assert!(
            !v.accepted,
            "above the base, below the adapter it would replace"
        );
        assert!(
            judge(&out(&["1", "2", "3"])).accepted,
            "a tie goes to the new one"
        );
    }

    #[test]
    fn the_accepted_adapter_with_the_most_strict_then_all_hits_is_routed_the_earliest_on_a_tie() {
        let v = |adapter_hits, accepted| Verdict {
            examples: 8,
            base_hits: 2,
            adapter_hits,
            adapter_strict: adapter_hits,
            accepted,
            ..Verdict::default()
        };
        assert_eq!(routed(&[v(3, true), v(5, true)]), Some(1));
        assert_eq!(
            routed(&[v(5, true), v(5, true)]),
            Some(0),
            "a tie: the first"
        );
        assert_eq!(routed(&[v(1, false), v(2, true)]), Some(1));
        // A rejected adapter is not routed however many it answered (below the current one).
        assert_eq!(routed(&[v(3, true), v(6, false)]), Some(0));
        assert_eq!(routed(&[v(1, false), v(0, false)]), None);
        assert_eq!(routed(&[]), None);
        // Strict hits first: 4 in the format beat 7 hits of which 2 are.
        let long = Verdict {
            adapter_strict: 2,
            ..v(7, true)
        };
        assert_eq!(routed(&[long, v(4, true)]), Some(1));
        assert_eq!(routed(&[v(2, true), long]), Some(1), "then all hits");
    }

    #[test]
    fn a_recorded_tolerance_is_read_back_only_in_range() {
        let t: Tolerance = serde_json::from_str("0.25").unwrap();
        assert_eq!(t.share(), 0.25);
        assert_eq!(serde_json::to_string(&t).unwrap(), "0.25");
        let err = serde_json::from_str::<Tolerance>("1.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[0, 1)"), "{err}");
    }

    #[test]
    fn examples_are_bounded_and_non_empty() {
        assert!(validate(&[ex("a", "b")], 10).is_ok());
        assert!(validate(&[], 10).is_err());
        assert!(validate(&[ex(" ", "b")], 10).is_err());
        assert!(validate(&[ex("a", "")], 10).is_err());
        assert!(validate(&[ex("a".repeat(11).as_str(), "b")], 10).is_err());
        let many = vec![ex("a", "b"); MAX_EXAMPLES + 1];
        assert!(validate(&many, 10).is_err());
    }
}
