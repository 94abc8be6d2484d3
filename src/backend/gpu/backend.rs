//! `GpuBackend`: every Backend op as kernel launches on a KernelDevice. Written once for
//! both devices (real CUDA, and the CPU execution harness that runs the same kernels).
//!
//! Precision: `Precision::F32` stores tensors in f32 (exact comparisons with the CPU);
//! `Precision::Bf16` stores them in bf16 and computes in f32. Statistics that the backward
//! reads (norm mean/rstd, attention lse) are always f32: an op that writes them swaps the
//! caller's buffer for an f32 one of the same length (the caller only ever sees lengths).

use super::args::*;
use super::buffer::{GpuBuf, Inner};
use super::device::{DType, GemmDesc, KernelDevice, LaunchConfig};
use crate::backend::cpu::rotary::inv_freq;
use crate::backend::{AttnShape, Backend, RotaryShape};
use crate::error::{Error, Result};
use crate::model::config::{Activation, NormKind};
use std::sync::Arc;

/// Storage precision of tensors on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

/// Kernel argument structs (kernels/args.h): plain old data, copied verbatim into a launch.
///
/// # Safety
/// Implementors must be `#[repr(C)]` with no padding bytes, so every byte is initialized.
pub unsafe trait KernelArgs: Copy + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: the trait's contract: a repr(C) struct without padding, so all
        // size_of::<Self>() bytes behind `self` are initialized and live as long as `self`.
        unsafe {
            std::slice::from_raw_parts(
                self as *const Self as *const u8,
                std::mem::size_of::<Self>(),
            )
        }
    }
}
macro_rules! kernel_args {
    ($($t:ty),*) => {$(
        // SAFETY: bindgen struct from kernels/args.h, laid out with 8-byte fields first and an
        // explicit _pad, so it has no implicit padding (its size is checked by the
        // args_layout kernel test and bindgen's layout asserts).
        unsafe impl KernelArgs for $t {}
    )*};
}
kernel_args!(
    EwArgs,
    GatherArgs,
    ScatterArgs,
    ColSumArgs,
    NormFwdArgs,
    NormBwdArgs,
    RotaryArgs,
    AttnFwdArgs,
    AttnBwdArgs,
    ActArgs,
    CeArgs,
    CeChunkArgs,
    GemmArgs,
    TopkArgs,
    SampleArgs,
    CandArgs,
    AdamwArgs,
    AdafactorArgs,
    LayoutArgs
);

/// Rows per chunk of the two-stage column sums (bias, norm weight and Adafactor column
/// gradients): enough chunks to fill a GPU, few enough that the finish pass is cheap.
pub(crate) const ROWS_PER_CHUNK: usize = 64;
/// Head dims the tensor-core attention kernels are built for (kernels/attention_mma*.cu).
const ATTN_MMA_HEAD_DIMS: [usize; 6] = [16, 32, 64, 80, 96, 128];
/// Tensor-core attention forward tiles: 16-query row tiles per warp and keys per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttnTiles {
    pub row_tiles: usize,
    pub keys: usize,
}
/// Forward tile shapes built per head_dim (kernels/attention_mma.cu).
pub const ATTN_FWD_TILES: &[(usize, AttnTiles)] = &[
    (16, tiles(1, 64)),
    (32, tiles(1, 64)),
    (64, tiles(1, 64)),
    (64, tiles(1, 32)),
    (64, tiles(2, 64)),
    (64, tiles(2, 32)),
    (80, tiles(1, 64)),
    (96, tiles(1, 64)),
    (128, tiles(1, 64)),
    (128, tiles(1, 32)),
    (128, tiles(2, 32)),
];
const fn tiles(row_tiles: usize, keys: usize) -> AttnTiles {
    AttnTiles { row_tiles, keys }
}
/// The forward tiles used unless a handle picks others. Head dim 128: 32-key tiles, the
/// fastest of the three built on an H200 (121 vs 100 and 112 TFLOP/s at 4k context, 126 vs
/// 100 and 72 at the candidate-scoring shape; README); the others were not compared there.
pub fn attn_fwd_default_tiles(head_dim: usize) -> AttnTiles {
    tiles(1, if head_dim == 128 { 32 } else { 64 })
}
/// Threads per block of the 1-D kernels.
pub(crate) const THREADS: u32 = 256;

pub struct GpuBackend<D: KernelDevice> {
    pub(crate) inner: Arc<Inner<D>>,
    pub(crate) precision: Precision,
    /// Use the tensor-core kernels where one covers the op (bf16 attention forward and
    /// backward); off, the CUDA-core kernels run everywhere (the reference the benchmarks
    /// compare against).
    pub(crate) tensor_cores: bool,
    /// Tensor-core attention forward tiles, where built for the head_dim (`None`, or not
    /// built: `attn_fwd_default_tiles`).
    pub(crate) attn_tiles: Option<AttnTiles>,
}

