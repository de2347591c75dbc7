//! Evaluation: answering task test splits through the serving engine path and scoring them.
