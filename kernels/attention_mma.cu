// Attention forward on tensor cores (bf16 storage, head_dim a multiple of 16 up to 128):
// the same function as attn_fwd in attention.cu (causal + right padding, GQA, a shared
// prefix every query sees in full; out = softmax(q k^T * scale) v and the row's natural-log
// sum-exp, a query that sees no key gives 0 and lse 0), FlashAttention-2 style.
//
// Block: 4 warps, 64 queries (16 per warp) of one (sequence, head); keys in tiles of 64.
// Per tile: K and V land in shared memory by cp.async, double-buffered so the next tile
// loads while this one computes; S = Q K^T (m16n8k16 MMAs, Q fragments held in registers
// for the whole block), an online softmax on the S fragments in registers (base 2, the
// scale folded into one multiply), P rounded to bf16 straight from the S accumulators into
// A fragments, O += P V (V read with ldmatrix.trans). Masking runs only on tiles that cross
// the causal diagonal or the end of the keys.
// Launch: grid (ceil(seq / 64), heads, batch), block 128, dynamic shared memory
// attn_mma_smem_bytes(D) = 5 * 64 * (D + 8) * 2 bytes (Q, 2 x K, 2 x V; rows padded by 16
// bytes so ldmatrix's eight row reads hit distinct banks).
#include "mma.cuh"

#define MMA_BQ 64
#define MMA_BKV 64
#define MMA_THREADS 128

extern __shared__ __align__(16) unsigned char attn_mma_smem[];

