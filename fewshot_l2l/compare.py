"""Every method on the same budget and the same test episodes: ``scripts/compare.py`` (:mod:`fewshot_l2l.cli.compare`).

Each method, one after another, trains for the same training time (``max_minutes``; the clock stops while it
validates, which every method does at the same shares of its budget, ``validations``, on the same seeded validation
episodes) into ``OUT/METHOD`` (a run folder: a crash loses nothing, ``resume`` continues it), then its
``best.pt`` is evaluated on the same seeded test episodes under both query batch-norm modes: ``support`` (not
transductive, the evaluation protocol) and ``batch`` (transductive). Each method runs in a process of its own
(this module's ``__main__``), so its peak memory is that process's resident-set high-water mark
(``getrusage(RUSAGE_SELF).ru_maxrss``, training and evaluation) and no method inherits another's allocations;
its result is written atomically to ``OUT/METHOD/result.json``, which a resumed comparison reuses.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fewshot_l2l

from .checkpoints import checkpoint_splits, load_checkpoint
from .devices import resolve_device, seed_everything, tune_cpu_allocator
from .evaluation import evaluate
from .files import atomic_write
from .methods import METHODS, config_class, method_class, method_config
from .runs import process
from .runs.process import RunInterrupted, signal_name
from .settings import parse_assignment
from .training import meta_train

RESULT_NAME = "result.json"
TRAINING_EPISODES = 10**8  # "until the budget is spent"


@dataclass
class ComparisonSpec:
    """What every method of one comparison shares."""

    dataset: str
    data: str | None
    n_way: int
    k_shot: int
    minutes: float
    out: str
    test_episodes: int = 600
    val_episodes: int = 200
    validations: int = 20  # every method validates at the same shares of its budget: every 5%
    rotate: str = "auto"  # which splits get rotated classes (data.load_splits), e.g. train+val for 20-way on a minimal build
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    force: bool = False  # start every method over, replacing its run folder's files
    # Each method's own settings other than its defaults, e.g. {"meta-lstm": {"meta_batch": 1, "inner_steps": 6},
    # "maml": {"inner_lr": 2.0}}; the settings every method shares (COMPARISON_FIELDS) come from the fields above.
    settings: dict = field(default_factory=dict)


# Settings that a comparison sets for every method alike (shared_settings), and those that would change its test
# episodes (n_query, rotate): not among a method's own settings.
COMPARISON_FIELDS = ("dataset", "data", "n_way", "k_shot", "episodes", "max_minutes", "val_episodes", "validations",
                     "device", "seed", "out", "resume", "force", "n_query", "rotate", "val_every")


def shared_settings(spec: ComparisonSpec, out: Path) -> dict:
    """The training settings every method of ``spec`` gets, its run folder being ``out``."""
    return dict(dataset=spec.dataset, data=spec.data, n_way=spec.n_way, k_shot=spec.k_shot, episodes=TRAINING_EPISODES,
                max_minutes=spec.minutes, val_episodes=spec.val_episodes, validations=spec.validations,
                rotate=spec.rotate, device=spec.device, seed=spec.seed, out=str(out), resume=spec.resume,
                force=spec.force)


def method_settings(assignments: list[str], methods: list[str]) -> dict[str, dict]:
    """``["maml.inner_lr=2", "meta-lstm.meta_batch=1"]`` as ``{"maml": {"inner_lr": 2.0}, "meta-lstm": {"meta_batch":
    1}}``: each ``METHOD.NAME=VALUE`` a setting of that method's own (not one a comparison shares), its value read as
    the method's command line reads it and checked by the method's configuration. Raises ``ValueError`` naming a
    malformed assignment, a method not compared, an unknown or shared setting, a setting given twice, or a bad value."""
    settings: dict[str, dict] = {}
    for assignment in assignments:
        method, dot, rest = assignment.partition(".")
        if not dot or method not in METHODS:
            raise ValueError(f"--set: {assignment!r} is not METHOD.NAME=VALUE with METHOD one of {', '.join(METHODS)} "
                             "(e.g. maml.inner_lr=2)")
        if method not in methods:
            raise ValueError(f"--set {assignment}: {method} is not among --methods")
        name, value = parse_assignment(rest, config_class(method), f"--set {method}", refused=COMPARISON_FIELDS + ("method",))
        if name in settings.setdefault(method, {}):
            raise ValueError(f"--set {method}: {name} is given twice")
        settings[method][name] = value
    for method, own in settings.items():
        try:
            config_class(method)(method=method, **own)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--set {method}: {format_settings(own)}: {error}") from error
    return settings


def format_settings(settings: dict) -> str:
    """``{"meta_batch": 1, "lr_schedule": "cosine"}`` as ``meta_batch=1 lr_schedule='cosine'``."""
    return " ".join(f"{name}={value!r}" for name, value in settings.items())


@dataclass
class MethodResult:
    """One row of the comparison (accuracies are fractions; ``*_batch``: under transductive query batch norm)."""

    method: str
    n_way: int
    k_shot: int
    accuracy: float
    ci95: float
    accuracy_batch: float
    ci95_batch: float
    train_seconds: float  # the training time, which the budget counts (validations left out)
    episodes: int  # training episodes (finetune: pre-training mini-batches)
    updates: int
    wall_seconds: float  # the whole process: data, training, both evaluations
    eval_seconds_per_episode: float  # under support mode
    peak_rss_mb: float
    test_episodes: int
    load_average: float  # 1-minute load average when the method finished
    run: str
    settings: dict = field(default_factory=dict)  # the method's own settings (ComparisonSpec.settings)
    validation_seconds: float = 0.0  # the time of its validations (result.json files before the field: 0)


def _train(method: str, spec: ComparisonSpec, out: Path) -> dict:
    return meta_train(method_config(method, **spec.settings.get(method, {}), **shared_settings(spec, out)))


def _evaluator(checkpoint: Path, spec: ComparisonSpec):
    """``evaluate(query_bn) -> EvalResult`` on ``checkpoint``, loaded (with its test split) once, so that timing a
    call times the evaluation alone."""
    device = resolve_device(spec.device)
    loaded = load_checkpoint(checkpoint, device)
    split = checkpoint_splits(checkpoint, loaded)["test"].to(device)
    return lambda query_bn: evaluate(loaded.method, split, n_episodes=spec.test_episodes, seed=spec.seed,
                                     query_bn=query_bn)


def run_method(method: str, spec: ComparisonSpec) -> MethodResult:
    """Train ``method`` for ``spec.minutes`` and evaluate it (in this process; :func:`compare` runs it in a child)."""
    tune_cpu_allocator()
    seed_everything(spec.seed)
    start = time.time()
    out = Path(spec.out) / method
    summary = _train(method, spec, out)
    score = _evaluator(Path(summary["best"]), spec)
    began = time.time()
    support = score("support")
    eval_seconds = time.time() - began
    batch = score("batch")
    result = MethodResult(
        method=method, n_way=spec.n_way, k_shot=spec.k_shot, accuracy=support.accuracy, ci95=support.ci95,
        accuracy_batch=batch.accuracy, ci95_batch=batch.ci95, train_seconds=summary["train_s"],
        validation_seconds=summary["validation_s"],
        episodes=summary["episodes"], updates=summary["updates"], wall_seconds=time.time() - start,
        eval_seconds_per_episode=eval_seconds / spec.test_episodes,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        test_episodes=spec.test_episodes, load_average=os.getloadavg()[0], run=str(out),
        settings=spec.settings.get(method, {}),
    )
    atomic_write(out / RESULT_NAME, lambda tmp: tmp.write_text(json.dumps(asdict(result)) + "\n"))
    return result


def compare(methods: list[str], spec: ComparisonSpec, on_result=None) -> list[MethodResult]:
    """Run every method of ``methods`` (one child process each, one after another) and return their results.

    With ``spec.resume`` a method whose ``result.json`` exists is not run again, and one whose training was
    interrupted continues from its ``last.pt``. ``on_result(result)`` is called as each method finishes.
    Raises ``RuntimeError`` naming the method (and its folder) whose process failed.

    SIGINT and SIGTERM (Ctrl-C, a scheduler) are passed on to the running method's process, which finishes its
    update, saves ``last.pt`` and exits, and are waited for; a second one stops that process at once, as in
    ``train.py``. Then :class:`~fewshot_l2l.runs.process.RunInterrupted` (status ``128 + signal``) says which
    methods finished and how to continue the comparison (``--resume``). The method's process runs in a process
    group of its own, so that a Ctrl-C at the terminal reaches it once, through this process.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"compare: methods must be some of {', '.join(METHODS)}, got {', '.join(methods) or 'none'}")
    results = []
    package_root = str(Path(fewshot_l2l.__file__).resolve().parents[1])  # the child imports this very package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with ForwardedSignals() as signals:
        for index, method in enumerate(methods, 1):
            saved = Path(spec.out) / method / RESULT_NAME
            if not (spec.resume and saved.is_file()):
                # A line of its own (the method's process draws its progress bars below it).
                print(f"compare: {method} ({index}/{len(methods)}): {spec.minutes:g} min of training into "
                      f"{Path(spec.out) / method}, then {spec.test_episodes} test episodes", file=sys.stderr, flush=True)
                status = signals.run([sys.executable, "-m", "fewshot_l2l.compare", method, json.dumps(asdict(spec))],
                                     env)
                if signals.received:
                    raise _interrupted(signals.received[0], method, results, spec)
                if status != 0:
                    raise RuntimeError(_failure(method, status, spec))
            result = MethodResult(**json.loads(saved.read_text()))
            wanted = json.loads(json.dumps(spec.settings.get(method, {})))  # as result.json holds it
            if result.settings != wanted:
                raise RuntimeError(f"compare: {saved} was trained with --set {method} settings "
                                   f"{result.settings or 'none'}, not {wanted or 'none'}: give the same settings, or "
                                   "another --out")
            results.append(result)
            if on_result is not None:
                on_result(result)
            if signals.received:  # between two methods: stop before the next one
                raise _interrupted(signals.received[0], None, results, spec)
    return results


