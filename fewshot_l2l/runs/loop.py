"""The one training loop of the package: every few-shot method (:mod:`fewshot_l2l.training`) and the meta-training
of learned update rules (:mod:`fewshot_l2l.optim.rule_training`) run through :func:`train_loop`.

The loop owns what every run needs and nothing of any algorithm::

    until the step budget or the time budget is spent:
        a stop signal (on any rank)?  save last.pt and exit (RunInterrupted)
        outcomes = trainee.train_step(...)           # one update (few-shot) or iteration (several unrolls)
        each meta-update skipped for a non-finite loss or gradient is counted (NonFiniteGuard)
        every val_every steps, at the last one and when the time is spent:
            validate (rank 0), log a metrics.csv row, save last.pt (and best.pt when it improved)

A :class:`Trainee` is the algorithm: its step, its validation, its checkpoint. The loop keeps the interval's
figures (:class:`Interval`), the clock (:class:`Stopwatch`: the whole time, with validation time kept apart), the
progress bar (against the time budget when there is one) and, under ``torchrun``, makes every rank take the same
decisions (:mod:`.distributed`).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..schedules import run_progress
from . import distributed
from .distributed import DistContext
from .folder import NonFiniteError, RunFolder
from .process import StopSignals


def meta_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    grad_clip: float | None,
    reduce_gradients: Callable[[], None] | None = None,
) -> bool:
    """One meta-update of ``model`` (a meta-learner, a method's network or an update rule): backward of the
    meta-loss, ``reduce_gradients()`` if given (data-parallel training averages the gradients over the ranks
    there, :func:`.distributed.average_gradients`), global gradient-norm clipping (none when ``grad_clip`` is
    ``None``), optimizer step.

    The one non-finite guard of every run: a NaN or infinite meta-loss, or meta-gradient norm, skips the step, so
    ``model`` and the optimizer's state (Adam's moments and step count) stay exactly as they were; the gradients
    are cleared. Returns whether it stepped. With ``reduce_gradients`` every rank takes part in the reduction even
    when its own loss is not finite (it sends NaN gradients), so the averaged norm is NaN on every rank and all of
    them skip the same update: no rank waits at a collective the others left out.
    """
    optimizer.zero_grad(set_to_none=True)
    finite_loss = bool(torch.isfinite(loss).all())
    if finite_loss:
        loss.backward()
    elif reduce_gradients is None:
        return False
    if reduce_gradients is not None:
        if not finite_loss:
            for param in model.parameters():
                param.grad = torch.full_like(param, math.nan)
        reduce_gradients()
    # With max_norm=inf the clip multiplies by exactly 1.0: the same gradients, and their norm for the check.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf if grad_clip is None else grad_clip)
    if not math.isfinite(norm.item()):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


class NonFiniteGuard:
    """Counts the meta-updates that :func:`meta_update` skipped (non-finite meta-loss or meta-gradient) and stops
    the run after ``max_in_a_row`` of them in a row.

    ``skipped`` counts since the last :meth:`take_interval` (the metrics column);
    :meth:`state` / ``state=`` carry the counts through a checkpoint, for an exact resume.
    """

    def __init__(self, max_in_a_row: int, state: dict | None = None) -> None:
        self.max_in_a_row = max_in_a_row
        self.in_a_row, self.skipped = (state or {}).get("in_a_row", 0), (state or {}).get("skipped", 0)

    def record(self, stepped: bool, where: str, hint: str) -> None:
        """Count one meta-update (``where``: e.g. ``"update 57"``); raise :class:`NonFiniteError` after too many skips."""
        if stepped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteError(
                f"{self.in_a_row} meta-updates in a row, up to {where}, had a non-finite meta-loss or meta-gradient "
                f"and were skipped: the run stops (the weights are those before them; no checkpoint holds a NaN). {hint}"
            )

    def take_interval(self) -> int:
        """The number skipped since the previous call (the metrics column), and reset it."""
        skipped, self.skipped = self.skipped, 0
        return skipped

    def state(self) -> dict[str, Any]:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}


class Stopwatch:
    """The time of a run, continued from ``elapsed_s`` (and ``validation_s``) when it resumes, against
    ``max_minutes`` (or none). Validation time is counted apart (:meth:`validating`): :attr:`elapsed_s` is the whole
    time, :attr:`training_s` the time spent training, which the budget counts, so that every method gets the same
    training time however long its validations take."""

    def __init__(self, elapsed_s: float = 0.0, max_minutes: float | None = None, validation_s: float = 0.0) -> None:
        self.start = time.time() - elapsed_s
        self.max_minutes = max_minutes
        self.validation_s = validation_s

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.start

    @property
    def training_s(self) -> float:
        """The time spent outside validations."""
        return self.elapsed_s - self.validation_s

    def out_of_time(self) -> bool:
        """Whether the training-time budget is spent (never without ``max_minutes``)."""
        return self.max_minutes is not None and self.training_s >= 60 * self.max_minutes

    def validating(self) -> "_Lap":
        """Context manager around a validation: its seconds are added to :attr:`validation_s`."""
        return _Lap(self)


class _Lap:
    def __init__(self, watch: Stopwatch) -> None:
        self.watch = watch

    def __enter__(self) -> None:
        self.began = time.time()

    def __exit__(self, *exc: Any) -> None:
        self.watch.validation_s += time.time() - self.began


class Interval:
    """Sums of a step's figures (e.g. training loss and accuracy) since the last validation, and their count.

    Stored in checkpoints as ``(*sums, count)`` (a signal saves mid-interval: the resumed log equals an
    uninterrupted one)."""

    def __init__(self, n_figures: int, saved: Iterable[float] | None = None) -> None:
        values = tuple(saved) if saved is not None else (0.0,) * n_figures + (0,)
        self.sums, self.count = list(values[:-1]), int(values[-1])

    def add(self, figures: Iterable[float]) -> None:
        self.sums = [total + value for total, value in zip(self.sums, figures)]
        self.count += 1

    def means(self) -> tuple[float, ...]:
        """The mean of each figure (NaN when every step of the interval was skipped)."""
        return tuple(total / self.count if self.count else math.nan for total in self.sums)

    def reset(self) -> None:
        self.sums, self.count = [0.0] * len(self.sums), 0

    def saved(self) -> tuple:
        return (*self.sums, self.count)


@dataclass
class Schedule:
    """When the loop stops and validates."""

    unit: str  # "update" or "iteration": the state's step counter and metrics.csv's first column
    n_steps: int  # steps in total
    val_every: int  # steps between validations (unless validations is set)
    max_minutes: float | None  # time budget (training time), or None
    max_nonfinite: int  # meta-updates in a row skipped for non-finite values before the run stops
    hint: str  # what to change when too many were skipped
    description: str  # the progress bar's label
    validations: int | None = None  # instead of val_every: this many, at equal shares of the run's progress

    def progress(self, step: int, clock: Stopwatch) -> float:
        """How far the run is, in [0, 1] (:func:`fewshot_l2l.schedules.run_progress` of the training time)."""
        return run_progress(step, self.n_steps, clock.training_s, self.max_minutes)

    def shares_reached(self, step: int, clock: Stopwatch) -> int:
        """With ``validations``: how many of its equal shares of the run ``step`` steps have passed."""
        return math.floor(self.progress(step, clock) * self.validations + 1e-9)


class Trainee(ABC):
    """What :func:`train_loop` trains: the algorithm's step, validation and checkpoint."""

    figure_names: tuple[str, ...] = ()  # what train_step's figures are (the Interval's)

    @abstractmethod
    def train_step(self, state: dict, clock: Stopwatch) -> list[tuple[bool, tuple[float, ...]]]:
        """One step (``state[unit]`` steps are done): for each meta-update it made, whether it stepped (not
        skipped for a non-finite value) and its figures. On every rank."""

    def after_step(self, state: dict) -> None:
        """Bookkeeping after a step (e.g. the episodes count); on every rank."""

    def before_validation(self) -> None:
        """On every rank, before rank 0 validates (e.g. checking that the ranks' weights agree)."""

    @abstractmethod
    def validate(self, state: dict) -> Any:
        """The validation result after ``state``'s steps (rank 0)."""

    @abstractmethod
    def record(self, state: dict, result: Any, means: tuple[float, ...], skipped: int, bar: Any) -> bool:
        """Log ``result`` (metrics.csv row, messages) with the interval's ``means`` and ``skipped`` updates; raise the
        best score in ``state`` when it improved and return whether it did (rank 0)."""

    @abstractmethod
    def save(self, state: dict, interval: Interval, guard: NonFiniteGuard, improved: bool) -> None:
        """Write ``last.pt`` (and first ``best.pt`` when ``improved``); called on every rank (it may gather the
        ranks' generator states), rank 0 writes."""

    def postfix(self, means: tuple[float, ...]) -> dict[str, str]:
        """What the progress bar shows beside the count."""
        return {name: f"{value:.3f}" for name, value in zip(self.figure_names, means)}


