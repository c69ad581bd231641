"""Visual object tracking: SiamRPN over a dcn backbone (depthwise or up-channel correlation RPN head),
anchor targets and loss, the SiamRPN tracker, and VOT / OPE evaluation, tied by :class:`TrackingTask`."""

from dcn.tasks.tracking.anchors import anchor_shapes, make_anchors
from dcn.tasks.tracking.box_coder import decode_boxes, encode_boxes
from dcn.tasks.tracking.evaluation import SequenceScores, evaluate_sequence, run_one_pass, summarize
from dcn.tasks.tracking.loss import siamrpn_loss
from dcn.tasks.tracking.metrics import precision_at, success_auc, success_curve, supervised_protocol
from dcn.tasks.tracking.model import ResponseGeometry, SiamRPN
from dcn.tasks.tracking.module import TrackingTask
from dcn.tasks.tracking.rpn_head import DepthwiseRPNHead, UpChannelRPNHead
from dcn.tasks.tracking.targets import AnchorTargets, TargetOptions, anchor_targets
from dcn.tasks.tracking.tracker import SiamRPNTracker, TrackerOptions

__all__ = [
    "AnchorTargets",
    "DepthwiseRPNHead",
    "ResponseGeometry",
    "SequenceScores",
    "SiamRPN",
    "SiamRPNTracker",
    "TargetOptions",
    "TrackerOptions",
    "TrackingTask",
    "UpChannelRPNHead",
    "anchor_shapes",
    "anchor_targets",
    "decode_boxes",
    "encode_boxes",
    "evaluate_sequence",
    "make_anchors",
    "precision_at",
    "run_one_pass",
    "siamrpn_loss",
    "success_auc",
    "success_curve",
    "summarize",
    "supervised_protocol",
]
