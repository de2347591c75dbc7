//! Formats every layer uses: the ground floor of the crate, below every other module.

pub mod frozen_a;
pub mod rng;
