//! The study's analyses and figures from armsrace results: one tidy table ([`table`]) read
//! from results directories or a table file, fits ([`fit`]), the figures and their fitted
//! slopes ([`figures`]), drawing ([`draw`]), and [`report`], which writes them all.

pub mod draw;
pub mod figures;
pub mod fit;
pub mod table;

use crate::error::{Error, Result};
use figures::{sig3, size_label, Built, Slope};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What [`report`] draws.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Figure 1's ASR level (a fraction) for every run; None: 5% for Pythia (`gpt_neox`),
    /// 2% for Qwen2.5 (`qwen2`), as the study chose.
    pub asr_level: Option<f64>,
    /// Write only `table.csv` and `table.jsonl`.
    pub table_only: bool,
}

/// What [`report`] wrote.
#[derive(Clone, Debug)]
pub struct ReportOutput {
    /// Table rows and runs read.
    pub rows: usize,
    pub runs: usize,
    /// Files written, relative to the report folder, in the order written.
    pub files: Vec<String>,
    /// Figures drawn (file stems).
    pub figures: Vec<String>,
    /// Figures skipped, with why.
    pub skipped: Vec<(String, String)>,
    pub slopes: Vec<Slope>,
}

/// `table.csv`/`table.jsonl` of the rows of `inputs` (results folders, searched
/// recursively, and table files; see [`table::collect`]), then, unless `opts.table_only`,
/// each figure of [`figures::all`] (`NAME.svg`, `NAME.png`, `NAME.csv`), `slopes.csv` and
/// `slopes.json` (every fitted slope with its 95% CI) and `summary.md`, in `out` (created
/// if missing). Nothing written depends on wall time or on where the inputs live: the same
/// rows give byte-identical files. No rows is an error naming the inputs.
pub fn report(inputs: &[PathBuf], out: &Path, opts: &Options) -> Result<ReportOutput> {
    if inputs.is_empty() {
        return Err(Error::input(
            "no inputs: give results folders or table files (.csv, .jsonl)",
        ));
    }
    if let Some(x) = opts.asr_level {
        if !(x > 0.0 && x <= 1.0) {
            return Err(Error::input(format!(
                "ASR level {x}: must be in (0, 1] (a fraction; 0.05 is 5%)"
            )));
        }
    }
    let rows = table::collect(inputs)?;
    if rows.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::input(format!(
            "no runs found in {}: no attack results (config.json + summary.json), adv-train \
             evaluations (adv_config.json + eval/*/eval.jsonl) or table rows",
            names.join(", ")
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = Vec::new();
    for name in ["table.csv", "table.jsonl"] {
        table::write(&rows, &out.join(name))?;
        files.push(name.to_string());
    }
    let runs = table::runs(&rows).len();
    let mut result = ReportOutput {
        rows: rows.len(),
        runs,
        files,
        figures: vec![],
        skipped: vec![],
        slopes: vec![],
    };
    if opts.table_only {
        return Ok(result);
    }
    let built = figures::all(&rows, opts.asr_level);
    for b in &built {
        match (&b.figure, &b.skipped) {
            (Some(fig), _) => {
                draw::draw(fig, out)?;
                for ext in ["svg", "png", "csv"] {
                    result.files.push(format!("{}.{ext}", fig.name));
                }
                result.figures.push(fig.name.clone());
            }
            (None, why) => result
                .skipped
                .push((b.name.to_string(), why.clone().unwrap_or_default())),
        }
        result.slopes.extend(b.slopes.iter().cloned());
    }
    write_slopes(&result.slopes, out)?;
    result.files.push("slopes.csv".into());
    result.files.push("slopes.json".into());
    let md = summary(&rows, &built, opts);
    crate::files::write_atomic(&out.join("summary.md"), md.as_bytes())?;
    result.files.push("summary.md".into());
    Ok(result)
}

fn write_slopes(slopes: &[Slope], out: &Path) -> Result<()> {
    let path = out.join("slopes.csv");
    let mut w = csv::Writer::from_writer(Vec::new());
    if slopes.is_empty() {
        w.write_record([
            "figure",
            "panel",
            "series",
            "n_params",
            "y",
            "x",
            "slope",
            "intercept",
            "ci95_low",
            "ci95_high",
            "slope_se",
            "n",
            "r2",
        ])
        .map_err(|e| Error::format(&path, e.to_string()))?;
    }
    for s in slopes {
        w.serialize(s)
            .map_err(|e| Error::format(&path, e.to_string()))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::format(&path, e.to_string()))?;
    crate::files::write_atomic(&path, &bytes)?;
    let json = out.join("slopes.json");
    let mut text = serde_json::to_string_pretty(slopes).expect("plain data");
    text.push('\n');
    crate::files::write_atomic(&json, text.as_bytes())
}

/// `a, b and c` style list.
fn list(items: &[String]) -> String {
    match items.len() {
        0 => "none".into(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

fn summary(rows: &[table::Row], built: &[Built], opts: &Options) -> String {
    let runs = table::runs(rows);
    let plain = runs.iter().filter(|r| r[0].round.is_none()).count();
    let evals = runs.len() - plain;
    let sizes: BTreeSet<u64> = rows.iter().map(|r| r.n_params).collect();
    let models: BTreeSet<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    let tasks: BTreeSet<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    let attacks: BTreeSet<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.attack, r.threat))
        .collect();
    let families: BTreeSet<&str> = rows.iter().map(|r| r.family.as_str()).collect();
    let mut s = String::new();
    let _ = writeln!(s, "# armsrace report\n");
    let _ = writeln!(
        s,
        "Inputs: {} table rows (one per run and iteration) from {} run(s): {} plain attack \
         run(s) and {} adv-train evaluation(s). {} model(s) of {} size(s) ({}); {} task(s) \
         ({}); {} attack and threat model(s) ({}). The table is `table.csv` (and \
         `table.jsonl`); every plotted number is in the CSV beside its figure.\n",
        rows.len(),
        runs.len(),
        plain,
        evals,
        models.len(),
        sizes.len(),
        list(&sizes.iter().map(|&n| size_label(n)).collect::<Vec<_>>()),
        tasks.len(),
        list(&tasks.iter().map(|t| t.to_string()).collect::<Vec<_>>()),
        attacks.len(),
        list(&attacks.iter().cloned().collect::<Vec<_>>()),
    );
    let level = match opts.asr_level {
        Some(x) => format!("{} (given)", figures::pct(x)),
        None => list(
            &families
                .iter()
                .map(|f| format!("{} for {f}", figures::pct(figures::default_asr_level(f))))
                .collect::<Vec<_>>(),
        ),
    };
    let _ = writeln!(
        s,
        "Figure 1's ASR level: {level}. ASR is the study's curve for each attack (`asr` in \
         the table); Figure 3 smooths it as (ASR·n + 1)/(n + 2) before logit10.\n"
    );
    let _ = writeln!(s, "## Figures\n");
    for b in built {
        let title = b
            .figure
            .as_ref()
            .map(|f| f.title.clone())
            .unwrap_or_else(|| b.name.to_string());
        let _ = writeln!(s, "### {title}\n");
        match &b.figure {
            Some(f) => {
                let _ = writeln!(s, "![{}]({}.png)\n", f.title, f.name);
                let _ = writeln!(
                    s,
                    "{} Numbers: `{}.csv`; vector: `{}.svg`.\n",
                    b.caption, f.name, f.name
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "Skipped (`{}`): {}.\n",
                    b.name,
                    b.skipped.as_deref().unwrap_or("no data")
                );
            }
        }
        for n in &b.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !b.notes.is_empty() {
            s.push('\n');
        }
    }
    let _ = writeln!(s, "## Fitted slopes\n");
    let slopes: Vec<&Slope> = built.iter().flat_map(|b| &b.slopes).collect();
    if slopes.is_empty() {
        let _ = writeln!(
            s,
            "None: no figure had two or more points to fit (see `slopes.csv`).\n"
        );
    } else {
        let _ = writeln!(
            s,
            "OLS fits (Figure 3: logit10 smoothed ASR on log10 attack compute per size, \
             points with 0 < ASR < 1, then the per-size slopes on log10 N; Figure 1: log10 \
             attack compute to the ASR level on log10 defense compute per size); 95% CI \
             from Student's t with n − 2 degrees of freedom (none with 2 points). All \
             digits: `slopes.csv`, `slopes.json`.\n"
        );
        let _ = writeln!(
            s,
            "| figure | panel | model size | slope | 95% CI | n points | r² |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for f in slopes {
            let ci = match (f.ci95_low, f.ci95_high) {
                (Some(lo), Some(hi)) => format!("[{}, {}]", sig3(lo), sig3(hi)),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.figure,
                f.panel,
                f.series,
                sig3(f.slope),
                ci,
                f.n,
                sig3(f.r2)
            );
        }
        s.push('\n');
    }
    s
}
