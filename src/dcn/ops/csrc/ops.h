// The CPU kernels' entry points: deform_conv_cpu.cpp and deform_roi_pool_cpu.cpp define them,
// library.cpp registers them as the torch.library ops dcn_cpu::* (schemas there).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace dcn_cpu {

at::Tensor deform_conv2d_forward(const at::Tensor& input, const at::Tensor& offset,
                                 const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                 int64_t offset_groups, int64_t chunk, int64_t column_order, int64_t fuse);

// [grad_input, grad_offset, grad_mask, grad_weight]; None where not wanted (needs: the same four).
std::vector<std::optional<at::Tensor>> deform_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& offset,
    const std::optional<at::Tensor>& mask, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups, int64_t chunk,
    int64_t column_order, int64_t fuse, c10::List<bool> needs);

// Frees the scratch buffer deform_conv2d keeps between calls.
void release_workspace();

at::Tensor deform_roi_pool_forward(const at::Tensor& input, const at::Tensor& rois,
                                   const std::optional<at::Tensor>& offset, int64_t out_h, int64_t out_w,
                                   double spatial_scale, int64_t sampling_ratio, double gamma, bool aligned);

// [grad_input, grad_offset]; None where not wanted.
std::vector<std::optional<at::Tensor>> deform_roi_pool_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& rois,
    const std::optional<at::Tensor>& offset, int64_t out_h, int64_t out_w, double spatial_scale,
    int64_t sampling_ratio, double gamma, bool aligned, bool need_input, bool need_offset);

}  // namespace dcn_cpu
