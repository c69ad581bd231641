// Deformable convolution kernels (DCN v1, with the DCN v2 mask as an option).
//
// Layouts (all contiguous, row-major):
//   input        (B, C, H, W)
//   offset       (B, 2 * G * K, Ho, Wo)   channel g*2K + 2k is dy, g*2K + 2k + 1 is dx of kernel point k
//   mask         (B, G * K, Ho, Wo)       or null
//   columns      (C, K, B, Ho * Wo)       batch inside: per conv group, one (C/groups * K, B * L) GEMM
//                                          operand for the whole batch chunk (as torchvision's columns)
// with K = kh * kw, L = Ho * Wo, G offset groups; input channel c belongs to offset group c / (C / G).
//
// Work decomposition: one thread per *sample point* (b, g, k, l) and per chunk of the group's channels.
// The sample position, its four bilinear corners and weights are computed once and reused for every
// channel of the chunk (torchvision recomputes them per channel). The launcher (Python,
// dcn.ops._cupy_deform_conv.sample_launch_config) picks the chunk size so that small problems still fill
// the GPU. Flat thread index, slowest to fastest: b, g, chunk, k, l, so that neighbouring threads touch
// neighbouring output positions (coalesced offset/mask/column accesses).
//
// Kernels use grid-stride loops over 64-bit indices and no shared memory, barriers or warp intrinsics:
// every thread is independent, so the CPU shim in tests/ops/cuda can run them serially.
#include "common.cuh"

namespace dcn {

// Bilinear footprint of one sample point in an H x W plane, with torchvision's zero padding: corners
// outside the plane read as zero, so the value is zero unless -1 < y < H and -1 < x < W. Derivatives
// with respect to the position are one-sided from above (the cell [floor(y), floor(y) + 1]), also as
// torchvision: at y == -1 exactly the value is 0 but d/dy is not, hence the closed bound at -1.
//
// A NaN coordinate is not "outside": its sample is NaN (and so are its position and mask
// derivatives), as a NaN anywhere in a convolution's input makes the outputs that read it NaN. It
// never reaches the integer conversion. An infinite coordinate is outside (zero, zero derivative).
template <typename A>
struct Bilinear {
  bool inside;           // -1 <= y < H and -1 <= x < W: some corner can carry value or derivative
  bool nan;              // y or x is NaN (then inside is false)
  index_t corner[4];     // flat plane index of corners (y0,x0) (y0,x1) (y1,x0) (y1,x1)
  bool valid[4];         // corner inside the plane
  A ly, lx, hy, hx;      // fractional parts and their complements

  __device__ __forceinline__ Bilinear(A y, A x, index_t height, index_t width) {
    nan = y != y || x != x;
    inside = y >= (A)-1 && y < (A)height && x >= (A)-1 && x < (A)width;  // false for NaN
    const index_t y0 = inside ? floor_index(y) : 0;
    const index_t x0 = inside ? floor_index(x) : 0;
    ly = y - (A)y0;
    lx = x - (A)x0;
    hy = (A)1 - ly;
    hx = (A)1 - lx;
    const bool vy0 = inside && y0 >= 0, vy1 = inside && y0 + 1 < height;
    const bool vx0 = inside && x0 >= 0, vx1 = inside && x0 + 1 < width;
    valid[0] = vy0 && vx0;
    valid[1] = vy0 && vx1;
    valid[2] = vy1 && vx0;
    valid[3] = vy1 && vx1;
    corner[0] = y0 * width + x0;
    corner[1] = corner[0] + 1;
    corner[2] = corner[0] + width;
    corner[3] = corner[2] + 1;
  }

  // Interpolation weight of corner i (zero outside the plane).
  __device__ __forceinline__ A weight(int i) const {
    const A w = (i == 0) ? hy * hx : (i == 1) ? hy * lx : (i == 2) ? ly * hx : ly * lx;
    return valid[i] ? w : (A)0;
  }

