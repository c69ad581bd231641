// The torch.library ops of the CPU kernels (no pybind11: _cpu_kernel.py loads the library with
// torch.ops.load_library): every schema of the dcn_cpu namespace, and the CPU implementations.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(dcn_cpu, m) {
  m.def("release_workspace() -> ()", &dcn_cpu::release_workspace);
  m.def(
      "deform_conv2d_forward(Tensor input, Tensor offset, Tensor? mask, Tensor weight, Tensor? bias, int[] stride, "
      "int[] padding, int[] dilation, int groups, int offset_groups, int chunk, int column_order, int fuse) -> Tensor");
  m.def(
      "deform_conv2d_backward(Tensor grad_out, Tensor input, Tensor offset, Tensor? mask, Tensor weight, "
      "int[] stride, int[] padding, int[] dilation, int groups, int offset_groups, int chunk, int column_order, "
      "int fuse, bool[] needs) -> Tensor?[]");
  m.def(
      "deform_roi_pool_forward(Tensor input, Tensor rois, Tensor? offset, int out_h, int out_w, float spatial_scale, "
      "int sampling_ratio, float gamma, bool aligned) -> Tensor");
  m.def(
      "deform_roi_pool_backward(Tensor grad_out, Tensor input, Tensor rois, Tensor? offset, int out_h, int out_w, "
      "float spatial_scale, int sampling_ratio, float gamma, bool aligned, bool need_input, bool need_offset) "
      "-> Tensor?[]");
}

TORCH_LIBRARY_IMPL(dcn_cpu, CPU, m) {
  m.impl("deform_conv2d_forward", &dcn_cpu::deform_conv2d_forward);
  m.impl("deform_conv2d_backward", &dcn_cpu::deform_conv2d_backward);
  m.impl("deform_roi_pool_forward", &dcn_cpu::deform_roi_pool_forward);
  m.impl("deform_roi_pool_backward", &dcn_cpu::deform_roi_pool_backward);
}
