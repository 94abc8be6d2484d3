//! Every GPU op against its CPU reference, ggml test-backend-ops style: random inputs at odd
//! shapes, GpuBackend on the CPU execution harness (EmuDevice, always) and on a real GPU
//! (feature `cuda`, when one is present; otherwise a visible SKIPPED line).
//!
//! Tolerances are relative to max |reference| (common::assert_close):
//! - f32 storage: 1e-4 for everything (different summation orders, f32 libm vs CUDA math);
//! - bf16 storage: the CPU reference runs on the bf16-rounded inputs, so the difference is
//!   the bf16 rounding of the outputs (2^-8 relative) plus f32 noise: 1e-2 for one rounding,
//!   2e-2 for ops that read back a rounded intermediate (norm and attention backward, chained
//!   steps of the optimizers).
//! - top-k and candidate sampling: bit-identical; arg-min: the same index.

mod common;

use armsrace::backend::cpu::{activation, attention, gcg, loss, norm, optim, rotary};
use armsrace::backend::gpu::backend::ATTN_FWD_TILES;
use armsrace::backend::gpu::device::KernelDevice;
use armsrace::backend::gpu::emu::{EmuDevice, Schedule};
use armsrace::backend::gpu::{args, AdafactorBufs, GpuBackend, Precision};
use armsrace::backend::{AttnShape, Backend, RotaryShape};
use armsrace::model::config::{Activation, NormKind};
use common::assert_close;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;

type Rng64 = rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> Rng64 {
    Rng64::seed_from_u64(seed)
}

fn randn(r: &mut Rng64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// One backend under test with the tolerance of its precision.
struct Case<D: KernelDevice> {
    be: GpuBackend<D>,
    /// Tolerance for ops with one output rounding / with chained roundings.
    tol: f32,
    tol2: f32,
    /// Every float result the op family produced, in order, for the schedule comparison.
    outputs: RefCell<Vec<Vec<f32>>>,
}

impl<D: KernelDevice> Case<D> {
    fn new(dev: D, p: Precision) -> Self {
        let (tol, tol2) = match p {
            Precision::F32 => (1e-4, 1e-4),
            Precision::Bf16 => (1e-2, 2e-2),
        };
        Case {
            be: GpuBackend::new(dev, p),
            tol,
            tol2,
            outputs: RefCell::new(Vec::new()),
        }
    }
    fn bf16(&self) -> bool {
        self.be.precision() == Precision::Bf16
    }
    /// What the device will hold for `x`: the CPU reference must start from the same values.
    fn q(&self, x: &[f32]) -> Vec<f32> {
        if self.bf16() {
            x.iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect()
        } else {
            x.to_vec()
        }
    }
    fn up(&self, x: &[f32]) -> <GpuBackend<D> as Backend>::Buf {
        self.be.upload(x)
    }
    fn down(&self, b: &<GpuBackend<D> as Backend>::Buf) -> Vec<f32> {
        let v = self.be.download(b);
        self.be.check().expect("device ops succeed");
        self.keep(&v)
    }
    /// Records a result that reached the host other than through `down` (returned losses).
    fn keep(&self, v: &[f32]) -> Vec<f32> {
        self.outputs.borrow_mut().push(v.to_vec());
        v.to_vec()
    }

    fn what(&self, op: &str) -> String {
        format!("{op} [{} {}]", self.be.device().name(), self.be.name())
    }
}

/// The same op family under the harness's forward and reverse schedules (fibers resumed in
/// the other order between barriers, blocks taken last-first) must give the same bits: every
/// kernel is deterministic (none combines floats across threads with atomics; the integer
/// atomics in kernels/gcg.cu's top-k count or collect, and what they collect is sorted), so
/// any difference is a race, e.g. a missing `__syncthreads`.
fn same_bits(what: &str, p: Precision, fwd: &[Vec<f32>], rev: &[Vec<f32>]) {
    assert_eq!(fwd.len(), rev.len(), "{what} {p:?}: results per schedule");
    for (i, (f, r)) in fwd.iter().zip(rev).enumerate() {
        assert_eq!(f.len(), r.len(), "{what} {p:?}: result {i} length");
        if let Some(j) = (0..f.len()).find(|&j| f[j].to_bits() != r[j].to_bits()) {
            panic!(
                "{what} {p:?}: result {i} differs between the forward and reverse schedules \
                 at element {j}: {} vs {} (a race between threads)",
                f[j], r[j]
            );
        }
    }
}

/// One #[test] per op family: the harness in f32 and bf16, under both schedules, then GPU 0
/// when there is one.
macro_rules! op_test {
    ($name:ident, $body:ident) => {
        #[test]
        fn $name() {
            for p in [Precision::F32, Precision::Bf16] {
                let fwd = Case::new(EmuDevice::with_schedule(Schedule::Forward), p);
                $body(&fwd);
                let rev = Case::new(EmuDevice::with_schedule(Schedule::Reverse), p);
                $body(&rev);
                same_bits(stringify!($name), p, &fwd.outputs.borrow(), &rev.outputs.borrow());
            }
            #[cfg(feature = "cuda")]
            match armsrace::backend::gpu::cuda::CudaDevice::new(0) {
                Ok(_) => {
                    for p in [Precision::F32, Precision::Bf16] {
                        let dev = armsrace::backend::gpu::cuda::CudaDevice::new(0).expect("opened once");
                        $body(&Case::new(dev, p));
                    }
                }
                Err(e) => println!("SKIPPED: no CUDA device ({e}): {} ran on the CPU harness only", stringify!($name)),
            }
            #[cfg(not(feature = "cuda"))]
            println!("SKIPPED: no CUDA device (built without feature `cuda`): {} ran on the CPU harness only", stringify!($name));
        }
    };
}

// ---- embedding, gathers, scatters --------------------------------------------------------

fn embed_and_rows<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(1);
    let (vocab, dim, rows) = (517, 33, 7);
    let table = c.q(&randn(&mut r, vocab * dim, 1.0));
    let ids: Vec<u32> = vec![5, 516, 5, 0, 77, 5, 300];
    let t = c.up(&table);
    let mut out = c.be.zeros(rows * dim);
    c.be.embed(&mut out, &t, &ids, dim);
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec())
        .collect();
    assert_close(&c.what("embed"), &c.down(&out), &want, 0.0);

    // Backward with repeated ids (5 three times): grouped, no atomics.
    let dout = c.q(&randn(&mut r, rows * dim, 1.0));
    let base = c.q(&randn(&mut r, vocab * dim, 1.0));
    let mut dt = c.up(&base);
    c.be.embed_bwd(&mut dt, &c.up(&dout), &ids, dim);
    let mut want = base.clone();
    armsrace::Cpu.embed_bwd(&mut want, &dout, &ids, dim);
    assert_close(&c.what("embed_bwd"), &c.down(&dt), &want, c.tol);

    let sel = [6usize, 0, 3];
    let x = c.q(&randn(&mut r, rows * dim, 1.0));
    let mut g = c.be.zeros(sel.len() * dim);
    c.be.gather_rows(&mut g, &c.up(&x), &sel, dim);
    let mut want = vec![0.0; sel.len() * dim];
    armsrace::Cpu.gather_rows(&mut want, &x, &sel, dim);
    assert_close(&c.what("gather_rows"), &c.down(&g), &want, 0.0);

    let src = c.q(&randn(&mut r, 4 * dim, 1.0));
    let rows_sel = [2usize, 6, 2, 0];
    let mut dx = c.up(&x);
    c.be.scatter_add_rows(&mut dx, &c.up(&src), &rows_sel, dim);
    let mut want = x.clone();
    armsrace::Cpu.scatter_add_rows(&mut want, &src, &rows_sel, dim);
    assert_close(&c.what("scatter_add_rows"), &c.down(&dx), &want, c.tol);
}
op_test!(embed_gather_scatter, embed_and_rows);

