// CPU deformable RoI pooling (dcn PyTorch path): forward and first-order backward.
//
// Every output bin is the mean of its bilinear samples (torchvision's roi_align, with the bin
// shifted by gamma * RoI size * offset). The samples of a bin form a grid whose y coordinates
// depend on the bin row only and x coordinates on the bin column only, so the per-axis work
// (roi_align's clamping rule, weights, derivatives) is done once per grid row and column, as
// torchvision's pre_calc does. The input is read from a channels-last copy, so a bilinear corner
// is one contiguous run of channels and the inner loops are vector loops over channels.
//
// Forward: tasks are RoIs (interleaved over the threads, as box sizes vary). Backward: tasks are
// channel blocks, each running over every sample: bins of different RoIs read the same pixels,
// and disjoint channel blocks keep the input-gradient scatter free of atomics. The same pass
// takes each bin's offset gradient, the dot product of the bin's output gradient with the
// derivative of its sample sum (per block, summed at the end).
//
// Conventions are deform_roi_pool's (dcn/ops/_torch_deform_roi_pool.py): roi_align's sampling
// rule and arithmetic; a NaN coordinate makes its bin and the bin's offset gradient NaN and adds
// nothing to the input gradient; an infinite one is a sample outside the map.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "channels_last.h"
#include "ops.h"

// roi_align's arithmetic rounding for rounding (its float32 results are matched to the last bits):
// no fused multiply-adds.
#pragma GCC optimize("fp-contract=off")

namespace {

using at::Tensor;

struct Pooling {
  int64_t N, C, H, W, K, out_h, out_w;
  double spatial_scale, gamma;
  int64_t sampling_ratio;
  bool aligned;
  int64_t bins() const { return out_h * out_w; }
};

// One RoI's geometry, with roi_align's arithmetic (roi_align_kernel.cpp).
template <typename T>
struct RoI {
  int64_t batch;
  T start_x, start_y, width, height, bin_w, bin_h, count;
  int64_t grid_h, grid_w;

  RoI(const T* roi, const Pooling& p) {
    const T shift = p.aligned ? T(0.5) : T(0), scale = static_cast<T>(p.spatial_scale);
    batch = static_cast<int64_t>(roi[0]);
    start_x = roi[1] * scale - shift;
    start_y = roi[2] * scale - shift;
    const T end_x = roi[3] * scale - shift, end_y = roi[4] * scale - shift;
    width = end_x - start_x;
    height = end_y - start_y;
    if (!p.aligned) {  // legacy roi_align: malformed RoIs are forced to 1x1
      width = std::max(width, T(1));
      height = std::max(height, T(1));
    }
    bin_h = height / static_cast<T>(p.out_h);
    bin_w = width / static_cast<T>(p.out_w);
    // ceil(roi / out) as torchvision; a degenerate (negative) RoI has no samples and pools to 0
    grid_h = p.sampling_ratio > 0 ? p.sampling_ratio : std::max<int64_t>(0, static_cast<int64_t>(std::ceil(bin_h)));
    grid_w = p.sampling_ratio > 0 ? p.sampling_ratio : std::max<int64_t>(0, static_cast<int64_t>(std::ceil(bin_w)));
    count = static_cast<T>(std::max<int64_t>(grid_h * grid_w, 1));
  }
};

// One sample coordinate along one axis, by roi_align's rule: outside [-1, size] it contributes
// nothing; else it is clamped into [0, size - 1] and interpolated between low and high.
template <typename T>
struct Axis {
  bool nan, keep, slope;  // slope: the weights move with the coordinate (not clamped)
  int64_t low, high;
  T l, h;  // weights of high and low: frac, 1 - frac

