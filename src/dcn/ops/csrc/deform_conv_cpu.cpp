// Fused CPU deformable convolution (dcn PyTorch path): forward and first-order backward.
//
// Deformable convolution is a bilinear sampling step and a GEMM. The sampling writes the column
// matrix straight in the layout the GEMM reads, one row per image and output position:
//
//   cols[gi, (n, l), (k, c)] = m(n, g, k, l) * bilinear(x[n, gi * cig + c], p(n, g, k, l))
//   out[n, gi * cog + o, l]  = sum_(k, c) W[gi, o, (k, c)] * cols[gi, (n, l), (k, c)]   (+ bias)
//
// with gi the conv group, g the offset group of the channel, k the kernel tap and l the output
// position. Samples read a channels-last copy of the input, so a bilinear corner is a contiguous
// run of channels and the inner loops are vector loops (built for the instruction set ATen uses
// on the machine, see _cpu_kernel.py); the per-sample setup (positions, weights, corners) is
// itself a vector loop over 32 output positions at a time (Tile).
//
// Backward: grad_W += grad_out @ cols (the columns recomputed, as torchvision does, instead of
// kept); the column gradient gcols = grad_out^T @ W; then one pass over gcols scatters the input
// gradient into a channels-last table and takes the four dot products <gcols, corner> per sample
// that the offset and mask gradients are made of. Tasks own whole images, or (image, channel
// block)s: no two tasks write the same memory, no atomics.
//
// Two strategies (use_fused): with a small weight, each task samples a tile of rows into its own
// column buffer (~1 MiB, in L2) and multiplies it at once with single-threaded GEMMs: columns
// never go to memory and the threads meet once per pass. With a large weight, which every tile
// would re-read, a chunk of images is sampled, then multiplied by GEMMs that use every thread.
// Within a conv group the columns are ordered (k, c), or (c, k) as the weight itself is stored
// when moving the weight would cost more than the columns (use_kc_layout).
//
// The GEMMs run on oneDNN (at::native::mkldnn_matmul, the library behind dense convolutions on
// CPU, several times faster than MKL's sgemm on some CPUs) where the torch build provides it for
// the dtype, else on at::mm. Every GEMM reads its operands in place (oneDNN takes transposed
// views), and the output and grad_out keep the NCHW layout: out^T = W @ cols^T is (C_out, n*L).
// Sampling computes in the accumulation type (float for float, bfloat16 and half; double for
// double). Scratch memory comes from a buffer kept between calls (Workspace).
//
// Conventions are torchvision's: a sample at (y, x) counts when -1 < y < H and -1 < x < W,
// corners outside the image read zero, position derivatives are taken in the cell
// [floor(y), floor(y) + 1]. A NaN position gives a NaN sample (NaN offset and mask gradients, no
// input gradient); an infinite one lies outside the image.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "channels_last.h"
#include "ops.h"

// From libtorch_cpu. Weak: a torch build without them, or with other signatures, still loads this
// library, and at::mm is used instead.
namespace at {
namespace native {
// oneDNN's matmul (ATen/native/mkldnn/Matmul.h, not an installed header).
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta,
                             float alpha) __attribute__((weak));
namespace cpublas {
// oneDNN's batch-reduce GEMM micro-kernel, C (M, N) (+)= A (M, K) @ B (K, N), row-major
// (ATen/native/CPUBlas.h): no per-call setup, for the fused path's tile products.
TORCH_API void brgemm(int64_t M, int64_t N, int64_t K, int64_t ld_a, int64_t ld_b, int64_t ld_c, bool add_C,
                      const float* A, const float* B, float* C, bool is_vnni) __attribute__((weak));
TORCH_API void brgemm_release(bool is_vnni) __attribute__((weak));
}  // namespace cpublas
}  // namespace native
}  // namespace at

#define DCN_INLINE inline __attribute__((always_inline))

namespace {

using at::Tensor;

// ------------------------------------------------------------------------------------------
// Storage types: float, double, bfloat16 (as its bits), half (as _Float16)
// ------------------------------------------------------------------------------------------
using bf16_bits = uint16_t;
using half_t = _Float16;
static_assert(sizeof(c10::BFloat16) == 2 && sizeof(c10::Half) == 2, "16-bit storage");

DCN_INLINE float to_acc(float v) { return v; }
DCN_INLINE double to_acc(double v) { return v; }
DCN_INLINE float to_acc(half_t v) { return static_cast<float>(v); }
DCN_INLINE float to_acc(bf16_bits v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
DCN_INLINE T from_acc(float v);
template <>
DCN_INLINE float from_acc<float>(float v) { return v; }
template <>
DCN_INLINE half_t from_acc<half_t>(float v) { return static_cast<half_t>(v); }
template <>
DCN_INLINE bf16_bits from_acc<bf16_bits>(float v) {  // round to nearest even, as c10::BFloat16
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<bf16_bits>(v != v ? 0x7FC0u : rounded);
}

template <typename st_t, typename acc_t>
DCN_INLINE st_t store_as(acc_t v) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return v;
  } else {
    return from_acc<st_t>(v);
  }
}

// The storage type a kernel loop sees for an ATen scalar type.
template <typename scalar_t>
struct Storage {
  using type = scalar_t;
};
template <>
struct Storage<c10::BFloat16> {
  using type = bf16_bits;
};
template <>
struct Storage<c10::Half> {
  using type = half_t;
};

// ------------------------------------------------------------------------------------------
// Vector loops
// ------------------------------------------------------------------------------------------
// Vectors of the widest registers the build targets (GCC/clang vector extensions).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

// Unaligned vectors that may alias their element type: loads and stores are plain dereferences.
template <typename T, int N>
struct Vec {
  typedef T type __attribute__((vector_size(N * sizeof(T)), aligned(sizeof(T)), may_alias));
};

template <typename V, typename T>
DCN_INLINE V loadu(const T* p) {
  return *reinterpret_cast<const V*>(p);
}

// N lanes of g as the accumulation type.
template <int N, typename acc_t, typename g_t>
DCN_INLINE typename Vec<acc_t, N>::type load_acc(const g_t* g) {
  using V = typename Vec<acc_t, N>::type;
  if constexpr (std::is_same_v<g_t, bf16_bits>) {
    const auto u32 = __builtin_convertvector(loadu<typename Vec<uint16_t, N>::type>(g), typename Vec<uint32_t, N>::type);
    return reinterpret_cast<V>(u32 << 16);
  } else if constexpr (std::is_same_v<g_t, half_t>) {
    return __builtin_convertvector(loadu<typename Vec<half_t, N>::type>(g), V);
  } else {
    return loadu<V>(g);
  }
}

// Sum of the lanes, by halving (no address taken: the accumulators stay in registers).
#if defined(__clang__) || __GNUC__ >= 12
template <typename T, int N, std::size_t... I>
DCN_INLINE typename Vec<T, N / 2>::type add_halves(typename Vec<T, N>::type v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, I...) + __builtin_shufflevector(v, v, (I + N / 2)...);
}

template <typename T, int N>
DCN_INLINE T hsum(typename Vec<T, N>::type v) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    return hsum<T, N / 2>(add_halves<T, N>(v, std::make_index_sequence<N / 2>()));
  }
}
#else
template <typename T, int N>
DCN_INLINE T hsum(typename Vec<T, N>::type v) {
  T s = 0;
  for (int i = 0; i < N; ++i) s += v[i];
  return s;
}
#endif

// dst[c] = w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c]
template <typename dst_t, typename acc_t>
DCN_INLINE void blend4(dst_t* __restrict__ dst, const acc_t* __restrict__ p0, const acc_t* __restrict__ p1,
                       const acc_t* __restrict__ p2, const acc_t* __restrict__ p3, acc_t w0, acc_t w1, acc_t w2,
                       acc_t w3, int64_t len) {
#pragma omp simd
  for (int64_t c = 0; c < len; ++c) {
    dst[c] = store_as<dst_t>(w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c]);
  }
}

