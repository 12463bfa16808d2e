"""Property-based tests of the inputs (hypothesis): the command-line values of all seven commands, and the
constructors of the episode sampler, the learner and the meta-learner.

Every command line is drawn as a set of flags with valid, tiny values (so a valid run takes a fraction
of a second), of which zero to two are then replaced by invalid ones: 0, negatives, nan, inf, integers
past any range, words where numbers belong, missing files, folders as files, damaged and foreign
checkpoints. The oracle knows which lines are valid. A valid one must run through with finite numbers
in its output and its files written; an invalid one must end with exactly one ``PROG: error:`` line and
status 1 or 2, never a traceback or a hang, and leave every file of its folder as it was.

Bounded for CI: commands run in this process (``main(argv)``, no interpreter start-up),
``derandomize=True`` (the same examples every run), a fixed number of examples per property.
``TRIED`` counts the inputs tried (``pytest -s`` prints it).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from cli_helpers import PROG, files_under, make_omniglot_zip, run_cli, tiny_glyphs

from fewshot_l2l.data.episodes import EpisodeSampler, FewShotSplit
from fewshot_l2l.data.hdf5 import HDF5Splits
from fewshot_l2l.learner import ConvLearner, LearnerConfig
from fewshot_l2l.meta_learner import MetaLearner

FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECONDS_PER_RUN = 60  # a run that takes longer than this is taken for a hang
TRIED: Counter = Counter()

# Invalid values, as typed on a command line.
BAD_INT = ["0", "-1", "2147483648", str(2**64), "1" + "0" * 30, "9" * 5000, "1.5", "1e3", "nan", "inf", "three", ""]
BAD_FLOAT = ["0", "-1", "-0.0", "nan", "inf", "-inf", "1e999", "three", ""]
BAD_SEED = ["-1", "4294967296", str(2**64), "1.5", "seed"]
BAD_DEVICE = ["banana", "cuda:99", "cpu:x"]
# Files of the example's folder ({tmp}) that a command may be pointed at; {ckpt} / {optckpt}: real checkpoints.
BAD_CHECKPOINT = ["{tmp}/missing.pt", "{tmp}/folder", "{tmp}/garbage.pt", "{tmp}/empty.pt", "{tmp}/truncated.pt"]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_no_drawing():
    """Speed, not inputs: one torch thread (on a loaded 2-core machine two threads wait on each other in every
    tiny kernel, 3x slower) and pictures stubbed (drawing one with matplotlib costs ~0.7 s; it is tested elsewhere)
    by a file of the PNG signature, written atomically where the picture would be."""
    import fewshot_l2l.cli.evaluate_optimizer as evaluate_optimizer_cli
    import fewshot_l2l.cli.plot_gates as plot_gates_cli
    import fewshot_l2l.training as training
    from fewshot_l2l.files import atomic_write

    def stub(*args, **kwargs):
        path = args[1] if len(args) > 1 else kwargs["path"]
        atomic_write(path, lambda tmp: tmp.write_bytes(PNG_SIGNATURE))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "plot_training_curves", stub)
        patch.setattr(plot_gates_cli, "plot_gate_statistics", stub)
        patch.setattr(evaluate_optimizer_cli, "plot_curves", stub)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried():
    """After this module: how many inputs each property tried (shown with ``pytest -s``)."""
    yield
    print(f"\nfuzzed inputs tried: {sum(TRIED.values())}: "
          + ", ".join(f"{name} {kind} {n}" for (name, kind), n in sorted(TRIED.items())))


def v(valid: list[str | None], invalid: list[str]) -> tuple[list[str | None], list[str]]:
    """The values of one flag: ``valid`` (``None``: a flag without value) and ``invalid`` ones."""
    return valid, invalid


@st.composite
def command_lines(draw, spec: dict, max_flags: int = 7) -> dict[str, tuple[str | None, bool]]:
    """``{flag: (value, valid)}``: some flags of ``spec`` with valid values, zero to two of them invalid."""
    flags = sorted(spec)
    chosen = set(draw(st.lists(st.sampled_from(flags), unique=True, max_size=max_flags)))
    n_bad = draw(st.sampled_from([0, 0, 1, 1, 2]))
    bad = set(draw(st.lists(st.sampled_from([f for f in flags if spec[f][1]]), unique=True, min_size=n_bad, max_size=n_bad)))
    values = {}
    for flag in sorted(chosen | bad):
        valid, invalid = spec[flag]
        if flag in bad:
            values[flag] = (draw(st.sampled_from(invalid)), False)
        elif valid:
            values[flag] = (draw(st.sampled_from(valid)), True)
    return values


def argv_of(values: dict[str, str | None], names: dict[str, str]) -> list[str]:
    """The command line of ``values`` (``{flag: value}``), placeholders replaced by ``names``; positionals first."""
    def fill(text: str) -> list[str]:
        return [word.format(**names) for word in text.split(" ")] if text else [""]
    argv = []
    for flag, value in sorted(values.items(), key=lambda item: item[0].startswith("-")):
        if not flag.startswith("-"):
            argv += fill(value)
        elif value is None:
            argv.append(flag)
        else:
            argv += [flag, *fill(value)]
    return argv


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so that no command can report it as its own error."""


