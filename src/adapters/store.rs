//! The on-disk adapter store: every adapter version the server has accepted, so a restart
//! loses nothing.
//!
//! ```text
//! STORE/{task}/meta.json              task record (current version, pin, history)
//! STORE/{task}/v-{hash}/adapter_config.json
//! STORE/{task}/v-{hash}/adapter_model.safetensors
//! STORE/.store.lock                   held (flock) by the one server using the store
//! STORE/.quarantine/{task}.meta.json.{secs}   corrupt records moved aside
//! STORE/.keys.json                    tenant API keys, hashed (`server::keys`)
//! ```
//! Versions are written atomically before `meta.json` points at them, and `meta.json` is
//! replaced atomically, every write and delete fsynced with its folder, so a crash or a
//! power cut leaves either the old or the new record. What a crash leaves of a write in
//! progress is removed at the next start ([`Store::remove_leftovers`]). A record that does
//! not parse is moved to `.quarantine/` when read, so a new upload starts a clean record.
//! Names starting with `.` are the store's own: task ids may not start with one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::format::fsio::{self, create_dir_durable, sync_dir, write_atomic};
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

const META_FILE: &str = "meta.json";
/// The lock file [`StoreLock`] holds.
pub const LOCK_FILE: &str = ".store.lock";
/// Where corrupt task records are moved.
pub const QUARANTINE_DIR: &str = ".quarantine";

/// A corrupt task record moved to the quarantine folder, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quarantined {
    pub task: String,
    /// Where the record is now (as text: the admin API shows it).
    pub path: String,
    /// Why it could not be read.
    pub error: String,
    /// Unix seconds.
    pub at: u64,
}

/// This process's exclusive hold on a store: an advisory `flock` on `STORE/.store.lock`,
/// which the kernel releases when the process ends however it ends. Two servers on one
/// store would overwrite each other's records and sweep away each other's writes in
/// progress; with the lock, the second one fails to start.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

