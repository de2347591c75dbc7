//! The on-disk adapter store: every adapter version the server has accepted, so a restart
//! loses nothing.
//!
//! ```text
//! STORE/{task}/meta.json              task record (current version, pin, history)
//! STORE/{task}/v-{hash}/adapter_config.json
//! STORE/{task}/v-{hash}/adapter_model.safetensors
//! ```
//! Versions are written atomically before `meta.json` points at them, and `meta.json` is
//! replaced atomically, so a crash leaves either the old or the new record.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::format::fsio::write_atomic;
use crate::format::peft::{self, LoraAdapter};

/// Where an adapter version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Upload,
    Path,
    Generated,
}

/// One stored version of a task's adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub hash: String,
    pub source: Source,
    pub rank: usize,
    pub target_modules: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    /// Bytes of the stored weights.
    pub bytes: u64,
}

/// A task's record in the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: String,
    #[serde(default)]
    pub pinned: bool,
    /// Hash of the version in use.
    #[serde(default)]
    pub current: Option<String>,
    /// Every version, oldest first.
    #[serde(default)]
    pub versions: Vec<Version>,
}

impl TaskRecord {
    pub fn current_version(&self) -> Option<&Version> {
        let cur = self.current.as_ref()?;
        self.versions.iter().find(|v| &v.hash == cur)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating adapter store {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.root.join(task)
    }

    /// Folder of one version (a PEFT folder).
    pub fn version_dir(&self, task: &str, hash: &str) -> PathBuf {
        self.task_dir(task).join(format!("v-{hash}"))
    }

    /// Every task record in the store; unreadable records are skipped with a warning.
    pub fn load_all(&self) -> Result<Vec<TaskRecord>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let meta = entry.path().join("meta.json");
            if !meta.exists() {
                continue;
            }
            match std::fs::read(&meta)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<TaskRecord>(&b)?))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(path = %meta.display(), error = %e, "skipping unreadable task record")
                }
            }
        }
        out.sort_by(|a, b| a.task.cmp(&b.task));
        Ok(out)
    }

    pub fn get(&self, task: &str) -> Result<Option<TaskRecord>> {
        let meta = self.task_dir(task).join("meta.json");
        if !meta.exists() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&std::fs::read(&meta)?)?))
    }

    /// Writes a task record atomically.
    pub fn save(&self, record: &TaskRecord) -> Result<()> {
        let path = self.task_dir(&record.task).join("meta.json");
        write_atomic(&path, &serde_json::to_vec_pretty(record)?)
    }

    /// Stores a new version of `task`'s adapter and makes it current. Returns the record.
    pub fn put(&self, task: &str, adapter: &LoraAdapter, source: Source) -> Result<TaskRecord> {
        let hash = adapter.content_hash()?;
        let dir = self.version_dir(task, &hash);
        if !dir.join(peft::WEIGHTS_FILE).exists() {
            adapter.write_peft(&dir)?;
        }
        let mut record = self.get(task)?.unwrap_or_else(|| TaskRecord {
            task: task.to_string(),
            ..Default::default()
        });
        if !record.versions.iter().any(|v| v.hash == hash) {
            record.versions.push(Version {
                hash: hash.clone(),
                source,
                rank: adapter.config.r,
                target_modules: adapter.config.target_modules.clone(),
                created: now_secs(),
                bytes: adapter.weight_bytes() as u64,
            });
        }
        record.current = Some(hash);
        self.save(&record)?;
        Ok(record)
    }

    /// Deletes everything stored for `task`.
    pub fn forget(&self, task: &str) -> Result<()> {
        let dir = self.task_dir(task);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }
}
