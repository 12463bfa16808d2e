"""A learned rule as a ``torch.optim`` optimizer (:class:`fewshot_l2l.optim.LearnedOptimizer`) against
``torch.optim.Adam`` (``foreach=True``): seconds per optimizer step and optimizer-state memory, the rule's step
fused (:mod:`fewshot_l2l.kernels`) and plain, on a 1M-parameter MLP and on torchvision's ResNet-18 (11.7M
parameters, random weights: nothing is downloaded). Printed by ``scripts/benchmark_optimizer.py``.

Only ``optimizer.step()`` is timed: the gradients are fixed random tensors (a learner's magnitudes, 1e-6 to 1e-1)
written into ``.grad`` once, and the rule is given a fixed loss, so the model's forward and backward are not part
of the figure. Each (model, optimizer, threads) runs in a fresh process (spawned), whose address space is capped at
``MEMORY_LIMIT_GB`` so that a configuration that would exhaust a shared machine's memory fails alone (the row
then says so) instead of taking the machine down.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch
from torch import nn

from fewshot_l2l.optim import AndrychowiczRule, LearnedOptimizer, MetaLSTMRule
from fewshot_l2l.devices import tune_cpu_allocator

from .speed import peak_rss_mb

MEMORY_LIMIT_GB = 18


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 200), nn.ReLU(), nn.Linear(200, 10))  # 1.0M


def _resnet18() -> nn.Module:
    from fewshot_l2l.extras import require

    torchvision = require("torchvision", "data")
    return torchvision.models.resnet18(weights=None)


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp-1m": _mlp, "resnet18": _resnet18}
OPTIMIZERS: dict[str, Callable[[list], torch.optim.Optimizer]] = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, foreach=True),
    "meta-lstm/fused": lambda params: LearnedOptimizer(params, MetaLSTMRule(hidden_size=20), step_kernel="fused"),
    "meta-lstm/torch": lambda params: LearnedOptimizer(params, MetaLSTMRule(hidden_size=20), step_kernel="torch"),
    "andrychowicz/fused": lambda params: LearnedOptimizer(params, AndrychowiczRule(hidden_size=20), step_kernel="fused"),
    "andrychowicz/torch": lambda params: LearnedOptimizer(params, AndrychowiczRule(hidden_size=20), step_kernel="torch"),
}


def state_mb(optimizer: torch.optim.Optimizer) -> float:
    """MiB of the tensors in the optimizer's per-parameter state (what ``state_dict()`` saves besides the groups)."""
    total = 0
    for state in optimizer.state.values():
        total += sum(value.numel() * value.element_size() for value in state.values() if isinstance(value, torch.Tensor))
    return total / 2**20


def time_optimizer_step(model_name: str, optimizer_name: str, threads: int, steps: int = 4, warmup: int = 2) -> dict:
    """One row: seconds per ``optimizer.step()`` (wall and process CPU, after ``warmup`` steps: the first creates
    the state, the next ones grow the heap to its steady size, several GB at ResNet-18 scale, whose first-touch
    page faults took seconds), the state's size, and the peak resident memory the steps added to the process."""
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    torch.manual_seed(0)
    model = MODELS[model_name]()
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(1)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * 10.0 ** torch.randint(-6, 0, param.shape, generator=generator)
    optimizer = OPTIMIZERS[optimizer_name](params)
    loss = torch.tensor(1.5)
    row = {"model": model_name, "n_params": sum(p.numel() for p in params), "optimizer": optimizer_name, "threads": threads}
    baseline_mb = peak_rss_mb()
    try:
        for _ in range(warmup):
            optimizer.step(loss=loss) if isinstance(optimizer, LearnedOptimizer) else optimizer.step()
        wall, cpu = [], []
        for _ in range(steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            optimizer.step(loss=loss) if isinstance(optimizer, LearnedOptimizer) else optimizer.step()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    except (MemoryError, RuntimeError) as error:  # the address-space cap (a failed allocation)
        return {**row, "failed": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}",
                "memory_limit_gb": MEMORY_LIMIT_GB, "loadavg": os.getloadavg()[0]}
    return {**row, "step_wall_s": wall, "step_cpu_s": cpu, "median_step_wall_s": statistics.median(wall),
            "state_mb": state_mb(optimizer), "state_bytes_per_param": state_mb(optimizer) * 2**20 / row["n_params"],
            "peak_added_mb": peak_rss_mb() - baseline_mb, "loadavg": os.getloadavg()[0]}


def _capped(*args) -> dict:
    limit = MEMORY_LIMIT_GB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return time_optimizer_step(*args)


def run_isolated(model_name: str, optimizer_name: str, threads: int, steps: int = 4) -> dict:
    """:func:`time_optimizer_step` in a fresh spawned process under the memory cap."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_capped, model_name, optimizer_name, threads, steps).result()
