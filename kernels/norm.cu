// LayerNorm (GPTNeoX) and RMSNorm (Qwen2), forward and backward. Statistics in f32 with a
// centred second pass (no E[x^2] - E[x]^2 cancellation); one block per row, which covers
// hidden sizes up to 5120 with 256 threads and a few loads each.
#include "common.cuh"

// out = (x - mean) * rstd * w (+ b). Launch: grid rows, block 256.
template <typename T>
__device__ void norm_fwd_impl(const NormFwdArgs a) {
    __shared__ float red[32];
    const unsigned int r = blockIdx.x;
    if (r >= a.rows) return;
    const T* x = ptr<const T>(a.x) + (unsigned long long)r * a.dim;
    T* out = ptr<T>(a.out) + (unsigned long long)r * a.dim;
    const T* w = ptr<const T>(a.w);
    const T* b = ptr<const T>(a.b);
    float mean = 0.0f;
    if (!a.rms) {
        float s = 0.0f;
        for (unsigned int i = threadIdx.x; i < a.dim; i += blockDim.x) s += ld(x, i);
        mean = block_sum(s, red) / (float)a.dim;
    }
    float v = 0.0f;
    for (unsigned int i = threadIdx.x; i < a.dim; i += blockDim.x) {
        const float d = ld(x, i) - mean;
        v += d * d;
    }
    const float var = block_sum(v, red) / (float)a.dim;
    const float rstd = 1.0f / sqrtf(var + a.eps);
    for (unsigned int i = threadIdx.x; i < a.dim; i += blockDim.x) {
        float y = (ld(x, i) - mean) * rstd * ld(w, i);
        if (b) y += ld(b, i);
        st(out, i, y);
    }
    if (threadIdx.x == 0) {
        ptr<float>(a.mean)[r] = mean;
        ptr<float>(a.rstd)[r] = rstd;
    }
}
extern "C" __global__ void norm_fwd_f32(const NormFwdArgs args) { norm_fwd_impl<float>(args); }
extern "C" __global__ void norm_fwd_bf16(const NormFwdArgs args) { norm_fwd_impl<bf16>(args); }

// dx += rstd * (g w - mean(g w) - xhat mean(g w xhat)); the mean(g w) term only for
// LayerNorm. Launch: grid rows, block 256.
template <typename T>
__device__ void norm_bwd_dx_impl(const NormBwdArgs a) {
    __shared__ float red[32];
    const unsigned int r = blockIdx.x;
    if (r >= a.rows) return;
    const unsigned long long o = (unsigned long long)r * a.dim;
    const T* x = ptr<const T>(a.x) + o;
    const T* g = ptr<const T>(a.dout) + o;
    const T* w = ptr<const T>(a.w);
    T* dx = ptr<T>(a.dx) + o;
    const float m = ptr<const float>(a.mean)[r];
    const float rs = ptr<const float>(a.rstd)[r];
    float sd = 0.0f, sdx = 0.0f;
    for (unsigned int i = threadIdx.x; i < a.dim; i += blockDim.x) {
        const float d = ld(g, i) * ld(w, i);
        sd += d;
        sdx += d * (ld(x, i) - m) * rs;
    }
    const float mean_d = a.rms ? 0.0f : block_sum(sd, red) / (float)a.dim;
    const float mean_dx = block_sum(sdx, red) / (float)a.dim;
    for (unsigned int i = threadIdx.x; i < a.dim; i += blockDim.x) {
        const float xhat = (ld(x, i) - m) * rs;
        st(dx, i, ld(dx, i) + rs * (ld(g, i) * ld(w, i) - mean_d - xhat * mean_dx));
    }
}
extern "C" __global__ void norm_bwd_dx_f32(const NormBwdArgs args) {
    norm_bwd_dx_impl<float>(args);
}
extern "C" __global__ void norm_bwd_dx_bf16(const NormBwdArgs args) {
    norm_bwd_dx_impl<bf16>(args);
}

// Per-chunk partials of dw = sum_r g xhat and db = sum_r g (finished by colsum_finish).
// Launch: grid (ceil(dim / 256), chunks), block 256.
template <typename T>
__device__ void norm_bwd_dwdb_impl(const NormBwdArgs a) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int chunk = blockIdx.y;
    if (j >= a.dim) return;
    const T* x = ptr<const T>(a.x);
    const T* g = ptr<const T>(a.dout);
    const float* mean = ptr<const float>(a.mean);
    const float* rstd = ptr<const float>(a.rstd);
    const unsigned int r0 = chunk * a.rows_per_chunk;
    const unsigned int r1 = min(a.rows, r0 + a.rows_per_chunk);
    float aw = 0.0f, ab = 0.0f;
    for (unsigned int r = r0; r < r1; r++) {
        const unsigned long long i = (unsigned long long)r * a.dim + j;
        const float gi = ld(g, i);
        aw += gi * (ld(x, i) - mean[r]) * rstd[r];
        ab += gi;
    }
    const unsigned long long p = (unsigned long long)chunk * a.dim + j;
    ptr<float>(a.partial_w)[p] = aw;
    if (a.partial_b) ptr<float>(a.partial_b)[p] = ab;
}
extern "C" __global__ void norm_bwd_dwdb_f32(const NormBwdArgs args) {
    norm_bwd_dwdb_impl<float>(args);
}
extern "C" __global__ void norm_bwd_dwdb_bf16(const NormBwdArgs args) {
    norm_bwd_dwdb_impl<bf16>(args);
}
