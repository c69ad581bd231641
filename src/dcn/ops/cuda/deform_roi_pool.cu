// Deformable RoI pooling kernels (Dai et al. 2017, sec. 2.2): RoIAlign whose bins are shifted by offsets.
//
// Layouts (all contiguous, row-major):
//   input        (N, C, H, W)
//   geometry     (K, 6)  accumulation type: start_x, start_y, bin_w, bin_h, shift_x, shift_y
//   roi_index    (K, 3)  index_t: batch index, grid_h, grid_w (samples per bin; 0 = no samples)
//   offset       (K, 2, out_h, out_w) or null, accumulation type; channel 0 moves bins along x,
//                channel 1 along y
//   output       (K, C, out_h, out_w)
// The per-RoI geometry is computed once on the host side by the same PyTorch code as the PyTorch path
// (dcn.ops._torch_deform_roi_pool._geometry), so both paths share roi_align's arithmetic exactly; the
// bin (ph, pw) of RoI k is shifted by (shift_x * offset[k, 0, ph, pw], shift_y * offset[k, 1, ph, pw]),
// shift = gamma * RoI size in feature coordinates. Like the geometry, the offsets are read in the
// accumulation type (float32 for half types): under autocast the features are 16-bit but offsets stay
// float32, and a float32 offset of a 1000 px RoI moves its bin by far less than a bfloat16 step.
//
// A RoI whose batch index is outside [0, N) pools to zero and receives no gradient: the host-side
// check of the indices needs a device-to-host copy, which the op skips while a CUDA graph is captured,
// so the kernels must never read outside the input on their own.
//
// Sampling follows torchvision's roi_align (bilinear_interpolate in roi_align_kernel.cpp), not the zero
// padding of grid_sample: a sample with y < -1 or y > H (or likewise in x) contributes zero; otherwise
// its coordinate is clamped into [0, H - 1] and interpolated, the border pixel getting full weight.
//
// Work decomposition: one thread per output element (k, c, ph, pw), pw fastest, as torchvision's
// roi_align kernels. Grid-stride loops over 64-bit indices; no shared memory, barriers or warp
// intrinsics, so the CPU shim in tests/ops/cuda can run the kernels serially.
#include "common.cuh"

namespace dcn {

// roi_align's bilinear footprint of one sample in an H x W plane.
// A NaN coordinate makes the sample NaN (nan set, inside false) and never reaches the integer
// conversion; an infinite one is outside like any far-away sample.
template <typename A>
struct RoISample {
  bool inside;             // -1 <= y <= H and -1 <= x <= W: the sample counts
  bool nan;                // y or x is NaN
  bool slope_y, slope_x;   // 0 < y < H - 1 (resp. x): the clamp does not freeze the coordinate
  index_t corner[4];       // flat plane index of (y0,x0) (y0,x1) (y1,x0) (y1,x1); y1 = y0 at the last row
  A ly, lx, hy, hx;

  __device__ __forceinline__ RoISample(A y, A x, index_t height, index_t width) {
    nan = y != y || x != x;
    inside = !nan && !(y < (A)-1 || y > (A)height || x < (A)-1 || x > (A)width);
    slope_y = y > (A)0 && y < (A)(height - 1);
    slope_x = x > (A)0 && x < (A)(width - 1);
    // Clamping before flooring keeps far-away coordinates from overflowing the integer conversion
    // (a NaN coordinate is clamped to 0: its corners are never read).
    const A yc = !(y > (A)0) ? (A)0 : (y >= (A)(height - 1) ? (A)(height - 1) : y);
    const A xc = !(x > (A)0) ? (A)0 : (x >= (A)(width - 1) ? (A)(width - 1) : x);
    const index_t y0 = floor_index(yc), x0 = floor_index(xc);
    const index_t y1 = y0 + 1 < height ? y0 + 1 : y0;
    const index_t x1 = x0 + 1 < width ? x0 + 1 : x0;
    ly = yc - (A)y0;
    lx = xc - (A)x0;
    hy = (A)1 - ly;
    hx = (A)1 - lx;
    corner[0] = y0 * width + x0;
    corner[1] = y0 * width + x1;
    corner[2] = y1 * width + x0;
    corner[3] = y1 * width + x1;
  }

  __device__ __forceinline__ void weights(A w[4]) const {
    w[0] = hy * hx;
    w[1] = hy * lx;
    w[2] = ly * hx;
    w[3] = ly * lx;
  }
};

// One output element's RoI and bin, decoded from a flat index, with the bin's first-sample origin.
template <typename A>
struct BinGeometry {
  index_t k, c, ph, pw, batch, grid_h, grid_w;
  A y_origin, x_origin, bin_h, bin_w, shift_y, shift_x;

  __device__ __forceinline__ BinGeometry(index_t i, const A* geometry, const index_t* roi_index,
                                         index_t channels, index_t out_h, index_t out_w) {
    pw = i % out_w;
    i /= out_w;
    ph = i % out_h;
    i /= out_h;
    c = i % channels;
    k = i / channels;
    const A* g = geometry + k * 6;
    const index_t* r = roi_index + k * 3;
    batch = r[0];
    grid_h = r[1];
    grid_w = r[2];
    bin_w = g[2];
    bin_h = g[3];
    shift_x = g[4];
    shift_y = g[5];
    // Same operation order as roi_align: start + p * bin, then + (i + 0.5) * bin / grid per sample.
    x_origin = g[0] + (A)pw * bin_w;
    y_origin = g[1] + (A)ph * bin_h;
  }

