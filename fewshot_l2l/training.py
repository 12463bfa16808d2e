"""Episodic meta-training: a lean, linear loop with validation, atomic checkpoints and a CSV log.

``RUN_DIR`` (:class:`fewshot_l2l.runs.RunFolder`) receives ``init.pt`` (the
untrained starting point, same seed), ``last.pt`` (after every validation;
resume from it with ``resume=True``), ``best.pt`` (best validation accuracy so
far), ``metrics.csv`` (one row per validation) and ``curves.png`` (the whole
``metrics.csv`` drawn, :func:`fewshot_l2l.plots.plot_training_curves`), all
written atomically.

Under ``torchrun`` the loop is data-parallel (:mod:`fewshot_l2l.distributed`): each rank draws its
share of the meta-batch from its own sampler stream, the meta-gradients are averaged over the
ranks before clipping and Adam, and rank 0 alone validates and writes ``RUN_DIR``.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .adaptation import BATCHED_LEARNER_MODES, default_inner_steps, run_episodes
from .data import ROTATE_CHOICES, load_splits
from .data.episodes import EpisodeSampler
from .evaluation import evaluate
from .learner import QUERY_BN_MODES, ConvLearner, LearnerConfig
from .meta_learner import MetaLearner
from .plots import plot_training_curves, require_matplotlib
from .runs import RunFolder, Stopwatch
from .utils import meta_update

METRICS_COLUMNS = ("update", "episodes", "train_loss", "train_acc", "val_acc", "val_ci95", "elapsed_s")


# Settings that may differ when a run is resumed: budgets, intervals, where it runs and how fast.
RESUMABLE_FIELDS = {"episodes", "max_minutes", "val_every", "val_episodes", "device", "data", "out", "resume",
                    "compile", "amp", "batched_learner"}


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
    grad_clip: float = 0.25
    hidden_size: int = 20
    hidden_channels: int = 32
    second_order: bool = False
    query_bn: str = "batch"
    compile: bool = False  # torch.compile the meta-learner step (measure first: scripts/benchmark.py --compile)
    amp: bool = False  # bfloat16 autocast for the learner's forward passes (meant for CUDA)
    batched_learner: str = "auto"  # the learner vmapped over the meta-batch: auto (on CUDA), on, off
    val_every: int = 400  # episodes between validations
    val_episodes: int = 200
    device: str = "auto"
    seed: int = 0
    out: str = "runs/default"
    resume: bool = False

    def __post_init__(self) -> None:
        if self.inner_steps is None:
            self.inner_steps = default_inner_steps(self.k_shot)
        for name in ("n_way", "k_shot", "n_query", "inner_steps", "meta_batch", "episodes", "val_every", "val_episodes", "hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.rotate not in ROTATE_CHOICES:
            raise ValueError(f"TrainConfig: rotate must be one of {ROTATE_CHOICES}, got {self.rotate!r}")
        if self.batched_learner not in BATCHED_LEARNER_MODES:
            raise ValueError(f"TrainConfig: batched_learner must be one of {BATCHED_LEARNER_MODES}, got {self.batched_learner!r}")
        if self.query_bn not in QUERY_BN_MODES:
            raise ValueError(f"TrainConfig: query_bn must be one of {QUERY_BN_MODES}, got {self.query_bn!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"TrainConfig: max_minutes must be positive, got {self.max_minutes}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"TrainConfig: lr and grad_clip must be positive, got {self.lr} and {self.grad_clip}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def build_models(config: TrainConfig, image_shape: tuple[int, int, int]) -> tuple[MetaLearner, ConvLearner]:
    """The learner for ``image_shape`` ``(C, H, W)`` and a meta-learner initialized from it (seeded by ``config.seed``).

    Leaves the global generators as they were: the meta-learner draws its weights
    from torch's global CPU generator, so that one is seeded inside a fork of it.
    """
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"build_models: images must be square, got {height}x{width}")
    learner = ConvLearner(LearnerConfig(channels, height, config.n_way, config.hidden_channels))
    with torch.random.fork_rng(devices=[]):  # CPU only: torch.manual_seed would also reseed CUDA's, unforked
        torch.default_generator.manual_seed(config.seed)
        init = learner.init_params(torch.Generator().manual_seed(config.seed))
        meta_learner = MetaLearner(init, config.hidden_size)
    return meta_learner, learner


def checkpoint_state(meta_learner, optimizer, learner, config, progress: dict) -> dict:
    return {
        "meta_learner": meta_learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "learner": learner.state(),
        "config": asdict(config),
        "progress": progress,
    }


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MetaLearner, ConvLearner, TrainConfig, dict]:
    """Rebuild ``(meta_learner, learner, config, raw_checkpoint)`` from a ``.pt`` file written by :func:`meta_train`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        learner = ConvLearner(LearnerConfig(**checkpoint["learner"]))
        config = TrainConfig.from_dict(checkpoint["config"])
        with torch.random.fork_rng(devices=[]):  # its random init, overwritten below, must not consume the global generator
            meta_learner = MetaLearner(torch.zeros(learner.n_params), config.hidden_size)
        meta_learner.load_state_dict(checkpoint["meta_learner"])
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(f"checkpoint {path} is not a fewshot_l2l checkpoint or is corrupt: {error}") from error
    return meta_learner.to(device), learner, config, checkpoint


