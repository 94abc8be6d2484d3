/* Argument structs of every kernel: the one definition shared by CUDA and Rust.
 *
 * Every kernel is `extern "C" __global__ void NAME(const XxxArgs args)` and takes exactly one
 * of these structs by value. Rust gets the same structs from bindgen (feature `cuda`; the
 * committed copy is src/backend/gpu/args.rs, checked against a fresh bindgen run).
 *
 * Rules that keep the two sides trivially identical:
 * - plain C, no includes (bindgen runs on this file alone);
 * - device pointers are `unsigned long long` addresses (0 = absent);
 * - 8-byte fields first, then 4-byte fields, padded to a multiple of 8 bytes with an
 *   explicit `_pad` field, so no struct has implicit padding and its bytes can be copied
 *   verbatim into a launch.
 * Element types are named in the comments: T = the kernel's storage dtype (float or
 * __nv_bfloat16, from the `_f32` / `_bf16` name suffix), f32 = always float, u32 = unsigned.
 */
#ifndef ARMSRACE_ARGS_H
#define ARMSRACE_ARGS_H

/* Elementwise over n elements: out = a + b (add), out += a (add_assign), out = a (copy). */
typedef struct EwArgs {
    unsigned long long out; /* T[n] */
    unsigned long long a;   /* T[n] */
    unsigned long long b;   /* T[n] */
    unsigned long long n;
} EwArgs;

/* out[r, :] = src[idx[r], :] for r < rows (embedding lookup and gather_rows). */
typedef struct GatherArgs {
    unsigned long long out; /* T[rows, dim] */
    unsigned long long src; /* T[?, dim] */
    unsigned long long idx; /* u32[rows] */
    unsigned int rows;
    unsigned int dim;
} GatherArgs;

/* Grouped scatter-add without atomics: for group g, dst[dst_row[g], :] += sum of
 * src[order[j], :] for j in offsets[g]..offsets[g+1] (summed in that order, in f32).
 * The host groups repeated destination rows, so each dst row has one writer. */
typedef struct ScatterArgs {
    unsigned long long dst;     /* T[?, dim] */
    unsigned long long src;     /* T[?, dim] */
    unsigned long long dst_row; /* u32[groups] */
    unsigned long long offsets; /* u32[groups + 1] */
    unsigned long long order;   /* u32[offsets[groups]] */
    unsigned int groups;
    unsigned int dim;
} ScatterArgs;

/* Column sums in two deterministic stages.
 * colsum_partial: partial[c, j] = sum of src[r, j] for r in chunk c (rows_per_chunk rows).
 * colsum_finish:  dst[j] += sum over c < chunks of partial[c, j] (partial is f32). */
typedef struct ColSumArgs {
    unsigned long long dst;     /* T[cols] */
    unsigned long long src;     /* T[rows, cols] */
    unsigned long long partial; /* f32[chunks, cols] */
    unsigned int rows;
    unsigned int cols;
    unsigned int rows_per_chunk;
    unsigned int chunks;
} ColSumArgs;

/* LayerNorm (rms = 0) or RMSNorm (rms = 1) forward over rows of length dim.
 * out = (x - mean) * rstd * w (+ b); saves mean (0 for RMSNorm) and rstd per row. */
typedef struct NormFwdArgs {
    unsigned long long out;  /* T[rows, dim] */
    unsigned long long mean; /* f32[rows] */
    unsigned long long rstd; /* f32[rows] */
    unsigned long long x;    /* T[rows, dim] */
    unsigned long long w;    /* T[dim] */
    unsigned long long b;    /* T[dim] or 0 */
    unsigned int rows;
    unsigned int dim;
    float eps;
    unsigned int rms;
} NormFwdArgs;

/* Norm backward. norm_bwd_dx: dx += d/dx (one block per row).
 * norm_bwd_dwdb: partial_w[c, j] = sum_r dout[r,j] * xhat[r,j], partial_b[c, j] = sum_r
 * dout[r,j] over the rows of chunk c; colsum_finish then adds them into dw and db. */
typedef struct NormBwdArgs {
    unsigned long long dx;        /* T[rows, dim] */
    unsigned long long dout;      /* T[rows, dim] */
    unsigned long long x;         /* T[rows, dim] */
    unsigned long long mean;      /* f32[rows] */
    unsigned long long rstd;      /* f32[rows] */
    unsigned long long w;         /* T[dim] */
    unsigned long long partial_w; /* f32[chunks, dim] */
    unsigned long long partial_b; /* f32[chunks, dim] or 0 */
    unsigned int rows;
    unsigned int dim;
    unsigned int rms;
    unsigned int rows_per_chunk;
} NormBwdArgs;

/* In-place rotate-half rotary on the q and k heads of qkv rows; angle = pos * inv_freq[i]
 * (inv_freq computed on the host exactly as the CPU backend does); inverse negates sin. */