// d[j] += <g, p_j> for the four corners; with kScatter also q_j[c] += w_j * g[c]. The q_j are
// distinct rows of the gradient table, or one scratch row for the corners outside the image
// (whose sums are never read): lane c only ever touches element c of each.
template <bool kScatter, typename g_t, typename acc_t>
DCN_INLINE void corners(const g_t* __restrict__ g, const acc_t* __restrict__ p0, const acc_t* __restrict__ p1,
                        const acc_t* __restrict__ p2, const acc_t* __restrict__ p3, acc_t* q0, acc_t* q1, acc_t* q2,
                        acc_t* q3, acc_t w0, acc_t w1, acc_t w2, acc_t w3, int64_t len, acc_t* __restrict__ d) {
  constexpr int N = kVectorBytes / sizeof(acc_t);
  using V = typename Vec<acc_t, N>::type;
  V a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t c = 0;
  for (; c + N <= len; c += N) {
    const V v = load_acc<N, acc_t>(g + c);
    a0 += v * loadu<V>(p0 + c);
    a1 += v * loadu<V>(p1 + c);
    a2 += v * loadu<V>(p2 + c);
    a3 += v * loadu<V>(p3 + c);
    if constexpr (kScatter) {
      *reinterpret_cast<V*>(q0 + c) += w0 * v;
      *reinterpret_cast<V*>(q1 + c) += w1 * v;
      *reinterpret_cast<V*>(q2 + c) += w2 * v;
      *reinterpret_cast<V*>(q3 + c) += w3 * v;
    }
  }
  acc_t s0 = hsum<acc_t, N>(a0), s1 = hsum<acc_t, N>(a1), s2 = hsum<acc_t, N>(a2), s3 = hsum<acc_t, N>(a3);
  for (; c < len; ++c) {
    const acc_t v = to_acc(g[c]);
    s0 += v * p0[c];
    s1 += v * p1[c];
    s2 += v * p2[c];
    s3 += v * p3[c];
    if constexpr (kScatter) {
      q0[c] += w0 * v;
      q1[c] += w1 * v;
      q2[c] += w2 * v;
      q3[c] += w3 * v;
    }
  }
  d[0] += s0;
  d[1] += s1;
  d[2] += s2;
  d[3] += s3;
}

using dcn_cpu::transpose_images;

// ------------------------------------------------------------------------------------------
// GEMM
// ------------------------------------------------------------------------------------------
// Whether oneDNN's matmul takes float, bfloat16, half here (it refuses dtypes the CPU lacks the
// instructions for; then at::mm runs them).
std::atomic<bool> onednn_usable[3] = {true, true, true};

int onednn_slot(at::ScalarType dtype) {
  return dtype == at::kFloat ? 0 : dtype == at::kBFloat16 ? 1 : dtype == at::kHalf ? 2 : -1;
}

// out = a @ b, or out += a @ b; 2-D or batched 3-D; a and b contiguous or transposed views.
void gemm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  RECORD_FUNCTION("dcn_cpu::gemm", std::vector<c10::IValue>());
  const int slot = onednn_slot(a.scalar_type());
  if (at::native::mkldnn_matmul != nullptr && at::hasMKLDNN() && slot >= 0 &&
      onednn_usable[slot].load(std::memory_order_relaxed) && out.is_contiguous()) {
    try {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
      return;
    } catch (const c10::Error&) {
      onednn_usable[slot].store(false);
    }
  }
  Tensor o = out;
  if (a.dim() == 2) {
    accumulate ? void(o.addmm_(a, b)) : void(at::mm_out(o, a, b));
  } else {
    accumulate ? void(o.baddbmm_(a, b)) : void(at::bmm_out(o, a, b));
  }
}

// a @ b for (groups, M, K) @ (groups, K, N) operands (views), into out (groups, M, N).
void grouped_gemm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  if (a.size(0) == 1) {
    gemm(a[0], b[0], out[0], accumulate);
  } else {
    gemm(a, b, out, accumulate);
  }
}

// ------------------------------------------------------------------------------------------
// Geometry and bilinear samples
// ------------------------------------------------------------------------------------------
struct Geometry {
  int64_t n;                   // images in the chunk
  int64_t C, H, W;             // input channels and size
  int64_t Ho, Wo, L;           // output size, L = Ho * Wo
  int64_t kh, kw, K;           // kernel, K = kh * kw
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t G, cg;               // offset groups, channels per offset group
  int64_t groups, cig, cog;    // conv groups, input and output channels per conv group
  // Column order within a conv group: (k, c) (kc) or (c, k), the weight's own order (!kc). With
  // (c, k) the GEMMs read the weight and write its gradient in place; with (k, c) the samples of a
  // tap are contiguous. use_kc_layout picks the cheaper one.
  bool kc = true;
  int64_t rows() const { return n * L; }
};

// (k, c) columns cost three transposing copies of the weight per forward+backward; (c, k) columns
// cost a transposing copy of every column row in L1 (one per sampling pass, three in all). Pick
// the smaller amount of data to move.
// order: 0 picks, 1 forces (k, c), 2 forces (c, k) (tests use both).
bool use_kc_layout(const Geometry& g, int64_t batch, int64_t order) {
  if (order != 0) return order == 1;
  const int64_t weight = g.groups * g.cog * g.cig * g.K, columns = batch * g.L * g.K * g.C;
  return weight < columns;
}

enum State : int32_t { kOutside = 0, kInside = 1, kNaN = 2 };

// Output positions per tile: the sample setup runs as vector loops over a tile's positions, which
// are contiguous in the offset and mask planes.
constexpr int64_t kTile = 32;

// The bilinear samples of one tile: output positions l0 .. l0 + T - 1 of image n, offset groups
// og0 .. og1. Sample s = k * (og1 - og0 + 1) + og - og0 of lane t sits at index s * kTile + t.
template <typename scalar_t, typename acc_t>
struct Tile {
  using st_t = typename Storage<scalar_t>::type;
  int64_t n = 0, l0 = 0, T = 0, og0 = 0, og1 = 0;
  std::vector<acc_t> w[4];      // corner weights, mask folded in; NaN position: (NaN, 0, 0, 0), outside: (0 * m, 0, 0, 0)
  std::vector<int32_t> pix[4];  // corner pixel y * W + x, -1 where the corner lies outside the image
  std::vector<acc_t> ly, lx, m;
  std::vector<acc_t> state;  // a State, as acc_t to keep the setup loop in one vector width

  int64_t groups() const { return og1 - og0 + 1; }

  // Lanes l0_ .. l0_ + T_ - 1 (T_ <= kTile) of image n_.
  void setup(const Geometry& g, const scalar_t* offset_, const scalar_t* mask_, int64_t n_, int64_t l0_, int64_t T_,
             int64_t og0_, int64_t og1_) {
    n = n_, l0 = l0_, T = T_, og0 = og0_, og1 = og1_;
    const int64_t S = g.K * groups();
    if (static_cast<int64_t>(ly.size()) < S * kTile) {
      for (int j = 0; j < 4; ++j) w[j].resize(S * kTile), pix[j].resize(S * kTile);
      ly.resize(S * kTile), lx.resize(S * kTile), m.resize(S * kTile), state.resize(S * kTile);
    }
    const st_t* offset = reinterpret_cast<const st_t*>(offset_);
    const st_t* mask = reinterpret_cast<const st_t*>(mask_);
    acc_t yb[kTile], xb[kTile];
    for (int64_t t = 0, ho = l0 / g.Wo, wo = l0 - ho * g.Wo; t < T; ++t) {
      yb[t] = static_cast<acc_t>(ho * g.sh - g.ph);
      xb[t] = static_cast<acc_t>(wo * g.sw - g.pw);
      if (++wo == g.Wo) wo = 0, ++ho;
    }
    const acc_t H = static_cast<acc_t>(g.H), W = static_cast<acc_t>(g.W);
    const int32_t Wi = static_cast<int32_t>(g.W);
    const uint32_t uH = static_cast<uint32_t>(g.H), uW = static_cast<uint32_t>(g.W);
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    for (int64_t ki = 0, k = 0; ki < g.kh; ++ki) {
      for (int64_t kj = 0; kj < g.kw; ++kj, ++k) {
        const acc_t ky = static_cast<acc_t>(ki * g.dh), kx = static_cast<acc_t>(kj * g.dw);
        for (int64_t og = og0; og <= og1; ++og) {
          const int64_t ch = (n * g.G + og) * g.K + k;  // (dy, dx) at channels 2ch, 2ch + 1; mask at ch
          const st_t* oy = offset + ch * 2 * g.L + l0;
          const st_t* ox = oy + g.L;
          acc_t mm_[kTile];
          if (mask) {
            const st_t* mk = mask + ch * g.L + l0;
            for (int64_t t = 0; t < T; ++t) mm_[t] = to_acc(mk[t]);
          } else {
            std::fill(mm_, mm_ + T, acc_t(1));
          }
          const int64_t base = (k * groups() + og - og0) * kTile;
          acc_t *w0 = &w[0][base], *w1 = &w[1][base], *w2 = &w[2][base], *w3 = &w[3][base];
          int32_t *i0 = &pix[0][base], *i1 = &pix[1][base], *i2 = &pix[2][base], *i3 = &pix[3][base];
          acc_t *LY = &ly[base], *LX = &lx[base], *M = &m[base];
          acc_t* ST = &state[base];
          // Branch-free, so that it compiles to vector code.
#pragma omp simd
          for (int64_t t = 0; t < T; ++t) {
            // (p0 + p_k) is an exact integer: one rounding, as torchvision's (p0 + p_k) + offset.
            const acc_t y = (yb[t] + ky) + to_acc(oy[t]);
            const acc_t x = (xb[t] + kx) + to_acc(ox[t]);
            const acc_t mm = mm_[t];
            const bool is_nan = (y != y) || (x != x);
            const bool in = (y > -1) && (y < H) && (x > -1) && (x < W);  // false for NaN and +-inf
            // Outside the window both coordinates become -2, so that every corner fails the bounds test.
            const acc_t yc = in ? y : acc_t(-2), xc = in ? x : acc_t(-2);
            const acc_t y0f = std::floor(yc), x0f = std::floor(xc);
            const int32_t y0 = static_cast<int32_t>(y0f), x0 = static_cast<int32_t>(x0f);
            const acc_t fy = yc - y0f, fx = xc - x0f, hy = 1 - fy, hx = 1 - fx;
            const acc_t scale = in ? mm : (is_nan ? nan : acc_t(0) * mm);
            w0[t] = hy * hx * scale;
            w1[t] = hy * fx * scale;
            w2[t] = fy * hx * scale;
            w3[t] = fy * fx * scale;
            // Unsigned compares test 0 <= v < size in one go (and keep the loop vectorisable).
            const uint32_t uy0 = static_cast<uint32_t>(y0), ux0 = static_cast<uint32_t>(x0);
            const int32_t p = y0 * Wi + x0;
            i0[t] = (uy0 < uH && ux0 < uW) ? p : -1;
            i1[t] = (uy0 < uH && ux0 + 1 < uW) ? p + 1 : -1;
            i2[t] = (uy0 + 1 < uH && ux0 < uW) ? p + Wi : -1;
            i3[t] = (uy0 + 1 < uH && ux0 + 1 < uW) ? p + Wi + 1 : -1;
            LY[t] = fy;
            LX[t] = fx;
            M[t] = mm;
            ST[t] = is_nan ? acc_t(kNaN) : (in ? acc_t(kInside) : acc_t(kOutside));
          }
        }
      }
    }
  }
};

