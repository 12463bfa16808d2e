"""What a training run needs from the operating system: an exclusive lock on its folder and graceful stop signals.

* :class:`FolderLock` - ``RUN_DIR/.lock``, ``fcntl.flock``-ed for the whole run,
  so a second run (or a second ``--resume``) with the same ``--out`` is refused
  while the first one lives. The kernel drops the lock when its process dies
  (even by ``SIGKILL``), so a lock file left by a dead run is taken over.
* :class:`StopSignals` - while it is entered, ``SIGTERM`` and ``SIGINT`` (Ctrl-C)
  only ask the loop to stop: the loop finishes its update, saves ``last.pt``
  with everything an exact resume needs and raises :class:`RunInterrupted`
  (exit status ``128 + signal``). A second signal stops at once. The previous
  handlers are restored on exit, so calling a training function from Python
  leaves none installed.
"""

from __future__ import annotations

import datetime
import errno
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType

LOCK_NAME = ".lock"
# How a run stopped by a signal is continued, when not by its own command with --resume: a compare.py method's
# process sets it (the comparison is continued, not the method's run alone).
RESUME_HINT: str | None = None


def note(message: str) -> None:
    """A one-line notice on stderr (where the progress bars go too)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


class RunLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """An exclusive ``flock`` on ``path`` (created if missing) that also records ``pid host start-time`` in it.

    Raises :class:`RunLockedError` naming the holder when another process has it.
    Taking over the file of a dead holder prints a note. :meth:`release`
    deletes the file, so a finished run leaves none.
    """

    def __init__(self, path: str | os.PathLike, what: str = "run folder") -> None:
        self.path = Path(path)
        self.fd: int | None = None
        try:
            import fcntl  # POSIX only
        except ImportError:
            note(f"{self.path.parent}: no file locking on this platform; do not start two runs in it at once")
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read(fd)
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunLockedError(
                    f"{self.path.parent} is in use by another {what} ({_describe(holder)}): wait for it to end, "
                    f"or choose another --out"
                ) from None
            # A releasing holder unlinks the file: if it did between our open and flock, ours is a dead inode.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        previous = _read(fd)
        if previous:
            note(f"{self.path.parent}: took over the lock of a run that ended without releasing it ({_describe(previous)})")
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {started}\n".encode(), 0)

    def release(self) -> None:
        """Delete the lock file and drop the lock (safe to call more than once)."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see the inode check above
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()


def _describe(holder: str) -> str:
    parts = holder.split()
    if len(parts) < 3:
        return "holder unknown"
    return f"pid {parts[0]} on {parts[1]}, since {parts[2]}"


class RunInterrupted(SystemExit):
    """A run stopped by a signal; ``code`` is ``128 + signum`` (the shell's convention), so an uncaught one
    exits with that status without a traceback. ``str()`` is the message (already printed)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.message = signum, message

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Context manager: ``SIGTERM`` / ``SIGINT`` set :attr:`requested` (the loop polls it after each update);
    a second one raises :class:`RunInterrupted` at once. Outside the main thread (where Python cannot
    install handlers) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # os.write, not print: a handler that prints while the progress bar is printing raises "reentrant call".
        if self.requested is not None:
            message = f"second {signal_name(signum)}: stopping at once, without saving"
            os.write(2, f"\n{message}\n".encode())
            raise RunInterrupted(signum, message)
        self.requested = signum
        os.write(2, f"\n{signal_name(signum)}: finishing the current update, then saving last.pt "
                    f"(send it again to stop at once)\n".encode())

    def interrupted(self, last: Path, where: str, signum: int | None = None) -> RunInterrupted:
        """The exception to raise once ``last`` (``last.pt``) is saved at ``where`` (e.g. ``"update 57"``); prints it.

        ``signum``: the signal that stopped the run when it is not this process's own (distributed
        training stops every rank when one of them received one)."""
        signum = self.requested if signum is None else signum
        assert signum is not None
        by = signal_name(signum) if signum == self.requested else f"{signal_name(signum)} (sent to another rank)"
        how = RESUME_HINT or f"to continue, run the same command with --resume (same --out {last.parent})"
        message = f"stopped by {by} after {where}: saved {last}; {how}"
        print(message, file=sys.stderr, flush=True)
        return RunInterrupted(signum, message)
