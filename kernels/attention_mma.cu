// Attention forward on tensor cores (bf16 storage, head_dim a multiple of 16 up to 128):
// the same function as attn_fwd in attention.cu (causal + right padding, GQA, a shared
// prefix every query sees in full; out = softmax(q k^T * scale) v and the row's natural-log
// sum-exp, a query that sees no key gives 0 and lse 0), FlashAttention-2 style.
//
// Block: 4 warps, each owning MT tiles of 16 queries (BQ = 64 MT queries of one (sequence,
// head)); keys in tiles of BKV. Per tile: K and V land in shared memory by cp.async,
// double-buffered so the next tile loads while this one computes; S = Q K^T (m16n8k16
// MMAs; with MT = 1 the Q fragments stay in registers for the whole block, with MT = 2 they
// are re-read from shared memory and every K and V fragment feeds two MMAs), an online
// softmax on the S fragments in registers (base 2, the scale folded into one multiply), P
// rounded to bf16 straight from the S accumulators into A fragments, O += P V (V read with
// ldmatrix.trans). Masking runs only on tiles that cross the causal diagonal or the end of
// the keys.
// Launch: grid (ceil(seq / BQ), heads, batch), block 128, dynamic shared memory
// (BQ + 4 BKV) * (D + 8) * 2 bytes (Q, 2 x K, 2 x V; rows padded by 16 bytes so ldmatrix's
// eight row reads hit distinct banks).
#include "mma.cuh"

#define MMA_THREADS 128

extern __shared__ __align__(16) unsigned char attn_mma_smem[];

template <int D, int MT, int BKV>
__device__ void attn_fwd_mma_impl(const AttnFwdArgs a) {
    constexpr int LD = D + 8;
    constexpr int KC = D / 16;   // k-chunks of the head dimension (Q K^T)
    constexpr int DT = D / 8;    // n-tiles of the head dimension (P V)
    constexpr int NT = BKV / 8;  // n-tiles of a key tile
    constexpr int BQ = 64 * MT;
    constexpr bool Q_IN_REGS = MT == 1;
    const unsigned int nh = a.heads, nkv = a.kv_heads;
    const unsigned long long width = (unsigned long long)(nh + 2 * nkv) * D;
    // Longest (latest) query blocks first: under the causal mask they have the most keys.
    const unsigned int qb = gridDim.x - 1 - blockIdx.x;
    const unsigned int b = blockIdx.z, h = blockIdx.y, t0 = qb * BQ;
    const unsigned int kvh = h / (nh / nkv);
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int g = lane >> 2, tq = lane & 3;
    const unsigned int len = ptr<const unsigned int>(a.lens)[b];
    const unsigned int P = a.prefix_len;
    const bf16* qkv = ptr<const bf16>(a.qkv);
    const bf16* pre = a.prefix ? ptr<const bf16>(a.prefix) : qkv;
    const unsigned long long seq_row0 = (unsigned long long)b * a.seq;

    bf16* Qs = reinterpret_cast<bf16*>(attn_mma_smem);
    bf16* Ks = Qs + BQ * LD;       // [2][BKV][LD]
    bf16* Vs = Ks + 2 * BKV * LD;  // [2][BKV][LD]

    const unsigned int t_last = min(t0 + BQ, a.seq) - 1;
    const unsigned int n_keys = P + min(t_last + 1, len);
    const unsigned int n_tiles = (n_keys + BKV - 1) / BKV;
    // Keys below this index are visible to every query of the block.
    const unsigned int all_see = P + min(t0 + 1, len);
    const unsigned long long koff = (unsigned long long)(nh + kvh) * D;
    const unsigned long long voff = (unsigned long long)(nh + nkv + kvh) * D;

    auto load_kv = [&](unsigned int tile) {
        const unsigned int buf = tile & 1;
        load_kv_async<BKV, D, MMA_THREADS>(Ks + buf * BKV * LD, Vs + buf * BKV * LD, pre,
                                           qkv + seq_row0 * width, tile * BKV, n_keys, P, width,
                                           koff, voff);
    };

    load_rows_async<BQ, D, MMA_THREADS>(Qs, [&](int r) -> const bf16* {
        const unsigned int t = t0 + r;
        return t < a.seq ? qkv + (seq_row0 + t) * width + (unsigned long long)h * D : nullptr;
    }, qkv);
    if (n_tiles > 0) load_kv(0);
    cp_async_commit();

    const float scale2 = a.scale * 1.4426950408889634f;  // exp(x) = exp2(x log2 e)
    // Per row tile m: running max of rows g, g + 8 (base 2, scaled) and this lane's part
    // of their sums.
    float m_run[MT][2], l[MT][2];
    float o[MT][DT][4];
#pragma unroll
    for (int m = 0; m < MT; m++) {
        m_run[m][0] = m_run[m][1] = -INFINITY;
        l[m][0] = l[m][1] = 0.0f;
        zero_acc(o[m]);
    }
    // This warp's query rows start here; tile m's rows g and g + 8 follow.
    const unsigned int w0 = warp * 16 * MT;
    const bf16* qrow = a_frag_row(Qs + w0 * LD, LD);
    u32 qf[Q_IN_REGS ? KC : 1][4];

    for (unsigned int tile = 0; tile < n_tiles || tile == 0; tile++) {
        if (tile + 1 < n_tiles) load_kv(tile + 1);
        cp_async_commit();
        cp_async_wait<1>();  // everything but the newest group: Q and this tile
        __syncthreads();
        if (tile == 0) {
            if constexpr (Q_IN_REGS) {
#pragma unroll
                for (int kc = 0; kc < KC; kc++) ldmatrix_x4(qf[kc], qrow + kc * 16);
            }
            if (n_tiles == 0) break;
        }
        const unsigned int k0 = tile * BKV;
        const bf16* Kt = Ks + (tile & 1) * BKV * LD;
        const bf16* Vt = Vs + (tile & 1) * BKV * LD;

        // S = Q K^T: NT n-tiles of 8 keys per row tile.
        float s[MT][NT][4];
#pragma unroll
        for (int m = 0; m < MT; m++) zero_acc(s[m]);
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            u32 af[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if constexpr (Q_IN_REGS) {
#pragma unroll
                    for (int i = 0; i < 4; i++) af[m][i] = qf[kc][i];
                } else {
                    ldmatrix_x4(af[m], qrow + m * 16 * LD + kc * 16);
                }
            }
            mma_abt_chunk_m(s, af, Kt, LD, kc * 16);
        }

        // Scale, mask, online softmax. Lane holds keys k0 + 8 n + 2 tq + {0, 1} of rows
        // t0 + w0 + 16 m + g (e < 2) and + 8 (e >= 2).
        const bool masked = k0 + BKV > all_see;
#pragma unroll
        for (int m = 0; m < MT; m++) {
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < NT; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float v = s[m][n][e] * scale2;
                    if (masked) {
                        const unsigned int jj = k0 + 8 * n + 2 * tq + (e & 1);
                        const unsigned int t = t0 + w0 + 16 * m + g + (e >> 1) * 8;
                        const bool vis = jj < n_keys && key_visible(jj, t, P, len);
                        v = vis ? v : -INFINITY;
                    }
                    s[m][n][e] = v;
                    mx[e >> 1] = fmaxf(mx[e >> 1], v);
                }
            }
            float corr[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
                const float m_new = fmaxf(m_run[m][r], mx[r]);
                // m_new = -inf: no key visible to this row yet; exp2(-inf - -inf) would be NaN.
                corr[r] = m_new == -INFINITY ? 1.0f : exp2f(m_run[m][r] - m_new);
                m_run[m][r] = m_new;
                l[m][r] *= corr[r];
            }
