//! Held-out evaluation of a trained generator (`eval --generator`): for each task the
//! generator never saw in training, side by side in one run on its test split:
//! - the base model;
//! - the trained LoRAs of the generator's training tasks, their mean and their best (the
//!   method's "training LoRAs" baseline);
//! - the task's own trained LoRA (the oracle) and, for the overhead figure, its earlier
//!   checkpoints;
//! - DnD: `samples` adapters generated from as many random batches of N of the task's
//!   unlabelled test prompts; mean, spread and generation time.
//!
//! Writes the summary as `eval.json` / `eval.md` / `eval.png` (one column per row above),
//! every single score in `eval-all.json`, and `heldout.json` / `heldout.md` with the spread
//! and the overhead figure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use serde::Serialize;

use super::{evaluate, write_report, Accuracy, Candidate, Report, Score};
use crate::format::peft::{LoraAdapter, CONFIG_FILE};
use crate::format::rng::Rng;
use crate::generator::decoder::{Condition, DecoderConfig};
use crate::generator::retrieval::mean_adapter;
use crate::generator::Generator;
use crate::server::Config;
use crate::tasks::Task;
use crate::training::collection::{Collection, TaskDone};
use crate::training::generator::TrainRecord;

/// What to compare.
#[derive(Debug, Clone)]
pub struct HeldoutSetup {
    pub generator: PathBuf,
    pub encoder: PathBuf,
    /// The collection the generator was trained from (default: the one in `train.json`).
    pub checkpoints: Option<PathBuf>,
    /// DnD adapters per task.
    pub samples: usize,
    pub seed: u64,
    /// Steps of the task's own run evaluated for the overhead figure (saved ones only).
    pub overhead_steps: Vec<usize>,
}

/// One held-out task, both scores in [0, 1].
#[derive(Debug, Clone, Serialize)]
pub struct HeldoutRow {
    pub task: String,
    pub base: Accuracy,
    pub others_mean: Accuracy,
    pub others_best: Accuracy,
    pub others_best_name: String,
    /// One adapter whose matrices are the mean of the training LoRAs': what a generator
    /// that ignored its prompts would give (only for a collection with a shared frozen A,
    /// where averaging B averages the weight update).
    pub others_averaged: Option<Accuracy>,
    pub own: Accuracy,
    pub dnd_mean: Accuracy,
    pub dnd_std: Accuracy,
    pub dnd_min: Accuracy,
    pub dnd_max: Accuracy,
    /// Mean wall time of one generation (encode + decode + detokenise), seconds.
    pub dnd_seconds: f64,
    /// Steps of the own run and their strict accuracy, for the overhead figure.
    pub own_curve: Vec<(usize, f64)>,
    /// Seconds of LoRA training until its strict accuracy first reached DnD's mean (or
    /// the full run), and whether it got there.
    pub lora_seconds: f64,
    pub lora_reached: bool,
    pub lora_steps: usize,
}

/// The held-out evaluation of a generator.
#[derive(Debug, Clone, Serialize)]
pub struct HeldoutReport {
    pub generator: String,
    pub train_tasks: Vec<String>,
    pub rows: Vec<HeldoutRow>,
    pub summary: Report,
    pub all: Report,
}

const BASE: &str = "base";
const OTHERS_MEAN: &str = "other LoRAs (mean)";
const OTHERS_BEST: &str = "other LoRAs (best)";
const OTHERS_AVERAGED: &str = "other LoRAs averaged";
const OWN: &str = "own LoRA (oracle)";
const DND: &str = "DnD (mean)";

