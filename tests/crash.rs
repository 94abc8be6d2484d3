//! Crash safety of `armsrace attack` and `armsrace train`: real processes killed with
//! SIGKILL at many instants, and results files cut at every kind of byte offset, resume to
//! exactly what an uninterrupted run writes; a second writer on a run is refused; a resume
//! on changed input files is refused, naming the file.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "common/kill.rs"]
mod kill;

fn armsrace(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_armsrace"));
    c.current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small attack: 6 examples in groups of 2, 5 iterations (many units to be killed in).
fn attack(out: &Path, model: &Path) -> Command {
    let mut c = armsrace(&repo());
    c.args([
        "--threads",
        "1",
        "attack",
        "--examples",
        "6",
        "--iterations",
        "5",
    ])
    .args(["--group-size", "2", "--search-width", "32", "--model"])
    .arg(model)
    .arg("--out")
    .arg(out);
    c
}

fn bundled() -> PathBuf {
    let p = repo().join("models/pythia-password-match");
    assert!(
        p.join("model.safetensors").exists(),
        "bundled model missing"
    );
    p
}

/// A JSON object without its timings (wall_s, seconds...): the one thing a rerun may
/// change. Returns how many fields were dropped.
fn drop_timings(v: &mut Value) -> usize {
    let obj = v.as_object_mut().unwrap();
    let timings: Vec<String> = obj
        .keys()
        .filter(|k| *k == "wall_s" || k.starts_with("seconds"))
        .cloned()
        .collect();
    for k in &timings {
        obj.remove(k);
    }
    timings.len()
}

/// summary.json without its timings.
fn summary(dir: &Path) -> Value {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert!(
        drop_timings(&mut v) > 0,
        "summary.json has no timing fields"
    );
    v
}

/// results.jsonl's lines, each exactly as written but for its timing: every other byte of
/// a line (losses, ids, FLOPs, text) is compared.
fn results(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            drop_timings(&mut v);
            v
        })
        .collect()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn assert_same_attack(got: &Path, want: &Path) {
    for f in ["examples.jsonl", "config.json"] {
        assert!(
            read(&got.join(f)) == read(&want.join(f)),
            "{f} differs from the uninterrupted run's"
        );
    }
    let (g, w) = (results(got), results(want));
    assert_eq!(
        g.len(),
        w.len(),
        "results.jsonl has another number of lines"
    );
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert_eq!(a, b, "results.jsonl line {} differs", i + 1);
    }
    assert_eq!(summary(got), summary(want));
}

#[test]
fn a_sigkilled_attack_resumes_to_the_uninterrupted_results() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let t0 = Instant::now();
    assert!(attack(&whole, &bundled()).status().unwrap().success());
    let full = t0.elapsed();
    let n = kill::kill_until_done(&|| attack(&killed, &bundled()), full, 16);
    println!("{n} attack processes killed mid-run (whole run {full:?})");
    assert!(n >= 3, "only {n} processes were killed mid-run");
    assert!(attack(&killed, &bundled()).status().unwrap().success());
    assert_same_attack(&killed, &whole);
}

