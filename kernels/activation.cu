// MLP activations, forward and backward: exact GELU, tanh GELU, SwiGLU (silu(gate) * up
// with u = [gate | up] per row). Grid-stride loops; launch: 256 threads, up to ~1k blocks.
#include "common.cuh"

#define SQRT_2_OVER_PI 0.7978846f
#define GELU_TANH_C 0.044715f
#define INV_SQRT_2 0.70710678f
#define INV_SQRT_2PI 0.3989423f

__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * INV_SQRT_2)); }
__device__ __forceinline__ float gelu_grad(float x) {
    const float cdf = 0.5f * (1.0f + erff(x * INV_SQRT_2));
    return cdf + x * expf(-0.5f * x * x) * INV_SQRT_2PI;
}
__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)));
}
__device__ __forceinline__ float gelu_tanh_grad(float x) {
    const float t = tanhf(SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x));
    const float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_C * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#define GRID_STRIDE(i, n)                                                                      \
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;    \
         i < (n); i += (unsigned long long)gridDim.x * blockDim.x)

template <typename T, int TANH>
__device__ void gelu_fwd_impl(const ActArgs a) {
    T* out = ptr<T>(a.out);
    const T* u = ptr<const T>(a.u);
    GRID_STRIDE(i, a.n) {
        const float x = ld(u, i);
        st(out, i, TANH ? gelu_tanh(x) : gelu(x));
    }
}
template <typename T, int TANH>
__device__ void gelu_bwd_impl(const ActArgs a) {
    T* du = ptr<T>(a.out);
    const T* u = ptr<const T>(a.u);
    const T* g = ptr<const T>(a.dout);
    GRID_STRIDE(i, a.n) {
        const float x = ld(u, i);
        st(du, i, ld(g, i) * (TANH ? gelu_tanh_grad(x) : gelu_grad(x)));
    }
}

// out[r, i] = silu(u[r, i]) * u[r, inter + i]; n = rows * inter.
template <typename T>
__device__ void swiglu_fwd_impl(const ActArgs a) {
    T* out = ptr<T>(a.out);
    const T* u = ptr<const T>(a.u);
    GRID_STRIDE(e, a.n) {
        const unsigned long long r = e / a.inter, i = e % a.inter;
        const float g = ld(u, r * 2 * a.inter + i), up = ld(u, r * 2 * a.inter + a.inter + i);
        st(out, e, g * sigmoid(g) * up);
    }
}
// d gate = dout * up * s (1 + g (1 - s)), d up = dout * silu(g).
template <typename T>
__device__ void swiglu_bwd_impl(const ActArgs a) {
    T* du = ptr<T>(a.out);
    const T* u = ptr<const T>(a.u);
    const T* dout = ptr<const T>(a.dout);
    GRID_STRIDE(e, a.n) {
        const unsigned long long r = e / a.inter, i = e % a.inter;
        const unsigned long long gi = r * 2 * a.inter + i, ui = gi + a.inter;
        const float g = ld(u, gi), up = ld(u, ui), d = ld(dout, e);
        const float s = sigmoid(g);
        st(du, ui, d * g * s);
        st(du, gi, d * up * s * (1.0f + g * (1.0f - s)));
    }
}

extern "C" __global__ void gelu_fwd_f32(const ActArgs args) { gelu_fwd_impl<float, 0>(args); }
extern "C" __global__ void gelu_fwd_bf16(const ActArgs args) { gelu_fwd_impl<bf16, 0>(args); }
extern "C" __global__ void gelu_bwd_f32(const ActArgs args) { gelu_bwd_impl<float, 0>(args); }
extern "C" __global__ void gelu_bwd_bf16(const ActArgs args) { gelu_bwd_impl<bf16, 0>(args); }
extern "C" __global__ void gelu_tanh_fwd_f32(const ActArgs args) { gelu_fwd_impl<float, 1>(args); }
extern "C" __global__ void gelu_tanh_fwd_bf16(const ActArgs args) { gelu_fwd_impl<bf16, 1>(args); }
extern "C" __global__ void gelu_tanh_bwd_f32(const ActArgs args) { gelu_bwd_impl<float, 1>(args); }
extern "C" __global__ void gelu_tanh_bwd_bf16(const ActArgs args) { gelu_bwd_impl<bf16, 1>(args); }
extern "C" __global__ void swiglu_fwd_f32(const ActArgs args) { swiglu_fwd_impl<float>(args); }
extern "C" __global__ void swiglu_fwd_bf16(const ActArgs args) { swiglu_fwd_impl<bf16>(args); }
extern "C" __global__ void swiglu_bwd_f32(const ActArgs args) { swiglu_bwd_impl<float>(args); }
extern "C" __global__ void swiglu_bwd_bf16(const ActArgs args) { swiglu_bwd_impl<bf16>(args); }