// Calls f(gi, c0, c1) for the pieces of channel range [c0, c1) that lie in one conv group each.
template <typename F>
DCN_INLINE void for_conv_group_pieces(const Geometry& g, int64_t c0, int64_t c1, F&& f) {
  while (c0 < c1) {
    const int64_t gi = c0 / g.cig;
    const int64_t end = std::min(c1, (gi + 1) * g.cig);
    f(gi, c0, end);
    c0 = end;
  }
}

// Offset and mask gradients of sample s of a tile, lanes 0 .. T - 1, from its dot products
// d[j][t] = <gcols, corner j>; written to grad_offset (n, 2GK, Ho, Wo) / grad_mask (n, GK, Ho, Wo).
template <typename scalar_t, typename acc_t>
DCN_INLINE void tile_grads(const Tile<scalar_t, acc_t>& tile, int64_t s, int64_t ch, const acc_t* d0,
                           const acc_t* d1, const acc_t* d2, const acc_t* d3, const Geometry& g,
                           scalar_t* grad_offset, scalar_t* grad_mask) {
  const int64_t base = s * kTile;
  const acc_t *LY = &tile.ly[base], *LX = &tile.lx[base], *M = &tile.m[base];
  const acc_t* ST = &tile.state[base];
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  scalar_t* gy_out = grad_offset ? grad_offset + (ch * 2) * g.L + tile.l0 : nullptr;
  scalar_t* gx_out = grad_offset ? grad_offset + (ch * 2 + 1) * g.L + tile.l0 : nullptr;
  scalar_t* gm_out = grad_mask ? grad_mask + ch * g.L + tile.l0 : nullptr;
  for (int64_t t = 0; t < tile.T; ++t) {
    const acc_t ly = LY[t], lx = LX[t], hy = 1 - ly, hx = 1 - lx, mm = M[t];
    const bool in = ST[t] == acc_t(kInside), is_nan = ST[t] == acc_t(kNaN);
    // outside: 0 * m (NaN for a non-finite mask, as torchvision's), NaN position: NaN
    const acc_t off_default = is_nan ? nan : acc_t(0) * mm;
    const acc_t gy = in ? ((d2[t] - d0[t]) * hx + (d3[t] - d1[t]) * lx) * mm : off_default;
    const acc_t gx = in ? ((d1[t] - d0[t]) * hy + (d3[t] - d2[t]) * ly) * mm : off_default;
    const acc_t gm = in ? hy * (hx * d0[t] + lx * d1[t]) + ly * (hx * d2[t] + lx * d3[t]) : (is_nan ? nan : acc_t(0));
    if (gy_out) {
      gy_out[t] = static_cast<scalar_t>(gy);
      gx_out[t] = static_cast<scalar_t>(gx);
    }
    if (gm_out) gm_out[t] = static_cast<scalar_t>(gm);
  }
}

// Where a column matrix lives: (groups, rows, K * cig) elements, (k, c) or (c, k) order within a
// row (Geometry::kc). Row (n, l) of the chunk is buffer row (n - n0) * L + (l - l0): a whole chunk
// (n0 = l0 = 0), or a tile of one image's rows from l0 on.
template <typename st_t>
struct Columns {
  st_t* data;
  int64_t rows;  // rows held; conv group gi starts at gi * rows * K * cig
  int64_t n0 = 0, l0 = 0;
  DCN_INLINE st_t* row(const Geometry& g, int64_t gi, int64_t n, int64_t l) const {
    return data + (gi * rows + (n - n0) * g.L + (l - l0)) * g.K * g.cig;
  }
};

// What the sampling of a chunk of images reads: the channels-last input table (accumulation
// type, the chunk's images only), the chunk's offsets and its mask (null without one).
template <typename scalar_t, typename acc_t>
struct SampleInputs {
  const acc_t* table;
  const scalar_t* offset;
  const scalar_t* mask;
};

// The sampling inputs of images s .. s + b - 1 of offset and mask, table holding those images.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
SampleInputs<scalar_t, acc_t> sample_inputs(const Tensor& table, const Tensor& offset, const Tensor& mask, int64_t s,
                                            int64_t b) {
  return {table.data_ptr<acc_t>(), offset.narrow(0, s, b).data_ptr<scalar_t>(),
          mask.defined() ? mask.narrow(0, s, b).data_ptr<scalar_t>() : nullptr};
}

// Per-thread scratch of the sampling loops.
template <typename scalar_t, typename acc_t>
struct Scratch {
  Tile<scalar_t, acc_t> tile;
  std::vector<acc_t> row;      // (c, k) columns: a row in (k, c) order
  std::vector<acc_t> dots;     // dot products of a tile's samples
  std::vector<acc_t> sink;     // scatter target of corners outside the image
  std::vector<acc_t> zeros;    // read by corners outside the image
  explicit Scratch(const Geometry& g)
      : row(g.kc ? 0 : g.K * g.C), sink(g.C), zeros(g.C, acc_t(0)) {}
};

