"""The few-shot methods' equations (fine-tuning, Prototypical Networks, the MAML family) against naive or hand-written
references on tiny cases."""

import pytest
import torch
import torch.nn.functional as F

from fewshot_l2l.methods import build_method, method_config, new_learner
from fewshot_l2l.methods.finetune import (HEAD_BATCH, HEAD_DAMPENING, HEAD_EPOCHS, HEAD_LR, HEAD_MOMENTUM,
                                         HEAD_WEIGHT_DECAY, fit_linear_heads, support_orders)
from fewshot_l2l.methods.network import ConvNet
from fewshot_l2l.methods.protonet import prototype_logits
from fewshot_l2l.data.episodes import Episode, EpisodeSampler
from fewshot_l2l.learner import ConvLearner, LearnerConfig


def tiny_learner(n_way=3):
    learner = ConvLearner(LearnerConfig(1, 16, n_way, hidden_channels=2, n_blocks=2))
    theta = learner.init_params(torch.Generator().manual_seed(0)).double()
    return learner, theta + 0.1 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=theta.dtype)


def tiny_episode():
    g = torch.Generator().manual_seed(2)
    return Episode(torch.rand(1, 6, 1, 16, 16, generator=g, dtype=torch.float64), torch.tensor([[0, 1, 2, 0, 1, 2]]),
                   torch.rand(1, 9, 1, 16, 16, generator=g, dtype=torch.float64), torch.tensor([[0, 1, 2] * 3]))


def test_convnet_is_the_functional_learner_on_its_own_parameters():
    learner, theta = tiny_learner()
    net = ConvNet(learner, theta)
    images = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    assert torch.equal(net.theta(), theta)
    assert torch.allclose(net(images), learner.logits(theta, images), atol=0)
    assert [p.shape for p in net.parameters()] == [torch.Size(s) for _, s in learner.param_shapes]


def test_prototype_logits_equal_a_naive_computation():
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    expected = torch.empty(4, 3, dtype=torch.float64)
    for q in range(4):
        for k in range(3):
            members = [support[i] for i in range(7) if labels[i] == k]
            centre = sum(members) / len(members)
            expected[q, k] = -sum((query[q, d] - centre[d]) ** 2 for d in range(5))
    assert torch.allclose(prototype_logits(support, labels, query, 3), expected, atol=1e-12)


def toy_features(n_support_per_class=2):
    """Two episodes of 3 well-separated classes in 4 dimensions, with a small random starting head."""
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(2, 3, 4, generator=g)
    labels = torch.tensor([[0, 1, 2] * n_support_per_class] * 2)
    features = centres.gather(1, labels[:, :, None].expand(2, 3 * n_support_per_class, 4))
    features = features + 0.1 * torch.randn(features.shape, generator=g)
    return features, labels, (0.1 * torch.randn(2, 3, 4, generator=g), torch.zeros(2, 3))


def reference_head(features, labels, init, batches):
    """Chen et al.'s fit of one episode's head: a torch.nn.Linear and torch.optim.SGD, one step per index list."""
    head = torch.nn.Linear(features.shape[1], 3)
    with torch.no_grad():
        head.weight.copy_(init[0]), head.bias.copy_(init[1])
    sgd = torch.optim.SGD(head.parameters(), lr=HEAD_LR, momentum=HEAD_MOMENTUM, dampening=HEAD_DAMPENING,
                          weight_decay=HEAD_WEIGHT_DECAY)
    for index in batches:
        sgd.zero_grad()
        F.cross_entropy(head(features[index]), labels[index]).backward()
        sgd.step()
    return head


def test_full_batch_linear_heads_fit_a_separable_toy_and_each_episode_follows_its_own_gradient():
    features, labels, init = toy_features()
    weight, bias = fit_linear_heads(features, labels, 3, "full-batch", init=init)
    logits = torch.baddbmm(bias[:, None, :], features, weight.transpose(1, 2))
    assert torch.equal(logits.argmax(2), labels)
    for b in range(2):  # 100 steps on the whole support set
        head = reference_head(features[b], labels[b], (init[0][b], init[1][b]), [torch.arange(6)] * HEAD_EPOCHS)
        assert torch.allclose(weight[b], head.weight, atol=1e-5) and torch.allclose(bias[b], head.bias, atol=1e-5)