  template <typename T>
  __device__ __forceinline__ void read(const T* plane, A v[4]) const {
    for (int i = 0; i < 4; ++i) v[i] = valid[i] ? (A)load(plane + corner[i]) : (A)0;
  }
};

// One thread's sample point: batch b, offset group g, kernel point k, output position l, its
// channel range [c_begin, c_end), the flat indices of its offset pair and mask value, and its
// position (y, x) in the input plane with its mask value m.
template <typename A>
struct ConvSample {
  index_t b, g, k, l, c_begin, c_end, off_idx, mask_idx;
  A y, x, m;
};

// The geometry both kernels share, from their common arguments: the number of threads' work items
// (total) and, for a flat thread index, its sample point. Flat index, slowest to fastest: b, g,
// channel chunk, k, l (see the file comment).
struct ConvGrid {
  index_t batch, channels, height, width, out_w, kernel_w, stride_h, stride_w, pad_h, pad_w;
  index_t dilation_h, dilation_w, offset_groups, channels_per_thread;
  index_t K, L, group_channels, chunks, total, plane_size;

  __device__ __forceinline__ ConvGrid(index_t batch, index_t channels, index_t height, index_t width,
                                      index_t out_h, index_t out_w, index_t kernel_h, index_t kernel_w,
                                      index_t stride_h, index_t stride_w, index_t pad_h, index_t pad_w,
                                      index_t dilation_h, index_t dilation_w, index_t offset_groups,
                                      index_t channels_per_thread)
      : batch(batch), channels(channels), height(height), width(width), out_w(out_w),
        kernel_w(kernel_w), stride_h(stride_h), stride_w(stride_w), pad_h(pad_h), pad_w(pad_w),
        dilation_h(dilation_h), dilation_w(dilation_w), offset_groups(offset_groups),
        channels_per_thread(channels_per_thread), K(kernel_h * kernel_w), L(out_h * out_w),
        group_channels(channels / offset_groups),
        chunks((group_channels + channels_per_thread - 1) / channels_per_thread),
        total(batch * offset_groups * chunks * K * L), plane_size(height * width) {}

  template <typename T>
  __device__ __forceinline__ ConvSample<typename acc_type<T>::type> sample(index_t i, const T* offset,
                                                                           const T* mask) const {
    typedef typename acc_type<T>::type A;
    ConvSample<A> p;
    p.l = i % L;
    i /= L;
    p.k = i % K;
    i /= K;
    const index_t chunk = i % chunks;
    i /= chunks;
    p.g = i % offset_groups;
    p.b = i / offset_groups;
    p.c_begin = p.g * group_channels + chunk * channels_per_thread;
    const index_t end = p.c_begin + channels_per_thread, group_end = (p.g + 1) * group_channels;
    p.c_end = end < group_end ? end : group_end;
    const index_t ho = p.l / out_w, wo = p.l % out_w;
    const index_t ki = p.k / kernel_w, kj = p.k % kernel_w;
    p.off_idx = ((p.b * offset_groups + p.g) * 2 * K + 2 * p.k) * L + p.l;
    p.mask_idx = ((p.b * offset_groups + p.g) * K + p.k) * L + p.l;
    p.y = (A)(ho * stride_h - pad_h + ki * dilation_h) + load(offset + p.off_idx);
    p.x = (A)(wo * stride_w - pad_w + kj * dilation_w) + load(offset + p.off_idx + L);
    p.m = mask ? (A)load(mask + p.mask_idx) : (A)1;
    return p;
  }
};

// Deformable im2col: columns[c, k, b, l] = mask[b, g, k, l] * bilinear(input[b, c], p_l + p_k + offset).
// Threads: batch * offset_groups * chunks * K * L, chunks = ceil((C / G) / channels_per_thread).
template <typename T>
__global__ void deform_conv2d_im2col(const T* __restrict__ input, const T* __restrict__ offset,
                                     const T* __restrict__ mask, T* __restrict__ columns,
                                     index_t batch, index_t channels, index_t height, index_t width,
                                     index_t out_h, index_t out_w, index_t kernel_h, index_t kernel_w,
                                     index_t stride_h, index_t stride_w, index_t pad_h, index_t pad_w,
                                     index_t dilation_h, index_t dilation_w, index_t offset_groups,
                                     index_t channels_per_thread) {
  typedef typename acc_type<T>::type A;
  const ConvGrid grid(batch, channels, height, width, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                      pad_h, pad_w, dilation_h, dilation_w, offset_groups, channels_per_thread);
  const index_t K = grid.K, L = grid.L;
  for (index_t i = global_thread_index(); i < grid.total; i += grid_stride()) {
    const ConvSample<A> p = grid.sample(i, offset, mask);
    const A y = p.y, x = p.x, m = p.m;
    const Bilinear<A> s(y, x, height, width);
    A w[4];
    for (int j = 0; j < 4; ++j) w[j] = s.weight(j) * m;
    const A nan_sample = y + x;  // NaN; used only when s.nan
    for (index_t c = p.c_begin; c < p.c_end; ++c) {
      A v[4];
      s.read(input + (p.b * channels + c) * grid.plane_size, v);
      store(columns + ((c * K + p.k) * batch + p.b) * L + p.l,
            s.nan ? nan_sample : w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3]);
    }
  }
}

