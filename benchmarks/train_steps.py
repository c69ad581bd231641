"""Training-step time of each task's experiment, deformable vs plain, float32 and bfloat16 autocast.

    python benchmarks/train_steps.py [--device cuda|cpu] [--tasks classification deeplab frcnn siamrpn]
                                     [--precision 32-true bf16-mixed] [--warmup 3] [--steps 10] [--tiny]

Each network is built from dcn's Hydra configs (``dcn/conf``, compose API) the way ``train.py`` builds it,
backbone then task module, so what is timed is what users train. Inputs are RGB, and ``num_classes`` is what
the experiment's datamodule would pass, computed from the config so that no datamodule (nor its imports) is
needed; tests/benchmarks/test_train_steps.py checks the two agree.

    classification  backbone=resnet50 (deformable conv5), 1000 classes, 224x224, batch 32
    deeplab         experiment=deeplab_synthetic  (its crop size and batch size)
    frcnn           experiment=frcnn_synthetic    (its image size and batch size)
    siamrpn         experiment=siamrpn_synthetic  (its template/search sizes and batch size)

"plain" is the same config with ``backbone.deform.enabled=false`` (and, for frcnn, ``task.roi_pool=align``).
A step is Lightning's full training step (the task's ``training_step``, backward, optimizer step, logging),
run by a ``lightning.Trainer`` on one random batch of the experiment's shapes, already on the device. After
``--warmup`` steps, ``--steps`` steps are timed with CUDA events (CPU: perf_counter) from
``on_train_batch_start`` to ``on_train_batch_end``; the median is printed. One markdown row per task and
precision, printed as soon as it is measured (a run cut short keeps its rows), with the deform/plain
step-time ratio, both times measured in this run. A task whose imports fail for want of a package is
printed as a skipped row naming the package (exit status 0); any other error exits 1 after the other tasks.

``--tiny`` (the dry run of benchmarks/gpu_check.py) shrinks inputs and batches to seconds on a CPU.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "dcn" / "conf"
PRECISIONS = ("32-true", "bf16-mixed")


@dataclass(frozen=True)
class TaskSpec:
    """How to build and feed one task: config overrides, and a batch of the experiment's shapes."""

    label: str
    overrides: Sequence[str]  # the deformable network (as the experiment configures it)
    plain: Sequence[str]  # added for the plain network
    num_classes: Callable[[Any], Optional[int]]  # cfg -> what the datamodule passes to the task
    make_batch: Callable[[Any, Optional[int], torch.Generator], Any]  # (cfg, num_classes, generator) -> batch
    describe: Callable[[Any], str]  # cfg -> "224x224, batch 32"
    tiny: Sequence[str] = ()  # added with --tiny


def _shapes_and_background(cfg) -> int:
    """The synthetic sets' classes: one per generated shape, plus the background (class 0)."""
    return len(cfg.data.generator.shapes) + 1


def _classification_batch(cfg, num_classes: int, g: torch.Generator):
    size, batch = cfg.gpu_check.image_size, cfg.gpu_check.batch_size
    return torch.randn(batch, 3, size, size, generator=g), torch.randint(
        0, num_classes, (batch,), generator=g
    )


def _segmentation_batch(cfg, num_classes: int, g: torch.Generator):
    size, batch = cfg.data.crop_size, cfg.data.batch_size
    masks = torch.randint(0, num_classes, (batch, size, size), generator=g)
    masks[:, :, :2] = 255  # a band of ignored pixels, as the data's object borders
    return torch.randn(batch, 3, size, size, generator=g), masks


