"""The settings of meta-training an update rule (:mod:`.rule_training`), each declared once
(:mod:`fewshot_l2l.settings`), and what follows from them iteration by iteration: the problems' seeds, the random or
growing horizons, the meta-loss weights, the objective's random scales."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import PROBLEMS, RULES, build_rule
from .rules import GAC_SCOPES, UpdateRule
from ..config import RunSettings
from ..kernels import STEP_KERNELS
from ..settings import Choice, Flag, Float, Floats, Int, Mapping, Settings, Text, default_of, setting

# The paper batches 128 quadratics; an MLP problem has 15,910 coordinates, and one problem per
# iteration already costs ~4 s and ~1 GB for a 20-step unroll on CPU.
PROBLEM_DEFAULTS = {"quadratic": {"meta_batch": 128, "val_problems": 100}, "mlp": {"meta_batch": 1, "val_problems": 10},
                    "convnet": {"meta_batch": 1, "val_problems": 10}, "neural-art": {"meta_batch": 2, "val_problems": 4}}
HORIZON_SCHEDULES = ("fixed", "random", "curriculum")
DEFAULT_GAC_CELLS = 5  # of the 20 units per layer: our choice, the paper gives no number
@dataclass
class RuleSettings(Settings):
    """The update rule that is meta-trained."""

    TITLE: ClassVar[str] = "update rule"
    rule: str = setting("andrychowicz", Choice(RULES),
                        "andrychowicz: the coordinatewise LSTM; andrychowicz-gac: with global averaging cells; "
                        "ntm-bfgs: the LSTM with GAC and a shared memory; meta-lstm: Ravi & Larochelle's")
    hidden_size: int = setting(20, Int(1), "LSTM units per layer")
    output_scale: float = setting(0.1, Float(), "Andrychowicz rule output scale")
    gac_cells: int | None = setting(None, Int(0), "averaged cells per LSTM layer (andrychowicz-gac, ntm-bfgs; default "
                                                  f"{DEFAULT_GAC_CELLS}, the plain rules 0)", optional=True)
    gac_scope: str = setting("tensor", Choice(GAC_SCOPES), "what GAC average over: each parameter tensor or the model")
    memory_size: int = setting(8, Int(1), "ntm-bfgs memory side K (K x K)")
    read_heads: int = setting(1, Int(1), "ntm-bfgs read heads per coordinate")
    per_layer_type: bool = setting(False, Flag(), "one rule for convolutional and one for fully connected layers "
                                                  "(same kind and size)")
    step_kernel: str = setting("auto", Choice(STEP_KERNELS), "the rule's step: the fused kernel (auto: where built and "
                                                            "applicable; GAC and NTM-BFGS run plain) or plain torch",
                               resumable=True)


@dataclass
class ProblemSettings(Settings):
    """The distribution of problems the rule is meta-trained on."""

    TITLE: ClassVar[str] = "problems"
    problem: str = setting("quadratic", Choice(PROBLEMS), "the problem distribution")
    # Keyword arguments of the problem class (make_problems); the command line sets them with the problem's own options.
    problem_options: dict = setting(None, Mapping(), "keyword arguments of the problem class", flag=None,
                                    default_factory=dict)


@dataclass
class UnrollSettings(Settings):
    """Truncated backpropagation through the optimization: horizons, unrolls, the meta-loss, Adam."""

    TITLE: ClassVar[str] = "meta-training"
    horizon: int = setting(100, Int(1), "optimization steps per problem")
    unroll: int = setting(20, Int(1), "steps per truncated-BPTT segment (one meta-update each)")
    horizon_schedule: str = setting("fixed", Choice(HORIZON_SCHEDULES),
                                    "fixed: every problem runs --horizon steps; random: uniform in [--horizon, "
                                    "--max-horizon]; curriculum: growing from --horizon to --max-horizon over the run")
    max_horizon: int | None = setting(None, Int(1), "longest horizon of the random / curriculum schedules (default "
                                                    "4 x --horizon)", optional=True)
    meta_batch: int | None = setting(None, Int(1), "problems per iteration (default: 128 quadratic, 1 mlp / convnet, "
                                                   "2 neural-art)", optional=True)
    iterations: int = setting(500, Int(1), "problem batches, each run for the whole horizon", resumable=True)
    step_weights: tuple[float, ...] = setting((), Floats(0.0),
                                              "meta-loss weights w_1 w_2 ... of the first steps (the meta-loss is sum_t "
                                              "w_t f(theta_t)); later steps weigh 1, as every step does by default "
                                              "(the paper's choice)")
    loss_scale_range: float = setting(1.0, Float(1.0, inclusive=True),
                                      "R: the rule meta-trains on s f, s log-uniform in [1/R, R] per problem, so that it "
                                      "adapts to the scale of the objective (1: off)")
    # lr may change on resume: a resumed run may start a lower-rate phase.
    lr: float = setting(3e-3, Float(), "Adam meta-learning rate", resumable=True)
    grad_clip: float | None = setting(None, Float(), "meta-gradient norm clip (None: off)", optional=True)
    val_every: int = setting(50, Int(1), "iterations between validations", resumable=True)
    val_problems: int | None = setting(None, Int(1), "tune problems of each validation and of best.pt's choice "
                                                     "(default: 100 quadratic, 10 mlp / convnet, 4 neural-art)",
                                       optional=True)
    init_from: str | None = setting(None, Text(), "checkpoint of another run whose rule weights to start from (same "
                                                  "rule and sizes)", optional=True, resumable=True)


@dataclass
class OptimizerTrainConfig(RuleSettings, ProblemSettings, UnrollSettings, RunSettings):
    """All settings of a meta-training run of an update rule (stored in every checkpoint)."""

    out: str = default_of(RunSettings, "out", "runs/optimizer")

    def resolve(self) -> None:
        super().resolve()
        for name, value in PROBLEM_DEFAULTS[self.problem].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.gac_cells is None:
            self.gac_cells = DEFAULT_GAC_CELLS if self.rule in ("andrychowicz-gac", "ntm-bfgs") else 0
        if self.gac_cells and self.rule in ("andrychowicz", "meta-lstm"):
            self.refuse(f"the {self.rule} rule has no global averaging cells (gac_cells {self.gac_cells}); use rule "
                        "andrychowicz-gac or ntm-bfgs")
        if self.rule == "andrychowicz-gac" and not 1 <= self.gac_cells <= self.hidden_size:
            self.refuse(f"andrychowicz-gac needs 1 <= gac_cells <= hidden_size, got {self.gac_cells}")
        if self.per_layer_type and self.rule == "ntm-bfgs":
            self.refuse("per_layer_type is not available for ntm-bfgs, whose memory is shared by all coordinates of "
                        "the model")
        if self.max_horizon is None:
            self.max_horizon = 4 * self.horizon if self.horizon_schedule != "fixed" else self.horizon
        for name in ("horizon", "max_horizon"):
            if getattr(self, name) % self.unroll:
                self.refuse(f"{name} ({getattr(self, name)}) must be a multiple of unroll ({self.unroll})")
        if len(self.step_weights) > self.max_horizon:
            self.refuse(f"step_weights must be at most max_horizon ({self.max_horizon}) non-negative finite numbers, "
                        f"got {len(self.step_weights)} weights")
        if self.max_horizon < self.horizon or (self.horizon_schedule == "fixed" and self.max_horizon != self.horizon):
            self.refuse(f"max_horizon ({self.max_horizon}) must be >= horizon ({self.horizon}), and only random / "
                        "curriculum horizon schedules use it")


def rule_config_for(config: OptimizerTrainConfig) -> dict:
    """The :func:`build_rule` configuration of the rule ``config`` describes."""
    if config.rule == "meta-lstm":
        single = {"rule": "meta-lstm", "hidden_size": config.hidden_size}
    else:
        single = {"rule": config.rule, "hidden_size": config.hidden_size, "output_scale": config.output_scale}
        if config.rule != "andrychowicz":
            single.update(gac_cells=config.gac_cells, gac_scope=config.gac_scope)
        if config.rule == "ntm-bfgs":
            single.update(memory_size=config.memory_size, read_heads=config.read_heads)
    return {"rule": "per-layer-type", "conv": single, "fc": single} if config.per_layer_type else single


def build_rule_for(config: OptimizerTrainConfig) -> UpdateRule:
    """A fresh rule as ``config`` describes it, initialized from ``config.seed``.

    The rules draw their initial weights from torch's global generator: seed it inside a fork, so
    that building a rule leaves the caller's random state alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        rule = build_rule(rule_config_for(config))
    rule.step_kernel = config.step_kernel
    return rule


