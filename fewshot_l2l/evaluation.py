"""Few-shot evaluation: mean accuracy and 95% confidence interval over seeded test episodes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .adaptation import run_episodes
from .data.episodes import Episode, EpisodeSampler, FewShotSplit
from .learner import EVAL_QUERY_BN, ConvLearner
from .meta_learner import MetaLearner
from .utils import nonfinite_tensors


@dataclass
class EvalResult:
    """Accuracy (a fraction in [0, 1]) with its 95% confidence half-width."""

    accuracy: float
    ci95: float
    n_episodes: int
    accuracies: list[float]

    def __str__(self) -> str:
        return f"{100 * self.accuracy:.2f}% +- {100 * self.ci95:.2f}% (95% CI, {self.n_episodes} episodes)"


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and ``1.96 * std / sqrt(n)`` with the sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95: no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * std / math.sqrt(n)


def evaluate(
    meta_learner: MetaLearner,
    learner: ConvLearner,
    split: FewShotSplit,
    n_way: int,
    k_shot: int,
    n_query: int,
    inner_steps: int,
    n_episodes: int = 600,
    seed: int = 0,
    batch_size: int = 8,
    inner_batch_size: int | None = None,
    query_bn: str = EVAL_QUERY_BN,
    progress: bool = True,
    amp: bool = False,
    divide_grad: bool = False,
    batched_learner: str = "auto",
) -> EvalResult:
    """Accuracy over ``n_episodes`` episodes of ``split`` drawn from ``seed`` (same seed, same episodes).

    Runs without building a meta-gradient graph (only the learner's own
    gradients are computed), ``batch_size`` episodes at a time; ``amp``, ``divide_grad`` and ``batched_learner``
    as in :func:`fewshot_l2l.adaptation.adapt`; ``query_bn`` (default ``"support"``, not transductive) as in
    :mod:`fewshot_l2l.learner`. Raises ``ValueError`` for a meta-learner holding NaN or
    infinite values, or episodes whose query loss is not finite. On CPU, call :func:`fewshot_l2l.utils.tune_cpu_allocator`
    first (as ``fewshot-evaluate`` does) for speed.
    """
    if n_episodes < 1:
        raise ValueError(f"evaluate: n_episodes must be >= 1, got {n_episodes}")
    bad = nonfinite_tensors(meta_learner.state_dict())
    if bad:  # NaN logits argmax to class 0: the accuracy would read as chance, silently
        raise ValueError(f"evaluate: the meta-learner holds NaN or infinite values ({', '.join(bad[:3])}); "
                         "it comes from a diverged run and cannot be evaluated")

    def episode_accuracies(episode: Episode, generator: torch.Generator, first: int) -> torch.Tensor:
        result = run_episodes(
            meta_learner, learner, episode, inner_steps, inner_batch_size, query_bn, generator=generator, amp=amp,
            divide_grad=divide_grad, batched_learner=batched_learner,
        )
        if not math.isfinite(result.loss.item()):
            raise ValueError(
                f"evaluate: the adapted learner's query loss is not finite on episodes {first}-"
                f"{first - 1 + episode.n_episodes} of split {split.name!r} (seed {seed}): the inner loop "
                "diverged, so an accuracy would be meaningless"
            )
        return result.accuracy

    return seeded_accuracy(episode_accuracies, split, n_way, k_shot, n_query, n_episodes, seed, batch_size, progress)


def seeded_accuracy(
    episode_accuracies: Callable[[Episode, torch.Generator, int], torch.Tensor],
    split: FewShotSplit,
    n_way: int,
    k_shot: int,
    n_query: int,
    n_episodes: int,
    seed: int,
    batch_size: int,
    progress: bool,
) -> EvalResult:
    """The one evaluation loop of every method: ``n_episodes`` episodes of ``split`` drawn from ``seed``,
    ``batch_size`` at a time, so that the same seed and batch size give every method the same episodes.

    ``episode_accuracies(episode, generator, first)`` returns one accuracy per episode of the batch
    (``first``: the 1-based number of its first episode, for messages); ``generator``, seeded with
    ``seed``, is for the method's own random draws (e.g. inner mini-batches). Runs under ``torch.no_grad``.
    """
    sampler = EpisodeSampler(split, n_way, k_shot, n_query, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    accuracies: list[float] = []
    bar = tqdm(total=n_episodes, desc=f"eval {split.name}", unit="ep", disable=not progress, leave=False)
    with torch.no_grad():
        while len(accuracies) < n_episodes:
            episode = sampler.sample(min(batch_size, n_episodes - len(accuracies)))
            accuracies.extend(episode_accuracies(episode, generator, len(accuracies) + 1).tolist())
            bar.set_postfix(acc=f"{sum(accuracies) / len(accuracies):.3f}", refresh=False)
            bar.update(episode.n_episodes)
    bar.close()
    mean, ci95 = mean_ci95(accuracies)
    return EvalResult(mean, ci95, n_episodes, accuracies)
