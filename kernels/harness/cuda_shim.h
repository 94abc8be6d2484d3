// What CUDA C++ provides to device code, for the CPU execution harness. Force-included
// (-include) when kernels/*.cu are preprocessed with the host compiler; the CUDA keywords
// themselves (__global__, __shared__, ...) are handled later, by the build step's rewrite and
// cuda_keywords.h (see kernels/build/harness.rs). Every thread of a block is a fiber; the
// runtime (runtime.cpp) switches fibers at barriers and warp collectives.
#pragma once

#define ARMSRACE_EMU 1
#define __CUDACC__ 1
#define __CUDA_ARCH__ 800
#define __CUDACC_VER_MAJOR__ 12
#define __CUDACC_VER_MINOR__ 8
#define CUDART_VERSION 12080

#include <climits>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>
#include <type_traits>

#include "emu_abi.h"

static constexpr int warpSize = 32;

// ---- vector types (CUDA's alignments) ----
#define ARMSRACE_EMU_VEC(T, N, A)                                                     \
    struct alignas(A) N##1 { T x; };                                                \
    struct alignas(2 * A) N##2 { T x, y; };                                         \
    struct alignas(4 * A > 16 ? 16 : 4 * A) N##4 { T x, y, z, w; };                 \
    inline N##1 make_##N##1(T x) { return N##1{x}; }                                \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }                        \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define ARMSRACE_EMU_VEC3(T, N)                                                       \
    struct N##3 { T x, y, z; };                                                     \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
ARMSRACE_EMU_VEC(signed char, char, 1)
ARMSRACE_EMU_VEC(unsigned char, uchar, 1)
ARMSRACE_EMU_VEC(short, short, 2)
ARMSRACE_EMU_VEC(unsigned short, ushort, 2)
ARMSRACE_EMU_VEC(int, int, 4)
ARMSRACE_EMU_VEC(unsigned int, uint, 4)
ARMSRACE_EMU_VEC(float, float, 4)
ARMSRACE_EMU_VEC(long long, longlong, 8)
ARMSRACE_EMU_VEC(unsigned long long, ulonglong, 8)
ARMSRACE_EMU_VEC(double, double, 8)
ARMSRACE_EMU_VEC3(signed char, char)
ARMSRACE_EMU_VEC3(unsigned char, uchar)
ARMSRACE_EMU_VEC3(short, short)
ARMSRACE_EMU_VEC3(unsigned short, ushort)
ARMSRACE_EMU_VEC3(int, int)
ARMSRACE_EMU_VEC3(float, float)
ARMSRACE_EMU_VEC3(long long, longlong)
ARMSRACE_EMU_VEC3(unsigned long long, ulonglong)
ARMSRACE_EMU_VEC3(double, double)
#undef ARMSRACE_EMU_VEC
#undef ARMSRACE_EMU_VEC3
inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
inline dim3 make_dim3(unsigned int x, unsigned int y, unsigned int z) { return dim3(x, y, z); }

#include "shim_fp16.h"

// ---- barriers and warp collectives ----
inline void __syncthreads() { armsrace_emu_syncthreads(); }
inline int __syncthreads_count(int p) { return armsrace_emu_syncthreads_op(1, p); }
inline int __syncthreads_and(int p) { return armsrace_emu_syncthreads_op(2, p); }
inline int __syncthreads_or(int p) { return armsrace_emu_syncthreads_op(3, p); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    armsrace_emu_warp(ARMSRACE_WARP_SYNC, mask, 0, 0, 32);
}
inline unsigned int __activemask() { return armsrace_emu_activemask(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

namespace armsrace_emu {
template <class T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "warp shuffles move values of at most 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T>
inline T from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof(T));
    return v;
}
template <class T>
inline T shfl(uint32_t op, unsigned int mask, T v, int arg, int width) {
    return from_bits<T>(armsrace_emu_warp(op, mask, to_bits(v), arg, width));
}
}  // namespace armsrace_emu

