//! `--device cpu|cuda` and `--dtype f32|bf16`: which backend a subcommand runs on. A command
//! written once as an [`OnBackend`] job runs on whichever [`dispatch`] opens.

use armsrace::backend::gpu::emu::EmuDevice;
use armsrace::backend::gpu::{GpuBackend, Precision};
use armsrace::backend::Backend;
use armsrace::Cpu;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    /// The first NVIDIA GPU (needs a build with `--features cuda`).
    Cuda,
    /// The CUDA kernels on the CPU execution harness (slow): checks the GPU path without one.
    #[value(hide = true)]
    Emu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DType {
    /// fp32 storage and compute (the CPU backend, exact comparisons, the study's setting).
    F32,
    /// bf16 weights and activations with fp32 accumulation (GPU only).
    Bf16,
}

#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Backend to run on.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Storage precision of weights and activations (bf16 needs --device cuda).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DType,
}

/// A command body generic over the backend.
pub trait OnBackend {
    type Out;
    fn run<B: Backend + Clone>(self, backend: B) -> anyhow::Result<Self::Out>;
}

/// Opens the backend `d` names and runs `job` on it; a missing GPU, driver or CUDA build
/// is an error that says so.
pub fn dispatch<J: OnBackend>(d: DeviceArgs, job: J) -> anyhow::Result<J::Out> {
    match d.device {
        Device::Cpu => {
            if d.dtype != DType::F32 {
                anyhow::bail!("--dtype bf16 needs --device cuda (the CPU backend computes in f32)");
            }
            job.run(Cpu)
        }
        Device::Cuda => on_cuda(d.dtype, job),
        Device::Emu => job.run(GpuBackend::new(EmuDevice::new(), precision(d.dtype))),
    }
}

fn precision(dtype: DType) -> Precision {
    match dtype {
        DType::F32 => Precision::F32,
        DType::Bf16 => Precision::Bf16,
    }
}

#[cfg(feature = "cuda")]
fn on_cuda<J: OnBackend>(dtype: DType, job: J) -> anyhow::Result<J::Out> {
    use armsrace::backend::gpu::cuda::CudaDevice;
    let dev = CudaDevice::new(0).map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
    job.run(GpuBackend::new(dev, precision(dtype)))
}

#[cfg(not(feature = "cuda"))]
fn on_cuda<J: OnBackend>(_: DType, _: J) -> anyhow::Result<J::Out> {
    anyhow::bail!(
        "--device cuda: this build has no CUDA support; rebuild with `cargo build --release \
         --features cuda` (after `bash scripts/install-nvcc.sh`)"
    )
}