def iteration_seed(config: OptimizerTrainConfig, iteration: int) -> int:
    """The seed of iteration ``iteration``'s training problems; horizons and loss scales draw from offsets of it."""
    return config.seed * 1_000_003 + iteration


def iteration_horizon(config: OptimizerTrainConfig, iteration: int) -> int:
    """Steps run on the problems of iteration ``iteration`` (0-based), a multiple of ``unroll``.

    ``fixed``: ``horizon``. ``random``: uniform over the multiples of ``unroll`` in
    ``[horizon, max_horizon]``, drawn from ``(seed, iteration)`` (a resumed run draws the same).
    ``curriculum``: from ``horizon`` at the first iteration linearly up to ``max_horizon`` at the
    last, rounded down to a multiple of ``unroll``.
    """
    low, high = config.horizon // config.unroll, config.max_horizon // config.unroll
    if config.horizon_schedule == "random":
        gen = torch.Generator().manual_seed(iteration_seed(config, iteration) + 7)
        return config.unroll * int(torch.randint(low, high + 1, (), generator=gen))
    if config.horizon_schedule == "curriculum":
        fraction = iteration / max(1, config.iterations - 1)
        return config.unroll * int(low + (high - low) * fraction)
    return config.horizon


def step_weights(config: OptimizerTrainConfig, steps: int) -> torch.Tensor:
    """The meta-loss weights ``w_1 .. w_steps`` (float64): ``config.step_weights``, then 1 for every later step."""
    weights = torch.ones(steps, dtype=torch.float64)
    given = config.step_weights[:steps]
    weights[:len(given)] = torch.tensor(given, dtype=torch.float64)
    return weights


