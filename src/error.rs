//! One error type for the library: every variant names the file, tensor or field at fault,
//! so a user can act on the message without a debugger.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what it claims to be.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// config.json is readable but a field is missing, wrong or unsupported.
    #[error("config.json field `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// A tensor is missing or its dtype/shape disagrees with config.json.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    /// Caller input (token ids, lengths, batch shapes) is invalid.
    #[error("invalid input: {0}")]
    Input(String),
    /// A device allocation failed for lack of memory. Work that can run in smaller pieces
    /// (candidate scoring) catches this with [`Error::is_out_of_memory`] and retries.
    #[error("{device}: out of memory allocating {bytes} bytes{detail}")]
    OutOfMemory {
        device: String,
        bytes: usize,
        /// Extra context (", 1.2 GiB free of 80 GiB"), empty when the device cannot tell.
        detail: String,
    },
    /// Work stopped at a safe point because [`crate::interrupt::request`] asked it to.
    #[error("interrupted: stopped after the last unit of work written (rerun to resume)")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
    pub fn out_of_memory(
        device: impl Into<String>,
        bytes: usize,
        detail: impl Into<String>,
    ) -> Self {
        Error::OutOfMemory {
            device: device.into(),
            bytes,
            detail: detail.into(),
        }
    }
    /// True for [`Error::OutOfMemory`]: the same work in smaller pieces may succeed.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }
}

/// The message of a caught panic (`catch_unwind`'s payload): its `String` or `&str`, else
/// empty.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
