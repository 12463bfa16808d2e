"""Fine-tuning, the "Baseline" of Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification",
ICLR 2019: the CNN pre-trained as a classifier of all training classes (Adam 1e-3, mini-batches of 16 images), then
a fresh linear head fitted on each episode's support features with the backbone frozen, as their code fits it
(wyharveychen/CloserLookFewShot, ``methods/baselinefinetune.py: set_forward_adaptation``): SGD lr 0.01, momentum
0.9, dampening 0.9, weight decay 1e-3, 100 epochs, each a random order of the support images in mini-batches of 4
(the last one smaller), the mean cross-entropy of each (``head_fit="mini-batches"``). ``head_fit="full-batch"``:
100 steps on the whole support set instead (this package's earlier default). Its ``episodes`` budget counts
pre-training mini-batches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FewShotConfig, TrainingSettings
from ..data.episodes import Episode, FewShotSplit
from ..learner import ConvLearner, LearnerConfig
from ..settings import Choice, Settings, default_of, setting
from .base import FewShotMethod
from .network import ConvNet

# How the new head is fitted on the support features: Chen et al.'s code, or full-batch steps (the earlier default).
HEAD_FITS = ("mini-batches", "full-batch")


@dataclass
class HeadSettings(Settings):
    """The linear head fitted on each episode's support set."""

    TITLE: ClassVar[str] = "new head"
    head_fit: str = setting("mini-batches", Choice(HEAD_FITS),
                            "mini-batches: 100 epochs of random mini-batches of 4 support images (Chen et al.'s code); "
                            "full-batch: 100 steps on the whole support set")

    @classmethod
    def from_dict(cls, values: dict):
        values = dict(values)
        values.setdefault("head_fit", "full-batch")  # checkpoints from before the field fitted full-batch heads
        return super().from_dict(values)


@dataclass
class FineTuneConfig(HeadSettings, FewShotConfig):
    """All settings of a fine-tuning run (Chen et al.'s by default; ``meta_batch``: images per mini-batch)."""

    METHODS: ClassVar[tuple[str, ...]] = ("finetune",)
    method: str = default_of(FewShotConfig, "method", "finetune")
    meta_batch: int = default_of(TrainingSettings, "meta_batch", 16)


# Chen et al. 2019, the new classifier (methods/baselinefinetune.py): SGD, lr 0.01, momentum 0.9, dampening 0.9,
# weight decay 1e-3; 100 epochs of mini-batches of 4 support images (full-batch: 100 steps).
HEAD_LR, HEAD_MOMENTUM, HEAD_DAMPENING, HEAD_WEIGHT_DECAY, HEAD_EPOCHS, HEAD_BATCH = 0.01, 0.9, 0.9, 1e-3, 100, 4


def support_orders(n_episodes: int, n_support: int, epochs: int, generator: torch.Generator | None = None) -> Tensor:
    """``[epochs, n_episodes, n_support]``: each epoch's random order of every episode's support images (Chen et
    al.'s ``np.random.permutation`` per epoch), drawn from ``generator`` on the CPU."""
    return torch.rand(epochs, n_episodes, n_support, generator=generator).argsort(dim=2)


