//! cuBLASLt GEMMs for `CudaDevice`, with a plan cache.
//!
//! A cuBLASLt call needs a matmul descriptor, three matrix layouts and an algorithm from the
//! heuristic; making them costs microseconds of host time per GEMM, as much as a small GEMM
//! takes on the GPU. GCG repeats the same few shapes every iteration, so each shape's plan
//! (descriptor, layouts, algorithm) is made once and kept, keyed by everything it depends on;
//! only the pointers (and the bias pointer attribute) change between calls.
//!
//! f32 computes in f32; bf16 is bf16 in / f32 accumulate; a bias is fused as the epilogue.

use super::device::{DType, GemmDesc};
use crate::error::{Error, Result};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{result as drv, sys};
use std::collections::HashMap;
use std::ffi::c_void;

/// cuBLASLt workspace: NVIDIA's recommendation for Hopper (enough for every algorithm).
const WORKSPACE_BYTES: usize = 32 << 20;
/// Plans kept at most; past it the cache starts over (shapes that vary every call, e.g.
/// candidate counts after filtering, must not grow it without bound).
const MAX_PLANS: usize = 512;

/// Everything a plan depends on: a GEMM without its pointers (and without `accumulate`,
/// which is only beta), plus the operands' common alignment, which the heuristic reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    trans_a: bool,
    trans_b: bool,
    bias: bool,
    align: u64,
}

impl PlanKey {
    fn of(d: &GemmDesc) -> Self {
        let align = |p: u64| 1u64 << p.trailing_zeros().min(8);
        let mut a = align(d.a).min(align(d.b)).min(align(d.c));
        if let Some(b) = d.bias {
            a = a.min(align(b));
        }
        PlanKey {
            dtype: d.dtype,
            m: d.m,
            n: d.n,
            k: d.k,
            lda: d.lda,
            ldb: d.ldb,
            ldc: d.ldc,
            trans_a: d.trans_a,
            trans_b: d.trans_b,
            bias: d.bias.is_some(),
            align: a,
        }
    }
}

/// One shape's descriptor, layouts (cuBLASLt's A, B, C = D) and algorithm.
struct Plan {
    desc: ltsys::cublasLtMatmulDesc_t,
    l1: ltsys::cublasLtMatrixLayout_t,
    l2: ltsys::cublasLtMatrixLayout_t,
    lc: ltsys::cublasLtMatrixLayout_t,
    algo: ltsys::cublasLtMatmulAlgo_t,
}

type LtResult<T> = std::result::Result<T, lt::CublasError>;

