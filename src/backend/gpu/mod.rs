//! GPU backend: kernel launchers over a KernelDevice (real CUDA or the CPU harness).
//!
//! - `backend`: `GpuBackend<D>`, the Backend trait as kernel launches (kernels/*.cu);
//! - `ops`: the ops beyond the trait (LM-head CE, GCG top-k / sampling / arg-min, optimizers);
//! - `buffer`: device buffers, the caching allocator, sticky errors;
//! - `args`: the kernel argument structs, bindgen's rendering of kernels/args.h;
//! - `device`: the KernelDevice seam; `cuda` (feature `cuda`; cuBLASLt GEMMs with cached
//!   plans in `cuda_blas`) and `emu` implement it;
//! - `bench`: GPU benchmarks behind `armsrace bench --device cuda`.

#[rustfmt::skip]
#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clippy::all)]
pub mod args;
pub mod backend;
pub mod bench;
pub mod buffer;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
mod cuda_blas;
pub mod device;
pub mod emu;
pub mod ops;

pub use backend::{AttnTiles, GpuBackend, KernelArgs, Precision};
pub use buffer::GpuBuf;
pub use ops::AdafactorBufs;
