// Atomics on shared and global memory; every result is order-independent.
// in: n u32 values. out (u32): [0, 64) histogram of in & 63; [64] count via atomicCAS loop;
// [65] atomicExch'd last value (any element); [66] atomicInc wrap count modulo 8.
// out as int at [67] max(in - 1000), [68] min(in - 1000). aux (f32): [0] += 1 per element,
// [1] += 0.5 per element (double-checks float atomicAdd).
#include "test_args.h"

extern "C" __global__ void harness_test_atomics(const HtArgs a) {
    __shared__ unsigned int hist[64];
    const unsigned int t = threadIdx.x;
    for (unsigned int i = t; i < 64; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const unsigned int* in = p_<const unsigned int>(a.in);
    unsigned int* out = p_<unsigned int>(a.out);
    int* ints = p_<int>(a.out);
    float* f = p_<float>(a.aux);
    for (unsigned int i = blockIdx.x * blockDim.x + t; i < a.n; i += gridDim.x * blockDim.x) {
        const unsigned int v = in[i];
        atomicAdd(&hist[v & 63], 1u);
        unsigned int old = out[64], seen;
        do {
            seen = old;
            old = atomicCAS(&out[64], seen, seen + 1);
        } while (old != seen);
        atomicExch(&out[65], v);
        atomicInc(&out[66], 7u);
        atomicMax(&ints[67], (int)v - 1000);
        atomicMin(&ints[68], (int)v - 1000);
        atomicAdd(&f[0], 1.0f);
        atomicAdd(&f[1], 0.5f);
    }
    __syncthreads();
    for (unsigned int i = t; i < 64; i += blockDim.x) atomicAdd(&out[i], hist[i]);
}
