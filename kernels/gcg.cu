// GCG ops: one-hot-gradient top-k per position, candidate sampling, and the per-candidate
// loss reduction with arg-min. Top-k and sampling are exact integer procedures, so the CPU
// reference (src/backend/cpu/gcg.rs) reproduces them bit for bit.
#include "common.cuh"

#define TOPK_THREADS 512
#define TOPK_MAX 256
#define KEY_NAN 0xFFFFFFFEu
#define KEY_FORBIDDEN 0xFFFFFFFFu

// Order-preserving map of a float to u32 (ascending floats -> ascending keys); every NaN maps
// past +inf, and forbidden ids past that, so they are chosen last (never, given enough ids).
__device__ __forceinline__ unsigned int sort_key(float v) {
    if (v != v) return KEY_NAN;
    const unsigned int u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <typename T>
__device__ __forceinline__ unsigned int topk_key(const TopkArgs& a, const T* g, unsigned int i) {
    const unsigned int* forbid = ptr<const unsigned int>(a.forbid);
    if (forbid && (forbid[i >> 5] >> (i & 31)) & 1u) return KEY_FORBIDDEN;
    return sort_key(ld(g, i));
}

// The k smallest (key, id) pairs of a row, sorted. Radix select finds the k-th smallest key
// (4 passes of 8-bit histograms); a collection pass takes every key below it, plus the
// lowest-id keys equal to it (an ordered block scan); a bitonic sort orders the k pairs.
// Launch: grid rows, block 512.
template <typename T>
__device__ void topk_impl(const TopkArgs a) {
    __shared__ unsigned int hist[256];
    __shared__ unsigned long long sel[TOPK_MAX];
    __shared__ unsigned int warp_tot[TOPK_THREADS / 32];
    __shared__ unsigned int s_prefix;
    __shared__ unsigned int s_remaining;
    __shared__ unsigned int s_lt;
    __shared__ unsigned int s_eq;
    const unsigned int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const T* g = ptr<const T>(a.grad) + (unsigned long long)blockIdx.x * a.ld;

    unsigned int prefix = 0, mask = 0;
    if (tid == 0) s_remaining = a.k;
    for (int pass = 0; pass < 4; pass++) {
        const unsigned int shift = 24 - 8 * pass;
        for (unsigned int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (unsigned int i = tid; i < a.vocab; i += blockDim.x) {
            const unsigned int key = topk_key(a, g, i);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            unsigned int cum = 0, d = 0;
            while (cum + hist[d] < s_remaining) cum += hist[d++];
            s_remaining -= cum;
            s_prefix = prefix | (d << shift);
        }
        __syncthreads();
        prefix = s_prefix;
        mask |= 255u << shift;
    }
    // prefix is now the k-th smallest key; s_remaining of the keys equal to it are taken.
    const unsigned int thr = prefix, need_eq = s_remaining;
    const unsigned int n_lt = a.k - need_eq;
    if (tid == 0) {
        s_lt = 0;
        s_eq = 0;
    }
    __syncthreads();
    for (unsigned int base = 0; base < a.vocab; base += blockDim.x) {
        const unsigned int i = base + tid;
        const unsigned int key = i < a.vocab ? topk_key(a, g, i) : KEY_FORBIDDEN;
        if (key < thr) sel[atomicAdd(&s_lt, 1u)] = ((unsigned long long)key << 32) | i;
        const bool eq = i < a.vocab && key == thr;
        const unsigned int ballot = __ballot_sync(FULL_MASK, eq);
        if (lane == 0) warp_tot[warp] = __popc(ballot);
        __syncthreads();
        unsigned int before = s_eq;
        for (unsigned int w = 0; w < warp; w++) before += warp_tot[w];
        const unsigned int rank = before + __popc(ballot & ((1u << lane) - 1u));
        if (eq && rank < need_eq) sel[n_lt + rank] = ((unsigned long long)key << 32) | i;
        __syncthreads();
        if (tid == 0) {
            unsigned int tot = 0;
            for (unsigned int w = 0; w < blockDim.x / 32; w++) tot += warp_tot[w];
            s_eq += tot;
        }
        __syncthreads();
    }
    // Bitonic sort of the k pairs, padded to a power of two with the largest value.
    unsigned int n = 1;
    while (n < a.k) n <<= 1;
    for (unsigned int i = a.k + tid; i < n; i += blockDim.x) sel[i] = ~0ull;
    for (unsigned int size = 2; size <= n; size <<= 1) {
        for (unsigned int stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            for (unsigned int i = tid; i < n; i += blockDim.x) {
                const unsigned int j = i ^ stride;
                if (j > i) {
                    const bool up = (i & size) == 0;
                    const unsigned long long x = sel[i], y = sel[j];
                    if ((x > y) == up) {
                        sel[i] = y;
                        sel[j] = x;
                    }
                }
            }
        }
    }
    __syncthreads();
    unsigned int* out = ptr<unsigned int>(a.out) + (unsigned long long)blockIdx.x * a.k;
    for (unsigned int i = tid; i < a.k; i += blockDim.x) out[i] = (unsigned int)sel[i];
}
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) topk_f32(const TopkArgs args) {
    topk_impl<float>(args);
}
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) topk_bf16(const TopkArgs args) {
    topk_impl<bf16>(args);
}

