"""The synthetic detection data: per-instance rendering (and the unchanged segmentation samples), VOC
XML annotations (fields, tight visible boxes, occlusion, difficult and truncated flags), determinism,
the config, and the datamodule read through the VOC detection loader."""

from __future__ import annotations

import dataclasses
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from dcn.datamodules.detection.synthetic import SyntheticDetDataModule, SyntheticDetGenerator
from dcn.datamodules.detection.voc import VOCDetDataModule
from dcn.datamodules.synthetic.shapes import ShapesRendering, SyntheticShapesGenerator

TINY = dict(num_train=3, num_val=2, num_test=2, image_size=64)


def sample_sha256(generator: SyntheticShapesGenerator, index: int) -> str:
    image, label = generator.sample(index)
    digest = hashlib.sha256()
    digest.update(image.tobytes())
    digest.update(label.tobytes())
    return digest.hexdigest()


# Obtained by running this very hashing (image bytes, then label bytes) on the code of commit 9685e0c,
# before sample() was split into render() + a class map, so these pin "byte-identical to before".
SAMPLE_SHA256_BEFORE_RENDER = {
    (): [
        "de1889b3717cae29efa9289116f052f75998c4dcba899333a1d46282851a0ecb",
        "494c03d07afdf952f40b91937fcfdfb39cebc4575eab4ad225a7ef061ff3af32",
        "3f6895d30a4eec3bf0a05ce54de22c9e7b1605f4eaf2de0f61389c914c904b12",
    ],
    # A second setting: no border band, no elastic warp, more objects, another seed.
    (("image_size", 64), ("objects", (2, 4)), ("elastic_alpha", 0.0), ("border_width", 0), ("seed", 3)): [
        "c14deb85b105328b4de44c32bba6950c859aae3ab55f5c6cc2f7b86c892acb25",
        "f68d1eb565ad7f8c8f73caeeb56c1ff78713ac30fe083e721a5369e2530c0de3",
    ],
}


@pytest.mark.parametrize("params", list(SAMPLE_SHA256_BEFORE_RENDER))
def test_segmentation_samples_are_byte_identical_to_before_render_existed(params):
    generator = SyntheticShapesGenerator(**dict(params))
    hashes = [sample_sha256(generator, i) for i in range(len(SAMPLE_SHA256_BEFORE_RENDER[params]))]
    assert hashes == SAMPLE_SHA256_BEFORE_RENDER[params]


def test_render_gives_the_instances_behind_the_class_map():
    generator = SyntheticShapesGenerator(**TINY, objects=(3, 4), border_width=0)
    for index in range(3):
        rendering = generator.render(index)
        image, label = generator.sample(index)
        assert np.array_equal(rendering.image, image)
        assert rendering.instances.dtype == np.int32 and rendering.instances.shape == (64, 64)
        n = len(rendering.classes)
        assert 3 <= n <= 4 and len(rendering.full_areas) == len(rendering.full_boxes) == n
        for i, k in enumerate(rendering.classes, start=1):
            visible = rendering.instances == i
            assert (label[visible] == k + 1).all()
            assert visible.sum() <= rendering.full_areas[i - 1]
        assert (label[rendering.instances == 0] == 0).all()
        # The last object drawn is occluded by nothing: all of its mask is visible.
        last = rendering.instances == n
        assert last.sum() == rendering.full_areas[-1] > 0
        cols, rows = np.flatnonzero(last.any(0)), np.flatnonzero(last.any(1))
        assert rendering.full_boxes[-1] == (cols[0], rows[0], cols[-1], rows[-1])


# --- annotation rules on a hand-made rendering -----------------------------------------------------


