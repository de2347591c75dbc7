//! Teacher-forced held-out evaluation (`eval --generator G --nll`): continuous and cheap
//! beside the engine's accuracy, so that every change to the generator can be measured on
//! all test examples of every held-out task.
//!
//! For each held-out task and each adapter below, on every test example, the trainer's
//! F32 forward pass of the base model (the one `collect` trains with; a test checks it
//! gives the engine's logits) reads ([`crate::training::llama::score`]):
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
//! With `nearest: k` and the training tasks' checkpoints, also retrieval
//! ([`crate::generator::retrieval`]): the mean LoRA of the k training tasks whose text
//! (DnD's first batch, read the same way for every task) is nearest the held-out task's,
//! and its control, retrieval from the next held-out task's batch: the simplest adapter
//! that reads its task, the baseline for any generator that claims to.
//! With `select: n` as well, selection: of retrieval's k neighbours (each alone) and the
//! multi-task LoRAs, the adapter that ranks first on the task's first n training examples
//! (by `select_by`: the most greedy exact answers then the lowest NLL, as the server's
//! library, or the lowest NLL alone), which are the labelled examples a tenant gives the
//! no-harm check (the test examples share no content with them); and its control, the
//! next held-out task's selection. With `soup`, the pick grown into a greedy soup of the
//! same candidates on the same examples ([`crate::training::llama::score::soup`]).
//! Where retrieval asks whether a task's text picks weights, selection asks whether its
//! labelled examples do, among the same few candidates and the adapter to beat.
//!
//! [`decode_rows`] answers with the same adapters through the serving path (strict and
//! lenient accuracy), and [`bars_markdown`] checks the generator's bars on those rows.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::heldout::dnd_batch;
use super::{Accuracy, EvalServer, Score, Shown};
use crate::format::peft::LoraAdapter;
use crate::generator::retrieval::{mean_adapter, on_top, Library, Retrieved};
use crate::generator::Generator;
use crate::server::specialise::guard::{self, Tolerance, Verdict};
use crate::server::Config;
use crate::tasks::Task;
use crate::training::collection::Collection;
use crate::training::generator::TrainRecord;
use crate::training::llama::chat::{ChatTokenizer, Encoded};
pub use crate::training::llama::score::NllScore;
use crate::training::llama::score::{best, encode, lora, score, soup, Rank};
use crate::training::llama::Llama;
use crate::training::lora::LoraWeights;
use crate::training::states::StateEncoder;

#[derive(Debug, Clone)]
pub struct NllSetup {
    pub generator: PathBuf,
    /// More generators of the same decoder shape and condition (e.g. other seeds of one
    /// recipe): DnD's adapter of a batch is then the mean of every generator's, the
    /// ensemble; empty: `generator` alone.
    pub ensemble: Vec<PathBuf>,
    pub encoder: PathBuf,
    /// The base model folder (Hugging Face layout, as `collect` uses).
    pub base: PathBuf,
    /// The collection (default: the one in `train.json`, when it is on this machine).
    pub checkpoints: Option<PathBuf>,
    /// Multi-task LoRAs (PEFT folders) to compare with, e.g. the one a residual generator
    /// sits on and the one of all training tasks.
    pub multitask: Vec<PathBuf>,
    /// DnD prompt batches per task.
    pub batches: usize,
    /// Retrieval's neighbours ([`crate::generator::retrieval`]); 0: no retrieval columns.
    pub nearest: usize,
    /// Retrieval as a move of this adapter ([`crate::generator::retrieval::on_top`]), e.g.
    /// the multi-task LoRA of all training tasks; `None`: the neighbours' mean alone.
    pub nearest_on: Option<PathBuf>,
    /// Selection's examples (see the module doc); 0, or no retrieval: no selection columns.
    pub select: usize,
    /// How selection ranks its candidates.
    pub select_by: Rank,
    /// Selection grows its pick into a greedy soup of the candidates
    /// ([`crate::training::llama::score::soup`]).
    pub soup: bool,
    pub seed: u64,
    /// The adapter the no-harm check weighs against each DnD adapter and routes where it
    /// ranks above it in the check ([`guard::routed`]), as `plugin.fallback_adapter` is;
    /// default: a residual generator's base adapter. One of `multitask`, or added to them.
    pub fallback: Option<PathBuf>,
    /// Tasks whose DnD adapters (each from its first batch) are retrieval's and selection's
    /// library instead of the collection's LoRAs: the generator's training tasks, so that
    /// the library is what the generator makes of tasks it learnt; empty: the collection's.
    pub generated_library: Vec<Task>,
}

/// A task's first `limit` test examples (all without one), encoded once for every adapter
/// they are scored with.
fn test_examples(tok: &ChatTokenizer, task: &Task, limit: Option<usize>) -> Result<Vec<Encoded>> {
    encode(
        tok,
        &task.test[..limit.unwrap_or(usize::MAX).min(task.test.len())],
    )
}

/// One held-out task under every adapter compared, one score each (`S`: [`NllScore`]
/// teacher-forced, [`Accuracy`] decoded through the engine).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row<S> {
    pub task: String,
    pub examples: usize,
    pub base: S,
    /// `None` when no training task was collected.
    pub averaged: Option<S>,
    /// Per multi-task LoRA, in the order of [`NllReport::multitask`].
    pub multitask: Vec<S>,
    /// `None` when the collection has no checkpoint of the task.
    pub own: Option<S>,
    /// The mean over the prompt batches.
    pub dnd: S,
    pub dnd_batches: Vec<S>,
    /// DnD generated from `shuffled_from`'s prompts.
    pub shuffled: S,
    pub shuffled_from: String,
    /// Retrieval from DnD's first prompt batch, and from `shuffled_from`'s (the same
    /// control); `None` without a library (or before the columns existed).
    // (`default = ...`: a plain `default` would ask `S: Default`)
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub nearest: Option<S>,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub nearest_shuffled: Option<S>,
    /// The tasks retrieval averaged, nearest first, with their cosine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<(String, f32)>,
    /// Selection, and its control from `shuffled_from`'s examples; `None` without
    /// (`NllSetup::select`).
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub selected: Option<S>,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub selected_shuffled: Option<S>,
    /// The adapter selection picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_name: Option<String>,
    /// The base model with the task's first `demonstrations` training examples shown before
    /// each test prompt (`plugin.demonstrations`); decoded rows only, `None` without.
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub shown: Option<S>,
}

pub type NllRow = Row<NllScore>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NllReport {
    pub generator: PathBuf,
    /// [`NllSetup::ensemble`]: the generators whose adapters DnD's were the mean with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ensemble: Vec<PathBuf>,
    pub train_tasks: usize,
    /// How many training tasks' final checkpoints the averaged LoRA is the mean of.
    pub averaged_over: usize,
    /// The multi-task LoRAs compared, by name (see [`adapter_name`]).
    pub multitask: Vec<String>,
    pub rows: Vec<NllRow>,
    /// With `--decode`: the same adapters answering through the serving path (greedy,
    /// strict and lenient accuracy), on the first `decode_limit` test examples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decoded: Vec<Row<Accuracy>>,
    pub decode_limit: Option<usize>,
    /// With `--decode`: the training examples shown to the base model in the decoded
    /// `shown` column and, with `--guard`, checked as the server's candidate of
    /// `plugin.demonstrations` (0: none).
    #[serde(default)]
    pub demonstrations: usize,
    /// With `demonstrations`: more than it, each prompt was shown its nearest
    /// `demonstrations` of the task's first this many (0: the first `demonstrations`).
    #[serde(default)]
    pub demonstrations_pool: usize,
    /// `eval --shown-to-all`: every teacher-forced column was shown the task's first
    /// `demonstrations` training examples before each test prompt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shown_to_all: bool,
    /// With `--guard N`: the no-harm check of every DnD adapter and the shuffled one on
    /// N training examples of its task (the first, or after those shown or selection read),
    /// and the decoded rows with each rejected
    /// adapter's scores replaced by the base model's, the fallback adapter's column
    /// checked too (what a tenant who gave N examples would get).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<TaskChecks>,
    /// The check's tolerance the `checks` were last judged by ([`NllReport::apply_checks`]).
    #[serde(default)]
    pub check_tolerance: Tolerance,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guarded: Vec<Row<Accuracy>>,
    /// With `--guard N` and a fallback adapter (`--fallback`, or a residual generator's base
    /// adapter): the guarded rows with it routed where the server's rule routes it
    /// ([`guard::routed`]); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Held-out tasks left out of this report ([`NllReport::without`]): its means and bars
    /// are over the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// For a report pooled from several runs ([`NllReport::pooled`]), one line per run:
    /// its generator, training tasks and averaged LoRAs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pooled_from: Vec<String>,
    pub seconds: f64,
}

impl NllReport {
    /// Sets the checked rows (`guarded`, and `fallback` given the multi-task column of the
    /// fallback adapter) from `decoded` and `checks`, by the server's rule with `tolerance`
    /// (the checks' verdicts judged again by it: a run's counts outlive its rule).
    pub fn apply_checks(&mut self, fallback: Option<usize>, tolerance: Tolerance) {
        self.check_tolerance = tolerance;
        for c in &mut self.checks {
            c.rejudge(tolerance);
        }
        let rows = |with_fallback: bool| -> Vec<Row<Accuracy>> {
            let apply = |(r, c): (_, &TaskChecks)| c.apply(r, fallback, with_fallback);
            self.decoded.iter().zip(&self.checks).map(apply).collect()
        };
        self.guarded = rows(false);
        self.fallback = match (fallback, self.checks.is_empty()) {
            (Some(i), false) => Some(Fallback {
                adapter: self.multitask[i].clone(),
                rows: rows(true),
            }),
            _ => None,
        };
    }

    /// The multi-task column of the fallback adapter, when the checks have one.
    pub fn fallback_column(&self) -> Option<usize> {
        let name = &self.fallback.as_ref()?.adapter;
        self.multitask.iter().position(|m| m == name)
    }