// ---- GEMM ----------------------------------------------------------------------------------

fn matmul_all<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(2);
    for &(m, k, n) in &[(7usize, 33usize, 517usize), (70, 130, 65), (1, 5, 3)] {
        let inp = c.q(&randn(&mut r, m * k, 1.0));
        let w = c.q(&randn(&mut r, n * k, 1.0));
        let bias = c.q(&randn(&mut r, n, 1.0));
        let prev = c.q(&randn(&mut r, m * n, 1.0));
        for (with_bias, acc) in [(false, false), (true, false), (true, true), (false, true)] {
            let mut out = c.up(&prev);
            let b = c.up(&bias);
            c.be.matmul(
                &mut out,
                &c.up(&inp),
                &c.up(&w),
                with_bias.then_some(&b),
                m,
                k,
                n,
                acc,
            );
            let mut want = prev.clone();
            armsrace::Cpu.matmul(
                &mut want,
                &inp,
                &w,
                with_bias.then_some(&bias),
                m,
                k,
                n,
                acc,
            );
            assert_close(
                &c.what(&format!("matmul {m}x{k}x{n} bias={with_bias} acc={acc}")),
                &c.down(&out),
                &want,
                c.tol,
            );
        }
        // Backward: dinp overwritten and accumulated, dw and dbias accumulated.
        let dout = c.q(&randn(&mut r, m * n, 1.0));
        let dinp0 = c.q(&randn(&mut r, m * k, 1.0));
        let dw0 = c.q(&randn(&mut r, n * k, 1.0));
        let db0 = c.q(&randn(&mut r, n, 1.0));
        for acc in [false, true] {
            let (mut di, mut dw, mut db) = (c.up(&dinp0), c.up(&dw0), c.up(&db0));
            c.be.matmul_bwd(
                Some((&mut di, acc)),
                Some(&mut dw),
                Some(&mut db),
                &c.up(&dout),
                &c.up(&inp),
                &c.up(&w),
                m,
                k,
                n,
            );
            let (mut wdi, mut wdw, mut wdb) = (dinp0.clone(), dw0.clone(), db0.clone());
            armsrace::Cpu.matmul_bwd(
                Some((&mut wdi, acc)),
                Some(&mut wdw),
                Some(&mut wdb),
                &dout,
                &inp,
                &w,
                m,
                k,
                n,
            );
            let what = |s: &str| c.what(&format!("matmul_bwd {s} {m}x{k}x{n} acc={acc}"));
            assert_close(&what("dinp"), &c.down(&di), &wdi, c.tol);
            assert_close(&what("dw"), &c.down(&dw), &wdw, c.tol);
            assert_close(&what("dbias"), &c.down(&db), &wdb, c.tol);
        }
    }
}
op_test!(matmul_fwd_bwd, matmul_all);

// ---- norms ---------------------------------------------------------------------------------

fn norms<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(3);
    for kind in [NormKind::LayerNorm, NormKind::RmsNorm] {
        for &(rows, dim) in &[(7usize, 33usize), (130, 300)] {
            let x: Vec<f32> = c.q(&randn(&mut r, rows * dim, 2.0)
                .iter()
                .map(|v| v + 0.5)
                .collect::<Vec<_>>());
            let w = c.q(&randn(&mut r, dim, 1.0));
            let b = c.q(&randn(&mut r, dim, 1.0));
            let bias = (kind == NormKind::LayerNorm).then_some(&b);
            let (mut out, mut mean, mut rstd) =
                (c.be.zeros(rows * dim), c.be.zeros(rows), c.be.zeros(rows));
            let (xb, wb, bb) = (c.up(&x), c.up(&w), c.up(&b));
            c.be.norm(
                kind,
                &mut out,
                &mut mean,
                &mut rstd,
                &xb,
                &wb,
                bias.map(|_| &bb),
                rows,
                dim,
                1e-5,
            );
            let (mut wo, mut wm, mut wr) =
                (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows]);
            norm::norm_fwd(
                kind,
                &mut wo,
                &mut wm,
                &mut wr,
                &x,
                &w,
                bias.map(|v| v.as_slice()),
                dim,
                1e-5,
            );
            let what = |s: &str| c.what(&format!("{kind:?} {s} {rows}x{dim}"));
            assert_close(&what("out"), &c.down(&out), &wo, c.tol);
            // Statistics are f32 in both precisions.
            assert_close(&what("mean"), &c.down(&mean), &wm, 1e-5);
            assert_close(&what("rstd"), &c.down(&rstd), &wr, 1e-5);

            let dout = c.q(&randn(&mut r, rows * dim, 1.0));
            let dx0 = c.q(&randn(&mut r, rows * dim, 1.0));
            let (dw0, db0) = (c.q(&randn(&mut r, dim, 1.0)), c.q(&randn(&mut r, dim, 1.0)));
            let (mut dx, mut dw, mut db) = (c.up(&dx0), c.up(&dw0), c.up(&db0));
            c.be.norm_bwd(
                kind,
                &mut dx,
                Some(&mut dw),
                bias.map(|_| &mut db),
                &c.up(&dout),
                &xb,
                &mean,
                &rstd,
                &wb,
                rows,
                dim,
            );
            let (mut wdx, mut wdw, mut wdb) = (dx0.clone(), dw0.clone(), db0.clone());
            norm::norm_bwd(
                kind,
                &mut wdx,
                Some(&mut wdw),
                bias.map(|_| wdb.as_mut_slice()),
                &dout,
                &x,
                &wm,
                &wr,
                &w,
                dim,
            );
            assert_close(&what("dx"), &c.down(&dx), &wdx, c.tol2);
            assert_close(&what("dw"), &c.down(&dw), &wdw, c.tol2);
            assert_close(&what("db"), &c.down(&db), &wdb, c.tol2);
        }
    }
}
op_test!(layernorm_rmsnorm_fwd_bwd, norms);

