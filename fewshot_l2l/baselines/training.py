"""Training, checkpoints and evaluation of the baselines, on the Meta-LSTM's run machinery.

The loop is :func:`fewshot_l2l.training.meta_train`'s, bookkeeping shared: :class:`fewshot_l2l.runs.RunFolder`
(``init.pt`` / ``last.pt`` / ``best.pt``, ``metrics.csv`` with the same columns, ``--resume``, the lock),
:class:`fewshot_l2l.runs.NonFiniteGuard` with :func:`fewshot_l2l.utils.meta_update`, :class:`fewshot_l2l.process.StopSignals`
(SIGTERM / SIGINT save ``last.pt`` and exit) and :class:`fewshot_l2l.runs.Stopwatch` (``max_minutes``). A
checkpoint records ``"method"``; evaluation rebuilds the method from it. Validation uses ``val_query_bn``
(default ``support``, the evaluation protocol).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoints import corrupt, read_checkpoint, refuse_nonfinite
from ..data import load_splits
from ..data.episodes import FewShotSplit
from ..data.identity import check_dataset, dataset_identity
from ..evaluation import EvalResult, seeded_accuracy
from ..learner import EVAL_QUERY_BN, ConvLearner, LearnerConfig
from ..plots import require_matplotlib
from ..process import StopSignals
from ..runs import NonFiniteGuard, RunFolder, Stopwatch, record_validation
from ..training import METRICS_COLUMNS, RESUMABLE_FIELDS, checkpoint_splits, episode_sampler
from ..utils import meta_update, resolve_device
from .base import BaselineMethod
from .config import BaselineConfig
from .finetune import FineTune
from .maml import L2L_METHODS, MAMLFamily
from .protonet import PrototypicalNetwork

METHOD_CLASSES = {**{name: MAMLFamily for name in L2L_METHODS}, "protonet": PrototypicalNetwork, "finetune": FineTune}


def build_method(config: BaselineConfig, train_split: FewShotSplit) -> BaselineMethod:
    """The method of ``config`` for ``train_split``'s images, its CNN initialized as the Meta-LSTM's ``theta_0``
    under the same seed (``finetune``'s head is as wide as the training classes)."""
    channels, height, width = train_split.image_shape
    if height != width:
        raise ValueError(f"build_method: images must be square, got {height}x{width}")
    classes = train_split.n_classes if config.method == "finetune" else config.n_way
    learner = ConvLearner(LearnerConfig(channels, height, classes, config.hidden_channels))
    theta = learner.init_params(torch.Generator().manual_seed(config.seed))
    return METHOD_CLASSES[config.method](config, learner, theta, train_split)


def checkpoint_method(path: str | Path) -> str:
    """The method a fewshot_l2l checkpoint was trained with (``"meta-lstm"`` for checkpoints that do not say)."""
    return read_checkpoint(path, "cpu", "fewshot_l2l", ("config",)).get("method", "meta-lstm")


def load_baseline(path: str | Path, device: str | torch.device = "cpu", splits: dict[str, FewShotSplit] | None = None,
                  data: str | None = None) -> tuple[BaselineMethod, BaselineConfig, dict, dict[str, FewShotSplit]]:
    """``(method, config, raw checkpoint, splits)`` of a baseline checkpoint. The method is rebuilt on the training
    split of ``splits``, by default those of ``data`` or of the dataset it was trained on, checked as
    :func:`fewshot_l2l.training.checkpoint_splits` checks them (image shape, the same build of the dataset)."""
    path = Path(path)
    checkpoint = read_checkpoint(path, device, "fewshot_l2l", ("learner", "config", "model"))
    try:
        config = BaselineConfig.from_dict(checkpoint["config"])
        learner = ConvLearner(LearnerConfig(**checkpoint["learner"]))
    except (KeyError, TypeError, ValueError) as error:
        raise corrupt(path, "fewshot_l2l baseline", error) from error
    if splits is None:
        splits = checkpoint_splits(path, config, checkpoint, data, learner)
    try:
        method = build_method(config, splits["train"])
        method.model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise corrupt(path, "fewshot_l2l baseline", error) from error
    refuse_nonfinite(path, {"model": checkpoint["model"], "optimizer": checkpoint.get("optimizer")})
    method.model.to(device)
    return method, config, checkpoint, splits


def evaluate_method(method: BaselineMethod, split: FewShotSplit, n_way: int, k_shot: int, n_query: int,
                    n_episodes: int = 600, seed: int = 0, batch_size: int = 8, query_bn: str = EVAL_QUERY_BN,
                    inner_steps: int | None = None, progress: bool = True) -> EvalResult:
    """Accuracy over ``n_episodes`` seeded episodes of ``split``, drawn ``batch_size`` at a time exactly as
    :func:`fewshot_l2l.evaluation.evaluate` draws them (both through :func:`fewshot_l2l.evaluation.seeded_accuracy`: same seed and batch size, same episodes)."""
    if n_episodes < 1:
        raise ValueError(f"evaluate_method: n_episodes must be >= 1, got {n_episodes}")
    return seeded_accuracy(
        lambda episode, generator, first: method.episode_accuracies(episode, query_bn, inner_steps, generator),
        split, n_way, k_shot, n_query, n_episodes, seed, batch_size, progress,
    )


def train_baseline(config: BaselineConfig, progress: bool = True) -> dict:
    """Train ``config.method`` into ``config.out`` and return the summary :func:`fewshot_l2l.training.meta_train` returns."""
    require_matplotlib()
    device = resolve_device(config.device)
    if config.data is not None:
        config = replace(config, data=os.path.abspath(config.data))
    with RunFolder(config.out, METRICS_COLUMNS, config.resume) as run, StopSignals() as stop:
        return _train(config, device, run, stop, progress)


def _checkpoint(method: BaselineMethod, optimizer, config: BaselineConfig, progress: dict, dataset: dict) -> dict:
    return {"method": config.method, "model": method.model.state_dict(), "optimizer": optimizer.state_dict(),
            "learner": method.learner.state(), "config": asdict(config), "progress": progress, "dataset": dataset}


def _train(config: BaselineConfig, device: torch.device, run: RunFolder, stop: StopSignals, progress: bool) -> dict:
    splits = load_splits(config.dataset, config.data, seed=config.seed, rotate=config.rotate)
    train_split, val_split = splits["train"].to(device), splits["val"].to(device)
    dataset = dataset_identity(config.dataset, config.data, splits)
    episode_sampler(train_split, config, config.seed)  # too small a split: the same message as the Meta-LSTM's
    episode_sampler(val_split, config, config.seed + 1)
    method = build_method(config, train_split)
    method.model.to(device)
    optimizer = torch.optim.Adam(method.model.parameters(), lr=config.lr)
    state = {"update": 0, "episodes": 0, "best_val_acc": -1.0, "elapsed_s": 0.0}
    interval = (0.0, 0.0, 0)
    nonfinite_state = None
    if run.resuming:
        _, saved_config, checkpoint, _ = load_baseline(run.last, device, splits)
        check_dataset(checkpoint.get("dataset"), dataset, f"--resume {run.last}")
        state = checkpoint["progress"]["state"]
        run.resume(asdict(saved_config), asdict(config), RESUMABLE_FIELDS, state["update"], checkpoint.get("run"))
        method.model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        method.generator.set_state(checkpoint["progress"]["sampler_rng"])
        interval = tuple(checkpoint["progress"]["interval"])
        nonfinite_state = checkpoint["progress"]["nonfinite"]
    else:
        run.start(_checkpoint(method, optimizer, config, {"state": dict(state)}, dataset))
    guard = NonFiniteGuard(config.max_nonfinite, nonfinite_state)
    hint = f"Lower --lr ({config.lr}); {run.last}, if any, is the last checkpoint."
    interval_loss, interval_acc, interval_count = interval
    mean = lambda total: total / interval_count if interval_count else math.nan  # noqa: E731

    def save(improved: bool) -> None:
        progress_state = {"state": dict(state), "sampler_rng": method.generator.get_state(),
                          "interval": (interval_loss, interval_acc, interval_count), "nonfinite": guard.state()}
        run.save(_checkpoint(method, optimizer, config, progress_state, dataset), improved, state["update"])

    per_update = method.episodes_per_update
    n_updates = math.ceil(config.episodes / per_update)
    val_every_updates = max(1, round(config.val_every / per_update))
    clock = Stopwatch(state["elapsed_s"], config.max_minutes)
    bar = tqdm(total=n_updates, initial=state["update"], desc=f"train {config.method}", unit="update",
               disable=not progress)
    out_of_time = False
    while state["update"] < n_updates and not out_of_time:
        if stop.requested:
            state["elapsed_s"] = clock.elapsed_s
            save(improved=False)
            bar.close()
            raise stop.interrupted(run.last, f"update {state['update']}")
        for group in optimizer.param_groups:
            group["lr"] = method.learning_rate(state["episodes"])
        loss, accuracy = method.training_loss(method.sample())
        stepped = meta_update(method.model, optimizer, loss, None)  # the papers clip nothing
        guard.record(stepped, f"update {state['update'] + 1}", hint)
        state["update"] += 1
        state["episodes"] += per_update
        if stepped:
            interval_loss, interval_acc, interval_count = (interval_loss + loss.item(), interval_acc + accuracy.item(),
                                                           interval_count + 1)
        bar.set_postfix(loss=f"{mean(interval_loss):.3f}", acc=f"{mean(interval_acc):.3f}", refresh=False)
        bar.update(1)
        out_of_time = clock.out_of_time()
        if state["update"] % val_every_updates == 0 or state["update"] == n_updates or out_of_time:
            val = evaluate_method(method, val_split, config.n_way, config.k_shot, config.n_query,
                                  n_episodes=config.val_episodes, seed=config.seed + 1, query_bn=config.val_query_bn,
                                  progress=False)
            state["elapsed_s"] = clock.elapsed_s
            improved = record_validation(
                run, bar, state, val, mean(interval_loss), mean(interval_acc), guard.take_interval(),
                f"{config.method}, {config.dataset}, {config.n_way}-way {config.k_shot}-shot", chance=1 / config.n_way,
            )
            interval_loss, interval_acc, interval_count = 0.0, 0.0, 0
            save(improved)
    bar.close()
    return {"method": config.method, "best_val_acc": state["best_val_acc"], "episodes": state["episodes"],
            "updates": state["update"], "elapsed_s": state["elapsed_s"], "best": str(run.best), "last": str(run.last)}
