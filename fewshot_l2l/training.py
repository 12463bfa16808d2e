"""Episodic meta-training: a lean, linear loop with validation, atomic checkpoints and a CSV log.

``RUN_DIR`` (:class:`fewshot_l2l.runs.RunFolder`) receives ``init.pt`` (the
untrained starting point, same seed), ``last.pt`` (after every validation;
resume from it with ``resume=True``), ``best.pt`` (best validation accuracy so
far), ``metrics.csv`` (one row per validation) and ``curves.png`` (the whole
``metrics.csv`` drawn, :func:`fewshot_l2l.plots.plot_training_curves`), all
written atomically. The run holds the folder's lock, skips (and counts, in
``metrics.csv``) meta-updates with a non-finite meta-loss or meta-gradient and
stops after ``max_nonfinite`` in a row, and on SIGTERM / SIGINT saves ``last.pt``
after the current update and exits (:mod:`fewshot_l2l.runs`, :mod:`fewshot_l2l.process`;
``docs/guarantees.md``). Checkpoints record the dataset's content checksum:
resuming or evaluating on another build of the dataset is refused.

Validation normalizes the query set as evaluation does by default (``val_query_bn="support"``, not
transductive), whatever ``query_bn`` meta-training uses, so that ``best.pt`` is chosen under the protocol
it is reported under; checkpoints from before that field validated with ``query_bn`` and resume so.

Under ``torchrun`` the loop is data-parallel (:mod:`fewshot_l2l.distributed`): each rank draws its
share of the meta-batch from its own sampler stream, the meta-gradients are averaged over the
ranks before clipping and Adam, every rank takes the same stop / skip / out-of-time decisions,
and rank 0 alone holds the lock, validates and writes ``RUN_DIR``.
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .adaptation import BATCHED_LEARNER_MODES, default_inner_steps, run_episodes
from .checkpoints import corrupt, read_checkpoint, refuse_nonfinite
from .data import ROTATE_CHOICES, load_splits
from .data.episodes import EpisodeSampler, FewShotSplit
from .data.identity import check_dataset, dataset_identity, resolve_stored_path
from .evaluation import evaluate
from .learner import BN_EPS, EVAL_QUERY_BN, QUERY_BN_MODES, ConvLearner, LearnerConfig
from .kernels import STEP_KERNELS
from .meta_learner import AUTHORS_FORGET_BIAS_INIT, FORGET_BIAS_INIT, MetaLearner
from .plots import require_matplotlib
from .process import StopSignals
from .runs import NonFiniteGuard, RunFolder, Stopwatch, record_validation
from .utils import SEED_MAX, check_int, meta_update, resolve_device

# skipped_updates: meta-updates of the interval skipped for a non-finite meta-loss or meta-gradient.
METRICS_COLUMNS = ("update", "episodes", "train_loss", "train_acc", "val_acc", "val_ci95", "elapsed_s", "skipped_updates")


# Settings that may differ when a run is resumed: budgets, intervals, where it runs and how fast.
RESUMABLE_FIELDS = {"episodes", "max_minutes", "val_every", "val_episodes", "device", "data", "out", "resume",
                    "compile", "amp", "max_nonfinite",
                    "batched_learner", "step_kernel"}


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, schedule: str, progress: float) -> float:
    """Adam's learning rate at ``progress`` (0 at the first meta-update, 1 at the end of the run).

    ``constant``: ``lr``. ``cosine``: ``lr * (1 + cos(pi * progress)) / 2``, from ``lr`` towards 0 at the end
    (Loshchilov & Hutter, SGDR, 2017, without restarts). :func:`run_progress` says how far a run is.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"scheduled_lr: schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def run_progress(update: int, n_updates: int, elapsed_s: float = 0.0, max_minutes: float | None = None) -> float:
    """How far a run is, in [0, 1]: the larger of the updates done (``update / n_updates``) and, with a time
    budget, the share of it spent (``elapsed_s / (60 * max_minutes)``).

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


@dataclass
class TrainConfig:
    """All meta-training settings (stored in every checkpoint)."""

    dataset: str = "glyphs"
    data: str | None = None
    rotate: str = "auto"  # splits whose classes get 90/180/270-degree rotated copies (data.load_splits)
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    inner_steps: int | None = None  # None: 12 for 1-shot, 8 for 5-shot (authors' configuration)
    inner_batch_size: int | None = None  # None: the whole support set every step
    meta_batch: int = 4
    episodes: int = 2000  # meta-training episodes in total (meta-updates x meta_batch)
    max_minutes: float | None = None  # also stop (after a final validation) once this much training time has passed
    lr: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": Adam's lr annealed from lr to 0 over the run (episodes or max_minutes)
    grad_clip: float = 0.25
    hidden_size: int = 20
    hidden_channels: int = 32
    second_order: bool = False
    query_bn: str = "batch"  # in meta-training: transductive, as the authors train
    # Validation (and so best.pt's choice) under the evaluation protocol, not transductive (learner.EVAL_QUERY_BN).
    val_query_bn: str = EVAL_QUERY_BN
    forget_bias_init: tuple[float, float] = FORGET_BIAS_INIT  # b_F ~ U(4, 6), ours (the authors: U(4, 5))
    divide_grad: bool = False  # the authors divide the learner's gradient by the support batch size again (adapt)
    bn_eps: float = BN_EPS  # ours, PyTorch's 1e-5 (the authors: 1e-3)
    compile: bool = False  # torch.compile the meta-learner step (measure first: scripts/benchmark.py --compile)
    amp: bool = False  # bfloat16 autocast for the learner's forward passes (meant for CUDA)
    batched_learner: str = "auto"  # the learner vmapped over the meta-batch: auto (on CUDA), on, off
    step_kernel: str = "auto"  # the meta-learner step: auto (fused where built and applicable), fused, torch (MetaLSTM)
    val_every: int = 400  # episodes between validations
    val_episodes: int = 200
    device: str = "auto"
    seed: int = 0
    out: str = "runs/default"
    resume: bool = False
    max_nonfinite: int = 10  # stop after this many meta-updates in a row skipped for a non-finite loss or gradient

    def __post_init__(self) -> None:
        if self.inner_steps is None:
            self.inner_steps = default_inner_steps(self.k_shot)
        check_int("TrainConfig", "n_way", self.n_way, 2)  # one class would make every episode 100% accurate
        for name in ("k_shot", "n_query", "inner_steps", "meta_batch", "episodes", "val_every", "val_episodes",
                     "hidden_size", "hidden_channels", "max_nonfinite"):
            check_int("TrainConfig", name, getattr(self, name), 1)
        if self.inner_batch_size is not None:
            check_int("TrainConfig", "inner_batch_size", self.inner_batch_size, 1)
        check_int("TrainConfig", "seed", self.seed, 0, SEED_MAX)
        for name in ("second_order", "divide_grad", "compile", "amp", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig: {name} must be True or False, got {getattr(self, name)!r}")
        if self.rotate not in ROTATE_CHOICES:
            raise ValueError(f"TrainConfig: rotate must be one of {ROTATE_CHOICES}, got {self.rotate!r}")
        for name in ("query_bn", "val_query_bn"):
            if getattr(self, name) not in QUERY_BN_MODES:
                raise ValueError(f"TrainConfig: {name} must be one of {QUERY_BN_MODES}, got {getattr(self, name)!r}")
        try:
            low, high = self.forget_bias_init = tuple(float(v) for v in self.forget_bias_init)
        except (TypeError, ValueError):
            raise ValueError(f"TrainConfig: forget_bias_init must be a range (low, high), got {self.forget_bias_init!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"TrainConfig: forget_bias_init must be a finite range (low < high), got {self.forget_bias_init}")
        if not (math.isfinite(self.bn_eps) and self.bn_eps > 0):
            raise ValueError(f"TrainConfig: bn_eps must be a positive finite number, got {self.bn_eps}")
        # "not x > 0" rather than "x <= 0": NaN compares False with everything.
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ValueError(f"TrainConfig: max_minutes must be a positive finite number (or None), got {self.max_minutes}")
        for name in ("lr", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"TrainConfig: {name} must be a positive finite number, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig: lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.batched_learner not in BATCHED_LEARNER_MODES:
            raise ValueError(f"TrainConfig: batched_learner must be one of {BATCHED_LEARNER_MODES}, got {self.batched_learner!r}")
        if self.step_kernel not in STEP_KERNELS:
            raise ValueError(f"TrainConfig: step_kernel must be one of {STEP_KERNELS}, got {self.step_kernel!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The configuration a checkpoint stored; a field it lacks (older code) gets the value that code used."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        if "val_query_bn" not in known:  # before the field, validation used the training query_bn
            known["val_query_bn"] = known.get("query_bn", "batch")
        return cls(**known)


# The authors' released configuration (Ravi & Larochelle's Torch code) where ours differs: an update after
# every episode, b_F ~ U(4, 5), the gradient divided by the batch size a second time, batch-norm eps 1e-3,
# and the query set normalized with its own statistics in meta-training. One flag of train.py: --authors-config.
AUTHORS_CONFIG = {"meta_batch": 1, "forget_bias_init": AUTHORS_FORGET_BIAS_INIT, "divide_grad": True, "bn_eps": 1e-3,
                  "query_bn": "batch"}


def authors_config(config: TrainConfig) -> TrainConfig:
    """``config`` with :data:`AUTHORS_CONFIG`'s settings (everything else, e.g. inner steps, as given)."""
    return replace(config, **AUTHORS_CONFIG)


