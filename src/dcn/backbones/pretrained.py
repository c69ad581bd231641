"""Loading pretrained weights into a backbone: torchvision's ImageNet weights or a local file.

``pretrained`` is one of

* ``None`` — random init;
* ``"torchvision"`` — torchvision's default weights for the architecture, downloaded (and cached
  under ``torch.hub.get_dir()``) when the network is reachable;
* a path — a ``state_dict`` file (``torch.save(model.state_dict())``, torchvision's ``.pth``) or a
  Lightning checkpoint; the ``"state_dict"`` entry is used and prefixes ``module.``,
  ``_orig_mod.`` and everything up to the first ``backbone.`` (``backbone.``, ``model.backbone.``)
  are stripped.

Because :class:`~dcn.ops.DeformConv2dPack` keeps ``nn.Conv2d``'s ``weight``/``bias`` names, plain
weights load straight into a deformable net. Keys the backbone adds by design (offset predictors
``*.conv_offset.*``, ``extra.*`` layers) may be missing and keep their init — zero offsets, so a
deformable net starts equal to its plain twin; classifier heads in the file (``fc.*``,
``classifier.*``) are ignored. A stem conv whose input channels differ is adapted as timm does
(summed over RGB for one channel, tiled and rescaled otherwise). Anything else that does not fit —
a missing or extra tensor, a shape mismatch — is an error naming the file and the keys.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Union

import torch
from torch import Tensor, nn

__all__ = ["LoadReport", "load_pretrained", "read_state_dict", "torchvision_state_dict", "adapt_input_conv"]

log = logging.getLogger(__name__)

# torchvision classifier heads: present in its weight files, absent from a backbone.
_HEAD_PREFIXES = ("fc.", "classifier.")
# Wrapper name segments added by DDP (`module.`) and torch.compile (`_orig_mod.`).
_WRAPPER_SEGMENTS = ("module", "_orig_mod")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did (also logged at INFO level)."""

    source: str
    loaded: List[str] = field(default_factory=list)
    new_keys: List[str] = field(default_factory=list)  # in the model, not the file (by design)
    ignored_keys: List[str] = field(default_factory=list)  # in the file, not used (heads, replaced stem)
    adapted_keys: List[str] = field(default_factory=list)  # transformed to fit (stem input channels)

    def summary(self) -> str:
        s = f"loaded {len(self.loaded)} tensors from {self.source}"
        if self.new_keys:
            s += f"; {len(self.new_keys)} not in the file keep their init (expected): {_short(self.new_keys)}"
        if self.ignored_keys:
            s += f"; ignored {len(self.ignored_keys)}: {_short(self.ignored_keys)}"
        if self.adapted_keys:
            s += f"; adapted {self.adapted_keys} to the input channels"
        return s


def _short(keys: List[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{f', ... (+{len(keys) - n} more)' if len(keys) > n else ''}]"


def torchvision_state_dict(arch: str) -> Dict[str, Tensor]:
    """torchvision's default weights for ``arch`` (a torchvision model name such as
    ``"resnet50"`` or ``"vgg16_bn"``), from the torch hub cache or downloaded."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as err:  # URLError, HTTPError, socket timeouts, DNS failures
        filename = os.path.basename(weights.url)
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"pretrained='torchvision': could not download {weights} for {arch} from {weights.url} "
            f"({type(err).__name__}: {err}). Without network access, download that file elsewhere and "
            f"either pass its path (pretrained=/path/to/{filename}) or put it in the torch hub cache "
            f"({cache}/{filename})."
        ) from err


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """Tensors of a state_dict file or Lightning checkpoint, with wrapper prefixes stripped."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights file {path!r} does not exist (pretrained must be null, 'torchvision' "
            f"or the path to a state_dict / Lightning checkpoint)"
        )
    try:
        # Weights only, always: unpickling anything else can run code hidden in the file.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"pretrained weights file {path!r} holds Python objects besides tensors (e.g. a checkpoint of "
            "another framework that pickles its configuration), and loading those could run code from the "
            "file, so dcn refuses it. If you trust the file, convert it once to plain weights: load it in "
            "your own Python session with full unpickling (torch.load's weights_only argument set to false), "
            "torch.save(checkpoint['state_dict'], 'weights.pt'), and use backbone.pretrained=weights.pt. "
            f"(The safe loader said: {str(err).splitlines()[0]})"
        ) from err
    except Exception as err:
        raise ValueError(f"could not read pretrained weights file {path!r}: {err}") from err
    if isinstance(obj, Mapping):
        for entry in ("state_dict", "model_state_dict", "model"):
            if entry in obj and isinstance(obj[entry], Mapping):
                obj = obj[entry]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"pretrained weights file {path!r} holds no state_dict (expected a dict of tensors or a "
            f"Lightning checkpoint with a 'state_dict' entry)"
        )
    return _strip_prefixes({k: v for k, v in obj.items() if isinstance(v, Tensor)})


