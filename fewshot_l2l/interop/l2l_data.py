"""This project's splits as learn2learn data: a ``MetaDataset`` per split, so learn2learn's task transforms
(``NWays``, ``KShots``, ``LoadData``, ``RemapLabels``, ``ConsecutiveLabels``, ...) and ``TaskDataset`` work on them.

::

    import learn2learn as l2l
    from fewshot_l2l.interop.l2l_data import meta_datasets

    train = meta_datasets("omniglot", "data/omniglot.h5")["train"]
    tasks = l2l.data.TaskDataset(train, [l2l.data.transforms.NWays(train, 5), l2l.data.transforms.KShots(train, 2),
                                         l2l.data.transforms.LoadData(train), l2l.data.transforms.RemapLabels(train)])
    images, labels = tasks.sample()    # [10, 1, 28, 28] floats in [0, 1], labels 0..4

A sample of the underlying dataset is ``(image, label)``: the image as float ``[C, H, W]`` in ``[0, 1]`` (as
:class:`fewshot_l2l.data.episodes.EpisodeSampler` gives it), the label the split's class index (an ``int``).
The label bookkeeping is handed to ``MetaDataset`` from the split's label tensor, instead of learn2learn
loading every image once to read its label.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data import load_splits
from ..data.episodes import FewShotSplit
from ..extras import require


class SplitDataset(Dataset):
    """A :class:`~fewshot_l2l.data.episodes.FewShotSplit` as a map-style dataset of ``(image, label)``.

    ``image``: float ``[C, H, W]`` in ``[0, 1]`` on the split's device; ``label``: the class index, an ``int``.
    """

    def __init__(self, split: FewShotSplit) -> None:
        if not isinstance(split, FewShotSplit):
            raise TypeError(f"SplitDataset: split must be a FewShotSplit, got {type(split).__name__}")
        self.split = split

    def __len__(self) -> int:
        return self.split.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.split.images[index].float().div_(255.0), int(self.split.labels[index])


def labels_to_indices(split: FewShotSplit) -> dict[int, list[int]]:
    """``{class index: [image indices]}`` of ``split`` (classes without images left out), from one sort of its labels."""
    labels = split.labels.cpu()
    order = torch.argsort(labels, stable=True)
    groups = torch.split(order, split.class_sizes.tolist())
    return {label: group.tolist() for label, group in enumerate(groups) if len(group)}


def meta_dataset(split: FewShotSplit):
    """``learn2learn.data.MetaDataset`` over :class:`SplitDataset` ``(split)``, its bookkeeping from the labels."""
    l2l_data = require("learn2learn", "l2l", "fewshot_l2l.interop.l2l_data").data
    return l2l_data.MetaDataset(SplitDataset(split), labels_to_indices=labels_to_indices(split))


def meta_datasets(dataset: str, data: str | None = None, seed: int = 0, rotate: str = "auto") -> dict:
    """``{split name: MetaDataset}`` for a dataset :func:`fewshot_l2l.data.load_splits` loads (same arguments).

    ``rotate`` adds the rotated copies of the classes, as meta-training does; each is a class of its own.
    """
    require("learn2learn", "l2l", "fewshot_l2l.interop.l2l_data")  # before loading a whole dataset
    return {name: meta_dataset(split) for name, split in load_splits(dataset, data, seed=seed, rotate=rotate).items()}
