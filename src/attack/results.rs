//! Results on disk: `config.json` (the run's settings), `results.jsonl` (append-only, one
//! line per example when it is first classified and one per example per iteration),
//! `summary.json` and `examples.jsonl` (each example's final and best attack as text).
//!
//! Lines are written in units — the clean lines of a group of examples, or one iteration
//! of a group — and flushed per unit. A killed run leaves at most one partial unit (maybe
//! ending in a half-written line); a resume replays the complete units in file order and
//! cuts the file where the first incomplete or unexpected one starts, so the work is redone
//! and the file ends up as an uninterrupted run would have written it.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const RESULTS_FILE: &str = "results.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const EXAMPLES_FILE: &str = "examples.jsonl";

/// An example before the attack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CleanLine {
    pub example: usize,
    pub label: u32,
    /// Tokens of the clean prompt (target included for a causal LM).
    pub tokens: usize,
    #[serde(with = "nullable_f32")]
    pub clean_loss: f32,
    /// The goal already holds without an attack (misclassified, or target produced).
    pub clean_success: bool,
    /// Not attacked (because of `clean_success`).
    pub skipped: bool,
}

/// An example after an iteration. FLOPs and `best_loss` are cumulative per example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterLine {
    pub example: usize,
    pub iteration: usize,
    #[serde(with = "nullable_f32")]
    pub loss: f32,
    #[serde(with = "nullable_f32")]
    pub best_loss: f32,
    /// The attack kept after this iteration succeeds.
    pub success: bool,
    /// Broken at this or an earlier iteration (what ASR counts).
    pub broken: bool,
    pub attack_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack_text: Option<String>,
    /// The prompt tokens the victim read, when the attack retokenized its text into the
    /// prompt (otherwise `before ++ attack_ids ++ after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_ids: Option<Vec<u32>>,
    pub candidates: usize,
    pub rejected: usize,
    /// Every candidate failed the filter; the attack stayed as it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    pub nominal_flops: f64,
    pub executed_flops: f64,
    /// Seconds the iteration took for the whole group of examples it ran with.
    pub wall_s: f64,
    /// The attack's own state after the iteration (GCG's buffer, BEAST's beam).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub state: serde_json::Value,
}

/// One attack of an example as text: what the victim read, instructions included, so that
/// adversarial examples can be inspected and reused on other models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackRecord {
    pub iteration: usize,
    #[serde(with = "nullable_f32")]
    pub loss: f32,
    pub success: bool,
    pub attack_ids: Vec<u32>,
    pub attack_text: Option<String>,
    pub prompt_ids: Vec<u32>,
    pub prompt_text: Option<String>,
}

/// `examples.jsonl`: one line per example at the end of a run, with its final attack, its
/// best (lowest-loss) one and its first successful one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleRecord {
    pub example: usize,
    pub label: u32,
    pub attacked: bool,
    pub broken_at: Option<usize>,
    #[serde(rename = "final")]
    pub final_attack: Option<AttackRecord>,
    pub best: Option<AttackRecord>,
    /// The attack of the first iteration whose attack succeeded (what the study kept of a
    /// random-token run).
    pub first_success: Option<AttackRecord>,
}

impl ExampleRecord {
    /// The example's adversarial attack as the study kept it: the first success for an
    /// attack whose study ASR is cumulative (random token), else the final attack.
    pub fn adversarial(&self, kind: super::AsrKind) -> Option<&AttackRecord> {
        match kind {
            super::AsrKind::Cumulative => {
                self.first_success.as_ref().or(self.final_attack.as_ref())
            }
            super::AsrKind::Current => self.final_attack.as_ref(),
        }
    }
}

/// Writes `lines` as JSONL to `path` through a temporary file and a rename (a kill leaves
/// the old file or the new one, whole; see [`crate::files::write_atomic`]).
pub fn write_jsonl_atomic<T: Serialize>(path: &Path, lines: &[T]) -> Result<()> {
    let mut buf = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut buf, l).map_err(|e| Error::Other(e.to_string()))?;
        buf.push(b'\n');
    }
    crate::files::write_atomic(path, &buf)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Clean(CleanLine),
    Iter(IterLine),
}

/// Which line a unit expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Clean { example: usize },
    Iter { example: usize, iteration: usize },
}

impl Line {
    pub fn key(&self) -> Key {
        match self {
            Line::Clean(c) => Key::Clean { example: c.example },
            Line::Iter(l) => Key::Iter {
                example: l.example,
                iteration: l.iteration,
            },
        }
    }
}

/// The JSONL file: replays complete units of an earlier run, then appends.
pub struct ResultsLog {
    path: PathBuf,
    /// Lines read at open, with the byte offset where each ends.
    old: Vec<(Line, u64)>,
    next: usize,
    /// Byte offset up to which the file has been replayed.
    replayed_to: u64,
    file: Option<File>,
    /// When the file was last synced to disk (at most a second of appended units is
    /// unsynced: a power cut loses no more, and a resume redoes it).
    synced: std::time::Instant,
}