def meta_train(config: TrainConfig, progress: bool = True) -> dict:
    """Meta-train on ``config.dataset`` and return a summary dict (best validation accuracy, paths, time).

    On CPU, call :func:`fewshot_l2l.utils.tune_cpu_allocator` first (as ``fewshot-train`` does) for speed.
    In a process group (:func:`fewshot_l2l.distributed.init_process_group`) it trains data-parallel
    and every rank returns rank 0's summary.
    """
    require_matplotlib()  # curves.png is drawn at every validation: fail now rather than after the first interval
    ctx = distributed.current()  # distributed: SINGLE without a process group
    share = distributed.local_share(config.meta_batch, ctx)
    device = distributed.rank_device(config.device, ctx.local_rank, ctx.enabled)
    run = RunFolder(config.out, METRICS_COLUMNS, config.resume) if ctx.is_main else None

    splits = load_splits(config.dataset, config.data, seed=config.seed, rotate=config.rotate)
    train_split, val_split = splits["train"].to(device), splits["val"].to(device)
    meta_learner, learner = build_models(config, train_split.image_shape)
    meta_learner.to(device)
    if config.compile:
        meta_learner.compile_step()
    optimizer = torch.optim.Adam(meta_learner.parameters(), lr=config.lr)
    sampler = EpisodeSampler(train_split, config.n_way, config.k_shot, config.n_query,
                             seed=distributed.rank_seed(config.seed, ctx.rank))
    inner_generator = torch.Generator().manual_seed(config.seed)  # the same on every rank, as in one process
    state = {"update": 0, "episodes": 0, "best_val_acc": -1.0, "elapsed_s": 0.0}

    checkpoint = None
    if ctx.is_main and run.resuming:
        _, _, saved_config, checkpoint = load_checkpoint(run.last, "cpu")  # CPU: rank 0 sends it to the others
        run.resume(asdict(saved_config), asdict(config), RESUMABLE_FIELDS, checkpoint["progress"]["state"]["update"])
    elif ctx.is_main:
        run.start(checkpoint_state(meta_learner, optimizer, learner, config, {"state": dict(state)}))
    checkpoint = ctx.broadcast_object(checkpoint)
    sampler_states: dict = {}  # distributed: {rank: sampler state} of every stream, saved with each checkpoint
    if checkpoint is not None:
        state = checkpoint["progress"]["state"]
        meta_learner.load_state_dict(checkpoint["meta_learner"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        sampler_states = distributed.saved_sampler_states(checkpoint["progress"])
        if ctx.rank in sampler_states:  # else a stream this run adds: it starts from its seed
            sampler.generator.set_state(sampler_states[ctx.rank])
        inner_generator.set_state(checkpoint["progress"]["inner_rng"])

    n_updates = math.ceil(config.episodes / config.meta_batch)
    val_every_updates = max(1, round(config.val_every / config.meta_batch))
    interval_loss, interval_acc, interval_count = 0.0, 0.0, 0
    clock = Stopwatch(state["elapsed_s"], config.max_minutes)
    bar = tqdm(total=n_updates, initial=state["update"], desc="meta-train", unit="update",
               disable=not progress or not ctx.is_main)
    out_of_time = False
    while state["update"] < n_updates and not out_of_time:
        episode = sampler.sample(share)
        result = run_episodes(
            meta_learner, learner, episode, config.inner_steps, config.inner_batch_size,
            config.query_bn, config.second_order, inner_generator, amp=config.amp,
            batched_learner=config.batched_learner,
        )
        meta_update(meta_learner, optimizer, result.loss, config.grad_clip,
                    reduce_gradients=lambda: distributed.average_gradients(meta_learner.parameters(), ctx))
        loss, accuracy = distributed.mean_over_ranks((result.loss.item(), result.accuracy.mean().item()), ctx)

        state["update"] += 1
        state["episodes"] += config.meta_batch
        interval_loss += loss
        interval_acc += accuracy
        interval_count += 1
        # One redraw per update: the postfix is set without refreshing, then update() draws.
        bar.set_postfix(loss=f"{interval_loss / interval_count:.3f}", acc=f"{interval_acc / interval_count:.3f}", refresh=False)
        bar.update(1)

        out_of_time = distributed.any_rank(clock.out_of_time(), ctx)  # every rank stops at the same update
        validating = state["update"] % val_every_updates == 0 or state["update"] == n_updates or out_of_time
        if validating:  # distributed: every rank takes part in the checks, then waits for rank 0
            distributed.check_in_sync(meta_learner, ctx)
            sampler_states = distributed.gather_sampler_states(sampler.generator, ctx, sampler_states)
        if validating and ctx.is_main:
            val = evaluate(
                meta_learner, learner, val_split, config.n_way, config.k_shot, config.n_query, config.inner_steps,
                n_episodes=config.val_episodes, seed=config.seed + 1, batch_size=config.meta_batch,
                inner_batch_size=config.inner_batch_size, query_bn=config.query_bn, progress=False, amp=config.amp,
                batched_learner=config.batched_learner,
            )
            state["elapsed_s"] = clock.elapsed_s
            train_acc = interval_acc / interval_count
            run.log(update=state["update"], episodes=state["episodes"], train_loss=interval_loss / interval_count,
                    train_acc=train_acc, val_acc=val.accuracy, val_ci95=val.ci95, elapsed_s=state["elapsed_s"])
            plot_training_curves(run.read_metrics(), run.path / "curves.png",
                                 f"{config.dataset}, {config.n_way}-way {config.k_shot}-shot ({run.path.name})",
                                 chance=1 / config.n_way)
            bar.write(f"update {state['update']}: episodes {state['episodes']}, train acc {train_acc:.3f}, val acc {val}")
            interval_loss, interval_acc, interval_count = 0.0, 0.0, 0
            improved = val.accuracy > state["best_val_acc"]
            if improved:
                state["best_val_acc"] = val.accuracy
            progress_state = {
                "state": dict(state),
                "sampler_rng": sampler.generator.get_state(),
                "sampler_rngs": sampler_states,
                "inner_rng": inner_generator.get_state(),
            }
            run.save(checkpoint_state(meta_learner, optimizer, learner, config, progress_state), improved)
        if validating:
            ctx.barrier()
    bar.close()
    state = ctx.broadcast_object(state)  # rank 0 alone validated: its best accuracy and time
    return {
        "best_val_acc": state["best_val_acc"],
        "episodes": state["episodes"],
        "updates": state["update"],
        "elapsed_s": state["elapsed_s"],
        "best": str(Path(config.out) / "best.pt"),
        "last": str(Path(config.out) / "last.pt"),
    }
