"""The run folder of every training run (few-shot methods, :mod:`fewshot_l2l.training`, and learned update rules,
:mod:`fewshot_l2l.optim.rule_training`), written by the one loop (:mod:`.loop`).

``RUN_DIR`` holds:

* ``init.pt`` - the untrained starting point, to measure what training bought;
* ``last.pt`` - written after every validation (and when a signal stops the run); a run resumes from it;
* ``best.pt`` - the checkpoint with the best validation score so far (written before ``last.pt``,
  so the best that ``last.pt`` records always exists);
* ``metrics.csv`` - one row per validation, columns chosen by the loop;
* ``.lock`` - while a run lives (:class:`fewshot_l2l.runs.process.FolderLock`).

:class:`RunFolder` locks the folder for the whole run, removes the temporary
files of writers that were killed, refuses to start over an existing run unless
asked to resume, refuses to resume under settings that change the experiment,
never writes a checkpoint holding a NaN or an infinity, and writes every file
through :func:`fewshot_l2l.files.atomic_write` (a crash never leaves a
truncated checkpoint or a half-written CSV line). Used as a context manager, it
releases the lock at the end and, when the start failed before any checkpoint,
removes the folder it created.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable

import torch

from ..files import atomic_torch_save, atomic_write, remove_stale_temps
from ..finite import nonfinite_tensors
from .process import LOCK_NAME, FolderLock, note


class NonFiniteError(RuntimeError):
    """A run produced NaN or infinite values where it must not (meta-updates, or a checkpoint about to be written)."""


def check_resume_config(saved: dict, current: dict, may_change: set[str], path: str | os.PathLike) -> None:
    """Refuse to resume the run saved in ``path`` under settings that change what it means.

    ``saved`` and ``current`` are the two configurations as dicts; only the keys in
    ``may_change`` (budgets, intervals, device, paths) may differ. Anything else
    (problem, data, model sizes, seed, ...) would silently mix two experiments in one
    run folder, e.g. keep a best score measured under the old settings.
    """
    changed = sorted(key for key in set(saved) | set(current)
                     if key not in may_change and saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
        raise ValueError(
            f"--resume {path}: the run was started with other settings ({details}); "
            f"only {', '.join(sorted(may_change))} may change when resuming. Use a new --out for a new run."
        )


def _csv_bytes(rows: Iterable[Iterable]) -> bytes:
    """``rows`` as ``csv.writer`` writes them (``\\r\\n`` line ends), encoded as UTF-8."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


