//! `mistralrs-dnd bench ...`: the arguments of the benchmarks in [`crate::bench`] (which
//! say what each one measures and prints).

use std::path::PathBuf;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Hot-load latency (upload -> first token through the adapter) and RSS per resident
    /// adapter, on the real SmolLM2 base model.
    Hotload(HotloadArgs),
    /// Time prompt encoding, decoding and detokenising of one adapter.
    Generator(GeneratorArgs),
    /// Time-to-adapter of automatic specialisation on SmolLM2: from the K-th request of a
    /// task to the first token through its generated adapter, with its parts.
    TimeToAdapter(TimeToAdapterArgs),
    /// Decode throughput under 1, 4, 8 and 16 concurrent streams, on the base model and
    /// spread over 4 adapters: tokens/s, time to first token, latency.
    Throughput(ThroughputArgs),
}

#[derive(Debug, clap::Args)]
pub struct ThroughputArgs {
    /// Serving dtypes (comma-separated, e.g. f16,f32: each its own server, one table).
    #[arg(long, value_delimiter = ',', default_value = "f16")]
    pub dtype: Vec<String>,
    /// Concurrent streams per level (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    pub levels: Vec<usize>,
    /// Resident adapters the second half of the table spreads the streams over (0: base only).
    #[arg(long, default_value_t = 4)]
    pub adapters: usize,
    /// Tokens each stream generates.
    #[arg(long, default_value_t = 48)]
    pub tokens: usize,
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct TimeToAdapterArgs {
    /// Tasks to specialise, one after the other (built-in suite tasks, their test prompts).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "add,uppercase,count_items,month_shift,parity"
    )]
    pub tasks: Vec<String>,
    /// Generator folder (default: the shipped SmolLM2 generator).
    #[arg(long, default_value = crate::generator::SHIPPED_SMOLLM2)]
    pub generator: PathBuf,
    /// Serving dtype.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct HotloadArgs {
    /// Adapters to hot-load, one after the other (all stay resident).
    #[arg(long, default_value_t = 5)]
    pub n: usize,
    /// Serving dtype.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct GeneratorArgs {
    /// Generator folder; default: a randomly initialised SmolLM2-135M default generator.
    #[arg(long)]
    pub generator: Option<PathBuf>,
    /// Prompt encoder folder (default: all-MiniLM-L6-v2 in the asset root, fetched if
    /// missing).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Number of prompts given to the generator.
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    /// Timed runs after one warm-up run; the median is printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

pub fn run(args: Args) -> Result<()> {
    match args.bench {
        Bench::Hotload(a) => tokio::runtime::Runtime::new()?
            .block_on(crate::bench::hotload::run(a.n, &a.dtype, a.assets)),
        Bench::Generator(a) => crate::bench::generator::run(
            a.generator.as_deref(),
            a.encoder.as_deref(),
            a.prompts,
            a.runs,
        ),
        Bench::Throughput(a) => tokio::runtime::Runtime::new()?.block_on(
            crate::bench::throughput::run(&crate::bench::throughput::Setup {
                dtypes: a.dtype,
                levels: a.levels,
                adapters: a.adapters,
                tokens: a.tokens,
                assets: a.assets,
            }),
        ),
        Bench::TimeToAdapter(a) => tokio::runtime::Runtime::new()?.block_on(
            crate::bench::time_to_adapter::run(&a.tasks, &a.generator, &a.dtype, a.assets),
        ),
    }
}
