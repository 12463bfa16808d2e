"""The run folder of every training run (fewshot_l2l.runs.folder), and the loop's stopwatch."""

import csv
from dataclasses import dataclass

import pytest
import torch

from fewshot_l2l.runs.folder import RunFolder, check_resume_config
from fewshot_l2l.runs.loop import Stopwatch
from fewshot_l2l.settings import Int, Settings, Text, setting

COLUMNS = ("update", "episodes", "loss", "elapsed_s")


@dataclass
class Budgeted(Settings):
    """A configuration with one setting that changes the experiment (seed) and two that may change on resume."""

    seed: int = setting(0, Int(0), "seed")
    budget: int = setting(1, Int(1), "budget", resumable=True)
    out: str = setting("run", Text(), "folder", resumable=True)


def test_run_folder_writes_the_log_like_csv_writer_and_refuses_to_overwrite(tmp_path):
    run = RunFolder(tmp_path / "nested" / "run", COLUMNS, resume=False)
    assert not run.resuming
    run.start({"w": torch.zeros(2)})
    run.log(update=1, episodes=4, loss=0.123456789, elapsed_s=1.5)
    run.log(elapsed_s=3.0, loss=float("inf"), episodes=8, update=2)  # any order of keywords
    expected = tmp_path / "expected.csv"
    with open(expected, "w", newline="") as file:  # what the loops wrote before RunFolder existed
        csv.writer(file).writerows([COLUMNS, [1, 4, "0.123457", "1.5"], [2, 8, "inf", "3"]])
    assert run.metrics.read_bytes() == expected.read_bytes()
    assert run.read_metrics() == [{"update": 1.0, "episodes": 4.0, "loss": 0.123457, "elapsed_s": 1.5},
                                  {"update": 2.0, "episodes": 8.0, "loss": float("inf"), "elapsed_s": 3.0}]
    with pytest.raises(ValueError, match="expected the columns update, episodes, loss, elapsed_s"):
        run.log(update=3, episodes=12, loss=0.1)

    run.save({"step": 2}, improved=True, step=2)
    run.save({"step": 3}, improved=False, step=3)
    assert torch.load(run.last)["step"] == 3 and torch.load(run.best)["step"] == 2
    assert torch.load(run.last)["run"] == {"step": 3, "best_step": 2} and torch.load(run.best)["run"]["step"] == 2
    assert torch.equal(torch.load(run.init)["w"], torch.zeros(2))
    assert sorted(p.name for p in run.path.iterdir()) == [".lock", "best.pt", "init.pt", "last.pt", "metrics.csv"]
    run.close()
    assert sorted(p.name for p in run.path.iterdir()) == ["best.pt", "init.pt", "last.pt", "metrics.csv"]
    with pytest.raises(FileExistsError, match="last.pt exists: pass --resume"):
        RunFolder(run.path, COLUMNS, resume=False)
    with RunFolder(tmp_path / "fresh", COLUMNS, resume=True) as fresh:
        assert not fresh.resuming  # nothing to resume: a new run


def test_resume_checks_the_settings_and_drops_rows_logged_after_the_checkpoint(tmp_path):
    run = RunFolder(tmp_path, COLUMNS, resume=False)
    run.start({})
    for update in (1, 2):
        run.log(update=update, episodes=4 * update, loss=0.5, elapsed_s=1.0)
    run.save({}, improved=True, step=2)  # last.pt at update 2
    # Then the run was killed after logging update 3 but before its checkpoint, and (by hand here) mid-line.
    run.log(update=3, episodes=12, loss=0.5, elapsed_s=1.0)
    with open(run.metrics, "a") as file:
        file.write("4,16")
    run.close()
    resumed = RunFolder(tmp_path, COLUMNS, resume=True)
    assert resumed.resuming
    with pytest.raises(ValueError, match=r"--resume .*last.pt: .*\(seed: 0 -> 1\); only budget, out may change"):
        resumed.resume(Budgeted(seed=0, budget=1), Budgeted(seed=1, budget=2), step=2)
    resumed.resume(Budgeted(seed=0, budget=1), Budgeted(seed=0, budget=2), step=2)
    assert [row["update"] for row in resumed.read_metrics()] == [1.0, 2.0]
    resumed.log(update=3, episodes=12, loss=0.25, elapsed_s=2.0)
    assert [row["loss"] for row in resumed.read_metrics()] == [0.5, 0.5, 0.25]