class ForwardedSignals:
    """While entered (in the main thread), SIGINT and SIGTERM are recorded and passed on to the child that
    :meth:`run` waits for; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.child: subprocess.Popen | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "ForwardedSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self, argv: list[str], env: dict) -> int:
        """Run ``argv`` in a process group of its own and wait for it; its exit status."""
        # Its own process group (Python 3.10: a session of its own), out of reach of the terminal's Ctrl-C.
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        self.child = subprocess.Popen(argv, env=env, **group)
        try:
            return self.child.wait()
        finally:
            self.child = None


def _interrupted(signum: int, method: str | None, results: list[MethodResult], spec: ComparisonSpec) -> RunInterrupted:
    """What a stopped comparison says, printed once: what finished, where the stopped method is, how to go on."""
    finished = ", ".join(r.method for r in results) or "none"
    where = ""
    if method is not None:
        last = Path(spec.out) / method / "last.pt"
        where = (f"; {method} stopped in training, its {last} kept" if last.is_file() else
                 f"; {method} stopped before its first checkpoint")
    message = (f"compare: stopped by {signal_name(signum)}; finished: {finished}{where}; to continue the comparison, "
               f"run the same command with --resume (same --out {spec.out})")
    print(message, file=sys.stderr, flush=True)
    return RunInterrupted(signum, message)


def _failure(method: str, status: int, spec: ComparisonSpec) -> str:
    """The error of a method's failed process (its own line above says why)."""
    folder = Path(spec.out) / method
    if (folder / "last.pt").is_file() and not spec.resume:
        hint = f"; its run folder {folder} keeps its last.pt: once the cause is fixed, --resume continues it"
    else:
        hint = f" (its run folder: {folder})"
    return f"compare: {method} failed (exit status {status}; the error above says why){hint}"


