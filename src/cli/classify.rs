use super::device::{dispatch, DeviceArgs, OnBackend};
use armsrace::backend::cpu::loss::cross_entropy;
use armsrace::backend::Backend;
use armsrace::model::batch::{fit_positions, Truncate};
use armsrace::model::config::HeadKind;
use armsrace::tokenize::Tokenizer;
use armsrace::Model;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Classifier checkpoint directory (default: the bundled PasswordMatch classifier).
    #[arg(long, default_value = armsrace::attack::session::DEFAULT_MODEL)]
    model: PathBuf,
    /// JSONL input: one {"text": "...", "label": 0} per line (label optional).
    #[arg(long)]
    input: PathBuf,
    /// JSONL output (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Maximum tokens per internal batch (padding included).
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    /// A text longer than the model's max_position_embeddings: an error (default), or cut
    /// from the left (keeps the end) or the right.
    #[arg(long, value_enum, default_value = "refuse")]
    truncate: TruncateArg,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `--truncate` (classify, train).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TruncateArg {
    Refuse,
    Left,
    Right,
}

impl From<TruncateArg> for Truncate {
    fn from(t: TruncateArg) -> Self {
        match t {
            TruncateArg::Refuse => Truncate::Refuse,
            TruncateArg::Left => Truncate::Left,
            TruncateArg::Right => Truncate::Right,
        }
    }
}

struct Line {
    text: String,
    label: Option<u32>,
    /// 1-based line number in the file.
    lineno: usize,
}

fn read_input(path: &PathBuf) -> anyhow::Result<Vec<Line>> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
        // A UTF-8 byte-order mark is not part of the first line's JSON.
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}').to_string()
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| anyhow::anyhow!("{}: line {}: {msg}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let text = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("missing string field `text`".into()))?
            .to_string();
        let label =
            match v.get("label") {
                None | Some(serde_json::Value::Null) => None,
                Some(l) => Some(l.as_u64().ok_or_else(|| {
                    bad(format!("`label` must be a non-negative integer, found {l}"))
                })? as u32),
            };
        out.push(Line {
            text,
            label,
            lineno: i + 1,
        });
    }
    if out.is_empty() {
        anyhow::bail!("{}: no examples (empty input)", path.display());
    }
    Ok(out)
}

pub fn run(mut a: Args) -> anyhow::Result<()> {
    a.model = super::resolve_model(&a.model)?;
    dispatch(a.device, Classify(&a))
}

struct Classify<'a>(&'a Args);

impl OnBackend for Classify<'_> {
    type Out = ();
    fn run<B: Backend + Clone>(self, backend: B) -> anyhow::Result<()> {
        classify(self.0, backend)
    }
}

fn classify<B: Backend>(a: &Args, backend: B) -> anyhow::Result<()> {
    let model = Model::load(&a.model, backend)?;
    let HeadKind::Classifier { num_labels } = model.cfg.head else {
        anyhow::bail!(
            "{}: not a classifier (no `score` head); classify needs *ForSequenceClassification",
            a.model.display()
        );
    };
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let lines = read_input(&a.input)?;
    for l in &lines {
        if let Some(lab) = l.label.filter(|&x| x as usize >= num_labels) {
            anyhow::bail!(
                "{}: line {}: label {lab} out of range for {num_labels} classes",
                a.input.display(),
                l.lineno
            );
        }
    }
    let mut ids: Vec<Vec<u32>> = lines
        .iter()
        .map(|l| tok.encode(&l.text))
        .collect::<Result<_, _>>()?;
    for (l, ids) in lines.iter().zip(ids.iter_mut()) {
        if ids.is_empty() {
            anyhow::bail!(
                "{}: line {}: the text tokenizes to nothing",
                a.input.display(),
                l.lineno
            );
        }
        let what = || format!("{}: line {}", a.input.display(), l.lineno);
        fit_positions(ids, model.cfg.max_positions, a.truncate.into(), &what)?;
    }
    let logits = model.classify_ids(&ids, a.batch_tokens)?;
    let labels: Vec<u32> = lines.iter().map(|l| l.label.unwrap_or(0)).collect();
    // Loss straight from the logits: no second pass.
    let mut dl = vec![0.0; logits.len()];
    let losses = cross_entropy(
        &mut dl,
        &logits,
        &labels,
        &vec![1.0; labels.len()],
        num_labels,
    );
    let results: Vec<serde_json::Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let row = &logits[i * num_labels..(i + 1) * num_labels];
            let mut v = serde_json::json!({ "logits": row, "pred": argmax(row) });
            if let Some(label) = l.label {
                v["label"] = label.into();
                v["loss"] = losses[i].into();
            }
            v
        })
        .collect();
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for r in results {
        writeln!(out, "{r}")?;
    }
    out.flush()?;
    Ok(())
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(k, _)| k)
}
