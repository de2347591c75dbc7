//! Training: LoRA training with checkpoint collection, and decoder training. The tasks they
//! train on are [`crate::tasks`].
//!
//! - [`lora`]: a differentiable llama forward pass with LoRA, and its trainer;
//! - [`collect`]: one LoRA run per task, a checkpoint at every late step (DnD section 5);
//! - [`decoder`]: the generator's decoder trained on those checkpoints (DnD section 4).

pub mod collect;
pub mod decoder;
pub mod lora;
