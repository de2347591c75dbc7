//! Training: LoRA training with checkpoint collection, and generator training. The tasks
//! they train on are [`crate::tasks`].
//!
//! - [`llama`]: the trainer's differentiable llama (custom-gradient ops, attention, MLP,
//!   blocks) and its data pipeline (chat template, batches);
//! - [`lora`]: the LoRA weights on that llama, and their trainer;
//! - [`collect`]: one LoRA run per task, a checkpoint at every late step (DnD section 5);
//! - [`collection`]: the folder `collect` writes, and its reader [`collection::Collection`];
//! - [`generator`]: the generator's decoder trained on those checkpoints (DnD section 4),
//!   or end to end through the base model ([`sft`]);
//! - [`states`]: the base model's own states of a task's examples, a condition the
//!   generator can read instead of MiniLM's (`train --read-states`);
//! - [`optim`]: what both trainers optimise with (AdamW, the warm-up + cosine schedule,
//!   gradient clipping, progress bar and step budget).

pub mod collect;
pub mod collection;
pub mod generator;
pub mod llama;
pub mod lora;
pub mod optim;
pub mod sft;
pub mod states;
