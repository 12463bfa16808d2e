"""Fine-tuning, the "Baseline" of Chen et al. (ICLR 2019): pre-train the CNN as an ordinary classifier of all
training classes, then, per episode, fit a fresh linear head on the frozen support features (:mod:`.config`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.episodes import Episode
from .base import BaselineMethod

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


class FineTune(BaselineMethod):
    """``finetune``: training steps are mini-batches of ``meta_batch`` training images with their class labels."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_generator = torch.Generator().manual_seed(self.config.seed)

    @property
    def model(self) -> nn.Module:
        return self.net

    @property
    def generator(self) -> torch.Generator:
        return self.batch_generator

    @property
    def episodes_per_update(self) -> int:
        return 1  # the budget counts mini-batches

    def sample(self) -> tuple[Tensor, Tensor]:
        split = self.train_split
        index = torch.randint(len(split.labels), (self.config.meta_batch,), generator=self.batch_generator)
        index = index.to(split.images.device)
        return split.images[index].float().div_(255.0), split.labels[index]

    def training_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self.net(images)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().detach()

    def episode_accuracies(self, episode: Episode, query_bn: str, inner_steps: int | None = None,
                           generator: torch.Generator | None = None) -> Tensor:
        pairs = [self.net.query_embedding(episode.support_x[b], episode.query_x[b], query_bn)
                 for b in range(episode.n_episodes)]
        support, query = (torch.stack(parts) for parts in zip(*pairs))
        weight, bias = fit_linear_heads(support, episode.support_y, self.config.n_way, generator=generator)
        logits = torch.baddbmm(bias[:, None, :], query, weight.transpose(1, 2))
        return (logits.argmax(2) == episode.query_y).float().mean(1)
