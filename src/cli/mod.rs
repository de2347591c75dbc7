//! The command line: one thin function per subcommand over the library.

use clap::{Parser, Subcommand};

pub mod collect;

#[derive(Debug, Parser)]
#[command(name = "mistralrs-dnd", version, about = "Drag-and-Drop LoRA plugin for mistral.rs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a LoRA per task and keep its late checkpoints.
    Collect(collect::CollectArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Collect(a) => collect::run(a),
    }
}