// ---- rotary --------------------------------------------------------------------------------

fn rotary_all<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(4);
    let rows = 7;
    for &(heads, kv_heads, head_dim, rot_dims) in &[
        (6usize, 2usize, 24usize, 24usize),
        (3, 3, 24, 6),
        (4, 2, 40, 10),
    ] {
        let width = (heads + 2 * kv_heads) * head_dim;
        let x = c.q(&randn(&mut r, rows * width, 1.0));
        let positions: Vec<u32> = vec![0, 1, 2, 5, 100, 2047, 3];
        let shape = RotaryShape {
            rows,
            heads,
            kv_heads,
            head_dim,
            rot_dims,
            base: 10000.0,
        };
        for inverse in [false, true] {
            let mut b = c.up(&x);
            c.be.rotary(&mut b, &positions, shape, inverse);
            let mut want = x.clone();
            rotary::rotary(&mut want, &positions, shape, inverse);
            assert_close(
                &c.what(&format!(
                    "rotary {heads}/{kv_heads}x{head_dim} rot {rot_dims} inv={inverse}"
                )),
                &c.down(&b),
                &want,
                c.tol,
            );
        }
    }
}
op_test!(rotary_partial_full_inverse, rotary_all);

// ---- attention -----------------------------------------------------------------------------

fn attention_all<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(5);
    // (batch, seq, heads, kv_heads, head_dim, prefix, lens)
    type AttnCase = (usize, usize, usize, usize, usize, usize, &'static [usize]);
    let cases: &[AttnCase] = &[
        (2, 7, 6, 2, 24, 0, &[7, 4]),
        (2, 7, 6, 2, 24, 5, &[7, 4]),
        (1, 40, 3, 3, 40, 5, &[37]),
        (3, 20, 4, 1, 16, 0, &[20, 0, 9]),
        // head_dim a multiple of 16: bf16 runs the tensor-core kernel (attention_mma.cu):
        // several query blocks and key tiles, a prefix crossing a tile edge, GQA, padding,
        // a sequence that sees only the prefix and one that sees no key at all.
        (2, 150, 4, 2, 64, 70, &[150, 97]),
        (1, 70, 2, 2, 128, 0, &[70]),
        (3, 33, 2, 1, 80, 3, &[33, 1, 0]),
        (2, 9, 2, 2, 32, 0, &[0, 9]),
        (1, 17, 3, 1, 96, 64, &[17]),
        // ... and its backward: GQA, padding, two key blocks, 32-query steps above 64 dims.
        (2, 130, 4, 2, 64, 0, &[130, 77]),
        (1, 40, 6, 2, 80, 0, &[33]),
    ];
    for &(batch, seq, heads, kv_heads, head_dim, prefix, lens) in cases {
        let s = AttnShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
            prefix,
        };
        let width = s.qkv_dim();
        let rows = batch * seq;
        let qkv = c.q(&randn(&mut r, rows * width, 1.5));
        let pre = c.q(&randn(&mut r, prefix.max(1) * width, 1.5));
        let (qb, pb) = (c.up(&qkv), c.up(&pre));
        let (mut out, mut lse) = (
            c.be.zeros(rows * heads * head_dim),
            c.be.zeros(rows * heads),
        );
        c.be.attention(
            &mut out,
            &mut lse,
            &qb,
            (prefix > 0).then_some(&pb),
            lens,
            s,
        );
        let (mut wo, mut wl) = (vec![0.0; rows * heads * head_dim], vec![0.0; rows * heads]);
        attention::attention_fwd(
            &mut wo,
            &mut wl,
            &qkv,
            (prefix > 0).then_some(pre.as_slice()),
            lens,
            s,
        );
        let what = |x: &str| c.what(&format!("attention {x} {s:?} lens {lens:?}"));
        let lse_tol = if c.bf16() { 1e-3 } else { 1e-5 };
        assert_close(&what("out"), &c.down(&out), &wo, c.tol);
        assert_close(&what("lse"), &c.down(&lse), &wl, lse_tol);
        // Every tensor-core tile shape built for this head_dim computes the same.
        for &(_, tiles) in ATTN_FWD_TILES.iter().filter(|(d, _)| *d == head_dim) {
            let be = c.be.clone().with_attention_tiles(tiles);
            let (mut o2, mut l2) = (be.zeros(rows * heads * head_dim), be.zeros(rows * heads));
            be.attention(&mut o2, &mut l2, &qb, (prefix > 0).then_some(&pb), lens, s);
            let what = |x: &str| what(&format!("{x} with {tiles:?}"));
            assert_close(&what("out"), &c.down(&o2), &wo, c.tol);
            assert_close(&what("lse"), &c.down(&l2), &wl, lse_tol);
        }
        let dout = c.q(&randn(&mut r, rows * heads * head_dim, 1.0));
        let mut dqkv = c.be.zeros(rows * width);
        let (pre_dev, pre_ref) = if prefix > 0 {
            (Some(&pb), Some(pre.as_slice()))
        } else {
            (None, None)
        };
        c.be.attention_bwd(&mut dqkv, &c.up(&dout), &qb, pre_dev, &out, &lse, lens, s);
        // The reference reads the device's (rounded) forward output, as the backward does.
        let out_dev = c.q(&c.down(&out));
        let mut want = vec![0.0; rows * width];
        attention::attention_bwd(&mut want, &dout, &qkv, pre_ref, &out_dev, &wl, lens, s);
        assert_close(&what("dqkv"), &c.down(&dqkv), &want, c.tol2);
    }
}
op_test!(attention_fwd_bwd_gqa_prefix_padding, attention_all);

