"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017): the CNN's conv blocks as the embedding, logits
the negative squared Euclidean distance to each class's mean support embedding, no inner loop; Adam 1e-3 halved
every 2,000 episodes (:mod:`.config`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.episodes import Episode
from .base import BaselineMethod
from .config import PROTONET_LR_HALVING_EPISODES


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
    """``-||query - c_k||^2`` ``[N_q, n_way]`` for support features ``[N_s, D]`` with labels ``[N_s]`` in
    ``[0, n_way)`` and query features ``[N_q, D]``; ``c_k`` the mean of class ``k``'s support features."""
    counts = torch.bincount(support_y, minlength=n_way).to(support.dtype)
    prototypes = torch.zeros(n_way, support.shape[1], dtype=support.dtype, device=support.device)
    prototypes = prototypes.index_add(0, support_y, support) / counts[:, None]
    return -(query[:, None, :] - prototypes[None]).pow(2).sum(-1)


class PrototypicalNetwork(BaselineMethod):
    """``protonet``: the embedding is :meth:`.network.ConvNet.query_embedding` (the head is unused)."""

    @property
    def model(self) -> nn.Module:
        return self.net

    def learning_rate(self, episodes_done: int) -> float:
        return self.config.lr * 0.5 ** (episodes_done // PROTONET_LR_HALVING_EPISODES)

    def logits(self, episode: Episode, b: int, query_bn: str) -> Tensor:
        support, query = self.net.query_embedding(episode.support_x[b], episode.query_x[b], query_bn)
        return prototype_logits(support, episode.support_y[b], query, self.config.n_way)

    def training_loss(self, batch: Episode) -> tuple[Tensor, Tensor]:
        logits = [self.logits(batch, b, self.config.query_bn) for b in range(batch.n_episodes)]
        loss = torch.stack([F.cross_entropy(z, batch.query_y[b]) for b, z in enumerate(logits)]).mean()
        accuracy = torch.stack([(z.argmax(1) == batch.query_y[b]).float().mean() for b, z in enumerate(logits)]).mean()
        return loss, accuracy.detach()

    def episode_accuracies(self, episode: Episode, query_bn: str, inner_steps: int | None = None,
                           generator: torch.Generator | None = None) -> Tensor:
        return torch.stack([(self.logits(episode, b, query_bn).argmax(1) == episode.query_y[b]).float().mean()
                            for b in range(episode.n_episodes)])
