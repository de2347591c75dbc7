//! The command line: one thin function per subcommand over the library.

pub mod bench;
pub mod generate;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mistralrs-dnd",
    version,
    about = "Drag-and-Drop LoRA plugin for mistral.rs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a LoRA adapter from a task's prompts (or create a random generator).
    Generate(generate::Args),
    /// Measurements (`bench generator`).
    Bench(bench::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