def hand_rendering() -> ShapesRendering:
    """A 32x32 scene whose annotations follow from the rules by hand (rows/cols 0-based, inclusive):

    1 disc     full rows 0-9, cols 0-9 (100 px, touches the border); object 3 covers its cols 0-5,
               so 40 px (0.4) stay visible in cols 6-9 -> annotated, difficult, truncated, box (7,1,10,10).
    2 ring     rows 20-29, cols 20-29, untouched (1.0), off the border -> box (21,21,30,30).
    3 square   rows 0-9, cols 0-5 (60 px), on top -> truncated, box (1,1,6,10).
    4 triangle full rows 12-21, cols 2-11 (100 px); object 5 covers cols 2-9, 20 px (0.2) remain
               -> below min_visible 0.25: not annotated.
    5 cross    rows 12-21, cols 2-9 (80 px) -> box (3,13,10,22), not truncated (col 2 is not the edge).
    6 disc     rows 25-27, cols 5-7: a 3x3 box -> below min_box_size 4: not annotated.
    7 ring     an empty (sub-pixel) mask -> not annotated.
    """
    instances = np.zeros((32, 32), dtype=np.int32)
    instances[0:10, 0:10] = 1
    instances[20:30, 20:30] = 2
    instances[0:10, 0:6] = 3
    instances[12:22, 2:12] = 4
    instances[12:22, 2:10] = 5
    instances[25:28, 5:8] = 6
    return ShapesRendering(
        image=np.zeros((32, 32, 3), dtype=np.uint8),
        instances=instances,
        classes=[0, 1, 2, 3, 4, 0, 1],
        full_areas=[100, 100, 60, 100, 80, 9, 0],
        full_boxes=[
            (0, 0, 9, 9),
            (20, 20, 29, 29),
            (0, 0, 5, 9),
            (2, 12, 11, 21),
            (2, 12, 9, 21),
            (5, 25, 7, 27),
            (-1, -1, -1, -1),
        ],
    )


@pytest.fixture
def hand_made(monkeypatch):
    monkeypatch.setattr(SyntheticDetGenerator, "render", lambda self, index: hand_rendering())


def test_annotation_rules_on_a_hand_made_scene(hand_made):
    objects = SyntheticDetGenerator(image_size=32).annotations(0)
    assert [(o.instance, o.name, o.box, o.difficult, o.truncated) for o in objects] == [
        (1, "disc", (7, 1, 10, 10), True, True),
        (2, "ring", (21, 21, 30, 30), False, False),
        (3, "square", (1, 1, 6, 10), False, True),
        (5, "cross", (3, 13, 10, 22), False, False),
    ]
    assert [o.visible for o in objects] == [0.4, 1.0, 1.0, 1.0]


def test_annotation_thresholds_are_inclusive_where_documented(hand_made):
    # min_visible 0.2: object 4 (exactly 0.2 visible) passes, but its visible part (cols 10-11) is 2 px
    # wide, so it also needs min_box_size <= 2 (which lets the 3x3 object 6 in too); it is difficult.
    kept = {
        o.instance: o
        for o in SyntheticDetGenerator(image_size=32, min_visible=0.2, min_box_size=3).annotations(0)
    }
    assert set(kept) == {1, 2, 3, 5, 6}
    kept = {
        o.instance: o
        for o in SyntheticDetGenerator(image_size=32, min_visible=0.2, min_box_size=2).annotations(0)
    }
    assert set(kept) == {1, 2, 3, 4, 5, 6} and kept[4].difficult and kept[4].box == (11, 13, 12, 22)
    # difficult_below 0.4: object 1 (exactly 0.4) is no longer difficult; min_box_size 3 keeps object 6.
    generator = SyntheticDetGenerator(image_size=32, difficult_below=0.4, min_box_size=3)
    kept = {o.instance: o for o in generator.annotations(0)}
    assert set(kept) == {1, 2, 3, 5, 6} and not kept[1].difficult and kept[6].box == (6, 26, 8, 28)


# --- annotations of real renderings ------------------------------------------------------------------