// Columns of image n, output positions la .. lb - 1.
template <typename scalar_t, typename acc_t>
void fill_rows(Scratch<scalar_t, acc_t>& sc, const SampleInputs<scalar_t, acc_t>& in,
               const Columns<typename Storage<scalar_t>::type>& cols, int64_t n, int64_t la, int64_t lb,
               const Geometry& g) {
  using st_t = typename Storage<scalar_t>::type;
  const int64_t C = g.C, K = g.K, G = g.G, cig = g.cig, cg = g.cg;
  const acc_t* img = in.table + n * g.H * g.W * C;
  const acc_t* z = sc.zeros.data();
  auto& tile = sc.tile;
  for (int64_t l0 = la; l0 < lb; l0 += kTile) {
    tile.setup(g, in.offset, in.mask, n, l0, std::min(kTile, lb - l0), 0, G - 1);
    for (int64_t t = 0; t < tile.T; ++t) {
      const int64_t l = l0 + t;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t og = 0; og < G; ++og) {
          const int64_t i = (k * G + og) * kTile + t;
          const int32_t i0 = tile.pix[0][i], i1 = tile.pix[1][i], i2 = tile.pix[2][i], i3 = tile.pix[3][i];
          const acc_t w0 = tile.w[0][i], w1 = tile.w[1][i], w2 = tile.w[2][i], w3 = tile.w[3][i];
          const int64_t c0 = og * cg, c1 = c0 + cg;
          // corner rows from channel a on; the zero row for corners outside the image
          auto at = [&](int32_t pix, int64_t a) { return pix >= 0 ? img + pix * C + a : z; };
          if (!g.kc) {
            blend4(sc.row.data() + k * C + c0, at(i0, c0), at(i1, c0), at(i2, c0), at(i3, c0), w0, w1, w2, w3, cg);
            continue;
          }
          for_conv_group_pieces(g, c0, c1, [&](int64_t gi, int64_t a, int64_t b) {
            blend4(cols.row(g, gi, n, l) + k * cig + (a - gi * cig), at(i0, a), at(i1, a), at(i2, a), at(i3, a), w0,
                   w1, w2, w3, b - a);
          });
        }
      }
      if (!g.kc) {  // cols[gi, l, (c, k)] = row[k, gi * cig + c]
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          st_t* dst = cols.row(g, gi, n, l);
          const acc_t* src = sc.row.data() + gi * cig;
          for (int64_t c = 0; c < cig; ++c) {
            for (int64_t k = 0; k < K; ++k) dst[c * K + k] = store_as<st_t>(src[k * C + c]);
          }
        }
      }
    }
  }
}

// Backward pass of the sampling over image n, positions la .. lb - 1, channels b0 .. b1 - 1:
// scatters the column gradient into grad_img (n's (H, W, C) table; null when the input gradient
// is not wanted) and takes the dot products <gcols, corner>. With `dots` (several channel blocks)
// they are stored as block blk's partial sums, (blocks, 4, n, K, G, L); else the offset and mask
// gradients are written (either may be null).
template <typename scalar_t, typename acc_t>
void scatter_rows(Scratch<scalar_t, acc_t>& sc, const SampleInputs<scalar_t, acc_t>& in,
                  const Columns<const typename Storage<scalar_t>::type>& gcols, acc_t* grad_img, int64_t n, int64_t la,
                  int64_t lb, int64_t b0, int64_t b1, int64_t blk, acc_t* dots, scalar_t* grad_offset,
                  scalar_t* grad_mask, const Geometry& g) {
  const int64_t C = g.C, K = g.K, cig = g.cig, cg = g.cg;
  const int64_t og0 = b0 / cg, og1 = (b1 - 1) / cg;
  const int64_t dots_stride = g.n * K * g.G * g.L;  // one corner's dot products
  const acc_t* img = in.table + n * g.H * g.W * C;
  const acc_t* z = sc.zeros.data();
  auto& tile = sc.tile;
  for (int64_t l0 = la; l0 < lb; l0 += kTile) {
    tile.setup(g, in.offset, in.mask, n, l0, std::min(kTile, lb - l0), og0, og1);
    const int64_t Gt = tile.groups(), S = K * Gt;
    sc.dots.assign(4 * S * kTile, acc_t(0));  // dots[(j * S + s) * kTile + t]
    for (int64_t t = 0; t < tile.T; ++t) {
      const int64_t l = l0 + t;
      if (!g.kc) {  // row[k, c] = gcols[gi, l, (c - gi * cig, k)] for the block's channels
        for_conv_group_pieces(g, b0, b1, [&](int64_t gi, int64_t a, int64_t b) {
          const auto* src = gcols.row(g, gi, n, l);
          for (int64_t c = a; c < b; ++c) {
            for (int64_t k = 0; k < K; ++k) sc.row[k * C + c] = to_acc(src[(c - gi * cig) * K + k]);
          }
        });
      }
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t og = og0; og <= og1; ++og) {
          const int64_t s = k * Gt + og - og0, i = s * kTile + t;
          if (tile.state[i] != acc_t(kInside)) continue;
          int32_t pix[4];
          acc_t w[4];
          for (int j = 0; j < 4; ++j) pix[j] = tile.pix[j][i], w[j] = tile.w[j][i];
          acc_t d[4] = {0, 0, 0, 0};
          for_conv_group_pieces(g, std::max(b0, og * cg), std::min(b1, (og + 1) * cg),
                                [&](int64_t gi, int64_t c0, int64_t c1) {
            const acc_t* p[4];
            acc_t* q[4] = {nullptr, nullptr, nullptr, nullptr};
            for (int j = 0; j < 4; ++j) {
              p[j] = pix[j] >= 0 ? img + pix[j] * C + c0 : z;
              if (grad_img) q[j] = pix[j] >= 0 ? grad_img + pix[j] * C + c0 : sc.sink.data();
            }
            auto run = [&](auto gc) {
              if (grad_img) {
                corners<true>(gc, p[0], p[1], p[2], p[3], q[0], q[1], q[2], q[3], w[0], w[1], w[2], w[3], c1 - c0, d);
              } else {
                corners<false>(gc, p[0], p[1], p[2], p[3], q[0], q[1], q[2], q[3], w[0], w[1], w[2], w[3], c1 - c0,
                               d);
              }
            };
            if (g.kc) {
              run(gcols.row(g, gi, n, l) + k * cig + (c0 - gi * cig));
            } else {
              run(static_cast<const acc_t*>(sc.row.data() + k * C + c0));
            }
          });
          for (int j = 0; j < 4; ++j) sc.dots[(j * S + s) * kTile + t] = d[j];
        }
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t og = og0; og <= og1; ++og) {
        const int64_t s = k * Gt + og - og0;
        const acc_t* ds[4];
        for (int j = 0; j < 4; ++j) ds[j] = &sc.dots[(j * S + s) * kTile];
        if (dots) {
          for (int j = 0; j < 4; ++j) {
            acc_t* out = dots + ((blk * 4 + j) * dots_stride) + ((n * K + k) * g.G + og) * g.L + l0;
            std::copy(ds[j], ds[j] + tile.T, out);
          }
        } else if (grad_offset || grad_mask) {
          tile_grads(tile, s, (n * g.G + og) * K + k, ds[0], ds[1], ds[2], ds[3], g, grad_offset, grad_mask);
        }
      }
    }
  }
}

