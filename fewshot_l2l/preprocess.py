"""Gradient/loss preprocessing of Andrychowicz et al. (2016), Appendix A.

Gradients span many orders of magnitude, which an LSTM with bounded activations
handles badly. Each scalar ``x`` is mapped to two features::

    (log|x| / p, sign x)   if |x| >= e^-p
    (-1,         e^p x)    otherwise

With ``p = 10`` both features stay in roughly [-1, 1] for any float32 value.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Map ``x`` of any shape to features of shape ``x.shape + (2,)``.

    The first feature is written as ``log(max(|x|, e^-p)) / p``: it equals
    ``log|x| / p`` for large ``|x|`` and exactly ``-1`` below the threshold, and
    never evaluates ``log 0`` (which would poison gradients through ``where``).
    """
    if p <= 0:
        raise ValueError(f"preprocess: p must be positive, got p={p}")
    threshold = math.exp(-p)
    magnitude = torch.log(x.abs().clamp_min(threshold)) / p
    direction = torch.where(x.abs() >= threshold, torch.sign(x), x * math.exp(p))
    return torch.stack((magnitude, direction), dim=-1)
