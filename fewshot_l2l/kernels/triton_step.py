"""The fused Meta-LSTM step as Triton kernels (the ``cuda`` backend of :mod:`fewshot_l2l.kernels`), float32.

One program per block of ``BLOCK`` coordinates (columns of the ``[hidden, N]`` layer-1 state, ``N = B P``):
the layer-1 gates are four ``[hidden, hidden] x [hidden, BLOCK]`` products (``tl.dot`` in IEEE float32,
not TF32) plus the four preprocessed inputs, then the LSTM cell, layer 2 and the update, in registers. The
backward recomputes the same and reduces each block's weight gradients into one row of a partial-sum buffer,
summed over blocks by torch (deterministic). Without a GPU these kernels run on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, set before Triton is imported), which is how the tests check them here.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 64  # coordinates per program


def _padded(hidden: int) -> int:
    return max(16, triton.next_power_of_2(hidden))  # tl.dot wants power-of-two sides of at least 16


@triton.jit
def _preprocess(x, threshold, p, scale):
    a = tl.abs(x)
    magnitude = tl.log(tl.maximum(a, threshold)) / p
    sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
    return magnitude, tl.where(a >= threshold, sign, x * scale)


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _gate(q: tl.constexpr, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H: tl.constexpr):
    """Pre-activation of gate q (input, forget, cell, output) for the block: [HP, BLOCK]."""
    w = tl.load(w_hh_ptr + (q * H + rows)[:, None] * H + rows[None, :], mask=rmask[:, None] & rmask[None, :], other=0.0)
    out = tl.dot(w, h, input_precision="ieee")
    out += tl.load(w_ih_ptr + (q * H + rows) * 4 + 0, mask=rmask, other=0.0)[:, None] * x0[None, :]
    out += tl.load(w_ih_ptr + (q * H + rows) * 4 + 1, mask=rmask, other=0.0)[:, None] * x1[None, :]
    out += tl.load(w_ih_ptr + (q * H + rows) * 4 + 2, mask=rmask, other=0.0)[:, None] * x2[None, :]
    out += tl.load(w_ih_ptr + (q * H + rows) * 4 + 3, mask=rmask, other=0.0)[:, None] * x3[None, :]
    return out + tl.load(bias_ptr + q * H + rows, mask=rmask, other=0.0)[:, None]


@triton.jit
def _meta_lstm_forward_kernel(theta_ptr, grad_ptr, loss_ptr, h_ptr, c_ptr, f_ptr, i_ptr,
                              w_ih_ptr, w_hh_ptr, bias_ptr, wf_ptr, wi_ptr, bf_ptr, bi_ptr,
                              theta_out_ptr, h_out_ptr, c_out_ptr, f_out_ptr, i_out_ptr,
                              N, P, threshold, p, scale,
                              H: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < N
    rows = tl.arange(0, HP)
    rmask = rows < H
    state_mask = rmask[:, None] & cmask[None, :]
    state_offsets = rows[:, None] * N + cols[None, :]
    theta = tl.load(theta_ptr + cols, mask=cmask, other=0.0)
    grad = tl.load(grad_ptr + cols, mask=cmask, other=0.0)
    x0, x1 = _preprocess(grad, threshold, p, scale)
    x2, x3 = _preprocess(tl.load(loss_ptr + cols // P, mask=cmask, other=0.0), threshold, p, scale)
    h = tl.load(h_ptr + state_offsets, mask=state_mask, other=0.0)
    c = tl.load(c_ptr + state_offsets, mask=state_mask, other=0.0)
    in_gate = tl.sigmoid(_gate(0, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    forget_gate = tl.sigmoid(_gate(1, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    cell_gate = _tanh(_gate(2, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    out_gate = tl.sigmoid(_gate(3, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    c_next = forget_gate * c + in_gate * cell_gate
    h_next = out_gate * _tanh(c_next)
    tl.store(c_out_ptr + state_offsets, c_next, mask=state_mask)
    tl.store(h_out_ptr + state_offsets, h_next, mask=state_mask)
    wf = tl.load(wf_ptr + rows, mask=rmask, other=0.0)
    wi = tl.load(wi_ptr + rows, mask=rmask, other=0.0)
    f_next = (tl.sum(wf[:, None] * h_next, axis=0) + tl.load(wf_ptr + H) * theta
              + tl.load(wf_ptr + H + 1) * tl.load(f_ptr + cols, mask=cmask, other=0.0) + tl.load(bf_ptr))
    i_next = (tl.sum(wi[:, None] * h_next, axis=0) + tl.load(wi_ptr + H) * theta
              + tl.load(wi_ptr + H + 1) * tl.load(i_ptr + cols, mask=cmask, other=0.0) + tl.load(bi_ptr))
    tl.store(theta_out_ptr + cols, tl.sigmoid(f_next) * theta - tl.sigmoid(i_next) * grad, mask=cmask)
    tl.store(f_out_ptr + cols, f_next, mask=cmask)
    tl.store(i_out_ptr + cols, i_next, mask=cmask)


@triton.jit
def _store_gate_grads(q: tl.constexpr, d_gate, h, x0, x1, x2, x3, w_hh_ptr, part_ptr, rows, rmask,
                      H: tl.constexpr):
    """This block's gradients of gate q's weights (row-major [4H, 4], [4H, H], [4H] areas of the block's row
    of the partial sums); returns W_hh[q]^T d_gate, gate q's share of d h_{t-1}."""
    w = tl.load(w_hh_ptr + (q * H + rows)[:, None] * H + rows[None, :], mask=rmask[:, None] & rmask[None, :], other=0.0)
    d_w_hh = tl.dot(d_gate, tl.trans(h), input_precision="ieee")
    tl.store(part_ptr + 16 * H + (q * H + rows)[:, None] * H + rows[None, :], d_w_hh,
             mask=rmask[:, None] & rmask[None, :])
    tl.store(part_ptr + (q * H + rows) * 4 + 0, tl.sum(d_gate * x0[None, :], axis=1), mask=rmask)
    tl.store(part_ptr + (q * H + rows) * 4 + 1, tl.sum(d_gate * x1[None, :], axis=1), mask=rmask)
    tl.store(part_ptr + (q * H + rows) * 4 + 2, tl.sum(d_gate * x2[None, :], axis=1), mask=rmask)
    tl.store(part_ptr + (q * H + rows) * 4 + 3, tl.sum(d_gate * x3[None, :], axis=1), mask=rmask)
    tl.store(part_ptr + 16 * H + 4 * H * H + q * H + rows, tl.sum(d_gate, axis=1), mask=rmask)
    return tl.dot(tl.trans(w), d_gate, input_precision="ieee")


