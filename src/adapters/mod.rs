//! Adapters: the PEFT format ([`peft`]), the on-disk [`store`] that keeps every version
//! across restarts, and the per-task [`table`] (state, LRU of resident engine models,
//! pinning, atomic version swaps).

pub mod peft;
pub mod store;
pub mod table;

pub use peft::{LlamaDims, LoraAdapter, Module, PeftConfig};
pub use store::{Source, Store};
pub use table::{AdapterTable, Limits, Route, State, TaskInfo};
