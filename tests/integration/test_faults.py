"""Fault injection on real training processes (tests/integration/fault_runner.py): signals, SIGKILL at the worst
moments, non-finite meta-losses, a second process on the same run folder. Each case checks that no checkpoint
is lost or half-written, none holds a NaN, and that a resumed run is bit-identical to an uninterrupted one."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewshot_l2l.runs.process import RunLockedError
from fewshot_l2l.checkpoints import load_checkpoint
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.training import meta_train
from fewshot_l2l.optim.rule_training import load_rule_checkpoint
from fewshot_l2l.finite import nonfinite_tensors

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("fault_runner.py")
# 12 meta-updates, validations after updates 4, 8 and 12.
TRAIN = ["--n-way", "3", "--k-shot", "1", "--n-query", "2", "--inner-steps", "2", "--meta-batch", "2", "--episodes", "24",
         "--hidden-channels", "4", "--hidden-size", "4", "--val-every", "8", "--val-episodes", "4", "--device", "cpu"]
# 6 iterations of 2 meta-updates (unrolls), validations after iterations 4 and 6.
OPTIMIZER = ["--hidden-size", "4", "--horizon", "10", "--unroll", "5", "--meta-batch", "8", "--iterations", "6",
             "--val-every", "4", "--val-problems", "8", "--n-test", "0", "--device", "cpu"]
ARGS = {"train": TRAIN, "train_optimizer": OPTIMIZER}
MODEL = {"train": "meta_learner", "train_optimizer": "rule"}


def run(command, out, *extra, fault=None, background=False):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", FAULT=json.dumps(fault or {}))
    argv = [sys.executable, str(RUNNER), command, *ARGS[command], "--out", str(out), *extra]
    if background:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs of both loops, the reference of every resumed one."""
    runs = {}
    for command in ARGS:
        out = tmp_path_factory.mktemp("straight") / command
        result = run(command, out)
        assert result.returncode == 0, result.stderr
        runs[command] = out
    return runs


