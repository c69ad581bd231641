"""``python -m dcn.detect``: a detection run's checkpoint (written by train.py) finds objects in image
files; detections.json and the pictures say what it found, with the dataset's class names."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dcn import detect
from dcn.images import ImageReadError
from dcn.trained_task import load_trained_task

SHORT_RUN = [
    "experiment=frcnn_synthetic",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "test=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.generator.num_train=4",
    "data.generator.num_val=2",
    "data.generator.num_test=3",
    "data.generator.image_size=64",
    "task.min_size=64",
    "task.max_size=64",
    "task.representation_size=32",
    "task.deform_roi_pool.hidden_channels=32",
    "task.fpn_channels=32",
]


@pytest.fixture
def trained(compose_train, tmp_path):
    """(checkpoint, test images folder) of a two-step frcnn_synthetic run through train.py."""
    import train
    from dcn.results import RunRecord

    cfg = compose_train(SHORT_RUN)
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    checkpoint = json.loads((tmp_path / "run" / "results.json").read_text())["best"]["checkpoint"]
    images = next((tmp_path / "data" / "synthetic_det").glob("det-*/VOCdevkit/VOC2012/JPEGImages"))
    return checkpoint, images


def test_detects_a_folder_and_writes_json_and_pictures(trained, tmp_path, truncate_file):
    checkpoint, folder = trained
    files = sorted(folder.glob("*.jpg"))[:2]
    out = tmp_path / "out"
    # Threshold 0: an almost untrained detector scores low, and every kept box must be reported.
    summary = detect.main(
        [
            checkpoint,
            str(files[0]),
            str(files[1]),
            "--output",
            str(out),
            "--score-threshold",
            "0",
            "--batch-size",
            "2",
        ]
    )
    written = json.loads((out / "detections.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["class_names"] == ["background", "disc", "ring", "square", "triangle", "cross"]
    assert [r["file"] for r in written["images"]] == [str(f) for f in files]

    task, _ = load_trained_task(checkpoint)
    for record, path in zip(written["images"], files):
        image = detect.read_image(path)
        assert (record["height"], record["width"]) == tuple(image.shape[1:])
        with torch.no_grad():
            expected = task([image])[0]
        assert len(record["detections"]) == len(expected["scores"])  # threshold 0 keeps all
        for found, box, label, score in zip(
            record["detections"], expected["boxes"], expected["labels"], expected["scores"]
        ):
            assert found["class"] == written["class_names"][found["label"]] and found["label"] == int(label)
            assert found["box"] == pytest.approx(box.tolist(), abs=0.01)
            assert found["score"] == pytest.approx(float(score), abs=1e-4)
            x1, y1, x2, y2 = found["box"]
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
        with Image.open(out / f"{path.stem}.png") as picture:
            assert picture.size == (record["width"], record["height"])

    # A whole folder, pictures off, a threshold above every score: every image listed, nothing kept.
    summary = detect.main(
        [
            checkpoint,
            str(folder),
            "--output",
            str(tmp_path / "json_only"),
            "--no-pictures",
            "--score-threshold",
            "1",
        ]
    )
    assert len(summary["images"]) == len(list(folder.glob("*.jpg")))
    assert all(r["detections"] == [] for r in summary["images"])
    assert list((tmp_path / "json_only").iterdir()) == [tmp_path / "json_only" / "detections.json"]

    # One unreadable file in the folder: skipped and listed, every other image keeps its result, and
    # the command's exit status is 1.
    import shutil
    import subprocess
    import sys

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in files:
        shutil.copy(f, mixed / f.name)
    bad = truncate_file(mixed / files[0].name)
    summary = detect.main([checkpoint, str(mixed), "--output", str(tmp_path / "mixed_out"), "--no-pictures"])
    assert [r["file"] for r in summary["images"]] == [str(mixed / files[1].name)]
    assert [s["file"] for s in summary["skipped"]] == [str(bad)] and "cannot read image" in summary[
        "skipped"
    ][0]["error"]
    assert (
        json.loads((tmp_path / "mixed_out" / "detections.json").read_text())["skipped"] == summary["skipped"]
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcn.detect",
            checkpoint,
            str(mixed),
            "--output",
            str(tmp_path / "mixed_cli"),
            "--no-pictures",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and f"skipped: cannot read image {bad}" in proc.stderr


def test_bad_inputs_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no image files .* in folder .*empty"):
        detect.list_images([empty])
    with pytest.raises(FileNotFoundError, match="no such image file or folder: .*missing.jpg"):
        detect.list_images([tmp_path / "missing.jpg"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="cannot read image .*broken.jpg"):
        detect.read_image(broken)
    with pytest.raises(ValueError, match="--score-threshold must be in"):
        detect.main([str(tmp_path / "x.ckpt"), str(broken), "--score-threshold", "2"])


def test_a_run_of_another_task_is_refused(compose_train, tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_train([])  # classification on digits
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")  # refused before it is read
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(TypeError, match="ClassificationTask, not dcn.tasks.detection"):
        detect.main([str(tmp_path / "run"), str(image), "--output", str(tmp_path / "o")])
