// Cross-entropy. Row CE (classifier / small vocab) does max, sum-exp and the gradient in one
// block per row. The LM-head CE runs over vocab chunks so a [rows, vocab] logits tensor never
// exists: the host computes one chunk of logits with a GEMM, ce_chunk_stats folds it into an
// online (max, sum exp) per row, and a second sweep (gradient only) recomputes each chunk and
// turns it into dlogits in place before the GEMMs that consume it. Statistics are f32.
#include "common.cuh"

// Launch: grid rows, block 256.
template <typename T>
__device__ void ce_impl(const CeArgs a) {
    __shared__ float red[32];
    const unsigned int r = blockIdx.x;
    if (r >= a.rows) return;
    const unsigned long long o = (unsigned long long)r * a.classes;
    const T* l = ptr<const T>(a.logits) + o;
    T* d = ptr<T>(a.dlogits) + o;
    float mx = -INFINITY;
    for (unsigned int i = threadIdx.x; i < a.classes; i += blockDim.x) mx = fmaxf(mx, ld(l, i));
    mx = block_max(mx, red);
    float s = 0.0f;
    for (unsigned int i = threadIdx.x; i < a.classes; i += blockDim.x) s += expf(ld(l, i) - mx);
    s = block_sum(s, red);
    const float lse = mx + logf(s);
    const unsigned int t = ptr<const unsigned int>(a.targets)[r];
    const float sc = ptr<const float>(a.scale)[r];
    for (unsigned int i = threadIdx.x; i < a.classes; i += blockDim.x) {
        float g = expf(ld(l, i) - lse) * sc;
        if (i == t) g -= sc;
        st(d, i, g);
    }
    if (threadIdx.x == 0) ptr<float>(a.losses)[r] = lse - ld(l, t);
}
extern "C" __global__ void cross_entropy_f32(const CeArgs args) { ce_impl<float>(args); }
extern "C" __global__ void cross_entropy_bf16(const CeArgs args) { ce_impl<bf16>(args); }

// Fold one chunk into the running (m, s) of each row: m' = max(m, max chunk),
// s' = s e^(m - m') + sum e^(x - m'). m starts at -inf and s at 0 (set by the host).
// Launch: grid rows, block 256.
template <typename T>
__device__ void ce_chunk_stats_impl(const CeChunkArgs a) {
    __shared__ float red[32];
    const unsigned int r = blockIdx.x;
    if (r >= a.rows) return;
    const T* l = ptr<const T>(a.logits) + (unsigned long long)r * a.ld;
    float mx = -INFINITY;
    for (unsigned int i = threadIdx.x; i < a.cols; i += blockDim.x) mx = fmaxf(mx, ld(l, i));
    mx = block_max(mx, red);
    float* m = ptr<float>(a.m);
    float* s = ptr<float>(a.s);
    const float m_old = m[r];
    const float m_new = fmaxf(m_old, mx);
    float acc = 0.0f;
    for (unsigned int i = threadIdx.x; i < a.cols; i += blockDim.x) acc += expf(ld(l, i) - m_new);
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) {
        s[r] = s[r] * expf(m_old - m_new) + acc;  // m_old = -inf at the start: e^-inf = 0
        m[r] = m_new;
        const unsigned int t = ptr<const unsigned int>(a.targets)[r];
        if (t >= a.col0 && t < a.col0 + a.cols) ptr<float>(a.tgt)[r] = ld(l, t - a.col0);
    }
}
extern "C" __global__ void ce_chunk_stats_f32(const CeChunkArgs args) {
    ce_chunk_stats_impl<float>(args);
}
extern "C" __global__ void ce_chunk_stats_bf16(const CeChunkArgs args) {
    ce_chunk_stats_impl<bf16>(args);
}

// lse = m + log s; loss = lse - target logit. Launch: grid ceil(rows / 256), block 256.
extern "C" __global__ void ce_finish(const CeChunkArgs args) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= args.rows) return;
    const float lse = ptr<const float>(args.m)[r] + logf(ptr<const float>(args.s)[r]);
    ptr<float>(args.lse)[r] = lse;
    ptr<float>(args.losses)[r] = lse - ptr<const float>(args.tgt)[r];
}

// In place: chunk logits -> (softmax - onehot) * scale. Launch: grid (rows, ceil(cols/256)),
// block 256.
template <typename T>
__device__ void ce_chunk_grad_impl(const CeChunkArgs a) {
    const unsigned int r = blockIdx.x;
    const unsigned int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (r >= a.rows || i >= a.cols) return;
    T* l = ptr<T>(a.logits) + (unsigned long long)r * a.ld;
    const float sc = ptr<const float>(a.scale)[r];
    float g = expf(ld(l, i) - ptr<const float>(a.lse)[r]) * sc;
    if (a.col0 + i == ptr<const unsigned int>(a.targets)[r]) g -= sc;
    st(l, i, g);
}
extern "C" __global__ void ce_chunk_grad_f32(const CeChunkArgs args) {
    ce_chunk_grad_impl<float>(args);
}
extern "C" __global__ void ce_chunk_grad_bf16(const CeChunkArgs args) {
    ce_chunk_grad_impl<bf16>(args);
}
