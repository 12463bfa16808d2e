"""Global averaging cells, NTM-BFGS and the rule per layer type: against naive references and hand-checked numbers."""

import pytest
import torch

from fewshot_l2l.optim import LearnedOptimizer
from fewshot_l2l.optim.layout import ParamLayout, segment_mean
from fewshot_l2l.optim.ntm import NTMBFGSRule, memory_read, memory_write
from fewshot_l2l.optim.per_type import LayerTypeRule
from fewshot_l2l.optim.rules import AndrychowiczRule
from fewshot_l2l.optim import build_rule

LAYOUT = ParamLayout((3, 1, 4), ("conv", "fc", "conv"))


def step(rule, theta, grad, layout, steps=2):
    state = rule.initial_state(theta)
    for _ in range(steps):  # a non-zero state, then the step compared
        theta, state = rule(theta, grad, None, state, layout=layout)
    return theta, state


def test_segment_mean_equals_a_loop_over_tensors():
    values = torch.randn(2, 8, 3)
    expected = values.clone()
    start = 0
    for size in LAYOUT.sizes:
        for b in range(2):
            expected[b, start:start + size] = values[b, start:start + size].mean(dim=0)
        start += size
    assert torch.allclose(segment_mean(values, LAYOUT), expected, atol=1e-6)
    assert torch.allclose(segment_mean(values, None), values.mean(dim=1, keepdim=True).expand_as(values))


def test_tensor_scope_gac_equals_the_rule_run_on_each_tensor_alone():
    torch.manual_seed(0)
    rule = AndrychowiczRule(hidden_size=6, gac_cells=2, gac_scope="tensor")
    theta, grad = torch.randn(2, 8), torch.randn(2, 8)
    whole, _ = step(rule, theta, grad, LAYOUT)
    pieces, start = [], 0
    for size in LAYOUT.sizes:  # the naive reference: one call per tensor, the tensor as the whole problem
        pieces.append(step(rule, theta[:, start:start + size], grad[:, start:start + size], None)[0])
        start += size
    assert torch.allclose(whole, torch.cat(pieces, dim=1), atol=1e-6)
    model_scope = AndrychowiczRule(hidden_size=6, gac_cells=2, gac_scope="model")
    model_scope.load_state_dict(rule.state_dict())
    assert torch.allclose(step(model_scope, theta, grad, LAYOUT)[0], step(model_scope, theta, grad, None)[0])


def update_of_first(rule, grad, layout=LAYOUT):
    theta = torch.zeros(1, grad.shape[1])
    return (step(rule, theta, grad, layout, steps=1)[0] - theta)[0, 0]


def test_gac_makes_a_coordinate_depend_on_the_others_gradients():
    torch.manual_seed(1)
    plain = AndrychowiczRule(hidden_size=6)
    tensor_gac = AndrychowiczRule(hidden_size=6, gac_cells=2, gac_scope="tensor")
    model_gac = AndrychowiczRule(hidden_size=6, gac_cells=2, gac_scope="model")
    for rule in (tensor_gac, model_gac):
        rule.load_state_dict(plain.state_dict())
    grad = torch.full((1, 8), 0.1)
    same_tensor = grad.clone()
    same_tensor[0, 1] = 50.0  # coordinate 1 is in the first tensor, like coordinate 0
    other_tensor = grad.clone()
    other_tensor[0, 5] = 50.0  # coordinate 5 is in the third tensor
    # The plain rule cannot tell: coordinate 0's own gradient is unchanged (e.g. it cannot clip by the norm).
    assert update_of_first(plain, grad) == update_of_first(plain, same_tensor) == update_of_first(plain, other_tensor)
    assert update_of_first(tensor_gac, grad) != update_of_first(tensor_gac, same_tensor)
    assert update_of_first(tensor_gac, grad) == update_of_first(tensor_gac, other_tensor)
    assert update_of_first(model_gac, grad) != update_of_first(model_gac, other_tensor)


