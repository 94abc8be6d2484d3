// Attention backward on tensor cores (bf16 storage, head_dim a multiple of 16 up to 128):
// the same gradients as attn_bwd_dq / attn_bwd_dkv in attention.cu, after
// attn_bwd_delta has written delta = rowsum(dout * out). With p = exp(q.k scale - lse) over
// the keys a query sees (the prefix's, then new keys j <= t, j < len) and ds = p (dout.v - delta):
//   dq_t = scale sum_j ds k_j                       (attn_bwd_dq_mma: one block per 64 queries)
//   dk_j = scale sum_t ds q_t,  dv_j = sum_t p dout_t  (attn_bwd_dkv_mma: one block per 64 new
//          keys, over every query head of its GQA group; keys past the length get zeros; the
//          prefix gets no gradient)
// Each kernel recomputes P from Q, K and lse (FlashAttention-2 style), keeps its gradient in
// registers and writes it once, so no atomics and the result does not depend on scheduling.
// Tiles stream through shared memory by cp.async, double-buffered as in attention_mma.cu.
#include "mma.cuh"

#define BWD_THREADS 128
#define BWD_ROWS 64  // rows a block owns (queries for dq, keys for dkv): 16 per warp

extern __shared__ __align__(16) unsigned char attn_bwd_smem[];