    /// The report without the held-out tasks `names` (e.g. those the suite filter drops):
    /// every table, mean and bar is then over the other tasks, with nothing run again.
    pub fn without(mut self, names: &[String]) -> Result<Self> {
        for name in names {
            ensure!(
                self.rows.iter().any(|r| &r.task == name),
                "no held-out task {name:?} in the report"
            );
        }
        let keep = |task: &String| !names.contains(task);
        self.rows.retain(|r| keep(&r.task));
        self.decoded.retain(|r| keep(&r.task));
        self.guarded.retain(|r| keep(&r.task));
        self.checks.retain(|c| keep(&c.task));
        if let Some(f) = &mut self.fallback {
            f.rows.retain(|r| keep(&r.task));
        }
        self.left_out.extend_from_slice(names);
        Ok(self)
    }

    /// One report of several runs' held-out tasks, e.g. the folds of a k-fold split
    /// (`train --hold-out-every K --fold F`), so that the bars and their intervals are over
    /// every task some run held out: the tables concatenated in the order given. The runs
    /// must hold out different tasks, compare as many multi-task LoRAs (a column pools each
    /// run's LoRA in that place, its name theirs joined with " + "), and decode and check
    /// alike.
    pub fn pooled(reports: Vec<NllReport>) -> Result<Self> {
        let Some(first) = reports.first() else {
            bail!("no report to pool");
        };
        let (columns, decode_limit) = (first.multitask.len(), first.decode_limit);
        let fallback = first.fallback_column();
        let mut seen = std::collections::BTreeSet::new();
        for r in &reports {
            ensure!(
                r.multitask.len() == columns && r.fallback_column() == fallback,
                "{}: the runs compare different multi-task LoRA columns",
                r.generator.display()
            );
            ensure!(
                r.decode_limit == decode_limit
                    && r.demonstrations == first.demonstrations
                    && r.demonstrations_pool == first.demonstrations_pool
                    && r.shown_to_all == first.shown_to_all
                    && r.decoded.is_empty() == first.decoded.is_empty()
                    && r.checks.is_empty() == first.checks.is_empty(),
                "{}: the runs decode or check differently",
                r.generator.display()
            );
            for row in &r.rows {
                ensure!(
                    seen.insert(row.task.clone()),
                    "task {} is held out by more than one run",
                    row.task
                );
            }
        }
        let multitask: Vec<String> = (0..columns)
            .map(|i| {
                let mut names: Vec<&str> = Vec::new();
                for r in &reports {
                    if !names.contains(&r.multitask[i].as_str()) {
                        names.push(&r.multitask[i]);
                    }
                }
                names.join(" + ")
            })
            .collect();
        let mut pooled = NllReport {
            generator: reports
                .iter()
                .map(|r| r.generator.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
            ensemble: reports.iter().flat_map(|r| r.ensemble.clone()).collect(),
            train_tasks: reports.iter().map(|r| r.train_tasks).max().unwrap_or(0),
            averaged_over: reports.iter().map(|r| r.averaged_over).min().unwrap_or(0),
            multitask,
            rows: Vec::new(),
            decoded: Vec::new(),
            decode_limit,
            demonstrations: first.demonstrations,
            demonstrations_pool: first.demonstrations_pool,
            shown_to_all: first.shown_to_all,
            checks: Vec::new(),
            check_tolerance: Tolerance::default(),
            guarded: Vec::new(),
            fallback: None,
            left_out: Vec::new(),
            pooled_from: Vec::new(),
            seconds: 0.0,
        };
        for r in reports {
            pooled.pooled_from.push(format!(
                "{} ({} held-out tasks; {} training tasks, averaged LoRAs of {})",
                r.generator.display(),
                r.rows.len(),
                r.train_tasks,
                r.averaged_over
            ));
            pooled.rows.extend(r.rows);
            pooled.decoded.extend(r.decoded);
            pooled.checks.extend(r.checks);
            pooled.left_out.extend(r.left_out);
            pooled.seconds += r.seconds;
        }
        // Also names the pooled column of the fallback adapter.
        pooled.apply_checks(fallback, Tolerance::default());
        Ok(pooled)
    }
}

/// The guarded rows with the fallback adapter ([`NllSetup::fallback`]) routed where it wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fallback {
    /// The multi-task column that is the fallback adapter.
    pub adapter: String,
    pub rows: Vec<Row<Accuracy>>,
}

/// The no-harm checks of one held-out task's adapters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskChecks {
    pub task: String,
    /// One per DnD prompt batch.
    pub dnd: Vec<Verdict>,
    pub shuffled: Verdict,
    /// The fallback adapter ([`NllSetup::fallback`]), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Verdict>,
    /// The selection's adapter ([`NllSetup::select`]), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<Verdict>,
    /// The base model shown the task's first examples ([`NllReport::demonstrations`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<Verdict>,
}

impl TaskChecks {
    /// Every verdict judged again by the rule with `tolerance` ([`Verdict::rejudged`]).
    fn rejudge(&mut self, tolerance: Tolerance) {
        let verdicts = (self.dnd.iter_mut())
            .chain([&mut self.shuffled])
            .chain(self.fallback.as_mut())
            .chain(self.selected.as_mut())
            .chain(self.shown.as_mut());
        for v in verdicts {
            *v = v.rejudged(tolerance);
        }
    }

    /// `row` as the checks leave it, by the server's rule ([`guard::routed`]): a rejected
    /// adapter's scores are the base model's. Given `base_adapter`, the multi-task column
    /// of the fallback adapter, that column is checked too (so that DnD is compared
    /// with it checked), as are the selection's and the examples shown; with `fallback` the
    /// DnD cells are those of the fallback, the selection or the examples shown where the rule
    /// routes it (it passed and ranked above the DnD adapter, or that one was rejected), as
    /// the server does with `plugin.fallback_adapter`, `plugin.library` and
    /// `plugin.demonstrations` (ranked in that order on a tie, the examples shown last).
    pub fn apply(
        &self,
        row: &Row<Accuracy>,
        base_adapter: Option<usize>,
        fallback: bool,
    ) -> Row<Accuracy> {
        let base_adapter = base_adapter.zip(self.fallback);
        let selected = self.selected.zip(row.selected);
        let shown = self.shown.zip(row.shown);
        let alone = |v: &Verdict, s: Accuracy| if v.accepted { s } else { row.base };
        // The shuffle control is DnD's: the task's own selection and examples are not its
        // to route.
        let routes = |v: &Verdict, s: Accuracy, own: bool| {
            let mut checked = vec![(*v, s)];
            if fallback {
                checked.extend(base_adapter.map(|(column, f)| (f, row.multitask[column])));
                checked.extend(selected.filter(|_| own));
                checked.extend(shown.filter(|_| own));
            }
            let verdicts: Vec<Verdict> = checked.iter().map(|(v, _)| *v).collect();
            guard::routed(&verdicts).map_or(row.base, |i| checked[i].1)
        };
        let pick = |v: &Verdict, s: Accuracy| routes(v, s, true);
        let mut multitask = row.multitask.clone();
        if let Some((column, v)) = base_adapter {
            multitask[column] = alone(&v, row.multitask[column]);
        }
        let dnd_batches: Vec<Accuracy> = self
            .dnd
            .iter()
            .zip(&row.dnd_batches)
            .map(|(v, s)| pick(v, *s))
            .collect();
        Row {
            multitask,
            dnd: Accuracy::mean(&dnd_batches),
            dnd_batches,
            shuffled: routes(&self.shuffled, row.shuffled, false),
            selected: selected.map(|(v, s)| alone(&v, s)).or(row.selected),
            shown: shown.map(|(v, s)| alone(&v, s)).or(row.shown),
            ..row.clone()
        }
    }
}

/// The adapters compared on one held-out task, besides those every task shares.
pub struct Case {
    pub task: Task,
    pub own: Option<LoraAdapter>,
    /// One per prompt batch.
    pub dnd: Vec<LoraAdapter>,
    /// DnD from `shuffled_from`'s prompts: the condition-shuffle control.
    pub shuffled: LoraAdapter,
    pub shuffled_from: String,
    /// Retrieval from the first DnD batch's texts, and from `shuffled_from`'s.
    pub nearest: Option<Retrieved>,
    pub nearest_shuffled: Option<LoraAdapter>,
    /// Selection from the task's examples, and from `shuffled_from`'s.
    pub selected: Option<Selected>,
    pub selected_shuffled: Option<LoraAdapter>,
}

/// What selection picked (see the module doc).
#[derive(Clone)]
pub struct Selected {
    /// A neighbour's task name, or a multi-task LoRA's name.
    pub name: String,
    pub adapter: LoraAdapter,
    /// The task's first training examples it read.
    pub read: usize,
}

/// Every adapter of the held-out comparison, generated once and scored both ways.
pub struct Comparison {
    pub train_tasks: usize,
    /// The training tasks' final checkpoints averaged into one, and how many there were.
    /// Training tasks: the generator's, and every task given that it neither holds out
    /// nor is evaluated on (a residual generator's include those of the LoRA it sits on,
    /// which its record does not list).
    pub averaged: Option<LoraAdapter>,
    pub averaged_over: usize,
    pub multitask: Vec<(String, LoraAdapter)>,
    /// The entry of `multitask` that is the fallback adapter ([`NllSetup::fallback`]; added
    /// to them when none of those given is).
    pub fallback: Option<usize>,
    pub cases: Vec<Case>,
}

