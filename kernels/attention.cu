// Causal attention with right padding, GQA and an optional shared prefix (a cached [prefix,
// qkv_dim] block every sequence attends to in full), forward and backward.
// Masking (shared with the CPU reference): query t of sequence b sees every prefix key and
// the new keys j <= t with j < lens[b]; a query that sees no key outputs 0 with lse 0.
// head_dim <= 256 (each lane of a warp owns dims lane, lane + 32, ...).
#include "common.cuh"

#define DPL_MAX 8      // dims per lane: head_dim <= 32 * DPL_MAX
#define FWD_BQ 16      // queries per block (4 warps x 4 rows)
#define FWD_BKV 32     // keys per tile (one per lane when scoring)
#define ROWS_PER_WARP 4

extern __shared__ __align__(16) unsigned char dyn_smem[];

// Forward: flash-attention style tiling with an online softmax, on CUDA cores.
// Launch: grid (ceil(seq / 16), heads, batch), block 128, dynamic shared memory
// 4 * (16 * head_dim + 32 * (head_dim + 1) + 32 * head_dim + 4 * 4 * 32) bytes.
// Each warp owns 4 query rows; K/V tiles of 32 keys are staged in shared memory (f32, K rows
// padded by one float so lane-per-key reads are conflict-free); lane j scores key j of the
// tile, and the probabilities go through shared memory to the lane-per-dim V accumulation.
template <typename T>
__device__ void attn_fwd_impl(const AttnFwdArgs a) {
    const unsigned int hd = a.head_dim, nh = a.heads, nkv = a.kv_heads;
    const unsigned int width = (nh + 2 * nkv) * hd;
    const unsigned int b = blockIdx.z, h = blockIdx.y, t0 = blockIdx.x * FWD_BQ;
    const unsigned int kvh = h / (nh / nkv);
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int len = ptr<const unsigned int>(a.lens)[b];
    const unsigned int P = a.prefix_len;
    const T* qkv = ptr<const T>(a.qkv);
    const T* pre = ptr<const T>(a.prefix);

    float* Qs = reinterpret_cast<float*>(dyn_smem);  // [16][hd]
    float* Ks = Qs + FWD_BQ * hd;                     // [32][hd + 1]
    float* Vs = Ks + FWD_BKV * (hd + 1);              // [32][hd]
    float* Ps = Vs + FWD_BKV * hd;                    // [4 warps][4 rows][32]

    for (unsigned int e = threadIdx.x; e < FWD_BQ * hd; e += blockDim.x) {
        const unsigned int r = e / hd, d = e % hd, t = t0 + r;
        Qs[e] = t < a.seq ? ld(qkv, (unsigned long long)(b * a.seq + t) * width + h * hd + d)
                          : 0.0f;
    }

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][DPL_MAX];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < DPL_MAX; c++) acc[r][c] = 0.0f;
    }

    // Keys in the concatenated [prefix ++ new] index space that any row of this tile sees.
    const unsigned int t_last = min(t0 + FWD_BQ, a.seq) - 1;
    const unsigned int n_keys = P + min(t_last + 1, len);
    const unsigned int koff = (nh + kvh) * hd, voff = (nh + nkv + kvh) * hd;

    for (unsigned int k0 = 0; k0 < n_keys; k0 += FWD_BKV) {
        __syncthreads();  // previous tile fully consumed (and Qs written, first time)
        for (unsigned int e = threadIdx.x; e < FWD_BKV * hd; e += blockDim.x) {
            const unsigned int j = e / hd, d = e % hd, jj = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (jj < n_keys) {
                const T* row = key_row(pre, qkv + (unsigned long long)b * a.seq * width, jj, P, width);
                kv = ld(row, koff + d);
                vv = ld(row, voff + d);
            }
            Ks[j * (hd + 1) + d] = kv;
            Vs[j * hd + d] = vv;
        }
        __syncthreads();

        // Scores: lane = key. s[r] = q_r . k_lane * scale, masked to -inf.
        float s[ROWS_PER_WARP];
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) s[r] = 0.0f;
        const float* krow = Ks + lane * (hd + 1);
        const float* qbase = Qs + warp * ROWS_PER_WARP * hd;
        for (unsigned int d = 0; d < hd; d++) {
            const float kd = krow[d];
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) s[r] += qbase[r * hd + d] * kd;
        }
        const unsigned int jj = k0 + lane;
        float* pw = Ps + warp * ROWS_PER_WARP * FWD_BKV;
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            const unsigned int t = t0 + warp * ROWS_PER_WARP + r;
            const bool vis = jj < n_keys && key_visible(jj, t, P, len);
            const float sc = vis ? s[r] * a.scale : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(sc));
            // m_new = -inf: nothing visible yet; keep the state untouched.
            const float p = m_new == -INFINITY ? 0.0f : expf(sc - m_new);
            const float corr = m_new == -INFINITY ? 1.0f : expf(m[r] - m_new);
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = m_new;
#pragma unroll
            for (int c = 0; c < DPL_MAX; c++) acc[r][c] *= corr;
            pw[r * FWD_BKV + lane] = p;
        }
        __syncwarp();
        const unsigned int kmax = min((unsigned int)FWD_BKV, n_keys - k0);
        for (unsigned int j = 0; j < kmax; j++) {
            const float* vrow = Vs + j * hd;
            float pj[ROWS_PER_WARP];
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) pj[r] = pw[r * FWD_BKV + j];
#pragma unroll
            for (int c = 0; c < DPL_MAX; c++) {
                const unsigned int d = lane + 32 * c;
                if (d < hd) {
                    const float vd = vrow[d];
#pragma unroll
                    for (int r = 0; r < ROWS_PER_WARP; r++) acc[r][c] += pj[r] * vd;
                }
            }
        }
        __syncwarp();
    }

    T* out = ptr<T>(a.out);
    float* lse = ptr<float>(a.lse);
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        const unsigned int t = t0 + warp * ROWS_PER_WARP + r;
        if (t >= a.seq) continue;
        const unsigned long long row = (unsigned long long)b * a.seq + t;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
        for (int c = 0; c < DPL_MAX; c++) {
            const unsigned int d = lane + 32 * c;
            if (d < hd) st(out, row * nh * hd + h * hd + d, acc[r][c] * inv);
        }
        if (lane == 0) lse[row * nh + h] = l[r] > 0.0f ? m[r] + logf(l[r]) : 0.0f;
    }
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f32(const AttnFwdArgs args) {
    attn_fwd_impl<float>(args);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_bf16(const AttnFwdArgs args) {
    attn_fwd_impl<bf16>(args);
}

// Loads a head_dim vector into the lane-per-dim registers of a warp.
template <typename T>
__device__ __forceinline__ void load_lane_dims(float (&v)[DPL_MAX], const T* p, unsigned int hd,
                                               unsigned int lane) {
#pragma unroll
    for (int c = 0; c < DPL_MAX; c++) {
        const unsigned int d = lane + 32 * c;
        v[c] = d < hd ? ld(p, d) : 0.0f;
    }
}
// Dot product of a lane-per-dim register vector with a vector in memory, summed over the warp.
template <typename T>
__device__ __forceinline__ float warp_dot(const float (&v)[DPL_MAX], const T* p, unsigned int hd,
                                          unsigned int lane) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < DPL_MAX; c++) {
        const unsigned int d = lane + 32 * c;
        if (d < hd) s += v[c] * ld(p, d);
    }
    return warp_sum(s);
}

