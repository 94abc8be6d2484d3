// Warp shuffles and votes. Launch: grid n / 64, block 64.
// out[5 g + k] (f32): k = 0 xor-butterfly sum, 1 shfl_down tree sum, 2 inclusive shfl_up scan,
// 3 broadcast of lane 5, 4 rotate within 8-lane segments (width 8).
// aux[6 g + k] (u32): k = 0 ballot(v > 0), 1 any(v > 0.9), 2 all(v > -2), 3 __activemask(),
// 4 match_any(lane & 3), 5 reduce_add(lane).
#include "test_args.h"

extern "C" __global__ void harness_test_warp(const HtArgs a) {
    const unsigned int g = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
    const float v = p_<const float>(a.in)[g];
    float* o = p_<float>(a.out) + 5ull * g;
    float s = v;
    for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(FULL_MASK, s, k);
    o[0] = s;
    float d = v;
    for (int k = 16; k > 0; k >>= 1) d += __shfl_down_sync(FULL_MASK, d, k);
    o[1] = d;
    float p = v;
    for (unsigned int k = 1; k < 32; k <<= 1) {
        const float u = __shfl_up_sync(FULL_MASK, p, k);
        if (lane >= k) p += u;
    }
    o[2] = p;
    o[3] = __shfl_sync(FULL_MASK, v, 5);
    o[4] = __shfl_sync(FULL_MASK, v, (int)((lane + 1) & 7), 8);
    unsigned int* x = p_<unsigned int>(a.aux) + 6ull * g;
    x[0] = __ballot_sync(FULL_MASK, v > 0.0f);
    x[1] = __any_sync(FULL_MASK, v > 0.9f);
    x[2] = __all_sync(FULL_MASK, v > -2.0f);
    x[3] = __activemask();
    x[4] = __match_any_sync(FULL_MASK, lane & 3);
    x[5] = __reduce_add_sync(FULL_MASK, lane);
}

// Block of 48 threads: the second warp has 16 lanes. out[t] = __activemask(); half-warp
// shuffles (mask 0x0000ffff) work there: aux[t] = sum over the 16 lanes of t.
extern "C" __global__ void harness_test_partial_warp(const HtArgs a) {
    const unsigned int t = threadIdx.x;
    p_<unsigned int>(a.out)[t] = __activemask();
    if ((t & 31) < 16) {
        unsigned int s = t;
        for (int k = 8; k > 0; k >>= 1) s += __shfl_xor_sync(0x0000ffffu, s, k, 16);
        p_<unsigned int>(a.aux)[t] = s;
    }
}
