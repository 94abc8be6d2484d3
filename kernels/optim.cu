// Optimizer updates: AdamW (torch semantics) and Adafactor (transformers' algorithm with
// relative_step = scale_parameter = warmup_init = False, beta1 = None). Parameters in the
// storage dtype, optimizer state in f32. References: src/backend/cpu/optim.rs.
#include "common.cuh"

#define GRID_STRIDE(i, n)                                                                      \
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;    \
         i < (n); i += (unsigned long long)gridDim.x * blockDim.x)

// Parameters TP, gradients TG: both the storage type, or an f32 master parameter (TP = float)
// of a bf16 gradient (training in bf16 keeps f32 master weights so small steps still land).
// Launch: 256 threads, grid-stride.
template <typename TP, typename TG>
__device__ void adamw_impl(const AdamwArgs a) {
    TP* p = ptr<TP>(a.param);
    const TG* g = ptr<const TG>(a.grad);
    float* m = ptr<float>(a.m);
    float* v = ptr<float>(a.v);
    const float step = a.lr / a.bc1, bc2s = sqrtf(a.bc2);
    GRID_STRIDE(i, a.n) {
        const float gi = ld(g, i);
        const float mi = m[i] + (1.0f - a.beta1) * (gi - m[i]);
        const float vi = a.beta2 * v[i] + (1.0f - a.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float pi = ld(p, i) * (1.0f - a.lr * a.weight_decay);
        pi -= step * mi / (sqrtf(vi) / bc2s + a.eps);
        st(p, i, pi);
    }
}
extern "C" __global__ void adamw_f32(const AdamwArgs args) { adamw_impl<float, float>(args); }
extern "C" __global__ void adamw_bf16(const AdamwArgs args) { adamw_impl<bf16, bf16>(args); }
extern "C" __global__ void adamw_f32_bf16(const AdamwArgs args) { adamw_impl<float, bf16>(args); }

// Factored: row[r] = b row[r] + (1 - b) mean_c(g^2 + eps1). Launch: grid rows, block 256.
template <typename T>
__device__ void adafactor_row_impl(const AdafactorArgs a) {
    __shared__ float red[32];
    const unsigned int r = blockIdx.x;
    const T* g = ptr<const T>(a.grad) + (unsigned long long)r * a.cols;
    float s = 0.0f;
    for (unsigned int c = threadIdx.x; c < a.cols; c += blockDim.x) {
        const float x = ld(g, c);
        s += x * x + a.eps1;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) {
        float* row = ptr<float>(a.row);
        row[r] = a.beta2t * row[r] + (1.0f - a.beta2t) * (s / (float)a.cols);
    }
}
extern "C" __global__ void adafactor_row_f32(const AdafactorArgs args) {
    adafactor_row_impl<float>(args);
}
extern "C" __global__ void adafactor_row_bf16(const AdafactorArgs args) {
    adafactor_row_impl<bf16>(args);
}

// partial[chunk, c] = sum over the chunk's rows of g^2 + eps1.
// Launch: grid (ceil(cols / 256), chunks), block 256.
template <typename T>
__device__ void adafactor_col_partial_impl(const AdafactorArgs a) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= a.cols) return;
    const T* g = ptr<const T>(a.grad);
    const unsigned int r0 = blockIdx.y * a.rows_per_chunk;
    const unsigned int r1 = min(a.rows, r0 + a.rows_per_chunk);
    float s = 0.0f;
    for (unsigned int r = r0; r < r1; r++) {
        const float x = ld(g, (unsigned long long)r * a.cols + c);
        s += x * x + a.eps1;
    }
    ptr<float>(a.partial)[(unsigned long long)blockIdx.y * a.cols + c] = s;
}
extern "C" __global__ void adafactor_col_partial_f32(const AdafactorArgs args) {
    adafactor_col_partial_impl<float>(args);
}
extern "C" __global__ void adafactor_col_partial_bf16(const AdafactorArgs args) {
    adafactor_col_partial_impl<bf16>(args);
}

// col[c] = b col[c] + (1 - b) (sum of partials) / rows. Launch: grid ceil(cols / 256), block 256.
extern "C" __global__ void adafactor_col_finish(const AdafactorArgs args) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= args.cols) return;
    const float* part = ptr<const float>(args.partial);
    float s = 0.0f;
    for (unsigned int k = 0; k < args.chunks; k++) s += part[(unsigned long long)k * args.cols + c];
    float* col = ptr<float>(args.col);
    col[c] = args.beta2t * col[c] + (1.0f - args.beta2t) * (s / (float)args.rows);
}

// Vector parameters: v = b v + (1 - b)(g^2 + eps1). Launch: 256 threads, grid-stride.
template <typename T>
__device__ void adafactor_vec_impl(const AdafactorArgs a) {
    const T* g = ptr<const T>(a.grad);
    float* v = ptr<float>(a.v);
    GRID_STRIDE(i, (unsigned long long)a.cols) {
        const float x = ld(g, i);
        v[i] = a.beta2t * v[i] + (1.0f - a.beta2t) * (x * x + a.eps1);
    }
}
extern "C" __global__ void adafactor_vec_f32(const AdafactorArgs args) {
    adafactor_vec_impl<float>(args);
}
extern "C" __global__ void adafactor_vec_bf16(const AdafactorArgs args) {
    adafactor_vec_impl<bf16>(args);
}

