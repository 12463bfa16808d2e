"""Few-shot evaluation of any method: mean accuracy and 95% confidence interval over seeded test episodes.

The tables, validation and ``scripts/evaluate.py`` all go through :func:`evaluate`, which draws the episodes of a
seed in the same order for every method (:func:`seeded_accuracy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .data.episodes import Episode, EpisodeSampler, FewShotSplit
from .finite import nonfinite_tensors
from .learner import EVAL_QUERY_BN
from .methods.base import EVAL_BATCH_SIZE, FewShotMethod


class NonFiniteEvaluationError(ValueError):
    """The model or its adapted query logits hold NaN or infinite values: an accuracy would be meaningless."""


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
    method: FewShotMethod,
    split: FewShotSplit,
    n_episodes: int = 600,
    seed: int = 0,
    batch_size: int = EVAL_BATCH_SIZE,
    query_bn: str = EVAL_QUERY_BN,
    k_shot: int | None = None,
    n_query: int | None = None,
    inner_steps: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Accuracy of ``method`` over ``n_episodes`` episodes of ``split`` drawn from ``seed`` (same seed and batch
    size, same episodes, for every method).

    The episodes are ``method.config``'s (``n_way``; ``k_shot`` and ``n_query`` unless given), adapted
    ``batch_size`` at a time without a meta-gradient graph (:meth:`FewShotMethod.query_logits`), the query set
    normalized as ``query_bn`` says (default ``"support"``, not transductive; :mod:`fewshot_l2l.learner`);
    ``inner_steps`` changes the test-time inner steps of a method that has an inner loop. Raises ``ValueError`` for
    a model holding NaN or infinite values, or episodes whose query logits are not finite (NaN logits would
    argmax to class 0 and read as chance accuracy, silently).
    """
    config = method.config
    if n_episodes < 1:
        raise ValueError(f"evaluate: n_episodes must be >= 1, got {n_episodes}")
    if inner_steps is not None and not method.has_inner_loop:
        raise ValueError(f"evaluate: {config.method} has no inner loop, so no inner_steps to change")
    bad = nonfinite_tensors(method.model.state_dict())
    if bad:
        raise NonFiniteEvaluationError(f"evaluate: the {config.method} model holds NaN or infinite values ({', '.join(bad[:3])}); "
                         "it comes from a diverged run and cannot be evaluated")

    def episode_accuracies(episode: Episode, generator: torch.Generator, first: int) -> torch.Tensor:
        logits = method.query_logits(episode, query_bn, generator, inner_steps)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteEvaluationError(
                f"evaluate: the {config.method} query logits are not finite on episodes {first}-"
                f"{first - 1 + episode.n_episodes} of split {split.name!r} (seed {seed}): the adaptation "
                "diverged, so an accuracy would be meaningless"
            )
        return (logits.argmax(dim=2) == episode.query_y).float().mean(1)

    k_shot = config.k_shot if k_shot is None else k_shot
    n_query = config.n_query if n_query is None else n_query
    return seeded_accuracy(episode_accuracies, split, config.n_way, k_shot, n_query, n_episodes, seed, batch_size,
                           progress)


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
    # Closed however the loop ends, so that a message after it (an error, Ctrl-C) starts a line of its own.
    with torch.no_grad(), tqdm(total=n_episodes, desc=f"eval {split.name}", unit="ep", disable=not progress,
                               leave=False) as bar:
        while len(accuracies) < n_episodes:
            episode = sampler.sample(min(batch_size, n_episodes - len(accuracies)))
            accuracies.extend(episode_accuracies(episode, generator, len(accuracies) + 1).tolist())
            bar.set_postfix(acc=f"{sum(accuracies) / len(accuracies):.3f}", refresh=False)
            bar.update(episode.n_episodes)
    mean, ci95 = mean_ci95(accuracies)
    return EvalResult(mean, ci95, n_episodes, accuracies)