pub async fn evaluate_heldout(
    config: Config,
    tasks: &[Task],
    setup: &HeldoutSetup,
    limit: Option<usize>,
) -> Result<HeldoutReport> {
    let record = TrainRecord::load(&setup.generator)?;
    ensure!(
        !record.heldout_tasks.is_empty(),
        "{} was trained on every task of its collection: a held-out evaluation needs a \
         generator trained with --hold-out or --hold-out-family",
        setup.generator.display()
    );
    let heldout: Vec<Task> = tasks
        .iter()
        .filter(|t| record.heldout_tasks.contains(&t.name))
        .cloned()
        .collect();
    ensure!(
        !heldout.is_empty(),
        "none of the generator's held-out tasks ({}) is among the tasks given",
        record.heldout_tasks.join(", ")
    );
    let collection = setup
        .checkpoints
        .clone()
        .unwrap_or_else(|| record.checkpoints.clone());
    let runs = Collection::new(&collection);
    let finals = runs.final_checkpoints()?;
    let heldout_names: Vec<String> = heldout.iter().map(|t| t.name.clone()).collect();

    // DnD adapters, generated before the server starts so that timings are not disturbed.
    let generator = Generator::load(&setup.generator, &setup.encoder, &Device::Cpu)?;
    let scratch = tempfile::tempdir()?;
    let mut candidates = vec![Candidate {
        label: BASE.into(),
        adapter: None,
        only_tasks: vec![],
    }];
    let mut gen_seconds: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for task in &heldout {
        for i in 0..setup.samples {
            let batch = dnd_batch(task, generator.config(), setup.seed, i)?;
            let t0 = Instant::now();
            let generated = generator.generate(&batch)?;
            gen_seconds
                .entry(task.name.clone())
                .or_default()
                .push(t0.elapsed().as_secs_f64());
            let dir = scratch.path().join(format!("{}-{i}", task.name));
            generated.adapter.write_peft(&dir)?;
            candidates.push(Candidate {
                label: format!("DnD #{i}"),
                adapter: Some(dir),
                only_tasks: vec![task.name.clone()],
            });
        }
    }
    let mut train_loras = Vec::new();
    for name in &record.train_tasks {
        let path = finals.get(name).with_context(|| {
            format!("{} has no final checkpoint of {name}", collection.display())
        })?;
        candidates.push(Candidate {
            label: format!("LoRA {name}"),
            adapter: Some(path.clone()),
            only_tasks: heldout_names.clone(),
        });
        train_loras.push(LoraAdapter::read_peft(path)?);
    }
    if record.decoder.frozen_a_seed.is_some() {
        let dir = scratch.path().join("averaged");
        mean_adapter(&train_loras)?.write_peft(&dir)?;
        candidates.push(Candidate {
            label: OTHERS_AVERAGED.into(),
            adapter: Some(dir),
            only_tasks: heldout_names.clone(),
        });
    }
    let mut run_info: BTreeMap<String, TaskDone> = BTreeMap::new();
    for task in &heldout {
        let own = finals
            .get(&task.name)
            .with_context(|| format!("{} has no LoRA of {}", collection.display(), task.name))?;
        candidates.push(Candidate {
            label: OWN.into(),
            adapter: Some(own.clone()),
            only_tasks: vec![task.name.clone()],
        });
        let done = runs.done(&task.name)?;
        for &step in &setup.overhead_steps {
            let dir = runs.checkpoint(&task.name, step);
            if step < done.steps && dir.join(CONFIG_FILE).is_file() {
                candidates.push(Candidate {
                    label: format!("own @{step}"),
                    adapter: Some(dir),
                    only_tasks: vec![task.name.clone()],
                });
            }
        }
        run_info.insert(task.name.clone(), done);
    }

    let all = evaluate(config, &heldout, &candidates, limit).await?;
    let score = |model: &str, task: &str| -> Option<&Score> {
        all.scores
            .iter()
            .find(|s| s.model == model && s.task == task)
    };
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for task in &heldout {
        let t = task.name.as_str();
        let base = score(BASE, t).context("base score")?.accuracy();
        let own = score(OWN, t).context("own score")?.accuracy();
        let others: Vec<(&str, Accuracy)> = record
            .train_tasks
            .iter()
            .filter_map(|n| score(&format!("LoRA {n}"), t).map(|s| (n.as_str(), s.accuracy())))
            .collect();
        let dnd: Vec<Accuracy> = (0..setup.samples)
            .filter_map(|i| score(&format!("DnD #{i}"), t).map(Score::accuracy))
            .collect();
        if others.is_empty() || dnd.is_empty() {
            bail!("missing scores for {t}");
        }
        let (others_mean, _, _, _) = stats(&others.iter().map(|o| o.1).collect::<Vec<_>>());
        let best = others
            .iter()
            .max_by(|a, b| a.1.cmp_strict_first(&b.1))
            .expect("non-empty");
        let (dnd_mean, dnd_std, dnd_min, dnd_max) = stats(&dnd);
        let others_averaged = score(OTHERS_AVERAGED, t).map(Score::accuracy);
        let done = &run_info[t];
        let mut own_curve: Vec<(usize, f64)> = setup
            .overhead_steps
            .iter()
            .filter_map(|&s| score(&format!("own @{s}"), t).map(|x| (s, x.strict)))
            .collect();
        own_curve.push((done.steps, own.strict));
        own_curve.sort_by_key(|c| c.0);
        let per_step = done.seconds / done.steps.max(1) as f64;
        let reached = own_curve.iter().find(|c| c.1 >= dnd_mean.strict);
        let (lora_steps, lora_reached) = match reached {
            Some(&(s, _)) => (s, true),
            None => (done.steps, false),
        };
        let secs = &gen_seconds[t];
        rows.push(HeldoutRow {
            task: t.to_string(),
            base,
            others_mean,
            others_best: best.1,
            others_best_name: best.0.to_string(),
            others_averaged,
            own,
            dnd_mean,
            dnd_std,
            dnd_min,
            dnd_max,
            dnd_seconds: secs.iter().sum::<f64>() / secs.len() as f64,
            own_curve,
            lora_seconds: per_step * lora_steps as f64,
            lora_reached,
            lora_steps,
        });
        let n = score(BASE, t).map(|s| s.n).unwrap_or(0);
        let rows = [
            (BASE, Some(base)),
            (OTHERS_MEAN, Some(others_mean)),
            (OTHERS_BEST, Some(best.1)),
            (OTHERS_AVERAGED, others_averaged),
            (OWN, Some(own)),
            (DND, Some(dnd_mean)),
        ];
        for (model, Accuracy { strict, lenient }) in
            rows.into_iter().filter_map(|(m, s)| s.map(|s| (m, s)))
        {
            summary.push(Score {
                model: model.to_string(),
                task: t.to_string(),
                n,
                strict,
                lenient,
                samples: vec![],
            });
        }
    }
    Ok(HeldoutReport {
        generator: setup.generator.display().to_string(),
        train_tasks: record.train_tasks.clone(),
        rows,
        summary: Report {
            scores: summary,
            ..all.clone()
        },
        all,
    })
}

