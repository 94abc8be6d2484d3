//! fp32 GEMM on the `gemm` crate (SIMD, packed, rayon-parallel). The three products the model
//! needs are all one call with different strides.

use gemm::Parallelism;

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Below ~1 MFLOP the fork/join costs more than it saves.
    if m * n * k < 64 * 64 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// dst[m, n] (row stride `dst_rs`) = (accumulate ? dst : 0) + lhs . rhs, with lhs[i, p] at
/// `lhs[i * lhs_rs + p * lhs_cs]` and rhs[p, j] at `rhs[p * rhs_rs + j * rhs_cs]`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n, "gemm dst too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs,
        "gemm lhs too small"
    );
    assert!(
        rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "gemm rhs too small"
    );
    // SAFETY: the asserts above bound every index the kernel touches for these strides;
    // dst does not alias lhs or rhs (distinct &mut / & borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        )
    }
}

/// out[m, n] = inp[m, k] . w[n, k]^T
pub fn linear(out: &mut [f32], inp: &[f32], w: &[f32], m: usize, k: usize, n: usize, acc: bool) {
    sgemm(m, n, k, out, n, acc, inp, k, 1, w, 1, k);
}

/// dinp[m, k] = dout[m, n] . w[n, k]
pub fn linear_bwd_input(
    dinp: &mut [f32],
    dout: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    acc: bool,
) {
    sgemm(m, k, n, dinp, k, acc, dout, n, 1, w, k, 1);
}

/// dw[n, k] += dout[m, n]^T . inp[m, k]
pub fn linear_bwd_weight(dw: &mut [f32], dout: &[f32], inp: &[f32], m: usize, k: usize, n: usize) {
    sgemm(n, k, m, dw, k, true, dout, 1, n, inp, k, 1);
}