@contextmanager
def time_limit(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def finite_numbers(value) -> bool:
    """Whether every number in a JSON value is finite."""
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_numbers(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fewshot_checkpoint, optimizer_checkpoint):
    """What every example's folder starts with, and the paths the placeholders stand for."""
    base = tmp_path_factory.mktemp("fuzz")
    zip_bytes = make_omniglot_zip(base / "bg.zip", size=8).read_bytes()
    truncated = fewshot_checkpoint.read_bytes()[: fewshot_checkpoint.stat().st_size // 2]
    contents = {"bg.zip": zip_bytes, "garbage.pt": b"not a checkpoint", "empty.pt": b"", "truncated.pt": truncated,
                "a_file": b"a file, not a folder"}
    return base, contents, {"ckpt": str(fewshot_checkpoint), "optckpt": str(optimizer_checkpoint)}


@contextmanager
def example_folder(inputs):
    base, contents, names = inputs
    folder = Path(tempfile.mkdtemp(dir=base))
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    (folder / "folder").mkdir()
    try:
        yield folder, {**names, "tmp": str(folder), "zip": str(folder / "bg.zip")}
    finally:
        shutil.rmtree(folder)


def fuzz_command(module: str, base: dict, values: dict, constraint, check_output, inputs) -> None:
    """Run ``module`` with ``base`` overridden by the drawn ``values`` and check the outcome (module docstring)."""
    effective = {**base, **{flag: value for flag, (value, _) in values.items()}}
    expect_ok = all(ok for _, ok in values.values()) and constraint(effective)
    with example_folder(inputs) as (folder, names):
        argv = argv_of(effective, names)
        before = files_under(folder)
        with time_limit(SECONDS_PER_RUN):
            outcome = run_cli(module, *argv)
        TRIED[module, "valid" if expect_ok else "invalid"] += 1
        assert outcome.escaped is None, f"{module} {argv}: traceback {outcome.escaped!r}"
        assert "Traceback" not in outcome.err, argv
        if expect_ok:
            assert outcome.status == 0, f"{module} {argv}: {outcome.err[-2000:]}"
            assert not [p for p in folder.rglob("*.tmp")], argv
            check_output(outcome, folder, effective, names)
        else:
            assert outcome.status in (1, 2), f"{module} {argv} ran through: {outcome.out[-500:]}"
            assert len(outcome.error_lines) == 1 and outcome.err.rstrip().splitlines()[-1].startswith(f"{PROG}: error: "), \
                f"{module} {argv}: {outcome.err[-2000:]}"
            assert files_under(folder) == before, f"{module} {argv} changed files: {sorted(files_under(folder))}"


def last_json(outcome) -> dict:
    result = json.loads(outcome.out.strip().splitlines()[-1])
    assert finite_numbers(result), result
    return result


def always(effective) -> bool:
    return True


# --- fewshot-train ---------------------------------------------------------------------------------------------

TRAIN_BASE = {"--n-way": "3", "--k-shot": "1", "--n-query": "1", "--inner-steps": "1", "--meta-batch": "1",
              "--episodes": "1", "--hidden-channels": "2", "--hidden-size": "2", "--val-every": "1",
              "--val-episodes": "1", "--device": "cpu", "--out": "{tmp}/run"}
TRAIN = {
    "--n-way": v(["2", "3"], ["1", *BAD_INT]),
    "--k-shot": v(["1", "2"], BAD_INT),
    "--n-query": v(["1", "2"], BAD_INT),
    "--inner-steps": v(["1", "2"], BAD_INT),
    "--inner-batch-size": v(["1", "5"], BAD_INT),
    "--meta-batch": v(["1", "2"], BAD_INT),
    "--episodes": v(["1", "3"], BAD_INT),
    "--max-minutes": v(["0.5", "30"], BAD_FLOAT),
    "--lr": v(["0.001", "0.1"], BAD_FLOAT),
    "--grad-clip": v(["0.25", "5"], BAD_FLOAT),
    "--hidden-size": v(["1", "3"], BAD_INT),
    "--hidden-channels": v(["1", "3"], BAD_INT),
    "--val-every": v(["1", "3"], BAD_INT),
    "--val-episodes": v(["1", "2"], BAD_INT),
    "--seed": v(["0", "4294967295"], BAD_SEED),
    "--rotate": v(["none", "train+val", "all"], ["sideways", "", "val"]),
    "--query-bn": v(["support"], ["running"]),
    "--dataset": v(["glyphs"], ["omniglot", "imagenet"]),
    "--data": v([], ["{tmp}/missing.h5", "{tmp}/folder", "{tmp}/garbage.pt"]),
    "--device": v(["cpu:0"], BAD_DEVICE),
    "--out": v(["{tmp}/new/deeper/run"], ["{tmp}/a_file", "{tmp}/a_file/run"]),
    "--second-order": v([None], []),
    "--resume": v([None], []),
}


def check_train(outcome, folder, effective, names):
    summary = last_json(outcome)
    assert 0 <= summary["best_val_acc"] <= 1
    run = Path(effective["--out"].format(**names))
    assert {"init.pt", "last.pt", "best.pt", "metrics.csv", "curves.png"} <= {p.name for p in run.iterdir()}


@settings(max_examples=150, **FUZZ)
@given(values=command_lines(TRAIN))
def test_fuzz_train(values, inputs, tiny_glyph_dataset):
    fuzz_command("train", TRAIN_BASE, values, always, check_train, inputs)


# --- fewshot-evaluate ------------------------------------------------------------------------------------------

EVALUATE_BASE = {"--checkpoint": "{ckpt}", "--episodes": "2", "--device": "cpu", "--json": None}
EVALUATE = {
    "--checkpoint": v(["{ckpt}"], [*BAD_CHECKPOINT, "{optckpt}"]),
    "--split": v(["train", "val"], ["dev"]),
    "--episodes": v(["1", "3"], BAD_INT),
    "--batch-size": v(["1", "2", "100"], BAD_INT),
    "--k-shot": v(["1", "2"], BAD_INT),
    "--n-query": v(["1", "2"], BAD_INT),
    "--inner-steps": v(["1", "2"], BAD_INT),
    "--data": v([], ["{tmp}/missing.h5", "{tmp}/garbage.pt", "{tmp}/folder"]),
    "--seed": v(["0", "4294967295"], BAD_SEED),
    "--device": v(["cpu:0"], BAD_DEVICE),
}


def check_evaluate(outcome, folder, effective, names):
    result = last_json(outcome)
    assert 0 <= result["accuracy"] <= 1 and result["n_episodes"] == int(effective["--episodes"])


@settings(max_examples=150, **FUZZ)
@given(values=command_lines(EVALUATE))
def test_fuzz_evaluate(values, inputs, tiny_glyph_dataset):
    fuzz_command("evaluate", EVALUATE_BASE, values, always, check_evaluate, inputs)


# --- fewshot-compare ------------------------------------------------------------------------------------------
# Every valid line runs a real comparison (one method in a child process, on a tiny HDF5 file): few examples.

COMPARE_BASE = {"--data": "{h5}", "--k-shot": "1", "--n-way": "3", "--minutes": "0.002", "--episodes": "2",
                "--val-episodes": "1", "--methods": "protonet", "--device": "cpu", "--out": "{tmp}/C", "--json": None}
COMPARE = {
    "--k-shot": v(["1"], ["0", "-1", "1.5", "three"]),
    "--n-way": v(["2", "3"], ["1", "0", "three"]),
    "--minutes": v(["0.002"], BAD_FLOAT),
    "--episodes": v(["1", "2"], BAD_INT),
    "--val-episodes": v(["1"], BAD_INT),
    "--seed": v(["0", "7"], BAD_SEED),
    "--device": v(["cpu"], BAD_DEVICE),
    "--methods": v(["protonet"], ["reptile", ""]),
    "--set": v(["protonet.lr=0.01", "protonet.lr_schedule=constant"],
               ["protonet.lr=-1", "protonet.bogus=1", "protonet.lr", "reptile.lr=1", "maml.lr=1", "protonet.seed=3"]),
    "--out": v(["{tmp}/new/C"], []),
    "--force": v([None], []),
}


def check_compare(outcome, folder, effective, names):
    result = last_json(outcome)
    assert result["method"] == "protonet" and 0 <= result["accuracy"] <= 1 and result["test_episodes"] == 2


@settings(max_examples=12, **FUZZ)
@given(values=command_lines(COMPARE, max_flags=4))
def test_fuzz_compare(values, inputs, tiny_h5_file, capfd):
    base, contents, names = inputs
    fuzz_command("compare", COMPARE_BASE, values, always, check_compare, (base, contents, {**names, "h5": str(tiny_h5_file)}))
    assert "Traceback" not in capfd.readouterr().err  # the method's process too


@pytest.fixture(scope="module")
def tiny_h5_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare_h5")
    source = make_omniglot_zip(folder / "bg.zip", size=16, alphabets=8, characters=3, drawings=16)
    built = run_cli("prepare_data", "omniglot", "--source", source, "--out", folder / "tiny.h5", "--image-size", "16",
                    "--no-progress")
    assert built.status == 0, built.err
    return folder / "tiny.h5"


# --- fewshot-prepare-data --------------------------------------------------------------------------------------

PREPARE_BASE = {"dataset": "omniglot", "--source": "{zip}", "--out": "{tmp}/o.h5", "--no-progress": None}
PREPARE = {
    "dataset": v(["omniglot"], ["miniimagenet", "cifar"]),
    "--source": v(["{zip}"], ["{tmp}/missing.zip", "{tmp}/garbage.pt", "{tmp}/folder", "{tmp}/a_file"]),
    "--out": v(["{tmp}/new/o.h5", "{tmp}/a_file"], ["{tmp}/folder", "{tmp}/a_file/o.h5", "{zip}", ""]),
    "--force": v([None], []),
    "--trust-pickle": v([None], []),
    "--image-size": v(["8", "16", "105"], ["7", "106", *BAD_INT]),
    "--seed": v(["0", "3"], BAD_SEED),
}


def prepare_constraint(effective) -> bool:
    return effective["--out"] != "{tmp}/a_file" or "--force" in effective  # an existing --out needs --force


def check_prepare(outcome, folder, effective, names):
    out = Path(effective["--out"].format(**names))
    assert last_json(outcome) == {"out": str(out)}
    splits = HDF5Splits(out).load(verify=True)
    size = int(effective.get("--image-size", 28))
    assert all(split.image_shape == (1, size, size) for split in splits.values())


@settings(max_examples=120, **FUZZ)
@given(values=command_lines(PREPARE))
def test_fuzz_prepare_data(values, inputs):
    fuzz_command("prepare_data", PREPARE_BASE, values, prepare_constraint, check_prepare, inputs)


# --- fewshot-train-optimizer -----------------------------------------------------------------------------------

TRAIN_OPTIMIZER_BASE = {"--problem": "quadratic", "--hidden-size": "2", "--horizon": "2", "--unroll": "1",
                        "--meta-batch": "2", "--iterations": "1", "--val-problems": "2", "--n-test": "0",
                        "--device": "cpu", "--out": "{tmp}/run"}
TRAIN_OPTIMIZER = {
    "--rule": v(["andrychowicz", "meta-lstm"], ["adam"]),
    "--problem": v(["quadratic"], ["mnist", ""]),
    "--hidden-size": v(["1", "2"], BAD_INT),
    "--output-scale": v(["0.1", "1"], BAD_FLOAT),
    "--horizon": v(["2", "4"], BAD_INT),
    "--unroll": v(["1", "2", "3"], BAD_INT),
    "--meta-batch": v(["1", "3"], BAD_INT),
    "--iterations": v(["1", "2"], BAD_INT),
    "--max-minutes": v(["0.5"], BAD_FLOAT),
    "--lr": v(["0.001", "0.1"], BAD_FLOAT),
    "--step-weights": v(["0", "3"], ["-1", "nan", "inf", "three", ""]),
    "--loss-scale-range": v(["1", "4"], ["0.5", *BAD_FLOAT]),
    "--grad-clip": v(["1"], BAD_FLOAT),
    "--val-every": v(["1", "2"], BAD_INT),
    "--val-problems": v(["1", "2"], BAD_INT),
    "--n-test": v(["0", "2"], ["-1", *BAD_INT[1:]]),
    "--seed": v(["0", "4294967295"], BAD_SEED),
    "--init-from": v(["{optckpt}"], [*BAD_CHECKPOINT, "{ckpt}"]),
    "--device": v(["cpu:0"], BAD_DEVICE),
    "--out": v(["{tmp}/new/run"], ["{tmp}/a_file", "{tmp}/a_file/run"]),
}


def train_optimizer_constraint(effective) -> bool:
    if int(effective["--horizon"]) % int(effective["--unroll"]):
        return False
    if "--init-from" in effective:  # the rule of {optckpt}: andrychowicz, hidden size 2, output scale 0.1
        return (effective.get("--rule", "andrychowicz") == "andrychowicz" and effective["--hidden-size"] == "2"
                and effective.get("--output-scale", "0.1") == "0.1")
    return True


def check_train_optimizer(outcome, folder, effective, names):
    summary = last_json(outcome)
    assert Path(summary["best"]).is_file() and ("evaluation" in summary) == (effective["--n-test"] != "0")


@settings(max_examples=150, **FUZZ)
@given(values=command_lines(TRAIN_OPTIMIZER))
def test_fuzz_train_optimizer(values, inputs):
    fuzz_command("train_optimizer", TRAIN_OPTIMIZER_BASE, values, train_optimizer_constraint, check_train_optimizer, inputs)


# --- fewshot-evaluate-optimizer --------------------------------------------------------------------------------

EVALUATE_OPTIMIZER_BASE = {"--checkpoint": "{optckpt}", "--n-test": "1", "--n-tune": "1", "--lr-grid": "0.1",
                           "--plot": "{tmp}/p.png", "--device": "cpu", "--json": None}
EVALUATE_OPTIMIZER = {
    "--checkpoint": v(["{optckpt}"], [*BAD_CHECKPOINT, "{ckpt}"]),
    "--horizon": v(["1", "3"], BAD_INT),
    "--n-test": v(["1", "2"], BAD_INT),
    "--n-tune": v(["1", "2"], BAD_INT),
    "--lr-grid": v(["0.01 0.1", "1"], ["0", "nan", "-1 0.1", "0.1 inf", "fast"]),
    "--baselines": v(["sgd", "adam rmsprop"], ["lbfgs", "sgd lbfgs"]),
    "--plot": v(["{tmp}/new/p.png"], ["{tmp}/folder", "{tmp}/a_file/p.png", ""]),
    "--seed": v(["0", "4294967295"], BAD_SEED),
    "--device": v(["cpu:0"], BAD_DEVICE),
}


def check_evaluate_optimizer(outcome, folder, effective, names):
    summary = last_json(outcome)
    assert Path(summary["plot"]).read_bytes()[:8] == PNG_SIGNATURE
    assert summary["horizon"] == int(effective.get("--horizon", 2))


@settings(max_examples=100, **FUZZ)
@given(values=command_lines(EVALUATE_OPTIMIZER))
def test_fuzz_evaluate_optimizer(values, inputs):
    fuzz_command("evaluate_optimizer", EVALUATE_OPTIMIZER_BASE, values, always, check_evaluate_optimizer, inputs)


# --- fewshot-plot-gates ----------------------------------------------------------------------------------------

PLOT_GATES_BASE = {"--checkpoint": "{ckpt}", "--episodes": "1", "--out": "{tmp}/g.png", "--device": "cpu"}
PLOT_GATES = {
    "--checkpoint": v(["{ckpt}"], [*BAD_CHECKPOINT, "{optckpt}"]),
    "--split": v(["train", "val"], ["dev"]),
    "--episodes": v(["1", "2"], BAD_INT),
    "--batch-size": v(["1", "3"], BAD_INT),
    "--data": v([], ["{tmp}/missing.h5", "{tmp}/garbage.pt"]),
    "--seed": v(["0", "4294967295"], BAD_SEED),
    "--out": v(["{tmp}/new/g.png"], ["{tmp}/folder", "{tmp}/a_file/g.png", ""]),
    "--device": v(["cpu:0"], BAD_DEVICE),
}


def check_plot_gates(outcome, folder, effective, names):
    result = last_json(outcome)
    assert Path(result["out"]).read_bytes()[:8] == PNG_SIGNATURE
    assert result["n_episodes"] == int(effective["--episodes"])


@settings(max_examples=80, **FUZZ)
@given(values=command_lines(PLOT_GATES))
def test_fuzz_plot_gates(values, inputs, tiny_glyph_dataset):
    fuzz_command("plot_gates", PLOT_GATES_BASE, values, always, check_plot_gates, inputs)


# --- constructors ----------------------------------------------------------------------------------------------

JUNK = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.just([2]),
                 st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30]))


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@st.composite
def arguments(draw, valid: dict, invalid: dict) -> dict:
    """Keyword arguments drawn from ``valid`` strategies, zero to two of them from ``invalid`` ones instead."""
    n_bad = draw(st.sampled_from([0, 0, 1, 1, 2]))
    bad = set(draw(st.lists(st.sampled_from(sorted(valid)), unique=True, min_size=n_bad, max_size=n_bad)))
    return {name: draw(invalid[name] if name in bad else valid[name]) for name in sorted(valid)}