impl ResultsLog {
    /// Opens (or creates) `path`. A last line cut short (no newline, or not valid JSON) is
    /// dropped; an invalid line anywhere else is an error naming the line.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut old = Vec::new();
        let mut at = 0usize;
        let mut lineno = 0;
        while at < bytes.len() {
            lineno += 1;
            let Some(nl) = bytes[at..].iter().position(|&b| b == b'\n') else {
                break; // killed mid-write
            };
            let raw = &bytes[at..at + nl];
            let end = at + nl + 1;
            let is_last = end == bytes.len();
            match serde_json::from_slice::<Line>(raw) {
                Ok(l) => old.push((l, end as u64)),
                Err(_) if is_last => break,
                Err(e) => {
                    return Err(Error::format(
                        path,
                        format!("line {lineno}: not a results line ({e}); remove the file or pass --overwrite"),
                    ))
                }
            }
            at = end;
        }
        Ok(ResultsLog {
            path: path.to_path_buf(),
            old,
            next: 0,
            replayed_to: 0,
            file: None,
            synced: std::time::Instant::now(),
        })
    }

    /// Lines of the earlier run not replayed yet.
    pub fn pending(&self) -> usize {
        self.old.len() - self.next
    }

    /// The next unit from the earlier run, if the file holds all of it with exactly these
    /// keys in this order. After the first miss, nothing more is replayed.
    pub fn replay(&mut self, keys: &[Key]) -> Option<Vec<Line>> {
        if self.file.is_some() || self.pending() < keys.len() {
            return None;
        }
        let slice = &self.old[self.next..self.next + keys.len()];
        if slice.iter().zip(keys).any(|((l, _), k)| l.key() != *k) {
            return None;
        }
        self.next += keys.len();
        self.replayed_to = slice.last().map_or(self.replayed_to, |x| x.1);
        Some(slice.iter().map(|(l, _)| l.clone()).collect())
    }

    /// Appends a unit and flushes it. The first append cuts whatever was not replayed.
    pub fn append(&mut self, lines: &[Line]) -> Result<()> {
        let path = self.path.clone();
        let (now, synced) = (std::time::Instant::now(), self.synced);
        let file = match &mut self.file {
            Some(f) => f,
            None => self.open_for_append()?,
        };
        let mut buf = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut buf, l).map_err(|e| Error::Other(e.to_string()))?;
            buf.push(b'\n');
        }
        // One write per unit: a killed process leaves whole units and at most one torn
        // last line, which the next open drops.
        file.write_all(&buf).map_err(|e| Error::io(&path, e))?;
        file.flush().map_err(|e| Error::io(&path, e))?;
        if now.duration_since(synced) >= std::time::Duration::from_secs(1) {
            file.sync_data().map_err(|e| Error::io(&path, e))?;
            self.synced = now;
        }
        Ok(())
    }

    /// Cuts lines that were never replayed (nothing new to append but a stale tail), and
    /// syncs the file.
    pub fn finish(&mut self) -> Result<()> {
        let path = self.path.clone();
        let file = match &mut self.file {
            Some(f) => f,
            None => self.open_for_append()?,
        };
        file.sync_data().map_err(|e| Error::io(&path, e))
    }

    fn open_for_append(&mut self) -> Result<&mut File> {
        let p = &self.path;
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(p)
            .map_err(|e| Error::io(p, e))?;
        f.set_len(self.replayed_to).map_err(|e| Error::io(p, e))?;
        let mut f = f;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(p, e))?;
        self.next = self.old.len();
        Ok(self.file.insert(f))
    }
}

/// Prepares the output directory: with `overwrite` earlier results are deleted; otherwise
/// an existing `config.json` must equal `config` (then the run resumes). Returns whether
/// earlier results exist to resume from.
pub fn prepare_dir(dir: &Path, config: &serde_json::Value, overwrite: bool) -> Result<bool> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg_path = dir.join(CONFIG_FILE);
    if overwrite {
        for f in [CONFIG_FILE, RESULTS_FILE, SUMMARY_FILE, EXAMPLES_FILE] {
            let p = dir.join(f);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
                _ => {}
            }
        }
    }
    let existed = settings_file(&cfg_path, config)?;
    Ok(existed && dir.join(RESULTS_FILE).exists())
}

/// The settings file of a resumable run: written if missing, else compared with `config`,
/// and a difference is an error naming the first differing field. Returns whether it
/// existed (a run is being resumed).
pub fn settings_file(path: &Path, config: &serde_json::Value) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(raw) => {
            let old: serde_json::Value = serde_json::from_str(&raw)
                .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
            if let Some(field) = settings_difference(&old, config) {
                return Err(Error::format(
                    path,
                    format!(
                        "the results here come from {}; pass --overwrite to start over or \
                         choose another --out",
                        describe_difference(&field)
                    ),
                ));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Written beside and renamed: a kill mid-write never leaves half a settings file.
            let text = serde_json::to_string_pretty(config).expect("plain data");
            crate::files::write_atomic(path, text.as_bytes())?;
            Ok(false)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// What a settings difference at dotted path `field` means, for an error message: another
/// setting, or an input file whose content changed.
pub fn describe_difference(field: &str) -> String {
    match field.strip_prefix("inputs.") {
        Some(file) => format!(
            "other inputs: `{file}` is not the file this run read (its content fingerprint \
             differs, or it was added or removed)"
        ),
        None => format!("different settings (`{field}` differs)"),
    }
}

/// The dotted path of the first field where settings `old` and `new` differ. Both go
/// through JSON text first, as a settings file does, so an f32's widening to f64 or a
/// float's last digit cannot make a value differ from its own reading.
pub fn settings_difference(old: &impl Serialize, new: &impl Serialize) -> Option<String> {
    first_difference(&through_text(old), &through_text(new), "")
}

fn through_text(v: &impl Serialize) -> serde_json::Value {
    serde_json::from_str(&serde_json::to_string(v).expect("plain data")).expect("own JSON")
}

/// Dotted path of the first field where `a` and `b` differ.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &format!("{at}{k}.")),
                    _ => Some(format!("{at}{k}")),
                })
        }
        _ if a == b => None,
        _ => Some(at.trim_end_matches('.').to_string()),
    }
}

/// serde for f32 that writes NaN as null (JSON has no NaN) and reads null back as NaN.
pub mod nullable_f32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f32(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }
}
