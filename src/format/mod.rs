//! The ground floor: formats and file conventions every other layer reads or writes, and
//! which therefore import nothing above them.
//!
//! - [`peft`]: a LoRA adapter as a PEFT folder (the unit the table, store, engine, generator
//!   and trainers exchange), and the model shapes it is checked against;
//! - [`frozen_a`]: the frozen LoRA A matrices shared by a collection and its generator (part
//!   of the adapter format: the generator emits only B);
//! - [`rng`]: the seeded random stream whose exact values the frozen A and the task suite
//!   depend on;
//! - [`fsio`]: crash-safe file and folder writes.

pub mod frozen_a;
pub mod fsio;
pub mod peft;
pub mod rng;
pub use peft::{LlamaDims, LoraAdapter, Module, PeftConfig};