SAMPLER_VALID = {"n_way": st.integers(2, 9), "k_shot": st.integers(1, 6), "n_query": st.integers(1, 6),
                 "seed": st.integers(-(2**63), 2**64 - 1)}
SAMPLER_INVALID = {"n_way": st.one_of(st.integers(-2, 1), JUNK), "k_shot": st.one_of(st.integers(-2, 0), JUNK),
                   "n_query": st.one_of(st.integers(-2, 0), JUNK),
                   "seed": st.one_of(st.sampled_from([2**64, -(2**63) - 1]), JUNK)}


@settings(max_examples=300, **FUZZ)
@given(kwargs=arguments(SAMPLER_VALID, SAMPLER_INVALID))
def test_fuzz_episode_sampler(kwargs):
    split = tiny_glyphs()["val"]  # 8 classes of 6 images
    n_way, k_shot, n_query, seed = kwargs["n_way"], kwargs["k_shot"], kwargs["n_query"], kwargs["seed"]
    valid = (all(is_int(x) for x in kwargs.values()) and 2 <= n_way <= split.n_classes
             and k_shot >= 1 and n_query >= 1 and k_shot + n_query <= 6 and -(2**63) <= seed <= 2**64 - 1)
    TRIED["EpisodeSampler", "valid" if valid else "invalid"] += 1
    if not valid:
        with pytest.raises((ValueError, TypeError), match="EpisodeSampler"):
            EpisodeSampler(split, n_way, k_shot, n_query, seed=seed)
        return
    episode = EpisodeSampler(split, n_way, k_shot, n_query, seed=seed).sample(2)
    assert episode.support_x.shape == (2, n_way * k_shot, 1, 16, 16)
    assert episode.query_y.shape == (2, n_way * n_query)
    assert sorted(episode.support_y[0].tolist()) == sorted(list(range(n_way)) * k_shot)