def _cell(value) -> str:
    """Floats with 6 significant digits (the log's precision), everything else as ``str``."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class RunFolder:
    """``RUN_DIR`` of one meta-training run (see the module docstring); use it as a context manager.

    Args:
        out: the folder; created with its missing parents.
        columns: the metrics columns; the first one is the step counter
            (update or iteration) that :meth:`resume` trims the log by.
        resume: continue the run in ``out`` from its ``last.pt``; ``out`` without a run starts one.
        force: start over in ``out``, replacing the files of an earlier run there (said in one line).

    Without ``resume`` or ``force`` a folder holding any file of a run (:data:`KEPT_FILES`: ``last.pt``,
    ``best.pt``, ``init.pt``, ``metrics.csv``, ``curves.png``, ``result.json``) is refused with
    ``FileExistsError``, so a second command with the same ``--out`` never overwrites results, even when only a
    ``best.pt`` was kept; ``resume`` in a folder that holds such files but no ``last.pt`` is refused too, naming what
    it found. ``out`` that is a file (or a link to one) is refused with ``NotADirectoryError``.

    Raises :class:`fewshot_l2l.runs.process.RunLockedError` while another process runs in ``out``.
    """

    RUN_FILES = ("init.pt", "metrics.csv", "curves.png")  # what a start writes before its first checkpoint
    # Every file a run (or compare.py's result) leaves: none is replaced without --force.
    KEPT_FILES = ("last.pt", "best.pt", "init.pt", "metrics.csv", "curves.png", "result.json")

    def __init__(self, out: str | os.PathLike, columns: Iterable[str], resume: bool, force: bool = False) -> None:
        if resume and force:
            raise ValueError(f"--resume continues the run in {out}, --force starts it over: give one of them")
        self.path = Path(out)
        self.created = _make_folders(self.path)
        self.columns = tuple(columns)
        self.init, self.last, self.best = self.path / "init.pt", self.path / "last.pt", self.path / "best.pt"
        self.metrics = self.path / "metrics.csv"
        self.best_step: int | None = None
        self.saved_step: int | None = None  # the step that last.pt holds (of this run, or the one it resumed)
        self.lock = FolderLock(self.path / LOCK_NAME)
        try:
            removed = remove_stale_temps(self.path)
            if removed:
                note(f"removed {len(removed)} temporary file(s) of killed writers from {self.path}: "
                     f"{', '.join(p.name for p in removed)}")
            found = [name for name in self.KEPT_FILES if (self.path / name).exists()]
            if found and not force and not (resume and self.last.exists()):
                raise FileExistsError(self._refusal(found, resume))
        except BaseException:
            self.close()
            raise
        self.resuming = resume and self.last.exists()
        self.replacing = found if force else []

    def _refusal(self, found: list[str], resume: bool) -> str:
        """Why a start in this folder is refused, and what the user can do."""
        files = ", ".join(found)
        if resume:
            return (f"--resume: {self.path} has no last.pt to continue from, only {files} of an earlier run: pass "
                    f"--force to start over (replacing them), or choose another --out")
        if self.last.exists():
            return (f"{self.last} exists: pass --resume to continue that run, --force to start it over (replacing "
                    f"{files}), or choose another --out")
        return (f"{self.path} holds {files} of an earlier run (no last.pt, so it cannot be resumed): pass --force to "
                f"start over (replacing them), or choose another --out")

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc_type is not None:
                self._remove_failed_start()
        finally:
            self.close()

    def close(self) -> None:
        """Release the folder's lock (safe to call more than once)."""
        self.lock.release()
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            _remove_empty(self.created)

    def _remove_failed_start(self) -> None:
        """A start that failed before any checkpoint leaves no folder behind, if it created the folder."""
        if not self.created or self.last.exists() or self.best.exists():
            return
        for name in self.RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def start(self, checkpoint: dict) -> None:
        """Begin a new run: save the untrained ``checkpoint`` as ``init.pt`` and write the metrics header (with
        ``force``, after removing the earlier run's files)."""
        if self.replacing:
            note(f"--force: replacing {', '.join(self.replacing)} of the earlier run in {self.path}")
            for name in self.replacing:
                if name not in ("init.pt", "metrics.csv"):  # those two are rewritten (atomically) right below
                    (self.path / name).unlink(missing_ok=True)
            self.replacing = []
        self._write_checkpoint(checkpoint, self.init)
        atomic_write(self.metrics, lambda tmp: tmp.write_bytes(_csv_bytes([self.columns])))

    def resume(self, saved_config: Any, config: Any, step: int, saved_run: dict | None = None) -> None:
        """Continue the run whose ``last.pt`` holds ``saved_config`` and reached ``step``.

        Raises ``ValueError`` (naming each setting) when ``config`` differs from ``saved_config`` in a setting that
        is not declared resumable (:meth:`fewshot_l2l.settings.Settings.resumable_fields`; both configurations
        are :class:`~fewshot_l2l.settings.Settings` dataclasses of the same class). Rows logged after ``step`` (by a
        run stopped between writing its row and its checkpoint) are dropped, so the
        resumed log has each step once; a log with fewer columns (an older
        version's) gets the new ones, empty. ``saved_run`` is ``last.pt``'s
        ``"run"`` entry (written by :meth:`save`): ``best.pt`` is checked against
        the best it records.
        """
        check_resume_config(asdict(saved_config), asdict(config), type(config).resumable_fields(), self.last)
        rows, header = [], list(self.columns)
        if self.metrics.exists():
            with open(self.metrics, newline="") as file:
                header, *rows = list(csv.reader(file)) or [list(self.columns)]
        if header != list(self.columns) and set(header) <= set(self.columns):
            rows = [[dict(zip(header, row)).get(name, "") for name in self.columns] for row in rows if len(row) == len(header)]
        kept = [row for row in rows if len(row) == len(self.columns) and int(row[0]) <= step]
        if kept != rows or header != list(self.columns) or not self.metrics.exists():
            atomic_write(self.metrics, lambda tmp: tmp.write_bytes(_csv_bytes([self.columns, *kept])))
        self.best_step = (saved_run or {}).get("best_step")
        self.saved_step = step
        self._check_best(step)

    def _check_best(self, step: int) -> None:
        """Say (and repair when ``last.pt`` is itself the best) a ``best.pt`` missing or older than ``last.pt`` records."""
        if self.best_step is None:
            return
        try:
            found = torch.load(self.best, map_location="cpu", weights_only=True).get("run", {}).get("step")
        except FileNotFoundError:
            found = None
        except Exception as error:  # corrupt: treated as missing, and said
            note(f"{self.best} is unreadable ({type(error).__name__}: {error})")
            found = None
        if found is not None and found >= self.best_step:
            return
        what = "missing" if found is None else f"from step {found}"
        if self.best_step == step:
            atomic_write(self.best, lambda tmp: shutil.copyfile(self.last, tmp))
            note(f"{self.best} was {what}, though {self.last} records the best validation at step {step}: "
                 f"repaired from {self.last.name}")
        else:
            note(f"{self.best} is {what}, though {self.last} records the best validation at step {self.best_step}: "
                 f"that checkpoint is lost; the next improvement writes a new best.pt")

    def log(self, **values) -> None:
        """Add one row to ``metrics.csv``: a value for each column (floats are written with 6 digits)."""
        if set(values) != set(self.columns):
            raise ValueError(f"RunFolder.log: expected the columns {', '.join(self.columns)}, got {', '.join(values)}")
        # Rewritten whole (a few kB) rather than appended: a crash never leaves half a line.
        data = self.metrics.read_bytes() + _csv_bytes([[_cell(values[name]) for name in self.columns]])
        with self._writing(self.metrics):
            atomic_write(self.metrics, lambda tmp: tmp.write_bytes(data))

    def read_metrics(self) -> list[dict[str, float]]:
        """Every row of ``metrics.csv`` (the whole history of a resumed run), values as floats (empty cells NaN)."""
        with open(self.metrics, newline="") as file:
            return [{name: float(value) if value else float("nan") for name, value in row.items()}
                    for row in csv.DictReader(file)]

    def save(self, checkpoint: dict, improved: bool, step: int) -> None:
        """Write ``checkpoint`` (of ``step``) as ``last.pt``, and first as ``best.pt`` too when the validation score ``improved``.

        Adds ``checkpoint["run"] = {"step": step, "best_step": ...}`` (what :meth:`resume` checks ``best.pt`` by).
        Raises :class:`NonFiniteError`, writing nothing, when a tensor of ``checkpoint`` holds a NaN or an infinity.
        """
        if improved:
            self.best_step = step
        checkpoint = {**checkpoint, "run": {"step": step, "best_step": self.best_step}}
        self._refuse_nonfinite(checkpoint, self.last)
        if improved:  # best.pt first: a crash between the two writes leaves the best that last.pt records
            self._write_checkpoint(checkpoint, self.best)
        self._write_checkpoint(checkpoint, self.last)
        self.saved_step = step

    def save_best_if_missing(self, checkpoint: dict, step: int) -> None:
        """Write ``checkpoint`` as ``best.pt`` unless there is one (so that evaluation can run after a run whose
        validations all diverged)."""
        if not self.best.exists():
            self._write_checkpoint({**checkpoint, "run": {"step": step, "best_step": self.best_step}}, self.best)

    @staticmethod
    def _refuse_nonfinite(checkpoint: dict, path: Path) -> None:
        bad = nonfinite_tensors(checkpoint)
        if bad:
            raise NonFiniteError(f"refusing to write {path}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                                 f"hold NaN or infinite values")

    def _write_checkpoint(self, checkpoint: dict, path: Path) -> None:
        """The one checkpoint writer of a run: atomic, and never a non-finite checkpoint."""
        self._refuse_nonfinite(checkpoint, path)
        with self._writing(path):
            atomic_torch_save(checkpoint, path)

    def kept(self) -> str:
        """What the folder holds to continue from, and how (for the message of a run that stops on an error)."""
        if self.saved_step is not None:
            return (f"{self.last} is intact and holds step {self.saved_step}: once the cause is fixed, the same command "
                    "with --resume continues from it")
        return f"no last.pt was written yet: once the cause is fixed, run the command again (with --force over {self.path})"

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """Any ``OSError`` writing ``path`` (a full disk, a read-only folder) names the file and says what is kept."""
        try:
            yield
        except OSError as error:
            raise type(error)(error.errno, f"{error.strerror} while writing {path}; {self.kept()}") from error


def _make_folders(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the folders it created, deepest first. A file (or a link to one) at ``path`` or
    above it is refused with ``NotADirectoryError`` naming it."""
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        what = "is" if blocking == path else f"(above {path}) is"
        raise NotADirectoryError(f"--out {path}: {blocking} {what} a file, not a folder: a run needs a folder of its own")
    missing, folder = [], path.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else's file) or gone: leave it and its parents
            return
