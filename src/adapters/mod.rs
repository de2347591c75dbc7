//! Adapters: the PEFT format ([`peft`]), the on-disk store and the per-task adapter table
//! (state, LRU of resident engine models, pinning).

pub mod peft;

pub use peft::{LlamaDims, LoraAdapter, Module, PeftConfig};
