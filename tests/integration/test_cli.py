"""The command-line front ends: console scripts declared in pyproject.toml, ``python -m``, the scripts/ callers,
and their usage errors (a device this machine lacks, a missing optional dependency)."""

import importlib
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {  # console script -> module of fewshot_l2l.cli (and scripts/<module>.py)
    "fewshot-train": "train",
    "fewshot-evaluate": "evaluate",
    "fewshot-prepare-data": "prepare_data",
    "fewshot-train-optimizer": "train_optimizer",
    "fewshot-evaluate-optimizer": "evaluate_optimizer",
    "fewshot-plot-gates": "plot_gates",
    "fewshot-compare": "compare",
}


def help_text(main, capsys, prog):
    """What ``prog --help`` prints, run in this process."""
    old_argv = sys.argv
    sys.argv = [prog]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
    finally:
        sys.argv = old_argv
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_console_scripts_are_the_cli_mains():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {name: f"fewshot_l2l.cli.{module}:main" for name, module in COMMANDS.items()}
    for module in COMMANDS.values():
        assert callable(importlib.import_module(f"fewshot_l2l.cli.{module}").main)


@pytest.mark.parametrize("module", list(COMMANDS.values()))
def test_scripts_are_thin_callers_of_the_cli(module, capsys, monkeypatch):
    cli_help = help_text(importlib.import_module(f"fewshot_l2l.cli.{module}").main, capsys, f"{module}.py")
    assert cli_help.startswith(f"usage: {module}.py")
    monkeypatch.setattr(sys, "argv", [f"{module}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / f"{module}.py"), run_name="__main__")
    assert exit_info.value.code == 0 and capsys.readouterr().out == cli_help
    assert len((ROOT / "scripts" / f"{module}.py").read_text().splitlines()) <= 6


def test_python_dash_m_runs_the_command():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "fewshot_l2l.cli.train", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Meta-train a few-shot method" in result.stdout and "--k-shot" in result.stdout


@pytest.mark.parametrize("module, args", [("train", []), ("evaluate", ["--checkpoint", "x.pt"]),
                                          ("train_optimizer", []), ("evaluate_optimizer", ["--checkpoint", "x.pt"])])
def test_unavailable_device_is_a_usage_error(module, args, monkeypatch, capsys):
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    main = importlib.import_module(f"fewshot_l2l.cli.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--device", "mps"])
    assert exit_info.value.code == 2
    assert "argument --device: device 'mps': no mps device is available on this machine" in capsys.readouterr().err


def test_torch_device_strings_are_accepted(tmp_path, tiny_data, capsys):
    """``cpu:0`` through training, the checkpoint written and read back, and evaluation."""
    from fewshot_l2l.cli import evaluate, train

    out = tmp_path / "run"
    train.main(["--n-way", "3", "--n-query", "2", "--inner-steps", "1", "--meta-batch", "1", "--episodes", "1",
                "--hidden-channels", "2", "--hidden-size", "2", "--val-every", "1", "--val-episodes", "1",
                "--device", "cpu:0", "--out", str(out)])
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--episodes", "1", "--device", "cpu:0", "--json"])
    assert '"n_episodes": 1' in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("blocked, module, args, extra", [
    ("h5py", "prepare_data", ["omniglot", "--out", "x.h5"], "data"),
    ("PIL", "prepare_data", ["omniglot", "--out", "x.h5"], "data"),
])
def test_missing_optional_dependency_names_the_extra(blocked, module, args, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, blocked, None)  # as if it were not installed
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"fewshot_l2l.cli.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert f"needs the optional dependency '{blocked}'" in message
    assert f"pip install 'fewshot_l2l[{extra}]'" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_is_named_before_a_long_comparison(monkeypatch, tmp_path):
    """matplotlib is a core dependency (pictures): a broken install is reported before any work, naming it."""
    from fewshot_l2l.cli import evaluate_optimizer

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        evaluate_optimizer.main(["--checkpoint", "x.pt"])
    assert "needs matplotlib" in str(exit_info.value.code)
    assert list(tmp_path.iterdir()) == []


def test_plot_gates_runs_the_inner_loop_that_evaluation_runs(tiny_data, tmp_path, monkeypatch):
    """The gates of --authors-config checkpoints used to come from an inner loop without its divide_grad."""
    import fewshot_l2l.adaptation as adaptation
    import fewshot_l2l.gates as gates
    from fewshot_l2l.cli import evaluate, plot_gates, train

    out = tmp_path / "run"
    train.main(["--n-way", "3", "--n-query", "2", "--inner-steps", "2", "--inner-batch-size", "2", "--k-shot", "2",
                "--episodes", "1", "--hidden-channels", "2", "--hidden-size", "2", "--val-every", "1",
                "--val-episodes", "1", "--device", "cpu", "--authors-config", "--out", str(out)])
    seen = {}
    for module in (adaptation, gates):
        real = module.adapt
        monkeypatch.setattr(module, "adapt", lambda *args, _real=real, _name=module.__name__, **kwargs:
                            seen.setdefault(_name, args[4]) and _real(*args, **kwargs))
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--episodes", "2", "--device", "cpu", "--json"])
    plot_gates.main(["--checkpoint", str(out / "best.pt"), "--episodes", "2", "--device", "cpu",
                     "--out", str(tmp_path / "gates.png")])
    evaluated, plotted = seen["fewshot_l2l.adaptation"], seen["fewshot_l2l.gates"]
    assert evaluated == plotted and plotted.divide_grad and plotted.inner_batch_size == 2 and plotted.inner_steps == 2
