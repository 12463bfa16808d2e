import pytest
import torch

from fewshot_l2l.data.glyphs import make_glyph_splits


@pytest.fixture(scope="session")
def tiny_splits():
    """A small embedded dataset (16x16 glyphs) that builds in well under a second."""
    return make_glyph_splits({"train": 20, "val": 8, "test": 8}, images_per_class=6, image_size=16, seed=3)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
