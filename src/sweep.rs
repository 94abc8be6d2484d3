//! Declarative grids of armsrace runs (`armsrace sweep GRID.toml`).
//!
//! A grid names axes (lists of values) and steps (armsrace command lines with
//! placeholders). The *cells* are the cartesian product of the axes, in the order they are
//! written (the last axis varies fastest). A step depends on some axes (`per`, default
//! all): it has one *unit*, one run, per distinct value tuple of those axes, shared by
//! every cell that agrees on them.
//!
//! ```toml
//! out = "sweep-out"      # parent folder of every run, relative to the grid file's folder
//! [axes]
//! seed = [0, 1]
//! threat = ["suffix", "prefix"]
//!
//! [[step]]
//! name = "train"
//! per = ["seed"]
//! args = ["train", "--task", "password-match", "--seed", "{seed}", "--out", "{dir}"]
//!
//! [[step]]
//! name = "attack"
//! args = ["attack", "--model", "{train.dir}", "--threat", "{threat}", "--out", "{dir}"]
//! ```
//!
//! Placeholders: `{AXIS}` (one of the step's `per` axes), `{dir}` (this unit's folder,
//! `OUT/STEP/k=v,k=v`, or `OUT/STEP` for a step shared by every cell), `{STEP.dir}` (the
//! folder of an earlier step's unit for this unit's values), `{{` and `}}` for braces.
//! Units run in the grid file's folder, so relative paths in `args` are relative to the
//! grid file, as `out` is; `{dir}` expands relative to it too (absolute when `out` is), so
//! the same grid in two places gives the same files.
//!
//! A unit that exits 0 gets a marker `DIR/.sweep-done` holding a hash of its arguments: a
//! unit whose marker matches is skipped, one whose arguments changed is refused. Shard `i`
//! of `n` runs the units of the cells `c` with `c % n == i`; a unit shared by cells of
//! several shards is run by whichever takes its lock (`DIR.sweep-lock`, beside the folder)
//! first, and the others wait for it and then find its marker.

use crate::error::{Error, Result};
use crate::files;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The marker a finished unit leaves in its folder.
pub const MARKER: &str = ".sweep-done";
/// Appended to a unit's folder for its lock file (`OUT/attack/seed=0.sweep-lock`).
pub const LOCK_SUFFIX: &str = ".sweep-lock";
/// The most cells a grid may have (each is at least one run).
pub const MAX_CELLS: usize = 1 << 20;
/// Appended to a unit's folder for its log (`OUT/attack/seed=0.log`).
pub const LOG_SUFFIX: &str = ".log";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    out: String,
    #[serde(default)]
    axes: toml::Table,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    per: Option<Vec<String>>,
    args: Vec<String>,
}

/// One axis: its name and values (as the command line gets them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Axis {
    pub name: String,
    pub values: Vec<String>,
}

/// A piece of an argument template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    /// An axis by index.
    Axis(usize),
    /// This unit's folder.
    Dir,
    /// An earlier step's unit folder, by step index.
    StepDir(usize),
}

/// One step: a subcommand line run once per value tuple of `per`.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    /// The axes it depends on, as indices in grid order.
    pub per: Vec<usize>,
    args: Vec<Vec<Piece>>,
}

/// A loaded, checked grid.
#[derive(Clone, Debug)]
pub struct Grid {
    /// The grid file (canonical).
    pub path: PathBuf,
    /// Its folder: where units run and relative paths start.
    pub root: PathBuf,
    /// `out` as written (relative to `root` unless absolute).
    pub out: PathBuf,
    pub axes: Vec<Axis>,
    pub steps: Vec<Step>,
}

/// `rel` under the canonical folder `root`, its leading `..` taken off `root` (exact: a
/// canonical path has no symbolic links to step back over); an absolute `rel` as it is.
fn under(root: &Path, rel: &Path) -> PathBuf {
    use std::path::Component;
    let mut base = root.to_path_buf();
    let mut rest = rel.components().peekable();
    while let Some(c) = rest.peek() {
        match c {
            Component::ParentDir => {
                base.pop();
            }
            Component::CurDir => {}
            _ => break,
        }
        rest.next();
    }
    base.join(rest.collect::<PathBuf>())
}

/// One run: a step at one value tuple of its `per` axes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Index of its step in [`Grid::steps`].
    pub step: usize,
    pub step_name: String,
    /// (axis, value) for the step's `per` axes, in grid order.
    pub values: Vec<(String, String)>,
    /// Its folder as `{dir}` expands (relative to the grid's folder unless `out` is
    /// absolute).
    pub dir: PathBuf,
    /// The subcommand line, placeholders expanded.
    pub args: Vec<String>,
    /// The cells (indices in grid order) that use it, ascending.
    pub cells: Vec<usize>,
}

impl Unit {
    /// `step k=v,k=v` for messages.
    pub fn label(&self) -> String {
        if self.values.is_empty() {
            self.step_name.clone()
        } else {
            format!("{} {}", self.step_name, values_key(&self.values))
        }
    }

    /// Its folder on disk (`dir` under the grid's folder).
    pub fn path(&self, grid: &Grid) -> PathBuf {
        under(&grid.root, &self.dir)
    }

    /// The hash its marker records: xxh3-64 of the arguments, NUL-separated.
    pub fn args_hash(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for a in &self.args {
            h.update(a.as_bytes());
            h.update(&[0]);
        }
        format!("{:016x}", h.digest())
    }

