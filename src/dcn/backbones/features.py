"""The contract every dcn backbone keeps: named multi-scale features with known channels and strides.

A backbone maps ``x (Tensor[N, C_in, H, W])`` to an ordered ``dict[str, Tensor]`` of feature maps,
shallow to deep. ``feature_info`` describes those maps in the same order, so heads (classifier,
DeepLab, FPN, SiamRPN) can be built before any data flows.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor, nn

__all__ = ["FeatureInfo", "Backbone", "SequentialBackbone"]


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level: its key in the backbone's output dict, channel count and stride.

    ``stride`` is the input-to-feature downsampling factor: a ``H x W`` input gives a map of about
    ``ceil(H / stride) x ceil(W / stride)``.
    """

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses set ``self.feature_info`` and implement ``forward``.

    ``forward(x: Tensor[N, C_in, H, W]) -> dict[str, Tensor[N, C_i, H_i, W_i]]`` in the order of
    ``feature_info``; the last entry is the deepest feature (what a classifier pools).
    """

    feature_info: List[FeatureInfo]
    in_channels: int
    # For pretrained loading (dcn.backbones.pretrained): the stem conv's weight, adapted when the
    # file has another number of input channels; keys this backbone replaced by design (a file's
    # tensor of another shape for them is skipped, not an error).
    stem_weight_key: Optional[str] = None
    replaced_keys: Tuple[str, ...] = ()

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature map (``feature_info[-1].channels``)."""
        return self.feature_info[-1].channels

    @property
    def out_stride(self) -> int:
        """Stride of the deepest feature map (``feature_info[-1].stride``)."""
        return self.feature_info[-1].stride

    def forward(self, x: Tensor) -> Dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _begin(self, in_channels: int, deform: Any, stages: Tuple[int, ...], name: str):
        """First step of a subclass's ``__init__``: check ``in_channels``, read the ``deform`` block
        for an architecture with ``stages`` (``name`` in errors); returns the DeformOptions."""
        from dcn.backbones.deformable import DeformOptions

        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        options = DeformOptions.coerce(deform).for_arch(stages, name)
        self.in_channels = in_channels
        self.deform_options = options
        self._name = name
        return options

    def _finish(
        self,
        pretrained: Optional[str],
        *,
        stage_modules: Optional[Callable[[int], List[str]]] = None,
        torchvision_arch: str = "",
    ) -> None:
        """Last step of a subclass's ``__init__``: make the chosen stages deformable (their modules
        named by ``stage_modules(k)``, default ``["layer<k>"]``; ``extra`` too when present), then
        load ``pretrained`` weights: a path, or ``"torchvision"`` where ``torchvision_arch`` names
        the torchvision model."""
        from dcn.backbones.deformable import make_deformable

        options = self.deform_options
        self.deformable_layers: List[str] = []
        if options.enabled:
            modules = stage_modules or (lambda k: [f"layer{k}"])
            names = [m for k in options.stages for m in modules(k)]
            names += ["extra"] if options.extra_layers else []
            self.deformable_layers = make_deformable(self, names, options)
        self.pretrained_report = None  # a LoadReport when weights were loaded
        if pretrained is not None:
            from dcn.backbones.pretrained import load_pretrained

            if pretrained == "torchvision" and not torchvision_arch:
                raise ValueError(
                    f"{self._name} has no torchvision weights; pretrained must be None or a path "
                    f"to a {type(self).__name__} state_dict / Lightning checkpoint"
                )
            self.pretrained_report = load_pretrained(self, pretrained, torchvision_arch=torchvision_arch)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects a 4-D input (N, {self.in_channels}, H, W), got {shape}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for in_channels={self.in_channels} but the input has "
                f"{x.shape[1]} channels (shape {tuple(x.shape)}); set the backbone's in_channels to match "
                "the data"
            )


class SequentialBackbone(Backbone):
    """A small backbone whose feature levels run one after another (``layer1``, ``layer2``, ...,
    optionally ``extra``), each feeding the next: the shared steps of dcn's small nets (seed_net,
    five_conv_net)."""

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        self._check_input(x)
        out: Dict[str, Tensor] = OrderedDict()
        for info in self.feature_info:
            x = getattr(self, info.name)(x)
            out[info.name] = x
        return out
