//! `bench served`: tasks answered as a tenant's requests are, through the whole product on
//! SmolLM2, with and without `plugin.demonstrations`. For each task in turn: its first
//! `examples` training examples are given (`PUT .../examples`), K tagged requests start its
//! generation (max_tokens 1; its last K test prompts, none of those scored), and once the
//! generation has ended (a candidate routed, or
//! all rejected) its first `limit` test prompts are answered tagged, greedy, at most 16
//! tokens, and scored strictly and leniently as `eval` scores them; the base model answers
//! them untagged. The whole run is made twice in one command, on two servers alike but for
//! `plugin.demonstrations` (0, then the K given), so that the examples shown are measured
//! as the candidate of the check they are, beside what the check routes without them. With
//! a pool N (`--pool`), the two servers both show K examples: the first K, then each
//! prompt's nearest K of the first N (`plugin.demonstrations_pool`).
//! Nothing here is tuned to a task: the route is the server's own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use super::{print_machine, specialising_config};
use crate::eval::nll::{harms, mean_interval};
use crate::eval::{score_task, Accuracy};
use crate::server::local::{chat_body, LocalServer};
use crate::server::specialise::guard::{Split, MIN_UNSEEN};

/// What a run specialises with.
pub struct Options {
    /// `plugin.examples_generator`, for the tasks with examples (all of them here).
    pub examples_generator: Option<PathBuf>,
    /// Training examples given to each task.
    pub examples: usize,
    /// What the two servers show.
    pub arms: Arms,
    /// Test prompts answered per task.
    pub limit: usize,
    /// Where the rows are written as JSON, if anywhere.
    pub out: Option<PathBuf>,
}

/// The two servers of a run, alike but for the examples they show: none, then the first
/// `demonstrations`; or, with a `pool`, the first `demonstrations`, then each prompt's
/// nearest `demonstrations` of the first `pool`.
#[derive(Debug, Clone, Copy)]
pub struct Arms {
    pub demonstrations: usize,
    pub pool: usize,
}

impl Arms {
    /// `plugin.demonstrations` and `plugin.demonstrations_pool` of each server.
    fn settings(self) -> [(usize, usize); 2] {
        let k = self.demonstrations;
        match self.pool {
            0 => [(0, 0), (k, 0)],
            n => [(k, 0), (k, n)],
        }
    }

    /// Each server's column header.
    fn labels(self) -> [String; 2] {
        let k = self.demonstrations;
        match self.pool {
            0 => ["as served".into(), format!("with demonstrations = {k}")],
            n => [
                format!("first {k} shown"),
                format!("nearest {k} of {n} shown"),
            ],
        }
    }

    /// The arms as a task with `examples` examples is shown them: the pool as large as the
    /// server makes it for so many ([`Split`]).
    fn with(self, examples: usize) -> Self {
        let pool = match self.pool {
            0 => 0,
            n => Split::new(examples, self.demonstrations, n, None).shown,
        };
        Self { pool, ..self }
    }
}

/// One task's result on one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Served {
    /// What the check routed: `generated`, `fallback`, `library`, `examples`, or `base`
    /// when every candidate was rejected.
    pub route: String,
    pub accuracy: Accuracy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub task: String,
    pub base: Accuracy,
    pub without: Served,
    pub with: Served,
}

/// Generation ends in one of these states; anything else is waited for.
const ENDED: [&str; 3] = ["done", "rejected", "failed"];
/// A generation and its check take seconds to a minute on 2 cores; past this, something
/// is wrong.
const GENERATION_LIMIT: Duration = Duration::from_secs(900);

