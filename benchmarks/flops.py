"""FLOPs of one episode and the machine's float32 matmul rate (the practical ceiling for the learner's FLOPs).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on "meta" tensors (shapes only, nothing is
computed): matrix multiplies and convolutions (2 x multiply-accumulates), forward and backward; elementwise work
(batch norm, ReLU, pooling, the LSTM gates' activations) is not counted.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from fewshot_l2l.learner import ConvLearner
from fewshot_l2l.meta_learner import MetaLearner


def learner_flops_per_episode(learner: ConvLearner, n_support: int, n_query: int, inner_steps: int, train: bool) -> int:
    """Learner FLOPs of one episode: ``inner_steps`` x (forward + backward on the support set) + the query set.

    The query set costs a forward pass, plus a backward pass when ``train``
    (the meta-gradient goes through it). Counted by ``FlopCounterMode`` on meta
    tensors: convolutions and matmuls only.
    """
    config = learner.config
    theta = torch.zeros(learner.n_params, device="meta", requires_grad=True)

    def images(n: int) -> Tensor:
        return torch.zeros(n, config.in_channels, config.image_size, config.image_size, device="meta")

    labels = torch.zeros(max(n_support, n_query), dtype=torch.int64, device="meta")
    with FlopCounterMode(display=False) as inner:
        loss = F.cross_entropy(learner.logits(theta, images(n_support)), labels[:n_support])
        torch.autograd.grad(loss, theta)
    with FlopCounterMode(display=False) as query:
        loss = F.cross_entropy(learner.logits(theta, images(n_query)), labels[:n_query])
        if train:
            torch.autograd.grad(loss, theta)
    return inner_steps * inner.get_total_flops() + query.get_total_flops()


def meta_learner_flops_per_episode(n_params: int, hidden_size: int, inner_steps: int, train: bool) -> int:
    """Matmul FLOPs of the meta-learner for one episode (``inner_steps`` updates of ``n_params`` coordinates).

    Counted like :func:`learner_flops_per_episode`, through the meta-learner's
    own forward: when ``train``, the first-order step's recomputation in the
    backward pass is included. The LSTM's elementwise gate arithmetic, a large
    share of its time, is not.
    """
    with torch.device("meta"):
        meta_learner = MetaLearner(torch.zeros(n_params), hidden_size)
    theta = meta_learner.initial_theta(1)
    state = meta_learner.initial_state(theta)
    grad = torch.zeros(1, n_params, device="meta")
    loss = torch.zeros(1, device="meta")
    with FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(train):
            for _ in range(inner_steps):
                theta, state = meta_learner(theta, grad, loss, state)
            if train:
                theta.sum().backward()
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA) so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(device: torch.device | str = "cpu", size: int = 1024, seconds: float = 1.0) -> float:
    """Float32 ``size x size`` matrix-multiply rate in FLOP/s (``2 size^3`` per product), best of 3 bursts."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    synchronize(device)
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            count += 1
            if count % 4 == 0:
                synchronize(device)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / 3:
                    break
        best = max(best, 2 * size**3 * count / elapsed)
    return best
