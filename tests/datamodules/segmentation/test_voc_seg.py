"""The VOC-layout loader on a tiny fabricated VOC tree: exact reading, padding, SBD, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from dcn.datamodules.segmentation.transforms import eval_transform, pad_collate, train_transform
from dcn.datamodules.segmentation.voc import VOC_CLASSES, VOCSegDataModule
from dcn.datamodules.voc.label_png import LabelError, read_label_png, voc_palette, write_label_png

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZES = {"a": (20, 24), "b": (18, 30), "c": (22, 22), "d": (16, 20)}  # id -> (height, width)
SPLITS = {"train": ["a", "b"], "val": ["c", "d"]}


def fake_label(height: int, width: int, cls: int) -> np.ndarray:
    """Background with one rectangle of class ``cls`` and VOC's 255 border around it."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[4:12, 5:15] = 255
    label[5:11, 6:14] = cls
    return label


def write_fake_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, (name, (h, w)) in enumerate(SIZES.items()):
        # PNG content in a .jpg file: decoders sniff the format; keeps pixel values exact for the test.
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{name}.jpg", format="PNG"
        )
        write_label_png(voc / "SegmentationClass" / f"{name}.png", fake_label(h, w, cls=k + 1))
    for split, ids in SPLITS.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc


@pytest.fixture
def voc_root(tmp_path) -> Path:
    write_fake_voc(tmp_path)
    return tmp_path


def make_dm(root, **kwargs) -> VOCSegDataModule:
    options = dict(crop_size=16, batch_size=2, val_batch_size=2, num_workers=0)
    options.update(kwargs)
    return VOCSegDataModule(root, **options)


def test_palette_png_round_trip_and_voc_colours(tmp_path):
    assert voc_palette()[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    label = fake_label(20, 24, 3)
    write_label_png(tmp_path / "x.png", label)
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]
    assert np.array_equal(read_label_png(tmp_path / "x.png", num_classes=21), label)


def test_reads_images_and_labels_exactly(voc_root):
    dm = make_dm(voc_root)
    dm.setup()
    assert dm.num_classes == 21 and dm.class_names == list(VOC_CLASSES) and dm.in_channels == 3
    assert len(dm.train_set) == 2 and len(dm.val_set) == 2 and len(dm.test_set) == 2  # test = val for VOC
    voc = voc_root / "VOCdevkit" / "VOC2012"
    image, mask = dm.val_set[0]  # "c": full image, no augmentation
    raw = np.array(Image.open(voc / "JPEGImages" / "c.jpg"), dtype=np.float32) / 255
    expected = (torch.from_numpy(raw).permute(2, 0, 1) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(
        STD
    )[:, None, None]
    torch.testing.assert_close(image, expected)
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(fake_label(22, 22, 3)).long())
    assert set(mask.unique().tolist()) == {0, 3, 255}


def test_validation_batches_pad_full_images_with_ignore(voc_root):
    dm = make_dm(voc_root)
    dm.setup()
    images, masks = next(iter(dm.val_dataloader()))  # "c" 22x22 and "d" 16x20
    assert images.shape == (2, 3, 22, 22) and masks.shape == (2, 22, 22)
    assert (masks[1, 16:] == 255).all() and (masks[1, :, 20:] == 255).all()
    assert (images[1, :, 16:] == 0).all()
    assert torch.equal(masks[1, :16, :20], torch.from_numpy(fake_label(16, 20, 4)).long())


def test_training_crops_pad_the_label_with_255_never_0():
    image = torch.full((3, 10, 12), 7, dtype=torch.uint8)
    label = torch.zeros(10, 12, dtype=torch.uint8)  # all background: any 0 outside it would be padding
    from torchvision import tv_tensors

    transform = train_transform(crop_size=32, scale_range=None, flip=False, mean=MEAN, std=STD)
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(label))
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
    assert (out_mask == 0).sum() == 10 * 12  # the original pixels, nowhere else
    assert (out_mask == 255).sum() == 32 * 32 - 10 * 12
    # The image is padded with the mean: ~0 after normalisation (up to the uint8 rounding of the mean).
    padded = out_image[:, out_mask == 255]
    assert padded.abs().max() < 1 / 255 / min(STD)
    # A fixed validation crop pads the same way.
    val_image, val_mask = eval_transform(crop_size=16, mean=MEAN, std=STD)(
        tv_tensors.Image(image), tv_tensors.Mask(label)
    )
    assert val_mask.shape == (16, 16) and (val_mask == 255).sum() == 16 * 16 - 10 * 12