/// A second handle on the same device, allocator and error state (the model owns one).
impl<D: KernelDevice> Clone for GpuBackend<D> {
    fn clone(&self) -> Self {
        GpuBackend {
            inner: self.inner.clone(),
            precision: self.precision,
            tensor_cores: self.tensor_cores,
            attn_tiles: self.attn_tiles,
        }
    }
}

impl<D: KernelDevice> GpuBackend<D> {
    pub fn new(dev: D, precision: Precision) -> Self {
        GpuBackend {
            inner: Arc::new(Inner::new(dev)),
            precision,
            tensor_cores: true,
            attn_tiles: None,
        }
    }

    /// This handle with other tensor-core attention forward tiles (for head dims they are
    /// built for; others keep the default). For benchmarks: every choice computes the same.
    pub fn with_attention_tiles(mut self, tiles: AttnTiles) -> Self {
        self.attn_tiles = Some(tiles);
        self
    }

    /// This handle with the tensor-core kernels on or off (same device and memory).
    pub fn with_tensor_cores(mut self, on: bool) -> Self {
        self.tensor_cores = on;
        self
    }

    /// Whether attention (forward or backward) runs on the tensor-core kernels: bf16, a
    /// head_dim they are built for, and 16-byte aligned tensors (they copy rows with
    /// 16-byte cp.async; a zero address is an absent tensor).
    fn use_attention_mma(&self, head_dim: usize, tensors: &[u64]) -> bool {
        self.tensor_cores
            && self.precision == Precision::Bf16
            && ATTN_MMA_HEAD_DIMS.contains(&head_dim)
            && tensors.iter().all(|a| a.is_multiple_of(16))
    }