// Keyed pseudo-random permutation of [0, n): a 4-round balanced Feistel network on the
// smallest even number of bits covering n, with cycle walking back into range. Sampling the
// pairs perm(0), perm(1), ... draws without replacement, and every candidate is computed
// independently (no shared state, no sort).
__device__ __forceinline__ unsigned int feistel_perm(unsigned int i, unsigned int n,
                                                     const unsigned int (&key)[4]) {
    unsigned int bits = 2;
    while (bits < 32 && (1ull << bits) < n) bits += 2;
    const unsigned int half = bits / 2;
    const unsigned int mask = (1u << half) - 1u;
    unsigned int x = i;
    do {
        unsigned int l = x >> half, r = x & mask;
        for (int round = 0; round < 4; round++) {
            const unsigned int nl = r;
            r = l ^ (mix32(r ^ key[round]) & mask);
            l = nl;
        }
        x = (l << half) | r;
    } while (x >= n);
    return x;
}

// Candidate c = current tokens with the swap at pool index perm(c) (position j / k, token
// topk[position, j % k]). Launch: grid ceil(cands * positions / 256), block 256.
extern "C" __global__ void gcg_sample(const SampleArgs args) {
    const unsigned long long e = blockIdx.x * 256ull + threadIdx.x;
    if (e >= (unsigned long long)args.cands * args.positions) return;
    const unsigned int c = e / args.positions, p = e % args.positions;
    unsigned int key[4];
    for (unsigned int r = 0; r < 4; r++)
        key[r] = mix32((unsigned int)args.seed ^
                       mix32((unsigned int)(args.seed >> 32) ^
                             mix32((unsigned int)args.counter ^
                                   mix32((unsigned int)(args.counter >> 32) ^
                                         mix32(r + 0x9E3779B9u)))));
    const unsigned int j = feistel_perm(c, args.positions * args.k, key);
    const unsigned int sp = j / args.k;
    const unsigned int st_tok = ptr<const unsigned int>(args.topk)[j];
    const unsigned int cur = ptr<const unsigned int>(args.current)[p];
    ptr<unsigned int>(args.tokens)[e] = p == sp ? st_tok : cur;
    if (p == 0) {
        ptr<unsigned int>(args.pos)[c] = sp;
        ptr<unsigned int>(args.tok)[c] = st_tok;
    }
}

// Candidate losses (row losses weighted by scale, summed in order) and their arg-min.
// Launch: grid 1, block 256.
extern "C" __global__ void cand_loss_argmin(const CandArgs args) {
    __shared__ float bv[256];
    __shared__ unsigned int bi[256];
    const float* rl = ptr<const float>(args.row_loss);
    const float* sc = ptr<const float>(args.scale);
    const unsigned int* off = ptr<const unsigned int>(args.offsets);
    float best = INFINITY;
    unsigned int best_i = 0xFFFFFFFFu;
    for (unsigned int c = threadIdx.x; c < args.cands; c += blockDim.x) {
        float s = 0.0f;
        for (unsigned int j = off[c]; j < off[c + 1]; j++) s += rl[j] * sc[j];
        ptr<float>(args.loss)[c] = s;
        const float v = s != s ? INFINITY : s;
        if (v < best || best_i == 0xFFFFFFFFu) {  // c only grows: first hit wins ties
            best = v;
            best_i = c;
        }
    }
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = best_i;
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        __syncthreads();
        if (threadIdx.x < stride) {
            const float ov = bv[threadIdx.x + stride];
            const unsigned int oi = bi[threadIdx.x + stride];
            if (ov < bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
                bv[threadIdx.x] = ov;
                bi[threadIdx.x] = oi;
            }
        }
    }
    if (threadIdx.x == 0) {
        ptr<unsigned int>(args.best)[0] = bi[0];
        ptr<unsigned int>(args.best)[1] = __float_as_uint(bv[0]);
    }
}
