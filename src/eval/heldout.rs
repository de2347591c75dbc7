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

use super::{evaluate, final_checkpoints, write_report, Candidate, Report, Score};
use crate::adapters::peft::CONFIG_FILE;
use crate::generator::Generator;
use crate::server::Config;
use crate::training::collect::{TaskDone, DONE_FILE};
use crate::training::decoder::TrainRecord;
use crate::training::rng::Rng;
use crate::training::tasks::Task;

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
    pub base: (f64, f64),
    pub others_mean: (f64, f64),
    pub others_best: (f64, f64),
    pub others_best_name: String,
    pub own: (f64, f64),
    pub dnd_mean: (f64, f64),
    pub dnd_std: (f64, f64),
    pub dnd_min: (f64, f64),
    pub dnd_max: (f64, f64),
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
    let finals = final_checkpoints(&collection)?;
    let heldout_names: Vec<String> = heldout.iter().map(|t| t.name.clone()).collect();

    // DnD adapters, generated before the server starts so that timings are not disturbed.
    let generator = Generator::load(&setup.generator, &setup.encoder, &Device::Cpu)?;
    let n = generator.config().prompts;
    let scratch = tempfile::tempdir()?;
    let mut candidates = vec![Candidate {
        label: BASE.into(),
        adapter: None,
        only_tasks: vec![],
    }];
    let mut gen_seconds: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for task in &heldout {
        let prompts: Vec<String> = task.test.iter().map(|e| e.prompt.clone()).collect();
        ensure!(
            !prompts.is_empty(),
            "task {} has no test prompts",
            task.name
        );
        for i in 0..setup.samples {
            let mut rng = Rng::derive(setup.seed, &format!("{}/{i}", task.name));
            let mut idx: Vec<usize> = (0..prompts.len()).collect();
            rng.shuffle(&mut idx);
            let batch: Vec<String> = idx
                .iter()
                .cycle()
                .take(n)
                .map(|&j| prompts[j].clone())
                .collect();
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
    for name in &record.train_tasks {
        let path = finals.get(name).with_context(|| {
            format!("{} has no final checkpoint of {name}", collection.display())
        })?;
        candidates.push(Candidate {
            label: format!("LoRA {name}"),
            adapter: Some(path.clone()),
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
        let task_dir = collection.join(&task.name);
        let done: TaskDone = serde_json::from_slice(&std::fs::read(task_dir.join(DONE_FILE))?)?;
        for &step in &setup.overhead_steps {
            let dir = task_dir.join(format!("step-{step:06}"));
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
        let pair = |s: &Score| (s.strict, s.lenient);
        let base = pair(score(BASE, t).context("base score")?);
        let own = pair(score(OWN, t).context("own score")?);
        let others: Vec<(&str, (f64, f64))> = record
            .train_tasks
            .iter()
            .filter_map(|n| score(&format!("LoRA {n}"), t).map(|s| (n.as_str(), pair(s))))
            .collect();
        let dnd: Vec<(f64, f64)> = (0..setup.samples)
            .filter_map(|i| score(&format!("DnD #{i}"), t).map(pair))
            .collect();
        if others.is_empty() || dnd.is_empty() {
            bail!("missing scores for {t}");
        }
        let (others_mean, _, _, _) = stats(&others.iter().map(|o| o.1).collect::<Vec<_>>());
        let best = others
            .iter()
            .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.1 .1.total_cmp(&b.1 .1)))
            .expect("non-empty");
        let (dnd_mean, dnd_std, dnd_min, dnd_max) = stats(&dnd);
        let done = &run_info[t];
        let mut own_curve: Vec<(usize, f64)> = setup
            .overhead_steps
            .iter()
            .filter_map(|&s| score(&format!("own @{s}"), t).map(|x| (s, x.strict)))
            .collect();
        own_curve.push((done.steps, own.0));
        own_curve.sort_by_key(|c| c.0);
        let per_step = done.seconds / done.steps.max(1) as f64;
        let reached = own_curve.iter().find(|c| c.1 >= dnd_mean.0);
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
        for (model, (strict, lenient)) in [
            (BASE, base),
            (OTHERS_MEAN, others_mean),
            (OTHERS_BEST, best.1),
            (OWN, own),
            (DND, dnd_mean),
        ] {
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

/// Mean, population std, min and max of (strict, lenient) pairs.
#[allow(clippy::type_complexity)]
fn stats(v: &[(f64, f64)]) -> ((f64, f64), (f64, f64), (f64, f64), (f64, f64)) {
    let n = v.len().max(1) as f64;
    let one = |f: fn(&(f64, f64)) -> f64| {
        let xs: Vec<f64> = v.iter().map(f).collect();
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (mean, var.sqrt(), min, max)
    };
    let (a, b) = (one(|p| p.0), one(|p| p.1));
    ((a.0, b.0), (a.1, b.1), (a.2, b.2), (a.3, b.3))
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
            pct(row.base.0),
            pct(row.others_mean.0),
            pct(row.others_best.0),
            row.others_best_name,
            pct(row.own.0),
            pct(row.dnd_mean.0),
            pct(row.dnd_std.0),
            pct(row.dnd_min.0),
            pct(row.dnd_max.0),
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
