//! Answer scoring with the trainer's forward pass: how well the base model, or the base
//! model with a LoRA, predicts the answers of labelled examples, teacher-forced.
//!
//! On each example (tokenised with the chat template, [`encode`]) it reads:
//! - **NLL**: the mean cross-entropy per answer token, the end-of-turn token included (the
//!   trainer's loss on the same examples);
//! - **greedy exact**: whether every answer token, and the end-of-turn after it, is the
//!   model's top token given the prompt and the answer so far, i.e. whether greedy
//!   decoding would produce exactly the answer and stop.
//!
//! It is shared by the held-out evaluation (`eval --nll`) and the server's adapter library
//! (`plugin.library`), which picks the stored adapter that predicts a task's examples best
//! ([`best`]): the same number in both, so what the evaluation measures is what is
//! served. [`soup`], a mean of several candidates, is the evaluation's alone (README, "A
//! soup of the candidates": it answered no more examples exactly).

use anyhow::{ensure, Result};
use candle_core::{Device, D};
use serde::{Deserialize, Serialize};

use super::batch::Batch;
use super::chat::{ChatTokenizer, Encoded};
use super::Llama;
use crate::format::peft::{LlamaDims, LoraAdapter};
use crate::generator::retrieval::mean_adapter;
use crate::tasks::Example;
use crate::training::lora::LoraWeights;

/// Examples per forward pass.
const CHUNK: usize = 8;

/// One adapter on a set of examples.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct NllScore {
    /// Mean cross-entropy per answer token.
    pub nll: f64,
    /// Share of examples greedy decoding answers exactly, in [0, 1].
    pub greedy: f64,
}

/// A prompt and its answer: a suite task's example, or a tenant's (the server's check).
pub trait Labelled {
    fn prompt(&self) -> &str;
    fn answer(&self) -> &str;
}

impl Labelled for Example {
    fn prompt(&self) -> &str {
        &self.prompt
    }
    fn answer(&self) -> &str {
        &self.answer
    }
}

/// Examples tokenized with the chat template, once for every adapter they are scored with.
pub fn encode(tok: &ChatTokenizer, examples: &[impl Labelled]) -> Result<Vec<Encoded>> {
    examples
        .iter()
        .map(|e| tok.encode_example(e.prompt(), e.answer()))
        .collect()
}

/// Scores an adapter (or the base model) on encoded examples: see the module doc.
pub fn score(
    model: &Llama,
    tok: &ChatTokenizer,
    lora: Option<&LoraWeights>,
    examples: &[Encoded],
) -> Result<NllScore> {
    ensure!(!examples.is_empty(), "no examples to score");
    let (mut nll_sum, mut tokens, mut exact) = (0f64, 0usize, 0usize);
    for enc in examples.chunks(CHUNK) {
        let refs: Vec<_> = enc.iter().collect();
        let batch = Batch::new(&refs, tok.end_of_turn, model.device())?;
        let hidden = model.forward(&batch.prefix, &batch.ids, lora)?;
        let logits = model.logits_at(&hidden, &batch.rows)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let target_logp = logp
            .gather(&batch.targets.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .to_vec1::<f32>()?;
        let top = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let targets = batch.targets.to_vec1::<u32>()?;
        let lens: Vec<usize> = enc.iter().map(|e| e.ids.len() - e.prompt_len).collect();
        nll_sum -= target_logp.iter().map(|&x| f64::from(x)).sum::<f64>();
        tokens += target_logp.len();
        exact += exact_hits(&top, &targets, &lens);
    }
    Ok(NllScore {
        nll: nll_sum / tokens as f64,
        greedy: exact as f64 / examples.len() as f64,
    })
}

/// How [`best`] ranks candidates on a task's examples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Rank {
    /// The lowest answer NLL.
    #[default]
    Nll,
    /// The most examples greedy decoding answers exactly, then the lowest NLL: what a
    /// served (greedy) answer gets, with the NLL to break the ties of a few examples.
    Greedy,
}