def test_check_resume_config_names_every_changed_setting():
    check_resume_config({"a": 1, "b": 2}, {"a": 1, "b": 3}, {"b"}, "x/last.pt")
    with pytest.raises(ValueError, match=r"a: 1 -> 2, c: None -> 5"):
        check_resume_config({"a": 1}, {"a": 2, "c": 5}, set(), "x/last.pt")


def test_stopwatch_continues_from_the_saved_time():
    assert not Stopwatch(0.0).out_of_time()  # no budget: never out of time
    clock = Stopwatch(elapsed_s=90.0, max_minutes=1.0)
    assert clock.elapsed_s >= 90.0 and clock.out_of_time()
    assert not Stopwatch(elapsed_s=0.0, max_minutes=1.0).out_of_time()


# --- Run safety: the non-finite guard, the checkpoint writer, the folder lock, crash residue, signals.

import copy
import os
import signal
import socket
import subprocess
import sys

from fewshot_l2l.runs.process import FolderLock, RunInterrupted, RunLockedError, StopSignals
from fewshot_l2l.runs.folder import NonFiniteError
from fewshot_l2l.runs.loop import NonFiniteGuard
from fewshot_l2l.runs.loop import meta_update
from fewshot_l2l.finite import nonfinite_tensors
from fewshot_l2l.files import remove_stale_temps


def states_equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_meta_update_skips_a_nonfinite_loss_or_gradient_leaving_weights_and_adam_state_untouched():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    reference = copy.deepcopy(model)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.1)
    assert meta_update(model, optimizer, model(x).pow(2).mean(), None)
    reference(x).pow(2).mean().backward()
    reference_optimizer.step()  # no clip: the very same step as a plain backward + step
    assert states_equal(model.state_dict(), reference.state_dict())

    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    assert not meta_update(model, optimizer, model(x).sum() * float("nan"), 0.25)  # NaN meta-loss
    assert not meta_update(model, optimizer, model(x).sum() + float("inf"), None)  # infinite meta-loss
    hook = model.weight.register_hook(lambda grad: grad * float("inf"))  # finite loss, infinite gradient
    assert not meta_update(model, optimizer, model(x).pow(2).mean(), 0.25)
    assert not meta_update(model, optimizer, model(x).pow(2).mean(), None)
    hook.remove()
    assert states_equal(before, (model.state_dict(), optimizer.state_dict()))  # Adam's step count too
    assert all(p.grad is None for p in model.parameters())
    assert meta_update(model, optimizer, model(x).pow(2).mean(), 0.25)
    assert optimizer.state_dict()["state"][0]["step"] == 2


def test_nonfinite_guard_counts_skips_and_stops_after_too_many_in_a_row():
    guard = NonFiniteGuard(3)
    for stepped in (False, False, True, False, False):
        guard.record(stepped, "update 1", "hint")
    assert (guard.in_a_row, guard.take_interval(), guard.skipped) == (2, 4, 0)
    resumed = NonFiniteGuard(3, guard.state())  # through a checkpoint
    with pytest.raises(NonFiniteError, match=r"^3 meta-updates in a row, up to update 7, had a non-finite .* Lower it"):
        resumed.record(False, "update 7", "Lower it.")


