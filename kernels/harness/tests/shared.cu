// Dynamic shared memory (namespace-scope and function-scope `extern __shared__`), poisoning
// of static shared memory, and barrier reductions.
#include "test_args.h"

extern __shared__ __align__(16) unsigned char ht_dyn[];

// Reverses each block's segment through dynamic shared memory (shared_bytes = 4 blockDim.x).
extern "C" __global__ void harness_test_reverse(const HtArgs a) {
    float* buf = reinterpret_cast<float*>(ht_dyn);
    const unsigned int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    buf[t] = p_<const float>(a.in)[base + t];
    __syncthreads();
    p_<float>(a.out)[base + t] = buf[blockDim.x - 1 - t];
}

// PLANTED BUG: off by one in the mirrored index; thread 0 reads buf[blockDim.x], one past the
// dynamic shared memory the launch provides.
extern "C" __global__ void harness_test_reverse_overread(const HtArgs a) {
    extern __shared__ float buf[];
    const unsigned int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    buf[t] = p_<const float>(a.in)[base + t];
    __syncthreads();
    p_<float>(a.out)[base + t] = buf[blockDim.x - t];
}

// Static shared memory starts poisoned in every block: block 0 writes s[0] and s[1], every
// other block only s[1]. out[2 b] = s[0] (NaN except in block 0), out[2 b + 1] = s[1].
extern "C" __global__ void harness_test_poison(const HtArgs a) {
    __shared__ float s[2], unused[3];
    if (threadIdx.x == 0) {
        if (blockIdx.x == 0) s[0] = 5.0f;
        s[1] = (float)blockIdx.x;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        p_<float>(a.out)[2 * blockIdx.x] = s[0];
        p_<float>(a.out)[2 * blockIdx.x + 1] = s[1];
    }
    (void)unused;
}

// out[3 b + k] = __syncthreads_count / _and / _or of (t % 3 == 0), (t < blockDim.x), (t == 7).
extern "C" __global__ void harness_test_sync_ops(const HtArgs a) {
    const unsigned int t = threadIdx.x;
    const int c = __syncthreads_count(t % 3 == 0);
    const int n = __syncthreads_and(t < blockDim.x);
    const int o = __syncthreads_or(t == 7);
    if (t == 0) {
        int* out = p_<int>(a.out) + 3 * blockIdx.x;
        out[0] = c;
        out[1] = n;
        out[2] = o;
    }
}

// A namespace-scope static __shared__ variable: per block, like a function-scope one.
// out[b] = number of threads that incremented it in block b (= blockDim.x).
__shared__ unsigned int ht_block_count;
extern "C" __global__ void harness_test_ns_shared(const HtArgs a) {
    if (threadIdx.x == 0) ht_block_count = 0;
    __syncthreads();
    atomicAdd(&ht_block_count, 1u);
    __syncthreads();
    if (threadIdx.x == 0) p_<unsigned int>(a.out)[blockIdx.x] = ht_block_count;
}
