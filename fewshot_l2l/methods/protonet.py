"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017): the CNN's conv blocks as the embedding, logits
the negative squared Euclidean distance to each class's mean support embedding, no inner loop; one episode per
update, Adam 1e-3 halved every 2,000 episodes (``lr_schedule="halving"``). The paper meta-trains Omniglot with
60-way episodes; here it trains on the same ``n_way`` episodes as every other method (same sampler, same budget),
which is ours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FewShotConfig, TrainingSettings
from ..data.episodes import Episode
from ..learner import ConvLearner
from ..settings import default_of
from .base import FewShotMethod
from .network import ConvNet


@dataclass
class ProtoNetConfig(FewShotConfig):
    """All settings of a Prototypical Networks run (Snell et al.'s by default)."""

    METHODS: ClassVar[tuple[str, ...]] = ("protonet",)
    method: str = default_of(FewShotConfig, "method", "protonet")
    meta_batch: int = default_of(TrainingSettings, "meta_batch", 1)
    lr_schedule: str = default_of(TrainingSettings, "lr_schedule", "halving")


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
    """``-||query - c_k||^2`` ``[N_q, n_way]`` for support features ``[N_s, D]`` with labels ``[N_s]`` in
    ``[0, n_way)`` and query features ``[N_q, D]``; ``c_k`` the mean of class ``k``'s support features."""
    counts = torch.bincount(support_y, minlength=n_way).to(support.dtype)
    prototypes = torch.zeros(n_way, support.shape[1], dtype=support.dtype, device=support.device)
    prototypes = prototypes.index_add(0, support_y, support) / counts[:, None]
    return -(query[:, None, :] - prototypes[None]).pow(2).sum(-1)


class PrototypicalNetwork(FewShotMethod):
    """``protonet``: the embedding is :meth:`.network.ConvNet.query_embedding` (the head is unused)."""

    Config = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig, learner: ConvLearner, theta: Tensor) -> None:
        super().__init__(config, learner, theta)
        self.net = ConvNet(learner, theta)

    @property
    def model(self) -> nn.Module:
        return self.net

    def logits(self, episode: Episode, b: int, query_bn: str) -> Tensor:
        support, query = self.net.query_embedding(episode.support_x[b], episode.query_x[b], query_bn)
        return prototype_logits(support, episode.support_y[b], query, self.config.n_way)

    def training_loss(self, batch: Episode, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        logits = [self.logits(batch, b, self.config.query_bn) for b in range(batch.n_episodes)]
        loss = torch.stack([F.cross_entropy(z, batch.query_y[b]) for b, z in enumerate(logits)]).mean()
        accuracy = torch.stack([(z.argmax(1) == batch.query_y[b]).float().mean() for b, z in enumerate(logits)]).mean()
        return loss, accuracy.detach()

    def query_logits(self, episode: Episode, query_bn: str, generator: torch.Generator,
                     inner_steps: int | None = None) -> Tensor:
        return torch.stack([self.logits(episode, b, query_bn) for b in range(episode.n_episodes)])
