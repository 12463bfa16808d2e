"""Distributions of optimizee problems for meta-training and evaluating learned optimizers.

A distribution draws a :class:`ProblemBatch` of ``n`` independent problems,
vectorized: parameters are one tensor ``[n, P]`` and ``loss(theta, step)``
returns the ``n`` losses ``[n]`` (so the gradient of their sum is every
problem's own gradient). Draws are deterministic in ``(split, seed)``; the
splits ``train`` (meta-training), ``tune`` (validation and baseline learning-rate
search) and ``test`` (held-out evaluation) never share a problem.

* :class:`QuadraticProblems` - Andrychowicz et al.'s ``f(theta) = ||W theta - y||^2``
  in 10 dimensions, ``W``, ``y`` standard Gaussian, ``theta_0 ~ N(0, 0.01^2)``
  (their released code).
* :class:`MLPProblems` - a one-hidden-layer MLP (20 sigmoid units) classifying
  28x28 images of 10 random glyph classes (:mod:`fewshot_l2l.data.glyphs`), cross-entropy
  on a fresh mini-batch of 128 at every step; classes of the three splits are disjoint.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.glyphs import make_glyph_splits

PROBLEMS = ("quadratic", "mlp")
SPLITS = ("train", "tune", "test")


def _split_generator(owner: str, split: str, seed: int) -> torch.Generator:
    """A CPU generator for ``(split, seed)``: different splits never produce the same stream."""
    if split not in SPLITS:
        raise ValueError(f"{owner}: split must be one of {SPLITS}, got {split!r}")
    return torch.Generator().manual_seed(SPLITS.index(split) * 1_000_000_007 + seed)


class ProblemBatch(Protocol):
    """``n_problems`` problems of ``n_params`` coordinates each."""

    n_problems: int
    n_params: int

    def initial_theta(self) -> Tensor:
        """Starting parameters ``[n, P]`` (a fresh tensor every call)."""

    def loss(self, theta: Tensor, step: int) -> Tensor:
        """Loss of each problem at ``theta`` ``[n, P]`` on the data of optimization step ``step``: ``[n]``."""


class QuadraticBatch:
    """``f_k(theta) = ||W_k theta - y_k||^2`` for problems ``k``: ``weight`` ``[n, d, d]``, ``target`` ``[n, d]``."""

    def __init__(self, weight: Tensor, target: Tensor, theta0: Tensor) -> None:
        self.weight, self.target, self.theta0 = weight, target, theta0
        self.n_problems, self.n_params = theta0.shape

    def initial_theta(self) -> Tensor:
        return self.theta0.clone()

    def loss(self, theta: Tensor, step: int) -> Tensor:
        residual = torch.bmm(self.weight, theta.unsqueeze(-1)).squeeze(-1) - self.target
        return residual.pow(2).sum(-1)


class QuadraticProblems:
    """Random 10-d quadratics of Andrychowicz et al. (2016), a new ``W``, ``y`` and ``theta_0`` per problem."""

    name = "quadratic"

    def __init__(self, dim: int = 10, init_std: float = 0.01, device: str | torch.device = "cpu") -> None:
        if dim < 1 or init_std < 0:
            raise ValueError(f"QuadraticProblems: need dim >= 1 and init_std >= 0, got {dim}, {init_std}")
        self.dim, self.init_std, self.device = dim, init_std, torch.device(device)

    def sample(self, n: int, seed: int, split: str = "train") -> QuadraticBatch:
        if n < 1:
            raise ValueError(f"QuadraticProblems.sample: n must be >= 1, got {n}")
        gen = _split_generator("QuadraticProblems.sample", split, seed)
        weight = torch.randn(n, self.dim, self.dim, generator=gen)
        target = torch.randn(n, self.dim, generator=gen)
        theta0 = self.init_std * torch.randn(n, self.dim, generator=gen)
        return QuadraticBatch(weight.to(self.device), target.to(self.device), theta0.to(self.device))


class MLPBatch:
    """``n`` MLPs (input -> sigmoid hidden -> n_classes), each with its own images and mini-batch stream.

    Args:
        images: the split's images as float rows ``[N, D]`` (shared by all problems).
        labels: the split's class indices ``[N]``.
        members: image indices of each problem ``[n, M]`` into ``images``.
        problem_labels: class of each member within its problem, ``[n, M]`` in ``[0, n_classes)``.
        theta0: starting parameters ``[n, P]``.
        hidden, n_classes, batch_size: network and mini-batch sizes.
        seed: seed of the mini-batch stream (step ``t`` always draws the same batch).
    """

    def __init__(self, images: Tensor, members: Tensor, problem_labels: Tensor, theta0: Tensor,
                 hidden: int, n_classes: int, batch_size: int, seed: int) -> None:
        self.images, self.members, self.problem_labels, self.theta0 = images, members, problem_labels, theta0
        self.hidden, self.n_classes, self.batch_size, self.seed = hidden, n_classes, batch_size, seed
        self.n_problems, self.n_params = theta0.shape
        self.input_size = images.shape[1]

    def initial_theta(self) -> Tensor:
        return self.theta0.clone()

    def unflatten(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``theta`` ``[n, P]`` -> ``(W1 [n, D, H], b1 [n, 1, H], W2 [n, H, C], b2 [n, 1, C])`` (views)."""
        n, d, h, c = theta.shape[0], self.input_size, self.hidden, self.n_classes
        w1, b1, w2, b2 = theta.split((d * h, h, h * c, c), dim=1)
        return w1.view(n, d, h), b1.view(n, 1, h), w2.view(n, h, c), b2.view(n, 1, c)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Mini-batch of step ``step``: images ``[n, batch, D]`` and labels ``[n, batch]``."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + step)
        order = torch.rand(self.members.shape, generator=gen).argsort(dim=1)[:, : self.batch_size].to(self.members.device)
        return self.images[self.members.gather(1, order)], self.problem_labels.gather(1, order)

    def loss(self, theta: Tensor, step: int) -> Tensor:
        x, y = self.batch(step)
        w1, b1, w2, b2 = self.unflatten(theta)
        logits = torch.baddbmm(b2, torch.sigmoid(torch.baddbmm(b1, x, w1)), w2)
        losses = F.cross_entropy(logits.reshape(-1, self.n_classes), y.reshape(-1), reduction="none")
        return losses.view(theta.shape[0], -1).mean(dim=1)


