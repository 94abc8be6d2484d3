//! Memory-mapped safetensors checkpoints (one file or shards with an index), with zero-copy
//! tensor views. Every header is validated by the `safetensors` crate (header length, JSON,
//! offsets contiguous and in bounds, byte size = dtype x shape) and errors name the file.

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Storage dtypes the engine reads; everything is converted to f32 for CPU compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
}

impl StoredDtype {
    pub fn name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "float32",
            StoredDtype::F16 => "float16",
            StoredDtype::Bf16 => "bfloat16",
        }
    }
    fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            _ => 2,
        }
    }
}

struct Entry {
    file: usize,
    dtype: StoredDtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A borrowed view of one tensor's bytes inside a mapped file.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: StoredDtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Decode to f32 (the mapped bytes are not guaranteed 4-byte aligned, so read unaligned).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.numel());
        self.extend_f32(&mut out);
        out
    }

    pub fn extend_f32(&self, out: &mut Vec<f32>) {
        match self.dtype {
            StoredDtype::F32 => out.extend(
                self.bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            StoredDtype::F16 => out.extend(
                self.bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            StoredDtype::Bf16 => out.extend(
                self.bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
        }
    }
}

/// All tensors of a checkpoint directory, mapped read-only.
pub struct SafetensorsStore {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsStore {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index.exists() {
            Self::open_sharded(dir, &index)
        } else if single.exists() {
            Self::open_files(&[single], None)
        } else {
            Err(Error::format(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ))
        }
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(index, "missing object `weight_map`"))?;
        // A set: an index naming tens of thousands of distinct shards must not take
        // quadratic time before the first missing one is reported.
        let mut shard_names: std::collections::BTreeSet<String> = Default::default();
        let mut expected = HashMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::format(index, format!("weight_map[{tensor}] is not a string"))
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(Error::format(
                    index,
                    format!("shard name `{file}` is not a plain file name"),
                ));
            }
            shard_names.insert(file.to_owned());
            expected.insert(tensor.clone(), file.to_owned());
        }
        let paths: Vec<PathBuf> = shard_names.iter().map(|s| dir.join(s)).collect();
        Self::open_files(&paths, Some((index, expected)))
    }

    fn open_files(
        paths: &[PathBuf],
        index: Option<(&Path, HashMap<String, String>)>,
    ) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only and private; a checkpoint modified on disk while we
            // run is outside what we guard against (as in every mmap-based loader).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                let which = inconsistent_tensor(&mmap).unwrap_or_default();
                Error::format(path, format!("invalid safetensors file: {e}{which}"))
            })?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = match view.dtype() {
                    Dtype::F32 => StoredDtype::F32,
                    Dtype::F16 => StoredDtype::F16,
                    Dtype::BF16 => StoredDtype::Bf16,
                    other => {
                        return Err(Error::format(
                            path,
                            format!("tensor `{name}` has unsupported dtype {other:?} (expected F32, F16 or BF16)"),
                        ))
                    }
                };
                let start = view.data().as_ptr() as usize - base;
                let end = start + view.data().len();
                debug_assert_eq!(
                    view.data().len(),
                    view.shape().iter().product::<usize>() * dtype.size()
                );
                if entries.contains_key(&name) {
                    return Err(Error::format(
                        path,
                        format!("tensor `{name}` appears in more than one shard"),
                    ));
                }
                entries.insert(
                    name,
                    Entry {
                        file: fi,
                        dtype,
                        shape: view.shape().to_vec(),
                        start,
                        end,
                    },
                );
            }
            files.push((path.clone(), mmap));
        }
        if let Some((index_path, expected)) = index {
            for (tensor, file) in &expected {
                let Some(e) = entries.get(tensor) else {
                    return Err(Error::format(
                        index_path,
                        format!(
                            "lists tensor `{tensor}` in {file}, but that shard does not contain it"
                        ),
                    ));
                };
                let actual = files[e.file]
                    .0
                    .file_name()
                    .and_then(|s| s.to_str())
                    .unwrap_or("");
                if actual != file {
                    return Err(Error::format(
                        index_path,
                        format!("lists tensor `{tensor}` in {file}, but it is in {actual}"),
                    ));
                }
            }
        }
        Ok(SafetensorsStore { files, entries })
    }

    /// Opens explicit files (no index), e.g. optimizer state.
    pub fn open_files_public(paths: &[PathBuf]) -> Result<Self> {
        Self::open_files(paths, None)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let (key, e) = self
            .entries
            .get_key_value(name)
            .ok_or_else(|| Error::tensor(name, "missing from the checkpoint"))?;
        Ok(TensorView {
            name: key,
            dtype: e.dtype,
            shape: &e.shape,
            bytes: &self.files[e.file].1[e.start..e.end],
        })
    }

    /// The dtype most tensors are stored in (what `inspect` reports).
    pub fn dominant_dtype(&self) -> Option<StoredDtype> {
        let mut counts: HashMap<&'static str, (usize, StoredDtype)> = HashMap::new();
        for e in self.entries.values() {
            let n = e.shape.iter().product::<usize>();
            counts.entry(e.dtype.name()).or_insert((0, e.dtype)).0 += n;
        }
        counts.into_values().max_by_key(|(n, _)| *n).map(|(_, d)| d)
    }

    pub fn file_paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }
}

/// For an error message: the first tensor whose header entry disagrees with itself or with
/// the file (byte span vs shape x dtype, or past the end), as ", tensor `NAME`: ...".
fn inconsistent_tensor(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = bytes.len() - 8 - n;
    for (name, t) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let size = match t.get("dtype")?.as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let elems = t
            .get("shape")?
            .as_array()?
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(d.as_u64()? as usize));
        let off = t.get("data_offsets")?.as_array()?;
        let (a, b) = (
            off.first()?.as_u64()? as usize,
            off.get(1)?.as_u64()? as usize,
        );
        let span = b.checked_sub(a);
        let want = elems.and_then(|e| e.checked_mul(size));
        if span.is_none() || span != want || b > data_len {
            return Some(format!(
                ", tensor `{name}`: data_offsets [{a}, {b}] (file data: {data_len} bytes) for \
                 shape {} of {}",
                t["shape"], t["dtype"]
            ));
        }
    }
    None
}