LEARNER_VALID = {"in_channels": st.integers(1, 3), "image_size": st.integers(1, 40), "n_way": st.integers(1, 6),
                 "hidden_channels": st.integers(1, 4), "n_blocks": st.integers(1, 5)}
LEARNER_INVALID = {name: st.one_of(st.integers(-1, 0), JUNK) for name in LEARNER_VALID}


@settings(max_examples=300, **FUZZ)
@given(kwargs=arguments(LEARNER_VALID, LEARNER_INVALID))
def test_fuzz_learner(kwargs):
    in_channels, image_size, n_way, hidden_channels, n_blocks = (kwargs[name] for name in LEARNER_VALID)
    sized = all(is_int(x) and x >= 1 for x in kwargs.values()) and image_size >> n_blocks >= 1
    side = image_size >> n_blocks if sized else 0
    n_params = (sum(hidden_channels * c * 9 + 2 * hidden_channels for c in [in_channels] + [hidden_channels] * (n_blocks - 1))
                + n_way * hidden_channels * side * side + n_way) if sized else 0
    valid = sized and n_params <= 2**63 - 1
    TRIED["ConvLearner", "valid" if valid else "invalid"] += 1
    config = LearnerConfig(in_channels, image_size, n_way, hidden_channels, n_blocks)
    if not valid:
        with pytest.raises(ValueError, match="ConvLearner"):
            ConvLearner(config)
        return
    learner = ConvLearner(config)
    assert learner.n_params == n_params
    if n_params <= 10**5:  # small enough to run: finite logits of the right shape
        theta = learner.init_params(torch.Generator().manual_seed(0))
        logits = learner.logits(theta, torch.rand(3, in_channels, image_size, image_size))
        assert logits.shape == (3, n_way) and bool(torch.isfinite(logits).all())


