//! Local JSONL datasets: one `{"text": "...", "label": N}` object per line.
//!
//! The text is used verbatim as the content: no separator is appended, as in the study's
//! real datasets (an email or review ends where it ends; the answer prompt starts with its
//! own "\n\n"). Extra fields are ignored so files can carry ids or metadata. Blank lines are
//! skipped; CRLF line ends are accepted.

use super::{Example, TaskDef};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// All examples of `path`, checked against `def`'s labels. Errors name the file and the
/// 1-based line.
pub fn load(path: &Path, def: &TaskDef) -> Result<Vec<Example>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        let line = std::str::from_utf8(raw)
            .map_err(|e| at(format!("not valid UTF-8 ({e})")))?
            .trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(line, def).map_err(at)?);
    }
    if out.is_empty() {
        return Err(Error::format(
            path,
            "no examples: the file is empty or has only blank lines",
        ));
    }
    Ok(out)
}

fn parse_line(line: &str, def: &TaskDef) -> std::result::Result<Example, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("expected a JSON object {\"text\": ..., \"label\": ...}".into());
    };
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