def test_random_scale_keeps_masks_as_class_indices():
    from torchvision import tv_tensors

    torch.manual_seed(0)
    label = torch.from_numpy(fake_label(20, 24, 7))
    transform = train_transform(crop_size=8, scale_range=(0.5, 2.0), flip=True, mean=MEAN, std=STD)
    for _ in range(10):
        _, mask = transform(
            tv_tensors.Image(torch.zeros(3, 20, 24, dtype=torch.uint8)), tv_tensors.Mask(label)
        )
        assert set(mask.unique().tolist()) <= {0, 7, 255}  # nearest-neighbour: no blended values


def test_training_loader_yields_crops(voc_root):
    dm = make_dm(voc_root, crop_size=[16, 20])
    dm.setup()
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 20) and images.dtype == torch.float32
    assert masks.shape == (2, 16, 20) and masks.dtype == torch.int64


def test_missing_folder_is_named(voc_root):
    (voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass").rename(voc_root / "elsewhere")
    with pytest.raises(FileNotFoundError, match="SegmentationClass") as info:
        make_dm(voc_root).setup()
    assert "data.download=true" in str(info.value)


def test_missing_root_explains_how_to_get_voc(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "VOCdevkit" / "VOC2012")) as info:
        make_dm(tmp_path).setup()
    assert "download" in str(info.value)


