//! The DnD generator: prompts -> frozen MiniLM encoder -> hyper-convolutional decoder ->
//! checkpoint detokeniser -> [`crate::adapters::LoraAdapter`].