def test_gac_config_round_trip_and_plain_config_unchanged():
    assert AndrychowiczRule().config() == {"rule": "andrychowicz", "hidden_size": 20, "p": 10.0, "output_scale": 0.1}
    rule = AndrychowiczRule(hidden_size=4, gac_cells=3, gac_scope="model")
    copy = build_rule(rule.config())
    assert copy.config() == rule.config() and copy.kind == "andrychowicz-gac" and not copy.coordinatewise
    with pytest.raises(ValueError, match="gac_cells must be in"):
        AndrychowiczRule(hidden_size=4, gac_cells=5)
    with pytest.raises(ValueError, match="gac_scope must be one of"):
        AndrychowiczRule(gac_cells=1, gac_scope="layer")
    with pytest.raises(ValueError, match="andrychowicz-gac needs gac_cells >= 1"):
        build_rule({"rule": "andrychowicz-gac", "gac_cells": 0})


def test_memory_write_and_read_by_hand():
    memory = torch.ones(1, 2, 2)
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # P = 2 coordinates, K = 2
    w = torch.tensor([[[0.0, 2.0], [4.0, 0.0]]])
    # 0.5 * ones + (1/2) ([[0, 2], [0, 0]] + [[0, 0], [4, 0]])
    written = memory_write(memory, torch.tensor(0.5), a, w)
    assert torch.equal(written, torch.tensor([[[0.5, 1.5], [2.5, 0.5]]]))
    heads = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]]])  # [B=1, P=2, R=1, K=2]
    assert torch.equal(memory_read(written, heads), torch.tensor([[[[-1.0, 2.0]], [[3.0, 1.0]]]]))


def test_ntm_step_equals_a_per_coordinate_loop():
    torch.manual_seed(2)
    rule = NTMBFGSRule(hidden_size=5, gac_cells=1, memory_size=3, read_heads=2)
    theta, grad = torch.randn(2, 6), torch.randn(2, 6)
    _, state = step(rule, theta, grad, None, steps=1)
    theta_next, new = rule(theta, grad, None, state)
    assert new.memory.shape == (2, 3, 3) and new.read.shape == (2, 6, 6) and new.h1.shape == (2, 6, 5)
    from fewshot_l2l.preprocess import preprocess
    controller = rule.controller(torch.cat((preprocess(grad), state.read), dim=-1), state[:4], None)
    keep = torch.sigmoid(rule.decay_logit)
    for b in range(2):
        memory = keep * state.memory[b]
        for i in range(6):  # the naive loop over coordinates of the write
            a, w = torch.tanh(rule.write_heads(controller.h2[b, i])).chunk(2)
            memory = memory + torch.outer(a, w) / 6
        assert torch.allclose(new.memory[b], memory, atol=1e-6)
        for i in range(6):
            reads = torch.cat([memory @ q for q in rule.read_keys(controller.h2[b, i]).view(2, 3)])
            assert torch.allclose(new.read[b, i], reads, atol=1e-6)
            update = rule.output(torch.cat((controller.h2[b, i], reads))) * rule.output_scale
            assert torch.allclose(theta_next[b, i], theta[b, i] + update[0], atol=1e-6)


def test_ntm_gradients_reach_every_weight_and_memory_couples_coordinates():
    torch.manual_seed(3)
    rule = NTMBFGSRule(hidden_size=4, gac_cells=0, memory_size=2)
    theta, target = torch.randn(2, 5), torch.randn(2, 5)
    state = rule.initial_state(theta)
    total = 0
    for _ in range(3):
        theta = theta.detach().requires_grad_() if not theta.requires_grad else theta
        loss = (theta - target).pow(2).sum(1)
        (grad,) = torch.autograd.grad(loss.sum(), theta, retain_graph=True)
        theta, state = rule(theta, grad, None, state)
        total = total + (theta - target).pow(2).sum()
    total.backward()
    for name, weight in rule.named_parameters():
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name
    # Without GAC, only the memory lets coordinate 0 see coordinate 4's gradient (from the second step on).
    rule.zero_grad()
    g1, g2 = torch.full((1, 5), 0.1), torch.full((1, 5), 0.1)
    g2[0, 4] = 30.0
    with torch.no_grad():
        assert step(rule, torch.zeros(1, 5), g1, None)[0][0, 0] != step(rule, torch.zeros(1, 5), g2, None)[0][0, 0]
    assert build_rule(rule.config()).config() == rule.config()


