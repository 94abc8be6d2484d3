//! `armsrace sweep` end to end, on the real binary: a small grid (a training step per seed,
//! shared by two cells, and an attack per cell on its output) run unsharded; as two shards
//! running concurrently (racing on the shared training units); and as two shards taken
//! from Slurm's environment variables: the same files each time. A finished sweep runs
//! nothing again, changed arguments are refused, `--slurm` writes the array script,
//! `--dry-run` lists the units. `scripts/slurm-test.sh` runs the same grid on a real
//! Slurm cluster.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_armsrace");

fn grid_text(iterations: usize) -> String {
    let sampler = common::repo_root().join("models/pythia-password-match-sampler");
    format!(
        r#"out = "out"
[axes]
seed = [0, 1]
threat = ["suffix", "prefix"]

[[step]]
name = "train"
per = ["seed"]
args = ["train", "--task", "password-match", "--from", "{}", "--epochs", "1",
        "--train-examples", "64", "--val-examples", "16", "--lr", "1e-3",
        "--optimizer", "adamw", "--seed", "{{seed}}", "--out", "{{dir}}"]

[[step]]
name = "attack"
args = ["attack", "--model", "{{train.dir}}", "--seed", "{{seed}}", "--threat", "{{threat}}",
        "--examples", "4", "--iterations", "{iterations}", "--out", "{{dir}}"]
"#,
        sampler.display()
    )
}

/// `root/NAME/grid.toml` holding the grid.
fn write_grid(root: &Path, name: &str, iterations: usize) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("grid.toml");
    std::fs::write(&p, grid_text(iterations)).unwrap();
    p
}

fn sweep(grid: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("sweep").arg(grid).args(extra);
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
        "ARMSRACE_SHARDS",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn ok(out: Output) -> String {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "sweep failed:\n{so}\n{se}");
    so
}

const WALL: [&str; 3] = [
    "wall_s",
    "seconds_per_iteration",
    "seconds_per_example_iteration",
];

fn strip_wall(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !WALL.contains(&k.as_str()) && !k.ends_with("_wall_s"));
            m.values_mut().for_each(strip_wall);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_wall),
        _ => {}
    }
}

/// What two runs of the same sweep must share, by path under OUT: every summary.json and
/// results.jsonl with wall-time fields removed, every checkpoint's bytes. (To be swapped
/// for `report::table`'s rows once that lands.)
fn comparable(out: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, acc: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, acc);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let text = || std::fs::read_to_string(&p).unwrap();
            let bytes = if name == "summary.json" {
                let mut v: serde_json::Value = serde_json::from_str(&text()).unwrap();
                strip_wall(&mut v);
                v.to_string().into_bytes()
            } else if name == "results.jsonl" {
                let mut s = String::new();
                for line in text().lines().filter(|l| !l.trim().is_empty()) {
                    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                    strip_wall(&mut v);
                    s += &v.to_string();
                    s.push('\n');
                }
                s.into_bytes()
            } else if name.ends_with(".safetensors") {
                std::fs::read(&p).unwrap()
            } else {
                continue;
            };
            acc.insert(rel, bytes);
        }
    }
    let mut acc = BTreeMap::new();
    walk(out, out, &mut acc);
    acc
}

fn assert_same_outputs(a: &Path, b: &Path) {
    let (x, y) = (comparable(a), comparable(b));
    let count = |n: &str| x.keys().filter(|k| k.ends_with(n)).count();
    // 2 checkpoints, 4 attacks.
    assert_eq!(
        (
            count("model.safetensors"),
            count("summary.json"),
            count("results.jsonl")
        ),
        (2, 4, 4),
        "{:?}",
        x.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "{} vs {}",
        a.display(),
        b.display()
    );
    for (k, v) in &x {
        assert!(
            v == &y[k],
            "{} differs between {} and {}",
            k.display(),
            a.display(),
            b.display()
        );
    }
    // The results table (`armsrace report --table-only`): byte for byte.
    let table = |out: &Path| {
        let report = out.with_extension("report");
        ok(Command::new(BIN)
            .args(["report", "--table-only", "--out"])
            .arg(&report)
            .arg(out)
            .output()
            .unwrap());
        std::fs::read(report.join("table.csv")).unwrap()
    };
    let (ta, tb) = (table(a), table(b));
    // One row per iteration 0..=3 of each of the 4 attacks, and a header.
    assert_eq!(String::from_utf8_lossy(&ta).lines().count(), 1 + 4 * 4);
    assert!(
        ta == tb,
        "the tables of {} and {} differ",
        a.display(),
        b.display()
    );
}