/// The `i`-th random batch of what generator `cfg` reads of a task, N of them (repeated
/// when there are fewer): its unlabelled test prompts, or, for a generator that reads
/// labelled examples, its training examples (a tenant's examples are not its test
/// requests).
pub(super) fn dnd_batch(
    task: &Task,
    cfg: &DecoderConfig,
    seed: u64,
    i: usize,
) -> Result<Vec<String>> {
    let source = match cfg.condition {
        Condition::Prompts => &task.test,
        Condition::Examples => &task.train,
    };
    ensure!(
        !source.is_empty(),
        "task {} has no examples to generate from",
        task.name
    );
    let mut rng = Rng::derive(seed, &format!("{}/{i}", task.name));
    let mut idx: Vec<usize> = (0..source.len()).collect();
    rng.shuffle(&mut idx);
    Ok(idx
        .iter()
        .cycle()
        .take(cfg.prompts)
        .map(|&j| cfg.condition.text(&source[j].prompt, &source[j].answer))
        .collect())
}

/// Where a generator's adapters land among the true LoRAs, for one held-out task. All
/// figures are cosine similarities of the B matrices (every layer and module, flattened):
/// the collection shares one frozen A, so B alone sets the weight update.
#[derive(Debug, Clone, Serialize)]
pub struct WeightRow {
    pub task: String,
    /// The mean DnD adapter against the task's own LoRA.
    pub dnd_to_own: f64,
    /// The mean of the training tasks' LoRAs against the own LoRA: what a generator that
    /// ignored its prompts could reach.
    pub others_mean_to_own: f64,
    /// The training task whose LoRA is nearest the own LoRA, and how near.
    pub nearest_other: (String, f64),
    /// The mean DnD adapter against the mean of the training LoRAs.
    pub dnd_to_others_mean: f64,
    /// Mean similarity between this task's DnD adapters (1: the batch makes no difference).
    pub dnd_within: f64,
    /// Norm of the mean DnD adapter over the own LoRA's.
    pub norm_ratio: f64,
}

/// The weight-space view of a held-out generator: per task, and across held-out tasks.
#[derive(Debug, Clone, Serialize)]
pub struct WeightReport {
    pub rows: Vec<WeightRow>,
    /// Mean similarity between different held-out tasks' mean DnD adapters...
    pub dnd_across_tasks: f64,
    /// ...and between their own LoRAs: how far apart the generator puts tasks, against
    /// how far apart they really are.
    pub own_across_tasks: f64,
}