// grad_offset and grad_mask (either may be null) from the partial dot products of several
// channel blocks (scatter_rows' dots).
template <typename scalar_t, typename acc_t>
void finish_grads(const scalar_t* offset, const scalar_t* mask, const acc_t* dots, int64_t blocks,
                  scalar_t* grad_offset, scalar_t* grad_mask, const Geometry& g) {
  RECORD_FUNCTION("dcn_cpu::finish_grads", std::vector<c10::IValue>());
  const int64_t K = g.K, G = g.G, dots_stride = g.n * K * G * g.L;
  const int64_t per_image = (g.L + kTile - 1) / kTile;
  const int64_t block = (g.C + blocks - 1) / blocks;
  at::parallel_for(0, g.n * per_image, 1, [&](int64_t t0, int64_t t1) {
    Tile<scalar_t, acc_t> tile;
    acc_t d[4][kTile];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t n = task / per_image, l0 = (task - n * per_image) * kTile;
      tile.setup(g, offset, mask, n, l0, std::min(kTile, g.L - l0), 0, G - 1);
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t og = 0; og < G; ++og) {
          for (int j = 0; j < 4; ++j) {
            std::fill(d[j], d[j] + kTile, acc_t(0));
            // the blocks holding channels of offset group og
            for (int64_t b = og * g.cg / block; b <= ((og + 1) * g.cg - 1) / block; ++b) {
              const acc_t* src = dots + ((b * 4 + j) * dots_stride) + ((n * K + k) * G + og) * g.L + l0;
              for (int64_t t = 0; t < tile.T; ++t) d[j][t] += src[t];
            }
          }
          tile_grads(tile, k * G + og, (n * G + og) * K + k, d[0], d[1], d[2], d[3], g, grad_offset, grad_mask);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// Arguments
// ------------------------------------------------------------------------------------------
at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

Geometry make_geometry(const Tensor& input, const Tensor& offset, const Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups) {
  TORCH_CHECK(input.dim() == 4 && offset.dim() == 4 && weight.dim() == 4, "4-D input, offset and weight expected");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "stride/padding/dilation: 2 values");
  TORCH_CHECK(input.scalar_type() == offset.scalar_type() && input.scalar_type() == weight.scalar_type(),
              "input, offset and weight must share a dtype");
  Geometry g;
  g.n = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.Ho = offset.size(2);
  g.Wo = offset.size(3);
  g.L = g.Ho * g.Wo;
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.K = g.kh * g.kw;
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.G = offset_groups;
  g.groups = groups;
  TORCH_CHECK(groups > 0 && offset_groups > 0 && g.C % groups == 0 && g.C % offset_groups == 0 &&
                  weight.size(0) % groups == 0 && weight.size(1) == g.C / groups,
              "inconsistent groups");
  g.cg = g.C / offset_groups;
  g.cig = g.C / groups;
  g.cog = weight.size(0) / groups;
  TORCH_CHECK(offset.size(1) == 2 * g.G * g.K && offset.size(0) == g.n, "offset must be (N, 2*G*K, Ho, Wo)");
  // Corner pixels are int32 indices into an image.
  TORCH_CHECK(g.H * g.W < (int64_t(1) << 31) && g.H < (1 << 30) && g.W < (1 << 30), "input image too large");
  return g;
}

// ------------------------------------------------------------------------------------------
// Workspace
// ------------------------------------------------------------------------------------------
// A call's scratch memory (column matrix, channels-last tables, ...) is carved from one buffer that
// is kept between calls, up to kMaxCachedBytes: fresh multi-megabyte allocations page-fault on
// every call (about 5 ms per forward+backward on the benchmark shapes). One call at a time uses
// it; a concurrent call allocates its own.
class Workspace {
 public:
  static constexpr int64_t kAlign = 64;
  static constexpr int64_t kMaxCachedBytes = int64_t(128) << 20;

  static int64_t bytes(at::IntArrayRef shape, at::ScalarType dtype) {
    const int64_t b = c10::multiply_integers(shape) * int64_t(c10::elementSize(dtype));
    return (b + kAlign - 1) / kAlign * kAlign;
  }

  explicit Workspace(int64_t total) : lock_(mutex(), std::try_to_lock) {
    total = std::max<int64_t>(total, kAlign);
    if (lock_.owns_lock() && total <= kMaxCachedBytes) {
      Tensor& cached = buffer();
      if (!cached.defined() || cached.numel() < total) {
        cached = Tensor();  // free the old one first
        cached = at::empty({total}, at::kByte);
      }
      buf_ = cached;
    } else {
      buf_ = at::empty({total}, at::kByte);
    }
  }

  // Frees the kept buffer (when no call is using it).
  static void release() {
    std::lock_guard<std::mutex> lock(mutex());
    buffer() = Tensor();
  }

  // The next free piece, as a contiguous tensor of `shape` and `dtype`.
  Tensor take(at::IntArrayRef shape, at::ScalarType dtype) {
    const int64_t b = bytes(shape, dtype);
    TORCH_INTERNAL_ASSERT(used_ + b <= buf_.numel(), "dcn workspace overrun");
    const int64_t numel = c10::multiply_integers(shape);
    Tensor t = buf_.narrow(0, used_, numel * int64_t(c10::elementSize(dtype))).view(dtype).view(shape);
    used_ += b;
    return t;
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static Tensor& buffer() {
    static Tensor* t = new Tensor();  // never destroyed: no teardown-order issue at exit
    return *t;
  }
  std::unique_lock<std::mutex> lock_;
  Tensor buf_;
  int64_t used_ = 0;
};

// ------------------------------------------------------------------------------------------
// Layouts
// ------------------------------------------------------------------------------------------
// input[s : s + b] as a channels-last (b, H, W, C) table in the accumulation type: a view when the
// input is already one, else written into `space` (b, H, W, C).
Tensor channels_last_table(const Tensor& input, int64_t s, int64_t b, const Tensor& space) {
  const auto acc = acc_type(input.scalar_type());
  const Tensor x = input.narrow(0, s, b);
  const Tensor cl = x.permute({0, 2, 3, 1});
  if (cl.is_contiguous() && x.scalar_type() == acc) return cl;
  const Tensor xc = x.contiguous();
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dcn_table", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    transpose_images(xc.data_ptr<scalar_t>(), space.data_ptr<acc_t>(), b, C, HW);
  });
  return space;
}

// The weight as the GEMM's left operand (groups, cog, K * cig), columns in the layout's order.
Tensor weight_matrix(const Tensor& weight, const Geometry& g) {
  const Tensor w = weight.contiguous();
  if (!g.kc) return w.view({g.groups, g.cog, g.cig * g.K});  // (c, k) columns: the weight as it is
  auto out = at::empty({g.groups, g.cog, g.K * g.cig}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "dcn_weight", [&] {
    transpose_images(w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g.groups * g.cog, g.cig, g.K);
  });
  return out;
}

// The weight gradient (C_out, cig, kh, kw) from its matrix (groups, cog, K * cig).
Tensor weight_from_matrix(const Tensor& m, const Geometry& g, at::ScalarType dtype) {
  if (!g.kc) return m.view({g.groups * g.cog, g.cig, g.kh, g.kw}).to(dtype);
  auto out = at::empty({g.groups * g.cog, g.cig, g.kh, g.kw}, m.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dcn_weight_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    transpose_images(m.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), g.groups * g.cog, g.K, g.cig);
  });
  return out;
}

// t[s : s + b] (b, groups * cog, Ho, Wo) as (groups, cog, b * L): a view for one image, else
// copied into `space`.
Tensor channel_major(const Tensor& t, int64_t s, int64_t b, const Geometry& g, const Tensor& space) {
  const Tensor x = t.narrow(0, s, b);
  if (b == 1) return x.reshape({g.groups, g.cog, g.L});
  space.view({g.groups, g.cog, b, g.L}).copy_(x.reshape({b, g.groups, g.cog, g.L}).permute({1, 2, 0, 3}));
  return space;
}

// ------------------------------------------------------------------------------------------
// Ops
// ------------------------------------------------------------------------------------------
// Two ways to run a call:
//  * fused: each task samples a tile of rows into a per-thread column buffer and multiplies it at
//    once (single-threaded GEMMs, one per task), so the columns never leave the core's L2 cache.
//    For weights small enough to be re-read from cache by every tile.
//  * chunked: the columns of a chunk of images are written out, then multiplied by GEMMs that use
//    every thread. For large weights, which a chunk-wide GEMM reads once.
constexpr int64_t kTileBytes = int64_t(512) << 10;
constexpr int64_t kTableBytes = int64_t(16) << 20;
constexpr int64_t kFusedWeightBytes = int64_t(1) << 20;

template <typename scalar_t>
const scalar_t* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

// Rows per fused task: column tiles of at most about kTileBytes, splitting an image evenly.
int64_t tile_rows(const Geometry& g, int64_t element_size) {
  const int64_t most = std::max(kTile, kTileBytes / std::max<int64_t>(1, g.K * g.C * element_size));
  const int64_t tiles = (g.L + most - 1) / most;
  return (g.L + tiles - 1) / tiles;
}

// fuse: 0 picks, 1 forces the fused path, 2 the chunked one (tests run both).
bool use_fused(const Geometry& g, at::ScalarType dtype, int64_t fuse, bool backward, int64_t threads) {
  if (fuse != 0) return fuse == 1;
  const int64_t weight_bytes = g.groups * g.cog * g.cig * g.K * int64_t(c10::elementSize(dtype));
  // The backward's tasks are whole images (each owns its input-gradient table).
  return weight_bytes <= kFusedWeightBytes && (!backward || g.n >= threads);
}

// The fused path's float32 tile products run on the brgemm micro-kernel when this torch has it.
bool use_brgemm(at::ScalarType dtype) {
  return dtype == at::kFloat && at::native::cpublas::brgemm != nullptr &&
         at::native::cpublas::brgemm_release != nullptr;
}

// The threads a call may use: one inside another parallel region (the tasks then run inline).
struct Threads {
  bool nested = at::in_parallel_region();
  int64_t count = nested ? 1 : at::get_num_threads();
  int64_t id() const { return nested ? 0 : at::get_thread_num(); }
};

