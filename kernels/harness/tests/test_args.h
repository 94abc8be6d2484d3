/* Argument struct shared by the harness's self-test kernels (tests/harness_selftest.rs mirrors
 * it as `HtArgs`). Pointers are device addresses, as in kernels/args.h. */
#ifndef ARMSRACE_HARNESS_TEST_ARGS_H
#define ARMSRACE_HARNESS_TEST_ARGS_H

typedef struct HtArgs {
    unsigned long long out; /* output buffer */
    unsigned long long in;  /* input buffer */
    unsigned long long aux; /* a third buffer, per kernel */
    unsigned int n;         /* element count */
    int param;              /* per kernel */
} HtArgs;

#define FULL_MASK 0xffffffffu

template <typename T>
__device__ __forceinline__ T* p_(unsigned long long addr) {
    return reinterpret_cast<T*>(addr);
}

#endif