// Launch: grid (ceil(seq / 64), heads, batch), block 128, shared memory 6 * 64 * (D + 8) * 2
// bytes (Q and dout of the block's queries; two buffers each of K and V).
template <int D>
__device__ void attn_bwd_dq_mma_impl(const AttnBwdArgs a) {
    constexpr int LD = D + 8, KC = D / 16, DT = D / 8, BK = 64;
    const unsigned int nh = a.heads, nkv = a.kv_heads;
    const unsigned long long width = (unsigned long long)(nh + 2 * nkv) * D;
    const unsigned int qb = gridDim.x - 1 - blockIdx.x;  // most keys first
    const unsigned int b = blockIdx.z, h = blockIdx.y, t0 = qb * BWD_ROWS;
    const unsigned int kvh = h / (nh / nkv);
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int g = lane >> 2, tq = lane & 3;
    const unsigned int len = ptr<const unsigned int>(a.lens)[b];
    const bf16* qkv = ptr<const bf16>(a.qkv);
    const bf16* dout = ptr<const bf16>(a.dout);
    const unsigned long long row0 = (unsigned long long)b * a.seq;

    bf16* Qs = reinterpret_cast<bf16*>(attn_bwd_smem);
    bf16* Os = Qs + BWD_ROWS * LD;  // dout rows
    bf16* Ks = Os + BWD_ROWS * LD;  // [2][64][LD]
    bf16* Vs = Ks + 2 * BK * LD;    // [2][64][LD]

    // Keys in the concatenated [prefix ++ new] index space, as in the forward.
    const unsigned int P = a.prefix_len;
    const bf16* pre = a.prefix ? ptr<const bf16>(a.prefix) : qkv;
    const unsigned int t_last = min(t0 + BWD_ROWS, a.seq) - 1;
    const unsigned int n_keys = P + min(t_last + 1, len);
    const unsigned int n_tiles = (n_keys + BK - 1) / BK;
    const unsigned int all_see = P + min(t0 + 1, len);
    const unsigned long long koff = (unsigned long long)(nh + kvh) * D;
    const unsigned long long voff = (unsigned long long)(nh + nkv + kvh) * D;

    auto load_kv = [&](unsigned int tile) {
        const unsigned int buf = tile & 1;
        load_kv_async<BK, D, BWD_THREADS>(Ks + buf * BK * LD, Vs + buf * BK * LD, pre,
                                          qkv + row0 * width, tile * BK, n_keys, P, width, koff,
                                          voff);
    };
    load_rows_async<BWD_ROWS, D, BWD_THREADS>(Qs, [&](int r) -> const bf16* {
        return t0 + r < a.seq ? qkv + (row0 + t0 + r) * width + (unsigned long long)h * D : nullptr;
    }, qkv);
    load_rows_async<BWD_ROWS, D, BWD_THREADS>(Os, [&](int r) -> const bf16* {
        return t0 + r < a.seq ? dout + (row0 + t0 + r) * nh * D + (unsigned long long)h * D : nullptr;
    }, qkv);
    if (n_tiles > 0) load_kv(0);
    cp_async_commit();

    const float scale2 = a.scale * 1.4426950408889634f;
    const unsigned int r_lo = t0 + warp * 16 + g, r_hi = r_lo + 8;
    float lse2[2], delta[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const unsigned int t = r ? r_hi : r_lo;
        const unsigned long long i = (row0 + t) * nh + h;
        lse2[r] = t < a.seq ? ptr<const float>(a.lse)[i] * 1.4426950408889634f : 0.0f;
        delta[r] = t < a.seq ? ptr<const float>(a.delta)[i] : 0.0f;
    }
    float dq[DT][4];
    zero_acc(dq);
    const bf16* qrow = a_frag_row(Qs + warp * 16 * LD, LD);
    const bf16* orow = a_frag_row(Os + warp * 16 * LD, LD);

    for (unsigned int tile = 0; tile < n_tiles; tile++) {
        if (tile + 1 < n_tiles) load_kv(tile + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const unsigned int k0 = tile * BK;
        const bf16* Kt = Ks + (tile & 1) * BK * LD;
        const bf16* Vt = Vs + (tile & 1) * BK * LD;

        float s[8][4], dp[8][4];
        zero_acc(s);
        zero_acc(dp);
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            u32 f[4];
            ldmatrix_x4(f, qrow + kc * 16);
            mma_abt_chunk(s, f, Kt, LD, kc * 16);  // S = Q K^T
            ldmatrix_x4(f, orow + kc * 16);
            mma_abt_chunk(dp, f, Vt, LD, kc * 16);  // dP = dout V^T
        }
        const bool masked = k0 + BK > all_see;
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const unsigned int jj = k0 + 8 * n + 2 * tq + (e & 1);
                const unsigned int t = r ? r_hi : r_lo;
                const bool vis = !masked || (jj < n_keys && key_visible(jj, t, P, len));
                const float p = vis ? exp2f(s[n][e] * scale2 - lse2[r]) : 0.0f;
                s[n][e] = p * (dp[n][e] - delta[r]);  // dS
            }
        }
        mma_pv(dq, s, Kt, LD);  // dQ += dS K
        __syncthreads();
    }
    cp_async_wait<0>();  // with no key tile, the Q and dout copies are still unwaited

    bf16* dqkv = ptr<bf16>(a.dqkv);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const unsigned int t = r ? r_hi : r_lo;
        if (t >= a.seq) continue;
        u32* out = reinterpret_cast<u32*>(dqkv + (row0 + t) * width + (unsigned long long)h * D);
#pragma unroll
        for (int i = 0; i < DT; i++) {
            out[i * 4 + tq] = pack_bf16x2(dq[i][2 * r] * a.scale, dq[i][2 * r + 1] * a.scale);
        }
    }
}

