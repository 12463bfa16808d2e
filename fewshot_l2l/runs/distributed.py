"""Data-parallel meta-training on ``torch.distributed``: process-group setup and the rank-aware helpers
that :func:`fewshot_l2l.runs.loop.train_loop` and :func:`fewshot_l2l.training.meta_train` call.

Launched as ``torchrun --nproc_per_node=N scripts/train.py ...`` (see docs/distributed.md), each of
the ``W`` ranks of a meta-update

1. draws its share ``meta_batch / W`` of the meta-batch from its own stream of the seeded sampler
   (:func:`rank_seed`: rank 0 draws exactly what a single process draws, the others streams derived
   from ``(seed, rank)``), so the union of the ranks' episodes can be replayed in one process;
2. computes the mean meta-loss over its share and its gradient;
3. averages the meta-learner's gradients over the ranks with one ``all_reduce`` of a flat buffer
   (:func:`average_gradients`): with equal shares the average of the ranks' means is the mean
   over the union, so the result is the gradient one process computes for the union meta-batch;
4. clips and steps Adam on identical gradients, so the weights stay identical on every rank
   (checked with a cheap checksum at every validation, :func:`check_in_sync`).

Rank 0 alone validates, logs, draws curves and writes checkpoints; the other ranks wait at a
barrier. Every rank's sampler state goes into the checkpoints (:func:`gather_sampler_states`), so a
run resumes under another world size: rank ``r`` continues stream ``r`` when the checkpoint has it,
starts it fresh otherwise, and the streams of ranks the resumed run does not have are carried along.

Without ``WORLD_SIZE`` in the environment (plain ``python scripts/train.py``) no process group is
created and every helper here is a no-op for the single rank :data:`SINGLE`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..devices import resolve_device

# Rank 0 validates (minutes on a CPU) while the others wait at a barrier; the default timeouts
# (10 minutes for NCCL) would abort a long validation.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the (possibly absent) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # index of this process on its node: its GPU

    @property
    def enabled(self) -> bool:
        """Whether a process group is in use (collectives are called)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, logs and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op without a process group)."""
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; put tensors on the CPU first)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = DistContext()

T = TypeVar("T")


def current() -> DistContext:
    """The context of the process group initialized in this process, or :data:`SINGLE`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def rank_device(device: str | torch.device, local_rank: int, distributed: bool) -> torch.device:
    """The device of one rank: ``auto`` and an unindexed ``cuda`` become ``cuda:LOCAL_RANK`` under
    a process group (one GPU per rank); everything else is :func:`fewshot_l2l.devices.resolve_device`."""
    resolved = resolve_device(device)
    if distributed and resolved.type == "cuda" and resolved.index is None:
        return resolve_device(f"cuda:{local_rank}")
    return resolved


