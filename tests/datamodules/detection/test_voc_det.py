"""VOC detection on tiny fabricated VOC trees: XML parsing and its bad-input policy, the dataset, the
training flip, the datamodule (07+12 union, batches, missing data) and the Hydra config."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dcn.datamodules.detection.base import (
    RandomHorizontalFlip,
    check_target,
    detection_collate,
    horizontal_flip,
    make_target,
)
from dcn.datamodules.detection.voc import VOC_DET_CLASSES, VOCDetDataModule, VOCDetDataset, parse_voc_xml

CONF = Path(__file__).resolve().parents[3] / "src" / "dcn" / "conf" / "data"

# An object: (name, (xmin, ymin, xmax, ymax) VOC 1-based inclusive, difficult, truncated); None flags
# are left out of the XML.
Obj = Tuple[str, Tuple[float, float, float, float], Optional[int], Optional[int]]


def voc_xml(filename: str, size: Optional[Tuple[int, int]], objects: Sequence[Obj]) -> str:
    """A VOC annotation; ``size`` is (width, height), None leaves ``<size>`` out."""
    parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (xmin, ymin, xmax, ymax), difficult, truncated in objects:
        parts.append(f"<object><name>{name}</name><pose>Left</pose>")
        if truncated is not None:
            parts.append(f"<truncated>{truncated}</truncated>")
        if difficult is not None:
            parts.append(f"<difficult>{difficult}</difficult>")
        parts.append(
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>"
        )
        parts.append("</object>")
    parts.append("</annotation>")
    return "".join(parts)


def write_image(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random RGB pixels; PNG content in a ``.jpg`` file (PIL sniffs the format) so values stay exact."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels


# id -> (height, width, objects). "b" has a difficult object, "c" none at all.
IMAGES: Dict[str, Tuple[int, int, List[Obj]]] = {
    "a": (30, 40, [("cat", (10, 5, 20, 15), 0, 1), ("dog", (1, 1, 40, 30), None, None)]),
    "b": (24, 20, [("dog", (3, 4, 8, 9), 1, 0), ("cat", (2, 2, 19, 23), 0, 0)]),
    "c": (16, 18, []),
}


def write_voc(
    root: Path, year: str, ids: Sequence[str], splits: Dict[str, Sequence[str]], prefix: str = ""
) -> Path:
    """VOC<year> under ``root/VOCdevkit`` with the ``IMAGES`` entries ``ids`` (image ids get ``prefix``)."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for k, key in enumerate(ids):
        height, width, objects = IMAGES[key]
        write_image(voc / "JPEGImages" / f"{prefix}{key}.jpg", height, width, seed=k)
        (voc / "Annotations" / f"{prefix}{key}.xml").write_text(
            voc_xml(f"{prefix}{key}.jpg", (width, height), objects)
        )
    for split, members in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{prefix}{m}\n" for m in members))
    return voc


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """VOC2007 (trainval a, b; test a, b, c) and VOC2012 (trainval: its own a, b, c)."""
    write_voc(
        tmp_path, "2007", ["a", "b", "c"], {"trainval": ["a", "b"], "test": ["a", "b", "c"]}, prefix="07_"
    )
    write_voc(tmp_path, "2012", ["a", "b", "c"], {"trainval": ["a", "b", "c"]}, prefix="12_")
    return tmp_path


def make_dm(root: Path, **kwargs) -> VOCDetDataModule:
    options = dict(
        train_sets=["2007/trainval", "2012/trainval"],
        val_sets=["2007/test"],
        test_sets=["2007/test"],
        batch_size=2,
        val_batch_size=2,
        num_workers=0,
    )
    options.update(kwargs)
    return VOCDetDataModule(root, **options)


def label_of(name: str) -> int:
    return VOC_DET_CLASSES.index(name) + 1


# ---------------------------------------------------------------- XML parsing


