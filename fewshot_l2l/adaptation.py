"""One meta-learning episode, end to end: the whole algorithm in one place.

For a meta-batch of ``B`` episodes the meta-learner starts every learner at the
meta-learned ``theta_0`` and, for ``inner_steps`` steps, feeds it the loss and
gradient on (a mini-batch of) the support set; the meta-loss is the query-set
cross-entropy at the final parameters::

    theta = theta_0
    for t in 1..T:
        loss_t, grad_t = L_support(theta), dL_support/dtheta     # one forward/backward
        theta = MetaLearner(theta, grad_t, loss_t)                # theta_t = sig(f) theta - sig(i) grad
    meta_loss = L_query(theta)

By default ``loss_t`` and ``grad_t`` are treated as constants when the
meta-gradient is taken (the paper's first-order simplification), so every
inner forward/backward runs on a detached copy of ``theta``; the meta-gradient
still flows through the ``theta`` recursion into the gates, layer 1 and
``theta_0``. ``second_order=True`` keeps the full meta-gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .data.episodes import Episode
from .learner import ConvLearner
from .meta_learner import MetaLearner, MetaLSTMState
from .settings import Choice, Flag, Int, Settings, setting

DEFAULT_INNER_STEPS = {1: 12, 5: 8}  # the authors' released configuration (1-shot: 12, 5-shot: 8)
BATCHED_LEARNER_MODES = ("auto", "on", "off")


@dataclass
class InnerLoop(Settings):
    """How the meta-learner adapts the learner to an episode: what :func:`adapt` does, in training, validation,
    evaluation and the gate plots alike (one object, so that none of them runs another inner loop)."""

    TITLE: ClassVar[str] = "inner loop"
    inner_steps: int | None = setting(None, Int(1), "meta-learner updates per episode (default: 12 for 1-shot, 8 "
                                                    "for 5-shot, the authors' configuration)", optional=True)
    inner_batch_size: int | None = setting(None, Int(1), "support images per inner step (default: all)", optional=True)
    second_order: bool = setting(False, Flag(), "keep gradients through the learner's gradient (meta-training)")
    divide_grad: bool = setting(False, Flag(), "divide the learner's gradient by the step's support images a second "
                                               "time, as the authors' code does (part of --authors-config)")
    amp: bool = setting(False, Flag(), "bfloat16 autocast for the learner's forward passes (for CUDA)", resumable=True)
    batched_learner: str = setting("auto", Choice(BATCHED_LEARNER_MODES),
                                   "run the learner vmapped over the meta-batch (auto: on CUDA; slower on CPU)",
                                   resumable=True)

    def resolve(self) -> None:
        super().resolve()
        if self.inner_steps is None:
            self.refuse("inner_steps must be set (a Meta-LSTM configuration sets it from k_shot)")


def default_inner_steps(k_shot: int) -> int:
    """Inner steps of the authors' configuration: 12 for 1-shot, 8 for 5-shot (and more shots)."""
    return DEFAULT_INNER_STEPS[1] if k_shot < 5 else DEFAULT_INNER_STEPS[5]


@dataclass
class EpisodeResult:
    """Outcome of :func:`run_episodes`."""

    loss: Tensor  # mean query cross-entropy over the meta-batch (the meta-loss)
    accuracy: Tensor  # query accuracy of each episode, [B]


def learner_autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast for the learner's convolutions when ``enabled`` (the ``--amp`` flag).

    Only the learner runs under it: the meta-learner's cell state is the
    learner's parameters, and rounding them to bfloat16 every step would erase
    updates smaller than 2^-8 of a weight. Losses and gradients come back in float32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def use_batched_learner(mode: str, device: torch.device) -> bool:
    """Whether the learner runs batched over the meta-batch (``--batched-learner``).

    ``"auto"``: on CUDA, where the per-episode loop launches a few hundred small
    kernels per inner step; elsewhere the loop, which measured faster on CPU (support-set forward
    and backward of a meta-batch of 4, 1 thread: 0.33 s looped, 0.86 s batched at 84x84x3;
    0.014 and 0.016 s at 28x28x1).
    ``"on"`` / ``"off"`` force either path; both compute the same numbers up to float rounding.
    """
    if mode not in BATCHED_LEARNER_MODES:
        raise ValueError(f"batched_learner must be one of {BATCHED_LEARNER_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def mean_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each episode: logits ``[B, N, n_way]``, labels ``[B, N]`` -> ``[B]``."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape).mean(1)


def support_losses(learner: ConvLearner, theta: Tensor, images: Tensor, labels: Tensor, batched: bool = False) -> Tensor:
    """Cross-entropy of each episode: ``theta`` ``[B, P]``, images ``[B, N, C, H, W]`` -> ``[B]``.

    A plain loop over episodes, or with ``batched`` one vmapped forward
    (:meth:`ConvLearner.batched_logits`, see :func:`use_batched_learner`); either
    way the gradient of all episodes comes from one backward call.
    """
    if batched:
        return mean_cross_entropy(learner.batched_logits(theta, images), labels)
    return torch.stack(
        [F.cross_entropy(learner.logits(theta[b], images[b]), labels[b]) for b in range(theta.shape[0])]
    )


