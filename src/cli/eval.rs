//! `mistralrs-dnd eval`: scores the base model and adapters on tasks' test splits through
//! the serving path, and writes JSON and a markdown table.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};

use super::collect::SuiteArgs;
use crate::assets::{given_or_default, Assets};
use crate::eval::heldout::{
    evaluate_heldout, heldout_markdown, weight_markdown, weight_space, write_heldout, HeldoutSetup,
};
use crate::eval::nll::{
    decode_rows, evaluate_lora_nll, evaluate_nll, lora_nll_markdown, nll_markdown, write_lora_nll,
    write_nll, Comparison, NllReport, NllSetup,
};
use crate::eval::{adapters_in, evaluate, with_demonstrations, write_report, Candidate};
use crate::server::specialise::guard::Tolerance;
use crate::server::Config;
use crate::tasks::suite;
use crate::training::collection::Collection;
use crate::training::generator::TrainRecord;
use crate::training::llama::score::Rank;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `builtin`, or task files (JSONL, one task each).
    #[arg(long, num_args = 1.., default_value = "builtin")]
    pub tasks: Vec<String>,
    /// Only these tasks (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Leave these tasks out (comma-separated names), e.g. those the suite filter drops.
    #[arg(long, value_delimiter = ',')]
    pub except: Vec<String>,
    /// Each task's first K training examples as earlier chat turns of every test prompt: the
    /// in-context baseline, for the base model and `--adapter`s (decoded, or with --nll
    /// teacher-forced). With --generator (and --decode): one more decoded column, the base
    /// model so shown, and with --guard its check as the server's candidate of
    /// `plugin.demonstrations` (routed in the fallback table where the server would).
    #[arg(long, default_value_t = 0, conflicts_with = "report")]
    pub demonstrations: usize,
    /// With --demonstrations K: each test prompt's K nearest (lexically,
    /// `tasks::nearest`) of the task's first N training examples instead of the first K
    /// (with --generator --guard: checked on the examples after the first N, as
    /// `plugin.demonstrations_pool` = N).
    #[arg(long, value_name = "N", requires = "demonstrations")]
    pub demonstrations_pool: Option<usize>,
    /// With --generator --nll --demonstrations K (teacher-forced, no --decode): every
    /// column, the adapters too, is shown the examples before each test prompt: what an
    /// adapter adds to the examples shown, were a server to send both.
    #[arg(long, requires = "demonstrations", conflicts_with = "decode")]
    pub shown_to_all: bool,
    /// An earlier `eval --generator --nll` run's nll.json: write its tables again (without
    /// the `--except` tasks, if any) to `--out`, running nothing (the checked tables judged by the
    /// server's current rule). Several (the folds of `train --fold`): one report pooled over
    /// their held-out tasks.
    #[arg(long, num_args = 1.., conflicts_with_all = ["generator", "adapter", "checkpoints"])]
    pub report: Vec<PathBuf>,
    /// An adapter (PEFT folder) or a folder of them, evaluated on every task; repeatable.
    #[arg(long)]
    pub adapter: Vec<PathBuf>,
    /// A `collect` output: each task's last checkpoint is evaluated on its own task.
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// A trained generator (`train --hold-out ...`): held-out evaluation of its held-out
    /// tasks against the base, the other tasks' LoRAs, the own LoRA and 10 DnD adapters;
    /// with `--nll`, also of task files it did not train on. `--checkpoints` then names the
    /// collection (default: the one it was trained on, if it is on this machine).
    #[arg(long, conflicts_with = "adapter")]
    pub generator: Option<PathBuf>,
    /// With --generator --nll: more generators of the same decoder shape and condition (e.g.
    /// other seeds of its recipe); DnD's adapter of a batch is the mean of every
    /// generator's, the ensemble, in every column that generates (the shuffle control too)
    #[arg(long, num_args = 1.., requires_all = ["generator", "nll"])]
    pub ensemble: Vec<PathBuf>,
    /// Prompt encoder folder for --generator (default: all-MiniLM-L6-v2 in the asset root,
    /// fetched if missing).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// DnD adapters per held-out task, each from its own random batch of test prompts.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// With --generator: only the weight-space comparison (seconds), no model run.
    #[arg(long, requires = "generator")]
    pub weights_only: bool,
    /// Teacher-forced scoring (NLL and greedy exact match on every test example; no
    /// engine, no decoding). With --generator: the held-out comparison, to nll.json /
    /// nll.md; else every task under the base, each --adapter and its own checkpoint in
    /// --checkpoints, to lora-nll.json / lora-nll.md (which tasks a LoRA improves).
    #[arg(long, conflicts_with = "weights_only")]
    pub nll: bool,
    /// With --nll: a multi-task LoRA (PEFT folder, e.g. from `collect --pool`) to compare;
    /// repeat for several (e.g. the one a residual generator sits on and the one of all
    /// training tasks).
    #[arg(long, requires = "nll")]
    pub multitask: Vec<PathBuf>,
    /// With --nll and --generator: also decode every adapter of the comparison through
    /// the serving path (greedy; strict and lenient accuracy, the bars and the
    /// harm check), on the first --decode-limit test examples of each task.
    #[arg(long, requires_all = ["nll", "generator"])]
    pub decode: bool,
    /// With --decode: test examples per task at most (default: all).
    #[arg(long, requires = "decode")]
    pub decode_limit: Option<usize>,
    /// With --decode: also the server's no-harm check of every DnD adapter on N training
    /// examples of its task (the first, or those after the --demonstrations shown and a
    /// selection's, as the server's), and the table and bars with rejected adapters
    /// replaced by the base model.
    #[arg(long, requires = "decode")]
    pub guard: Option<usize>,
    /// With --guard: the adapter (PEFT folder) checked beside each DnD adapter and routed
    /// where it ranks above it in the check, as `plugin.fallback_adapter` is (default: a
    /// residual generator's base adapter), e.g. the multi-task LoRA of all training tasks.
    #[arg(long, requires = "guard")]
    pub fallback: Option<PathBuf>,
    /// The no-harm check's tolerance, as `plugin.check_tolerance`: the share of the
    /// examples an adapter may answer fewer of than the base model and still be routed;
    /// with --report, the recorded checks are judged again by it.
    #[arg(long, default_value_t = Tolerance::default().share())]
    pub check_tolerance: f64,
    /// With --nll: DnD prompt batches per task.
    #[arg(long, default_value_t = 3)]
    pub batches: usize,
    /// With --nll: retrieval's neighbours, the columns of the baseline a generator that
    /// reads its input should beat (the mean LoRA of the K training tasks whose examples
    /// read most like the held-out task's, and its shuffle control; needs the training
    /// tasks' checkpoints); 0: none.
    #[arg(long, default_value_t = 5)]
    pub nearest: usize,
    /// With --nearest: retrieval as a move of this adapter (PEFT folder, sharing the
    /// checkpoints' A), e.g. the multi-task LoRA of all training tasks: its B plus the
    /// neighbours' mean B minus the training tasks' mean B.
    #[arg(long)]
    pub nearest_on: Option<PathBuf>,
    /// With --nearest: selection's examples, the columns of the adapter that a task's
    /// labelled examples pick (of retrieval's neighbours, each alone, and the multi-task
    /// LoRAs: what ranks first by --select-by on the task's first N training examples), and
    /// its shuffle control; 0: none.
    #[arg(long, default_value_t = 0)]
    pub select: usize,
    /// How selection ranks its candidates on those examples: greedy (the most answered
    /// exactly by greedy decoding, teacher-forced, then the lowest NLL: what the server's
    /// library does) or nll (the lowest answer NLL alone, as before 2026-12-06).
    #[arg(long, value_enum, default_value_t = crate::server::specialise::library::RANK)]
    pub select_by: Rank,
    /// With --nearest: retrieval's and selection's library made by the generator, its
    /// adapter of each of its training tasks (from the task's first batch), instead of the
    /// collection's LoRAs: what it learnt, as a library that needs no stored LoRAs.
    #[arg(long, requires = "generator")]
    pub generated_library: bool,
    /// With --select: selection's pick grown into a greedy soup, the mean of the candidates
    /// that each make the mean rank higher on those examples (in rank order).
    #[arg(long)]
    pub select_soup: bool,
    /// Steps of the own LoRA run also evaluated, for the overhead figure.
    #[arg(long, value_delimiter = ',', default_value = "25,45")]
    pub overhead_steps: Vec<usize>,
    /// Test examples per task at most.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where eval.json and eval.md go.
    #[arg(long, default_value = "data/eval")]
    pub out: PathBuf,
    /// Base model folder (default: the converted SmolLM2 in assets/).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Serving dtype.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// The built-in suite's seed, sizes and version: the same as in `collect`, since the
    /// test split follows the training examples.
    #[command(flatten)]
    pub suite_args: SuiteArgs,
}