template <class T>
inline T __shfl_sync(unsigned int mask, T var, int src_lane, int width = 32) {
    return ::armsrace_emu::shfl(ARMSRACE_WARP_SHFL, mask, var, src_lane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = 32) {
    return ::armsrace_emu::shfl(ARMSRACE_WARP_SHFL_UP, mask, var, (int)delta, width);
}
template <class T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32) {
    return ::armsrace_emu::shfl(ARMSRACE_WARP_SHFL_DOWN, mask, var, (int)delta, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = 32) {
    return ::armsrace_emu::shfl(ARMSRACE_WARP_SHFL_XOR, mask, var, lane_mask, width);
}
inline unsigned int __ballot_sync(unsigned int mask, int pred) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_BALLOT, mask, pred != 0, 0, 32);
}
inline int __any_sync(unsigned int mask, int pred) {
    return (int)armsrace_emu_warp(ARMSRACE_WARP_ANY, mask, pred != 0, 0, 32);
}
inline int __all_sync(unsigned int mask, int pred) {
    return (int)armsrace_emu_warp(ARMSRACE_WARP_ALL, mask, pred != 0, 0, 32);
}
template <class T>
inline unsigned int __match_any_sync(unsigned int mask, T value) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_MATCH_ANY, mask,
                                            ::armsrace_emu::to_bits(value), 0, 32);
}
template <class T>
inline unsigned int __match_all_sync(unsigned int mask, T value, int* pred) {
    const unsigned int r = (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_MATCH_ALL, mask,
                                                           ::armsrace_emu::to_bits(value), 0, 32);
    *pred = r != 0;
    return r;
}
inline unsigned int __reduce_add_sync(unsigned int mask, unsigned int v) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_ADD, mask, v, 0, 32);
}
inline int __reduce_add_sync(unsigned int mask, int v) {
    return (int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_ADD, mask, (unsigned int)v, 0, 32);
}
inline unsigned int __reduce_min_sync(unsigned int mask, unsigned int v) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_MIN_U, mask, v, 0, 32);
}
inline int __reduce_min_sync(unsigned int mask, int v) {
    return (int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_MIN_S, mask, (unsigned int)v, 0, 32);
}
inline unsigned int __reduce_max_sync(unsigned int mask, unsigned int v) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_MAX_U, mask, v, 0, 32);
}
inline int __reduce_max_sync(unsigned int mask, int v) {
    return (int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_MAX_S, mask, (unsigned int)v, 0, 32);
}
inline unsigned int __reduce_and_sync(unsigned int mask, unsigned int v) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_AND, mask, v, 0, 32);
}
inline unsigned int __reduce_or_sync(unsigned int mask, unsigned int v) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_OR, mask, v, 0, 32);
}
inline unsigned int __reduce_xor_sync(unsigned int mask, unsigned int v) {
    return (unsigned int)armsrace_emu_warp(ARMSRACE_WARP_REDUCE_XOR, mask, v, 0, 32);
}

// ---- shared memory (the build step rewrites __shared__ declarations into these) ----
namespace armsrace_emu {
// One per static __shared__ declaration (a thread_local in a lambda at the declaration):
// all fibers of a block run on one OS thread, so they share it; a new block (new generation)
// gets fresh, poisoned storage from the block's arena.
struct SharedSlot {
    unsigned long long gen;
    void* ptr;
};
template <class T, size_t Align>
inline T* static_shared(SharedSlot& (*slot)()) {
    SharedSlot& s = slot();
    if (__builtin_expect(s.gen != armsrace_emu_block_gen, 0)) {
        s.ptr = armsrace_emu_static_shared_alloc(sizeof(T), Align > alignof(T) ? Align : alignof(T));
        s.gen = armsrace_emu_block_gen;
    }
    return static_cast<T*>(s.ptr);
}
inline void* dynamic_shared() { return armsrace_emu_dynamic_shared(); }

// Entry points (called by the wrappers the build step generates): copy the argument struct
// out of the launch's aligned buffer and run the kernel body for the current fiber.
template <class A>
inline void call(void (*kernel)(A), const void* args) {
    kernel(*static_cast<const typename std::remove_cv<A>::type*>(args));
}
inline void call(void (*kernel)(), const void*) { kernel(); }
template <class... A>
inline void call(void (*)(A...), const void*) {
    armsrace_emu_trap("kernel takes more than one argument; the harness launches kernels "
                      "that take one struct by value (see kernels/args.h)");
}
template <class A>
constexpr uint32_t arg_size(void (*)(A)) { return sizeof(A); }
constexpr uint32_t arg_size(void (*)()) { return 0; }
template <class... A>
constexpr uint32_t arg_size(void (*)(A...)) { return 0xffffffffu; }
template <class A>
constexpr uint32_t arg_align(void (*)(A)) { return alignof(A); }
constexpr uint32_t arg_align(void (*)()) { return 1; }
template <class... A>
constexpr uint32_t arg_align(void (*)(A...)) { return 1; }
}  // namespace armsrace_emu