#pragma unroll
            for (int i = 0; i < DT; i++) {
                o[m][i][0] *= corr[0];
                o[m][i][1] *= corr[0];
                o[m][i][2] *= corr[1];
                o[m][i][3] *= corr[1];
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float mr = m_run[m][e >> 1];
                    const float p = mr == -INFINITY ? 0.0f : exp2f(s[m][n][e] - mr);
                    s[m][n][e] = p;
                    l[m][e >> 1] += p;
                }
            }
        }

        mma_pv_m(o, s, Vt, LD);  // O += P V
        __syncthreads();         // this buffer is refilled by the load two tiles on
    }
    cp_async_wait<0>();

    // Row sums across the four lanes of a row, then out = O / l and lse = ln(sum exp).
    bf16* out = ptr<bf16>(a.out);
    float* lse = ptr<float>(a.lse);
#pragma unroll
    for (int m = 0; m < MT; m++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float lr = l[m][r];
            lr += __shfl_xor_sync(FULL_MASK, lr, 1);
            lr += __shfl_xor_sync(FULL_MASK, lr, 2);
            const unsigned int t = t0 + w0 + 16 * m + g + 8 * r;
            if (t >= a.seq) continue;
            const unsigned long long row = seq_row0 + t;
            const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
            u32* orow = reinterpret_cast<u32*>(out + row * nh * D + (unsigned long long)h * D);
#pragma unroll
            for (int i = 0; i < DT; i++) {
                orow[i * 4 + tq] = pack_bf16x2(o[m][i][2 * r] * inv, o[m][i][2 * r + 1] * inv);
            }
            if (tq == 0) {
                lse[row * nh + h] = lr > 0.0f ? (m_run[m][r] + log2f(lr)) * 0.6931471805599453f : 0.0f;
            }
        }
    }
}

// One kernel per built head_dim and tile shape, attn_fwd_mma_d{D}_m{MT}_k{BKV}_bf16 (listed in
// ATTN_FWD_TILES, src/backend/gpu/backend.rs, which also picks the default per head_dim):
// MT = 1, BKV = 64 for every head_dim; head_dim 64 and 128 also in the shapes the GPU
// benchmark compares (`armsrace bench --device cuda`). (128, 2, 64) would spill registers.
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d16_m1_k64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<16, 1, 64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d32_m1_k64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<32, 1, 64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d64_m1_k64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<64, 1, 64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d80_m1_k64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<80, 1, 64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d96_m1_k64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<96, 1, 64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d128_m1_k64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<128, 1, 64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d64_m1_k32_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<64, 1, 32>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d64_m2_k64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<64, 2, 64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d64_m2_k32_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<64, 2, 32>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d128_m1_k32_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<128, 1, 32>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d128_m2_k32_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<128, 2, 32>(args);
}