@triton.jit
def _meta_lstm_backward_kernel(d_theta_out_ptr, d_h_out_ptr, d_c_out_ptr, d_f_out_ptr, d_i_out_ptr,
                               theta_ptr, grad_ptr, loss_ptr, h_ptr, c_ptr, f_ptr, i_ptr, f_next_ptr, i_next_ptr,
                               w_ih_ptr, w_hh_ptr, bias_ptr, wf_ptr, wi_ptr,
                               d_theta_ptr, d_h_ptr, d_c_ptr, d_f_ptr, d_i_ptr, partial_ptr, n_partial,
                               N, P, threshold, p, scale,
                               H: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < N
    rows = tl.arange(0, HP)
    rmask = rows < H
    state_mask = rmask[:, None] & cmask[None, :]
    state_offsets = rows[:, None] * N + cols[None, :]
    part_ptr = partial_ptr + block * n_partial
    # Layer 2 (masked columns load zeros, gradients included: they add nothing to the sums).
    theta = tl.load(theta_ptr + cols, mask=cmask, other=0.0)
    grad = tl.load(grad_ptr + cols, mask=cmask, other=0.0)
    f_prev = tl.load(f_ptr + cols, mask=cmask, other=0.0)
    i_prev = tl.load(i_ptr + cols, mask=cmask, other=0.0)
    s_f = tl.sigmoid(tl.load(f_next_ptr + cols, mask=cmask, other=0.0))
    s_i = tl.sigmoid(tl.load(i_next_ptr + cols, mask=cmask, other=0.0))
    d_theta_next = tl.load(d_theta_out_ptr + cols, mask=cmask, other=0.0)
    d_f = tl.load(d_f_out_ptr + cols, mask=cmask, other=0.0) + d_theta_next * theta * s_f * (1.0 - s_f)
    d_i = tl.load(d_i_out_ptr + cols, mask=cmask, other=0.0) - d_theta_next * grad * s_i * (1.0 - s_i)
    tl.store(d_theta_ptr + cols, d_theta_next * s_f + d_f * tl.load(wf_ptr + H) + d_i * tl.load(wi_ptr + H), mask=cmask)
    tl.store(d_f_ptr + cols, d_f * tl.load(wf_ptr + H + 1), mask=cmask)
    tl.store(d_i_ptr + cols, d_i * tl.load(wi_ptr + H + 1), mask=cmask)
    # Layer 1, recomputed.
    x0, x1 = _preprocess(grad, threshold, p, scale)
    x2, x3 = _preprocess(tl.load(loss_ptr + cols // P, mask=cmask, other=0.0), threshold, p, scale)
    h = tl.load(h_ptr + state_offsets, mask=state_mask, other=0.0)
    c = tl.load(c_ptr + state_offsets, mask=state_mask, other=0.0)
    in_gate = tl.sigmoid(_gate(0, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    forget_gate = tl.sigmoid(_gate(1, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    cell_gate = _tanh(_gate(2, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    out_gate = tl.sigmoid(_gate(3, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H))
    c_next = forget_gate * c + in_gate * cell_gate
    tanh_c = _tanh(c_next)
    h_next = out_gate * tanh_c
    wf = tl.load(wf_ptr + rows, mask=rmask, other=0.0)
    wi = tl.load(wi_ptr + rows, mask=rmask, other=0.0)
    layer2 = 16 * H + 4 * H * H + 4 * H  # offset of W_F's gradient in the block's row
    tl.store(part_ptr + layer2 + rows, tl.sum(d_f[None, :] * h_next, axis=1), mask=rmask)
    tl.store(part_ptr + layer2 + H, tl.sum(d_f * theta))
    tl.store(part_ptr + layer2 + H + 1, tl.sum(d_f * f_prev))
    tl.store(part_ptr + layer2 + H + 2 + rows, tl.sum(d_i[None, :] * h_next, axis=1), mask=rmask)
    tl.store(part_ptr + layer2 + 2 * H + 2, tl.sum(d_i * theta))
    tl.store(part_ptr + layer2 + 2 * H + 3, tl.sum(d_i * i_prev))
    tl.store(part_ptr + layer2 + 2 * H + 4, tl.sum(d_f))
    tl.store(part_ptr + layer2 + 2 * H + 5, tl.sum(d_i))
    d_h_next = (tl.load(d_h_out_ptr + state_offsets, mask=state_mask, other=0.0)
                + wf[:, None] * d_f[None, :] + wi[:, None] * d_i[None, :])
    d_c_next = (tl.load(d_c_out_ptr + state_offsets, mask=state_mask, other=0.0)
                + d_h_next * out_gate * (1.0 - tanh_c * tanh_c))
    tl.store(d_c_ptr + state_offsets, d_c_next * forget_gate, mask=state_mask)
    d_h = _store_gate_grads(0, d_c_next * cell_gate * in_gate * (1.0 - in_gate), h, x0, x1, x2, x3, w_hh_ptr,
                            part_ptr, rows, rmask, H)
    d_h += _store_gate_grads(1, d_c_next * c * forget_gate * (1.0 - forget_gate), h, x0, x1, x2, x3, w_hh_ptr,
                             part_ptr, rows, rmask, H)
    d_h += _store_gate_grads(2, d_c_next * in_gate * (1.0 - cell_gate * cell_gate), h, x0, x1, x2, x3, w_hh_ptr,
                             part_ptr, rows, rmask, H)
    d_h += _store_gate_grads(3, d_h_next * tanh_c * out_gate * (1.0 - out_gate), h, x0, x1, x2, x3, w_hh_ptr,
                             part_ptr, rows, rmask, H)
    tl.store(d_h_ptr + state_offsets, d_h, mask=state_mask)


def meta_lstm_forward(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                      weights: tuple[Tensor, ...], p: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """As :func:`fewshot_l2l.kernels.cpu.meta_lstm_forward`, on float32 tensors of a Triton device."""
    batch, n_params = theta.shape
    hidden = h.shape[0]
    outputs = (torch.empty_like(theta), torch.empty_like(h), torch.empty_like(c), torch.empty_like(f), torch.empty_like(i))
    n = batch * n_params
    _meta_lstm_forward_kernel[(triton.cdiv(n, BLOCK),)](
        theta, grad, loss, h, c, f, i, *weights, *outputs, n, n_params, math.exp(-p), p, math.exp(p),
        H=hidden, HP=_padded(hidden), BLOCK=BLOCK)
    return outputs


def meta_lstm_backward(d_theta_next: Tensor, d_h_next: Tensor, d_c_next: Tensor, d_f_next: Tensor, d_i_next: Tensor,
                       theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                       f_next: Tensor, i_next: Tensor, weights: tuple[Tensor, ...], p: float) -> tuple[Tensor, ...]:
    """As :func:`fewshot_l2l.kernels.cpu.meta_lstm_backward`, on float32 tensors of a Triton device."""
    batch, n_params = theta.shape
    hidden = h.shape[0]
    n = batch * n_params
    blocks = triton.cdiv(n, BLOCK)
    n_partial = 4 * hidden * (hidden + 5) + 2 * (hidden + 2) + 2
    partial = torch.empty(blocks, n_partial, dtype=theta.dtype, device=theta.device)
    inputs = (torch.empty_like(theta), torch.empty_like(h), torch.empty_like(c), torch.empty_like(f), torch.empty_like(i))
    weight_ih, weight_hh, bias, weight_forget, weight_input = weights[:5]
    _meta_lstm_backward_kernel[(blocks,)](
        d_theta_next, d_h_next, d_c_next, d_f_next, d_i_next, theta, grad, loss, h, c, f, i, f_next, i_next,
        weight_ih, weight_hh, bias, weight_forget, weight_input, *inputs, partial, n_partial,
        n, n_params, math.exp(-p), p, math.exp(p), H=hidden, HP=_padded(hidden), BLOCK=BLOCK)
    sums = partial.sum(0)
    sizes = (4 * hidden * 4, 4 * hidden * hidden, 4 * hidden, hidden + 2, hidden + 2, 1, 1)
    # Separate tensors: a custom operator's outputs may not alias one another.
    d_weights = [piece.view_as(weight).clone() for piece, weight in zip(sums.split(sizes), weights)]
    return (*inputs, *d_weights)
