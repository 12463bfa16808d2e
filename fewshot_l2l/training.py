"""Meta-training of any few-shot method (:mod:`fewshot_l2l.methods`) on the one loop (:mod:`fewshot_l2l.runs.loop`).

``meta_train(config)`` builds the method of ``config.method`` on the training split's images (every method starts
from the same CNN under the same seed), then each update draws a batch (a meta-batch of episodes, or fine-tuning's
mini-batch of images), takes the method's training loss and one Adam step (:func:`~fewshot_l2l.runs.loop.meta_update`:
clipped, skipped when not finite), and every ``val_every`` episodes validates on the same seeded validation episodes
(:func:`fewshot_l2l.evaluation.evaluate`).

``RUN_DIR`` (:class:`fewshot_l2l.runs.folder.RunFolder`) receives ``init.pt`` (the untrained starting point, same
seed), ``last.pt`` (after every validation; resume from it with ``resume=True``), ``best.pt`` (best validation
accuracy so far), ``metrics.csv`` (one row per validation) and ``curves.png`` (the whole ``metrics.csv`` drawn,
:func:`fewshot_l2l.plots.plot_training_curves`), all written atomically. The run holds the folder's lock, skips
(and counts, in ``metrics.csv``) meta-updates with a non-finite meta-loss or meta-gradient and stops after
``max_nonfinite`` in a row, and on SIGTERM / SIGINT saves ``last.pt`` after the current update and exits
(``docs/guarantees.md``). Checkpoints record the dataset's content checksum: resuming or evaluating on another
build of the dataset is refused.

Validation normalizes the query set as evaluation does by default (``val_query_bn="support"``, not transductive),
whatever ``query_bn`` training uses, so that ``best.pt`` is chosen under the protocol it is reported under.

Under ``torchrun`` the loop is data-parallel for every method (:mod:`fewshot_l2l.runs.distributed`): each rank
draws its share of the meta-batch from its own sampler stream, the gradients are averaged over the ranks before
clipping and Adam, every rank takes the same stop / skip / out-of-time decisions, and rank 0 alone holds the lock,
validates and writes ``RUN_DIR``.
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoints import checkpoint_state, load_checkpoint
from .config import FewShotConfig
from .data import load_splits
from .data.episodes import EpisodeSampler, FewShotSplit
from .data.identity import check_dataset, dataset_identity
from .evaluation import EvalResult, NonFiniteEvaluationError, evaluate
from .methods import FewShotMethod, build_method, method_class, new_learner
from .methods.base import EVAL_BATCH_SIZE
from .plots import plot_training_curves, require_matplotlib
from .runs import distributed
from .runs.folder import NonFiniteError, RunFolder, check_resume_config
from .runs.loop import Interval, NonFiniteGuard, Schedule, Stopwatch, Trainee, meta_update, train_loop
from .runs.process import StopSignals
from .schedules import PROGRESS_SCHEDULES, run_progress, scheduled_lr

# elapsed_s: the whole time since the start (validations included); train_s: the training time, which --max-minutes
# counts; skipped_updates: meta-updates of the interval skipped for a non-finite meta-loss or meta-gradient.
METRICS_COLUMNS = ("update", "episodes", "train_loss", "train_acc", "val_acc", "val_ci95", "elapsed_s", "skipped_updates",
                   "train_s")


def episode_sampler(split: FewShotSplit, config: FewShotConfig, seed: int,
                    episodes: tuple[int, int, int] | None = None) -> EpisodeSampler:
    """The sampler of ``config``'s episodes on ``split`` (``episodes``: another ``(n_way, k_shot, n_query)``, e.g. the
    method's training episodes); a split too small for them is a ``ValueError`` naming it."""
    own = (config.n_way, config.k_shot, config.n_query)
    n_way, k_shot, n_query = episodes or own
    # Training episodes of their own (Prototypical Networks' --train-way / --train-query) are named as such.
    own_options = (n_way, k_shot, n_query) == own
    options = "--n-way, --k-shot or --n-query" if own_options else "--train-way, --k-shot or --train-query"
    try:
        return EpisodeSampler(split, n_way, k_shot, n_query, seed=seed)
    except ValueError as error:
        raise ValueError(
            f"the {split.name} split of {config.data or config.dataset} ({split.n_classes} classes) cannot give "
            f"{n_way}-way episodes of {k_shot} + {n_query} images per class ({error}): lower {options}, or "
            "use a larger build of the dataset"
        ) from error


