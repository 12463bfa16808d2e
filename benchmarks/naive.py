"""The naive yardstick of the speed benchmark: one episode at a time, the learner re-built as ``nn.Module`` layers.

:func:`naive_episode` is deliberately naive and kept as the reference for ``speedup_vs_naive``: one episode at a
time, and at every inner step the learner is re-materialized as a ``torch.nn`` module from the flat parameter
vector (what the authors' released code and its PyTorch port do with their learner copies). It computes the same
numbers as :func:`fewshot_l2l.adaptation.run_episodes` (tested in ``tests/``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot_l2l.data.episodes import Episode
from fewshot_l2l.learner import ConvLearner
from fewshot_l2l.meta_learner import MetaLearner, meta_lstm_step


def naive_module(learner: ConvLearner) -> nn.Sequential:
    """The learner CNN as ordinary ``torch.nn`` layers (parameters in the flat vector's order)."""
    config = learner.config
    layers: list[nn.Module] = []
    channels = config.in_channels
    for _ in range(config.n_blocks):
        layers += [
            nn.Conv2d(channels, config.hidden_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(config.hidden_channels, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels = config.hidden_channels
    layers += [nn.Flatten(), nn.Linear(learner.feature_dim, config.n_way)]
    return nn.Sequential(*layers)


def naive_episode(
    meta_learner: MetaLearner,
    learner: ConvLearner,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    inner_steps: int,
) -> tuple[Tensor, Tensor]:
    """One episode, naively: ``(query loss, query accuracy)`` for unbatched ``[N, C, H, W]`` tensors.

    Each inner step builds a fresh ``nn.Module``, copies the flat parameters
    into it, and takes the loss and the gradient from ``loss.backward()`` and the
    modules' ``.grad`` fields. The meta-learner's step is
    :func:`~fewshot_l2l.meta_learner.meta_lstm_step` under plain autograd (no
    recomputation, never compiled), so the naive figures do not depend on the
    fast path's options. The query loss is differentiable with respect to
    the meta-learner (``torch.func.functional_call`` on views of the final
    parameters), so ``loss.backward()`` gives the same first-order meta-gradient
    as the fast path. Query batch norm uses the query batch's statistics
    (``query_bn="batch"``).
    """
    theta = meta_learner.initial_theta(1)
    state = meta_learner.initial_state(theta)
    for _ in range(inner_steps):
        module = naive_module(learner).to(device=theta.device, dtype=theta.dtype)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta[0].detach().clone(), module.parameters())
        with torch.enable_grad():
            loss = F.cross_entropy(module(support_x), support_y)
            loss.backward()
        grad = torch.cat([param.grad.flatten() for param in module.parameters()])
        theta, state = meta_lstm_step(meta_learner.weights(), theta, grad[None], loss.detach()[None], state, meta_learner.p)
    module = naive_module(learner).to(device=theta.device, dtype=theta.dtype)
    names = [name for name, _ in module.named_parameters()]
    final = dict(zip(names, learner.unflatten(theta[0])))
    logits = torch.func.functional_call(module, final, (query_x,))
    loss = F.cross_entropy(logits, query_y)
    accuracy = (logits.argmax(dim=1) == query_y).float().mean()
    return loss, accuracy.detach()


def naive_loss(meta_learner: MetaLearner, learner: ConvLearner, episode: Episode, inner_steps: int) -> tuple[Tensor, Tensor]:
    """Mean query loss and per-episode accuracies of a meta-batch, one naive episode after the other."""
    results = [
        naive_episode(
            meta_learner, learner, episode.support_x[b], episode.support_y[b], episode.query_x[b], episode.query_y[b],
            inner_steps,
        )
        for b in range(episode.n_episodes)
    ]
    return torch.stack([loss for loss, _ in results]).mean(), torch.stack([acc for _, acc in results])
