//! One tidy, long-format results table: a row per (run, iteration), read from armsrace's
//! results directories or from a table file (CSV or JSONL), so results of other tools, or
//! the study's published tables converted to these columns, are analysed the same way.
//!
//! Columns ([`Row`]), in this order in CSV:
//!
//! | column | meaning |
//! |---|---|
//! | `run` | the results directory, relative to the folder given to [`collect`] (`/`-separated; with several folders given, or one that is a run itself, it starts with that folder's name) |
//! | `model` | the attacked model: the checkpoint path; for an adv-train evaluation, the run's starting model |
//! | `family` | `gpt_neox` (Pythia) or `qwen2` (Qwen2.5) |
//! | `n_params` | N: the classifier's parameter count (the study's: embeddings in, LM head out) |
//! | `n_gen` | N_gen: the causal LM's parameter count (LM head in) |
//! | `pretraining_flops` | 6·N_gen·D; empty when unknown |
//! | `task` | the task name |
//! | `attack` | `gcg`, `random-token` or `beast` |
//! | `threat` | `suffix`, `prefix` or `infix:F` |
//! | `seed` | the attack's seed |
//! | `defense_attack`, `defense_threat` | the attack adversarial training ran (empty when the model was not adversarially trained) |
//! | `round` | the adversarial-training round of the checkpoint attacked (0: before training; empty: not an adv-train evaluation) |
//! | `defense_nominal_flops`, `defense_executed_flops` | cumulative defense compute up to that round (empty when no round) |
//! | `iteration` | attack iteration i (0: before the attack) |
//! | `asr_kind` | which curve `asr` is: `current` or `cumulative` (the study's for the attack) |
//! | `asr`, `asr_current`, `asr_cumulative` | ASR after iteration i (see [`crate::attack::summary`]) |
//! | `examples` | examples the ASR is over (those attacked) |
//! | `nominal_flops_per_example_iteration`, `executed_flops_per_example_iteration` | mean attack FLOPs of one iteration on one example |
//!
//! Attack compute after iteration i is `i × nominal_flops_per_example_iteration` per example
//! (science.md, "FLOPs and compute"); [`compute_to_asr`] is the one place that turns a run's
//! rows into the compute to reach an ASR, used by the report and by every run's summary
//! (through [`crate::attack::summary::compute_to_asr`]).
//!
//! Rows are sorted by (`run`, `iteration`), and nothing in them depends on wall time or on
//! where the folder lives, so the table of a sweep run in shards equals, byte for byte, the
//! unsharded sweep's.

use crate::attack::results::{CONFIG_FILE, SUMMARY_FILE};
use crate::attack::summary::Summary;
use crate::attack::AsrKind;
use crate::error::{Error, Result};
use crate::train::adversarial::{EvalRecord, SETTINGS_FILE};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One row: one iteration of one run. See the module documentation for the columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub run: String,
    pub model: String,
    pub family: String,
    pub n_params: u64,
    pub n_gen: u64,
    pub pretraining_flops: Option<f64>,
    pub task: String,
    pub attack: String,
    pub threat: String,
    pub seed: u64,
    pub defense_attack: Option<String>,
    pub defense_threat: Option<String>,
    pub round: Option<u64>,
    pub defense_nominal_flops: Option<f64>,
    pub defense_executed_flops: Option<f64>,
    pub iteration: u64,
    pub asr_kind: AsrKind,
    pub asr: f64,
    pub asr_current: f64,
    pub asr_cumulative: f64,
    pub examples: u64,
    pub nominal_flops_per_example_iteration: f64,
    pub executed_flops_per_example_iteration: f64,
}

/// What adversarial training made the attacked checkpoint (an evaluation's rows).
#[derive(Clone, Debug, Default)]
struct Defense {
    model: String,
    attack: String,
    threat: String,
    round: u64,
    nominal: f64,
    executed: f64,
}

/// The rows of one attack run's summary.
pub fn rows_of_summary(run: &str, s: &Summary) -> Vec<Row> {
    rows_with(run, s, None)
}

