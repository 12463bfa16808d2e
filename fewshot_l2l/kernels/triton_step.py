"""The fused steps as Triton kernels (the ``cuda`` backend of :mod:`fewshot_l2l.kernels`), float32.

One program per block of ``BLOCK`` coordinates (columns of the ``[hidden, N]`` states, ``N = B P``): an LSTM
layer's gates are ``[hidden, hidden] x [hidden, BLOCK]`` products (``tl.dot`` in IEEE float32, not TF32) plus
the preprocessed inputs, then the cell and what follows it, in registers. The backward recomputes the forward
from the step's inputs and writes each block's weight gradients to one row of a partial-sum buffer that torch
sums over blocks (deterministic, no atomics). Without a GPU these kernels run on CPU tensors under Triton's
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


def _check_size(hidden: int, n: int) -> None:
    """The kernels index the ``[hidden, N]`` states with 32-bit offsets."""
    if hidden * n >= 2**31:
        raise ValueError(f"fewshot_l2l.kernels.triton_step: hidden x coordinates = {hidden} x {n} is 2^31 or more, beyond "
                         "the kernels' 32-bit offsets; step fewer coordinates at a time or use step_kernel='torch'")


# ---- building blocks ----

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
def _square(w_ptr, q: tl.constexpr, rows, rmask, H: tl.constexpr):
    """Rows q H .. q H + H - 1 of a [4H, H] weight (gate q's block), zero-padded to [HP, HP]."""
    return tl.load(w_ptr + (q * H + rows)[:, None] * H + rows[None, :], mask=rmask[:, None] & rmask[None, :], other=0.0)


@triton.jit
def _column(w_ptr, q: tl.constexpr, m: tl.constexpr, width: tl.constexpr, rows, rmask, H: tl.constexpr):
    """Column m of gate q's rows of a [4H, width] weight, as a [HP, 1] operand."""
    return tl.load(w_ptr + (q * H + rows) * width + m, mask=rmask, other=0.0)[:, None]


@triton.jit
def _bias(b_ptr, q: tl.constexpr, rows, rmask, H: tl.constexpr):
    return tl.load(b_ptr + q * H + rows, mask=rmask, other=0.0)[:, None]


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _cell(gi, gf, gc, go, c):
    """The LSTM cell from its gate pre-activations: (sigma(i), sigma(f), tanh(g), sigma(o), c', tanh(c'), h')."""
    si = tl.sigmoid(gi)
    sf = tl.sigmoid(gf)
    tc = _tanh(gc)
    so = tl.sigmoid(go)
    c_next = sf * c + si * tc
    tanh_c = _tanh(c_next)
    return si, sf, tc, so, c_next, tanh_c, so * tanh_c


@triton.jit
def _cell_backward(si, sf, tc, so, c, tanh_c, d_h_next, d_c_next):
    """From the gradients of h' and c': those of the four gate pre-activations and of c."""
    d_c_next += d_h_next * so * (1.0 - tanh_c * tanh_c)
    return (d_c_next * tc * si * (1.0 - si), d_c_next * c * sf * (1.0 - sf), d_c_next * si * (1.0 - tc * tc),
            d_h_next * tanh_c * so * (1.0 - so), d_c_next * sf)


@triton.jit
def _store_square_grad(part_ptr, q: tl.constexpr, d_gate, inputs, rows, rmask, H: tl.constexpr):
    """This block's gradient of gate q's rows of a [4H, H] weight: d_gate [HP, BLOCK] x inputs^T."""
    tl.store(part_ptr + (q * H + rows)[:, None] * H + rows[None, :], _dot(d_gate, tl.trans(inputs)),
             mask=rmask[:, None] & rmask[None, :])


@triton.jit
def _store_column_grad(part_ptr, q: tl.constexpr, m: tl.constexpr, width: tl.constexpr, d_gate, x, rows, rmask,
                       H: tl.constexpr):
    tl.store(part_ptr + (q * H + rows) * width + m, tl.sum(d_gate * x[None, :], axis=1), mask=rmask)


@triton.jit
def _store_bias_grad(part_ptr, q: tl.constexpr, d_gate, rows, rmask, H: tl.constexpr):
    tl.store(part_ptr + q * H + rows, tl.sum(d_gate, axis=1), mask=rmask)


# ---- the Meta-LSTM step ----

@triton.jit
def _meta_gate(q: tl.constexpr, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H: tl.constexpr):
    """Pre-activation of layer-1 gate q (input, forget, cell, output): [HP, BLOCK]."""
    out = _dot(_square(w_hh_ptr, q, rows, rmask, H), h) + _bias(bias_ptr, q, rows, rmask, H)
    out += _column(w_ih_ptr, q, 0, 4, rows, rmask, H) * x0[None, :] + _column(w_ih_ptr, q, 1, 4, rows, rmask, H) * x1[None, :]
    return out + _column(w_ih_ptr, q, 2, 4, rows, rmask, H) * x2[None, :] + _column(w_ih_ptr, q, 3, 4, rows, rmask, H) * x3[None, :]


@triton.jit
def _meta_layer1(grad, loss, h, c, w_ih_ptr, w_hh_ptr, bias_ptr, threshold, p, scale, rows, rmask, H: tl.constexpr):
    x0, x1 = _preprocess(grad, threshold, p, scale)
    x2, x3 = _preprocess(loss, threshold, p, scale)
    gi = _meta_gate(0, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H)
    gf = _meta_gate(1, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H)
    gc = _meta_gate(2, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H)
    go = _meta_gate(3, h, x0, x1, x2, x3, w_ih_ptr, w_hh_ptr, bias_ptr, rows, rmask, H)
    si, sf, tc, so, c_next, tanh_c, h_next = _cell(gi, gf, gc, go, c)
    return x0, x1, x2, x3, si, sf, tc, so, c_next, tanh_c, h_next


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
    h = tl.load(h_ptr + state_offsets, mask=state_mask, other=0.0)
    c = tl.load(c_ptr + state_offsets, mask=state_mask, other=0.0)
    _, _, _, _, _, _, _, _, c_next, _, h_next = _meta_layer1(
        grad, tl.load(loss_ptr + cols // P, mask=cmask, other=0.0), h, c, w_ih_ptr, w_hh_ptr, bias_ptr, threshold, p,
        scale, rows, rmask, H)
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
    # The block's row of partial sums: [4H, 4] [4H, H] [4H] for layer 1, then W_F [H + 2], W_I [H + 2], b_F, b_I.
    part_ptr = partial_ptr + block * n_partial
    layer2 = 16 * H + 4 * H * H + 4 * H
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
    h = tl.load(h_ptr + state_offsets, mask=state_mask, other=0.0)
    c = tl.load(c_ptr + state_offsets, mask=state_mask, other=0.0)
    x0, x1, x2, x3, si, sf, tc, so, c_next, tanh_c, h_next = _meta_layer1(
        grad, tl.load(loss_ptr + cols // P, mask=cmask, other=0.0), h, c, w_ih_ptr, w_hh_ptr, bias_ptr, threshold, p,
        scale, rows, rmask, H)
    wf = tl.load(wf_ptr + rows, mask=rmask, other=0.0)
    wi = tl.load(wi_ptr + rows, mask=rmask, other=0.0)
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
    dgi, dgf, dgc, dgo, d_c = _cell_backward(si, sf, tc, so, c, tanh_c, d_h_next,
                                             tl.load(d_c_out_ptr + state_offsets, mask=state_mask, other=0.0))
    tl.store(d_c_ptr + state_offsets, d_c, mask=state_mask)
    d_h = _dot(tl.trans(_square(w_hh_ptr, 0, rows, rmask, H)), dgi) + _dot(tl.trans(_square(w_hh_ptr, 1, rows, rmask, H)), dgf)
    d_h += _dot(tl.trans(_square(w_hh_ptr, 2, rows, rmask, H)), dgc) + _dot(tl.trans(_square(w_hh_ptr, 3, rows, rmask, H)), dgo)
    tl.store(d_h_ptr + state_offsets, d_h, mask=state_mask)
    _meta_layer1_grads(part_ptr, 0, dgi, h, x0, x1, x2, x3, rows, rmask, H)
    _meta_layer1_grads(part_ptr, 1, dgf, h, x0, x1, x2, x3, rows, rmask, H)
    _meta_layer1_grads(part_ptr, 2, dgc, h, x0, x1, x2, x3, rows, rmask, H)
    _meta_layer1_grads(part_ptr, 3, dgo, h, x0, x1, x2, x3, rows, rmask, H)


@triton.jit
def _meta_layer1_grads(part_ptr, q: tl.constexpr, d_gate, h, x0, x1, x2, x3, rows, rmask, H: tl.constexpr):
    _store_column_grad(part_ptr, q, 0, 4, d_gate, x0, rows, rmask, H)
    _store_column_grad(part_ptr, q, 1, 4, d_gate, x1, rows, rmask, H)
    _store_column_grad(part_ptr, q, 2, 4, d_gate, x2, rows, rmask, H)
    _store_column_grad(part_ptr, q, 3, 4, d_gate, x3, rows, rmask, H)
    _store_square_grad(part_ptr + 16 * H, q, d_gate, h, rows, rmask, H)
    _store_bias_grad(part_ptr + 16 * H + 4 * H * H, q, d_gate, rows, rmask, H)


# ---- the step of Andrychowicz et al.'s LSTM optimizer ----

@triton.jit
def _andrychowicz_layers(grad, h1, c1, h2, c2, w_ih1_ptr, w_hh1_ptr, b1_ptr, w_ih2_ptr, w_hh2_ptr, b2_ptr,
                         threshold, p, scale, rows, rmask, H: tl.constexpr):
    x0, x1 = _preprocess(grad, threshold, p, scale)
    si1, sf1, tc1, so1, c1_next, tanh_c1, h1_next = _cell(
        _dot(_square(w_hh1_ptr, 0, rows, rmask, H), h1) + _column(w_ih1_ptr, 0, 0, 2, rows, rmask, H) * x0[None, :]
        + _column(w_ih1_ptr, 0, 1, 2, rows, rmask, H) * x1[None, :] + _bias(b1_ptr, 0, rows, rmask, H),
        _dot(_square(w_hh1_ptr, 1, rows, rmask, H), h1) + _column(w_ih1_ptr, 1, 0, 2, rows, rmask, H) * x0[None, :]
        + _column(w_ih1_ptr, 1, 1, 2, rows, rmask, H) * x1[None, :] + _bias(b1_ptr, 1, rows, rmask, H),
        _dot(_square(w_hh1_ptr, 2, rows, rmask, H), h1) + _column(w_ih1_ptr, 2, 0, 2, rows, rmask, H) * x0[None, :]
        + _column(w_ih1_ptr, 2, 1, 2, rows, rmask, H) * x1[None, :] + _bias(b1_ptr, 2, rows, rmask, H),
        _dot(_square(w_hh1_ptr, 3, rows, rmask, H), h1) + _column(w_ih1_ptr, 3, 0, 2, rows, rmask, H) * x0[None, :]
        + _column(w_ih1_ptr, 3, 1, 2, rows, rmask, H) * x1[None, :] + _bias(b1_ptr, 3, rows, rmask, H),
        c1)
    si2, sf2, tc2, so2, c2_next, tanh_c2, h2_next = _cell(
        _dot(_square(w_ih2_ptr, 0, rows, rmask, H), h1_next) + _dot(_square(w_hh2_ptr, 0, rows, rmask, H), h2)
        + _bias(b2_ptr, 0, rows, rmask, H),
        _dot(_square(w_ih2_ptr, 1, rows, rmask, H), h1_next) + _dot(_square(w_hh2_ptr, 1, rows, rmask, H), h2)
        + _bias(b2_ptr, 1, rows, rmask, H),
        _dot(_square(w_ih2_ptr, 2, rows, rmask, H), h1_next) + _dot(_square(w_hh2_ptr, 2, rows, rmask, H), h2)
        + _bias(b2_ptr, 2, rows, rmask, H),
        _dot(_square(w_ih2_ptr, 3, rows, rmask, H), h1_next) + _dot(_square(w_hh2_ptr, 3, rows, rmask, H), h2)
        + _bias(b2_ptr, 3, rows, rmask, H),
        c2)
    return (x0, x1, si1, sf1, tc1, so1, c1_next, tanh_c1, h1_next, si2, sf2, tc2, so2, c2_next, tanh_c2, h2_next)


@triton.jit
def _andrychowicz_forward_kernel(theta_ptr, grad_ptr, h1_ptr, c1_ptr, h2_ptr, c2_ptr,
                                 w_ih1_ptr, w_hh1_ptr, b1_ptr, w_ih2_ptr, w_hh2_ptr, b2_ptr, w_out_ptr, b_out_ptr,
                                 theta_out_ptr, h1_out_ptr, c1_out_ptr, h2_out_ptr, c2_out_ptr,
                                 N, threshold, p, scale, output_scale,
                                 H: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < N
    rows = tl.arange(0, HP)
    rmask = rows < H
    state_mask = rmask[:, None] & cmask[None, :]
    state_offsets = rows[:, None] * N + cols[None, :]
    theta = tl.load(theta_ptr + cols, mask=cmask, other=0.0)
    layers = _andrychowicz_layers(
        tl.load(grad_ptr + cols, mask=cmask, other=0.0), tl.load(h1_ptr + state_offsets, mask=state_mask, other=0.0),
        tl.load(c1_ptr + state_offsets, mask=state_mask, other=0.0),
        tl.load(h2_ptr + state_offsets, mask=state_mask, other=0.0),
        tl.load(c2_ptr + state_offsets, mask=state_mask, other=0.0), w_ih1_ptr, w_hh1_ptr, b1_ptr, w_ih2_ptr, w_hh2_ptr,
        b2_ptr, threshold, p, scale, rows, rmask, H)
    c1_next, h1_next, c2_next, h2_next = layers[6], layers[8], layers[13], layers[15]
    tl.store(c1_out_ptr + state_offsets, c1_next, mask=state_mask)
    tl.store(h1_out_ptr + state_offsets, h1_next, mask=state_mask)
    tl.store(c2_out_ptr + state_offsets, c2_next, mask=state_mask)
    tl.store(h2_out_ptr + state_offsets, h2_next, mask=state_mask)
    out = tl.sum(tl.load(w_out_ptr + rows, mask=rmask, other=0.0)[:, None] * h2_next, axis=0) + tl.load(b_out_ptr)
    tl.store(theta_out_ptr + cols, theta + out * output_scale, mask=cmask)


@triton.jit
def _andrychowicz_backward_kernel(d_theta_out_ptr, d_h1_out_ptr, d_c1_out_ptr, d_h2_out_ptr, d_c2_out_ptr,
                                  grad_ptr, h1_ptr, c1_ptr, h2_ptr, c2_ptr,
                                  w_ih1_ptr, w_hh1_ptr, b1_ptr, w_ih2_ptr, w_hh2_ptr, b2_ptr, w_out_ptr,
                                  d_theta_ptr, d_h1_ptr, d_c1_ptr, d_h2_ptr, d_c2_ptr, partial_ptr, n_partial,
                                  N, threshold, p, scale, output_scale,
                                  H: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < N
    rows = tl.arange(0, HP)
    rmask = rows < H
    state_mask = rmask[:, None] & cmask[None, :]
    state_offsets = rows[:, None] * N + cols[None, :]
    # The block's row of partial sums: layer 1 [4H, 2] [4H, H] [4H], layer 2 [4H, H] [4H, H] [4H], output [H] [1].
    part_ptr = partial_ptr + block * n_partial
    layer2 = 8 * H + 4 * H * H + 4 * H
    output = layer2 + 8 * H * H + 4 * H
    h1 = tl.load(h1_ptr + state_offsets, mask=state_mask, other=0.0)
    c1 = tl.load(c1_ptr + state_offsets, mask=state_mask, other=0.0)
    h2 = tl.load(h2_ptr + state_offsets, mask=state_mask, other=0.0)
    c2 = tl.load(c2_ptr + state_offsets, mask=state_mask, other=0.0)
    (x0, x1, si1, sf1, tc1, so1, c1_next, tanh_c1, h1_next,
     si2, sf2, tc2, so2, c2_next, tanh_c2, h2_next) = _andrychowicz_layers(
        tl.load(grad_ptr + cols, mask=cmask, other=0.0), h1, c1, h2, c2, w_ih1_ptr, w_hh1_ptr, b1_ptr, w_ih2_ptr,
        w_hh2_ptr, b2_ptr, threshold, p, scale, rows, rmask, H)
    d_theta_next = tl.load(d_theta_out_ptr + cols, mask=cmask, other=0.0)  # masked columns: zeros, adding nothing
    tl.store(d_theta_ptr + cols, d_theta_next, mask=cmask)
    d_out = d_theta_next * output_scale
    tl.store(part_ptr + output + rows, tl.sum(d_out[None, :] * h2_next, axis=1), mask=rmask)
    tl.store(part_ptr + output + H, tl.sum(d_out))
    d_h2_next = (tl.load(d_h2_out_ptr + state_offsets, mask=state_mask, other=0.0)
                 + tl.load(w_out_ptr + rows, mask=rmask, other=0.0)[:, None] * d_out[None, :])
    dgi, dgf, dgc, dgo, d_c2 = _cell_backward(si2, sf2, tc2, so2, c2, tanh_c2, d_h2_next,
                                              tl.load(d_c2_out_ptr + state_offsets, mask=state_mask, other=0.0))
    tl.store(d_c2_ptr + state_offsets, d_c2, mask=state_mask)
    d_h1_next = (_dot(tl.trans(_square(w_ih2_ptr, 0, rows, rmask, H)), dgi) + _dot(tl.trans(_square(w_ih2_ptr, 1, rows, rmask, H)), dgf)
                 + _dot(tl.trans(_square(w_ih2_ptr, 2, rows, rmask, H)), dgc) + _dot(tl.trans(_square(w_ih2_ptr, 3, rows, rmask, H)), dgo))
    d_h2 = (_dot(tl.trans(_square(w_hh2_ptr, 0, rows, rmask, H)), dgi) + _dot(tl.trans(_square(w_hh2_ptr, 1, rows, rmask, H)), dgf)
            + _dot(tl.trans(_square(w_hh2_ptr, 2, rows, rmask, H)), dgc) + _dot(tl.trans(_square(w_hh2_ptr, 3, rows, rmask, H)), dgo))
    tl.store(d_h2_ptr + state_offsets, d_h2, mask=state_mask)
    _andrychowicz_layer2_grads(part_ptr + layer2, 0, dgi, h1_next, h2, rows, rmask, H)
    _andrychowicz_layer2_grads(part_ptr + layer2, 1, dgf, h1_next, h2, rows, rmask, H)
    _andrychowicz_layer2_grads(part_ptr + layer2, 2, dgc, h1_next, h2, rows, rmask, H)
    _andrychowicz_layer2_grads(part_ptr + layer2, 3, dgo, h1_next, h2, rows, rmask, H)
    d_h1_next += tl.load(d_h1_out_ptr + state_offsets, mask=state_mask, other=0.0)
    dgi, dgf, dgc, dgo, d_c1 = _cell_backward(si1, sf1, tc1, so1, c1, tanh_c1, d_h1_next,
                                              tl.load(d_c1_out_ptr + state_offsets, mask=state_mask, other=0.0))
    tl.store(d_c1_ptr + state_offsets, d_c1, mask=state_mask)
    d_h1 = (_dot(tl.trans(_square(w_hh1_ptr, 0, rows, rmask, H)), dgi) + _dot(tl.trans(_square(w_hh1_ptr, 1, rows, rmask, H)), dgf)
            + _dot(tl.trans(_square(w_hh1_ptr, 2, rows, rmask, H)), dgc) + _dot(tl.trans(_square(w_hh1_ptr, 3, rows, rmask, H)), dgo))
    tl.store(d_h1_ptr + state_offsets, d_h1, mask=state_mask)
    _andrychowicz_layer1_grads(part_ptr, 0, dgi, h1, x0, x1, rows, rmask, H)
    _andrychowicz_layer1_grads(part_ptr, 1, dgf, h1, x0, x1, rows, rmask, H)
    _andrychowicz_layer1_grads(part_ptr, 2, dgc, h1, x0, x1, rows, rmask, H)
    _andrychowicz_layer1_grads(part_ptr, 3, dgo, h1, x0, x1, rows, rmask, H)


@triton.jit
def _andrychowicz_layer1_grads(part_ptr, q: tl.constexpr, d_gate, h1, x0, x1, rows, rmask, H: tl.constexpr):
    _store_column_grad(part_ptr, q, 0, 2, d_gate, x0, rows, rmask, H)
    _store_column_grad(part_ptr, q, 1, 2, d_gate, x1, rows, rmask, H)
    _store_square_grad(part_ptr + 8 * H, q, d_gate, h1, rows, rmask, H)
    _store_bias_grad(part_ptr + 8 * H + 4 * H * H, q, d_gate, rows, rmask, H)


@triton.jit
def _andrychowicz_layer2_grads(part_ptr, q: tl.constexpr, d_gate, h1_next, h2, rows, rmask, H: tl.constexpr):
    _store_square_grad(part_ptr, q, d_gate, h1_next, rows, rmask, H)
    _store_square_grad(part_ptr + 4 * H * H, q, d_gate, h2, rows, rmask, H)
    _store_bias_grad(part_ptr + 8 * H * H, q, d_gate, rows, rmask, H)


# ---- host side ----

def _weight_grads(partial: Tensor, weights: tuple[Tensor, ...]) -> list[Tensor]:
    """The partial sums of every block, summed and cut into the weights' shapes (separate tensors: a custom
    operator's outputs may not alias one another)."""
    sums = partial.sum(0)
    return [piece.view_as(weight).clone() for piece, weight in zip(sums.split([w.numel() for w in weights]), weights)]


def meta_lstm_forward(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                      weights: tuple[Tensor, ...], p: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """As :func:`fewshot_l2l.kernels.cpu.meta_lstm_forward`, on float32 tensors of a Triton device."""
    batch, n_params = theta.shape
    hidden = h.shape[0]
    _check_size(hidden, theta.numel())
    outputs = tuple(torch.empty_like(t) for t in (theta, h, c, f, i))
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
    _check_size(hidden, theta.numel())
    n = batch * n_params
    blocks = triton.cdiv(n, BLOCK)
    partial = torch.empty(blocks, sum(w.numel() for w in weights), dtype=theta.dtype, device=theta.device)
    inputs = tuple(torch.empty_like(t) for t in (theta, h, c, f, i))
    _meta_lstm_backward_kernel[(blocks,)](
        d_theta_next, d_h_next, d_c_next, d_f_next, d_i_next, theta, grad, loss, h, c, f, i, f_next, i_next,
        *weights[:5], *inputs, partial, partial.shape[1], n, n_params, math.exp(-p), p, math.exp(p),
        H=hidden, HP=_padded(hidden), BLOCK=BLOCK)
    return (*inputs, *_weight_grads(partial, weights))


def andrychowicz_forward(theta: Tensor, grad: Tensor, h1: Tensor, c1: Tensor, h2: Tensor, c2: Tensor,
                         weights: tuple[Tensor, ...], p: float, output_scale: float) -> tuple[Tensor, ...]:
    """As :func:`fewshot_l2l.kernels.cpu.andrychowicz_forward`, on float32 tensors of a Triton device."""
    hidden = h1.shape[0]
    _check_size(hidden, theta.numel())
    outputs = tuple(torch.empty_like(t) for t in (theta, h1, c1, h2, c2))
    n = theta.numel()
    _andrychowicz_forward_kernel[(triton.cdiv(n, BLOCK),)](
        theta, grad, h1, c1, h2, c2, *weights, *outputs, n, math.exp(-p), p, math.exp(p), output_scale,
        H=hidden, HP=_padded(hidden), BLOCK=BLOCK)
    return outputs


def andrychowicz_backward(output_grads: tuple[Tensor, ...], theta: Tensor, grad: Tensor, h1: Tensor, c1: Tensor,
                          h2: Tensor, c2: Tensor, weights: tuple[Tensor, ...], p: float,
                          output_scale: float) -> tuple[Tensor, ...]:
    """As :func:`fewshot_l2l.kernels.cpu.andrychowicz_backward`, on float32 tensors of a Triton device."""
    hidden = h1.shape[0]
    _check_size(hidden, theta.numel())
    n = theta.numel()
    blocks = triton.cdiv(n, BLOCK)
    partial = torch.empty(blocks, sum(w.numel() for w in weights), dtype=theta.dtype, device=theta.device)
    inputs = tuple(torch.empty_like(t) for t in (theta, h1, c1, h2, c2))
    _andrychowicz_backward_kernel[(blocks,)](
        *output_grads, grad, h1, c1, h2, c2, *weights[:7], *inputs, partial, partial.shape[1], n, math.exp(-p), p,
        math.exp(p), output_scale, H=hidden, HP=_padded(hidden), BLOCK=BLOCK)
    return (*inputs, *_weight_grads(partial, weights))
