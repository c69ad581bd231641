"""The synthetic shapes generator: VOC layout on disk, determinism, the cache, and the shapes themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dcn.datamodules.segmentation.synthetic import SyntheticSegDataModule
from dcn.datamodules.segmentation.voc import VOCSegDataModule
from dcn.datamodules.synthetic.shapes import SHAPES, SyntheticShapesGenerator
from dcn.datamodules.voc.label_png import read_label_png

TINY = dict(num_train=4, num_val=2, num_test=2, image_size=48)


def test_writes_a_voc_tree_with_palette_labels_and_255_borders(tmp_path):
    generator = SyntheticShapesGenerator(**TINY, objects=(2, 3))
    voc = generator.write(tmp_path)
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    splits = {
        s: (voc / "ImageSets" / "Segmentation" / f"{s}.txt").read_text().split()
        for s in ("train", "val", "test")
    }
    assert [len(v) for v in splits.values()] == [4, 2, 2]
    assert len(set(sum(splits.values(), []))) == 8  # no image in two splits
    for image_id in sum(splits.values(), []):
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as image:
            assert image.format == "JPEG" and image.size == (48, 48) and image.mode == "RGB"
        with Image.open(voc / "SegmentationClass" / f"{image_id}.png") as label:
            assert label.mode == "P"
        values = set(np.unique(read_label_png(voc / "SegmentationClass" / f"{image_id}.png", 6)).tolist())
        assert 0 in values and 255 in values and values - {0, 255}  # background, borders, >= 1 object
    assert generator.class_names == ["background", "disc", "ring", "square", "triangle", "cross"]


def test_borders_separate_every_pair_of_classes():
    image, label = SyntheticShapesGenerator(**TINY, objects=(3, 3), border_width=2).sample(0)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    # No two horizontally or vertically adjacent pixels carry different class indices.
    for a, b in ((label[:, 1:], label[:, :-1]), (label[1:], label[:-1])):
        assert not ((a != b) & (a != 255) & (b != 255)).any()
    _, no_border = SyntheticShapesGenerator(**TINY, objects=(3, 3), border_width=0).sample(0)
    assert 255 not in no_border


def test_samples_are_a_pure_function_of_the_parameters():
    g = SyntheticShapesGenerator(**TINY)
    a, b = g.sample(3), g.sample(3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # Sample 3 does not depend on the split sizes, only on (seed, index).
    assert np.array_equal(SyntheticShapesGenerator(**{**TINY, "num_train": 9}).sample(3)[1], a[1])
    assert not np.array_equal(SyntheticShapesGenerator(**{**TINY, "seed": 1}).sample(3)[1], a[1])


def test_undeformed_disc_has_the_area_of_a_disc():
    g = SyntheticShapesGenerator(
        **{**TINY, "image_size": 128},
        shapes=("disc",),
        objects=(1, 1),
        size_range=(0.3, 0.3),
        aspect_range=(1, 1),
        rotation=0,
        shear=0,
        elastic_alpha=0,
        border_width=0,
    )
    _, label = g.sample(0)
    radius = 0.8 * 0.3 * 128  # the canonical disc has radius 0.8 in the unit frame
    assert (label == 1).sum() == pytest.approx(math.pi * radius**2, rel=0.03)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_fills_a_similar_part_of_its_frame(shape):
    ys, xs = np.mgrid[-1:1:200j, -1:1:200j]
    fraction = SHAPES[shape](xs, ys).mean()
    assert 0.25 < fraction < 0.65  # no class is given away by its area alone


def test_cache_is_reused_and_regenerated_when_parameters_change(tmp_path):
    g = SyntheticShapesGenerator(**TINY)
    folder = SyntheticSegDataModule.generate(tmp_path, g)
    assert folder == SyntheticSegDataModule.generated_folder(tmp_path, g)
    marker = json.loads((folder / "generator.json").read_text())
    assert marker["image_size"] == 48 and marker["generator_version"] >= 1
    label = folder / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "train_00000.png"
    stamp = label.stat().st_mtime_ns
    assert (
        SyntheticSegDataModule.generate(tmp_path, g) == folder and label.stat().st_mtime_ns == stamp
    )  # not rewritten
    other = SyntheticSegDataModule.generate(tmp_path, SyntheticShapesGenerator(**{**TINY, "shear": 0.1}))
    assert other != folder and (other / "generator.json").is_file()
    # An incomplete folder (no marker, e.g. a killed run) is regenerated.
    (folder / "generator.json").unlink()
    label.unlink()
    assert SyntheticSegDataModule.generate(tmp_path, g) == folder and label.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_datamodule_reads_the_cache_with_the_voc_loader(tmp_path):
    dm = SyntheticSegDataModule(
        tmp_path, SyntheticShapesGenerator(**TINY), crop_size=32, batch_size=2, val_batch_size=2
    )
    assert isinstance(dm, VOCSegDataModule)
    assert dm.num_classes == 6 and dm.class_names[0] == "background" and dm.in_channels == 3
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 2, 2)
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32) and masks.dtype == torch.int64
    images, masks = next(iter(dm.test_dataloader()))
    assert images.shape == (2, 3, 48, 48)
    assert set(masks.unique().tolist()) <= set(range(6)) | {255}


def test_bad_generator_parameters_name_the_key():
    with pytest.raises(ValueError, match="data.generator.shapes"):
        SyntheticShapesGenerator(shapes=("disc", "hexagon"))
    with pytest.raises(ValueError, match="data.generator.objects"):
        SyntheticShapesGenerator(objects=(3, 1))
    with pytest.raises(ValueError, match="data.generator.num_val"):
        SyntheticShapesGenerator(num_val=0)
    with pytest.raises(ValueError, match="data.generator.elastic_sigma"):
        SyntheticShapesGenerator(elastic_sigma=0)
    with pytest.raises(TypeError, match="data.generator"):
        SyntheticSegDataModule("/tmp", generator={"num_train": 3})
