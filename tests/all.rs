//! The integration tests, in one binary so that CI links few executables.

mod common;
mod eval;
mod fuzz;
mod kernel;
mod kill;
mod layers;
mod real_models;
mod server;
mod sft;
mod shared_base;
mod specialise;
