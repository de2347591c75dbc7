//! The adapter library (`plugin.library`): stored LoRAs of other tasks, one of which may
//! answer a tenant's task better than its generated adapter does.
//!
//! Why: on held-out tasks no generator has yet beaten one LoRA trained on all its training
//! tasks, but picking, by a task's own labelled examples, among a few stored LoRAs and that
//! one does (README, "Selection: do a task's labelled examples pick weights that help?").
//! This module is that selection, as `eval --select` measures it, for the server:
//!
//! - The library is a collection folder (what `collect` writes: one folder per task with
//!   its `task.jsonl` and its LoRA's checkpoints); each completed task gives its last
//!   checkpoint, and a vector: the mean MiniLM sentence vector of its first `texts`
//!   training examples, each read as an examples generator reads one
//!   ([`Condition::Examples`]).
//! - A task with labelled examples is **retrieved** by the same vector of the examples the
//!   selection reads: its `nearest` library tasks by cosine ([`Library::nearest`]).
//! - **Selection**: of those neighbours' adapters (each alone) and the fallback adapter
//!   (`plugin.fallback_adapter` or the generator's base adapter, when the check routes
//!   one), the one whose answers to those examples greedy decoding gets exactly right
//!   most often, teacher-forced, then the lowest answer NLL ([`Rank::Greedy`]), by the
//!   trainer's forward pass ([`crate::training::llama::score`], F32 on the CPU). No
//!   training, nothing tuned. Ranked by NLL alone it did a little worse on every fold
//!   (README, "Selection ranked by greedy answers").
//! - What it picks is only a candidate: the no-harm check ([`super::guard`]) judges it
//!   beside the generated adapter and the fallback, on the examples it did not read when
//!   there are enough ([`super::guard::Split`]), and routes it only where it passes and
//!   wins by the check's rule ([`super::guard::routed`]).
//!
//! Cost: the base model once more in memory as F32 (about 540 MB for SmolLM2-135M), every
//! library adapter (about 1.8 MB each at rank 8 on q and v), and per generation
//! `nearest + 1` forward passes over the examples (seconds on 2 cores), on a blocking
//! thread beside the generation.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::Device;

use super::guard::Example;
use super::AdapterSelector;
use crate::format::peft::{LlamaDims, LoraAdapter};
use crate::generator::decoder::Condition;
use crate::generator::retrieval::Library;
use crate::generator::PromptEncoder;
use crate::training::collection::Collection;
use crate::training::llama::chat::ChatTokenizer;
use crate::training::llama::score::{best, encode, Labelled, Rank};
use crate::training::llama::Llama;

/// How the selection ranks its candidates (the module doc).
pub const RANK: Rank = Rank::Greedy;

/// The library's adapters, their vectors, and the model that scores them.
pub struct AdapterLibrary {
    library: Library,
    encoder: std::sync::Arc<PromptEncoder>,
    model: Llama,
    tok: ChatTokenizer,
    nearest: usize,
}

impl std::fmt::Debug for AdapterLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterLibrary")
            .field("tasks", &self.tasks())
            .field("nearest", &self.nearest)
            .finish()
    }
}

impl AdapterLibrary {
    /// The library of the collection in `dir`, each task read by its first `texts`
    /// training examples, with the base model in `base` (Hugging Face layout) to score
    /// adapters of `dims`.
    pub fn load(
        dir: &Path,
        base: &Path,
        dims: &LlamaDims,
        encoder: std::sync::Arc<PromptEncoder>,
        texts: usize,
        nearest: usize,
    ) -> Result<Self> {
        ensure!(nearest >= 1, "plugin.library_nearest must be at least 1");
        let collection = Collection::new(dir);
        let finals = collection.final_checkpoints()?;
        ensure!(
            !finals.is_empty(),
            "{} holds no completed task (a `collect` output folder)",
            dir.display()
        );
        let mut entries = Vec::new();
        for (name, checkpoint) in finals {
            let task = collection.task(&name)?;
            let read = condition_texts(&task.train[..texts.max(1).min(task.train.len())]);
            ensure!(
                !read.is_empty(),
                "library task {name} has no training examples"
            );
            let adapter = LoraAdapter::read_peft(&checkpoint)
                .and_then(|a| a.validate(dims).map(|()| a))
                .with_context(|| format!("library adapter {}", checkpoint.display()))?;
            entries.push((name, read, adapter));
        }
        Ok(Self {
            library: Library::new(&encoder, entries)?,
            encoder,
            model: Llama::load(base, &Device::Cpu)?,
            tok: ChatTokenizer::load(base)?,
            nearest,
        })
    }

    /// How many tasks the library holds.
    pub fn tasks(&self) -> usize {
        self.library.names().len()
    }

    /// The candidates for `examples`: the nearest tasks' adapters, nearest first, by name.
    fn neighbours(&self, examples: &[Example]) -> Result<Vec<(String, &LoraAdapter)>> {
        let found =
            self.library
                .nearest(&self.encoder, &condition_texts(examples), self.nearest)?;
        found
            .neighbours
            .into_iter()
            .map(|(name, _)| {
                let adapter = self.library.adapter(&name).context("a neighbour")?;
                Ok((name, adapter))
            })
            .collect()
    }
}