def _strip_prefixes(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out[".".join(p for p in key.split(".") if p not in _WRAPPER_SEGMENTS)] = value
    if any("backbone." in k for k in out):
        # A task checkpoint: keep only the backbone's tensors, named as the backbone names them.
        out = {k.split("backbone.", 1)[1]: v for k, v in out.items() if "backbone." in k}
    return out


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a stem conv weight ``[C_out, C_src, kh, kw]`` to ``in_channels`` inputs (timm's rule):
    one channel sums over the source channels (a grey image repeated over RGB gives the same
    response); other counts tile the source channels and rescale by ``C_src / in_channels`` to keep
    the activation scale."""
    src = weight.shape[1]
    if in_channels == src:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / src)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (src / in_channels)


def load_pretrained(
    model: nn.Module, source: Union[str, os.PathLike], *, torchvision_arch: str = ""
) -> LoadReport:
    """Load ``source`` (``"torchvision"`` or a path) into ``model`` in place; see the module docstring.

    ``model`` is a :class:`~dcn.backbones.features.Backbone`; it names its stem conv weight
    (``stem_weight_key``) and the keys it replaced by design (``replaced_keys``, e.g. a small stem).
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the source and the
    offending keys when the weights do not fit.
    """
    if os.fspath(source) == "torchvision":
        if not torchvision_arch:
            raise ValueError(f"{type(model).__name__} has no torchvision weights; pass a path instead")
        state_dict = torchvision_state_dict(torchvision_arch)
        label = f"torchvision:{torchvision_arch}"
    else:
        state_dict = read_state_dict(source)
        label = os.fspath(source)
    report = LoadReport(source=label)
    target = model.state_dict()
    stem_key = getattr(model, "stem_weight_key", None)
    replaced = set(getattr(model, "replaced_keys", ()))

    usable: Dict[str, Tensor] = {}
    mismatched: List[str] = []
    unexpected: List[str] = []
    for key, value in state_dict.items():
        if key not in target:
            if key.startswith(_HEAD_PREFIXES):
                report.ignored_keys.append(key)
            else:
                unexpected.append(key)
            continue
        want = target[key].shape
        if value.shape != want:
            if (
                key == stem_key
                and value.dim() == 4
                and value.shape[0] == want[0]
                and value.shape[2:] == want[2:]
            ):
                value = adapt_input_conv(value, want[1]).to(target[key].dtype)
                report.adapted_keys.append(key)
            elif key in replaced:
                report.ignored_keys.append(key)
                continue
            else:
                mismatched.append(f"{key} (file {tuple(value.shape)}, model {tuple(want)})")
                continue
        usable[key] = value

    absent = [k for k in target if k not in usable]
    new = [k for k in absent if _new_by_design(k) or k in replaced]
    missing = [k for k in absent if k not in new]
    if mismatched or missing or unexpected:
        from dcn.checkpoints import key_differences

        parts = key_differences(
            missing, unexpected, mismatched, source="the file", model=type(model).__name__
        )
        raise ValueError(
            f"pretrained weights {label!r} do not fit {_describe(model)}: "
            + parts
            + ". Is this a checkpoint of the same architecture and deform settings?"
        )
    # Strict=False only because `new` keys are legitimately absent; everything else was checked.
    result = model.load_state_dict(usable, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(new), result
    report.loaded = sorted(usable)
    report.new_keys = [k for k in new if not k.endswith("num_batches_tracked")]
    # Replacing or reshaping pretrained tensors changes what was learned: say so louder.
    level = logging.WARNING if report.adapted_keys or set(report.ignored_keys) & replaced else logging.INFO
    log.log(level, "%s: %s", _describe(model), report.summary())
    return report


def _new_by_design(key: str) -> bool:
    # Offset predictors, appended layers, and BN counters (absent from old torchvision files).
    return ".conv_offset." in key or key.startswith("extra.") or key.endswith("num_batches_tracked")


def _describe(model: nn.Module) -> str:
    arch = getattr(model, "arch", None)
    return f"{type(model).__name__}({arch})" if arch else type(model).__name__