def fit_linear_heads(features: Tensor, labels: Tensor, n_way: int, head_fit: str = "mini-batches",
                     generator: torch.Generator | None = None, init: tuple[Tensor, Tensor] | None = None,
                     orders: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Linear heads ``(weight [B, n_way, D], bias [B, n_way])`` fitted to support ``features`` ``[B, N, D]`` with
    ``labels`` ``[B, N]`` by Chen et al.'s SGD, every episode at once.

    ``head_fit="mini-batches"``: :data:`HEAD_EPOCHS` epochs, each going through the support set in the episode's
    order of that epoch (``orders`` ``[epochs, B, N]``, by default :func:`support_orders` from ``generator``) in
    mini-batches of :data:`HEAD_BATCH` (the last one smaller), one step each; ``"full-batch"``: :data:`HEAD_EPOCHS`
    steps on the whole support set. Each head starts as ``nn.Linear``'s default initialization (U(-1/sqrt(D),
    1/sqrt(D)), from ``generator``; ``init`` gives the starting ``(weight, bias)`` instead); each step's loss is the
    sum over episodes of each one's mean cross-entropy over its mini-batch, so every head follows its own gradient.
    """
    if head_fit not in HEAD_FITS:
        raise ValueError(f"fit_linear_heads: head_fit must be one of {HEAD_FITS}, got {head_fit!r}")
    batch, n_support, dim = features.shape
    if init is None:
        bound = 1 / math.sqrt(dim)
        init = (torch.empty(batch, n_way, dim).uniform_(-bound, bound, generator=generator),
                torch.empty(batch, n_way).uniform_(-bound, bound, generator=generator))
    weight, bias = (t.detach().clone().to(features).requires_grad_() for t in init)
    optimizer = torch.optim.SGD([weight, bias], lr=HEAD_LR, momentum=HEAD_MOMENTUM, dampening=HEAD_DAMPENING,
                                weight_decay=HEAD_WEIGHT_DECAY)
    features, labels = features.detach(), labels.to(features.device)
    if head_fit == "full-batch":
        orders = torch.arange(n_support).expand(HEAD_EPOCHS, batch, n_support)  # one step of the whole set per epoch
        size = n_support
    else:
        orders = support_orders(batch, n_support, HEAD_EPOCHS, generator) if orders is None else orders
        size = HEAD_BATCH
    episode = torch.arange(batch, device=features.device)[:, None]
    with torch.enable_grad():
        for order in orders.to(features.device):  # an epoch: the support set in that order, [B, N]
            x, y = features[episode, order], labels[episode, order]
            for start in range(0, n_support, size):
                optimizer.zero_grad(set_to_none=True)
                logits = torch.baddbmm(bias[:, None, :], x[:, start:start + size], weight.transpose(1, 2))
                part = y[:, start:start + size]
                F.cross_entropy(logits.flatten(0, 1), part.flatten(), reduction="sum").div(part.shape[1]).backward()
                optimizer.step()
    return weight.detach(), bias.detach()


class ImageBatches:
    """Mini-batches of training images with their class labels, drawn with replacement from ``generator``."""

    def __init__(self, split: FewShotSplit, seed: int) -> None:
        self.split = split
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n_images: int) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(self.split.labels), (n_images,), generator=self.generator)
        index = index.to(self.split.images.device)
        return self.split.images[index].float().div_(255.0), self.split.labels[index]


class FineTune(FewShotMethod):
    """``finetune``: training steps are mini-batches of ``meta_batch`` training images with their class labels."""

    Config = FineTuneConfig
    budget_unit = "mini-batches"

    def __init__(self, config: FineTuneConfig, learner: ConvLearner, theta: Tensor) -> None:
        super().__init__(config, learner, theta)
        self.net = ConvNet(learner, theta)

    @classmethod
    def learner_config(cls, config: FineTuneConfig, image_shape: tuple[int, int, int],
                       n_train_classes: int | None) -> LearnerConfig:
        if n_train_classes is None:
            raise ValueError("finetune: its classifier has one output per training class: give n_train_classes")
        channels, height, _ = image_shape  # a classifier of every training class
        return LearnerConfig(channels, height, n_train_classes, config.hidden_channels, bn_eps=config.bn_eps)

    @property
    def model(self) -> nn.Module:
        return self.net

    @classmethod
    def episodes_per_update(cls, config: FineTuneConfig) -> int:
        return 1  # the budget counts mini-batches

    def training_sampler(self, split: FewShotSplit, seed: int) -> ImageBatches:
        return ImageBatches(split, seed)

    def training_loss(self, batch: tuple[Tensor, Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self.net(images)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().detach()

    def query_logits(self, episode: Episode, query_bn: str, generator: torch.Generator,
                     inner_steps: int | None = None) -> Tensor:
        pairs = [self.net.query_embedding(episode.support_x[b], episode.query_x[b], query_bn)
                 for b in range(episode.n_episodes)]
        support, query = (torch.stack(parts) for parts in zip(*pairs))
        weight, bias = fit_linear_heads(support, episode.support_y, self.config.n_way, self.config.head_fit,
                                        generator=generator)
        return torch.baddbmm(bias[:, None, :], query, weight.transpose(1, 2))
