"""Pascal VOC layout helpers shared by the segmentation and detection families: folder resolution,
the class list, and indexed label PNGs."""

from dcn.datamodules.voc.label_png import (
    IGNORE_INDEX,
    LABEL_FORMATS,
    LabelError,
    decode_rgb_label,
    read_label_image,
    read_label_png,
    voc_palette,
    write_label_png,
)
from dcn.datamodules.voc.layout import VOC_OBJECT_CLASSES, resolve_voc_dir

__all__ = [
    "IGNORE_INDEX",
    "LABEL_FORMATS",
    "LabelError",
    "VOC_OBJECT_CLASSES",
    "decode_rgb_label",
    "read_label_image",
    "read_label_png",
    "resolve_voc_dir",
    "voc_palette",
    "write_label_png",
]
