"""The neural-art problem: its loss against a naive per-image reference, the feature extractors, content sources."""

import pytest
import torch
from torch import nn

from fewshot_l2l.optim.neural_art import (
    NeuralArtProblems, VGG_CONFIGS, folder_contents, gram, random_features, save_art_grid, style_pattern, vgg_features,
)

TINY = dict(image_size=16, contents_per_split={"train": 4, "tune": 2, "test": 3})


def test_loss_is_content_plus_style_plus_total_variation():
    distribution = NeuralArtProblems(**TINY, content_weight=2.0, style_weight=3.0, tv_weight=0.5)
    problems = distribution.sample(2, seed=1, split="test")
    theta = problems.initial_theta()
    assert theta.shape == (2, 3 * 16 * 16) and 0 <= theta.min() and theta.max() <= 1
    net = distribution.features
    for k in range(2):  # the naive reference: one image at a time, sums written out
        x, c = theta[k].view(1, 3, 16, 16), problems.contents[k : k + 1]
        (fx, sx), (fc, _), (_, ss) = net(x), net(c), net(distribution.style[None])
        content = ((fx - fc) ** 2).sum() / fx.numel()
        style = 0.0
        for a, b in zip(sx, ss):
            ga = a[0].flatten(1) @ a[0].flatten(1).t() / (a.shape[2] * a.shape[3])
            gb = b[0].flatten(1) @ b[0].flatten(1).t() / (b.shape[2] * b.shape[3])
            style = style + ((ga - gb) ** 2).mean()
        tv = ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., 1:] - x[..., :-1]) ** 2).mean()
        expected = 2.0 * content + 3.0 * style + 0.5 * tv
        assert problems.loss(theta, 0)[k].item() == pytest.approx(expected.item(), rel=1e-5)
    content_only = NeuralArtProblems(**TINY, style_weight=0.0, tv_weight=0.0).sample(2, seed=1, split="test")
    assert torch.equal(content_only.loss(content_only.contents.flatten(1), 0), torch.zeros(2))


def test_random_features_are_seeded_and_frozen():
    a, b, c = random_features(0), random_features(0), random_features(1)
    assert torch.equal(a.convs[0].weight, b.convs[0].weight) and not torch.equal(a.convs[0].weight, c.convs[0].weight)
    assert not any(p.requires_grad for p in a.parameters())
    content, style = a(torch.rand(2, 3, 16, 16))
    assert content.shape == (2, 64, 4, 4) and [s.shape[1] for s in style] == [32, 64, 64]
    assert gram(style[0]).shape == (2, 32, 32)


@pytest.mark.parametrize("convs", [13, 16])
def test_vgg_weights_load_from_a_torchvision_state_dict(tmp_path, convs):
    state, index, c_in = {}, 0, 3
    for item in VGG_CONFIGS[convs]:  # torchvision's key layout: features.<i> counts convs, ReLUs and pools
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"], state[f"features.{index}.bias"] = torch.randn(item, c_in, 3, 3) * 0.1, torch.randn(item)
        c_in, index = item, index + 2
    state["classifier.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "vgg.pth")
    extractor = vgg_features(tmp_path / "vgg.pth")
    assert torch.equal(extractor.convs[0].weight, state["features.0.weight"])
    content, style = extractor(torch.rand(1, 3, 32, 32))
    assert content.shape == (1, 512, 4, 4) and [s.shape[1] for s in style] == [64, 128, 256, 512]
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="is not a torchvision vgg16 / vgg19 state_dict"):
        vgg_features(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="--vgg-weights"):
        vgg_features(tmp_path / "missing.pth")


def test_contents_from_glyphs_splits_and_resolutions(tmp_path):
    small, large = NeuralArtProblems(**TINY), NeuralArtProblems(**{**TINY, "image_size": 32})
    assert small.contents["train"].shape == (4, 3, 16, 16) and large.contents["test"].shape == (3, 3, 32, 32)
    assert not torch.equal(small.contents["train"][:2], small.contents["tune"])
    assert torch.allclose(style_pattern(32)[:, ::2, ::2].mean(), style_pattern(16).mean(), atol=0.05)  # one pattern
    from PIL import Image

    for i in range(6):
        Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / f"img{i}.png")
    contents = folder_contents(tmp_path, 8)
    assert {k: v.shape[0] for k, v in contents.items()} == {"test": 2, "tune": 1, "train": 3}
    with pytest.raises(ValueError, match="needs at least 5 PNG / JPEG images"):
        folder_contents(tmp_path / "nothing", 8)


def test_art_grid_is_a_png(tmp_path):
    problems = NeuralArtProblems(**TINY).sample(2, seed=0, split="test")
    save_art_grid(problems, problems.initial_theta(), str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
