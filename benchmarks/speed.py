"""Speed benchmark: the fast implementation timed side by side with the naive one (:mod:`benchmarks.naive`).

Everything ``scripts/benchmark.py`` prints comes from here: :func:`benchmark_configuration` gives one JSON-able
row per configuration (meta-training and evaluation episodes/s of both implementations, peak memory, the
learner's FLOP fraction from :mod:`benchmarks.flops`); :func:`profile_meta_update` profiles one meta-update;
:func:`markdown_table` formats rows.

Data is synthetic (random ``uint8`` images in a :class:`FewShotSplit` on the
device), so the benchmark needs no data set; episodes are sampled from it by
indexing exactly as in training.
"""

from __future__ import annotations

import bisect
import math
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from fewshot_l2l.adaptation import InnerLoop, run_episodes
from fewshot_l2l.data.episodes import Episode, EpisodeSampler, FewShotSplit
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner
from fewshot_l2l.runs.loop import meta_update
from fewshot_l2l.devices import tune_cpu_allocator

from .flops import learner_flops_per_episode, matmul_flops_per_s, meta_learner_flops_per_episode, synchronize
from .naive import naive_loss


@dataclass(frozen=True)
class BenchmarkShape:
    """One benchmarked problem: image shape, episode shape, inner steps.

    ``reference_s_per_episode`` is the meta-training time per episode of the
    public PyTorch port of the authors' code on the 2-core CPU machine, as
    stated in issue 5 (not measured by this benchmark).
    """

    name: str
    in_channels: int
    image_size: int
    n_way: int
    k_shot: int
    n_query: int
    inner_steps: int
    hidden_channels: int = 32
    reference_s_per_episode: float | None = None


SHAPES = {
    "omniglot-5w1s": BenchmarkShape("omniglot-5w1s", 1, 28, 5, 1, 15, 12, reference_s_per_episode=0.24),
    "miniimagenet-5w5s": BenchmarkShape("miniimagenet-5w5s", 3, 84, 5, 5, 15, 8, reference_s_per_episode=0.86),
}


