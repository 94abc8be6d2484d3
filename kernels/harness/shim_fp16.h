// __half and __nv_bfloat16 for the CPU execution harness (included by cuda_shim.h).
// Conversions follow the hardware: float -> bf16/f16 rounds to nearest even (cvt.rn), keeps
// subnormals, overflows to infinity, and turns every NaN into the canonical quiet NaN (0x7FFF),
// as cvt.rn.bf16.f32 / cvt.rn.f16.f32 and CUDA's own host fallback do. Arithmetic goes
// through float and rounds once, which is what the sm_80+ instructions compute in all but
// rare double-rounding corners (fma of values whose exact result needs more than 24 bits).
#pragma once

namespace armsrace_emu {

inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline unsigned short f32_to_bf16_rn(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
// mode 0: toward zero, 1: toward -inf, 2: toward +inf.
inline unsigned short f32_to_bf16_dir(float f, int mode) {
    const uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    uint32_t r = u >> 16;
    const bool inexact = (u & 0xffffu) != 0, neg = (u >> 31) != 0;
    if (inexact && ((mode == 1 && neg) || (mode == 2 && !neg))) r += 1;
    return (unsigned short)r;
}
inline float bf16_to_f32(unsigned short h) { return u2f((uint32_t)h << 16); }

inline unsigned short f32_to_f16_rn(float f) {
    uint32_t x = f2u(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return 0x7fffu;                      // NaN: canonical
    if (x >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520: inf
    if (x < 0x38800000u) {                                    // below 2^-14: subnormal or 0
        const uint32_t e = x >> 23;
        if (e < 102) return (unsigned short)sign;             // below 2^-25: 0
        const uint32_t m = (x & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (unsigned short)(sign | r);
    }
    uint32_t r = (x - 0x38000000u) >> 13;
    const uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (unsigned short)(sign | r);
}
inline float f16_to_f32(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return u2f(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        const float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return u2f(sign | ((e + 112) << 23) | (m << 13));
}

}  // namespace armsrace_emu

struct __half_raw {
    unsigned short x;
};
struct __nv_bfloat16_raw {
    unsigned short x;
};

// Shared body of the two 16-bit float types: storage, constructors and conversions.
#define ARMSRACE_EMU_F16_TYPE(T, RAW, FROM_F32, TO_F32)                                   \
    struct T {                                                                          \
        unsigned short __x;                                                             \
        T() = default;                                                                  \
        constexpr T(const RAW& r) : __x(r.x) {}                                         \
        T(float f) : __x(FROM_F32(f)) {}                                                \
        T(double f) : __x(FROM_F32((float)f)) {}                                        \
        T(short v) : __x(FROM_F32((float)v)) {}                                         \
        T(unsigned short v) : __x(FROM_F32((float)v)) {}                                \
        T(int v) : __x(FROM_F32((float)v)) {}                                           \
        T(unsigned int v) : __x(FROM_F32((float)v)) {}                                  \
        T(long v) : __x(FROM_F32((float)v)) {}                                          \
        T(unsigned long v) : __x(FROM_F32((float)v)) {}                                 \
        T(long long v) : __x(FROM_F32((float)v)) {}                                     \
        T(unsigned long long v) : __x(FROM_F32((float)v)) {}                            \
        T& operator=(const RAW& r) {                                                    \
            __x = r.x;                                                                  \
            return *this;                                                               \
        }                                                                               \
        T& operator=(float f) {                                                         \
            __x = FROM_F32(f);                                                          \
            return *this;                                                               \
        }                                                                               \
        T& operator=(double f) {                                                        \
            __x = FROM_F32((float)f);                                                   \
            return *this;                                                               \
        }                                                                               \
        template <class I, typename std::enable_if<std::is_integral<I>::value, int>::type = 0> \
        T& operator=(I v) {                                                             \
            __x = FROM_F32((float)v);                                                   \
            return *this;                                                               \
        }                                                                               \
        operator RAW() const { return RAW{__x}; }                                       \
        operator float() const { return TO_F32(__x); }                                  \
        explicit operator bool() const { return (__x & 0x7fffu) != 0; }                 \
        explicit operator int() const { return (int)TO_F32(__x); }                      \
        explicit operator unsigned int() const { return (unsigned int)TO_F32(__x); }    \
    };                                                                                  \
    inline T operator+(const T& a, const T& b) { return T((float)a + (float)b); }       \
    inline T operator-(const T& a, const T& b) { return T((float)a - (float)b); }       \
    inline T operator*(const T& a, const T& b) { return T((float)a * (float)b); }       \
    inline T operator/(const T& a, const T& b) { return T((float)a / (float)b); }       \
    inline T& operator+=(T& a, const T& b) { return a = a + b; }                        \
    inline T& operator-=(T& a, const T& b) { return a = a - b; }                        \
    inline T& operator*=(T& a, const T& b) { return a = a * b; }                        \
    inline T& operator/=(T& a, const T& b) { return a = a / b; }                        \
    inline T operator+(const T& a) { return a; }                                        \
    inline T operator-(const T& a) {                                                    \
        T r;                                                                            \
        r.__x = (unsigned short)(a.__x ^ 0x8000u);                                      \
        return r;                                                                       \
    }                                                                                   \
    inline bool operator==(const T& a, const T& b) { return (float)a == (float)b; }     \
    inline bool operator!=(const T& a, const T& b) { return (float)a != (float)b; }     \
    inline bool operator<(const T& a, const T& b) { return (float)a < (float)b; }       \
    inline bool operator>(const T& a, const T& b) { return (float)a > (float)b; }       \
    inline bool operator<=(const T& a, const T& b) { return (float)a <= (float)b; }     \
    inline bool operator>=(const T& a, const T& b) { return (float)a >= (float)b; }

ARMSRACE_EMU_F16_TYPE(__half, __half_raw, ::armsrace_emu::f32_to_f16_rn, ::armsrace_emu::f16_to_f32)
ARMSRACE_EMU_F16_TYPE(__nv_bfloat16, __nv_bfloat16_raw, ::armsrace_emu::f32_to_bf16_rn,
                      ::armsrace_emu::bf16_to_f32)
#undef ARMSRACE_EMU_F16_TYPE

typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

struct alignas(4) __half2 {
    __half x, y;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __half2 half2;
typedef __nv_bfloat162 nv_bfloat162;

// ---- conversions ----
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return ::armsrace_emu::f16_to_f32(h.__x); }
inline __half __double2half(double d) { return __half((float)d); }
inline __half __int2half_rn(int i) { return __half((float)i); }
inline int __half2int_rz(__half h) { return (int)__half2float(h); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline __half __short_as_half(short s) { return __half(__half_raw{(unsigned short)s}); }

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) {
    return __nv_bfloat16(__nv_bfloat16_raw{::armsrace_emu::f32_to_bf16_dir(f, 0)});
}
inline __nv_bfloat16 __float2bfloat16_rd(float f) {
    return __nv_bfloat16(__nv_bfloat16_raw{::armsrace_emu::f32_to_bf16_dir(f, 1)});
}
inline __nv_bfloat16 __float2bfloat16_ru(float f) {
    return __nv_bfloat16(__nv_bfloat16_raw{::armsrace_emu::f32_to_bf16_dir(f, 2)});
}
inline float __bfloat162float(__nv_bfloat16 h) { return ::armsrace_emu::bf16_to_f32(h.__x); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16((float)d); }
inline __nv_bfloat16 __int2bfloat16_rn(int i) { return __nv_bfloat16((float)i); }
inline int __bfloat162int_rz(__nv_bfloat16 h) { return (int)__bfloat162float(h); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    return __nv_bfloat16(__nv_bfloat16_raw{u});
}
inline __nv_bfloat16 __short_as_bfloat16(short s) {
    return __nv_bfloat16(__nv_bfloat16_raw{(unsigned short)s});
}
inline __half __bfloat162half(__nv_bfloat16 b) { return __half(__bfloat162float(b)); }

// ---- pairs ----
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline __nv_bfloat162 __float2bfloat162_rn(float a) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(a)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
    return float2{__bfloat162float(h.x), __bfloat162float(h.y)};
}
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat162{a, b};
}
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }

// ---- arithmetic intrinsics (both types) ----
#define ARMSRACE_EMU_F16_MATH(T, T2)                                                          \
    inline T __hadd(T a, T b) { return T((float)a + (float)b); }                            \
    inline T __hsub(T a, T b) { return T((float)a - (float)b); }                            \
    inline T __hmul(T a, T b) { return T((float)a * (float)b); }                            \
    inline T __hdiv(T a, T b) { return T((float)a / (float)b); }                            \
    inline T __hfma(T a, T b, T c) { return T(fmaf((float)a, (float)b, (float)c)); }        \
    inline T __hneg(T a) { return -a; }                                                     \
    inline T __habs(T a) {                                                                  \
        T r = a;                                                                            \
        r.__x &= 0x7fffu;                                                                   \
        return r;                                                                           \
    }                                                                                       \
    inline T __hmax(T a, T b) { return T(fmaxf((float)a, (float)b)); }                      \
    inline T __hmin(T a, T b) { return T(fminf((float)a, (float)b)); }                      \
    inline bool __heq(T a, T b) { return (float)a == (float)b; }                            \
    inline bool __hne(T a, T b) { return (float)a != (float)b; }                            \
    inline bool __hlt(T a, T b) { return (float)a < (float)b; }                             \
    inline bool __hle(T a, T b) { return (float)a <= (float)b; }                            \
    inline bool __hgt(T a, T b) { return (float)a > (float)b; }                             \
    inline bool __hge(T a, T b) { return (float)a >= (float)b; }                            \
    inline bool __hisnan(T a) { return (float)a != (float)a; }                              \
    inline T hexp(T a) { return T(expf((float)a)); }                                        \
    inline T hlog(T a) { return T(logf((float)a)); }                                        \
    inline T hsqrt(T a) { return T(sqrtf((float)a)); }                                      \
    inline T hrsqrt(T a) { return T(1.0f / sqrtf((float)a)); }                              \
    inline T2 __hadd2(T2 a, T2 b) { return T2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }        \
    inline T2 __hsub2(T2 a, T2 b) { return T2{__hsub(a.x, b.x), __hsub(a.y, b.y)}; }        \
    inline T2 __hmul2(T2 a, T2 b) { return T2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }        \
    inline T2 __hfma2(T2 a, T2 b, T2 c) {                                                   \
        return T2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};                            \
    }
ARMSRACE_EMU_F16_MATH(__half, __half2)
ARMSRACE_EMU_F16_MATH(__nv_bfloat16, __nv_bfloat162)
#undef ARMSRACE_EMU_F16_MATH
