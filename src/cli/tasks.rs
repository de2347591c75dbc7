//! `mistralrs-dnd tasks`: the built-in suite as a markdown table, and its export to task
//! files (the JSONL format every command that takes tasks reads).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::collect::SuiteArgs;
use crate::tasks::builtin_suite;
use crate::tasks::taskfile::export_suite;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Write each task as DIR/NAME.jsonl.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub suite: SuiteArgs,
}

pub fn run(args: Args) -> Result<()> {
    let suite = builtin_suite(&args.suite.config())?;
    println!("| family | task | source | scoring | train / test | example |");
    println!("|---|---|---|---|---|---|");
    for t in &suite {
        let source = match (t.family.as_str(), t.name.as_str()) {
            ("lexical" | "morphology" | "semantics", _) | ("world", "instance_of") => "WordNet 3.0",
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