class ProgressBar:
    """The steps done against the step budget, or, with a time budget, the training time spent against it (the
    step budget of a time-limited run is usually a "until the time is spent" sentinel)."""

    def __init__(self, schedule: Schedule, done: int, clock: Stopwatch, disable: bool) -> None:
        self.schedule, self.clock = schedule, clock
        self.timed = schedule.max_minutes is not None
        if self.timed:
            budget = 60 * schedule.max_minutes
            self.bar = tqdm(total=budget, initial=min(clock.training_s, budget),
                            desc=schedule.description, unit="s", disable=disable,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}{postfix}]")
        else:
            self.bar = tqdm(total=schedule.n_steps, initial=done, desc=schedule.description, unit=schedule.unit,
                            disable=disable)

    def step(self, done: int, postfix: dict[str, str]) -> None:
        """One step done (``done`` in all); one redraw: the postfix is set without refreshing, then the count."""
        if self.timed:
            postfix = {self.schedule.unit: str(done), **postfix}
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(min(self.clock.training_s, self.bar.total) - self.bar.n)
        else:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def train_loop(trainee: Trainee, schedule: Schedule, run: RunFolder | None, stop: StopSignals, state: dict,
               interval: Interval, guard: NonFiniteGuard, ctx: DistContext = distributed.SINGLE,
               progress: bool = True) -> dict:
    """Train ``trainee`` from ``state`` (its counters, best score, ``elapsed_s``) as ``schedule`` says; returns the
    final state (rank 0's, on every rank).

    Raises :class:`.process.RunInterrupted` once a SIGTERM / SIGINT (on any rank) made it save ``last.pt``,
    :class:`.folder.NonFiniteError` after ``schedule.max_nonfinite`` meta-updates in a row were skipped.
    """
    unit = schedule.unit
    clock = Stopwatch(state["elapsed_s"], schedule.max_minutes, state.get("validation_s", 0.0))
    bar = ProgressBar(schedule, state[unit], clock, disable=not progress or not ctx.is_main)
    try:  # the bar is closed however the loop ends: a message after it starts a line of its own
        out_of_time = False
        while state[unit] < schedule.n_steps and not out_of_time:
            # SIGTERM / SIGINT (on any rank: every rank stops at this step): save the exact state and exit.
            signum = distributed.max_over_ranks(stop.requested or 0, ctx)
            if signum:
                state["elapsed_s"], state["validation_s"] = clock.elapsed_s, clock.validation_s
                trainee.save(state, interval, guard, improved=False)
                bar.close()  # before the message that interrupted() prints
                raise stop.interrupted(Path(run.last) if run is not None else Path("last.pt"), f"{unit} {state[unit]}",
                                       signum)
            for stepped, figures in trainee.train_step(state, clock):
                guard.record(stepped, f"{unit} {state[unit] + 1}", schedule.hint)
                if stepped:
                    interval.add(figures)
            state[unit] += 1
            trainee.after_step(state)
            skipped = {"skipped": str(guard.skipped)} if guard.skipped else {}
            bar.step(state[unit], {**trainee.postfix(interval.means()), **skipped})

            out_of_time = distributed.any_rank(clock.out_of_time(), ctx)  # every rank stops at the same step
            if schedule.validations is None:
                due = state[unit] % schedule.val_every == 0
            else:  # each time one more share of the run has passed (the latest of the ranks' clocks: all alike)
                reached = distributed.max_over_ranks(schedule.shares_reached(state[unit], clock), ctx)
                due, state["validations_done"] = reached > state.get("validations_done", 0), reached
            if due or state[unit] == schedule.n_steps or out_of_time:
                trainee.before_validation()
                skipped_in_interval = guard.take_interval()  # on every rank, so that each guard's state stays rank 0's

                def validate() -> bool:  # rank 0; the others wait in on_main, and hear of a failure
                    with clock.validating():
                        result = trainee.validate(state)
                    state["elapsed_s"], state["validation_s"] = clock.elapsed_s, clock.validation_s
                    return trainee.record(state, result, interval.means(), skipped_in_interval, bar)

                improved = bool(distributed.on_main(validate, ctx))
                interval.reset()
                trainee.save(state, interval, guard, improved)
    finally:
        bar.close()
    return ctx.broadcast_object(state)  # rank 0 alone validated: its best score and time
