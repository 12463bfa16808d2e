"""The settings every few-shot run shares, in small groups (:mod:`fewshot_l2l.settings` declares each once):

* :class:`EpisodeSettings` - the N-way K-shot episodes and the data they come from;
* :class:`LearnerSettings` - the 4-block CNN every method trains (:mod:`fewshot_l2l.learner`);
* :class:`TrainingSettings` - the outer loop: budget, meta-batch, Adam, validation;
* :class:`RunSettings` - where and how a run runs: device, seed, folder, resume, time budget (also the learned
  optimizers' runs, :mod:`fewshot_l2l.optim.rule_training`).

:class:`FewShotConfig` composes the four; each method's configuration adds its own options and defaults
(:mod:`fewshot_l2l.methods`: e.g. :class:`~fewshot_l2l.methods.meta_lstm.MetaLSTMConfig`). Everything a run does
is in its configuration, which every checkpoint stores (as a flat dict).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from .data import DATASETS, ROTATE_CHOICES
from .devices import device_argument
from .learner import BN_EPS, EVAL_QUERY_BN, QUERY_BN_MODES
from .schedules import LR_HALVINGS, LR_SCHEDULES
from .settings import SEED_MAX, Choice, Flag, Float, Int, Settings, Text, setting

QUERY_BN_HELP = "batch: the query set's own statistics (transductive); support: the support set's"


@dataclass
class EpisodeSettings(Settings):
    """The episodes: which data, how many classes, shots and queries."""

    TITLE: ClassVar[str] = "episodes"
    HELP_ORDER: ClassVar[int] = 0
    dataset: str = setting("glyphs", Choice(DATASETS), "glyphs (embedded, no download) or a built dataset (--data)")
    data: str | None = setting(None, Text(), "dataset file (HDF5, fewshot-prepare-data) for omniglot / miniimagenet",
                               optional=True, resumable=True)
    rotate: str = setting("auto", Choice(ROTATE_CHOICES),
                          "splits whose classes get 90/180/270-degree rotated copies as extra classes (auto: the "
                          "file's protocol, e.g. train only for alphabet-disjoint Omniglot; train+val: validation too, "
                          "e.g. for 20-way on the minimal Omniglot build, whose validation has 17 characters)")
    n_way: int = setting(5, Int(2), "classes per episode")  # one class would make every episode 100% accurate
    k_shot: int = setting(1, Int(1), "support images per class")
    n_query: int = setting(15, Int(1), "query images per class")


@dataclass
class LearnerSettings(Settings):
    """The CNN (four conv blocks) of every method."""

    TITLE: ClassVar[str] = "learner"
    HELP_ORDER: ClassVar[int] = 60
    hidden_channels: int = setting(32, Int(1), "filters of each convolution")
    bn_eps: float = setting(BN_EPS, Float(), "batch-norm epsilon (ours: PyTorch's 1e-5; the Meta-LSTM authors': 1e-3)")


@dataclass
class TrainingSettings(Settings):
    """The outer loop: how much, how fast, how it is validated."""

    TITLE: ClassVar[str] = "training"
    HELP_ORDER: ClassVar[int] = 70
    episodes: int = setting(2000, Int(1), "training episodes in total, meta-updates x meta-batch (finetune: mini-batches; "
                                          "rounded up to whole meta-batches, with a warning)", resumable=True)
    meta_batch: int = setting(4, Int(1), "episodes per meta-update (finetune: images per mini-batch; under torchrun: "
                                         "over all ranks, a multiple of the world size)")
    lr: float = setting(1e-3, Float(), "Adam's learning rate")
    lr_schedule: str = setting("constant", Choice(LR_SCHEDULES),
                               "cosine: anneal --lr to 0 over the run (progress: the larger of the shares of --episodes "
                               "done and of --max-minutes spent); halving: halve it every 2,000 episodes; "
                               "halving-over-run: halve it --lr-halvings times, at equal shares of the run's progress")
    lr_halvings: int = setting(LR_HALVINGS, Int(1), "halvings of --lr over the run under --lr-schedule halving-over-run")
    grad_clip: float | None = setting(None, Float(), "global gradient-norm clip (None: off)", optional=True)
    query_bn: str = setting("batch", Choice(QUERY_BN_MODES), f"query batch norm in training ({QUERY_BN_HELP})")
    val_query_bn: str = setting(EVAL_QUERY_BN, Choice(QUERY_BN_MODES),
                                "the same in validation, which chooses best.pt (default: evaluation's, not transductive)")
    val_every: int = setting(400, Int(1), "episodes between validations (rounded to whole meta-batches, with a warning)",
                             resumable=True)
    validations: int | None = setting(None, Int(1), "instead of --val-every: validate this many times, once per equal "
                                                    "share of the run (of --episodes, or of --max-minutes of training "
                                                    "time, whichever ends it first), so that every method validates alike",
                                      optional=True, resumable=True)
    val_episodes: int = setting(200, Int(1), "episodes of each validation", resumable=True)


@dataclass
class RunSettings(Settings):
    """Where the run runs and what it keeps."""

    TITLE: ClassVar[str] = "run"
    HELP_ORDER: ClassVar[int] = 80
    device: str = setting("auto", Text(), "auto (CUDA if available, else CPU) or a torch device: cpu, cuda, cuda:N, "
                          "mps, xpu, ... (under torchrun auto and cuda mean cuda:LOCAL_RANK)", resumable=True,
                          cli_type=device_argument)
    seed: int = setting(0, Int(0, SEED_MAX), "seed of the initialization and of every draw of the run")
    out: str = setting("runs/default", Text(), "RUN_DIR for checkpoints and metrics.csv", resumable=True)
    resume: bool = setting(False, Flag(), "continue from RUN_DIR/last.pt (a RUN_DIR without a run starts one)",
                           resumable=True)
    force: bool = setting(False, Flag(), "start over in RUN_DIR, replacing the files of an earlier run there (it says "
                                         "which); without it a RUN_DIR holding any is refused", resumable=True)
    max_minutes: float | None = setting(None, Float(), "also stop, after validating and checkpointing, once this many "
                                                       "minutes of training have passed (validations not counted)",
                                        optional=True, resumable=True)
    max_nonfinite: int = setting(10, Int(1), "stop after this many meta-updates in a row skipped for a NaN/inf loss or "
                                             "gradient", resumable=True)

    def resolve(self) -> None:
        super().resolve()
        if self.resume and self.force:
            self.refuse("resume continues the run in out, force starts it over: give one of them")


@dataclass
class FewShotConfig(RunSettings, TrainingSettings, LearnerSettings, EpisodeSettings):
    """Base of every few-shot method's configuration: the shared groups and the method's name.

    Subclasses (one per method, :mod:`fewshot_l2l.methods`) add the method's own settings and change the defaults
    that are the method's (``meta_batch``, ``grad_clip``, ...) with :func:`fewshot_l2l.settings.default_of`.
    """

    METHODS: ClassVar[tuple[str, ...]] = ()  # the method names this configuration is for
    # Named sets of settings, each a switch of train.py (e.g. the Meta-LSTM's "authors-config": the authors' values
    # where ours differ), applied over the settings given: {name: (help, {setting: value})}.
    PRESETS: ClassVar[dict[str, tuple[str, dict]]] = {}
    method: str = setting("", Text(), "the few-shot method", flag=None)

    def resolve(self) -> None:
        super().resolve()
        if self.method not in self.METHODS:
            self.refuse(f"method must be one of {self.METHODS}, got {self.method!r}")

    def with_preset(self, name: str) -> "FewShotConfig":
        """This configuration with the settings of preset ``name`` (:attr:`PRESETS`) instead of its own."""
        return replace(self, **self.PRESETS[name][1])
