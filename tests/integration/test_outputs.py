"""What the loops and scripts write: the pictures (curves.png, plot_gates.py) and outputs into folders that do
not exist yet (every writer creates them: a fresh clone has no data/ or runs/)."""

import io
import json
import runpy
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot_l2l.checkpoints as checkpoints
import fewshot_l2l.data
import fewshot_l2l.training as training
from fewshot_l2l.data.hdf5 import HDF5Splits
from fewshot_l2l.optim.comparison import BaselineResult, Comparison, plot_curves
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.training import meta_train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_data(monkeypatch, tiny_splits):
    fake = lambda dataset, data=None, seed=0, rotate="auto": tiny_splits  # noqa: E731
    for module in (training, checkpoints, fewshot_l2l.data):  # fewshot_l2l.data: what the scripts import
        monkeypatch.setattr(module, "load_splits", fake)
    return tiny_splits


def tiny_config(out, **overrides):
    values = dict(n_way=3, k_shot=1, n_query=2, inner_steps=2, meta_batch=2, episodes=8, hidden_size=4,
                  hidden_channels=4, val_every=4, val_episodes=4, device="cpu", out=str(out))
    values.update(overrides)
    return MetaLSTMConfig(**values)


def run_script(name, *argv, monkeypatch):
    """``python scripts/<name> argv`` in this process (no interpreter start-up)."""
    monkeypatch.setattr(sys, "argv", [name, *map(str, argv)])
    runpy.run_path(str(REPO / "scripts" / name), run_name="__main__")


def assert_png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted file
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def test_curves_are_drawn_at_every_validation_from_the_whole_log(tiny_data, tmp_path, monkeypatch):
    drawn = []
    real = training.plot_training_curves

    def spy(rows, path, *args, **kwargs):
        drawn.append([int(row["update"]) for row in rows])
        return real(rows, path, *args, **kwargs)

    monkeypatch.setattr(training, "plot_training_curves", spy)
    meta_train(tiny_config(tmp_path / "run"), progress=False)
    curves = tmp_path / "run" / "curves.png"
    assert drawn == [[2], [2, 4]]
    assert_png(curves)
    first = curves.read_bytes()
    meta_train(tiny_config(tmp_path / "run", episodes=12, resume=True), progress=False)
    assert drawn[-1] == [2, 4, 6]  # the resumed run draws the history of both runs
    assert_png(curves)
    assert curves.read_bytes() != first
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_training_without_matplotlib_stops_before_training_with_the_fix(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    with pytest.raises(ImportError, match="needs matplotlib: pip install"):
        meta_train(tiny_config(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_train_into_a_missing_folder_then_plot_gates(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs" / "nested" / "run"
    run_script("train.py", "--n-way", 3, "--k-shot", 1, "--n-query", 2, "--inner-steps", 2, "--meta-batch", 2,
               "--episodes", 4, "--hidden-size", 4, "--hidden-channels", 4, "--val-every", 4, "--val-episodes", 2,
               "--device", "cpu", "--out", out, monkeypatch=monkeypatch)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 4
    assert (out / "best.pt").is_file() and (out / "curves.png").is_file()

    picture = tmp_path / "pictures" / "deep" / "gates.png"
    run_script("plot_gates.py", "--checkpoint", out / "best.pt", "--episodes", 5, "--batch-size", 2, "--device", "cpu",
               "--out", picture, monkeypatch=monkeypatch)
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == {"checkpoint": str(out / "best.pt"), "split": "test", "n_episodes": 5, "out": str(picture)}
    assert "| head.bias |" in lines[-2]
    assert_png(picture, (1000, 500))
    run_script("plot_gates.py", "--checkpoint", out / "best.pt", "--episodes", 2, "--device", "cpu", monkeypatch=monkeypatch)
    assert_png(out / "best_gates.png", (1000, 500))  # default: next to the checkpoint


def _png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_prepare_data_into_a_missing_folder(tmp_path, monkeypatch, capsys):
    """The README's command on a fresh clone: --out data/omniglot-minimal.h5 where data/ does not exist."""
    source = tmp_path / "images_background_small.zip"
    with zipfile.ZipFile(source, "w") as archive:  # 3 alphabets x 3 characters x 2 drawings
        for a in range(3):
            for c in range(3):
                for d in range(2):
                    pixels = np.full((8, 8), 255, np.uint8)
                    pixels[c + d, a] = 0
                    archive.writestr(f"images_background_small/A{a}/character{c}/x_{d:02d}.png", _png_bytes(pixels))
    out = tmp_path / "clone" / "data" / "nested" / "omniglot-minimal.h5"
    run_script("prepare_data.py", "omniglot", "--source", source, "--out", out, "--image-size", 8, "--no-progress",
               monkeypatch=monkeypatch)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"out": str(out)}
    splits = HDF5Splits(out).load(verify=True)
    assert sum(split.n_classes for split in splits.values()) == 9
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_loss_curve_plot_into_a_missing_folder(tmp_path):
    curve = torch.tensor([1.0, 0.5, 0.25])
    comparison = Comparison(2, 4, 0.25, 0.75, curve, {"sgd": BaselineResult(0.1, 0.1, 0.5, 1.0, 2 * curve)})
    path = tmp_path / "figures" / "new" / "curves.png"
    plot_curves(comparison, str(path), "quadratic")
    assert_png(path)
