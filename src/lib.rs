//! armsrace: adversarial attacks on language models, with CPU and CUDA backends.
//!
//! The model (GPTNeoX and Qwen2, as classifiers or causal LMs) is written once against the
//! [`backend::Backend`] trait; [`backend::cpu::Cpu`] is the reference backend.

pub mod attack;
pub mod backend;
pub mod bench;
pub mod bundled;
pub mod error;
pub mod files;
pub mod flops;
pub mod interrupt;
pub mod model;
pub mod presets;
pub mod report;
pub mod sweep;
pub mod task;
pub mod tokenize;
pub mod train;

pub use backend::cpu::Cpu;
pub use error::{Error, Result};
pub use model::batch::Batch;
pub use model::config::ModelConfig;
pub use model::{GradRequest, LossGrads, Model, Objective};