def synthetic_split(shape: BenchmarkShape, device: torch.device | str, n_classes: int = 10, seed: int = 0) -> FewShotSplit:
    """Random ``uint8`` images, ``k_shot + n_query`` per class, held on ``device``."""
    if n_classes < shape.n_way:
        raise ValueError(f"synthetic_split: n_classes={n_classes} is smaller than n_way={shape.n_way}")
    per_class = shape.k_shot + shape.n_query
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (n_classes * per_class, shape.in_channels, shape.image_size, shape.image_size),
        dtype=torch.uint8, generator=generator,
    )
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return FewShotSplit(images, labels, [f"class{c}" for c in range(n_classes)], "synthetic").to(device)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# Timed runs
# ----------------------------------------------------------------------------------------------


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int, timed: int) -> tuple[float, float, float]:
    """``(seconds of the warm-up calls, mean wall seconds per timed call, mean process CPU seconds per timed call)``.

    The CPU seconds (all threads of this process) are reported because the
    machine is shared: other processes stretch wall time, less so CPU time.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(timed):
        fn()
    synchronize(device)
    return warmup_s, (time.perf_counter() - start) / timed, (time.process_time() - cpu_start) / timed


@dataclass(frozen=True)
class BenchmarkSettings:
    """How one configuration is run."""

    meta_batch: int = 1
    device: str = "cpu"
    timed_updates: int = 1  # timed meta-updates (and evaluation batches) of the fast implementation
    min_timed_episodes: int = 4  # ... at least this many episodes in total
    naive_episodes: int = 2  # timed episodes of the naive implementation (after one warm-up episode); 0: skip
    compile: bool = False
    amp: bool = False
    step_kernel: str = "auto"  # the meta-learner step (MetaLSTM.step_kernel): auto (fused where built), fused, torch
    matmul_flops_per_s: float | None = None  # measured once by the caller; measured here when None
    seed: int = 0


def benchmark_configuration(shape: BenchmarkShape, settings: BenchmarkSettings) -> dict:
    """Time meta-training and evaluation of ``shape`` at ``settings.meta_batch``, fast and naive; one result row.

    Run each configuration in a fresh process (``scripts/benchmark.py`` does)
    so that ``peak_rss_mb`` is the configuration's own.
    """
    tune_cpu_allocator()
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    learner = ConvLearner(LearnerConfig(shape.in_channels, shape.image_size, shape.n_way, shape.hidden_channels))
    meta_learner = MetaLearner(learner.init_params(torch.Generator().manual_seed(settings.seed)),
                               step_kernel=settings.step_kernel).to(device)
    if settings.compile:
        meta_learner.compile_step()
    optimizer = torch.optim.Adam(meta_learner.parameters(), lr=1e-3)
    split = synthetic_split(shape, device, seed=settings.seed)
    sampler = EpisodeSampler(split, shape.n_way, shape.k_shot, shape.n_query, seed=settings.seed)
    batch = settings.meta_batch
    timed_updates = max(settings.timed_updates, math.ceil(settings.min_timed_episodes / batch))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    inner = InnerLoop(inner_steps=shape.inner_steps, amp=settings.amp)

    def fast_train() -> None:
        result = run_episodes(meta_learner, learner, sampler.sample(batch), inner)
        meta_update(meta_learner, optimizer, result.loss, 0.25)

    def fast_eval() -> None:
        with torch.no_grad():
            run_episodes(meta_learner, learner, sampler.sample(batch), inner)

    train_warmup_s, train_s, train_cpu_s = seconds_per_call(fast_train, device, 1, timed_updates)
    # Training's warm-up already made the big allocations; only compiled kernels need an evaluation warm-up.
    eval_warmup_s, eval_s, eval_cpu_s = seconds_per_call(fast_eval, device, int(settings.compile), timed_updates)
    row: dict = {
        "config": shape.name,
        "meta_batch": batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "compile": settings.compile,
        "amp": settings.amp,
        "step_kernel": settings.step_kernel,
        "train_episodes_per_s": batch / train_s,
        "eval_episodes_per_s": batch / eval_s,
        "train_s_per_episode": train_s / batch,
        "eval_s_per_episode": eval_s / batch,
        "train_cpu_s_per_episode": train_cpu_s / batch,
        "eval_cpu_s_per_episode": eval_cpu_s / batch,
        "timed_episodes": timed_updates * batch,
        "warmup_s": train_warmup_s + eval_warmup_s,  # includes compilation with compile=True
        "peak_rss_mb": peak_rss_mb(),
    }
    if device.type == "cuda":
        row["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20

    single = lambda: sampler.sample(1)  # noqa: E731

    def naive_train() -> None:
        loss, _ = naive_loss(meta_learner, learner, single(), shape.inner_steps)
        meta_update(meta_learner, optimizer, loss, 0.25)

    def naive_eval() -> None:
        with torch.no_grad():
            naive_loss(meta_learner, learner, single(), shape.inner_steps)

    if settings.naive_episodes > 0:
        _, naive_train_s, naive_train_cpu_s = seconds_per_call(naive_train, device, 1, settings.naive_episodes)
        _, naive_eval_s, _ = seconds_per_call(naive_eval, device, 1, settings.naive_episodes)
        row["naive_train_episodes_per_s"] = 1 / naive_train_s
        row["naive_eval_episodes_per_s"] = 1 / naive_eval_s
        row["naive_train_cpu_s_per_episode"] = naive_train_cpu_s
        add_naive_ratios(row, row)

    n_support, n_query = shape.n_way * shape.k_shot, shape.n_way * shape.n_query
    train_flops = learner_flops_per_episode(learner, n_support, n_query, shape.inner_steps, train=True)
    eval_flops = learner_flops_per_episode(learner, n_support, n_query, shape.inner_steps, train=False)
    meta_flops = meta_learner_flops_per_episode(learner.n_params, meta_learner.hidden_size, shape.inner_steps, train=True)
    rate = settings.matmul_flops_per_s or matmul_flops_per_s(device)
    row.update({
        "learner_params": learner.n_params,
        "learner_gflop_per_train_episode": train_flops / 1e9,
        "learner_gflop_per_eval_episode": eval_flops / 1e9,
        "meta_learner_matmul_gflop_per_train_episode": meta_flops / 1e9,
        "matmul_gflop_per_s": rate / 1e9,
        "train_learner_gflop_per_s": train_flops * row["train_episodes_per_s"] / 1e9,
        "flop_fraction": train_flops * row["train_episodes_per_s"] / rate,
        "flop_fraction_with_meta_learner": (train_flops + meta_flops) * row["train_episodes_per_s"] / rate,
        "eval_flop_fraction": eval_flops * row["eval_episodes_per_s"] / rate,
    })
    if shape.reference_s_per_episode is not None:
        row["reference_train_s_per_episode"] = shape.reference_s_per_episode
        row["speedup_vs_reference"] = shape.reference_s_per_episode / row["train_s_per_episode"]
    row["load_average_1min"] = os.getloadavg()[0]  # other processes on the machine during the run
    return row


def run_isolated(shape_name: str, settings: BenchmarkSettings, threads: int | None) -> dict:
    """:func:`benchmark_configuration` in a fresh (spawned) process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child, shape_name, settings, threads).result()


def _child(shape_name: str, settings: BenchmarkSettings, threads: int | None) -> dict:
    if threads is not None:
        torch.set_num_threads(threads)
    return benchmark_configuration(SHAPES[shape_name], settings)


