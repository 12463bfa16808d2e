"""Files that are never half-written: the one atomic writer of the package, and the clean-up of what a killed
writer left behind."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

import torch


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
    target = AtomicFile(path)
    try:
        with target:
            write(target.tmp_path)
    except OSError as error:  # a read-only folder, a full disk: name the file being written, not its temporary
        if error.filename is not None and os.fspath(error.filename) == os.fspath(target.tmp_path):
            raise type(error)(error.errno, error.strerror, os.fspath(target.path)) from error
        raise
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
