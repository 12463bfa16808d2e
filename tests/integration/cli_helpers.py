"""Helpers of the input-handling tests (test_inputs.py, test_fuzz_cli.py): a command run in this process and
what it left, tiny data; their fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot_l2l.data.glyphs import make_glyph_splits

PROG = "prog.py"  # sys.argv[0] while a command runs here: its messages start with "prog.py: error: "


@dataclass
class Outcome:
    """How one command run ended."""

    code: int | str  # exit status, or the message of SystemExit(message) (status 1, printed on stderr by Python)
    out: str
    err: str  # stderr, with the SystemExit message appended as Python would print it
    escaped: BaseException | None  # an exception other than SystemExit: a traceback for the user

    @property
    def status(self) -> int:
        return 1 if isinstance(self.code, str) else self.code

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if ": error: " in line]


def run_cli(module: str, *argv, env: dict[str, str] | None = None) -> Outcome:
    """``fewshot_l2l.cli.<module>.main(argv)`` in this process, as ``prog.py argv`` would run."""
    main = importlib.import_module(f"fewshot_l2l.cli.{module}").main
    out, err = io.StringIO(), io.StringIO()
    code: int | str = 0
    escaped = None
    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = [PROG, *map(str, argv)]
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in argv])
    except SystemExit as error:
        code = 0 if error.code is None else error.code
        if isinstance(code, str):
            err.write(code + "\n")
    except Exception as error:  # noqa: BLE001 - what the user would see as a traceback
        escaped = error
        code = -1
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return Outcome(code, out.getvalue(), err.getvalue(), escaped)


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (IHDR) claims ``width`` x ``height`` 8-bit grey pixels but whose data is one row: what
    Pillow's size checks read, at no cost (a 30000x30000 claim is 30 KB of zeros, compressed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
            + chunk(b"IEND", b""))


def make_omniglot_zip(path: Path, size: int = 16, alphabets: int = 3, characters: int = 3, drawings: int = 2) -> Path:
    """An Omniglot-like zip (``bg/A<a>/character<c>/x_<d>.png``, deflated): enough for an alphabet-disjoint split."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for a in range(alphabets):
            for c in range(characters):
                for d in range(drawings):
                    pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                    archive.writestr(f"bg/A{a}/character{c}/x_{d:02d}.png", png_bytes(pixels))
    return path


def make_class_folders(root: Path, size: int = 8) -> Path:
    """A tiny miniImageNet source in the class-folder layout: ``{train,val,test}/n<split><c>/<i>.png``, 2 classes of
    2 grey PNGs each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in range(2):
            folder = root / split / f"n{split}{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (size, size), dtype=np.uint8)))
    return root


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``: what a run must leave unchanged."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


TINY_GLYPHS = {}


def tiny_glyphs(*args, **kwargs):
    """The embedded dataset, tiny (16x16 glyphs; train 20, val 8, test 8 classes of 6 images), whatever is asked."""
    if not TINY_GLYPHS:
        TINY_GLYPHS.update(make_glyph_splits({"train": 20, "val": 8, "test": 8}, images_per_class=6, image_size=16, seed=3))
    return dict(TINY_GLYPHS)


TINY_TRAIN = ["--n-way", "3", "--k-shot", "1", "--n-query", "1", "--inner-steps", "1", "--meta-batch", "1",
              "--episodes", "1", "--hidden-channels", "2", "--hidden-size", "2", "--val-every", "1",
              "--val-episodes", "1", "--device", "cpu"]
TINY_TRAIN_OPTIMIZER = ["--problem", "quadratic", "--hidden-size", "2", "--horizon", "2", "--unroll", "1",
                        "--meta-batch", "2", "--iterations", "1", "--val-problems", "2", "--n-test", "0", "--device", "cpu"]
