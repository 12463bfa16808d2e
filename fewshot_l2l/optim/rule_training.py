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

Training runs on the package's one loop (:func:`fewshot_l2l.runs.loop.train_loop`): an iteration is one step of it,
whose meta-updates are the unrolls. ``RUN_DIR`` (:class:`fewshot_l2l.runs.folder.RunFolder`) receives ``init.pt``, ``last.pt`` (every validation;
``resume`` continues it), ``best.pt`` (lowest validation meta-loss, the ``w_t``-weighted sum of losses, on ``tune`` problems) and
``metrics.csv``, all written atomically. As in the few-shot loop, the run holds the folder's lock,
skips (and counts) meta-updates with a non-finite meta-loss or meta-gradient, stopping after
``max_nonfinite`` in a row, and on SIGTERM / SIGINT saves ``last.pt`` after the current iteration
and exits (``docs/guarantees.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import build_rule, make_problems
from .comparison import curve_metrics, rule_curve
from .rule_config import (OptimizerTrainConfig, build_rule_for, iteration_horizon, iteration_loss_scales, iteration_seed,
                          step_weights)
from .rules import UpdateRule
from ..checkpoints import corrupt, read_checkpoint, refuse_nonfinite
from ..devices import resolve_device
from ..finite import finite_or_none
from ..runs.folder import RunFolder
from ..runs.loop import Interval, NonFiniteGuard, Schedule, Stopwatch, Trainee, meta_update, train_loop
from ..runs.process import StopSignals

# skipped_updates: meta-updates (unrolls) of the interval skipped for a non-finite meta-loss or meta-gradient.
# train_meta_loss: the meta-loss per step, weighted by the step weights like val_meta_loss, the validation sum of losses
# weighted by them (both unweighted with the default weights of 1); best.pt is the checkpoint with the lowest
# val_meta_loss, which the state and summary call best_val_sum_loss (the name of checkpoints before the weights).
METRICS_COLUMNS = ("iteration", "train_meta_loss", "val_final_loss", "val_sum_loss", "val_meta_loss", "elapsed_s",
                   "skipped_updates")


def load_rule_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[UpdateRule, OptimizerTrainConfig, dict]:
    """``(rule, config, raw checkpoint)`` from a ``.pt`` file written by :func:`train_optimizer`.

    Errors as :func:`fewshot_l2l.checkpoints.load_checkpoint` ("... is not a learned-optimizer checkpoint or is corrupt").
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
    with RunFolder(config.out, METRICS_COLUMNS, config.resume, config.force) as run, StopSignals() as stop:
        trainee = RuleTrainee(config, device, run)
        schedule = Schedule(
            unit="iteration", n_steps=config.iterations, val_every=config.val_every, max_minutes=config.max_minutes,
            max_nonfinite=config.max_nonfinite, description=f"meta-train {config.rule} on {config.problem}",
            hint=f"Lower --lr ({config.lr}) or set --grad-clip ({config.grad_clip}); {run.last}, if any, is the last "
                 "checkpoint.",
        )
        state = train_loop(trainee, schedule, run, stop, trainee.state, trainee.interval, trainee.guard,
                           progress=progress)
        # Every validation diverged: evaluation can still run.
        run.save_best_if_missing(trainee.checkpoint(state, trainee.interval, trainee.guard), state["iteration"])
    return finite_or_none({"iterations": state["iteration"], "best_val_sum_loss": state["best_val_sum_loss"],
                           "elapsed_s": state["elapsed_s"], "best": str(run.best), "last": str(run.last)})


class RuleTrainee(Trainee):
    """An update rule on the loop: an iteration draws fresh problems and runs their horizon in unrolls, each unroll
    one meta-update (truncated backpropagation through time)."""

    figure_names = ("meta_loss",)

    def __init__(self, config: OptimizerTrainConfig, device: torch.device, run: RunFolder) -> None:
        self.config, self.run = config, run
        self.distribution = make_problems(config.problem, device, **config.problem_options)
        self.rule = build_rule_for(config).to(device)
        self.optimizer = torch.optim.Adam([p for p in self.rule.parameters() if p.requires_grad], lr=config.lr)
        self.val_problems = self.distribution.sample(config.val_problems, config.seed, split="tune")
        self.weights = step_weights(config, config.max_horizon)
        self.state = {"iteration": 0, "best_val_sum_loss": math.inf, "elapsed_s": 0.0}
        self.interval, self.guard = Interval(1), NonFiniteGuard(config.max_nonfinite)
        if config.init_from is not None:
            source, _, _ = load_rule_checkpoint(config.init_from, device)
            if source.config() != self.rule.config():
                raise ValueError(f"--init-from {config.init_from}: its rule {source.config()} differs from this run's "
                                 f"{self.rule.config()}")
            self.rule.load_state_dict(source.state_dict())
        if run.resuming:
            _, saved_config, saved = load_rule_checkpoint(run.last, device)
            progress = saved["progress"]
            self.state = {key: value for key, value in progress.items() if key not in ("interval", "nonfinite")}
            run.resume(saved_config, config, self.state["iteration"], saved.get("run"))
            self.rule.load_state_dict(saved["rule"])
            self.optimizer.load_state_dict(saved["optimizer"])
            for group in self.optimizer.param_groups:  # a resumed run may lower the meta-learning rate (a second phase)
                group["lr"] = config.lr
            # A signal saves between validations: the interval's sums continue, as in an uninterrupted run.
            self.interval = Interval(1, progress.get("interval"))
            self.guard = NonFiniteGuard(config.max_nonfinite, progress.get("nonfinite"))
        else:
            run.start(self.checkpoint(self.state, self.interval, self.guard))

    def checkpoint(self, state: dict, interval: Interval, guard: NonFiniteGuard) -> dict:
        progress = {**state, "interval": interval.saved(), "nonfinite": guard.state()}
        return {"rule": self.rule.state_dict(), "rule_config": self.rule.config(),
                "optimizer": self.optimizer.state_dict(), "config": asdict(self.config), "progress": progress}

    def train_step(self, state: dict, clock: Stopwatch) -> list[tuple[bool, tuple[float, ...]]]:
        config, iteration = self.config, state["iteration"]
        problems = self.distribution.sample(config.meta_batch, iteration_seed(config, iteration), split="train")
        theta = problems.initial_theta()
        rule_state = self.rule.initial_state(theta)
        loss_scales = iteration_loss_scales(config, iteration, config.meta_batch)
        outcomes = []
        for start in range(0, iteration_horizon(config, iteration), config.unroll):
            meta_loss, theta, rule_state = unrolled_meta_loss(self.rule, problems, theta, rule_state, start,
                                                              config.unroll, self.weights[start:start + config.unroll],
                                                              loss_scales)
            stepped = meta_update(self.rule, self.optimizer, meta_loss, config.grad_clip)
            outcomes.append((stepped, (meta_loss.item() / config.unroll,)))
            if not stepped:  # the iterates diverged: the rest of this batch's horizon would only repeat it
                break
            theta, rule_state = theta.detach(), tuple(s.detach() for s in rule_state)
        return outcomes

    def postfix(self, means: tuple[float, ...]) -> dict[str, str]:
        return {"meta_loss": f"{means[0]:.4g}"}

    def validate(self, state: dict) -> tuple[float, float, float]:
        # Over max_horizon (= horizon unless a schedule trains on longer ones): best.pt is selected for those too.
        return validate(self.rule, self.val_problems, self.config.max_horizon, self.weights)

    def record(self, state: dict, result: tuple[float, float, float], means: tuple[float, ...], skipped: int,
               bar: Any) -> bool:
        val_final, val_sum, val_meta = result
        (train_meta_loss,) = means
        self.run.log(iteration=state["iteration"], train_meta_loss=train_meta_loss, val_final_loss=val_final,
                     val_sum_loss=val_sum, val_meta_loss=val_meta, elapsed_s=state["elapsed_s"], skipped_updates=skipped)
        skipped_note = f", {skipped} meta-updates skipped (non-finite)" if skipped else ""
        weighted = f", weighted {val_meta:.4g}" if self.config.step_weights else ""
        bar.write(f"iteration {state['iteration']}: train meta-loss/step {train_meta_loss:.4g}, "
                  f"val final loss {val_final:.4g}, val sum of losses {val_sum:.4g}{weighted}{skipped_note}")
        improved = val_meta < state["best_val_sum_loss"]
        if improved:
            state["best_val_sum_loss"] = val_meta
        return improved

    def save(self, state: dict, interval: Interval, guard: NonFiniteGuard, improved: bool) -> None:
        self.run.save(self.checkpoint(state, interval, guard), improved, state["iteration"])