def _detection_batch(cfg, num_classes: int, g: torch.Generator):
    """Images in [0, 1] with 1-4 boxes each (10-60 % of the side), as the synthetic set's."""
    size, images, targets = cfg.data.generator.image_size, [], []
    for _ in range(cfg.data.batch_size):
        images.append(torch.rand(3, size, size, generator=g))
        k = int(torch.randint(1, 5, (1,), generator=g))
        wh = (0.1 + 0.5 * torch.rand(k, 2, generator=g)) * size
        xy = torch.rand(k, 2, generator=g) * (size - wh)
        labels = torch.randint(1, num_classes, (k,), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    return images, targets


def _tracking_batch(cfg, num_classes: Optional[int], g: torch.Generator):
    """(template, search, box cx/cy/w/h in search-patch pixels, negative), as the pair datasets give."""
    pairs, batch = cfg.data.pairs, cfg.data.batch_size
    t, s = pairs.template_size, pairs.search_size
    centre = s / 2 + (torch.rand(batch, 2, generator=g) * 2 - 1) * pairs.shift
    wh = t * (0.3 + 0.4 * torch.rand(batch, 2, generator=g))
    negative = torch.rand(batch, generator=g) < pairs.negative
    return (
        torch.rand(batch, 3, t, t, generator=g),
        torch.rand(batch, 3, s, s, generator=g),
        torch.cat([centre, wh], 1),
        negative,
    )


TASKS = {
    "classification": TaskSpec(
        "ResNet-50",
        # No experiment trains ResNet-50 on ImageNet-sized images offline; its shapes are set here.
        ["backbone=resnet50", "+gpu_check.image_size=224", "+gpu_check.batch_size=32"],
        ["backbone.deform.enabled=false"],
        lambda cfg: 1000,  # ImageNet's classes
        _classification_batch,
        lambda cfg: (
            f"{cfg.gpu_check.image_size}x{cfg.gpu_check.image_size}, batch {cfg.gpu_check.batch_size}"
        ),
        tiny=["gpu_check.image_size=32", "gpu_check.batch_size=2"],
    ),
    "deeplab": TaskSpec(
        "DeepLabV3+ ResNet-18 OS16",
        ["experiment=deeplab_synthetic"],
        ["backbone.deform.enabled=false"],
        _shapes_and_background,
        _segmentation_batch,
        lambda cfg: f"{cfg.data.crop_size}x{cfg.data.crop_size}, batch {cfg.data.batch_size}",
        tiny=["data.crop_size=32", "data.batch_size=2"],
    ),
    "frcnn": TaskSpec(
        "Faster R-CNN ResNet-18 FPN",
        ["experiment=frcnn_synthetic"],
        ["backbone.deform.enabled=false", "task.roi_pool=align"],
        _shapes_and_background,
        _detection_batch,
        lambda cfg: (
            f"{cfg.data.generator.image_size}x{cfg.data.generator.image_size}, batch {cfg.data.batch_size}"
        ),
        tiny=["data.generator.image_size=64", "task.min_size=64", "task.max_size=64", "data.batch_size=2"],
    ),
    "siamrpn": TaskSpec(
        "SiamRPN ResNet-18 layer2",
        ["experiment=siamrpn_synthetic"],
        ["backbone.deform.enabled=false"],
        lambda cfg: None,  # a tracker is class-agnostic
        _tracking_batch,
        lambda cfg: (
            f"{cfg.data.pairs.template_size}/{cfg.data.pairs.search_size} px, batch {cfg.data.batch_size}"
        ),
        tiny=["data.batch_size=2"],
    ),
}


def compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dcn import resolvers

    resolvers.register()  # the configs' ${dcn.cwd:} (paths.root_dir)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def build(spec: TaskSpec, cfg):
    """(task module, num_classes) built from ``cfg`` as train.py builds them."""
    from hydra.utils import instantiate

    for node in (cfg.backbone, cfg.task):
        # Hydra wraps import errors in its own exception: importing first lets a missing package
        # surface as the ModuleNotFoundError that names it.
        importlib.import_module(node._target_.rpartition(".")[0])
    num_classes = spec.num_classes(cfg)
    torch.manual_seed(0)
    backbone = instantiate(cfg.backbone, in_channels=3)
    return instantiate(cfg.task, backbone=backbone, num_classes=num_classes), num_classes


class _Repeat:
    """The same batch ``n`` times: a loader with no data-loading cost in the timed steps."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        return itertools.repeat(self.batch, self.n)

    def __len__(self) -> int:
        return self.n


def step_times(
    module, batch: Any, device: torch.device, precision: str, warmup: int, steps: int
) -> List[float]:
    """Seconds of each timed training step (after ``warmup`` untimed ones), from a Lightning Trainer."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.marks: List[Any] = []

        def _mark(self) -> Any:
            if device.type != "cuda":
                return time.perf_counter()
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        def on_train_batch_start(self, *args: Any) -> None:
            self.marks.append([self._mark()])

        def on_train_batch_end(self, *args: Any) -> None:
            self.marks[-1].append(self._mark())

    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="dcn-train-steps-") as root:
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=precision,
            max_steps=warmup + steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=root,
        )
        trainer.fit(module, train_dataloaders=_Repeat(batch, warmup + steps))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in timer.marks]
    else:
        times = [end - start for start, end in timer.marks]
    if len(times) != warmup + steps:
        raise RuntimeError(f"the Trainer ran {len(times)} steps, expected {warmup + steps}")
    return times[warmup:]


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def median_step(spec: TaskSpec, cfg, device: torch.device, precision: str, args: argparse.Namespace) -> float:
    module, num_classes = build(spec, cfg)
    batch = move_data_to_device(spec.make_batch(cfg, num_classes, torch.Generator().manual_seed(0)), device)
    try:
        return statistics.median(step_times(module, batch, device, precision, args.warmup, args.steps))
    finally:
        del module, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_task(name: str, args: argparse.Namespace, device: torch.device) -> bool:
    """Print the task's rows, one per precision; False when one failed (its traceback on stderr).
    A package missing for the task raises ModuleNotFoundError."""
    spec = TASKS[name]
    tiny = list(spec.tiny) if args.tiny else []
    configs = {
        "plain": compose([*spec.overrides, *spec.plain, *tiny]),
        "deform": compose([*spec.overrides, *tiny]),
    }
    head = f"| {name} | {spec.label} | {spec.describe(configs['deform'])}"
    ok = True
    for precision in args.precision:
        try:
            median = {
                variant: median_step(spec, cfg, device, precision, args) for variant, cfg in configs.items()
            }
        except ModuleNotFoundError:
            raise
        except Exception as error:
            ok = False
            message = str(error).splitlines()[0] if str(error) else ""
            print(f"{head} | {precision} | **FAILED**: {type(error).__name__}: {message} | | |", flush=True)
            traceback.print_exc()
            continue
        ratio = median["deform"] / median["plain"]
        row = f"{head} | {precision} | {_fmt(median['plain'])} | {_fmt(median['deform'])} | {ratio:.2f}x |"
        print(row, flush=True)
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocations, kernel compiles)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per network and precision (median)")
    p.add_argument("--tiny", action="store_true", help="tiny inputs and batches (the dry run)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here (use --device cpu)")

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    timing = "CUDA events" if device.type == "cuda" else "perf_counter"
    print(
        f"_Training step (forward, loss, backward, optimizer step) on {where}, torch {torch.__version__}; "
        f"median of {args.steps} steps after {args.warmup} warm-up steps ({timing})._\n"
    )
    print("| task | network | input | precision | plain step | deform step | deform/plain |")
    print("|---|---|---|---|---:|---:|---:|", flush=True)
    ok = True
    for name in args.tasks:
        try:
            ok &= run_task(name, args, device)
        except Exception as error:
            missing = error.name if isinstance(error, ModuleNotFoundError) else None
            if missing and missing.split(".")[0] != "dcn":  # a package the task needs is not installed here
                print(f"| {name} | skipped: {missing} is not installed ({error}) | | | | | |", flush=True)
                continue
            ok = False  # composing or building the task failed: no row for any precision
            print(f"| {name} | **FAILED**: {type(error).__name__}: {error} | | | | | |", flush=True)
            traceback.print_exc()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