// ---- activations, elementwise, cross-entropy -------------------------------------------------

fn activations<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(6);
    let (rows, inter) = (7, 33);
    for act in [
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::SiluGated,
    ] {
        let up = if act == Activation::SiluGated {
            2 * inter
        } else {
            inter
        };
        let u = c.q(&randn(&mut r, rows * up, 4.0));
        let mut out = c.be.zeros(rows * inter);
        c.be.activation(act, &mut out, &c.up(&u), rows, inter);
        let mut want = vec![0.0; rows * inter];
        activation::activation_fwd(act, &mut want, &u, inter);
        assert_close(
            &c.what(&format!("{act:?} fwd")),
            &c.down(&out),
            &want,
            c.tol,
        );
        let dout = c.q(&randn(&mut r, rows * inter, 1.0));
        let mut du = c.be.zeros(rows * up);
        c.be.activation_bwd(act, &mut du, &c.up(&dout), &c.up(&u), rows, inter);
        let mut want = vec![0.0; rows * up];
        activation::activation_bwd(act, &mut want, &dout, &u, inter);
        assert_close(&c.what(&format!("{act:?} bwd")), &c.down(&du), &want, c.tol);
    }
}
op_test!(gelu_swiglu_fwd_bwd, activations);

fn elementwise<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(7);
    let n = 1033;
    let (a, b) = (c.q(&randn(&mut r, n, 1.0)), c.q(&randn(&mut r, n, 1.0)));
    let (ab, bb) = (c.up(&a), c.up(&b));
    let mut o = c.be.zeros(n);
    c.be.add(&mut o, &ab, &bb);
    let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_close(&c.what("add"), &c.down(&o), &sum, c.tol);
    c.be.add_assign(&mut o, &ab);
    let want: Vec<f32> = c.q(&sum).iter().zip(&a).map(|(x, y)| x + y).collect();
    assert_close(&c.what("add_assign"), &c.down(&o), &want, c.tol);
    c.be.copy(&mut o, &bb);
    assert_close(&c.what("copy"), &c.down(&o), &b, 0.0);
}
op_test!(add_add_assign_copy, elementwise);

fn cross_entropy<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(8);
    let (rows, classes) = (7, 517);
    let logits = c.q(&randn(&mut r, rows * classes, 6.0));
    let targets: Vec<u32> = vec![0, 516, 3, 3, 100, 250, 9];
    let scale: Vec<f32> = vec![1.0, 0.5, 0.25, 2.0, 1.0, 1.0, 0.1];
    let mut d = c.be.zeros(rows * classes);
    let losses = c.keep(
        &c.be
            .cross_entropy(&mut d, &c.up(&logits), &targets, &scale, classes),
    );
    let mut wd = vec![0.0; rows * classes];
    let wl = loss::cross_entropy(&mut wd, &logits, &targets, &scale, classes);
    assert_close(&c.what("cross_entropy losses"), &losses, &wl, 1e-5);
    assert_close(&c.what("cross_entropy dlogits"), &c.down(&d), &wd, c.tol);
}
op_test!(row_cross_entropy, cross_entropy);

fn lm_head<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(9);
    // Two vocab chunks (LM_HEAD_CHUNK + 37 columns) to cover the online fold across chunks.
    for &(rows, hidden, vocab) in &[
        (5usize, 33usize, 517usize),
        (3, 16, gcg::LM_HEAD_CHUNK + 37),
    ] {
        let h = c.q(&randn(&mut r, rows * hidden, 1.0));
        let w = c.q(&randn(&mut r, vocab * hidden, 1.0));
        let targets: Vec<u32> = (0..rows).map(|i| ((i * 7919) % vocab) as u32).collect();
        let scale: Vec<f32> = (0..rows).map(|i| 1.0 / (i + 1) as f32).collect();
        let dw0 = c.q(&randn(&mut r, vocab * hidden, 0.1));
        let (hb, wb) = (c.up(&h), c.up(&w));
        let (mut dh, mut dw) = (c.be.zeros(rows * hidden), c.up(&dw0));
        let got =
            c.be.lm_head_ce(
                &hb,
                &wb,
                &targets,
                &scale,
                hidden,
                vocab,
                Some((&mut dh, Some(&mut dw))),
            )
            .unwrap();
        let got = c.keep(&got);
        let (mut wdh, mut wdw) = (vec![0.0; rows * hidden], dw0.clone());
        let want = gcg::lm_head_ce(
            &h,
            &w,
            &targets,
            &scale,
            hidden,
            vocab,
            Some((&mut wdh, Some(&mut wdw))),
        );
        let what = |s: &str| c.what(&format!("lm_head_ce {s} {rows}x{hidden}x{vocab}"));
        // bf16 rounds the logits chunk before the softmax: loose on the loss too.
        assert_close(
            &what("loss"),
            &got,
            &want,
            if c.bf16() { 2e-2 } else { 1e-4 },
        );
        assert_close(&what("dh"), &c.down(&dh), &wdh, c.tol2);
        assert_close(&what("dhead"), &c.down(&dw), &wdw, c.tol2);
    }
}
op_test!(lm_head_cross_entropy_chunked, lm_head);

// ---- GCG -----------------------------------------------------------------------------------

