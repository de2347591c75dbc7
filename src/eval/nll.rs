//! Teacher-forced held-out evaluation (`eval --generator G --nll`): continuous and cheap
//! beside the engine's accuracy, so that every change to the generator can be measured on
//! all test examples of every held-out task.
//!
//! For each held-out task and each adapter below, on every test example, the trainer's
//! F32 forward pass of the base model (the one `collect` trains with; a test checks it
//! gives the engine's logits) reads:
//! - **NLL**: the mean cross-entropy per answer token, the end-of-turn token included;
//! - **greedy exact**: whether every answer token, and the end-of-turn after it, is the
//!   model's top token given the prompt and the answer so far, i.e. whether greedy
//!   decoding would produce exactly the answer and stop. It implies a strict hit (the
//!   scorer normalises case and punctuation, so strict accuracy can only be higher).
//!
//! Adapters: the base model; the training tasks' final LoRAs averaged into one; a
//! multi-task LoRA trained on the pooled training tasks (`collect --pool`), when given;
//! the task's own LoRA; DnD from `batches` random batches of N of the task's unlabelled
//! test prompts; and the condition-shuffle control: DnD fed the prompts of the next
//! held-out task (in suite order), scored on this one. If the shuffle scores as well as
//! DnD, the generator ignores its input.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, D};
use serde::Serialize;

use super::heldout::{average_adapters, dnd_batch};
use crate::format::peft::{LlamaDims, LoraAdapter};
use crate::generator::Generator;
use crate::tasks::{Example, Task};
use crate::training::collection::Collection;
use crate::training::generator::TrainRecord;
use crate::training::llama::{
    batch::Batch,
    chat::{ChatTokenizer, Encoded},
    Llama,
};
use crate::training::lora::LoraWeights;

/// Examples per forward pass.
const CHUNK: usize = 8;

#[derive(Debug, Clone)]
pub struct NllSetup {
    pub generator: PathBuf,
    pub encoder: PathBuf,
    /// The base model folder (Hugging Face layout, as `collect` uses).
    pub base: PathBuf,
    /// The collection (default: the one in `train.json`).
    pub checkpoints: Option<PathBuf>,
    /// Multi-task LoRAs (PEFT folders) to compare with, e.g. the one a residual generator
    /// sits on and the one of all training tasks.
    pub multitask: Vec<PathBuf>,
    /// DnD prompt batches per task.
    pub batches: usize,
    pub seed: u64,
}

