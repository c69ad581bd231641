"""deform_conv2d is counted by torch.utils.flop_counter (and so by Lightning's model summary)."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from dcn.ops import DeformConv2dPack, deform_conv2d


def test_forward_flops_are_the_conv_gemm_plus_the_sampling():
    x, off, w = torch.randn(2, 8, 10, 10), torch.randn(2, 18, 10, 10), torch.randn(16, 8, 3, 3)
    with FlopCounterMode(display=False) as counter:
        deform_conv2d(x, off, w, padding=1)
    dense = 2 * 2 * 16 * 100 * 8 * 9  # what aten.convolution counts for this shape
    with FlopCounterMode(display=False) as conv_counter:
        torch.nn.functional.conv2d(x, w, padding=1)
    assert conv_counter.get_total_flops() == dense
    assert counter.get_total_flops() == dense + 12 * 2 * 8 * 9 * 100


def test_training_step_counts_forward_and_backward():
    layer = DeformConv2dPack(8, 16, 3, padding=1, groups=2)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    forward = 2 * 2 * 16 * 100 * 4 * 9 + 12 * 2 * 8 * 9 * 100
    assert counts["dcn.deform_conv2d"] == forward
    assert counts["dcn.deform_conv2d_backward"] == 2 * forward + 24 * 2 * 8 * 9 * 100
