import math

import pytest
import torch
import torch.nn.functional as F

from dcn.datamodules.classification.deformation import GeometricDeformation, _gaussian_matrix


def _pixel_points(h, w):
    """Output pixel centres in pixel units about the image centre, Tensor[H, W, 2] as (x, y)."""
    ys = torch.arange(h) + 0.5 - h / 2
    xs = torch.arange(w) + 0.5 - w / 2
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)


def _source_points(deformation, n, h, w, seed=0):
    grid = deformation.sample_grid(n, h, w, torch.Generator().manual_seed(seed))
    return grid * torch.tensor([w / 2, h / 2])  # normalised -> pixel units about the centre


def test_zero_strength_returns_input_unchanged():
    image = torch.rand(3, 10, 12)
    assert GeometricDeformation()(image) is image


def test_near_identity_grid_reads_each_pixel_itself():
    image = torch.rand(2, 1, 9, 13)
    out = GeometricDeformation(rotation=1e-6)(image)
    torch.testing.assert_close(out, image, atol=1e-4, rtol=0)


@pytest.mark.parametrize("h,w", [(12, 12), (10, 16)])
def test_rotation_is_rigid_about_the_centre_within_range(h, w):
    # Rotation only: every sampled point keeps its distance from the centre and turns by one angle.
    src = _source_points(GeometricDeformation(rotation=30), 4, h, w)
    out = _pixel_points(h, w)
    torch.testing.assert_close(src.norm(dim=-1), out.norm(dim=-1).expand(4, h, w), atol=1e-4, rtol=1e-4)
    turn = torch.atan2(src[..., 1], src[..., 0]) - torch.atan2(out[..., 1], out[..., 0])
    turn = torch.remainder(turn + math.pi, 2 * math.pi) - math.pi
    per_image = turn.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1], atol=1e-4)  # one angle per image
    assert per_image.abs().max() <= math.radians(30) + 1e-5
    assert per_image[:, 0].unique().numel() == 4  # drawn independently per image


def test_scale_and_translation_stay_in_their_ranges():
    h = w = 20
    out = _pixel_points(h, w)
    src = _source_points(GeometricDeformation(scale=(0.5, 2.0)), 8, h, w)
    ratio = (src.norm(dim=-1) / out.norm(dim=-1)).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1], atol=1e-4)
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 2.0 + 1e-5  # input read at 1/scale

    src = _source_points(GeometricDeformation(translation=0.25), 8, h, w)
    shift = (out - src).flatten(1, 2)
    assert torch.allclose(shift, shift[:, :1], atol=1e-4)  # a pure shift
    assert shift.abs().max() <= 0.25 * w + 1e-4


def test_scale_above_one_enlarges_the_content():
    image = torch.zeros(1, 32, 32)
    image[:, 12:20, 12:20] = 1
    big = GeometricDeformation(scale=(2.0, 2.0))(image)
    small = GeometricDeformation(scale=(0.5, 0.5))(image)
    assert big.sum().item() == pytest.approx(4 * image.sum().item(), rel=0.05)
    assert small.sum().item() == pytest.approx(image.sum().item() / 4, rel=0.05)


def test_elastic_warp_is_bounded_smooth_and_seeded():
    d = GeometricDeformation(elastic_alpha=5.0, elastic_sigma=3.0)
    a = _source_points(d, 2, 16, 16, seed=1)
    b = _source_points(d, 2, 16, 16, seed=1)
    torch.testing.assert_close(a, b)
    displacement = a - _pixel_points(16, 16)
    assert 0 < displacement.abs().max() <= 5.0
    # Neighbouring displacements differ far less than the field's range: it is smooth.
    step = (displacement[:, 1:] - displacement[:, :-1]).abs().max()
    assert step < 0.5 * (displacement.max() - displacement.min())


def test_gaussian_matrix_matches_a_replicate_padded_convolution():
    sigma, size = 2.5, 11
    v = torch.rand(size)
    radius = math.ceil(3 * sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1).float() / sigma) ** 2)
    ref = F.conv1d(
        F.pad(v.view(1, 1, -1), (radius, radius), mode="replicate"), (taps / taps.sum()).view(1, 1, -1)
    )
    torch.testing.assert_close(_gaussian_matrix(size, sigma) @ v, ref.flatten())


def test_same_generator_seed_same_output_and_batches_draw_per_image():
    d = GeometricDeformation(rotation=20, scale=(0.8, 1.2), translation=0.1, elastic_alpha=2)
    image = torch.rand(1, 14, 14)
    a = d(image, torch.Generator().manual_seed(3))
    b = d(image, torch.Generator().manual_seed(3))
    c = d(image, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    batch = d(image.expand(2, 1, 14, 14).contiguous())
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"rotation": -1}, "rotation"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"scale": (0, 1)}, "scale"),
        ({"translation": 1.0}, "translation"),
        ({"elastic_alpha": -1}, "elastic_alpha"),
        ({"elastic_sigma": 0}, "elastic_sigma"),
    ],
)
def test_bad_strengths_name_the_config_key(kwargs, key):
    with pytest.raises(ValueError, match=f"deformation.{key}"):
        GeometricDeformation(**kwargs)


def test_rejects_integer_or_wrongly_shaped_images():
    with pytest.raises(ValueError, match=r"Tensor\[C, H, W\]"):
        GeometricDeformation(rotation=5)(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"Tensor\[C, H, W\]"):
        GeometricDeformation(rotation=5)(torch.zeros(8, 8))