fn topk<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(10);
    for &(rows, vocab, k) in &[
        (3usize, 517usize, 37usize),
        (2, 1000, 256),
        (4, 300, 1),
        (1, 2000, 100),
    ] {
        // Few distinct values: many ties, broken by id.
        let g: Vec<f32> = (0..rows * vocab)
            .map(|_| (r.random_range(0..40) as f32 - 20.0) * 0.125)
            .collect();
        let mut g = c.q(&g);
        g[3] = f32::NAN;
        let forbidden: Vec<u32> = (0..vocab as u32).filter(|i| i % 7 == 3).collect();
        let got =
            c.be.topk_onehot(&c.up(&g), rows, vocab, k, &forbidden)
                .unwrap();
        let want = gcg::topk_onehot(&g, rows, vocab, k, &forbidden).unwrap();
        assert_eq!(
            got,
            want,
            "{}",
            c.what(&format!("topk {rows}x{vocab} k={k}"))
        );
    }
    assert!(c.be.topk_onehot(&c.be.zeros(10), 1, 10, 11, &[]).is_err());
}
op_test!(onehot_grad_topk, topk);

fn sampling<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(11);
    for &(positions, k, cands) in &[
        (5usize, 37usize, 100usize),
        (20, 256, 512),
        (3, 4, 12),
        (1, 1, 1),
    ] {
        let topk: Vec<u32> = (0..positions * k)
            .map(|_| r.random_range(0..50000))
            .collect();
        let current: Vec<u32> = (0..positions).map(|_| r.random_range(0..50000)).collect();
        for (seed, counter) in [(0u64, 0u64), (0xDEAD_BEEF_0123_4567, 99)] {
            let got =
                c.be.sample_candidates(&topk, &current, k, cands, seed, counter)
                    .unwrap();
            let want = gcg::sample_candidates(&topk, &current, k, cands, seed, counter).unwrap();
            assert_eq!(
                got,
                want,
                "{}",
                c.what(&format!("sample {positions}x{k} cands {cands}"))
            );
        }
    }
}
op_test!(candidate_sampling_bit_identical, sampling);

fn argmin<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(12);
    let cands = 600;
    let offsets: Vec<u32> = (0..=cands as u32).map(|i| i * 3 + i / 7).collect();
    let rows = *offsets.last().unwrap() as usize;
    let mut row_loss = randn(&mut r, rows, 5.0)
        .iter()
        .map(|x| x.abs())
        .collect::<Vec<_>>();
    row_loss[10] = f32::NAN;
    let scale = randn(&mut r, rows, 1.0)
        .iter()
        .map(|x| x.abs())
        .collect::<Vec<_>>();
    let (got, gi) = c.be.candidate_losses(&row_loss, &scale, &offsets).unwrap();
    let got = c.keep(&got);
    let (want, wi) = gcg::candidate_losses(&row_loss, &scale, &offsets);
    let finite = |v: &[f32]| {
        v.iter()
            .map(|x| if x.is_nan() { -1.0 } else { *x })
            .collect::<Vec<_>>()
    };
    assert_close(
        &c.what("candidate losses"),
        &finite(&got),
        &finite(&want),
        1e-5,
    );
    assert_eq!(gi, wi, "{}", c.what("candidate argmin"));
}
op_test!(candidate_loss_argmin, argmin);

// ---- optimizers ----------------------------------------------------------------------------

