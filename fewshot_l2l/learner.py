"""The 4-block CNN learner of Ravi & Larochelle, run functionally from a flat parameter vector.

Each block: 3x3 convolution (padding 1, ``hidden_channels`` filters) -> batch norm
-> ReLU -> 2x2 max-pool; then a linear head to ``n_way`` logits. The meta-learner
owns the parameters as one flat vector ``theta`` (its cell state), so the
learner never holds weights of its own: :meth:`ConvLearner.forward` slices views
out of ``theta`` and calls ``torch.nn.functional``.

Design choices (each documented because it changes results):

* Convolutions have no bias: batch norm subtracts the batch mean right after,
  so a conv bias would get an exactly-zero gradient and waste meta-learner
  coordinates.
* Batch-norm ``gamma``/``beta`` are part of ``theta`` and are updated by the
  meta-learner. There are no running statistics: inside an episode batch norm
  always normalizes with batch statistics.
* ``query_bn="support"`` (:data:`EVAL_QUERY_BN`, the evaluation default of every
  method, as the authors' code and its PyTorch port evaluate) normalizes the
  query set with the statistics of the support set under the final parameters,
  so each query image is classified independently. ``query_bn="batch"``
  normalizes the query set with its own statistics, which is transductive: query
  images influence each other's predictions (it reads 1.5-1.9 points higher);
  the authors meta-train that way, and so does ``TrainConfig.query_bn`` by default.
* ``bn_eps`` is PyTorch's default 1e-5 (ours); the authors' Torch code used 1e-3
  (``LearnerConfig(bn_eps=1e-3)``, part of ``--authors-config``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

QUERY_BN_MODES = ("batch", "support")
EVAL_QUERY_BN = "support"  # the evaluation default of every method: not transductive
BN_EPS = 1e-5  # PyTorch's default, ours (the authors' Torch code: 1e-3)
MAX_NUMEL = 2**63 - 1  # torch sizes are int64


@dataclass(frozen=True)
class LearnerConfig:
    """Everything needed to rebuild a learner (stored in checkpoints)."""

    in_channels: int
    image_size: int
    n_way: int
    hidden_channels: int = 32
    n_blocks: int = 4
    bn_eps: float = BN_EPS  # checkpoints from before this field load with it: the value they used


class ConvLearner:
    """Functional 4-block CNN; see the module docstring.

    Args:
        config: shape of the images and of the classifier.
    """

    def __init__(self, config: LearnerConfig) -> None:
        for name in ("in_channels", "image_size", "n_way", "hidden_channels", "n_blocks"):
            value = getattr(config, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ConvLearner: {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(config.bn_eps, numbers.Real) and math.isfinite(config.bn_eps) and config.bn_eps > 0):
            raise ValueError(f"ConvLearner: bn_eps must be a positive finite number, got {config.bn_eps!r}")
        side = config.image_size >> config.n_blocks  # halved by each block's 2x2 max-pool (floor), without a loop
        if side < 1:
            raise ValueError(
                f"ConvLearner: image_size={config.image_size} is too small for {config.n_blocks} "
                f"blocks of 2x2 max-pooling (needs at least 2**{config.n_blocks})"
            )
        self.config = config
        self.feature_dim = config.hidden_channels * side * side
        shapes: list[tuple[str, tuple[int, ...]]] = []
        channels = config.in_channels
        for block in range(config.n_blocks):
            shapes.append((f"conv{block}.weight", (config.hidden_channels, channels, 3, 3)))
            shapes.append((f"bn{block}.weight", (config.hidden_channels,)))
            shapes.append((f"bn{block}.bias", (config.hidden_channels,)))
            channels = config.hidden_channels
        shapes.append(("head.weight", (config.n_way, self.feature_dim)))
        shapes.append(("head.bias", (config.n_way,)))
        self.param_shapes = shapes
        self.param_sizes = [math.prod(shape) for _, shape in shapes]
        self.n_params = sum(self.param_sizes)
        if self.n_params > MAX_NUMEL:  # else torch fails deep inside init_params with an overflow
            raise ValueError(f"ConvLearner: {self.n_params} parameters do not fit in one tensor (at most {MAX_NUMEL}); "
                             "reduce n_way, hidden_channels or image_size")

    def check_images(self, image_shape: tuple[int, ...], source: str) -> None:
        """Raise ``ValueError`` naming ``source`` unless its images (``(C, H, W)``) are the ones this learner takes.

        A checkpoint's learner is built for the images it was trained on; images of
        another size or channel count would only fail deep inside the first forward pass.
        """
        expected = (self.config.in_channels, self.config.image_size, self.config.image_size)
        if tuple(image_shape) != expected:
            raise ValueError(
                f"{source} has images of shape {'x'.join(map(str, image_shape))} (C x H x W), but the learner "
                f"takes {'x'.join(map(str, expected))}: use the dataset file the checkpoint was trained on"
            )

    def state(self) -> dict:
        """Plain-dict config for checkpoints."""
        return asdict(self.config)

    def init_params(self, generator: torch.Generator | None = None) -> Tensor:
        """A fresh flat parameter vector with PyTorch's default initialization
        (conv/linear weights and the head bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
        BN ``gamma = 1``, ``beta = 0``), as the authors' code used."""
        pieces = []
        for name, shape in self.param_shapes:
            if name.startswith("bn"):
                fill = 1.0 if name.endswith("weight") else 0.0
                pieces.append(torch.full(shape, fill).flatten())
            else:
                fan_in = self.feature_dim if name == "head.bias" else math.prod(shape[1:])
                bound = 1.0 / math.sqrt(fan_in)
                pieces.append(torch.empty(shape).uniform_(-bound, bound, generator=generator).flatten())
        return torch.cat(pieces)

    def unflatten(self, theta: Tensor) -> list[Tensor]:
        """Views of ``theta`` ``[P]`` with the parameter shapes, in order."""
        if theta.shape != (self.n_params,):
            raise ValueError(f"ConvLearner: theta must have shape [{self.n_params}], got {tuple(theta.shape)}")
        return [piece.view(shape) for piece, (_, shape) in zip(torch.split(theta, self.param_sizes), self.param_shapes)]

    def forward(
        self,
        theta: Tensor,
        images: Tensor,
        bn_stats: list[tuple[Tensor, Tensor]] | None = None,
        return_stats: bool = False,
        channels_last: bool = True,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Logits for ``images`` ``[N, C, H, W]`` under parameters ``theta`` ``[P]``.

        Returns ``(logits, stats)``. With ``return_stats`` the per-block batch
        (mean, biased var) are returned in ``stats`` (else it is empty). Pass
        ``bn_stats`` to normalize with given statistics instead of the batch's own
        (used for ``query_bn="support"``). ``channels_last=False`` keeps the
        images' own memory layout: ``torch.func.vmap`` refuses the channels-last
        conversion (torch 2.14), so :meth:`batched_logits` turns it off.
        """
        params = self.unflatten(theta)
        features, used_stats = self._features(params, images, bn_stats, return_stats, channels_last)
        return F.linear(features, params[-2], params[-1]), used_stats

    def embed(
        self, theta: Tensor, images: Tensor, bn_stats: list[tuple[Tensor, Tensor]] | None = None, return_stats: bool = False
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The flattened output of the conv blocks ``[N, feature_dim]`` (the head's input), as :meth:`forward`
        returns logits; the embedding of Prototypical Networks and the features of fine-tuning."""
        return self._features(self.unflatten(theta), images, bn_stats, return_stats)

    def query_embedding(self, theta: Tensor, support: Tensor, query: Tensor, query_bn: str) -> tuple[Tensor, Tensor]:
        """``(support features, query features)``, the query set normalized as ``query_bn`` says (module docstring)."""
        if query_bn not in QUERY_BN_MODES:
            raise ValueError(f"query_bn must be one of {QUERY_BN_MODES}, got {query_bn!r}")
        support_features, stats = self.embed(theta, support, return_stats=query_bn == "support")
        return support_features, self.embed(theta, query, bn_stats=stats if query_bn == "support" else None)[0]

    def _features(self, params: list[Tensor], images: Tensor, bn_stats: list[tuple[Tensor, Tensor]] | None,
                  return_stats: bool, channels_last: bool = True) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        eps = self.config.bn_eps
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        used_stats = []
        for block in range(self.config.n_blocks):
            weight, gamma, beta = params[3 * block : 3 * block + 3]
            x = F.conv2d(x, weight, padding=1)
            if bn_stats is None:
                if return_stats:
                    used_stats.append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)))
                # F.batch_norm's fused kernel is several times faster than the
                # same normalization written as tensor arithmetic.
                x = F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
            else:
                mean, var = bn_stats[block]
                x = (x - mean[:, None, None]) * torch.rsqrt(var[:, None, None] + eps) * gamma[:, None, None] + beta[:, None, None]
            x = F.max_pool2d(F.relu(x), 2)
        return x.flatten(1), used_stats

    def logits(self, theta: Tensor, images: Tensor, channels_last: bool = True) -> Tensor:
        """Logits with batch statistics (the inner loop's forward)."""
        return self.forward(theta, images, channels_last=channels_last)[0]

    def query_logits(
        self, theta: Tensor, support: Tensor, query: Tensor, query_bn: str = EVAL_QUERY_BN, channels_last: bool = True
    ) -> Tensor:
        """Logits of the query set under final parameters ``theta``; see ``query_bn`` in the module docstring."""
        if query_bn == "batch":
            return self.logits(theta, query, channels_last)
        if query_bn == "support":
            _, stats = self.forward(theta, support, return_stats=True, channels_last=channels_last)
            return self.forward(theta, query, bn_stats=stats, channels_last=channels_last)[0]
        raise ValueError(f"query_bn must be one of {QUERY_BN_MODES}, got {query_bn!r}")

    # Batched over episodes: theta [B, P], images [B, N, C, H, W]. torch.func.vmap turns each
    # convolution into one grouped convolution over the B episodes (and batch norm, pooling and the
    # head into one kernel each), instead of B small kernels per layer: what a GPU wants.

    def batched_logits(self, theta: Tensor, images: Tensor) -> Tensor:
        """:meth:`logits` of every episode at once: ``[B, P]``, ``[B, N, C, H, W]`` -> ``[B, N, n_way]``."""
        return torch.func.vmap(lambda t, x: self.logits(t, x, channels_last=False))(theta, images)

    def batched_query_logits(self, theta: Tensor, support: Tensor, query: Tensor, query_bn: str = EVAL_QUERY_BN) -> Tensor:
        """:meth:`query_logits` of every episode at once -> ``[B, n_query_images, n_way]``."""
        if query_bn not in QUERY_BN_MODES:
            raise ValueError(f"query_bn must be one of {QUERY_BN_MODES}, got {query_bn!r}")
        return torch.func.vmap(lambda t, s, q: self.query_logits(t, s, q, query_bn, channels_last=False))(
            theta, support, query
        )
