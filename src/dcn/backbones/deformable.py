"""The deformable switch as data: which convs of a built network become :class:`DeformConv2dPack`.

Backbones are built plain (torchvision's code, unmodified); :func:`make_deformable` then swaps the
spatial convs of the chosen stages for ``DeformConv2dPack.from_conv`` copies. That keeps one network
definition per architecture, a deformable net whose state_dict names match its plain twin's, and
(since offset predictors start at zero) a deformable net that starts out computing exactly what the
plain one does (DCN v1; a v2 layer starts at half, sigmoid(0) = 0.5).

Config (``backbone.deform`` in Hydra; also accepted as a plain dict)::

    deform:
      enabled: true        # false -> no DeformConv2dPack anywhere (extra layers stay, as plain convs)
      stages: [4]          # which stages' 3x3 convs become deformable (null: the last stage, as the paper)
      modulated: false     # DCN v2: also predict a sigmoid mask per sampling point
      offset_groups: 1     # input channels split into groups that share one offset field
      extra_layers: 0      # the original study's variant: N 3x3 conv+BN+ReLU layers after the last stage
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from torch import nn

from dcn.ops import DeformConv2dPack

__all__ = ["DeformOptions", "make_deformable", "conv_bn_relu", "extra_layers", "describe_deform"]


def describe_deform(deform: Optional[Mapping]) -> str:
    """A deform block as a short phrase for headers and errors, e.g. ``"deform on (stages [3, 4], v1,
    offset_groups 1)"``; ``deform`` is the plain mapping a run records (None or empty: no block)."""
    if not deform:
        return "no deform settings"
    if not deform.get("enabled", True):
        return "deform off"
    version = "v2, modulated" if deform.get("modulated") else "v1"
    return (
        f"deform on (stages {deform.get('stages') or 'default'}, {version}, "
        f"offset_groups {deform.get('offset_groups', 1)})"
    )


