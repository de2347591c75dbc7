//! `mistralrs-dnd serve`: the OpenAI-compatible server with the plugin.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;

use crate::server::{self, Config};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration (see configs/ and plugin.toml).
    #[arg(long, default_value = "configs/default.toml")]
    pub config: PathBuf,
    /// Address to listen on (overrides server.listen).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub fn run(args: Args) -> Result<()> {
    let mut config = Config::from_file(&args.config)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    tokio::runtime::Runtime::new()?.block_on(server::serve(config))
}
