"""Whole-machine throughput: episodes per second of meta-training and of evaluation with N processes of
T threads each, optionally side by side with the reference (:mod:`benchmarks.reference`).

Meta-training runs as ``torchrun`` runs it (:mod:`fewshot_l2l.runs.distributed`): the ``N`` processes form
a process group (gloo on the CPU), each draws ``meta_batch / N`` episodes from its own sampler
stream, and the meta-gradients are averaged with one ``all_reduce`` before clipping and Adam. For
evaluation every process adapts to its own episodes (``no_grad``), with no communication.

With a reference every process alternates, episode by episode: one of our meta-updates (its share
of the meta-batch), then one reference meta-training episode on the first episode we just drew;
then the same for evaluation. All processes start each timed call together (a barrier, untimed),
so that every call runs on a machine that all processes load alike. Both sides see the same machine noise, and each pair gives a ratio
``reference s/episode / our s/episode``; the row reports the median over every pair of every
process. The reference thus runs in the same ``N`` processes of ``T`` threads as ours.

Rates: each process's median time per call over its timed calls; the machine's rate is the sum over
processes of (episodes per call / median seconds per call). The floor is the machine's float32
matmul rate (all its cores) over the matmul FLOPs of one episode (learner and meta-learner,
:mod:`benchmarks.flops`). Peak memory per process is measured in fresh processes that run only one
side (:func:`peak_memory_mb`), so that neither side's allocations count for the other.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

from fewshot_l2l.runs import distributed
from fewshot_l2l.adaptation import InnerLoop, run_episodes
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner
from fewshot_l2l.runs.loop import meta_update
from fewshot_l2l.devices import tune_cpu_allocator

from .flops import learner_flops_per_episode, meta_learner_flops_per_episode, synchronize
from .reference import ReferenceRunner, import_reference
from .speed import BenchmarkShape, peak_rss_mb, synthetic_split


@dataclass(frozen=True)
class Layout:
    """``processes`` x ``threads``: how the machine's cores are used."""

    processes: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> "Layout":
        """``"2x1"`` -> 2 processes of 1 thread."""
        try:
            processes, threads = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"layout {text!r}: write PROCESSESxTHREADS, e.g. 2x1 or 1x2") from None
        if processes < 1 or threads < 1:
            raise ValueError(f"layout {text!r}: processes and threads must be >= 1")
        return cls(processes, threads)

    def __str__(self) -> str:
        return f"{self.processes}x{self.threads}"


@dataclass(frozen=True)
class ThroughputSettings:
    """How one throughput measurement runs."""

    meta_batch: int = 2  # episodes per meta-update over all processes (a multiple of the process count)
    pairs: int = 4  # timed calls per phase and process (each a pair with the reference when there is one)
    warmup: int = 1  # untimed calls first
    reference: str | None = None  # folder of the reference's code, or None
    amp: bool = False
    batched_learner: str = "auto"
    step_kernel: str = "auto"  # our meta-learner step (MetaLSTM.step_kernel): auto (fused where built), fused, torch
    device: str = "cpu"
    seed: int = 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inner_loop(shape, settings) -> InnerLoop:
    """Our inner loop at ``shape``'s steps, with the run's learner settings."""
    return InnerLoop(inner_steps=shape.inner_steps, amp=settings.amp, batched_learner=settings.batched_learner)