impl Comparison {
    /// Reads the baselines and generates the DnD and shuffled adapters of the tasks among
    /// `tasks` that the generator is evaluated on ([`TrainRecord::evaluates`]).
    pub fn build(tasks: &[Task], setup: &NllSetup) -> Result<Self> {
        let record = TrainRecord::load(&setup.generator)?;
        let heldout: Vec<&Task> = tasks.iter().filter(|t| record.evaluates(t)).collect();
        ensure!(
            !heldout.is_empty(),
            "none of the generator's held-out tasks ({}) is among the tasks given, nor any task file it did not train on",
            record.heldout_tasks.join(", ")
        );
        ensure!(setup.batches >= 1, "at least one DnD prompt batch");
        let collection = setup
            .checkpoints
            .clone()
            .unwrap_or_else(|| record.checkpoints.clone());
        // A shipped generator's collection is not on every machine: without one, no
        // averaged-LoRA column. A folder that was named must exist.
        let finals = match setup.checkpoints.is_none() && !collection.is_dir() {
            true => std::collections::BTreeMap::new(),
            false => Collection::new(&collection).final_checkpoints()?,
        };
        let read = |name: &str| -> Result<LoraAdapter> {
            let path = finals.get(name).with_context(|| {
                format!("{} has no final checkpoint of {name}", collection.display())
            })?;
            LoraAdapter::read_peft(path)
        };
        // Training tasks trained end to end need no collection: average those that have one.
        let mut train: Vec<&str> = record.train_tasks.iter().map(String::as_str).collect();
        for t in tasks {
            if !record.evaluates(t) && !record.heldout_tasks.contains(&t.name) {
                train.push(&t.name);
            }
        }
        train.sort_unstable();
        train.dedup();
        train.retain(|n| finals.contains_key(*n));
        let train_loras = train.iter().map(|n| read(n)).collect::<Result<Vec<_>>>()?;
        let averaged = match train_loras.is_empty() {
            true => None,
            false => Some(mean_adapter(&train_loras)?),
        };
        let mut multitask = setup
            .multitask
            .iter()
            .map(|p| Ok((adapter_name(p), LoraAdapter::read_peft(p)?)))
            .collect::<Result<Vec<_>>>()?;
        let generator = load_generator(&setup.generator, setup)?;
        let fallback = match &setup.fallback {
            Some(path) => Some((adapter_name(path), LoraAdapter::read_peft(path)?)),
            None => generator
                .base_adapter()
                .map(|base| ("generator base".to_string(), base)),
        };
        let fallback = match fallback {
            Some((name, adapter)) => Some(match position_of(&multitask, &adapter)? {
                Some(i) => i,
                None => {
                    multitask.push((name, adapter));
                    multitask.len() - 1
                }
            }),
            None => None,
        };
        let ensemble = setup
            .ensemble
            .iter()
            .map(|dir| {
                let other = load_generator(dir, setup)?;
                let (a, b) = (generator.config(), other.config());
                // The mean of B matrices is the mean of the weight deltas only on one A.
                ensure!(
                    (a.prompts, a.prompt_tokens, a.condition, a.frozen_a_seed)
                        == (b.prompts, b.prompt_tokens, b.condition, b.frozen_a_seed),
                    "{} reads another batch or has another frozen A than {} (prompts, tokens, \
                     condition or frozen_a_seed differ): an ensemble's generators must share both",
                    dir.display(),
                    setup.generator.display()
                );
                Ok(other)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = |task: &Task, b: usize| dnd_batch(task, generator.config(), setup.seed, b);
        let generate = |task: &Task, b: usize| -> Result<LoraAdapter> {
            let prompts = batch(task, b)?;
            let first = generator.generate(&prompts)?.adapter;
            if ensemble.is_empty() {
                return Ok(first);
            }
            let mut all = vec![first];
            for other in &ensemble {
                all.push(other.generate(&prompts)?.adapter);
            }
            mean_adapter(&all)
        };
        // Retrieval's library: the LoRAs of the training tasks among those given (it needs
        // their examples), each task read as DnD reads one; or DnD's adapters of the tasks
        // given for it, read the same way.
        let mut entries = Vec::new();
        for t in &setup.generated_library {
            entries.push((t.name.clone(), batch(t, 0)?, generate(t, 0)?));
        }
        if setup.generated_library.is_empty() {
            for (name, adapter) in train.iter().zip(&train_loras) {
                if let Some(t) = tasks.iter().find(|t| t.name == *name) {
                    entries.push((t.name.clone(), batch(t, 0)?, adapter.clone()));
                }
            }
        }
        let library = match (setup.nearest, entries.is_empty()) {
            (0, _) | (_, true) => None,
            _ => Some(Library::new(generator.encoder(), entries)?),
        };
        let on = setup
            .nearest_on
            .as_deref()
            .map(LoraAdapter::read_peft)
            .transpose()?;
        let retrieve = |task: &Task| -> Result<Option<Retrieved>> {
            let Some(library) = &library else {
                return Ok(None);
            };
            let mut r = library.nearest(generator.encoder(), &batch(task, 0)?, setup.nearest)?;
            if let Some(on) = &on {
                r.adapter = on_top(on, &r.adapter, library.mean())?;
            }
            Ok(Some(r))
        };
        // Selection scores its candidates with the trainer's forward pass, as the columns.
        let selector = match (setup.select, &library) {
            (0, _) | (_, None) => None,
            (n, Some(library)) => Some((
                library,
                Llama::load(&setup.base, &Device::Cpu)?,
                ChatTokenizer::load(&setup.base)?,
                n,
            )),
        };
        // Selection among `r`'s neighbours (retrieval for `task`).
        let select = |task: &Task, r: Option<&Retrieved>| -> Result<Option<Selected>> {
            let (Some((library, model, tok, n)), Some(r)) = (&selector, r) else {
                return Ok(None);
            };
            let mut candidates = Vec::new();
            for (name, _) in &r.neighbours {
                let adapter = library
                    .adapter(name)
                    .context("a neighbour not in the library")?;
                candidates.push((name.as_str(), adapter));
            }
            candidates.extend(multitask.iter().map(|(n, a)| (n.as_str(), a)));
            let read = (*n).min(task.train.len());
            let examples = encode(tok, &task.train[..read])?;
            let adapters: Vec<&LoraAdapter> = candidates.iter().map(|(_, a)| *a).collect();
            let (name, adapter) = match setup.soup {
                false => {
                    let (name, adapter) =
                        candidates[best(model, tok, &adapters, &examples, setup.select_by)?];
                    (name.to_string(), adapter.clone())
                }
                true => {
                    let (members, adapter) =
                        soup(model, tok, &adapters, &examples, setup.select_by)?;
                    let names: Vec<&str> = members.iter().map(|&i| candidates[i].0).collect();
                    (names.join("+"), adapter)
                }
            };
            Ok(Some(Selected {
                read,
                name,
                adapter,
            }))
        };
        // Each held-out task's retrieval and selection once: the next task's are its
        // controls.
        let retrievals = heldout
            .iter()
            .map(|t| retrieve(t))
            .collect::<Result<Vec<_>>>()?;
        let selections = heldout
            .iter()
            .zip(&retrievals)
            .map(|(t, r)| select(t, r.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let mut cases = Vec::new();
        for (i, task) in heldout.iter().enumerate() {
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
            let (nearest_shuffled, selected_shuffled) = match heldout.len() {
                1 => {
                    let r = retrieve(&other)?;
                    let s = select(&other, r.as_ref())?;
                    (r, s)
                }
                k => (
                    retrievals[(i + 1) % k].clone(),
                    selections[(i + 1) % k].clone(),
                ),
            };
            cases.push(Case {
                task: (*task).clone(),
                own: match finals.contains_key(&task.name) {
                    true => Some(read(&task.name)?),
                    false => None,
                },
                dnd: (0..setup.batches)
                    .map(|b| generate(task, b))
                    .collect::<Result<_>>()?,
                shuffled: generate(&other, 0)?,
                shuffled_from: other.name.clone(),
                nearest: retrievals[i].clone(),
                nearest_shuffled: nearest_shuffled.map(|r| r.adapter),
                selected: selections[i].clone(),
                selected_shuffled: selected_shuffled.map(|s| s.adapter),
            });
        }
        Ok(Self {
            train_tasks: record.train_tasks.len(),
            averaged_over: train.len(),
            averaged,
            multitask,
            fallback,
            cases,
        })
    }

    /// Case `i`'s adapters in table order with their labels (`None`: the base model).
    fn adapters(&self, i: usize) -> Vec<(String, Option<&LoraAdapter>)> {
        let case = &self.cases[i];
        let mut v = vec![("base".to_string(), None)];
        v.extend(self.averaged.iter().map(|a| ("averaged".into(), Some(a))));
        v.extend(self.multitask.iter().map(|(n, a)| (n.clone(), Some(a))));
        v.extend(case.own.iter().map(|a| ("own".into(), Some(a))));
        v.extend(
            case.dnd
                .iter()
                .enumerate()
                .map(|(b, a)| (format!("dnd-{b}"), Some(a))),
        );
        v.push(("shuffled".into(), Some(&case.shuffled)));
        v.extend(
            case.nearest
                .iter()
                .map(|r| ("nearest".into(), Some(&r.adapter))),
        );
        v.extend(
            case.nearest_shuffled
                .iter()
                .map(|a| ("nearest shuffled".into(), Some(a))),
        );
        v.extend(
            case.selected
                .iter()
                .map(|s| ("selected".into(), Some(&s.adapter))),
        );
        v.extend(
            case.selected_shuffled
                .iter()
                .map(|a| ("selected shuffled".into(), Some(a))),
        );
        v
    }

    /// Case `i`'s row from its scores, one per adapter in the order of
    /// [`Comparison::adapters`]; `examples`: how many test examples they were scored on.
    fn row<S: Cell>(&self, i: usize, examples: usize, scores: Vec<S>) -> Row<S> {
        let case = &self.cases[i];
        let mut it = scores.into_iter();
        let mut next = || it.next().expect("one score per adapter");
        let base = next();
        let averaged = self.averaged.as_ref().map(|_| next());
        let multitask = self.multitask.iter().map(|_| next()).collect();
        let own = case.own.as_ref().map(|_| next());
        let dnd_batches: Vec<S> = case.dnd.iter().map(|_| next()).collect();
        let row = Row {
            task: case.task.name.clone(),
            examples,
            base,
            averaged,
            multitask,
            own,
            dnd: S::mean(&dnd_batches),
            dnd_batches,
            shuffled: next(),
            shuffled_from: case.shuffled_from.clone(),
            nearest: case.nearest.as_ref().map(|_| next()),
            nearest_shuffled: case.nearest_shuffled.as_ref().map(|_| next()),
            neighbours: case
                .nearest
                .as_ref()
                .map_or(Vec::new(), |r| r.neighbours.clone()),
            selected: case.selected.as_ref().map(|_| next()),
            selected_shuffled: case.selected_shuffled.as_ref().map(|_| next()),
            selected_name: case.selected.as_ref().map(|s| s.name.clone()),
            shown: None,
        };
        eprintln!(
            "{}",
            row_line(&row, &optional_columns(std::slice::from_ref(&row)))
        );
        row
    }
}

/// Scores the comparison teacher-forced, on the first `limit` test examples of each task
/// (all without one).
pub fn evaluate_nll(
    comparison: &Comparison,
    setup: &NllSetup,
    limit: Option<usize>,
) -> Result<NllReport> {
    let started = std::time::Instant::now();
    let model = Llama::load(&setup.base, &Device::Cpu)?;
    let tok = ChatTokenizer::load(&setup.base)?;
    let encoded = comparison
        .cases
        .iter()
        .map(|c| test_examples(&tok, &c.task, limit))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for (i, examples) in encoded.iter().enumerate() {
        let scores = comparison
            .adapters(i)
            .into_iter()
            .map(|(_, a)| {
                let l = a.map(|a| lora(a, &model.dims)).transpose()?;
                score(&model, &tok, l.as_ref(), examples)
            })
            .collect::<Result<Vec<_>>>()?;
        rows.push(comparison.row(i, examples.len(), scores));
    }
    Ok(NllReport {
        generator: setup.generator.clone(),
        ensemble: setup.ensemble.clone(),
        train_tasks: comparison.train_tasks,
        averaged_over: comparison.averaged_over,
        multitask: comparison
            .multitask
            .iter()
            .map(|(n, _)| n.clone())
            .collect(),
        rows,
        decoded: Vec::new(),
        decode_limit: None,
        demonstrations: 0,
        demonstrations_pool: 0,
        shown_to_all: false,
        checks: Vec::new(),
        check_tolerance: Tolerance::default(),
        guarded: Vec::new(),
        fallback: None,
        left_out: Vec::new(),
        pooled_from: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The comparison decoded through the serving path (see [`super::evaluate`]): every
/// adapter's greedy answers to the first `limit` test examples of each task (all without
/// one), scored strictly and leniently; a task's adapters answer side by side. With
/// `guard: Some(n)`, also the no-harm check of the DnD and shuffled adapters on `n`
/// training examples of the task (the split the test examples share no content with; see
/// [`check_case`]).
/// With `demonstrations` K > 0, also the base model with the task's first K training
/// examples shown before each prompt (with `pool` N > K, each prompt's nearest K of the
/// first N), answering beside the others, and checked beside them as the server's
/// candidate of `plugin.demonstrations` (and `plugin.demonstrations_pool`).
pub async fn decode_rows(
    config: Config,
    comparison: &Comparison,
    limit: Option<usize>,
    guard: Option<usize>,
    demonstrations: usize,
    pool: usize,
) -> Result<(Vec<Row<Accuracy>>, Vec<TaskChecks>)> {
    let columns = (0..comparison.cases.len())
        .map(|i| comparison.adapters(i).len())
        .max()
        .unwrap_or(1)
        + usize::from(demonstrations > 0);
    let (server, _store) = EvalServer::start(config, columns).await?;
    let (mut rows, mut checks) = (Vec::new(), Vec::new());
    // The examples a task shows from: its first K, or the pool's N.
    let shown_from = match demonstrations {
        0 => 0,
        k => pool.max(k),
    };
    for (i, case) in comparison.cases.iter().enumerate() {
        let train = &case.task.train;
        ensure!(
            train.len() >= shown_from,
            "task {}: fewer than {shown_from} training examples to show from",
            case.task.name
        );
        let shown = (demonstrations > 0).then_some(Shown {
            pool: &train[..shown_from],
            each: demonstrations,
        });
        let mut scores = server
            .score_side_by_side(&case.task, &comparison.adapters(i), limit, shown)
            .await?;
        let shown = shown.and_then(|_| scores.pop()).map(|s| s.accuracy());
        let examples = scores.first().map_or(0, |s| s.n);
        let mut row = comparison.row(i, examples, scores.iter().map(Score::accuracy).collect());
        row.shown = shown;
        rows.push(row);
        if let Some(n) = guard {
            let fallback = comparison.fallback.map(|i| &comparison.multitask[i].1);
            let shown = (demonstrations, pool);
            checks.push(check_case(&server, case, fallback, n, shown).await?);
        }
    }
    Ok((rows, checks))
}

/// The product's no-harm check ([`guard::Verdict`]) of a case's DnD and shuffled adapters,
/// and of the fallback adapter ([`NllSetup::fallback`]), the selection's and the base
/// model shown `shown.0` examples (each prompt's nearest of a pool of up to `shown.1`,
/// [`Shown`]) when there are ones. The check reads `n` training examples from where the
/// server's would ([`guard::Split`]).
async fn check_case(
    server: &EvalServer,
    case: &Case,
    fallback: Option<&LoraAdapter>,
    n: usize,
    (demonstrations, pool): (usize, usize),
) -> Result<TaskChecks> {
    let train = &case.task.train;
    let read = case.selected.as_ref().map(|s| s.read);
    let split = guard::Split::new(train.len(), demonstrations, pool, read);
    let shown = &train[..split.shown];
    let examples: Vec<guard::Example> = train
        .iter()
        .skip(split.checked_from)
        .take(n)
        .map(|e| guard::Example {
            prompt: e.prompt.clone(),
            answer: e.answer.clone(),
        })
        .collect();
    let prompts: Vec<&str> = examples.iter().map(|e| e.prompt.as_str()).collect();
    let mut adapters = vec![("base".to_string(), None)];
    adapters.extend(case.dnd.iter().map(|a| ("dnd".to_string(), Some(a))));
    adapters.push(("shuffled".to_string(), Some(&case.shuffled)));
    adapters.extend(fallback.map(|a| ("fallback".to_string(), Some(a))));
    let selected = case.selected.as_ref().map(|s| &s.adapter);
    adapters.extend(selected.map(|a| ("selected".to_string(), Some(a))));
    let turns = (!shown.is_empty()).then_some(Shown {
        pool: shown,
        each: demonstrations,
    });
    let outputs = server
        .answer_side_by_side(&adapters, &prompts, turns)
        .await?;
    let mut verdicts: Vec<Verdict> = outputs[1..]
        .iter()
        .map(|out| {
            let outputs = guard::Outputs {
                base: &outputs[0],
                current: None,
                adapter: out,
            };
            // Judged again by the report's tolerance (`NllReport::apply_checks`).
            Verdict::judge(&examples, outputs, Tolerance::default())
        })
        .collect();
    let shown = (!shown.is_empty()).then(|| verdicts.pop()).flatten();
    let selected = selected.and_then(|_| verdicts.pop());
    let fallback = fallback.and_then(|_| verdicts.pop());
    let shuffled = verdicts.pop().expect("the shuffled adapter was checked");
    eprintln!(
        "check {:<20} base {:?} of {}, DnD {:?}, shuffled {:?}, base adapter {:?}, selection {:?}, \
         examples shown {:?} (hits, strict hits)",
        case.task.name,
        (shuffled.base_hits, shuffled.base_strict),
        shuffled.examples,
        verdicts
            .iter()
            .map(|v| (v.adapter_hits, v.adapter_strict))
            .collect::<Vec<_>>(),
        (shuffled.adapter_hits, shuffled.adapter_strict),
        fallback.map(|v| (v.adapter_hits, v.adapter_strict)),
        selected.map(|v| (v.adapter_hits, v.adapter_strict)),
        shown.map(|v| (v.adapter_hits, v.adapter_strict))
    );
    Ok(TaskChecks {
        task: case.task.name.clone(),
        dnd: verdicts,
        shuffled,
        fallback,
        selected,
        shown,
    })
}

/// A score that a table cell shows and a mean row averages.
pub trait Cell: Copy {
    fn cell(&self) -> String;
    fn mean(v: &[Self]) -> Self;
}

impl Cell for NllScore {
    /// NLL (greedy exact %).
    fn cell(&self) -> String {
        format!("{:.3} ({:.1})", self.nll, 100.0 * self.greedy)
    }
    fn mean(v: &[Self]) -> Self {
        let n = v.len().max(1) as f64;
        NllScore {
            nll: v.iter().map(|s| s.nll).sum::<f64>() / n,
            greedy: v.iter().map(|s| s.greedy).sum::<f64>() / n,
        }
    }
}

impl Cell for Accuracy {
    /// Strict % (lenient %).
    fn cell(&self) -> String {
        format!("{:.1} ({:.1})", 100.0 * self.strict, 100.0 * self.lenient)
    }
    fn mean(v: &[Self]) -> Self {
        let n = v.len().max(1) as f64;
        Accuracy {
            strict: v.iter().map(|s| s.strict).sum::<f64>() / n,
            lenient: v.iter().map(|s| s.lenient).sum::<f64>() / n,
        }
    }
}

/// A generator folder with what it reads: MiniLM, or the base model's states (a generator
/// of `train --read-states`).
fn load_generator(dir: &Path, setup: &NllSetup) -> Result<Generator> {
    let states = StateEncoder::reader(dir, &setup.base)?;
    Generator::load_reading(dir, &setup.encoder, states, &Device::Cpu)
}

fn opt_cell<S: Cell>(s: Option<S>) -> String {
    s.as_ref().map(Cell::cell).unwrap_or("-".into())
}

/// Which of `adapters` has `want`'s tensors (in F32, to 1e-6): e.g. the multi-task LoRA
/// given with `--multitask` that a residual generator sits on.
fn position_of(adapters: &[(String, LoraAdapter)], want: &LoraAdapter) -> Result<Option<usize>> {
    let same = |a: &LoraAdapter| -> Result<bool> {
        for (name, w) in &want.tensors {
            let Some(t) = a.tensors.get(name) else {
                return Ok(false);
            };
            if t.dims() != w.dims() {
                return Ok(false);
            }
            let diff = (t.to_dtype(candle_core::DType::F32)?
                - w.to_dtype(candle_core::DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
            if diff > 1e-6 {
                return Ok(false);
            }
        }
        Ok(true)
    };
    for (i, (_, a)) in adapters.iter().enumerate() {
        if same(a)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
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

/// A column a table shows only when some row has it: its header and its cell.
struct Optional<S> {
    header: &'static str,
    cell: fn(&Row<S>) -> Option<S>,
}

/// The optional columns (retrieval, selection, each with its control) that `rows` have.
fn optional_columns<S: Cell>(rows: &[Row<S>]) -> Vec<Optional<S>> {
    let column = |header, cell| Optional { header, cell };
    [
        column("retrieval", |r: &Row<S>| r.nearest),
        column("retrieval shuffled", |r| r.nearest_shuffled),
        column("selection", |r| r.selected),
        column("selection shuffled", |r| r.selected_shuffled),
        column("examples shown", |r| r.shown),
    ]
    .into_iter()
    .filter(|o| rows.iter().any(|r| (o.cell)(r).is_some()))
    .collect()
}

fn row_line<S: Cell>(r: &Row<S>, optional: &[Optional<S>]) -> String {
    let multitask: String = r.multitask.iter().map(|s| s.cell() + " | ").collect();
    let extra: String = optional
        .iter()
        .map(|o| format!(" {} |", opt_cell((o.cell)(r))))
        .collect();
    format!(
        "| {} | {} | {} | {multitask}{} | {} | {} | {} |{extra}",
        r.task,
        r.base.cell(),
        opt_cell(r.averaged),
        opt_cell(r.own),
        r.dnd.cell(),
        r.shuffled.cell(),
        r.shuffled_from
    )
}

/// Whether the rows have the retrieval columns.
fn has_retrieval<S>(rows: &[Row<S>]) -> bool {
    rows.iter().any(|r| r.nearest.is_some())
}

/// One table: a row per task (see [`row_line`]) and the mean row.
fn table<S: Cell>(rows: &[Row<S>], multitask: &[String]) -> String {
    let names: String = multitask.iter().map(|n| format!(" {n} |")).collect();
    let optional = optional_columns(rows);
    let headers: String = optional
        .iter()
        .map(|o| format!(" {} |", o.header))
        .collect();
    let mut out = format!(
        "| task | base | averaged LoRAs |{names} own LoRA | DnD | DnD shuffled | shuffled from |{headers}\n|{}\n",
        "---|".repeat(7 + optional.len() + multitask.len())
    );
    for row in rows {
        out.push_str(&row_line(row, &optional));
        out.push('\n');
    }
    let col = |f: &dyn Fn(&Row<S>) -> Option<S>| -> String {
        let v: Vec<S> = rows.iter().filter_map(f).collect();
        match v.is_empty() {
            true => "-".into(),
            false => format!("**{}**", S::mean(&v).cell()),
        }
    };
    let means: String = (0..multitask.len())
        .map(|i| col(&|x| x.multitask.get(i).copied()) + " | ")
        .collect();
    let extra: String = optional
        .iter()
        .map(|o| format!(" {} |", col(&o.cell)))
        .collect();
    out.push_str(&format!(
        "| mean | {} | {} | {means}{} | {} | {} | |{extra}\n",
        col(&|x| Some(x.base)),
        col(&|x| x.averaged),
        col(&|x| x.own),
        col(&|x| Some(x.dnd)),
        col(&|x| Some(x.shuffled)),
    ));
    out
}

impl NllReport {
    /// Which training examples the examples shown were, in words.
    fn shown_examples(&self) -> String {
        match self.demonstrations_pool {
            0 => format!("the task's first {} training examples", self.demonstrations),
            n => format!(
                "its nearest {} of the task's first {n} training examples",
                self.demonstrations
            ),
        }
    }
}

/// The teacher-forced table (NLL per answer token, greedy exact %), and with `--decode`
/// the decoded one (strict %, lenient %) with the bars checked on it.
pub fn nll_markdown(r: &NllReport) -> String {
    let mut out = table(&r.rows, &r.multitask);
    if r.shown_to_all {
        out.push_str(&format!(
            "\nEvery column was shown {} before each test prompt.\n",
            r.shown_examples()
        ));
    }
    if r.pooled_from.is_empty() {
        out.push_str(&format!(
            "\nAveraged LoRAs: the mean of {} of the {} training tasks' final checkpoints.\n",
            r.averaged_over, r.train_tasks
        ));
    } else {
        out.push_str(&format!(
            "\nPooled from {} runs, each with its own held-out tasks, multi-task LoRA and \
             averaged LoRAs (the mean of its training tasks' final checkpoints):\n",
            r.pooled_from.len()
        ));
        for line in &r.pooled_from {
            out.push_str(&format!("- {line}\n"));
        }
    }
    if has_retrieval(&r.rows) {
        out.push_str("\nRetrieval's neighbours (cosine of the tasks' mean MiniLM vectors):\n");
        for row in &r.rows {
            let n: Vec<String> = (row.neighbours.iter())
                .map(|(t, c)| format!("{t} {c:.2}"))
                .collect();
            out.push_str(&format!("- {}: {}\n", row.task, n.join(", ")));
        }
    }
    if r.rows.iter().any(|row| row.selected_name.is_some()) {
        out.push_str(
            "\nSelection's picks (what ranked first on the task's first training examples; a \
             soup's members joined by +):\n",
        );
        for row in &r.rows {
            let name = row.selected_name.as_deref().unwrap_or("-");
            out.push_str(&format!("- {}: {name}\n", row.task));
        }
    }
    if !r.left_out.is_empty() {
        out.push_str(&format!(
            "\nHeld-out tasks in this report: {}; left out of every table, mean and bar: {}.\n",
            r.rows.len(),
            r.left_out.join(", ")
        ));
    }
    if !r.decoded.is_empty() {
        let examples = match r.decode_limit {
            Some(n) => format!("the first {n} test examples of each task"),
            None => "every test example".into(),
        };
        out.push_str(&format!(
            "\nDecoded through the serving path (greedy, {examples}), strict % (lenient %):\n\n"
        ));
        out.push_str(&table(&r.decoded, &r.multitask));
        if r.demonstrations > 0 {
            out.push_str(&format!(
                "\nThe examples shown: before each prompt, {}.\n",
                r.shown_examples()
            ));
        }
        out.push('\n');
        out.push_str(&bars_markdown(&r.decoded, &r.multitask));
        if has_retrieval(&r.decoded) {
            out.push_str(
                "\nRetrieval (the mean of the LoRAs of the training tasks whose examples read \
                 most like the task's; its control: retrieval from the next task's) by the \
                 same bars:\n\n",
            );
            out.push_str(&bars_of(&r.decoded, &r.multitask, Judged::Retrieval));
        }
        if r.decoded.iter().any(|row| row.selected.is_some()) {
            out.push_str(
                "\nSelection (of retrieval's neighbours and the multi-task LoRAs, the one that \
                 answers the task's first training examples best; its control: the next \
                 task's selection) by the same bars:\n\n",
            );
            out.push_str(&bars_of(&r.decoded, &r.multitask, Judged::Selection));
        }
    }
    if !r.guarded.is_empty() {
        let n = r.checks.first().map_or(0, |c| c.shuffled.examples);
        out.push_str(&format!(
            "\nWith the no-harm check on {n} training examples of each task (the first, or \
             with a selection or examples shown those after the ones they read; an adapter \
             that answers fewer of them than the base model less {} ({} of the examples, \
             rounded down) is not routed: its cell shows the base model's scores; the \
             columns of the fallback adapter, the selection and the examples shown, if any, \
             are checked too; the retrieval columns are not), strict % (lenient %):\n\n",
            r.check_tolerance.hits(n),
            r.check_tolerance.share()
        ));
        out.push_str(&table(&r.guarded, &r.multitask));
        out.push('\n');
        out.push_str(&checks_markdown(&r.checks));
        out.push('\n');
        out.push_str(&bars_markdown(&r.guarded, &r.multitask));
    }
    if let Some(f) = &r.fallback {
        out.push_str(&format!(
            "\nWith the check of DnD and of the fallback adapter ({}){} beside it, the \
             one routed that passed and answered the most check examples strictly, then the \
             most, DnD on a tie (what the server routes), strict % (lenient %); the DnD \
             columns are then not DnD alone:\n\n",
            f.adapter,
            [
                (r.checks.iter().any(|c| c.selected.is_some()))
                    .then_some(" and of the selection (`plugin.library`)"),
                (r.checks.iter().any(|c| c.shown.is_some()))
                    .then_some(" and of the examples shown (`plugin.demonstrations`)"),
                (r.checks
                    .iter()
                    .any(|c| c.selected.is_some() || c.shown.is_some()))
                .then_some(" (not for the DnD shuffled column)"),
            ]
            .into_iter()
            .flatten()
            .collect::<String>()
        ));
        out.push_str(&table(&f.rows, &r.multitask));
        out.push('\n');
        out.push_str(&bars_markdown(&f.rows, &r.multitask));
        let library = |c: &TaskChecks| c.selected.is_some();
        let shown = |c: &TaskChecks| c.shown.is_some();
        let effects = [
            effect(r, &f.rows, "the selection", library, |c| c.selected = None),
            effect(r, &f.rows, "the examples shown", shown, |c| c.shown = None),
        ];
        out.extend(effects.into_iter().flatten());
    }
    out
}

/// What a candidate adds as served: the server's rule with it (`with`, the fallback rows)
/// against the rule without it (`take_out` takes its verdict out; every other candidate as it
/// is), on the same checks; `None` when no check had it (`has`).
fn effect(
    r: &NllReport,
    with: &[Row<Accuracy>],
    what: &str,
    has: fn(&TaskChecks) -> bool,
    take_out: fn(&mut TaskChecks),
) -> Option<String> {
    if !r.checks.iter().any(has) {
        return None;
    }
    let column = r.fallback_column();
    let without: Vec<Row<Accuracy>> = r
        .decoded
        .iter()
        .zip(&r.checks)
        .map(|(row, c)| {
            let mut c = c.clone();
            take_out(&mut c);
            c.apply(row, column, true)
        })
        .collect();
    let d: Vec<f64> = with
        .iter()
        .zip(&without)
        .map(|(a, b)| 100.0 * (a.dnd.strict - b.dnd.strict))
        .collect();
    let (lo, hi) = mean_interval(&d);
    let harmed = |rows: &[Row<Accuracy>]| rows.iter().filter(|r| harms(r.base, r.dnd)).count();
    let mean = |rows: &[Row<Accuracy>]| {
        Accuracy::mean(&rows.iter().map(|row| row.dnd).collect::<Vec<_>>())
    };
    let (m, n) = (mean(with), mean(&without));
    Some(format!(
        "\nWithout {what} (the same checks, the other candidates as they are): {:.1} % strict \
         ({:.1} lenient), {} tasks harmed; with it {:.1} ({:.1}), {} harmed: {:+.1} strict \
         points with {what} ({lo:+.1} to {hi:+.1}, tasks resampled).\n",
        100.0 * n.strict,
        100.0 * n.lenient,
        harmed(&without),
        100.0 * m.strict,
        100.0 * m.lenient,
        harmed(with),
        d.iter().sum::<f64>() / d.len() as f64,
    ))
}

/// Whether `score` is 10 or more lenient points below the base model's `base` (with a
/// margin for rounding: 0.9 - 0.8 is a hair under 0.1).
pub(crate) fn harms(base: Accuracy, score: Accuracy) -> bool {
    100.0 * (base.lenient - score.lenient) >= HARM_POINTS - 1e-9
}

/// The 95 % interval of the mean of `d`, over tasks resampled.
pub(crate) fn mean_interval(d: &[f64]) -> (f64, f64) {
    crate::format::rng::bootstrap_95(d.len(), BAR_DRAWS, 14, |pick| {
        pick.iter().map(|&i| d[i]).sum::<f64>() / pick.len() as f64
    })
}

/// The checks, one line per task: examples the base and each adapter answered (of them,
/// in brackets, those answered strictly).
fn checks_markdown(checks: &[TaskChecks]) -> String {
    let mut out = String::from(
        "| task | base hits | DnD hits (per batch) | DnD routed | shuffled hits | shuffled routed | fallback hits | fallback passes | selection hits | selection passes | examples shown hits | examples shown passes |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let yes = |v: &Verdict| if v.accepted { "yes" } else { "**no**" };
    let hits = |v: &Verdict| format!("{} ({})", v.adapter_hits, v.adapter_strict);
    for c in checks {
        let dnd: Vec<String> = c.dnd.iter().map(hits).collect();
        let routed: Vec<&str> = c.dnd.iter().map(yes).collect();
        let check = |v: &Option<Verdict>| match v {
            Some(v) => (hits(v), yes(v)),
            None => ("-".to_string(), "-"),
        };
        let (fallback_hits, fallback_passes) = check(&c.fallback);
        let (selection_hits, selection_passes) = check(&c.selected);
        let (shown_hits, shown_passes) = check(&c.shown);
        out.push_str(&format!(
            "| {} | {} ({}) of {} | {} | {} | {} | {} | {fallback_hits} | {fallback_passes} | {selection_hits} | {selection_passes} | {shown_hits} | {shown_passes} |\n",
            c.task,
            c.shuffled.base_hits,
            c.shuffled.base_strict,
            c.shuffled.examples,
            dnd.join(", "),
            routed.join(", "),
            hits(&c.shuffled),
            yes(&c.shuffled)
        ));
    }
    out
}

/// Lenient points below the base that count as harm on a task.
const HARM_POINTS: f64 = 10.0;

/// Bootstrap draws for the bars' intervals.
const BAR_DRAWS: usize = 2000;

/// The bars of a generator on decoded rows (strict accuracy; harm on lenient): DnD >=
/// averaged + 5, >= every multi-task LoRA, >= base + 15, the shuffle control >= 3 points
/// below DnD, and no task where DnD is 10 or more lenient points below the base. Each bar
/// is judged on the means; beside it, DnD's margin over the bar with a 95 % interval from
/// a bootstrap over the tasks (each task's DnD and comparison drawn together): whether a
/// margin of a point or two would survive another draw of held-out tasks.
pub fn bars_markdown(rows: &[Row<Accuracy>], multitask: &[String]) -> String {
    bars_of(rows, multitask, Judged::Dnd)
}

/// The adapter column that [`bars_of`] judges, with its condition-shuffle control.
#[derive(Debug, Clone, Copy)]
pub enum Judged {
    Dnd,
    /// Retrieval ([`crate::generator::retrieval`]): the same bars, as the baseline a
    /// generator that reads its input should beat.
    Retrieval,
    /// Selection (see the module doc): whether a task's labelled examples pick weights.
    Selection,
}

impl Judged {
    fn name(self) -> &'static str {
        match self {
            Judged::Dnd => "DnD",
            Judged::Retrieval => "retrieval",
            Judged::Selection => "selection",
        }
    }

    fn score(self, r: &Row<Accuracy>) -> Option<Accuracy> {
        match self {
            Judged::Dnd => Some(r.dnd),
            Judged::Retrieval => r.nearest,
            Judged::Selection => r.selected,
        }
    }

    fn shuffled(self, r: &Row<Accuracy>) -> Option<Accuracy> {
        match self {
            Judged::Dnd => Some(r.shuffled),
            Judged::Retrieval => r.nearest_shuffled,
            Judged::Selection => r.selected_shuffled,
        }
    }
}

/// [`bars_markdown`]'s bars for the column `judged`, on the rows that have it.
pub fn bars_of(rows: &[Row<Accuracy>], multitask: &[String], judged: Judged) -> String {
    let rows: Vec<(&Row<Accuracy>, Accuracy)> = rows
        .iter()
        .filter_map(|r| Some((r, judged.score(r)?)))
        .collect();
    let who = judged.name();
    let mean = |f: &dyn Fn(&Row<Accuracy>) -> Option<Accuracy>| -> Option<f64> {
        let v: Vec<Accuracy> = rows.iter().filter_map(|(r, _)| f(r)).collect();
        (!v.is_empty()).then(|| 100.0 * Accuracy::mean(&v).strict)
    };
    // The margin's interval: per task, the judged column minus the comparison minus the
    // bar's offset.
    let interval = |f: &dyn Fn(&Row<Accuracy>) -> Option<Accuracy>, offset: f64| {
        let d: Vec<f64> = rows
            .iter()
            .filter_map(|(r, s)| Some(100.0 * (s.strict - f(r)?.strict) - offset))
            .collect();
        mean_interval(&d)
    };
    let value = mean(&|r| judged.score(r)).unwrap_or(0.0);
    let mut bars: Vec<(String, f64, f64, (f64, f64))> = Vec::new();
    if let Some(avg) = mean(&|r| r.averaged) {
        let ci = interval(&|r| r.averaged, 5.0);
        bars.push((format!("{who} >= averaged LoRAs + 5"), value, avg + 5.0, ci));
    }
    for (i, name) in multitask.iter().enumerate() {
        let m = mean(&|r| r.multitask.get(i).copied()).unwrap_or(0.0);
        let ci = interval(&|r| r.multitask.get(i).copied(), 0.0);
        bars.push((format!("{who} >= {name}"), value, m, ci));
    }
    let base = mean(&|r| Some(r.base)).unwrap_or(0.0);
    let ci = interval(&|r| Some(r.base), 15.0);
    bars.push((format!("{who} >= base + 15"), value, base + 15.0, ci));
    if let Some(shuffled) = mean(&|r| judged.shuffled(r)) {
        let ci = interval(&|r| judged.shuffled(r), 0.0);
        // The shuffle bar's value is already a difference: its interval is shifted to match.
        bars.push((
            format!("shuffle control >= 3 below {who}"),
            value - shuffled,
            3.0,
            (ci.0 - 3.0, ci.1 - 3.0),
        ));
    }
    let mut out = String::from(
        "| bar (strict, mean over tasks) | value | needed | | margin (95 % interval, tasks resampled) |\n|---|---|---|---|---|\n",
    );
    for (name, value, needed, (lo, hi)) in bars {
        let met = if value >= needed { "met" } else { "**missed**" };
        out.push_str(&format!(
            "| {name} | {value:.1} | {needed:.1} | {met} | {:+.1} ({lo:+.1} to {hi:+.1}) |\n",
            value - needed
        ));
    }
    let harmed: Vec<String> = rows
        .iter()
        .filter(|(r, s)| harms(r.base, *s))
        .map(|(r, s)| {
            format!(
                "{} ({:.1} -> {:.1})",
                r.task,
                100.0 * r.base.lenient,
                100.0 * s.lenient
            )
        })
        .collect();
    out.push_str(&format!(
        "| no harm: tasks with {who} >= {HARM_POINTS} lenient points below the base | {} | 0 | {} | - |\n",
        match harmed.is_empty() {
            true => "none".to_string(),
            false => harmed.join(", "),
        },
        if harmed.is_empty() { "met" } else { "**missed**" }
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
    let mut line = format!("| {} | {} | {} |", r.family, r.task, r.base.cell());
    for a in &r.adapters {
        line.push_str(&format!(" {} |", a.cell()));
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
    // The mean of each column over the tasks (the own LoRA's over those that have one).
    let mean = |v: Vec<NllScore>| (!v.is_empty()).then(|| NllScore::mean(&v));
    if let Some(base) = mean(r.rows.iter().map(|x| x.base).collect()) {
        out.push_str(&format!("| | **mean** | {} |", base.cell()));
        for i in 0..r.adapters.len() {
            let column = r.rows.iter().filter_map(|x| x.adapters.get(i).copied());
            out.push_str(&format!(" {} |", opt_cell(mean(column.collect()))));
        }
        let own = mean(r.rows.iter().filter_map(|x| x.own).collect());
        out.push_str(&format!(" {} | |\n", opt_cell(own)));
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

    fn acc(strict: f64, lenient: f64) -> Accuracy {
        Accuracy { strict, lenient }
    }

    #[test]
    fn the_lora_table_ends_with_each_columns_mean() {
        let nll = |nll: f64, greedy: f64| NllScore { nll, greedy };
        let row = |task: &str, base, adapter, own| LoraNllRow {
            task: task.into(),
            family: "f".into(),
            examples: 60,
            base,
            adapters: vec![adapter],
            own,
            beats_base: true,
        };
        let report = LoraNllReport {
            adapters: vec![("all".into(), PathBuf::from("all"))],
            rows: vec![
                row("a", nll(2.0, 0.0), nll(1.0, 0.5), Some(nll(0.5, 0.75))),
                row("b", nll(4.0, 0.5), nll(2.0, 0.25), None),
            ],
            seconds: 0.0,
        };
        let md = lora_nll_markdown(&report);
        let mean = md.lines().find(|l| l.contains("**mean**")).unwrap();
        assert_eq!(
            mean,
            "| | **mean** | 3.000 (25.0) | 1.500 (37.5) | 0.500 (75.0) | |"
        );
    }

    fn decoded_row(task: &str, base: Accuracy, dnd: Accuracy, shuffled: Accuracy) -> Row<Accuracy> {
        Row {
            task: task.into(),
            examples: 10,
            base,
            averaged: Some(acc(0.1, 0.1)),
            multitask: vec![acc(0.3, 0.3)],
            own: None,
            dnd,
            dnd_batches: vec![dnd],
            shuffled,
            shuffled_from: "other".into(),
            nearest: None,
            nearest_shuffled: None,
            neighbours: Vec::new(),
            selected: None,
            selected_shuffled: None,
            selected_name: None,
            shown: None,
        }
    }

    /// Each bar is judged on the mean strict accuracy over tasks; harm is any one task's
    /// lenient drop of 10 points or more below the base, named with its numbers.
    #[test]
    fn bars_are_judged_on_means_and_harm_on_any_task() {
        let rows = vec![
            decoded_row("a", acc(0.0, 0.2), acc(0.5, 0.5), acc(0.3, 0.3)),
            decoded_row("b", acc(0.1, 0.9), acc(0.3, 0.8), acc(0.3, 0.8)),
        ];
        let md = bars_markdown(&rows, &["mt".into()]);
        let line = |name: &str| md.lines().find(|l| l.contains(name)).unwrap().to_string();
        // DnD 40.0 strict on average; averaged 10.0; mt 30.0; base 5.0; shuffle 30.0.
        assert!(
            line("averaged LoRAs + 5").contains("| 40.0 | 15.0 | met"),
            "{md}"
        );
        assert!(line("DnD >= mt").contains("| 40.0 | 30.0 | met"), "{md}");
        assert!(line("base + 15").contains("| 40.0 | 20.0 | met"), "{md}");
        assert!(line("shuffle").contains("| 10.0 | 3.0 | met"), "{md}");
        // Margins with their intervals over the two tasks: against base + 15 the tasks'
        // margins are 35 and 5, so a resample's mean is 5, 20 or 35.
        assert!(
            line("base + 15").contains("| +20.0 (+5.0 to +35.0) |"),
            "{md}"
        );
        // DnD - shuffle is 20 and 0 per task: 10 - 3 on the means, 0 - 3 to 20 - 3.
        assert!(line("shuffle").contains("| +7.0 (-3.0 to +17.0) |"), "{md}");
        // b: 90 -> 80 lenient is a 10-point drop.
        assert!(line("no harm").contains("b (90.0 -> 80.0)"), "{md}");
        assert!(line("no harm").contains("**missed**"), "{md}");
        let fine = vec![decoded_row(
            "a",
            acc(0.0, 0.2),
            acc(0.5, 0.5),
            acc(0.5, 0.5),
        )];
        let md = bars_markdown(&fine, &[]);
        assert!(md.contains("| none | 0 | met |"), "{md}");
        assert!(md.contains("| 0.0 | 3.0 | **missed** |"), "{md}");
    }

    /// Retrieval and selection are judged by the same bars on their own columns and
    /// controls, over the rows that have them; the tables show their columns only when
    /// some row has them.
    #[test]
    fn retrieval_and_selection_get_the_same_bars_on_their_own_columns() {
        let mut rows = vec![
            decoded_row("a", acc(0.0, 0.2), acc(0.5, 0.5), acc(0.3, 0.3)),
            decoded_row("b", acc(0.1, 0.9), acc(0.3, 0.8), acc(0.3, 0.8)),
        ];
        assert!(!table(&rows, &[]).contains("retrieval"));
        assert!(!bars_of(&rows, &[], Judged::Retrieval).contains("averaged"));
        rows[1].nearest = Some(acc(0.6, 0.6));
        rows[1].nearest_shuffled = Some(acc(0.2, 0.2));
        let md = bars_of(&rows, &["mt".into()], Judged::Retrieval);
        let line = |name: &str| md.lines().find(|l| l.contains(name)).unwrap().to_string();
        // Task b alone: retrieval 60, averaged 10, mt 30, base 10, its control 20.
        assert!(
            line("retrieval >= averaged LoRAs + 5").contains("| 60.0 | 15.0 | met"),
            "{md}"
        );
        assert!(
            line("retrieval >= mt").contains("| 60.0 | 30.0 | met"),
            "{md}"
        );
        assert!(line("base + 15").contains("| 60.0 | 25.0 | met"), "{md}");
        assert!(
            line("3 below retrieval").contains("| 40.0 | 3.0 | met"),
            "{md}"
        );
        // Harm is on retrieval's lenient score: b's base answers 90 leniently.
        assert!(line("no harm").contains("b (90.0 -> 60.0)"), "{md}");
        let t = table(&rows, &[]);
        assert!(t.contains("| retrieval | retrieval shuffled |"), "{t}");
        assert!(t.contains("| 60.0 (60.0) | 20.0 (20.0) |"), "{t}");
        assert!(
            t.contains("| - | - |"),
            "task a has no retrieval cells: {t}"
        );
        // Selection likewise, after retrieval, on the rows that have it.
        rows[0].selected = Some(acc(0.4, 0.4));
        rows[0].selected_shuffled = Some(acc(0.1, 0.1));
        let t = table(&rows, &[]);
        assert!(
            t.contains("| retrieval | retrieval shuffled | selection | selection shuffled |"),
            "{t}"
        );
        assert!(t.contains("| - | - | 40.0 (40.0) | 10.0 (10.0) |"), "{t}");
        let md = bars_of(&rows, &[], Judged::Selection);
        let line = |name: &str| md.lines().find(|l| l.contains(name)).unwrap().to_string();
        assert!(
            line("selection >= base + 15").contains("| 40.0 | 15.0 | met"),
            "{md}"
        );
        assert!(
            line("3 below selection").contains("| 30.0 | 3.0 | met"),
            "{md}"
        );
    }

    fn verdict(accepted: bool) -> Verdict {
        Verdict {
            examples: 4,
            base_hits: 2,
            current_hits: None,
            adapter_hits: if accepted { 2 } else { 1 },
            accepted,
            ..Verdict::default()
        }
    }

    /// A rejected adapter's cells become the base model's, or (with the fallback) the base
    /// adapter's column's when that passed its own check; an accepted one's too when the
    /// base adapter answered more check examples. That column is checked itself.
    #[test]
    fn checks_replace_rejected_adapters_with_the_base_or_the_fallback() {
        let row = decoded_row("a", acc(0.1, 0.2), acc(0.5, 0.5), acc(0.4, 0.4));
        let checks = |fallback: Option<bool>| TaskChecks {
            task: "a".into(),
            dnd: vec![verdict(false)],
            shuffled: verdict(true),
            fallback: fallback.map(verdict),
            selected: None,
            shown: None,
        };
        let cells = |r: Row<Accuracy>| (r.dnd, r.dnd_batches[0], r.shuffled);
        let (base, mt) = (acc(0.1, 0.2), acc(0.3, 0.3));
        let shuffled = acc(0.4, 0.4);
        assert_eq!(
            cells(checks(None).apply(&row, None, false)),
            (base, base, shuffled)
        );
        assert_eq!(
            cells(checks(Some(true)).apply(&row, None, true)),
            (base, base, shuffled)
        );
        assert_eq!(
            cells(checks(Some(true)).apply(&row, Some(0), true)),
            (mt, mt, shuffled)
        );
        assert_eq!(
            cells(checks(Some(true)).apply(&row, Some(0), false)),
            (base, base, shuffled)
        );
        assert_eq!(
            cells(checks(Some(false)).apply(&row, Some(0), true)),
            (base, base, shuffled)
        );
        // The base adapter's own column is checked: the base model's cells when it failed.
        let failed = checks(Some(false)).apply(&row, Some(0), false);
        assert_eq!(failed.multitask, vec![base]);
        // Accepted adapters keep their own cells; the other columns never change.
        let mut all = checks(Some(true));
        all.dnd = vec![verdict(true)];
        let applied = all.apply(&row, Some(0), true);
        assert_eq!(cells(applied.clone()), (row.dnd, row.dnd, shuffled));
        assert_eq!(
            (applied.base, applied.multitask),
            (row.base, row.multitask.clone())
        );
        // Both passed: the base adapter answered more check examples, so it is routed.
        all.fallback = Some(Verdict {
            adapter_hits: 3,
            ..verdict(true)
        });
        let more = all.apply(&row, Some(0), true);
        assert_eq!((more.dnd, more.shuffled), (mt, mt));

        // A selection that passed and answered the most is routed for DnD, not for its
        // shuffle control (DnD's control); its own column is checked.
        let mut row = row.clone();
        let picked = acc(0.6, 0.6);
        row.selected = Some(picked);
        all.fallback = Some(verdict(true));
        all.selected = Some(Verdict {
            adapter_hits: 4,
            ..verdict(true)
        });
        let routed = all.apply(&row, Some(0), true);
        assert_eq!(
            (routed.dnd, routed.shuffled, routed.selected),
            (picked, shuffled, Some(picked))
        );
        assert_eq!(all.apply(&row, Some(0), false).dnd, row.dnd);
        all.selected = Some(verdict(false));
        let rejected = all.apply(&row, Some(0), true);
        assert_eq!((rejected.dnd, rejected.selected), (row.dnd, Some(base)));
    }

    /// A report read back from its JSON without some tasks: every table, mean and bar is
    /// over the others, and the markdown says which were left out.
    #[test]
    fn a_report_without_some_tasks_is_judged_on_the_others() {
        let nll = NllScore {
            nll: 1.0,
            greedy: 0.0,
        };
        let row = |task: &str| Row {
            task: task.into(),
            examples: 10,
            base: nll,
            averaged: None,
            multitask: vec![nll],
            own: None,
            dnd: nll,
            dnd_batches: vec![nll],
            shuffled: nll,
            shuffled_from: "other".into(),
            nearest: None,
            nearest_shuffled: None,
            neighbours: Vec::new(),
            selected: None,
            shown: None,
            selected_shuffled: None,
            selected_name: None,
        };
        let good = decoded_row("a", acc(0.0, 0.2), acc(0.5, 0.5), acc(0.1, 0.1));
        let harmed = decoded_row("b", acc(0.0, 0.9), acc(0.0, 0.1), acc(0.0, 0.1));
        let checks = |task: &str| TaskChecks {
            task: task.into(),
            dnd: vec![verdict(true)],
            shuffled: verdict(true),
            fallback: None,
            selected: None,
            shown: None,
        };
        let report = NllReport {
            generator: "g".into(),
            ensemble: Vec::new(),
            train_tasks: 3,
            averaged_over: 0,
            multitask: vec!["mt".into()],
            rows: vec![row("a"), row("b")],
            decoded: vec![good.clone(), harmed.clone()],
            decode_limit: Some(10),
            demonstrations: 0,
            demonstrations_pool: 0,
            shown_to_all: false,
            checks: vec![checks("a"), checks("b")],
            check_tolerance: Tolerance::default(),
            guarded: vec![good, harmed],
            fallback: None,
            left_out: vec![],
            pooled_from: vec![],
            seconds: 1.0,
        };
        let read: NllReport =
            serde_json::from_slice(&serde_json::to_vec(&report).unwrap()).unwrap();
        // Every "base + 15" line (decoded and checked) reads `value`.
        let bar = |md: &str, value: &str| {
            md.lines()
                .filter(|l| l.contains("base + 15"))
                .all(|l| l.contains(&format!("| {value} | 15.0 | met |")))
        };
        let md = nll_markdown(&read);
        assert!(md.contains("b (90.0 -> 10.0)") && bar(&md, "25.0"), "{md}");
        let without = read.without(&["b".to_string()]).unwrap();
        assert_eq!(without.rows.len(), 1);
        let md = nll_markdown(&without);
        assert!(!md.contains("| b |") && bar(&md, "50.0"), "{md}");
        assert!(md.contains("| none | 0 | met |"), "{md}");
        assert!(md.contains("in this report: 1; left out of every table, mean and bar: b."));
        assert!(report.clone().without(&["c".to_string()]).is_err());

        // Two runs pooled: judged on both runs' tasks together, as the one report was.
        let run = |task: &str, mt: &str| {
            let mut r = report.clone().without(&[task.to_string()]).unwrap();
            r.left_out.clear();
            r.multitask = vec![mt.into()];
            r
        };
        let pooled = NllReport::pooled(vec![run("b", "mt0"), run("a", "mt1")]).unwrap();
        let md = nll_markdown(&pooled);
        assert!(md.contains("b (90.0 -> 10.0)") && bar(&md, "25.0"), "{md}");
        assert!(
            md.contains("| mt0 + mt1 |") && md.contains("Pooled from 2 runs"),
            "{md}"
        );
        // The same task held out twice, or different columns: refused.
        assert!(NllReport::pooled(vec![run("b", "mt"), run("b", "mt")]).is_err());
        let mut two = run("a", "mt");
        two.multitask.push("other".into());
        assert!(NllReport::pooled(vec![run("b", "mt"), two]).is_err());
    }

    /// An accepted verdict of 3 hits in 4 (one more than [`verdict`]'s).
    fn three_hits() -> Verdict {
        Verdict {
            adapter_hits: 3,
            ..verdict(true)
        }
    }

    /// A report of `decoded` rows and their `checks`, the multi-task column "mt" the
    /// fallback, judged by the default rule.
    fn checked_report(decoded: Vec<Row<Accuracy>>, checks: Vec<TaskChecks>) -> NllReport {
        let mut report = NllReport {
            generator: "g".into(),
            ensemble: Vec::new(),
            train_tasks: 3,
            averaged_over: 0,
            multitask: vec!["mt".into()],
            rows: Vec::new(),
            decoded,
            decode_limit: Some(10),
            demonstrations: 0,
            demonstrations_pool: 0,
            shown_to_all: false,
            checks,
            check_tolerance: Tolerance::default(),
            guarded: Vec::new(),
            fallback: None,
            left_out: vec![],
            pooled_from: vec![],
            seconds: 1.0,
        };
        report.apply_checks(Some(0), Tolerance::default());
        report
    }

    /// With a selection in the checks, the report says what it adds as served: the
    /// server's rule with it against the rule without it, on the same checks.
    #[test]
    fn the_report_says_what_the_library_adds_as_served() {
        // Task a: DnD passes with 2 hits, the fallback with 2, the selection with 3 (routed:
        // 60 % strict instead of DnD's 50); task b: the selection fails (DnD stays).
        let mut a = decoded_row("a", acc(0.0, 0.2), acc(0.5, 0.5), acc(0.1, 0.1));
        a.selected = Some(acc(0.6, 0.6));
        let mut b = decoded_row("b", acc(0.0, 0.2), acc(0.4, 0.4), acc(0.1, 0.1));
        b.selected = Some(acc(0.9, 0.9));
        let checks = |selected: Verdict| TaskChecks {
            task: "t".into(),
            dnd: vec![verdict(true)],
            shuffled: verdict(true),
            fallback: Some(verdict(true)),
            selected: Some(selected),
            shown: None,
        };
        let report = checked_report(
            vec![a, b],
            vec![checks(three_hits()), checks(verdict(false))],
        );
        let md = nll_markdown(&report);
        assert!(
            md.contains("Without the selection (the same checks, the other candidates as they are): 45.0 % strict (45.0 lenient), 0 tasks harmed; with it 50.0 (50.0), 0 harmed: +5.0 strict points with the selection"),
            "{md}"
        );
    }

    /// The examples shown are checked and routed as the server's candidate: last on a tie,
    /// never for the shuffle control, and the report says what they add as served.
    #[test]
    fn the_examples_shown_are_routed_as_the_server_routes_them() {
        // Task a: the examples shown tie with DnD (2 hits each): DnD stays. Task b: they
        // answer 3 of 4: routed, 80 % strict instead of DnD's 40.
        let mut a = decoded_row("a", acc(0.0, 0.2), acc(0.5, 0.5), acc(0.1, 0.1));
        a.shown = Some(acc(0.9, 0.9));
        let mut b = decoded_row("b", acc(0.0, 0.2), acc(0.4, 0.4), acc(0.1, 0.1));
        b.shown = Some(acc(0.8, 0.8));
        let checks = |shown: Verdict| TaskChecks {
            task: "t".into(),
            dnd: vec![verdict(true)],
            shuffled: verdict(false),
            fallback: Some(verdict(false)),
            selected: None,
            shown: Some(shown),
        };
        let report = checked_report(
            vec![a, b],
            vec![checks(verdict(true)), checks(three_hits())],
        );
        let routed = &report.fallback.as_ref().unwrap().rows;
        assert_eq!(
            (routed[0].dnd, routed[1].dnd),
            (acc(0.5, 0.5), acc(0.8, 0.8))
        );
        // The shuffled adapter was rejected: the base, not the task's examples.
        assert_eq!(routed[1].shuffled, acc(0.0, 0.2));
        // Checked alone, a passing column keeps its scores.
        assert_eq!(report.guarded[1].shown, Some(acc(0.8, 0.8)));
        let md = nll_markdown(&report);
        assert!(
            md.contains("Without the examples shown (the same checks, the other candidates as they are): 45.0 % strict (45.0 lenient), 0 tasks harmed; with it 65.0 (65.0), 0 harmed: +20.0 strict points with the examples shown"),
            "{md}"
        );
        assert!(md.contains("| examples shown |"), "{md}");
    }

    #[test]
    fn the_fallback_column_is_the_given_adapter_with_the_same_tensors() {
        let dims = crate::testing::tiny_dims();
        let mods = [crate::format::Module::Q, crate::format::Module::V];
        let adapter =
            |seed| crate::testing::random_adapter(&dims, &mods, 4, seed, 0.5, 0.5).unwrap();
        let given = vec![("x".to_string(), adapter(1)), ("y".to_string(), adapter(2))];
        assert_eq!(position_of(&given, &adapter(2)).unwrap(), Some(1));
        assert_eq!(position_of(&given, &adapter(3)).unwrap(), None);
        // A subset of the tensors is not enough the other way round.
        let mut fewer = adapter(1);
        let first = fewer.tensors.keys().next().unwrap().clone();
        fewer.tensors.remove(&first);
        assert_eq!(
            position_of(&[("z".to_string(), fewer)], &adapter(1)).unwrap(),
            None
        );
    }
}