// Columns of every image of the chunk into cols (groups, n * L, K * cig), in tasks of kTile rows.
void fill_chunk(const Tensor& table, const Tensor& off, const Tensor& m, const Tensor& cols, const Geometry& g,
                const Threads& threads) {
  RECORD_FUNCTION("dcn_cpu::fill_columns", std::vector<c10::IValue>());
  const int64_t per_image = (g.L + kTile - 1) / kTile;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cols.scalar_type(), "dcn_columns", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using st_t = typename Storage<scalar_t>::type;
    const auto in = sample_inputs<scalar_t>(table, off, m, 0, g.n);
    const Columns<st_t> cv{reinterpret_cast<st_t*>(cols.data_ptr<scalar_t>()), g.rows()};
    at::parallel_for(0, g.n * per_image, 1, [&](int64_t t0, int64_t t1) {
      Scratch<scalar_t, acc_t> sc(g);
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t n = task / per_image, l0 = (task - n * per_image) * kTile;
        fill_rows(sc, in, cv, n, l0, std::min(l0 + kTile, g.L), g);
      }
    });
  });
}

// Images per chunk of the fused path: channels-last tables of about kTableBytes, and at least one
// image per thread (the backward's tasks are images).
int64_t fused_chunk(const Geometry& g, int64_t element_size, int64_t threads) {
  const int64_t per_image = std::max<int64_t>(1, g.H * g.W * g.C * element_size);
  return std::min(g.n, std::max(threads, kTableBytes / per_image));
}

void forward_fused(const Tensor& input, const Tensor& offset, const Tensor& mask, const Tensor& w_mat,
                   const Tensor& out, const Geometry& g, const Threads& threads) {
  RECORD_FUNCTION("dcn_cpu::forward_fused", std::vector<c10::IValue>());
  const auto dtype = input.scalar_type(), acc = acc_type(dtype);
  const int64_t es = int64_t(c10::elementSize(dtype)), R = tile_rows(g, es), Kcg = g.K * g.cig;
  const int64_t chunk = fused_chunk(g, int64_t(c10::elementSize(acc)), threads.count);
  const std::vector<int64_t> table_shape{chunk, g.H, g.W, g.C}, cols_shape{g.groups * R * Kcg},
      res_shape{g.groups * g.cog * R};
  Workspace ws(Workspace::bytes(table_shape, acc) +
               threads.count * (Workspace::bytes(cols_shape, dtype) + Workspace::bytes(res_shape, dtype)));
  const Tensor table_space = ws.take(table_shape, acc);
  const bool micro = use_brgemm(dtype);
  const Tensor w_t = micro ? w_mat.transpose(1, 2).contiguous() : Tensor();  // (groups, K * cig, cog)
  std::vector<Tensor> cols_buf, res_buf;
  for (int64_t t = 0; t < threads.count; ++t) {
    cols_buf.push_back(ws.take(cols_shape, dtype));
    res_buf.push_back(ws.take(res_shape, dtype));
  }
  const int64_t per_image = (g.L + R - 1) / R, C_out = g.groups * g.cog;
  for (int64_t s = 0; s < g.n; s += chunk) {
    Geometry gc = g;
    const int64_t b = gc.n = std::min(chunk, g.n - s);
    const Tensor table = channels_last_table(input, s, b, table_space.narrow(0, 0, b));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dcn_forward_fused", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using st_t = typename Storage<scalar_t>::type;
      const auto in = sample_inputs<scalar_t>(table, offset, mask, s, b);
      scalar_t* o = out.narrow(0, s, b).data_ptr<scalar_t>();
      at::parallel_for(0, b * per_image, 1, [&](int64_t t0, int64_t t1) {
        const int64_t tid = threads.id();
        Scratch<scalar_t, acc_t> sc(gc);
        for (int64_t task = t0; task < t1; ++task) {
          const int64_t n = task / per_image, l0 = (task - n * per_image) * R, rt = std::min(R, g.L - l0);
          const Tensor cols = cols_buf[tid].narrow(0, 0, g.groups * rt * Kcg).view({g.groups, rt, Kcg});
          fill_rows(sc, in, Columns<st_t>{reinterpret_cast<st_t*>(cols.data_ptr<scalar_t>()), rt, n, l0}, n, l0,
                    l0 + rt, gc);
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (micro) {  // out^T (rt, cog) = cols (rt, K * cig) @ W^T, then transposed into out
              float* res = res_buf[tid].data_ptr<float>();
              for (int64_t gi = 0; gi < g.groups; ++gi) {
                at::native::cpublas::brgemm(rt, g.cog, Kcg, Kcg, g.cog, g.cog, false,
                                            cols.data_ptr<float>() + gi * rt * Kcg,
                                            w_t.data_ptr<float>() + gi * Kcg * g.cog, res, false);
                dcn_cpu::transpose_block(res, g.cog, o + (n * C_out + gi * g.cog) * g.L + l0, g.L, rt, g.cog);
              }
              continue;
            }
          }
          const Tensor res = res_buf[tid].narrow(0, 0, C_out * rt).view({g.groups, g.cog, rt});
          grouped_gemm(w_mat, cols.transpose(1, 2), res, false);
          const scalar_t* src = res.data_ptr<scalar_t>();
          for (int64_t oc = 0; oc < C_out; ++oc) {
            std::memcpy(o + (n * C_out + oc) * g.L + l0, src + oc * rt, rt * sizeof(scalar_t));
          }
        }
        if (micro) at::native::cpublas::brgemm_release(false);
      });
    });
  }
}

void forward_chunked(const Tensor& input, const Tensor& offset, const Tensor& mask, const Tensor& w_mat,
                     const Tensor& out, const Geometry& g, int64_t chunk, const Threads& threads) {
  const auto dtype = input.scalar_type(), acc = acc_type(dtype);
  const int64_t N = g.n, groups = g.groups;
  const int64_t rows = chunk * g.L;
  const std::vector<int64_t> table_shape{chunk, g.H, g.W, g.C}, cols_shape{groups, rows, g.K * g.cig},
      res_shape{groups, g.cog, rows};
  Workspace ws(Workspace::bytes(table_shape, acc) + Workspace::bytes(cols_shape, dtype) +
               (chunk > 1 ? Workspace::bytes(res_shape, dtype) : 0));
  const Tensor table_space = ws.take(table_shape, acc), cols_space = ws.take(cols_shape, dtype);
  const Tensor res_space = chunk > 1 ? ws.take(res_shape, dtype) : Tensor();
  for (int64_t s = 0; s < N; s += chunk) {
    Geometry gc = g;
    const int64_t b = gc.n = std::min(chunk, N - s);
    const Tensor table = channels_last_table(input, s, b, table_space.narrow(0, 0, b));
    const Tensor off = offset.narrow(0, s, b), m = mask.defined() ? mask.narrow(0, s, b) : Tensor();
    const Tensor cols = cols_space.narrow(1, 0, gc.rows());  // (groups, b*L, K*cig)
    fill_chunk(table, off, m, cols, gc, threads);
    if (b == 1) {  // out^T = W @ cols^T of one image is its NCHW output
      grouped_gemm(w_mat, cols.transpose(1, 2), out.narrow(0, s, 1).view({groups, g.cog, g.L}), false);
    } else {
      const Tensor res = res_space.narrow(2, 0, gc.rows());
      grouped_gemm(w_mat, cols.transpose(1, 2), res, false);
      out.narrow(0, s, b).view({b, groups, g.cog, g.L}).copy_(res.view({groups, g.cog, b, g.L}).permute({2, 0, 1, 3}));
    }
  }
}

struct Grads {
  Tensor input, offset, mask, weight_mat;  // undefined where not wanted; weight_mat (groups, cog, K*cig)
  bool sampling() const { return input.defined() || offset.defined() || mask.defined(); }
};

// One tile of the fused backward in float32 on oneDNN's brgemm micro-kernel: go (groups, cog, rt)
// holds the tile's grad_out rows, go_rows points at them in grad_out (row stride L).
// (A template so that the callers' dispatch over dtypes compiles; only float does anything.)
template <typename scalar_t, typename acc_t>
void backward_tile_brgemm(Scratch<scalar_t, acc_t>& sc, const SampleInputs<scalar_t, acc_t>& in,
                          const scalar_t* go, const scalar_t* go_rows, const Tensor& go_t_buf, scalar_t* cols,
                          const scalar_t* w_mat, acc_t* gw, acc_t* grad_img, scalar_t* grad_offset,
                          scalar_t* grad_mask, int64_t n, int64_t l0, int64_t rt, bool sampling, const Geometry& g) {
  if constexpr (std::is_same_v<scalar_t, float>) {
  using at::native::cpublas::brgemm;
  const int64_t Kcg = g.K * g.cig;
  if (gw) {  // grad_W (cog, K * cig) += go (cog, rt) @ cols (rt, K * cig)
    fill_rows(sc, in, Columns<float>{cols, rt, n, l0}, n, l0, l0 + rt, g);
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      brgemm(g.cog, Kcg, rt, rt, Kcg, Kcg, true, go + gi * g.cog * rt, cols + gi * rt * Kcg, gw + gi * g.cog * Kcg,
             false);
    }
  }
  if (!sampling) return;
  // gcols (rt, K * cig) = go^T (rt, cog) @ W (cog, K * cig), in place of the columns
  float* go_t = go_t_buf.data_ptr<float>();
  for (int64_t gi = 0; gi < g.groups; ++gi) {
    dcn_cpu::transpose_block(go_rows + gi * g.cog * g.L, g.L, go_t, g.cog, g.cog, rt);
    brgemm(rt, Kcg, g.cog, g.cog, Kcg, Kcg, false, go_t, w_mat + gi * g.cog * Kcg, cols + gi * rt * Kcg, false);
  }
  scatter_rows(sc, in, Columns<const float>{cols, rt, n, l0}, grad_img, n, l0, l0 + rt,
               int64_t(0), g.C, int64_t(0), static_cast<float*>(nullptr), grad_offset, grad_mask, g);
  }
}

