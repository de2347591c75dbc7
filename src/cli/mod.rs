//! The command line: one thin function per subcommand over the library.

use clap::{Parser, Subcommand};

pub mod assets;
pub mod bench;
pub mod collect;
pub mod eval;
pub mod generate;
pub mod serve;
pub mod tasks;
pub mod train;

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
    /// Fetch, check and convert the real models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).
    Assets(assets::Args),
    /// Run the OpenAI-compatible server with the plugin.
    Serve(serve::Args),
    /// Generate a LoRA adapter from a task's prompts (or create a random generator).
    Generate(generate::Args),
    /// Benchmarks that print their numbers and setup (`bench hotload`, `bench generator`,
    /// `bench throughput`, `bench time-to-adapter`, `bench overhead`, `bench tenants`).
    Bench(bench::Args),
    /// List the built-in task suite (markdown table) and export it as task files.
    Tasks(tasks::Args),
    /// Train a LoRA per task and keep its late checkpoints.
    Collect(collect::CollectArgs),
    /// Train the generator's decoder on a collection's checkpoints.
    Train(train::Args),
    /// Score the base model and adapters on tasks' test splits through the serving path.
    Eval(eval::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Assets(a) => assets::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Tasks(a) => tasks::run(a),
        Command::Collect(a) => collect::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
    }
}
