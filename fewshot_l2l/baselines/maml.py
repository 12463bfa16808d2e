"""MAML, first-order MAML and Meta-SGD through ``learn2learn.algorithms`` (``MAML``, ``MetaSGD``: ``clone()``,
``adapt()``) on :class:`.network.ConvNet`; hyper-parameters in :mod:`.config` (Finn et al. 2017; Li et al. 2017).

learn2learn is imported when such a method is built (:func:`fewshot_l2l.extras.require`), so the core package
imports without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.episodes import Episode
from ..extras import require
from .base import BaselineMethod
from .config import METASGD_LR_INIT

L2L_METHODS = ("maml", "fomaml", "metasgd")


def learn2learn_algorithms(method: str):
    """``learn2learn.algorithms``, or a ``ModuleNotFoundError`` naming the set-up that installs it."""
    return require("learn2learn.algorithms", "l2l", f"--method {method} (learn2learn)")


class MAMLFamily(BaselineMethod):
    """``maml`` (second order), ``fomaml`` (first order) or ``metasgd`` (per-parameter learned learning rates)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        algorithms = learn2learn_algorithms(self.config.method)
        if self.config.method == "metasgd":
            generator = torch.Generator().manual_seed(self.config.seed)
            lrs = nn.ParameterList([nn.Parameter(torch.empty_like(p).uniform_(*METASGD_LR_INIT, generator=generator))
                                    for p in self.net.parameters()])
            self.wrapper = algorithms.MetaSGD(self.net, first_order=False, lrs=lrs)
        else:
            self.wrapper = algorithms.MAML(self.net, lr=self.config.inner_lr, first_order=self.config.method == "fomaml")

    @property
    def model(self) -> nn.Module:
        return self.wrapper

    def adapted(self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool | None = None):
        """A clone of the wrapper adapted by ``steps`` gradient steps on one support set (``first_order``:
        learn2learn's override, ``None`` for the method's own)."""
        learner = self.wrapper.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support_x), support_y), first_order=first_order)
        return learner

    def training_loss(self, batch: Episode) -> tuple[Tensor, Tensor]:
        losses, accuracies = [], []
        for b in range(batch.n_episodes):  # one adapted copy per task: learn2learn's loop
            learner = self.adapted(batch.support_x[b], batch.support_y[b], self.config.inner_steps)
            logits = learner.module.query_logits(batch.support_x[b], batch.query_x[b], self.config.query_bn)
            losses.append(F.cross_entropy(logits, batch.query_y[b]))
            accuracies.append((logits.argmax(1) == batch.query_y[b]).float().mean())
        return torch.stack(losses).mean(), torch.stack(accuracies).mean().detach()

    def episode_accuracies(self, episode: Episode, query_bn: str, inner_steps: int | None = None,
                           generator: torch.Generator | None = None) -> Tensor:
        steps = self.config.test_inner_steps if inner_steps is None else inner_steps
        accuracies = []
        for b in range(episode.n_episodes):
            with torch.enable_grad():  # the inner loop's gradients, without a meta-gradient graph
                learner = self.adapted(episode.support_x[b], episode.support_y[b], steps, first_order=True)
            logits = learner.module.query_logits(episode.support_x[b], episode.query_x[b], query_bn)
            accuracies.append((logits.argmax(1) == episode.query_y[b]).float().mean())
        return torch.stack(accuracies)