def adapt(
    meta_learner: MetaLearner,
    learner: ConvLearner,
    support_x: Tensor,
    support_y: Tensor,
    inner: InnerLoop | int,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, MetaLSTMState], None] | None = None,
) -> Tensor:
    """Run the inner loop on support sets ``[B, N, ...]``; return the final parameters ``[B, P]``.

    Args:
        inner: the inner loop's settings (:class:`InnerLoop`), or just its number of steps. Its fields:
            ``inner_steps`` meta-learner updates per episode; ``inner_batch_size`` support images per step
            (``None``: the whole support set every step; smaller batches walk through one random permutation of
            the support set, wrapping around); ``second_order`` keeps gradients through the learner's loss and
            gradient; ``amp`` runs the learner's forward passes under bfloat16 autocast (:func:`learner_autocast`);
            ``divide_grad`` divides the gradient of the (already batch-averaged) support loss by the number of
            support images of the step a second time before the meta-learner sees it, as the authors' code does
            (part of ``--authors-config``; off by default, ours); ``batched_learner``: :func:`use_batched_learner`.
        generator: draws the permutation when ``inner_batch_size`` is set.
        on_step: called as ``on_step(step, state)`` after each update (``step`` from 0), to observe
            the meta-learner, e.g. its gates (:func:`fewshot_l2l.gates.gate_statistics`).
    """
    inner = as_inner_loop(inner)
    n_support = support_x.shape[1]
    use_all = inner.inner_batch_size is None or inner.inner_batch_size >= n_support
    batched = use_batched_learner(inner.batched_learner, support_x.device)
    if not use_all:
        order = torch.randperm(n_support, generator=generator).to(support_x.device)
    # Under no_grad (evaluation) there is no meta-gradient to keep.
    second_order = inner.second_order and torch.is_grad_enabled()
    theta = meta_learner.initial_theta(support_x.shape[0])
    state = meta_learner.initial_state(theta)
    for step in range(inner.inner_steps):
        if use_all:
            x, y = support_x, support_y
        else:
            index = order[(step * inner.inner_batch_size + torch.arange(inner.inner_batch_size, device=order.device))
                          % n_support]
            x, y = support_x[:, index], support_y[:, index]
        point = theta if second_order else theta.detach().requires_grad_()
        with torch.enable_grad(), learner_autocast(x.device, inner.amp):
            losses = support_losses(learner, point, x, y, batched)
            (grad,) = torch.autograd.grad(losses.sum(), point, create_graph=second_order)
        if inner.divide_grad:
            grad = grad / x.shape[1]
        if not second_order:
            losses = losses.detach()
        theta, state = meta_learner(theta, grad, losses, state)
        if on_step is not None:
            on_step(step, state)
    return theta


def as_inner_loop(inner: InnerLoop | int) -> InnerLoop:
    """``inner`` itself, or the default inner loop of ``inner`` steps."""
    if isinstance(inner, InnerLoop):
        return inner
    return InnerLoop(inner_steps=inner)


def query_logits(learner: ConvLearner, theta: Tensor, episode: Episode, query_bn: str, inner: InnerLoop) -> Tensor:
    """Logits ``[B, N_query, n_way]`` of the query sets at the adapted parameters ``theta`` ``[B, P]``, the query
    set normalized as ``query_bn`` says (:mod:`fewshot_l2l.learner`), the learner run as ``inner`` runs it."""
    with learner_autocast(theta.device, inner.amp):
        if use_batched_learner(inner.batched_learner, theta.device):
            return learner.batched_query_logits(theta, episode.support_x, episode.query_x, query_bn)
        return torch.stack([learner.query_logits(theta[b], episode.support_x[b], episode.query_x[b], query_bn)
                            for b in range(episode.n_episodes)])


def adapted_query_logits(meta_learner: MetaLearner, learner: ConvLearner, episode: Episode, inner: InnerLoop | int,
                         query_bn: str, generator: torch.Generator | None = None) -> Tensor:
    """:func:`adapt` to every episode of ``episode``, then :func:`query_logits` (what evaluation scores)."""
    inner = as_inner_loop(inner)
    theta = adapt(meta_learner, learner, episode.support_x, episode.support_y, inner, generator)
    return query_logits(learner, theta, episode, query_bn, inner)


def run_episodes(
    meta_learner: MetaLearner,
    learner: ConvLearner,
    episode: Episode,
    inner: InnerLoop | int,
    query_bn: str = "batch",
    generator: torch.Generator | None = None,
) -> EpisodeResult:
    """Adapt to every episode of the meta-batch (:func:`adapt`) and score the query sets: the meta-loss (mean
    query cross-entropy) and each episode's accuracy."""
    inner = as_inner_loop(inner)
    logits = adapted_query_logits(meta_learner, learner, episode, inner, query_bn, generator)
    if use_batched_learner(inner.batched_learner, logits.device):
        loss = mean_cross_entropy(logits, episode.query_y).mean()
    else:  # each episode's mean cross-entropy, then their mean, as the per-episode learner loop computes it
        loss = torch.stack([F.cross_entropy(logits[b], episode.query_y[b]) for b in range(episode.n_episodes)]).mean()
    correct = (logits.argmax(dim=2) == episode.query_y).float().mean(1)
    return EpisodeResult(loss, correct.detach())