    pub fn device(&self) -> &D {
        &self.inner.dev
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The first error since the last call (out of memory, a failed launch, bad shapes), and
    /// any asynchronous device error. Ops after a failure are skipped, so call this after a
    /// pass and treat an `Err` as "the pass did not happen".
    pub fn check(&self) -> Result<()> {
        if let Err(e) = self.inner.dev.synchronize() {
            self.inner.fail(self.inner.call_error("synchronize", e));
        }
        match self.inner.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Releases cached device memory (buffers in use stay).
    pub fn trim(&self) {
        self.inner.trim();
    }

    /// Fallible upload: an `Err` (e.g. out of memory) instead of a recorded error.
    pub fn try_upload(&self, data: &[f32]) -> Result<GpuBuf<D>> {
        let b = self.upload(data);
        self.check()?;
        Ok(b)
    }

    pub(crate) fn tensor_dtype(&self) -> DType {
        match self.precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::Bf16,
        }
    }

    fn sfx(&self) -> &'static str {
        match self.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `{op}_{f32|bf16}`: the kernel instance for this backend's storage type.
    pub(crate) fn kname(&self, op: &str) -> String {
        format!("{op}_{}", self.sfx())
    }

    pub(crate) fn alloc(&self, len: usize, dtype: DType) -> GpuBuf<D> {
        GpuBuf::new(&self.inner, len, dtype)
    }

    pub(crate) fn alloc_zeroed(&self, len: usize, dtype: DType) -> GpuBuf<D> {
        let b = self.alloc(len, dtype);
        if let Some(m) = &b.mem {
            if let Err(e) = self.inner.dev.memset_zero(m) {
                self.inner.fail(self.inner.call_error("memset", e));
            }
        }
        b
    }

    fn upload_bytes(&self, len: usize, dtype: DType, bytes: &[u8]) -> GpuBuf<D> {
        let b = self.alloc(len, dtype);
        if let Some(m) = &b.mem {
            if !bytes.is_empty() {
                if let Err(e) = self.inner.dev.upload(m, 0, bytes) {
                    self.inner.fail(self.inner.call_error("an upload", e));
                }
            }
        }
        b
    }

    pub(crate) fn upload_u32(&self, data: &[u32]) -> GpuBuf<D> {
        self.upload_bytes(data.len(), DType::U32, bytemuck::cast_slice(data))
    }

    pub(crate) fn upload_f32_exact(&self, data: &[f32]) -> GpuBuf<D> {
        self.upload_bytes(data.len(), DType::F32, bytemuck::cast_slice(data))
    }

    fn download_raw(&self, buf: &GpuBuf<D>) -> Option<Vec<u8>> {
        let m = buf.mem.as_ref()?;
        let mut bytes = vec![0u8; buf.bytes()];
        if bytes.is_empty() {
            return Some(bytes);
        }
        match self.inner.dev.download(m, 0, &mut bytes) {
            Ok(()) => Some(bytes),
            Err(e) => {
                self.inner.fail(self.inner.call_error("a download", e));
                None
            }
        }
    }

    pub(crate) fn download_u32(&self, buf: &GpuBuf<D>) -> Vec<u32> {
        match self.download_raw(buf) {
            Some(b) => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None => vec![0; buf.len],
        }
    }

    /// Records `msg` as an input error (ops cannot return one); returns true if it did.
    pub(crate) fn reject(&self, bad: bool, msg: impl FnOnce() -> String) -> bool {
        if bad {
            self.inner.fail(Error::input(msg()));
        }
        bad
    }

    /// Skip an op when an earlier error is pending or a buffer it touches has no memory.
    pub(crate) fn skip(&self, bufs: &[&GpuBuf<D>]) -> bool {
        self.inner.failed() || bufs.iter().any(|b| b.mem.is_none() && b.len > 0)
    }

    pub(crate) fn launch<A: KernelArgs>(
        &self,
        name: &str,
        grid: [u32; 3],
        block: u32,
        smem: u32,
        args: &A,
    ) {
        if grid.contains(&0) {
            return;
        }
        let cfg = LaunchConfig {
            grid,
            block: [block, 1, 1],
            shared_bytes: smem,
        };
        let what = || {
            format!(
                "kernel `{name}` (grid {:?}, block {block}, {smem} bytes of shared memory)",
                grid
            )
        };
        self.inner.issued(format_args!("kernel `{name}`"));
        if let Err(e) = self.inner.dev.launch(name, cfg, args.as_bytes()) {
            self.inner.fail(self.inner.launch_error(&what(), e));
        }
    }

    /// Grid for a grid-stride loop over n elements.
    pub(crate) fn grid_1d(n: usize) -> [u32; 3] {
        [(n.div_ceil(THREADS as usize)).clamp(1, 4096) as u32, 1, 1]
    }

    /// One activation kernel, forward or backward (`pass` "fwd" / "bwd"): both passes take
    /// the same argument block; `dout` is 0 for the forward.
    #[allow(clippy::too_many_arguments)]
    fn launch_activation(
        &self,
        act: Activation,
        pass: &str,
        out: u64,
        u: &GpuBuf<D>,
        dout: u64,
        n: usize,
        inter: usize,
    ) {
        let base = match act {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::SiluGated => "swiglu",
        };
        let args = ActArgs {
            out,
            u: u.addr(),
            dout,
            n: n as u64,
            inter: inter as u32,
            _pad: 0,
        };
        let op = format!("{base}_{pass}");
        self.launch(&self.kname(&op), Self::grid_1d(n), THREADS, 0, &args);
    }

    /// Makes `buf` an f32 buffer of its length (statistics outputs), keeping it if it is one.
    fn ensure_f32(&self, buf: &mut GpuBuf<D>) {
        if buf.dtype != DType::F32 {
            *buf = self.alloc(buf.len, DType::F32);
        }
    }

    /// C = (acc ? C : 0) + op(A) op(B) (+ bias): cuBLASLt where the device has it, else
    /// kernels/gemm.cu.
    pub(crate) fn gemm(&self, d: GemmDesc) {
        if d.m == 0 || d.n == 0 {
            return;
        }
        macro_rules! lib {
            () => {
                format_args!(
                    "the device library's GEMM ({:?} {}x{}x{})",
                    d.dtype, d.m, d.n, d.k
                )
            };
        }
        if let Some(r) = self.inner.dev.gemm(&d) {
            self.inner.issued(lib!());
            if let Err(e) = r {
                self.inner
                    .fail(self.inner.launch_error(&lib!().to_string(), e));
            }
            return;
        }
        let args = GemmArgs {
            c: d.c,
            a: d.a,
            b: d.b,
            bias: d.bias.unwrap_or(0),
            m: d.m as u32,
            n: d.n as u32,
            k: d.k as u32,
            lda: d.lda as u32,
            ldb: d.ldb as u32,
            ldc: d.ldc as u32,
            trans_a: d.trans_a as u32,
            trans_b: d.trans_b as u32,
            accumulate: d.accumulate as u32,
            _pad: 0,
        };
        let grid = [d.n.div_ceil(64) as u32, d.m.div_ceil(64) as u32, 1];
        self.launch(&self.kname("gemm"), grid, 256, 0, &args);
    }

    pub(crate) fn desc(&self, m: usize, n: usize, k: usize) -> GemmDesc {
        GemmDesc {
            dtype: self.tensor_dtype(),
            m,
            n,
            k,
            a: 0,
            lda: 0,
            trans_a: false,
            b: 0,
            ldb: 0,
            trans_b: false,
            c: 0,
            ldc: n,
            bias: None,
            accumulate: false,
        }
    }

    /// dst[j] += column sums of src [rows, cols], deterministic two-stage reduction.
    pub(crate) fn colsum_add(&self, dst: &GpuBuf<D>, src: &GpuBuf<D>, rows: usize, cols: usize) {
        let chunks = rows.div_ceil(ROWS_PER_CHUNK).max(1);
        let partial = self.alloc(chunks * cols, DType::F32);
        if self.skip(&[dst, src, &partial]) {
            return;
        }
        let args = ColSumArgs {
            dst: dst.addr(),
            src: src.addr(),
            partial: partial.addr(),
            rows: rows as u32,
            cols: cols as u32,
            rows_per_chunk: ROWS_PER_CHUNK as u32,
            chunks: chunks as u32,
        };
        let gx = cols.div_ceil(THREADS as usize) as u32;
        self.launch(
            &self.kname("colsum_partial"),
            [gx, chunks as u32, 1],
            THREADS,
            0,
            &args,
        );
        self.launch(&self.kname("colsum_finish"), [gx, 1, 1], THREADS, 0, &args);
    }

    /// Rows grouped by destination for the atomic-free scatter-add: (dst rows, offsets,
    /// source rows in group order).
    fn group_rows(dst_rows: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let mut order: Vec<u32> = (0..dst_rows.len() as u32).collect();
        order.sort_by_key(|&i| (dst_rows[i as usize], i));
        let (mut uniq, mut offsets) = (Vec::new(), Vec::new());
        for (j, &i) in order.iter().enumerate() {
            let d = dst_rows[i as usize];
            if uniq.last() != Some(&d) {
                uniq.push(d);
                offsets.push(j as u32);
            }
        }
        offsets.push(order.len() as u32);
        (uniq, offsets, order)
    }

    fn scatter_add(&self, dst: &GpuBuf<D>, src: &GpuBuf<D>, dst_rows: &[u32], dim: usize) {
        if dst_rows.is_empty() || dim == 0 {
            return;
        }
        let (uniq, offsets, order) = Self::group_rows(dst_rows);
        let (u, o, ord) = (
            self.upload_u32(&uniq),
            self.upload_u32(&offsets),
            self.upload_u32(&order),
        );
        if self.skip(&[dst, src, &u, &o, &ord]) {
            return;
        }
        let args = ScatterArgs {
            dst: dst.addr(),
            src: src.addr(),
            dst_row: u.addr(),
            offsets: o.addr(),
            order: ord.addr(),
            groups: uniq.len() as u32,
            dim: dim as u32,
        };
        let grid = [uniq.len() as u32, dim.div_ceil(THREADS as usize) as u32, 1];
        self.launch(&self.kname("scatter_add_rows"), grid, THREADS, 0, &args);
    }

    fn gather(&self, out: &GpuBuf<D>, src: &GpuBuf<D>, idx: &[u32], dim: usize) {
        if idx.is_empty() || dim == 0 {
            return;
        }
        let ib = self.upload_u32(idx);
        if self.skip(&[out, src, &ib]) {
            return;
        }
        let args = GatherArgs {
            out: out.addr(),
            src: src.addr(),
            idx: ib.addr(),
            rows: idx.len() as u32,
            dim: dim as u32,
        };
        let grid = [idx.len() as u32, dim.div_ceil(THREADS as usize) as u32, 1];
        self.launch(&self.kname("gather_rows"), grid, THREADS, 0, &args);
    }

    fn elementwise(&self, op: &str, out: &GpuBuf<D>, a: &GpuBuf<D>, b: Option<&GpuBuf<D>>) {
        let n = out.len;
        if self.reject(a.len != n || b.is_some_and(|b| b.len != n), || {
            format!(
                "{op}: length mismatch ({n} vs {} / {:?})",
                a.len,
                b.map(|b| b.len)
            )
        }) || self.skip(&[out, a])
        {
            return;
        }
        let args = EwArgs {
            out: out.addr(),
            a: a.addr(),
            b: b.map_or(0, |b| b.addr()),
            n: n as u64,
        };
        // Kernels are picked by the buffers' own element type (a copy may move f32 statistics
        // or u32 ids in a bf16 backend).
        if self.reject(
            out.dtype != a.dtype || b.is_some_and(|b| b.dtype != a.dtype),
            || format!("{op}: element types differ"),
        ) {
            return;
        }
        let name = match a.dtype {
            DType::F32 | DType::U32 => format!("{op}_f32"),
            DType::Bf16 => format!("{op}_bf16"),
        };
        self.launch(&name, Self::grid_1d(n), THREADS, 0, &args);
    }
}

impl<D: KernelDevice> Backend for GpuBackend<D> {
    type Buf = GpuBuf<D>;