def test_parse_converts_voc_pixels_to_continuous_coordinates(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(voc_xml("a.jpg", (40, 30), IMAGES["a"][2] + [("person", (1, 1, 1, 1), 1, None)]))
    ann = parse_voc_xml(xml, VOC_DET_CLASSES)
    assert (ann.filename, ann.width, ann.height, ann.path) == ("a.jpg", 40, 30, xml)
    # (xmin - 1, ymin - 1, xmax, ymax): pixels 10..20 (1-based) span [9, 20]; the whole 40x30 image
    # (1..40, 1..30) spans [0, 40] x [0, 30]; the single pixel (1, 1) spans [0, 1] x [0, 1].
    expected = np.array([[9, 4, 20, 15], [0, 0, 40, 30], [0, 0, 1, 1]], dtype=np.float32)
    assert ann.boxes.dtype == np.float32 and np.array_equal(ann.boxes, expected)
    # Labels are 1-based indices into VOC_DET_CLASSES (aeroplane=1, ...): cat is the 8th class, dog the 12th.
    assert ann.labels.dtype == np.int64 and ann.labels.tolist() == [8, 12, 15]
    assert [label_of("cat"), label_of("dog"), label_of("person")] == [8, 12, 15]
    # difficult/truncated as written; a missing tag counts as 0.
    assert ann.difficult.tolist() == [False, False, True] and ann.truncated.tolist() == [True, False, False]


def test_boxes_outside_the_image_are_clipped(tmp_path):
    xml = tmp_path / "clip.xml"
    xml.write_text(
        voc_xml("clip.jpg", (40, 30), [("cat", (-5, 3, 50, 35), 0, 0), ("cat", (2.5, 3, 7.5, 9), 0, 0)])
    )
    ann = parse_voc_xml(xml, VOC_DET_CLASSES)
    # (-5 - 1, 3 - 1, 50, 35) clipped to [0, 40] x [0, 30]; fractional coordinates (some tools write
    # them) kept.
    assert ann.boxes.tolist() == [[0, 2, 40, 30], [1.5, 2, 7.5, 9]]


def test_degenerate_boxes_are_dropped_with_a_warning(tmp_path):
    xml = tmp_path / "degenerate.xml"
    objects = [
        ("cat", (45, 5, 60, 10), 0, 0),  # entirely right of the 40-wide image: [44, 60] clips to [40, 40]
        ("dog", (10, 5, 8, 10), 0, 0),  # xmax < xmin - 1: [9, 8]
        ("bird", (3, 3, 6, 6), 0, 0),  # fine: [2, 6] x [2, 6]
    ]
    xml.write_text(voc_xml("degenerate.jpg", (40, 30), objects))
    with pytest.warns(UserWarning) as record:
        ann = parse_voc_xml(xml, VOC_DET_CLASSES)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and all(m.startswith(f"{xml}: object ") for m in messages)
    assert "object 0 ('cat')" in messages[0] and "(45.0, 5.0, 60.0, 10.0)" in messages[0]
    assert "object 1 ('dog')" in messages[1] and "(10.0, 5.0, 8.0, 10.0)" in messages[1]
    assert ann.boxes.tolist() == [[2, 2, 6, 6]] and ann.labels.tolist() == [label_of("bird")]


@pytest.mark.parametrize(
    "text, match",
    [
        ("<annotation><size><width>40</width>", "malformed XML"),
        (
            voc_xml("x.jpg", (40, 30), [("cat", (1, 1, 5, 5), 0, 0), ("zebra", (1, 1, 5, 5), 0, 0)]),
            r"object 1: unknown class 'zebra'.*'aeroplane'.*data\.class_names",
        ),
        (
            voc_xml("x.jpg", (40, 30), [("cat", (1, 1, 5, 5), 0, 0)]).replace("<xmax>5</xmax>", ""),
            "object 0.*no <xmax>",
        ),
        (
            voc_xml("x.jpg", (40, 30), [("cat", (1, 1, 5, 5), 0, 0)]).replace(
                "<ymin>1</ymin>", "<ymin>one</ymin>"
            ),
            "object 0.*<ymin> is not a number: 'one'",
        ),
        (voc_xml("x.jpg", (0, 30), []), "size must be positive"),
        (
            voc_xml("x.jpg", (40, 30), [("cat", (1, 1, 5, 5), 0, 0)]).replace(
                "<difficult>0</difficult>", "<difficult>x</difficult>"
            ),
            "object 0: <difficult> is not a number",
        ),
    ],
    ids=["malformed", "unknown-class", "missing-coordinate", "non-numeric", "zero-size", "bad-flag"],
)
def test_bad_xml_is_refused_naming_the_file(tmp_path, text, match):
    xml = tmp_path / "bad_annotation.xml"
    xml.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        parse_voc_xml(xml, VOC_DET_CLASSES)
    assert str(xml) in str(info.value)


def test_missing_bndbox_names_file_and_object(tmp_path):
    xml = tmp_path / "nobox.xml"
    text = voc_xml("nobox.jpg", (40, 30), [("cat", (1, 1, 5, 5), 0, 0), ("dog", (1, 1, 5, 5), 0, 0)])
    # Remove the second object's <bndbox> only.
    second = text.index("<bndbox>", text.index("<name>dog</name>"))
    xml.write_text(text[:second] + text[text.index("</bndbox>", second) + len("</bndbox>") :])
    with pytest.raises(ValueError, match=r"nobox\.xml: object 1 \('dog'\) has no <bndbox>"):
        parse_voc_xml(xml, VOC_DET_CLASSES)


def test_missing_size_is_read_from_the_image_header(tmp_path):
    voc = tmp_path / "VOC"
    (voc / "Annotations").mkdir(parents=True)
    write_image(voc / "JPEGImages" / "s.jpg", height=30, width=40)
    xml = voc / "Annotations" / "s.xml"
    xml.write_text(voc_xml("s.jpg", None, [("cat", (1, 1, 50, 50), 0, 0)]))
    ann = parse_voc_xml(xml, VOC_DET_CLASSES)  # default image path: ../JPEGImages/<stem>.jpg
    assert (ann.width, ann.height) == (40, 30) and ann.boxes.tolist() == [
        [0, 0, 40, 30]
    ]  # clipped to the header size
    (voc / "JPEGImages" / "s.jpg").unlink()
    with pytest.raises(ValueError, match=r"s\.xml: no <size>.*s\.jpg"):
        parse_voc_xml(xml, VOC_DET_CLASSES)


def test_custom_class_names_give_their_own_labels(tmp_path):
    xml = tmp_path / "custom.xml"
    xml.write_text(
        voc_xml("custom.jpg", (40, 30), [("disc", (1, 1, 5, 5), 0, 0), ("ring", (2, 2, 6, 6), 0, 0)])
    )
    assert parse_voc_xml(xml, ["ring", "disc"]).labels.tolist() == [2, 1]


# ---------------------------------------------------------------- dataset


def test_dataset_samples_have_the_documented_form(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    items = [
        (
            voc / "JPEGImages" / f"07_{k}.jpg",
            parse_voc_xml(voc / "Annotations" / f"07_{k}.xml", VOC_DET_CLASSES),
        )
        for k in "abc"
    ]
    dataset = VOCDetDataset(items, use_difficult=True)
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    raw = np.array(Image.open(voc / "JPEGImages" / "07_a.jpg"), dtype=np.float32) / 255
    torch.testing.assert_close(image, torch.from_numpy(raw).permute(2, 0, 1))  # [0, 1], not normalised
    check_target(target, (30, 40), num_classes=21, source="07_a")
    assert target["boxes"].tolist() == [[9, 4, 20, 15], [0, 0, 40, 30]] and target["image_id"] == 0
    assert target["labels"].tolist() == [label_of("cat"), label_of("dog")]
    # "c" has no objects: still a sample, with empty [0, 4] boxes.
    image, target = dataset[2]
    assert image.shape == (3, 16, 18) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["difficult"].dtype == torch.bool and target["image_id"] == 2
    check_target(target, (16, 18), num_classes=21)


def test_use_difficult_false_drops_difficult_objects(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    items = [
        (voc / "JPEGImages" / "07_b.jpg", parse_voc_xml(voc / "Annotations" / "07_b.xml", VOC_DET_CLASSES))
    ]
    kept = VOCDetDataset(items, use_difficult=True)[0][1]
    assert kept["labels"].tolist() == [label_of("dog"), label_of("cat")] and kept["difficult"].tolist() == [
        True,
        False,
    ]
    dropped = VOCDetDataset(items, use_difficult=False)[0][1]
    assert dropped["labels"].tolist() == [label_of("cat")] and dropped["difficult"].tolist() == [False]
    assert dropped["boxes"].tolist() == [[1, 1, 19, 23]]


def test_image_and_xml_size_mismatch_names_both(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    write_image(voc / "JPEGImages" / "07_a.jpg", height=30, width=41)  # the XML says 40x30
    xml = voc / "Annotations" / "07_a.xml"
    dataset = VOCDetDataset([(voc / "JPEGImages" / "07_a.jpg", parse_voc_xml(xml, VOC_DET_CLASSES))])
    with pytest.raises(ValueError, match="41x30") as info:
        dataset[0]
    assert "07_a.jpg" in str(info.value) and str(xml) in str(info.value) and "40x30" in str(info.value)


# ---------------------------------------------------------------- flip and collate


def test_flip_moves_boxes_with_their_pixels():
    torch.manual_seed(0)
    image = torch.rand(3, 30, 40)
    target = make_target(
        np.array([[5, 2, 12, 9], [0, 0, 40, 30]]), np.array([3, 4]), np.array([False, True]), 7
    )
    flipped_image, flipped = horizontal_flip(image, target)
    # x1' = W - x2, x2' = W - x1 with W = 40: [5, 12] -> [28, 35]; the full-image box stays full.
    assert flipped["boxes"].tolist() == [[28, 2, 35, 9], [0, 0, 40, 30]]
    assert (
        flipped["labels"].tolist() == [3, 4]
        and flipped["image_id"] == 7
        and flipped["difficult"].tolist() == [False, True]
    )
    # The box's pixels in the flipped image are the original box's pixels, mirrored.
    assert torch.equal(flipped_image[:, 2:9, 28:35], image[:, 2:9, 5:12].flip(-1))
    twice_image, twice = horizontal_flip(flipped_image, flipped)
    assert torch.equal(twice_image, image) and torch.equal(twice["boxes"], target["boxes"])
    assert torch.equal(target["boxes"][0], torch.tensor([5.0, 2, 12, 9]))  # the input target is not modified


def test_random_flip_uses_the_global_rng():
    image = torch.arange(6.0).reshape(1, 2, 3)
    target = make_target(np.array([[0, 0, 1, 2]]), np.array([1]), np.array([False]), 0)
    assert RandomHorizontalFlip(1.0)(image, target)[1]["boxes"].tolist() == [[2, 0, 3, 2]]
    assert RandomHorizontalFlip(0.0)(image, target)[1]["boxes"].tolist() == [[0, 0, 1, 2]]
    flip = RandomHorizontalFlip(0.5)

    def draws() -> List[bool]:
        return [flip(image, target)[1]["boxes"][0, 0].item() == 2 for _ in range(40)]

    torch.manual_seed(3)
    first = draws()
    torch.manual_seed(3)
    assert draws() == first  # reproducible from torch's seed
    assert 5 < sum(first) < 35  # both outcomes occur (40 fair draws)
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(1.5)


def test_collate_keeps_lists():
    samples = [(torch.zeros(3, 4, 5), {"image_id": 0}), (torch.zeros(3, 6, 2), {"image_id": 1})]
    images, targets = detection_collate(samples)
    assert [tuple(i.shape) for i in images] == [(3, 4, 5), (3, 6, 2)] and targets == [
        {"image_id": 0},
        {"image_id": 1},
    ]


def test_check_target_refuses_out_of_range_labels_and_boxes():
    good = make_target(np.array([[0, 0, 4, 3]]), np.array([2]), np.array([False]), 0)
    check_target(good, (3, 4), num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.1"):
        check_target(good, (3, 4), num_classes=2)
    with pytest.raises(ValueError, match="offending boxes"):
        check_target(good, (3, 3), num_classes=3)  # x2 = 4 > W = 3


# ---------------------------------------------------------------- datamodule


def test_07_plus_12_concatenates_years(voc_root):
    dm = make_dm(voc_root)
    assert dm.class_names == ["background", *VOC_DET_CLASSES] and dm.num_classes == 21 and dm.in_channels == 3
    dm.prepare_data()  # no download: only checks the layout
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 + 3 and len(dm.val_dataset) == 3 and dm.test_dataset is None
    assert [p.name for p, _ in dm.train_dataset.items] == [
        "07_a.jpg",
        "07_b.jpg",
        "12_a.jpg",
        "12_b.jpg",
        "12_c.jpg",
    ]
    # Training drops difficult objects (07_b's dog); evaluation keeps them, flagged.
    assert dm.train_dataset.use_difficult is False and dm.train_dataset[1][1]["boxes"].shape == (1, 4)
    assert dm.val_dataset[1][1]["difficult"].tolist() == [True, False]
    dm.setup("test")
    assert len(dm.test_dataset) == 3
    assert make_dm(voc_root, use_difficult_in_training=True).train_dataset is None  # nothing before setup


def test_batches_are_lists_of_differently_sized_images(voc_root):
    dm = make_dm(voc_root, flip=False)
    dm.setup()
    images, targets = next(iter(dm.val_dataloader()))  # in order: 07_a 30x40, 07_b 24x20
    assert isinstance(images, list) and isinstance(targets, list)
    assert [tuple(i.shape) for i in images] == [(3, 30, 40), (3, 24, 20)]
    assert [t["image_id"] for t in targets] == [0, 1]
    batches = list(dm.train_dataloader())
    assert sum(len(b[0]) for b in batches) == 5  # shuffled, nothing dropped (5 = 2 + 2 + 1)
    assert sorted(t["image_id"] for _, ts in batches for t in ts) == [0, 1, 2, 3, 4]


def test_training_flips_about_half_the_samples(voc_root):
    dm = make_dm(voc_root, train_sets=["2007/trainval"])
    dm.setup("fit")
    reference = VOCDetDataset(dm.train_dataset.items, use_difficult=False)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(10):
        image, target = dm.train_dataset[0]  # 07_a, 40 wide
        plain_image, plain = reference[0]
        if torch.equal(target["boxes"], plain["boxes"]):
            assert torch.equal(image, plain_image)
        else:
            flipped += 1
            assert torch.equal(image, plain_image.flip(-1))
            assert target["boxes"][0].tolist() == [40 - 20, 4, 40 - 9, 15]  # [9, 20] -> [20, 31]
    assert 0 < flipped < 10


def test_custom_classes_and_unknown_class_in_data(voc_root):
    dm = make_dm(voc_root, class_names=["dog", "cat"])
    assert dm.class_names == ["background", "dog", "cat"] and dm.num_classes == 3
    dm.setup("fit")
    assert dm.val_dataset[0][1]["labels"].tolist() == [2, 1]  # cat, dog
    with pytest.raises(ValueError, match=r"07_a\.xml: object 1: unknown class 'dog'"):
        make_dm(voc_root, class_names=["cat"]).setup("fit")
    with pytest.raises(ValueError, match="background"):
        make_dm(voc_root, class_names=["background", "cat"])
    with pytest.raises(ValueError, match="data.train_sets"):
        make_dm(voc_root, train_sets=["2007-trainval"])


def test_missing_root_is_named_with_how_to_get_voc(tmp_path):
    missing = tmp_path / "nowhere"
    for step in ("prepare_data", "setup"):
        with pytest.raises(FileNotFoundError, match=str(missing / "VOCdevkit" / "VOC2007")) as info:
            getattr(make_dm(missing), step)()
        assert "data.download=true" in str(info.value) and "data.root" in str(info.value)


def test_missing_split_file_or_listed_image_is_named(voc_root):
    split = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "trainval.txt"
    split.rename(split.with_name("other.txt"))
    with pytest.raises(FileNotFoundError, match=str(split)):
        make_dm(voc_root).prepare_data()
    split.with_name("other.txt").rename(split)
    (voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "12_b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"12_b\.jpg is listed in .*trainval\.txt"):
        make_dm(voc_root).setup("fit")


def test_root_may_be_the_voc_folder_itself(voc_root):
    dm = make_dm(voc_root / "VOCdevkit" / "VOC2007", train_sets=["2007/trainval"])
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 3


# ---------------------------------------------------------------- Hydra


def test_hydra_config_instantiates_and_reads_07_plus_12(voc_root):
    cfg = OmegaConf.create(
        {"paths": {"data_dir": str(voc_root)}, "data": OmegaConf.load(CONF / "voc_det.yaml")}
    )
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, VOCDetDataModule) and dm.root == voc_root and dm.num_classes == 21
    assert dm.download is False and dm.flip is True and dm.num_workers == 4
    dm.num_workers = 0
    dm.setup()
    # Defaults: 2007 trainval (2) + 2012 trainval (3) for training, 2007 test (3) for val and test.
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (5, 3, 3)


def test_truncated_image_names_the_file(voc_root, truncate_file):
    from dcn.images import ImageReadError

    dm = make_dm(voc_root)
    dm.setup("fit")
    bad = truncate_file(dm.train_dataset.image_path(0))
    with pytest.raises(ImageReadError, match=rf"cannot read image {bad}"):
        dm.train_dataset[0]


def test_grayscale_images_load_as_rgb(voc_root):
    """Some real datasets (raccoon: 3 of 200) hold grayscale JPEGs among RGB ones."""
    dm = make_dm(voc_root)
    dm.setup("fit")
    path = dm.train_dataset.image_path(0)
    Image.open(path).convert("L").save(path)
    image, _ = dm.train_dataset[0]
    assert image.shape[0] == 3