// Launch: grid (ceil(seq / 64), kv_heads, batch), block 128, shared memory
// (2 * 64 + 4 * QT) * (D + 8) * 2 bytes (the block's K and V; two buffers each of Q and dout),
// QT = attn_bwd_dkv_query_tile(D) queries per step.
template <int D, int QT>
__device__ void attn_bwd_dkv_mma_impl(const AttnBwdArgs a) {
    constexpr int LD = D + 8, KC = D / 16, DT = D / 8, NT = QT / 8;
    const unsigned int nh = a.heads, nkv = a.kv_heads, group = nh / nkv;
    const unsigned long long width = (unsigned long long)(nh + 2 * nkv) * D;
    const unsigned int kb = blockIdx.x;  // early keys see the most queries: their blocks first
    const unsigned int b = blockIdx.z, kvh = blockIdx.y, j0 = kb * BWD_ROWS;
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int g = lane >> 2, tq = lane & 3;
    const unsigned int len = ptr<const unsigned int>(a.lens)[b];
    const bf16* qkv = ptr<const bf16>(a.qkv);
    const bf16* dout = ptr<const bf16>(a.dout);
    const unsigned long long row0 = (unsigned long long)b * a.seq;

    bf16* Ks = reinterpret_cast<bf16*>(attn_bwd_smem);
    bf16* Vs = Ks + BWD_ROWS * LD;
    bf16* Qs = Vs + BWD_ROWS * LD;  // [2][QT][LD]
    bf16* Os = Qs + 2 * QT * LD;    // [2][QT][LD]

    const unsigned long long koff = (unsigned long long)(nh + kvh) * D;
    const unsigned long long voff = (unsigned long long)(nh + nkv + kvh) * D;
    // Keys past the length get no gradient: no step at all when the block holds none.
    const unsigned int q_first = (j0 / QT) * QT;  // queries before j0 see none of these keys
    const unsigned int per_head = j0 < len ? (a.seq - q_first + QT - 1) / QT : 0;
    const unsigned int n_steps = per_head * group;

    load_rows_async<BWD_ROWS, D, BWD_THREADS>(Ks, [&](int r) -> const bf16* {
        return j0 + r < a.seq ? qkv + (row0 + j0 + r) * width + koff : nullptr;
    }, qkv);
    load_rows_async<BWD_ROWS, D, BWD_THREADS>(Vs, [&](int r) -> const bf16* {
        return j0 + r < a.seq ? qkv + (row0 + j0 + r) * width + voff : nullptr;
    }, qkv);
    auto load_q = [&](unsigned int step) {
        const unsigned int qh = kvh * group + step / per_head;
        const unsigned int qt0 = q_first + (step % per_head) * QT, buf = step & 1;
        load_rows_async<QT, D, BWD_THREADS>(Qs + buf * QT * LD, [&](int r) -> const bf16* {
            return qt0 + r < a.seq ? qkv + (row0 + qt0 + r) * width + (unsigned long long)qh * D
                                   : nullptr;
        }, qkv);
        load_rows_async<QT, D, BWD_THREADS>(Os + buf * QT * LD, [&](int r) -> const bf16* {
            return qt0 + r < a.seq ? dout + (row0 + qt0 + r) * nh * D + (unsigned long long)qh * D
                                   : nullptr;
        }, qkv);
    };
    if (n_steps > 0) load_q(0);
    cp_async_commit();

    const float scale2 = a.scale * 1.4426950408889634f;
    const unsigned int j_lo = j0 + warp * 16 + g, j_hi = j_lo + 8;  // this lane's key rows
    float dk[DT][4], dv[DT][4];
    zero_acc(dk);
    zero_acc(dv);
    const bf16* krow = a_frag_row(Ks + warp * 16 * LD, LD);
    const bf16* vrow = a_frag_row(Vs + warp * 16 * LD, LD);

    for (unsigned int step = 0; step < n_steps; step++) {
        if (step + 1 < n_steps) load_q(step + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const unsigned int qh = kvh * group + step / per_head;
        const unsigned int qt0 = q_first + (step % per_head) * QT;
        const bf16* Qt = Qs + (step & 1) * QT * LD;
        const bf16* Ot = Os + (step & 1) * QT * LD;

        // S^T = K Q^T and dP^T = V dout^T: rows are this warp's keys, columns the QT queries.
        float s[NT][4], dp[NT][4];
        zero_acc(s);
        zero_acc(dp);
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            u32 f[4];
            ldmatrix_x4(f, krow + kc * 16);
            mma_abt_chunk(s, f, Qt, LD, kc * 16);
            ldmatrix_x4(f, vrow + kc * 16);
            mma_abt_chunk(dp, f, Ot, LD, kc * 16);
        }
        // Every key of the block sees every query of the step: past the diagonal, inside the
        // sequence, keys inside the length.
        const bool masked = qt0 < j0 + BWD_ROWS - 1 || qt0 + QT > a.seq || j0 + BWD_ROWS > len;
        float pt[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const unsigned int t = qt0 + 8 * n + 2 * tq + c;
                const bool in_seq = t < a.seq;
                const unsigned long long i = (row0 + (in_seq ? t : 0)) * nh + qh;
                const float l2 = ptr<const float>(a.lse)[i] * 1.4426950408889634f;
                const float dl = ptr<const float>(a.delta)[i];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int e = 2 * r + c;
                    const unsigned int j = r ? j_hi : j_lo;
                    const bool vis = !masked || (in_seq && key_visible(j, t, 0, len));
                    const float p = vis ? exp2f(s[n][e] * scale2 - l2) : 0.0f;
                    pt[n][e] = p;
                    s[n][e] = p * (dp[n][e] - dl);  // dS^T
                }
            }
        }
        mma_pv(dv, pt, Ot, LD);  // dV += P^T dout
        mma_pv(dk, s, Qt, LD);   // dK += dS^T Q
        __syncthreads();
    }
    cp_async_wait<0>();  // with no step, the K and V copies are still unwaited

    bf16* dqkv = ptr<bf16>(a.dqkv);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const unsigned int j = r ? j_hi : j_lo;
        if (j >= a.seq) continue;
        u32* ko = reinterpret_cast<u32*>(dqkv + (row0 + j) * width + koff);
        u32* vo = reinterpret_cast<u32*>(dqkv + (row0 + j) * width + voff);