  Axis(T c, int64_t size) {
    nan = std::isnan(c);
    keep = c >= -1 && c <= static_cast<T>(size);  // false for NaN
    slope = keep && c > 0 && c < static_cast<T>(size - 1);
    const T cc = keep ? std::min(std::max(c, T(0)), static_cast<T>(size - 1)) : T(0);
    low = static_cast<int64_t>(std::floor(cc));
    high = std::min(low + 1, size - 1);
    l = cc - static_cast<T>(low);
    h = 1 - l;
  }
};

// The sample axes of bin (ph, pw) of a RoI: grid rows iy and columns ix.
template <typename T>
void bin_axes(const RoI<T>& roi, const T* offset_bin_y, const T* offset_bin_x, int64_t ph, int64_t pw,
              const Pooling& p, std::vector<Axis<T>>& ys, std::vector<Axis<T>>& xs) {
  ys.clear();
  xs.clear();
  const T dy = offset_bin_y ? static_cast<T>(p.gamma) * roi.height * *offset_bin_y : T(0);
  const T dx = offset_bin_x ? static_cast<T>(p.gamma) * roi.width * *offset_bin_x : T(0);
  for (int64_t iy = 0; iy < roi.grid_h; ++iy) {
    T y = roi.start_y + ph * roi.bin_h + static_cast<T>(iy + .5f) * roi.bin_h / static_cast<T>(roi.grid_h);
    if (offset_bin_y) y = y + dy;
    ys.emplace_back(y, p.H);
  }
  for (int64_t ix = 0; ix < roi.grid_w; ++ix) {
    T x = roi.start_x + pw * roi.bin_w + static_cast<T>(ix + .5f) * roi.bin_w / static_cast<T>(roi.grid_w);
    if (offset_bin_x) x = x + dx;
    xs.emplace_back(x, p.W);
  }
}

// acc[c] += w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c]
template <typename T>
inline void add_blend(T* __restrict__ acc, const T* __restrict__ p0, const T* __restrict__ p1,
                      const T* __restrict__ p2, const T* __restrict__ p3, T w0, T w1, T w2, T w3, int64_t len) {
#pragma omp simd
  for (int64_t c = 0; c < len; ++c) acc[c] += w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
}

// Calls f(ay, ax) for each sample of a bin that counts (inside on both axes, roi_align's border rule).
// Returns whether a sample coordinate is NaN, which makes the whole bin NaN.
template <typename T, typename F>
bool for_each_sample(const std::vector<Axis<T>>& ys, const std::vector<Axis<T>>& xs, F&& f) {
  bool nan = false;
  for (const auto& ay : ys) {
    for (const auto& ax : xs) {
      if (ay.nan || ax.nan) {
        nan = true;
      } else if (ay.keep && ax.keep) {
        f(ay, ax);
      }
    }
  }
  return nan;
}

// Calls f(b) for each bin b = ph * out_w + pw of RoI k, with ys and xs holding the bin's sample axes.
template <typename T, typename F>
void for_each_bin(const RoI<T>& roi, int64_t k, const T* offset, const Pooling& p, std::vector<Axis<T>>& ys,
                  std::vector<Axis<T>>& xs, F&& f) {
  const int64_t bins = p.bins();
  for (int64_t ph = 0; ph < p.out_h; ++ph) {
    for (int64_t pw = 0; pw < p.out_w; ++pw) {
      const int64_t b = ph * p.out_w + pw;
      const T* oy = offset ? offset + ((k * 2 + 1) * bins + b) : nullptr;
      const T* ox = offset ? offset + (k * 2 * bins + b) : nullptr;
      bin_axes(roi, oy, ox, ph, pw, p, ys, xs);
      f(b);
    }
  }
}

// Threads work on stripes of RoIs (RoI r belongs to stripe r % stripes): sizes, and so costs, vary.
template <typename F>
void for_roi_stripes(int64_t K, F&& f) {
  const int64_t stripes = std::min<int64_t>(K, std::max<int64_t>(1, at::get_num_threads()) * 8);
  at::parallel_for(0, stripes, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      for (int64_t k = s; k < K; k += stripes) f(k);
    }
  });
}

template <typename T>
void pool_forward(const T* table, const T* rois, const T* offset, T* out_rows, const Pooling& p) {
  RECORD_FUNCTION("dcn_cpu::roi_pool_forward", std::vector<c10::IValue>());
  const int64_t C = p.C, bins = p.bins();
  for_roi_stripes(p.K, [&](int64_t k) {
    thread_local std::vector<Axis<T>> ys, xs;
    const RoI<T> roi(rois + k * 5, p);
    const T* img = table + roi.batch * p.H * p.W * C;
    for_each_bin(roi, k, offset, p, ys, xs, [&](int64_t b) {
      T* acc = out_rows + (k * bins + b) * C;
      std::fill(acc, acc + C, T(0));
      const bool nan = for_each_sample(ys, xs, [&](const Axis<T>& ay, const Axis<T>& ax) {
        const T* r0 = img + ay.low * p.W * C;
        const T* r1 = img + ay.high * p.W * C;
        add_blend(acc, r0 + ax.low * C, r0 + ax.high * C, r1 + ax.low * C, r1 + ax.high * C, ay.h * ax.h,
                  ay.h * ax.l, ay.l * ax.h, ay.l * ax.l, C);
      });
      const T v = nan ? std::numeric_limits<T>::quiet_NaN() : T(0);
      for (int64_t c = 0; c < C; ++c) acc[c] = nan ? v : acc[c] / roi.count;
    });
  });
}

