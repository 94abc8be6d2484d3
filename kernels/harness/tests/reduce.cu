// Block sums through a shared-memory tree, correct and with a planted missing barrier.
// Launch: grid ceil(n / 256), block 256; out[b] = sum of in[256 b .. 256 b + 255].
#include "test_args.h"

extern "C" __global__ void harness_test_block_sum(const HtArgs a) {
    __shared__ float s[256];
    const unsigned int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < a.n ? p_<const float>(a.in)[i] : 0.0f;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) p_<float>(a.out)[blockIdx.x] = s[0];
}

// PLANTED BUG: no __syncthreads() between filling s and the first tree step, so a thread may
// add a partner's slot before the partner wrote it (forward schedule: it reads poison).
extern "C" __global__ void harness_test_block_sum_nosync(const HtArgs a) {
    __shared__ float s[256];
    const unsigned int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < a.n ? p_<const float>(a.in)[i] : 0.0f;
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) p_<float>(a.out)[blockIdx.x] = s[0];
}
