"""Which coordinates of the flat ``[B, P]`` parameter vector form which parameter tensor, and of which layer type.

A coordinatewise rule needs nothing of this; the rules that look beyond a
coordinate do: global averaging cells averaged per tensor
(:class:`~fewshot_l2l.optim.rules.AndrychowiczRule` with ``gac_scope="tensor"``)
and a separate rule per layer type (:class:`~fewshot_l2l.optim.per_type.LayerTypeRule`).
Problems give their layout (``ProblemBatch.layout``) and
:class:`~fewshot_l2l.optim.LearnedOptimizer` builds one from the parameters it steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LAYER_TYPES = ("conv", "fc")


@dataclass(frozen=True)
class ParamLayout:
    """``sizes[k]`` coordinates of tensor ``k`` follow those of tensors ``0..k-1``; ``kinds[k]`` is its layer type.

    Args:
        sizes: number of coordinates of each tensor (all >= 0).
        kinds: layer type of each tensor, one of :data:`LAYER_TYPES` (default: all ``"fc"``).
    """

    sizes: tuple[int, ...]
    kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(int(size) for size in self.sizes))
        if not self.sizes or min(self.sizes) < 0:
            raise ValueError(f"ParamLayout: sizes must be a non-empty list of tensor sizes (>= 0), got {self.sizes}")
        kinds = ("fc",) * len(self.sizes) if self.kinds is None else tuple(self.kinds)
        if len(kinds) != len(self.sizes) or any(kind not in LAYER_TYPES for kind in kinds):
            raise ValueError(f"ParamLayout: kinds must give one of {LAYER_TYPES} for each of the {len(self.sizes)} tensors, "
                             f"got {kinds}")
        object.__setattr__(self, "kinds", kinds)

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    def segment_ids(self, device: torch.device | str = "cpu") -> Tensor:
        """Tensor index of every coordinate, ``[P]`` (int64)."""
        return torch.repeat_interleave(torch.arange(len(self.sizes), device=device),
                                       torch.tensor(self.sizes, device=device))

    def kind_index(self, kind: str, device: torch.device | str = "cpu") -> Tensor:
        """Indices of the coordinates whose tensor has layer type ``kind``, ``[P_kind]`` (int64, ascending)."""
        mask = torch.tensor([k == kind for k in self.kinds], device=device)
        return torch.nonzero(mask[self.segment_ids(device)], as_tuple=True)[0]

    def select(self, kind: str) -> "ParamLayout":
        """The layout of the tensors of type ``kind`` alone (in order)."""
        sizes = tuple(size for size, k in zip(self.sizes, self.kinds) if k == kind)
        if not sizes:
            raise ValueError(f"ParamLayout.select: no tensor of layer type {kind!r} in {self}")
        return ParamLayout(sizes, (kind,) * len(sizes))

    def check(self, owner: str, n_params: int) -> None:
        if self.n_params != n_params:
            raise ValueError(f"{owner}: the layout covers {self.n_params} coordinates but theta has {n_params}")


def segment_mean(values: Tensor, layout: ParamLayout | None) -> Tensor:
    """Mean of ``values`` ``[B, P, F]`` over the coordinates of each tensor, broadcast back to ``[B, P, F]``.

    ``layout=None`` averages over all ``P`` coordinates (one tensor). Vectorized:
    one ``index_add`` into ``[B, tensors, F]`` sums and one gather, no loop over tensors.
    """
    if layout is None or len(layout.sizes) == 1:
        return values.mean(dim=1, keepdim=True).expand_as(values)
    layout.check("segment_mean", values.shape[1])
    ids = layout.segment_ids(values.device)
    sums = values.new_zeros(values.shape[0], len(layout.sizes), values.shape[2]).index_add(1, ids, values)
    counts = torch.tensor(layout.sizes, dtype=values.dtype, device=values.device)
    return (sums / counts[None, :, None]).index_select(1, ids)
