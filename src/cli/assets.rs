//! `mistralrs-dnd assets`: fetch, check, unpack and convert the real models.

use std::path::PathBuf;

use anyhow::Result;

use crate::assets::{default_root, Assets};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Asset folder (default: $DND_ASSETS or ./assets).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let assets = Assets::new(args.dir.unwrap_or_else(default_root));
    assets.ensure()?;
    println!(
        "base model (Hugging Face layout): {}",
        assets.smollm2().display()
    );
    println!(
        "prompt encoder:                   {}",
        assets.minilm().display()
    );
    Ok(())
}