class MLPProblems:
    """MLP classifiers of 10 random glyph classes, a fresh initialization and class choice per problem.

    The glyph dataset is generated here (a few seconds): ``classes`` classes per
    split with ``images_per_class`` drawings each; ``train``/``tune``/``test``
    problems draw their classes from the glyph ``train``/``val``/``test`` splits.

    Args:
        n_classes: classes per problem (10).
        hidden: sigmoid hidden units (20).
        batch_size: images per step (128).
        classes: glyph classes per split.
        images_per_class: drawings per glyph class.
        image_size: image side (28).
        device: where problems live.
        data_seed: seed of the glyph dataset.
    """

    name = "mlp"

    def __init__(self, n_classes: int = 10, hidden: int = 20, batch_size: int = 128,
                 classes: dict[str, int] | None = None, images_per_class: int = 60, image_size: int = 28,
                 device: str | torch.device = "cpu", data_seed: int = 0) -> None:
        classes = classes or {"train": 100, "val": 30, "test": 30}
        if n_classes < 2 or hidden < 1 or batch_size < 1:
            raise ValueError(f"MLPProblems: need n_classes >= 2, hidden >= 1, batch_size >= 1; got {n_classes}, {hidden}, {batch_size}")
        if min(classes.values()) < n_classes:
            raise ValueError(f"MLPProblems: every glyph split needs >= n_classes={n_classes} classes, got {classes}")
        if batch_size > n_classes * images_per_class:
            raise ValueError(f"MLPProblems: batch_size {batch_size} exceeds the {n_classes * images_per_class} images of a problem")
        self.n_classes, self.hidden, self.batch_size, self.device = n_classes, hidden, batch_size, torch.device(device)
        glyph_splits = make_glyph_splits(classes, images_per_class, image_size, seed=data_seed)
        self.splits = {}
        for split, glyph_name in zip(SPLITS, ("train", "val", "test")):
            glyphs = glyph_splits[glyph_name]
            members = glyphs.class_members  # [classes, images_per_class]
            images = glyphs.images.flatten(1).float().div(255.0)
            self.splits[split] = (images.to(self.device), members)
        self.input_size = image_size * image_size
        self.images_per_class = images_per_class

    @property
    def n_params(self) -> int:
        d, h, c = self.input_size, self.hidden, self.n_classes
        return d * h + h + h * c + c

    def sample(self, n: int, seed: int, split: str = "train") -> MLPBatch:
        if n < 1:
            raise ValueError(f"MLPProblems.sample: n must be >= 1, got {n}")
        gen = _split_generator("MLPProblems.sample", split, seed)
        images, class_members = self.splits[split]
        chosen = torch.rand(n, class_members.shape[0], generator=gen).argsort(dim=1)[:, : self.n_classes]  # [n, C]
        members = class_members[chosen].flatten(1)  # [n, C * images_per_class]
        problem_labels = torch.arange(self.n_classes).repeat_interleave(class_members.shape[1]).expand(n, -1)
        # nn.Linear's default initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weights and biases.
        d, h, c = self.input_size, self.hidden, self.n_classes
        bounds = torch.cat((torch.full((d * h + h,), 1 / math.sqrt(d)), torch.full((h * c + c,), 1 / math.sqrt(h))))
        theta0 = (2 * torch.rand(n, self.n_params, generator=gen) - 1) * bounds
        stream_seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
        return MLPBatch(images, members.to(self.device), problem_labels.contiguous().to(self.device), theta0.to(self.device),
                        self.hidden, self.n_classes, self.batch_size, stream_seed)


def make_problems(name: str, device: str | torch.device = "cpu") -> QuadraticProblems | MLPProblems:
    """The problem distribution called ``name`` (``quadratic`` or ``mlp``) with its paper settings."""
    if name == "quadratic":
        return QuadraticProblems(device=device)
    if name == "mlp":
        return MLPProblems(device=device)
    raise ValueError(f"make_problems: unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}")
