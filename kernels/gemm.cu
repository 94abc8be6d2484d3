// Tiled SIMT GEMM, the fallback where cuBLASLt is absent (the CPU execution harness) or
// cannot take a shape: C = (accumulate ? C : 0) + op(A) op(B) (+ bias), row-major with
// arbitrary leading dimensions and optional transposes (see GemmArgs).
// 64x64 output tile per block, k-steps of 16 staged through shared memory (converted to f32
// on load), each of the 256 threads accumulating a 4x4 register block in f32.
// Launch: grid (ceil(n / 64), ceil(m / 64)), block 256.
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16

template <typename T>
__device__ void gemm_impl(const GemmArgs g) {
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const T* A = ptr<const T>(g.a);
    const T* B = ptr<const T>(g.b);
    T* C = ptr<T>(g.c);
    const unsigned int tid = threadIdx.x;
    const unsigned int tx = tid % 16, ty = tid / 16;
    const unsigned int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (unsigned int k0 = 0; k0 < g.k; k0 += BK) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const unsigned int e = tid + q * 256;
            // A tile: As[p][i] = op(A)[m0 + i, k0 + p]; walk the contiguous index fastest.
            unsigned int i, p;
            if (g.trans_a) { i = e % BM; p = e / BM; } else { p = e % BK; i = e / BK; }
            const unsigned int gi = m0 + i, gp = k0 + p;
            float v = 0.0f;
            if (gi < g.m && gp < g.k)
                v = g.trans_a ? ld(A, (unsigned long long)gp * g.lda + gi)
                              : ld(A, (unsigned long long)gi * g.lda + gp);
            As[p][i] = v;
            // B tile: Bs[p][j] = op(B)[k0 + p, n0 + j].
            unsigned int j;
            if (g.trans_b) { p = e % BK; j = e / BK; } else { j = e % BN; p = e / BN; }
            const unsigned int gj = n0 + j, gq = k0 + p;
            float w = 0.0f;
            if (gj < g.n && gq < g.k)
                w = g.trans_b ? ld(B, (unsigned long long)gj * g.ldb + gq)
                              : ld(B, (unsigned long long)gq * g.ldb + gj);
            Bs[p][j] = w;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty * 4 + i];
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx * 4 + j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }

    const T* bias = ptr<const T>(g.bias);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const unsigned int gi = m0 + ty * 4 + i;
        if (gi >= g.m) continue;
        for (int j = 0; j < 4; j++) {
            const unsigned int gj = n0 + tx * 4 + j;
            if (gj >= g.n) continue;
            const unsigned long long o = (unsigned long long)gi * g.ldc + gj;
            float v = acc[i][j];
            if (bias) v += ld(bias, gj);
            if (g.accumulate) v += ld(C, o);
            st(C, o, v);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 2) gemm_f32(const GemmArgs args) {
    gemm_impl<float>(args);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_bf16(const GemmArgs args) {
    gemm_impl<bf16>(args);
}
