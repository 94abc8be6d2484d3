// Rotary position embedding, rotate-half convention, on the first rot_dims dims of every q
// and k head of a fused qkv row (v untouched). In place; the inverse (backward) negates sin.
#include "common.cuh"

// Launch: grid rows, block 128; threads stride over (q and k heads) x rot_dims / 2 pairs.
template <typename T>
__device__ void rotary_impl(const RotaryArgs a) {
    const unsigned int r = blockIdx.x;
    if (r >= a.rows) return;
    const unsigned int half = a.rot_dims / 2;
    const unsigned int width = (a.heads + 2 * a.kv_heads) * a.head_dim;
    T* row = ptr<T>(a.qkv) + (unsigned long long)r * width;
    const float pos = (float)ptr<const unsigned int>(a.positions)[r];
    const float* inv_freq = ptr<const float>(a.inv_freq);
    const unsigned int pairs = (a.heads + a.kv_heads) * half;
    for (unsigned int t = threadIdx.x; t < pairs; t += blockDim.x) {
        const unsigned int h = t / half, i = t % half;
        const float ang = pos * inv_freq[i];
        float s = sinf(ang);
        const float c = cosf(ang);
        if (a.inverse) s = -s;
        T* x = row + h * a.head_dim;
        const float x1 = ld(x, i), x2 = ld(x, i + half);
        st(x, i, x1 * c - x2 * s);
        st(x, i + half, x2 * c + x1 * s);
    }
}
extern "C" __global__ void rotary_f32(const RotaryArgs args) { rotary_impl<float>(args); }
extern "C" __global__ void rotary_bf16(const RotaryArgs args) { rotary_impl<bf16>(args); }