// delta[row, h] = dout[row, h, :] . out[row, h, :]. Launch: grid ceil(rows*heads/4), block 128
// (one warp per (row, head)).
template <typename T>
__device__ void attn_bwd_delta_impl(const AttnBwdArgs a) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned long long item = blockIdx.x * 4ull + (threadIdx.x >> 5);
    const unsigned long long rows = (unsigned long long)a.batch * a.seq;
    if (item >= rows * a.heads) return;
    const unsigned long long base = item * a.head_dim;  // (row, h) is contiguous in [rows, heads*hd]
    float o[DPL_MAX];
    load_lane_dims(o, ptr<const T>(a.out) + base, a.head_dim, lane);
    const float d = warp_dot(o, ptr<const T>(a.dout) + base, a.head_dim, lane);
    if (lane == 0) ptr<float>(a.delta)[item] = d;
}
extern "C" __global__ void attn_bwd_delta_f32(const AttnBwdArgs args) {
    attn_bwd_delta_impl<float>(args);
}
extern "C" __global__ void attn_bwd_delta_bf16(const AttnBwdArgs args) {
    attn_bwd_delta_impl<bf16>(args);
}

// dq[row, h] = sum_j ds_j k_j, ds_j = p_j (dout . v_j - delta) scale, p_j = e^(q.k_j scale - lse),
// over the prefix's keys and the new keys the row sees.
// Launch: grid ceil(rows*heads/4), block 128 (one warp per (row, head)).
template <typename T>
__device__ void attn_bwd_dq_impl(const AttnBwdArgs a) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned long long item = blockIdx.x * 4ull + (threadIdx.x >> 5);
    const unsigned int nh = a.heads, nkv = a.kv_heads, hd = a.head_dim;
    if (item >= (unsigned long long)a.batch * a.seq * nh) return;
    const unsigned int h = item % nh;
    const unsigned int row = item / nh;
    const unsigned int b = row / a.seq, t = row % a.seq;
    const unsigned int kvh = h / (nh / nkv);
    const unsigned int width = (nh + 2 * nkv) * hd;
    const T* qkv = ptr<const T>(a.qkv);
    const unsigned int len = ptr<const unsigned int>(a.lens)[b];
    const unsigned int n = min(t + 1, len);
    float q[DPL_MAX], go[DPL_MAX], dq[DPL_MAX];
    load_lane_dims(q, qkv + (unsigned long long)row * width + h * hd, hd, lane);
    load_lane_dims(go, ptr<const T>(a.dout) + (unsigned long long)row * nh * hd + h * hd, hd, lane);