def init_process_group(device: str | torch.device = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, or return :data:`SINGLE`.

    Nothing happens without ``WORLD_SIZE`` (a plain ``python`` launch). Otherwise the backend is
    NCCL when this rank's device (:func:`rank_device`) is a GPU, gloo on the CPU; on a GPU that
    device becomes the current one. Rendezvous (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ...)
    is torchrun's: ``env://``.
    """
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE is set (a torchrun launch) but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = rank_device(device, local_rank, distributed=True)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    return current()


def destroy_process_group(clean_exit: bool = True) -> None:
    """Leave the process group if there is one (at the end of a run).

    On a clean exit every rank first meets at a barrier. Why: a gloo worker thread frees each finished
    collective, and with it its tensors, after the caller's ``wait`` returned, and freeing a tensor that
    Python created takes the GIL. Without the barrier the main thread can reach interpreter shutdown
    first, and the thread that asks for the GIL then aborts the process (SIGABRT, "terminate called
    without an active exception"; seen here about once in ten 2-rank runs). The barrier's wait releases
    the GIL while the ranks exchange messages, so the previous collectives are freed before shutdown.
    ``clean_exit=False`` (an error on the way out, when another rank may never reach the barrier)
    leaves at once.
    """
    if dist.is_available() and dist.is_initialized():
        if clean_exit:
            dist.barrier()
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s sampler stream: ``seed`` itself for rank 0 (a single process draws
    the same episodes as before), a 63-bit hash of ``(seed, rank)`` for the others."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"fewshot_l2l sampler stream {seed} {rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def local_share(meta_batch: int, context: DistContext) -> int:
    """Episodes each rank draws per meta-update: ``meta_batch / world_size``, which must be whole."""
    if meta_batch % context.world_size:
        raise ValueError(
            f"meta_batch={meta_batch} is not divisible by the world size {context.world_size}: each rank draws "
            f"meta_batch / world_size episodes per meta-update; use a multiple of {context.world_size}"
        )
    return meta_batch // context.world_size


def average_gradients(parameters: Iterable[torch.nn.Parameter], context: DistContext) -> None:
    """Replace every gradient by its mean over the ranks: one ``all_reduce`` of one flat buffer.

    Each rank's loss is the mean over its (equal) share of the meta-batch, so the mean of the
    ranks' gradients is the gradient of the mean over the union. A missing gradient counts as zero.
    """
    if not context.enabled:
        return
    params = list(parameters)
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([param.grad.reshape(-1) for param in params])
    dist.all_reduce(flat)
    flat.div_(context.world_size)
    offset = 0
    for param in params:
        param.grad.copy_(flat[offset : offset + param.numel()].view_as(param.grad))
        offset += param.numel()


def mean_over_ranks(values: Iterable[float], context: DistContext) -> list[float]:
    """Each of ``values`` averaged over the ranks (e.g. the meta-loss and accuracy that rank 0 logs)."""
    values = [float(value) for value in values]
    if not context.enabled:
        return values
    buffer = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(buffer)
    return (buffer / context.world_size).tolist()


def any_rank(flag: bool, context: DistContext) -> bool:
    """Whether ``flag`` holds on some rank (so that every rank takes the same branch, e.g. the time budget)."""
    if not context.enabled:
        return flag
    buffer = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return bool(buffer.item())


def max_over_ranks(value: int | float, context: DistContext) -> int | float:
    """The largest of the ranks' ``value``, of ``value``'s type (e.g. the number of a signal one rank received, 0 for
    none; the latest of the ranks' clocks)."""
    if not context.enabled:
        return value
    dtype = torch.int64 if isinstance(value, int) else torch.float64
    buffer = torch.tensor([value], dtype=dtype, device=_collective_device())
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return int(buffer.item()) if dtype is torch.int64 else float(buffer.item())


def on_main(fn: Callable[[], T], context: DistContext) -> T | None:
    """``fn()`` run on rank 0 alone: its result there, ``None`` on the other ranks.

    An exception on rank 0 is raised there and, as a ``RuntimeError`` naming it, on every other rank,
    so that no rank waits at the next collective for a rank 0 that stopped (e.g. a locked run folder).
    """
    if not context.enabled:
        return fn()
    result, error = None, None
    if context.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001  (re-raised below, after the others heard of it)
            error = exc
    message = context.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 stopped the run: {message}")
    return result


def parameter_checksum(module: torch.nn.Module) -> Tensor:
    """Sum and sum of squares of every parameter tensor, in float64: ``[2 * n_tensors]``."""
    pieces = [torch.stack((p.detach().double().sum(), p.detach().double().square().sum())) for p in module.parameters()]
    return torch.cat(pieces)


def check_in_sync(module: torch.nn.Module, context: DistContext) -> None:
    """Raise ``RuntimeError`` on every rank unless every rank holds bit-identical parameter checksums.

    The ranks apply identical optimizer steps to identical averaged gradients, so any difference
    means a bug or a hardware fault; it is cheap (one ``all_gather`` of ``2 x n_tensors`` floats).
    """
    if not context.enabled:
        return
    checksum = parameter_checksum(module).to(_collective_device())
    gathered = [torch.empty_like(checksum) for _ in range(context.world_size)]
    dist.all_gather(gathered, checksum)
    differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        names = [name for name, _ in module.named_parameters()]
        worst = max(differing, key=lambda rank: float((gathered[rank] - gathered[0]).abs().max()))
        index = int((gathered[worst] - gathered[0]).abs().argmax())
        raise RuntimeError(
            f"distributed meta-training: the weights of rank(s) {differing} differ from rank 0's "
            f"(largest in {names[index // 2]!r}: checksum {float(gathered[worst][index])!r} against "
            f"{float(gathered[0][index])!r}); the ranks must apply identical updates"
        )


def gather_sampler_states(generator: torch.Generator, context: DistContext, carried: dict[int, Tensor]) -> dict[int, Tensor]:
    """Every rank's sampler state, ``{rank: state}``, on every rank (for rank 0's checkpoint).

    ``carried`` holds the states of streams that this run does not draw from (a checkpoint of a
    run with more ranks): they are kept, so a later run with that many ranks continues them.
    """
    states = [generator.get_state()]
    if context.enabled:
        states = [None] * context.world_size
        dist.all_gather_object(states, generator.get_state())
    merged = dict(carried)
    merged.update(enumerate(states))
    return merged


def saved_sampler_states(progress: dict) -> dict[int, Tensor]:
    """The ``{rank: state}`` of a checkpoint's progress; rank 0 alone in checkpoints of a single process."""
    states = dict(progress.get("sampler_rngs", {}))
    if 0 not in states and "sampler_rng" in progress:
        states[0] = progress["sampler_rng"]
    return states


def _collective_device() -> torch.device:
    """Where small collective buffers live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
