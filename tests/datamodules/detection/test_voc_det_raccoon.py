"""voc_det on the real raccoon set as it is on disk (VOC layout directly under the root, one custom class,
3 grayscale photos)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from shared_data import shared_dataset

from dcn.datamodules import VOCDetDataModule
from dcn.datamodules.detection.base import check_target

pytestmark = pytest.mark.real_data


def test_all_200_raccoon_images_and_annotations_read_as_rgb_with_boxes_inside():
    root = shared_dataset("raccoon")
    dm = VOCDetDataModule(
        root,
        train_sets=["raccoon/train"],
        val_sets=["raccoon/val"],
        test_sets=["raccoon/val"],
        class_names=["raccoon"],
        flip=False,
        num_workers=0,
    )
    dm.setup("fit")
    assert dm.voc_dir("raccoon") == root and dm.class_names == ["background", "raccoon"]
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (160, 40)  # the author's split
    grayscale, boxes = [], 0
    for dataset in (dm.train_dataset, dm.val_dataset):
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.dim() == 3 and image.shape[0] == 3 and image.dtype == torch.float32
            check_target(target, tuple(image.shape[-2:]), dm.num_classes, str(dataset.image_path(index)))
            assert len(target["boxes"]) >= 1 and bool((target["labels"] == 1).all())
            boxes += len(target["boxes"])
            with Image.open(dataset.image_path(index)) as pil:
                if pil.mode != "RGB":
                    grayscale.append(dataset.image_path(index).name)
                    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert len(grayscale) == 3, grayscale
    assert boxes == 217