def meta_train(config: FewShotConfig, progress: bool = True, train_episodes=None) -> dict:
    """Train ``config.method`` on ``config.dataset`` and return a summary dict (best validation accuracy, paths, time).

    ``train_episodes``: another source of the training episodes than ``config``'s train split, with the
    interface of :class:`EpisodeSampler` (``sample``, ``generator``), e.g. a learn2learn ``TaskDataset`` through
    :class:`fewshot_l2l.interop.l2l_episodes.TaskEpisodes`; validation and the learner's input shape still
    come from ``config``'s dataset.

    Raises :class:`fewshot_l2l.runs.process.RunLockedError` while another process runs in ``config.out``;
    :class:`fewshot_l2l.runs.folder.NonFiniteError` after ``config.max_nonfinite`` meta-updates in a row were
    skipped for a non-finite meta-loss or meta-gradient; :class:`fewshot_l2l.runs.process.RunInterrupted` (a
    ``SystemExit`` with status ``128 + signal``) once a SIGTERM / SIGINT made it save ``last.pt``. In a process
    group (:func:`fewshot_l2l.runs.distributed.init_process_group`) it trains data-parallel and every rank returns
    rank 0's summary.
    """
    require_matplotlib()  # curves.png is drawn at every validation: fail now rather than after the first interval
    ctx = distributed.current()  # distributed.SINGLE without a process group
    share = distributed.local_share(config.meta_batch, ctx)
    if train_episodes is not None and ctx.world_size > 1:
        raise ValueError(
            "meta_train: train_episodes (an episode source of your own) cannot be split over the "
            f"{ctx.world_size} ranks of this process group (each rank would draw the same episodes); run it in one process"
        )
    device = distributed.rank_device(config.device, ctx.local_rank, ctx.enabled)
    if config.data is not None:  # stored absolute, so that evaluation from another folder finds the file
        config = replace(config, data=os.path.abspath(config.data))
    with ExitStack() as stack:
        # Rank 0 alone holds the run folder (and its lock); a failure there (a locked folder) is raised on every rank.
        folder = lambda: RunFolder(config.out, METRICS_COLUMNS, config.resume, config.force)  # noqa: E731
        run = distributed.on_main(lambda: stack.enter_context(folder()), ctx)
        stop = stack.enter_context(StopSignals())
        trainee = FewShotTrainee(config, device, run, ctx, share, train_episodes)
        state = train_loop(trainee, trainee.schedule, run, stop, trainee.state, trainee.interval, trainee.guard, ctx,
                           progress)
    return {
        "method": config.method,
        "best_val_acc": state["best_val_acc"],
        "episodes": state["episodes"],
        "updates": state["update"],
        "elapsed_s": state["elapsed_s"],
        "train_s": state["elapsed_s"] - state.get("validation_s", 0.0),
        "validation_s": state.get("validation_s", 0.0),
        "best": str(Path(config.out) / "best.pt"),
        "last": str(Path(config.out) / "last.pt"),
    }


