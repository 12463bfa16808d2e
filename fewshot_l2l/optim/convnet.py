"""The convolutional-network problem of Andrychowicz et al. (2016), section 3.3, on the glyph images.

Per problem: ``conv_layers`` blocks of [3x3 convolution (``channels`` filters,
padding 1, no bias: batch norm follows) -> batch norm (batch statistics, learned
scale and shift) -> ReLU -> 2x2 max pooling], then a fully connected ReLU layer
of ``hidden`` units and a linear layer to the ``n_classes`` outputs;
cross-entropy on a fresh mini-batch per step. The paper's net had 3 conv layers
of 16 channels and a 32-unit layer, on CIFAR-10; the glyphs are 28x28 (28 -> 14
-> 7 -> 3 after pooling). The ``n`` problems of a batch run as one grouped
convolution (``groups = n``): no loop over problems.

Layer types (:class:`~fewshot_l2l.optim.layout.ParamLayout` kinds, for a rule per
layer type): convolution weights and their batch-norm parameters are ``"conv"``,
the two fully connected layers ``"fc"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import ParamLayout
from .problems import GlyphBatch, GlyphProblems


class ConvNetBatch(GlyphBatch):
    """``n`` conv-nets; ``theta`` holds per conv block ``W [C_out, C_in, 3, 3]``, ``gamma [C_out]``, ``beta [C_out]``,
    then ``W1 [F, hidden]``, ``b1``, ``W2 [hidden, classes]``, ``b2`` (row-major)."""

    def __init__(self, *args, image_size: int, channels: int, conv_layers: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.image_size, self.channels, self.conv_layers = image_size, channels, conv_layers

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        n, batch = x.shape[:2]
        pieces = self.tensors(theta)
        h = x.view(n, batch, self.image_size, self.image_size).transpose(0, 1)  # [batch, n * 1, S, S]
        c_in = 1
        for k in range(self.conv_layers):
            weight, gamma, beta = pieces[3 * k : 3 * k + 3]
            h = F.conv2d(h, weight.reshape(n * self.channels, c_in, 3, 3), padding=1, groups=n)
            h = F.batch_norm(h, None, None, gamma.reshape(-1), beta.reshape(-1), training=True)
            h = F.max_pool2d(torch.relu(h), 2)
            c_in = self.channels
        h = h.reshape(batch, n, -1).transpose(0, 1)  # [n, batch, channels * s * s], channel-major as nn.Flatten
        w1, b1, w2, b2 = pieces[3 * self.conv_layers:]
        hidden = b1.shape[1]
        h = torch.relu(torch.baddbmm(b1.unsqueeze(1), h, w1.view(n, -1, hidden)))
        return torch.baddbmm(b2.unsqueeze(1), h, w2.view(n, hidden, -1))


class ConvNetProblems(GlyphProblems):
    """Conv-nets classifying 10 random glyph classes (arguments of :class:`GlyphProblems`, and the network's).

    Args:
        channels: filters per conv layer (16).
        conv_layers: conv blocks (3).
        hidden: units of the fully connected hidden layer (32).

    Initialization: PyTorch's defaults, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for
    convolution and linear weights and biases, batch-norm scale 1 and shift 0.
    """

    name = "convnet"

    def __init__(self, n_classes: int = 10, batch_size: int = 128, classes: dict[str, int] | None = None,
                 images_per_class: int = 60, image_size: int = 28, device: str | torch.device = "cpu",
                 data_seed: int = 0, channels: int = 16, conv_layers: int = 3, hidden: int = 32) -> None:
        if channels < 1 or conv_layers < 1 or hidden < 1:
            raise ValueError(f"ConvNetProblems: need channels, conv_layers, hidden >= 1; got {channels}, {conv_layers}, {hidden}")
        if image_size >> conv_layers < 1:
            raise ValueError(f"ConvNetProblems: image_size {image_size} is too small for {conv_layers} 2x2 poolings")
        super().__init__(n_classes, batch_size, classes, images_per_class, image_size, device, data_seed)
        self.channels, self.conv_layers, self.hidden = channels, conv_layers, hidden
        self.features = channels * (image_size >> conv_layers) ** 2

    def _tensors(self) -> list[tuple[int, str, float, float]]:
        """``(size, layer type, init half-width, init offset)`` of every tensor, in layout order."""
        tensors, c_in = [], 1
        for _ in range(self.conv_layers):
            c = self.channels
            tensors += [(c * c_in * 9, "conv", 1 / math.sqrt(c_in * 9), 0.0), (c, "conv", 0.0, 1.0), (c, "conv", 0.0, 0.0)]
            c_in = c
        for fan_in, fan_out in ((self.features, self.hidden), (self.hidden, self.n_classes)):
            bound = 1 / math.sqrt(fan_in)
            tensors += [(fan_in * fan_out, "fc", bound, 0.0), (fan_out, "fc", bound, 0.0)]
        return tensors

    def layout(self) -> ParamLayout:
        tensors = self._tensors()
        return ParamLayout(tuple(t[0] for t in tensors), tuple(t[1] for t in tensors))

    def init_bounds(self) -> Tensor:
        return torch.cat([torch.full((size,), bound) for size, _, bound, _ in self._tensors()])

    def init_offsets(self) -> Tensor:
        return torch.cat([torch.full((size,), offset) for size, _, _, offset in self._tensors()])

    def make_batch(self, images, members, labels, theta0, seed) -> ConvNetBatch:
        return ConvNetBatch(images, members, labels, theta0, self.layout(), self.n_classes, self.batch_size, seed,
                            image_size=self.image_size, channels=self.channels, conv_layers=self.conv_layers)
