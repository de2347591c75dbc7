//! The collection format: the folder [`super::collect`] writes, one LoRA run per task with
//! its late checkpoints, which the generator trainer and held-out evaluation read through
//! [`Collection`].
//!
//! Layout:
//!
//! ```text
//! OUT/collect.json                 settings of the whole collection (checked on resume)
//! OUT/TASK/done.json               the task's marker: written last, then the folder renamed
//! OUT/TASK/task.jsonl              the task itself (taskfile format): the prompts the
//!                                  generator is conditioned on, and the test split
//! OUT/TASK/step-000051/            a PEFT folder (LoraAdapter::write_peft) + meta.json
//! OUT/.partial-TASK/               a task being trained; never read as a result
//! OUT/.partial-TASK/resume/        its resume state (LoRA weights, AdamW moments, the step,
//!                                  losses and checkpoints so far), replaced every few steps
//! ```
//!
//! A task is trained into `.partial-TASK`, its `done.json` is written and synced, its resume
//! state removed, and only then is the folder renamed to `TASK`: a folder named after a task
//! is always complete. A killed run leaves at most one partial folder; the next run
//! continues it from its resume state (a multi-task LoRA of 1000 steps is hours here), or
//! trains the task again from the start where there is none. Every task's randomness (LoRA
//! init, example order) derives from `(seed, task name)` alone, so a resumed collection
//! writes the same bytes as an uninterrupted one (a test checks this).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::lora::{LoraConfig, TrainConfig};
use crate::format::peft::CONFIG_FILE;
use crate::tasks::taskfile::read_task_file;
use crate::tasks::Task;

pub const SETTINGS_FILE: &str = "collect.json";
pub const DONE_FILE: &str = "done.json";
pub const META_FILE: &str = "meta.json";
pub const TASK_FILE: &str = "task.jsonl";

/// Settings of a collection: the LoRA run of every task, and how many checkpoints it keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectConfig {
    /// The run of each task; its `seed` is the collection seed, each task derives its own.
    pub train: TrainConfig,
    /// A checkpoint is saved after each of the last `checkpoints` steps.
    pub checkpoints: usize,
}

impl Default for CollectConfig {
    /// 64 steps of batch 4 with a shared frozen A (seed 0), the last 40 kept: sized so that
    /// the built-in suite collects in under an hour on 2 cores.
    fn default() -> Self {
        Self {
            train: TrainConfig {
                steps: 64,
                lora: LoraConfig {
                    frozen_a_seed: Some(0),
                    ..LoraConfig::default()
                },
                ..TrainConfig::default()
            },
            checkpoints: 40,
        }
    }
}

impl CollectConfig {
    /// The steps (1-based, after the update) that are saved.
    pub fn saved_steps(&self) -> std::ops::RangeInclusive<usize> {
        let steps = self.train.steps;
        (steps + 1 - self.checkpoints.min(steps)).max(1)..=steps
    }
}

/// `meta.json` beside each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub task: String,
    /// Optimiser steps taken (1-based).
    pub step: usize,
    /// Training loss of this step's batch, before its update.
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f64,
    /// The task's seed (derived from the collection seed and the task name).
    pub seed: u64,
}

/// `done.json`: written when every checkpoint of a task is on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    pub task: String,
    pub family: String,
    /// sha256 of the task's training examples, to notice a changed task on resume.
    pub train_hash: String,
    pub seed: u64,
    pub steps: usize,
    pub checkpoints: Vec<String>,
    /// Training loss of every step.
    pub losses: Vec<f32>,
    pub seconds: f64,
    /// The command line that trained it, when the caller gave one (a generator trained on
    /// this checkpoint copies it into its `train.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// The folder name of the checkpoint after `step` (1-based).
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// A collection folder, read.
#[derive(Debug, Clone)]
pub struct Collection {
    dir: PathBuf,
}

impl Collection {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of a completed task, or `None` while it is not complete.
    pub fn completed(&self, task: &str) -> Option<PathBuf> {
        let dir = self.dir.join(task);
        dir.join(DONE_FILE).is_file().then_some(dir)
    }

    /// The completed tasks, by name.
    pub fn tasks(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.') && self.completed(n).is_some())
            .collect();
        names.sort();
        Ok(names)
    }

    /// A completed task's `done.json`.
    pub fn done(&self, task: &str) -> Result<TaskDone> {
        read_json(&self.dir.join(task).join(DONE_FILE))
    }

    /// The task a run was trained on (its `task.jsonl`).
    pub fn task(&self, task: &str) -> Result<Task> {
        read_task_file(&self.dir.join(task).join(TASK_FILE))
    }

    /// The PEFT folder of a task's checkpoint after `step`.
    pub fn checkpoint(&self, task: &str, step: usize) -> PathBuf {
        self.dir.join(task).join(checkpoint_name(step))
    }

    /// The last checkpoint each completed task kept.
    pub fn final_checkpoints(&self) -> Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for name in self.tasks()? {
            let last = std::fs::read_dir(self.dir.join(&name))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(CONFIG_FILE).is_file())
                .max();
            if let Some(last) = last {
                out.insert(name, last);
            }
        }
        Ok(out)
    }

    /// The settings the collection was made with (`collect.json`).
    pub fn settings(&self) -> Result<CollectConfig> {
        read_json(&self.dir.join(SETTINGS_FILE))
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
