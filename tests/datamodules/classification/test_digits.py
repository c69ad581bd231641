import pytest
import torch

from dcn.datamodules import DigitsDataModule, GeometricDeformation


def _deformation():
    return GeometricDeformation(rotation=20, scale=(0.85, 1.15), translation=0.08)


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(deformation=_deformation(), batch_size=16)
    dm.setup("fit")
    return dm


def test_split_is_stratified_disjoint_and_complete(digits):
    sets = (digits.train_set, digits.val_set, digits.test_set)
    assert [len(s) for s in sets] == [1257, 270, 270]
    # Held-out images are distinct samples: no image appears in two splits.
    flat = [s.images.flatten(1) for s in sets]
    for held in flat[1:]:
        assert not (torch.cdist(held, flat[0]) == 0).any()
    # Stratified: every class has its share (within one sample) in each split.
    full = torch.bincount(torch.cat([s.targets for s in sets]), minlength=10).double()
    for s in sets:
        counts = torch.bincount(s.targets, minlength=10).double()
        assert (counts - full * len(s) / full.sum()).abs().max() <= 1.0


def test_batches_are_float_images_on_the_canvas(digits):
    images, targets = next(iter(digits.train_dataloader()))
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32
    assert targets.shape == (16,) and targets.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    assert digits.in_channels == 1 and digits.num_classes == 10
    assert digits.class_names == [str(d) for d in range(10)]


def test_undeformed_digits_are_centred_on_the_canvas():
    dm = DigitsDataModule(deformation=None, canvas_size=28, digit_size=20)
    dm.setup()
    image, _ = dm.val_set[0]
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False
    assert image[0][border].abs().max() == 0 and image.max() > 0.5


def test_val_and_test_deformations_are_fixed_train_ones_redrawn():
    torch.manual_seed(0)
    a = DigitsDataModule(deformation=_deformation())
    a.setup()
    torch.manual_seed(1)  # the training seed must not change the split or the evaluation set
    b = DigitsDataModule(deformation=_deformation())
    b.setup()
    for split in ("val_set", "test_set"):
        torch.testing.assert_close(getattr(a, split)[5][0], getattr(b, split)[5][0])
        torch.testing.assert_close(getattr(a, split)[5][0], getattr(a, split)[5][0])
    first, second = a.train_set[5][0], a.train_set[5][0]
    assert not torch.allclose(first, second)  # a new deformation on every read (every epoch)


def test_deform_eval_false_keeps_evaluation_images_as_they_are():
    dm = DigitsDataModule(deformation=_deformation(), deform_eval=False)
    dm.setup()
    torch.testing.assert_close(dm.val_set[3][0], dm.val_set.images[3])


def test_other_split_seed_gives_another_split():
    a, b = DigitsDataModule(split_seed=0), DigitsDataModule(split_seed=1)
    a.setup()
    b.setup()
    assert not torch.equal(a.val_set.images, b.val_set.images)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"digit_size": 30, "canvas_size": 28}, "digit_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_config_key(kwargs, key):
    with pytest.raises(ValueError, match=f"data.{key}"):
        DigitsDataModule(**kwargs)


def test_loader_before_setup_says_so():
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().train_dataloader()
