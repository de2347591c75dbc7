//! Training: the task suite, LoRA training with checkpoint collection, and generator training.
//!
//! - [`tasks`]: the built-in procedural task suite and its scorers;
//! - [`wordnet`]: the WordNet word lists the `lexical` tasks draw from;
//! - [`taskfile`]: tasks as JSONL files (read and write);
//! - [`llama`]: the trainer's differentiable llama (custom-gradient ops, attention, MLP,
//!   blocks) and its data pipeline (chat template, batches);
//! - [`lora`]: the LoRA weights on that llama, and their trainer;
//! - [`collect`]: one LoRA run per task, a checkpoint at every late step (DnD section 5);
//! - [`generator`]: the generator's decoder trained on those checkpoints (DnD section 4);
//! - [`optim`]: what both trainers optimise with (AdamW, the warm-up + cosine schedule,
//!   gradient clipping, progress bar and step budget).

pub mod collect;
pub mod generator;
pub mod llama;
pub mod lora;
pub mod optim;
pub mod taskfile;
pub mod tasks;
pub mod wordnet;

/// Writes a file so that readers see the old file or the whole new one: a synced temp file
/// in the same folder, renamed into place.
pub(crate) fn write_file_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
