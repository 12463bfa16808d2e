import pytest
import torch

from fewshot_l2l.data.episodes import EpisodeSampler, FewShotSplit
from fewshot_l2l.data.glyphs import make_glyph_split, make_glyph_splits


def test_episode_shapes_labels_and_distinct_classes(tiny_splits):
    split = tiny_splits["train"]
    sampler = EpisodeSampler(split, n_way=4, k_shot=2, n_query=3, seed=0)
    ep = sampler.sample(5)
    assert ep.support_x.shape == (5, 8, 1, 16, 16) and ep.query_x.shape == (5, 12, 1, 16, 16)
    assert ep.support_x.dtype == torch.float32 and 0 <= ep.support_x.min() and ep.support_x.max() <= 1
    for b in range(5):
        assert ep.support_y[b].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert ep.query_y[b].tolist() == [c for c in range(4) for _ in range(3)]


def test_episodes_index_the_right_images(tiny_splits):
    """Every image in an episode is an image of the class its label stands for, none twice."""
    split = tiny_splits["train"]
    flat = split.images.flatten(1).float() / 255
    ep = EpisodeSampler(split, n_way=5, k_shot=1, n_query=4, seed=1).sample(3)
    for b in range(3):
        images = torch.cat((ep.support_x[b], ep.query_x[b])).flatten(1)
        labels = torch.cat((ep.support_y[b], ep.query_y[b]))
        index = torch.cdist(images, flat).argmin(dim=1)  # which stored image each one is
        assert torch.equal(flat[index], images)
        assert len(set(index.tolist())) == len(index)  # distinct images
        classes = split.labels[index]
        for label in range(5):  # one class per label, distinct classes across labels
            assert len(set(classes[labels == label].tolist())) == 1
        assert len(set(classes.tolist())) == 5


def test_same_seed_same_episodes(tiny_splits):
    a = EpisodeSampler(tiny_splits["val"], 3, 1, 2, seed=7).sample(4)
    b = EpisodeSampler(tiny_splits["val"], 3, 1, 2, seed=7).sample(4)
    c = EpisodeSampler(tiny_splits["val"], 3, 1, 2, seed=8).sample(4)
    assert torch.equal(a.query_x, b.query_x) and torch.equal(a.support_x, b.support_x)
    assert not torch.equal(a.query_x, c.query_x)


def test_unequal_class_sizes_are_supported():
    images = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1).expand(7, 1, 2, 2).contiguous()
    split = FewShotSplit(images, torch.tensor([0, 0, 0, 1, 1, 1, 1]), ["a", "b"], name="odd")
    ep = EpisodeSampler(split, n_way=2, k_shot=1, n_query=2, seed=0).sample(20)
    values = torch.cat((ep.support_x, ep.query_x), 1)[..., 0, 0, 0] * 255
    values = values.round().long()
    labels = torch.cat((ep.support_y, ep.query_y), 1)
    for b in range(20):
        by_class = {int(labels[b, k]): set() for k in range(6)}
        for value, label in zip(values[b].tolist(), labels[b].tolist()):
            by_class[label].add(value < 3)
        assert all(len(v) == 1 for v in by_class.values())  # never mixes the two classes


def test_errors_name_the_split_and_class(tiny_splits):
    split = tiny_splits["test"]
    with pytest.raises(ValueError, match=r"n_way=9 is larger than the 8 classes of split 'test'"):
        EpisodeSampler(split, 9, 1, 1)
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 7 is larger than the 6 images of class 'test_glyph0000'"):
        EpisodeSampler(split, 2, 2, 5)
    with pytest.raises(ValueError, match="k_shot must be a positive integer"):
        EpisodeSampler(split, 2, 0, 5)
    with pytest.raises(ValueError, match="uint8"):
        FewShotSplit(torch.zeros(2, 1, 4, 4), torch.zeros(2), ["a"])
    with pytest.raises(ValueError, match="labels must lie"):
        FewShotSplit(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 3]), ["a"])


def test_glyphs_are_deterministic_and_splits_disjoint():
    a = make_glyph_splits({"train": 10, "val": 4, "test": 4}, images_per_class=3, image_size=20, seed=5)
    b = make_glyph_splits({"train": 10, "val": 4, "test": 4}, images_per_class=3, image_size=20, seed=5)
    for name in a:
        assert torch.equal(a[name].images, b[name].images)
        assert a[name].images.shape == ((10 if name == "train" else 4) * 3, 1, 20, 20)
    train = a["train"].images.flatten(1).float()
    other = torch.cat((a["val"].images, a["test"].images)).flatten(1).float()
    assert torch.cdist(other, train).min() > 0
    assert (a["train"].images > 128).float().mean() > 0.03  # there is ink


def test_glyph_classes_are_more_alike_within_than_across():
    split = make_glyph_split(30, images_per_class=8, image_size=28, seed=0)
    x = split.images.flatten(1).float() / 255
    distances = torch.cdist(x, x)
    same = split.labels[:, None] == split.labels[None, :]
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool)
    assert distances[same & off_diagonal].mean() < 0.85 * distances[~same].mean()