void backward_fused(const Tensor& grad_out, const Tensor& input, const Tensor& offset, const Tensor& mask,
                    const Tensor& w_mat, Grads& gr, const Geometry& g, const Threads& threads) {
  RECORD_FUNCTION("dcn_cpu::backward_fused", std::vector<c10::IValue>());
  const auto dtype = input.scalar_type(), acc = acc_type(dtype);
  const int64_t es = int64_t(c10::elementSize(dtype)), R = tile_rows(g, es), Kcg = g.K * g.cig;
  const int64_t C_out = g.groups * g.cog, chunk = fused_chunk(g, int64_t(c10::elementSize(acc)), threads.count);
  const bool need_in = gr.input.defined(), need_w = gr.weight_mat.defined(), half = dtype != acc;
  const std::vector<int64_t> table_shape{chunk, g.H, g.W, g.C}, cols_shape{g.groups * R * Kcg},
      go_shape{C_out * R}, gw_shape{g.groups, g.cog, Kcg};
  Workspace ws(Workspace::bytes(table_shape, acc) * (need_in ? 2 : 1) +
               threads.count * (Workspace::bytes(cols_shape, dtype) + 2 * Workspace::bytes(go_shape, dtype) +
                                (need_w ? Workspace::bytes(gw_shape, acc) : 0) +
                                (need_w && half ? Workspace::bytes(gw_shape, dtype) : 0)));
  const Tensor table_space = ws.take(table_shape, acc);
  const Tensor grad_table_space = need_in ? ws.take(table_shape, acc) : Tensor();
  const bool micro = use_brgemm(dtype);
  std::vector<Tensor> cols_buf, go_buf, go_t_buf, gw_buf, part_buf;
  for (int64_t t = 0; t < threads.count; ++t) {
    cols_buf.push_back(ws.take(cols_shape, dtype));
    go_buf.push_back(ws.take(go_shape, dtype));
    if (micro) go_t_buf.push_back(ws.take(go_shape, dtype));  // grad_out rows, transposed
    if (need_w) gw_buf.push_back(ws.take(gw_shape, acc).zero_());  // each thread's part of grad_W
    if (need_w && half) part_buf.push_back(ws.take(gw_shape, dtype));  // one tile's, in half precision
  }
  const int64_t HWC = g.H * g.W * g.C;
  for (int64_t s = 0; s < g.n; s += chunk) {
    Geometry gc = g;
    const int64_t b = gc.n = std::min(chunk, g.n - s);
    const Tensor table = channels_last_table(input, s, b, table_space.narrow(0, 0, b));
    const Tensor grad_table = need_in ? grad_table_space.narrow(0, 0, b).zero_() : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dcn_backward_fused", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using st_t = typename Storage<scalar_t>::type;
      const auto in = sample_inputs<scalar_t>(table, offset, mask, s, b);
      const scalar_t* go_all = grad_out.narrow(0, s, b).data_ptr<scalar_t>();
      acc_t* g_table = need_in ? grad_table.data_ptr<acc_t>() : nullptr;
      scalar_t* g_off = gr.offset.defined() ? gr.offset.narrow(0, s, b).data_ptr<scalar_t>() : nullptr;
      scalar_t* g_mask = gr.mask.defined() ? gr.mask.narrow(0, s, b).data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, b, 1, [&](int64_t n0, int64_t n1) {
        const int64_t tid = threads.id();
        Scratch<scalar_t, acc_t> sc(gc);
        for (int64_t n = n0; n < n1; ++n) {
          for (int64_t l0 = 0; l0 < g.L; l0 += R) {
            const int64_t rt = std::min(R, g.L - l0);
            const Tensor go = go_buf[tid].narrow(0, 0, C_out * rt).view({g.groups, g.cog, rt});
            scalar_t* go_p = go.data_ptr<scalar_t>();
            for (int64_t oc = 0; oc < C_out; ++oc) {
              std::memcpy(go_p + oc * rt, go_all + (n * C_out + oc) * g.L + l0, rt * sizeof(scalar_t));
            }
            const Tensor cols = cols_buf[tid].narrow(0, 0, g.groups * rt * Kcg).view({g.groups, rt, Kcg});
            if constexpr (std::is_same_v<scalar_t, float>) {
              if (micro) {
                backward_tile_brgemm(sc, in, go_p, go_all + n * C_out * g.L + l0, go_t_buf[tid],
                                     cols.data_ptr<scalar_t>(), data_or_null<scalar_t>(w_mat),
                                     need_w ? gw_buf[tid].data_ptr<acc_t>() : nullptr,
                                     g_table ? g_table + n * HWC : nullptr, g_off, g_mask, n, l0, rt, gr.sampling(),
                                     gc);
                continue;
              }
            }
            if (need_w) {
              fill_rows(sc, in, Columns<st_t>{reinterpret_cast<st_t*>(cols.data_ptr<scalar_t>()), rt, n, l0},
                        n, l0, l0 + rt, gc);
              if (half) {  // accumulate in float32
                grouped_gemm(go, cols, part_buf[tid], false);
                gw_buf[tid].add_(part_buf[tid]);
              } else {
                grouped_gemm(go, cols, gw_buf[tid], true);
              }
            }
            if (!gr.sampling()) continue;
            grouped_gemm(go.transpose(1, 2), w_mat, cols, false);  // the column gradient, in place
            scatter_rows(sc, in,
                         Columns<const st_t>{reinterpret_cast<const st_t*>(cols.data_ptr<scalar_t>()), rt, n, l0},
                         g_table ? g_table + n * HWC : nullptr, n, l0, l0 + rt, int64_t(0), g.C, int64_t(0),
                         static_cast<acc_t*>(nullptr), g_off, g_mask, gc);
          }
        }
        if (micro) at::native::cpublas::brgemm_release(false);
      });
      if (need_in) {
        transpose_images(g_table, gr.input.narrow(0, s, b).data_ptr<scalar_t>(), b, g.H * g.W, g.C);
      }
    });
  }
  if (need_w) {
    gr.weight_mat.copy_(gw_buf[0]);
    for (int64_t t = 1; t < threads.count; ++t) gr.weight_mat.add_(gw_buf[t]);
  }
}