/// Generates `setup.samples` adapters per held-out task and compares them with the
/// collection's LoRAs in weight space. No model is run: seconds, not the minutes of
/// [`evaluate_heldout`].
pub fn weight_space(tasks: &[Task], setup: &HeldoutSetup) -> Result<WeightReport> {
    let record = TrainRecord::load(&setup.generator)?;
    let collection = setup
        .checkpoints
        .clone()
        .unwrap_or_else(|| record.checkpoints.clone());
    let finals = Collection::new(&collection).final_checkpoints()?;
    let read = |name: &str| -> Result<LoraAdapter> {
        let path = finals
            .get(name)
            .with_context(|| format!("{} has no LoRA of {name}", collection.display()))?;
        LoraAdapter::read_peft(path)
    };
    ensure!(
        !record.train_tasks.is_empty(),
        "the generator has no training tasks"
    );
    let other_loras = (record.train_tasks.iter())
        .map(|n| read(n))
        .collect::<Result<Vec<_>>>()?;
    let others_mean = b_vector(&mean_adapter(&other_loras)?)?;
    let others: Vec<(&String, Vec<f32>)> = (record.train_tasks.iter())
        .zip(&other_loras)
        .map(|(n, a)| Ok((n, b_vector(a)?)))
        .collect::<Result<_>>()?;
    let generator = Generator::load(&setup.generator, &setup.encoder, &Device::Cpu)?;
    let mut rows = Vec::new();
    let mut dnd_means = Vec::new();
    let mut owns = Vec::new();
    for task in tasks
        .iter()
        .filter(|t| record.heldout_tasks.contains(&t.name))
    {
        let generated = (0..setup.samples.max(1))
            .map(|i| {
                Ok(generator
                    .generate(&dnd_batch(task, generator.config(), setup.seed, i)?)?
                    .adapter)
            })
            .collect::<Result<Vec<_>>>()?;
        let dnd = b_vector(&mean_adapter(&generated)?)?;
        let samples: Vec<Vec<f32>> = generated.iter().map(b_vector).collect::<Result<_>>()?;
        let own = b_vector(&read(&task.name)?)?;
        let nearest = others
            .iter()
            .map(|(name, b)| (name.to_string(), cosine(b, &own)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("non-empty");
        rows.push(WeightRow {
            task: task.name.clone(),
            dnd_to_own: cosine(&dnd, &own),
            others_mean_to_own: cosine(&others_mean, &own),
            nearest_other: nearest,
            dnd_to_others_mean: cosine(&dnd, &others_mean),
            dnd_within: mean_pairwise_cosine(&samples),
            norm_ratio: norm(&dnd) / norm(&own).max(1e-12),
        });
        dnd_means.push(dnd);
        owns.push(own);
    }
    ensure!(
        !rows.is_empty(),
        "none of the generator's held-out tasks ({}) is among the tasks given",
        record.heldout_tasks.join(", ")
    );
    Ok(WeightReport {
        rows,
        dnd_across_tasks: mean_pairwise_cosine(&dnd_means),
        own_across_tasks: mean_pairwise_cosine(&owns),
    })
}

/// The weight-space table in markdown.
pub fn weight_markdown(r: &WeightReport) -> String {
    let mut out = String::from(
        "| task | DnD vs own | other LoRAs' mean vs own | nearest other LoRA vs own | DnD vs other LoRAs' mean | DnD batch vs batch | DnD norm / own norm |\n|---|---|---|---|---|---|---|\n",
    );
    for w in &r.rows {
        out += &format!(
            "| {} | {:.2} | {:.2} | {:.2} ({}) | {:.2} | {:.3} | {:.2} |\n",
            w.task,
            w.dnd_to_own,
            w.others_mean_to_own,
            w.nearest_other.1,
            w.nearest_other.0,
            w.dnd_to_others_mean,
            w.dnd_within,
            w.norm_ratio
        );
    }
    out += &format!(
        "\nAcross held-out tasks, mean cosine between tasks: DnD adapters {:.2}, own LoRAs {:.2}.\n",
        r.dnd_across_tasks, r.own_across_tasks
    );
    out
}

/// Every B matrix of an adapter, flattened in tensor-name order.
fn b_vector(adapter: &LoraAdapter) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for (name, t) in &adapter.tensors {
        if name.contains("lora_B") {
            out.extend(t.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    ensure!(!out.is_empty(), "adapter has no B matrices");
    Ok(out)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// Mean cosine over every pair of vectors (1 when there is no pair).
fn mean_pairwise_cosine(vs: &[Vec<f32>]) -> f64 {
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for (i, a) in vs.iter().enumerate() {
        for b in &vs[i + 1..] {
            sum += cosine(a, b);
            pairs += 1;
        }
    }
    if pairs == 0 {
        1.0
    } else {
        sum / pairs as f64
    }
}

/// Mean, population std, min and max of accuracies, each scoring on its own.
fn stats(v: &[Accuracy]) -> (Accuracy, Accuracy, Accuracy, Accuracy) {
    let n = v.len().max(1) as f64;
    let one = |f: fn(&Accuracy) -> f64| {
        let xs: Vec<f64> = v.iter().map(f).collect();
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (mean, var.sqrt(), min, max)
    };
    let (s, l) = (one(|a| a.strict), one(|a| a.lenient));
    let acc = |strict, lenient| Accuracy { strict, lenient };
    (acc(s.0, l.0), acc(s.1, l.1), acc(s.2, l.2), acc(s.3, l.3))
}

/// The spread and overhead table in markdown.
pub fn heldout_markdown(r: &HeldoutReport) -> String {
    let pct = |x: f64| format!("{:.1}", 100.0 * x);
    let mut out = String::from(
        "| task | base | other LoRAs mean | other LoRAs best | own LoRA | DnD mean ± std (min–max) | DnD gen s | LoRA training s to DnD's accuracy | ratio |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in &r.rows {
        out += &format!(
            "| {} | {} | {} | {} ({}) | {} | {} ± {} ({}–{}) | {:.2} | {}{:.0}{} | {:.0}x |\n",
            row.task,
            pct(row.base.strict),
            pct(row.others_mean.strict),
            pct(row.others_best.strict),
            row.others_best_name,
            pct(row.own.strict),
            pct(row.dnd_mean.strict),
            pct(row.dnd_std.strict),
            pct(row.dnd_min.strict),
            pct(row.dnd_max.strict),
            row.dnd_seconds,
            // Reached at the first saved checkpoint: it may have been reached earlier.
            if row.lora_reached && row.own_curve.first().map(|c| c.0) == Some(row.lora_steps) {
                "≤ "
            } else {
                ""
            },
            row.lora_seconds,
            if row.lora_reached {
                format!(" ({} steps)", row.lora_steps)
            } else {
                " (never reached: full run)".to_string()
            },
            row.lora_seconds / row.dnd_seconds.max(1e-9),
        );
    }
    out
}

/// Writes the summary (`eval.*`), `eval-all.json` and `heldout.json` / `heldout.md`.
pub fn write_heldout(r: &HeldoutReport, out: &Path) -> Result<()> {
    write_report(&r.summary, out)?;
    std::fs::write(
        out.join("eval-all.json"),
        serde_json::to_vec_pretty(&r.all)?,
    )?;
    std::fs::write(out.join("heldout.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(
        out.join("heldout.md"),
        format!(
            "Strict accuracy in % on held-out tasks (generator {} trained on {}).\n\n{}",
            r.generator,
            r.train_tasks.join(", "),
            heldout_markdown(r)
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_flattened_weights() {
        let v = vec![1.0f32, -2.0, 0.5];
        let twice: Vec<f32> = v.iter().map(|x| 2.0 * x).collect();
        let neg: Vec<f32> = v.iter().map(|x| -x).collect();
        assert!((cosine(&v, &twice) - 1.0).abs() < 1e-9);
        assert!((cosine(&v, &neg) + 1.0).abs() < 1e-9);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert_eq!(mean_pairwise_cosine(std::slice::from_ref(&v)), 1.0);
        assert!((mean_pairwise_cosine(&[v, twice, neg]) - (-1.0 / 3.0)).abs() < 1e-9);
    }

    #[test]
    fn a_batch_is_test_prompts_or_labelled_training_examples() {
        let ex = |p: &str, a: &str| crate::tasks::Example {
            prompt: p.into(),
            answer: a.into(),
            choices: vec![],
        };
        let task = Task {
            name: "t".into(),
            family: "f".into(),
            scoring: crate::tasks::Scoring::Exact,
            train: vec![ex("train 1", "1"), ex("train 2", "2")],
            test: vec![ex("test 1", "1"), ex("test 2", "2")],
        };
        let mut cfg = crate::generator::decoder::tests::tiny_config();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        // N = 4 from 2: each twice.
        let prompts = dnd_batch(&task, &cfg, 0, 0).unwrap();
        assert_eq!(sorted(prompts), ["test 1", "test 1", "test 2", "test 2"]);
        cfg.condition = Condition::Examples;
        let examples = dnd_batch(&task, &cfg, 0, 0).unwrap();
        assert_eq!(
            sorted(examples),
            [
                "train 1\nAnswer: 1",
                "train 1\nAnswer: 1",
                "train 2\nAnswer: 2",
                "train 2\nAnswer: 2"
            ]
        );
    }
}