impl Plan {
    /// Row-major C[m, n] = op(A) op(B) is column-major C^T[n, m] = op(B)^T op(A)^T, and a
    /// row-major buffer read column-major is its transpose: so cuBLASLt's first operand is
    /// our B, its second our A, with our transpose flags unchanged.
    fn new(handle: ltsys::cublasLtHandle_t, key: &PlanKey) -> LtResult<Plan> {
        let data_ty = match key.dtype {
            DType::Bf16 => ltsys::cudaDataType_t::CUDA_R_16BF,
            _ => ltsys::cudaDataType_t::CUDA_R_32F,
        };
        let compute = ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let (b_rows, b_cols) = if key.trans_b {
            (key.k, key.n)
        } else {
            (key.n, key.k)
        };
        let (a_rows, a_cols) = if key.trans_a {
            (key.m, key.k)
        } else {
            (key.k, key.m)
        };
        let desc = lt::create_matmul_desc(compute, ltsys::cudaDataType_t::CUDA_R_32F)?;
        let mut plan = Plan {
            desc,
            l1: std::ptr::null_mut(),
            l2: std::ptr::null_mut(),
            lc: std::ptr::null_mut(),
            algo: ltsys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // On any error `plan` is dropped half-made: `destroy` skips the null handles.
        let made = (|| {
            plan.l1 =
                lt::create_matrix_layout(data_ty, b_rows as u64, b_cols as u64, key.ldb as i64)?;
            plan.l2 =
                lt::create_matrix_layout(data_ty, a_rows as u64, a_cols as u64, key.lda as i64)?;
            plan.lc =
                lt::create_matrix_layout(data_ty, key.n as u64, key.m as u64, key.ldc as i64)?;
            use ltsys::cublasLtMatmulDescAttributes_t as A;
            plan.set_desc(A::CUBLASLT_MATMUL_DESC_TRANSA, key.trans_b as i32)?;
            plan.set_desc(A::CUBLASLT_MATMUL_DESC_TRANSB, key.trans_a as i32)?;
            if key.bias {
                let epi = ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as i32;
                plan.set_desc(A::CUBLASLT_MATMUL_DESC_EPILOGUE, epi)?;
            }
            plan.algo = plan.heuristic(handle, key.align)?;
            Ok(())
        })();
        match made {
            Ok(()) => Ok(plan),
            Err(e) => {
                // SAFETY: the handles were made above and are used nowhere else.
                unsafe { plan.destroy() };
                Err(e)
            }
        }
    }

    fn set_desc(&self, attr: ltsys::cublasLtMatmulDescAttributes_t, v: i32) -> LtResult<()> {
        // SAFETY: `desc` is live; these attributes take an i32-sized value.
        unsafe {
            lt::set_matmul_desc_attribute(self.desc, attr, &v as *const i32 as *const c_void, 4)
        }
    }

    /// The heuristic's best algorithm for this plan under the workspace and `align`.
    fn heuristic(
        &self,
        handle: ltsys::cublasLtHandle_t,
        align: u64,
    ) -> LtResult<ltsys::cublasLtMatmulAlgo_t> {
        let pref = lt::create_matmul_pref()?;
        let found = (|| {
            use ltsys::cublasLtMatmulPreferenceAttributes_t as P;
            // cuBLASLt checks each attribute's size: the workspace limit is a uint64_t, the
            // alignments are uint32_t (an 8-byte alignment value is INVALID_VALUE).
            let workspace = WORKSPACE_BYTES as u64;
            // SAFETY: `pref` is live; MAX_WORKSPACE_BYTES takes a uint64_t.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &workspace as *const u64 as *const c_void,
                    8,
                )
            }?;
            // The heuristic assumes 256-byte aligned operands unless told otherwise; views
            // into a buffer (LM-head chunks) may be less aligned.
            let align = align as u32;
            for attr in [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                // SAFETY: `pref` is live; the MIN_ALIGNMENT attributes take a uint32_t.
                unsafe {
                    lt::set_matmul_pref_attribute(
                        pref,
                        attr,
                        &align as *const u32 as *const c_void,
                        4,
                    )
                }?;
            }
            // SAFETY: the descriptor, layouts and preference are live and describe one GEMM.
            unsafe {
                lt::get_matmul_algo_heuristic(
                    handle, self.desc, self.l1, self.l2, self.lc, self.lc, pref,
                )
            }
        })();
        // SAFETY: made above, used only by the heuristic call, which has returned.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        Ok(found?.algo)
    }

    /// # Safety
    /// Call once, when no GEMM on the stream still uses the plan.
    unsafe fn destroy(&self) {
        // SAFETY: the caller's contract; null handles (a half-made plan) are skipped.
        unsafe {
            for l in [self.lc, self.l2, self.l1] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// The cuBLASLt handle, its workspace and the plan cache. Use it with the device's context
/// bound, under the device's lock.
pub(super) struct Blas {
    handle: ltsys::cublasLtHandle_t,
    workspace: sys::CUdeviceptr,
    /// `None`: cuBLASLt refused to plan this shape; its GEMMs use kernels/gemm.cu.
    plans: HashMap<PlanKey, Option<Plan>>,
}
// SAFETY: a cublasLt handle and its descriptors may be used from any thread as long as calls
// on them do not overlap; the device keeps `Blas` behind a Mutex.
unsafe impl Send for Blas {}

impl Blas {
    /// cuBLASLt on the bound context, or `None` (with a message) when the library is missing
    /// or does not start: GEMMs then use kernels/gemm.cu.
    pub(super) fn new() -> Option<Blas> {
        // SAFETY: only tries to dlopen libcublasLt.
        if !unsafe { ltsys::is_culib_present() } {
            eprintln!("armsrace: libcublasLt not found; GEMMs use the built-in kernel (slower)");
            return None;
        }
        let Ok(handle) = lt::create_handle() else {
            eprintln!("armsrace: cublasLtCreate failed; GEMMs use the built-in kernel (slower)");
            return None;
        };
        // SAFETY: plain allocation on the current context (bound by the caller).
        match unsafe { drv::malloc_sync(WORKSPACE_BYTES) } {
            Ok(workspace) => Some(Blas {
                handle,
                workspace,
                plans: HashMap::new(),
            }),
            Err(_) => {
                // SAFETY: handle was just created and is not used elsewhere.
                let _ = unsafe { lt::destroy_handle(handle) };
                None
            }
        }
    }

    /// Enqueues `d` on `stream`. `None`: cuBLASLt has no algorithm for this shape and
    /// alignment, and the caller launches its own kernel.
    pub(super) fn gemm(&mut self, d: &GemmDesc, stream: sys::CUstream) -> Option<Result<()>> {
        if d.dtype == DType::U32 {
            return None;
        }
        let key = PlanKey::of(d);
        if !self.plans.contains_key(&key) {
            if self.plans.len() >= MAX_PLANS {
                self.clear(stream);
            }
            let plan = match Plan::new(self.handle, &key) {
                Ok(p) => Some(p),
                // The built-in kernel computes any shape: a refused plan costs speed, not the
                // run. Said once per shape, since it is a slow path someone should look at.
                Err(e) => {
                    eprintln!(
                        "armsrace: cuBLASLt has no plan for GEMM m={} n={} k={} ({:?}, {e:?}); \
                         it uses the built-in kernel",
                        d.m, d.n, d.k, d.dtype
                    );
                    None
                }
            };
            self.plans.insert(key, plan);
        }
        let plan = self.plans[&key].as_ref()?;
        if let Some(bias) = d.bias {
            use ltsys::cublasLtMatmulDescAttributes_t as A;
            // SAFETY: `desc` is live; the attribute takes a device pointer. GEMMs are
            // enqueued under the device's lock, and cuBLASLt reads the attribute when
            // enqueuing, so changing it for the next call does not affect this one.
            let set = unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    A::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias as *const u64 as *const c_void,
                    8,
                )
            };
            if let Err(e) = set {
                return not_supported_or(e, d);
            }
        }
        let (alpha, beta) = (1.0f32, if d.accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: operands are live device allocations of the backend covering the described
        // layouts (checked by the caller's shapes); the plan matches them (its key), and the
        // workspace is ours.
        let run = unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                d.b as *const c_void,
                plan.l1,
                d.a as *const c_void,
                plan.l2,
                d.c as *const c_void,
                plan.lc,
                d.c as *mut c_void,
                plan.lc,
                &plan.algo,
                self.workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream as *mut _,
            )
        };
        match run {
            Ok(()) => Some(Ok(())),
            Err(e) => not_supported_or(e, d),
        }
    }

    /// Drops every plan (after the stream has finished with them).
    fn clear(&mut self, stream: sys::CUstream) {
        // SAFETY: waits for the GEMMs that may still use the plans.
        let _ = unsafe { drv::stream::synchronize(stream) };
        for p in self.plans.drain().filter_map(|(_, p)| p) {
            // SAFETY: the stream is idle and the plan leaves the cache here.
            unsafe { p.destroy() };
        }
    }

    /// # Safety
    /// With the context bound and the stream idle; `self` is not used afterwards.
    pub(super) unsafe fn destroy(&mut self) {
        for p in self.plans.drain().filter_map(|(_, p)| p) {
            // SAFETY: the caller's contract (stream idle); each plan leaves the cache once.
            unsafe { p.destroy() };
        }
        // SAFETY: the caller's contract: nothing uses the handle or the workspace any more.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
            let _ = drv::free_sync(self.workspace);
        }
    }
}

/// cuBLASLt's NOT_SUPPORTED means "use your own kernel" (`None`); other errors are errors.
fn not_supported_or(e: lt::CublasError, d: &GemmDesc) -> Option<Result<()>> {
    match e {
        lt::CublasError(ltsys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED) => None,
        e => Some(Err(Error::Other(format!(
            "cuBLASLt GEMM m={} n={} k={}: {e:?}",
            d.m, d.n, d.k
        )))),
    }
}
