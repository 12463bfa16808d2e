"""What a few-shot method is to the rest of the package: the one interface every method implements, the Meta-LSTM
included.

A method is built from its configuration, a learner (the 4-block CNN, :class:`fewshot_l2l.learner.ConvLearner`)
and the learner's initial parameters ``theta`` (the same under the same seed for every method); it has

* a ``model``: the ``nn.Module`` that Adam trains and checkpoints save (its state under :attr:`state_key`);
* :meth:`~FewShotMethod.training_loss`: the loss of one update's batch (a meta-batch of episodes, or for
  fine-tuning a mini-batch of images), which the one training loop minimizes;
* :meth:`~FewShotMethod.query_logits`: the query-set logits of episodes after the method's adaptation to their
  support sets, which validation and evaluation score (:func:`fewshot_l2l.evaluation.evaluate`).

Everything else (samplers, the loop, checkpoints, distributed training, evaluation) is shared
(:mod:`fewshot_l2l.training`). Writing a method: subclass :class:`FewShotMethod`, give it a configuration class
(a :class:`~fewshot_l2l.config.FewShotConfig` with its own settings), register it in :mod:`fewshot_l2l.methods`
(docs/design.md shows one in 80 lines).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..config import FewShotConfig
from ..data.episodes import Episode, EpisodeSampler, FewShotSplit
from ..learner import ConvLearner, LearnerConfig

EVAL_BATCH_SIZE = 8  # episodes evaluated at once (the default of evaluate.py's --batch-size)


class FewShotMethod(ABC):
    """One few-shot method (see the module docstring).

    Args:
        config: the run's settings (an instance of the method's :attr:`Config`).
        learner: the CNN architecture.
        theta: the CNN's initial flat parameters ``[P]``.
    """

    Config: ClassVar[type[FewShotConfig]]  # the method's configuration class
    state_key: ClassVar[str] = "model"  # the checkpoint entry holding model.state_dict()
    has_inner_loop: ClassVar[bool] = False  # evaluation may then change its number of steps (evaluate's inner_steps)
    budget_unit: ClassVar[str] = "episodes"  # what the episodes budget counts (fine-tuning: mini-batches)

    def __init__(self, config: FewShotConfig, learner: ConvLearner, theta: Tensor) -> None:
        self.config, self.learner = config, learner

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """Everything that is trained (and saved in checkpoints)."""

    @classmethod
    def learner_config(cls, config: FewShotConfig, image_shape: tuple[int, int, int],
                       n_train_classes: int | None) -> LearnerConfig:
        """The learner for images of ``image_shape`` ``(C, H, W)``; its classifier is ``n_way`` wide (fine-tuning
        overrides it: one output per training class)."""
        channels, height, _ = image_shape
        return LearnerConfig(channels, height, config.n_way, config.hidden_channels, bn_eps=config.bn_eps)

    @classmethod
    def episodes_per_update(cls, config: FewShotConfig) -> int:
        """What one update counts against the ``episodes`` budget: its episodes (fine-tuning: 1 mini-batch)."""
        return config.meta_batch

    def start_training(self) -> None:
        """Called once the model is on its device, before the optimizer is built: what only training needs
        (e.g. compiling a step)."""

    @classmethod
    def training_episodes(cls, config: FewShotConfig) -> tuple[int, int, int]:
        """``(n_way, k_shot, n_query)`` of the training episodes: by default those of validation and test
        (Prototypical Networks may train on wider ones); what the loop checks the train split can give."""
        return config.n_way, config.k_shot, config.n_query

    def training_sampler(self, split: FewShotSplit, seed: int) -> Any:
        """The source of training batches on ``split``, seeded by ``seed``: anything with ``sample(n)`` and a
        ``generator`` (whose state checkpoints carry); by default the sampler of :meth:`training_episodes`."""
        return EpisodeSampler(split, *self.training_episodes(self.config), seed=seed)

    @abstractmethod
    def training_loss(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(loss, accuracy)`` of one update's ``batch`` (from :meth:`training_sampler`): the loss to minimize, and
        the mean training accuracy (detached). ``generator`` draws what the method draws (the same on every rank)."""

    @abstractmethod
    def query_logits(self, episode: Episode, query_bn: str, generator: torch.Generator,
                     inner_steps: int | None = None) -> Tensor:
        """Logits ``[B, N_query, n_way]`` of each episode's query set after the method's adaptation to its support
        set (called under ``torch.no_grad``). ``query_bn`` normalizes the query set (:mod:`fewshot_l2l.learner`);
        ``generator`` draws what the adaptation draws; ``inner_steps`` overrides the test-time inner steps of a
        method that has them (:attr:`has_inner_loop`)."""
