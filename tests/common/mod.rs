//! Shared helpers for integration tests: reading reference tensors and comparing arrays.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository root the tests read fixtures from: `$ARMSRACE_ROOT` if set, else the
/// current directory when it holds tests/fixtures (a test binary copied to another machine
/// and run from a checkout, see scripts/gpu-bundle.sh), else the directory this crate was
/// built in (`cargo test` on this machine).
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("ARMSRACE_ROOT") {
        return PathBuf::from(root);
    }
    match std::env::current_dir() {
        Ok(cwd) if cwd.join("tests/fixtures").is_dir() => cwd,
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

pub enum RefTensor {
    F32(Vec<f32>, Vec<usize>),
    I64(Vec<i64>, Vec<usize>),
}

/// Every tensor of a reference.safetensors file (f32 and i64 only).
pub fn read_reference(path: &Path) -> HashMap<String, RefTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("reference file parses");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let shape = v.shape().to_vec();
            let t = match v.dtype() {
                Dtype::F32 => RefTensor::F32(
                    v.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                Dtype::I64 => RefTensor::I64(
                    v.data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                d => panic!("unexpected dtype {d:?} for {name}"),
            };
            (name, t)
        })
        .collect()
}

pub fn f32s<'a>(r: &'a HashMap<String, RefTensor>, name: &str) -> &'a [f32] {
    match r.get(name) {
        Some(RefTensor::F32(v, _)) => v,
        _ => panic!("reference has no f32 tensor {name}"),
    }
}

pub fn i64s<'a>(r: &'a HashMap<String, RefTensor>, name: &str) -> (&'a [i64], &'a [usize]) {
    match r.get(name) {
        Some(RefTensor::I64(v, s)) => (v, s),
        _ => panic!("reference has no i64 tensor {name}"),
    }
}

/// max |a - b| relative to max |b|; fails with `what` and the worst index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel_tol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        // A NaN difference must win too, so this is not `d > worst`.
        if d.is_nan() || d > worst {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= rel_tol * scale,
        "{what}: max |diff| {worst:.3e} at {at} (got {}, want {}) exceeds {rel_tol:.1e} x max|ref| {scale:.3e}",
        got[at],
        want[at]
    );
}
