"""``python -m dcn.track``: rebuild a run's tracker from its config and checkpoint, track a VOT-layout
sequence, draw frames captioned with their number and IoU."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from PIL import Image

from dcn import track
from dcn.checkpoints import CheckpointError
from dcn.datamodules.synthetic.tracks import SyntheticTracksGenerator


@pytest.fixture
def run_dir(compose_train, tmp_path):
    """A fake finished run of experiment=siamrpn_synthetic: its config and a checkpoint of random weights."""
    cfg = compose_train(["experiment=siamrpn_synthetic"])
    with open_dict(cfg):
        cfg.task.channels = 16
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    backbone = hydra.utils.instantiate(cfg.backbone, in_channels=3)
    task = hydra.utils.instantiate(cfg.task, backbone=backbone, num_classes=None)
    torch.save({"state_dict": task.state_dict()}, run / "checkpoints" / "last.ckpt")
    return run


def test_tracks_a_sequence_and_writes_boxes_and_a_gif(run_dir, tmp_path):
    SyntheticTracksGenerator(num_train=1, num_val=1, num_test=1, num_frames=5, image_size=[96, 72]).write(
        tmp_path / "data"
    )
    sequence = tmp_path / "data" / "test" / "seq_0000"
    out = tmp_path / "out"
    summary = track.main(
        [
            str(run_dir),  # a run directory: its best (else last) checkpoint
            str(sequence),
            "--output",
            str(out),
            "--gif",
            str(tmp_path / "a.gif"),
        ]
    )
    lines = (out / "seq_0000.txt").read_text().splitlines()
    truth = (sequence / "groundtruth.txt").read_text().splitlines()
    assert len(lines) == 5
    first = torch.tensor([float(v) for v in lines[0].split(",")])
    torch.testing.assert_close(
        first, torch.tensor([float(v) for v in truth[0].split(",")]), atol=1e-3, rtol=0
    )
    assert all(len(line.split(",")) == 4 for line in lines)
    assert 0 <= summary["success_auc"] <= 1 and 0 <= summary["precision20"] <= 1
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 5


def test_got10k_format_and_bad_checkpoints(run_dir, tmp_path):
    boxes = torch.tensor([[10.0, 10.0, 20.0, 16.0], [12.0, 10.0, 20.0, 16.0]])
    path = track.write_boxes(boxes, tmp_path, "GOT-10k_Test_000001", "got10k", seconds=[0.1, 0.2])
    assert path.name == "GOT-10k_Test_000001_001.txt" and path.read_text().count("\n") == 2
    assert (path.parent / "GOT-10k_Test_000001_time.txt").is_file()
    broken = run_dir / "checkpoints" / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.ckpt"):
        track.build_task(broken)
    with pytest.raises(FileNotFoundError, match="--config"):
        track.build_task(tmp_path / "elsewhere.ckpt")


def test_frames_carry_their_number_and_iou(run_dir, tmp_path, monkeypatch):
    from dcn.geometry.boxes import box_overlap, xywh_to_cxcywh

    SyntheticTracksGenerator(num_train=1, num_val=1, num_test=1, num_frames=5, image_size=[160, 120]).write(
        tmp_path / "data"
    )
    sequence = tmp_path / "data" / "test" / "seq_0000"
    captions, caption = [], track.frame_caption

    def spy(index, count, iou):  # the captions run() draws
        captions.append(caption(index, count, iou))
        return captions[-1]

    monkeypatch.setattr(track, "frame_caption", spy)
    summary = track.main(
        [
            str(run_dir / "checkpoints" / "last.ckpt"),
            str(sequence),
            "--output",
            str(tmp_path / "out"),
            "--frames",
            str(tmp_path / "frames"),
        ]
    )

    def boxes(path):
        return torch.tensor([[float(v) for v in line.split(",")] for line in path.read_text().splitlines()])

    expected = box_overlap(
        xywh_to_cxcywh(boxes(tmp_path / "out" / "seq_0000.txt")),
        xywh_to_cxcywh(boxes(sequence / "groundtruth.txt")),
    ).tolist()
    assert summary["iou"] == pytest.approx(expected, abs=1e-3) and summary["iou"][0] == pytest.approx(1.0)
    assert captions == [f"frame {t + 1}/5  IoU {iou:.2f}" for t, iou in enumerate(summary["iou"])]
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert [f.name for f in frames] == [f"{t:08d}.png" for t in range(1, 6)]
    for frame in frames:
        corner = np.asarray(Image.open(frame).convert("RGB"))[:12, :90].astype(int)
        grey = (corner.max(-1) - corner.min(-1)) <= 8  # the coloured frame is covered by black and white
        assert grey.all()
        assert (corner.max(-1) < 30).mean() > 0.5 and (corner.min(-1) > 200).any()  # white text on black


def test_frame_caption_without_ground_truth():
    assert track.frame_caption(0, 120, 0.7149) == "frame 1/120  IoU 0.71"
    assert track.frame_caption(9, 120, None) == "frame 10/120  IoU n/a"