#[test]
fn sharded_sweeps_give_the_unsharded_files_and_finished_units_are_skipped() {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ga = write_grid(tmp.path(), "a", 3);
    let gb = write_grid(tmp.path(), "b", 3);
    let gc = write_grid(tmp.path(), "c", 3);

    let so = ok(sweep(&ga, &[], &[]).output().unwrap());
    assert!(so.contains("6 units: 6 ran, 0 skipped"), "{so}");
    let out_a = tmp.path().join("a/out");
    assert!(out_a.join("train/seed=0/.sweep-done").is_file());
    assert!(out_a
        .join("attack/seed=1,threat=prefix/summary.json")
        .is_file());
    assert!(out_a.join("attack/seed=1,threat=prefix.log").is_file());

    // Two shards at once; shard 0 also runs two units at a time.
    let s0 = sweep(&gb, &["--shard", "0/2", "--devices", "cpu,cpu"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let s1 = sweep(&gb, &["--shard", "1/2"], &[]).output().unwrap();
    let s0 = s0.wait_with_output().unwrap();
    let (o0, o1) = (ok(s0), ok(s1));
    // Each shard has both training units (each needed by one of its cells) and two attacks;
    // a training unit runs once in all.
    assert!(
        o0.contains("4 units") && o1.contains("4 units"),
        "{o0}\n{o1}"
    );
    let ran = |o: &str, what: &str| {
        o.lines()
            .filter(|l| l.contains(what) && l.contains(": done in"))
            .count()
    };
    assert_eq!(
        ran(&o0, "train seed=0") + ran(&o1, "train seed=0"),
        1,
        "{o0}\n{o1}"
    );
    assert_eq!(
        ran(&o0, "train seed=1") + ran(&o1, "train seed=1"),
        1,
        "{o0}\n{o1}"
    );
    assert_eq!(ran(&o0, "attack") + ran(&o1, "attack"), 4, "{o0}\n{o1}");
    assert_same_outputs(&out_a, &tmp.path().join("b/out"));

    // The shard from Slurm's variables, one task after the other.
    for i in ["0", "1"] {
        let o = ok(sweep(
            &gc,
            &[],
            &[("SLURM_ARRAY_TASK_ID", i), ("SLURM_ARRAY_TASK_COUNT", "2")],
        )
        .output()
        .unwrap());
        assert!(
            o.contains(&format!("shard {i}/2 (from SLURM_ARRAY_TASK_ID")),
            "{o}"
        );
    }
    assert_same_outputs(&out_a, &tmp.path().join("c/out"));

    // A finished sweep: nothing runs.
    let t = std::time::Instant::now();
    let so = ok(sweep(&ga, &[], &[]).output().unwrap());
    assert!(so.contains("6 units: 0 ran, 6 skipped"), "{so}");
    assert!(
        so.contains("attack seed=0,threat=suffix: skipped (done"),
        "{so}"
    );
    assert!(t.elapsed().as_secs_f64() < 5.0, "{:?}", t.elapsed());

    // Changed arguments: refused, nothing run.
    std::fs::write(&ga, grid_text(4)).unwrap();
    let out = sweep(&ga, &[], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("grid.toml: attack seed=0,threat=suffix was done by an earlier sweep with other arguments")
            && err.contains("--iterations 3")
            && err.contains("--iterations 4"),
        "{err}"
    );
    let dry = ok(sweep(&ga, &["--dry-run"], &[]).output().unwrap());
    assert!(dry.contains("[done] train seed=0: "), "{dry}");
    assert!(
        dry.contains("[refused: done with other arguments] attack seed=0,threat=suffix"),
        "{dry}"
    );
    eprintln!("sweep test: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn dry_run_lists_a_shards_units_from_the_flag_or_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let g = write_grid(tmp.path(), "a", 3);
    let flag = ok(sweep(&g, &["--dry-run", "--shard", "1/2"], &[])
        .output()
        .unwrap());
    let lines: Vec<&str> = flag.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(lines.len(), 4, "{flag}");
    assert!(lines.iter().all(|l| l.starts_with("[todo] ")), "{flag}");
    let want = format!(
        "[todo] attack seed=0,threat=prefix: {BIN} attack --model out/train/seed=0 --seed 0 \
         --threat prefix --examples 4 --iterations 3 --out out/attack/seed=0,threat=prefix"
    );
    assert!(lines.contains(&want.as_str()), "{want}\nin\n{flag}");
    assert!(
        !tmp.path().join("a/out").exists(),
        "a dry run writes nothing"
    );
    let units = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with('['))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    for env in [
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ][..],
        &[("JOB_COMPLETION_INDEX", "1"), ("ARMSRACE_SHARDS", "2")][..],
    ] {
        let o = ok(sweep(&g, &["--dry-run"], env).output().unwrap());
        assert_eq!(units(&o), units(&flag), "{env:?}");
    }
    let k8s = ok(sweep(
        &g,
        &["--dry-run", "--shards", "2"],
        &[("JOB_COMPLETION_INDEX", "1")],
    )
    .output()
    .unwrap());
    assert_eq!(units(&k8s), units(&flag));
    // Bad shards are refused.
    for bad in [
        &["--shard", "2/2"][..],
        &["--shard", "0/0"][..],
        &["--shards", "2"][..],
    ] {
        let out = sweep(&g, &[&["--dry-run"][..], bad].concat(), &[])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
    }
}

#[test]
fn slurm_writes_an_array_script_and_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let g = write_grid(tmp.path(), "a", 3);
    let so = ok(sweep(
        &g,
        &["--slurm", "--cpus-per-task", "2", "--gres", "gpu:1"],
        &[],
    )
    .output()
    .unwrap());
    let script_path = tmp.path().join("a/out/sweep.sbatch");
    assert!(
        so.contains("sbatch ") && so.contains("sweep.sbatch"),
        "{so}"
    );
    let s = std::fs::read_to_string(&script_path).unwrap();
    let grid = std::fs::canonicalize(&g).unwrap();
    let out = std::fs::canonicalize(tmp.path().join("a/out")).unwrap();
    for want in [
        "#SBATCH --array=0-3\n".to_string(),
        "#SBATCH --job-name=armsrace-grid\n".into(),
        format!("#SBATCH --output={}/slurm-%A_%a.out\n", out.display()),
        "#SBATCH --cpus-per-task=2\n".into(),
        "#SBATCH --gres=gpu:1\n".into(),
        format!("\n{BIN} sweep {}\n", grid.display()),
    ] {
        assert!(s.contains(&want), "{want:?} in\n{s}");
    }
    assert!(!out.join("train").exists(), "--slurm runs nothing");
    let custom = tmp.path().join("job.sh");
    ok(sweep(
        &g,
        &[&format!("--slurm={}", custom.display()), "--shards", "2"],
        &[],
    )
    .output()
    .unwrap());
    assert!(std::fs::read_to_string(&custom)
        .unwrap()
        .contains("#SBATCH --array=0-1\n"));
}

#[test]
fn bad_grids_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("g.toml");
    std::fs::write(
        &p,
        "out = \"o\"\n[axes]\nseed = [0]\n[[step]]\nname = \"a\"\nargs = [\"attack\", \"{sed}\"]\n",
    )
    .unwrap();
    let out = sweep(&p, &[], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("g.toml") && err.contains("unknown placeholder `{sed}`"),
        "{err}"
    );
    let out = sweep(&tmp.path().join("missing.toml"), &[], &[])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
