//! Training: the task suite, LoRA training with checkpoint collection, and decoder training.
