"""The meta-learner step alone: the fused kernel against the plain step's ways of running, and its layer-1 LSTM cell.

Three measurements, printed by ``scripts/benchmark_meta_step.py`` (results and decisions:
``docs/results/meta_step.md``):

1. :func:`time_step_variant` - seconds per episode of ``inner_steps`` meta-learner steps, forward and backward
   (first order: ``grad`` and ``loss`` are constants; the backward starts from a weighted sum of the final
   parameters), and of the same steps under ``no_grad`` (evaluation), for each way of running the step in
   :data:`STEP_VARIANTS` (the fused kernel, ``"fused"``; the plain step checkpointed, as ``step_kernel="torch"``
   runs it, and its alternatives), on 1 or more threads, with the peak resident memory the run added and the
   fraction of the matmul floor it reaches (the step's matmul FLOPs at the float32 matmul rate measured in the
   same process, over the time taken). Each (variant, size) runs in a fresh process.
2. :func:`time_lstm_cells` - forward + backward of layer 1 alone (one thread): :func:`fewshot_l2l.meta_learner.lstm_cell`
   against ``nn.LSTMCell`` on the same inputs.
3. :func:`time_activations` - ``torch.tanh`` against ``torch.sigmoid`` and ``2 sigmoid(2x) - 1`` (one thread).

The learner is not involved: gradients and losses are random tensors of the learner's size ``P``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fewshot_l2l.meta_learner import MetaLearner, lstm_cell, meta_lstm_step
from fewshot_l2l.devices import tune_cpu_allocator

from .flops import matmul_flops_per_s, meta_learner_flops_per_episode, synchronize
from .speed import peak_rss_mb

SIZES = {"omniglot": 28_357, "miniimagenet": 112_997}  # learner parameters of the 5-way 28x28x1 and 84x84x3 CNNs


def _fused(meta: MetaLearner) -> None:
    meta.step_kernel = "fused"


def _checkpoint(meta: MetaLearner) -> None:
    meta.step_kernel = "torch"


def _plain(meta: MetaLearner) -> None:
    meta.step_kernel = "torch"
    meta._recomputed_step = meta_lstm_step


def _compiled_checkpoint(meta: MetaLearner) -> None:
    meta.step_kernel = "torch"
    meta.compile_step()


def _checkpoint_of_compiled(meta: MetaLearner) -> None:
    _compiled_checkpoint(meta)
    meta._recomputed_step = lambda *args: checkpoint(meta._step, *args, use_reentrant=False, preserve_rng_state=False)


STEP_VARIANTS: dict[str, Callable[[MetaLearner], None]] = {
    "fused": _fused,  # the fused kernel (fewshot_l2l.kernels), what step_kernel="auto" runs where it is built
    "checkpoint": _checkpoint,  # the plain step, checkpointed: step_kernel="torch"
    "plain-autograd": _plain,
    "compile(checkpoint)": _compiled_checkpoint,
    "checkpoint(compiled)": _checkpoint_of_compiled,
}


def _inputs(n_params: int, batch: int, inner_steps: int, seed: int = 0) -> tuple[list[Tensor], list[Tensor], Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Gradients over several orders of magnitude, as a learner's are.
    grads = [torch.randn(batch, n_params, generator=generator) * 10.0 ** torch.randint(-5, 0, (batch, n_params), generator=generator)
             for _ in range(inner_steps)]
    losses = [1.0 + torch.rand(batch, generator=generator) for _ in range(inner_steps)]
    return grads, losses, torch.randn(batch, n_params, generator=generator)


def _episode(meta: MetaLearner, grads: list[Tensor], losses: list[Tensor], direction: Tensor, train: bool) -> None:
    with torch.set_grad_enabled(train):
        theta = meta.initial_theta(direction.shape[0])
        state = meta.initial_state(theta)
        for grad, loss in zip(grads, losses):
            theta, state = meta(theta, grad, loss, state)
        if train:
            (theta * direction).sum().backward()
            meta.zero_grad(set_to_none=True)


def time_step_variant(variant: str, n_params: int, batch: int, inner_steps: int = 12, hidden_size: int = 20,
                      repeats: int = 3, threads: int = 1, device: str = "cpu") -> dict:
    """Seconds per episode (training and evaluation; process CPU time and wall time) of one :data:`STEP_VARIANTS`
    entry on ``threads`` threads (or on a CUDA ``device``), the peak memory one training episode adds, and the
    matmul floor.

    Memory first. On the CPU: with glibc serving every allocation over 64 KB by its own ``mmap`` (returned on
    free), the resident set follows the live tensors; after a warm-up episode (compilation included) the peak
    resident set is reset and one training episode is run; on CUDA, the peak allocated memory of that episode
    over what was allocated before it. Then the allocator is tuned as in training
    (:func:`fewshot_l2l.devices.tune_cpu_allocator`) and, after another warm-up, ``repeats`` episodes are timed.
    The matmul floor is the step's matmul FLOPs (forward, and the backward with its recomputation of the gates,
    :func:`benchmarks.flops.meta_learner_flops_per_episode`) at the float32 matmul rate measured in this process
    on the same threads or device; ``*_floor_fraction`` = floor / wall time.
    """
    device = torch.device(device)
    torch.set_num_threads(threads)
    if device.type == "cpu":
        _mmap_every_tensor()
    torch.manual_seed(0)
    meta = MetaLearner(torch.randn(n_params) * 0.1, hidden_size).to(device)
    STEP_VARIANTS[variant](meta)
    grads, losses, direction = (to_device(t, device) for t in _inputs(n_params, batch, inner_steps))

    def episode(train: bool) -> None:
        _episode(meta, grads, losses, direction, train)
        synchronize(device)

    start = time.perf_counter()
    episode(train=True)  # warm-up (and compilation)
    episode(train=False)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        baseline_mb = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        episode(train=True)
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 - baseline_mb
    else:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # resets VmHWM, the peak resident set
        baseline_mb = _rss_mb()
        episode(train=True)
        peak_mb = peak_rss_mb() - baseline_mb
        tune_cpu_allocator()
    episode(train=True)
    times: dict[str, list[float]] = {f"{phase}_{clock}_s_per_episode": [] for phase in ("train", "eval") for clock in ("cpu", "wall")}
    for _ in range(repeats):
        for phase in ("train", "eval"):
            cpu, wall = time.process_time(), time.perf_counter()
            episode(train=phase == "train")
            times[f"{phase}_cpu_s_per_episode"].append((time.process_time() - cpu) / batch)
            times[f"{phase}_wall_s_per_episode"].append((time.perf_counter() - wall) / batch)
    matmul_rate = matmul_flops_per_s(device)
    floors = {phase: meta_learner_flops_per_episode(n_params, hidden_size, inner_steps, phase == "train") / matmul_rate
              for phase in ("train", "eval")}
    return {
        "variant": variant, "n_params": n_params, "meta_batch": batch, "hidden_size": hidden_size, "threads": threads,
        "device": str(device), "inner_steps": inner_steps, "warmup_s": warmup_s, **times, "train_peak_added_mb": peak_mb,
        "matmul_gflops": matmul_rate / 1e9, "train_floor_s": floors["train"], "eval_floor_s": floors["eval"],
        "train_floor_fraction": floors["train"] / statistics.median(times["train_wall_s_per_episode"]),
        "eval_floor_fraction": floors["eval"] / statistics.median(times["eval_wall_s_per_episode"]),
        "loadavg": os.getloadavg()[0],
    }


def to_device(value, device: torch.device):
    """A tensor, or a list of tensors, on ``device``."""
    return [t.to(device) for t in value] if isinstance(value, list) else value.to(device)


def _mmap_every_tensor() -> None:
    m_mmap_threshold = -3
    ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 1 << 16)


def run_isolated(*args) -> dict:
    """:func:`time_step_variant` in a fresh (spawned) process, so that its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(time_step_variant, *args).result()