def test_no_checkpoint_is_written_with_nonfinite_values(tmp_path):
    with RunFolder(tmp_path / "run", COLUMNS, resume=False) as run:
        with pytest.raises(NonFiniteError, match=r"refusing to write .*init.pt: w hold NaN"):
            run.start({"w": torch.tensor([0.0, float("nan")])})
        run.start({"w": torch.zeros(2)})
        run.save({"w": torch.ones(2)}, improved=True, step=1)
        bad = {"w": torch.ones(2), "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}}
        with pytest.raises(NonFiniteError, match=r"refusing to write .*last.pt: optimizer.state.0.exp_avg hold NaN"):
            run.save(bad, improved=True, step=2)
        assert torch.load(run.last)["run"]["step"] == torch.load(run.best)["run"]["step"] == 1
        assert sorted(p.name for p in run.path.iterdir()) == [".lock", "best.pt", "init.pt", "last.pt", "metrics.csv"]
    assert nonfinite_tensors({"a": [torch.zeros(1), (torch.tensor([1.0, float("-inf")]),)], "b": torch.arange(3)}) == ["a.1.0"]


def test_best_pt_is_written_before_last_pt(tmp_path, monkeypatch):
    import fewshot_l2l.runs.folder as runs

    order = []
    monkeypatch.setattr(runs, "atomic_torch_save", lambda obj, path: order.append(path.name))
    with RunFolder(tmp_path, COLUMNS, resume=False) as run:
        run.save({}, improved=True, step=1)
        run.save({}, improved=False, step=2)
    assert order == ["best.pt", "last.pt", "last.pt"]


def test_resume_repairs_or_reports_a_missing_or_older_best_pt(tmp_path, capsys):
    with RunFolder(tmp_path, COLUMNS, resume=False) as run:
        run.start({})
        run.save({"w": torch.zeros(1)}, improved=True, step=4)
        run.save({"w": torch.ones(1)}, improved=True, step=8)
    run.best.unlink()  # as a crash between the two writes of an older version left it
    last = torch.load(run.last)
    with RunFolder(tmp_path, COLUMNS, resume=True) as resumed:
        resumed.resume(Budgeted(), Budgeted(), step=8, saved_run=last["run"])
        assert torch.equal(torch.load(run.best)["w"], torch.ones(1))
    err = capsys.readouterr().err
    assert "best.pt was missing, though" in err and "records the best validation at step 8: repaired from last.pt" in err
    with RunFolder(tmp_path, COLUMNS, resume=True) as resumed:
        resumed.resume(Budgeted(), Budgeted(), step=8, saved_run=last["run"])
        resumed.save({"w": torch.full((1,), 2.0)}, improved=False, step=12)
    assert torch.load(run.last)["run"] == {"step": 12, "best_step": 8}
    run.best.unlink()
    with RunFolder(tmp_path, COLUMNS, resume=True) as resumed:
        resumed.resume(Budgeted(), Budgeted(), step=12, saved_run=torch.load(run.last)["run"])
    assert "best.pt is missing, though" in capsys.readouterr().err
    assert not run.best.exists()  # the best of step 8 is not last.pt's weights: nothing to repair it from


def test_resume_of_an_older_log_adds_the_new_columns(tmp_path):
    with RunFolder(tmp_path, COLUMNS[:-1], resume=False) as old:  # a log without elapsed_s
        old.start({})
        old.log(update=1, episodes=4, loss=0.5)
        old.log(update=2, episodes=8, loss=0.25)
        old.save({}, improved=True, step=1)
    with RunFolder(tmp_path, COLUMNS, resume=True) as run:
        run.resume(Budgeted(), Budgeted(), step=1)
        run.log(update=2, episodes=8, loss=0.2, elapsed_s=3.0)
        rows = run.read_metrics()
    assert [row["loss"] for row in rows] == [0.5, 0.2] and rows[0]["elapsed_s"] != rows[0]["elapsed_s"]  # NaN


HOLD_LOCK = """import sys
from fewshot_l2l.runs.folder import RunFolder
with RunFolder(sys.argv[1], ("a",), False):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_live_run_folder_is_locked_against_other_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for resume in (False, True):
            with pytest.raises(RunLockedError, match=rf"run is in use by another run folder \(pid {holder.pid} on "
                                                     rf"{socket.gethostname()}, since .*\): wait for it .*another --out"):
                RunFolder(tmp_path / "run", COLUMNS, resume=resume)
    finally:
        holder.communicate("", timeout=60)
    assert not (tmp_path / "run").exists()  # the holder's start created the folder and wrote nothing: removed
    with RunFolder(tmp_path / "run", COLUMNS, resume=False):
        pass


def test_a_stale_lock_file_is_taken_over_with_a_note(tmp_path, capsys):
    (tmp_path / ".lock").write_text("4194000 otherhost 2020-01-01T00:00:00\n")
    with RunFolder(tmp_path, COLUMNS, resume=False):
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    assert "took over the lock of a run that ended without releasing it (pid 4194000 on otherhost" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()
    lock = FolderLock(tmp_path / "x.lock")
    lock.release()
    lock.release()


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporary_files_of_dead_writers_are_removed_and_no_other(tmp_path, capsys):
    dead, names = dead_pid(), []
    for name in (f".last.pt.{dead}-0123abcd.tmp", f".metrics.csv.{dead}-89abcdef.tmp",  # a killed writer's
                 f".last.pt.{os.getpid()}-0123abcd.tmp",  # a live writer's: kept
                 f".notes.{dead}.tmp", "notes.txt"):  # not the writer's names: kept
        (tmp_path / name).write_bytes(b"x")
        names.append(name)
    assert [p.name for p in remove_stale_temps(tmp_path, "last.pt")] == [names[0]]
    with RunFolder(tmp_path, COLUMNS, resume=False):
        pass
    assert f"removed 1 temporary file(s) of killed writers from {tmp_path}: {names[1]}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_a_failed_start_removes_the_folder_it_created_and_nothing_else(tmp_path):
    with pytest.raises(KeyError):
        with RunFolder(tmp_path / "a" / "b", COLUMNS, resume=False) as run:
            run.start({"w": torch.zeros(1)})
            (run.path / "curves.png").write_bytes(b"png")
            raise KeyError("data")
    assert list(tmp_path.iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(KeyError):
        with RunFolder(mine, COLUMNS, resume=False) as run:
            run.start({})
            raise KeyError("data")
    assert sorted(p.name for p in mine.iterdir()) == ["init.pt", "metrics.csv", "notes.txt"]  # not ours to remove
    with pytest.raises(KeyError):
        with RunFolder(tmp_path / "new", COLUMNS, resume=False) as run:
            run.start({})
            (run.path / "theirs.txt").write_text("x")  # someone else's file: the folder stays
            raise KeyError("data")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["theirs.txt"]
    with pytest.raises(KeyError):
        with RunFolder(tmp_path / "kept", COLUMNS, resume=False) as run:
            run.start({})
            run.save({}, improved=True, step=1)
            raise KeyError("later")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["best.pt", "init.pt", "last.pt", "metrics.csv"]


def test_stop_signals_ask_once_stop_at_the_second_and_restore_the_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM
        with pytest.raises(RunInterrupted) as exit_info:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # the handler runs between bytecodes
                pass
        assert exit_info.value.code == 128 + signal.SIGINT and "second SIGINT" in str(exit_info.value)
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(KeyError):
        with StopSignals():
            raise KeyError
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_time_budget_progress_bar_counts_the_minutes_not_the_sentinel_steps(capsys):
    """Under --max-minutes the step budget is a sentinel (compare.py: 10**8 episodes): the bar shows the seconds."""
    from fewshot_l2l.runs.loop import ProgressBar, Schedule

    schedule = Schedule(unit="update", n_steps=10**8, val_every=10, max_minutes=2.0, max_nonfinite=1, hint="",
                        description="train")
    clock = Stopwatch(elapsed_s=30.0, max_minutes=2.0)
    bar = ProgressBar(schedule, done=7, clock=clock, disable=False)
    assert (bar.bar.total, bar.bar.n) == (120, pytest.approx(30, abs=0.5))
    clock.start -= 45  # 45 s later
    bar.step(8, {"loss": "1.0"})
    bar.close()
    assert bar.bar.n == pytest.approx(75, abs=0.5) and "75/120 s" in capsys.readouterr().err
    assert "update=8, loss=1.0" in str(bar.bar)
    untimed = ProgressBar(Schedule("update", 50, 10, None, 1, "", "train"), done=7, clock=Stopwatch(), disable=False)
    untimed.step(8, {})
    untimed.close()
    assert (untimed.bar.total, untimed.bar.n) == (50, 8) and "8/50" in capsys.readouterr().err


def test_the_budget_counts_training_time_and_validations_are_timed_apart(monkeypatch):
    import fewshot_l2l.runs.loop as loop

    now = [1000.0]
    monkeypatch.setattr(loop.time, "time", lambda: now[0])
    clock = Stopwatch(elapsed_s=50.0, max_minutes=1.0, validation_s=20.0)  # resumed: 30 s of training so far
    assert clock.training_s == 30.0 and not clock.out_of_time()
    with clock.validating():
        now[0] += 25  # a validation of 25 s: the whole time passes the budget, the training time does not
    assert (clock.validation_s, clock.elapsed_s, clock.training_s) == (45.0, 75.0, 30.0) and not clock.out_of_time()
    now[0] += 30  # 30 s more of training: 60 s in all
    assert clock.training_s == 60.0 and clock.out_of_time()


def test_validations_at_equal_shares_of_the_run(monkeypatch):
    from fewshot_l2l.runs.loop import Schedule

    schedule = Schedule("update", n_steps=8, val_every=10**9, max_minutes=None, max_nonfinite=1, hint="",
                        description="train", validations=3)
    # Shares passed after each of the 8 updates: floor(3 * update / 8).
    assert [schedule.shares_reached(update, Stopwatch()) for update in range(1, 9)] == [0, 0, 1, 1, 1, 2, 2, 3]
    timed = Schedule("update", n_steps=10**8, val_every=10**9, max_minutes=1.0, max_nonfinite=1, hint="",
                     description="train", validations=20)
    assert timed.shares_reached(5, Stopwatch(elapsed_s=31.0, max_minutes=1.0, validation_s=1.0)) == 10  # 30 s of 60
