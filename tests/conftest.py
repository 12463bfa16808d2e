"""Fixtures shared by the unit tests (tests/unit: equations and components against hand-checked or naive
references) and the integration tests (tests/integration: data builders, training loops, scripts, end to end)."""

import os
from pathlib import Path

import pytest
import torch

from fewshot_l2l.data.glyphs import make_glyph_splits

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEWSHOT_L2L_SHARED", REPO.parent / "shared"))


def find_shared_data(*relative: str) -> list[Path]:
    """Paths under ``../shared/data`` (or ``$FEWSHOT_L2L_SHARED/data``) that a test needs.

    Skips the test, naming the missing files, when they are absent; in CI (``CI=true``) the files are part
    of the set-up, so their absence fails the test instead of silently skipping it.
    """
    paths = [SHARED / "data" / name for name in relative]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        skip_or_fail_in_ci(f"shared data not found: {', '.join(missing)} (set FEWSHOT_L2L_SHARED to the folder holding data/)")
    return paths


def skip_or_fail_in_ci(message: str) -> None:
    """Skip the test with ``message``; under ``CI=true`` (where everything it needs is part of the set-up) fail it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI=true, so the test must run", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data():
    """:func:`find_shared_data` as a fixture: ``shared_data("omniglot/x.zip", ...)`` -> paths, or skip / fail in CI."""
    return find_shared_data


@pytest.fixture(scope="session")
def learn2learn():
    """The ``learn2learn`` module; skips without it, fails under ``CI=true`` (``make setup`` installs it:
    scripts/install_learn2learn.sh)."""
    try:
        import learn2learn
        return learn2learn
    except ImportError as error:
        missing = str(error)  # skipped or failed outside the except block: no chained traceback in the report
    skip_or_fail_in_ci(f"learn2learn is not installed ({missing}): make setup, or bash scripts/install_learn2learn.sh PYTHON")


@pytest.fixture(scope="session")
def tiny_splits():
    """A small embedded dataset (16x16 glyphs) that builds in well under a second."""
    return make_glyph_splits({"train": 20, "val": 8, "test": 8}, images_per_class=6, image_size=16, seed=3)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def tiny_data(monkeypatch, tiny_splits):
    """Every dataset loads as :func:`tiny_splits` in training and in loading checkpoints' splits (evaluation)."""
    import fewshot_l2l.checkpoints as checkpoints
    import fewshot_l2l.training as training

    for module in (training, checkpoints):
        monkeypatch.setattr(module, "load_splits", lambda dataset, data=None, seed=0, rotate="auto": tiny_splits)
    return tiny_splits