#[test]
fn a_results_file_cut_at_any_byte_resumes_to_the_uninterrupted_results() {
    // What a kill can leave: results.jsonl cut anywhere (mid-line, on a line boundary,
    // inside a unit), no summary or examples file yet. Every cut resumes to the whole run.
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    assert!(attack(&whole, &bundled()).status().unwrap().success());
    let full = read(&whole.join("results.jsonl"));
    let newlines: Vec<usize> = (0..full.len()).filter(|&i| full[i] == b'\n').collect();
    let mut cuts = vec![0, 1, full.len() - 1];
    for (i, &nl) in newlines.iter().enumerate().step_by(7) {
        cuts.extend([nl, nl + 1, nl.saturating_sub(9 + i % 5)]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    for &cut in &cuts {
        let dir = tmp.path().join(format!("cut-{cut}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(whole.join("config.json"), dir.join("config.json")).unwrap();
        std::fs::write(dir.join("results.jsonl"), &full[..cut]).unwrap();
        let st = attack(&dir, &bundled()).status().unwrap();
        assert!(st.success(), "resume after a cut at byte {cut} failed");
        assert_same_attack(&dir, &whole);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!("{} cuts of {} bytes resumed", cuts.len(), full.len());
}

/// A small training run from the bundled classifier: 2 epochs, a save every 2 steps.
fn train(out: &Path) -> Command {
    let mut c = armsrace(&repo());
    c.args([
        "--threads",
        "1",
        "train",
        "--task",
        "password-match",
        "--from",
    ])
    .arg(bundled())
    .args([
        "--train-examples",
        "64",
        "--val-examples",
        "16",
        "--epochs",
        "2",
    ])
    .args([
        "--batch-size",
        "8",
        "--lr",
        "1e-4",
        "--save-every",
        "2",
        "--out",
    ])
    .arg(out);
    c
}

/// Every file of a finished training run, by name.
fn checkpoint_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                read(&e.path()),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_sigkilled_training_run_resumes_to_the_uninterrupted_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let t0 = Instant::now();
    assert!(train(&whole).status().unwrap().success());
    let full = t0.elapsed();
    let want = checkpoint_files(&whole);
    assert!(want.iter().any(|(n, _)| n == "model.safetensors"));
    let n = kill::kill_until_done(&|| train(&killed), full, 16);
    println!("{n} training processes killed mid-run (whole run {full:?})");
    assert!(n >= 3, "only {n} processes were killed mid-run");
    assert!(train(&killed).status().unwrap().success());
    let got = checkpoint_files(&killed);
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert!(g == w, "{name} differs after SIGKILLs and a resume");
    }
    for leftover in [killed.with_extension("tmp"), killed.with_extension("old")] {
        assert!(!leftover.exists(), "{} left behind", leftover.display());
    }
}

fn stderr_of(mut c: Command) -> String {
    let out = c.stderr(Stdio::piped()).output().unwrap();
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_resume_on_changed_inputs_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&bundled(), &model);
    let out = tmp.path().join("attack");
    // A run on the copy, then the copy's weights replaced by other weights of the same
    // shape (one value changed): the resume is refused, naming the file.
    assert!(attack(&out, &model).status().unwrap().success());
    let st = model.join("model.safetensors");
    let mut bytes = read(&st);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&st, &bytes).unwrap();
    let err = stderr_of(attack(&out, &model));
    assert!(err.contains("model/model.safetensors"), "{err}");
    assert!(err.contains("not the file this run read"), "{err}");
    // The same weights copied back (new times, same content): the resume goes on.
    std::fs::copy(bundled().join("model.safetensors"), &st).unwrap();
    assert!(attack(&out, &model).status().unwrap().success());

    // Training: the data file of an unfinished run edited.
    let data = tmp.path().join("train.jsonl");
    let val = tmp.path().join("val.jsonl");
    let lines: String = (0..16)
        .map(|i| format!("{{\"text\": \"example {i}\", \"label\": {}}}\n", i % 2))
        .collect();
    std::fs::write(&data, &lines).unwrap();
    std::fs::write(&val, &lines).unwrap();
    let run = tmp.path().join("run");
    let train_cmd = |run: &Path| {
        let mut c = armsrace(&repo());
        c.args(["--threads", "1", "train", "--from"])
            .arg(&model)
            .arg("--task")
            .arg(format!("jsonl:{}", data.display()))
            .arg("--val-file")
            .arg(&val)
            .args(["--epochs", "1", "--batch-size", "8", "--out"])
            .arg(run);
        c
    };
    assert!(train_cmd(&run).status().unwrap().success());
    // Finished: started again on the same inputs it is reported as finished ...
    assert!(train_cmd(&run).status().unwrap().success());
    // ... and on an edited data file it is refused, naming the file.
    std::fs::write(&data, lines.replace("example 3", "example three")).unwrap();
    let err = stderr_of(train_cmd(&run));
    assert!(err.contains("inputs") && err.contains("task"), "{err}");
    assert!(err.contains("not the file this run read"), "{err}");
}

#[test]
fn a_second_training_process_on_one_out_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut first = train(&out).spawn().unwrap();
    // Wait for the first process to hold its lock (the file beside --out).
    let lock = tmp.path().join("run.lock");
    let t0 = Instant::now();
    while !lock.exists() && t0.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = train(&out).stderr(Stdio::piped()).output().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    let err = String::from_utf8_lossy(&second.stderr);
    if still_running {
        assert!(!second.status.success(), "a second writer was let in");
        assert!(err.contains("another armsrace process"), "{err}");
    }
    assert!(first.wait().unwrap().success());
    assert!(
        still_running,
        "the first run ended before the second started: make it longer"
    );
}
