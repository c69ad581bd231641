"""``synthetic_det``: offline object detection data in PASCAL VOC's on-disk layout.

The images are :mod:`dcn.datamodules.synthetic.shapes`' (deformed shapes on textured backgrounds),
drawn with detection-friendly defaults; each visible object becomes a VOC ``<object>`` whose box is
the tight box of its *visible* pixels. As in VOC, mostly hidden objects are left out, heavily occluded
ones are marked ``difficult`` and objects cut by the image edge are marked ``truncated``.

Output (:meth:`SyntheticDetGenerator.write`)::

    <out>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <out>/VOCdevkit/VOC2012/Annotations/<id>.xml             VOC XML, 1-based inclusive pixel boxes
    <out>/VOCdevkit/VOC2012/ImageSets/Main/{train,val,test}.txt

:class:`SyntheticDetDataModule` generates that once into ``<cache_dir>/det-<hash of the parameters>/``
(see :mod:`dcn.datamodules.synthetic.cache`) and reads it with the VOC detection loader.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np

from dcn.datamodules.detection.voc import VOCDetDataModule
from dcn.datamodules.synthetic.cache import GeneratedDataset
from dcn.datamodules.synthetic.shapes import ShapesRendering, SyntheticShapesGenerator, mask_box

__all__ = ["DetObject", "SyntheticDetDataModule", "SyntheticDetGenerator", "annotation_xml"]

_VOC_DIR = Path("VOCdevkit") / "VOC2012"


class DetObject(NamedTuple):
    """One annotated object of a synthetic detection image.

    Attributes:
        name: its class (a shape name).
        box: ``(xmin, ymin, xmax, ymax)`` as written in the XML: 1-based inclusive pixel indices of the
            tight box around the object's visible pixels (0-based columns ``c0..c1`` give
            ``xmin = c0 + 1``, ``xmax = c1 + 1``).
        difficult: visible fraction below the generator's ``difficult_below``.
        truncated: the unoccluded object touches the image border.
        instance: its index (1-based, drawing order) in :meth:`SyntheticShapesGenerator.render`'s
            instance map.
        visible: visible pixels / pixels of the unoccluded mask, in ``(0, 1]``.
    """

    name: str
    box: Tuple[int, int, int, int]
    difficult: bool
    truncated: bool
    instance: int
    visible: float


@dataclass(frozen=True)
class SyntheticDetGenerator(SyntheticShapesGenerator):
    """Parameters of the synthetic detection dataset: those of :class:`SyntheticShapesGenerator` (with
    smaller, more numerous objects and no label border band by default) plus:

    Args:
        min_visible: objects whose visible fraction of their unoccluded mask is below this are not
            annotated at all (mostly hidden); in ``[0, 1]``.
        difficult_below: annotated objects whose visible fraction is below this get ``difficult=1``
            (VOC marks heavily occluded objects so); in ``[0, 1]``.
        min_box_size: objects whose visible box is narrower or shorter than this many pixels are not
            annotated.
    """

    # Defaults overridden for detection (the base's in the comments):
    num_train: int = 400  # 320
    image_size: int = 128  # 112
    objects: Tuple[int, int] = (1, 4)  # (1, 3): more objects per image,
    size_range: Tuple[float, float] = (0.08, 0.22)  # (0.14, 0.3): smaller, so boxes span several scales
    border_width: int = 0  # 2: the 255 band belongs to segmentation labels only
    min_visible: float = 0.25
    difficult_below: float = 0.5
    min_box_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("min_visible", "difficult_below"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"data.generator.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.min_box_size < 1:
            raise ValueError(f"data.generator.min_box_size must be >= 1 pixel, got {self.min_box_size}")

    def annotations(self, index: int) -> List[DetObject]:
        """The objects annotated for sample ``index``, in drawing order."""
        return self._annotate(self.render(index))

    def _annotate(self, rendering: ShapesRendering) -> List[DetObject]:
        last = self.image_size - 1
        objects = []
        for instance, (k, full_area, full_box) in enumerate(
            zip(rendering.classes, rendering.full_areas, rendering.full_boxes), start=1
        ):
            if full_area == 0:  # a sub-pixel object: nothing to see
                continue
            visible_mask = rendering.instances == instance
            visible = float(visible_mask.sum()) / full_area
            if visible == 0.0 or visible < self.min_visible:
                continue
            x0, y0, x1, y1 = mask_box(visible_mask)
            if min(x1 - x0 + 1, y1 - y0 + 1) < self.min_box_size:
                continue
            truncated = min(full_box[0], full_box[1]) == 0 or max(full_box[2], full_box[3]) == last
            objects.append(
                DetObject(
                    name=self.shapes[k],
                    box=(x0 + 1, y0 + 1, x1 + 1, y1 + 1),  # VOC: 1-based inclusive
                    difficult=visible < self.difficult_below,
                    truncated=bool(truncated),
                    instance=instance,
                    visible=visible,
                )
            )
        return objects

    annotation_dir = "Annotations"
    image_set_dir = "Main"

    def write_annotation(self, folder: Path, image_id: str, index: int) -> np.ndarray:
        """Write sample ``index``'s VOC XML into ``folder``; returns its image."""
        rendering = self.render(index)
        tree = annotation_xml(image_id, rendering.image.shape, self._annotate(rendering))
        tree.write(folder / f"{image_id}.xml", encoding="utf-8", xml_declaration=False)
        return rendering.image