fn optimizers<D: KernelDevice>(c: &Case<D>) {
    let mut r = rng(13);
    let (rows, cols) = (7, 33);
    let hp = optim::AdamW {
        lr: 1e-2,
        ..optim::AdamW::default()
    };
    let p0 = c.q(&randn(&mut r, rows * cols, 1.0));
    let (mut p, mut m, mut v) = (c.up(&p0), c.be.zeros(rows * cols), c.be.zeros(rows * cols));
    let (mut wp, mut wm, mut wv) = (p0.clone(), vec![0.0; rows * cols], vec![0.0; rows * cols]);
    for step in 1..=3 {
        let g = c.q(&randn(&mut r, rows * cols, 1.0));
        c.be.adamw(&mut p, &c.up(&g), &mut m, &mut v, &hp, step);
        optim::adamw_step(&mut wp, &g, &mut wm, &mut wv, &hp, step);
        wp = c.q(&wp); // the device stores parameters at its precision between steps
    }
    assert_close(&c.what("adamw p"), &c.down(&p), &wp, c.tol2);
    assert_close(&c.what("adamw m"), &c.down(&m), &wm, c.tol2);
    assert_close(&c.what("adamw v"), &c.down(&v), &wv, c.tol2);

    let hp = optim::Adafactor {
        lr: 1e-2,
        weight_decay: 0.1,
        ..optim::Adafactor::default()
    };
    // Matrix (factored) and vector (full second moment).
    let (mut p, mut row, mut col) = (c.up(&p0), c.be.zeros(rows), c.be.zeros(cols));
    let (mut wp, mut wrow, mut wcol) = (p0.clone(), vec![0.0; rows], vec![0.0; cols]);
    let v0 = c.q(&randn(&mut r, cols, 1.0));
    let (mut pv, mut vv) = (c.up(&v0), c.be.zeros(cols));
    let (mut wpv, mut wvv) = (v0.clone(), vec![0.0; cols]);
    for step in 1..=3 {
        let g = c.q(&randn(&mut r, rows * cols, 1.0));
        c.be.adafactor(
            &mut p,
            &c.up(&g),
            0,
            rows,
            cols,
            AdafactorBufs::Factored {
                row: &mut row,
                col: &mut col,
            },
            &hp,
            step,
        );
        optim::adafactor_step(
            &mut wp,
            &g,
            rows,
            cols,
            optim::AdafactorState::Factored {
                row: &mut wrow,
                col: &mut wcol,
            },
            &hp,
            step,
        );
        wp = c.q(&wp);
        let gv = c.q(&randn(&mut r, cols, 1.0));
        c.be.adafactor(
            &mut pv,
            &c.up(&gv),
            0,
            cols,
            1,
            AdafactorBufs::Vector { v: &mut vv },
            &hp,
            step,
        );
        optim::adafactor_step(
            &mut wpv,
            &gv,
            cols,
            1,
            optim::AdafactorState::Vector { v: &mut wvv },
            &hp,
            step,
        );
        wpv = c.q(&wpv);
    }
    assert_close(&c.what("adafactor p"), &c.down(&p), &wp, c.tol2);
    assert_close(&c.what("adafactor row"), &c.down(&row), &wrow, 1e-4);
    assert_close(&c.what("adafactor col"), &c.down(&col), &wcol, 1e-4);
    assert_close(&c.what("adafactor vector p"), &c.down(&pv), &wpv, c.tol2);
    assert_close(&c.what("adafactor vector v"), &c.down(&vv), &wvv, 1e-4);

    // A fused parameter: the second checkpoint tensor (rows2 x cols at an element offset)
    // updated alone, the first left as it was.
    let rows2 = 5;
    let fused0 = c.q(&randn(&mut r, (rows + rows2) * cols, 1.0));
    let gf = c.q(&randn(&mut r, (rows + rows2) * cols, 1.0));
    let (mut pf, mut row2, mut col2) = (c.up(&fused0), c.be.zeros(rows2), c.be.zeros(cols));
    let off = rows * cols;
    let state = AdafactorBufs::Factored {
        row: &mut row2,
        col: &mut col2,
    };
    c.be.adafactor(&mut pf, &c.up(&gf), off, rows2, cols, state, &hp, 1);
    let mut want = fused0.clone();
    let (mut wr2, mut wc2) = (vec![0.0; rows2], vec![0.0; cols]);
    let st = optim::AdafactorState::Factored {
        row: &mut wr2,
        col: &mut wc2,
    };
    optim::adafactor_step(&mut want[off..], &gf[off..], rows2, cols, st, &hp, 1);
    let want = c.q(&want);
    assert_close(
        &c.what("adafactor at an offset"),
        &c.down(&pf),
        &want,
        c.tol2,
    );
    assert_eq!(
        c.down(&pf)[..off],
        fused0[..off],
        "{}: rows before the offset changed",
        c.what("adafactor at an offset")
    );

    // Master weights: f32 parameters of storage-precision gradients (bf16 on a bf16
    // device), updated in f32 and cast to the storage type for compute.
    let g1 = c.q(&randn(&mut r, rows * cols, 1.0));
    let hp_small = optim::AdamW {
        lr: 1e-5,
        ..optim::AdamW::default()
    };
    let mut master = c.be.upload_f32(&p0);
    let (mut m1, mut v1) = (c.be.zeros(rows * cols), c.be.zeros(rows * cols));
    c.be.adamw(&mut master, &c.up(&g1), &mut m1, &mut v1, &hp_small, 1);
    let (mut wp, mut wm, mut wv) = (p0.clone(), vec![0.0; rows * cols], vec![0.0; rows * cols]);
    optim::adamw_step(&mut wp, &g1, &mut wm, &mut wv, &hp_small, 1);
    // The master moves by ~1e-5 (below bf16's resolution at |p| ~ 1) and keeps it.
    assert_close(&c.what("adamw master"), &c.down(&master), &wp, 1e-6);
    let moved = c
        .down(&master)
        .iter()
        .zip(&p0)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        moved > rows * cols / 2,
        "{}: only {moved} moved",
        c.what("adamw master")
    );
    let mut compute = c.be.zeros(rows * cols);
    c.be.cast_from_f32(&mut compute, &master);
    assert_eq!(c.down(&compute), c.q(&wp), "{}", c.what("cast_from_f32"));
    let mut masterf = c.be.upload_f32(&p0);
    let (mut rw, mut cl) = (c.be.zeros(rows), c.be.zeros(cols));
    let st = AdafactorBufs::Factored {
        row: &mut rw,
        col: &mut cl,
    };
    let hp_af = optim::Adafactor {
        lr: 1e-5,
        ..optim::Adafactor::default()
    };
    c.be.adafactor(&mut masterf, &c.up(&g1), 0, rows, cols, st, &hp_af, 1);
    let (mut wp, mut wr, mut wc) = (p0.clone(), vec![0.0; rows], vec![0.0; cols]);
    let st = optim::AdafactorState::Factored {
        row: &mut wr,
        col: &mut wc,
    };
    optim::adafactor_step(&mut wp, &g1, rows, cols, st, &hp_af, 1);
    assert_close(&c.what("adafactor master"), &c.down(&masterf), &wp, 1e-6);
}
op_test!(adamw_adafactor, optimizers);

// ---- the kernel argument structs -------------------------------------------------------------

/// The kernel compiler's sizeof of every args.h struct equals Rust's: the bindgen copy in
/// src/backend/gpu/args.rs cannot have drifted from the header the kernels were built with.
/// (With feature `cuda`, the build itself regenerates args.rs with bindgen and fails on any
/// difference; without it that check needs libclang and is skipped.)
fn layout<D: KernelDevice>(c: &Case<D>) {
    use std::mem::size_of;
    let rust = [
        size_of::<args::EwArgs>(),
        size_of::<args::GatherArgs>(),
        size_of::<args::ScatterArgs>(),
        size_of::<args::ColSumArgs>(),
        size_of::<args::NormFwdArgs>(),
        size_of::<args::NormBwdArgs>(),
        size_of::<args::RotaryArgs>(),
        size_of::<args::AttnFwdArgs>(),
        size_of::<args::AttnBwdArgs>(),
        size_of::<args::ActArgs>(),
        size_of::<args::CeArgs>(),
        size_of::<args::CeChunkArgs>(),
        size_of::<args::GemmArgs>(),
        size_of::<args::TopkArgs>(),
        size_of::<args::SampleArgs>(),
        size_of::<args::CandArgs>(),
        size_of::<args::AdamwArgs>(),
        size_of::<args::AdafactorArgs>(),
        size_of::<args::LayoutArgs>(),
    ];
    let dev: Vec<usize> =
        c.be.args_layout()
            .unwrap()
            .iter()
            .map(|&x| x as usize)
            .collect();
    assert_eq!(dev, rust, "{}", c.what("args.h struct sizes"));
}
op_test!(kernel_args_layout, layout);

/// Each struct of kernels/args.h as Rust sees it (src/backend/gpu/args.rs): (name, size,
/// alignment, fields as (name, offset, size)). The field lists are written out here, so a
/// field added to, removed from or reordered in either file fails below (or does not
/// compile).
macro_rules! rust_args {
    ($($s:ident { $($f:ident),* $(,)? })*) => {
        vec![$((
            stringify!($s),
            std::mem::size_of::<args::$s>(),
            std::mem::align_of::<args::$s>(),
            vec![$((
                stringify!($f),
                std::mem::offset_of!(args::$s, $f),
                field_size(|a: &args::$s| &a.$f),
            )),*],
        )),*]
    };
}

