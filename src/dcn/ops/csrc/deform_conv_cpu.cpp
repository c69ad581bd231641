// Fused CPU backward pass of deformable convolution's bilinear sampling (dcn PyTorch path).
//
// For every sample point ("bag") i with its four bilinear corner rows r_ij of the padded,
// channels-last input table, its sampling weights w_ij (bilinear x validity x DCN v2 mask) and its
// column gradient g_i (one row of C channels):
//
//   grad_table[r_ij, :] += w_ij * g_i                (input gradient: scatter)
//   dots[i, j]           = <g_i, table[r_ij, :]>      (offset and mask gradients follow from these)
//
// One pass over the data instead of ATen's separate scatter and coordinate-gradient loops, with
// contiguous channel rows that vectorise. Work is split over (image, channel block) tasks: bags of
// one image only touch that image's table rows, and channel blocks are disjoint, so no two tasks
// write the same memory and no atomics are needed. Each channel block writes partial dot products
// into its own slice of `dots`, summed by the caller.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

template <typename scalar_t>
void sampling_backward_impl(const scalar_t* __restrict__ table, const int64_t* __restrict__ rows,
                            const scalar_t* __restrict__ weights, const scalar_t* __restrict__ gcols,
                            scalar_t* __restrict__ grad_table, scalar_t* __restrict__ dots,
                            int64_t n_img, int64_t bags_per_img, int64_t channels, int64_t n_blocks,
                            int64_t block) {
  const int64_t n_bags = n_img * bags_per_img;
  at::parallel_for(0, n_img * n_blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / n_blocks, blk = t % n_blocks;
      const int64_t c0 = blk * block, c1 = std::min(channels, c0 + block);
      scalar_t* dots_blk = dots + blk * n_bags * 4;
      for (int64_t i = img * bags_per_img; i < (img + 1) * bags_per_img; ++i) {
        const scalar_t* g = gcols + i * channels;
        for (int j = 0; j < 4; ++j) {
          const int64_t r = rows[i * 4 + j];
          const scalar_t w = weights[i * 4 + j];
          const scalar_t* src = table + r * channels;
          scalar_t* dst = grad_table + r * channels;
          scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t c = c0; c < c1; ++c) {
            acc += g[c] * src[c];
            dst[c] += w * g[c];
          }
          dots_blk[i * 4 + j] = acc;
        }
      }
    }
  });
}

}  // namespace

// table (R, C), rows (M, 4) int64, weights (M, 4), gcols (M, C); M = n_img * bags_per_img.
// Returns grad_table (R, C) and dots (M, 4).
std::vector<at::Tensor> sampling_backward(at::Tensor table, at::Tensor rows, at::Tensor weights, at::Tensor gcols,
                                          int64_t n_img) {
  TORCH_CHECK(table.dim() == 2 && gcols.dim() == 2 && table.size(1) == gcols.size(1),
              "table (R, C) and gcols (M, C) must share C");
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == 4 && rows.size(0) == gcols.size(0),
              "rows must be (M, 4) with M = gcols.size(0)");
  TORCH_CHECK(weights.sizes() == rows.sizes(), "weights must be (M, 4)");
  TORCH_CHECK(n_img > 0 && gcols.size(0) % n_img == 0, "M must be a multiple of n_img");
  table = table.contiguous();
  rows = rows.contiguous();
  weights = weights.contiguous();
  gcols = gcols.contiguous();
  const int64_t channels = table.size(1);
  const int64_t threads = at::get_num_threads();
  // Enough (image, channel block) tasks to occupy every thread, but blocks of >= 16 channels.
  int64_t n_blocks = std::max<int64_t>(1, (threads + n_img - 1) / n_img);
  n_blocks = std::min<int64_t>(n_blocks, std::max<int64_t>(1, channels / 16));
  const int64_t block = (channels + n_blocks - 1) / n_blocks;
  n_blocks = (channels + block - 1) / block;

  auto grad_table = at::zeros_like(table);
  auto dots = at::empty({n_blocks, gcols.size(0), 4}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "dcn_sampling_backward", [&] {
    sampling_backward_impl<scalar_t>(table.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(),
                                     weights.data_ptr<scalar_t>(), gcols.data_ptr<scalar_t>(),
                                     grad_table.data_ptr<scalar_t>(), dots.data_ptr<scalar_t>(), n_img,
                                     gcols.size(0) / n_img, channels, n_blocks, block);
  });
  return {grad_table, n_blocks == 1 ? dots[0] : dots.sum(0)};
}

// Registered as a torch.library op (no pybind11): the library is loaded with torch.ops.load_library.
TORCH_LIBRARY(dcn_cpu, m) {
  m.def("sampling_backward(Tensor table, Tensor rows, Tensor weights, Tensor gcols, int n_img) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(dcn_cpu, CPU, m) { m.impl("sampling_backward", &sampling_backward); }
