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
}
