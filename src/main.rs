use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Logs on stderr: stdout is what a command gives (`tasks` prints shell lists that the
    // README's recipes `eval`; a log line there, such as an asset fetch's, broke them).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,mistralrs_core=warn".into()),
        )
        .init();
    mistralrs_dnd::cli::run(mistralrs_dnd::cli::Cli::parse())
}