// ---- atomics (blocks run on several OS threads, so these are real atomics) ----
namespace armsrace_emu {
template <class T, class F>
inline T atomic_update(T* p, F f) {
    static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "atomic width");
    using U = typename std::conditional<
        sizeof(T) == 2, uint16_t,
        typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type>::type;
    U* q = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(q, __ATOMIC_RELAXED);
    for (;;) {
        T o;
        memcpy(&o, &old, sizeof(T));
        const T n = f(o);
        U nu;
        memcpy(&nu, &n, sizeof(T));
        if (__atomic_compare_exchange_n(q, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return o;
    }
}
}  // namespace armsrace_emu

#define ARMSRACE_EMU_ATOMIC_INT(T)                                                              \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }       \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }       \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }     \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }       \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }         \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }       \
    inline T atomicMax(T* p, T v) {                                                            \
        return ::armsrace_emu::atomic_update(p, [v](T o) { return o > v ? o : v; });           \
    }                                                                                          \
    inline T atomicMin(T* p, T v) {                                                            \
        return ::armsrace_emu::atomic_update(p, [v](T o) { return o < v ? o : v; });           \
    }                                                                                          \
    inline T atomicCAS(T* p, T cmp, T v) {                                                     \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);    \
        return cmp;                                                                            \
    }
ARMSRACE_EMU_ATOMIC_INT(int)
ARMSRACE_EMU_ATOMIC_INT(unsigned int)
ARMSRACE_EMU_ATOMIC_INT(long long)
ARMSRACE_EMU_ATOMIC_INT(unsigned long long)
#undef ARMSRACE_EMU_ATOMIC_INT
inline unsigned short atomicCAS(unsigned short* p, unsigned short cmp, unsigned short v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline unsigned int atomicInc(unsigned int* p, unsigned int lim) {
    return ::armsrace_emu::atomic_update(p, [lim](unsigned int o) { return o >= lim ? 0u : o + 1; });
}
inline unsigned int atomicDec(unsigned int* p, unsigned int lim) {
    return ::armsrace_emu::atomic_update(
        p, [lim](unsigned int o) { return (o == 0 || o > lim) ? lim : o - 1; });
}
inline float atomicAdd(float* p, float v) {
    return ::armsrace_emu::atomic_update(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
    return ::armsrace_emu::atomic_update(p, [v](double o) { return o + v; });
}
inline float atomicExch(float* p, float v) {
    return ::armsrace_emu::atomic_update(p, [v](float) { return v; });
}
inline __half atomicAdd(__half* p, __half v) {
    return ::armsrace_emu::atomic_update(p, [v](__half o) { return __hadd(o, v); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
    return ::armsrace_emu::atomic_update(p, [v](__nv_bfloat16 o) { return __hadd(o, v); });
}
inline __half2 atomicAdd(__half2* p, __half2 v) {
    return ::armsrace_emu::atomic_update(p, [v](__half2 o) { return __hadd2(o, v); });
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* p, __nv_bfloat162 v) {
    return ::armsrace_emu::atomic_update(p, [v](__nv_bfloat162 o) { return __hadd2(o, v); });
}
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicMax_block atomicMax
#define atomicMin_block atomicMin
#define atomicCAS_block atomicCAS
#define atomicExch_block atomicExch

// ---- loads/stores with cache hints: plain accesses here ----
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline T __ldca(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldlu(const T* p) { return *p; }
template <class T>
inline T __ldcv(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
template <class T>
inline void __stwb(T* p, T v) { *p = v; }
template <class T>
inline void __stwt(T* p, T v) { *p = v; }

// ---- misc ----
inline void __trap() { armsrace_emu_trap("__trap() called"); }
inline void __brkpt() { armsrace_emu_trap("__brkpt() called"); }
inline void __nanosleep(unsigned int) {}
inline long long clock64() { return (long long)armsrace_emu_clock(); }
#define __builtin_assume(x) ((void)0)
inline void* __cvta_generic_to_shared(const void* p) { return const_cast<void*>(p); }

// ---- integer intrinsics ----
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned int)x) << 32) | __brev((unsigned int)(x >> 32));
}
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mul24(int a, int b) { return (int)((unsigned int)((a << 8) >> 8) * (unsigned int)((b << 8) >> 8)); }
inline unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)((((unsigned long long)hi << 32) | lo) << (s & 31) >> 32);
}
inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)((((unsigned long long)hi << 32) | lo) >> (s & 31));
}
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned int)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}

