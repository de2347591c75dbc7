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

/// This process's command line as `mistralrs-dnd ARGS`, whatever the binary's path, after
/// the suite version it ran with (`DND_SUITE_VERSION=3 ...`, the default spelt out: a later
/// version adds tasks to "every task but ..." pools): what a run records about how it was
/// made. A `--suite-version` flag among the arguments still wins when the line is rerun.
pub fn command_line() -> String {
    let version = std::env::var(collect::SUITE_VERSION_ENV)
        .unwrap_or_else(|_| crate::tasks::DEFAULT_SUITE.to_string());
    let env = format!("{}={version}", collect::SUITE_VERSION_ENV);
    let args = std::env::args_os().skip(1);
    shell_line(
        std::iter::once(env)
            .chain(std::iter::once("mistralrs-dnd".into()))
            .chain(args.map(|a| a.to_string_lossy().into_owned())),
    )
}

/// Arguments joined into one line a shell reads back as the same arguments: anything but
/// plain characters single-quoted.
fn shell_line(args: impl Iterator<Item = String>) -> String {
    let quote = |a: String| {
        let plain = a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,/=:+@%".contains(c));
        match plain && !a.is_empty() {
            true => a,
            false => format!("'{}'", a.replace('\'', r"'\''")),
        }
    };
    args.map(quote).collect::<Vec<_>>().join(" ")
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

#[cfg(test)]
mod tests {
    #[test]
    fn shell_line_quotes_what_a_shell_would_split() {
        let args = ["train", "--out", "data/g 1", "it's", "", "--except", "a,b"];
        assert_eq!(
            super::shell_line(args.iter().map(|a| a.to_string())),
            r"train --out 'data/g 1' 'it'\''s' '' --except a,b"
        );
    }
}
