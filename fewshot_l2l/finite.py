"""Finiteness checks: the tensors of a checkpoint holding NaN or infinities, and JSON-safe summaries."""

from __future__ import annotations

import math
from typing import Any

import torch


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """The names (dotted paths) of the floating-point tensors in ``obj`` holding a NaN or an infinity.

    ``obj`` may nest dicts, lists and tuples (a checkpoint, a state dict, an
    optimizer state); other leaves are ignored.
    """
    if isinstance(obj, torch.Tensor):
        bad = (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all())
        return [prefix or "tensor"] if bad else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    return [name for key, value in items for name in nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


def finite_or_none(value: Any) -> Any:
    """``value``, with every non-finite float in it (nested dicts, lists) replaced by ``None``.

    For JSON output: ``json.dumps`` would write the non-standard ``Infinity`` / ``NaN``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value
