//! Evaluation: answers tasks' test splits through the same engine path as serving (an
//! in-process server with the plugin; each adapter is hot-loaded as a task and requests are
//! tagged with it), greedy, and scores them strictly (the answer parsed from the start of
//! the output, the method's protocol) and leniently (the right answer anywhere in the first
//! sentence, no wrong one), from at most 16 generated tokens (every answer of the suite
//! fits, with room for a short lead-in). Writes `eval.json`, `eval.md` and `eval.png`.
//! [`heldout`] compares a generator with its baselines this way; [`nll`] does it
//! teacher-forced (NLL and greedy exact match, no decoding), fast enough for every test
//! example of every held-out task.

pub mod heldout;
pub mod nll;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::adapters::Source;
use crate::format::peft::CONFIG_FILE;
use crate::format::LoraAdapter;
use crate::server::local::{chat_body, LocalServer};
use crate::server::specialise::guard::Demonstrations;
use crate::server::{self, Config};
use crate::tasks::{score_lenient, score_strict, Example, Task};
pub use crate::training::llama::chat::demonstration_turns;

/// A task's training examples shown before each prompt: the server's rule
/// ([`Demonstrations`]: all of the pool, or each prompt's nearest of it).
pub type Shown<'a> = Demonstrations<'a, Example>;

/// The earlier chat turns ([`demonstration_turns`]) that `shown` puts before `prompt`.
pub fn turns(shown: Shown<'_>, prompt: &str) -> String {
    demonstration_turns(shown.pick(prompt))
}

/// `task` with `k` training examples as earlier chat turns of every test prompt
/// ([`Shown`]): the in-context baseline, what a tenant's labelled examples give a
/// model without any generated adapter. With `pool` 0, the first `k` for every test
/// prompt, as a server prepending a task's examples would; else each test prompt's `k`
/// nearest of the first `pool`. The training split is left as it is.
pub fn with_demonstrations(task: &Task, k: usize, pool: usize) -> Result<Task> {
    let size = pool.max(k);
    if task.train.len() < size {
        bail!(
            "task {}: {} training examples, {k} demonstrations{} wanted",
            task.name,
            task.train.len(),
            if size > k {
                format!(" of the first {size}")
            } else {
                String::new()
            }
        );
    }
    let shown = Shown {
        pool: &task.train[..size],
        each: k,
    };
    let test = task
        .test
        .iter()
        .map(|e| Example {
            prompt: format!("{}{}", turns(shown, &e.prompt), e.prompt),
            ..e.clone()
        })
        .collect();
    Ok(Task {
        test,
        ..task.clone()
    })
}

/// The label of the base model shown a task's examples ([`EvalServer::answer_side_by_side`]).
pub const SHOWN_LABEL: &str = "base+examples";

/// A model to evaluate: the base, or the base with an adapter.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub label: String,
    /// PEFT folder; `None` for the base model.
    pub adapter: Option<PathBuf>,
    /// Only these tasks (e.g. a task's own LoRA on its own task); empty: every task.
    pub only_tasks: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub model: String,
    pub task: String,
    pub n: usize,
    pub strict: f64,
    pub lenient: f64,
    /// First few outputs, for reading.
    pub samples: Vec<(String, String, String)>,
}

impl Score {
    pub fn accuracy(&self) -> Accuracy {
        Accuracy {
            strict: self.strict,
            lenient: self.lenient,
        }
    }
}

/// Accuracy on a task's test split under both scorings, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub strict: f64,
    pub lenient: f64,
}

