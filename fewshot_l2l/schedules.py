"""Learning-rate schedules of the outer optimizer (Adam), shared by every few-shot method."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "halving", "halving-over-run")
PROGRESS_SCHEDULES = ("cosine", "halving-over-run")  # those that read the run's progress (so its clock, under a time budget)
# Snell et al. 2017 (Prototypical Networks), their code's StepLR(decay_every=20 epochs of 100 episodes, gamma=0.5):
# Adam's learning rate halved every 2,000 episodes.
HALVING_EPISODES = 2000
# halving-over-run: how many times the rate is halved over a run. Snell et al.'s runs stop 200 epochs (2 x 10**4
# episodes, 10 halvings) after their best validation epoch, so each of their runs halves it at least 10 times.
LR_HALVINGS = 10


def scheduled_lr(lr: float, schedule: str, progress: float, episodes_done: int = 0,
                 halvings: int = LR_HALVINGS) -> float:
    """Adam's learning rate at ``progress`` (0 at the first meta-update, 1 at the end of the run), after
    ``episodes_done`` training episodes.

    ``constant``: ``lr``. ``cosine``: ``lr * (1 + cos(pi * progress)) / 2``, from ``lr`` towards 0 at the end
    (Loshchilov & Hutter, SGDR, 2017, without restarts); :func:`run_progress` says how far a run is.
    ``halving``: ``lr / 2`` every :data:`HALVING_EPISODES` episodes (Snell et al.'s schedule, whatever the budget).
    ``halving-over-run``: the same steps fitted to the budget: ``lr`` halved ``halvings`` times, at progress
    ``1 / (halvings + 1)``, ``2 / (halvings + 1)``, ..., so that each rate lasts an equal share of the run.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "halving":
        return lr * 0.5 ** (episodes_done // HALVING_EPISODES)
    if schedule == "halving-over-run":
        return lr * 0.5 ** min(math.floor(progress * (halvings + 1)), halvings)
    raise ValueError(f"scheduled_lr: schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def run_progress(update: int, n_updates: int, elapsed_s: float = 0.0, max_minutes: float | None = None) -> float:
    """How far a run is, in [0, 1]: the larger of the updates done (``update / n_updates``) and, with a time
    budget, the share of it spent (``elapsed_s / (60 * max_minutes)``; ``elapsed_s``: the training time, which the
    budget counts, validations left out).

    So a cosine schedule ends where the run ends, whichever of ``episodes`` or ``max_minutes`` ends it, on any
    machine. Without a time budget it is a function of the update count alone, which a resumed run continues
    exactly; with one it depends on the machine's speed, as the number of episodes done does: a resumed run
    continues from its stored elapsed time, but is not bit-identical to an uninterrupted one, and resuming with a
    larger ``max_minutes`` stretches the rest of the schedule (the rate rises again).
    """
    fraction = update / n_updates
    if max_minutes is not None:
        fraction = max(fraction, elapsed_s / (60.0 * max_minutes))
    return min(fraction, 1.0)
