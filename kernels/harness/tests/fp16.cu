// bf16 / f16 conversions (round to nearest even, like cvt.rn). Launch: grid ceil(n / 128),
// block 128. harness_test_to_16: in f32 -> out u16 bf16 bits, aux u16 f16 bits.
// harness_test_from_16: in u16 bits -> out f32 [2 i] as bf16, [2 i + 1] as f16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "test_args.h"

extern "C" __global__ void harness_test_to_16(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n) return;
    const float v = p_<const float>(a.in)[i];
    p_<unsigned short>(a.out)[i] = __bfloat16_as_ushort(__float2bfloat16(v));
    p_<unsigned short>(a.aux)[i] = __half_as_ushort(__float2half(v));
}

extern "C" __global__ void harness_test_from_16(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n) return;
    const unsigned short b = p_<const unsigned short>(a.in)[i];
    p_<float>(a.out)[2 * i] = __bfloat162float(__ushort_as_bfloat16(b));
    p_<float>(a.out)[2 * i + 1] = __half2float(__ushort_as_half(b));
}

// bf16 arithmetic through the operators: out[i] = float(bf16(in[i]) * bf16(2) + bf16(1)).
extern "C" __global__ void harness_test_bf16_ops(const HtArgs a) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n) return;
    const __nv_bfloat16 x = __float2bfloat16(p_<const float>(a.in)[i]);
    const __nv_bfloat16 two = __float2bfloat16(2.0f), one = __float2bfloat16(1.0f);
    __nv_bfloat16 y = x * two + one;
    p_<float>(a.out)[i] = __bfloat162float(y);
}
