// Row gathers and grouped scatter-adds (embedding forward/backward, gather_rows /
// scatter_add_rows), and the two-stage column sum used for bias and norm-weight gradients.
// No atomics anywhere: the host groups repeated destination rows, and column sums reduce
// fixed row chunks in a fixed order, so every result is deterministic run to run.
#include "common.cuh"

// out[r, :] = src[idx[r], :]. Launch: grid (rows, ceil(dim / 256)), block 256.
template <typename T>
__device__ void gather_impl(const GatherArgs a) {
    const unsigned int r = blockIdx.x;
    const unsigned int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (r >= a.rows || c >= a.dim) return;
    const unsigned long long s = ptr<const unsigned int>(a.idx)[r];
    ptr<T>(a.out)[(unsigned long long)r * a.dim + c] = ptr<const T>(a.src)[s * a.dim + c];
}
extern "C" __global__ void gather_rows_f32(const GatherArgs args) { gather_impl<float>(args); }
extern "C" __global__ void gather_rows_bf16(const GatherArgs args) { gather_impl<bf16>(args); }

// dst[dst_row[g], c] += sum_j src[order[j], c] over group g's rows, summed in f32 in order.
// Launch: grid (groups, ceil(dim / 256)), block 256.
template <typename T>
__device__ void scatter_impl(const ScatterArgs a) {
    const unsigned int g = blockIdx.x;
    const unsigned int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (g >= a.groups || c >= a.dim) return;
    const unsigned int* order = ptr<const unsigned int>(a.order);
    const unsigned int* off = ptr<const unsigned int>(a.offsets);
    const T* src = ptr<const T>(a.src);
    T* dst = ptr<T>(a.dst);
    float acc = 0.0f;
    for (unsigned int j = off[g]; j < off[g + 1]; j++)
        acc += ld(src, (unsigned long long)order[j] * a.dim + c);
    const unsigned long long o =
        (unsigned long long)ptr<const unsigned int>(a.dst_row)[g] * a.dim + c;
    st(dst, o, ld(dst, o) + acc);
}
extern "C" __global__ void scatter_add_rows_f32(const ScatterArgs args) {
    scatter_impl<float>(args);
}
extern "C" __global__ void scatter_add_rows_bf16(const ScatterArgs args) {
    scatter_impl<bf16>(args);
}

// Stage 1: partial[chunk, j] = sum of src[r, j] over the chunk's rows.
// Launch: grid (ceil(cols / 256), chunks), block 256.
template <typename T>
__device__ void colsum_partial_impl(const ColSumArgs a) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int chunk = blockIdx.y;
    if (j >= a.cols) return;
    const T* src = ptr<const T>(a.src);
    const unsigned int r0 = chunk * a.rows_per_chunk;
    const unsigned int r1 = min(a.rows, r0 + a.rows_per_chunk);
    float acc = 0.0f;
    for (unsigned int r = r0; r < r1; r++) acc += ld(src, (unsigned long long)r * a.cols + j);
    ptr<float>(a.partial)[(unsigned long long)chunk * a.cols + j] = acc;
}
extern "C" __global__ void colsum_partial_f32(const ColSumArgs args) {
    colsum_partial_impl<float>(args);
}
extern "C" __global__ void colsum_partial_bf16(const ColSumArgs args) {
    colsum_partial_impl<bf16>(args);
}

// Stage 2: dst[j] += sum over chunks of partial[chunk, j].
// Launch: grid ceil(cols / 256), block 256.
template <typename T>
__device__ void colsum_finish_impl(const ColSumArgs a) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= a.cols) return;
    const float* part = ptr<const float>(a.partial);
    float acc = 0.0f;
    for (unsigned int c = 0; c < a.chunks; c++) acc += part[(unsigned long long)c * a.cols + j];
    T* dst = ptr<T>(a.dst);
    st(dst, j, ld(dst, j) + acc);
}
extern "C" __global__ void colsum_finish_f32(const ColSumArgs args) {
    colsum_finish_impl<float>(args);
}
extern "C" __global__ void colsum_finish_bf16(const ColSumArgs args) {
    colsum_finish_impl<bf16>(args);
}