void backward_chunked(const Tensor& grad_out, const Tensor& input, const Tensor& offset, const Tensor& mask,
                      const Tensor& w_mat, Grads& gr, const Geometry& g, int64_t chunk, const Threads& threads) {
  const auto dtype = input.scalar_type(), acc = acc_type(dtype);
  const int64_t N = g.n, groups = g.groups;
  const bool need_in = gr.input.defined(), need_w = gr.weight_mat.defined();
  const bool need_grads = gr.offset.defined() || gr.mask.defined();
  const int64_t rows = chunk * g.L;
  // Enough (image, channel block) tasks for every thread, blocks of >= 16 channels.
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>(1, (threads.count + chunk - 1) / chunk),
                                           std::max<int64_t>(1, g.C / 16));
  const std::vector<int64_t> table_shape{chunk, g.H, g.W, g.C}, go_shape{groups, g.cog, rows},
      cols_shape{groups, rows, g.K * g.cig}, part_shape{groups, g.cog, g.K * g.cig},
      dots_shape{blocks, 4, rows * g.K * g.G};
  const bool half_w = need_w && dtype != acc;
  Workspace ws(Workspace::bytes(table_shape, acc) + (chunk > 1 ? Workspace::bytes(go_shape, dtype) : 0) +
               Workspace::bytes(cols_shape, dtype) + (half_w ? Workspace::bytes(part_shape, dtype) : 0) +
               (need_in ? Workspace::bytes(table_shape, acc) : 0) +
               (blocks > 1 ? Workspace::bytes(dots_shape, acc) : 0));
  const Tensor table_space = ws.take(table_shape, acc);
  const Tensor go_space = chunk > 1 ? ws.take(go_shape, dtype) : Tensor();
  const Tensor cols_space = ws.take(cols_shape, dtype);  // the columns, then their gradient
  const Tensor part = half_w ? ws.take(part_shape, dtype) : Tensor();
  const Tensor grad_table_space = need_in ? ws.take(table_shape, acc) : Tensor();
  const Tensor dots = blocks > 1 ? ws.take(dots_shape, acc) : Tensor();  // (blocks, 4, b * K * G * L) for b images
  for (int64_t s = 0; s < N; s += chunk) {
    Geometry gc = g;
    const int64_t b = gc.n = std::min(chunk, N - s);
    const Tensor table = channels_last_table(input, s, b, table_space.narrow(0, 0, b));
    const Tensor off = offset.narrow(0, s, b), m = mask.defined() ? mask.narrow(0, s, b) : Tensor();
    const Tensor go = channel_major(grad_out, s, b, g, b > 1 ? go_space.narrow(2, 0, gc.rows()) : Tensor());
    const Tensor cols = cols_space.narrow(1, 0, gc.rows());  // (groups, b*L, K*cig)
    if (need_w) {
      fill_chunk(table, off, m, cols, gc, threads);
      if (dtype == acc) {
        grouped_gemm(go, cols, gr.weight_mat, s > 0);
      } else {  // accumulate half-precision products in float32
        grouped_gemm(go, cols, part, false);
        s > 0 ? void(gr.weight_mat.add_(part)) : void(gr.weight_mat.copy_(part));
      }
    }
    if (!gr.sampling()) continue;
    const Tensor& gcols = cols;
    grouped_gemm(go.transpose(1, 2), w_mat, gcols, false);
    const Tensor grad_table = need_in ? grad_table_space.narrow(0, 0, b).zero_() : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dcn_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using st_t = typename Storage<scalar_t>::type;
      const auto in = sample_inputs<scalar_t>(table, off, m, 0, b);
      scalar_t* g_off = gr.offset.defined() ? gr.offset.narrow(0, s, b).data_ptr<scalar_t>() : nullptr;
      scalar_t* g_mask = gr.mask.defined() ? gr.mask.narrow(0, s, b).data_ptr<scalar_t>() : nullptr;
      acc_t* g_table = need_in ? grad_table.data_ptr<acc_t>() : nullptr;
      acc_t* dots_p = blocks > 1 ? dots.data_ptr<acc_t>() : nullptr;
      const Columns<const st_t> gcv{reinterpret_cast<const st_t*>(gcols.data_ptr<scalar_t>()), gc.rows()};
      const int64_t block = (g.C + blocks - 1) / blocks, HWC = g.H * g.W * g.C;
      {
        RECORD_FUNCTION("dcn_cpu::scatter_columns", std::vector<c10::IValue>());
        at::parallel_for(0, b * blocks, 1, [&](int64_t t0, int64_t t1) {
          Scratch<scalar_t, acc_t> sc(gc);
          for (int64_t task = t0; task < t1; ++task) {
            const int64_t n = task / blocks, blk = task - n * blocks;
            const int64_t b0 = blk * block, b1 = std::min(g.C, b0 + block);
            if (b0 >= b1) continue;
            scatter_rows(sc, in, gcv, g_table ? g_table + n * HWC : nullptr, n, 0, g.L, b0, b1, blk,
                         dots_p, g_off, g_mask, gc);
          }
        });
      }
      if (blocks > 1 && need_grads) {
        finish_grads<scalar_t, acc_t>(in.offset, in.mask, dots_p, blocks, g_off, g_mask, gc);
      }
      if (need_in) transpose_images(g_table, gr.input.narrow(0, s, b).data_ptr<scalar_t>(), b, g.H * g.W, g.C);
    });
  }
}

}  // namespace

// The entry points (ops.h), registered as torch.library ops in library.cpp.
namespace dcn_cpu {

Tensor deform_conv2d_forward(const Tensor& input_, const Tensor& offset_, const std::optional<Tensor>& mask_,
                             const Tensor& weight, const std::optional<Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups,
                             int64_t chunk, int64_t column_order, int64_t fuse) {
  RECORD_FUNCTION("dcn_cpu::deform_conv2d_forward", std::vector<c10::IValue>());
  Geometry g = make_geometry(input_, offset_, weight, stride, padding, dilation, groups, offset_groups);
  g.kc = use_kc_layout(g, g.n, column_order);
  const Tensor input = input_.detach();
  auto out = at::empty({g.n, groups * g.cog, g.Ho, g.Wo}, input.options());
  if (g.n == 0) return out;
  const Tensor offset = offset_.detach().contiguous();
  const Tensor mask = mask_.has_value() ? mask_->detach().contiguous() : Tensor();
  const Tensor w_mat = weight_matrix(weight.detach(), g);  // (groups, cog, K * cig)
  const Threads threads;
  if (use_fused(g, input.scalar_type(), fuse, false, threads.count)) {
    forward_fused(input, offset, mask, w_mat, out, g, threads);
  } else {
    forward_chunked(input, offset, mask, w_mat, out, g, std::min(std::max<int64_t>(1, chunk), g.n), threads);
  }
  if (bias.has_value()) out.add_(bias->detach().view({1, -1, 1, 1}));
  return out;
}

// [grad_input, grad_offset, grad_mask, grad_weight]; None where not wanted.
std::vector<std::optional<Tensor>> deform_conv2d_backward(
    const Tensor& grad_out_, const Tensor& input_, const Tensor& offset_, const std::optional<Tensor>& mask_,
    const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    int64_t offset_groups, int64_t chunk, int64_t column_order, int64_t fuse, c10::List<bool> needs) {
  RECORD_FUNCTION("dcn_cpu::deform_conv2d_backward", std::vector<c10::IValue>());
  Geometry g = make_geometry(input_, offset_, weight, stride, padding, dilation, groups, offset_groups);
  g.kc = use_kc_layout(g, g.n, column_order);
  TORCH_CHECK(needs.size() == 4, "needs: [input, offset, mask, weight]");
  const bool need_in = needs[0], need_off = needs[1], need_mask = needs[2] && mask_.has_value(), need_w = needs[3];
  const Tensor input = input_.detach();
  const auto dtype = input.scalar_type(), acc = acc_type(dtype);
  Grads gr;
  if (need_in) gr.input = at::empty(input.sizes(), input.options());
  if (need_off) gr.offset = at::empty(offset_.sizes(), offset_.options());
  if (need_mask) gr.mask = at::empty(mask_->sizes(), mask_->options());
  // written by the first chunk's GEMM (or the sum of the threads' parts), accumulated by the others
  if (need_w) gr.weight_mat = at::empty({groups, g.cog, g.K * g.cig}, weight.options().dtype(acc));
  if (g.n == 0) {
    for (Tensor* t : {&gr.input, &gr.offset, &gr.mask, &gr.weight_mat}) {
      if (t->defined()) t->zero_();
    }
  } else if (gr.sampling() || need_w) {
    const Tensor offset = offset_.detach().contiguous();
    const Tensor mask = mask_.has_value() ? mask_->detach().contiguous() : Tensor();
    const Tensor grad_out = grad_out_.detach().contiguous();
    const Tensor w_mat = gr.sampling() ? weight_matrix(weight.detach(), g) : Tensor();  // (groups, cog, K * cig)
    const Threads threads;
    if (use_fused(g, dtype, fuse, true, threads.count)) {
      backward_fused(grad_out, input, offset, mask, w_mat, gr, g, threads);
    } else {
      backward_chunked(grad_out, input, offset, mask, w_mat, gr, g, std::min(std::max<int64_t>(1, chunk), g.n),
                       threads);
    }
  }
  std::vector<std::optional<Tensor>> grads{std::nullopt, std::nullopt, std::nullopt, std::nullopt};
  if (need_in) grads[0] = gr.input;
  if (need_off) grads[1] = gr.offset;
  if (need_mask) grads[2] = gr.mask;
  if (need_w) grads[3] = weight_from_matrix(gr.weight_mat, g, weight.scalar_type());
  return grads;
}

void release_workspace() { Workspace::release(); }

}  // namespace dcn_cpu