// ---- bit casts and conversions ----
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned int i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int i; memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double f; memcpy(&f, &i, 8); return f; }
inline long long __double_as_longlong(double f) { long long i; memcpy(&i, &f, 8); return i; }
namespace armsrace_emu {
// cvt.rni/rzi/rmi/rpi.s32.f32: NaN -> 0, out of range saturates (unlike a host cast).
template <class I>
inline I sat(float r) {
    if (r != r) return 0;
    if (r <= (float)std::numeric_limits<I>::min()) return std::numeric_limits<I>::min();
    if (r >= (float)std::numeric_limits<I>::max()) return std::numeric_limits<I>::max();
    return (I)r;
}
}  // namespace armsrace_emu
inline int __float2int_rn(float x) { return ::armsrace_emu::sat<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return ::armsrace_emu::sat<int>(truncf(x)); }
inline int __float2int_rd(float x) { return ::armsrace_emu::sat<int>(floorf(x)); }
inline int __float2int_ru(float x) { return ::armsrace_emu::sat<int>(ceilf(x)); }
inline unsigned int __float2uint_rn(float x) { return ::armsrace_emu::sat<unsigned int>(nearbyintf(x)); }
inline unsigned int __float2uint_rz(float x) { return ::armsrace_emu::sat<unsigned int>(truncf(x)); }
inline unsigned int __float2uint_rd(float x) { return ::armsrace_emu::sat<unsigned int>(floorf(x)); }
inline unsigned int __float2uint_ru(float x) { return ::armsrace_emu::sat<unsigned int>(ceilf(x)); }
inline long long __float2ll_rn(float x) { return ::armsrace_emu::sat<long long>(nearbyintf(x)); }
inline long long __float2ll_rz(float x) { return ::armsrace_emu::sat<long long>(truncf(x)); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned int x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline float __ull2float_rn(unsigned long long x) { return (float)x; }
inline float __double2float_rn(double x) { return (float)x; }

// ---- math: CUDA names the host library lacks, and the fast intrinsics (computed exactly
// here; the GPU's approximations differ by a few ulp, which tolerances must cover) ----
namespace armsrace_emu {
inline float cuda_expf(float x) { return expf(x); }
inline float cuda_exp10f(float x) { return exp10f(x); }
inline float cuda_logf(float x) { return logf(x); }
inline float cuda_log2f(float x) { return log2f(x); }
inline float cuda_log10f(float x) { return log10f(x); }
inline float cuda_powf(float x, float y) { return powf(x, y); }
inline float cuda_sinf(float x) { return sinf(x); }
inline float cuda_cosf(float x) { return cosf(x); }
inline float cuda_tanf(float x) { return tanf(x); }
inline void cuda_sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
}  // namespace armsrace_emu
#define __expf ::armsrace_emu::cuda_expf
#define __exp10f ::armsrace_emu::cuda_exp10f
#define __logf ::armsrace_emu::cuda_logf
#define __log2f ::armsrace_emu::cuda_log2f
#define __log10f ::armsrace_emu::cuda_log10f
#define __powf ::armsrace_emu::cuda_powf
#define __sinf ::armsrace_emu::cuda_sinf
#define __cosf ::armsrace_emu::cuda_cosf
#define __tanf ::armsrace_emu::cuda_tanf
#define __sincosf ::armsrace_emu::cuda_sincosf
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
inline float sinpif(float x) { return sinf(3.14159265358979323846f * x); }
inline float cospif(float x) { return cosf(3.14159265358979323846f * x); }

// min/max as CUDA overloads them: NaN-ignoring for floating point, the usual arithmetic
// conversions (int with unsigned -> unsigned) for mixed integer arguments.
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
template <class A, class B,
          typename std::enable_if<std::is_integral<A>::value && std::is_integral<B>::value,
                                  int>::type = 0>
constexpr inline typename std::common_type<A, B>::type min(A a, B b) {
    using C = typename std::common_type<A, B>::type;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B,
          typename std::enable_if<std::is_integral<A>::value && std::is_integral<B>::value,
                                  int>::type = 0>
constexpr inline typename std::common_type<A, B>::type max(A a, B b) {
    using C = typename std::common_type<A, B>::type;
    return (C)a < (C)b ? (C)b : (C)a;
}
inline float min(float a, int b) { return fminf(a, (float)b); }
inline float min(int a, float b) { return fminf((float)a, b); }
inline float max(float a, int b) { return fmaxf(a, (float)b); }
inline float max(int a, float b) { return fmaxf((float)a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
