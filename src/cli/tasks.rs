//! `mistralrs-dnd tasks`: the built-in suite as a markdown table, and its export to task
//! files (the JSONL format every command that takes tasks reads).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;

use crate::training::taskfile::export_suite;
use crate::training::tasks::{builtin_suite, SuiteConfig};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Write each task as DIR/NAME.jsonl.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Seed of the built-in suite's questions.
    #[arg(long, default_value_t = SuiteConfig::default().seed)]
    pub suite_seed: u64,
    /// Training examples per task.
    #[arg(long, default_value_t = SuiteConfig::default().train)]
    pub train_size: usize,
    /// Test examples per task.
    #[arg(long, default_value_t = SuiteConfig::default().test)]
    pub test_size: usize,
}

pub fn run(args: Args) -> Result<()> {
    let suite = builtin_suite(&SuiteConfig {
        seed: args.suite_seed,
        train: args.train_size,
        test: args.test_size,
    })?;
    println!("| family | task | source | scoring | train / test | example |");
    println!("|---|---|---|---|---|---|");
    for t in &suite {
        let source = match t.family.as_str() {
            "lexical" => "WordNet 3.0",
            _ => "procedural",
        };
        let ex = &t.test[0];
        let prompt = ex.prompt.replace('\n', " ").replace('|', "\\|");
        println!(
            "| {} | {} | {source} | {:?} | {} / {} | {prompt} -> `{}` |",
            t.family,
            t.name,
            t.scoring,
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
