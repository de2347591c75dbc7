//! The ground floor: formats and file conventions every other layer reads or writes, and
//! which therefore import nothing above them.
//!
//! - [`peft`]: a LoRA adapter as a PEFT folder (the unit the table, store, engine, generator
//!   and trainers exchange), and the model shapes it is checked against;
//! - [`rng`]: the seeded random stream whose exact values the frozen A and the task suite
//!   depend on;
//! - [`fsio`]: crash-safe file and folder writes.

pub mod fsio;
pub mod peft;
pub mod rng;
pub use peft::{LlamaDims, LoraAdapter, Module, PeftConfig};
