"""What the scripts write into folders that do not exist yet (every writer creates them: a fresh clone has no
data/ or runs/)."""

import io
import json
import runpy
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from fewshot_l2l.data.hdf5 import HDF5Splits

REPO = Path(__file__).resolve().parents[2]


def run_script(name, *argv, monkeypatch):
    """``python scripts/<name> argv`` in this process (no interpreter start-up)."""
    monkeypatch.setattr(sys, "argv", [name, *map(str, argv)])
    runpy.run_path(str(REPO / "scripts" / name), run_name="__main__")


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
