//! `armsrace report`: the study's figures and fitted slopes from results folders or a
//! results table.

use armsrace::report::{self, Options};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Results folders (searched recursively: attack results, adv-train runs with their
    /// evaluations) and/or results tables (.csv, .jsonl; columns: src/report/table.rs).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Report folder: table.csv, table.jsonl, a .png/.svg/.csv per figure, slopes.csv,
    /// slopes.json, summary.md.
    #[arg(long)]
    out: PathBuf,
    /// Figure 1's ASR level, for every run: a percentage (5%) or a fraction (0.05)
    /// (default: 5% for Pythia, 2% for Qwen2.5, as the study chose).
    #[arg(long)]
    asr_level: Option<String>,
    /// Write only table.csv and table.jsonl.
    #[arg(long)]
    table_only: bool,
}

/// "5%" -> 0.05, "0.05" -> 0.05.
fn parse_level(s: &str) -> anyhow::Result<f64> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| {
        anyhow::anyhow!("--asr-level {s:?}: expected a percentage (5%) or a fraction (0.05)")
    })?;
    if !(v > 0.0 && v <= 1.0) {
        anyhow::bail!("--asr-level {s:?}: must be above 0% and at most 100%");
    }
    Ok(v)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let opts = Options {
        asr_level: a.asr_level.as_deref().map(parse_level).transpose()?,
        table_only: a.table_only,
    };
    let out = report::report(&a.inputs, &a.out, &opts)?;
    println!(
        "{} rows from {} runs; wrote {} files to {}",
        out.rows,
        out.runs,
        out.files.len(),
        a.out.display()
    );
    for f in &out.figures {
        println!("figure  {f}");
    }
    for (f, why) in &out.skipped {
        println!("skipped {f}: {why}");
    }
    if !opts.table_only {
        println!(
            "{} fitted slopes (slopes.csv); summary: {}",
            out.slopes.len(),
            a.out.join("summary.md").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_level;

    #[test]
    fn asr_levels() {
        assert_eq!(parse_level("5%").unwrap(), 0.05);
        assert_eq!(parse_level("0.02").unwrap(), 0.02);
        assert!(parse_level("0").is_err());
        assert!(parse_level("150%").is_err());
        assert!(parse_level("five").is_err());
    }
}
