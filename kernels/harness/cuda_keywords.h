// CUDA's declaration keywords for the second (compile) pass of the CPU execution harness.
// The first pass (g++ -E with cuda_shim.h) leaves these words untouched so the build step can
// find kernels and rewrite __shared__ declarations; this header, force-included when the
// rewritten source is compiled, then gives the remaining ones their host meaning.
#pragma once
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __maxnreg__(...)
#define __align__(n) __attribute__((aligned(n)))
// Only declarations the rewrite could not parse reach this: thread_local still gives each
// block its own copy (one block at a time per OS thread), just without per-block poisoning.
#define __shared__ static thread_local
