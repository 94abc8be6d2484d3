// Elementwise ops over flat buffers: add, add_assign, copy, cast. Memory-bound one-liners; each is
// a grid-stride loop so any launch shape covers any n (launch: 256 threads, up to ~1k blocks).
#include "common.cuh"

template <typename T>
__device__ void add_impl(const EwArgs a) {
    T* out = ptr<T>(a.out);
    const T* x = ptr<const T>(a.a);
    const T* y = ptr<const T>(a.b);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < a.n; i += (unsigned long long)gridDim.x * blockDim.x)
        st(out, i, ld(x, i) + ld(y, i));
}

template <typename T>
__device__ void add_assign_impl(const EwArgs a) {
    T* out = ptr<T>(a.out);
    const T* x = ptr<const T>(a.a);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < a.n; i += (unsigned long long)gridDim.x * blockDim.x)
        st(out, i, ld(out, i) + ld(x, i));
}

template <typename T>
__device__ void copy_impl(const EwArgs a) {
    T* out = ptr<T>(a.out);
    const T* x = ptr<const T>(a.a);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < a.n; i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = x[i];
}

// out = a + b
extern "C" __global__ void add_f32(const EwArgs args) { add_impl<float>(args); }
extern "C" __global__ void add_bf16(const EwArgs args) { add_impl<bf16>(args); }
// out += a
extern "C" __global__ void add_assign_f32(const EwArgs args) { add_assign_impl<float>(args); }
extern "C" __global__ void add_assign_bf16(const EwArgs args) { add_assign_impl<bf16>(args); }
// out = a (bitwise)
extern "C" __global__ void copy_f32(const EwArgs args) { copy_impl<float>(args); }
extern "C" __global__ void copy_bf16(const EwArgs args) { copy_impl<bf16>(args); }

// out (bf16) = a (f32), rounded to nearest even: a bf16 model's weights from its f32 master.
extern "C" __global__ void cast_f32_bf16(const EwArgs a) {
    bf16* out = ptr<bf16>(a.out);
    const float* x = ptr<const float>(a.a);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < a.n; i += (unsigned long long)gridDim.x * blockDim.x)
        st(out, i, x[i]);
}
