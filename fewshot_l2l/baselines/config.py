"""Settings of a baseline run (stored in its checkpoints) and each method's published Omniglot hyper-parameters.

A field left ``None`` takes the method's value from :data:`PAPER_SETTINGS`:

* ``maml`` / ``fomaml`` - Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", ICML 2017, Omniglot 5-way: one inner SGD step of lr 0.4 in meta-training, three at test, meta-batch
  32 tasks, Adam 1e-3. (The issue's quick check used meta-batch 8; we keep the paper's 32: ``--meta-batch 8``
  gives the other.) ``fomaml`` drops the second-order terms (the paper's first-order approximation).
* ``metasgd`` - Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017: one
  adaptation step, in meta-training and at test, with a meta-learned learning rate per parameter initialized in
  U(0.005, 0.1); Adam 1e-3; meta-batch as MAML's (32).
* ``protonet`` - Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017: squared
  Euclidean distance to the class means of the embedded support set, one episode per update, Adam 1e-3 halved
  every 2,000 episodes. The paper meta-trains Omniglot with 60-way episodes; here it trains on the same
  ``n_way`` episodes as every other method (same sampler, same budget), which is ours.
* ``finetune`` - the "Baseline" of Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification",
  ICLR 2019: the CNN pre-trained as a classifier of all training classes (Adam 1e-3, mini-batches of 16
  images), then a fresh linear head fitted on each episode's support features (SGD lr 0.01, momentum 0.9,
  dampening 0.9, weight decay 1e-3, 100 steps; the paper's mini-batches of 4 replaced by the whole support
  set, ours) with the backbone frozen. Its ``episodes`` budget counts pre-training mini-batches.

Batch norm on the query set: ``query_bn`` in training (default ``batch``, transductive, as the reference
implementations), ``val_query_bn`` in validation (default ``support``, the evaluation protocol of every method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..data import ROTATE_CHOICES
from ..learner import EVAL_QUERY_BN, QUERY_BN_MODES
from . import BASELINES

# inner_steps / test_inner_steps / inner_lr: the inner loop (None: the method has none); meta_batch: episodes (or,
# for finetune, images) per update; lr: Adam's.
PAPER_SETTINGS: dict[str, dict] = {
    "maml": {"inner_steps": 1, "test_inner_steps": 3, "inner_lr": 0.4, "meta_batch": 32, "lr": 1e-3},
    "fomaml": {"inner_steps": 1, "test_inner_steps": 3, "inner_lr": 0.4, "meta_batch": 32, "lr": 1e-3},
    "metasgd": {"inner_steps": 1, "test_inner_steps": 1, "inner_lr": None, "meta_batch": 32, "lr": 1e-3},
    "protonet": {"inner_steps": None, "test_inner_steps": None, "inner_lr": None, "meta_batch": 1, "lr": 1e-3},
    "finetune": {"inner_steps": None, "test_inner_steps": None, "inner_lr": None, "meta_batch": 16, "lr": 1e-3},
}
METASGD_LR_INIT = (0.005, 0.1)  # Li et al. 2017: each per-parameter learning rate starts in U(0.005, 0.1)
PROTONET_LR_HALVING_EPISODES = 2000  # Snell et al. 2017: Adam's learning rate halved every 2,000 episodes


@dataclass
class BaselineConfig:
    """All settings of one baseline run (stored in every checkpoint); ``None``: the method's :data:`PAPER_SETTINGS`."""

    method: str = "maml"
    dataset: str = "glyphs"
    data: str | None = None
    rotate: str = "auto"
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    inner_steps: int | None = None
    test_inner_steps: int | None = None
    inner_lr: float | None = None
    meta_batch: int | None = None
    lr: float | None = None
    episodes: int = 2000  # meta-training episodes in total (finetune: pre-training mini-batches)
    max_minutes: float | None = None
    hidden_channels: int = 32
    query_bn: str = "batch"
    val_query_bn: str = EVAL_QUERY_BN
    val_every: int = 400
    val_episodes: int = 200
    device: str = "auto"
    seed: int = 0
    out: str = "runs/default"
    resume: bool = False
    max_nonfinite: int = 10

    def __post_init__(self) -> None:
        if self.method not in BASELINES:
            raise ValueError(f"BaselineConfig: method must be one of {BASELINES}, got {self.method!r}")
        paper = PAPER_SETTINGS[self.method]
        for name, value in paper.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
            elif value is None:
                raise ValueError(f"BaselineConfig: {self.method} has no {name} (it has no inner loop)")
        for name in ("n_way", "k_shot", "n_query", "meta_batch", "episodes", "val_every", "val_episodes",
                     "hidden_channels", "max_nonfinite", "inner_steps", "test_inner_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"BaselineConfig: {name} must be >= 1, got {value}")
        if self.n_way < 2:
            raise ValueError(f"BaselineConfig: n_way must be >= 2, got {self.n_way}")
        if self.rotate not in ROTATE_CHOICES:
            raise ValueError(f"BaselineConfig: rotate must be one of {ROTATE_CHOICES}, got {self.rotate!r}")
        for name in ("query_bn", "val_query_bn"):
            if getattr(self, name) not in QUERY_BN_MODES:
                raise ValueError(f"BaselineConfig: {name} must be one of {QUERY_BN_MODES}, got {getattr(self, name)!r}")
        for name in ("lr", "inner_lr", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"BaselineConfig: {name} must be a positive finite number, got {value}")

    @classmethod
    def from_dict(cls, values: dict) -> "BaselineConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
