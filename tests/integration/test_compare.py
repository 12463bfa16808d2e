"""scripts/compare.py end to end on a tiny Omniglot-like HDF5 file (each method runs in a child process, which
loads it in no time): two methods, a tiny budget, the --json schema, the table, a rerun with --resume that
reuses the finished methods, and one without it that is refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import make_omniglot_zip, run_cli
from fewshot_l2l.compare import COMPARISON_FIELDS, ComparisonSpec, method_settings, shared_settings

TINY = ["--k-shot", "1", "--n-way", "3", "--minutes", "0.005", "--episodes", "4", "--val-episodes", "2",
        "--methods", "protonet", "finetune"]


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory):
    """16x16 noise 'characters', 3 per alphabet, 16 drawings each (enough for 1 + 15 per class); 3 classes in val."""
    pytest.importorskip("h5py")
    folder = tmp_path_factory.mktemp("tiny_h5")
    source = make_omniglot_zip(folder / "bg.zip", size=16, alphabets=8, characters=3, drawings=16)
    built = run_cli("prepare_data", "omniglot", "--source", source, "--out", folder / "tiny.h5", "--image-size", "16",
                    "--no-progress")
    assert built.status == 0, built.err
    return ["--data", str(folder / "tiny.h5")]


def test_compare_two_methods_json_then_resume_as_a_table(tmp_path, tiny_h5):
    out = tmp_path / "compare"
    first = run_cli("compare", *TINY, *tiny_h5, "--out", out, "--json")
    assert first.status == 0, first.err
    lines = [json.loads(line) for line in first.out.splitlines()]
    assert [line["method"] for line in lines] == ["protonet", "finetune"]
    for line in lines:
        assert {"method", "k_shot", "accuracy", "ci95", "train_seconds", "episodes", "accuracy_batch", "ci95_batch",
                "eval_seconds_per_episode", "peak_rss_mb"} <= set(line)
        assert line["k_shot"] == 1 and line["n_way"] == 3 and line["test_episodes"] == 4
        assert 0 <= line["accuracy"] <= 1 and 0 <= line["accuracy_batch"] <= 1 and line["episodes"] >= 1
        assert line["train_seconds"] > 0 and line["peak_rss_mb"] > 0
        assert (out / line["method"] / "best.pt").is_file() and (out / line["method"] / "result.json").is_file()
    stamps = {m: (out / m / "result.json").stat().st_mtime_ns for m in ("protonet", "finetune")}
    again = run_cli("compare", *TINY, *tiny_h5, "--out", out, "--resume")
    assert again.status == 0, again.err
    assert {m: (out / m / "result.json").stat().st_mtime_ns for m in stamps} == stamps  # not run again
    table = again.out.splitlines()
    assert table[2].startswith("| method | test acc., support BN") and table[4].startswith("| protonet | ")
    assert f"{100 * lines[0]['accuracy']:.2f}% ± {100 * lines[0]['ci95']:.2f}%" in table[4]
    assert "batches" in table[5]  # finetune counts pre-training mini-batches

    refused = run_cli("compare", *TINY, *tiny_h5, "--out", out)  # a finished run is never overwritten
    assert refused.status == 1 and "protonet failed" in refused.err and "--resume" in refused.err


def test_meta_lstm_settings_reach_its_run(tmp_path, tiny_h5):
    out = tmp_path / "compare"
    ran = run_cli("compare", *TINY[:-2], "meta-lstm", *tiny_h5, "--out", out, "--json", "--set", "meta-lstm.meta_batch=1",
                  "meta-lstm.inner_steps=3", "meta-lstm.lr_schedule=cosine", "meta-lstm.hidden_size=4")
    assert ran.status == 0, ran.err
    config = torch.load(out / "meta-lstm" / "last.pt", weights_only=False)["config"]
    assert (config["meta_batch"], config["inner_steps"], config["lr_schedule"], config["hidden_size"]) == (1, 3, "cosine", 4)
    assert config["max_minutes"] == 0.005 and config["n_way"] == 3 and config["seed"] == 0  # the shared settings
    result = json.loads(ran.out)
    assert result["settings"] == {"meta_batch": 1, "inner_steps": 3, "lr_schedule": "cosine", "hidden_size": 4}
    # A finished run is reused only with the settings it was trained with.
    other = run_cli("compare", *TINY[:-2], "meta-lstm", *tiny_h5, "--out", out, "--resume", "--set", "meta-lstm.meta_batch=2")
    assert other.status == 1 and "was trained with --set meta-lstm settings" in other.err and "not {'meta_batch': 2}" in other.err
    again = run_cli("compare", *TINY[:-2], "meta-lstm", *tiny_h5, "--out", out, "--resume", "--set", "meta-lstm.meta_batch=1",
                    "meta-lstm.inner_steps=3", "--set", "meta-lstm.lr_schedule=cosine",
                    "meta-lstm.hidden_size=4")  # repeated: the lists add up
    assert again.status == 0, again.err
    assert "meta-lstm: meta_batch=1 inner_steps=3 lr_schedule='cosine' hidden_size=4" in again.out


@pytest.mark.parametrize("assignment, message", [
    ("meta-lstm.meta_batch", "'meta_batch' is not NAME=VALUE"),
    ("meta-lstm.seed=3", "'seed' is not a setting of its own; choose from"),  # shared by every method
    ("meta-lstm.n_query=5", "'n_query' is not a setting of its own"),  # would change the test episodes
    ("meta-lstm.inner_steps=0", "MetaLSTMConfig: inner_steps must be an integer in [1,"),
    ("meta-lstm.lr_schedule=step", "MetaLSTMConfig: lr_schedule must be one of"),
    ("meta-lstm.divide_grad=yes", "'divide_grad=yes': expected True or False, got 'yes'"),
    ("meta-lstm.forget_bias_init=5", "MetaLSTMConfig: forget_bias_init must be a range (low, high), got (5.0,)"),
    ("meta-lstm.lr=1e-3 meta-lstm.lr=2e-3", "lr is given twice"),
    ("maml.inner_lr=-2", "MAMLConfig: inner_lr must be a positive finite number, got -2.0"),
    ("metasgd.inner_lr=2", "'inner_lr' is not a setting of its own"),  # Meta-SGD learns its inner rates
    ("protonet.inner_steps=2", "'inner_steps' is not a setting of its own"),  # no inner loop
    ("maml.meta_batch=x", "'meta_batch=x': expected an integer, got 'x'"),
    ("reptile.lr=1", "not METHOD.NAME=VALUE with METHOD one of"),
    ("finetune.lr=1e-3", "finetune is not among --methods"),
])
def test_method_settings_refused_with_the_reason(assignment, message):
    ran = run_cli("compare", "--k-shot", "1", "--minutes", "1", "--methods", "meta-lstm", "maml", "metasgd", "protonet",
                  "--set", *assignment.split())
    assert ran.status == 2 and message in ran.err and "--set" in ran.err


def test_a_method_setting_needs_the_method():
    ran = run_cli("compare", "--k-shot", "1", "--minutes", "1", "--methods", "maml", "--set", "meta-lstm.meta_batch=1")
    assert ran.status == 2 and "meta-lstm is not among --methods" in ran.err


def test_baseline_settings_reach_their_run_and_result(tmp_path, tiny_h5):
    out = tmp_path / "compare"
    ran = run_cli("compare", *TINY[:-1], *tiny_h5, "--out", out, "--json", "--set", "protonet.lr=0.002",
                  "protonet.lr_schedule=constant")
    assert ran.status == 0, ran.err
    config = torch.load(out / "protonet" / "last.pt", weights_only=False)["config"]
    assert (config["method"], config["lr"], config["lr_schedule"]) == ("protonet", 0.002, "constant")
    assert json.loads(ran.out)["settings"] == {"lr": 0.002, "lr_schedule": "constant"}


def test_every_setting_a_comparison_shares_is_refused_as_a_meta_lstm_setting(tmp_path):
    spec = ComparisonSpec(dataset="glyphs", data=None, n_way=5, k_shot=1, minutes=1.0, out=str(tmp_path))
    assert set(shared_settings(spec, tmp_path)) | {"n_query", "val_every"} == set(COMPARISON_FIELDS)


def test_setting_values_are_read_as_the_command_line_reads_them():
    assert method_settings(["meta-lstm.lr=3e-3", "meta-lstm.second-order=True", "meta-lstm.query_bn=support",
                            "meta-lstm.forget_bias_init=(4, 5)", "maml.grad_clip=None"], ["meta-lstm", "maml"]) == \
        {"meta-lstm": {"lr": 3e-3, "second_order": True, "query_bn": "support", "forget_bias_init": (4.0, 5.0)},
         "maml": {"grad_clip": None}}


# --- signals and errors of a real compare.py process group (as a terminal's Ctrl-C or a scheduler sends them) -------

ROOT = Path(__file__).resolve().parents[2]
SLOW_META_LSTM = ["--k-shot", "1", "--n-way", "3", "--minutes", "1", "--episodes", "4", "--val-episodes", "1000",
                  "--validations", "1", "--methods", "meta-lstm", "protonet", "--set", "meta-lstm.hidden_channels=4",
                  "meta-lstm.inner_steps=2"]  # no validation before the minute is spent: a signal finds it mid-training


def start_compare(tmp_path, tiny_h5, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "scripts/compare.py", *SLOW_META_LSTM, *tiny_h5, "--out",
                             str(tmp_path / "C"), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # a few updates past the start


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_signal_to_compare_lets_the_method_save_and_says_how_to_resume(tmp_path, tiny_h5, signum, to_group):
    """Ctrl-C reaches the whole process group, SIGTERM (a scheduler) the parent alone: either way the running method
    saves last.pt, the parent waits for it, says what finished and how to continue, and leaves no lock."""
    process = start_compare(tmp_path, tiny_h5)
    wait_for(tmp_path / "C" / "meta-lstm" / "init.pt", process)
    (os.killpg if to_group else os.kill)(process.pid, signum)
    out, err = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "second" not in err, err
    assert (f"compare: stopped by {name}; finished: none; meta-lstm stopped in training, its "
            f"{tmp_path / 'C' / 'meta-lstm' / 'last.pt'} kept; to continue the comparison, run the same command with "
            f"--resume (same --out {tmp_path / 'C'})") in err
    assert "(same --out " + str(tmp_path / "C" / "meta-lstm") not in err  # the child names the comparison's --out
    assert (tmp_path / "C" / "meta-lstm" / "last.pt").is_file() and not (tmp_path / "C" / "meta-lstm" / ".lock").exists()
    assert not (tmp_path / "C" / "protonet").exists()  # the methods after it did not start


def test_a_failing_method_is_one_line_and_the_hint_fits_the_failure(tmp_path, tiny_h5):
    first = run_cli("compare", *TINY[:-2], "meta-lstm", *tiny_h5, "--out", tmp_path / "C2", "--set",
                    "meta-lstm.hidden_channels=4", "meta-lstm.inner_steps=2")
    assert first.status == 0, first.err
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    resumed = subprocess.run([sys.executable, "scripts/compare.py", *TINY[:-2], "meta-lstm", *tiny_h5, "--out",
                              str(tmp_path / "C2"), "--resume", "--force"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 2 and "give one of them" in resumed.stderr  # --resume and --force together
    (tmp_path / "C2" / "meta-lstm" / "result.json").unlink()  # its training is there; rerun it with other settings
    changed = subprocess.run([sys.executable, "scripts/compare.py", *TINY[:-2], "meta-lstm", *tiny_h5, "--out",
                              str(tmp_path / "C2"), "--resume", "--set", "meta-lstm.hidden_channels=4",
                              "meta-lstm.inner_steps=2", "meta-lstm.hidden_size=8"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert changed.returncode == 1 and "Traceback" not in changed.stderr, changed.stderr
    lines = [line for line in changed.stderr.splitlines() if "error" in line]
    assert len(lines) == 2 and lines[0].startswith("compare meta-lstm: error: --resume ") and "hidden_size: 20 -> 8" in lines[0]
    assert lines[1] == (f"compare.py: error: compare: meta-lstm failed (exit status 1; the error above says why) (its run "
                        f"folder: {tmp_path / 'C2' / 'meta-lstm'})")  # no "rerun with --resume": that is what failed