def assert_equal(a, b, where=""):
    """Nested dicts / lists of tensors and numbers, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def without_time(value):
    if isinstance(value, dict):
        return {k: without_time(v) for k, v in value.items() if k not in ("elapsed_s", "validation_s", "train_s")}
    return value


def metrics_rows(out):
    with open(out / "metrics.csv", newline="") as file:
        return [without_time(row) for row in csv.DictReader(file)]


def assert_same_run(command, a, b):
    """``b`` ended exactly as ``a``: weights, Adam state, progress (RNG states included), best.pt, metrics rows."""
    for name in ("last.pt", "best.pt"):
        x, y = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        for key in (MODEL[command], "optimizer", "run"):
            assert_equal(x[key], y[key], f"{name}:{key}")
        assert_equal(without_time(x["progress"]), without_time(y["progress"]), f"{name}:progress")
    assert metrics_rows(a) == metrics_rows(b)
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())  # no temp file, no .lock


def step_of(command, out):
    progress = torch.load(out / "last.pt", weights_only=True)["progress"]
    return progress["state"]["update"] if command == "train" else progress["iteration"]


@pytest.mark.parametrize("command, after_update, stopped_at", [("train", 5, 5), ("train_optimizer", 5, 3)])
def test_sigterm_mid_interval_saves_and_the_resumed_run_is_bit_identical(command, after_update, stopped_at, straight,
                                                                        tmp_path):
    out = tmp_path / "run"
    stopped = run(command, out, fault={"signal": signal.SIGTERM, "after_update": after_update})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    what = "update" if command == "train" else "iteration"
    assert f"stopped by SIGTERM after {what} {stopped_at}: saved {out / 'last.pt'}" in stopped.stderr
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
    assert step_of(command, out) == stopped_at  # saved between validations (4 and 8 / 4 and 6)
    assert not (out / ".lock").exists()
    resumed = run(command, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(command, straight[command], out)


def test_sigint_from_outside_exits_130_without_a_traceback_and_resumes(tmp_path):
    out, ready = tmp_path / "run", tmp_path / "ready"
    process = run("train", out, "--episodes", "4000", fault={"ready_file": str(ready)}, background=True)
    deadline = time.time() + 120
    while not ready.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by SIGINT after update" in stderr and "Traceback" not in stderr
    update = step_of("train", out)
    assert 1 <= update < 2000
    checkpoint = load_checkpoint(out / "last.pt").checkpoint  # finite, loadable
    resumed = run("train", out, "--resume", "--episodes", str(2 * update + 2))
    assert resumed.returncode == 0, resumed.stderr
    assert step_of("train", out) == update + 1


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    stopped = run("train", out, fault={"signal": signal.SIGTERM, "after_update": 5, "times": 2})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "second SIGTERM: stopping at once, without saving" in stopped.stderr
    assert step_of("train", out) == 4  # the validation-time checkpoint, untouched
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "init.pt", "last.pt", "metrics.csv"]


@pytest.mark.parametrize("command", ["train", "train_optimizer"])
def test_sigkill_between_the_metrics_row_and_the_checkpoint(command, straight, tmp_path):
    out = tmp_path / "run"
    killed = run(command, out, fault={"kill_before_save": 2})
    assert killed.returncode == -signal.SIGKILL
    assert len(metrics_rows(out)) == 2 and step_of(command, out) == 4  # the second row has no checkpoint
    assert (out / ".lock").exists()  # left by the dead process: taken over on resume
    resumed = run(command, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "took over the lock of a run that ended without releasing it" in resumed.stderr
    assert_same_run(command, straight[command], out)


@pytest.mark.parametrize("command", ["train", "train_optimizer"])
def test_sigkill_while_writing_last_pt(command, straight, tmp_path):
    out = tmp_path / "run"
    killed = run(command, out, fault={"kill_writing": "last.pt", "at_save": 2})
    assert killed.returncode == -signal.SIGKILL
    temps = list(out.glob(".last.pt.*.tmp"))
    assert len(temps) == 1 and step_of(command, out) == 4  # the old last.pt is whole
    resumed = run(command, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"removed 1 temporary file(s) of killed writers from {out}: {temps[0].name}" in resumed.stderr
    assert_same_run(command, straight[command], out)


def test_nonfinite_meta_losses_are_skipped_and_counted(tmp_path):
    out = tmp_path / "run"
    result = run("train", out, fault={"nonfinite_from_update": 3, "nonfinite_until_update": 4})
    assert result.returncode == 0, result.stderr
    rows = metrics_rows(out)
    assert [row["skipped_updates"] for row in rows] == ["2", "0", "0"]
    assert all(row["train_loss"] not in ("nan", "inf") for row in rows)
    assert "2 meta-updates skipped (non-finite)" in result.stdout  # the validation line (tqdm.write)
    for name in ("last.pt", "best.pt"):
        assert nonfinite_tensors(torch.load(out / name, weights_only=True)) == []


# The learned-optimizer loop abandons the rest of a batch's horizon after a skipped unroll: one skip per iteration.
@pytest.mark.parametrize("command, first_bad, stops_after, longer", [
    ("train", 6, "update 8", []), ("train_optimizer", 9, "iteration 7", ["--iterations", "12"])])
def test_nonfinite_in_a_row_stop_the_run_keeping_the_last_good_checkpoint(command, first_bad, stops_after, longer, tmp_path):
    out = tmp_path / "run"
    result = run(command, out, "--max-nonfinite", "3", *longer, fault={"nonfinite_from_update": first_bad})
    assert result.returncode != 0
    assert f"3 meta-updates in a row, up to {stops_after}, had a non-finite meta-loss" in result.stderr
    assert step_of(command, out) == 4  # the validation before the failures: intact and finite
    assert nonfinite_tensors(torch.load(out / "last.pt", weights_only=True)) == []
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))


def test_a_second_run_on_a_live_run_folder_is_refused(tiny_splits, monkeypatch, tmp_path):
    import fewshot_l2l.training as training

    monkeypatch.setattr(training, "load_splits", lambda dataset, data=None, seed=0, rotate="auto": tiny_splits)
    out, ready = tmp_path / "run", tmp_path / "ready"
    # No validation (so no last.pt) for a long time: the window in which a second run used to start too.
    process = run("train", out, "--episodes", "4000", "--val-every", "4000", fault={"ready_file": str(ready)},
                  background=True)
    try:
        deadline = time.time() + 120
        while not ready.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        config = MetaLSTMConfig(n_way=3, k_shot=1, n_query=2, inner_steps=2, meta_batch=2, episodes=8, hidden_size=4,
                             hidden_channels=4, val_every=4, val_episodes=4, device="cpu", out=str(out))
        for resume in (False, True):  # a new run, and a second --resume, of a folder whose first run has no last.pt yet
            with pytest.raises(RunLockedError, match=f"{out} is in use by another run folder \\(pid {process.pid} on "):
                meta_train(MetaLSTMConfig(**{**config.__dict__, "resume": resume}), progress=False)
        assert not (out / "last.pt").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    update = step_of("train", out)
    summary = meta_train(MetaLSTMConfig(**{**config.__dict__, "resume": True, "episodes": 2 * update + 4}), progress=False)
    assert summary["updates"] == update + 2  # the folder is free again, and the run continues


def test_evaluating_or_resuming_a_nonfinite_checkpoint_fails_clearly(straight, tmp_path):
    checkpoint = torch.load(straight["train"] / "last.pt", weights_only=True)
    checkpoint["meta_learner"]["theta_init"][0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"nan.pt holds NaN or infinite values \(meta_learner.theta_init\)"):
        load_checkpoint(tmp_path / "nan.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "fewshot_l2l.cli.evaluate", "--checkpoint", str(tmp_path / "nan.pt"),
                             "--episodes", "2", "--device", "cpu"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "holds NaN or infinite values" in result.stderr
    rule = torch.load(straight["train_optimizer"] / "best.pt", weights_only=True)
    next(iter(rule["rule"].values())).view(-1)[0] = float("inf")
    torch.save(rule, tmp_path / "inf.pt")
    with pytest.raises(ValueError, match="inf.pt holds NaN or infinite values"):
        load_rule_checkpoint(tmp_path / "inf.pt")
