// Out-of-bounds accesses the harness must report, next to their correct versions.
// Launch: grid ceil(n / 64), block 64.
#include "test_args.h"

// out[i] = 2 in[i] for i < n.
extern "C" __global__ void harness_test_scale(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) p_<float>(a.out)[i] = 2.0f * p_<const float>(a.in)[i];
}

// PLANTED BUG: `<=` instead of `<`; thread n reads in[n], one past the end.
extern "C" __global__ void harness_test_scale_off_by_one(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= a.n) p_<float>(a.out)[i] = 2.0f * p_<const float>(a.in)[i];
}

// out[2 i] = in[i] for 2 i < n (a strided store, correct).
extern "C" __global__ void harness_test_stride_store(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (2 * i < a.n) p_<float>(a.out)[2 * i] = p_<const float>(a.in)[i];
}

// PLANTED BUG: the guard tests i instead of 2 i: threads n/2 .. n-1 store past the end.
extern "C" __global__ void harness_test_stride_store_oob(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) p_<float>(a.out)[2 * i] = p_<const float>(a.in)[i];
}

// PLANTED BUG: thread 0 writes out[n]; with n * 4 not a multiple of 16 that byte lies in the
// allocation's alignment gap, before the guard page, so only the guard-byte check sees it.
extern "C" __global__ void harness_test_tail_write(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) p_<float>(a.out)[i] = 1.0f;
    if (i == 0) p_<float>(a.out)[a.n] = 1.0f;
}

// Reads through the pointer in `aux` (0 in the test: a null pointer).
extern "C" __global__ void harness_test_deref(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) p_<float>(a.out)[i] = p_<const float>(a.aux)[i];
}