class FewShotTrainee(Trainee):
    """A few-shot method on the loop: its data, Adam, its checkpoints and its validation."""

    figure_names = ("loss", "acc")

    def __init__(self, config: FewShotConfig, device: torch.device, run: RunFolder | None, ctx: distributed.DistContext,
                 share: int, train_episodes: Any) -> None:
        self.config, self.device, self.run, self.ctx, self.share = config, device, run, ctx, share
        splits = load_splits(config.dataset, config.data, seed=config.seed, rotate=config.rotate)
        train_split, self.val_split = splits["train"].to(device), splits["val"].to(device)
        # Too small a split fails here, before any model is built (an n_way of 2**31 - 1 would allocate tens of GB
        # first) and before the first update, with a message naming it (train and val alike).
        episode_sampler(train_split, config, config.seed, method_class(config.method).training_episodes(config))
        episode_sampler(self.val_split, config, config.seed + 1)
        self.dataset = dataset_identity(config.dataset, config.data, splits)
        self.method: FewShotMethod = build_method(config, new_learner(config, train_split.image_shape,
                                                                      train_split.n_classes))
        self.method.model.to(device)
        self.method.start_training()
        self.optimizer = torch.optim.Adam(self.method.model.parameters(), lr=config.lr)
        if train_episodes is None:  # rank 0's stream is the single process's: the union over ranks replays in one process
            self.sampler = self.method.training_sampler(train_split, distributed.rank_seed(config.seed, ctx.rank))
        else:
            self.sampler = train_episodes
        self.inner_generator = torch.Generator().manual_seed(config.seed)  # the same on every rank, as in one process
        self.per_update = self.method.episodes_per_update(config)
        self.schedule = Schedule(
            unit="update", n_steps=math.ceil(config.episodes / self.per_update),
            val_every=max(1, round(config.val_every / self.per_update)), max_minutes=config.max_minutes,
            max_nonfinite=config.max_nonfinite, description=f"train {config.method}", validations=config.validations,
            hint=(f"Lower --lr ({config.lr})" + (f" or --grad-clip ({config.grad_clip})" if config.grad_clip else "")
                  + f"; {Path(config.out) / 'last.pt'}, if any, is the last checkpoint."),
        )
        self.sampler_states: dict = {}  # {rank: sampler state} of every stream, saved with each checkpoint
        state = {"update": 0, "episodes": 0, "best_val_acc": -1.0, "elapsed_s": 0.0}
        saved = ctx.broadcast_object(distributed.on_main(lambda: self._open_run(state), ctx))
        progress = saved["progress"] if saved is not None else {}
        if saved is not None:
            state = progress["state"]
            self.method.model.load_state_dict(saved[self.method.state_key])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.sampler_states = distributed.saved_sampler_states(progress)
            if ctx.rank in self.sampler_states:  # else a stream this run adds (more ranks than before): from its seed
                self.sampler.generator.set_state(self.sampler_states[ctx.rank])
            if "inner_rng" in progress:  # baselines' checkpoints from before the one loop have none (they drew none)
                self.inner_generator.set_state(progress["inner_rng"])
        self.state = state
        # A signal saves mid-interval: the interval's sums continue, so the resumed log equals an uninterrupted one.
        self.interval = Interval(2, progress.get("interval"))
        self.guard = NonFiniteGuard(config.max_nonfinite, progress.get("nonfinite"))
        # Under a process group the gradients are averaged over the ranks; one process takes meta_update's plain path.
        model = self.method.model
        self.reduce = (lambda: distributed.average_gradients(model.parameters(), ctx)) if ctx.enabled else None
        self.timed_schedule = config.lr_schedule in PROGRESS_SCHEDULES and config.max_minutes is not None

    def _open_run(self, state: dict) -> dict | None:
        """Rank 0: start the run folder, or check and return the checkpoint to resume from."""
        if not self.run.resuming:
            self.run.start(checkpoint_state(self.method, self.optimizer, {"state": dict(state)}, self.dataset))
            return None
        saved = load_checkpoint(self.run.last, "cpu")  # CPU: rank 0 sends it to the others
        if saved.config.method != self.config.method:
            raise ValueError(f"--resume {self.run.last}: the run in {self.run.path} was trained with --method "
                             f"{saved.config.method}, not --method {self.config.method}: resume it with scripts/train.py "
                             f"--method {saved.config.method} --resume, or choose another --out")
        # The settings first (a changed --dataset is named as such), then the data's content (another build of it).
        check_resume_config(asdict(saved.config), asdict(self.config), type(self.config).resumable_fields(),
                            self.run.last)
        check_dataset(saved.checkpoint.get("dataset"), self.dataset, f"--resume {self.run.last}")
        self.run.resume(saved.config, self.config, saved.checkpoint["progress"]["state"]["update"],
                        saved.checkpoint.get("run"))
        return saved.checkpoint

    def train_step(self, state: dict, clock: Stopwatch) -> list[tuple[bool, tuple[float, ...]]]:
        config, ctx = self.config, self.ctx
        batch = self.sampler.sample(self.share)
        # Under a time budget the schedule reads the latest of the ranks' clocks (as the budget's stop does), the
        # same on every rank, so that all ranks step alike.
        train_s = distributed.max_over_ranks(clock.training_s, ctx) if self.timed_schedule else 0.0
        progress = run_progress(state["update"], self.schedule.n_steps, train_s, config.max_minutes)
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(config.lr, config.lr_schedule, progress, state["episodes"], config.lr_halvings)
        loss, accuracy = self.method.training_loss(batch, self.inner_generator)
        # Every rank gets the same averaged gradient, so the same skip decision.
        stepped = meta_update(self.method.model, self.optimizer, loss, config.grad_clip, reduce_gradients=self.reduce)
        return [(stepped, tuple(distributed.mean_over_ranks((loss.item(), accuracy.item()), ctx)))]

    def after_step(self, state: dict) -> None:
        state["episodes"] += self.per_update

    def before_validation(self) -> None:
        distributed.check_in_sync(self.method.model, self.ctx)

    def validate(self, state: dict) -> EvalResult:
        config = self.config
        try:
            # The same seed and batch size for every method: the same validation episodes.
            return evaluate(self.method, self.val_split, n_episodes=config.val_episodes, seed=config.seed + 1,
                            batch_size=EVAL_BATCH_SIZE, query_bn=config.val_query_bn, progress=False)
        except NonFiniteEvaluationError as error:  # the weights themselves are finite (meta_update saw to that)
            raise NonFiniteError(
                f"training stopped at update {state['update']}: its validation diverged ({error}); "
                f"{self.run.kept()}. {self.schedule.hint.split(';')[0]} to keep the training stable."
            ) from error

    def record(self, state: dict, result: EvalResult, means: tuple[float, ...], skipped: int, bar: Any) -> bool:
        config, run = self.config, self.run
        train_loss, train_acc = means
        run.log(update=state["update"], episodes=state["episodes"], train_loss=train_loss, train_acc=train_acc,
                val_acc=result.accuracy, val_ci95=result.ci95, elapsed_s=state["elapsed_s"], skipped_updates=skipped,
                train_s=state["elapsed_s"] - state["validation_s"])
        plot_training_curves(run.read_metrics(), run.path / "curves.png",
                             f"{config.method}, {config.dataset}, {config.n_way}-way {config.k_shot}-shot "
                             f"({run.path.name})", chance=1 / config.n_way)
        skipped_note = f", {skipped} meta-updates skipped (non-finite)" if skipped else ""
        bar.write(f"update {state['update']}: episodes {state['episodes']}, train acc {train_acc:.3f}, val acc "
                  f"{result}{skipped_note}")
        improved = result.accuracy > state["best_val_acc"]
        if improved:
            state["best_val_acc"] = result.accuracy
        return improved

    def save(self, state: dict, interval: Interval, guard: NonFiniteGuard, improved: bool) -> None:
        # On every rank: it gathers the ranks' sampler states, then rank 0 writes.
        self.sampler_states = distributed.gather_sampler_states(self.sampler.generator, self.ctx, self.sampler_states)

        def write() -> None:
            progress = {
                "state": dict(state),
                "sampler_rng": self.sampler.generator.get_state(),
                "sampler_rngs": self.sampler_states,
                "inner_rng": self.inner_generator.get_state(),
                "interval": interval.saved(),
                "nonfinite": guard.state(),
            }
            self.run.save(checkpoint_state(self.method, self.optimizer, progress, self.dataset), improved,
                          state["update"])

        distributed.on_main(write, self.ctx)  # the others wait for it, and hear of a failure (a full disk)