/// Runs `tasks` (built-in suite tasks) on SmolLM2 in `dtype` with `generator`, prints a row
/// per task and the means, and writes the rows to `options.out`.
pub async fn run(
    tasks: &[String],
    generator: &Path,
    dtype: &str,
    assets: Option<PathBuf>,
    options: Options,
) -> Result<()> {
    let k = crate::generator::decoder::DecoderConfig::load(generator)?.prompts;
    let arms = options.arms;
    ensure!(
        options.examples >= arms.demonstrations + MIN_UNSEEN,
        "{} examples: the examples shown are a candidate only with at least {MIN_UNSEEN} \
         after them",
        options.examples,
    );
    // Every task gets as many examples, so one pool size names the second server's column.
    let shown = arms.with(options.examples);
    let labels = shown.labels();
    print_machine();
    println!(
        "setup: SmolLM2-135M-Instruct {dtype} on the engine, generator {}, examples generator \
         {}, K = {k} tagged requests (max_tokens 1) per task after its first {} training \
         examples, then its first {} test prompts tagged (greedy, 16 tokens); two servers \
         alike but for the examples shown, {} and {}; tasks in turn: {}",
        generator.display(),
        options
            .examples_generator
            .as_ref()
            .map_or("none".into(), |g| g.display().to_string()),
        options.examples,
        options.limit,
        labels[0],
        labels[1],
        tasks.join(", ")
    );
    let mut base = Vec::new();
    let mut results: Vec<Vec<Served>> = Vec::new();
    for (arm_index, (demonstrations, pool)) in arms.settings().into_iter().enumerate() {
        let (_store, mut config) = specialising_config(assets.clone(), dtype, 8, generator)?;
        config.plugin.examples_generator = options.examples_generator.clone();
        config.plugin.demonstrations = demonstrations;
        config.plugin.demonstrations_pool = pool;
        config.check()?;
        let server = LocalServer::start(config).await?;
        let mut arm = Vec::new();
        for name in tasks {
            let task = crate::tasks::builtin_task(name, &Default::default())?;
            let t = Instant::now();
            let route = specialise(&server, &task, options.examples, options.limit, k).await?;
            let took = t.elapsed().as_secs_f64();
            let score = score_task(&server, Some(name), &task, Some(options.limit), name).await?;
            if arm_index == 0 {
                let b = score_task(&server, None, &task, Some(options.limit), "base").await?;
                base.push(b.accuracy());
            }
            println!(
                "{}: {name:<22} routed {route:<9} {} ({took:.0} s to the route)",
                labels[arm_index],
                cell(score.accuracy())
            );
            arm.push(Served {
                route,
                accuracy: score.accuracy(),
            });
        }
        results.push(arm);
    }
    let with = results.pop().expect("two arms");
    let without = results.pop().expect("two arms");
    let rows: Vec<Row> = tasks
        .iter()
        .zip(base)
        .zip(without.into_iter().zip(with))
        .map(|((task, base), (without, with))| Row {
            task: task.clone(),
            base,
            without,
            with,
        })
        .collect();
    let md = markdown(&rows, shown);
    println!("{md}");
    if let Some(out) = &options.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("served.json"), serde_json::to_vec_pretty(&rows)?)?;
        std::fs::write(out.join("served.md"), md)?;
    }
    Ok(())
}