META_VALID = {"init_params": st.integers(1, 20).map(lambda n: torch.linspace(-1, 1, n)),
              "hidden_size": st.integers(1, 6), "p": st.one_of(st.floats(0.1, 20), st.integers(1, 12))}
META_INVALID = {
    "init_params": st.sampled_from([torch.zeros(0), torch.zeros(2, 3), torch.arange(4), torch.tensor([1.0, float("nan")]),
                                    torch.tensor([float("inf")]), torch.tensor(1.0), [0.1, 0.2], np.zeros(3, np.float32)]),
    "hidden_size": st.one_of(st.integers(-2, 0), JUNK),
    "p": st.one_of(st.sampled_from([0, -1, 0.0, -2.5, float("nan"), float("inf"), float("-inf"), True]), st.none(),
                   st.text(max_size=2)),
}


def valid_init(params) -> bool:
    return (isinstance(params, torch.Tensor) and params.dim() == 1 and params.numel() > 0
            and params.is_floating_point() and bool(torch.isfinite(params).all()))


@settings(max_examples=200, **FUZZ)
@given(kwargs=arguments(META_VALID, META_INVALID))
def test_fuzz_meta_learner(kwargs):
    init_params, hidden_size, p = kwargs["init_params"], kwargs["hidden_size"], kwargs["p"]
    valid = (valid_init(init_params) and is_int(hidden_size) and hidden_size >= 1
             and 4 * hidden_size * (hidden_size + 4) <= 2**63 - 1
             and isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p > 0)
    TRIED["MetaLearner", "valid" if valid else "invalid"] += 1
    if not valid:
        with pytest.raises((ValueError, TypeError), match="MetaLearner"):
            MetaLearner(init_params, hidden_size, p)
        return
    meta_learner = MetaLearner(init_params, hidden_size, p)
    theta = meta_learner.initial_theta(2)
    with torch.no_grad():
        theta_next, _ = meta_learner(theta, torch.randn_like(theta), torch.rand(2), meta_learner.initial_state(theta))
    assert theta_next.shape == theta.shape and bool(torch.isfinite(theta_next).all())