#pragma unroll
        for (int i = 0; i < DT; i++) {
            ko[i * 4 + tq] = pack_bf16x2(dk[i][2 * r] * a.scale, dk[i][2 * r + 1] * a.scale);
            vo[i * 4 + tq] = pack_bf16x2(dv[i][2 * r], dv[i][2 * r + 1]);
        }
    }
}

// One kernel pair per supported head_dim; the dkv kernel steps 64 queries at a time up to
// head_dim 64 and 32 above (register budget: dK and dV stay in registers).
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dq_mma_d16_bf16(const AttnBwdArgs args) {
    attn_bwd_dq_mma_impl<16>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dq_mma_d32_bf16(const AttnBwdArgs args) {
    attn_bwd_dq_mma_impl<32>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dq_mma_d64_bf16(const AttnBwdArgs args) {
    attn_bwd_dq_mma_impl<64>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dq_mma_d80_bf16(const AttnBwdArgs args) {
    attn_bwd_dq_mma_impl<80>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dq_mma_d96_bf16(const AttnBwdArgs args) {
    attn_bwd_dq_mma_impl<96>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dq_mma_d128_bf16(const AttnBwdArgs args) {
    attn_bwd_dq_mma_impl<128>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dkv_mma_d16_bf16(const AttnBwdArgs args) {
    attn_bwd_dkv_mma_impl<16, 64>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dkv_mma_d32_bf16(const AttnBwdArgs args) {
    attn_bwd_dkv_mma_impl<32, 64>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dkv_mma_d64_bf16(const AttnBwdArgs args) {
    attn_bwd_dkv_mma_impl<64, 64>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dkv_mma_d80_bf16(const AttnBwdArgs args) {
    attn_bwd_dkv_mma_impl<80, 32>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dkv_mma_d96_bf16(const AttnBwdArgs args) {
    attn_bwd_dkv_mma_impl<96, 32>(args);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) attn_bwd_dkv_mma_d128_bf16(const AttnBwdArgs args) {
    attn_bwd_dkv_mma_impl<128, 32>(args);
}
