// Shared device helpers: storage-type conversion, warp/block reductions, integer hashing.
// Everything here is plain CUDA C++ so the same source runs on the GPU (nvcc) and in the CPU
// execution harness (g++, one fiber per thread).
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#endif
#include "args.h"

typedef __nv_bfloat16 bf16;

// Storage <-> f32. All arithmetic happens in f32; bf16 is only how tensors are stored.
__device__ __forceinline__ float ld(const float* p, unsigned long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, unsigned long long i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void st(float* p, unsigned long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, unsigned long long i, float v) {
    p[i] = __float2bfloat16(v);  // round to nearest even
}

template <typename T>
__device__ __forceinline__ T* ptr(unsigned long long addr) {
    return reinterpret_cast<T*>(addr);
}

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Block-wide sum / max for blockDim.x a multiple of 32 (<= 1024); every thread gets the
// result. `red` is caller-provided shared scratch of 32 floats; the leading barrier makes it
// safe to call repeatedly with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? red[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? red[lane] : -INFINITY;
    return warp_max(v);
}

// Attention keys of sequence b live in one index space: the shared prefix's P rows first, then
// the sequence's own rows (`seq_rows` = its first qkv row). Key jj's qkv row:
template <typename T>
__device__ __forceinline__ const T* key_row(const T* prefix, const T* seq_rows, unsigned int jj,
                                            unsigned int P, unsigned long long width) {
    return jj < P ? prefix + (unsigned long long)jj * width
                  : seq_rows + (unsigned long long)(jj - P) * width;
}
// The causal + padding mask (shared with the CPU reference): query t of a sequence of length
// `len` sees every prefix key and the new keys j <= t with j < len.
__device__ __forceinline__ bool key_visible(unsigned int jj, unsigned int t, unsigned int P,
                                            unsigned int len) {
    return jj < P || (jj - P <= t && jj - P < len);
}

// 32-bit integer mixer (Wellons' lowbias32): the counter-based hash behind GCG sampling.
// Integer-only, so the CPU reference (src/backend/cpu/gcg.rs) reproduces it bit for bit.
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
