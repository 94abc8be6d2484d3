//! Local JSONL datasets: one JSON object per line, in one of two forms ([`Format`]).
//!
//! - `{"text": "...", "label": N}` (every task). The text is used verbatim as the content:
//!   no separator is appended, as in the study's real datasets (an email or review ends
//!   where it ends; the answer prompt starts with its own "\n\n").
//! - `{"chosen": "...", "rejected": "..."}`, Anthropic HH-RLHF's own fields (Helpful and
//!   Harmless only). Text and label follow the study's rule ([`defs::pairwise_example`]):
//!   the label is the example's 0-based index among the file's examples, mod 2, and decides
//!   which conversation comes first. Lines of the first form count towards that index too.
//!
//! Extra fields are ignored so files can carry ids or metadata, but a line may not mix the
//! two forms. Blank lines are skipped (and not counted); CRLF line ends are accepted.

use super::{defs, Example, TaskDef};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Which line forms a file may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"text": ..., "label": ...}` only.
    Text,
    /// `{"chosen": ..., "rejected": ...}` pairs or `{"text": ..., "label": ...}` lines.
    Pairs,
}

/// All examples of `path` in [`Format::Text`], checked against `def`'s labels. Errors name
/// the file and the 1-based line.
pub fn load(path: &Path, def: &TaskDef) -> Result<Vec<Example>> {
    load_as(path, def, Format::Text)
}

/// All examples of `path` in `format`, checked against `def`'s labels. Errors name the file
/// and the 1-based line.
pub fn load_as(path: &Path, def: &TaskDef, format: Format) -> Result<Vec<Example>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // A UTF-8 byte-order mark (some editors write one) is not part of the first line's JSON.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        let line = std::str::from_utf8(raw)
            .map_err(|e| at(format!("not valid UTF-8 ({e})")))?
            .trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(line, def, format, out.len()).map_err(at)?);
    }
    if out.is_empty() {
        return Err(Error::format(
            path,
            "no examples: the file is empty or has only blank lines",
        ));
    }
    Ok(out)
}

const TEXT_FORM: &str = "{\"text\": ..., \"label\": ...}";
const PAIR_FORM: &str = "{\"chosen\": ..., \"rejected\": ...}";

/// Example `index` (0-based among the file's examples) from one non-blank line.
fn parse_line(
    line: &str,
    def: &TaskDef,
    format: Format,
    index: usize,
) -> std::result::Result<Example, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err(match format {
            Format::Text => format!("expected a JSON object {TEXT_FORM}"),
            Format::Pairs => format!("expected a JSON object {TEXT_FORM} or {PAIR_FORM}"),
        });
    };
    if format == Format::Text {
        return parse_text(&obj, def);
    }
    let has = |k: &str| obj.contains_key(k);
    match (
        has("chosen") || has("rejected"),
        has("text") || has("label"),
    ) {
        (true, true) => Err(format!(
            "mixes the forms {TEXT_FORM} and {PAIR_FORM}; use one of them"
        )),
        (true, false) => {
            let field = |k: &str| match obj.get(k) {
                Some(Value::String(s)) => Ok(s.as_str()),
                Some(other) => Err(format!("\"{k}\" must be a string, got {other}")),
                None => Err(format!("missing field \"{k}\"")),
            };
            Ok(defs::pairwise_example(
                index,
                field("chosen")?,
                field("rejected")?,
            ))
        }
        (false, true) => parse_text(&obj, def),
        (false, false) => Err(format!(
            "expected {TEXT_FORM} or {PAIR_FORM}; the line has neither"
        )),
    }
}

fn parse_text(
    obj: &serde_json::Map<String, Value>,
    def: &TaskDef,
) -> std::result::Result<Example, String> {
    let text = match obj.get("text") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("\"text\" must be a string, got {other}")),
        None => return Err("missing field \"text\"".into()),
    };
    let label = match obj.get("label") {
        Some(l) => l,
        None => return Err("missing field \"label\"".into()),
    };
    let n = def.num_labels();
    let range_msg = || {
        format!(
            "label {label} out of range: task `{}` has labels 0..={} ({})",
            def.name,
            n - 1,
            def.label_names
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{i} = {s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    // Only JSON integers count: 1.0 or "1" is more likely a bug upstream than a label.
    let label = match label.as_u64() {
        Some(l) if l < n as u64 => l as u32,
        Some(_) => return Err(range_msg()),
        None if label.as_i64().is_some() => return Err(range_msg()),
        None => return Err(format!("\"label\" must be an integer, got {label}")),
    };
    Ok(Example { text, label })
}
