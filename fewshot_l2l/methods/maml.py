"""MAML, first-order MAML and Meta-SGD through ``learn2learn.algorithms`` (``MAML``, ``MetaSGD``: ``clone()``,
``adapt()``) on :class:`.network.ConvNet`.

* ``maml`` / ``fomaml`` - Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", ICML 2017, Omniglot 5-way: one inner SGD step of lr 0.4 in meta-training, three at test (the paper's
  appendix; their code evaluates after each of 10), meta-batch 32 tasks, Adam 1e-3. ``fomaml`` drops the
  second-order terms (the paper's first-order approximation; their code's ``--stop_grad``). Two departures, each
  measured (docs/results/maml_5shot_diagnosis.md) and one setting away:

  - the inner loss is the mean cross-entropy of the support set, as the paper writes it; the authors' code
    (cbfinn/maml, ``utils.py: xent``, ``maml.py: task_metalearn``) divides each image's cross-entropy by K and sums
    over the N*K images, N times the mean (``inner_loss="sum-div-k"``): with lr 0.4 a step of 2.0 on the mean
    loss, which in this package's CNN overshoots at 1-shot and 5-shot, second and first order alike;
  - second-order MAML is tested with the steps it was meta-trained for (``test_inner_steps`` None: ``inner_steps``,
    1): its meta-gradient tunes the initialization (and each layer's effective step) for exactly those steps, and
    at 5-shot two more overshoot (the support loss rises again). ``fomaml``, whose first-order meta-gradient does not
    differentiate through the step (its support loss keeps falling over 5 steps), keeps the paper's 3;
    ``test_inner_steps=3`` gives MAML the paper's.
* ``metasgd`` - Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017: one
  adaptation step, in meta-training and at test, with a meta-learned learning rate per parameter initialized in
  U(0.005, 0.1); Adam 1e-3; meta-batch as MAML's (32).

learn2learn is imported when such a method is built (:func:`fewshot_l2l.extras.require`), so the core package
imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FewShotConfig, TrainingSettings
from ..data.episodes import Episode
from ..extras import require
from ..learner import ConvLearner
from ..settings import Choice, Float, Int, Settings, default_of, setting
from .base import FewShotMethod
from .network import ConvNet

METASGD_LR_INIT = (0.005, 0.1)  # Li et al. 2017: each per-parameter learning rate starts in U(0.005, 0.1)
# The support loss of an inner step: "mean", averaged over the support images (the papers' text); "sum-div-k", each
# support image's cross-entropy divided by K (shots), summed over the N*K images (Finn et al.'s code, cbfinn/maml
# utils.py xent: tf.gradients of that vector takes its sum), N times the first.
INNER_LOSSES = ("mean", "sum-div-k")
PAPER_TEST_INNER_STEPS = 3  # Finn et al. 2017, appendix A.1: the 5-way Omniglot models evaluated with 3 steps


@dataclass
class GradientSteps(Settings):
    """The inner loop of the MAML family: gradient steps on the support set."""

    TITLE: ClassVar[str] = "inner loop"
    inner_steps: int = setting(1, Int(1), "inner gradient steps in training")
    test_inner_steps: int | None = setting(None, Int(1), "the same at validation and test (None: maml: --inner-steps, "
                                           "the steps it is meta-trained for; fomaml: 3, the paper's)", optional=True)


@dataclass
class InnerLoss(Settings):
    TITLE: ClassVar[str] = "inner loop"
    inner_loss: str = setting(
        "mean", Choice(INNER_LOSSES), "support loss of the inner steps: mean, the mean cross-entropy of the support "
        "set (the papers' text); sum-div-k, summed over the N*K support images and divided by K, N times the mean's "
        "step (Finn et al.'s code; with --inner-lr 0.4 it overshoots in this CNN: docs/results/maml_5shot_diagnosis.md)")

    @classmethod
    def from_dict(cls, values: dict):
        values = dict(values)
        values.setdefault("inner_loss", "mean")  # checkpoints from before the field took the mean loss
        return super().from_dict(values)


@dataclass
class InnerLearningRate(Settings):
    TITLE: ClassVar[str] = "inner loop"
    inner_lr: float = setting(0.4, Float(), "learning rate of the inner SGD steps")


@dataclass
class MAMLConfig(InnerLearningRate, InnerLoss, GradientSteps, FewShotConfig):
    """All settings of a MAML or first-order MAML run (Finn et al.'s Omniglot settings by default, but for the two
    measured departures of the module docstring)."""

    METHODS: ClassVar[tuple[str, ...]] = ("maml", "fomaml")
    method: str = default_of(FewShotConfig, "method", "maml")
    meta_batch: int = default_of(TrainingSettings, "meta_batch", 32)

    def resolve(self) -> None:
        if self.test_inner_steps is None:  # checkpoints store the resolved number: an old one keeps its 3
            self.test_inner_steps = self.inner_steps if self.method == "maml" else PAPER_TEST_INNER_STEPS
        super().resolve()


@dataclass
class MetaSGDConfig(InnerLoss, GradientSteps, FewShotConfig):
    """All settings of a Meta-SGD run (Li et al.'s: the inner learning rates are learned, one step at test too; the
    mean support loss of their equations, no code of theirs being public)."""

    METHODS: ClassVar[tuple[str, ...]] = ("metasgd",)
    method: str = default_of(FewShotConfig, "method", "metasgd")
    meta_batch: int = default_of(TrainingSettings, "meta_batch", 32)
    test_inner_steps: int = default_of(GradientSteps, "test_inner_steps", 1)


def learn2learn_algorithms(method: str):
    """``learn2learn.algorithms``, or a ``ModuleNotFoundError`` naming the set-up that installs it."""
    return require("learn2learn.algorithms", "l2l", f"--method {method} (learn2learn)")


class MAML(FewShotMethod):
    """``maml`` (second order) or ``fomaml`` (first order): the model is learn2learn's wrapper of the CNN."""

    Config = MAMLConfig
    has_inner_loop = True

    def __init__(self, config: MAMLConfig, learner: ConvLearner, theta: Tensor) -> None:
        super().__init__(config, learner, theta)
        self.net = ConvNet(learner, theta)
        self.wrapper = self.wrap(learn2learn_algorithms(config.method))

    def wrap(self, algorithms) -> nn.Module:
        return algorithms.MAML(self.net, lr=self.config.inner_lr, first_order=self.config.method == "fomaml")

    @property
    def model(self) -> nn.Module:
        return self.wrapper

    def support_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss an inner step descends on a support set's ``logits`` ``[N*K, N]`` (``inner_loss``)."""
        if self.config.inner_loss == "mean":
            return F.cross_entropy(logits, labels)
        shots = labels.numel() / logits.shape[1]  # K of this episode (evaluation may change the configuration's)
        return F.cross_entropy(logits, labels, reduction="sum") / shots

    def adapted(self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool | None = None):
        """A clone of the wrapper adapted by ``steps`` gradient steps on one support set (``first_order``:
        learn2learn's override, ``None`` for the method's own)."""
        learner = self.wrapper.clone()
        for _ in range(steps):
            learner.adapt(self.support_loss(learner(support_x), support_y), first_order=first_order)
        return learner

    def training_loss(self, batch: Episode, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        losses, accuracies = [], []
        for b in range(batch.n_episodes):  # one adapted copy per task: learn2learn's loop
            learner = self.adapted(batch.support_x[b], batch.support_y[b], self.config.inner_steps)
            logits = learner.module.query_logits(batch.support_x[b], batch.query_x[b], self.config.query_bn)
            losses.append(F.cross_entropy(logits, batch.query_y[b]))
            accuracies.append((logits.argmax(1) == batch.query_y[b]).float().mean())
        return torch.stack(losses).mean(), torch.stack(accuracies).mean().detach()

    def query_logits(self, episode: Episode, query_bn: str, generator: torch.Generator,
                     inner_steps: int | None = None) -> Tensor:
        steps = self.config.test_inner_steps if inner_steps is None else inner_steps
        logits = []
        for b in range(episode.n_episodes):
            with torch.enable_grad():  # the inner loop's gradients, without a meta-gradient graph
                learner = self.adapted(episode.support_x[b], episode.support_y[b], steps, first_order=True)
            logits.append(learner.module.query_logits(episode.support_x[b], episode.query_x[b], query_bn))
        return torch.stack(logits)


class MetaSGD(MAML):
    """``metasgd``: MAML's loop with a meta-learned learning rate per parameter (learn2learn's ``MetaSGD``)."""

    Config = MetaSGDConfig

    def wrap(self, algorithms) -> nn.Module:
        generator = torch.Generator().manual_seed(self.config.seed)
        lrs = nn.ParameterList([nn.Parameter(torch.empty_like(p).uniform_(*METASGD_LR_INIT, generator=generator))
                                for p in self.net.parameters()])
        return algorithms.MetaSGD(self.net, first_order=False, lrs=lrs)
