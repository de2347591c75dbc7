//! The integration tests, in one binary so that CI links few executables.

mod common;
mod eval;
mod fuzz;
mod kernel;
mod kill;
mod kv_cache;
mod layers;
mod real_models;
mod server;
mod sft;
mod shared_base;
mod specialise;

/// Counts the heap's live bytes and their peak (`common::heap`), which `kv_cache` reads in
/// a child process that runs one test.
#[global_allocator]
static HEAP: common::heap::Counting = common::heap::Counting;