    /// Whether it is done, to do, or done with other arguments (read from its marker).
    pub fn status(&self, grid: &Grid) -> Result<Status> {
        let marker = self.path(grid).join(MARKER);
        let bytes = match std::fs::read(&marker) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Status::Todo),
            Err(e) => return Err(Error::io(&marker, e)),
        };
        let m: Marker = serde_json::from_slice(&bytes).map_err(|e| {
            Error::format(
                &marker,
                format!("not a sweep marker ({e}); delete it to run the unit again"),
            )
        })?;
        Ok(if m.hash == self.args_hash() {
            Status::Done
        } else {
            Status::Changed { old: m.args }
        })
    }

    /// The refusal for a unit done with other arguments.
    fn changed_error(&self, grid: &Grid, old: &[String]) -> Error {
        let dir = self.path(grid);
        Error::input(format!(
            "{}: {} was done by an earlier sweep with other arguments; refusing to mix \
             them (as a resume refuses changed settings). Earlier: {}; now: {}. Restore \
             the grid, change `out`, or delete {} to run it again",
            grid.path.display(),
            self.label(),
            shell_line(old),
            shell_line(&self.args),
            dir.display()
        ))
    }
}

/// What a unit's marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Done,
    Todo,
    /// Done with these other arguments.
    Changed {
        old: Vec<String>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    hash: String,
    args: Vec<String>,
}

fn values_key(values: &[(String, String)]) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Axis and step names: letters, digits, '_' and '-' (they name folders and placeholders).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn value_string(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Splits an argument into literal text and placeholders (`{{`, `}}`: braces).
fn split_template(s: &str) -> std::result::Result<Vec<(bool, String)>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err(format!(
                                "unclosed placeholder `{{{name}` (write `{{{{` for a brace)"
                            ))
                        }
                        Some(c) => name.push(c),
                    }
                }
                if !lit.is_empty() {
                    out.push((false, std::mem::take(&mut lit)));
                }
                out.push((true, name));
            }
            '}' => return Err("a `}` without its `{` (write `}}` for a brace)".into()),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push((false, lit));
    }
    Ok(out)
}

