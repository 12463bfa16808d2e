"""The run folder both training loops share (fewshot_l2l.runs)."""

import csv

import pytest
import torch

from fewshot_l2l.runs import RunFolder, Stopwatch, check_resume_config

COLUMNS = ("update", "episodes", "loss", "elapsed_s")


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

    run.save({"step": 2}, improved=True)
    run.save({"step": 3}, improved=False)
    assert torch.load(run.last)["step"] == 3 and torch.load(run.best)["step"] == 2
    assert torch.equal(torch.load(run.init)["w"], torch.zeros(2))
    assert sorted(p.name for p in run.path.iterdir()) == ["best.pt", "init.pt", "last.pt", "metrics.csv"]
    with pytest.raises(FileExistsError, match="last.pt exists: pass --resume"):
        RunFolder(run.path, COLUMNS, resume=False)
    assert not RunFolder(tmp_path / "fresh", COLUMNS, resume=True).resuming  # nothing to resume: a new run


def test_resume_checks_the_settings_and_drops_rows_logged_after_the_checkpoint(tmp_path):
    run = RunFolder(tmp_path, COLUMNS, resume=False)
    run.start({})
    for update in (1, 2):
        run.log(update=update, episodes=4 * update, loss=0.5, elapsed_s=1.0)
    run.save({}, improved=True)  # last.pt at update 2
    # Then the run was killed after logging update 3 but before its checkpoint, and (by hand here) mid-line.
    run.log(update=3, episodes=12, loss=0.5, elapsed_s=1.0)
    with open(run.metrics, "a") as file:
        file.write("4,16")
    resumed = RunFolder(tmp_path, COLUMNS, resume=True)
    assert resumed.resuming
    with pytest.raises(ValueError, match=r"--resume .*last.pt: .*\(seed: 0 -> 1\); only budget, out may change"):
        resumed.resume({"seed": 0, "budget": 1}, {"seed": 1, "budget": 2}, {"budget", "out"}, step=2)
    resumed.resume({"seed": 0, "budget": 1}, {"seed": 0, "budget": 2}, {"budget", "out"}, step=2)
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