/// Examples as an examples generator reads them, the texts a library vector is made of.
fn condition_texts(examples: &[impl Labelled]) -> Vec<String> {
    examples
        .iter()
        .map(|e| Condition::Examples.text(e.prompt(), e.answer()))
        .collect()
}

impl AdapterSelector for AdapterLibrary {
    fn select(
        &self,
        examples: &[Example],
        fallback: Option<&LoraAdapter>,
    ) -> Result<Option<(String, LoraAdapter)>> {
        ensure!(!examples.is_empty(), "selection needs labelled examples");
        let neighbours = self.neighbours(examples)?;
        let mut candidates: Vec<&LoraAdapter> = neighbours.iter().map(|(_, a)| *a).collect();
        candidates.extend(fallback);
        let encoded = encode(&self.tok, examples)?;
        let best = best(&self.model, &self.tok, &candidates, &encoded, RANK)?;
        Ok(neighbours
            .get(best)
            .map(|(name, adapter)| (name.clone(), (*adapter).clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Module;
    use crate::tasks::taskfile::write_task_file;
    use crate::testing::{random_adapter, tiny_dims, tiny_model_dir};
    use crate::training::collection::{checkpoint_name, TaskDone, DONE_FILE, TASK_FILE};
    use crate::training::llama::score::{lora, score};

    /// A collection of `n` tasks on the tiny model, each with a random adapter.
    fn collection(dir: &Path, n: usize) {
        for i in 0..n {
            let task_dir = dir.join(format!("t{i}"));
            std::fs::create_dir_all(&task_dir).unwrap();
            let task = crate::tasks::Task {
                name: format!("t{i}"),
                family: "f".into(),
                scoring: crate::tasks::Scoring::Exact,
                train: (0..4)
                    .map(|j| crate::tasks::Example {
                        prompt: format!("task {i} question {j}"),
                        answer: format!("{}", i * 10 + j),
                        choices: vec![],
                    })
                    .collect(),
                test: vec![],
            };
            write_task_file(&task, &task_dir.join(TASK_FILE)).unwrap();
            let adapter =
                random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, i as u64, 0.5, 0.5)
                    .unwrap();
            adapter
                .write_peft(&task_dir.join(checkpoint_name(4)))
                .unwrap();
            let done = TaskDone {
                task: task.name.clone(),
                family: "f".into(),
                train_hash: String::new(),
                seed: 0,
                steps: 4,
                checkpoints: vec![checkpoint_name(4)],
                losses: vec![],
                seconds: 0.0,
                command: None,
            };
            std::fs::write(task_dir.join(DONE_FILE), serde_json::to_vec(&done).unwrap()).unwrap();
        }
    }

    #[test]
    fn selection_picks_the_candidate_that_ranks_first_by_its_scores() {
        let model_dir = tiny_model_dir();
        let lib_dir = tempfile::tempdir().unwrap();
        collection(lib_dir.path(), 4);
        let minilm = crate::testing::real_assets().minilm();
        let encoder = std::sync::Arc::new(PromptEncoder::load(&minilm, &Device::Cpu).unwrap());
        let library = AdapterLibrary::load(
            lib_dir.path(),
            model_dir.path(),
            &tiny_dims(),
            encoder,
            4,
            2,
        )
        .unwrap();
        assert_eq!(library.tasks(), 4);
        let examples: Vec<Example> = (0..3)
            .map(|j| Example {
                prompt: format!("task 1 question {j}"),
                answer: format!("{}", 10 + j),
            })
            .collect();
        let fallback =
            random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, 77, 0.5, 0.5).unwrap();
        let neighbours = library.neighbours(&examples).unwrap();
        assert_eq!(neighbours.len(), 2);
        // Each candidate scored on its own, as the selection must have.
        let encoded = encode(&library.tok, &examples).unwrap();
        let key = |a: &LoraAdapter| {
            let l = lora(a, &library.model.dims).unwrap();
            let s = score(&library.model, &library.tok, Some(&l), &encoded).unwrap();
            (-s.greedy, s.nll)
        };
        let mut all: Vec<(Option<String>, (f64, f64))> = neighbours
            .iter()
            .map(|(n, a)| (Some(n.clone()), key(a)))
            .collect();
        all.push((None, key(&fallback)));
        let best = all
            .iter()
            .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap())
            .unwrap()
            .0
            .clone();
        let picked = library.select(&examples, Some(&fallback)).unwrap();
        assert_eq!(picked.as_ref().map(|p| p.0.clone()), best);
        // Without a fallback, a neighbour always.
        let picked = library.select(&examples, None).unwrap().unwrap();
        assert!(neighbours.iter().any(|(n, _)| *n == picked.0));
        assert!(library.select(&[], None).is_err());
    }
}
