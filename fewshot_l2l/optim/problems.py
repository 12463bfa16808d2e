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
  Wider, deeper and ReLU variants (``hidden``, ``layers``, ``activation``) test generalization.
* :class:`~fewshot_l2l.optim.convnet.ConvNetProblems` - a small conv-net with batch norm on the same glyphs.
* :class:`~fewshot_l2l.optim.neural_art.NeuralArtProblems` - style transfer: the pixels of an image.

Every batch has a ``layout`` (:class:`~fewshot_l2l.optim.layout.ParamLayout`): its parameter tensors.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.glyphs import make_glyph_splits
from .layout import ParamLayout

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
    layout: ParamLayout

    def initial_theta(self) -> Tensor:
        """Starting parameters ``[n, P]`` (a fresh tensor every call)."""

    def loss(self, theta: Tensor, step: int) -> Tensor:
        """Loss of each problem at ``theta`` ``[n, P]`` on the data of optimization step ``step``: ``[n]``."""


class QuadraticBatch:
    """``f_k(theta) = ||W_k theta - y_k||^2`` for problems ``k``: ``weight`` ``[n, d, d]``, ``target`` ``[n, d]``."""

    def __init__(self, weight: Tensor, target: Tensor, theta0: Tensor) -> None:
        self.weight, self.target, self.theta0 = weight, target, theta0
        self.n_problems, self.n_params = theta0.shape
        self.layout = ParamLayout((self.n_params,))

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


ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


class GlyphBatch:
    """``n`` networks, each with its own glyph images and mini-batch stream; subclasses define the network.

    Args:
        images: the split's images as float rows ``[N, D]`` (shared by all problems).
        members: image indices of each problem ``[n, M]`` into ``images``.
        problem_labels: class of each member within its problem, ``[n, M]`` in ``[0, n_classes)``.
        theta0: starting parameters ``[n, P]``.
        layout: the network's tensors (:class:`~fewshot_l2l.optim.layout.ParamLayout`).
        n_classes, batch_size: outputs and mini-batch size.
        seed: seed of the mini-batch stream (step ``t`` always draws the same batch).
    """

    def __init__(self, images: Tensor, members: Tensor, problem_labels: Tensor, theta0: Tensor, layout: ParamLayout,
                 n_classes: int, batch_size: int, seed: int) -> None:
        self.images, self.members, self.problem_labels, self.theta0 = images, members, problem_labels, theta0
        self.layout, self.n_classes, self.batch_size, self.seed = layout, n_classes, batch_size, seed
        self.n_problems, self.n_params = theta0.shape

    def initial_theta(self) -> Tensor:
        return self.theta0.clone()

    def tensors(self, theta: Tensor) -> list[Tensor]:
        """``theta`` ``[n, P]`` cut into its tensors ``[n, size_k]`` (views), in layout order."""
        return list(theta.split(self.layout.sizes, dim=1))

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Mini-batch of step ``step``: images ``[n, batch, D]`` and labels ``[n, batch]``."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + step)
        order = torch.rand(self.members.shape, generator=gen).argsort(dim=1)[:, : self.batch_size].to(self.members.device)
        return self.images[self.members.gather(1, order)], self.problem_labels.gather(1, order)

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """Outputs ``[n, batch, n_classes]`` of the ``n`` networks on their images ``x``."""
        raise NotImplementedError

    def loss(self, theta: Tensor, step: int) -> Tensor:
        x, y = self.batch(step)
        logits = self.logits(theta, x)
        losses = F.cross_entropy(logits.reshape(-1, self.n_classes), y.reshape(-1), reduction="none")
        return losses.view(theta.shape[0], -1).mean(dim=1)


