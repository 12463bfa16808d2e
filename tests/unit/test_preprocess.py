import math

import pytest
import torch

from fewshot_l2l.preprocess import preprocess


def test_large_values_map_to_log_magnitude_and_sign():
    x = torch.tensor([2.5, -0.1, 1.0, -3e4], dtype=torch.float64)
    out = preprocess(x, p=10.0)
    for value, (first, second) in zip(x.tolist(), out.tolist()):
        assert first == pytest.approx(math.log(abs(value)) / 10.0, abs=1e-12)
        assert second == math.copysign(1.0, value)


def test_small_values_map_to_minus_one_and_scaled_value():
    x = torch.tensor([0.0, 1e-6, -2e-5, 4e-5], dtype=torch.float64)  # all below e^-10 = 4.54e-5
    out = preprocess(x, p=10.0)
    assert out[:, 0].tolist() == [-1.0] * 4
    assert torch.allclose(out[:, 1], x * math.exp(10.0), atol=0, rtol=1e-12)


def test_threshold_and_shape():
    threshold = math.exp(-10.0)
    x = torch.tensor([threshold * 1.0001, threshold * 0.9999], dtype=torch.float64)
    out = preprocess(x)
    assert out[0].tolist() == pytest.approx([math.log(threshold * 1.0001) / 10, 1.0])
    assert out[1].tolist() == pytest.approx([-1.0, threshold * 0.9999 * math.exp(10.0)])
    assert preprocess(torch.zeros(3, 4)).shape == (3, 4, 2)


def test_p_must_be_positive():
    with pytest.raises(ValueError, match="p must be positive"):
        preprocess(torch.ones(2), p=0)


def test_gradient_is_finite_at_zero():
    x = torch.zeros(3, requires_grad=True)
    preprocess(x).sum().backward()
    assert torch.isfinite(x.grad).all()