impl Accuracy {
    /// Orders by strict accuracy, ties broken by lenient.
    pub fn cmp_strict_first(&self, other: &Self) -> std::cmp::Ordering {
        self.strict
            .total_cmp(&other.strict)
            .then(self.lenient.total_cmp(&other.lenient))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub base: String,
    pub dtype: String,
    pub limit: Option<usize>,
    /// Training examples shown before every test prompt ([`with_demonstrations`]).
    pub demonstrations: usize,
    pub scores: Vec<Score>,
}

/// The adapters in `dir`: the folder itself when it is a PEFT folder, else its PEFT
/// subfolders, labelled by folder name.
pub fn adapters_in(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let label = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    if dir.join(CONFIG_FILE).is_file() {
        return Ok(vec![(label(dir), dir.to_path_buf())]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.join(CONFIG_FILE).is_file() {
            out.push((label(&p), p));
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{} holds no PEFT adapter (no {CONFIG_FILE})", dir.display());
    }
    Ok(out)
}

/// Evaluates every candidate on its tasks (test split, at most `limit` examples each).
pub async fn evaluate(
    config: Config,
    tasks: &[Task],
    candidates: &[Candidate],
    limit: Option<usize>,
) -> Result<Report> {
    let (server, _store) = EvalServer::start(config, 1).await?;
    let mut scores = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let task_id = format!("eval-{i}");
        if let Some(dir) = &c.adapter {
            let adapter = LoraAdapter::read_peft(dir)?;
            server
                .install(&task_id, &adapter)
                .await
                .with_context(|| format!("loading {}", dir.display()))?;
        }
        for task in tasks {
            if !c.only_tasks.is_empty() && !c.only_tasks.contains(&task.name) {
                continue;
            }
            let tag = c.adapter.is_some().then_some(task_id.as_str());
            let s = score_task(&server.local, tag, task, limit, &c.label).await?;
            log_score(&s);
            scores.push(s);
        }
        if c.adapter.is_some() {
            server.local.plugin.table.evict(&task_id, true).await?;
        }
    }
    Ok(Report {
        base: server.base.display().to_string(),
        dtype: server.dtype.clone(),
        limit,
        demonstrations: 0,
        scores,
    })
}

/// Requests in flight per adapter column: they share the engine model's decode batches.
const IN_FLIGHT: usize = 8;

/// The in-process server evaluations answer through: the plugin on, a temporary store, no
/// generator.
pub struct EvalServer {
    pub local: LocalServer,
    pub base: PathBuf,
    pub dtype: String,
}

impl EvalServer {
    /// Starts it with room for `resident` adapters, each answering side by side with the
    /// base model; the store lives as long as the guard.
    pub async fn start(mut config: Config, resident: usize) -> Result<(Self, tempfile::TempDir)> {
        let store = tempfile::tempdir()?;
        config.plugin.enabled = true;
        config.plugin.store = store.path().join("store");
        config.plugin.max_resident = resident;
        // Shared-base adapters all count against the base model's bound: room for every
        // column's requests at once (the production default, 64, is 8 columns).
        let bounds = &mut config.plugin;
        bounds.max_in_flight_per_model = bounds
            .max_in_flight_per_model
            .max(IN_FLIGHT * (resident + 1));
        bounds.max_in_flight_per_task = bounds.max_in_flight_per_task.max(IN_FLIGHT);
        config.plugin.generator = None;
        let base = server::resolve_base(&config)?;
        let dtype = config.model.dtype.clone();
        let local = LocalServer::start(config).await?;
        Ok((Self { local, base, dtype }, store))
    }

    pub async fn install(&self, task_id: &str, adapter: &LoraAdapter) -> Result<()> {
        self.local
            .plugin
            .table
            .install(task_id, adapter, Source::Path)
            .await
            .map(drop)
    }

    /// Scores adapters (`None`: the base model) on a task's test split side by side (see
    /// [`EvalServer::answer_side_by_side`], `shown` too), on its first `limit` examples. In
    /// the order given.
    pub async fn score_side_by_side(
        &self,
        task: &Task,
        adapters: &[(String, Option<&LoraAdapter>)],
        limit: Option<usize>,
        shown: Option<Shown<'_>>,
    ) -> Result<Vec<Score>> {
        let examples: Vec<&Example> = task.test.iter().take(limit.unwrap_or(usize::MAX)).collect();
        let prompts: Vec<&str> = examples.iter().map(|e| e.prompt.as_str()).collect();
        let outputs = self.answer_side_by_side(adapters, &prompts, shown).await?;
        let labels =
            (adapters.iter().map(|(label, _)| label.as_str())).chain(shown.map(|_| SHOWN_LABEL));
        let scores: Vec<Score> = labels
            .zip(outputs)
            .map(|(label, out)| score_outputs(label, task, &examples, out))
            .collect();
        scores.iter().for_each(log_score);
        Ok(scores)
    }

    /// Every adapter's (`None`: the base model's) answers to `prompts`, side by side: each
    /// hot-loaded as a task, all answering at once, so that with shared-base adapters their
    /// requests share the base model's decode batches. In the order given, then with
    /// `shown` one more column: the base model with them before each prompt, as the
    /// server shows a task's examples.
    pub async fn answer_side_by_side(
        &self,
        adapters: &[(String, Option<&LoraAdapter>)],
        prompts: &[&str],
        shown: Option<Shown<'_>>,
    ) -> Result<Vec<Vec<String>>> {
        let ids: Vec<String> = (0..adapters.len()).map(|k| format!("side-{k}")).collect();
        for ((_, adapter), id) in adapters.iter().zip(&ids) {
            if let Some(a) = adapter {
                self.install(id, a).await?;
            }
        }
        let after_turns: Vec<String> = match shown {
            Some(shown) => (prompts.iter())
                .map(|p| format!("{}{p}", turns(shown, p)))
                .collect(),
            None => Vec::new(),
        };
        let after_turns: Vec<&str> = after_turns.iter().map(String::as_str).collect();
        let columns = (adapters.iter().zip(&ids))
            .map(|((_, adapter), id)| (adapter.is_some().then_some(id.as_str()), prompts))
            .chain(shown.map(|_| (None, &after_turns[..])));
        let outputs = futures::future::try_join_all(
            columns.map(|(tag, prompts)| answers(&self.local, tag, prompts)),
        )
        .await?;
        for ((_, adapter), id) in adapters.iter().zip(&ids) {
            if adapter.is_some() {
                self.local.plugin.table.evict(id, true).await?;
            }
        }
        Ok(outputs)
    }
}

fn log_score(s: &Score) {
    eprintln!(
        "{:<24} {:<20} strict {:5.1}%  lenient {:5.1}%  (n={})",
        s.model,
        s.task,
        100.0 * s.strict,
        100.0 * s.lenient,
        s.n
    );
}

/// `task`'s first `limit` test examples answered through `server`, tagged with `tag` (none:
/// the base model), scored as `label`.
pub(crate) async fn score_task(
    server: &LocalServer,
    tag: Option<&str>,
    task: &Task,
    limit: Option<usize>,
    label: &str,
) -> Result<Score> {
    let examples: Vec<&Example> = task.test.iter().take(limit.unwrap_or(usize::MAX)).collect();
    let prompts: Vec<&str> = examples.iter().map(|e| e.prompt.as_str()).collect();
    let outputs = answers(server, tag, &prompts).await?;
    Ok(score_outputs(label, task, &examples, outputs))
}

/// Greedy answers to `prompts` through the server, tagged with `tag` (none: the base).
async fn answers(server: &LocalServer, tag: Option<&str>, prompts: &[&str]) -> Result<Vec<String>> {
    futures::stream::iter(prompts.iter().map(|p| answer(server, tag, p)))
        .buffered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn score_outputs(label: &str, task: &Task, examples: &[&Example], outputs: Vec<String>) -> Score {
    let (mut strict, mut lenient, mut samples) = (0usize, 0usize, Vec::new());
    for (ex, out) in examples.iter().zip(outputs) {
        strict += score_strict(task.scoring, ex, &out) as usize;
        lenient += score_lenient(task.scoring, ex, &out) as usize;
        if samples.len() < 3 {
            samples.push((ex.prompt.clone(), ex.answer.clone(), out));
        }
    }
    let n = examples.len().max(1) as f64;
    Score {
        model: label.to_string(),
        task: task.name.clone(),
        n: examples.len(),
        strict: strict as f64 / n,
        lenient: lenient as f64 / n,
        samples,
    }
}

async fn answer(server: &LocalServer, tag: Option<&str>, prompt: &str) -> Result<String> {
    let r = server.send_chat(tag, &chat_body(prompt, 16)).await?;
    if !r.is_success() {
        bail!("request failed ({}): {}", r.status, r.json);
    }
    Ok(r.message().unwrap_or("").to_string())
}

/// The report as a markdown table: one row per task, one column per model (strict %,
/// lenient % in brackets), and the mean over tasks.
pub fn markdown(report: &Report) -> String {
    let (models, tasks) = axes(report);
    let cell = |m: &str, t: &str| {
        report
            .scores
            .iter()
            .find(|s| s.model == m && s.task == t)
            .map(|s| format!("{:.1} ({:.1})", 100.0 * s.strict, 100.0 * s.lenient))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "| task | {} |\n|---|{}\n",
        models.join(" | "),
        "---|".repeat(models.len())
    );
    for t in &tasks {
        let row: Vec<String> = models.iter().map(|m| cell(m, t)).collect();
        out += &format!("| {t} | {} |\n", row.join(" | "));
    }
    let mean = |m: &str, f: fn(&Score) -> f64| {
        let v: Vec<f64> = report
            .scores
            .iter()
            .filter(|s| s.model == m)
            .map(f)
            .collect();
        100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let row: Vec<String> = models
        .iter()
        .map(|m| {
            format!(
                "**{:.1}** ({:.1})",
                mean(m, |s| s.strict),
                mean(m, |s| s.lenient)
            )
        })
        .collect();
    out += &format!("| mean | {} |\n", row.join(" | "));
    out
}

/// Font for chart text: `DND_FONT`, or DejaVu Sans where Debian puts it.
fn chart_font() -> Result<&'static [u8]> {
    let path = std::env::var_os("DND_FONT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"));
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the chart needs a TTF font: {} (set DND_FONT, or install fonts-dejavu-core)",
            path.display()
        )
    })?;
    Ok(Box::leak(bytes.into_boxed_slice()))
}

