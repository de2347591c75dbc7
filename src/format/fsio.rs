//! Crash-safe writes, the one way every layer writes a file or publishes a folder: a reader
//! (or a restart after `kill -9`) sees the old content or the whole new one, never a part.
//!
//! A file is written to a temp sibling (`.NAME.tmp-PID`), fsynced, renamed into place, and
//! the parent folder is fsynced so that the rename itself survives a power cut. A folder is
//! built as a temp sibling the same way and then renamed over the old one. Temp siblings all
//! start with `.` and contain `.tmp-`, so a start-up sweep ([`remove_leftovers`]) can
//! recognise leftovers. New folders are created with their parent fsynced too
//! ([`create_dir_durable`]), or a power cut could lose a folder and all that was in it.

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
    create_dir_durable(&dir)?;
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
    create_dir_durable(&parent_of(dir))?;
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

/// Creates `dir` and its missing parents, fsyncing the parent of each new folder so that
/// the folder (and what is then written into it) survives a power cut.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("creating {}", dir.display()));
        }
        _ => {}
    }
    sync_dir(&parent_of(dir));
    Ok(())
}

/// Cleans up what interrupted writes left directly in `dir` (not below it): temp siblings
/// (`.NAME.tmp-PID`) are removed; a folder [`publish_dir`] moved aside (`.NAME.old-PID`) is
/// removed, or put back when its replacement never arrived. Another process's writes in
/// progress look the same, so call this only where no other process writes (the adapter
/// store holds a lock for that). Returns the names it handled.
pub fn remove_leftovers(dir: &Path) -> Result<Vec<String>> {
    let mut handled = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((kind, original)) = leftover(&name) else {
            continue;
        };
        let path = entry.path();
        let dest = dir.join(original);
        let done = if kind == Leftover::Old && !dest.exists() {
            std::fs::rename(&path, &dest)
        } else if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        done.with_context(|| format!("cleaning up {}", path.display()))?;
        handled.push(name);
    }
    if !handled.is_empty() {
        sync_dir(dir);
    }
    Ok(handled)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftover {
    Temp,
    Old,
}

/// Whether `name` is one of this module's temp or moved-aside siblings, and of what name.
fn leftover(name: &str) -> Option<(Leftover, &str)> {
    let rest = name.strip_prefix('.')?;
    for (kind, mark) in [(Leftover::Temp, ".tmp-"), (Leftover::Old, ".old-")] {
        if let Some(i) = rest.rfind(mark) {
            let pid = &rest[i + mark.len()..];
            if i > 0 && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                return Some((kind, &rest[..i]));
            }
        }
    }
    None
}

/// Removes a file; one that is not there is no error.
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
    fn leftovers_of_interrupted_writes_are_cleaned_up_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A crash after the temp file was written, and one inside publish_dir after the old
        // folder was moved aside but before the new one took its place.
        std::fs::write(d.join(".meta.json.tmp-4242"), b"half").unwrap();
        std::fs::create_dir(d.join(".v-1.tmp-4242")).unwrap();
        std::fs::create_dir(d.join(".v-2.old-4242")).unwrap();
        std::fs::write(d.join(".v-2.old-4242").join("w"), b"kept").unwrap();
        std::fs::create_dir(d.join(".v-3.old-4242")).unwrap();
        std::fs::create_dir(d.join("v-3")).unwrap();
        for keep in ["meta.json", ".hidden", ".x.tmp-", "a.tmp-1"] {
            std::fs::write(d.join(keep), b"k").unwrap();
        }
        let mut handled = remove_leftovers(d).unwrap();
        handled.sort();
        assert_eq!(
            handled,
            [
                ".meta.json.tmp-4242",
                ".v-1.tmp-4242",
                ".v-2.old-4242",
                ".v-3.old-4242"
            ]
        );
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".hidden", ".x.tmp-", "a.tmp-1", "meta.json", "v-2", "v-3"]
        );
        assert_eq!(std::fs::read(d.join("v-2").join("w")).unwrap(), b"kept");
    }

    #[test]
    fn new_folders_are_created_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b");
        create_dir_durable(&deep).unwrap();
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
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
