"""COCO detection on a tiny fabricated COCO tree: label mapping, box conversion, crowd handling, empty
images, batches, missing files and the Hydra config."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dcn.datamodules.detection.base import check_target
from dcn.datamodules.detection.coco import CocoDetDataModule

CONF = Path(__file__).resolve().parents[3] / "src" / "dcn" / "conf" / "data"

# Two categories with non-contiguous ids: sorted by id, 3 ("disc") becomes label 1, 7 ("ring") label 2.
CATEGORIES = [
    {"id": 7, "name": "ring", "supercategory": "shape"},
    {"id": 3, "name": "disc", "supercategory": "shape"},
]
# COCO image id -> (file, height, width). torchvision orders samples by image id: 5, 12, 40.
IMAGES = {12: ("first.jpg", 30, 40), 5: ("empty.jpg", 24, 20), 40: ("crowd_only.jpg", 16, 18)}
ANNOTATIONS = [
    # On image 12 (40x30):
    {"id": 1, "image_id": 12, "category_id": 7, "bbox": [5, 4, 10, 8], "iscrowd": 0, "area": 80},
    {
        "id": 2,
        "image_id": 12,
        "category_id": 3,
        "bbox": [35, 25, 10, 10],
        "iscrowd": 0,
        "area": 100,
    },  # crosses the corner
    {"id": 3, "image_id": 12, "category_id": 3, "bbox": [0, 0, 20, 10], "iscrowd": 1, "area": 200},
    {"id": 4, "image_id": 12, "category_id": 7, "bbox": [1, 1, 0, 5], "iscrowd": 0, "area": 0},  # zero width
    # Image 40 holds only a crowd region: empty in training, one flagged box in evaluation.
    {"id": 5, "image_id": 40, "category_id": 7, "bbox": [2, 3, 4, 5], "iscrowd": 1, "area": 20},
]


def write_coco(root: Path, split: str = "2017") -> Path:
    """``root/{train,val}<split>/`` images and ``root/annotations/instances_{train,val}<split>.json``
    (the same tiny content for both)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stage in ("train", "val"):
        folder = root / f"{stage}{split}"
        folder.mkdir(parents=True, exist_ok=True)
        for file, height, width in IMAGES.values():
            # PNG content in a .jpg file (PIL sniffs the format): exact pixels.
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                folder / file, format="PNG"
            )
        images = [{"id": i, "file_name": f, "height": h, "width": w} for i, (f, h, w) in IMAGES.items()]
        document = {"images": images, "annotations": ANNOTATIONS, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{stage}{split}.json").write_text(json.dumps(document))
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    return write_coco(tmp_path / "coco")


def make_dm(root: Path, **kwargs) -> CocoDetDataModule:
    options = dict(batch_size=2, val_batch_size=2, num_workers=0)
    options.update(kwargs)
    return CocoDetDataModule(root, **options)


def test_categories_map_to_contiguous_labels_by_id(coco_root):
    dm = make_dm(coco_root)
    assert dm.class_names == ["background", "disc", "ring"] and dm.num_classes == 3 and dm.in_channels == 3
    assert dm.label_to_category_id == {1: 3, 2: 7} and dm.category_id_to_label == {3: 1, 7: 2}


def test_training_targets_convert_boxes_and_leave_out_crowds(coco_root):
    dm = make_dm(coco_root, flip=False)
    dm.setup("fit")
    train = dm.train_dataset
    assert len(train) == 3 and [train.coco_image_id(i) for i in range(3)] == [5, 12, 40]
    image, target = train[1]  # COCO image 12, 40x30
    assert (
        image.dtype == torch.float32 and image.shape == (3, 30, 40) and 0 <= image.min() and image.max() <= 1
    )
    raw = np.array(Image.open(coco_root / "train2017" / "first.jpg"), dtype=np.float32) / 255
    torch.testing.assert_close(image, torch.from_numpy(raw).permute(2, 0, 1))
    # xywh -> xyxy: [5, 4, 10, 8] -> (5, 4, 15, 12); [35, 25, 10, 10] -> (35, 25, 45, 35) clipped to
    # (35, 25, 40, 30). The crowd (id 3) is left out; the zero-width box (id 4) dropped.
    assert target["boxes"].tolist() == [[5, 4, 15, 12], [35, 25, 40, 30]]
    assert target["labels"].tolist() == [2, 1]  # category 7 -> 2, 3 -> 1
    assert target["iscrowd"].tolist() == [False, False] and target["difficult"].tolist() == [False, False]
    assert target["image_id"] == 1
    check_target(target, (30, 40), dm.num_classes)
    # Images without annotations, or with only a crowd, stay in training with empty targets.
    for index, size in ((0, (24, 20)), (2, (16, 18))):
        image, target = train[index]
        assert image.shape[1:] == size and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        check_target(target, size, dm.num_classes)


def test_evaluation_targets_flag_crowds(coco_root):
    dm = make_dm(coco_root)
    dm.setup("validate")
    _, target = dm.val_dataset[1]
    assert target["boxes"].tolist() == [[5, 4, 15, 12], [35, 25, 40, 30], [0, 0, 20, 10]]
    assert target["labels"].tolist() == [2, 1, 1]
    assert target["iscrowd"].tolist() == [False, False, True] and target["difficult"].tolist() == [
        False,
        False,
        True,
    ]
    _, crowd_only = dm.val_dataset[2]
    assert crowd_only["boxes"].tolist() == [[2, 3, 6, 8]] and crowd_only["iscrowd"].tolist() == [True]
    dm.setup("test")
    assert dm.test_dataset is dm.val_dataset  # test = the val pair by default, loaded once


def test_batches_are_lists_and_training_flips(coco_root):
    dm = make_dm(coco_root)
    dm.setup()
    images, targets = next(iter(dm.val_dataloader()))
    assert [tuple(i.shape) for i in images] == [(3, 24, 20), (3, 30, 40)] and [
        t["image_id"] for t in targets
    ] == [0, 1]
    torch.manual_seed(0)
    first_boxes = set()
    for _ in range(12):
        first_boxes.add(tuple(dm.train_dataset[1][1]["boxes"][0].tolist()))
    # Unflipped (5, 4, 15, 12), or flipped in the 40-wide image: (40 - 15, 4, 40 - 5, 12).
    assert first_boxes == {(5, 4, 15, 12), (25, 4, 35, 12)}
    assert sum(len(b[0]) for b in dm.train_dataloader()) == 3


def test_missing_files_point_to_the_coco_site(tmp_path, coco_root):
    with pytest.raises(FileNotFoundError, match="cocodataset.org") as info:
        make_dm(tmp_path / "nowhere").num_classes
    assert str(tmp_path / "nowhere" / "annotations" / "instances_val2017.json") in str(info.value)
    (coco_root / "annotations" / "instances_train2017.json").unlink()
    dm = make_dm(coco_root)
    assert dm.num_classes == 3  # classes come from the val file
    for step in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json \(data\.train_annotations"):
            step()
    dm.setup("validate")  # the val pair alone is enough to validate
    assert len(dm.val_dataset) == 3


def test_test_pair_needs_both_paths(coco_root):
    with pytest.raises(ValueError, match="data.test_images and data.test_annotations"):
        make_dm(coco_root, test_images="val2017")
    dm = make_dm(coco_root, test_images="train2017", test_annotations="annotations/instances_train2017.json")
    dm.setup("test")
    assert dm.test_dataset.annotations == coco_root / "annotations" / "instances_train2017.json"


def test_unknown_category_in_an_annotation_is_named(coco_root):
    path = coco_root / "annotations" / "instances_val2017.json"
    document = json.loads(path.read_text())
    document["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(document))
    dm = make_dm(coco_root)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"instances_val2017\.json: annotation 1 has category id 99"):
        dm.val_dataset[1]


def test_hydra_config_instantiates(tmp_path):
    write_coco(tmp_path / "coco")
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": OmegaConf.load(CONF / "coco.yaml")})
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, CocoDetDataModule) and dm.root == tmp_path / "coco" and dm.num_classes == 3
    dm.setup()
    assert len(dm.train_dataset) == 3 and dm.test_dataset is dm.val_dataset
