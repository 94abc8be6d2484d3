//! GPU backend: kernel launchers over a KernelDevice (real CUDA or the CPU harness).
pub mod device;