def build_models(config: TrainConfig, image_shape: tuple[int, int, int]) -> tuple[MetaLearner, ConvLearner]:
    """The learner for ``image_shape`` ``(C, H, W)`` and a meta-learner initialized from it (seeded by ``config.seed``).

    Leaves the global generators as they were: the meta-learner draws its weights
    from torch's global CPU generator, so that one is seeded inside a fork of it.
    """
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"build_models: images must be square, got {height}x{width}")
    learner = ConvLearner(LearnerConfig(channels, height, config.n_way, config.hidden_channels, bn_eps=config.bn_eps))
    with torch.random.fork_rng(devices=[]):  # CPU only: torch.manual_seed would also reseed CUDA's, unforked
        torch.default_generator.manual_seed(config.seed)
        init = learner.init_params(torch.Generator().manual_seed(config.seed))
        meta_learner = MetaLearner(init, config.hidden_size, forget_bias_init=config.forget_bias_init,
                                   step_kernel=config.step_kernel)
    return meta_learner, learner


def checkpoint_state(meta_learner, optimizer, learner, config, progress: dict, dataset: dict | None = None) -> dict:
    return {
        "method": "meta-lstm",  # baselines.METHODS; evaluate.py reads it (checkpoints without it are meta-lstm)
        "meta_learner": meta_learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "learner": learner.state(),
        "config": asdict(config),
        "progress": progress,
        "dataset": dataset,  # dataset_identity(): what resume and evaluation check the data against
    }