def test_boxes_are_tight_around_the_visible_pixels_and_hidden_objects_are_dropped():
    generator = SyntheticDetGenerator(**TINY, objects=(6, 6), size_range=(0.2, 0.35))  # crowded: occlusion
    seen = {"dropped": 0, "difficult": 0, "truncated": 0}
    for index in range(12):
        rendering = generator.render(index)
        annotated = {o.instance: o for o in generator.annotations(index)}
        for instance in range(1, len(rendering.classes) + 1):
            mask = rendering.instances == instance
            fraction = mask.sum() / max(rendering.full_areas[instance - 1], 1)
            if fraction < generator.min_visible:
                assert instance not in annotated
                seen["dropped"] += 1
                continue
            obj = annotated[instance]  # large shapes: every visible enough one is big enough
            assert obj.name == generator.shapes[rendering.classes[instance - 1]]
            assert obj.visible == pytest.approx(fraction) and obj.difficult == (fraction < 0.5)
            xmin, ymin, xmax, ymax = obj.box
            inside = mask[ymin - 1 : ymax, xmin - 1 : xmax]  # 1-based inclusive -> 0-based slice
            assert inside.sum() == mask.sum()  # the box holds every visible pixel...
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )  # ...tightly
            seen["difficult"] += obj.difficult
            seen["truncated"] += obj.truncated
    # These parameters and indices do produce every case (else the loop above tested less than it says).
    assert all(seen.values()), seen


