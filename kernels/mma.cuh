// Tensor-core building blocks for sm_80+ (Ampere and Hopper run them alike): the bf16
// m16n8k16 warp MMA with f32 accumulators, ldmatrix (plain and transposed) and 16-byte
// cp.async with zero fill. On the GPU each is one PTX instruction. Under the CPU execution
// harness (ARMSRACE_EMU) each is emulated with warp shuffles and plain copies that produce
// the same register fragments, so kernels built on them run and are checked in CI.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16, and ldmatrix.m8n8.x4.b16), for lane
// l = 4 g + t (g = l / 4, t = l % 4); each 32-bit register holds two bf16, lower index low:
//   A (16 x 16, row-major): a0 = A[g][2t..], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16 x 8, k x n):      b0 = B[2t..2t+1][g],                b1 = B[2t+8..2t+9][g]
//   C (16 x 8, f32):        c0, c1 = C[g][2t], C[g][2t+1];      c2, c3 = C[g+8][2t], C[g+8][2t+1]
//   ldmatrix x4: lane l gives the row address of row l % 8 of matrix l / 8; register i of
//   lane l gets matrix i's row g, columns 2t, 2t+1 (.trans: rows 2t, 2t+1 of column g).
#pragma once
#include "common.cuh"

typedef unsigned int u32;

// Two floats as bf16x2 (round to nearest even), `lo` in the low half.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((u32)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}

#ifndef ARMSRACE_EMU

// d += a * b (bf16 in, f32 accumulate).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void* smem_row) {
    const u32 s = (u32)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const void* smem_row) {
    const u32 s = (u32)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

// Copies 16 bytes global -> shared asynchronously; `valid` false writes 16 zero bytes
// instead (src is not read, but must still be a mapped address).
__device__ __forceinline__ void cp_async16(void* smem, const void* src, bool valid) {
    const u32 s = (u32)__cvta_generic_to_shared(smem);
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#else  // ARMSRACE_EMU: the same fragments, gathered with shuffles.

__device__ __forceinline__ float bf16_lo(u32 w) {
    u32 x = w << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
__device__ __forceinline__ float bf16_hi(u32 w) {
    u32 x = w & 0xffff0000u;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    const unsigned int lane = threadIdx.x & 31, t = lane & 3;
    float A[2][16], B[2][16];  // this lane's rows g, g+8 and columns 2t, 2t+1, every k
    for (int j = 0; j < 4; j++) {
        const int src = (int)(lane & ~3u) | j;  // a lane of this row group
        for (int reg = 0; reg < 4; reg++) {
            const u32 w = __shfl_sync(FULL_MASK, a[reg], src);
            const int row = reg & 1, k = (reg >> 1) * 8 + 2 * j;
            A[row][k] = bf16_lo(w);
            A[row][k + 1] = bf16_hi(w);
        }
    }
    for (int e = 0; e < 2; e++) {
        for (int j = 0; j < 4; j++) {
            const int src = (int)(2 * t + e) * 4 + j;  // a lane holding column 2t + e
            const u32 w0 = __shfl_sync(FULL_MASK, b0, src);
            const u32 w1 = __shfl_sync(FULL_MASK, b1, src);
            B[e][2 * j] = bf16_lo(w0);
            B[e][2 * j + 1] = bf16_hi(w0);
            B[e][8 + 2 * j] = bf16_lo(w1);
            B[e][8 + 2 * j + 1] = bf16_hi(w1);
        }
    }
    for (int i = 0; i < 4; i++) {
        float s = 0.0f;
        for (int k = 0; k < 16; k++) s += A[i >> 1][k] * B[i & 1][k];
        d[i] += s;
    }
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void* smem_row) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned long long mine = (unsigned long long)smem_row;
    for (int i = 0; i < 4; i++) {
        const unsigned long long row = __shfl_sync(FULL_MASK, mine, i * 8 + (int)(lane >> 2));
        memcpy(&r[i], reinterpret_cast<const char*>(row) + 4 * (lane & 3), 4);
    }
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const void* smem_row) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned long long mine = (unsigned long long)smem_row;
    for (int i = 0; i < 4; i++) {
        const int r0 = i * 8 + 2 * (int)(lane & 3);
        const unsigned long long p0 = __shfl_sync(FULL_MASK, mine, r0);
        const unsigned long long p1 = __shfl_sync(FULL_MASK, mine, r0 + 1);
        unsigned short lo, hi;
        memcpy(&lo, reinterpret_cast<const char*>(p0) + 2 * (lane >> 2), 2);
        memcpy(&hi, reinterpret_cast<const char*>(p1) + 2 * (lane >> 2), 2);
        r[i] = (u32)lo | ((u32)hi << 16);
    }
}

// Synchronous here: the data is in place when the call returns, so missing waits only
// show on the GPU (the GPU tests and compute-sanitizer's racecheck cover them).
__device__ __forceinline__ void cp_async16(void* smem, const void* src, bool valid) {
    if (valid) {
        memcpy(smem, src, 16);
    } else {
        memset(smem, 0, 16);
    }
}
__device__ __forceinline__ void cp_async_commit() {}
template <int N>
__device__ __forceinline__ void cp_async_wait() {}

#endif

// Copies ROWS x D bf16 rows into a shared tile with row stride D + 8 (16 bytes of padding so
// ldmatrix's eight row reads hit distinct banks), 16 bytes per cp.async, THREADS threads.
// `row_ptr(r)` is row r's global address, or nullptr for a row that does not exist (zeros);
// `fallback` is any mapped address (cp.async wants one even when it reads nothing).
template <int ROWS, int D, int THREADS, typename RowPtr>
__device__ __forceinline__ void load_rows_async(bf16* dst, RowPtr row_ptr, const bf16* fallback) {
    constexpr int CHUNKS = D / 8;
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += THREADS) {
        const int r = c / CHUNKS, k = (c % CHUNKS) * 8;
        const bf16* src = row_ptr(r);
        cp_async16(dst + r * (D + 8) + k, src ? src + k : fallback, src != nullptr);
    }
}


