"""Checkpoints: written atomically, and checked before resuming from or testing them.

:class:`AtomicCheckpointIO` (the trainer's ``plugins`` in ``conf/trainer/default.yaml``) writes each
checkpoint to a temporary name and renames it into place, so a full disk or a killed run never leaves
a truncated file under a checkpoint's name (and the temporary file is removed).


Handed a truncated or foreign file, Lightning fails deep inside ``torch.load`` (``PytorchStreamReader
failed reading zip archive``) or ``load_state_dict`` without saying which file is at fault.
:func:`check_checkpoint` reads the file once up front and raises an error that names the file and
what is wrong with it: unreadable, not a Lightning checkpoint, or weights that do not fit the model
built from the config (missing, unexpected or differently shaped tensors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "check_checkpoint",
    "check_state_dict_fits",
    "load_checkpoint",
]

_SHOW = 8  # keys listed per kind of mismatch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def load_checkpoint(path: os.PathLike | str) -> Dict[str, Any]:
    """Read a Lightning checkpoint onto the CPU (memory-mapped: cheap for large files).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: it is not a readable checkpoint (truncated, corrupt, another format), or
            it lacks the ``state_dict`` every Lightning checkpoint has.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... by cause
        size = path.stat().st_size
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size:,} bytes): {type(error).__name__}: {error}. "
            "The file is truncated or corrupt (e.g. the run was killed while saving it) or is not a "
            "PyTorch checkpoint; use another one, e.g. an epoch_*.ckpt next to it."
        ) from error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:_SHOW] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'; found {keys}). To start from plain "
            "weights use backbone.pretrained=<file> instead of ckpt_path."
        )
    return dict(checkpoint)


def _listing(keys: List[str]) -> str:
    more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def key_differences(
    missing: List[str], unexpected: List[str], mismatched: List[str], *, source: str, model: str
) -> str:
    """What a state dict and a model disagree on, as one phrase (empty when nothing): keys the model
    has that ``source`` lacks, keys ``source`` has that ``model`` lacks, keys of another shape."""
    parts = []
    if missing:
        parts.append(f"missing from {source}: {_listing(missing)}")
    if unexpected:
        parts.append(f"not in {model}: {_listing(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatch: {_listing(mismatched)}")
    return "; ".join(parts)


def check_checkpoint(path: os.PathLike | str, model: nn.Module) -> Dict[str, Any]:
    """Load ``path`` and check that its ``state_dict`` fits ``model`` exactly; return the checkpoint.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`load_checkpoint`; also when tensors are
            missing, unexpected or of another shape than the model's (all three are listed).
    """
    checkpoint = load_checkpoint(path)
    check_state_dict_fits(path, checkpoint, model)
    return checkpoint


def check_state_dict_fits(path: os.PathLike | str, checkpoint: Mapping[str, Any], model: nn.Module) -> None:
    """:func:`check_checkpoint` for a checkpoint already read from ``path`` (named in the error)."""
    saved = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = sorted(
        f"{k} (checkpoint {tuple(saved[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(saved) & set(expected)
        if hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {path} does not match the model built from this config: "
            + _what_differs(checkpoint, model, missing + unexpected)
            + key_differences(missing, unexpected, shapes, source="the checkpoint", model="the model")
        )


def _describe(model: Dict[str, Any]) -> str:
    from dcn.backbones.deformable import describe_deform

    setting = describe_deform(model.get("deform"))
    arch = f" {model['arch']}" if model.get("arch") else ""
    return (
        f"a {model.get('task', '?').rsplit('.', 1)[-1]} with a {model.get('backbone')}{arch} backbone, "
        f"{setting}"
    )


def _what_differs(checkpoint: Mapping[str, Any], model: nn.Module, keys: List[str]) -> str:
    """The real mismatch, from what the checkpoint says built it (dcn checkpoints record it), else a
    guess from the differing keys. Ends with a separator before the key listing."""
    saved = checkpoint.get("dcn_model")
    describe = getattr(model, "model_description", None)
    if isinstance(saved, Mapping) and callable(describe):
        current = describe()
        fields = [
            name for name in ("task", "backbone", "arch", "deform") if saved.get(name) != current.get(name)
        ]
        if fields:
            return (
                f"it was written by {_describe(saved)}; this config builds {_describe(current)} "
                f"(they differ in: {', '.join(fields)}). "
            )
        return "same task, backbone and deform settings, so the classes or input channels differ. "
    if any("conv_offset" in k for k in keys):
        return (
            "'conv_offset' (offset predictor) keys differ: was it trained with another "
            "backbone.deform setting? "
        )
    return "was it trained with another backbone, task or data (classes, channels)? "


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: ``<dir>/.<name>.<pid>.tmp`` then ``os.replace``.

    On any error while writing (``OSError: No space left on device``, an interrupt) the temporary
    file is deleted and the error propagates; a checkpoint of the same name written earlier stays.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
