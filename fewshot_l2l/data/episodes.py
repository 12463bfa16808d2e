"""Few-shot splits held as one uint8 tensor, and a vectorized N-way K-shot episode sampler.

A :class:`FewShotSplit` keeps every image of a split in one ``uint8`` tensor
``[N, C, H, W]`` (on the training device if wanted), so drawing an episode is
pure tensor indexing: no per-image decoding, no host-device copies.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def _is_int(value: object) -> bool:
    """An integer, Python's or NumPy's, but not a bool (``True`` is an ``int`` to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class FewShotSplit:
    """All images of one split.

    Attributes:
        images: ``uint8`` tensor ``[N, C, H, W]``.
        labels: ``int64`` tensor ``[N]`` of class indices in ``[0, len(class_names))``.
        class_names: one name per class.
        name: the split's name (used in error messages), e.g. ``"train"``.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    name: str = "split"

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"FewShotSplit {self.name!r}: images must be a uint8 tensor [N, C, H, W], "
                f"got {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"FewShotSplit {self.name!r}: {self.labels.numel()} labels for {self.images.shape[0]} images"
            )
        self.labels = self.labels.to(torch.int64)
        n_classes = len(self.class_names)
        if self.labels.numel() and (self.labels.min() < 0 or self.labels.max() >= n_classes):
            raise ValueError(f"FewShotSplit {self.name!r}: labels must lie in [0, {n_classes}) for {n_classes} class names")
        self.class_sizes = torch.bincount(self.labels.cpu(), minlength=n_classes)
        # class_members[c, j] = index of the j-th image of class c, padded with -1,
        # so that sampling K+Q images of each of N classes is one argsort.
        order = torch.argsort(self.labels.cpu(), stable=True)
        max_size = int(self.class_sizes.max()) if n_classes else 0
        starts = torch.cumsum(self.class_sizes, 0) - self.class_sizes
        position = torch.arange(len(order)) - starts[self.labels.cpu()[order]]
        members = torch.full((n_classes, max_size), -1, dtype=torch.int64)
        members[self.labels.cpu()[order], position] = order
        # Kept on the CPU with the sampler's generator: on a GPU only the final index tensor is copied.
        self.class_members = members

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "FewShotSplit":
        """The same split with its tensors on ``device``."""
        return FewShotSplit(self.images.to(device), self.labels.to(device), list(self.class_names), self.name)


def add_rotated_classes(split: FewShotSplit, quarter_turns: tuple[int, ...] = (1, 2, 3)) -> FewShotSplit:
    """``split`` plus, for each ``k`` in ``quarter_turns``, every class rotated by ``k * 90`` degrees as a new class.

    The class augmentation of Omniglot (Santoro et al. 2016; Vinyals et al. 2016):
    a rotated character is a different character. Rotated class ``c`` of turn
    ``k`` (the ``j``-th in ``quarter_turns``) gets label ``c + (j + 1) * n_classes``
    and name ``"<name>@rot<90k>"``. Built once with ``torch.rot90`` on the uint8
    tensor, on the split's device.
    """
    if split.images.shape[2] != split.images.shape[3]:
        raise ValueError(f"add_rotated_classes: split {split.name!r} has non-square images {tuple(split.images.shape[2:])}")
    if any(k % 4 == 0 for k in quarter_turns) or len(set(k % 4 for k in quarter_turns)) != len(quarter_turns):
        raise ValueError(f"add_rotated_classes: quarter_turns must be distinct and not multiples of 4, got {quarter_turns}")
    n = split.n_classes
    images = torch.cat([split.images] + [torch.rot90(split.images, k, dims=(2, 3)) for k in quarter_turns])
    labels = torch.cat([split.labels] + [split.labels + (j + 1) * n for j in range(len(quarter_turns))])
    names = list(split.class_names) + [f"{c}@rot{90 * (k % 4)}" for k in quarter_turns for c in split.class_names]
    return FewShotSplit(images, labels, names, name=split.name)


@dataclass
class Episode:
    """A meta-batch of ``B`` episodes; images are float in [0, 1].

    ``support_x``: ``[B, n_way * k_shot, C, H, W]``, ``support_y``: ``[B, n_way * k_shot]``;
    ``query_x``: ``[B, n_way * n_query, C, H, W]``, ``query_y``: ``[B, n_way * n_query]``.
    Labels are remapped per episode to ``0 .. n_way - 1``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def n_episodes(self) -> int:
        return self.support_x.shape[0]


class EpisodeSampler:
    """Seeded sampler of N-way K-shot episodes from a :class:`FewShotSplit`.

    Classes are drawn without replacement within an episode, and the ``k_shot +
    n_query`` images of each class are distinct. The same ``seed`` gives the same
    episodes.
    """

    def __init__(self, split: FewShotSplit, n_way: int, k_shot: int, n_query: int, seed: int = 0) -> None:
        if not isinstance(split, FewShotSplit):
            raise TypeError(f"EpisodeSampler: split must be a FewShotSplit, got {type(split).__name__}")
        # n_way >= 2: a 1-way episode has one answer, so its accuracy is always 1 and it teaches nothing.
        for name, value, rule in (("n_way", n_way, "an integer >= 2"), ("k_shot", k_shot, "a positive integer"),
                                  ("n_query", n_query, "a positive integer")):
            if not _is_int(value) or value < (2 if name == "n_way" else 1):
                raise ValueError(f"EpisodeSampler: {name} must be {rule}, got {value!r}")
        if not _is_int(seed) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise ValueError(f"EpisodeSampler: seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] "
                             f"(torch.Generator.manual_seed), got {seed!r}")
        if n_way > split.n_classes:
            raise ValueError(
                f"EpisodeSampler: n_way={n_way} is larger than the {split.n_classes} classes of split {split.name!r}"
            )
        per_class = k_shot + n_query
        # Compared as at most (largest class + 1): a huge Python int would overflow the int64 comparison.
        too_small = torch.nonzero(split.class_sizes < min(per_class, int(split.class_sizes.max()) + 1)).flatten()
        if len(too_small):
            first = int(too_small[0])
            raise ValueError(
                f"EpisodeSampler: k_shot + n_query = {per_class} is larger than the {int(split.class_sizes[first])} "
                f"images of class {split.class_names[first]!r} in split {split.name!r} "
                f"({len(too_small)} classes are that small)"
            )
        self.split = split
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample(self, n_episodes: int = 1) -> Episode:
        """Draw ``n_episodes`` independent episodes as one batch."""
        if not _is_int(n_episodes) or n_episodes < 1:
            raise ValueError(f"EpisodeSampler.sample: n_episodes must be an integer >= 1, got {n_episodes!r}")
        split, gen = self.split, self.generator
        n_way, per_class = self.n_way, self.k_shot + self.n_query
        # Random keys drawn on the CPU generator keep results identical across devices.
        classes = torch.rand(n_episodes, split.n_classes, generator=gen).argsort(dim=1)[:, :n_way]
        members = split.class_members[classes]  # [B, n_way, max_size], on the CPU
        keys = torch.rand(members.shape, generator=gen).masked_fill_(members < 0, 2.0)
        picked = members.gather(2, keys.argsort(dim=2)[:, :, :per_class])  # [B, n_way, K+Q]
        picked = picked.to(split.images.device)
        images = split.images[picked].float().div_(255.0)  # [B, n_way, K+Q, C, H, W]
        labels = torch.arange(n_way, device=images.device).view(1, n_way, 1).expand(n_episodes, n_way, per_class)
        k = self.k_shot
        flat = lambda t: t.reshape(n_episodes, -1, *t.shape[3:])  # noqa: E731
        return Episode(
            flat(images[:, :, :k]), flat(labels[:, :, :k]), flat(images[:, :, k:]), flat(labels[:, :, k:])
        )
