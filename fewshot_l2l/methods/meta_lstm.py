"""The Meta-LSTM of Ravi & Larochelle (ICLR 2017) as a few-shot method: the meta-learner
(:class:`fewshot_l2l.meta_learner.MetaLearner`, whose cell state is the learner's parameters) adapts the learner
by :func:`fewshot_l2l.adaptation.adapt`; the meta-loss is the query cross-entropy at the adapted parameters.

Defaults are ours where they differ from the authors' released code, whose configuration is one flag away
(:data:`AUTHORS_CONFIG`, ``scripts/train.py --authors-config``; docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..adaptation import InnerLoop, adapted_query_logits, default_inner_steps, run_episodes
from ..config import FewShotConfig, TrainingSettings
from ..data.episodes import Episode
from ..learner import ConvLearner
from ..meta_learner import AUTHORS_FORGET_BIAS_INIT, FORGET_BIAS_INIT, MetaLearner
from ..kernels import STEP_KERNELS
from ..settings import Choice, Flag, FloatRange, Int, Settings, default_of, setting
from .base import FewShotMethod


@dataclass
class MetaLSTMSettings(Settings):
    """The meta-learner itself."""

    TITLE: ClassVar[str] = "meta-learner"
    hidden_size: int = setting(20, Int(1), "units of the meta-learner's first layer (an LSTM)")
    forget_bias_init: tuple[float, float] = setting(FORGET_BIAS_INIT, FloatRange(),
                                                    "range of b_F's uniform initialization (ours: the PyTorch port's "
                                                    "U(4, 6); the authors': U(4, 5))")
    compile: bool = setting(False, Flag(), "torch.compile the meta-learner step (README 'Speed': measured, off by "
                                           "default)", resumable=True)
    step_kernel: str = setting("auto", Choice(STEP_KERNELS),
                               "the meta-learner step: the fused C++ / Triton kernel (auto: where built and applicable; "
                               "second order and torch.func run plain) or plain torch", resumable=True)


@dataclass
class MetaLSTMConfig(MetaLSTMSettings, InnerLoop, FewShotConfig):
    """All settings of a Meta-LSTM run (stored in every checkpoint)."""

    METHODS: ClassVar[tuple[str, ...]] = ("meta-lstm",)
    PRESETS: ClassVar[dict[str, tuple[str, dict]]] = {}  # "authors-config", below AUTHORS_CONFIG
    method: str = default_of(FewShotConfig, "method", "meta-lstm")
    grad_clip: float | None = default_of(TrainingSettings, "grad_clip", 0.25)

    def resolve(self) -> None:
        if self.inner_steps is None:
            self.inner_steps = default_inner_steps(self.k_shot)
        super().resolve()

    @classmethod
    def from_dict(cls, values: dict) -> "MetaLSTMConfig":
        """The configuration a checkpoint stored; a field it lacks (older code) gets the value that code used."""
        values = dict(values)
        if "val_query_bn" not in values:  # before the field, validation used the training query_bn
            values["val_query_bn"] = values.get("query_bn", "batch")
        return super().from_dict(values)


# The authors' released configuration (Ravi & Larochelle's Torch code) where ours differs: an update after
# every episode, b_F ~ U(4, 5), the gradient divided by the batch size a second time, batch-norm eps 1e-3,
# and the query set normalized with its own statistics in meta-training. One flag of train.py: --authors-config.
AUTHORS_CONFIG = {"meta_batch": 1, "forget_bias_init": AUTHORS_FORGET_BIAS_INIT, "divide_grad": True, "bn_eps": 1e-3,
                  "query_bn": "batch"}


MetaLSTMConfig.PRESETS = {"authors-config": (
    "the authors' released configuration where ours differs (overrides those settings): "
    + ", ".join(f"{key}={value}" for key, value in AUTHORS_CONFIG.items()), AUTHORS_CONFIG)}


def authors_config(config: MetaLSTMConfig) -> MetaLSTMConfig:
    """``config`` with :data:`AUTHORS_CONFIG`'s settings (everything else, e.g. inner steps, as given)."""
    return config.with_preset("authors-config")


class MetaLSTMMethod(FewShotMethod):
    """``meta-lstm``: the model is the meta-learner (the update rule's weights and ``theta_0``)."""

    Config = MetaLSTMConfig
    state_key = "meta_learner"
    has_inner_loop = True

    def __init__(self, config: MetaLSTMConfig, learner: ConvLearner, theta: Tensor) -> None:
        super().__init__(config, learner, theta)
        # The meta-learner draws its weights from torch's global generator (seeded by the caller, build_method).
        self.meta_learner = MetaLearner(theta, config.hidden_size, forget_bias_init=config.forget_bias_init,
                                        step_kernel=config.step_kernel)
        self.inner = config.section(InnerLoop)

    @property
    def model(self) -> MetaLearner:
        return self.meta_learner

    def start_training(self) -> None:
        if self.config.compile:
            self.meta_learner.compile_step()

    def training_loss(self, batch: Episode, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        result = run_episodes(self.meta_learner, self.learner, batch, self.inner, self.config.query_bn, generator)
        return result.loss, result.accuracy.mean()

    def query_logits(self, episode: Episode, query_bn: str, generator: torch.Generator,
                     inner_steps: int | None = None) -> Tensor:
        inner = self.inner if inner_steps is None else replace(self.inner, inner_steps=inner_steps)
        return adapted_query_logits(self.meta_learner, self.learner, episode, inner, query_bn, generator)