// Backward of the sampling step, fused for input, offset and mask gradients.
//
// grad_columns (C, K, B, L) is d loss / d columns (= W^T grad_out per group, computed by cuBLAS).
// Per sample point and channel chunk a thread
//   - scatters grad_columns * mask * corner weight into grad_input with atomicAdd (if non-null);
//   - accumulates over its channels d/dy, d/dx of the bilinear value (times grad_columns * mask) and
//     the unmasked value times grad_columns, i.e. the offset and mask gradients (if non-null).
// Gradient buffers use the accumulation type (float32 for half types). With one chunk per group the
// offset/mask gradients are stored directly (deterministic); with several they are atomically added,
// and the caller passes zero-filled buffers.
template <typename T>
__global__ void deform_conv2d_backward_sample(
    const T* __restrict__ input, const T* __restrict__ offset, const T* __restrict__ mask,
    const T* __restrict__ grad_columns, typename acc_type<T>::type* __restrict__ grad_input,
    typename acc_type<T>::type* __restrict__ grad_offset,
    typename acc_type<T>::type* __restrict__ grad_mask, index_t batch, index_t channels,
    index_t height, index_t width, index_t out_h, index_t out_w, index_t kernel_h, index_t kernel_w,
    index_t stride_h, index_t stride_w, index_t pad_h, index_t pad_w, index_t dilation_h,
    index_t dilation_w, index_t offset_groups, index_t channels_per_thread) {
  typedef typename acc_type<T>::type A;
  const ConvGrid grid(batch, channels, height, width, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                      pad_h, pad_w, dilation_h, dilation_w, offset_groups, channels_per_thread);
  const index_t K = grid.K, L = grid.L, chunks = grid.chunks;
  const bool need_coordinates = grad_offset != nullptr || grad_mask != nullptr;
  for (index_t i = global_thread_index(); i < grid.total; i += grid_stride()) {
    const ConvSample<A> p = grid.sample(i, offset, mask);
    const A y = p.y, x = p.x, m = p.m;
    const index_t off_idx = p.off_idx, mask_idx = p.mask_idx;
    const Bilinear<A> s(y, x, height, width);
    A grad_y = 0, grad_x = 0, grad_m = 0;
    if (s.inside) {
      A w[4];
      for (int j = 0; j < 4; ++j) w[j] = s.weight(j);
      for (index_t c = p.c_begin; c < p.c_end; ++c) {
        const A gc = load(grad_columns + ((c * K + p.k) * batch + p.b) * L + p.l);
        const index_t plane = (p.b * channels + c) * grid.plane_size;
        if (grad_input) {
          const A gcm = gc * m;
          for (int j = 0; j < 4; ++j)
            if (s.valid[j]) atomicAdd(grad_input + plane + s.corner[j], gcm * w[j]);
        }
        if (need_coordinates) {
          A v[4];
          s.read(input + plane, v);
          grad_m += gc * (w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3]);
          grad_y += gc * (s.hx * (v[2] - v[0]) + s.lx * (v[3] - v[1]));
          grad_x += gc * (s.hy * (v[1] - v[0]) + s.ly * (v[3] - v[2]));
        }
      }
    }
    if (!need_coordinates) continue;
    grad_y *= m;
    grad_x *= m;
    if (s.nan) grad_y = grad_x = grad_m = y + x;  // NaN: the sample itself is NaN
    if (chunks == 1) {
      if (grad_offset) {
        grad_offset[off_idx] = grad_y;
        grad_offset[off_idx + L] = grad_x;
      }
      if (grad_mask) grad_mask[mask_idx] = grad_m;
    } else if (s.inside || s.nan) {  // nothing to add outside the plane; the buffers start at zero
      if (grad_offset) {
        atomicAdd(grad_offset + off_idx, grad_y);
        atomicAdd(grad_offset + off_idx + L, grad_x);
      }
      if (grad_mask) atomicAdd(grad_mask + mask_idx, grad_m);
    }
  }
}

}  // namespace dcn
