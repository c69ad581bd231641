"""Object detection: Faster R-CNN (torchvision's framework) over a dcn backbone, with deformable convs in
the backbone and deformable RoI pooling as independent switches; VOC AP (mAP@0.5 / mAP@0.7) and COCO AP."""

from dcn.tasks.detection.metrics import DetectionMetrics
from dcn.tasks.detection.model import LAYOUTS, ROI_POOLS, build_faster_rcnn
from dcn.tasks.detection.module import DetectionTask
from dcn.tasks.detection.voc_ap import VOCMeanAP, average_precision, format_ap_table, voc_ap_per_class

__all__ = [
    "LAYOUTS",
    "ROI_POOLS",
    "DetectionMetrics",
    "DetectionTask",
    "VOCMeanAP",
    "average_precision",
    "build_faster_rcnn",
    "format_ap_table",
    "voc_ap_per_class",
]
