"""Deformable RoI pooling test cases shared by the host-kernel, GPU and PyTorch-path tests."""

from __future__ import annotations

import torch

from dcn.ops._backend import PoolInputs, PoolParams


def make_case(
    n=2, c=3, hw=(9, 10), k=10, output_size=(3, 2), scale=0.5, seed=0, dtype=torch.float64, offset=True
):
    g = torch.Generator().manual_seed(seed)
    H, W = hw
    x = torch.randn(n, c, H, W, generator=g, dtype=torch.float64)
    img_h, img_w = H / scale, W / scale
    x1 = torch.rand(k, generator=g, dtype=torch.float64) * (img_w + 8) - 4
    y1 = torch.rand(k, generator=g, dtype=torch.float64) * (img_h + 8) - 4
    bw = torch.rand(k, generator=g, dtype=torch.float64) * img_w * 0.8 - 1
    bh = torch.rand(k, generator=g, dtype=torch.float64) * img_h * 0.8 - 1
    rois = torch.stack([torch.randint(0, n, (k,), generator=g).double(), x1, y1, x1 + bw, y1 + bh], 1)
    rois[0, 1:] = torch.tensor([-100.0, -100.0, -90.0, -95.0])  # far outside
    rois[1, 3] = rois[1, 1] - 1.5  # degenerate, x2 < x1
    off = torch.randn((k, 2) + tuple(output_size), generator=g, dtype=torch.float64) * 0.7 if offset else None
    grad = torch.randn((k, c) + tuple(output_size), generator=g, dtype=torch.float64)
    cast = lambda t: t.to(dtype) if t is not None else None  # noqa: E731
    return cast(x), cast(rois), cast(off), cast(grad)


def check_nonfinite_offsets(forward, backward, dtype, device="cpu"):
    """``forward`` / ``backward``: a backend's ``deform_roi_pool_forward`` / ``_backward``. A NaN
    offset makes exactly its bin NaN (every channel) and its offset gradient NaN; an infinite offset
    moves the bin outside the map (zero output, zero gradient), never an error."""
    x, rois, off, grad = (t.to(device) for t in make_case(seed=13, dtype=dtype))
    args = ((3, 2), 0.5, 2, 0.2, True)
    base = forward(PoolInputs(x, rois, off), PoolParams(*args))
    bad = off.clone()
    bad[4, 1, 1, 0] = float("nan")
    out = forward(PoolInputs(x, rois, bad), PoolParams(*args))
    hit = torch.zeros_like(out, dtype=torch.bool)
    hit[4, :, 1, 0] = True
    assert torch.isnan(out[hit]).all() and torch.isfinite(out[~hit]).all()
    torch.testing.assert_close(out[~hit], base[~hit])
    g_in, g_off = backward(grad, PoolInputs(x, rois, bad), PoolParams(*args), (True, True))
    assert torch.isfinite(g_in).all()
    assert torch.isnan(g_off[4, :, 1, 0]).all()
    g_off[4, :, 1, 0] = 0
    assert torch.isfinite(g_off).all()
    for inf in (float("inf"), float("-inf")):
        bad = off.clone()
        bad[4, 0, 1, 0] = inf
        out = forward(PoolInputs(x, rois, bad), PoolParams(*args))
        assert torch.isfinite(out).all() and (out[4, :, 1, 0] == 0).all()
        g_in, g_off = backward(grad, PoolInputs(x, rois, bad), PoolParams(*args), (True, True))
        assert torch.isfinite(g_in).all() and torch.isfinite(g_off).all()
        assert (g_off[4, :, 1, 0] == 0).all()


def large_box_case(k=12, c=3, output_size=(3, 3), seed=0):
    """float32 features (2, c, 136, 136) at 1/8 scale (a 1088 px image), rois (k, 5) with every corner
    at 512-1024 px, where bfloat16's step is 4 px; offsets (k, 2, out_h, out_w) and an output gradient
    (k, c, out_h, out_w)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, 136, 136, generator=g)
    x1, y1 = (512 + torch.rand(k, generator=g) * 384 for _ in range(2))
    x2, y2 = (start + 16 + torch.rand(k, generator=g) * 112 for start in (x1, y1))
    rois = torch.stack([torch.randint(0, 2, (k,), generator=g).float(), x1, y1, x2, y2], 1)
    off = torch.randn((k, 2) + tuple(output_size), generator=g) * 0.2
    grad = torch.randn((k, c) + tuple(output_size), generator=g)
    return x, rois, off, grad
