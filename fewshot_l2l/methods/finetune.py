"""Fine-tuning, the "Baseline" of Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification",
ICLR 2019: the CNN pre-trained as a classifier of all training classes (Adam 1e-3, mini-batches of 16 images), then
a fresh linear head fitted on each episode's support features (SGD lr 0.01, momentum 0.9, dampening 0.9, weight
decay 1e-3, 100 steps; the paper's mini-batches of 4 replaced by the whole support set, ours) with the backbone
frozen. Its ``episodes`` budget counts pre-training mini-batches."""

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
from ..settings import default_of
from .base import FewShotMethod
from .network import ConvNet

@dataclass
class FineTuneConfig(FewShotConfig):
    """All settings of a fine-tuning run (Chen et al.'s by default; ``meta_batch``: images per mini-batch)."""

    METHODS: ClassVar[tuple[str, ...]] = ("finetune",)
    method: str = default_of(FewShotConfig, "method", "finetune")
    meta_batch: int = default_of(TrainingSettings, "meta_batch", 16)


# Chen et al. 2019, the new classifier: SGD, lr 0.01, momentum 0.9, dampening 0.9, weight decay 1e-3, 100 steps.
HEAD_LR, HEAD_MOMENTUM, HEAD_DAMPENING, HEAD_WEIGHT_DECAY, HEAD_STEPS = 0.01, 0.9, 0.9, 1e-3, 100


def fit_linear_heads(features: Tensor, labels: Tensor, n_way: int, steps: int = HEAD_STEPS,
                     generator: torch.Generator | None = None,
                     init: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Linear heads ``(weight [B, n_way, D], bias [B, n_way])`` fitted to support ``features`` ``[B, N, D]`` with
    ``labels`` ``[B, N]`` by Chen et al.'s SGD, every episode at once.

    Each head starts as ``nn.Linear``'s default initialization (U(-1/sqrt(D), 1/sqrt(D)), from ``generator``);
    the loss is the sum over episodes of each one's mean cross-entropy, so every head follows its own gradient.
    ``init`` gives the starting ``(weight, bias)`` instead.
    """
    batch, _, dim = features.shape
    if init is None:
        bound = 1 / math.sqrt(dim)
        init = (torch.empty(batch, n_way, dim).uniform_(-bound, bound, generator=generator),
                torch.empty(batch, n_way).uniform_(-bound, bound, generator=generator))
    weight, bias = (t.detach().clone().to(features).requires_grad_() for t in init)
    optimizer = torch.optim.SGD([weight, bias], lr=HEAD_LR, momentum=HEAD_MOMENTUM, dampening=HEAD_DAMPENING,
                                weight_decay=HEAD_WEIGHT_DECAY)
    features = features.detach()
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            logits = torch.baddbmm(bias[:, None, :], features, weight.transpose(1, 2))
            F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").div(labels.shape[1]).backward()
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
        weight, bias = fit_linear_heads(support, episode.support_y, self.config.n_way, generator=generator)
        return torch.baddbmm(bias[:, None, :], query, weight.transpose(1, 2))
