"""What the meta-learner learned: its gates over the inner steps, per parameter tensor of the learner.

The meta-learner updates every learner coordinate as
``theta_t = sigmoid(f_t) * theta_{t-1} - sigmoid(i_t) * grad_t`` (:mod:`fewshot_l2l.meta_learner`):
``sigmoid(i_t)`` is a learned, per-coordinate and per-step learning rate and
``sigmoid(f_t)`` a learned shrinkage of the parameters (1: keep them). Ravi &
Larochelle (2017, Fig. 2) look at these values to see what was learned, e.g.
whether the learning rate decays over the steps like a schedule.

:func:`gate_statistics` runs the same inner loop as evaluation
(:func:`fewshot_l2l.adaptation.adapt`, without a meta-gradient) on batches of
episodes and reduces both gates, at every step, over the coordinates of each
parameter tensor (``conv0.weight``, ``bn0.weight``, ..., ``head.bias``) and over
all episodes. Only sums, sums of squares, minima and maxima are kept (float64,
``[inner_steps, n_tensors]``), so any number of episodes fits in memory; that is
also why the spread is a standard deviation and not quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from .adaptation import InnerLoop, adapt, as_inner_loop
from .data.episodes import Episode
from .learner import ConvLearner
from .meta_learner import MetaLearner, MetaLSTMState

STATISTICS = ("mean", "std", "min", "max")


@dataclass
class GateStatistics:
    """Statistics of ``sigmoid(i_t)`` (``input``) and ``sigmoid(f_t)`` (``forget``).

    ``input[s]`` and ``forget[s]`` for ``s`` in :data:`STATISTICS` are float64
    tensors ``[inner_steps, len(names)]``: row ``t`` is the gate that produced
    ``theta_{t+1}``, column ``k`` is taken over every coordinate of parameter tensor
    ``names[k]`` in every episode. ``std`` is the population standard deviation.
    """

    names: list[str]
    inner_steps: int
    n_episodes: int
    input: dict[str, Tensor]
    forget: dict[str, Tensor]

    def table(self) -> str:
        """A Markdown table: per parameter tensor, the mean of both gates at the first and the last step."""
        last = self.inner_steps
        rows = [f"| parameter | input gate, step 1 | input gate, step {last} | forget gate, step 1 | forget gate, step {last} |",
                "| --- | --- | --- | --- | --- |"]
        for k, name in enumerate(self.names):
            cells = [f"{gate['mean'][t, k]:.4g} ± {gate['std'][t, k]:.2g}" for gate in (self.input, self.forget) for t in (0, -1)]
            rows.append(f"| {name} | {' | '.join(cells)} |")
        return "\n".join(rows)


class _Accumulator:
    """Per-step, per-tensor running sums, sums of squares, minima and maxima of one gate ``[B, P]``."""

    def __init__(self, sizes: list[int], inner_steps: int, device: torch.device) -> None:
        n = len(sizes)
        self.sizes = torch.tensor(sizes, dtype=torch.float64, device=device)
        # owner[p] = index of the parameter tensor that coordinate p belongs to (theta is their concatenation).
        self.owner = torch.repeat_interleave(torch.arange(n, device=device), torch.tensor(sizes, device=device))
        self.sum = torch.zeros(inner_steps, n, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros_like(self.sum)
        self.min = torch.full_like(self.sum, torch.inf)
        self.max = torch.full_like(self.sum, -torch.inf)

    def add(self, step: int, gate: Tensor) -> None:
        gate = gate.double()
        self.sum[step].index_add_(0, self.owner, gate.sum(0))
        self.sum_sq[step].index_add_(0, self.owner, gate.square().sum(0))
        self.min[step].scatter_reduce_(0, self.owner, gate.amin(0), "amin")
        self.max[step].scatter_reduce_(0, self.owner, gate.amax(0), "amax")

    def result(self, n_episodes: int) -> dict[str, Tensor]:
        count = self.sizes * n_episodes
        mean = self.sum / count
        variance = (self.sum_sq / count - mean.square()).clamp_(min=0.0)  # float64: cancellation ~1e-16
        return {"mean": mean.cpu(), "std": variance.sqrt().cpu(), "min": self.min.cpu(), "max": self.max.cpu()}


@torch.no_grad()
def gate_statistics(
    meta_learner: MetaLearner,
    learner: ConvLearner,
    episodes: Iterable[Episode],
    inner: InnerLoop | int,
    generator: torch.Generator | None = None,
) -> GateStatistics:
    """Gate statistics of ``meta_learner`` adapting ``learner`` to each batch in ``episodes``.

    ``inner`` (the checkpoint's inner loop, e.g. ``MetaLSTMMethod.inner``) and ``generator`` as in
    :func:`fewshot_l2l.adaptation.adapt`; with the sampler and generator seeded as
    :func:`fewshot_l2l.evaluation.evaluate` seeds them, these are the gates of the
    episodes that evaluation scores.
    """
    if meta_learner.n_params != learner.n_params:
        raise ValueError(f"gate_statistics: the meta-learner has {meta_learner.n_params} coordinates, "
                         f"the learner {learner.n_params} parameters")
    device = meta_learner.theta_init.device
    inner = as_inner_loop(inner)
    input_gate = _Accumulator(learner.param_sizes, inner.inner_steps, device)
    forget_gate = _Accumulator(learner.param_sizes, inner.inner_steps, device)

    def record(step: int, state: MetaLSTMState) -> None:
        input_gate.add(step, torch.sigmoid(state.i))
        forget_gate.add(step, torch.sigmoid(state.f))

    n_episodes = 0
    for episode in episodes:
        adapt(meta_learner, learner, episode.support_x, episode.support_y, inner, generator, on_step=record)
        n_episodes += episode.n_episodes
    if n_episodes == 0:
        raise ValueError("gate_statistics: no episodes")
    names = [name for name, _ in learner.param_shapes]
    return GateStatistics(names, inner.inner_steps, n_episodes, input_gate.result(n_episodes), forget_gate.result(n_episodes))
