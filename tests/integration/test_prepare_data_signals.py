"""Ctrl-C and SIGTERM in the middle of ``prepare_data``: one line, exit status 128 + signal, no temporary file left
and ``--out`` as it was (issue 31, second round, cases 10 and 11). The training loops' own signal handling is
tested in test_faults.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import make_class_folders, make_omniglot_zip, run_cli

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("signal_runner.py")
# The function each builder calls once per image, after the HDF5 temporary file exists.
PER_IMAGE = {"omniglot": "fewshot_l2l.data.omniglot:decode", "miniimagenet": "fewshot_l2l.data.miniimagenet:load_image"}
LINES = {signal.SIGINT: "prepare_data.py: interrupted (Ctrl-C); no file was left half-written",
         signal.SIGTERM: "prepare_data.py: stopped by SIGTERM; no file was left half-written"}


def prepare_data(target: str, call: int, signum: int, *argv) -> subprocess.CompletedProcess:
    """``prepare_data.py ARGV`` in a process that sends itself ``signum`` at the ``call``-th call of ``target``."""
    command = [sys.executable, str(RUNNER), "prepare_data", target, str(call), str(int(signum)), *map(str, argv)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def prepare_with_signal(dataset: str, signum: int, tmp_path: Path, *extra: str,
                        progress: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """``prepare_data.py DATASET`` replacing an earlier ``--out`` (``--force``), sent ``signum`` at its 3rd image."""
    if dataset == "omniglot":
        source = make_omniglot_zip(tmp_path / "bg.zip", size=8)
    else:
        source = make_class_folders(tmp_path / "mini")
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    out.write_bytes(b"an earlier build")
    return prepare_data(PER_IMAGE[dataset], 3, signum, dataset, "--source", source, "--out", out, "--force",
                        *([] if progress else ["--no-progress"]), *extra), out


@pytest.mark.parametrize("dataset, signum", [("omniglot", signal.SIGINT), ("omniglot", signal.SIGTERM),
                                             ("miniimagenet", signal.SIGTERM)])
def test_a_signal_mid_build_says_so_in_one_line_and_leaves_no_temporary_file(dataset, signum, tmp_path):
    """Case 10: Ctrl-C printed a KeyboardInterrupt traceback. Case 11: SIGTERM left ``.o.h5.PID-RAND.tmp`` (as large
    as the build had got), removed only by the next build of the same file."""
    result, out = prepare_with_signal(dataset, signum, tmp_path)
    assert result.returncode == 128 + signum, result.stderr
    assert result.stderr.splitlines() == [LINES[signum]]
    assert [p.name for p in out.parent.iterdir()] == ["o.h5"] and out.read_bytes() == b"an earlier build"


def test_sigterm_during_a_download_leaves_no_staging_folder(tmp_path):
    """Case 11: the download's staging folder ``.images_background.zip.download-XXXX/`` was left too."""
    zips = tmp_path / "zips"
    result = prepare_data("torchvision.datasets.utils:download_url", 1, signal.SIGTERM, "omniglot", "--download",
                          "--source", zips, "--out", tmp_path / "o.h5", "--no-progress")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.splitlines() == [LINES[signal.SIGTERM]]
    assert list(zips.iterdir()) == [] and not (tmp_path / "o.h5").exists()


def test_debug_shows_the_traceback_of_ctrl_c_and_still_leaves_nothing(tmp_path):
    result, out = prepare_with_signal("omniglot", signal.SIGINT, tmp_path, "--debug")
    assert "Traceback" in result.stderr and "KeyboardInterrupt" in result.stderr
    assert [p.name for p in out.parent.iterdir()] == ["o.h5"] and out.read_bytes() == b"an earlier build"


def test_prepare_data_called_from_python_restores_sigterm_and_respects_a_handler_of_its_caller(tmp_path):
    source = make_omniglot_zip(tmp_path / "bg.zip", size=8)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert run_cli("prepare_data", "omniglot", "--source", source, "--out", tmp_path / "a.h5", "--no-progress").status == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def callers_handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, callers_handler)
    try:
        outcome = run_cli("prepare_data", "omniglot", "--source", source, "--out", tmp_path / "b.h5", "--no-progress")
        assert outcome.status == 0 and signal.getsignal(signal.SIGTERM) is callers_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_line_is_not_appended_to_the_progress_bar(tmp_path):
    """Omniglot's bar was left unfinished, so the Ctrl-C line went on the bar's line."""
    result, _ = prepare_with_signal("omniglot", signal.SIGINT, tmp_path, progress=True)
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    assert result.stderr.splitlines()[-1] == LINES[signal.SIGINT], result.stderr
