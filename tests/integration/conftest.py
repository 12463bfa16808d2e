"""Fixtures of the input-handling tests (test_inputs.py, test_fuzz_cli.py): the tiny embedded dataset in place of
the full one, tiny checkpoints of both kinds (helpers in cli_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import fewshot_l2l.data.registry as registry
from cli_helpers import TINY_TRAIN, TINY_TRAIN_OPTIMIZER, run_cli, tiny_glyphs


@pytest.fixture
def tiny_glyph_dataset(monkeypatch):
    """``--dataset glyphs`` (the default) loads :func:`tiny_glyphs` instead of the full embedded set (4 s)."""
    monkeypatch.setattr(registry, "make_glyph_splits", tiny_glyphs)


@pytest.fixture(scope="session")
def fewshot_checkpoint(tmp_path_factory) -> Path:
    """``best.pt`` of a one-episode meta-training run on :func:`tiny_glyphs` (3-way 1-shot)."""
    run = tmp_path_factory.mktemp("fewshot") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "make_glyph_splits", tiny_glyphs)
        outcome = run_cli("train", *TINY_TRAIN, "--out", run)
    assert outcome.status == 0, outcome.err
    return run / "best.pt"


@pytest.fixture(scope="session")
def optimizer_checkpoint(tmp_path_factory) -> Path:
    """``best.pt`` of a one-iteration learned-optimizer run on quadratics."""
    run = tmp_path_factory.mktemp("optimizer") / "run"
    outcome = run_cli("train_optimizer", *TINY_TRAIN_OPTIMIZER, "--out", run)
    assert outcome.status == 0, outcome.err
    return run / "best.pt"