def test_mini_batch_linear_heads_equal_chen_et_als_loop_per_episode():
    """10 support images per episode: each epoch in its own random order, mini-batches of 4, 4 and 2 (the last one
    smaller, as their code's range(0, support_size, 4) gives), 300 steps in all, every episode its own order."""
    features, labels, init = toy_features(n_support_per_class=5)
    features, labels = features[:, :10], labels[:, :10]
    orders = support_orders(2, 10, HEAD_EPOCHS, torch.Generator().manual_seed(5))
    assert sorted(orders[7, 1].tolist()) == list(range(10)) and not torch.equal(orders[0, 0], orders[0, 1])
    weight, bias = fit_linear_heads(features, labels, 3, "mini-batches", init=init, orders=orders)
    for b in range(2):
        batches = [orders[epoch, b, start:start + HEAD_BATCH] for epoch in range(HEAD_EPOCHS) for start in (0, 4, 8)]
        assert [len(index) for index in batches[:3]] == [4, 4, 2]
        head = reference_head(features[b], labels[b], (init[0][b], init[1][b]), batches)
        assert torch.allclose(weight[b], head.weight, atol=1e-5) and torch.allclose(bias[b], head.bias, atol=1e-5)
    # The default draws the orders from the generator after the starting head, the same each time for a seed.
    again = [fit_linear_heads(features, labels, 3, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(again[0][0], again[1][0])
    with pytest.raises(ValueError, match=r"head_fit must be one of \('mini-batches', 'full-batch'\), got 'sgd'"):
        fit_linear_heads(features, labels, 3, "sgd")


@pytest.mark.parametrize("method, inner_loss", [("maml", "sum-div-k"), ("maml", "mean"), ("fomaml", "sum-div-k"),
                                                ("fomaml", "mean"), ("metasgd", "mean"), ("metasgd", "sum-div-k")])
def test_learn2learn_methods_equal_a_hand_written_one_step_version(method, inner_loss, tiny_splits):
    pytest.importorskip("learn2learn")
    from fewshot_l2l.methods import method_class

    learner, theta = tiny_learner()
    config = method_config(method, n_way=3, k_shot=2, n_query=3, hidden_channels=2, inner_loss=inner_loss)
    algorithm = method_class(method)(config, learner, theta)
    episode = tiny_episode()
    loss, _ = algorithm.training_loss(episode, torch.Generator())
    loss.backward()
    got = torch.cat([p.grad.reshape(-1) for p in algorithm.net.parameters()])
    # By hand, on the flat vector: one SGD step on the support set, the query loss at the adapted parameters; Finn et
    # al.'s support loss is each image's cross-entropy divided by K = 2 shots, summed over the 6 images.
    start = theta.clone().requires_grad_()
    per_image = F.cross_entropy(learner.logits(start, episode.support_x[0]), episode.support_y[0], reduction="none")
    support_loss = per_image.mean() if inner_loss == "mean" else sum(per_image[i] / 2 for i in range(6))
    (grad,) = torch.autograd.grad(support_loss, start, create_graph=method != "fomaml")
    if method == "metasgd":
        lrs = torch.cat([lr.detach().reshape(-1) for lr in algorithm.wrapper.lrs]).requires_grad_()
        assert bool(((lrs >= 0.005) & (lrs < 0.1)).all())
    else:
        lrs = torch.tensor(0.4, dtype=theta.dtype, requires_grad=True)
    adapted = start - lrs * grad
    query_loss = F.cross_entropy(learner.query_logits(adapted, episode.support_x[0], episode.query_x[0], "batch"),
                                 episode.query_y[0])
    expected, lr_grad = torch.autograd.grad(query_loss, [start, lrs])
    assert loss.item() == pytest.approx(query_loss.item(), abs=1e-10)
    assert torch.allclose(got, expected, atol=1e-5)
    if method == "metasgd":  # the learning rates are meta-learned too
        assert torch.allclose(torch.cat([lr.grad.reshape(-1) for lr in algorithm.wrapper.lrs]), lr_grad, atol=1e-5)


def test_the_authors_inner_step_is_n_times_that_of_the_mean_loss(tiny_splits):
    """Finn et al.'s inner loss (sum over the N*K support images of each cross-entropy / K) steps N times as far as the
    mean loss does: with N = 3, lr 0.1 on it is lr 0.3 on the mean, checked on the adapted parameters themselves."""
    pytest.importorskip("learn2learn")
    from fewshot_l2l.methods import method_class

    learner, theta = tiny_learner()
    episode = tiny_episode()
    adapted = {}
    for inner_loss, inner_lr in (("sum-div-k", 0.1), ("mean", 0.3)):
        config = method_config("maml", n_way=3, k_shot=2, n_query=3, hidden_channels=2, inner_loss=inner_loss,
                               inner_lr=inner_lr)
        algorithm = method_class("maml")(config, learner, theta)
        adapted[inner_loss] = algorithm.adapted(episode.support_x[0], episode.support_y[0], 1).module.theta()
    start = theta.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(learner.logits(start, episode.support_x[0]), episode.support_y[0]),
                                  start)
    assert torch.allclose(adapted["sum-div-k"], theta - 0.3 * grad, atol=1e-12)
    assert torch.allclose(adapted["mean"], adapted["sum-div-k"], atol=1e-12)


def test_maml_is_tested_with_its_training_steps_and_fomaml_with_the_papers_three():
    assert method_config("maml").test_inner_steps == 1 and method_config("maml", inner_steps=5).test_inner_steps == 5
    assert method_config("fomaml").test_inner_steps == 3 and method_config("metasgd").test_inner_steps == 1
    assert method_config("maml", test_inner_steps=3).test_inner_steps == 3  # the paper's, one setting away
    assert (method_config("maml").inner_loss, method_config("metasgd").inner_loss) == ("mean", "mean")
    with pytest.raises(ValueError, match=r"MAMLConfig: inner_loss must be one of \('mean', 'sum-div-k'\), got 'sum'"):
        method_config("maml", inner_loss="sum")


def test_the_baselines_import_without_learn2learn_and_name_it_when_needed(monkeypatch, tiny_splits):
    import sys

    monkeypatch.setitem(sys.modules, "learn2learn", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "learn2learn.algorithms", None)
    with pytest.raises(ModuleNotFoundError, match=r"--method maml \(learn2learn\) needs the optional dependency"):
        config = method_config("maml", n_way=3, n_query=3, hidden_channels=2)
        build_method(config, new_learner(config, tiny_splits["train"].image_shape))
    config = method_config("protonet", n_way=3, n_query=3, hidden_channels=2)
    assert build_method(config, new_learner(config, tiny_splits["train"].image_shape)) is not None


def test_protonet_trains_on_wider_episodes_and_tests_on_n_way_ones(tiny_splits):
    """train_way 4 with 1 query per class: 4-way training episodes (4 prototypes), validation and test 3-way."""
    config = method_config("protonet", n_way=3, k_shot=2, n_query=3, train_way=4, train_query=1, hidden_channels=2)
    method = build_method(config, new_learner(config, tiny_splits["train"].image_shape))
    assert config.lr_schedule == "halving-over-run"
    sampler = method.training_sampler(tiny_splits["train"], seed=0)
    batch = sampler.sample(2)
    assert batch.support_y.shape == (2, 8) and batch.query_y.shape == (2, 4) and int(batch.query_y.max()) == 3
    loss, _ = method.training_loss(batch, torch.Generator())
    expected = []
    for b in range(2):
        support, query = method.net.query_embedding(batch.support_x[b], batch.query_x[b], config.query_bn)
        expected.append(F.cross_entropy(prototype_logits(support, batch.support_y[b], query, 4), batch.query_y[b]))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    test_episode = EpisodeSampler(tiny_splits["test"], 3, 2, 3, seed=0).sample(2)
    assert method.query_logits(test_episode, "support", torch.Generator()).shape == (2, 9, 3)
    default = method_config("protonet", n_way=3, k_shot=2, n_query=3)  # by default the n_way episodes of the others
    assert type(method).training_episodes(default) == (3, 2, 3)


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd", "protonet", "finetune"])
def test_a_baseline_whose_query_logits_are_not_finite_is_refused_by_name(method, tiny_splits, monkeypatch):
    """Finite weights, diverged adaptation: NaN logits would argmax to class 0 and read as chance accuracy. The MAML
    family diverges by itself under an inner step of 1e30; the others get an embedding with an infinity in it."""
    from fewshot_l2l.evaluation import evaluate

    if method in ("maml", "fomaml", "metasgd"):
        pytest.importorskip("learn2learn")
    settings = {"inner_lr": 1e30} if method in ("maml", "fomaml") else {}
    config = method_config(method, n_way=3, k_shot=1, n_query=2, hidden_channels=2, **settings)
    built = build_method(config, new_learner(config, tiny_splits["train"].image_shape, tiny_splits["train"].n_classes))
    if method == "metasgd":
        with torch.no_grad():
            for lr in built.wrapper.lrs:
                lr.fill_(1e30)
    elif method in ("protonet", "finetune"):
        embedding = built.net.query_embedding
        monkeypatch.setattr(built.net, "query_embedding",
                            lambda *args: tuple(f * torch.tensor(float("inf")) for f in embedding(*args)))
    with pytest.raises(ValueError, match=rf"evaluate: the {method} query logits are not finite on episodes 1-2 of split "
                                         r"'test' \(seed 0\): the adaptation diverged"):
        evaluate(built, tiny_splits["test"], n_episodes=2, seed=0, batch_size=2, progress=False)
