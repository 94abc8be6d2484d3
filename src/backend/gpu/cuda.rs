//! `CudaDevice`: the real GPU behind `KernelDevice`, through cudarc 0.19's driver API with
//! dynamic loading (the binary runs, and says so clearly, on machines without CUDA).
//!
//! Kernels come from the fatbins build.rs embeds (kernels/build/nvcc.rs); everything runs on
//! one stream, so ops are ordered and the backend's buffer reuse needs no events. GEMMs go
//! through cuBLASLt with cached plans (cuda_blas.rs); without libcublasLt they fall back to
//! kernels/gemm.cu.

use super::cuda_blas::Blas;
use super::device::{DevicePtr, GemmDesc, KernelDevice, LaunchConfig};
use crate::error::{Error, Result};
use cudarc::driver::{result as drv, sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

fn drv_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Other(format!("CUDA {what}: {e:?}"))
}

/// Raw driver handles. They are plain identifiers that the driver accepts from any thread
/// once the owning context is current (every method binds it first).
struct Handles {
    modules: Vec<sys::CUmodule>,
    functions: HashMap<String, (sys::CUfunction, bool)>,
}
// SAFETY: see `Handles`: CUmodule / CUfunction are context-scoped identifiers, valid on any
// thread with the context bound; the Mutex around them serializes our own map updates.
unsafe impl Send for Handles {}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    handles: Mutex<Handles>,
    blas: Mutex<Option<Blas>>,
    name: String,
}

impl CudaDevice {
    /// Opens GPU `ordinal`. No driver, no device, or an unloadable kernel image is an `Err`
    /// (never a panic), so callers can fall back to the CPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen libcuda; no driver call is made.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Other(
                "no CUDA driver found (libcuda.so is not loadable): this machine has no usable NVIDIA GPU".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| drv_err("init", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Other(format!(
                "CUDA device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| drv_err("context", e))?;
        let stream = ctx.new_stream().map_err(|e| drv_err("stream", e))?;
        let name = format!(
            "{} (CUDA device {ordinal})",
            ctx.name().unwrap_or_else(|_| "unnamed GPU".into())
        );
        let mut modules = Vec::new();
        for (stem, image) in embedded::MODULES {
            // cuModuleLoadData reads the fatbin header in place: give it an 8-byte aligned copy
            // (include_bytes! only guarantees byte alignment).
            let mut aligned = vec![0u64; image.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..image.len()].copy_from_slice(image);
            // SAFETY: `aligned` holds a complete fatbin produced by nvcc for this crate and lives
            // until the call returns (the driver copies what it needs).
            let m = unsafe { drv::module::load_data(aligned.as_ptr() as *const c_void) }.map_err(
                |e| {
                    drv_err(
                        &format!("loading kernels/{stem}.cu (built for {})", embedded::ARCHS),
                        e,
                    )
                },
            )?;
            modules.push(m);
        }
        let dev = CudaDevice {
            ctx,
            stream,
            handles: Mutex::new(Handles {
                modules,
                functions: HashMap::new(),
            }),
            // The context is current on this thread (CudaContext::new binds it).
            blas: Mutex::new(Blas::new()),
            name,
        };
        Ok(dev)
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| drv_err("bind context", e))
    }

    fn function(&self, name: &str, smem: u32) -> Result<sys::CUfunction> {
        let mut h = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(f, big_smem)) = h.functions.get(name) {
            if smem > 48 * 1024 && !big_smem {
                self.allow_smem(f, name)?;
                h.functions.insert(name.to_string(), (f, true));
            }
            return Ok(f);
        }
        let cname =
            CString::new(name).map_err(|_| Error::Other(format!("kernel name {name:?}")))?;
        // The build's name table says which module holds the kernel; one it missed (say, a
        // kernel a macro defines) is looked for in every module.
        let f = match embedded::KERNELS.binary_search_by(|(k, _)| (*k).cmp(name)) {
            // SAFETY: the module was loaded in `new` and is not unloaded before drop.
            Ok(i) => unsafe { drv::module::get_function(h.modules[embedded::KERNELS[i].1], cname) }
                .map_err(|e| drv_err(&format!("kernel `{name}`"), e))?,
            Err(_) => h
                .modules
                .iter()
                .find_map(|&m| {
                    // SAFETY: as above.
                    unsafe { drv::module::get_function(m, cname.clone()) }.ok()
                })
                .ok_or_else(|| Error::Other(format!("no kernel named `{name}` in kernels/*.cu")))?,
        };
        if smem > 48 * 1024 {
            self.allow_smem(f, name)?;
        }
        h.functions.insert(name.to_string(), (f, smem > 48 * 1024));
        Ok(f)
    }

