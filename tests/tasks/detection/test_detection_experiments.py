"""Both detection experiments compose and run end to end (fast_dev_run) through train.py, and the four-way
ablation (deform conv on/off x RoI pooling align/deform) is one sweep over two config keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dcn.datamodules.detection.synthetic import SyntheticDetGenerator
from dcn.results import RunRecord

TINY_RUN = [
    "trainer.fast_dev_run=true",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "task.min_size=64",
    "task.max_size=64",
    "task.representation_size=32",
    "task.deform_roi_pool.hidden_channels=32",
]
# VOC names for the generator's shapes: the fabricated VOC tree below then reads with VOC's 20 classes.
AS_VOC = {"disc": "person", "ring": "dog", "square": "car", "triangle": "bird", "cross": "chair"}


def _run(cfg) -> dict:
    from train import train  # train.py lives at the repository root (tests/conftest.py puts it on sys.path)

    record = RunRecord(cfg.paths.output_dir, cfg)
    train(cfg, record)
    return record.data


@pytest.mark.parametrize("deform, roi_pool", [("true", "deform"), ("false", "align")])
def test_frcnn_synthetic_fast_dev_run(compose_train, deform, roi_pool):
    cfg = compose_train(
        [
            "experiment=frcnn_synthetic",
            f"backbone.deform.enabled={deform}",
            f"task.roi_pool={roi_pool}",
            *TINY_RUN,
            "data.generator.num_train=4",
            "data.generator.num_val=2",
            "data.generator.num_test=2",
            "data.generator.image_size=64",
        ]
    )
    assert cfg.task._target_ == "dcn.tasks.detection.DetectionTask"
    assert cfg.data._target_ == "dcn.datamodules.SyntheticDetDataModule"
    assert cfg.callbacks.model_checkpoint.monitor == "val/mAP"
    data = _run(cfg)
    assert {"test/mAP", "test/mAP70"} <= set(data["metrics"]) and "test/mAP50" not in data["metrics"]
    assert 0 <= data["metrics"]["test/mAP"] <= 1
    assert (data["parameters"]["offset_predictor"] > 0) == (deform == "true")
    assert (data["parameters"]["roi_offset_head"] > 0) == (roi_pool == "deform")


def _fabricate_voc0712(root: Path) -> Path:
    """VOC2007 (trainval, test) and VOC2012 (trainval) trees in the real layout, written by the synthetic
    generator with its shape names replaced by VOC class names."""
    SyntheticDetGenerator(num_train=3, num_val=2, num_test=2, image_size=48, objects=(1, 2)).write(
        root / "gen"
    )
    source = root / "gen" / "VOCdevkit" / "VOC2012"
    for year, splits in (
        ("2007", {"trainval": ["train"], "test": ["test"]}),
        ("2012", {"trainval": ["train", "val"]}),
    ):
        voc = root / "VOCdevkit" / f"VOC{year}"
        shutil.copytree(source / "JPEGImages", voc / "JPEGImages")
        (voc / "Annotations").mkdir(parents=True)
        for xml in (source / "Annotations").glob("*.xml"):
            text = xml.read_text()
            for shape, name in AS_VOC.items():
                text = text.replace(f"<name>{shape}</name>", f"<name>{name}</name>")
            (voc / "Annotations" / xml.name).write_text(text)
        (voc / "ImageSets" / "Main").mkdir(parents=True)
        for split, parts in splits.items():
            ids = "".join((source / "ImageSets" / "Main" / f"{p}.txt").read_text() for p in parts)
            (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(ids)
    return root


def test_frcnn_voc_fast_dev_run_on_a_voc0712_tree(compose_train, tmp_path):
    root = _fabricate_voc0712(tmp_path / "voc")
    cfg = compose_train(["experiment=frcnn_voc", f"data.root={root}", "backbone.pretrained=null", *TINY_RUN])
    assert cfg.backbone.arch == "resnet50" and cfg.backbone.deform.enabled and cfg.task.roi_pool == "deform"
    assert list(cfg.data.train_sets) == ["2007/trainval", "2012/trainval"] and list(cfg.data.test_sets) == [
        "2007/test"
    ]
    assert cfg.task.voc_use_07_metric and cfg.task.freeze_bn and cfg.task.frozen_stages == 1
    data = _run(cfg)
    assert "test/mAP70" in data["metrics"]
    assert data["parameters"]["offset_predictor"] > 0 and data["parameters"]["roi_offset_head"] > 0


def _fabricate_coco(root: Path) -> Path:
    """A COCO 2017 tree (train2017/, val2017/, annotations/instances_*.json) converted from synthetic
    VOC data."""
    from dcn.datamodules.detection.voc import parse_voc_xml

    generator = SyntheticDetGenerator(num_train=3, num_val=2, num_test=1, image_size=48, objects=(1, 2))
    voc = generator.write(root / "gen")
    categories = [
        {"id": 10 * (k + 1), "name": name} for k, name in enumerate(generator.shapes)
    ]  # ids with gaps
    (root / "annotations").mkdir(parents=True)
    for split, stage in (("train", "train2017"), ("val", "val2017")):
        (root / stage).mkdir()
        images, annotations = [], []
        for n, image_id in enumerate(
            (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split(), start=1
        ):
            shutil.copy(voc / "JPEGImages" / f"{image_id}.jpg", root / stage / f"{image_id}.jpg")
            ann = parse_voc_xml(voc / "Annotations" / f"{image_id}.xml", generator.shapes)
            images.append({"id": n, "file_name": f"{image_id}.jpg", "width": ann.width, "height": ann.height})
            for (x1, y1, x2, y2), label in zip(ann.boxes.tolist(), ann.labels.tolist()):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": n,
                        "category_id": 10 * label,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        document = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{stage}.json").write_text(json.dumps(document))
    return root


def test_frcnn_coco_fast_dev_run_reports_coco_and_voc_numbers(compose_train, tmp_path):
    root = _fabricate_coco(tmp_path / "coco")
    cfg = compose_train(["experiment=frcnn_coco", f"data.root={root}", "backbone.pretrained=null", *TINY_RUN])
    assert cfg.data._target_ == "dcn.datamodules.CocoDetDataModule" and list(cfg.task.metrics) == [
        "coco",
        "voc",
    ]
    data = _run(cfg)
    # frcnn_coco: COCO first, so mAP is COCO mAP@[.5:.95] (not logged twice); VOC's numbers beside it.
    assert {"test/mAP", "test/coco/mAP50", "test/mAP50", "test/mAP70"} <= set(data["metrics"])
    assert "test/coco/mAP" not in data["metrics"]


def test_frcnn_voc_c4_is_the_papers_layout_and_runs_on_a_voc0712_tree(compose_train, tmp_path):
    root = _fabricate_voc0712(tmp_path / "voc")
    cfg = compose_train(
        ["experiment=frcnn_voc_c4", f"data.root={root}", "backbone.pretrained=null", *TINY_RUN]
    )
    assert (cfg.backbone.arch, cfg.backbone.output_stride, cfg.task.layout) == ("resnet101", 16, "c4")
    assert list(cfg.data.train_sets) == ["2007/trainval", "2012/trainval"] and cfg.task.voc_use_07_metric
    data = _run(cfg)
    assert (data["experiment_name"], data["backbone"]) == ("frcnn_voc_c4", "resnet101")
    assert "test/mAP70" in data["metrics"]
    assert data["parameters"]["offset_predictor"] > 0 and data["parameters"]["roi_offset_head"] > 0


def test_the_ablation_is_one_sweep_over_two_keys(compose_train):
    seen = set()
    for deform in ("false", "true"):
        for roi_pool in ("align", "deform"):
            cfg = compose_train(
                ["experiment=frcnn_voc", f"backbone.deform.enabled={deform}", f"task.roi_pool={roi_pool}"]
            )
            seen.add((cfg.backbone.deform.enabled, cfg.task.roi_pool))
    assert seen == {(False, "align"), (False, "deform"), (True, "align"), (True, "deform")}
