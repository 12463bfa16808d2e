"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017): the CNN's conv blocks as the embedding, logits
the negative squared Euclidean distance to each class's mean support embedding, no inner loop; one episode per
update, Adam 1e-3.

The authors' code (jakesnell/prototypical-networks, ``scripts/train/few_shot/run_train.py`` and ``train.py``)
halves Adam's rate every 20 epochs of 100 episodes (``StepLR(decay_every=20, gamma=0.5)``), i.e. every 2,000
episodes (``lr_schedule="halving"``), on a run whose length its early stopping sets (200 epochs of patience). Under
a fixed budget that schedule is blind to the budget: after 20,000 episodes the rate is below 1e-6. Here it is
halved ``lr_halvings`` times at equal shares of the run's progress (``lr_schedule="halving-over-run"``,
:mod:`fewshot_l2l.schedules`). Their Omniglot training episodes are 60-way with 5 queries per class, validation and
test 5-way with 15 (``data.way 60``, ``data.query 5``, ``data.test_way 5``, ``data.test_query 15``):
``train_way`` / ``train_query`` give the training episodes their own way and queries; by default they are the
``n_way`` / ``n_query`` episodes every other method trains on (ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FewShotConfig, TrainingSettings
from ..data.episodes import Episode
from ..learner import ConvLearner
from ..settings import Int, Settings, default_of, setting
from .base import FewShotMethod
from .network import ConvNet


@dataclass
class TrainingEpisodes(Settings):
    """Prototypical Networks' training episodes, which may be wider than the validation and test ones."""

    TITLE: ClassVar[str] = "training episodes"
    train_way: int | None = setting(None, Int(2), "classes of each training episode (None: --n-way; validation and "
                                    "test stay --n-way); Snell et al. train Omniglot 60-way", optional=True)
    train_query: int | None = setting(None, Int(1), "query images per class of each training episode (None: "
                                      "--n-query); Snell et al.: 5 at 60-way", optional=True)


@dataclass
class ProtoNetConfig(TrainingEpisodes, FewShotConfig):
    """All settings of a Prototypical Networks run (Snell et al.'s by default, the schedule fitted to the budget)."""

    METHODS: ClassVar[tuple[str, ...]] = ("protonet",)
    method: str = default_of(FewShotConfig, "method", "protonet")
    meta_batch: int = default_of(TrainingSettings, "meta_batch", 1)
    lr_schedule: str = default_of(TrainingSettings, "lr_schedule", "halving-over-run")

    @classmethod
    def from_dict(cls, values: dict) -> "ProtoNetConfig":
        values = dict(values)
        values.setdefault("lr_schedule", "halving")  # checkpoints from before the field halved every 2,000 episodes
        return super().from_dict(values)


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

    @classmethod
    def training_episodes(cls, config: ProtoNetConfig) -> tuple[int, int, int]:
        return (config.n_way if config.train_way is None else config.train_way, config.k_shot,
                config.n_query if config.train_query is None else config.train_query)

    def logits(self, episode: Episode, b: int, query_bn: str, n_way: int) -> Tensor:
        support, query = self.net.query_embedding(episode.support_x[b], episode.query_x[b], query_bn)
        return prototype_logits(support, episode.support_y[b], query, n_way)

    def training_loss(self, batch: Episode, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n_way = self.training_episodes(self.config)[0]
        logits = [self.logits(batch, b, self.config.query_bn, n_way) for b in range(batch.n_episodes)]
        loss = torch.stack([F.cross_entropy(z, batch.query_y[b]) for b, z in enumerate(logits)]).mean()
        accuracy = torch.stack([(z.argmax(1) == batch.query_y[b]).float().mean() for b, z in enumerate(logits)]).mean()
        return loss, accuracy.detach()

    def query_logits(self, episode: Episode, query_bn: str, generator: torch.Generator,
                     inner_steps: int | None = None) -> Tensor:
        return torch.stack([self.logits(episode, b, query_bn, self.config.n_way) for b in range(episode.n_episodes)])
