// Indexing, math intrinsics, and the failures the harness must turn into errors.
#include <assert.h>
#include <math_constants.h>
#include "test_args.h"

// Every thread writes its packed coordinates at its linear position (grid and block in 3D):
// x | y << 4 | z << 8 for the block, then the thread's at << 12, << 16, << 20, and bit 24 set
// when gridDim / blockDim read back as launched (param = packed grid | block << 12).
extern "C" __global__ void harness_test_index(const HtArgs a) {
    const unsigned int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const unsigned int bs = blockDim.x * blockDim.y * blockDim.z;
    const unsigned int dims = gridDim.x | gridDim.y << 4 | gridDim.z << 8 | blockDim.x << 12 |
                              blockDim.y << 16 | blockDim.z << 20;
    p_<unsigned int>(a.out)[b * bs + t] = blockIdx.x | blockIdx.y << 4 | blockIdx.z << 8 |
                                          threadIdx.x << 12 | threadIdx.y << 16 |
                                          threadIdx.z << 20 |
                                          ((int)dims == a.param ? 1u << 24 : 0u);
}

// out[16 i + k] = the k-th intrinsic of in[i] (see harness_selftest.rs for the list).
extern "C" __global__ void harness_test_math(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n) return;
    const float x = p_<const float>(a.in)[i];
    float* o = p_<float>(a.out) + 16ull * i;
    o[0] = expf(x);
    o[1] = __expf(x);
    o[2] = logf(fabsf(x) + 1.0f);
    o[3] = __logf(fabsf(x) + 1.0f);
    o[4] = rsqrtf(fabsf(x) + 1.0f);
    o[5] = erff(x);
    o[6] = tanhf(x);
    o[7] = __fdividef(x, 3.0f);
    o[8] = fmaf(x, 2.0f, 1.0f);
    o[9] = fmaxf(x, CUDART_NAN_F);
    o[10] = __saturatef(x);
    o[11] = (float)__float2int_rn(x * 10.0f);
    o[12] = __int_as_float(__float_as_int(x));
    o[13] = (float)max(-1, (int)(x * 4.0f)) + (float)min(7u, 9u);
    o[14] = x > 0.0f ? CUDART_INF_F : -INFINITY;
    o[15] = sqrtf(fabsf(x));
}

// PLANTED BUG: lanes 0-15 of each warp shuffle with the full mask while lanes 16-31 wait at
// __syncthreads; neither can finish (a deadlock, or undefined behaviour on a GPU).
extern "C" __global__ void harness_test_divergent_shuffle(const HtArgs a) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 31) < 16) {
        v = __shfl_xor_sync(FULL_MASK, v, 1);
    } else {
        __syncthreads();
    }
    p_<float>(a.out)[threadIdx.x] = v;
}

// Fails `assert(a.n < 5)` (the test passes n = 10).
extern "C" __global__ void harness_test_assert(const HtArgs a) {
    assert(a.n < 5);
    p_<float>(a.out)[threadIdx.x] = 1.0f;
}

// Thread `param` of every block calls __trap().
extern "C" __global__ void harness_test_trap(const HtArgs a) {
    if ((int)threadIdx.x == a.param) __trap();
    p_<float>(a.out)[threadIdx.x] = 1.0f;
}

// Integer division by `param` (0 in the test).
extern "C" __global__ void harness_test_divide(const HtArgs a) {
    p_<int>(a.out)[threadIdx.x] = (int)threadIdx.x / a.param;
}

// A 1 MiB local array: overflows the fiber's stack.
extern "C" __global__ void harness_test_big_stack(const HtArgs a) {
    volatile char big[1 << 20];
    big[a.param] = 1;
    big[sizeof big - 1 - a.param] = 2;
    p_<int>(a.out)[threadIdx.x] = big[a.param] + big[sizeof big - 1 - a.param];
}

// Breaks the one-struct convention: the harness registers it but refuses to launch it.
extern "C" __global__ void harness_test_two_args(const HtArgs a, int x) {
    p_<int>(a.out)[threadIdx.x] = x;
}