def markdown_table(results: list[MethodResult]) -> str:
    """The comparison as a markdown table (accuracies in percent with their 95% CI)."""
    lines = ["| method | test acc., support BN (not transductive) | test acc., batch BN (transductive) | training "
             "episodes | updates | train s | validation s | wall s | eval s / episode | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        unit = method_class(r.method).budget_unit
        episodes = str(r.episodes) if unit == "episodes" else f"{r.episodes} {unit}"
        lines.append(f"| {r.method} | {100 * r.accuracy:.2f}% ± {100 * r.ci95:.2f}% | {100 * r.accuracy_batch:.2f}% ± "
                     f"{100 * r.ci95_batch:.2f}% | {episodes} | {r.updates} | {r.train_seconds:.0f} | "
                     f"{r.validation_seconds:.0f} | {r.wall_seconds:.0f} "
                     f"| {r.eval_seconds_per_episode:.3f} | {r.peak_rss_mb:.0f} |")
    return "\n".join(lines)


def child_main(argv: list[str]) -> None:
    """The process of one method of :func:`compare`: ``METHOD SPEC_JSON``. Errors are one line (``compare METHOD:
    error: ...``, a traceback with ``FEWSHOT_L2L_DEBUG=1``); a signal that stops its training says nothing of its own
    ``--resume`` (the comparison's parent says how to continue); a SIGTERM during its evaluation exits at once (its
    training is saved: ``--resume`` evaluates it again)."""
    from .cli.args import command
    method, spec = argv[0], ComparisonSpec(**json.loads(argv[1]))
    sys.argv[0] = f"compare {method}"  # the name in its error lines
    process.RESUME_HINT = f"the comparison continues with --resume (same --out {spec.out})"
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # outside training: nothing to save
    command(lambda _: run_method(method, spec))([])


if __name__ == "__main__":  # the child process of compare()
    child_main(sys.argv[1:])
