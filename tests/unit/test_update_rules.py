"""The update rules against naive references: nn.LSTMCell per coordinate, and the Meta-LSTM step module itself."""

import math

import pytest
import torch
from torch import nn

from fewshot_l2l.meta_learner import MetaLearner, MetaLSTM, MetaLSTMState, meta_lstm_from_state_dict
from fewshot_l2l.optim.rules import AndrychowiczRule, MetaLSTMRule
from fewshot_l2l.optim import build_rule


def prep(x: float, p: float = 10.0) -> list[float]:
    if abs(x) >= math.exp(-p):
        return [math.log(abs(x)) / p, math.copysign(1.0, x)]
    return [-1.0, math.exp(p) * x]


def lstm_cell_like(layer, dtype=torch.float64) -> nn.LSTMCell:
    """An nn.LSTMCell with the weights of a CoordinateLSTMCell (its bias goes to bias_ih)."""
    cell = nn.LSTMCell(layer.input_size, layer.hidden_size).to(dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(layer.weight_ih)
        cell.weight_hh.copy_(layer.weight_hh)
        cell.bias_ih.copy_(layer.bias)
        cell.bias_hh.zero_()
    return cell


def test_andrychowicz_rule_matches_per_coordinate_lstmcell_reference():
    torch.manual_seed(2)
    rule = AndrychowiczRule(hidden_size=5).double()
    with torch.no_grad():
        rule.output.weight.uniform_(-1, 1)
        rule.output.bias.fill_(0.3)
    cell1, cell2 = lstm_cell_like(rule.layer1), lstm_cell_like(rule.layer2)
    B, P, H = 2, 3, 5
    theta = torch.randn(B, P, dtype=torch.float64)
    # Gradients on both sides of the preprocessing threshold e^-10.
    grads = [torch.randn(B, P, dtype=torch.float64) * 10.0 ** torch.randint(-6, 2, (B, P)) for _ in range(3)]
    grads[1][0, 0] = 1e-6

    state = rule.initial_state(theta)
    fast = theta
    for grad in grads:
        fast, state = rule(fast, grad, None, state)

    for b in range(B):
        for j in range(P):  # one coordinate at a time, with nn.LSTMCell
            value = theta[b, j].item()
            s1 = (torch.zeros(1, H, dtype=torch.float64), torch.zeros(1, H, dtype=torch.float64))
            s2 = (torch.zeros(1, H, dtype=torch.float64), torch.zeros(1, H, dtype=torch.float64))
            for grad in grads:
                x = torch.tensor([prep(grad[b, j].item())], dtype=torch.float64)
                s1 = cell1(x, s1)
                s2 = cell2(s1[0], s2)
                value += 0.1 * (rule.output(s2[0]).item())
            assert fast[b, j].item() == pytest.approx(value, abs=1e-10)
    assert state.h2.shape == (B, P, H)
    assert not torch.allclose(fast, theta)


def test_andrychowicz_rule_is_differentiable_in_its_weights():
    rule = AndrychowiczRule(hidden_size=4)
    theta = torch.randn(3, 6)
    state = rule.initial_state(theta)
    for _ in range(2):
        theta, state = rule(theta, torch.randn(3, 6), None, state)
    theta.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rule.parameters())


def test_meta_lstm_rule_is_the_meta_learner_step():
    torch.manual_seed(0)
    meta = MetaLearner(torch.zeros(7), hidden_size=4)
    rule = MetaLSTMRule(meta)
    theta, grad, loss = torch.randn(2, 5), torch.randn(2, 5), torch.rand(2)
    state = rule.initial_state(theta)
    expected, expected_state = meta(theta, grad, loss, meta.initial_state(theta))
    got, got_state = rule(theta, grad, loss, tuple(state))
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(got_state, expected_state))
    assert isinstance(got_state, MetaLSTMState)
    with pytest.raises(ValueError, match="MetaLSTMRule.*loss"):
        rule(theta, grad, None, state)


def test_fresh_meta_lstm_rule_holds_only_the_update_weights():
    rule = MetaLSTMRule(hidden_size=3)
    names = [name for name, _ in rule.named_parameters()]
    assert names == [f"meta_lstm.{name}" for name in ("lstm.weight_ih", "lstm.weight_hh", "lstm.bias", "cell.weight_forget",
                                                       "cell.weight_input", "cell.bias_forget", "cell.bias_input")]
    assert all(param.requires_grad for param in rule.parameters())
    assert rule.needs_loss and not AndrychowiczRule().needs_loss