fn field_size<S, F>(_: fn(&S) -> &F) -> usize {
    std::mem::size_of::<F>()
}

type StructLayout = (String, usize, usize, Vec<(String, usize, usize)>);
/// [`StructLayout`] as `rust_args!` gives it.
type RustLayout = (
    &'static str,
    usize,
    usize,
    Vec<(&'static str, usize, usize)>,
);

/// The C layout of every `typedef struct` in `header` (its scalar types only), computed from
/// the text with the C rules: each field at the next multiple of its size, the struct
/// aligned to its largest field and padded to a multiple of it.
fn c_layouts(header: &str) -> Vec<StructLayout> {
    // Comments out (they span lines and mention brackets and semicolons).
    let mut text = String::new();
    let mut rest = header;
    while let Some(i) = rest.find("/*") {
        text.push_str(&rest[..i]);
        let j = rest[i..].find("*/").expect("closed comment");
        rest = &rest[i + j + 2..];
    }
    text.push_str(rest);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("typedef struct ") {
        let body_start = rest[i..].find('{').unwrap() + i;
        let name = rest[i + "typedef struct ".len()..body_start]
            .trim()
            .to_string();
        let body_end = rest[body_start..].find('}').unwrap() + body_start;
        let (mut off, mut align) = (0usize, 1usize);
        let mut fields = Vec::new();
        for decl in rest[body_start + 1..body_end].split(';') {
            let words: Vec<&str> = decl.split_whitespace().collect();
            let Some((field, ty)) = words.split_last() else {
                continue;
            };
            let size = match ty.join(" ").as_str() {
                "unsigned long long" => 8,
                "unsigned int" | "int" | "float" => 4,
                t => panic!("kernels/args.h: {name}.{field} has type `{t}`, unknown to this test"),
            };
            off = off.next_multiple_of(size);
            fields.push((field.to_string(), off, size));
            off += size;
            align = align.max(size);
        }
        out.push((name, off.next_multiple_of(align), align, fields));
        rest = &rest[body_end..];
    }
    out
}

/// Every argument struct, field by field: Rust's offsets and sizes (the bindgen copy in
/// src/backend/gpu/args.rs) equal the C layout of kernels/args.h computed from its text,
/// independently of bindgen, with or without feature `cuda`; and no struct has implicit
/// padding, which `KernelArgs::as_bytes` relies on (every byte of a launch's arguments is a
/// field's). kernel_args_layout checks the kernel compiler's sizeof of each on top.
#[test]
fn bindgen_args_check() {
    let header = std::fs::read_to_string(common::repo_root().join("kernels/args.h")).unwrap();
    let c = c_layouts(&header);
    let rust: Vec<RustLayout> = rust_args! {
        EwArgs { out, a, b, n }
        GatherArgs { out, src, idx, rows, dim }
        ScatterArgs { dst, src, dst_row, offsets, order, groups, dim }
        ColSumArgs { dst, src, partial, rows, cols, rows_per_chunk, chunks }
        NormFwdArgs { out, mean, rstd, x, w, b, rows, dim, eps, rms }
        NormBwdArgs { dx, dout, x, mean, rstd, w, partial_w, partial_b, rows, dim, rms, rows_per_chunk }
        RotaryArgs { qkv, positions, inv_freq, rows, heads, kv_heads, head_dim, rot_dims, inverse }
        AttnFwdArgs { out, lse, qkv, prefix, lens, batch, seq, heads, kv_heads, head_dim, prefix_len, scale, _pad }
        AttnBwdArgs { dqkv, dout, qkv, out, lse, delta, lens, prefix, batch, seq, heads, kv_heads, head_dim, scale, prefix_len, _pad }
        ActArgs { out, u, dout, n, inter, _pad }
        CeArgs { dlogits, logits, targets, scale, losses, rows, classes }
        CeChunkArgs { logits, m, s, tgt, lse, losses, targets, scale, rows, cols, ld, col0 }
        GemmArgs { c, a, b, bias, m, n, k, lda, ldb, ldc, trans_a, trans_b, accumulate, _pad }
        TopkArgs { out, grad, forbid, rows, vocab, ld, k }
        SampleArgs { tokens, pos, tok, topk, current, seed, counter, positions, k, cands, _pad }
        CandArgs { loss, best, row_loss, scale, offsets, cands, _pad }
        AdamwArgs { param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, _pad }
        AdafactorArgs { param, grad, row, col, v, scalars, partial, rows, cols, factored, rows_per_chunk, chunks, blocks, beta2t, eps1, lr, weight_decay, clip, _pad }
        LayoutArgs { out }
    };
    let names = |v: Vec<&str>| v.join(", ");
    assert_eq!(
        names(c.iter().map(|s| s.0.as_str()).collect()),
        names(rust.iter().map(|s| s.0).collect()),
        "the structs of kernels/args.h vs this test's list of args.rs"
    );
    for ((cn, csize, calign, cf), (_, rsize, ralign, rf)) in c.iter().zip(&rust) {
        assert_eq!(
            names(cf.iter().map(|f| f.0.as_str()).collect()),
            names(rf.iter().map(|f| f.0).collect()),
            "{cn}: fields in kernels/args.h vs args.rs"
        );
        for ((f, coff, cs), (_, roff, rs)) in cf.iter().zip(rf) {
            assert_eq!((roff, rs), (coff, cs), "{cn}.{f}: Rust (offset, size) vs C");
        }
        assert_eq!(
            (rsize, ralign),
            (csize, calign),
            "{cn}: Rust (size, align) vs C"
        );
        let fields: usize = rf.iter().map(|f| f.2).sum();
        assert_eq!(fields, *rsize, "{cn}: {} padding bytes", rsize - fields);
        assert_eq!(rsize % 8, 0, "{cn}: size {rsize} is not a multiple of 8");
    }
}

// ---- device faults name the device and the kernel or call ----------------------------------

/// A device that fails on purpose, over the harness: a launch of one kernel, or the next
/// synchronize or download (how CUDA reports an asynchronous kernel fault, late).
struct Faulty {
    dev: EmuDevice,
    fail_launch: std::sync::Mutex<Option<String>>,
    fail_sync: std::sync::atomic::AtomicBool,
    fail_download: std::sync::atomic::AtomicBool,
}

impl Faulty {
    fn new() -> Self {
        Faulty {
            dev: EmuDevice::new(),
            fail_launch: Default::default(),
            fail_sync: Default::default(),
            fail_download: Default::default(),
        }
    }
}

impl KernelDevice for Faulty {
    fn name(&self) -> String {
        "faulty test device 3".into()
    }
    fn alloc(&self, bytes: usize) -> armsrace::Result<armsrace::backend::gpu::device::DevicePtr> {
        self.dev.alloc(bytes)
    }
    fn free(&self, ptr: &armsrace::backend::gpu::device::DevicePtr) {
        self.dev.free(ptr)
    }
    fn upload(
        &self,
        dst: &armsrace::backend::gpu::device::DevicePtr,
        offset: usize,
        src: &[u8],
    ) -> armsrace::Result<()> {
        self.dev.upload(dst, offset, src)
    }
    fn download(
        &self,
        src: &armsrace::backend::gpu::device::DevicePtr,
        offset: usize,
        dst: &mut [u8],
    ) -> armsrace::Result<()> {
        if self
            .fail_download
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(armsrace::Error::Other(
                "injected CUDA_ERROR_ILLEGAL_ADDRESS".into(),
            ));
        }
        self.dev.download(src, offset, dst)
    }
    fn memset_zero(&self, dst: &armsrace::backend::gpu::device::DevicePtr) -> armsrace::Result<()> {
        self.dev.memset_zero(dst)
    }
    fn launch(
        &self,
        kernel: &str,
        cfg: armsrace::backend::gpu::device::LaunchConfig,
        args: &[u8],
    ) -> armsrace::Result<()> {
        if self.fail_launch.lock().unwrap().as_deref() == Some(kernel) {
            return Err(armsrace::Error::Other(
                "injected CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES".into(),
            ));
        }
        self.dev.launch(kernel, cfg, args)
    }
    fn synchronize(&self) -> armsrace::Result<()> {
        if self
            .fail_sync
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(armsrace::Error::Other(
                "injected CUDA_ERROR_ILLEGAL_ADDRESS".into(),
            ));
        }
        self.dev.synchronize()
    }
}

