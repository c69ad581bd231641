"""Sampling points spread on large objects, gather on small ones? ``python -m dcn.offset_spread <run>``.

The DCN paper's picture (Dai et al. 2017, Fig. 5) shows the sampling locations of stacked deformable
layers reaching over a large object and gathering on a small one. This tool measures it on a trained
``mnist_scaled`` run: for test digits at every scale of the run's datamodule, it takes the output unit at
the image centre (where the digits are centred) of the last deformable layer, follows its sampling
locations through every deformable layer to the image (:func:`dcn.sampling_points.sampling_points`: 9^L
points for L stacked 3x3 layers) and computes their **spread**: the root-mean-square distance, in image
pixels, of those points from the unit's own position. The plain network's regular grid has a fixed
spread (``grid_spread``); a ratio above 1 means the layers reach further than a plain conv would. DCN v2
masks are not used as weights: the spread is where the layers look, not how much they weigh it.

Outputs (``--out``, default ``<run dir>/offset_spread/``):

* ``offset_spread.json``: per scale the mean, standard deviation and n of the spread; the Pearson and
  Spearman correlations of spread with scale over all (image, scale) pairs, with p-values; the least-squares
  slope (pixels of spread per unit of scale); the regular grid's spread. The same digits appear at every
  scale, so the pairs are not independent and the p-values are optimistic: ``pearson_r_within_digit``,
  the mean over digits of each digit's own correlation across the scales, does not pool digits;
* ``offset_spread.png``: mean spread against scale with a ±1 std band and the grid's spread;
* ``offset_points.png``: the sampling points on one test digit at the smallest, unscaled and largest scale.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from dcn.console import run_parser
from dcn.sampling_points import SamplingPoints, render_figure, sampling_points

__all__ = ["main", "point_spread", "spread_by_scale", "summarize_spread"]


def point_spread(result: SamplingPoints, grid: bool = False) -> float:
    """RMS distance (image pixels) of ``result.points`` (or of ``result.grid``) from ``result.unit``."""
    points = (result.grid if grid else result.points).double()
    unit = torch.tensor(result.unit, dtype=torch.float64)
    return float(((points - unit) ** 2).sum(dim=1).mean().sqrt())


@torch.no_grad()
def spread_by_scale(
    backbone: nn.Module, images_per_scale: Sequence[Tensor], point: Optional[Tuple[float, float]] = None
) -> Tuple[np.ndarray, float]:
    """The spread of every image of every scale, and the regular grid's spread.

    Args:
        backbone: a network with :class:`~dcn.ops.DeformConv2dPack` layers.
        images_per_scale: one ``Tensor[N, C, H, W]`` per scale (the network's input, preprocessed), the same
            N images in each.
        point: ``(y, x)`` image position of the unit; None: the centre unit.

    Returns:
        ``(spread float64[S, N], grid_spread)``.
    """
    rows, grid = [], math.nan
    for images in images_per_scale:
        row = []
        for image in images:
            result = sampling_points(backbone, image, point)
            row.append(point_spread(result))
            grid = point_spread(result, grid=True)
        rows.append(row)
    return np.asarray(rows, dtype=np.float64), grid


def summarize_spread(scales: Sequence[float], spread: np.ndarray, grid_spread: float) -> Dict[str, Any]:
    """Per-scale means and the correlation of spread with scale (see the module docstring)."""
    from scipy import stats

    scales = np.asarray(scales, dtype=np.float64)
    x = np.repeat(scales, spread.shape[1])
    y = spread.reshape(-1)
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    slope = float(np.polyfit(x, y, 1)[0])
    # One correlation per digit across the scales (digits whose spread does not vary are left out).
    varying = spread.std(axis=0) > 0
    within = [float(np.corrcoef(scales, column)[0, 1]) for column in spread.T[varying]]
    return {
        "unit": "image pixels (RMS distance of the sampling points from their output unit)",
        "grid_spread": grid_spread,
        "per_scale": [
            {
                "scale": float(s),
                "mean": float(row.mean()),
                "std": float(row.std(ddof=1)) if len(row) > 1 else 0.0,
                "n": int(len(row)),
                "ratio_to_grid": float(row.mean() / grid_spread) if grid_spread > 0 else None,
            }
            for s, row in zip(scales, spread)
        ],
        "pearson_r_within_digit": float(np.mean(within)) if within else None,
        "pearson_r": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
        "spearman_rho": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
        "slope_px_per_scale": slope,
        "pairs": int(y.size),
    }


def _spread_figure(summary: Dict[str, Any], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["per_scale"]
    s = np.array([r["scale"] for r in rows])
    m = np.array([r["mean"] for r in rows])
    sd = np.array([r["std"] for r in rows])
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(s, m, marker="o", color="tab:red", label="deformable sampling points")
    ax.fill_between(s, m - sd, m + sd, color="tab:red", alpha=0.2, linewidth=0)
    ax.axhline(summary["grid_spread"], color="tab:blue", linestyle="--", label="regular grid (plain conv)")
    ax.set_xlabel("digit scale")
    ax.set_ylabel("spread (RMS px from the unit)")
    ax.set_title(
        f"{title}\nPearson r = {summary['pearson_r']:.2f}, "
        f"slope {summary['slope_px_per_scale']:.2f} px/scale",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = run_parser(
        "python -m dcn.offset_spread",
        "Spread of the deformable sampling points of a trained mnist_scaled run against digit "
        "scale: numbers (JSON), a curve and a picture of the points on small and large digits.",
        kind="mnist_scaled",
    )
    parser.add_argument(
        "--images", type=int, default=200, help="test digits per scale (the first N; default 200)"
    )
    parser.add_argument(
        "--picture", type=int, default=0, help="index of the test digit drawn in offset_points.png"
    )
    parser.add_argument("--data-root", help="where the run's data is now (default: the run's data.root)")
    parser.add_argument("--out", type=Path, help="output folder (default: <run dir>/offset_spread)")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error("--images must be at least 2")

    from omegaconf import open_dict

    from dcn.results import shown_path
    from dcn.trained_task import checkpoint_of, find_run_config, load_datamodule, load_trained_task

    checkpoint = checkpoint_of(args.run)
    model, cfg = load_trained_task(checkpoint)
    backbone = model.backbone if hasattr(model, "backbone") else model
    if args.data_root:
        with open_dict(cfg):
            cfg.data.root = args.data_root
    datamodule = load_datamodule(cfg, str(find_run_config(checkpoint)), num_workers=0)
    if not hasattr(datamodule, "scales"):
        parser.error(
            f"the run's data is {type(datamodule).__name__}, not a scaled test protocol (data=mnist_scaled)"
        )
    datamodule.setup("test")
    scales = list(datamodule.scales)
    images = [dataset.tensors[0][: args.images] for dataset in datamodule.test_sets]
    try:
        spread, grid = spread_by_scale(backbone, images)
    except ValueError as error:  # a plain network: no offsets
        parser.error(str(error))
    summary = summarize_spread(scales, spread, grid)
    layers = sampling_points(backbone, images[0][0]).layers
    summary.update(checkpoint=str(shown_path(checkpoint)), deformable_layers=layers)

    out = args.out or checkpoint.resolve().parent.parent / "offset_spread"
    out.mkdir(parents=True, exist_ok=True)
    (out / "offset_spread.json").write_text(json.dumps(summary, indent=2) + "\n")
    import matplotlib.pyplot as plt

    fig = _spread_figure(
        summary, f"{cfg.get('experiment_name', 'run')}: {cfg.backbone._target_.rsplit('.', 1)[-1]}"
    )
    fig.savefig(out / "offset_spread.png", dpi=150)
    plt.close(fig)
    shown = sorted({0, scales.index(1.0) if 1.0 in scales else len(scales) // 2, len(scales) - 1})
    pictures = [images[k][args.picture] for k in shown]
    results = [sampling_points(backbone, image) for image in pictures]
    titles = [f"x{scales[k]:g}: spread {point_spread(r):.1f} px" for k, r in zip(shown, results)]
    fig = render_figure(pictures, results, titles)
    fig.savefig(out / "offset_points.png", dpi=150)
    plt.close(fig)

    print("scale  spread (px)  ratio to grid")
    for row in summary["per_scale"]:
        print(f"{row['scale']:5.2f}  {row['mean']:6.2f} ± {row['std']:.2f}  {row['ratio_to_grid']:.3f}")
    print(
        f"Pearson r = {summary['pearson_r']:.3f} (p = {summary['pearson_p']:.2g}; within digits "
        f"{summary['pearson_r_within_digit'] or float('nan'):.3f}), Spearman rho = "
        f"{summary['spearman_rho']:.3f}, slope {summary['slope_px_per_scale']:.2f} px per unit of scale, "
        f"over {summary['pairs']} (digit, scale) pairs; grid spread {grid:.2f} px -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