def _build_ours(shape: BenchmarkShape, settings: ThroughputSettings, device: torch.device, rank: int):
    learner = ConvLearner(LearnerConfig(shape.in_channels, shape.image_size, shape.n_way, shape.hidden_channels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # the same meta-learner on every rank
        meta_learner = MetaLearner(learner.init_params(torch.Generator().manual_seed(settings.seed)),
                                   step_kernel=settings.step_kernel).to(device)
    optimizer = torch.optim.Adam(meta_learner.parameters(), lr=1e-3)
    sampler = EpisodeSampler(synthetic_split(shape, device, seed=settings.seed), shape.n_way, shape.k_shot,
                             shape.n_query, seed=distributed.rank_seed(settings.seed, rank))
    return learner, meta_learner, optimizer, sampler


def _reference_runner(shape: BenchmarkShape, settings: ThroughputSettings, device: torch.device) -> ReferenceRunner:
    return ReferenceRunner(import_reference(settings.reference), shape.in_channels, shape.image_size, shape.n_way,
                           shape.k_shot, shape.n_query, shape.inner_steps, device, settings.seed)


def _timed(fn, device: torch.device) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def _rank(rank: int, shape: BenchmarkShape, layout: Layout, settings: ThroughputSettings, port: int, results) -> None:
    """One process of a throughput measurement: its timings go to ``results``."""
    if layout.processes > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(layout.processes), LOCAL_RANK=str(rank))
    torch.set_num_threads(layout.threads)
    tune_cpu_allocator()
    context = distributed.init_process_group(settings.device)
    try:
        device = distributed.rank_device(settings.device, context.local_rank, context.enabled)
        share = distributed.local_share(settings.meta_batch, context)
        learner, meta_learner, optimizer, sampler = _build_ours(shape, settings, device, rank)
        reference = _reference_runner(shape, settings, device) if settings.reference else None

        def ours(train: bool):
            episode = sampler.sample(share)
            with torch.set_grad_enabled(train):
                result = run_episodes(meta_learner, learner, episode, inner_loop(shape, settings))
            if train:
                meta_update(meta_learner, optimizer, result.loss, 0.25,
                            reduce_gradients=lambda: distributed.average_gradients(meta_learner.parameters(), context))
            return episode

        timings: dict = {"rank": rank}
        for phase, train in (("train", True), ("eval", False)):
            ours_s, reference_s = [], []
            context.barrier()
            for call in range(settings.warmup + settings.pairs):
                # Every timed call starts together on all processes: otherwise our all_reduce would
                # count the wait for another process's reference episode, and a reference episode
                # could run while the other processes idle at that all_reduce.
                context.barrier()
                seconds, episode = _timed(lambda: ours(train), device)
                if reference is not None:
                    x = ReferenceRunner.episode_tensor(episode)
                    step = reference.train_episode if train else reference.eval_episode
                    context.barrier()
                    reference_seconds, _ = _timed(lambda: step(x), device)
                if call >= settings.warmup:
                    ours_s.append(seconds)
                    if reference is not None:
                        reference_s.append(reference_seconds)
            context.barrier()
            timings[phase] = {"ours_s": ours_s, "reference_s": reference_s}
        timings["share"] = share
        results.put(timings)
    finally:
        distributed.destroy_process_group()


def _rate(per_rank: list[list[float]], episodes_per_call: int) -> float:
    """Machine rate: the sum over processes of episodes per call over the median seconds per call."""
    return sum(episodes_per_call / statistics.median(times) for times in per_rank)


def measure_throughput(shape: BenchmarkShape, layout: Layout, settings: ThroughputSettings,
                       matmul_flops_per_s: float | None = None) -> dict:
    """One row: the machine's meta-training and evaluation rates for ``shape`` under ``layout``
    (and the reference's, with the median pairwise ratios), the floor, the load average."""
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    load_before = os.getloadavg()[0]
    torch.multiprocessing.start_processes(
        _rank, args=(shape, layout, settings, _free_port(), results), nprocs=layout.processes, start_method="spawn",
    )
    ranks = sorted((results.get() for _ in range(layout.processes)), key=lambda timings: timings["rank"])
    share = ranks[0]["share"]
    row: dict = {
        "config": shape.name, "layout": str(layout), "processes": layout.processes, "threads": layout.threads,
        "meta_batch": settings.meta_batch, "episodes_per_process_per_update": share, "amp": settings.amp,
        "batched_learner": settings.batched_learner, "step_kernel": settings.step_kernel, "device": settings.device,
        "timed_calls_per_process": settings.pairs,
    }
    for phase in ("train", "eval"):
        row[f"{phase}_episodes_per_s"] = _rate([r[phase]["ours_s"] for r in ranks], share)
        if settings.reference is not None:
            row[f"reference_{phase}_episodes_per_s"] = _rate([r[phase]["reference_s"] for r in ranks], 1)
            ratios = [ref / (ours / share) for r in ranks for ref, ours in zip(r[phase]["reference_s"], r[phase]["ours_s"])]
            row[f"{phase}_ratio_median"] = statistics.median(ratios)
            row[f"{phase}_ratio_min"], row[f"{phase}_ratio_max"] = min(ratios), max(ratios)
    learner = ConvLearner(LearnerConfig(shape.in_channels, shape.image_size, shape.n_way, shape.hidden_channels))
    n_support, n_query = shape.n_way * shape.k_shot, shape.n_way * shape.n_query
    for phase, train in (("train", True), ("eval", False)):
        flops = learner_flops_per_episode(learner, n_support, n_query, shape.inner_steps, train=train)
        flops += meta_learner_flops_per_episode(learner.n_params, 20, shape.inner_steps, train=train)
        row[f"{phase}_gflop_per_episode"] = flops / 1e9
        if matmul_flops_per_s:
            row[f"{phase}_floor_episodes_per_s"] = matmul_flops_per_s / flops
            row[f"{phase}_fraction_of_floor"] = row[f"{phase}_episodes_per_s"] / row[f"{phase}_floor_episodes_per_s"]
    row["matmul_gflop_per_s"] = matmul_flops_per_s / 1e9 if matmul_flops_per_s else None
    row["load_average_1min"] = [load_before, os.getloadavg()[0]]  # before and after
    return row


def _peak_memory_child(shape: BenchmarkShape, side: str, share: int, threads: int, settings: ThroughputSettings) -> float:
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    device = torch.device(settings.device)
    if side == "reference":
        reference = _reference_runner(shape, settings, device)
        sampler = EpisodeSampler(synthetic_split(shape, device), shape.n_way, shape.k_shot, shape.n_query)
        x = ReferenceRunner.episode_tensor(sampler.sample(1))
        for _ in range(2):
            reference.train_episode(x)
            reference.eval_episode(x)
    else:
        learner, meta_learner, optimizer, sampler = _build_ours(shape, settings, device, 0)
        for train in (True, True, False):
            with torch.set_grad_enabled(train):
                result = run_episodes(meta_learner, learner, sampler.sample(share), inner_loop(shape, settings))
            if train:
                meta_update(meta_learner, optimizer, result.loss, 0.25)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_memory_mb(shape: BenchmarkShape, side: str, share: int, threads: int, settings: ThroughputSettings) -> float:
    """Peak memory of a fresh process that runs two meta-training episodes (``share`` at a time for
    ``side="ours"``) and an evaluation of one side only: RSS in MiB on a CPU, allocated on CUDA."""
    if side not in ("ours", "reference"):
        raise ValueError(f"peak_memory_mb: side must be 'ours' or 'reference', got {side!r}")
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_peak_memory_child, shape, side, share, threads, settings).result()


TABLE_COLUMNS = (
    ("config", "config", "{}"),
    ("layout", "processes x threads", "{}"),
    ("meta_batch", "meta-batch", "{}"),
    ("amp", "amp", "{}"),
    ("step_kernel", "step kernel", "{}"),
    ("train_episodes_per_s", "train episodes/s", "{:.2f}"),
    ("reference_train_episodes_per_s", "reference train episodes/s", "{:.2f}"),
    ("train_ratio_median", "train ratio (median)", "{:.2f}x"),
    ("eval_episodes_per_s", "eval episodes/s", "{:.2f}"),
    ("reference_eval_episodes_per_s", "reference eval episodes/s", "{:.2f}"),
    ("eval_ratio_median", "eval ratio (median)", "{:.2f}x"),
    ("train_fraction_of_floor", "train / floor", "{:.3f}"),
    ("peak_mb", "peak MiB/process", "{:.0f}"),
    ("reference_peak_mb", "reference peak MiB/process", "{:.0f}"),
)


def throughput_table(rows: list[dict]) -> str:
    """The Markdown table of throughput rows (empty cells for what a row lacks)."""
    lines = ["| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        cells = ["" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
