"""What every baseline method provides to the shared training loop and evaluation (:mod:`.training`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from ..data.episodes import Episode, EpisodeSampler, FewShotSplit
from ..learner import ConvLearner
from .config import BaselineConfig
from .network import ConvNet


class BaselineMethod(ABC):
    """One method: its trainable ``model``, its training batches and its few-shot predictions.

    Args:
        config: the run's settings.
        learner: the CNN architecture (its ``n_way`` is the classifier's width: the episode's ``n_way``, or the
            number of training classes for ``finetune``).
        theta: the CNN's initial flat parameters (the Meta-LSTM's ``theta_0`` under the same seed).
        train_split: the split training batches are drawn from.
    """

    def __init__(self, config: BaselineConfig, learner: ConvLearner, theta: Tensor, train_split: FewShotSplit) -> None:
        self.config, self.learner, self.train_split = config, learner, train_split
        self.net = ConvNet(learner, theta)
        self.sampler = EpisodeSampler(train_split, config.n_way, config.k_shot, config.n_query, seed=config.seed)

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """Everything that is trained (and saved in checkpoints)."""

    @property
    def generator(self) -> torch.Generator:
        """The generator of the training batches (its state goes into checkpoints, for an exact resume)."""
        return self.sampler.generator

    @property
    def episodes_per_update(self) -> int:
        return self.config.meta_batch

    def sample(self) -> Any:
        """The training data of one update (by default a meta-batch of episodes from the shared sampler)."""
        return self.sampler.sample(self.config.meta_batch)

    def learning_rate(self, episodes_done: int) -> float:
        """Adam's learning rate after ``episodes_done`` training episodes (constant unless the paper schedules it)."""
        return self.config.lr

    @abstractmethod
    def training_loss(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(loss, accuracy)`` of one update's batch: the loss to minimize and the mean training accuracy (detached)."""

    @abstractmethod
    def episode_accuracies(self, episode: Episode, query_bn: str, inner_steps: int | None = None,
                           generator: torch.Generator | None = None) -> Tensor:
        """Query accuracy of each episode ``[B]`` after the method's adaptation to its support set (called under
        ``torch.no_grad``; ``inner_steps`` overrides the test-time inner steps of methods that have them; ``generator``
        draws whatever the adaptation draws, e.g. finetune's fresh heads)."""
