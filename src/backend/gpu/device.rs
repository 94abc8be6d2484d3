//! The device seam under the GPU backend. The GPU backend (kernel launchers for every Backend
//! op) is written once against `KernelDevice`; two devices implement it:
//! - `CudaDevice` (feature `cuda`): cudarc, the real GPU, cubins built by build.rs with nvcc;
//! - `EmuDevice` (always built): the CPU execution harness, which runs the same kernels/*.cu
//!   compiled by the host C++ compiler, each block's threads as cooperative fibers.
//!
//! Kernel calling convention (shared by both devices, fixed by kernels/args.h):
//! every kernel is `extern "C" __global__ void NAME(const NAMEArgs args)` taking exactly one
//! plain-C struct by value; device pointers inside it are 64-bit addresses.

use crate::error::Result;

/// Launch geometry, as in CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

/// A device allocation: `addr` is what kernels see as the pointer.
#[derive(Debug)]
pub struct DevicePtr {
    pub addr: u64,
    pub bytes: usize,
    /// Device-specific handle index (allocation slot), opaque to the backend.
    pub handle: usize,
}

pub trait KernelDevice: Send + Sync {
    fn name(&self) -> String;
    /// Allocate `bytes` of device memory (contents unspecified).
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;
    fn free(&self, ptr: &DevicePtr);
    fn upload(&self, dst: &DevicePtr, offset: usize, src: &[u8]) -> Result<()>;
    fn download(&self, src: &DevicePtr, offset: usize, dst: &mut [u8]) -> Result<()>;
    fn memset_zero(&self, dst: &DevicePtr) -> Result<()>;
    /// Launch `kernel` with the raw bytes of its single argument struct.
    fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[u8]) -> Result<()>;
    /// Wait for all launched work; surfaces asynchronous errors.
    fn synchronize(&self) -> Result<()>;

    // Optional capabilities: defaults for devices without them (the emulator implements
    // only the required methods above).

    /// A GEMM through a vendor library (cuBLASLt on CUDA). `None`: not available on this
    /// device, and the backend launches its own kernel (kernels/gemm.cu) instead.
    fn gemm(&self, _desc: &GemmDesc) -> Option<Result<()>> {
        None
    }
    /// (free, total) bytes of device memory, where the device can tell.
    fn mem_info(&self) -> Option<(usize, usize)> {
        None
    }
    /// True on real hardware: benchmarks refuse to report emulator timings as GPU numbers.
    fn is_hardware(&self) -> bool {
        false
    }
}

/// Element type of a device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::Bf16 => 2,
        }
    }
}

/// One GEMM in row-major terms, exactly what kernels/gemm.cu computes (see GemmArgs in
/// kernels/args.h): C[m, n] = (accumulate ? C : 0) + op(A)[m, k] . op(B)[k, n] (+ bias[n]),
/// where op(A)[i, p] = trans_a ? A[p * lda + i] : A[i * lda + p], and likewise for B.
/// A, B, C and bias share `dtype` (F32 or Bf16); accumulation is f32.
#[derive(Clone, Copy, Debug)]
pub struct GemmDesc {
    pub dtype: DType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub trans_a: bool,
    pub b: u64,
    pub ldb: usize,
    pub trans_b: bool,
    pub c: u64,
    pub ldc: usize,
    pub bias: Option<u64>,
    pub accumulate: bool,
}