pub fn run(args: Args) -> Result<()> {
    let check_tolerance = Tolerance::new(args.check_tolerance)?;
    if !args.report.is_empty() {
        let reports = args
            .report
            .iter()
            .map(|path| {
                serde_json::from_slice(&std::fs::read(path)?)
                    .with_context(|| format!("reading {}", path.display()))
            })
            .collect::<Result<Vec<NllReport>>>()?;
        let report = match reports.len() {
            1 => reports.into_iter().next().expect("one report"),
            _ => NllReport::pooled(reports)?,
        };
        let mut report = report.without(&args.except)?;
        // Judged again: the server's rule may have changed since the run.
        report.apply_checks(report.fallback_column(), check_tolerance);
        write_nll(&report, &args.out)?;
        println!("{}", nll_markdown(&report));
        println!("wrote {}/nll.json and nll.md", args.out.display());
        return Ok(());
    }
    ensure!(
        args.generator.is_none()
            || args.demonstrations == 0
            || (args.nll && (args.decode || args.shown_to_all)),
        "--demonstrations with --generator is a decoded column (add --nll --decode) or \
         shown to every column (--nll --shown-to-all)"
    );
    let tasks = suite(&args.tasks, &args.only, &args.suite_args.config())?;
    let pool = args.demonstrations_pool.unwrap_or(0);
    ensure!(
        pool == 0 || pool >= args.demonstrations,
        "--demonstrations-pool must hold at least the --demonstrations shown"
    );
    let tasks = crate::tasks::without(tasks, &args.except)?;
    ensure!(!tasks.is_empty(), "no tasks to evaluate");
    let tasks = tasks
        .iter()
        .map(|t| {
            let shown = with_demonstrations(t, args.demonstrations, pool)?;
            // A generator's comparison shows them in a column of its own, unless to all.
            Ok(match args.generator.is_some() && !args.shown_to_all {
                true => t.clone(),
                false => shown,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut config = Config::default();
    config.model.base = args.base.clone();
    config.model.dtype = args.dtype.clone();
    if let (Some(generator), true) = (&args.generator, args.nll) {
        let started = std::time::Instant::now();
        let setup = NllSetup {
            generator: generator.clone(),
            ensemble: args.ensemble.clone(),
            encoder: given_or_default(args.encoder.as_deref(), Assets::minilm)?,
            base: given_or_default(args.base.as_deref(), Assets::smollm2)?,
            checkpoints: args.checkpoints.clone(),
            multitask: args.multitask.clone(),
            batches: args.batches,
            nearest: args.nearest,
            nearest_on: args.nearest_on.clone(),
            select: args.select,
            select_by: args.select_by,
            soup: args.select_soup,
            seed: 0,
            fallback: args.fallback.clone(),
            generated_library: match args.generated_library {
                true => {
                    let record = TrainRecord::load(generator)?;
                    suite(&args.tasks, &record.train_tasks, &args.suite_args.config())?
                }
                false => Vec::new(),
            },
        };
        let comparison = Comparison::build(&tasks, &setup)?;
        ensure!(
            args.demonstrations == 0 || args.guard.is_none() || comparison.fallback.is_some(),
            "--demonstrations with --guard routes the examples shown in the fallback table: \
             the generator has no base adapter, give one with --fallback"
        );
        let mut report = evaluate_nll(&comparison, &setup, args.limit)?;
        if args.shown_to_all {
            report.demonstrations = args.demonstrations;
            report.demonstrations_pool = pool;
            report.shown_to_all = true;
        }
        if args.decode {
            let (rows, checks) = tokio::runtime::Runtime::new()?.block_on(decode_rows(
                config,
                &comparison,
                args.decode_limit,
                args.guard,
                args.demonstrations,
                pool,
            ))?;
            report.demonstrations = args.demonstrations;
            report.demonstrations_pool = pool;
            report.decoded = rows;
            report.checks = checks;
            report.apply_checks(comparison.fallback, check_tolerance);
            report.decode_limit = args.decode_limit;
            report.seconds = started.elapsed().as_secs_f64();
        }
        write_nll(&report, &args.out)?;
        println!("{}", nll_markdown(&report));
        println!(
            "held-out eval in {:.1} min; wrote {}/nll.json and nll.md",
            report.seconds / 60.0,
            args.out.display()
        );
        return Ok(());
    }
    if args.nll {
        let mut adapters = Vec::new();
        for dir in &args.adapter {
            adapters.extend(adapters_in(dir)?);
        }
        let base = given_or_default(args.base.as_deref(), Assets::smollm2)?;
        let report = evaluate_lora_nll(
            &tasks,
            &base,
            &adapters,
            args.checkpoints.as_deref(),
            args.limit,
        )?;
        write_lora_nll(&report, &args.out)?;
        println!("{}", lora_nll_markdown(&report));
        println!(
            "teacher-forced eval in {:.1} min; wrote {}/lora-nll.json and lora-nll.md",
            report.seconds / 60.0,
            args.out.display()
        );
        return Ok(());
    }
    if let Some(generator) = &args.generator {
        let setup = HeldoutSetup {
            generator: generator.clone(),
            encoder: given_or_default(args.encoder.as_deref(), Assets::minilm)?,
            checkpoints: args.checkpoints.clone(),
            samples: args.samples,
            seed: 0,
            overhead_steps: args.overhead_steps.clone(),
        };
        let weights = weight_space(&tasks, &setup)?;
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(
            args.out.join("weights.json"),
            serde_json::to_vec_pretty(&weights)?,
        )?;
        std::fs::write(args.out.join("weights.md"), weight_markdown(&weights))?;
        println!("{}", weight_markdown(&weights));
        if args.weights_only {
            println!("wrote {}/weights.json and weights.md", args.out.display());
            return Ok(());
        }
        let started = std::time::Instant::now();
        let report = tokio::runtime::Runtime::new()?
            .block_on(evaluate_heldout(config, &tasks, &setup, args.limit))?;
        write_heldout(&report, &args.out)?;
        println!("{}", crate::eval::markdown(&report.summary));
        println!("{}", heldout_markdown(&report));
        println!(
            "held-out eval in {:.1} min; wrote {}/eval.json, eval.md, eval.png, heldout.md, weights.md",
            started.elapsed().as_secs_f64() / 60.0,
            args.out.display()
        );
        return Ok(());
    }
    let mut candidates = vec![Candidate {
        label: "base".into(),
        adapter: None,
        only_tasks: vec![],
    }];
    for dir in &args.adapter {
        for (label, path) in adapters_in(dir)? {
            candidates.push(Candidate {
                label,
                adapter: Some(path),
                only_tasks: vec![],
            });
        }
    }
    if let Some(dir) = &args.checkpoints {
        let own = Collection::new(dir).final_checkpoints()?;
        ensure!(!own.is_empty(), "{} has no completed task", dir.display());
        for (task, path) in own {
            if tasks.iter().any(|t| t.name == task) {
                candidates.push(Candidate {
                    label: "own LoRA".into(),
                    adapter: Some(path),
                    only_tasks: vec![task],
                });
            }
        }
    }
    let mut report = tokio::runtime::Runtime::new()?.block_on(evaluate(
        config,
        &tasks,
        &candidates,
        args.limit,
    ))?;
    report.demonstrations = args.demonstrations;
    write_report(&report, &args.out)?;
    println!("{}", crate::eval::markdown(&report));
    println!("wrote {}/eval.json and eval.md", args.out.display());
    Ok(())
}