impl Grid {
    /// Reads and checks a grid file; every error names the file and the field.
    pub fn load(path: &Path) -> Result<Grid> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let path = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path)
    }

    /// Checks grid text as if read from `path` (canonical; its folder is the root).
    pub fn parse(text: &str, path: &Path) -> Result<Grid> {
        let bad = |msg: String| Error::format(path, msg);
        let raw: RawGrid = toml::from_str(text).map_err(|e| bad(format!("not a grid: {e}")))?;
        if raw.out.is_empty() {
            return Err(bad("`out`: empty (the parent folder of every run)".into()));
        }
        let mut axes: Vec<Axis> = Vec::new();
        for (name, list) in &raw.axes {
            let field = format!("axes.{name}");
            if !valid_name(name) || name == "dir" {
                return Err(bad(format!(
                    "`{field}`: an axis name is letters, digits, '_' and '-', and not `dir`"
                )));
            }
            let toml::Value::Array(items) = list else {
                return Err(bad(format!("`{field}`: a list of values, e.g. [0, 1]")));
            };
            if items.is_empty() {
                return Err(bad(format!(
                    "`{field}`: empty list (an axis needs a value)"
                )));
            }
            let mut values: Vec<String> = Vec::new();
            let mut slugs: BTreeMap<String, String> = BTreeMap::new();
            for (i, v) in items.iter().enumerate() {
                let Some(s) = value_string(v) else {
                    return Err(bad(format!(
                        "`{field}[{i}]`: a string, number or boolean, got {v}"
                    )));
                };
                if s.is_empty() {
                    return Err(bad(format!("`{field}[{i}]`: an empty value")));
                }
                if values.contains(&s) {
                    return Err(bad(format!("`{field}[{i}]`: `{s}` is given twice")));
                }
                if let Some(other) = slugs.insert(files::slug(&s), s.clone()) {
                    return Err(bad(format!(
                        "`{field}[{i}]`: `{s}` and `{other}` give the same folder name `{}`",
                        files::slug(&s)
                    )));
                }
                values.push(s);
            }
            axes.push(Axis {
                name: name.clone(),
                values,
            });
        }
        if axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
            .is_none_or(|n| n > MAX_CELLS)
        {
            return Err(bad(format!(
                "`axes`: more than {MAX_CELLS} cells (the product of the axes' lengths)"
            )));
        }
        if raw.step.is_empty() {
            return Err(bad(
                "no [[step]]: a grid runs at least one step (name, args)".into(),
            ));
        }
        let mut steps: Vec<Step> = Vec::new();
        for (si, rs) in raw.step.iter().enumerate() {
            let field = format!("step[{si}]");
            if !valid_name(&rs.name) {
                return Err(bad(format!(
                    "`{field}.name`: `{}`: a step name is letters, digits, '_' and '-'",
                    rs.name
                )));
            }
            if steps.iter().any(|s| s.name == rs.name) {
                return Err(bad(format!(
                    "`{field}.name`: `{}` names an earlier step too",
                    rs.name
                )));
            }
            let field = format!("step `{}`", rs.name);
            let axis_names = || {
                axes.iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let per: Vec<usize> = match &rs.per {
                None => (0..axes.len()).collect(),
                Some(list) => {
                    let mut per = Vec::new();
                    for name in list {
                        let Some(i) = axes.iter().position(|a| &a.name == name) else {
                            return Err(bad(format!(
                                "{field}, `per`: unknown axis `{name}` (axes: {})",
                                axis_names()
                            )));
                        };
                        if per.contains(&i) {
                            return Err(bad(format!("{field}, `per`: `{name}` is given twice")));
                        }
                        per.push(i);
                    }
                    per.sort_unstable();
                    per
                }
            };
            if rs.args.is_empty() {
                return Err(bad(format!(
                    "{field}, `args`: empty (an armsrace subcommand line, e.g. [\"attack\", ...])"
                )));
            }
            let mut args = Vec::new();
            for (ai, arg) in rs.args.iter().enumerate() {
                let at = format!("{field}, `args[{ai}]` (`{arg}`)");
                let parts = split_template(arg).map_err(|m| bad(format!("{at}: {m}")))?;
                let mut pieces = Vec::new();
                for (is_placeholder, s) in parts {
                    if !is_placeholder {
                        pieces.push(Piece::Lit(s));
                        continue;
                    }
                    let piece = if s == "dir" {
                        Piece::Dir
                    } else if let Some(i) = axes.iter().position(|a| a.name == s) {
                        if !per.contains(&i) {
                            return Err(bad(format!(
                                "{at}: `{{{s}}}`: this step does not depend on axis `{s}` (it \
                                 is not in its `per`), so its runs are shared by cells with \
                                 different `{s}`; add `{s}` to `per`"
                            )));
                        }
                        Piece::Axis(i)
                    } else if let Some((step, what)) = s.rsplit_once('.') {
                        let Some(j) = steps.iter().position(|t| t.name == step) else {
                            let later = raw.step.iter().any(|t| t.name == step);
                            return Err(bad(format!(
                                "{at}: `{{{s}}}`: {}",
                                if later {
                                    format!(
                                        "step `{step}` is not defined before this one (steps \
                                         run in order; a step refers to earlier ones)"
                                    )
                                } else {
                                    format!("no step `{step}` before this one")
                                }
                            )));
                        };
                        if what != "dir" {
                            return Err(bad(format!(
                                "{at}: `{{{s}}}`: a step gives only its folder, `{{{step}.dir}}`"
                            )));
                        }
                        if let Some(&missing) = steps[j].per.iter().find(|a| !per.contains(a)) {
                            let m = &axes[missing].name;
                            return Err(bad(format!(
                                "{at}: `{{{s}}}`: step `{step}` depends on axis `{m}` and this \
                                 step does not, so the folder is ambiguous; add `{m}` to \
                                 this step's `per`"
                            )));
                        }
                        Piece::StepDir(j)
                    } else {
                        return Err(bad(format!(
                            "{at}: unknown placeholder `{{{s}}}` (axes: {}; `{{dir}}`; \
                             earlier steps' `{{STEP.dir}}`)",
                            axis_names()
                        )));
                    };
                    pieces.push(piece);
                }
                args.push(pieces);
            }
            steps.push(Step {
                name: rs.name.clone(),
                per,
                args,
            });
        }
        Ok(Grid {
            root: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            path: path.to_path_buf(),
            out: PathBuf::from(&raw.out),
            axes,
            steps,
        })
    }

    /// The number of cells (the product of the axes' lengths; 1 without axes).
    pub fn cells(&self) -> usize {
        self.axes.iter().map(|a| a.values.len()).product()
    }

    /// Cell `c`'s value index per axis (the last axis varies fastest).
    pub fn cell(&self, mut c: usize) -> Vec<usize> {
        let mut idx = vec![0; self.axes.len()];
        for (i, a) in self.axes.iter().enumerate().rev() {
            idx[i] = c % a.values.len();
            c /= a.values.len();
        }
        idx
    }

    /// The folder of `step`'s unit at the value indices `cell` (only its `per` axes count).
    fn dir(&self, step: usize, cell: &[usize]) -> PathBuf {
        let s = &self.steps[step];
        let dir = self.out.join(&s.name);
        if s.per.is_empty() {
            return dir;
        }
        let key: Vec<String> = s
            .per
            .iter()
            .map(|&a| {
                let axis = &self.axes[a];
                format!("{}={}", axis.name, files::slug(&axis.values[cell[a]]))
            })
            .collect();
        dir.join(key.join(","))
    }

    /// Every unit: steps in order, each step's units in the order of their first cell.
    pub fn units(&self) -> Vec<Unit> {
        let mut units: Vec<Unit> = Vec::new();
        for (si, step) in self.steps.iter().enumerate() {
            let mut index: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
            for c in 0..self.cells() {
                let cell = self.cell(c);
                let key: Vec<usize> = step.per.iter().map(|&a| cell[a]).collect();
                if let Some(&u) = index.get(&key) {
                    units[u].cells.push(c);
                    continue;
                }
                let dir = self.dir(si, &cell);
                let dir_s = dir.to_string_lossy().into_owned();
                let args = step
                    .args
                    .iter()
                    .map(|pieces| {
                        let mut s = String::new();
                        for p in pieces {
                            match p {
                                Piece::Lit(l) => s.push_str(l),
                                Piece::Axis(a) => s.push_str(&self.axes[*a].values[cell[*a]]),
                                Piece::Dir => s.push_str(&dir_s),
                                Piece::StepDir(j) => {
                                    s.push_str(&self.dir(*j, &cell).to_string_lossy())
                                }
                            }
                        }
                        s
                    })
                    .collect();
                index.insert(key, units.len());
                units.push(Unit {
                    step: si,
                    step_name: step.name.clone(),
                    values: step
                        .per
                        .iter()
                        .map(|&a| {
                            (
                                self.axes[a].name.clone(),
                                self.axes[a].values[cell[a]].clone(),
                            )
                        })
                        .collect(),
                    dir,
                    args,
                    cells: vec![c],
                });
            }
        }
        units
    }

    /// The folder `out` on disk.
    pub fn out_path(&self) -> PathBuf {
        under(&self.root, &self.out)
    }
}

