//! `mistralrs-dnd tasks`: the built-in suite as a markdown table, and its export to task
//! files (the JSONL format every command that takes tasks reads); the external evaluation
//! set's export.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::collect::SuiteArgs;
use crate::tasks::external::external_tasks;
use crate::tasks::taskfile::export_suite;
use crate::tasks::{builtin_suite, holdout_every};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Write each task as DIR/NAME.jsonl.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub suite: SuiteArgs,
    /// Instead of the table, print the split of `train --hold-out-every K --fold F` as
    /// shell assignments: `H` the held-out tasks, `P` and `G` the 1st, 3rd, ... and the
    /// 2nd, 4th, ... of the others in suite order (the two halves of README's split runs).
    #[arg(long)]
    pub hold_out_every: Option<usize>,
    /// With --hold-out-every: the fold.
    #[arg(long, default_value_t = 0, requires = "hold_out_every")]
    pub fold: usize,
    /// Instead, write the external evaluation set (six tasks from quiz files the suite does
    /// not read, never trained on) as DIR/NAME.jsonl, for `eval --tasks DIR/*.jsonl`.
    #[arg(long, conflicts_with_all = ["export", "hold_out_every"])]
    pub export_external: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(dir) = args.export_external {
        let tasks = external_tasks(args.suite.config().seed)?;
        export_suite(&tasks, &dir)?;
        for t in &tasks {
            println!(
                "{}: {} train / {} test, e.g. {:?} -> {:?}",
                t.name,
                t.train.len(),
                t.test.len(),
                t.test[0].prompt,
                t.test[0].answer
            );
        }
        println!("wrote {} task files to {}", tasks.len(), dir.display());
        return Ok(());
    }
    let suite = builtin_suite(&args.suite.config())?;
    if let Some(k) = args.hold_out_every {
        let held = holdout_every(&suite, k, args.fold)?;
        let (mut p, mut g) = (Vec::new(), Vec::new());
        let others = suite.iter().filter(|t| !held.contains(&t.name));
        for (i, t) in others.enumerate() {
            [&mut p, &mut g][i % 2].push(t.name.as_str());
        }
        println!("H={}", held.join(","));
        println!("P={}", p.join(","));
        println!("G={}", g.join(","));
        return Ok(());
    }
    println!("| family | task | source | scoring | train / test | example |");
    println!("|---|---|---|---|---|---|");
    for t in &suite {
        let source = match (t.family.as_str(), t.name.as_str()) {
            ("lexical" | "morphology" | "semantics" | "associations", _)
            | ("world", "instance_of") => "WordNet 3.0",
            ("world", "capital" | "chemical_element") => "bsdgames quiz",
            ("world", _) => "iso-codes",
            _ => "procedural",
        };
        let ex = &t.test[0];
        let prompt = ex.prompt.replace('\n', " ").replace('|', "\\|");
        println!(
            "| {} | {} | {source} | {} | {} / {} | {prompt} -> `{}` |",
            t.family,
            t.name,
            format!("{:?}", t.scoring).to_lowercase(),
            t.train.len(),
            t.test.len(),
            ex.answer
        );
    }
    if let Some(dir) = args.export {
        export_suite(&suite, &dir)?;
        println!("\nwrote {} task files to {}", suite.len(), dir.display());
    }
    Ok(())
}