fn assert_mentions(what: &str, msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{what}: {n:?} missing from: {msg}");
    }
}

/// A failed launch names the device and the kernel; an error that surfaces later (at the
/// synchronize in `check`, or at a read-back) names the device, the call, and the last
/// kernel launched before it, says that it is the last launched, and points to
/// CUDA_LAUNCH_BLOCKING=1. A real fault in the harness (a gather one row past the end of
/// its source) names the kernel and the device too.
#[test]
fn device_faults_name_the_device_and_the_kernel() {
    let be = GpuBackend::new(Faulty::new(), Precision::F32);
    let dev = be.device();
    let x = be.upload(&[1.0f32; 64 * 4]);
    let add = |be: &GpuBackend<Faulty>| {
        let mut o = be.zeros(64 * 4);
        be.add(&mut o, &x, &x);
        o
    };
    let o = add(&be);
    be.check().expect("no fault injected yet");
    assert_eq!(be.download(&o)[0], 2.0);

    // A launch the device refuses.
    *dev.fail_launch.lock().unwrap() = Some("add_f32".into());
    let _ = add(&be);
    *dev.fail_launch.lock().unwrap() = None;
    let e = be.check().unwrap_err().to_string();
    assert_mentions(
        "launch",
        &e,
        &[
            "faulty test device 3",
            "kernel `add_f32`",
            "grid",
            "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        ],
    );
    be.check().expect("the error was handed over");

    // An asynchronous fault, reported by the synchronize in `check`.
    let mut g = be.zeros(2 * 64);
    be.gather_rows(&mut g, &x, &[3, 0], 64);
    dev.fail_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = be.check().unwrap_err().to_string();
    assert_mentions(
        "synchronize",
        &e,
        &[
            "faulty test device 3",
            "synchronize",
            "CUDA_ERROR_ILLEGAL_ADDRESS",
            "the last launched before it was kernel `gather_rows_f32`",
            "CUDA_LAUNCH_BLOCKING=1",
        ],
    );

    // ... or by a read-back (CUDA's copies synchronize), through a whole model pass.
    let m = armsrace::Model::load(&common::fixture("neox-parallel-cls"), be.clone()).unwrap();
    let batch = armsrace::Batch::from_sequences(&[vec![5, 6, 7, 8]], 1).unwrap();
    m.logits(&batch).expect("a clean pass");
    dev.fail_download
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = m.logits(&batch).unwrap_err().to_string();
    assert_mentions(
        "read-back",
        &e,
        &[
            "faulty test device 3",
            "a download",
            "the last launched before it was ",
            "CUDA_LAUNCH_BLOCKING=1",
        ],
    );
    m.logits(&batch).expect("the backend works after the error");

    // A real fault in the harness: reading one row past the end of the source.
    let be = GpuBackend::new(EmuDevice::new(), Precision::F32);
    let x = be.upload(&[1.0f32; 64 * 4]);
    let mut g = be.zeros(64);
    be.gather_rows(&mut g, &x, &[4], 64);
    let e = be.check().unwrap_err().to_string();
    assert_mentions(
        "harness fault",
        &e,
        &[
            "emu (CPU execution harness",
            "kernel `gather_rows_f32`",
            "past the end",
        ],
    );
}

/// The GPU benchmarks (scripts/gpu-check.sh runs this with --ignored on a GPU machine):
/// writes the report as JSON to $ARMSRACE_BENCH_JSON when set.
#[test]
#[ignore = "GPU benchmark: run by scripts/gpu-check.sh"]
fn gpu_benchmarks() {
    #[cfg(feature = "cuda")]
    {
        use armsrace::backend::gpu::bench;
        let iters = std::env::var("ARMSRACE_BENCH_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let adafactor = Some(armsrace::train::optim::OptimizerKind::adafactor());
        let report = bench::run_cuda(bench::PRESETS, iters, adafactor).expect("benchmarks ran");
        let json = serde_json::to_string_pretty(&report).unwrap();
        println!("{json}");
        if let Ok(path) = std::env::var("ARMSRACE_BENCH_JSON") {
            std::fs::write(&path, json).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: GPU benchmarks need feature `cuda` and a GPU");
}