/// Shard `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// A shard, refused unless `index < count`; `what` names where the numbers came from.
    pub fn new(index: usize, count: usize, what: &str) -> Result<Shard> {
        if count == 0 {
            return Err(Error::input(format!("{what}: 0 shards (need at least 1)")));
        }
        if index >= count {
            return Err(Error::input(format!(
                "{what}: shard {index} of {count} (shards are numbered 0..={})",
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }

    /// `i/n`, as `--shard` takes it.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::input(format!("--shard {s}: expected INDEX/COUNT, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Shard::new(i, n, &format!("--shard {s}"))
    }

    /// Whether cell `c` is this shard's.
    pub fn owns(&self, c: usize) -> bool {
        c % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard to run: `--shard` if given, else from the environment (`env`: a variable's
/// value): Slurm's `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`, or a Kubernetes
/// indexed Job's `JOB_COMPLETION_INDEX`; a count missing there comes from `--shards` or
/// `ARMSRACE_SHARDS`. `None`: the whole sweep. Returns where it came from, for a log line.
pub fn shard_from(
    flag: Option<Shard>,
    shards: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(Shard, String)>> {
    if let Some(s) = flag {
        if let Some(n) = shards.filter(|&n| n != s.count) {
            return Err(Error::input(format!(
                "--shard {s} and --shards {n} disagree on the number of shards"
            )));
        }
        return Ok(Some((s, "--shard".into())));
    }
    let number = |var: &str, v: &str| -> Result<usize> {
        v.trim()
            .parse()
            .map_err(|_| Error::input(format!("{var}={v}: not a non-negative integer")))
    };
    let count_else = |from: &str| -> Result<(usize, String)> {
        if let Some(n) = shards {
            return Ok((n, "--shards".into()));
        }
        match env("ARMSRACE_SHARDS") {
            Some(v) => Ok((number("ARMSRACE_SHARDS", &v)?, "ARMSRACE_SHARDS".into())),
            None => Err(Error::input(format!(
                "{from} gives the shard index but not the number of shards: pass --shards N \
                 or set ARMSRACE_SHARDS"
            ))),
        }
    };
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        let Some(v) = env(var) else { continue };
        let index = number(var, &v)?;
        let (count, from) = match env("SLURM_ARRAY_TASK_COUNT").filter(|_| var.starts_with("SLURM"))
        {
            Some(c) => (
                number("SLURM_ARRAY_TASK_COUNT", &c)?,
                "SLURM_ARRAY_TASK_COUNT".to_string(),
            ),
            None => count_else(var)?,
        };
        let what = format!("{var}={index}, {from}={count}");
        return Ok(Some((Shard::new(index, count, &what)?, what)));
    }
    if let Some(n) = shards {
        return Err(Error::input(format!(
            "--shards {n} without a shard index: pass --shard INDEX/{n}, or run as a Slurm \
             array task (SLURM_ARRAY_TASK_ID) or a Kubernetes indexed Job \
             (JOB_COMPLETION_INDEX); --shards alone sizes --slurm's array"
        )));
    }
    Ok(None)
}

/// The units shard `shard` runs: those used by at least one of its cells (all of them
/// without a shard), in order.
pub fn shard_units(units: &[Unit], shard: Option<Shard>) -> Vec<&Unit> {
    units
        .iter()
        .filter(|u| shard.is_none_or(|s| u.cells.iter().any(|&c| s.owns(c))))
        .collect()
}

/// `args` as one shell line, each quoted where needed.
pub fn shell_line<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` quoted for a POSIX shell (unchanged when it has nothing special).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Where a unit runs: a CPU process, or one with `CUDA_VISIBLE_DEVICES` set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(String),
}

impl Device {
    /// `--devices`: comma-separated `cpu` or CUDA device ids (`0,1`, `cpu,cpu`).
    pub fn parse_list(s: &str) -> Result<Vec<Device>> {
        let mut out = Vec::new();
        for d in s.split(',') {
            let d = d.trim();
            if d.is_empty() || d.chars().any(char::is_whitespace) {
                return Err(Error::input(format!(
                    "--devices {s}: expected a comma-separated list of `cpu` or CUDA device \
                     ids, e.g. 0,1 or cpu,cpu"
                )));
            }
            out.push(if d == "cpu" {
                Device::Cpu
            } else {
                Device::Cuda(d.to_string())
            });
        }
        Ok(out)
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(d) => write!(f, "CUDA_VISIBLE_DEVICES={d}"),
        }
    }
}

/// How [`run`] runs units.
pub struct RunOptions {
    /// The program units run (`armsrace` itself: `std::env::current_exe()`).
    pub exe: PathBuf,
    /// At most this many units at once, one per entry (one step at a time).
    pub devices: Vec<Device>,
    /// How often a unit locked by another shard is looked at again.
    pub poll: Duration,
}

/// What [`run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub ran: usize,
    pub skipped: usize,
}

enum Outcome {
    Ran,
    Skipped,
}

/// Runs `units` (of `grid`) step by step, each step's units in parallel over
/// `opts.devices`; `say` gets one line per event (it may be called from several threads).
/// A unit done with other arguments is refused before anything runs; after a failure no
/// new unit starts, and the error names the unit and its log.
pub fn run(
    grid: &Grid,
    units: &[&Unit],
    opts: &RunOptions,
    say: &(dyn Fn(String) + Sync),
) -> Result<Report> {
    if opts.devices.is_empty() {
        return Err(Error::input("--devices: no device given"));
    }
    for u in units {
        if let Status::Changed { old } = u.status(grid)? {
            return Err(u.changed_error(grid, &old));
        }
    }
    let total = units.len();
    let numbered: Vec<(usize, &Unit)> = units.iter().copied().enumerate().collect();
    let report = Mutex::new(Report::default());
    for step in 0..grid.steps.len() {
        let queue: Mutex<VecDeque<(usize, &Unit)>> = Mutex::new(
            numbered
                .iter()
                .filter(|(_, u)| u.step == step)
                .copied()
                .collect(),
        );
        let failed = AtomicBool::new(false);
        let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for device in &opts.devices {
                let (queue, failed, errors, report) = (&queue, &failed, &errors, &report);
                scope.spawn(move || loop {
                    if failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let Some((i, unit)) =
                        queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
                    else {
                        return;
                    };
                    let n = format!("[{}/{total}]", i + 1);
                    match run_unit(grid, unit, device, opts, &n, say) {
                        Ok(o) => {
                            let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                            match o {
                                Outcome::Ran => r.ran += 1,
                                Outcome::Skipped => r.skipped += 1,
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                        }
                    }
                });
            }
        });
        let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
        if !errors.is_empty() {
            let first = errors.remove(0);
            if errors.is_empty() {
                return Err(first);
            }
            return Err(Error::Other(format!(
                "{first} (and {} more failed: {})",
                errors.len(),
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
    }
    Ok(report.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// One unit: wait for its lock, skip it if its marker matches, else run it and mark it.
fn run_unit(
    grid: &Grid,
    unit: &Unit,
    device: &Device,
    opts: &RunOptions,
    n: &str,
    say: &(dyn Fn(String) + Sync),
) -> Result<Outcome> {
    let dir = unit.path(grid);
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let lock_file = files::sibling(&dir, LOCK_SUFFIX);
    let mut waited = false;
    let _lock = loop {
        if let Some(l) = files::try_lock(&lock_file)? {
            break l;
        }
        if !waited {
            say(format!(
                "{n} {}: waiting for {}, held by another shard ({})",
                unit.label(),
                unit.dir.display(),
                lock_file.display()
            ));
            waited = true;
        }
        std::thread::sleep(opts.poll);
    };
    match unit.status(grid)? {
        Status::Done => {
            say(format!(
                "{n} {}: skipped (done: {})",
                unit.label(),
                unit.dir.display()
            ));
            return Ok(Outcome::Skipped);
        }
        Status::Changed { old } => return Err(unit.changed_error(grid, &old)),
        Status::Todo => {}
    }
    let log_path = files::sibling(&dir, LOG_SUFFIX);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let line = shell_line(&unit.args);
    {
        use std::io::Write;
        writeln!(
            log,
            "== armsrace sweep: {} {line} (in {}, {device})",
            opts.exe.display(),
            grid.root.display()
        )
        .map_err(|e| Error::io(&log_path, e))?;
    }
    let err_log = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let mut cmd = Command::new(&opts.exe);
    cmd.args(&unit.args)
        .current_dir(&grid.root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    if let Device::Cuda(d) = device {
        cmd.env("CUDA_VISIBLE_DEVICES", d);
    }
    let on = match device {
        Device::Cpu => String::new(),
        d => format!(" on {d}"),
    };
    say(format!(
        "{n} {}: running{on} (log: {})",
        unit.label(),
        log_path.display()
    ));
    let start = Instant::now();
    let status = cmd.status().map_err(|e| Error::io(&opts.exe, e))?;
    if !status.success() {
        let tail = std::fs::read_to_string(&log_path)
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(5)..].join("\n  ")
            })
            .unwrap_or_default();
        return Err(Error::Other(format!(
            "{}: {} failed ({status}): {line}\n  log {}, last lines:\n  {tail}",
            grid.path.display(),
            unit.label(),
            log_path.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let marker = Marker {
        hash: unit.args_hash(),
        args: unit.args.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&marker).map_err(|e| Error::Other(e.to_string()))?;
    files::write_atomic(&dir.join(MARKER), &bytes)?;
    say(format!(
        "{n} {}: done in {:.1} s",
        unit.label(),
        start.elapsed().as_secs_f64()
    ));
    Ok(Outcome::Ran)
}

/// Settings of a Slurm array script.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// Array tasks (`--array=0-(shards-1)`), one shard each.
    pub shards: usize,
    pub job_name: String,
    pub cpus_per_task: Option<usize>,
    /// `--gres` (e.g. `gpu:1`).
    pub gres: Option<String>,
    pub partition: Option<String>,
    pub time: Option<String>,
}

/// A Slurm array script running `exe sweep GRID` once per shard: every task runs the same
/// line and takes its shard from `SLURM_ARRAY_TASK_ID` / `SLURM_ARRAY_TASK_COUNT`.
/// `exe` should be absolute.
pub fn slurm_script(grid: &Grid, exe: &Path, o: &SlurmOptions) -> Result<String> {
    if o.shards == 0 {
        return Err(Error::input(
            "--shards 0: a Slurm array needs at least one task",
        ));
    }
    let out = grid.out_path();
    let mut s = String::from("#!/bin/bash\n");
    s += &format!(
        "# Written by `armsrace sweep --slurm` for {} ({} cells, {} shards).\n",
        grid.path.display(),
        grid.cells(),
        o.shards
    );
    s += &format!("#SBATCH --job-name={}\n", o.job_name);
    s += &format!("#SBATCH --array=0-{}\n", o.shards - 1);
    s += &format!(
        "#SBATCH --output={}\n",
        out.join("slurm-%A_%a.out").display()
    );
    if let Some(c) = o.cpus_per_task {
        s += &format!("#SBATCH --cpus-per-task={c}\n");
    }
    if let Some(g) = &o.gres {
        s += &format!("#SBATCH --gres={g}\n");
    }
    if let Some(p) = &o.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(t) = &o.time {
        s += &format!("#SBATCH --time={t}\n");
    }
    s += &format!(
        "{}\n",
        shell_line(&[
            exe.to_string_lossy().as_ref(),
            "sweep",
            grid.path.to_string_lossy().as_ref(),
        ])
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(text: &str) -> Result<Grid> {
        Grid::parse(text, Path::new("/g/grid.toml"))
    }

    const TWO_STEPS: &str = r#"
out = "o"
[axes]
size = ["a", "b c"]
seed = [0, 1]
[[step]]
name = "train"
per = ["size"]
args = ["train", "--shape", "{size}", "--out", "{dir}"]
[[step]]
name = "attack"
args = ["attack", "--model", "{train.dir}", "--seed", "{seed}", "--out", "{dir}", "x{{y}}"]
"#;

    #[test]
    fn placeholders_expand_and_per_shares_units() {
        let g = grid(TWO_STEPS).unwrap();
        assert_eq!(g.root, Path::new("/g"));
        assert_eq!(
            under(&g.root, Path::new("../x/./y")),
            Path::new("/x/./y").components().collect::<PathBuf>()
        );
        assert_eq!(under(&g.root, Path::new("/abs/o")), Path::new("/abs/o"));
        assert_eq!(g.out_path(), Path::new("/g/o"));
        // Axes keep the file's order (size before seed, not alphabetical).
        assert_eq!(g.axes[0].name, "size");
        assert_eq!(g.cells(), 4);
        let u = g.units();
        assert_eq!(u.len(), 2 + 4);
        assert_eq!(
            u[0].args,
            ["train", "--shape", "a", "--out", "o/train/size=a"]
        );
        assert_eq!(u[0].cells, [0, 1]);
        assert_eq!(u[1].dir, Path::new("o/train/size=b-c"));
        assert_eq!(u[1].args[2], "b c");
        assert_eq!(u[1].cells, [2, 3]);
        // Cell 1 = (a, 1), cell 2 = (b c, 0): the last axis varies fastest.
        assert_eq!(
            u[3].args,
            [
                "attack",
                "--model",
                "o/train/size=a",
                "--seed",
                "1",
                "--out",
                "o/attack/size=a,seed=1",
                "x{y}"
            ]
        );
        assert_eq!(u[4].args[2], "o/train/size=b-c");
        assert_eq!(u[4].label(), "attack size=b c,seed=0");
        assert!(u[2..].iter().all(|x| x.cells.len() == 1));
    }

    #[test]
    fn a_step_shared_by_all_cells_has_the_step_folder() {
        let g = grid(
            "out = \"/abs\"\n[axes]\nk = [1, 2, 3]\n[[step]]\nname = \"t\"\nper = []\n\
             args = [\"train\", \"--out\", \"{dir}\"]\n[[step]]\nname = \"a\"\n\
             args = [\"attack\", \"--model\", \"{t.dir}\", \"--seed\", \"{k}\"]\n",
        )
        .unwrap();
        let u = g.units();
        assert_eq!(u[0].dir, Path::new("/abs/t"));
        assert_eq!(u[0].cells, [0, 1, 2]);
        assert_eq!(u[3].args, ["attack", "--model", "/abs/t", "--seed", "3"]);
        // Without axes: one cell.
        let g = grid("out = \"o\"\n[[step]]\nname = \"t\"\nargs = [\"x\", \"{dir}\"]\n").unwrap();
        assert_eq!(g.cells(), 1);
        assert_eq!(g.units()[0].args, ["x", "o/t"]);
    }

    #[test]
    fn every_cell_unit_is_in_exactly_one_shard_and_shared_units_where_needed() {
        let g = grid(TWO_STEPS).unwrap();
        let units = g.units();
        for n in 1..=5 {
            let shards: Vec<Vec<&Unit>> = (0..n)
                .map(|i| shard_units(&units, Some(Shard::new(i, n, "t").unwrap())))
                .collect();
            for c in 0..g.cells() {
                for (si, _) in g.steps.iter().enumerate() {
                    let unit = units
                        .iter()
                        .find(|u| u.step == si && u.cells.contains(&c))
                        .unwrap();
                    // The cell's owner runs each of its units.
                    assert!(shards[c % n].contains(&unit), "n {n} cell {c} step {si}");
                }
            }
            // A unit is in a shard only if one of its cells is.
            for (i, s) in shards.iter().enumerate() {
                for u in s {
                    assert!(u.cells.iter().any(|c| c % n == i));
                }
            }
            // Per-cell units (attack) in exactly one shard; the union is everything.
            for u in units.iter().filter(|u| u.step == 1) {
                assert_eq!(shards.iter().filter(|s| s.contains(&u)).count(), 1);
            }
            let mut all: Vec<&Unit> = shards.concat();
            all.dedup_by(|a, b| a == b);
            assert!(units.iter().all(|u| all.contains(&u)));
        }
        assert_eq!(shard_units(&units, None).len(), units.len());
    }

    fn err(text: &str) -> String {
        let e = grid(text).unwrap_err().to_string();
        assert!(e.starts_with("/g/grid.toml: "), "{e}");
        e
    }

    #[test]
    fn bad_grids_are_refused_naming_file_and_field() {
        let head = "out = \"o\"\n[axes]\nseed = [0, 1]\n";
        let step = |name: &str, per: &str, args: &str| {
            format!("[[step]]\nname = \"{name}\"\n{per}args = [{args}]\n")
        };
        let e = err(&format!("{head}{}", step("a", "", "\"x\", \"{sed}\"")));
        assert!(e.contains("step `a`, `args[1]`") && e.contains("unknown placeholder `{sed}`"));
        let e = err(&format!(
            "{head}{}",
            step("a", "per = [\"size\"]\n", "\"x\"")
        ));
        assert!(e.contains("`per`: unknown axis `size`"), "{e}");
        let e = err(&format!(
            "{head}{}{}",
            step("a", "", "\"x\", \"{b.dir}\""),
            step("b", "", "\"y\"")
        ));
        assert!(e.contains("step `b` is not defined before this one"), "{e}");
        let e = err(&format!("{head}{}", step("a", "", "\"x\", \"{c.dir}\"")));
        assert!(e.contains("no step `c`"), "{e}");
        let e = err(&format!(
            "{head}{}{}",
            step("a", "", "\"x\""),
            step("a", "", "\"y\"")
        ));
        assert!(
            e.contains("`step[1].name`: `a` names an earlier step"),
            "{e}"
        );
        let e = err("out = \"o\"\n[axes]\nseed = []\n[[step]]\nname = \"a\"\nargs = [\"x\"]\n");
        assert!(e.contains("`axes.seed`: empty list"), "{e}");
        let e = err(
            "out = \"o\"\n[axes]\nk = [\"a b\", \"a-b\"]\n[[step]]\nname = \"a\"\nargs = [\"x\"]\n",
        );
        assert!(e.contains("same folder name `a-b`"), "{e}");
        let e = err(&format!("{head}{}", step("a", "per = []\n", "\"{seed}\"")));
        assert!(e.contains("does not depend on axis `seed`"), "{e}");
        let e = err(&format!(
            "{head}{}{}",
            step("a", "", "\"x\""),
            step("b", "per = []\n", "\"{a.dir}\"")
        ));
        assert!(e.contains("step `a` depends on axis `seed`"), "{e}");
        let e = err(&format!("{head}{}", step("a", "", "\"{dir\"")));
        assert!(e.contains("unclosed placeholder"), "{e}");
        let e = err(&format!("{head}{}", step("a", "", "\"x}\"")));
        assert!(e.contains("without its `{`"), "{e}");
        let e = err(&format!("{head}[[step]]\nname = \"a\"\nargz = [\"x\"]\n"));
        assert!(e.contains("argz"), "{e}");
        let big = format!(
            "out = \"o\"\n[axes]\na = [{}]\nb = [{0}]\nc = [{0}]\n",
            (0..200)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let e = err(&format!("{big}{}", step("a", "", "\"x\"")));
        assert!(e.contains("`axes`: more than"), "{e}");
        let e = err(head);
        assert!(e.contains("no [[step]]"), "{e}");
        let e = err("[[step]]\nname = \"a\"\nargs = [\"x\"]\n");
        assert!(e.contains("out"), "{e}");
        let e = err(&format!("{head}{}", step("a/b", "", "\"x\"")));
        assert!(e.contains("`step[0].name`"), "{e}");
        let e = err("out = \"o\"\n[axes]\nk = [[1]]\n[[step]]\nname = \"a\"\nargs = [\"x\"]\n");
        assert!(
            e.contains("`axes.k[0]`: a string, number or boolean"),
            "{e}"
        );
    }

    #[test]
    fn shards_from_flag_and_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = |i, n| Shard { index: i, count: n };
        let got = |flag, shards, vars| shard_from(flag, shards, &env(vars)).map(|o| o.map(|x| x.0));
        assert_eq!(Shard::parse("1/3").unwrap(), s(1, 3));
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(got(None, None, &[]).unwrap(), None);
        let slurm: &'static [(&str, &str)] = &[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(got(None, None, slurm).unwrap(), Some(s(2, 4)));
        // The flag wins over the environment.
        assert_eq!(got(Some(s(0, 4)), None, slurm).unwrap(), Some(s(0, 4)));
        assert!(got(Some(s(0, 4)), Some(3), &[]).is_err());
        let k8s: &'static [(&str, &str)] = &[("JOB_COMPLETION_INDEX", "1")];
        let e = got(None, None, k8s).unwrap_err().to_string();
        assert!(
            e.contains("--shards N") && e.contains("ARMSRACE_SHARDS"),
            "{e}"
        );
        assert_eq!(got(None, Some(3), k8s).unwrap(), Some(s(1, 3)));
        let k8s_n: &'static [(&str, &str)] =
            &[("JOB_COMPLETION_INDEX", "1"), ("ARMSRACE_SHARDS", "2")];
        assert_eq!(got(None, None, k8s_n).unwrap(), Some(s(1, 2)));
        let over: &'static [(&str, &str)] = &[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert!(got(None, None, over)
            .unwrap_err()
            .to_string()
            .contains("shard 4 of 4"));
        let junk: &'static [(&str, &str)] = &[("SLURM_ARRAY_TASK_ID", "x")];
        assert!(got(None, None, junk)
            .unwrap_err()
            .to_string()
            .contains("SLURM_ARRAY_TASK_ID=x"));
        assert!(got(None, Some(2), &[])
            .unwrap_err()
            .to_string()
            .contains("without a shard index"));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("o/a=1,b=2"), "o/a=1,b=2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    /// The runner on `/bin/sh` in place of armsrace: markers, skips, refusals, logs,
    /// device variables and failures.
    #[cfg(unix)]
    #[test]
    fn runner_marks_skips_refuses_and_sets_devices() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("grid.toml");
        let write = |arg: &str| {
            std::fs::write(
                &path,
                format!(
                    "out = \"o\"\n[axes]\nk = [1, 2, 3]\n[[step]]\nname = \"s\"\n\
                     args = [\"-c\", \"mkdir -p {{dir}} && echo {arg}-{{k}}-$CUDA_VISIBLE_DEVICES > {{dir}}/v\"]\n"
                ),
            )
            .unwrap();
            Grid::load(&path).unwrap()
        };
        let g = write("x");
        let units = g.units();
        let refs: Vec<&Unit> = units.iter().collect();
        let opts = RunOptions {
            exe: "/bin/sh".into(),
            devices: Device::parse_list("7,8").unwrap(),
            poll: Duration::from_millis(10),
        };
        let lines = Mutex::new(Vec::new());
        let say = |l: String| lines.lock().unwrap().push(l);
        assert_eq!(
            run(&g, &refs, &opts, &say).unwrap(),
            Report { ran: 3, skipped: 0 }
        );
        let mut seen = Vec::new();
        for u in &units {
            assert_eq!(u.status(&g).unwrap(), Status::Done);
            let v = std::fs::read_to_string(u.path(&g).join("v")).unwrap();
            seen.push(v.trim().to_string());
            let log = std::fs::read_to_string(files::sibling(&u.path(&g), LOG_SUFFIX)).unwrap();
            assert!(log.starts_with("== armsrace sweep: /bin/sh -c"), "{log}");
        }
        assert!(
            seen.iter().all(|v| v.ends_with("-7") || v.ends_with("-8")),
            "{seen:?}"
        );
        assert!(seen[0].starts_with("x-1-"));
        // Again: nothing runs.
        assert_eq!(
            run(&g, &refs, &opts, &say).unwrap(),
            Report { ran: 0, skipped: 3 }
        );
        // Changed arguments: refused before anything runs.
        let g2 = write("y");
        let units2 = g2.units();
        let refs2: Vec<&Unit> = units2.iter().collect();
        let e = run(&g2, &refs2, &opts, &say).unwrap_err().to_string();
        assert!(e.contains("other arguments") && e.contains("s k=1"), "{e}");
        assert!(matches!(
            units2[0].status(&g2).unwrap(),
            Status::Changed { .. }
        ));
        // A failing unit: the error names it and its log.
        std::fs::write(
            &path,
            "out = \"p\"\n[[step]]\nname = \"bad\"\nargs = [\"-c\", \"echo boom; exit 3\"]\n",
        )
        .unwrap();
        let g3 = Grid::load(&path).unwrap();
        let units3 = g3.units();
        let e = run(&g3, &units3.iter().collect::<Vec<_>>(), &opts, &say)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad failed") && e.contains("boom") && e.contains("bad.log"),
            "{e}"
        );
        assert_eq!(units3[0].status(&g3).unwrap(), Status::Todo);
    }

    #[test]
    fn slurm_script_has_the_array_and_the_command() {
        let g = grid(TWO_STEPS).unwrap();
        let o = SlurmOptions {
            shards: 3,
            job_name: "j".into(),
            cpus_per_task: Some(4),
            gres: Some("gpu:1".into()),
            ..Default::default()
        };
        let s = slurm_script(&g, Path::new("/bin/armsrace"), &o).unwrap();
        for want in [
            "#SBATCH --array=0-2\n",
            "#SBATCH --job-name=j\n",
            "#SBATCH --output=/g/o/slurm-%A_%a.out\n",
            "#SBATCH --cpus-per-task=4\n",
            "#SBATCH --gres=gpu:1\n",
            "\n/bin/armsrace sweep /g/grid.toml\n",
        ] {
            assert!(s.contains(want), "{want} in {s}");
        }
    }
}
