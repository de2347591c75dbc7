//! mistralrs-dnd: a mistral.rs plugin that specialises a model per task with Drag-and-Drop
//! (DnD) LoRA generation.
//!
//! Data flows one way:
//! - serving: request -> [`server`] (tagging, admin, metrics) -> [`adapters`] (table, store)
//!   -> [`engine`] (mistral.rs models);
//! - specialisation: prompts -> [`generator`] (encoder, decoder, detokeniser) -> adapter
//!   store -> engine.
//!
//! [`training`] builds the generator's training data and trains it (its forward pass also
//! scores the server's adapter library, `server::specialise::library`), [`eval`] measures it,
//! [`bench`] times serving and generation, [`assets`] fetches the real models offline,
//! [`cli`] is the command line over all of it.

pub mod adapters;
pub mod assets;
pub mod bench;
pub mod cli;
pub mod engine;
pub mod eval;
pub mod format;
pub mod generator;
pub mod server;
pub mod tasks;
pub mod testing;
pub mod training;