def iteration_loss_scales(config: OptimizerTrainConfig, iteration: int, n_problems: int) -> torch.Tensor | None:
    """The factors ``s`` ``[n_problems]`` by which the rule sees the objectives of iteration ``iteration``; ``None`` when off.

    Log-uniform in ``[1/R, R]``, ``R = loss_scale_range``, drawn from ``(seed, iteration)`` (a resumed run draws the same).
    A learned rule reads the gradient's magnitude (``log |g|``), so unlike Adam it is not invariant to the scale of
    ``f``; a problem at another size (neural art at twice the resolution: gradients 4x smaller per pixel) shifts
    every input. Random scaling during meta-training teaches it to adapt to the scale, as Lv, Jiang & Li (2017,
    "Learning gradient descent: better generalization and longer horizons", ICML) do by scaling the parameters.
    """
    if config.loss_scale_range == 1:
        return None
    # Offset 2**62: disjoint from every problem seed (split * 1_000_000_007 + _iteration_seed) and from
    # iteration_horizon's, so the scales are independent of the problems they scale.
    gen = torch.Generator().manual_seed(2**62 + iteration_seed(config, iteration))
    exponents = 2 * torch.rand(n_problems, generator=gen, dtype=torch.float64) - 1
    return torch.tensor(config.loss_scale_range, dtype=torch.float64).pow(exponents)