typedef struct RotaryArgs {
    unsigned long long qkv;       /* T[rows, (heads + 2 kv_heads) head_dim] */
    unsigned long long positions; /* u32[rows] */
    unsigned long long inv_freq;  /* f32[rot_dims / 2] */
    unsigned int rows;
    unsigned int heads;
    unsigned int kv_heads;
    unsigned int head_dim;
    unsigned int rot_dims;
    unsigned int inverse;
} RotaryArgs;

/* Causal attention over [prefix ++ new] keys with right padding (lens) and GQA.
 * Query t of sequence b sees all prefix keys and new keys j <= t with j < lens[b]. */
typedef struct AttnFwdArgs {
    unsigned long long out;    /* T[batch * seq, heads * head_dim] */
    unsigned long long lse;    /* f32[batch * seq, heads] */
    unsigned long long qkv;    /* T[batch * seq, qkv_dim] */
    unsigned long long prefix; /* T[prefix_len, qkv_dim] or 0 */
    unsigned long long lens;   /* u32[batch] */
    unsigned int batch;
    unsigned int seq;
    unsigned int heads;
    unsigned int kv_heads;
    unsigned int head_dim;
    unsigned int prefix_len;
    float scale;
    unsigned int _pad;
} AttnFwdArgs;

/* Attention backward: attn_bwd_delta (delta = rowsum(dout * out)), attn_bwd_dq (q part of
 * dqkv, reading the prefix's keys too) and attn_bwd_dkv (k and v parts of the new rows; the
 * prefix gets no gradient); each part overwritten. */
typedef struct AttnBwdArgs {
    unsigned long long dqkv;   /* T[batch * seq, qkv_dim] */
    unsigned long long dout;   /* T[batch * seq, heads * head_dim] */
    unsigned long long qkv;    /* T[batch * seq, qkv_dim] */
    unsigned long long out;    /* T[batch * seq, heads * head_dim] */
    unsigned long long lse;    /* f32[batch * seq, heads] */
    unsigned long long delta;  /* f32[batch * seq, heads] */
    unsigned long long lens;   /* u32[batch] */
    unsigned long long prefix; /* T[prefix_len, qkv_dim] or 0 */
    unsigned int batch;
    unsigned int seq;
    unsigned int heads;
    unsigned int kv_heads;
    unsigned int head_dim;
    float scale;
    unsigned int prefix_len;
    unsigned int _pad;
} AttnBwdArgs;

/* MLP activations. GELU (exact / tanh): out[i] = f(u[i]) for i < n. SwiGLU: u is
 * [rows, 2 inter] gate first, out is [rows, inter], n = rows * inter. Backward kernels
 * write du (overwritten) from dout and the saved u. */
typedef struct ActArgs {
    unsigned long long out;  /* fwd: T[n]; bwd: du, T[n] or T[rows, 2 inter] */
    unsigned long long u;    /* T */
    unsigned long long dout; /* T[n], bwd only */
    unsigned long long n;
    unsigned int inter;
    unsigned int _pad;
} ActArgs;

/* Row softmax cross-entropy: losses[r] = lse - logits[r, t]; dlogits = (softmax - onehot)
 * * scale[r]. One block per row. */
typedef struct CeArgs {
    unsigned long long dlogits; /* T[rows, classes] */
    unsigned long long logits;  /* T[rows, classes] */
    unsigned long long targets; /* u32[rows] */
    unsigned long long scale;   /* f32[rows] */
    unsigned long long losses;  /* f32[rows] */
    unsigned int rows;
    unsigned int classes;
} CeArgs;

/* LM-head cross-entropy over vocab chunks (logits never materialised beyond one chunk).
 * logits is one chunk [rows, cols] with row stride ld, covering vocab columns col0.. .
 * ce_chunk_stats: online (max, sum exp) update of m, s per row; grabs the target's logit.
 * ce_chunk_grad:  logits chunk <- (exp(logit - lse) - onehot) * scale[r], in place.
 * ce_finish:      lse = m + log s, losses = lse - target logit. */
typedef struct CeChunkArgs {
    unsigned long long logits;  /* T[rows, ld] */
    unsigned long long m;       /* f32[rows] */
    unsigned long long s;       /* f32[rows] */
    unsigned long long tgt;     /* f32[rows]: the target's logit */
    unsigned long long lse;     /* f32[rows] */
    unsigned long long losses;  /* f32[rows] */
    unsigned long long targets; /* u32[rows] */
    unsigned long long scale;   /* f32[rows] */
    unsigned int rows;
    unsigned int cols;
    unsigned int ld;
    unsigned int col0;
} CeChunkArgs;

/* C[m, n] = (accumulate ? C : 0) + op(A)[m, k] . op(B)[k, n] (+ bias[n]), all row-major.
 * op(A)[i, p] = trans_a ? a[p lda + i] : a[i lda + p]; op(B)[p, j] = trans_b ? b[j ldb + p]
 * : b[p ldb + j]. T storage, f32 accumulation. The fallback where cuBLASLt is absent. */