// scalars[0] = mean of the row state (factored only). Launch: grid 1, block 256.
extern "C" __global__ void adafactor_stats(const AdafactorArgs args) {
    __shared__ float red[32];
    const float* row = ptr<const float>(args.row);
    float s = 0.0f;
    for (unsigned int r = threadIdx.x; r < args.rows; r += blockDim.x) s += row[r];
    s = block_sum(s, red);
    if (threadIdx.x == 0) ptr<float>(args.scalars)[0] = s / (float)args.rows;
}

// The unclipped update: rsqrt(row / mean(row)) rsqrt(col) g, or rsqrt(v) g for vectors.
template <typename T>
__device__ __forceinline__ float adafactor_update(const AdafactorArgs& a, unsigned long long i) {
    const float g = ld(ptr<const T>(a.grad), i);
    if (!a.factored) return (1.0f / sqrtf(ptr<const float>(a.v)[i])) * g;
    const unsigned int r = i / a.cols, c = i % a.cols;
    const float rf = 1.0f / sqrtf(ptr<const float>(a.row)[r] / ptr<const float>(a.scalars)[0]);
    const float cf = 1.0f / sqrtf(ptr<const float>(a.col)[c]);
    return rf * cf * g;
}

// partial[block] = sum over the block's grid-stride elements of update^2.
// Launch: grid `blocks` (<= 1024), block 256.
template <typename T>
__device__ void adafactor_sumsq_impl(const AdafactorArgs a) {
    __shared__ float red[32];
    const unsigned long long n = (unsigned long long)a.rows * a.cols;
    float s = 0.0f;
    GRID_STRIDE(i, n) {
        const float u = adafactor_update<T>(a, i);
        s += u * u;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) ptr<float>(a.partial)[blockIdx.x] = s;
}
extern "C" __global__ void adafactor_sumsq_partial_f32(const AdafactorArgs args) {
    adafactor_sumsq_impl<float>(args);
}
extern "C" __global__ void adafactor_sumsq_partial_bf16(const AdafactorArgs args) {
    adafactor_sumsq_impl<bf16>(args);
}

// p = p (1 - wd lr) - lr u / max(1, rms(u) / clip). Each block re-sums the `blocks` partials
// (a few hundred floats) rather than paying another launch. Parameters TP, gradients T (as
// adamw_impl). Launch: grid `blocks`, block 256.
template <typename TP, typename T>
__device__ void adafactor_apply_impl(const AdafactorArgs a) {
    __shared__ float red[32];
    const unsigned long long n = (unsigned long long)a.rows * a.cols;
    float s = 0.0f;
    for (unsigned int b = threadIdx.x; b < a.blocks; b += blockDim.x) s += ptr<const float>(a.partial)[b];
    s = block_sum(s, red);
    const float rms = sqrtf(s / (float)n);
    const float denom = fmaxf(rms / a.clip, 1.0f);
    TP* p = ptr<TP>(a.param);
    GRID_STRIDE(i, n) {
        const float u = adafactor_update<T>(a, i) / denom * a.lr;
        float pi = ld(p, i);
        pi = pi + pi * (-a.weight_decay * a.lr);
        st(p, i, pi - u);
    }
}
extern "C" __global__ void adafactor_apply_f32(const AdafactorArgs args) {
    adafactor_apply_impl<float, float>(args);
}
extern "C" __global__ void adafactor_apply_bf16(const AdafactorArgs args) {
    adafactor_apply_impl<bf16, bf16>(args);
}
extern "C" __global__ void adafactor_apply_f32_bf16(const AdafactorArgs args) {
    adafactor_apply_impl<float, bf16>(args);
}

// Layout self-check (see LayoutArgs): sizeof of each struct, in declaration order.
extern "C" __global__ void args_layout(const LayoutArgs args) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    unsigned int* o = ptr<unsigned int>(args.out);
    o[0] = sizeof(EwArgs);
    o[1] = sizeof(GatherArgs);
    o[2] = sizeof(ScatterArgs);
    o[3] = sizeof(ColSumArgs);
    o[4] = sizeof(NormFwdArgs);
    o[5] = sizeof(NormBwdArgs);
    o[6] = sizeof(RotaryArgs);
    o[7] = sizeof(AttnFwdArgs);
    o[8] = sizeof(AttnBwdArgs);
    o[9] = sizeof(ActArgs);
    o[10] = sizeof(CeArgs);
    o[11] = sizeof(CeChunkArgs);
    o[12] = sizeof(GemmArgs);
    o[13] = sizeof(TopkArgs);
    o[14] = sizeof(SampleArgs);
    o[15] = sizeof(CandArgs);
    o[16] = sizeof(AdamwArgs);
    o[17] = sizeof(AdafactorArgs);
    o[18] = sizeof(LayoutArgs);
}
