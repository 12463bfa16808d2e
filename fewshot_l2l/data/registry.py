"""Choosing a dataset by name: the one entry point that scripts and the training loop use."""

from __future__ import annotations

from .episodes import FewShotSplit, add_rotated_classes
from .glyphs import make_glyph_splits
from .hdf5 import HDF5Splits

DATASETS = ("glyphs", "omniglot", "miniimagenet")
FILE_DATASETS = ("omniglot", "miniimagenet")
# "train+val" adds the rotated classes to validation as well, leaving the test split as the file's protocol has it when
# that protocol rotates train alone (alphabet-disjoint Omniglot builds): the minimal build's one validation alphabet
# (Tagalog, 17 characters) gives 68 classes, enough for 20-way validation, while its test split stays unrotated.
ROTATE_CHOICES = ("auto", "none", "train", "train+val", "all")


def load_splits(dataset: str, data: str | None = None, seed: int = 0, rotate: str = "auto") -> dict[str, FewShotSplit]:
    """All splits (``train``/``val``/``test``) of ``dataset``, on the CPU.

    Args:
        dataset: ``"glyphs"`` (embedded, generated; ``data`` must be ``None``), or
            ``"omniglot"`` / ``"miniimagenet"`` read from the HDF5 file ``data``
            built by ``scripts/prepare_data.py``.
        data: path of the dataset file, for datasets that live on disk.
        seed: generation seed of the embedded dataset.
        rotate: which splits get their classes rotated by 90/180/270 degrees as
            extra classes: ``"auto"`` (the protocol stored in the file: for
            Omniglot, the train split of an alphabet-disjoint partial build, all
            splits of the full Vinyals-style build; none for the others),
            ``"none"``, ``"train"``, ``"train+val"`` or ``"all"``.
    """
    if rotate not in ROTATE_CHOICES:
        raise ValueError(f"load_splits: rotate must be one of {', '.join(ROTATE_CHOICES)}, got {rotate!r}")
    if dataset == "glyphs":
        if data is not None:
            raise ValueError("load_splits: the embedded 'glyphs' dataset is generated, it takes no --data file")
        splits, auto_rotated = make_glyph_splits(seed=seed), []
    elif dataset in FILE_DATASETS:
        if data is None:
            raise ValueError(f"load_splits: dataset {dataset!r} needs --data FILE.h5 (build it with scripts/prepare_data.py {dataset})")
        source = HDF5Splits(data)
        if source.dataset != dataset:
            raise ValueError(f"load_splits: {data} holds dataset {source.dataset!r}, not {dataset!r}")
        splits, auto_rotated = source.load(), source.rotated_splits
        source.close()
    else:
        raise ValueError(f"load_splits: unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    rotated = {"auto": auto_rotated, "none": [], "train": ["train"], "train+val": ["train", "val"],
               "all": list(splits)}[rotate]
    return {name: add_rotated_classes(split) if name in rotated else split for name, split in splits.items()}