def annotation_xml(image_id: str, shape: Tuple[int, ...], objects: List[DetObject]) -> ET.ElementTree:
    """A VOC ``<annotation>`` tree for image ``<image_id>.jpg`` of ``shape`` ``(H, W, 3)``."""
    root = ET.Element("annotation")
    _text(root, "folder", "VOC2012")
    _text(root, "filename", f"{image_id}.jpg")
    source = ET.SubElement(root, "source")
    _text(source, "database", "dcn synthetic_det")
    size = ET.SubElement(root, "size")
    for tag, value in (("width", shape[1]), ("height", shape[0]), ("depth", shape[2])):
        _text(size, tag, value)
    _text(root, "segmented", 0)
    for obj in objects:
        element = ET.SubElement(root, "object")
        _text(element, "name", obj.name)
        _text(element, "pose", "Unspecified")
        _text(element, "truncated", int(obj.truncated))
        _text(element, "difficult", int(obj.difficult))
        box = ET.SubElement(element, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            _text(box, tag, value)
    ET.indent(root, space="\t")
    return ET.ElementTree(root)


def _text(parent: ET.Element, tag: str, value: object) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = str(value)
    return element


class SyntheticDetDataModule(GeneratedDataset, VOCDetDataModule):
    """Deformed shapes with VOC box annotations (see the module docstring), written to ``cache_dir`` on
    first use and then read exactly as VOC is.

    Classes: ``background`` and the generator's shapes. Sets: ``2012/train``, ``2012/val`` and
    ``2012/test`` (a held-out test split, unlike VOC).

    Args:
        cache_dir: where generated datasets are kept (one sub-folder per parameter set).
        generator: a :class:`SyntheticDetGenerator` (None: its defaults).
        **options: the arguments of :class:`VOCDetDataModule` other than the layout
            (``use_difficult_in_training``, ``flip``, ``batch_size``, ``val_batch_size``, ``num_workers``,
            ``pin_memory``); the defaults are :attr:`DEFAULTS`.
    """

    CACHE_PREFIX = "det"
    GENERATOR_VERSION = 1
    GENERATOR_TYPE = SyntheticDetGenerator
    DESCRIPTION = "synthetic_det: {total} images"
    DEFAULTS = dict(batch_size=4, val_batch_size=4, num_workers=0)

    def __init__(
        self, cache_dir: os.PathLike | str, generator: Optional[SyntheticDetGenerator] = None, **options: Any
    ) -> None:
        root = self._init_generated(cache_dir, generator)
        sets = dict(train_sets=("2012/train",), val_sets=("2012/val",), test_sets=("2012/test",))
        super().__init__(
            root=root,
            download=False,
            class_names=self.generator.shapes,
            **sets,
            **{**self.DEFAULTS, **options},
        )