/// Gives `task` its examples and K tagged prompts (its last, none of the first `limit`),
/// waits for its generation to end and returns what the check routed.
async fn specialise(
    server: &LocalServer,
    task: &crate::tasks::Task,
    examples: usize,
    limit: usize,
    k: usize,
) -> Result<String> {
    let name = task.name.as_str();
    ensure!(
        task.train.len() >= examples && task.test.len() >= limit + k,
        "task {name} has {} training examples and {} test prompts: {examples} and {limit} + \
         {k} wanted",
        task.train.len(),
        task.test.len()
    );
    super::give_examples(server, task, examples).await?;
    for e in &task.test[task.test.len() - k..] {
        let r = server
            .send_chat(Some(name), &chat_body(&e.prompt, 1))
            .await?;
        ensure!(r.is_success(), "request failed ({}): {}", r.status, r.json);
    }
    let t = Instant::now();
    loop {
        let v = server.adapter_info(name).await?;
        let g = &v["generation"];
        let state = g["state"].as_str().unwrap_or_default();
        if ENDED.contains(&state) {
            return Ok(match g {
                _ if state == "failed" => bail!("generation of {name} failed: {g}"),
                _ if state == "rejected" => "base".into(),
                _ if g["demonstrations_routed"] == true => "examples".into(),
                _ if g["library_routed"] == true => "library".into(),
                _ if g["fallback_routed"] == true => "fallback".into(),
                _ => "generated".into(),
            });
        }
        ensure!(
            t.elapsed() < GENERATION_LIMIT,
            "generation of {name} not ended after {GENERATION_LIMIT:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cell(a: Accuracy) -> String {
    format!("{:.1} ({:.1})", 100.0 * a.strict, 100.0 * a.lenient)
}

/// The rows as a markdown table (strict % (lenient %), the route), the means, what the
/// second server adds to the first (with its 95 % interval over tasks resampled), the bar
/// base + 15, and the tasks harmed.
pub fn markdown(rows: &[Row], arms: Arms) -> String {
    let [first, second] = arms.labels();
    let mut s = format!(
        "| task | base | {first} | route | {second} | route |\n\
         |---|---|---|---|---|---|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.task,
            cell(r.base),
            cell(r.without.accuracy),
            r.without.route,
            cell(r.with.accuracy),
            r.with.route
        );
    }
    let mean = |f: &dyn Fn(&Row) -> Accuracy| {
        let n = rows.len().max(1) as f64;
        Accuracy {
            strict: rows.iter().map(|r| f(r).strict).sum::<f64>() / n,
            lenient: rows.iter().map(|r| f(r).lenient).sum::<f64>() / n,
        }
    };
    let harmed = |f: &dyn Fn(&Row) -> Accuracy| {
        let names: Vec<&str> = rows
            .iter()
            .filter(|r| harms(r.base, f(r)))
            .map(|r| r.task.as_str())
            .collect();
        format!("{} ({})", names.len(), names.join(", "))
    };
    let routed = |f: &dyn Fn(&Row) -> &Served| match rows
        .iter()
        .filter(|r| f(r).route == "examples")
        .count()
    {
        0 => String::new(),
        n => format!("{n} tasks shown examples"),
    };
    s += &format!(
        "| mean | **{}** | **{}** | {} | **{}** | {} |\n\n",
        cell(mean(&|r| r.base)),
        cell(mean(&|r| r.without.accuracy)),
        routed(&|r| &r.without),
        cell(mean(&|r| r.with.accuracy)),
        routed(&|r| &r.with)
    );
    let points = |f: fn(Accuracy) -> f64| -> Vec<f64> {
        let d = |r: &Row| 100.0 * (f(r.with.accuracy) - f(r.without.accuracy));
        rows.iter().map(d).collect()
    };
    let (strict, lenient) = (points(|a| a.strict), points(|a| a.lenient));
    let (lo, hi) = mean_interval(&strict);
    let n = rows.len().max(1) as f64;
    let bar = 100.0 * mean(&|r| r.base).strict + 15.0;
    s += &format!(
        "{second} against {first}: {:+.1} strict points ({lo:+.1} to {hi:+.1}, 95 % over \
         tasks resampled), {:+.1} lenient. Base + 15 = {bar:.1} strict: {first} {:+.1}, \
         {second} {:+.1}.\n",
        strict.iter().sum::<f64>() / n,
        lenient.iter().sum::<f64>() / n,
        100.0 * mean(&|r| r.without.accuracy).strict - bar,
        100.0 * mean(&|r| r.with.accuracy).strict - bar,
    );
    s += &format!(
        "Tasks harmed (10 or more lenient points below the base): {first} {}; {second} {}. \
         {} tasks.\n",
        harmed(&|r| r.without.accuracy),
        harmed(&|r| r.with.accuracy),
        rows.len()
    );
    s
}

/// The table of an earlier run's `served.json`, written again (nothing is run).
pub fn report(path: &Path, arms: Arms) -> Result<()> {
    let rows: Vec<Row> = serde_json::from_slice(&std::fs::read(path)?)?;
    println!("{}", markdown(&rows, arms));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(strict: f64, lenient: f64) -> Accuracy {
        Accuracy { strict, lenient }
    }

    #[test]
    fn the_table_has_the_means_and_names_the_harmed_tasks() {
        let served = |route: &str, a| Served {
            route: route.into(),
            accuracy: a,
        };
        let rows = [
            Row {
                task: "a".into(),
                base: acc(0.0, 0.5),
                without: served("generated", acc(0.2, 0.4)),
                with: served("examples", acc(0.6, 0.6)),
            },
            Row {
                task: "b".into(),
                base: acc(0.2, 0.2),
                without: served("base", acc(0.2, 0.2)),
                with: served("fallback", acc(0.4, 0.4)),
            },
        ];
        let arms = Arms {
            demonstrations: 4,
            pool: 0,
        };
        let md = markdown(&rows, arms);
        assert!(
            md.contains("| a | 0.0 (50.0) | 20.0 (40.0) | generated | 60.0 (60.0) | examples |")
        );
        assert!(md.contains(
            "| mean | **10.0 (35.0)** | **20.0 (30.0)** |  | **50.0 (50.0)** | 1 tasks shown"
        ));
        assert!(
            md.contains("as served 1 (a); with demonstrations = 4 0 ()"),
            "{md}"
        );
        assert!(
            md.contains("with demonstrations = 4 against as served: +30.0 strict points"),
            "{md}"
        );
        assert!(md.contains("+20.0 lenient. Base + 15 = 25.0 strict: as served -5.0, with demonstrations = 4 +25.0."), "{md}");
        // With a pool both servers show examples, and the headers say which.
        let pooled = markdown(&rows, Arms { pool: 32, ..arms });
        assert!(
            pooled.contains("| task | base | first 4 shown | route | nearest 4 of 32 shown |"),
            "{pooled}"
        );
        assert_eq!(Arms { pool: 32, ..arms }.settings(), [(4, 0), (4, 32)]);
        assert_eq!(arms.settings(), [(0, 0), (4, 0)]);
        // The column names the pool the server makes of a task's examples.
        assert_eq!(Arms { pool: 32, ..arms }.with(32).pool, 16);
        assert_eq!(Arms { pool: 32, ..arms }.with(48).pool, 32);
    }
}