    fn check(&self) -> crate::error::Result<()> {
        GpuBackend::check(self)
    }

    fn name(&self) -> &'static str {
        match self.precision {
            Precision::F32 => "gpu-f32",
            Precision::Bf16 => "gpu-bf16",
        }
    }

    fn upload(&self, data: &[f32]) -> GpuBuf<D> {
        match self.precision {
            Precision::F32 => self.upload_f32_exact(data),
            Precision::Bf16 => {
                let h: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
                self.upload_bytes(data.len(), DType::Bf16, bytemuck::cast_slice(&h))
            }
        }
    }

    fn zeros(&self, len: usize) -> GpuBuf<D> {
        self.alloc_zeroed(len, self.tensor_dtype())
    }

    fn download(&self, buf: &GpuBuf<D>) -> Vec<f32> {
        let Some(bytes) = self.download_raw(buf) else {
            return vec![f32::NAN; buf.len];
        };
        match buf.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::U32 => bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
        }
    }

    fn len(&self, buf: &GpuBuf<D>) -> usize {
        buf.len
    }

    fn embed(&self, out: &mut GpuBuf<D>, table: &GpuBuf<D>, ids: &[u32], dim: usize) {
        self.gather(out, table, ids, dim);
    }

    fn embed_bwd(&self, dtable: &mut GpuBuf<D>, dout: &GpuBuf<D>, ids: &[u32], dim: usize) {
        self.scatter_add(dtable, dout, ids, dim);
    }

    fn gather_rows(&self, out: &mut GpuBuf<D>, x: &GpuBuf<D>, rows: &[usize], dim: usize) {
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        self.gather(out, x, &idx, dim);
    }

    fn scatter_add_rows(&self, dx: &mut GpuBuf<D>, dout: &GpuBuf<D>, rows: &[usize], dim: usize) {
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        self.scatter_add(dx, dout, &idx, dim);
    }

    fn matmul(
        &self,
        out: &mut GpuBuf<D>,
        inp: &GpuBuf<D>,
        w: &GpuBuf<D>,
        bias: Option<&GpuBuf<D>>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
        if self.skip(&[out, inp, w]) {
            return;
        }
        // out[m, n] = inp[m, k] . w[n, k]^T: B = w read transposed.
        self.gemm(GemmDesc {
            a: inp.addr(),
            lda: k,
            b: w.addr(),
            ldb: k,
            trans_b: true,
            c: out.addr(),
            bias: bias.map(|b| b.addr()),
            accumulate,
            ..self.desc(m, n, k)
        });
    }

    fn matmul_bwd(
        &self,
        dinp: Option<(&mut GpuBuf<D>, bool)>,
        dw: Option<&mut GpuBuf<D>>,
        dbias: Option<&mut GpuBuf<D>>,
        dout: &GpuBuf<D>,
        inp: &GpuBuf<D>,
        w: &GpuBuf<D>,
        m: usize,
        k: usize,
        n: usize,
    ) {
        if self.skip(&[dout, inp, w]) {
            return;
        }
        if let Some((dinp, acc)) = dinp {
            // dinp[m, k] = dout[m, n] . w[n, k]
            self.gemm(GemmDesc {
                a: dout.addr(),
                lda: n,
                b: w.addr(),
                ldb: k,
                c: dinp.addr(),
                accumulate: acc,
                ..self.desc(m, k, n)
            });
        }
        if let Some(dw) = dw {
            // dw[n, k] += dout[m, n]^T . inp[m, k]
            self.gemm(GemmDesc {
                a: dout.addr(),
                lda: n,
                trans_a: true,
                b: inp.addr(),
                ldb: k,
                c: dw.addr(),
                accumulate: true,
                ..self.desc(n, k, m)
            });
        }
        if let Some(db) = dbias {
            self.colsum_add(db, dout, m, n);
        }
    }

    fn norm(
        &self,
        kind: NormKind,
        out: &mut GpuBuf<D>,
        mean: &mut GpuBuf<D>,
        rstd: &mut GpuBuf<D>,
        x: &GpuBuf<D>,
        w: &GpuBuf<D>,
        b: Option<&GpuBuf<D>>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        self.ensure_f32(mean);
        self.ensure_f32(rstd);
        if self.skip(&[out, mean, rstd, x, w]) {
            return;
        }
        let args = NormFwdArgs {
            out: out.addr(),
            mean: mean.addr(),
            rstd: rstd.addr(),
            x: x.addr(),
            w: w.addr(),
            b: b.map_or(0, |b| b.addr()),
            rows: rows as u32,
            dim: dim as u32,
            eps,
            rms: (kind == NormKind::RmsNorm) as u32,
        };
        self.launch(
            &self.kname("norm_fwd"),
            [rows as u32, 1, 1],
            THREADS,
            0,
            &args,
        );
    }

    fn norm_bwd(
        &self,
        kind: NormKind,
        dx: &mut GpuBuf<D>,
        dw: Option<&mut GpuBuf<D>>,
        db: Option<&mut GpuBuf<D>>,
        dout: &GpuBuf<D>,
        x: &GpuBuf<D>,
        mean: &GpuBuf<D>,
        rstd: &GpuBuf<D>,
        w: &GpuBuf<D>,
        rows: usize,
        dim: usize,
    ) {
        if self.reject(mean.dtype != DType::F32 || rstd.dtype != DType::F32, || {
            "norm_bwd: mean/rstd must come from this backend's norm".into()
        }) || self.skip(&[dx, dout, x, mean, rstd, w])
        {
            return;
        }
        let chunks = rows.div_ceil(ROWS_PER_CHUNK).max(1);
        let want_w = dw.is_some() || db.is_some();
        let pw = want_w.then(|| self.alloc(chunks * dim, DType::F32));
        let pb = db.is_some().then(|| self.alloc(chunks * dim, DType::F32));
        let args = NormBwdArgs {
            dx: dx.addr(),
            dout: dout.addr(),
            x: x.addr(),
            mean: mean.addr(),
            rstd: rstd.addr(),
            w: w.addr(),
            partial_w: pw.as_ref().map_or(0, |p| p.addr()),
            partial_b: pb.as_ref().map_or(0, |p| p.addr()),
            rows: rows as u32,
            dim: dim as u32,
            rms: (kind == NormKind::RmsNorm) as u32,
            rows_per_chunk: ROWS_PER_CHUNK as u32,
        };
        self.launch(
            &self.kname("norm_bwd_dx"),
            [rows as u32, 1, 1],
            THREADS,
            0,
            &args,
        );
        if !want_w || self.inner.failed() {
            return;
        }
        let gx = dim.div_ceil(THREADS as usize) as u32;
        self.launch(
            &self.kname("norm_bwd_dwdb"),
            [gx, chunks as u32, 1],
            THREADS,
            0,
            &args,
        );
        let finish = |dst: &GpuBuf<D>, partial: &GpuBuf<D>| {
            let cargs = ColSumArgs {
                dst: dst.addr(),
                src: 0,
                partial: partial.addr(),
                rows: rows as u32,
                cols: dim as u32,
                rows_per_chunk: ROWS_PER_CHUNK as u32,
                chunks: chunks as u32,
            };
            self.launch(&self.kname("colsum_finish"), [gx, 1, 1], THREADS, 0, &cargs);
        };
        if let (Some(dw), Some(p)) = (dw, &pw) {
            finish(dw, p);
        }
        if let (Some(db), Some(p)) = (db, &pb) {
            finish(db, p);
        }
    }

    fn rotary(&self, qkv: &mut GpuBuf<D>, positions: &[u32], shape: RotaryShape, inverse: bool) {
        if shape.rot_dims == 0 || positions.is_empty() {
            return;
        }
        let freqs = self.upload_f32_exact(&inv_freq(shape.rot_dims, shape.base));
        let pos = self.upload_u32(positions);
        if self.skip(&[qkv, &freqs, &pos]) {
            return;
        }
        let args = RotaryArgs {
            qkv: qkv.addr(),
            positions: pos.addr(),
            inv_freq: freqs.addr(),
            rows: positions.len() as u32,
            heads: shape.heads as u32,
            kv_heads: shape.kv_heads as u32,
            head_dim: shape.head_dim as u32,
            rot_dims: shape.rot_dims as u32,
            inverse: inverse as u32,
        };
        self.launch(
            &self.kname("rotary"),
            [positions.len() as u32, 1, 1],
            128,
            0,
            &args,
        );
    }

    fn attention(
        &self,
        out: &mut GpuBuf<D>,
        lse: &mut GpuBuf<D>,
        qkv: &GpuBuf<D>,
        prefix_qkv: Option<&GpuBuf<D>>,
        lens: &[usize],
        s: AttnShape,
    ) {
        self.ensure_f32(lse);
        if self.reject(
            s.head_dim > 256 || s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads),
            || {
                format!(
                    "attention: head_dim {} (max 256), heads {} / kv_heads {}",
                    s.head_dim, s.heads, s.kv_heads
                )
            },
        ) || self.reject(s.prefix > 0 && prefix_qkv.is_none(), || {
            "attention: prefix length without prefix qkv".into()
        }) {
            return;
        }
        let lens_u: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
        let lb = self.upload_u32(&lens_u);
        if self.skip(&[out, lse, qkv, &lb]) || s.batch == 0 || s.seq == 0 {
            return;
        }
        let args = AttnFwdArgs {
            out: out.addr(),
            lse: lse.addr(),
            qkv: qkv.addr(),
            prefix: prefix_qkv.map_or(0, |p| p.addr()),
            lens: lb.addr(),
            batch: s.batch as u32,
            seq: s.seq as u32,
            heads: s.heads as u32,
            kv_heads: s.kv_heads as u32,
            head_dim: s.head_dim as u32,
            prefix_len: s.prefix as u32,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
            _pad: 0,
        };
        let hd = s.head_dim;
        if self.use_attention_mma(hd, &[args.qkv, args.prefix, args.out]) {
            let t = self
                .attn_tiles
                .filter(|t| ATTN_FWD_TILES.contains(&(hd, *t)))
                .unwrap_or_else(|| attn_fwd_default_tiles(hd));
            let rows = 64 * t.row_tiles;
            let smem = (rows + 4 * t.keys) * (hd + 8) * 2;
            let grid = [s.seq.div_ceil(rows) as u32, s.heads as u32, s.batch as u32];
            let name = format!("attn_fwd_mma_d{hd}_m{}_k{}_bf16", t.row_tiles, t.keys);
            self.launch(&name, grid, 128, smem as u32, &args);
            return;
        }
        let smem = 4 * (16 * hd + 32 * (hd + 1) + 32 * hd + 4 * 4 * 32);
        let grid = [s.seq.div_ceil(16) as u32, s.heads as u32, s.batch as u32];
        self.launch(&self.kname("attn_fwd"), grid, 128, smem as u32, &args);
    }

    fn attention_bwd(
        &self,
        dqkv: &mut GpuBuf<D>,
        dout: &GpuBuf<D>,
        qkv: &GpuBuf<D>,
        prefix_qkv: Option<&GpuBuf<D>>,
        out: &GpuBuf<D>,
        lse: &GpuBuf<D>,
        lens: &[usize],
        s: AttnShape,
    ) {
        if self.reject(s.prefix > 0 && prefix_qkv.is_none(), || {
            "attention_bwd: prefix length without prefix qkv".into()
        }) || self.reject(lse.dtype != DType::F32, || {
            "attention_bwd: lse must come from this backend's attention".into()
        }) || self.reject(s.head_dim > 256, || {
            format!("attention: head_dim {} (max 256)", s.head_dim)
        }) {
            return;
        }
        let rows = s.batch * s.seq;
        let lens_u: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
        let lb = self.upload_u32(&lens_u);
        let delta = self.alloc(rows * s.heads, DType::F32);
        if self.skip(&[dqkv, dout, qkv, out, lse, &lb, &delta]) || rows == 0 {
            return;
        }
        let args = AttnBwdArgs {
            dqkv: dqkv.addr(),
            dout: dout.addr(),
            qkv: qkv.addr(),
            out: out.addr(),
            lse: lse.addr(),
            delta: delta.addr(),
            lens: lb.addr(),
            prefix: prefix_qkv.map_or(0, |p| p.addr()),
            batch: s.batch as u32,
            seq: s.seq as u32,
            heads: s.heads as u32,
            kv_heads: s.kv_heads as u32,
            head_dim: s.head_dim as u32,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
            prefix_len: s.prefix as u32,
            _pad: 0,
        };
        let per_head = [(rows * s.heads).div_ceil(4) as u32, 1, 1];
        self.launch(&self.kname("attn_bwd_delta"), per_head, 128, 0, &args);
        let hd = s.head_dim;
        if self.use_attention_mma(hd, &[args.qkv, args.prefix, args.dout, args.dqkv]) {
            // kernels/attention_mma_bwd.cu; shared memory as its launch comments say.
            let row_bytes = (hd + 8) * 2;
            let query_tile = if hd <= 64 { 64 } else { 32 };
            let blocks = s.seq.div_ceil(64) as u32;
            let (b, h, kv) = (s.batch as u32, s.heads as u32, s.kv_heads as u32);
            let dq_smem = 6 * 64 * row_bytes;
            let dkv_smem = (2 * 64 + 4 * query_tile) * row_bytes;
            let dq = format!("attn_bwd_dq_mma_d{hd}_bf16");
            self.launch(&dq, [blocks, h, b], 128, dq_smem as u32, &args);
            let dkv = format!("attn_bwd_dkv_mma_d{hd}_bf16");
            self.launch(&dkv, [blocks, kv, b], 128, dkv_smem as u32, &args);
            return;
        }
        self.launch(&self.kname("attn_bwd_dq"), per_head, 128, 0, &args);
        let per_kv = [(rows * s.kv_heads).div_ceil(4) as u32, 1, 1];
        self.launch(&self.kname("attn_bwd_dkv"), per_kv, 128, 0, &args);
    }

    fn activation(
        &self,
        act: Activation,
        out: &mut GpuBuf<D>,
        u: &GpuBuf<D>,
        rows: usize,
        inter: usize,
    ) {
        if self.skip(&[out, u]) {
            return;
        }
        self.launch_activation(act, "fwd", out.addr(), u, 0, rows * inter, inter);
    }

    fn activation_bwd(
        &self,
        act: Activation,
        du: &mut GpuBuf<D>,
        dout: &GpuBuf<D>,
        u: &GpuBuf<D>,
        rows: usize,
        inter: usize,
    ) {
        if self.skip(&[du, dout, u]) {
            return;
        }
        let n = rows * inter;
        self.launch_activation(act, "bwd", du.addr(), u, dout.addr(), n, inter);
    }

    fn copy(&self, dst: &mut GpuBuf<D>, src: &GpuBuf<D>) {
        if dst.dtype != src.dtype {
            // A statistics buffer copied into a fresh tensor: take its type along.
            *dst = self.alloc(dst.len, src.dtype);
        }
        self.elementwise("copy", dst, src, None);
    }

    fn add(&self, out: &mut GpuBuf<D>, a: &GpuBuf<D>, b: &GpuBuf<D>) {
        self.elementwise("add", out, a, Some(b));
    }

    fn add_assign(&self, acc: &mut GpuBuf<D>, x: &GpuBuf<D>) {
        self.elementwise("add_assign", acc, x, None);
    }

    fn fill_zero(&self, buf: &mut GpuBuf<D>) {
        if self.skip(&[buf]) {
            return;
        }
        if let Some(m) = &buf.mem {
            if let Err(e) = self.inner.dev.memset_zero(m) {
                self.inner.fail(self.inner.call_error("memset", e));
            }
        }
    }

    fn stores_f32(&self) -> bool {
        self.precision == Precision::F32
    }

    fn upload_f32(&self, data: &[f32]) -> GpuBuf<D> {
        self.upload_f32_exact(data)
    }

    fn cast_from_f32(&self, dst: &mut GpuBuf<D>, src: &GpuBuf<D>) {
        match (dst.dtype, src.dtype) {
            (DType::Bf16, DType::F32) => {
                if self.reject(dst.len != src.len, || {
                    format!("cast_from_f32: {} vs {} elements", dst.len, src.len)
                }) || self.skip(&[dst, src])
                {
                    return;
                }
                let args = EwArgs {
                    out: dst.addr(),
                    a: src.addr(),
                    b: 0,
                    n: dst.len as u64,
                };
                self.launch("cast_f32_bf16", Self::grid_1d(dst.len), THREADS, 0, &args);
            }
            _ => self.elementwise("copy", dst, src, None),
        }
    }

    fn adamw(
        &self,
        p: &mut GpuBuf<D>,
        g: &GpuBuf<D>,
        m: &mut GpuBuf<D>,
        v: &mut GpuBuf<D>,
        hp: &crate::backend::AdamW,
        step: u32,
    ) {
        self.adamw_step(p, g, m, v, hp, step);
    }

    fn adafactor(
        &self,
        p: &mut GpuBuf<D>,
        g: &GpuBuf<D>,
        offset: usize,
        rows: usize,
        cols: usize,
        state: crate::backend::AdafactorBufs<'_, GpuBuf<D>>,
        hp: &crate::backend::Adafactor,
        step: u32,
    ) {
        self.adafactor_step(p, g, offset, rows, cols, state, hp, step);
    }

    fn cross_entropy(
        &self,
        dlogits: &mut GpuBuf<D>,
        logits: &GpuBuf<D>,
        targets: &[u32],
        scale: &[f32],
        classes: usize,
    ) -> Vec<f32> {
        let rows = targets.len();
        if self.reject(targets.iter().any(|&t| t as usize >= classes), || {
            format!("cross_entropy: a target is >= {classes} classes")
        }) {
            return vec![f32::NAN; rows];
        }
        let tb = self.upload_u32(targets);
        let sb = self.upload_f32_exact(scale);
        let losses = self.alloc(rows, DType::F32);
        if self.skip(&[dlogits, logits, &tb, &sb, &losses]) || rows == 0 {
            return vec![f32::NAN; rows];
        }
        let args = CeArgs {
            dlogits: dlogits.addr(),
            logits: logits.addr(),
            targets: tb.addr(),
            scale: sb.addr(),
            losses: losses.addr(),
            rows: rows as u32,
            classes: classes as u32,
        };
        self.launch(
            &self.kname("cross_entropy"),
            [rows as u32, 1, 1],
            THREADS,
            0,
            &args,
        );
        self.download(&losses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every head_dim the tensor-core path accepts has its default forward tiles built, so
    /// the dispatch never names a kernel that does not exist (the GPU op tests then run every
    /// listed shape).
    #[test]
    fn every_tensor_core_head_dim_has_default_tiles() {
        for hd in ATTN_MMA_HEAD_DIMS {
            assert!(
                ATTN_FWD_TILES.contains(&(hd, attn_fwd_default_tiles(hd))),
                "head_dim {hd}: default tiles {:?} not built",
                attn_fwd_default_tiles(hd)
            );
        }
        assert!(ATTN_FWD_TILES
            .iter()
            .all(|(hd, _)| ATTN_MMA_HEAD_DIMS.contains(hd)));
    }
}