def environment() -> dict:
    """What the numbers depend on: versions, threads, CPU count."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def add_naive_ratios(row: dict, naive: dict) -> None:
    """Speedups of ``row`` over the naive figures in ``naive`` (the naive implementation runs one
    episode at a time, so one measurement per shape serves every meta-batch)."""
    for key in ("naive_train_episodes_per_s", "naive_eval_episodes_per_s", "naive_train_cpu_s_per_episode"):
        row[key] = naive[key]
    row["speedup_vs_naive"] = row["train_episodes_per_s"] / naive["naive_train_episodes_per_s"]
    row["eval_speedup_vs_naive"] = row["eval_episodes_per_s"] / naive["naive_eval_episodes_per_s"]
    row["cpu_speedup_vs_naive"] = naive["naive_train_cpu_s_per_episode"] / row["train_cpu_s_per_episode"]


META_LEARNER_LABEL = "meta_learner_step"


def meta_learner_cpu_us(events) -> float:
    """CPU microseconds of the meta-learner in a profile: the ``META_LEARNER_LABEL`` ranges (its forward calls)
    and the backward of the autograd nodes created inside them (matched by autograd sequence number)."""
    labelled = [e for e in events if e.name == META_LEARNER_LABEL]
    ranges = sorted((e.time_range.start, e.time_range.end) for e in labelled)
    starts = [start for start, _ in ranges]

    def inside(event) -> bool:
        index = bisect.bisect_right(starts, event.time_range.start) - 1
        return index >= 0 and event.time_range.end <= ranges[index][1]

    forward_nodes = {e.sequence_nr for e in events if e.sequence_nr >= 0 and e.name != META_LEARNER_LABEL and inside(e)}
    backward_us = sum(e.cpu_time_total for e in events
                      if e.name.startswith("autograd::engine::evaluate_function") and e.sequence_nr in forward_nodes)
    return sum(e.cpu_time_total for e in labelled) + backward_us


def profile_meta_update(shape: BenchmarkShape, meta_batch: int, device: str = "cpu", row_limit: int = 15,
                        step_kernel: str = "auto") -> tuple[dict, str]:
    """``torch.profiler`` of one meta-update (after one warm-up update): a summary and the top-ops table.

    The summary splits the CPU time into the meta-learner (its forward calls,
    and the backward of the autograd nodes they created, which includes the
    first-order step's recomputation) and everything else (the learner's
    forward/backward, sampling, Adam).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    tune_cpu_allocator()
    device = torch.device(device)
    learner = ConvLearner(LearnerConfig(shape.in_channels, shape.image_size, shape.n_way, shape.hidden_channels))
    meta_learner = MetaLearner(learner.init_params(), step_kernel=step_kernel).to(device)
    optimizer = torch.optim.Adam(meta_learner.parameters(), lr=1e-3)
    sampler = EpisodeSampler(synthetic_split(shape, device), shape.n_way, shape.k_shot, shape.n_query)
    step = meta_learner.forward

    def labelled_step(*args):
        with record_function(META_LEARNER_LABEL):
            return step(*args)

    meta_learner.forward = labelled_step

    def update() -> None:
        result = run_episodes(meta_learner, learner, sampler.sample(meta_batch), shape.inner_steps)
        meta_update(meta_learner, optimizer, result.loss, 0.25)

    update()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        update()
        synchronize(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    meta_us = meta_learner_cpu_us(prof.events())
    total_us = sum(e.self_cpu_time_total for e in events)
    summary = {
        "config": shape.name, "meta_batch": meta_batch, "profiled_wall_s": wall,
        "meta_learner_fraction": meta_us / total_us if total_us else float("nan"),
    }
    return summary, events.table(sort_by="self_cpu_time_total", row_limit=row_limit)


TABLE_COLUMNS = (
    ("config", "config", "{}"),
    ("meta_batch", "meta-batch", "{}"),
    ("train_s_per_episode", "train s/episode", "{:.3f}"),
    ("eval_s_per_episode", "eval s/episode", "{:.3f}"),
    ("naive_train_episodes_per_s", "naive train s/episode", None),
    ("speedup_vs_naive", "train speedup vs naive", "{:.2f}x"),
    ("eval_speedup_vs_naive", "eval speedup vs naive", "{:.2f}x"),
    ("speedup_vs_reference", "train speedup vs reference", "{:.2f}x"),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
    ("flop_fraction", "learner FLOP fraction", "{:.3f}"),
    ("flop_fraction_with_meta_learner", "+ meta-learner matmuls", "{:.3f}"),
)


def markdown_table(rows: list[dict]) -> str:
    """The README's table of benchmark rows (``naive train s/episode`` is ``1 / naive_train_episodes_per_s``)."""
    lines = ["| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            value = row.get(key)
            if value is None:
                cells.append("")
            elif fmt is None:
                cells.append(f"{1 / value:.3f}")
            else:
                cells.append(fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