@dataclass(frozen=True)
class DeformOptions:
    """Validated ``deform`` config block (see the module docstring for the meaning of each key)."""

    enabled: bool = True
    stages: Optional[Tuple[int, ...]] = None  # None: the backbone's last stage (the paper's choice)
    modulated: bool = False
    offset_groups: int = 1
    extra_layers: int = 0

    def __post_init__(self) -> None:
        # Validate here so every construction path (dict, DictConfig, direct) is checked once.
        for key in ("enabled", "modulated"):
            value = getattr(self, key)
            if not isinstance(value, bool):
                raise TypeError(f"deform.{key} must be true or false, got {value!r}")
        for key in ("offset_groups", "extra_layers"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"deform.{key} must be an integer, got {value!r}")
        if self.offset_groups < 1:
            raise ValueError(f"deform.offset_groups must be >= 1, got {self.offset_groups}")
        if self.extra_layers < 0:
            raise ValueError(f"deform.extra_layers must be >= 0, got {self.extra_layers}")
        if self.stages is not None:
            object.__setattr__(self, "stages", _normalise_stages(self.stages))

    @classmethod
    def coerce(cls, value: Any) -> "DeformOptions":
        """Accept a DeformOptions, a dict / OmegaConf DictConfig, a bool (just ``enabled``) or None
        (= disabled). Missing keys take the defaults above; unknown keys are an error."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls(enabled=False)
        if isinstance(value, bool):
            return cls(enabled=value)
        try:  # Hydra hands us DictConfig/ListConfig; plain containers make the checks simple.
            from omegaconf import DictConfig, OmegaConf

            if isinstance(value, DictConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        if not isinstance(value, Mapping):
            raise TypeError(
                f"deform must be a mapping with keys {cls.keys()}, a bool or None; got {type(value).__name__}"
            )
        unknown = sorted(set(value) - set(cls.keys()))
        if unknown:
            raise ValueError(f"unknown deform key(s) {unknown}; expected a subset of {cls.keys()}")
        return cls(**dict(value))

    @classmethod
    def keys(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def for_arch(self, available: Sequence[int], arch: str) -> "DeformOptions":
        """These options with ``stages=None`` resolved to the last of ``available``; raise if
        ``stages`` names a stage the architecture does not have, or if deform is on but nothing
        would become deformable."""
        if self.stages is None:
            return dataclasses.replace(self, stages=(available[-1],)).for_arch(available, arch)
        bad = [s for s in self.stages if s not in available]
        if bad:
            raise ValueError(
                f"deform.stages {list(self.stages)} names stage(s) {bad} that {arch} does not have; "
                f"choose from {list(available)}"
            )
        if self.enabled and not self.stages and self.extra_layers == 0:
            raise ValueError(
                f"deform.enabled is true but deform.stages is empty and deform.extra_layers is 0, so no "
                f"layer of {arch} would be deformable; set deform.enabled=false for the plain network"
            )
        return self


def _normalise_stages(stages: Any) -> Tuple[int, ...]:
    if isinstance(stages, int) and not isinstance(stages, bool):
        stages = (stages,)
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Iterable):
        raise TypeError(f"deform.stages must be a list of stage numbers, got {stages!r}")
    stages = tuple(stages)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in stages):
        raise TypeError(f"deform.stages must be a list of integers, got {list(stages)!r}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"deform.stages lists a stage twice: {list(stages)!r}")
    return tuple(sorted(stages))


def _is_spatial_conv(module: nn.Module) -> bool:
    # 1x1 convs (ResNet bottleneck ends, downsample shortcuts) stay plain, as in the paper.
    return type(module) is nn.Conv2d and tuple(module.kernel_size) != (1, 1)


def make_deformable(root: nn.Module, names: Sequence[str], options: DeformOptions) -> List[str]:
    """Replace, in place, every spatial (k > 1) ``nn.Conv2d`` of ``root`` that is, or lies inside,
    one of the submodules ``names`` with a ``DeformConv2dPack.from_conv`` copy (same weight, bias,
    stride, padding, dilation and groups; zero offsets).

    Args:
        root: the network, e.g. a ResNet backbone.
        names: qualified submodule names, e.g. ``["layer4"]`` or ``["features.24", "features.27"]``.
        options: ``modulated`` and ``offset_groups`` configure the new layers. ``enabled`` and
            ``stages`` are not consulted here: callers map stages to submodule names.

    Returns:
        Qualified names (``"layer4.0.conv2"``) of the converted convs, in module order.
    """

    def selected(name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in names)

    # Collect first: replacing children while iterating named_modules would skip some.
    targets = [(name, m) for name, m in root.named_modules() if selected(name) and _is_spatial_conv(m)]
    for name, conv in targets:
        if conv.in_channels % options.offset_groups != 0:
            raise ValueError(
                f"deform.offset_groups={options.offset_groups} must divide the input channels of every "
                f"deformable conv, but {name} has {conv.in_channels}"
            )
        new = DeformConv2dPack.from_conv(
            conv, modulated=options.modulated, offset_groups=options.offset_groups
        )
        _set_submodule(root, name, new)
    return [name for name, _ in targets]


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def conv_bn_relu(in_channels: int, out_channels: int, *, bias: bool = False) -> nn.Sequential:
    """``3x3 conv (stride 1, padding 1) -> BatchNorm -> ReLU`` with children ``conv``, ``bn``,
    ``relu`` and PyTorch's default init. Used for the seed network's layers and for
    ``deform.extra_layers``: plain convs that :func:`make_deformable` converts when asked."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(inplace=True),
        )
    )


def extra_layers(channels: int, n: int) -> nn.Sequential:
    """``n`` stride-1 :func:`conv_bn_relu` layers keeping ``channels`` (the original study's appended
    layers)."""
    return nn.Sequential(*[conv_bn_relu(channels, channels) for _ in range(n)])