typedef struct GemmArgs {
    unsigned long long c;    /* T */
    unsigned long long a;    /* T */
    unsigned long long b;    /* T */
    unsigned long long bias; /* T[n] or 0 */
    unsigned int m;
    unsigned int n;
    unsigned int k;
    unsigned int lda;
    unsigned int ldb;
    unsigned int ldc;
    unsigned int trans_a;
    unsigned int trans_b;
    unsigned int accumulate;
    unsigned int _pad;
} GemmArgs;

/* Per row (one block each): the k ids with the smallest values of grad[r, :vocab], ordered
 * by (value, id), skipping ids whose bit is set in forbid (bit id%32 of word id/32).
 * NaN sorts after +inf. Requires k <= 256 and k <= the number of allowed ids. */
typedef struct TopkArgs {
    unsigned long long out;    /* u32[rows, k] */
    unsigned long long grad;   /* T[rows, ld] */
    unsigned long long forbid; /* u32[(vocab + 31) / 32] or 0 */
    unsigned int rows;
    unsigned int vocab;
    unsigned int ld;
    unsigned int k;
} TopkArgs;

/* GCG candidates: candidate i takes pair j = perm(i) of the positions x k pool (a keyed
 * Feistel permutation, so pairs are drawn without replacement), position p = j / k, token
 * topk[p, j % k]; tokens[i, :] = current with that one swap. */
typedef struct SampleArgs {
    unsigned long long tokens;  /* u32[cands, positions] */
    unsigned long long pos;     /* u32[cands] */
    unsigned long long tok;     /* u32[cands] */
    unsigned long long topk;    /* u32[positions, k] */
    unsigned long long current; /* u32[positions] */
    unsigned long long seed;
    unsigned long long counter;
    unsigned int positions;
    unsigned int k;
    unsigned int cands;
    unsigned int _pad;
} SampleArgs;

/* Per-candidate loss = sum of row_loss[j] * scale[j] for j in offsets[c]..offsets[c+1]
 * (in order), then the arg-min over candidates (NaN counts as +inf; ties: lowest index).
 * best = {index, f32 bits of the loss}. One block. */
typedef struct CandArgs {
    unsigned long long loss;     /* f32[cands] */
    unsigned long long best;     /* u32[2] */
    unsigned long long row_loss; /* f32[rows] */
    unsigned long long scale;    /* f32[rows] */
    unsigned long long offsets;  /* u32[cands + 1] */
    unsigned int cands;
    unsigned int _pad;
} CandArgs;

/* AdamW (torch semantics): p *= 1 - lr wd; m, v moments; p -= lr / bc1 * m / (sqrt(v) /
 * sqrt(bc2) + eps), with bc1 = 1 - beta1^t and bc2 = 1 - beta2^t from the host. */
typedef struct AdamwArgs {
    unsigned long long param; /* T[n] */
    unsigned long long grad;  /* T[n] */
    unsigned long long m;     /* f32[n] */
    unsigned long long v;     /* f32[n] */
    unsigned long long n;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float bc1;
    float bc2;
    unsigned int _pad;
} AdamwArgs;

/* Adafactor (transformers' algorithm, beta1 = None, no relative step or parameter scale).
 * A matrix [rows, cols] keeps factored row and col second moments; a vector (rows = 1,
 * factored = 0) keeps v. Kernels, in order: adafactor_row (row state, one block per row),
 * adafactor_col_partial + adafactor_col_finish (col state), adafactor_stats (row-state mean
 * into scalars[0], one block), adafactor_sumsq_partial (partial sums of update^2 per block),
 * adafactor_apply (rms from the partials, clip, weight decay, p -= lr * update).
 * scalars: f32[2] scratch. partial: f32[max(chunks * cols, blocks)] scratch. */
typedef struct AdafactorArgs {
    unsigned long long param;   /* T[rows, cols] */
    unsigned long long grad;    /* T[rows, cols] */
    unsigned long long row;     /* f32[rows]  (factored) */
    unsigned long long col;     /* f32[cols]  (factored) */
    unsigned long long v;       /* f32[cols]  (vector) */
    unsigned long long scalars; /* f32[2] */
    unsigned long long partial; /* f32 scratch */
    unsigned int rows;
    unsigned int cols;
    unsigned int factored;
    unsigned int rows_per_chunk;
    unsigned int chunks;
    unsigned int blocks;
    float beta2t;
    float eps1;
    float lr;
    float weight_decay;
    float clip;
    unsigned int _pad;
} AdafactorArgs;

/* Layout self-check: writes sizeof of every struct above, in declaration order, to out. */
typedef struct LayoutArgs {
    unsigned long long out; /* u32[count] */
} LayoutArgs;

#endif