// grad_table (N, H, W, C), zeroed, or null; dots (blocks, K * bins, 2) per-block partial
// (d bin / d x, d bin / d y) . grad, or null.
template <typename T>
void pool_backward(const T* table, const T* rois, const T* offset, const T* grad_rows, T* grad_table, T* dots,
                   int64_t blocks, const Pooling& p) {
  RECORD_FUNCTION("dcn_cpu::roi_pool_backward", std::vector<c10::IValue>());
  const int64_t C = p.C, bins = p.bins(), block = (C + blocks - 1) / blocks;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Axis<T>> ys, xs;
    std::vector<T> dy_row(dots ? C : 0), dx_row(dots ? C : 0);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * block, c1 = std::min(C, c0 + block), len = c1 - c0;
      if (len <= 0) continue;
      for (int64_t k = 0; k < p.K; ++k) {
        const RoI<T> roi(rois + k * 5, p);
        const int64_t img = roi.batch * p.H * p.W * C;
        for_each_bin(roi, k, offset, p, ys, xs, [&](int64_t b) {
          const T* g = grad_rows + (k * bins + b) * C + c0;
          if (dots) {
            std::fill(dy_row.begin(), dy_row.begin() + len, T(0));
            std::fill(dx_row.begin(), dx_row.begin() + len, T(0));
          }
          const bool is_nan = for_each_sample(ys, xs, [&](const Axis<T>& ay, const Axis<T>& ax) {
            const int64_t r0 = img + ay.low * p.W * C + c0, r1 = img + ay.high * p.W * C + c0;
            const int64_t i00 = r0 + ax.low * C, i01 = r0 + ax.high * C, i10 = r1 + ax.low * C, i11 = r1 + ax.high * C;
            if (grad_table) {
              // torchvision: g_j = grad * w_j / count; corners may coincide at the border
              const T w00 = ay.h * ax.h / roi.count, w01 = ay.h * ax.l / roi.count;
              const T w10 = ay.l * ax.h / roi.count, w11 = ay.l * ax.l / roi.count;
              T *q00 = grad_table + i00, *q01 = grad_table + i01, *q10 = grad_table + i10, *q11 = grad_table + i11;
              for (int64_t c = 0; c < len; ++c) q00[c] += w00 * g[c];
              for (int64_t c = 0; c < len; ++c) q01[c] += w01 * g[c];
              for (int64_t c = 0; c < len; ++c) q10[c] += w10 * g[c];
              for (int64_t c = 0; c < len; ++c) q11[c] += w11 * g[c];
            }
            if (dots && (ay.slope || ax.slope)) {
              // d/dy of the sample: (row high - row low) weighted along x; d/dx alike.
              const T sy = ay.slope ? T(1) : T(0), sx = ax.slope ? T(1) : T(0);
              const T *p00 = table + i00, *p01 = table + i01, *p10 = table + i10, *p11 = table + i11;
              const T hx = ax.h * sy, lx = ax.l * sy, hy = ay.h * sx, ly = ay.l * sx;
              T* __restrict__ dyr = dy_row.data();
              T* __restrict__ dxr = dx_row.data();
#pragma omp simd
              for (int64_t c = 0; c < len; ++c) {
                dyr[c] += (p10[c] - p00[c]) * hx + (p11[c] - p01[c]) * lx;
                dxr[c] += (p01[c] - p00[c]) * hy + (p11[c] - p10[c]) * ly;
              }
            }
          });
          if (dots) {
            T sy = 0, sx = 0;
#pragma omp simd reduction(+ : sy, sx)
            for (int64_t c = 0; c < len; ++c) {
              sy += g[c] * dy_row[c];
              sx += g[c] * dx_row[c];
            }
            T* d = dots + (blk * p.K * bins + k * bins + b) * 2;
            d[0] = is_nan ? nan : sx / roi.count;
            d[1] = is_nan ? nan : sy / roi.count;
          }
        });
      }
    }
  });
}

Pooling make_pooling(const Tensor& input, const Tensor& rois, int64_t out_h, int64_t out_w, double spatial_scale,
                     int64_t sampling_ratio, double gamma, bool aligned) {
  TORCH_CHECK(input.dim() == 4 && rois.dim() == 2 && rois.size(1) == 5, "input (N, C, H, W) and rois (K, 5)");
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(), "input and rois must share a dtype");
  return {input.size(0), input.size(1), input.size(2), input.size(3), rois.size(0), out_h, out_w,
          spatial_scale, gamma, sampling_ratio, aligned};
}

// (N, C, H, W) -> (N, H, W, C)
Tensor to_table(const Tensor& input) {
  const Tensor x = input.contiguous();
  auto table = at::empty({x.size(0), x.size(2), x.size(3), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dcn_roi_table", [&] {
    dcn_cpu::transpose_images(x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), x.size(0), x.size(1),
                              x.size(2) * x.size(3));
  });
  return table;
}

}  // namespace