fn rows_with(run: &str, s: &Summary, d: Option<&Defense>) -> Vec<Row> {
    let n = s.asr.len();
    (0..n)
        .map(|i| Row {
            run: run.to_owned(),
            model: d.map_or_else(|| s.info.model.clone(), |d| d.model.clone()),
            family: s.info.family.clone(),
            n_params: s.info.n_params as u64,
            n_gen: s.info.n_gen as u64,
            pretraining_flops: s.info.pretraining_flops,
            task: s.info.task.clone(),
            attack: s.info.attack.clone(),
            threat: s.info.threat.clone(),
            seed: s.info.seed,
            defense_attack: d.map(|d| d.attack.clone()),
            defense_threat: d.map(|d| d.threat.clone()),
            round: d.map(|d| d.round),
            defense_nominal_flops: d.map(|d| d.nominal),
            defense_executed_flops: d.map(|d| d.executed),
            iteration: i as u64,
            asr_kind: s.asr_kind,
            asr: s.asr[i],
            asr_current: s.asr_current.get(i).copied().unwrap_or(s.asr[i]),
            asr_cumulative: s.asr_cumulative.get(i).copied().unwrap_or(s.asr[i]),
            examples: s.attacked as u64,
            nominal_flops_per_example_iteration: s.nominal_flops_per_iteration,
            executed_flops_per_example_iteration: s.executed_flops_per_iteration,
        })
        .collect()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
}

/// `path` relative to `root`, `/`-separated ("." for the root itself).
fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// Rows of every run under `paths`: a table file (`.csv`, `.jsonl`) is read as rows; a
/// folder is searched: an attack results directory (config.json + summary.json) gives its
/// rows, an adversarial-training run (adv_config.json) the rows of its evaluations
/// (`eval/*/eval.jsonl`, each round's results with its round and defense compute; the
/// training attacks of its rounds are not evaluations and are left out). Folders are
/// visited in name order, runs without a summary (unfinished) are skipped, and the result
/// is sorted by (`run`, `iteration`).
///
/// `run` is the results folder relative to the input folder. With several inputs, and for
/// an input that is itself a run, it starts with the input's folder name, so runs of
/// different inputs never share a name; two inputs giving the same run name (two folders
/// of one name) are refused.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut names: std::collections::BTreeMap<String, &Path> = Default::default();
    for p in paths {
        let mut found = Vec::new();
        if p.is_dir() {
            walk(p, p, &mut found)?;
            let own = p
                .canonicalize()
                .ok()
                .and_then(|c| c.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "input".into());
            for r in &mut found {
                if r.run == "." {
                    r.run = own.clone();
                } else if paths.len() > 1 {
                    r.run = format!("{own}/{}", r.run);
                }
            }
        } else if p.exists() {
            found = read(p)?;
        } else {
            return Err(Error::format(p, "no such results folder or table file"));
        }
        for r in &found {
            match names.get(&r.run) {
                Some(&other) if other != p.as_path() => {
                    return Err(Error::format(
                        p,
                        format!(
                            "run `{}` is also in {}: give inputs with distinct folder names",
                            r.run,
                            other.display()
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    names.insert(r.run.clone(), p);
                }
            }
        }
        rows.extend(found);
    }
    rows.sort_by(|a, b| (&a.run, a.iteration).cmp(&(&b.run, b.iteration)));
    Ok(rows)
}

fn walk(root: &Path, dir: &Path, rows: &mut Vec<Row>) -> Result<()> {
    if dir.join(SETTINGS_FILE).is_file() {
        return adv_rows(root, dir, rows);
    }
    if dir.join(CONFIG_FILE).is_file() && dir.join(SUMMARY_FILE).is_file() {
        let s: Summary = read_json(&dir.join(SUMMARY_FILE))?;
        rows.extend(rows_of_summary(&relative(root, dir), &s));
        return Ok(());
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for d in subdirs {
        walk(root, &d, rows)?;
    }
    Ok(())
}

/// The evaluations of an adversarial-training run.
fn adv_rows(root: &Path, run: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let settings_path = run.join(SETTINGS_FILE);
    let settings: serde_json::Value = read_json(&settings_path)?;
    let text = |v: Option<&serde_json::Value>, field: &str| -> Result<String> {
        v.and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::format(&settings_path, format!("missing string `{field}`")))
    };
    let model = text(settings.get("model"), "model")?;
    let attack = &settings["attack"];
    let defense_attack = text(
        attack.get("attack").and_then(|a| a.get("name")),
        "attack.attack.name",
    )?;
    let defense_threat = text(attack.get("threat"), "attack.threat")?;
    let eval = run.join("eval");
    if !eval.is_dir() {
        return Ok(());
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(&eval)
        .map_err(|e| Error::io(&eval, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("eval.jsonl").is_file())
        .collect();
    names.sort();
    for name in names {
        let file = name.join("eval.jsonl");
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let rec: EvalRecord = serde_json::from_str(line)
                .map_err(|e| Error::format(&file, format!("line {}: {e}", i + 1)))?;
            let dir = run.join(&rec.results);
            let s: Summary = read_json(&dir.join(SUMMARY_FILE))?;
            let d = Defense {
                model: model.clone(),
                attack: defense_attack.clone(),
                threat: defense_threat.clone(),
                round: rec.round as u64,
                nominal: rec.defense_nominal_flops,
                executed: rec.defense_executed_flops,
            };
            rows.extend(rows_with(&relative(root, &dir), &s, Some(&d)));
        }
    }
    Ok(())
}

/// Reads a table file: `.csv` (a header row with at least the columns of [`Row`]; empty
/// cells are missing values) or `.jsonl` (one row object per line).
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "csv" => {
            let mut r = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
            r.deserialize()
                .map(|row| row.map_err(|e| csv_error(path, e)))
                .collect()
        }
        "jsonl" => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str(l)
                        .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))
                })
                .collect()
        }
        _ => Err(Error::format(
            path,
            "a results table must be .csv or .jsonl (or give a results folder)",
        )),
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let at = e
        .position()
        .map(|p| format!("line {}: ", p.line()))
        .unwrap_or_default();
    Error::format(path, format!("{at}{e}"))
}

