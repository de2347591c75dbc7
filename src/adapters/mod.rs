//! Adapters: the on-disk [`store`] that keeps every version across restarts, and the
//! per-task [`table`] (state, LRU of resident engine models, pinning, atomic version swaps).
//! The adapter format itself is [`crate::format::peft`].

pub mod store;
pub mod table;

pub use store::{Source, Store};
pub use table::{AdapterTable, Limits, Route, State, TaskInfo, ADAPTER_MODEL_PREFIX};
