"""Small shared helpers: devices, seeds, the one atomic file writer (and the clean-up of what a killed
writer left), the finiteness checks, the meta-update step."""

from __future__ import annotations

import ctypes
import math
import numbers
import os
import random
import re
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

import torch

# Seeds pass through sums such as seed * 1_000_003 + iteration into torch.Generator.manual_seed, which
# takes at most 2**64 - 1; 32 bits keep every such sum in range.
SEED_MAX = 2**32 - 1
# Counts and sizes become tensor dimensions and loop bounds: above 2**31 - 1 none is meaningful, and
# (far) larger ones would overflow torch's 64-bit sizes deep inside a run instead of failing there.
INT_MAX = 2**31 - 1


def check_int(owner: str, name: str, value: Any, minimum: int, maximum: int = INT_MAX) -> None:
    """Raise ``ValueError`` ("owner: name must be an integer in [minimum, maximum], got ...") unless ``value``
    is an ``int`` (not a ``bool``, not a float such as 1.5 or 1.0) in that range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not minimum <= value <= maximum:
        raise ValueError(f"{owner}: {name} must be an integer in [{minimum}, {maximum}], got {value!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` for ``device``, checked to be usable on this machine.

    ``"auto"`` is CUDA when available, else the CPU. Anything else is what
    ``torch.device`` accepts (``"cpu"``, ``"cpu:0"``, ``"cuda"``, ``"cuda:1"``,
    ``"mps"``, ``"xpu"``, ...); any CPU spelling gives ``torch.device("cpu")``. Raises ``ValueError`` for a string that is not a
    device, ``RuntimeError`` naming what this machine has for one that is not
    available (e.g. ``cuda:1`` with one GPU, ``mps`` off Apple silicon).
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device: use auto, cpu, cuda, cuda:N, mps, xpu, ... ({error})") from error
    if resolved.type == "cpu":
        return torch.device("cpu")  # "cpu:0" is the CPU too, and torch.load's map_location refuses an indexed CPU
    if resolved.type == "meta":
        return resolved
    backend = getattr(torch, resolved.type, None)  # torch.cuda, torch.mps, torch.xpu, torch.mtia: is_available()
    if backend is not None and hasattr(backend, "is_available") and hasattr(backend, "device_count"):
        count = backend.device_count() if backend.is_available() else 0
        if count == 0:
            raise RuntimeError(f"device {device!r}: no {resolved.type} device is available on this machine "
                               f"(available: {', '.join(_available_devices())}; or use auto)")
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(f"device {device!r}: this machine has {count} {resolved.type} device(s), "
                               f"{resolved.type}:0 to {resolved.type}:{count - 1}")
        return resolved
    try:  # a backend without an availability query (an out-of-tree one): try it
        torch.empty(0, device=resolved)
    except Exception as error:  # the backends raise RuntimeError, NotImplementedError, AssertionError, ...
        # Its first sentence: the dispatcher's message goes on to list every registered kernel.
        reason = (str(error).strip() or type(error).__name__).splitlines()[0].split(". ")[0]
        raise RuntimeError(f"device {device!r} is not usable with this PyTorch build: {reason}") from error
    return resolved


def _available_devices() -> list[str]:
    """The device types usable here, ``cpu`` first (for error messages)."""
    names = ["cpu"]
    for name in ("cuda", "mps", "xpu"):
        backend = getattr(torch, name, None)
        if backend is not None and backend.is_available():
            names.append(name if backend.device_count() <= 1 else f"{name}:0-{backend.device_count() - 1}")
    return names


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)


class AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` only on :meth:`commit`.

    The one implementation of atomic writing in the package (checkpoints, CSV logs,
    pictures, dataset files, JSON results): missing parent folders of ``path`` are
    created, the data goes to a hidden ``.NAME.PID-RANDOM.tmp`` in the same folder (so
    the rename never crosses file systems), is flushed to disk with ``fsync`` and is
    renamed over ``path``. :meth:`discard` (or leaving the ``with`` block by an
    exception) removes the temporary file. So ``path`` is never truncated: an
    error leaves an older ``path`` as it was and no temporary file; a killed
    process may leave the hidden temporary file, never a half-written ``path``.

    Most writers want :func:`atomic_write`; this class is for files written
    incrementally by a library that opens the path itself (h5py).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A unique name that the writer creates itself (not mkstemp, whose files are private, mode
        # 0600): the result gets the permissions of any new file, as it would without the rename.
        self.tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self.committed = False

    def commit(self) -> None:
        """Flush the temporary file to disk and rename it over ``path``."""
        # Without the fsync a power cut soon after the rename can leave an empty ``path`` (ext4,
        # xfs); it is one disk flush per file, and checkpoints are written once per validation.
        fd = os.open(self.tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp_path, self.path)
        self.committed = True

    def discard(self) -> None:
        """Remove the temporary file unless it was committed (safe to call more than once)."""
        if not self.committed:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.discard()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file that is then renamed to ``path``.

    Missing parent folders are created; on any exception the temporary file is
    removed and an existing ``path`` is left as it was (see :class:`AtomicFile`).
    Returns ``path``. Example: ``atomic_write(p, lambda tmp: tmp.write_text(text))``.
    """
    with AtomicFile(path) as target:
        write(target.tmp_path)
    return target.path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`: never a truncated checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# The temporary names of AtomicFile: ".NAME.PID-8HEX.tmp".
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files that :class:`AtomicFile` writers killed before their commit left in ``folder``.

    Only files named like the writer's temporaries (``.NAME.PID-RANDOM.tmp``, for
    ``NAME == name`` when given) whose process ``PID`` no longer exists are
    removed: a live writer's file, even another program's, is kept. PIDs are of
    this machine: a folder shared with another host that is writing into it
    at the same time is not supported. Returns the removed paths.
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match and (name is None or match["name"] == name) and not process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """The names (dotted paths) of the floating-point tensors in ``obj`` holding a NaN or an infinity.

    ``obj`` may nest dicts, lists and tuples (a checkpoint, a state dict, an
    optimizer state); other leaves are ignored.
    """
    if isinstance(obj, torch.Tensor):
        bad = (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all())
        return [prefix or "tensor"] if bad else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    return [name for key, value in items for name in nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


def finite_or_none(value: Any) -> Any:
    """``value``, with every non-finite float in it (nested dicts, lists) replaced by ``None``.

    For JSON output: ``json.dumps`` would write the non-standard ``Infinity`` / ``NaN``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def meta_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    grad_clip: float | None,
    reduce_gradients: Callable[[], None] | None = None,
) -> bool:
    """One meta-update of ``model`` (a meta-learner or update rule): backward of the meta-loss,
    ``reduce_gradients()`` if given (data-parallel training averages the gradients over the ranks
    there, :func:`fewshot_l2l.distributed.average_gradients`), global gradient-norm clipping (none
    when ``grad_clip`` is ``None``), optimizer step.

    The one non-finite guard of both training loops: a NaN or infinite meta-loss,
    or meta-gradient norm, skips the step, so ``model`` and the optimizer's state
    (Adam's moments and step count) stay exactly as they were; the gradients are
    cleared. Returns whether it stepped. With ``reduce_gradients`` every rank takes
    part in the reduction even when its own loss is not finite (it sends NaN
    gradients), so the averaged norm is NaN on every rank and all of them skip
    the same update: no rank waits at a collective the others left out.
    """
    optimizer.zero_grad(set_to_none=True)
    finite_loss = bool(torch.isfinite(loss).all())
    if finite_loss:
        loss.backward()
    elif reduce_gradients is None:
        return False
    if reduce_gradients is not None:
        if not finite_loss:
            for param in model.parameters():
                param.grad = torch.full_like(param, math.nan)
        reduce_gradients()
    # With max_norm=inf the clip multiplies by exactly 1.0: the same gradients, and their norm for the check.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf if grad_clip is None else grad_clip)
    if not math.isfinite(norm.item()):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> None:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    The meta-learner allocates and frees tensors of tens of MB every inner step.
    By default glibc serves those with fresh ``mmap`` calls, so each one pays for
    page faults again: on our 2-core CI machine that made a loop of such
    allocations 4.5x slower (16.5 s vs 3.7 s) and a third of evaluation time was
    kernel time. Raising the mmap and trim thresholds fixes it. A no-op where
    glibc is not the allocator; safe to call more than once.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)
    libc.mallopt(m_top_pad, 1 << 28)
