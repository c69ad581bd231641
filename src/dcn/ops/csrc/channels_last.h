// Conversions between ATen's NCHW layout and the channels-last tables dcn's CPU kernels sample:
// a pixel's channels contiguous, so a bilinear corner is one vector-friendly row.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace dcn_cpu {

#if defined(__AVX__)
// d[j * ds + i] = s[i * ss + j] for an 8 x 8 block of floats, in registers.
inline void transpose_8x8(const float* s, int64_t ss, float* d, int64_t ds) {
  __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss), r2 = _mm256_loadu_ps(s + 2 * ss),
         r3 = _mm256_loadu_ps(s + 3 * ss), r4 = _mm256_loadu_ps(s + 4 * ss), r5 = _mm256_loadu_ps(s + 5 * ss),
         r6 = _mm256_loadu_ps(s + 6 * ss), r7 = _mm256_loadu_ps(s + 7 * ss);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

// d[j * ds + i] = s[i * ss + j] for i < rows, j < cols (with a type conversion), serially.
template <typename src_t, typename dst_t>
void transpose_block(const src_t* s, int64_t ss, dst_t* d, int64_t ds, int64_t rows, int64_t cols) {
  int64_t i_vec = 0, j_vec = 0;  // the part done in 8 x 8 register blocks
#if defined(__AVX__)
  if constexpr (std::is_same_v<src_t, float> && std::is_same_v<dst_t, float>) {
    i_vec = rows / 8 * 8;
    j_vec = cols / 8 * 8;
    for (int64_t i = 0; i < i_vec; i += 8) {
      for (int64_t j = 0; j < j_vec; j += 8) transpose_8x8(s + i * ss + j, ss, d + j * ds + i, ds);
    }
  }
#endif
  // the rest: the last columns, then the last rows of the others
  for (int64_t j = j_vec; j < cols; ++j) {
    for (int64_t i = 0; i < rows; ++i) d[j * ds + i] = static_cast<dst_t>(s[i * ss + j]);
  }
  for (int64_t j = 0; j < j_vec; ++j) {
    for (int64_t i = i_vec; i < rows; ++i) d[j * ds + i] = static_cast<dst_t>(s[i * ss + j]);
  }
}

// dst (n, C, R) = src (n, R, C) transposed image by image (with a type conversion), in parallel
// 32 x 32 blocks.
template <typename src_t, typename dst_t>
void transpose_images(const src_t* src, dst_t* dst, int64_t n, int64_t R, int64_t C) {
  RECORD_FUNCTION("dcn_cpu::transpose_images", std::vector<c10::IValue>());
  constexpr int64_t B = 32;
  const int64_t rb = (R + B - 1) / B, cb = (C + B - 1) / B;
  at::parallel_for(0, n * rb * cb, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / (rb * cb), blk = t - img * rb * cb;
      const int64_t i0 = (blk / cb) * B, j0 = (blk % cb) * B;
      transpose_block(src + img * R * C + i0 * C + j0, C, dst + img * R * C + j0 * R + i0, R,
                      std::min(B, R - i0), std::min(B, C - j0));
    }
  });
}

}  // namespace dcn_cpu