def test_bad_inputs_are_reported():
    rule = AndrychowiczRule(hidden_size=3)
    theta = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="AndrychowiczRule: theta and grad"):
        rule(theta, torch.zeros(2, 5), None, rule.initial_state(theta))
    with pytest.raises(ValueError, match="AndrychowiczRule: loss"):
        rule(theta, theta, torch.zeros(3), rule.initial_state(theta))
    with pytest.raises(ValueError, match="hidden_size"):
        AndrychowiczRule(hidden_size=0)
    with pytest.raises(ValueError, match="build_rule: unknown rule 'adamw'"):
        build_rule({"rule": "adamw"})


def test_build_rule_round_trips_config():
    rule = AndrychowiczRule(hidden_size=6, output_scale=0.05)
    copy = build_rule(rule.config())
    copy.load_state_dict(rule.state_dict())
    theta, grad = torch.randn(1, 4), torch.randn(1, 4)
    assert torch.equal(rule(theta, grad, None, rule.initial_state(theta))[0], copy(theta, grad, None, copy.initial_state(theta))[0])
    assert build_rule(MetaLSTMRule(hidden_size=5).config()).meta_lstm.hidden_size == 5


def test_meta_lstm_rule_from_a_few_shot_checkpoint(tmp_path):
    from fewshot_l2l.optim import LearnedOptimizer
    from fewshot_l2l.checkpoints import checkpoint_state
    from fewshot_l2l.files import atomic_torch_save
    from fewshot_l2l.methods import build_method, new_learner
    from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig

    config = MetaLSTMConfig(n_way=3, hidden_size=4, hidden_channels=2)
    method = build_method(config, new_learner(config, (1, 16, 16)))
    meta = method.meta_learner
    atomic_torch_save(checkpoint_state(method, torch.optim.Adam(meta.parameters()), {}, {}), tmp_path / "best.pt")
    rule = MetaLSTMRule.from_checkpoint(tmp_path / "best.pt")
    assert type(rule.meta_lstm) is MetaLSTM  # the step module alone: the learner's theta_0 is no part of the rule
    for name, value in rule.meta_lstm.state_dict().items():
        assert torch.equal(value, meta.state_dict()[name]), name
    rebuilt = build_rule(rule.config())
    rebuilt.load_state_dict(rule.state_dict())
    assert torch.equal(rebuilt.meta_lstm.lstm.weight_ih, meta.lstm.weight_ih)
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    optimizer = LearnedOptimizer(model.parameters(), rule)
    loss = model(torch.ones(4, 3)).pow(2).mean()
    loss.backward()
    optimizer.step(loss=loss)
    # At initialization the gates give sigmoid(f) ~ 1 and a small sigmoid(i): a small step against the gradient.
    step = model.weight.detach() - before
    assert (step * model.weight.grad).sum() < 0


def test_meta_lstm_rule_loads_state_dicts_saved_before_the_step_module(tmp_path):
    torch.manual_seed(5)
    meta = MetaLearner(torch.zeros(1), hidden_size=3)
    old_format = {f"meta_learner.{name}": value for name, value in meta.state_dict().items()}
    old_format["meta_learner.theta_init"] = torch.zeros(0)  # what MetaLSTMRule held before: theta_init empty
    rule = MetaLSTMRule(hidden_size=3)
    rule.load_state_dict(old_format)
    for name, value in meta.state_dict().items():
        if name != "theta_init":
            assert torch.equal(rule.meta_lstm.state_dict()[name], value), name


def test_rule_from_a_state_dict_and_bad_checkpoints(tmp_path):
    meta = MetaLearner(torch.zeros(6), hidden_size=4)
    rule = meta_lstm_from_state_dict(meta.state_dict())
    assert rule.hidden_size == 4 and "theta_init" not in rule.state_dict()
    with pytest.raises(ValueError, match="lstm.weight_hh"):
        meta_lstm_from_state_dict({"theta_init": torch.zeros(6)})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        MetaLSTMRule.from_checkpoint(tmp_path / "missing.pt")
    torch.save({"rule": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a few-shot checkpoint"):
        MetaLSTMRule.from_checkpoint(tmp_path / "other.pt")