// The entry points (ops.h), registered as torch.library ops in library.cpp.
namespace dcn_cpu {

Tensor deform_roi_pool_forward(const Tensor& input_, const Tensor& rois_, const std::optional<Tensor>& offset_,
                               int64_t out_h, int64_t out_w, double spatial_scale, int64_t sampling_ratio, double gamma,
                               bool aligned) {
  const Tensor input = input_.detach(), rois = rois_.detach().contiguous();
  const Pooling p = make_pooling(input, rois, out_h, out_w, spatial_scale, sampling_ratio, gamma, aligned);
  auto out = at::empty({p.K, p.C, out_h, out_w}, input.options());
  if (p.K == 0 || p.C == 0) return out.zero_();
  const Tensor offset = offset_.has_value() ? offset_->detach().contiguous() : Tensor();
  const Tensor table = to_table(input);
  auto rows = at::empty({p.K, p.bins(), p.C}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcn_roi_pool_forward", [&] {
    pool_forward<scalar_t>(table.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
                           offset.defined() ? offset.data_ptr<scalar_t>() : nullptr, rows.data_ptr<scalar_t>(), p);
    // (K, bins, C) -> (K, C, bins)
    dcn_cpu::transpose_images(rows.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), p.K, p.bins(), p.C);
  });
  return out;
}

// [grad_input, grad_offset]; None where not wanted.
std::vector<std::optional<Tensor>> deform_roi_pool_backward(
    const Tensor& grad_out_, const Tensor& input_, const Tensor& rois_, const std::optional<Tensor>& offset_,
    int64_t out_h, int64_t out_w, double spatial_scale, int64_t sampling_ratio, double gamma, bool aligned,
    bool need_input, bool need_offset) {
  const Tensor input = input_.detach(), rois = rois_.detach().contiguous();
  const Pooling p = make_pooling(input, rois, out_h, out_w, spatial_scale, sampling_ratio, gamma, aligned);
  need_offset = need_offset && offset_.has_value();
  std::vector<std::optional<Tensor>> grads{std::nullopt, std::nullopt};
  if (!need_input && !need_offset) return grads;
  if (p.K == 0 || p.C == 0) {
    if (need_input) grads[0] = at::zeros_like(input, at::MemoryFormat::Contiguous);
    if (need_offset) grads[1] = at::zeros_like(*offset_, at::MemoryFormat::Contiguous);
    return grads;
  }
  const Tensor offset = offset_.has_value() ? offset_->detach().contiguous() : Tensor();
  const Tensor grad_out = grad_out_.detach().contiguous();
  const Tensor table = need_offset ? to_table(input) : Tensor();
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(threads, p.C / 16));
  auto grad_rows = at::empty({p.K, p.bins(), p.C}, input.options());
  auto grad_table = need_input ? at::zeros({p.N, p.H, p.W, p.C}, input.options()) : Tensor();
  auto dots = need_offset ? at::empty({blocks, p.K * p.bins(), 2}, input.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcn_roi_pool_backward", [&] {
    // (K, C, bins) -> (K, bins, C)
    dcn_cpu::transpose_images(grad_out.data_ptr<scalar_t>(), grad_rows.data_ptr<scalar_t>(), p.K, p.C, p.bins());
    pool_backward<scalar_t>(need_offset ? table.data_ptr<scalar_t>() : nullptr, rois.data_ptr<scalar_t>(),
                            offset.defined() ? offset.data_ptr<scalar_t>() : nullptr, grad_rows.data_ptr<scalar_t>(),
                            need_input ? grad_table.data_ptr<scalar_t>() : nullptr,
                            need_offset ? dots.data_ptr<scalar_t>() : nullptr, blocks, p);
    if (need_input) {
      auto grad_in = at::empty({p.N, p.C, p.H, p.W}, input.options());
      dcn_cpu::transpose_images(grad_table.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), p.N, p.H * p.W, p.C);
      grads[0] = grad_in;
    }
  });
  if (need_offset) {
    // sum the blocks' partial products; scale by gamma * RoI size: (K, bins, 2) -> (K, 2, out_h, out_w)
    const Tensor d = dots.sum(0).view({p.K, p.bins(), 2}).permute({0, 2, 1});
    auto scale = at::empty({p.K, 2, 1}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcn_roi_pool_offset_scale", [&] {
      const scalar_t* r = rois.data_ptr<scalar_t>();
      scalar_t* s = scale.data_ptr<scalar_t>();
      for (int64_t k = 0; k < p.K; ++k) {
        const RoI<scalar_t> roi(r + k * 5, p);
        s[k * 2] = static_cast<scalar_t>(gamma) * roi.width;
        s[k * 2 + 1] = static_cast<scalar_t>(gamma) * roi.height;
      }
    });
    grads[1] = (d * scale).reshape({p.K, 2, out_h, out_w}).contiguous();
  }
  return grads;
}

}  // namespace dcn_cpu