/// One adapter on one task's test examples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct NllScore {
    /// Mean cross-entropy per answer token.
    pub nll: f64,
    /// Share of examples greedy decoding answers exactly, in [0, 1].
    pub greedy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NllRow {
    pub task: String,
    pub examples: usize,
    pub base: NllScore,
    /// `None` when no training task was collected.
    pub averaged: Option<NllScore>,
    /// Per multi-task LoRA, in the order of [`NllReport::multitask`].
    pub multitask: Vec<NllScore>,
    /// `None` when the collection has no checkpoint of the task.
    pub own: Option<NllScore>,
    /// The mean over the prompt batches.
    pub dnd: NllScore,
    pub dnd_batches: Vec<NllScore>,
    /// DnD generated from `shuffled_from`'s prompts.
    pub shuffled: NllScore,
    pub shuffled_from: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NllReport {
    pub generator: PathBuf,
    pub train_tasks: usize,
    /// How many training tasks' final checkpoints the averaged LoRA is the mean of.
    pub averaged_over: usize,
    /// The multi-task LoRAs compared, by name (see [`adapter_name`]).
    pub multitask: Vec<String>,
    pub rows: Vec<NllRow>,
    pub seconds: f64,
}

/// Examples tokenized with the chat template, once for every adapter they are scored with.
pub fn encode(tok: &ChatTokenizer, examples: &[Example]) -> Result<Vec<Encoded>> {
    examples
        .iter()
        .map(|e| tok.encode_example(&e.prompt, &e.answer))
        .collect()
}

/// A task's first `limit` test examples (all without one), encoded once for every adapter
/// they are scored with.
fn test_examples(tok: &ChatTokenizer, task: &Task, limit: Option<usize>) -> Result<Vec<Encoded>> {
    encode(
        tok,
        &task.test[..limit.unwrap_or(usize::MAX).min(task.test.len())],
    )
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

fn lora(adapter: &LoraAdapter, dims: &LlamaDims) -> Result<LoraWeights> {
    LoraWeights::from_adapter(adapter, dims, &Device::Cpu)
}

fn mean_score(v: &[NllScore]) -> NllScore {
    let n = v.len().max(1) as f64;
    NllScore {
        nll: v.iter().map(|s| s.nll).sum::<f64>() / n,
        greedy: v.iter().map(|s| s.greedy).sum::<f64>() / n,
    }
}

/// Runs the comparison for the generator's held-out tasks among `tasks`.
pub fn evaluate_nll(tasks: &[Task], setup: &NllSetup, limit: Option<usize>) -> Result<NllReport> {
    let started = std::time::Instant::now();
    let record = TrainRecord::load(&setup.generator)?;
    let heldout: Vec<&Task> = tasks
        .iter()
        .filter(|t| record.heldout_tasks.contains(&t.name))
        .collect();
    ensure!(
        !heldout.is_empty(),
        "none of the generator's held-out tasks ({}) is among the tasks given",
        record.heldout_tasks.join(", ")
    );
    ensure!(setup.batches >= 1, "at least one DnD prompt batch");
    let collection = setup
        .checkpoints
        .clone()
        .unwrap_or_else(|| record.checkpoints.clone());
    let finals = Collection::new(&collection).final_checkpoints()?;
    let read = |name: &str| -> Result<LoraAdapter> {
        let path = finals.get(name).with_context(|| {
            format!("{} has no final checkpoint of {name}", collection.display())
        })?;
        LoraAdapter::read_peft(path)
    };
    // Training tasks trained end to end need no collection: average those that have one.
    let train = record
        .train_tasks
        .iter()
        .filter(|n| finals.contains_key(*n))
        .map(|n| read(n))
        .collect::<Result<Vec<_>>>()?;
    let model = Llama::load(&setup.base, &Device::Cpu)?;
    let tok = ChatTokenizer::load(&setup.base)?;
    let dims = model.dims.clone();
    let averaged = match train.is_empty() {
        true => None,
        false => Some(lora(&average_adapters(&train)?, &dims)?),
    };
    let multitask = setup
        .multitask
        .iter()
        .map(|p| lora(&LoraAdapter::read_peft(p)?, &dims))
        .collect::<Result<Vec<_>>>()?;
    let generator = Generator::load(&setup.generator, &setup.encoder, &Device::Cpu)?;
    let n = generator.config().prompts;
    let mut rows = Vec::new();
    for (i, task) in heldout.iter().enumerate() {
        let encoded = test_examples(&tok, task, limit)?;
        let run = |l: Option<&LoraWeights>| score(&model, &tok, l, &encoded);
        let dnd_batches = (0..setup.batches)
            .map(|b| {
                let prompts = dnd_batch(task, n, setup.seed, b)?;
                run(Some(&lora(&generator.generate(&prompts)?.adapter, &dims)?))
            })
            .collect::<Result<Vec<_>>>()?;
        // The control: another task's prompts (the next held-out task, or the first
        // training task when only one is held out).
        let other: Task = match heldout.len() {
            1 => tasks
                .iter()
                .find(|t| t.name == record.train_tasks[0])
                .cloned()
                .context("the first training task is not among the tasks given")?,
            k => heldout[(i + 1) % k].clone(),
        };
        let shuffled_prompts = dnd_batch(&other, n, setup.seed, 0)?;
        let shuffled = run(Some(&lora(
            &generator.generate(&shuffled_prompts)?.adapter,
            &dims,
        )?))?;
        let row = NllRow {
            task: task.name.clone(),
            examples: encoded.len(),
            base: run(None)?,
            averaged: averaged.as_ref().map(|a| run(Some(a))).transpose()?,
            multitask: multitask
                .iter()
                .map(|m| run(Some(m)))
                .collect::<Result<_>>()?,
            own: match finals.contains_key(&task.name) {
                true => Some(run(Some(&lora(&read(&task.name)?, &dims)?))?),
                false => None,
            },
            dnd: mean_score(&dnd_batches),
            dnd_batches,
            shuffled,
            shuffled_from: other.name.clone(),
        };
        eprintln!("{}", row_line(&row));
        rows.push(row);
    }
    Ok(NllReport {
        generator: setup.generator.clone(),
        train_tasks: record.train_tasks.len(),
        averaged_over: train.len(),
        multitask: setup.multitask.iter().map(|p| adapter_name(p)).collect(),
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn cell(s: &NllScore) -> String {
    format!("{:.3} ({:.1})", s.nll, 100.0 * s.greedy)
}

fn opt_cell(s: Option<NllScore>) -> String {
    s.as_ref().map(cell).unwrap_or("-".into())
}

/// A checkpoint's name in a table: its folder, or the folder above a `step-N` folder
/// (`data/multitask54/multitask54/step-000500` -> `multitask54`).
pub fn adapter_name(path: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(path) {
        Some(n) if n.starts_with("step-") => path.parent().and_then(name).unwrap_or(n),
        Some(n) => n,
        None => path.display().to_string(),
    }
}

fn row_line(r: &NllRow) -> String {
    let multitask: String = r.multitask.iter().map(|s| cell(s) + " | ").collect();
    format!(
        "| {} | {} | {} | {multitask}{} | {} | {} | {} |",
        r.task,
        cell(&r.base),
        opt_cell(r.averaged),
        opt_cell(r.own),
        cell(&r.dnd),
        cell(&r.shuffled),
        r.shuffled_from
    )
}

/// The table: NLL per answer token (greedy exact %) per adapter, and the mean row.
pub fn nll_markdown(r: &NllReport) -> String {
    let multitask: String = r.multitask.iter().map(|n| format!(" {n} |")).collect();
    let mut out = format!(
        "| task | base | averaged LoRAs |{multitask} own LoRA | DnD | DnD shuffled | shuffled from |\n|{}\n",
        "---|".repeat(7 + r.multitask.len())
    );
    for row in &r.rows {
        out.push_str(&row_line(row));
        out.push('\n');
    }
    let col = |f: &dyn Fn(&NllRow) -> Option<NllScore>| -> String {
        let v: Vec<NllScore> = r.rows.iter().filter_map(f).collect();
        match v.is_empty() {
            true => "-".into(),
            false => format!("**{}**", cell(&mean_score(&v))),
        }
    };
    let multitask: String = (0..r.multitask.len())
        .map(|i| col(&|x| x.multitask.get(i).copied()) + " | ")
        .collect();
    out.push_str(&format!(
        "| mean | {} | {} | {multitask}{} | {} | {} | |\n",
        col(&|x| Some(x.base)),
        col(&|x| x.averaged),
        col(&|x| x.own),
        col(&|x| Some(x.dnd)),
        col(&|x| Some(x.shuffled)),
    ));
    out.push_str(&format!(
        "\nAveraged LoRAs: the mean of {} of the {} training tasks' final checkpoints.\n",
        r.averaged_over, r.train_tasks
    ));
    out
}

/// One task under the base model and fixed adapters (`eval --nll` without a generator).
#[derive(Debug, Clone, Serialize)]
pub struct LoraNllRow {
    pub task: String,
    pub family: String,
    pub examples: usize,
    pub base: NllScore,
    /// Per adapter, in the order given.
    pub adapters: Vec<NllScore>,
    /// The task's own final checkpoint, when the collection has one.
    pub own: Option<NllScore>,
    /// Some LoRA (an adapter, or the own one) answers more examples exactly than the
    /// base: the task can be specialised, so it stays in the suite.
    pub beats_base: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoraNllReport {
    pub adapters: Vec<(String, PathBuf)>,
    pub rows: Vec<LoraNllRow>,
    pub seconds: f64,
}

/// Scores every task under the base model, each of `adapters` and the task's own final
/// checkpoint in `own` (when it has one): which tasks a LoRA can improve on.
pub fn evaluate_lora_nll(
    tasks: &[Task],
    base: &Path,
    adapters: &[(String, PathBuf)],
    own: Option<&Path>,
    limit: Option<usize>,
) -> Result<LoraNllReport> {
    let started = std::time::Instant::now();
    let model = Llama::load(base, &Device::Cpu)?;
    let tok = ChatTokenizer::load(base)?;
    let loras = adapters
        .iter()
        .map(|(_, p)| lora(&LoraAdapter::read_peft(p)?, &model.dims))
        .collect::<Result<Vec<_>>>()?;
    let finals = match own {
        Some(dir) => Collection::new(dir).final_checkpoints()?,
        None => Default::default(),
    };
    let mut rows = Vec::new();
    for task in tasks {
        let encoded = test_examples(&tok, task, limit)?;
        let run = |l: Option<&LoraWeights>| score(&model, &tok, l, &encoded);
        let base = run(None)?;
        let adapters = loras
            .iter()
            .map(|l| run(Some(l)))
            .collect::<Result<Vec<_>>>()?;
        let own = match finals.get(&task.name) {
            Some(p) => Some(run(Some(&lora(&LoraAdapter::read_peft(p)?, &model.dims)?))?),
            None => None,
        };
        let beats_base = adapters.iter().chain(&own).any(|s| s.greedy > base.greedy);
        let row = LoraNllRow {
            task: task.name.clone(),
            family: task.family.clone(),
            examples: encoded.len(),
            base,
            adapters,
            own,
            beats_base,
        };
        eprintln!("{}", lora_row_line(&row));
        rows.push(row);
    }
    Ok(LoraNllReport {
        adapters: adapters.to_vec(),
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn lora_row_line(r: &LoraNllRow) -> String {
    let mut line = format!("| {} | {} | {} |", r.family, r.task, cell(&r.base));
    for a in &r.adapters {
        line.push_str(&format!(" {} |", cell(a)));
    }
    line.push_str(&format!(
        " {} | {} |",
        opt_cell(r.own),
        if r.beats_base { "yes" } else { "no" }
    ));
    line
}

/// The table (NLL per answer token, greedy exact %), then the tasks no LoRA improves.
pub fn lora_nll_markdown(r: &LoraNllReport) -> String {
    let mut out = String::from("| family | task | base |");
    for (label, _) in &r.adapters {
        out.push_str(&format!(" {label} |"));
    }
    out.push_str(" own LoRA | a LoRA beats base |\n|---|---|---|");
    out.push_str(&"---|".repeat(r.adapters.len() + 2));
    out.push('\n');
    for row in &r.rows {
        out.push_str(&lora_row_line(row));
        out.push('\n');
    }
    let dropped: Vec<&str> = r
        .rows
        .iter()
        .filter(|x| !x.beats_base)
        .map(|x| x.task.as_str())
        .collect();
    out.push_str(&format!(
        "\n{} of {} tasks where no LoRA answers more examples exactly than the base: {}\n",
        dropped.len(),
        r.rows.len(),
        dropped.join(",")
    ));
    out
}

pub fn write_lora_nll(r: &LoraNllReport, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("lora-nll.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(out.join("lora-nll.md"), lora_nll_markdown(r))?;
    Ok(())
}

pub fn write_nll(r: &NllReport, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("nll.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(out.join("nll.md"), nll_markdown(r))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model_dir;

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
}
