//! Adapters: the on-disk [`store`] that keeps every version across restarts (one server per
//! store, held by its lock; corrupt records quarantined), and the per-task [`table`] (state,
//! LRU of resident engine models, pinning, atomic version swaps).
//! The adapter format itself is [`crate::format::peft`].

pub mod store;
pub mod table;

pub use store::{Quarantined, Source, Store, StoreLock};
pub use table::{
    AdapterTable, Limits, Route, State, StoreFull, StoreLimits, TaskInfo, ADAPTER_MODEL_PREFIX,
};
