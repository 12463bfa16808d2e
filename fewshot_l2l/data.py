"""Choosing a dataset by name: the one entry point that scripts and the training loop use."""

from __future__ import annotations

from .episodes import FewShotSplit
from .glyphs import make_glyph_splits

DATASETS = ("glyphs",)


def load_splits(dataset: str, data: str | None = None, seed: int = 0) -> dict[str, FewShotSplit]:
    """All splits (``train``/``val``/``test``) of ``dataset``, on the CPU.

    Args:
        dataset: ``"glyphs"`` (embedded, generated; ``data`` must be ``None``).
        data: path of the dataset file, for datasets that live on disk.
        seed: generation seed of the embedded dataset.
    """
    if dataset == "glyphs":
        if data is not None:
            raise ValueError("load_splits: the embedded 'glyphs' dataset is generated, it takes no --data file")
        return make_glyph_splits(seed=seed)
    raise ValueError(f"load_splits: unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
