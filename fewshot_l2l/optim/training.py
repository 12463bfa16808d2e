"""Meta-training a learned update rule with truncated backpropagation through time.

Each iteration draws ``meta_batch`` fresh problems, starts them at their
``theta_0`` and runs the rule for ``horizon`` steps, cut into unrolls of
``unroll`` steps. After each unroll the meta-loss

    L(phi) = mean over problems of sum_{t in unroll} w_t f(theta_t)

(``theta_t`` is produced by the rule with weights ``phi``; ``w_t`` the paper's step
weights: ``step_weights`` for the first steps, 1 for the others; by default ``w_t = 1``
throughout, the paper's choice) is backpropagated
through the unroll, Adam updates ``phi``, and ``theta`` and the rule's state
are carried into the next unroll, detached. With ``horizon_schedule`` ``random``
or ``curriculum`` the horizon changes per iteration (see :func:`iteration_horizon`),
so that the rule sees more steps than the horizon it is evaluated at. With ``loss_scale_range`` ``R``
the rule optimizes ``s f`` instead of ``f``, ``s`` drawn per problem log-uniformly in ``[1/R, R]``
(see :func:`iteration_loss_scales`), while the meta-loss stays that of ``f``. As in Andrychowicz et al., the
gradient fed to the rule is a constant for the meta-gradient (no second
derivatives of ``f``); the path ``phi -> theta_t -> f(theta_t)`` is exact.

``RUN_DIR`` (:class:`fewshot_l2l.runs.RunFolder`) receives ``init.pt``, ``last.pt`` (every validation;
``resume`` continues it), ``best.pt`` (lowest validation meta-loss, the ``w_t``-weighted sum of losses, on ``tune`` problems) and
``metrics.csv``, all written atomically. As in the few-shot loop, the run holds the folder's lock,
skips (and counts) meta-updates with a non-finite meta-loss or meta-gradient, stopping after
``max_nonfinite`` in a row, and on SIGTERM / SIGINT saves ``last.pt`` after the current iteration
and exits (``docs/guarantees.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .problems import PROBLEMS, make_problems
from .evaluation import curve_metrics, rule_curve
from .rules import GAC_SCOPES, RULES, UpdateRule, build_rule
from ..checkpoints import corrupt, read_checkpoint, refuse_nonfinite
from ..process import StopSignals
from ..runs import NonFiniteGuard, RunFolder, Stopwatch
from ..utils import SEED_MAX, check_int, finite_or_none, meta_update, resolve_device

# The paper batches 128 quadratics; an MLP problem has 15,910 coordinates, and one problem per
# iteration already costs ~4 s and ~1 GB for a 20-step unroll on CPU.
PROBLEM_DEFAULTS = {"quadratic": {"meta_batch": 128, "val_problems": 100}, "mlp": {"meta_batch": 1, "val_problems": 10},
                    "convnet": {"meta_batch": 1, "val_problems": 10}, "neural-art": {"meta_batch": 2, "val_problems": 4}}
HORIZON_SCHEDULES = ("fixed", "random", "curriculum")
DEFAULT_GAC_CELLS = 5  # of the 20 units per layer: our choice, the paper gives no number
# skipped_updates: meta-updates (unrolls) of the interval skipped for a non-finite meta-loss or meta-gradient.
# train_meta_loss: the meta-loss per step, weighted by the step weights like val_meta_loss, the validation sum of losses
# weighted by them (both unweighted with the default weights of 1); best.pt is the checkpoint with the lowest
# val_meta_loss, which the state and summary call best_val_sum_loss (the name of checkpoints before the weights).
METRICS_COLUMNS = ("iteration", "train_meta_loss", "val_final_loss", "val_sum_loss", "val_meta_loss", "elapsed_s",
                   "skipped_updates")


# Settings that may differ when a run is resumed; lr too: a resumed run may start a lower-rate phase.
RESUMABLE_FIELDS = {"iterations", "max_minutes", "lr", "val_every", "device", "out", "resume", "init_from",
                    "max_nonfinite"}


@dataclass
class OptimizerTrainConfig:
    """All settings of a meta-training run (stored in every checkpoint)."""

    problem: str = "quadratic"
    problem_options: dict = field(default_factory=dict)  # keyword arguments of the problem class (make_problems)
    rule: str = "andrychowicz"
    hidden_size: int = 20
    output_scale: float = 0.1
    gac_cells: int | None = None  # averaged cells per layer (andrychowicz-gac, ntm-bfgs); None: 0 or DEFAULT_GAC_CELLS
    gac_scope: str = "tensor"  # what GAC average over: "tensor" (each parameter tensor) or "model"
    memory_size: int = 8  # ntm-bfgs: the memory is memory_size x memory_size
    read_heads: int = 1  # ntm-bfgs: read heads per coordinate
    per_layer_type: bool = False  # a separate rule (same kind and size) for conv and fully connected layers
    horizon: int = 100  # optimization steps per problem
    unroll: int = 20  # steps per truncated-BPTT segment (one meta-update each)
    horizon_schedule: str = "fixed"  # "fixed", "random" (uniform in [horizon, max_horizon]) or "curriculum"
    max_horizon: int | None = None  # longest horizon of random / curriculum schedules; None: 4 * horizon
    meta_batch: int | None = None  # problems per iteration; None: PROBLEM_DEFAULTS
    iterations: int = 500  # problem batches, each run for the whole horizon
    max_minutes: float | None = None  # also stop (after validating and checkpointing) after this much time
    step_weights: tuple[float, ...] = ()  # w_1, w_2, ... of the meta-loss sum_t w_t f(theta_t); later steps weigh 1
    loss_scale_range: float = 1.0  # R: the rule sees s f, s log-uniform in [1/R, R] per problem (1: off)
    lr: float = 3e-3  # Adam meta-learning rate
    grad_clip: float | None = None  # global norm clip of the meta-gradient (None: off)
    val_every: int = 50  # iterations between validations
    val_problems: int | None = None  # tune problems for validation / best.pt; None: PROBLEM_DEFAULTS
    device: str = "auto"
    seed: int = 0
    out: str = "runs/optimizer"
    init_from: str | None = None  # start from the rule weights of another run's checkpoint (same rule and sizes)
    resume: bool = False  # continue RUN_DIR/last.pt (same problem stream: iteration k always draws the same problems)
    max_nonfinite: int = 10  # stop after this many meta-updates in a row skipped for a non-finite loss or gradient

    def __post_init__(self) -> None:
        if self.problem not in PROBLEMS:
            raise ValueError(f"OptimizerTrainConfig: problem must be one of {PROBLEMS}, got {self.problem!r}")
        for name, value in PROBLEM_DEFAULTS[self.problem].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.rule not in RULES:
            raise ValueError(f"OptimizerTrainConfig: rule must be one of {RULES}, got {self.rule!r}")
        if self.gac_cells is None:
            self.gac_cells = DEFAULT_GAC_CELLS if self.rule in ("andrychowicz-gac", "ntm-bfgs") else 0
        if self.gac_cells and self.rule in ("andrychowicz", "meta-lstm"):
            raise ValueError(f"OptimizerTrainConfig: the {self.rule} rule has no global averaging cells (gac_cells "
                             f"{self.gac_cells}); use rule andrychowicz-gac or ntm-bfgs")
        if self.rule == "andrychowicz-gac" and not 1 <= self.gac_cells <= self.hidden_size:
            raise ValueError(f"OptimizerTrainConfig: andrychowicz-gac needs 1 <= gac_cells <= hidden_size, got {self.gac_cells}")
        if self.per_layer_type and self.rule == "ntm-bfgs":
            raise ValueError("OptimizerTrainConfig: per_layer_type is not available for ntm-bfgs, whose memory is shared by "
                             "all coordinates of the model")
        for name, choices in (("gac_scope", GAC_SCOPES), ("horizon_schedule", HORIZON_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"OptimizerTrainConfig: {name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.max_horizon is None:
            self.max_horizon = 4 * self.horizon if self.horizon_schedule != "fixed" else self.horizon
        for name in ("hidden_size", "horizon", "unroll", "meta_batch", "iterations", "val_every", "val_problems",
                     "max_nonfinite", "memory_size", "read_heads", "max_horizon"):
            check_int("OptimizerTrainConfig", name, getattr(self, name), 1)
        check_int("OptimizerTrainConfig", "gac_cells", self.gac_cells, 0)
        check_int("OptimizerTrainConfig", "seed", self.seed, 0, SEED_MAX)
        if not isinstance(self.resume, bool):
            raise ValueError(f"OptimizerTrainConfig: resume must be True or False, got {self.resume!r}")
        for name in ("horizon", "max_horizon"):
            if getattr(self, name) % self.unroll:
                raise ValueError(f"OptimizerTrainConfig: {name} ({getattr(self, name)}) must be a multiple of unroll ({self.unroll})")
        if not (isinstance(self.loss_scale_range, (int, float)) and not isinstance(self.loss_scale_range, bool)
                and math.isfinite(self.loss_scale_range)
                and self.loss_scale_range >= 1):
            raise ValueError(f"OptimizerTrainConfig: loss_scale_range must be a finite number >= 1 (1: off), "
                             f"got {self.loss_scale_range!r}")
        weights_ok = isinstance(self.step_weights, (list, tuple)) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in self.step_weights)
        if not weights_ok or len(self.step_weights) > self.max_horizon:
            got = f"{len(self.step_weights)} weights" if weights_ok else repr(self.step_weights)
            raise ValueError(f"OptimizerTrainConfig: step_weights must be at most max_horizon ({self.max_horizon}) "
                             f"non-negative finite numbers, got {got}")
        self.step_weights = tuple(self.step_weights)
        if self.max_horizon < self.horizon or (self.horizon_schedule == "fixed" and self.max_horizon != self.horizon):
            raise ValueError(f"OptimizerTrainConfig: max_horizon ({self.max_horizon}) must be >= horizon ({self.horizon}), "
                             f"and only random / curriculum horizon schedules use it")
        # "not x > 0" rather than "x <= 0": NaN compares False with everything.
        for name in ("lr", "output_scale", "grad_clip", "max_minutes"):
            value = getattr(self, name)
            if (value is not None or name in ("lr", "output_scale")) and not (math.isfinite(value) and value > 0):
                optional = " (or None)" if name in ("grad_clip", "max_minutes") else ""
                raise ValueError(f"OptimizerTrainConfig: {name} must be a positive finite number{optional}, got {value}")

    @classmethod
    def from_dict(cls, values: dict) -> "OptimizerTrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


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
        return build_rule(rule_config_for(config))


def _iteration_seed(config: OptimizerTrainConfig, iteration: int) -> int:
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
        gen = torch.Generator().manual_seed(_iteration_seed(config, iteration) + 7)
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
    gen = torch.Generator().manual_seed(2**62 + _iteration_seed(config, iteration))
    exponents = 2 * torch.rand(n_problems, generator=gen, dtype=torch.float64) - 1
    return torch.tensor(config.loss_scale_range, dtype=torch.float64).pow(exponents)


def load_rule_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[UpdateRule, OptimizerTrainConfig, dict]:
    """``(rule, config, raw checkpoint)`` from a ``.pt`` file written by :func:`train_optimizer`.

    Errors as :func:`fewshot_l2l.training.load_checkpoint` ("... is not a learned-optimizer checkpoint or is corrupt").
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, device, "learned-optimizer", ("config", "rule_config", "rule"))
    try:
        config = OptimizerTrainConfig.from_dict(checkpoint["config"])
        with torch.random.fork_rng(devices=[]):  # its random init, overwritten below, must not consume the global generator
            rule = build_rule(checkpoint["rule_config"])
        rule.load_state_dict(checkpoint["rule"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise corrupt(path, "learned-optimizer", error) from error
    refuse_nonfinite(path, {"rule": checkpoint["rule"], "optimizer": checkpoint.get("optimizer")})
    return rule.to(device), config, checkpoint


def unrolled_meta_loss(rule: UpdateRule, problems, theta: torch.Tensor, state: tuple, start: int, unroll: int,
                       weights: torch.Tensor | None = None, loss_scales: torch.Tensor | None = None):
    """Run ``unroll`` steps from ``theta`` (detached) at step ``start``; return ``(meta_loss, theta, state)``.

    ``meta_loss`` is the mean over problems of ``sum w_t f(theta_t)`` over the
    ``unroll`` new iterates (``weights``: ``w`` of these ``unroll`` steps; ``None``: all 1),
    differentiable in the rule's weights; the returned ``theta`` and ``state``
    still carry the graph (detach before the next unroll). ``loss_scales`` ``[n]``: the
    rule is given the gradient and loss of ``s f`` (``None``: of ``f``).
    """
    theta = theta.detach().requires_grad_()
    loss = problems.loss(theta, start)
    scales = None if loss_scales is None else loss_scales.to(loss)
    meta_loss = theta.new_zeros(())
    for offset in range(1, unroll + 1):
        seen = loss if scales is None else scales * loss
        # The gradient is a constant input of the rule (no create_graph): first-order, as in the paper.
        (grad,) = torch.autograd.grad(seen.sum(), theta, retain_graph=True)
        theta, state = rule(theta, grad, seen.detach(), state, layout=getattr(problems, "layout", None))
        loss = problems.loss(theta, start + offset)
        meta_loss = meta_loss + (loss.mean() if weights is None else float(weights[offset - 1]) * loss.mean())
    return meta_loss, theta, state


def validate(rule: UpdateRule, val_problems, horizon: int, weights: torch.Tensor) -> tuple[float, float, float]:
    """``(mean final loss, mean sum of losses, mean sum of w_t f(theta_t))`` of ``rule`` on ``val_problems`` over
    ``horizon`` steps (``weights``: ``w_1 .. w_horizon``)."""
    curve = rule_curve(rule, val_problems, horizon)
    final, total = curve_metrics(curve)
    weighted = float(weights @ curve[1:].double().mean(1).cpu())
    return final, total, weighted if math.isfinite(weighted) else math.inf


def train_optimizer(config: OptimizerTrainConfig, progress: bool = True) -> dict:
    """Meta-train the rule of ``config`` on its problem distribution; return a summary dict (non-finite figures
    as ``None``, so that it is valid JSON).

    Raises as :func:`fewshot_l2l.training.meta_train` does (a locked folder, too many
    non-finite meta-updates in a row, a stop signal once ``last.pt`` is saved).
    """
    device = resolve_device(config.device)
    with RunFolder(config.out, METRICS_COLUMNS, config.resume) as run, StopSignals() as stop:
        return finite_or_none(_train_optimizer(config, device, run, stop, progress))


def _train_optimizer(config: OptimizerTrainConfig, device: torch.device, run: RunFolder, stop: StopSignals,
                     progress: bool) -> dict:
    distribution = make_problems(config.problem, device, **config.problem_options)
    rule = build_rule_for(config).to(device)
    meta_optimizer = torch.optim.Adam([p for p in rule.parameters() if p.requires_grad], lr=config.lr)
    val_problems = distribution.sample(config.val_problems, config.seed, split="tune")
    val_horizon = config.max_horizon  # = horizon unless a schedule trains on longer ones: select for those too
    weights = step_weights(config, config.max_horizon)
    interval_loss, interval_count = 0.0, 0

    def checkpoint(state: dict) -> dict:
        progress_state = {**state, "interval": (interval_loss, interval_count), "nonfinite": guard.state()}
        return {"rule": rule.state_dict(), "rule_config": rule.config(), "optimizer": meta_optimizer.state_dict(),
                "config": asdict(config), "progress": progress_state}

    state = {"iteration": 0, "best_val_sum_loss": math.inf, "elapsed_s": 0.0}
    guard = NonFiniteGuard(config.max_nonfinite)
    if config.init_from is not None:
        source, _, _ = load_rule_checkpoint(config.init_from, device)
        if source.config() != rule.config():
            raise ValueError(f"--init-from {config.init_from}: its rule {source.config()} differs from this run's {rule.config()}")
        rule.load_state_dict(source.state_dict())
    if run.resuming:
        _, saved_config, saved = load_rule_checkpoint(run.last, device)
        state = {key: value for key, value in saved["progress"].items() if key not in ("interval", "nonfinite")}
        run.resume(asdict(saved_config), asdict(config), RESUMABLE_FIELDS, state["iteration"], saved.get("run"))
        rule.load_state_dict(saved["rule"])
        meta_optimizer.load_state_dict(saved["optimizer"])
        for group in meta_optimizer.param_groups:  # a resumed run may lower the meta-learning rate (a second phase)
            group["lr"] = config.lr
        # A signal saves between validations: the interval's sums continue, as in an uninterrupted run.
        interval_loss, interval_count = saved["progress"].get("interval", (0.0, 0))
        guard = NonFiniteGuard(config.max_nonfinite, saved["progress"].get("nonfinite"))
    else:
        run.start(checkpoint(state))
    hint = f"Lower --lr ({config.lr}) or set --grad-clip ({config.grad_clip}); {run.last}, if any, is the last checkpoint."

    clock = Stopwatch(state["elapsed_s"], config.max_minutes)
    bar = tqdm(total=config.iterations, initial=state["iteration"], desc=f"meta-train {config.rule} on {config.problem}", unit="iter", disable=not progress)
    out_of_time = False
    while state["iteration"] < config.iterations and not out_of_time:
        if stop.requested:  # SIGTERM / SIGINT: save the exact state after the last iteration, and exit
            state["elapsed_s"] = clock.elapsed_s
            run.save(checkpoint(state), improved=False, step=state["iteration"])
            bar.close()
            raise stop.interrupted(run.last, f"iteration {state['iteration']}")
        problems = distribution.sample(config.meta_batch, _iteration_seed(config, state["iteration"]), split="train")
        theta = problems.initial_theta()
        rule_state = rule.initial_state(theta)
        loss_scales = iteration_loss_scales(config, state["iteration"], config.meta_batch)
        for start in range(0, iteration_horizon(config, state["iteration"]), config.unroll):
            meta_loss, theta, rule_state = unrolled_meta_loss(rule, problems, theta, rule_state, start, config.unroll,
                                                              weights[start:start + config.unroll], loss_scales)
            stepped = meta_update(rule, meta_optimizer, meta_loss, config.grad_clip)
            guard.record(stepped, f"iteration {state['iteration'] + 1}", hint)
            if not stepped:  # the iterates diverged: the rest of this batch's horizon would only repeat it
                break
            theta, rule_state = theta.detach(), tuple(s.detach() for s in rule_state)
            interval_loss += meta_loss.item() / config.unroll
            interval_count += 1
        state["iteration"] += 1
        bar.update(1)
        skipped = {"skipped": guard.skipped} if guard.skipped else {}
        bar.set_postfix(meta_loss=f"{interval_loss / interval_count if interval_count else math.nan:.4g}", **skipped)

        out_of_time = clock.out_of_time()
        if state["iteration"] % config.val_every == 0 or state["iteration"] == config.iterations or out_of_time:
            val_final, val_sum, val_meta = validate(rule, val_problems, val_horizon, weights)
            state["elapsed_s"] = clock.elapsed_s
            train_meta_loss = interval_loss / interval_count if interval_count else math.nan
            skipped_updates = guard.take_interval()
            run.log(iteration=state["iteration"], train_meta_loss=train_meta_loss, val_final_loss=val_final,
                    val_sum_loss=val_sum, val_meta_loss=val_meta, elapsed_s=state["elapsed_s"], skipped_updates=skipped_updates)
            skipped_note = f", {skipped_updates} meta-updates skipped (non-finite)" if skipped_updates else ""
            weighted = f", weighted {val_meta:.4g}" if config.step_weights else ""
            bar.write(f"iteration {state['iteration']}: train meta-loss/step {train_meta_loss:.4g}, "
                      f"val final loss {val_final:.4g}, val sum of losses {val_sum:.4g}{weighted}{skipped_note}")
            interval_loss, interval_count = 0.0, 0
            improved = val_meta < state["best_val_sum_loss"]
            if improved:
                state["best_val_sum_loss"] = val_meta
            run.save(checkpoint(state), improved, state["iteration"])
    bar.close()
    run.save_best_if_missing(checkpoint(state), state["iteration"])  # every validation diverged: evaluation can still run
    return {"iterations": state["iteration"], "best_val_sum_loss": state["best_val_sum_loss"],
            "elapsed_s": state["elapsed_s"], "best": str(run.best), "last": str(run.last)}