class MLPBatch(GlyphBatch):
    """``n`` MLPs (input -> ``layers`` hidden layers of ``hidden`` units -> n_classes) on flattened images.

    ``theta`` holds, layer after layer, ``W`` ``[in, out]`` (row-major) then ``b`` ``[out]``.
    """

    def __init__(self, *args, layer_sizes: tuple[int, ...], activation: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.layer_sizes, self.activation = layer_sizes, activation

    def unflatten(self, theta: Tensor) -> tuple[Tensor, ...]:
        """``theta`` ``[n, P]`` -> ``(W1 [n, D, H], b1 [n, 1, H], W2 ..., b2 ..., ...)`` (views)."""
        n, pieces, out = theta.shape[0], self.tensors(theta), []
        for k, (fan_in, fan_out) in enumerate(zip(self.layer_sizes, self.layer_sizes[1:])):
            out += [pieces[2 * k].view(n, fan_in, fan_out), pieces[2 * k + 1].view(n, 1, fan_out)]
        return tuple(out)

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        weights = self.unflatten(theta)
        activation = ACTIVATIONS[self.activation]
        for k in range(0, len(weights) - 2, 2):  # hidden layers (a handful), then the linear output
            x = activation(torch.baddbmm(weights[k + 1], x, weights[k]))
        return torch.baddbmm(weights[-1], x, weights[-2])


class GlyphProblems:
    """Networks classifying ``n_classes`` random glyph classes, a fresh initialization and class choice per problem.

    The glyph dataset is generated here (a few seconds): ``classes`` classes per
    split with ``images_per_class`` drawings each; ``train``/``tune``/``test``
    problems draw their classes from the glyph ``train``/``val``/``test`` splits.
    Subclasses define :meth:`layout`, :meth:`init_bounds` (and :meth:`init_offsets`) and :meth:`make_batch`.

    Args:
        n_classes: classes per problem (10).
        batch_size: images per step (128).
        classes: glyph classes per split.
        images_per_class: drawings per glyph class.
        image_size: image side (28).
        device: where problems live.
        data_seed: seed of the glyph dataset.
    """

    name = ""

    def __init__(self, n_classes: int = 10, batch_size: int = 128, classes: dict[str, int] | None = None,
                 images_per_class: int = 60, image_size: int = 28, device: str | torch.device = "cpu",
                 data_seed: int = 0) -> None:
        owner = type(self).__name__
        classes = classes or {"train": 100, "val": 30, "test": 30}
        if n_classes < 2 or batch_size < 1:
            raise ValueError(f"{owner}: need n_classes >= 2 and batch_size >= 1; got {n_classes}, {batch_size}")
        if min(classes.values()) < n_classes:
            raise ValueError(f"{owner}: every glyph split needs >= n_classes={n_classes} classes, got {classes}")
        if batch_size > n_classes * images_per_class:
            raise ValueError(f"{owner}: batch_size {batch_size} exceeds the {n_classes * images_per_class} images of a problem")
        self.n_classes, self.batch_size, self.device = n_classes, batch_size, torch.device(device)
        self.image_size, self.images_per_class = image_size, images_per_class
        glyph_splits = make_glyph_splits(classes, images_per_class, image_size, seed=data_seed)
        self.splits = {}
        for split, glyph_name in zip(SPLITS, ("train", "val", "test")):
            glyphs = glyph_splits[glyph_name]
            images = glyphs.images.flatten(1).float().div(255.0)  # rows [N, image_size**2]
            self.splits[split] = (images.to(self.device), glyphs.class_members)  # members [classes, images_per_class]
        self.input_size = image_size * image_size

    def layout(self) -> ParamLayout:
        raise NotImplementedError

    def init_bounds(self) -> Tensor:
        """Half-width of the uniform initialization of every coordinate, ``[P]``."""
        raise NotImplementedError

    def init_offsets(self) -> Tensor | float:
        """Centre of the uniform initialization of every coordinate (``[P]``, or 0 for all)."""
        return 0.0

    def make_batch(self, images: Tensor, members: Tensor, labels: Tensor, theta0: Tensor, seed: int) -> GlyphBatch:
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return self.layout().n_params

    def sample(self, n: int, seed: int, split: str = "train") -> GlyphBatch:
        owner = f"{type(self).__name__}.sample"
        if n < 1:
            raise ValueError(f"{owner}: n must be >= 1, got {n}")
        gen = _split_generator(owner, split, seed)
        images, class_members = self.splits[split]
        chosen = torch.rand(n, class_members.shape[0], generator=gen).argsort(dim=1)[:, : self.n_classes]  # [n, C]
        members = class_members[chosen].flatten(1)  # [n, C * images_per_class]
        problem_labels = torch.arange(self.n_classes).repeat_interleave(class_members.shape[1]).expand(n, -1)
        theta0 = (2 * torch.rand(n, self.n_params, generator=gen) - 1) * self.init_bounds() + self.init_offsets()
        stream_seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
        return self.make_batch(images, members.to(self.device), problem_labels.contiguous().to(self.device),
                               theta0.to(self.device), stream_seed)


class MLPProblems(GlyphProblems):
    """MLP classifiers of 10 random glyph classes (arguments of :class:`GlyphProblems`, and the network's).

    Args:
        hidden: units per hidden layer (20).
        layers: hidden layers (1).
        activation: ``"sigmoid"`` (the paper's) or ``"relu"``.

    Initialization: ``nn.Linear``'s default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, for weights and biases.
    """

    name = "mlp"

    def __init__(self, n_classes: int = 10, hidden: int = 20, batch_size: int = 128,
                 classes: dict[str, int] | None = None, images_per_class: int = 60, image_size: int = 28,
                 device: str | torch.device = "cpu", data_seed: int = 0, layers: int = 1, activation: str = "sigmoid") -> None:
        if hidden < 1 or layers < 1:
            raise ValueError(f"MLPProblems: need hidden >= 1 and layers >= 1; got {hidden}, {layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLPProblems: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        super().__init__(n_classes, batch_size, classes, images_per_class, image_size, device, data_seed)
        self.hidden, self.layers, self.activation = hidden, layers, activation
        self.layer_sizes = (self.input_size, *([hidden] * layers), n_classes)

    def layout(self) -> ParamLayout:
        pairs = zip(self.layer_sizes, self.layer_sizes[1:])
        return ParamLayout(tuple(size for fan_in, fan_out in pairs for size in (fan_in * fan_out, fan_out)))

    def init_bounds(self) -> Tensor:
        return torch.cat([torch.full((fan_in * fan_out + fan_out,), 1 / math.sqrt(fan_in))
                          for fan_in, fan_out in zip(self.layer_sizes, self.layer_sizes[1:])])

    def make_batch(self, images, members, labels, theta0, seed) -> MLPBatch:
        return MLPBatch(images, members, labels, theta0, self.layout(), self.n_classes, self.batch_size, seed,
                        layer_sizes=self.layer_sizes, activation=self.activation)