impl StoreLock {
    /// Takes the lock of the store at `root` (creating both), or fails at once if another
    /// process holds it.
    pub fn acquire(root: &Path) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        create_dir_durable(root)
            .with_context(|| format!("creating adapter store {}", root.display()))?;
        let path = root.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock only reads the descriptor, which `file` owns for this call's length.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                bail!(
                    "adapter store {} is in use by another server (it holds {}); give each server its own plugin.store",
                    root.display(),
                    path.display()
                );
            }
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
        Ok(Self { _file: file })
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Records moved to quarantine by this process (shared by clones).
    quarantined: Arc<Mutex<Vec<Quarantined>>>,
    /// Set by tests: folder deletes fail (shared by clones).
    #[cfg(test)]
    fail_deletes: Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    pub fn open(root: &Path) -> Result<Self> {
        create_dir_durable(root)
            .with_context(|| format!("creating adapter store {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            quarantined: Default::default(),
            #[cfg(test)]
            fail_deletes: Default::default(),
        })
    }

    /// Removes what writes interrupted by a crash left in the store (see
    /// [`fsio::remove_leftovers`]), in its root and every task folder. A writing server's
    /// temp files look the same, so this takes the lock as proof that none is running.
    pub fn remove_leftovers(&self, _lock: &StoreLock) -> Result<usize> {
        let mut handled = fsio::remove_leftovers(&self.root)?;
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() && !entry.file_name().to_string_lossy().starts_with('.')
            {
                handled.extend(fsio::remove_leftovers(&entry.path())?);
            }
        }
        if !handled.is_empty() {
            tracing::info!(store = %self.root.display(), files = ?handled, "removed leftovers of interrupted writes");
        }
        Ok(handled.len())
    }

    /// Corrupt records moved to quarantine since this store was opened.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Every task record in the store (corrupt ones are moved to quarantine, see
    /// [`Store::get`]); records that cannot be read at all are skipped with a warning.
    pub fn load_all(&self) -> Result<Vec<TaskRecord>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let task = entry.file_name().to_string_lossy().into_owned();
            if task.starts_with('.') || !entry.path().join(META_FILE).exists() {
                continue;
            }
            match self.get(&task) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(task, error, "skipping unreadable task record")
                }
            }
        }
        out.sort_by(|a, b| a.task.cmp(&b.task));
        Ok(out)
    }

    /// The task's record. One that does not parse (a disk fault, a bad hand edit) is moved
    /// to quarantine and reads as absent: left in place, it would fail every later upload
    /// for the task, and it is kept (not deleted) for whoever wants to repair it by hand.
    pub fn get(&self, task: &str) -> Result<Option<TaskRecord>> {
        let meta = self.task_dir(task).join(META_FILE);
        let bytes = match std::fs::read(&meta) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", meta.display())),
        };
        match serde_json::from_slice::<TaskRecord>(&bytes) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                self.quarantine(task, format!("{e}"))?;
                Ok(None)
            }
        }
    }

    /// Moves `task`'s record to the quarantine folder and remembers why.
    fn quarantine(&self, task: &str, error: String) -> Result<()> {
        let from = self.task_dir(task).join(META_FILE);
        let dir = self.root.join(QUARANTINE_DIR);
        create_dir_durable(&dir)?;
        let at = now_secs();
        let mut to = dir.join(format!("{task}.{META_FILE}.{at}"));
        let mut n = 1;
        while to.exists() {
            to = dir.join(format!("{task}.{META_FILE}.{at}-{n}"));
            n += 1;
        }
        std::fs::rename(&from, &to)
            .with_context(|| format!("moving corrupt {} to {}", from.display(), to.display()))?;
        sync_dir(&dir);
        sync_dir(&self.task_dir(task));
        tracing::warn!(task, error, path = %to.display(), "corrupt task record moved to quarantine; the next upload for the task starts a clean record");
        self.quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Quarantined {
                task: task.to_string(),
                path: to.display().to_string(),
                error,
                at,
            });
        Ok(())
    }

    /// Writes a task record atomically.
    pub fn save(&self, record: &TaskRecord) -> Result<()> {
        let path = self.task_dir(&record.task).join(META_FILE);
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

    /// Deletes stored versions of `task` (best effort: a version folder left behind is
    /// only unused space, as no record points at it any more).
    pub fn remove_versions(&self, task: &str, hashes: &[String]) {
        for h in hashes {
            let _ = std::fs::remove_dir_all(self.version_dir(task, h));
        }
        sync_dir(&self.task_dir(task));
    }

    /// Deletes everything stored for `task`. The task folder is first renamed to a temp
    /// sibling (`.TASK.tmp-PID`), and the rename fsynced: from then on the task is gone for
    /// a restart too. An error before that changes nothing. Deleting the renamed folder can
    /// fail (a disk fault, a file the server may not delete) or be cut short by a crash:
    /// that is logged, not returned, as the task is already gone; the leftover sweep at the
    /// next start ([`Store::remove_leftovers`]) deletes what is left. Returns whether the
    /// task had a folder.
    pub fn forget(&self, task: &str) -> Result<bool> {
        let dir = self.task_dir(task);
        if !dir.exists() {
            return Ok(false);
        }
        let doomed = fsio::temp_sibling(&dir)?;
        if doomed.exists() {
            // What an earlier forget of this task in this process could not delete.
            let _ = self.remove_dir(&doomed);
        }
        std::fs::rename(&dir, &doomed)
            .with_context(|| format!("moving {} aside to delete it", dir.display()))?;
        sync_dir(&self.root);
        if let Err(e) = self.remove_dir(&doomed) {
            tracing::warn!(task, path = %doomed.display(), error = %e, "deleting a forgotten task's files failed; the next start deletes them");
        }
        Ok(true)
    }

    /// Deletes a folder and what is in it; a test can make it fail as a disk fault would.
    fn remove_dir(&self, dir: &Path) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_deletes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("deletes fail (test)"));
        }
        std::fs::remove_dir_all(dir)
    }

    /// Makes folder deletes fail (or work again), for tests of what a failed delete leaves.
    #[cfg(test)]
    pub(crate) fn fail_deletes(&self, fail: bool) {
        self.fail_deletes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Module;
    use crate::testing::{random_adapter, tiny_dims};

    fn adapter(seed: u64) -> LoraAdapter {
        random_adapter(&tiny_dims(), &[Module::Q, Module::V], 4, seed, 0.5, 0.5).unwrap()
    }

    #[test]
    fn a_second_lock_on_one_store_fails_naming_the_store_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let first = StoreLock::acquire(&root).unwrap();
        let err = format!("{:#}", StoreLock::acquire(&root).unwrap_err());
        assert!(err.contains(&root.display().to_string()), "{err}");
        assert!(err.contains("in use by another server"), "{err}");
        drop(first);
        StoreLock::acquire(&root).unwrap();
    }

    #[test]
    fn leftovers_are_removed_from_the_root_and_task_folders_but_not_the_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        store.put("t", &adapter(1), Source::Upload).unwrap();
        let t = store.root().join("t");
        std::fs::write(t.join(".meta.json.tmp-77"), b"{").unwrap();
        std::fs::create_dir(t.join(".v-abc.tmp-77")).unwrap();
        std::fs::create_dir(store.root().join(".u.tmp-77")).unwrap();
        let q = store.root().join(QUARANTINE_DIR);
        std::fs::create_dir(&q).unwrap();
        std::fs::write(q.join(".x.tmp-77"), b"kept").unwrap();
        let lock = StoreLock::acquire(store.root()).unwrap();
        assert_eq!(store.remove_leftovers(&lock).unwrap(), 3);
        assert!(!t.join(".meta.json.tmp-77").exists());
        assert!(!t.join(".v-abc.tmp-77").exists());
        assert!(!store.root().join(".u.tmp-77").exists());
        assert!(q.join(".x.tmp-77").exists());
        assert!(store.root().join(LOCK_FILE).exists());
        assert!(store.get("t").unwrap().unwrap().current.is_some());
    }

    #[test]
    fn a_corrupt_record_is_quarantined_and_the_next_put_starts_a_clean_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        store.put("bad", &adapter(1), Source::Upload).unwrap();
        store.put("good", &adapter(2), Source::Upload).unwrap();
        let meta = store.root().join("bad").join(META_FILE);
        std::fs::write(&meta, b"{\"task\": \"bad\", \"versions\": [tru").unwrap();

        let all = store.load_all().unwrap();
        assert_eq!(
            all.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        assert!(!meta.exists(), "moved aside");
        let q = store.quarantined();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].task, "bad");
        assert!(Path::new(&q[0].path).starts_with(store.root().join(QUARANTINE_DIR)));
        assert_eq!(
            std::fs::read(&q[0].path).unwrap(),
            b"{\"task\": \"bad\", \"versions\": [tru",
            "kept as it was"
        );

        let record = store.put("bad", &adapter(3), Source::Upload).unwrap();
        assert_eq!(record.versions.len(), 1);
        assert_eq!(store.get("bad").unwrap(), Some(record));
        assert_eq!(store.quarantined().len(), 1);
    }

    #[test]
    fn a_record_corrupted_while_running_does_not_fail_the_next_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        store.put("t", &adapter(1), Source::Upload).unwrap();
        std::fs::write(store.root().join("t").join(META_FILE), b"").unwrap();
        let record = store.put("t", &adapter(2), Source::Upload).unwrap();
        assert_eq!(record.current, Some(adapter(2).content_hash().unwrap()));
        assert_eq!(store.quarantined().len(), 1);
    }
}