def checkpoint_splits(path: str | Path, config: TrainConfig, checkpoint: dict, data: str | None = None,
                      learner: ConvLearner | None = None) -> dict[str, FewShotSplit]:
    """The splits to evaluate the checkpoint ``path`` on: those of ``data``, or by default of the dataset it was
    trained on (a relative path of an older checkpoint is looked up as :func:`resolve_stored_path` says); images
    of another shape than ``learner`` takes are refused first (the most specific message), then another build of
    the dataset (:func:`fewshot_l2l.data.identity.check_dataset`)."""
    data = data if data is not None else resolve_stored_path(config.data, path, config.out)
    data = os.path.abspath(data) if data is not None else None
    splits = load_splits(config.dataset, data, seed=config.seed, rotate=config.rotate)
    if learner is not None:
        for name, split in splits.items():
            learner.check_images(split.image_shape, f"split {name!r} of {data or config.dataset}")
    check_dataset(checkpoint.get("dataset"), dataset_identity(config.dataset, data, splits), f"checkpoint {path}")
    return splits


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MetaLearner, ConvLearner, TrainConfig, dict]:
    """Rebuild ``(meta_learner, learner, config, raw_checkpoint)`` from a ``.pt`` file written by :func:`meta_train`.

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` for a path that is no file, and
    ``ValueError`` ("... is not a fewshot_l2l checkpoint or is corrupt") for any other file
    (:func:`fewshot_l2l.checkpoints.read_checkpoint`).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, device, "fewshot_l2l", ("learner", "config", "meta_learner"))
    try:
        learner = ConvLearner(LearnerConfig(**checkpoint["learner"]))
        config = TrainConfig.from_dict(checkpoint["config"])
        with torch.random.fork_rng(devices=[]):  # its random init, overwritten below, must not consume the global generator
            meta_learner = MetaLearner(torch.zeros(learner.n_params), config.hidden_size)
        meta_learner.load_state_dict(checkpoint["meta_learner"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise corrupt(path, "fewshot_l2l", error) from error
    refuse_nonfinite(path, {"meta_learner": checkpoint["meta_learner"], "optimizer": checkpoint.get("optimizer")})
    return meta_learner.to(device), learner, config, checkpoint


def episode_sampler(split: FewShotSplit, config: TrainConfig, seed: int) -> EpisodeSampler:
    """The sampler of ``config``'s episodes on ``split``; a split too small for them is a ``ValueError`` naming it."""
    try:
        return EpisodeSampler(split, config.n_way, config.k_shot, config.n_query, seed=seed)
    except ValueError as error:
        raise ValueError(
            f"the {split.name} split of {config.data or config.dataset} ({split.n_classes} classes) cannot give "
            f"{config.n_way}-way episodes of {config.k_shot} + {config.n_query} images per class ({error}): lower "
            "--n-way, --k-shot or --n-query, or use a larger build of the dataset"
        ) from error