  __device__ __forceinline__ A sample_y(index_t iy) const {
    return y_origin + ((A)iy + (A)0.5) * bin_h / (A)grid_h;
  }
  __device__ __forceinline__ A sample_x(index_t ix) const {
    return x_origin + ((A)ix + (A)0.5) * bin_w / (A)grid_w;
  }
  __device__ __forceinline__ A count() const {
    const index_t n = grid_h * grid_w;
    return (A)(n > 1 ? n : 1);
  }
};

// output[k, c, ph, pw] = mean over the bin's grid_h x grid_w samples of bilinear(input[batch, c], sample
// + shift * offset[k, :, ph, pw]). Threads: K * C * out_h * out_w.
// A RoI with a batch index outside [0, batch_size) gives zeros.
template <typename T>
__global__ void deform_roi_pool_forward(const T* __restrict__ input,
                                        const typename acc_type<T>::type* __restrict__ geometry,
                                        const index_t* __restrict__ roi_index,
                                        const typename acc_type<T>::type* __restrict__ offset,
                                        T* __restrict__ output, index_t rois, index_t batch_size,
                                        index_t channels, index_t height, index_t width,
                                        index_t out_h, index_t out_w) {
  typedef typename acc_type<T>::type A;
  const index_t bins = out_h * out_w;
  const index_t total = rois * channels * bins;
  for (index_t i = global_thread_index(); i < total; i += grid_stride()) {
    const BinGeometry<A> b(i, geometry, roi_index, channels, out_h, out_w);
    if (b.batch < 0 || b.batch >= batch_size) {
      store(output + i, (A)0);
      continue;
    }
    A dy = 0, dx = 0;
    if (offset) {
      const index_t o = b.k * 2 * bins + b.ph * out_w + b.pw;
      dx = b.shift_x * load(offset + o);
      dy = b.shift_y * load(offset + o + bins);
    }
    const T* plane = input + (b.batch * channels + b.c) * height * width;
    A sum = 0;
    for (index_t iy = 0; iy < b.grid_h; ++iy) {
      const A y = b.sample_y(iy) + dy;
      for (index_t ix = 0; ix < b.grid_w; ++ix) {
        const RoISample<A> s(y, b.sample_x(ix) + dx, height, width);
        if (s.nan) sum += y + dx;  // NaN
        if (!s.inside) continue;
        A w[4];
        s.weights(w);
        for (int j = 0; j < 4; ++j) sum += w[j] * (A)load(plane + s.corner[j]);
      }
    }
    store(output + i, sum / b.count());
  }
}

// Backward: per output element, scatter grad_output / count * corner weight into grad_input with
// atomicAdd (if non-null), and add d output / d offset, summed over the bin's samples, into
// grad_offset[k, :, ph, pw] (if non-null; atomically, as the C channels of a bin share it). The
// derivative is that of the clamped coordinate: zero where the clamp freezes it or the sample is cut.
// Gradient buffers are in the accumulation type (float32 for half types) and start at zero. A RoI with
// a batch index outside [0, batch_size) writes no gradient.
template <typename T>
__global__ void deform_roi_pool_backward(const T* __restrict__ grad_output, const T* __restrict__ input,
                                         const typename acc_type<T>::type* __restrict__ geometry,
                                         const index_t* __restrict__ roi_index,
                                         const typename acc_type<T>::type* __restrict__ offset,
                                         typename acc_type<T>::type* __restrict__ grad_input,
                                         typename acc_type<T>::type* __restrict__ grad_offset,
                                         index_t rois, index_t batch_size, index_t channels,
                                         index_t height, index_t width, index_t out_h, index_t out_w) {
  typedef typename acc_type<T>::type A;
  const index_t bins = out_h * out_w;
  const index_t total = rois * channels * bins;
  for (index_t i = global_thread_index(); i < total; i += grid_stride()) {
    const BinGeometry<A> b(i, geometry, roi_index, channels, out_h, out_w);
    if (b.batch < 0 || b.batch >= batch_size) continue;
    const index_t o = b.k * 2 * bins + b.ph * out_w + b.pw;
    A dy = 0, dx = 0;
    if (offset) {
      dx = b.shift_x * load(offset + o);
      dy = b.shift_y * load(offset + o + bins);
    }
    const A g = (A)load(grad_output + i) / b.count();
    const index_t plane = (b.batch * channels + b.c) * height * width;
    A grad_y = 0, grad_x = 0;
    for (index_t iy = 0; iy < b.grid_h; ++iy) {
      const A y = b.sample_y(iy) + dy;
      for (index_t ix = 0; ix < b.grid_w; ++ix) {
        const RoISample<A> s(y, b.sample_x(ix) + dx, height, width);
        if (s.nan) {  // the output is NaN: so is its offset gradient; nothing reaches the input
          grad_y = grad_x = y + dx;
          continue;
        }
        if (!s.inside) continue;
        if (grad_input) {
          A w[4];
          s.weights(w);
          for (int j = 0; j < 4; ++j) atomicAdd(grad_input + plane + s.corner[j], g * w[j]);
        }
        if (grad_offset) {
          A v[4];
          for (int j = 0; j < 4; ++j) v[j] = (A)load(input + plane + s.corner[j]);
          if (s.slope_y) grad_y += s.hx * (v[2] - v[0]) + s.lx * (v[3] - v[1]);
          if (s.slope_x) grad_x += s.hy * (v[1] - v[0]) + s.ly * (v[3] - v[2]);
        }
      }
    }
    if (grad_offset && !(grad_x == (A)0 && grad_y == (A)0)) {  // NaN is added too
      atomicAdd(grad_offset + o, g * grad_x * b.shift_x);
      atomicAdd(grad_offset + o + bins, g * grad_y * b.shift_y);
    }
  }
}

}  // namespace dcn