def _rss_mb() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * 4096 / 2**20


def _lstmcell_like(weight_ih: Tensor, weight_hh: Tensor, bias: Tensor) -> nn.LSTMCell:
    cell = nn.LSTMCell(weight_ih.shape[1], weight_hh.shape[1])
    with torch.no_grad():
        cell.weight_ih.copy_(weight_ih)
        cell.weight_hh.copy_(weight_hh)
        cell.bias_ih.copy_(bias)
        cell.bias_hh.zero_()
    return cell


def time_lstm_cells(rows: int, hidden_size: int = 20, repeats: int = 7, calls: int = 5) -> dict:
    """CPU seconds per forward + backward of layer 1 on ``rows`` coordinates: ``lstm_cell`` and ``nn.LSTMCell``,
    interleaved; also checks that both give the same ``(h, c)``."""
    torch.set_num_threads(1)
    tune_cpu_allocator()
    generator = torch.Generator().manual_seed(0)
    weight_ih, weight_hh, bias = (torch.empty(*shape).uniform_(-0.5, 0.5, generator=generator).requires_grad_()
                                  for shape in ((4 * hidden_size, 4), (4 * hidden_size, hidden_size), (4 * hidden_size,)))
    x = torch.randn(rows, 4, generator=generator)
    h, c = (torch.randn(rows, hidden_size, generator=generator) for _ in range(2))
    columns = [t.t().contiguous() for t in (x, h, c)]  # lstm_cell's layout, one column per coordinate
    torch_cell = _lstmcell_like(weight_ih, weight_hh, bias)
    candidates = {
        "lstm_cell": lambda: lstm_cell(*columns, weight_ih, weight_hh, bias),
        "nn.LSTMCell": lambda: torch_cell(x, (h, c)),
    }
    (h_ours, c_ours), (h_torch, c_torch) = (fn() for fn in candidates.values())
    max_difference = max((h_ours.t() - h_torch).abs().max().item(), (c_ours.t() - c_torch).abs().max().item())
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            cpu = time.process_time()
            for _ in range(calls):
                h_next, c_next = fn()
                (h_next.sum() + c_next.sum()).backward()
            times[name].append((time.process_time() - cpu) / calls)
    return {"rows": rows, "hidden_size": hidden_size, "max_abs_difference": max_difference,
            **{f"{name}_cpu_s": values for name, values in times.items()}}


def time_activations(n_elements: int, repeats: int = 7, calls: int = 10) -> dict:
    """CPU seconds per call of ``torch.tanh``, ``torch.sigmoid`` and ``2 sigmoid(2x) - 1`` on ``n_elements`` floats."""
    torch.set_num_threads(1)
    tune_cpu_allocator()
    x = torch.randn(n_elements, generator=torch.Generator().manual_seed(0))
    candidates = {
        "tanh": torch.tanh, "sigmoid": torch.sigmoid,
        "2sigmoid(2x)-1": lambda v: torch.sigmoid(2.0 * v).mul(2.0).sub(1.0),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            cpu = time.process_time()
            for _ in range(calls):
                fn(x)
            times[name].append((time.process_time() - cpu) / calls)
    return {"n_elements": n_elements, **{f"{name}_cpu_s": values for name, values in times.items()}}


def median(values: list[float]) -> float:
    return statistics.median(values)
