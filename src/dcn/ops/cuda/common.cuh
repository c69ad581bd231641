// Shared device helpers for dcn's CUDA kernels: index type, 16-bit float storage types,
// accumulation types, loads/stores and atomics.
//
// The kernels are compiled at run time by NVRTC (through CuPy) and, in the CPU test suite, by the
// host C++ compiler through tests/ops/cuda/shim/cuda_shim.h. This header therefore includes no CUDA
// headers (cuda_fp16.h / cuda_bf16.h are not always on NVRTC's include path in pip installs):
// float16 and bfloat16 are plain 16-bit storage types converted with a few integer operations, or
// with the hardware conversion instruction where the device has one.
#pragma once

namespace dcn {

// 64-bit indices everywhere: column buffers of large feature maps exceed 2^31 elements.
typedef long long index_t;

// IEEE binary16 and bfloat16 values, stored as their bit patterns (same layout as torch.half /
// torch.bfloat16 elements, so tensors' data pointers can be passed straight in).
struct half_t {
  unsigned short bits;
};
struct bfloat16_t {
  unsigned short bits;
};

// Arithmetic and accumulation type of a storage type: half types compute in float32.
template <typename T>
struct acc_type {
  typedef T type;
};
template <>
struct acc_type<half_t> {
  typedef float type;
};
template <>
struct acc_type<bfloat16_t> {
  typedef float type;
};

__device__ __forceinline__ unsigned int float_as_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  unsigned int u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
#endif
}

__device__ __forceinline__ float bits_as_float(unsigned int u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// binary16 -> float32 (exact).
__device__ __forceinline__ float half_to_float(unsigned short h) {
#ifdef __CUDA_ARCH__
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
  const unsigned int exponent = (h >> 10) & 0x1fu;
  const unsigned int mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
    const float magnitude = (float)mantissa * 5.9604644775390625e-08f;
    return bits_as_float(float_as_bits(magnitude) | sign);
  }
  if (exponent == 31) return bits_as_float(sign | 0x7f800000u | (mantissa << 13));  // inf / nan
  return bits_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

// float32 -> binary16, round to nearest even (as torch's .half()).
__device__ __forceinline__ unsigned short float_to_half(float f) {
#ifdef __CUDA_ARCH__
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  const unsigned int x = float_as_bits(f);
  const unsigned int sign = (x >> 16) & 0x8000u;
  const unsigned int a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return (unsigned short)(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {  // below 2^-14: half subnormal (or zero), units of 2^-24
    const unsigned int e = a >> 23;
    if (e < 102u) return (unsigned short)sign;  // below 2^-25: rounds to zero
    const unsigned int m = (a & 0x7fffffu) | 0x800000u;
    const unsigned int shift = 126u - e;  // 14..24
    unsigned int r = m >> shift;
    const unsigned int rem = m & ((1u << shift) - 1u);
    const unsigned int halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return (unsigned short)(sign | r);
  }
  unsigned int r = (a >> 13) - (112u << 10);  // rebias exponent 127 -> 15
  const unsigned int rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // a carry into the exponent is correct
  return (unsigned short)(sign | r);
#endif
}

__device__ __forceinline__ float bfloat16_to_float(unsigned short b) {
  return bits_as_float((unsigned int)b << 16);
}

// float32 -> bfloat16, round to nearest even; NaN stays NaN.
__device__ __forceinline__ unsigned short float_to_bfloat16(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned short b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
  return b;
#else
  const unsigned int x = float_as_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
  return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
#endif
}

// Read-only loads through the non-coherent cache, returned in the accumulation type.
__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load(const double* p) { return __ldg(p); }
__device__ __forceinline__ float load(const half_t* p) { return half_to_float(__ldg(&p->bits)); }
__device__ __forceinline__ float load(const bfloat16_t* p) {
  return bfloat16_to_float(__ldg(&p->bits));
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(half_t* p, float v) { p->bits = float_to_half(v); }
__device__ __forceinline__ void store(bfloat16_t* p, float v) { p->bits = float_to_bfloat16(v); }

// floor() in the accumulation type (float or double), as an integer index.
__device__ __forceinline__ index_t floor_index(float v) { return (index_t)floorf(v); }
__device__ __forceinline__ index_t floor_index(double v) { return (index_t)floor(v); }

// First global thread index and the grid-stride step, in 64 bits (grid * block can exceed 2^31
// after the launcher caps the grid, and the products below must not wrap in 32 bits).
__device__ __forceinline__ index_t global_thread_index() {
  return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ index_t grid_stride() { return (index_t)gridDim.x * blockDim.x; }

}  // namespace dcn