template <int D>
__device__ void attn_fwd_mma_impl(const AttnFwdArgs a) {
    constexpr int LD = D + 8;
    constexpr int KC = D / 16;  // k-chunks of the head dimension (Q K^T)
    constexpr int DT = D / 8;   // n-tiles of the head dimension (P V)
    const unsigned int nh = a.heads, nkv = a.kv_heads;
    const unsigned long long width = (unsigned long long)(nh + 2 * nkv) * D;
    // Longest (latest) query blocks first: under the causal mask they have the most keys.
    const unsigned int qb = gridDim.x - 1 - blockIdx.x;
    const unsigned int b = blockIdx.z, h = blockIdx.y, t0 = qb * MMA_BQ;
    const unsigned int kvh = h / (nh / nkv);
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int g = lane >> 2, tq = lane & 3;
    const unsigned int len = ptr<const unsigned int>(a.lens)[b];
    const unsigned int P = a.prefix_len;
    const bf16* qkv = ptr<const bf16>(a.qkv);
    const bf16* pre = a.prefix ? ptr<const bf16>(a.prefix) : qkv;
    const unsigned long long seq_row0 = (unsigned long long)b * a.seq;

    bf16* Qs = reinterpret_cast<bf16*>(attn_mma_smem);
    bf16* Ks = Qs + MMA_BQ * LD;       // [2][64][LD]
    bf16* Vs = Ks + 2 * MMA_BKV * LD;  // [2][64][LD]

    const unsigned int t_last = min(t0 + MMA_BQ, a.seq) - 1;
    const unsigned int n_keys = P + min(t_last + 1, len);
    const unsigned int n_tiles = (n_keys + MMA_BKV - 1) / MMA_BKV;
    // Keys below this index are visible to every query of the block.
    const unsigned int all_see = P + min(t0 + 1, len);
    const unsigned long long koff = (unsigned long long)(nh + kvh) * D;
    const unsigned long long voff = (unsigned long long)(nh + nkv + kvh) * D;

    auto kv_row = [&](unsigned int jj, unsigned long long off) -> const bf16* {
        if (jj >= n_keys) return nullptr;
        return jj < P ? pre + (unsigned long long)jj * width + off
                      : qkv + (seq_row0 + (jj - P)) * width + off;
    };
    auto load_kv = [&](unsigned int tile) {
        const unsigned int k0 = tile * MMA_BKV, buf = tile & 1;
        load_rows_async<MMA_BKV, D, MMA_THREADS>(Ks + buf * MMA_BKV * LD, [&](int r) { return kv_row(k0 + r, koff); }, qkv);
        load_rows_async<MMA_BKV, D, MMA_THREADS>(Vs + buf * MMA_BKV * LD, [&](int r) { return kv_row(k0 + r, voff); }, qkv);
    };

    load_rows_async<MMA_BQ, D, MMA_THREADS>(Qs, [&](int r) -> const bf16* {
        const unsigned int t = t0 + r;
        return t < a.seq ? qkv + (seq_row0 + t) * width + (unsigned long long)h * D : nullptr;
    }, qkv);
    if (n_tiles > 0) load_kv(0);
    cp_async_commit();

    const float scale2 = a.scale * 1.4426950408889634f;  // exp(x) = exp2(x log2 e)
    float m[2] = {-INFINITY, -INFINITY};                 // running max of rows g, g + 8 (base 2)
    float l[2] = {0.0f, 0.0f};                           // this lane's part of the row sums
    float o[DT][4];
    zero_acc(o);
    u32 qf[KC][4];
    const unsigned int r_lo = t0 + warp * 16 + g, r_hi = r_lo + 8;  // this lane's query rows

    for (unsigned int tile = 0; tile < n_tiles || tile == 0; tile++) {
        if (tile + 1 < n_tiles) load_kv(tile + 1);
        cp_async_commit();
        cp_async_wait<1>();  // everything but the newest group: Q and this tile
        __syncthreads();
        if (tile == 0) {
            // A fragments of this warp's 16 query rows: matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15).
            const bf16* qrow = a_frag_row(Qs + warp * 16 * LD, LD);
#pragma unroll
            for (int kc = 0; kc < KC; kc++) ldmatrix_x4(qf[kc], qrow + kc * 16);
            if (n_tiles == 0) break;
        }
        const unsigned int k0 = tile * MMA_BKV;
        const bf16* Kt = Ks + (tile & 1) * MMA_BKV * LD;
        const bf16* Vt = Vs + (tile & 1) * MMA_BKV * LD;

        // S = Q K^T: 8 n-tiles of 8 keys.
        float s[8][4];
        zero_acc(s);
#pragma unroll
        for (int kc = 0; kc < KC; kc++) mma_abt_chunk(s, qf[kc], Kt, LD, kc * 16);

        // Scale, mask, online softmax. Lane holds keys k0 + 8 n + 2 tq + {0, 1} of rows r_lo, r_hi.
        const bool masked = k0 + MMA_BKV > all_see;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[n][e] * scale2;
                if (masked) {
                    const unsigned int jj = k0 + 8 * n + 2 * tq + (e & 1);
                    const unsigned int t = (e < 2) ? r_lo : r_hi;
                    const bool vis = jj < n_keys && (jj < P || (jj - P <= t && jj - P < len));
                    v = vis ? v : -INFINITY;
                }
                s[n][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
            const float m_new = fmaxf(m[r], mx[r]);
            // m_new = -inf: no key visible to this row yet; exp2(-inf - -inf) would be NaN.
            corr[r] = m_new == -INFINITY ? 1.0f : exp2f(m[r] - m_new);
            m[r] = m_new;
            l[r] *= corr[r];
        }
#pragma unroll
        for (int i = 0; i < DT; i++) {
            o[i][0] *= corr[0];
            o[i][1] *= corr[0];
            o[i][2] *= corr[1];
            o[i][3] *= corr[1];
        }
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float mr = m[e >> 1];
                const float p = mr == -INFINITY ? 0.0f : exp2f(s[n][e] - mr);
                s[n][e] = p;
                l[e >> 1] += p;
            }
        }

        mma_pv(o, s, Vt, LD);  // O += P V
        __syncthreads();  // this buffer is refilled by the load two tiles on
    }
    cp_async_wait<0>();

    // Row sums across the four lanes of a row, then out = O / l and lse = ln(sum exp).
    bf16* out = ptr<bf16>(a.out);
    float* lse = ptr<float>(a.lse);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 2);
        const unsigned int t = r ? r_hi : r_lo;
        if (t >= a.seq) continue;
        const unsigned long long row = seq_row0 + t;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        u32* orow = reinterpret_cast<u32*>(out + row * nh * D + (unsigned long long)h * D);
#pragma unroll
        for (int i = 0; i < DT; i++) {
            orow[(i * 8 + 2 * tq) / 2] = pack_bf16x2(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
        }
        if (tq == 0) lse[row * nh + h] = l[r] > 0.0f ? (m[r] + log2f(l[r])) * 0.6931471805599453f : 0.0f;
    }
}

// One kernel per supported head_dim (the host picks attn_fwd_mma_d{D}_bf16).
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d16_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<16>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d32_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<32>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d64_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<64>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d80_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<80>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d96_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<96>(args);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_fwd_mma_d128_bf16(const AttnFwdArgs args) {
    attn_fwd_mma_impl<128>(args);
}