#pragma unroll
    for (int c = 0; c < DPL_MAX; c++) dq[c] = 0.0f;
    const float lse = ptr<const float>(a.lse)[item];
    const float delta = ptr<const float>(a.delta)[item];
    // Keys in the concatenated [prefix ++ new] index space: the prefix's feed dq too (the
    // prefix itself gets no gradient).
    const T* pre = ptr<const T>(a.prefix);
    for (unsigned int j = 0; j < a.prefix_len + n; j++) {
        const T* kv = key_row(pre, qkv + (unsigned long long)b * a.seq * width, j, a.prefix_len, width);
        const T* k = kv + (nh + kvh) * hd;
        const T* v = kv + (nh + nkv + kvh) * hd;
        const float p = expf(warp_dot(q, k, hd, lane) * a.scale - lse);
        const float ds = p * (warp_dot(go, v, hd, lane) - delta) * a.scale;
#pragma unroll
        for (int c = 0; c < DPL_MAX; c++) {
            const unsigned int d = lane + 32 * c;
            if (d < hd) dq[c] += ds * ld(k, d);
        }
    }
    T* out = ptr<T>(a.dqkv) + (unsigned long long)row * width + h * hd;
#pragma unroll
    for (int c = 0; c < DPL_MAX; c++) {
        const unsigned int d = lane + 32 * c;
        if (d < hd) st(out, d, dq[c]);
    }
}
extern "C" __global__ void attn_bwd_dq_f32(const AttnBwdArgs args) { attn_bwd_dq_impl<float>(args); }
extern "C" __global__ void attn_bwd_dq_bf16(const AttnBwdArgs args) { attn_bwd_dq_impl<bf16>(args); }

// dk_j = sum over the group's query heads and queries t >= j of ds q_t; dv_j = sum p dout_t.
// Keys past the sequence length get zeros. Launch: grid ceil(rows*kv_heads/4), block 128
// (one warp per (key row, kv head)); no two warps write the same element, so no atomics.
template <typename T>
__device__ void attn_bwd_dkv_impl(const AttnBwdArgs a) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned long long item = blockIdx.x * 4ull + (threadIdx.x >> 5);
    const unsigned int nh = a.heads, nkv = a.kv_heads, hd = a.head_dim;
    if (item >= (unsigned long long)a.batch * a.seq * nkv) return;
    const unsigned int kvh = item % nkv;
    const unsigned int row = item / nkv;
    const unsigned int b = row / a.seq, j = row % a.seq;
    const unsigned int group = nh / nkv;
    const unsigned int width = (nh + 2 * nkv) * hd;
    const T* qkv = ptr<const T>(a.qkv);
    const unsigned int len = ptr<const unsigned int>(a.lens)[b];
    float k[DPL_MAX], v[DPL_MAX], dk[DPL_MAX], dv[DPL_MAX];
    load_lane_dims(k, qkv + (unsigned long long)row * width + (nh + kvh) * hd, hd, lane);
    load_lane_dims(v, qkv + (unsigned long long)row * width + (nh + nkv + kvh) * hd, hd, lane);
#pragma unroll
    for (int c = 0; c < DPL_MAX; c++) dk[c] = dv[c] = 0.0f;
    if (j < len) {
        for (unsigned int qh = kvh * group; qh < (kvh + 1) * group; qh++) {
            for (unsigned int t = j; t < a.seq; t++) {
                const unsigned long long qr = (unsigned long long)b * a.seq + t;
                const T* q = qkv + qr * width + qh * hd;
                const T* go = ptr<const T>(a.dout) + qr * nh * hd + qh * hd;
                const float p =
                    expf(warp_dot(k, q, hd, lane) * a.scale - ptr<const float>(a.lse)[qr * nh + qh]);
                const float ds =
                    p * (warp_dot(v, go, hd, lane) - ptr<const float>(a.delta)[qr * nh + qh]) * a.scale;
#pragma unroll
                for (int c = 0; c < DPL_MAX; c++) {
                    const unsigned int d = lane + 32 * c;
                    if (d < hd) {
                        dk[c] += ds * ld(q, d);
                        dv[c] += p * ld(go, d);
                    }
                }
            }
        }
    }
    T* out = ptr<T>(a.dqkv) + (unsigned long long)row * width;
#pragma unroll
    for (int c = 0; c < DPL_MAX; c++) {
        const unsigned int d = lane + 32 * c;
        if (d < hd) {
            st(out, (nh + kvh) * hd + d, dk[c]);
            st(out, (nh + nkv + kvh) * hd + d, dv[c]);
        }
    }
}
extern "C" __global__ void attn_bwd_dkv_f32(const AttnBwdArgs args) { attn_bwd_dkv_impl<float>(args); }
extern "C" __global__ void attn_bwd_dkv_bf16(const AttnBwdArgs args) { attn_bwd_dkv_impl<bf16>(args); }
