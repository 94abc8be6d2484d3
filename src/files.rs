//! Files a kill cannot tear, one writer per run, and fingerprints of a run's inputs.
//!
//! - [`write_atomic`]: every settings file, summary and examples file, trainer state and
//!   pool is written beside its place, synced, and renamed over it; the directory entry is
//!   synced too, so even a power cut leaves the old file or the new one, whole.
//! - [`lock`] / [`lock_dir`]: an advisory lock per run; the OS drops it when its process
//!   exits, killed or not, so a stale lock never blocks.
//! - [`fingerprint`] / [`Inputs`]: what a resumable run read (checkpoint files, data
//!   files), recorded in its settings so that a resume on replaced inputs is refused.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`a/b.json` + `.tmp` = `a/b.json.tmp`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through `path.tmp`: written, synced, renamed over `path`, and
/// the directory synced. A kill at any instant leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_parent(path)
}

/// Syncs every file directly in `dir`, then `dir` itself (a directory about to be renamed
/// into place holds its final contents on disk first).
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&p, e))?;
        }
    }
    sync_dir(dir)
}

/// Syncs the directory holding `path` (makes a rename or a new entry durable).
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directories cannot be opened for syncing everywhere; where they can, errors count.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The lock file that marks a run directory as being written.
pub const LOCK_FILE: &str = ".armsrace.lock";

/// An advisory lock, held while a process writes a run: a second process on the same run
/// is refused instead of interleaving its writes with the first's.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Locks `dir` (created if missing) for one writer through `dir/.armsrace.lock`.
pub fn lock_dir(dir: &Path) -> Result<Lock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    lock(&dir.join(LOCK_FILE), dir)
}

/// Takes the advisory lock file `file` for the run `run` (named in the refusal). For a
/// run whose directory is replaced as a whole (a training checkpoint), the file lies
/// beside it.
pub fn lock(file: &Path, run: &Path) -> Result<Lock> {
    try_lock(file)?.ok_or_else(|| {
        Error::input(format!(
            "{}: another armsrace process is writing this run (it holds {}); wait for it \
             to finish or choose another --out",
            run.display(),
            file.display()
        ))
    })
}

/// Takes the advisory lock file `file` (created if missing), or `None` when another
/// process holds it (for callers that wait and retry instead of refusing).
pub fn try_lock(file: &Path) -> Result<Option<Lock>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(file)
        .map_err(|e| Error::io(file, e))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(Lock { _file: f })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(file, e)),
    }
}

/// `s` for a folder name: every character but [A-Za-z0-9.] as '-' (run folders named by
/// their settings: `attack`'s default `--out`, `sweep`'s unit folders).
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Files up to this size are hashed whole; larger ones by [`SAMPLES`] evenly spaced blocks.
const WHOLE: u64 = 256 << 20;
const SAMPLES: u64 = 1024;
const BLOCK: u64 = 64 << 10;

/// A fingerprint of a file's content: `"<bytes>:<xxh3-64 hex>"`. Files up to 256 MiB are
/// hashed whole; a larger one (a multi-GB checkpoint shard) by its first and last 64 KiB
/// and 1,024 evenly spaced 64 KiB blocks (64 MiB read), so a resume stays cheap: another
/// checkpoint of the same shape differs in every block. The file's times are not used, so
/// a copy fingerprints as its original.
pub fn fingerprint(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    if len <= WHOLE {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
        h.update(&buf);
    } else {
        let mut buf = vec![0u8; BLOCK as usize];
        let span = len - BLOCK;
        for i in 0..=SAMPLES {
            let at = span / SAMPLES * i;
            f.seek(SeekFrom::Start(at))
                .map_err(|e| Error::io(path, e))?;
            f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
            h.update(&buf);
        }
        f.seek(SeekFrom::Start(span))
            .map_err(|e| Error::io(path, e))?;
        f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
        h.update(&buf);
    }
    Ok(format!("{len}:{:016x}", h.digest()))
}

/// A run's input files by role (`model/config.json`, `data`, ...) with their
/// [`fingerprint`]s, recorded in its settings: a resume on changed inputs names the file.
pub type Inputs = BTreeMap<String, String>;

/// Adds a checkpoint directory's files under `role/` (config.json, tokenizer.json, the
/// safetensors files and their index).
pub fn add_model(inputs: &mut Inputs, role: &str, dir: &Path) -> Result<()> {
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name == "config.json"
            || name == "tokenizer.json"
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json");
        if wanted && entry.path().is_file() {
            names.push(name);
        }
    }
    for name in names {
        inputs.insert(format!("{role}/{name}"), fingerprint(&dir.join(name))?);
    }
    Ok(())
}

/// Adds one file under `role` (nothing when it does not exist: its absence is recorded by
/// the other settings, e.g. a task without a sidecar).
pub fn add_file(inputs: &mut Inputs, role: &str, path: &Path) -> Result<()> {
    if path.is_file() {
        inputs.insert(role.to_string(), fingerprint(path)?);
    }
    Ok(())
}

/// Adds the files a task name reads: for `jsonl:PATH`, the file and its sidecar.
pub fn add_task(inputs: &mut Inputs, task: &str) -> Result<()> {
    if let Some(p) = task.strip_prefix("jsonl:") {
        let p = Path::new(p);
        add_file(inputs, "task", p)?;
        add_file(inputs, "task.sidecar", &crate::task::defs::sidecar_path(p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new!").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new!");
        assert!(!sibling(&p, ".tmp").exists());
    }

    #[test]
    fn fingerprints_follow_content_not_times() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"weights").unwrap();
        std::fs::copy(&a, &b).unwrap();
        assert_eq!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        std::fs::write(&b, b"weightz").unwrap();
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        // The reference: xxh3-64 of the whole content, by the crate's one-shot function.
        let want = format!("7:{:016x}", xxhash_rust::xxh3::xxh3_64(b"weights"));
        assert_eq!(fingerprint(&a).unwrap(), want);
    }

    #[test]
    fn a_large_file_is_sampled_and_a_change_in_a_block_shows() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        let len = WHOLE + 3 * BLOCK + 17;
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        drop(f);
        let before = fingerprint(&p).unwrap();
        assert!(before.starts_with(&format!("{len}:")));
        // Change a byte inside the middle sampled block.
        let at = (len - BLOCK) / SAMPLES * (SAMPLES / 2) + 5;
        let mut f = OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[1]).unwrap();
        drop(f);
        assert_ne!(fingerprint(&p).unwrap(), before);
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = lock_dir(d.path()).unwrap();
        let err = lock_dir(d.path()).unwrap_err().to_string();
        assert!(err.contains("another armsrace process"), "{err}");
        drop(first);
        lock_dir(d.path()).unwrap();
    }
}