def test_learned_optimizer_keeps_one_shared_memory_and_matches_the_rule():
    torch.manual_seed(4)
    rule = NTMBFGSRule(hidden_size=4, gac_cells=2, memory_size=2)
    weight, bias = torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(3))
    optimizer = LearnedOptimizer([weight, bias], rule)
    theta = torch.cat((weight.detach().flatten(), bias.detach()))[None]
    state = rule.initial_state(theta)
    layout = ParamLayout((6, 3))
    for _ in range(2):
        weight.grad, bias.grad = torch.ones(2, 3), torch.arange(3.0)
        optimizer.step()
        grad = torch.cat((torch.ones(6), torch.arange(3.0)))[None]
        theta, state = rule(theta, grad, None, state, layout=layout)
    assert torch.allclose(torch.cat((weight.detach().flatten(), bias.detach())), theta[0], atol=1e-6)
    assert torch.allclose(optimizer.state[weight]["shared:memory"], state.memory[0], atol=1e-6)
    assert "shared:memory" not in optimizer.state[bias] and "memory" not in optimizer.state[weight]
    copy = LearnedOptimizer([weight, bias], NTMBFGSRule(hidden_size=4, gac_cells=2, memory_size=2))
    copy.load_state_dict(optimizer.state_dict())
    assert torch.equal(copy.state[weight]["shared:memory"], optimizer.state[weight]["shared:memory"])


def test_layer_type_rule_steps_each_type_with_its_own_rule():
    torch.manual_seed(5)
    conv, fc = AndrychowiczRule(hidden_size=3, gac_cells=1), AndrychowiczRule(hidden_size=3, gac_cells=1)
    rule = LayerTypeRule({"conv": conv, "fc": fc})
    theta, grad = torch.randn(2, 8), torch.randn(2, 8)
    whole, _ = step(rule, theta, grad, LAYOUT)
    conv_index = torch.tensor([0, 1, 2, 4, 5, 6, 7])
    expected = torch.empty_like(theta)
    expected[:, conv_index] = step(conv, theta[:, conv_index], grad[:, conv_index], LAYOUT.select("conv"))[0]
    expected[:, 3:4] = step(fc, theta[:, 3:4], grad[:, 3:4], LAYOUT.select("fc"))[0]
    assert torch.allclose(whole, expected, atol=1e-6)
    assert build_rule(rule.config()).config() == rule.config()
    with pytest.raises(ValueError, match="needs the layout"):
        rule(theta, grad, None, rule.initial_state(theta))
    with pytest.raises(ValueError, match="states differ"):
        LayerTypeRule({"conv": conv, "fc": AndrychowiczRule(hidden_size=4)})
    # Through the optimizer: a group's layer_type decides (4-d tensors default to conv).
    kernel, dense = torch.nn.Parameter(torch.randn(2, 1, 1, 1)), torch.nn.Parameter(torch.randn(3))
    optimizer = LearnedOptimizer([{"params": [kernel]}, {"params": [dense], "layer_type": "fc"}], rule)
    kernel.grad, dense.grad = torch.ones_like(kernel), torch.ones_like(dense)
    before = torch.cat((kernel.detach().flatten(), dense.detach()))[None]
    optimizer.step()
    expected = rule(before, torch.ones(1, 5), None, rule.initial_state(before), layout=ParamLayout((2, 3), ("conv", "fc")))[0]
    assert torch.allclose(torch.cat((kernel.detach().flatten(), dense.detach())), expected[0], atol=1e-6)
    with pytest.raises(ValueError, match="layer_type must be one of"):
        LearnedOptimizer([{"params": [dense], "layer_type": "rnn"}], rule)