/// A horizontal grouped bar chart of strict accuracy: one row per task, one bar per model.
pub fn chart(report: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    static FONT: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let font = chart_font().map_err(|e| format!("{e:#}"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .map_err(|_| "the chart font is not a valid TTF file".to_string())
    })
    .clone()
    .map_err(anyhow::Error::msg)?;
    let (models, tasks) = axes(report);
    let palette = [
        RGBColor(90, 90, 90),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    let (bar, gap, left, top, width) = (12i32, 10i32, 170i32, 60i32, 1000i32);
    let row = bar * models.len() as i32 + gap;
    let height = top + row * tasks.len() as i32 + 30;
    let plot_w = width - left - 60;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let text = |s: &str, x: i32, y: i32, size: i32| {
        Text::new(s.to_string(), (x, y), ("sans-serif", size).into_font())
    };
    root.draw(&text(
        "Strict accuracy (%) on each task's test split",
        left,
        8,
        18,
    ))
    .map_err(err)?;
    for (m, name) in models.iter().enumerate() {
        let x = left + 190 * m as i32;
        root.draw(&Rectangle::new(
            [(x, 36), (x + 12, 48)],
            palette[m % palette.len()].filled(),
        ))
        .map_err(err)?;
        root.draw(&text(name, x + 16, 35, 13)).map_err(err)?;
    }
    for pct in (0..=100).step_by(25) {
        let x = left + plot_w * pct / 100;
        root.draw(&PathElement::new(
            vec![(x, top - 4), (x, height - 26)],
            RGBColor(220, 220, 220),
        ))
        .map_err(err)?;
        root.draw(&text(&pct.to_string(), x - 8, height - 22, 12))
            .map_err(err)?;
    }
    for (t, task) in tasks.iter().enumerate() {
        let y0 = top + row * t as i32;
        root.draw(&text(task, 8, y0 + row / 2 - 10, 13))
            .map_err(err)?;
        for (m, model) in models.iter().enumerate() {
            let Some(s) = report
                .scores
                .iter()
                .find(|s| &s.model == model && &s.task == task)
            else {
                continue;
            };
            let y = y0 + bar * m as i32;
            let x1 = left + (plot_w as f64 * s.strict) as i32;
            root.draw(&Rectangle::new(
                [(left, y), (x1.max(left + 1), y + bar - 2)],
                palette[m % palette.len()].filled(),
            ))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Models and tasks in the order they were evaluated.
fn axes(report: &Report) -> (Vec<String>, Vec<String>) {
    let (mut models, mut tasks) = (Vec::<String>::new(), Vec::<String>::new());
    for s in &report.scores {
        if !models.contains(&s.model) {
            models.push(s.model.clone());
        }
        if !tasks.contains(&s.task) {
            tasks.push(s.task.clone());
        }
    }
    (models, tasks)
}

/// Writes `eval.json`, `eval.md` and `eval.png` into `out`.
pub fn write_report(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("eval.json"), serde_json::to_vec_pretty(report)?)?;
    let md = format!(
        "Accuracy in % on each task's test split{}: strict (lenient). Base {} ({}), greedy, through the serving path.\n\n{}",
        report.limit.map(|n| format!(" (first {n} examples)")).unwrap_or_default(),
        report.base,
        report.dtype,
        markdown(report)
    );
    std::fs::write(out.join("eval.md"), md)?;
    chart(report, &out.join("eval.png"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::llama::chat::earlier_turns;

    fn ex(prompt: &str, answer: &str) -> Example {
        Example {
            prompt: prompt.into(),
            answer: answer.into(),
            choices: vec![],
        }
    }

    #[test]
    fn demonstrations_are_the_first_training_examples_before_every_test_prompt() {
        let task = Task {
            name: "add".into(),
            family: "arithmetic".into(),
            scoring: crate::tasks::Scoring::Exact,
            train: vec![ex("1 + 1?", "2"), ex("2 + 2?", "4"), ex("3 + 3?", "6")],
            test: vec![ex("4 + 4?", "8"), ex("5 + 5?", "10")],
        };
        let shown = with_demonstrations(&task, 2, 0).unwrap();
        let turns = earlier_turns([("1 + 1?", "2"), ("2 + 2?", "4")]);
        let prompts: Vec<&str> = shown.test.iter().map(|e| e.prompt.as_str()).collect();
        assert_eq!(
            prompts,
            [format!("{turns}4 + 4?"), format!("{turns}5 + 5?")]
        );
        assert_eq!(shown.test[1].answer, "10");
        assert_eq!(shown.train, task.train);
        assert_eq!(with_demonstrations(&task, 0, 0).unwrap(), task);
        let err = with_demonstrations(&task, 4, 0).unwrap_err().to_string();
        assert!(
            err.contains("3 training examples, 4 demonstrations"),
            "{err}"
        );
        let err = with_demonstrations(&task, 1, 4).unwrap_err().to_string();
        assert!(
            err.contains("3 training examples, 1 demonstrations of the first 4"),
            "{err}"
        );
    }

    #[test]
    fn demonstrations_from_a_pool_are_each_test_prompts_nearest() {
        let task = Task {
            name: "mixed".into(),
            family: "arithmetic".into(),
            scoring: crate::tasks::Scoring::Exact,
            train: vec![
                ex("What is 1 + 1?", "2"),
                ex("Double 3.", "6"),
                ex("What is 2 + 5?", "7"),
                ex("Double 7.", "14"),
            ],
            test: vec![ex("Double 9.", "18"), ex("What is 4 + 4?", "8")],
        };
        let shown = with_demonstrations(&task, 2, 4).unwrap();
        let doubles = earlier_turns([("Double 7.", "14"), ("Double 3.", "6")]);
        let sums = earlier_turns([("What is 2 + 5?", "7"), ("What is 1 + 1?", "2")]);
        let prompts: Vec<&str> = shown.test.iter().map(|e| e.prompt.as_str()).collect();
        assert_eq!(
            prompts,
            [
                format!("{doubles}Double 9."),
                format!("{sums}What is 4 + 4?")
            ]
        );
    }
}