def read_xml(path: Path) -> Dict:
    root = ET.parse(path).getroot()
    assert root.tag == "annotation"
    size = root.find("size")
    return {
        "folder": root.findtext("folder"),
        "filename": root.findtext("filename"),
        "size": tuple(int(size.findtext(k)) for k in ("width", "height", "depth")),
        "segmented": root.findtext("segmented"),
        "objects": [
            (
                o.findtext("name"),
                o.findtext("pose"),
                tuple(int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")),
                o.findtext("difficult"),
                o.findtext("truncated"),
            )
            for o in root.findall("object")
        ],
    }


def test_writes_voc_xml_annotations_that_match_the_generator(tmp_path):
    generator = SyntheticDetGenerator(**TINY)
    voc = generator.write(tmp_path)
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    splits = {
        s: (voc / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")
    }
    assert [len(v) for v in splits.values()] == [3, 2, 2]
    ids: List[str] = sum(splits.values(), [])
    assert len(set(ids)) == 7
    for index, image_id in enumerate(ids):  # ids are numbered across splits in order
        assert (voc / "JPEGImages" / f"{image_id}.jpg").is_file()
        xml = read_xml(voc / "Annotations" / f"{image_id}.xml")
        assert xml["folder"] == "VOC2012" and xml["filename"] == f"{image_id}.jpg"
        assert xml["size"] == (64, 64, 3) and xml["segmented"] == "0"
        expected = [
            (o.name, "Unspecified", o.box, str(int(o.difficult)), str(int(o.truncated)))
            for o in generator.annotations(index)
        ]
        assert xml["objects"] == expected and expected
        for _, _, (xmin, ymin, xmax, ymax), _, _ in expected:
            assert 1 <= xmin <= xmax <= 64 and 1 <= ymin <= ymax <= 64
    assert "\n\t<size>" in (voc / "Annotations" / f"{ids[0]}.xml").read_text()  # indented


def test_same_parameters_write_identical_files_and_samples_do_not_depend_on_split_sizes(tmp_path):
    generator = SyntheticDetGenerator(**TINY)
    files = []
    for out in (tmp_path / "a", tmp_path / "b"):
        generator.write(out)
        files.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert files[0] == files[1] and len(files[0]) == 2 * 7 + 3
    assert SyntheticDetGenerator(**{**TINY, "num_train": 9}).annotations(4) == generator.annotations(4)
    assert SyntheticDetGenerator(**{**TINY, "seed": 1}).annotations(4) != generator.annotations(4)


def test_detection_defaults_and_bad_parameters_name_the_key():
    g = SyntheticDetGenerator()
    assert (g.image_size, g.objects, g.size_range, g.border_width) == (128, (1, 4), (0.08, 0.22), 0)
    assert (g.min_visible, g.difficult_below, g.min_box_size) == (0.25, 0.5, 4)
    assert isinstance(g, SyntheticShapesGenerator) and {"min_visible", "min_box_size"} <= set(g.params())
    for key, value in (
        ("min_visible", 1.5),
        ("difficult_below", -0.1),
        ("min_box_size", 0),
        ("objects", (3, 1)),
    ):
        with pytest.raises(ValueError, match=f"data.generator.{key}"):
            SyntheticDetGenerator(**{key: value})


def test_config_lists_every_generator_parameter(compose_train):
    cfg = compose_train(["data=synthetic_det"]).data
    assert cfg._target_ == "dcn.datamodules.SyntheticDetDataModule"
    fields = {f.name for f in dataclasses.fields(SyntheticDetGenerator)}
    assert set(cfg.generator) - {"_target_"} == fields
    dm = instantiate(cfg)  # constructing generates nothing yet
    assert isinstance(dm, SyntheticDetDataModule) and isinstance(dm.generator, SyntheticDetGenerator)
    assert (
        dm.generator.shapes == tuple(cfg.generator.shapes) and dm.num_classes == len(cfg.generator.shapes) + 1
    )
    assert not dm.cache_dir.exists()


# --- the datamodule: the cache read through the VOC detection loader ------------------------------


def test_datamodule_generates_once_and_reads_the_cache_with_the_voc_loader(tmp_path):
    generator = SyntheticDetGenerator(**TINY)
    dm = SyntheticDetDataModule(tmp_path, generator, batch_size=2, val_batch_size=2)
    assert isinstance(dm, VOCDetDataModule)
    assert dm.class_names == ["background", "disc", "ring", "square", "triangle", "cross"]
    assert dm.num_classes == 6 and dm.in_channels == 3
    dm.setup()  # without prepare_data: setup generates too
    folder = SyntheticDetDataModule.generated_folder(tmp_path, generator)
    assert dm.root == folder and (folder / "generator.json").is_file()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (3, 2, 2)
    stamp = (folder / "generator.json").stat().st_mtime_ns
    dm.prepare_data()
    assert (folder / "generator.json").stat().st_mtime_ns == stamp  # reused, not regenerated

    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 2
    for image, target in zip(images, targets):
        assert (
            image.shape == (3, 64, 64)
            and image.dtype == torch.float32
            and 0 <= image.min() <= image.max() <= 1
        )
        labels = target["labels"]
        assert labels.dtype == torch.int64 and len(labels) == len(target["boxes"]) >= 1
        assert ((1 <= labels) & (labels <= 5)).all()


def test_the_loader_reads_back_the_generator_boxes(tmp_path):
    # Crowded, so some objects are difficult: evaluation keeps them, flagged.
    generator = SyntheticDetGenerator(**TINY, objects=(5, 5), size_range=(0.15, 0.3))
    dm = SyntheticDetDataModule(tmp_path, generator, flip=False)
    dm.setup()
    offset = generator.num_train  # ids are numbered train, then val, then test
    seen_difficult = 0
    for i in range(len(dm.val_dataset)):
        _, target = dm.val_dataset[i]
        objects = generator.annotations(offset + i)
        # VOC's 1-based inclusive (xmin, ymin, xmax, ymax) -> continuous (xmin - 1, ymin - 1, xmax, ymax).
        expected = torch.tensor([[x0 - 1, y0 - 1, x1, y1] for x0, y0, x1, y1 in (o.box for o in objects)])
        assert torch.equal(target["boxes"], expected.float())
        assert target["labels"].tolist() == [generator.shapes.index(o.name) + 1 for o in objects]
        assert target["difficult"].tolist() == [o.difficult for o in objects]
        seen_difficult += sum(o.difficult for o in objects)
    assert seen_difficult > 0
    # Training drops difficult objects by default (use_difficult_in_training=False).
    _, target = dm.train_dataset[0]
    assert len(target["boxes"]) == sum(not o.difficult for o in generator.annotations(0))


def test_datamodule_rejects_a_plain_shapes_generator(tmp_path):
    with pytest.raises(TypeError, match="data.generator"):
        SyntheticDetDataModule(tmp_path, generator=SyntheticShapesGenerator())