// Keys k0 .. k0 + ROWS - 1 of a sequence's [prefix ++ own rows] key space (common.cuh's
// key_row; zeros from n_keys on) into a K tile and a V tile: columns koff.. and voff.. of
// each qkv row.
template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_kv_async(bf16* ks, bf16* vs, const bf16* prefix,
                                              const bf16* seq_rows, unsigned int k0,
                                              unsigned int n_keys, unsigned int P,
                                              unsigned long long width, unsigned long long koff,
                                              unsigned long long voff) {
    auto rows = [=](unsigned long long off) {
        return [=](int r) -> const bf16* {
            const unsigned int jj = k0 + r;
            return jj < n_keys ? key_row(prefix, seq_rows, jj, P, width) + off : nullptr;
        };
    };
    load_rows_async<ROWS, D, THREADS>(ks, rows(koff), seq_rows);
    load_rows_async<ROWS, D, THREADS>(vs, rows(voff), seq_rows);
}

// ---- warp-level tile products (16 rows per warp) ---------------------------------------------
// Shared tiles are row-major bf16 with row stride `ld` elements. ldmatrix.x4 row addresses:
// lane l reads row l % 8 of matrix l / 8.

// Address lane l passes to ldmatrix_x4 for the A fragment of a 16 x 16 block at `a` (rows
// 0-7 | 8-15) x (columns 0-7 | 8-15).
__device__ __forceinline__ const bf16* a_frag_row(const bf16* a, int ld) {
    const int lane = threadIdx.x & 31;
    return a + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8;
}

// acc[m] += A_m (16 x 16, fragment a[m]) x B^T for the 16 columns kcol.. of B, B's first
// 8 NT rows (each acc[m] is 16 x 8 NT), for MT row tiles at once: each B fragment is read
// from shared memory once and used MT times. One ldmatrix.x4 gives the B fragments of two
// n-tiles.
template <int MT, int NT>
__device__ __forceinline__ void mma_abt_chunk_m(float (&acc)[MT][NT][4], const u32 (&a)[MT][4],
                                                const bf16* b, int ld, int kcol) {
    const int lane = threadIdx.x & 31;
    const bf16* row = b + ((lane & 7) + (lane >> 4) * 8) * ld + kcol + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
        u32 f[4];
        ldmatrix_x4(f, row + np * 16 * ld);
#pragma unroll
        for (int m = 0; m < MT; m++) {
            mma_bf16_16816(acc[m][2 * np], a[m], f[0], f[1]);
            mma_bf16_16816(acc[m][2 * np + 1], a[m], f[2], f[3]);
        }
    }
}
// The one-row-tile case.
template <int NT>
__device__ __forceinline__ void mma_abt_chunk(float (&acc)[NT][4], const u32 (&a)[4], const bf16* b,
                                              int ld, int kcol) {
    mma_abt_chunk_m<1, NT>(*reinterpret_cast<float(*)[1][NT][4]>(&acc),
                           *reinterpret_cast<const u32(*)[1][4]>(&a), b, ld, kcol);
}

// o[m] += P_m x V for MT row tiles: each P_m is 16 x 8 NT in accumulator layout (f32,
// rounded to bf16 here: the accumulator of n-tiles 2 kc, 2 kc + 1 is exactly the A fragment
// of keys 16 kc..), V's first 8 NT rows x 8 DT columns read transposed by ldmatrix, once
// for all MT tiles.
template <int MT, int NT, int DT>
__device__ __forceinline__ void mma_pv_m(float (&o)[MT][DT][4], const float (&p)[MT][NT][4],
                                         const bf16* v, int ld) {
    const int lane = threadIdx.x & 31;
    const bf16* row = v + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8;
#pragma unroll
    for (int kc = 0; kc < NT / 2; kc++) {
        u32 pa[MT][4];
#pragma unroll
        for (int m = 0; m < MT; m++) {
            pa[m][0] = pack_bf16x2(p[m][2 * kc][0], p[m][2 * kc][1]);
            pa[m][1] = pack_bf16x2(p[m][2 * kc][2], p[m][2 * kc][3]);
            pa[m][2] = pack_bf16x2(p[m][2 * kc + 1][0], p[m][2 * kc + 1][1]);
            pa[m][3] = pack_bf16x2(p[m][2 * kc + 1][2], p[m][2 * kc + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
            u32 f[4];
            ldmatrix_x4_trans(f, row + kc * 16 * ld + dp * 16);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                mma_bf16_16816(o[m][2 * dp], pa[m], f[0], f[1]);
                mma_bf16_16816(o[m][2 * dp + 1], pa[m], f[2], f[3]);
            }
        }
    }
}
// The one-row-tile case.
template <int NT, int DT>
__device__ __forceinline__ void mma_pv(float (&o)[DT][4], const float (&p)[NT][4], const bf16* v,
                                       int ld) {
    mma_pv_m<1, NT, DT>(*reinterpret_cast<float(*)[1][DT][4]>(&o),
                        *reinterpret_cast<const float(*)[1][NT][4]>(&p), v, ld);
}

template <int N>
__device__ __forceinline__ void zero_acc(float (&acc)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
}