/// Which of `candidates` ranks first on `examples` by `rank` (the first on a tie).
pub fn best(
    model: &Llama,
    tok: &ChatTokenizer,
    candidates: &[&LoraAdapter],
    examples: &[Encoded],
    rank: Rank,
) -> Result<usize> {
    ensure!(!candidates.is_empty(), "no adapter to select from");
    let scores = score_each(model, tok, candidates, examples)?;
    Ok(first_by(&scores, rank))
}

/// Each candidate's score on `examples`, in order.
fn score_each(
    model: &Llama,
    tok: &ChatTokenizer,
    candidates: &[&LoraAdapter],
    examples: &[Encoded],
) -> Result<Vec<NllScore>> {
    candidates
        .iter()
        .map(|a| score(model, tok, Some(&lora(a, &model.dims)?), examples))
        .collect()
}

/// A greedy soup of `candidates` on `examples` (Wortsman et al. 2022, "Model soups"): the
/// candidate that ranks first by `rank`, then each of the others in their rank's order
/// added to the mean if the mean with it ranks above the mean without it. Returns the
/// members (the best single candidate first) and their mean adapter.
///
/// Why: one picked adapter is the best of a few whole tasks; a task may sit between two of
/// them. The candidates must share their A matrices (a LoRA-FA collection's, whose
/// adapters then average exactly: the mean of their B matrices is the mean of their
/// weight deltas). `candidates.len() - 1` more scorings than [`best`].
pub fn soup(
    model: &Llama,
    tok: &ChatTokenizer,
    candidates: &[&LoraAdapter],
    examples: &[Encoded],
    rank: Rank,
) -> Result<(Vec<usize>, LoraAdapter)> {
    ensure!(!candidates.is_empty(), "no adapter to select from");
    let scores = score_each(model, tok, candidates, examples)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Stable: the first on a tie, as `first_by`.
    order.sort_by(|&a, &b| {
        let (ka, kb) = (rank.key(&scores[a]), rank.key(&scores[b]));
        ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut members = vec![order[0]];
    let mut current = (scores[order[0]], candidates[order[0]].clone());
    for &next in &order[1..] {
        let trial: Vec<&LoraAdapter> = members
            .iter()
            .chain([&next])
            .map(|&i| candidates[i])
            .collect();
        let mixed = mean_adapter(&trial)?;
        let s = score(model, tok, Some(&lora(&mixed, &model.dims)?), examples)?;
        if first_by(&[current.0, s], rank) == 1 {
            members.push(next);
            current = (s, mixed);
        }
    }
    Ok((members, current.1))
}

impl Rank {
    /// What ranks first is the smallest key.
    fn key(self, s: &NllScore) -> (f64, f64) {
        match self {
            Rank::Nll => (0.0, s.nll),
            Rank::Greedy => (-s.greedy, s.nll),
        }
    }
}

/// The index of the score that ranks first by `rank`, the first on a tie.
fn first_by(scores: &[NllScore], rank: Rank) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if rank.key(s) < rank.key(&scores[best]) {
            best = i;
        }
    }
    best
}

/// How many examples have every answer token as the top token: `top` and `targets` list
/// the answer tokens of the examples one after the other, `lens` long each (the order
/// [`Batch`] builds them in).
fn exact_hits(top: &[u32], targets: &[u32], lens: &[usize]) -> usize {
    let mut at = 0;
    let mut hits = 0;
    for &n in lens {
        hits += usize::from(top[at..at + n] == targets[at..at + n]);
        at += n;
    }
    hits
}