/// Writes `rows` as CSV (header first) or JSONL, by `path`'s extension, atomically.
pub fn write(rows: &[Row], path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let bytes = match ext {
        "csv" => {
            let mut w = csv::Writer::from_writer(Vec::new());
            for r in rows {
                w.serialize(r).map_err(|e| csv_error(path, e))?;
            }
            w.into_inner()
                .map_err(|e| Error::format(path, e.to_string()))?
        }
        "jsonl" => {
            let mut out = Vec::new();
            for r in rows {
                serde_json::to_writer(&mut out, r).expect("plain data");
                out.push(b'\n');
            }
            out
        }
        _ => {
            return Err(Error::format(
                path,
                "a results table must be .csv or .jsonl",
            ))
        }
    };
    crate::files::write_atomic(path, &bytes)
}

/// The rows of each run, in table order: consecutive rows with the same `run`.
pub fn runs(rows: &[Row]) -> Vec<&[Row]> {
    rows.chunk_by(|a, b| a.run == b.run).collect()
}

/// Attack compute per example to reach ASR `x` on one run's rows (sorted by iteration),
/// as a fraction of pretraining compute: the interpolated iteration at which the study's
/// curve crosses `x`, times the mean nominal FLOPs per example-iteration, over
/// 6·N_gen·D. None if the curve never reaches `x` or pretraining is unknown.
pub fn compute_to_asr(run: &[Row], x: f64) -> Option<f64> {
    let first = run.first()?;
    let asr: Vec<f64> = run.iter().map(|r| r.asr).collect();
    crate::attack::summary::compute_to_asr(
        &asr,
        x,
        first.nominal_flops_per_example_iteration,
        first.pretraining_flops,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, i: u64, asr: f64) -> Row {
        Row {
            run: run.into(),
            model: "m".into(),
            family: "gpt_neox".into(),
            n_params: 1000,
            n_gen: 1200,
            pretraining_flops: Some(1e12),
            task: "spam".into(),
            attack: "gcg".into(),
            threat: "infix:0.9".into(),
            seed: 3,
            defense_attack: None,
            defense_threat: Some("suffix".into()),
            round: Some(2),
            defense_nominal_flops: None,
            defense_executed_flops: Some(1.5e9),
            iteration: i,
            asr_kind: AsrKind::Current,
            asr,
            asr_current: asr,
            asr_cumulative: asr,
            examples: 20,
            nominal_flops_per_example_iteration: 1e9,
            executed_flops_per_example_iteration: 2.5e8,
        }
    }

    #[test]
    fn csv_and_jsonl_round_trip_with_missing_values() {
        let rows = vec![row("a", 0, 0.0), row("a", 1, 0.25), row("b/c", 0, 0.1)];
        let dir = tempfile::tempdir().unwrap();
        for name in ["t.csv", "t.jsonl"] {
            let p = dir.path().join(name);
            write(&rows, &p).unwrap();
            assert_eq!(read(&p).unwrap(), rows, "{name}");
        }
        let text = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
        let header = text.lines().next().unwrap();
        assert!(header.starts_with("run,model,family,n_params,n_gen,pretraining_flops,task"));
        // A missing value is an empty cell.
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains(",,suffix,2,,1500000000"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_table_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        write(&[row("a", 0, 0.0)], &p).unwrap();
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str(&text.lines().nth(1).unwrap().replace(",20,", ",twenty,"));
        std::fs::write(&p, text).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("t.csv") && e.contains("line 3"), "{e}");
        let e = read(&dir.path().join("t.txt")).unwrap_err().to_string();
        assert!(e.contains(".csv or .jsonl"), "{e}");
    }

    #[test]
    fn runs_of_several_inputs_keep_apart() {
        let dir = tempfile::tempdir().unwrap();
        let summary = |root: &Path, asr: Vec<f64>| {
            std::fs::create_dir_all(root).unwrap();
            let mut s = crate::attack::summary::summarize(
                Default::default(),
                AsrKind::Current,
                &[],
                &[],
                0,
            );
            s.asr = asr.clone();
            s.asr_current = asr.clone();
            s.asr_cumulative = asr;
            std::fs::write(root.join(CONFIG_FILE), "{}").unwrap();
            std::fs::write(root.join(SUMMARY_FILE), serde_json::to_vec(&s).unwrap()).unwrap();
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b/run"));
        summary(&a, vec![0.0, 0.5]);
        summary(&b, vec![0.0, 0.25, 1.0]);
        // Each input a run itself: named by its folder, not both ".".
        let rows = collect(&[a.clone(), b.clone()]).unwrap();
        let groups = runs(&rows);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0][0].run.as_str(), groups[0].len()), ("a", 2));
        assert_eq!((groups[1][0].run.as_str(), groups[1].len()), ("run", 3));
        // One input: paths below it, unprefixed.
        let rows = collect(&[dir.path().join("b")]).unwrap();
        assert_eq!(rows[0].run, "run");
        // Two inputs of one name: refused.
        let c = dir.path().join("c/run");
        summary(&c, vec![0.0]);
        let e = collect(&[b, c]).unwrap_err().to_string();
        assert!(e.contains("run `run` is also in"), "{e}");
    }

    #[test]
    fn compute_to_asr_interpolates_and_scales_by_pretraining() {
        // Crosses 5% a quarter of the way from iteration 1 (0.0) to 2 (0.2).
        let run = [row("a", 0, 0.0), row("a", 1, 0.0), row("a", 2, 0.2)];
        let c = compute_to_asr(&run, 0.05).unwrap();
        assert!((c - 1.25 * 1e9 / 1e12).abs() < 1e-18, "{c}");
        assert_eq!(compute_to_asr(&run, 0.5), None);
        let mut unknown = run.to_vec();
        unknown.iter_mut().for_each(|r| r.pretraining_flops = None);
        assert_eq!(compute_to_asr(&unknown, 0.05), None);
        let rows = [row("a", 0, 0.0), row("a", 1, 0.1), row("b", 0, 0.0)];
        let groups = runs(&rows);
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [2, 1]);
    }
}
