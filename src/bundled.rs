//! The bundled PasswordMatch classifier (models/pythia-password-match, 0.7 MB), embedded in
//! the binary: commands run without `--model` work from any directory and after `cargo
//! install`. From the repository root the committed directory itself is used.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where the bundled classifier sits in the repository (the CLI's default `--model`).
pub const DEFAULT_MODEL: &str = "models/pythia-password-match";

const FILES: [(&str, &[u8]); 3] = [
    (
        "config.json",
        include_bytes!("../models/pythia-password-match/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../models/pythia-password-match/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../models/pythia-password-match/tokenizer.json"),
    ),
];

/// The directory to load for `model`: itself, unless it is the default path and not
/// there (another working directory), then the embedded copy, written once into the
/// temporary directory under a name that changes with its contents.
pub fn resolve(model: &Path) -> Result<PathBuf> {
    if model.is_dir() || model != Path::new(DEFAULT_MODEL) {
        return Ok(model.to_path_buf());
    }
    // A hash of the files: a new bundled model gets a new directory.
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (name, bytes) in FILES {
        hasher.update(name.as_bytes());
        hasher.update(bytes);
    }
    let h = hasher.digest();
    let dir = std::env::temp_dir().join(format!("armsrace-bundled-{h:016x}"));
    if dir.join("tokenizer.json").exists() {
        return Ok(dir);
    }
    // Written beside, then renamed into place: a concurrent or killed writer never leaves
    // a partial directory under the final name.
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for (name, bytes) in FILES {
        let p = tmp.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process got there first: its copy is the same.
        Err(_) if dir.join("tokenizer.json").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::io(&dir, e)),
    }
}
