//! Crash-safe writes, the one way every layer writes a file or publishes a folder: a reader
//! (or a restart after `kill -9`) sees the old content or the whole new one, never a part.
//!
//! A file is written to a temp sibling (`.NAME.tmp-PID`), fsynced, renamed into place, and
//! the parent folder is fsynced so that the rename itself survives a power cut. A folder is
//! built as a temp sibling the same way and then renamed over the old one. Temp siblings all
//! start with `.` and contain `.tmp-`, so a start-up sweep can recognise leftovers.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically (see the module doc), creating the parent folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f =
            std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        Ok(())
    })
}

/// Like [`write_atomic`], for writers that want a path (e.g. a safetensors saver): `write`
/// fills the temp file, which is then fsynced and renamed into place.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = parent_of(path);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = temp_sibling(path)?;
    write(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    sync_dir(&dir);
    Ok(())
}

/// Writes a folder of files atomically: everything goes to a temp sibling folder, each file
/// fsynced, then [`publish_dir`] puts it in place of `dir`.
pub fn write_folder_atomic(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let tmp = temp_sibling(dir)?;
    std::fs::create_dir_all(parent_of(dir))?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for (file, bytes) in files {
        let mut f = std::fs::File::create(tmp.join(file))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    publish_dir(&tmp, dir)
}

/// Renames a finished folder `tmp` over `dest` (an existing `dest` is moved aside first and
/// removed after), then fsyncs the parent.
pub fn publish_dir(tmp: &Path, dest: &Path) -> Result<()> {
    sync_dir(tmp);
    let old = dest.with_file_name(format!(".{}.old-{}", file_name(dest)?, std::process::id()));
    if dest.exists() {
        std::fs::rename(dest, &old).with_context(|| format!("moving {} aside", dest.display()))?;
    }
    std::fs::rename(tmp, dest).with_context(|| format!("moving {} into place", dest.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    sync_dir(&parent_of(dest));
    Ok(())
}

/// The temp sibling [`write_atomic`] and [`write_folder_atomic`] use for `path`.
pub fn temp_sibling(path: &Path) -> Result<PathBuf> {
    Ok(parent_of(path).join(format!(".{}.tmp-{}", file_name(path)?, std::process::id())))
}

/// Fsyncs a folder so that renames into it are durable; best effort (not every file system
/// lets a folder be opened for sync).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temp_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn a_folder_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("adapter");
        write_folder_atomic(&target, &[("x", b"1"), ("y", b"2")]).unwrap();
        write_folder_atomic(&target, &[("z", b"3")]).unwrap();
        assert!(!target.join("x").exists());
        assert_eq!(std::fs::read(target.join("z")).unwrap(), b"3");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_writer_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |_| anyhow::bail!("disk full"));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
