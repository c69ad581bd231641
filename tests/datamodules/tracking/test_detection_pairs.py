"""Tracking pairs from detection data: every object a one-frame sequence, template and shifted/rescaled search
crops of it; on a fabricated VOC tree and on the real raccoon boxes. Also the VOT loader on the real bag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import shared_dataset

from dcn.datamodules import CocoDetDataModule, DetectionPairsDataModule, VOCDetDataModule
from dcn.datamodules.detection.synthetic import SyntheticDetGenerator
from dcn.datamodules.tracking.detection_pairs import detection_objects
from dcn.datamodules.tracking.vot import read_vot_root
from dcn.geometry.boxes import polygon_to_xywh

PAIRS = dict(
    template_size=63, search_size=127, shift=24.0, scale=0.18, frame_range=0, flip=0.5, blur=0.2, negative=0.2
)


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory):
    generator = SyntheticDetGenerator(
        num_train=4, num_val=2, num_test=1, image_size=64, objects=(1, 2), size_range=(0.15, 0.25)
    )
    return generator.write(tmp_path_factory.mktemp("det")), generator.class_names[1:]  # no background


def _detection(root, class_names, **kwargs) -> VOCDetDataModule:
    return VOCDetDataModule(
        root,
        train_sets=["any/train"],
        val_sets=["any/val"],
        test_sets=["any/val"],
        class_names=class_names,
        flip=False,
        num_workers=0,
        **kwargs,
    )


def _check_pair(item, pairs):
    template, search, box, negative = item
    assert template.shape == (3, pairs["template_size"], pairs["template_size"])
    assert search.shape == (3, pairs["search_size"], pairs["search_size"])
    assert box.shape == (4,) and negative.dtype == torch.bool
    if not negative:  # the object's centre lies within the shift range of the search patch centre
        assert (box[:2] - pairs["search_size"] / 2).abs().max() <= pairs["shift"] + 1e-3


def test_every_annotated_object_becomes_a_one_frame_sequence(voc_tree):
    root, class_names = voc_tree
    detection = _detection(root, class_names)
    detection.setup("fit")
    sequences = detection_objects(detection.train_dataset, min_box_size=1.0)
    expected = sum(
        len(detection.train_dataset.annotation(i).boxes) for i in range(len(detection.train_dataset))
    )
    assert len(sequences) == expected and all(len(s) == 1 for s in sequences)
    first = detection.train_dataset.annotation(0).boxes[0]
    torch.testing.assert_close(
        sequences[0].boxes[0], torch.tensor([first[0], first[1], first[2] - first[0], first[3] - first[1]])
    )
    assert sequences[0].frames[0] == detection.train_dataset.image_path(0)
    # Objects below min_box_size make no pairs.
    sides = torch.stack([s.boxes[0, 2:].min() for s in sequences])
    threshold = float(sides.min()) + 1e-3
    assert len(detection_objects(detection.train_dataset, min_box_size=threshold)) == int(
        (sides >= threshold).sum()
    )


def test_pairs_from_detection_train_and_val_and_test_sequences_from_a_tracking_root(voc_tree, tmp_path):
    from test_vot import write_root

    root, class_names = voc_tree
    dm = DetectionPairsDataModule(
        _detection(root, class_names),
        test_root=write_root(tmp_path / "vot", count=2),
        pairs=PAIRS,
        train_pairs=6,
        val_pairs=4,
        batch_size=3,
    )
    dm.setup("fit")
    template, search, box, negative = next(iter(dm.train_dataloader()))
    assert template.shape == (3, 3, 63, 63) and search.shape == (3, 3, 127, 127) and box.shape == (3, 4)
    val = dm.val_dataloader().dataset
    torch.testing.assert_close(val[1][1], val[1][1])  # fixed validation pairs
    dm.setup("test")
    assert [s.name for s in dm.test_dataloader().dataset.sequences] == ["seq0", "seq1"]


def test_coco_objects_without_crowds_or_tiny_boxes(tmp_path):
    pytest.importorskip("pycocotools")
    (tmp_path / "annotations").mkdir()
    for stage in ("train", "val"):
        (tmp_path / f"{stage}2017").mkdir()
        Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / f"{stage}2017" / "a.png")
        document = {
            "images": [{"id": 3, "file_name": "a.png", "height": 30, "width": 40}],
            "annotations": [
                {"id": 1, "image_id": 3, "category_id": 1, "bbox": [5, 4, 10, 8], "iscrowd": 0, "area": 80},
                {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 10], "iscrowd": 1, "area": 200},
                {"id": 3, "image_id": 3, "category_id": 1, "bbox": [30, 20, 3, 9], "iscrowd": 0, "area": 27},
            ],
            "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
        }
        (tmp_path / "annotations" / f"instances_{stage}2017.json").write_text(json.dumps(document))
    coco = CocoDetDataModule(tmp_path, batch_size=1, val_batch_size=1, num_workers=0)
    coco.setup("fit")
    (only,) = detection_objects(coco.train_dataset, min_box_size=4.0)
    assert only.name == "a#0" and only.frames[0] == tmp_path / "train2017" / "a.png"
    assert only.boxes[0].tolist() == [5.0, 4.0, 10.0, 8.0]


def test_a_dataset_without_boxes_to_list_is_refused():
    with pytest.raises(TypeError, match="cannot list the objects of a list"):
        detection_objects([1, 2, 3])
    with pytest.raises(TypeError, match="data.detection must be a detection datamodule"):
        DetectionPairsDataModule(object(), test_root=".")


@pytest.mark.real_data
def test_pair_sampling_from_real_raccoon_boxes():
    root = shared_dataset("raccoon")
    detection = _detection(root, ["raccoon"])
    dm = DetectionPairsDataModule(detection, test_root=root, pairs=PAIRS, train_pairs=16, val_pairs=8)
    dm.setup("fit")
    train, val = dm.sequences["train"], dm.sequences["val"]
    assert len(train) >= 160 and len(val) >= 40  # at least one raccoon per photo
    dataset = dm.val_dataloader().dataset
    for index in range(8):
        _check_pair(dataset[index], PAIRS)
    template, search, _, _ = dataset[0]
    assert 0 <= float(template.min()) and float(search.max()) <= 1


@pytest.mark.real_data
def test_vot_loader_reads_the_real_bag_and_its_rotated_rectangles():
    root = shared_dataset("vot-bag")
    (bag,) = read_vot_root(root)
    assert bag.name == "bag" and len(bag) == 196 and bool(bag.known.all())
    assert bag.frames[0].name == "00000001.jpg" and bag.frame(0).shape == (3, 360, 480)
    # The VOT toolkit's rectangle of a polygon region: its axis-aligned bounding box.
    first = [float(v) for v in (root / "bag" / "groundtruth.txt").read_text().splitlines()[0].split(",")]
    xs, ys = first[0::2], first[1::2]
    expected = torch.tensor([min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)])
    torch.testing.assert_close(bag.boxes[0], expected)
    torch.testing.assert_close(bag.boxes[0], polygon_to_xywh(torch.tensor(first)).float())