/// `adapter` as the forward pass's LoRA weights, on the CPU.
pub fn lora(adapter: &LoraAdapter, dims: &LlamaDims) -> Result<LoraWeights> {
    LoraWeights::from_adapter(adapter, dims, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model_dir;

    #[test]
    fn greedy_ranks_by_exact_answers_then_nll() {
        let s = |nll, greedy| NllScore { nll, greedy };
        let scores = [s(1.0, 0.25), s(0.5, 0.25), s(0.2, 0.0), s(0.5, 0.25)];
        assert_eq!(first_by(&scores, Rank::Nll), 2);
        assert_eq!(first_by(&scores, Rank::Greedy), 1, "the first on a tie");
        assert_eq!(first_by(&scores[..1], Rank::Greedy), 0);
    }

    #[test]
    fn a_hit_needs_every_answer_token_on_top() {
        let targets = [5, 6, 9, 7, 9, 1];
        // Example 1: 5 6 9 (hit); example 2: 7 9 (miss at its end); example 3: 1 (hit).
        assert_eq!(exact_hits(&[5, 6, 9, 7, 2, 1], &targets, &[3, 2, 1]), 2);
        assert_eq!(exact_hits(&targets, &targets, &[3, 2, 1]), 3);
        assert_eq!(exact_hits(&[0, 6, 9, 7, 9, 0], &targets, &[3, 2, 1]), 1);
    }

    /// The score's NLL is the trainer's loss (the same answer tokens, the same mean), and
    /// an answer the model would not produce is no greedy hit.
    #[test]
    fn nll_is_the_training_loss() {
        let dir = tiny_model_dir();
        let model = Llama::load(dir.path(), &Device::Cpu).unwrap();
        let tok = ChatTokenizer::load(dir.path()).unwrap();
        let ex = |p: &str, a: &str| Example {
            prompt: p.into(),
            answer: a.into(),
            choices: vec![],
        };
        let examples: Vec<Example> = (0..11)
            .map(|i| ex(&format!("what is {i} plus 3 ?"), &format!("{}", i + 3)))
            .collect();
        let enc = encode(&tok, &examples).unwrap();
        let s = score(&model, &tok, None, &enc).unwrap();
        let refs: Vec<_> = enc.iter().collect();
        let batch = Batch::new(&refs, tok.end_of_turn, &Device::Cpu).unwrap();
        let loss = model
            .loss(&batch, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (s.nll - f64::from(loss)).abs() < 1e-4,
            "{} vs {loss}",
            s.nll
        );
        let wrong = encode(&tok, &[ex("what is 2 plus 3 ?", "zzzz qqqq")]).unwrap();
        let wrong = score(&model, &tok, None, &wrong).unwrap();
        assert_eq!(wrong.greedy, 0.0);
    }

    /// A soup starts at the pick of [`best`], is the mean of its members, and ranks no
    /// lower than that pick; one candidate is its own soup.
    #[test]
    fn a_soup_grows_from_the_pick_and_ranks_no_lower() {
        use crate::format::peft::{random_adapter, tensor_name, Module};
        use crate::testing::tiny_dims;
        let dir = tiny_model_dir();
        let model = Llama::load(dir.path(), &Device::Cpu).unwrap();
        let tok = ChatTokenizer::load(dir.path()).unwrap();
        let examples: Vec<Example> = (0..6)
            .map(|i| Example {
                prompt: format!("what is {i} plus 3 ?"),
                answer: format!("{}", i + 3),
                choices: vec![],
            })
            .collect();
        let enc = encode(&tok, &examples).unwrap();
        let adapters: Vec<LoraAdapter> = (0..4)
            .map(|seed| random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, seed, 0.5, 0.5))
            .collect::<Result<_>>()
            .unwrap();
        let refs: Vec<&LoraAdapter> = adapters.iter().collect();
        let nll = |a: &LoraAdapter| {
            let l = lora(a, &model.dims).unwrap();
            score(&model, &tok, Some(&l), &enc).unwrap()
        };
        for rank in [Rank::Nll, Rank::Greedy] {
            let pick = best(&model, &tok, &refs, &enc, rank).unwrap();
            let (members, mixed) = soup(&model, &tok, &refs, &enc, rank).unwrap();
            assert_eq!(members[0], pick);
            let mut distinct = members.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), members.len());
            let mean = mean_adapter(&members.iter().map(|&i| refs[i]).collect::<Vec<_>>()).unwrap();
            for (name, t) in &mean.tensors {
                assert!(crate::testing::max_abs_diff(t, &mixed.tensors[name]) < 1e-6);
            }
            assert!(rank.key(&nll(&mixed)) <= rank.key(&nll(refs[pick])));
        }
        let (members, alone) = soup(&model, &tok, &refs[2..3], &enc, Rank::Nll).unwrap();
        assert_eq!(members, [0]);
        assert!(
            crate::testing::max_abs_diff(
                &alone.tensors[&tensor_name(0, Module::Q, true)],
                &adapters[2].tensors[&tensor_name(0, Module::Q, true)]
            ) == 0.0
        );
    }
}