def meta_train(config: TrainConfig, progress: bool = True, train_episodes=None) -> dict:
    """Meta-train on ``config.dataset`` and return a summary dict (best validation accuracy, paths, time).

    ``train_episodes``: another source of the training episodes than ``config``'s train split, with the
    interface of :class:`EpisodeSampler` (``sample``, ``generator``), e.g. a learn2learn ``TaskDataset`` through
    :class:`fewshot_l2l.interop.l2l_episodes.TaskEpisodes`; validation and the learner's input shape still
    come from ``config``'s dataset.

    Raises :class:`fewshot_l2l.process.RunLockedError` while another process runs in
    ``config.out``; :class:`fewshot_l2l.runs.NonFiniteError` after ``config.max_nonfinite``
    meta-updates in a row were skipped for a non-finite meta-loss or meta-gradient;
    :class:`fewshot_l2l.process.RunInterrupted` (a ``SystemExit`` with status
    ``128 + signal``) once a SIGTERM / SIGINT made it save ``last.pt``.
    On CPU, call :func:`fewshot_l2l.utils.tune_cpu_allocator` first (as ``fewshot-train`` does) for speed.
    In a process group (:func:`fewshot_l2l.distributed.init_process_group`) it trains data-parallel
    and every rank returns rank 0's summary.
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
        run = distributed.on_main(lambda: stack.enter_context(RunFolder(config.out, METRICS_COLUMNS, config.resume)), ctx)
        stop = stack.enter_context(StopSignals())
        return _meta_train(config, device, run, stop, progress, train_episodes, ctx, share)


def _meta_train(config: TrainConfig, device: torch.device, run: RunFolder | None, stop: StopSignals, progress: bool,
                train_episodes, ctx: distributed.DistContext, share: int) -> dict:
    splits = load_splits(config.dataset, config.data, seed=config.seed, rotate=config.rotate)
    train_split, val_split = splits["train"].to(device), splits["val"].to(device)
    dataset = dataset_identity(config.dataset, config.data, splits)
    meta_learner, learner = build_models(config, train_split.image_shape)
    meta_learner.to(device)
    if config.compile:
        meta_learner.compile_step()
    optimizer = torch.optim.Adam(meta_learner.parameters(), lr=config.lr)
    if train_episodes is None:  # rank 0's stream is the single process's: the union over ranks replays in one process
        sampler = episode_sampler(train_split, config, distributed.rank_seed(config.seed, ctx.rank))
    else:
        sampler = train_episodes
    episode_sampler(val_split, config, config.seed + 1)  # validation's episodes too: checked before the first update
    inner_generator = torch.Generator().manual_seed(config.seed)  # the same on every rank, as in one process
    state = {"update": 0, "episodes": 0, "best_val_acc": -1.0, "elapsed_s": 0.0}
    interval_loss, interval_acc, interval_count = 0.0, 0.0, 0
    nonfinite_state = None
    sampler_states: dict = {}  # {rank: sampler state} of every stream, saved with each checkpoint

    def open_run() -> dict | None:  # rank 0: the checkpoint to resume from (None for a new run)
        if not run.resuming:
            run.start(checkpoint_state(meta_learner, optimizer, learner, config, {"state": dict(state)}, dataset))
            return None
        _, _, saved_config, checkpoint = load_checkpoint(run.last, "cpu")  # CPU: rank 0 sends it to the others
        check_dataset(checkpoint.get("dataset"), dataset, f"--resume {run.last}")
        run.resume(asdict(saved_config), asdict(config), RESUMABLE_FIELDS, checkpoint["progress"]["state"]["update"],
                   checkpoint.get("run"))
        return checkpoint

    checkpoint = ctx.broadcast_object(distributed.on_main(open_run, ctx))
    if checkpoint is not None:
        state = checkpoint["progress"]["state"]
        meta_learner.load_state_dict(checkpoint["meta_learner"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        sampler_states = distributed.saved_sampler_states(checkpoint["progress"])
        if ctx.rank in sampler_states:  # else a stream this run adds (more ranks than before): it starts from its seed
            sampler.generator.set_state(sampler_states[ctx.rank])
        inner_generator.set_state(checkpoint["progress"]["inner_rng"])
        # A signal saves mid-interval: the interval's sums continue, so the resumed log equals an uninterrupted one.
        interval_loss, interval_acc, interval_count = checkpoint["progress"].get("interval", (0.0, 0.0, 0))
        nonfinite_state = checkpoint["progress"].get("nonfinite")
    guard = NonFiniteGuard(config.max_nonfinite, nonfinite_state)
    last = Path(config.out) / "last.pt"
    hint = f"Lower --lr ({config.lr}) or --grad-clip ({config.grad_clip}); {last}, if any, is the last checkpoint."
    mean = lambda total: total / interval_count if interval_count else math.nan  # noqa: E731  (all skipped: NaN)

    def save(improved: bool) -> None:  # on every rank: it gathers the ranks' sampler states, then rank 0 writes
        nonlocal sampler_states
        sampler_states = distributed.gather_sampler_states(sampler.generator, ctx, sampler_states)

        def write() -> None:
            progress_state = {
                "state": dict(state),
                "sampler_rng": sampler.generator.get_state(),
                "sampler_rngs": sampler_states,
                "inner_rng": inner_generator.get_state(),
                "interval": (interval_loss, interval_acc, interval_count),
                "nonfinite": guard.state(),
            }
            run.save(checkpoint_state(meta_learner, optimizer, learner, config, progress_state, dataset), improved,
                     state["update"])

        distributed.on_main(write, ctx)  # the others wait for it, and hear of a failure (a full disk)

    n_updates = math.ceil(config.episodes / config.meta_batch)
    val_every_updates = max(1, round(config.val_every / config.meta_batch))
    clock = Stopwatch(state["elapsed_s"], config.max_minutes)
    bar = tqdm(total=n_updates, initial=state["update"], desc="meta-train", unit="update",
               disable=not progress or not ctx.is_main)
    # Under a process group the meta-gradients are averaged over the ranks; one process takes meta_update's plain path.
    reduce = (lambda: distributed.average_gradients(meta_learner.parameters(), ctx)) if ctx.enabled else None
    out_of_time = False
    timed_schedule = config.lr_schedule != "constant" and config.max_minutes is not None
    while state["update"] < n_updates and not out_of_time:
        # SIGTERM / SIGINT (on any rank: every rank stops at this update): save the exact state and exit.
        signum = distributed.max_over_ranks(stop.requested or 0, ctx)
        if signum:
            state["elapsed_s"] = clock.elapsed_s
            save(improved=False)
            bar.close()
            raise stop.interrupted(last, f"update {state['update']}", signum)
        episode = sampler.sample(share)
        # Under a time budget the schedule reads the latest of the ranks' clocks (as the budget's stop does), the
        # same on every rank, so that all ranks step alike.
        elapsed_s = distributed.max_over_ranks(clock.elapsed_s, ctx) if timed_schedule else 0.0
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(config.lr, config.lr_schedule,
                                       run_progress(state["update"], n_updates, elapsed_s, config.max_minutes))
        result = run_episodes(
            meta_learner, learner, episode, config.inner_steps, config.inner_batch_size,
            config.query_bn, config.second_order, inner_generator, amp=config.amp, divide_grad=config.divide_grad,
            batched_learner=config.batched_learner,
        )
        # Every rank gets the same averaged gradient, so the same skip decision.
        stepped = meta_update(meta_learner, optimizer, result.loss, config.grad_clip, reduce_gradients=reduce)
        guard.record(stepped, f"update {state['update'] + 1}", hint)
        loss, accuracy = distributed.mean_over_ranks((result.loss.item(), result.accuracy.mean().item()), ctx)

        state["update"] += 1
        state["episodes"] += episode.n_episodes * ctx.world_size
        if stepped:
            interval_loss += loss
            interval_acc += accuracy
            interval_count += 1
        # One redraw per update: the postfix is set without refreshing, then update() draws.
        skipped = {"skipped": guard.skipped} if guard.skipped else {}
        bar.set_postfix(loss=f"{mean(interval_loss):.3f}", acc=f"{mean(interval_acc):.3f}", **skipped, refresh=False)
        bar.update(1)

        out_of_time = distributed.any_rank(clock.out_of_time(), ctx)  # every rank stops at the same update
        if state["update"] % val_every_updates == 0 or state["update"] == n_updates or out_of_time:
            distributed.check_in_sync(meta_learner, ctx)
            skipped_in_interval = guard.take_interval()  # on every rank, so that each guard's state stays rank 0's

            def validate() -> bool:  # rank 0; the others wait in on_main, and hear of a failure
                val = evaluate(
                    meta_learner, learner, val_split, config.n_way, config.k_shot, config.n_query, config.inner_steps,
                    n_episodes=config.val_episodes, seed=config.seed + 1, batch_size=config.meta_batch,
                    inner_batch_size=config.inner_batch_size, query_bn=config.val_query_bn, progress=False,
                    amp=config.amp, divide_grad=config.divide_grad, batched_learner=config.batched_learner,
                )
                state["elapsed_s"] = clock.elapsed_s
                return record_validation(
                    run, bar, state, val, mean(interval_loss), mean(interval_acc), skipped_in_interval,
                    f"{config.dataset}, {config.n_way}-way {config.k_shot}-shot ({run.path.name})",
                    chance=1 / config.n_way,
                )

            improved = bool(distributed.on_main(validate, ctx))
            interval_loss, interval_acc, interval_count = 0.0, 0.0, 0
            save(improved)
    bar.close()
    state = ctx.broadcast_object(state)  # rank 0 alone validated: its best accuracy and time
    return {
        "best_val_acc": state["best_val_acc"],
        "episodes": state["episodes"],
        "updates": state["update"],
        "elapsed_s": state["elapsed_s"],
        "best": str(Path(config.out) / "best.pt"),
        "last": str(last),
    }
