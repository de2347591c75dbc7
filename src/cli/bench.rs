//! `mistralrs-dnd bench ...`: the arguments of the benchmarks in [`crate::bench`] (which
//! say what each one measures and prints).

use std::path::PathBuf;

use anyhow::Result;

use crate::assets::{given_or_default, Assets};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Hot-load latency (upload -> first token through the adapter), engine build time, RSS
    /// per resident adapter and idle CPU, on the real SmolLM2, shared and merged side by side.
    Hotload(HotloadArgs),
    /// Time prompt encoding, decoding and detokenising of one adapter.
    Generator(GeneratorArgs),
    /// Time-to-adapter of automatic specialisation on SmolLM2: from the K-th request of a
    /// task to the first token through its generated adapter, with its parts.
    TimeToAdapter(TimeToAdapterArgs),
    /// Decode throughput under 1, 4, 8 and 16 concurrent streams, on the base model and
    /// spread over 4 adapters: tokens/s, time to first token, latency.
    Throughput(ThroughputArgs),
    /// The plugin's cost per request: the stock mistral.rs router alone vs the plugin's, on
    /// one engine, untagged and tagged, at 1, 8 and 32 concurrent requests, rounds
    /// interleaved: requests/s, p50/p99 latency, ratio to the stock router and the bar
    /// (>= 0.99x, p99 within +5 %).
    Overhead(OverheadArgs),
    /// Many tenants: 1000 API keys in keys mode, a small resident capacity and K, chats for
    /// Zipf-drawn tenants for 10 minutes: failures other than documented 429/503, peak RSS
    /// against a stated ceiling, evictions and reloads, admin API p50/p99.
    Tenants(TenantsArgs),
    /// How well each candidate condition of the generator (MiniLM on prompts, examples or
    /// answers; SmolLM2's mid-way states read in context) tells the suite's tasks apart from
    /// two batches of a few examples, rule tasks and the others apart, and how much of an
    /// unseen rule value the seen ones span. Nothing trained.
    Condition(ConditionArgs),
    /// Tasks answered as a tenant's requests are, through the whole product: examples
    /// given, K tagged requests, the generation and its check, then the test prompts
    /// tagged; on two servers, without and with plugin.demonstrations, side by side.
    Served(ServedArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServedArgs {
    /// Tasks (built-in suite tasks), one after the other.
    #[arg(long, value_delimiter = ',', required_unless_present = "report")]
    pub tasks: Vec<String>,
    /// An earlier run's served.json: its table written again, nothing run.
    #[arg(long, conflicts_with = "tasks")]
    pub report: Option<PathBuf>,
    /// Generator folder (default: the shipped SmolLM2 generator).
    #[arg(long, default_value = crate::generator::SHIPPED_SMOLLM2)]
    pub generator: PathBuf,
    /// Examples generator folder (plugin.examples_generator; default: the shipped one).
    #[arg(long, default_value = crate::generator::SHIPPED_SMOLLM2_EXAMPLES)]
    pub examples_generator: PathBuf,
    /// Serve without an examples generator: the generator makes every adapter.
    #[arg(long)]
    pub no_examples_generator: bool,
    /// Training examples given to each task (the check reads those after the first N
    /// when there are at least 8 more).
    #[arg(long, default_value_t = 32)]
    pub examples: usize,
    /// plugin.demonstrations of the second server.
    #[arg(long, default_value_t = 4)]
    pub demonstrations: usize,
    /// Both servers show --demonstrations examples: the first server a task's first, the
    /// second each prompt's nearest of the first this many (plugin.demonstrations_pool).
    #[arg(long, default_value_t = 0)]
    pub pool: usize,
    /// Test prompts answered per task.
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
    /// Serving dtype.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Folder for served.json and served.md.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ConditionArgs {
    /// Examples per batch.
    #[arg(long, default_value_t = 8)]
    pub examples: usize,
    /// SmolLM2 blocks after which its states are read (1-based).
    #[arg(long, value_delimiter = ',', default_value = "8,15,22,30")]
    pub layers: Vec<usize>,
    /// MiniLM's rows only: SmolLM2 not run (it takes most of the time).
    #[arg(long)]
    pub minilm_only: bool,
    /// Leave these tasks out (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub except: Vec<String>,
    #[command(flatten)]
    pub suite: super::collect::SuiteArgs,
}

#[derive(Debug, clap::Args)]
pub struct OverheadArgs {
    /// Model both routers serve: tiny (the tests' 2-layer llama, random weights: the
    /// layer's cost shows most) or smollm2.
    #[arg(long, default_value = "tiny")]
    pub model: crate::bench::overhead::Model,
    /// Serving dtype.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Concurrent requests per cell (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub levels: Vec<usize>,
    /// Rounds; each runs every cell on both routers, the order swapped every round.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Requests per cell, router and round.
    #[arg(long, default_value_t = 128)]
    pub requests: usize,
    /// max_tokens of every chat.
    #[arg(long, default_value_t = 4)]
    pub tokens: usize,
    /// Asset folder for smollm2 (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// A control run: the stock router on both ports, in the plugin's place too, so that
    /// the spread of the ratios is the bench's own noise.
    #[arg(long)]
    pub stock_twice: bool,
    /// A probe run: the plugin's router with a layer in the tagging layer's place that
    /// does one part of its work (or nothing), to tell where its cost is.
    #[arg(long, conflicts_with = "stock_twice")]
    pub probe: Option<crate::bench::overhead::Probe>,
}

#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    /// Tenants, each with its own API key.
    #[arg(long, default_value_t = 1000)]
    pub tenants: usize,
    /// Length of the run.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Zipf exponent of the tenant draw (tenant i has weight 1/(i+1)^s); 0: uniform.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Prompts of a tenant that trigger its generation (plugin.prompts_k).
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Resident adapter models at most (plugin.max_resident).
    #[arg(long, default_value_t = 2)]
    pub resident: usize,
    /// Tenants given a random adapter through the admin API before the run.
    #[arg(long, default_value_t = 32)]
    pub uploaded: usize,
    /// Requests per minute of every key.
    #[arg(long, default_value_t = 600)]
    pub rpm: u32,
    /// max_tokens of every chat.
    #[arg(long, default_value_t = 4)]
    pub tokens: usize,
    /// Generator folder for automatic specialisation.
    #[arg(long, default_value = crate::generator::SHIPPED_SMOLLM2)]
    pub generator: PathBuf,
    /// No automatic specialisation (only the uploaded adapters).
    #[arg(long)]
    pub no_generator: bool,
    /// Serving dtype.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Milliseconds between two calls of GET /admin/adapters.
    #[arg(long, default_value_t = 250)]
    pub admin_every_ms: u64,
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
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
    /// Give each task this many of its training examples first, so that the no-harm
    /// check runs (and an examples generator reads them).
    #[arg(long, default_value_t = 0)]
    pub examples: usize,
    /// An adapter library (`plugin.library`, a `collect` folder) for the selection.
    #[arg(long)]
    pub library: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct HotloadArgs {
    /// Adapters to hot-load, one after the other (all stay resident).
    #[arg(long, default_value_t = 5)]
    pub n: usize,
    /// Serving dtype.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Adapter modes (comma-separated: shared, merged), one server each, one table.
    #[arg(long, value_delimiter = ',', default_value = "shared,merged")]
    pub modes: Vec<String>,
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
        Bench::Hotload(a) => {
            let modes = a
                .modes
                .iter()
                .map(|m| crate::engine::AdapterMode::parse(m))
                .collect::<Result<Vec<_>>>()?;
            tokio::runtime::Runtime::new()?
                .block_on(crate::bench::hotload::run(a.n, &a.dtype, &modes, a.assets))
        }
        Bench::Condition(a) => {
            let tasks = crate::tasks::builtin_suite(&a.suite.config())?;
            let tasks = crate::tasks::without(tasks, &a.except)?;
            crate::bench::condition::run(
                &tasks,
                a.examples,
                if a.minilm_only { &[] } else { &a.layers },
                &given_or_default(None, Assets::minilm)?,
                &given_or_default(None, Assets::smollm2)?,
            )
        }
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
        Bench::Overhead(a) => tokio::runtime::Runtime::new()?.block_on(
            crate::bench::overhead::run(&crate::bench::overhead::Setup {
                model: a.model,
                dtype: a.dtype,
                levels: a.levels,
                rounds: a.rounds,
                requests: a.requests,
                tokens: a.tokens,
                assets: a.assets,
                place: match (a.stock_twice, a.probe) {
                    (true, _) => crate::bench::overhead::Place::Stock,
                    (false, Some(p)) => crate::bench::overhead::Place::Probe(p),
                    (false, None) => crate::bench::overhead::Place::Plugin,
                },
            }),
        ),
        Bench::Tenants(a) => tokio::runtime::Runtime::new()?.block_on(crate::bench::tenants::run(
            &crate::bench::tenants::Setup {
                tenants: a.tenants,
                minutes: a.minutes,
                concurrency: a.concurrency,
                zipf: a.zipf,
                k: a.k,
                resident: a.resident,
                uploaded: a.uploaded,
                rpm: a.rpm,
                tokens: a.tokens,
                generator: (!a.no_generator).then_some(a.generator),
                dtype: a.dtype,
                admin_every: std::time::Duration::from_millis(a.admin_every_ms),
                assets: a.assets,
            },
        )),
        Bench::Served(ServedArgs {
            report: Some(path),
            demonstrations,
            pool,
            ..
        }) => crate::bench::served::report(
            &path,
            crate::bench::served::Arms {
                demonstrations,
                pool,
            },
        ),
        Bench::Served(a) => tokio::runtime::Runtime::new()?.block_on(crate::bench::served::run(
            &a.tasks,
            &a.generator,
            &a.dtype,
            a.assets,
            crate::bench::served::Options {
                examples_generator: (!a.no_examples_generator).then_some(a.examples_generator),
                examples: a.examples,
                arms: crate::bench::served::Arms {
                    demonstrations: a.demonstrations,
                    pool: a.pool,
                },
                limit: a.limit,
                out: a.out,
            },
        )),
        Bench::TimeToAdapter(a) => {
            tokio::runtime::Runtime::new()?.block_on(crate::bench::time_to_adapter::run(
                &a.tasks,
                &a.generator,
                &a.dtype,
                a.assets,
                crate::bench::time_to_adapter::Options {
                    examples: a.examples,
                    library: a.library,
                },
            ))
        }
    }
}
