//! The engine side: loading base and adapter pipelines into mistral.rs 0.8.1.
