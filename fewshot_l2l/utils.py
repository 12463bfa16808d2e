"""Small shared helpers: devices, seeds, the one atomic file writer, the meta-update step."""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

import torch


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


def meta_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    grad_clip: float | None,
    reduce_gradients: Callable[[], None] | None = None,
) -> None:
    """One meta-update of ``model`` (a meta-learner or update rule): backward of the meta-loss,
    ``reduce_gradients()`` if given (data-parallel training averages the gradients over the ranks
    there, :func:`fewshot_l2l.distributed.average_gradients`), global gradient-norm clipping
    (skipped when ``grad_clip`` is ``None``), optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if reduce_gradients is not None:
        reduce_gradients()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


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
