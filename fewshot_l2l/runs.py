"""The run folder that both meta-training loops share (few-shot :mod:`fewshot_l2l.training` and
learned-optimizer :mod:`fewshot_l2l.optim.training`).

``RUN_DIR`` holds:

* ``init.pt`` - the untrained starting point, to measure what training bought;
* ``last.pt`` - written after every validation; a run resumes from it;
* ``best.pt`` - the checkpoint with the best validation score so far;
* ``metrics.csv`` - one row per validation, columns chosen by the loop.

:class:`RunFolder` refuses to start over an existing run unless asked to resume,
refuses to resume under settings that change the experiment, and writes every
file through :func:`fewshot_l2l.utils.atomic_write` (a crash never leaves a
truncated checkpoint or a half-written CSV line). :class:`Stopwatch` keeps the
training time across resumes for the ``max_minutes`` budget. The loops keep
their algorithm, their checkpoint contents and their validation; only this
bookkeeping is shared.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Iterable

from .utils import atomic_torch_save, atomic_write


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
    """``RUN_DIR`` of one meta-training run (see the module docstring).

    Args:
        out: the folder; created with its missing parents.
        columns: the metrics columns; the first one is the step counter
            (update or iteration) that :meth:`resume` trims the log by.
        resume: continue the run in ``out`` if there is one. Without it an
            existing ``last.pt`` raises ``FileExistsError``, so a second command
            with the same ``--out`` never overwrites results.
    """

    def __init__(self, out: str | os.PathLike, columns: Iterable[str], resume: bool) -> None:
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.columns = tuple(columns)
        self.init, self.last, self.best = self.path / "init.pt", self.path / "last.pt", self.path / "best.pt"
        self.metrics = self.path / "metrics.csv"
        if self.last.exists() and not resume:
            raise FileExistsError(f"{self.last} exists: pass --resume to continue that run, or choose another --out")
        self.resuming = resume and self.last.exists()

    def start(self, checkpoint: dict) -> None:
        """Begin a new run: save the untrained ``checkpoint`` as ``init.pt`` and write the metrics header."""
        atomic_torch_save(checkpoint, self.init)
        atomic_write(self.metrics, lambda tmp: tmp.write_bytes(_csv_bytes([self.columns])))

    def resume(self, saved_config: dict, config: dict, may_change: set[str], step: int) -> None:
        """Continue the run whose ``last.pt`` holds ``saved_config`` and reached ``step``.

        Raises ``ValueError`` (naming each setting) when ``config`` differs from
        ``saved_config`` outside ``may_change``. Rows logged after ``step`` (by a
        run stopped between writing its row and its checkpoint) are dropped, so the
        resumed log has each step once.
        """
        check_resume_config(saved_config, config, may_change, self.last)
        rows = []
        if self.metrics.exists():
            with open(self.metrics, newline="") as file:
                rows = list(csv.reader(file))[1:]
        kept = [row for row in rows if len(row) == len(self.columns) and int(row[0]) <= step]
        if kept != rows or not self.metrics.exists():
            atomic_write(self.metrics, lambda tmp: tmp.write_bytes(_csv_bytes([self.columns, *kept])))

    def log(self, **values) -> None:
        """Add one row to ``metrics.csv``: a value for each column (floats are written with 6 digits)."""
        if set(values) != set(self.columns):
            raise ValueError(f"RunFolder.log: expected the columns {', '.join(self.columns)}, got {', '.join(values)}")
        # Rewritten whole (a few kB) rather than appended: a crash never leaves half a line.
        data = self.metrics.read_bytes() + _csv_bytes([[_cell(values[name]) for name in self.columns]])
        atomic_write(self.metrics, lambda tmp: tmp.write_bytes(data))

    def read_metrics(self) -> list[dict[str, float]]:
        """Every row of ``metrics.csv`` (the whole history of a resumed run), values as floats."""
        with open(self.metrics, newline="") as file:
            return [{name: float(value) for name, value in row.items()} for row in csv.DictReader(file)]

    def save(self, checkpoint: dict, improved: bool) -> None:
        """Write ``checkpoint`` as ``last.pt``, and as ``best.pt`` too when the validation score ``improved``."""
        atomic_torch_save(checkpoint, self.last)
        if improved:
            atomic_torch_save(checkpoint, self.best)


class Stopwatch:
    """Training time of a run, continued from ``elapsed_s`` when it resumes, against ``max_minutes`` (or none)."""

    def __init__(self, elapsed_s: float = 0.0, max_minutes: float | None = None) -> None:
        self.start = time.time() - elapsed_s
        self.max_minutes = max_minutes

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.start

    def out_of_time(self) -> bool:
        """Whether the budget is spent (never without ``max_minutes``)."""
        return self.max_minutes is not None and self.elapsed_s >= 60 * self.max_minutes
