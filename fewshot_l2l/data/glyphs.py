"""The embedded dataset: procedurally generated stroke glyphs, deterministic from a seed.

Each class is a random "character" of 2-4 quadratic Bezier strokes. Each image
of a class redraws it with perturbed control points, a random similarity
transform (rotation, scale, shift) and stroke width, like different people
drawing the same Omniglot character. Classes of the train/val/test splits are
disjoint. Rendering splats dense stroke points onto a fine canvas for a chunk of
images at once, so the default dataset (1,200 classes x 20 images, 28x28) is built in a
few seconds and needs no download.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .episodes import FewShotSplit

DEFAULT_CLASSES = {"train": 800, "val": 100, "test": 300}
SUPERSAMPLE = 2  # strokes are drawn on a 2x finer canvas, then averaged down (anti-aliasing)
POINTS_PER_STROKE = 128  # dense enough that consecutive points are < 1 fine pixel apart
STROKE_RADII = (1, 2)  # half-widths in fine pixels: strokes 1.5 or 2.5 output pixels wide


def _bezier_points(control: Tensor) -> Tensor:
    """Points along quadratic Beziers: control ``[..., 3, 2]`` -> ``[..., POINTS_PER_STROKE, 2]``."""
    t = torch.linspace(0.0, 1.0, POINTS_PER_STROKE).view(-1, 1)
    p0, p1, p2 = control[..., 0:1, :], control[..., 1:2, :], control[..., 2:3, :]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _render(points: Tensor, radius: Tensor, image_size: int) -> Tensor:
    """Render stroke points ``[N, M, 2]`` in unit coordinates with per-image radii ``[N]`` -> ``[N, H, W]`` in [0, 1].

    Points are splatted onto a fine canvas in one scatter, thickened by a max-pool
    per stroke radius, and averaged down to ``image_size``: a few large kernels
    instead of a distance computation per pixel and segment.
    """
    n = points.shape[0]
    fine = image_size * SUPERSAMPLE
    pixel = (points * fine).long().clamp_(0, fine - 1)
    flat = pixel[..., 1] * fine + pixel[..., 0] + (torch.arange(n) * fine * fine)[:, None]
    canvas = torch.zeros(n * fine * fine)
    canvas[flat.flatten()] = 1.0
    canvas = canvas.view(n, 1, fine, fine)
    thick = torch.empty_like(canvas)
    for r in STROKE_RADII:
        chosen = radius == r
        # Separable max-pool: two 1-D passes cost 2(2r+1) instead of (2r+1)^2 comparisons per pixel.
        rows = F.max_pool2d(canvas[chosen], (2 * r + 1, 1), stride=1, padding=(r, 0))
        thick[chosen] = F.max_pool2d(rows, (1, 2 * r + 1), stride=1, padding=(0, r))
    return F.avg_pool2d(thick, SUPERSAMPLE).view(n, image_size, image_size)


def make_glyph_split(
    n_classes: int,
    images_per_class: int = 20,
    image_size: int = 28,
    seed: int = 0,
    name: str = "split",
    chunk: int = 2048,
) -> FewShotSplit:
    """Generate one split of glyph classes.

    Args:
        n_classes: number of distinct glyph classes.
        images_per_class: drawings of each class.
        image_size: side of the square images.
        seed: all randomness comes from this seed.
        name: split name, also used to prefix class names.
        chunk: images rendered per vectorized batch (bounds memory).
    """
    if n_classes < 1 or images_per_class < 1 or image_size < 8:
        raise ValueError(
            f"make_glyph_split: need n_classes >= 1, images_per_class >= 1, image_size >= 8; "
            f"got {n_classes}, {images_per_class}, {image_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    max_strokes = 4
    # Class prototypes: up to 4 strokes of 3 control points each in the central area.
    prototypes = 0.15 + 0.7 * torch.rand(n_classes, max_strokes, 3, 2, generator=gen)
    n_strokes = torch.randint(2, max_strokes + 1, (n_classes,), generator=gen)

    n_images = n_classes * images_per_class
    labels = torch.arange(n_classes).repeat_interleave(images_per_class)
    control = prototypes[labels] + 0.04 * torch.randn(n_images, max_strokes, 3, 2, generator=gen)
    angle = math.radians(12.0) * (2 * torch.rand(n_images, generator=gen) - 1)
    scale = 0.85 + 0.3 * torch.rand(n_images, generator=gen)
    shift = 0.06 * (2 * torch.rand(n_images, 2, generator=gen) - 1)
    radius = torch.tensor(STROKE_RADII)[torch.randint(len(STROKE_RADII), (n_images,), generator=gen)]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    rotation = torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)  # [N, 2, 2]
    centered = control - 0.5
    control = torch.einsum("nij,nskj->nski", rotation, centered) + 0.5 + shift[:, None, None, :]

    points = _bezier_points(control)  # [N, max_strokes, POINTS_PER_STROKE, 2]
    # Unused strokes collapse onto the first point of stroke 0, which is drawn anyway.
    unused = torch.arange(max_strokes)[None, :] >= n_strokes[labels][:, None]  # [N, max_strokes]
    points = torch.where(unused[..., None, None], points[:, :1, :1], points).flatten(1, 2)

    images = torch.empty(n_images, 1, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n_images, chunk):  # chunks bound memory; each chunk is one vectorized render
        stop = min(start + chunk, n_images)
        ink = _render(points[start:stop], radius[start:stop], image_size)
        images[start:stop, 0] = (ink * 255).round().to(torch.uint8)
    class_names = [f"{name}_glyph{c:04d}" for c in range(n_classes)]
    return FewShotSplit(images, labels, class_names, name=name)


def make_glyph_splits(
    classes: dict[str, int] | None = None,
    images_per_class: int = 20,
    image_size: int = 28,
    seed: int = 0,
) -> dict[str, FewShotSplit]:
    """The embedded dataset: disjoint train/val/test glyph splits (default 800/100/300 classes).

    Every split is generated from its own seed derived from ``seed``, so the
    classes of different splits are independent draws (disjoint with
    probability 1) and changing one split's size leaves the others unchanged.
    """
    classes = dict(DEFAULT_CLASSES if classes is None else classes)
    return {
        name: make_glyph_split(n, images_per_class, image_size, seed=seed * 1000 + index, name=name)
        for index, (name, n) in enumerate(sorted(classes.items()))
    }