    /// Opts a kernel into more than 48 KiB of dynamic shared memory (up to the device limit).
    fn allow_smem(&self, f: sys::CUfunction, name: &str) -> Result<()> {
        let max = self
            .ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| drv_err("attribute", e))?;
        // SAFETY: `f` is a live function handle of this context.
        unsafe {
            drv::function::set_function_attribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                max,
            )
        }
        .map_err(|e| drv_err(&format!("shared memory opt-in for {name}"), e))
    }

    fn blas_gemm(&self, d: &GemmDesc) -> Option<Result<()>> {
        let mut guard = self.blas.lock().unwrap_or_else(|p| p.into_inner());
        let blas = guard.as_mut()?;
        if let Err(e) = self.bind() {
            return Some(Err(e));
        }
        blas.gemm(d, self.stream.cu_stream())
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _ = self.bind();
        let _ = self.stream.synchronize();
        if let Some(mut b) = self
            .blas
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // SAFETY: the context is bound and the stream idle; `b` is dropped right after.
            unsafe { b.destroy() };
        }
        let h = self.handles.get_mut().unwrap_or_else(|p| p.into_inner());
        for &m in &h.modules {
            // SAFETY: modules loaded in `new`; their functions are not used after this.
            unsafe {
                let _ = drv::module::unload(m);
            }
        }
    }
}

impl KernelDevice for CudaDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.bind()?;
        // SAFETY: plain device allocation on the bound context.
        let addr = unsafe { drv::malloc_sync(bytes) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                let detail = drv::mem_get_info().map_or(String::new(), |(free, total)| {
                    format!(", {} MiB free of {} MiB", free >> 20, total >> 20)
                });
                Error::out_of_memory(self.name.clone(), bytes, detail)
            } else {
                drv_err(&format!("allocating {} MiB", bytes.div_ceil(1 << 20)), e)
            }
        })?;
        Ok(DevicePtr {
            addr,
            bytes,
            handle: 0,
        })
    }

    fn free(&self, ptr: &DevicePtr) {
        let _ = self.bind();
        // Work queued on the stream may still read this memory.
        let _ = self.stream.synchronize();
        // SAFETY: `ptr` came from `alloc` and the backend frees it once.
        let _ = unsafe { drv::free_sync(ptr.addr) };
    }

    fn upload(&self, dst: &DevicePtr, offset: usize, src: &[u8]) -> Result<()> {
        if offset + src.len() > dst.bytes {
            return Err(Error::Other(
                "upload past the end of a device buffer".into(),
            ));
        }
        self.bind()?;
        // SAFETY: destination range checked above; for pageable `src` the driver stages the
        // data before returning, so `src` may be freed right after.
        unsafe { drv::memcpy_htod_async(dst.addr + offset as u64, src, self.stream.cu_stream()) }
            .map_err(|e| drv_err("upload", e))
    }

    fn download(&self, src: &DevicePtr, offset: usize, dst: &mut [u8]) -> Result<()> {
        if offset + dst.len() > src.bytes {
            return Err(Error::Other(
                "download past the end of a device buffer".into(),
            ));
        }
        self.bind()?;
        // SAFETY: source range checked above; we synchronize before `dst` is read.
        unsafe { drv::memcpy_dtoh_async(dst, src.addr + offset as u64, self.stream.cu_stream()) }
            .map_err(|e| drv_err("download", e))?;
        self.synchronize()
    }

    fn memset_zero(&self, dst: &DevicePtr) -> Result<()> {
        self.bind()?;
        // SAFETY: the whole allocation belongs to `dst`.
        unsafe { drv::memset_d8_async(dst.addr, 0, dst.bytes, self.stream.cu_stream()) }
            .map_err(|e| drv_err("memset", e))
    }

    fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[u8]) -> Result<()> {
        self.bind()?;
        let f = self.function(kernel, cfg.shared_bytes)?;
        // The single by-value struct parameter: kernelParams[0] points at its bytes (copied by
        // the driver at launch), kept 8-byte aligned like the struct itself.
        let mut buf = vec![0u64; args.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..args.len()].copy_from_slice(args);
        let mut params = [buf.as_mut_ptr() as *mut c_void];
        // SAFETY: `f` takes exactly one parameter, the args struct whose bytes these are
        // (kernels/args.h; sizes checked by tests); device pointers inside it are live
        // allocations of the backend.
        unsafe {
            drv::launch_kernel(
                f,
                (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
                (cfg.block[0], cfg.block[1], cfg.block[2]),
                cfg.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| drv_err(&format!("launch of `{kernel}`"), e))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream
            .synchronize()
            .map_err(|e| drv_err("synchronize", e))
    }

    fn gemm(&self, desc: &GemmDesc) -> Option<Result<()>> {
        self.blas_gemm(desc)
    }

    fn mem_info(&self) -> Option<(usize, usize)> {
        self.bind().ok()?;
        drv::mem_get_info().ok()
    }

    fn is_hardware(&self) -> bool {
        true
    }
}
