"""Synthetic tracking sequences written in VOT's layout: an object that moves, rotates, scales and
deforms over a textured background, among distractors that look like it.

Each sequence draws, from its own seeded random generator:

* a background: smooth colour noise (bicubically upsampled) plus fine pixel noise in every frame;
* the target: a striped, lobed blob (``r(a) = R (1 + d sin(m a + p))``) whose centre moves with a
  random, slowly changing velocity (bouncing off the borders), which rotates, breathes in scale and
  aspect, and whose lobes change depth and phase over time (non-rigid deformation);
* ``distractors`` blobs of the same kind (other colours and stripes) moving on their own, drawn under
  the target.

The true box of each frame is the axis-aligned bounding box of the target's polygon (continuous pixel
coordinates, see :mod:`dcn.geometry.boxes`), written as ``x,y,w,h`` — or, with
``groundtruth="polygon"``, as the 8 corners of the target's rotated bounding rectangle, as VOT 2014+ do.
Shapes are rasterised at 4x and box-filtered, so edges are anti-aliased and the box is exact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SyntheticTracksGenerator"]

SUPERSAMPLE = 4
_VERTICES = 48


class _Blob:
    """A moving, rotating, deforming striped blob."""

    def __init__(
        self, rng: np.random.Generator, size: Tuple[int, int], radius: float, speed: float, deform: float
    ):
        w, h = size
        self.size = size
        self.pos = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h])
        angle = rng.uniform(0, 2 * math.pi)
        self.vel = speed * np.array([math.cos(angle), math.sin(angle)])
        self.speed = speed
        self.radius = radius
        self.lobes = int(rng.integers(2, 6))
        self.deform = deform
        self.phase, self.phase_speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.2)
        self.angle, self.spin = rng.uniform(0, 2 * math.pi), rng.uniform(-0.06, 0.06)
        self.breath_speed, self.breath = rng.uniform(0.03, 0.1), rng.uniform(0.1, 0.25)
        self.aspect = rng.uniform(0.6, 1.0)
        self.colours = rng.uniform(0, 255, size=(2, 3))
        self.stripe = rng.uniform(3, 8)

    def polygon(self, t: int) -> np.ndarray:
        """``[V, 2]`` vertices at frame t."""
        a = np.linspace(0, 2 * math.pi, _VERTICES, endpoint=False)
        depth = self.deform * (0.6 + 0.4 * math.sin(0.07 * t))
        size = self.radius * (1 + self.breath * math.sin(self.breath_speed * t))
        r = size * (1 + depth * np.sin(self.lobes * a + self.phase + self.phase_speed * t))
        local = np.stack([r * np.cos(a), self.aspect * r * np.sin(a)], axis=1)
        theta = self.angle + self.spin * t
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        return local @ rot.T + self.pos

    def rotated_rectangle(self, t: int) -> np.ndarray:
        """``[4, 2]`` corners of the blob's bounding rectangle in its own (rotated) frame."""
        theta = self.angle + self.spin * t
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        local = (self.polygon(t) - self.pos) @ rot  # back to the blob's frame
        (x0, y0), (x1, y1) = local.min(0), local.max(0)
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        return corners @ rot.T + self.pos

    def texture(self, t: int, grid: np.ndarray) -> np.ndarray:
        """Stripes in the blob's frame: ``grid`` ``[H, W, 2]`` pixel centres -> ``[H, W, 3]`` colours."""
        theta = self.angle + self.spin * t
        u = (grid[..., 0] - self.pos[0]) * math.cos(theta) + (grid[..., 1] - self.pos[1]) * math.sin(theta)
        band = (np.floor(u / self.stripe) % 2)[..., None]
        return self.colours[0] * band + self.colours[1] * (1 - band)

    def step(self, rng: np.random.Generator) -> None:
        self.vel = self.vel + rng.normal(0, 0.15 * self.speed, size=2)
        norm = np.linalg.norm(self.vel)
        if norm > 1.5 * self.speed:
            self.vel *= 1.5 * self.speed / norm
        self.pos = self.pos + self.vel
        for axis, limit in enumerate(self.size):
            low, high = 0.1 * limit, 0.9 * limit
            if not low <= self.pos[axis] <= high:  # bounce
                self.vel[axis] = -self.vel[axis]
                self.pos[axis] = min(max(self.pos[axis], low), high)


