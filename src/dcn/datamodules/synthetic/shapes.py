"""A seeded generator of geometrically deformed shapes on textured backgrounds, written in VOC's layout.

Each image holds a few objects, each one of the shape classes below, placed over a textured,
low-saturation background. An object is its canonical shape (defined in a unit frame) seen through
a random geometric deformation: scale (and aspect), rotation, shear and an elastic warp. Membership
is evaluated exactly at every pixel's pre-image, so labels are crisp (no resampled masks). Objects
carry a class hue (jittered by ``hue_jitter``) and a random stripe texture; shapes, not colours,
become the only cue as ``hue_jitter`` approaches 0.5. Like VOC, labels mark a band of
``border_width`` pixels along every class boundary 255 (ignored).

Output (:meth:`SyntheticShapesGenerator.write`)::

    <out>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <out>/VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNGs, 255 borders
    <out>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,test}.txt

Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``: the dataset is a pure function of
the parameters, and sample ``i`` does not depend on how many others there are.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from dcn.datamodules.voc.label_png import IGNORE_INDEX, write_label_png

__all__ = ["SHAPES", "ShapesRendering", "SyntheticShapesGenerator", "mask_box"]


# Canonical shapes: (x, y) in the unit frame -> inside? Sizes are chosen so each fills about as
# much of the [-1, 1]^2 square, so area alone does not give the class away.
def _disc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x * x + y * y <= 0.8**2


def _ring(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r2 = x * x + y * y
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _square(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(x), np.abs(y)) <= 0.72


def _triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1, pointing up: inside all three half-planes.
    inside = y >= -0.5
    for angle in (math.radians(30), math.radians(150)):
        inside &= x * math.cos(angle) + y * math.sin(angle) <= 0.5
    return inside


def _cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ax, ay = np.abs(x), np.abs(y)
    return ((ax <= 0.3) & (ay <= 0.95)) | ((ay <= 0.3) & (ax <= 0.95))


SHAPES: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": _disc,
    "ring": _ring,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
}

_VOC_DIR = Path("VOCdevkit") / "VOC2012"


class ShapesRendering(NamedTuple):
    """One rendered sample with per-object detail (``S = image_size``, ``N`` objects in drawing order).

    Attributes:
        image: uint8[S, S, 3], the RGB image.
        instances: int32[S, S], 0 for background, ``i`` where object ``i`` (1-based, drawing order) is
            visible; later objects occlude earlier ones.
        classes: N shape indices (0-based, into the generator's ``shapes``) of objects 1..N.
        full_areas: N pixel counts of each object's unoccluded mask.
        full_boxes: N tight boxes ``(x0, y0, x1, y1)`` (0-based inclusive pixel indices) of each
            object's unoccluded mask; ``(-1, -1, -1, -1)`` if that mask is empty (a sub-pixel object).
    """

    image: np.ndarray
    instances: np.ndarray
    classes: List[int]
    full_areas: List[int]
    full_boxes: List[Tuple[int, int, int, int]]


@dataclass(frozen=True)
class SyntheticShapesGenerator:
    """Parameters of the synthetic dataset (all of them: they key its on-disk cache).

    Args:
        num_train, num_val, num_test: images per split.
        image_size: side of the square images in pixels.
        shapes: object classes (names from :data:`SHAPES`); class 0 is "background", shape k is k+1.
        objects: ``[min, max]`` objects per image.
        size_range: object radius as a fraction of ``image_size``, ``[low, high]``.
        aspect_range: ratio of the object's two axes, ``[low, high]`` (1 = undistorted).
        rotation: maximum absolute rotation in degrees.
        shear: maximum absolute shear factor.
        elastic_alpha: elastic warp strength in pixels (0: off).
        elastic_sigma: smoothness of the elastic warp in pixels.
        hue_jitter: random hue offset around the class hue, as a fraction of the colour wheel
            (classes are ``1 / len(shapes)`` apart; 0.5 makes colour uninformative).
        noise: standard deviation of the per-pixel Gaussian noise, in [0, 1] intensity units.
        border_width: width in pixels of the 255 band along class boundaries (0: none).
        jpeg_quality: JPEG quality of the written images.
        seed: the dataset's seed.
    """

    num_train: int = 320
    num_val: int = 64
    num_test: int = 64
    image_size: int = 112
    shapes: Tuple[str, ...] = tuple(SHAPES)
    objects: Tuple[int, int] = (1, 3)
    size_range: Tuple[float, float] = (0.14, 0.3)
    aspect_range: Tuple[float, float] = (0.7, 1.0)
    rotation: float = 180.0
    shear: float = 0.3
    elastic_alpha: float = 4.0
    elastic_sigma: float = 6.0
    hue_jitter: float = 0.06
    noise: float = 0.04
    border_width: int = 2
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        # Hydra passes lists; tuples keep the dataclass hashable and its JSON form stable.
        for key in ("shapes", "objects", "size_range", "aspect_range"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for key in ("num_train", "num_val", "num_test"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.generator.{key} must be >= 1, got {getattr(self, key)}")
        if self.image_size < 16:
            raise ValueError(f"data.generator.image_size must be >= 16 pixels, got {self.image_size}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(
                f"data.generator.shapes must be distinct names from {list(SHAPES)}, got {list(self.shapes)}"
            )
        _check_range(self.objects, "objects", 1)
        _check_range(self.size_range, "size_range", 1e-3)
        _check_range(self.aspect_range, "aspect_range", 1e-3)
        for key in ("rotation", "shear", "elastic_alpha", "noise", "hue_jitter"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.generator.{key} must be >= 0, got {getattr(self, key)}")
        if self.elastic_sigma <= 0:
            raise ValueError(f"data.generator.elastic_sigma must be > 0, got {self.elastic_sigma}")
        if self.border_width < 0:
            raise ValueError(f"data.generator.border_width must be >= 0, got {self.border_width}")

    @property
    def class_names(self) -> List[str]:
        return ["background", *self.shapes]

    def params(self) -> Dict[str, Any]:
        """All parameters as JSON-able values (the cache key)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def split_sizes(self) -> Dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}

    # The VOC folders the annotations and split lists go to (detection overrides them).
    annotation_dir = "SegmentationClass"
    image_set_dir = "Segmentation"

    def write(self, out_dir: Path) -> Path:
        """Write every split into ``out_dir`` in VOC's layout; returns the ``VOC2012`` folder."""
        voc = Path(out_dir) / _VOC_DIR
        for sub in ("JPEGImages", self.annotation_dir, f"ImageSets/{self.image_set_dir}"):
            (voc / sub).mkdir(parents=True, exist_ok=True)
        index = 0
        for split, count in self.split_sizes().items():
            ids = []
            for _ in range(count):
                image_id = f"{split}_{index:05d}"
                image = self.write_annotation(voc / self.annotation_dir, image_id, index)
                Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=self.jpeg_quality)
                ids.append(image_id)
                index += 1
            (voc / "ImageSets" / self.image_set_dir / f"{split}.txt").write_text("\n".join(ids) + "\n")
        return voc

    def write_annotation(self, folder: Path, image_id: str, index: int) -> np.ndarray:
        """Write sample ``index``'s annotation into ``folder`` (a label PNG); returns its image."""
        image, label = self.sample(index)
        write_label_png(folder / f"{image_id}.png", label)
        return image

    def sample(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Sample ``index``: ``(image uint8[S, S, 3], label uint8[S, S])`` with ``S = image_size``.

        ``label`` holds 0 for background, ``k + 1`` for shape ``k``, and 255 on the border band."""
        rendering = self.render(index)
        # Instance i (1-based) -> its class index + 1; instance 0 (background) -> 0.
        lookup = np.array([0, *(k + 1 for k in rendering.classes)], dtype=np.uint8)
        label = lookup[rendering.instances]
        if self.border_width:
            label[_boundary_band(label, self.border_width)] = IGNORE_INDEX
        return rendering.image, label

    def render(self, index: int) -> ShapesRendering:
        """Sample ``index`` with per-object detail (see :class:`ShapesRendering`); :meth:`sample` is
        this reduced to a class map. Draws from ``default_rng([seed, index])`` in a fixed order:
        background, object count, then per object its class, geometry and texture, then the noise."""
        rng = np.random.default_rng([self.seed, index])
        size = self.image_size
        image = _background(rng, size)
        instances = np.zeros((size, size), dtype=np.int32)
        classes: List[int] = []
        full_areas: List[int] = []
        full_boxes: List[Tuple[int, int, int, int]] = []
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
        for _ in range(int(rng.integers(self.objects[0], self.objects[1] + 1))):
            k = int(rng.integers(len(self.shapes)))
            inside = SHAPES[self.shapes[k]](*self._preimage(rng, xs, ys))
            classes.append(k)
            instances[inside] = len(classes)  # later objects occlude earlier ones
            full_areas.append(int(inside.sum()))
            full_boxes.append(mask_box(inside))
            image[inside] = self._object_texture(rng, k, xs, ys)[inside]
        image += rng.normal(0.0, self.noise, image.shape)
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        return ShapesRendering(image, instances, classes, full_areas, full_boxes)

    def _preimage(
        self, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Each pixel's position in the object's unit frame: the inverse of
        ``p = centre + R(angle) @ Shear @ diag(radius * aspect, radius) @ q`` after an elastic warp."""
        size = self.image_size
        radius = size * rng.uniform(*self.size_range)
        aspect = rng.uniform(*self.aspect_range)
        centre = rng.uniform(radius * 0.5, size - radius * 0.5, 2)
        angle = math.radians(rng.uniform(-self.rotation, self.rotation))
        shear = rng.uniform(-self.shear, self.shear)
        forward = (
            np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            @ np.array([[1.0, shear], [0.0, 1.0]])
            @ np.diag([radius * aspect, radius])
        )
        inverse = np.linalg.inv(forward)
        px, py = xs - centre[0], ys - centre[1]
        if self.elastic_alpha > 0:
            field = rng.uniform(-1, 1, (2, size, size))
            field = ndimage.gaussian_filter(
                field, sigma=(0, self.elastic_sigma, self.elastic_sigma), mode="nearest"
            )
            # Normalise so elastic_alpha is the warp's typical displacement whatever the smoothing.
            field *= self.elastic_alpha / max(float(np.abs(field).max()), 1e-12)
            px, py = px + field[0], py + field[1]
        return inverse[0, 0] * px + inverse[0, 1] * py, inverse[1, 0] * px + inverse[1, 1] * py

    def _object_texture(self, rng: np.random.Generator, k: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """A full-size RGB float image: the class hue (jittered), saturated, with random stripes."""
        hue = (k / len(self.shapes) + rng.uniform(-self.hue_jitter, self.hue_jitter)) % 1.0
        base = _hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
        stripes = _grating(rng, xs, ys, period=rng.uniform(4, 12))
        return np.clip(base[None, None, :] * (1 + 0.25 * stripes[..., None]), 0, 1)


def _check_range(values: Sequence[float], key: str, minimum: float) -> None:
    if len(values) != 2 or not minimum <= values[0] <= values[1]:
        raise ValueError(
            f"data.generator.{key} must be [low, high] with {minimum} <= low <= high, got {list(values)}"
        )


def mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight box ``(x0, y0, x1, y1)`` of a bool[H, W] mask in 0-based inclusive pixel indices;
    ``(-1, -1, -1, -1)`` for an empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return (-1, -1, -1, -1)
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def _grating(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, period: float) -> np.ndarray:
    """A sinusoidal grating in [-1, 1] at a random orientation and phase."""
    theta = rng.uniform(0, math.pi)
    phase = rng.uniform(0, 2 * math.pi)
    return np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * 2 * math.pi / period + phase)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-saturation texture: blotchy smooth noise plus two gratings, float[S, S, 3] in [0, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    blotches = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=size / 12, mode="wrap")
    blotches /= max(float(np.abs(blotches).max()), 1e-12)
    texture = (
        0.5 * blotches
        + 0.25 * _grating(rng, xs, ys, rng.uniform(5, 20))
        + 0.25 * _grating(rng, xs, ys, rng.uniform(5, 20))
    )
    base = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75))
    return np.clip(base[None, None, :] * (1 + 0.35 * texture[..., None]), 0, 1)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _boundary_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within about ``width / 2`` of a change of class (both sides): VOC's void borders."""
    footprint = width + 1
    return ndimage.maximum_filter(label, size=footprint) != ndimage.minimum_filter(label, size=footprint)