def test_first_missing_listed_image_is_named(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.jpg is listed in the train split"):
        make_dm(voc_root).setup()


def test_rgb_label_png_is_refused_as_index_format(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    rgb = voc_palette()[fake_label(22, 22, 3)]
    Image.fromarray(rgb).save(voc / "SegmentationClass" / "c.png")  # a colour rendering, mode RGB
    dm = make_dm(voc_root, label_format="index")
    dm.setup()
    with pytest.raises(LabelError, match="class-index images"):
        dm.val_set[0]


@pytest.mark.parametrize("label_format", ["auto", "rgb_palette"])
def test_rgb_label_png_is_decoded_through_the_colour_map(voc_root, label_format):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    label = fake_label(22, 22, 3)  # classes 0 and 3, and the 255 border (cream)
    Image.fromarray(voc_palette()[label]).save(voc / "SegmentationClass" / "c.png")
    dm = make_dm(voc_root, label_format=label_format, val_crop_size=None)
    dm.setup()
    assert np.array_equal(dm.val_set.read(0)[1].numpy(), label)


def test_palette_label_read_as_rgb_palette_gives_the_same_indices(voc_root):
    dm_index, dm_rgb = make_dm(voc_root, label_format="index"), make_dm(voc_root, label_format="rgb_palette")
    dm_index.setup()
    dm_rgb.setup()
    assert np.array_equal(dm_index.val_set.read(0)[1].numpy(), dm_rgb.val_set.read(0)[1].numpy())


def test_colour_outside_the_class_list_names_file_colour_and_pixel(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    rgb = voc_palette()[fake_label(22, 22, 3)]
    rgb[7, 9] = (1, 2, 3)  # a colour of no class: a JPEG artefact, say
    Image.fromarray(rgb).save(voc / "SegmentationClass" / "c.png")
    dm = make_dm(voc_root)
    dm.setup()
    with pytest.raises(LabelError, match=r"c\.png: colour RGB\(1, 2, 3\) at pixel \(row 7, column 9\)"):
        dm.val_set.read(0)
    # Class 3's colour is outside the map of a 3-class list (classes 0..2).
    Image.fromarray(voc_palette()[fake_label(22, 22, 3)]).save(voc / "SegmentationClass" / "c.png")
    dm = make_dm(voc_root, class_names=["background", "a", "b"])
    dm.setup()
    with pytest.raises(LabelError, match=r"colour RGB\(128, 128, 0\) at pixel \(row 5, column 6\)"):
        dm.val_set.read(0)


def test_unknown_label_format_is_refused(voc_root):
    with pytest.raises(ValueError, match="label_format must be one of"):
        make_dm(voc_root, label_format="colours")


def test_label_above_num_classes_names_file_and_value(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    label = fake_label(22, 22, 3)
    label[0, 0] = 30
    write_label_png(voc / "SegmentationClass" / "c.png", label)
    dm = make_dm(voc_root)
    dm.setup()
    with pytest.raises(LabelError, match=r"c\.png: label value 30 .*num_classes=21"):
        dm.val_set[0]
    # The same file is fine for a dataset that has 31 classes.
    dm = make_dm(voc_root, num_classes=31)
    dm.setup()
    assert dm.val_set[0][1].max() == 255


def test_own_class_list(voc_root):
    names = ["bg", "a", "b", "c", "d"]
    dm = make_dm(voc_root, class_names=names)
    assert dm.num_classes == 5 and dm.class_names == names
    assert make_dm(voc_root, num_classes=6).class_names[-1] == "class_5"
    with pytest.raises(ValueError, match="data.num_classes=4 but data.class_names lists 5"):
        make_dm(voc_root, num_classes=4, class_names=names)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        make_dm(voc_root, batch_size=1)


def test_root_may_be_the_voc_folder_itself(voc_root):
    dm = make_dm(voc_root / "VOCdevkit" / "VOC2012")
    dm.setup()
    assert len(dm.train_set) == 2


def test_sbd_augmented_training_set(voc_root, tmp_path):
    sbd = tmp_path / "sbd"
    (sbd / "img").mkdir(parents=True)
    (sbd / "cls").mkdir()
    # "a" is in VOC train (VOC's PNG wins), "c" in VOC val (excluded), "e" only in SBD (.mat label).
    for name, (h, w) in {"a": (20, 24), "c": (22, 22), "e": (12, 14)}.items():
        Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(sbd / "img" / f"{name}.jpg", format="PNG")
        seg = np.full((h, w), 9, dtype=np.uint8)
        savemat(sbd / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}})
    (sbd / "train.txt").write_text("a\ne\n")
    (sbd / "val.txt").write_text("c\n")
    dm = make_dm(voc_root, use_sbd=True, sbd_root=sbd)
    dm.setup()
    labels = [p.name for p in dm.train_set.labels]
    assert labels == ["a.png", "b.png", "e.mat"]
    _, mask = dm.train_set.read(2)
    assert mask.shape == (12, 14) and (mask == 9).all()
    assert len(dm.val_set) == 2


def test_sbd_missing_is_explained(voc_root):
    with pytest.raises(FileNotFoundError, match="SBD not found"):
        make_dm(voc_root, use_sbd=True).setup()


def test_download_goes_through_torchvision(monkeypatch, tmp_path):
    calls = []

    class FakeVOC:
        def __init__(self, root, year, image_set, download):
            calls.append((root, year, image_set, download))
            raise RuntimeError("no internet")  # what a real download does here

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "VOCSegmentation", FakeVOC)
    with pytest.raises(RuntimeError, match="no internet"):
        make_dm(tmp_path, download=True).prepare_data()
    assert calls == [(str(tmp_path), "2012", "trainval", True)]
    make_dm(tmp_path, download=False).prepare_data()  # download=false never touches the network
    assert len(calls) == 1
    # Already there: no download even when asked.
    write_fake_voc(tmp_path)
    make_dm(tmp_path, download=True).prepare_data()
    assert len(calls) == 1


def test_pad_collate_rejects_mismatched_pairs():
    with pytest.raises(ValueError, match="differ in size"):
        pad_collate([(torch.zeros(3, 4, 4), torch.zeros(4, 5, dtype=torch.long))])


def test_truncated_image_names_the_file(voc_root, truncate_file):
    from dcn.images import ImageReadError

    dm = make_dm(voc_root)
    dm.setup("fit")
    bad = truncate_file(dm.train_set.images[0])
    with pytest.raises(ImageReadError, match=rf"cannot read image {bad}"):
        dm.train_set.read(0)
