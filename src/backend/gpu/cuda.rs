//! `CudaDevice`: the real GPU behind `KernelDevice`, through cudarc 0.19's driver API with
//! dynamic loading (the binary runs, and says so clearly, on machines without CUDA).
//!
//! Kernels come from the fatbins build.rs embeds (kernels/build/nvcc.rs); everything runs on
//! one stream, so ops are ordered and the backend's buffer reuse needs no events. GEMMs go
//! through cuBLASLt (f32 compute for f32, bf16 in / f32 accumulate for bf16, bias fused as
//! an epilogue); without libcublasLt they fall back to kernels/gemm.cu.

use super::device::{DType, DevicePtr, GemmDesc, KernelDevice, LaunchConfig};
use crate::error::{Error, Result};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{result as drv, sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// cuBLASLt workspace: NVIDIA's recommendation for Hopper (enough for every algorithm).
const WORKSPACE_BYTES: usize = 32 << 20;

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

struct Blas {
    handle: ltsys::cublasLtHandle_t,
    workspace: sys::CUdeviceptr,
}
// SAFETY: a cublasLt handle may be used from any thread as long as calls on it do not
// overlap; every use is under the `blas` Mutex.
unsafe impl Send for Blas {}

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
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
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
            blas: Mutex::new(None),
            name,
        };
        dev.init_blas();
        Ok(dev)
    }

    fn init_blas(&self) {
        // SAFETY: only tries to dlopen libcublasLt.
        if !unsafe { ltsys::is_culib_present() } {
            eprintln!("armsrace: libcublasLt not found; GEMMs use the built-in kernel (slower)");
            return;
        }
        let Ok(handle) = lt::create_handle() else {
            eprintln!("armsrace: cublasLtCreate failed; GEMMs use the built-in kernel (slower)");
            return;
        };
        // SAFETY: plain allocation on the current context (bound by create_handle's caller).
        match unsafe { drv::malloc_sync(WORKSPACE_BYTES) } {
            Ok(workspace) => {
                *self.blas.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Blas { handle, workspace })
            }
            Err(_) => {
                // SAFETY: handle was just created and is not used elsewhere.
                let _ = unsafe { lt::destroy_handle(handle) };
            }
        }
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
        let found = h.modules.iter().find_map(|&m| {
            // SAFETY: `m` is a module loaded in `new` and never unloaded before drop.
            unsafe { drv::module::get_function(m, cname.clone()) }.ok()
        });
        let f = found
            .ok_or_else(|| Error::Other(format!("no kernel named `{name}` in kernels/*.cu")))?;
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
        let guard = self.blas.lock().unwrap_or_else(|p| p.into_inner());
        let blas = guard.as_ref()?;
        if let Err(e) = self.bind() {
            return Some(Err(e));
        }
        let (data_ty, compute) = match d.dtype {
            DType::F32 => (
                ltsys::cudaDataType_t::CUDA_R_32F,
                ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            DType::Bf16 => (
                ltsys::cudaDataType_t::CUDA_R_16BF,
                ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            DType::U32 => return None,
        };
        // Row-major C[m, n] = op(A) op(B) is column-major C^T[n, m] = op(B)^T op(A)^T, and a
        // row-major buffer read column-major is its transpose: so cuBLASLt's first operand is
        // our B, its second our A, with our transpose flags unchanged.
        let (b_rows, b_cols) = if d.trans_b { (d.k, d.n) } else { (d.n, d.k) };
        let (a_rows, a_cols) = if d.trans_a { (d.m, d.k) } else { (d.k, d.m) };
        let align = |p: u64| 1u64 << p.trailing_zeros().min(8);
        let run = || -> std::result::Result<(), lt::CublasError> {
            let desc = lt::create_matmul_desc(compute, ltsys::cudaDataType_t::CUDA_R_32F)?;
            let l1 = lt::create_matrix_layout(data_ty, b_rows as u64, b_cols as u64, d.ldb as i64)?;
            let l2 = lt::create_matrix_layout(data_ty, a_rows as u64, a_cols as u64, d.lda as i64)?;
            let lc = lt::create_matrix_layout(data_ty, d.n as u64, d.m as u64, d.ldc as i64)?;
            let pref = lt::create_matmul_pref()?;
            let result = (|| {
                let set_desc = |attr, v: &i32| {
                    // SAFETY: `desc` is live; the attribute takes an i32-sized value.
                    unsafe {
                        lt::set_matmul_desc_attribute(
                            desc,
                            attr,
                            v as *const i32 as *const c_void,
                            4,
                        )
                    }
                };
                use ltsys::cublasLtMatmulDescAttributes_t as A;
                set_desc(A::CUBLASLT_MATMUL_DESC_TRANSA, &(d.trans_b as i32))?;
                set_desc(A::CUBLASLT_MATMUL_DESC_TRANSB, &(d.trans_a as i32))?;
                let mut min_align = align(d.a).min(align(d.b)).min(align(d.c));
                if let Some(bias) = d.bias {
                    let epi = ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as i32;
                    set_desc(A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi)?;
                    // SAFETY: `desc` is live; the attribute takes a device pointer.
                    unsafe {
                        lt::set_matmul_desc_attribute(
                            desc,
                            A::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                            &bias as *const u64 as *const c_void,
                            8,
                        )
                    }?;
                    min_align = min_align.min(align(bias));
                }
                use ltsys::cublasLtMatmulPreferenceAttributes_t as P;
                let set_pref = |attr, v: u64| {
                    // SAFETY: `pref` is live; these attributes take 8-byte values.
                    unsafe {
                        lt::set_matmul_pref_attribute(
                            pref,
                            attr,
                            &v as *const u64 as *const c_void,
                            8,
                        )
                    }
                };
                set_pref(
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    WORKSPACE_BYTES as u64,
                )?;
                // The heuristic assumes 256-byte aligned operands unless told otherwise; views
                // into a buffer (LM-head chunks) may be less aligned.
                set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, min_align)?;
                set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, min_align)?;
                set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, min_align)?;
                set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, min_align)?;
                // SAFETY: all descriptors are live and describe the operands above.
                let heur = unsafe {
                    lt::get_matmul_algo_heuristic(blas.handle, desc, l1, l2, lc, lc, pref)
                }?;
                let (alpha, beta) = (1.0f32, if d.accumulate { 1.0f32 } else { 0.0 });
                // SAFETY: operands are live device allocations of the backend covering the
                // described layouts (checked by the caller's shapes); the workspace is ours.
                unsafe {
                    lt::matmul(
                        blas.handle,
                        desc,
                        &alpha as *const f32 as *const c_void,
                        &beta as *const f32 as *const c_void,
                        d.b as *const c_void,
                        l1,
                        d.a as *const c_void,
                        l2,
                        d.c as *const c_void,
                        lc,
                        d.c as *mut c_void,
                        lc,
                        &heur.algo,
                        blas.workspace as *mut c_void,
                        WORKSPACE_BYTES,
                        self.stream.cu_stream() as *mut _,
                    )
                }
            })();
            // SAFETY: created above, no longer used (matmul has been enqueued).
            unsafe {
                let _ = lt::destroy_matmul_pref(pref);
                let _ = lt::destroy_matrix_layout(lc);
                let _ = lt::destroy_matrix_layout(l2);
                let _ = lt::destroy_matrix_layout(l1);
                let _ = lt::destroy_matmul_desc(desc);
            }
            result
        };
        match run() {
            Ok(()) => Some(Ok(())),
            // No algorithm for this shape/alignment: let the backend use its own kernel.
            Err(lt::CublasError(ltsys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => None,
            Err(e) => Some(Err(Error::Other(format!(
                "cuBLASLt GEMM m={} n={} k={}: {e:?}",
                d.m, d.n, d.k
            )))),
        }
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _ = self.bind();
        let _ = self.stream.synchronize();
        if let Some(b) = self
            .blas
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // SAFETY: the stream is idle; nothing uses the handle or workspace any more.
            unsafe {
                let _ = lt::destroy_handle(b.handle);
                let _ = drv::free_sync(b.workspace);
            }
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
        .map_err(|e| drv_err(&format!("launching {kernel} {cfg:?}"), e))
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