def _alpha(polygon: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage ``[H, W]`` in [0, 1] of ``polygon`` (continuous pixel coordinates)."""
    w, h = size
    alpha = np.zeros((h, w), dtype=np.float32)
    # Rasterise only the polygon's bounding region (clipped to the image): most of the frame is empty.
    x0, y0 = np.floor(polygon.min(0)).astype(int)
    x1, y1 = np.ceil(polygon.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return alpha
    rw, rh = x1 - x0, y1 - y0
    canvas = Image.new("L", (rw * SUPERSAMPLE, rh * SUPERSAMPLE), 0)
    # PIL puts integer coordinates at pixel centres: continuous x is supersampled pixel 4 (x - x0) - 0.5.
    points = [((float(x) - x0) * SUPERSAMPLE - 0.5, (float(y) - y0) * SUPERSAMPLE - 0.5) for x, y in polygon]
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    hi = np.asarray(canvas, dtype=np.float32) / 255.0
    alpha[y0:y1, x0:x1] = hi.reshape(rh, SUPERSAMPLE, rw, SUPERSAMPLE).mean(axis=(1, 3))
    return alpha


class SyntheticTracksGenerator:
    """Writes ``<root>/{train,val,test}/`` VOT-layout roots (``list.txt`` + ``seq_XXXX/`` folders).

    Args:
        num_train, num_val, num_test: sequences per split.
        num_frames: frames per sequence.
        image_size: ``(width, height)`` of the frames.
        object_size: target radius range, as a fraction of ``min(width, height)``.
        speed: target speed in pixels per frame (mean).
        deform: lobe depth (0: a rigid ellipse).
        distractors: distractor blobs per sequence, ``[min, max]``.
        noise: per-frame pixel noise (standard deviation, 0..255 scale).
        groundtruth: ``"box"`` (4 numbers per line) or ``"polygon"`` (8: the rotated bounding rectangle).
        jpeg_quality: of the written frames.
        seed: everything follows from it.
    """

    def __init__(
        self,
        num_train: int = 24,
        num_val: int = 4,
        num_test: int = 6,
        num_frames: int = 60,
        image_size: Sequence[int] = (160, 120),
        object_size: Sequence[float] = (0.12, 0.2),
        speed: float = 2.0,
        deform: float = 0.25,
        distractors: Sequence[int] = (1, 2),
        noise: float = 6.0,
        groundtruth: str = "box",
        jpeg_quality: int = 90,
        seed: int = 0,
    ) -> None:
        if min(num_train, num_val, num_test) < 1 or num_frames < 2:
            raise ValueError("generator needs >= 1 sequence per split and >= 2 frames per sequence")
        if groundtruth not in ("box", "polygon"):
            raise ValueError(f"data.generator.groundtruth must be 'box' or 'polygon', got {groundtruth!r}")
        if len(image_size) != 2 or min(image_size) < 16:
            raise ValueError(
                f"data.generator.image_size must be [width, height] >= 16, got {list(image_size)}"
            )
        lo, hi = object_size
        if not 0 < lo <= hi < 0.5:
            raise ValueError(
                f"data.generator.object_size must satisfy 0 < min <= max < 0.5, got {list(object_size)}"
            )
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.num_frames = num_frames
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.object_size = (float(lo), float(hi))
        self.speed, self.deform, self.noise = float(speed), float(deform), float(noise)
        self.distractors = (int(distractors[0]), int(distractors[1]))
        self.groundtruth, self.jpeg_quality, self.seed = groundtruth, int(jpeg_quality), int(seed)

    def params(self) -> Dict[str, object]:
        """Every parameter (the cache key)."""
        return {
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_test": self.num_test,
            "num_frames": self.num_frames,
            "image_size": list(self.image_size),
            "object_size": list(self.object_size),
            "speed": self.speed,
            "deform": self.deform,
            "distractors": list(self.distractors),
            "noise": self.noise,
            "groundtruth": self.groundtruth,
            "jpeg_quality": self.jpeg_quality,
            "seed": self.seed,
        }

    def split_sizes(self) -> Dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}

    def write(self, root: Path) -> None:
        """Write all splits under ``root``."""
        for split_index, (split, count) in enumerate(self.split_sizes().items()):
            folder = Path(root) / split
            folder.mkdir(parents=True, exist_ok=True)
            names: List[str] = []
            for i in range(count):
                name = f"seq_{i:04d}"
                self.write_sequence(folder / name, np.random.default_rng([self.seed, split_index, i]))
                names.append(name)
            (folder / "list.txt").write_text("\n".join(names) + "\n")

    def write_sequence(self, folder: Path, rng: np.random.Generator) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        w, h = self.image_size
        base = min(w, h)
        low = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
        background = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        target = _Blob(rng, (w, h), rng.uniform(*self.object_size) * base, self.speed, self.deform)
        others = [
            _Blob(rng, (w, h), rng.uniform(*self.object_size) * base, self.speed, self.deform)
            for _ in range(int(rng.integers(self.distractors[0], self.distractors[1] + 1)))
        ]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        grid = np.stack([xs, ys], axis=-1)
        lines = []
        for t in range(self.num_frames):
            frame = background.copy()
            for blob in others + [target]:  # the target on top: its box is always what is visible
                alpha = _alpha(blob.polygon(t), (w, h))[..., None]
                frame = frame * (1 - alpha) + blob.texture(t, grid) * alpha
            frame = frame + rng.normal(0, self.noise, size=frame.shape)
            image = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8))
            image.save(folder / f"{t + 1:08d}.jpg", quality=self.jpeg_quality)
            if self.groundtruth == "box":
                poly = target.polygon(t)
                (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
                lines.append(",".join(f"{v:.2f}" for v in (x0, y0, x1 - x0, y1 - y0)))
            else:
                lines.append(",".join(f"{v:.2f}" for v in target.rotated_rectangle(t).flatten()))
            for blob in others + [target]:
                blob.step(rng)
        (folder / "groundtruth.txt").write_text("\n".join(lines) + "\n")
