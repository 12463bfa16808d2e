import pickle

import h5py
import numpy as np
import pytest
import torch

from fewshot_l2l.data import load_splits
from fewshot_l2l.data.episodes import EpisodeSampler, FewShotSplit, add_rotated_classes
from fewshot_l2l.data.hdf5 import HDF5ImageDataset, HDF5Splits, HDF5Writer, content_sha256


def _split(name, n_classes, per_class, size=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_classes * per_class, 1, size, size), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return FewShotSplit(images, labels, [f"{name}_c{c}" for c in range(n_classes)], name=name)


@pytest.fixture
def splits():
    return {"train": _split("train", 6, 4, seed=1), "val": _split("val", 3, 5, seed=2), "test": _split("test", 5, 3, seed=3)}


def _write(path, splits, dataset="omniglot", rotated=("train",), chunk=None):
    with HDF5Writer(path, dataset, (1, 6, 6), build={"k": 1}, rotated_splits=rotated) as writer:
        for name, split in splits.items():
            out = writer.split(name, len(split.labels), split.class_names)
            step = chunk or len(split.labels)
            for start in range(0, len(split.labels), step):
                out.write(split.images[start:start + step], split.labels[start:start + step])


def test_round_trip_attributes_and_checksum(tmp_path, splits):
    path = tmp_path / "d.h5"
    _write(path, splits, chunk=3)  # written in pieces: the incremental checksum equals the whole-array one
    source = HDF5Splits(path)
    loaded = source.load()
    assert list(loaded) == ["train", "val", "test"]
    for name, split in splits.items():
        assert torch.equal(loaded[name].images, split.images) and torch.equal(loaded[name].labels, split.labels)
        assert loaded[name].class_names == split.class_names and loaded[name].name == name
    assert source.dataset == "omniglot" and source.rotated_splits == ["train"] and source.build == {"k": 1}
    assert source.content_sha256 == content_sha256(splits)
    with h5py.File(path) as file:
        assert file["train/images"].dtype == np.uint8 and file["train/labels"].dtype == np.int64
        assert list(file.attrs["image_shape"]) == [1, 6, 6] and file.attrs["format_version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # the temporary file was renamed, nothing else left


def test_interrupted_or_incomplete_builds_leave_nothing(tmp_path, splits):
    path = tmp_path / "d.h5"
    with pytest.raises(KeyError):
        with HDF5Writer(path, "omniglot", (1, 6, 6)) as writer:
            writer.split("train", 24, splits["train"].class_names).write(splits["train"].images[:4], torch.zeros(4))
            raise KeyError("interrupted")
    with pytest.raises(RuntimeError, match=r"splits not completely written: train \(4/24\)"):
        with HDF5Writer(path, "omniglot", (1, 6, 6)) as writer:
            writer.split("train", 24, splits["train"].class_names).write(splits["train"].images[:4], torch.zeros(4))
    with pytest.raises(ValueError, match=r"expected uint8 images \[n, 1, 6, 6\]"):
        with HDF5Writer(path, "omniglot", (1, 6, 6)) as writer:
            writer.split("train", 2, ["a"]).write(np.zeros((2, 1, 5, 5), np.uint8), [0, 0])
    assert list(tmp_path.iterdir()) == []
    _write(path, splits)  # a failed rebuild leaves the previous complete file untouched
    before = path.read_bytes()
    with pytest.raises(KeyError):
        with HDF5Writer(path, "omniglot", (1, 6, 6)):
            raise KeyError("interrupted")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["d.h5"]


def test_opened_lazily_and_picklable_for_dataloader_workers(tmp_path, splits):
    path = tmp_path / "d.h5"
    _write(path, splits)
    source = HDF5Splits(path)
    assert source._file is None  # not opened in __init__
    assert source.n_images("val") == 15 and source._file is not None
    clone = pickle.loads(pickle.dumps(source))
    assert clone._file is None and clone.n_images("test") == 15
    dataset = HDF5ImageDataset(path, "train")
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2)
    images, labels = zip(*loader)
    assert torch.equal(torch.cat(images), splits["train"].images) and torch.equal(torch.cat(labels), splits["train"].labels)


def test_bad_files_give_clear_errors(tmp_path, splits):
    with pytest.raises(FileNotFoundError, match="missing.h5 does not exist: build it with scripts/prepare_data.py"):
        HDF5Splits(tmp_path / "missing.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(ValueError, match="garbage.h5 is not a readable HDF5 file"):
        HDF5Splits(garbage).load()
    good = tmp_path / "good.h5"
    _write(good, splits)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.h5"):
        HDF5Splits(truncated).load()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="foreign.h5 is not a complete fewshot_l2l dataset"):
        HDF5Splits(foreign).load()
    with h5py.File(good, "r+") as file:  # flip one pixel: the checksum catches it
        file["val/images"][0, 0, 0, 0] = 255 - file["val/images"][0, 0, 0, 0]
    with pytest.raises(ValueError, match="good.h5: content checksum mismatch"):
        HDF5Splits(good).load()
    with pytest.raises(KeyError, match="has no split 'extra'"):
        HDF5Splits(good).split("extra")


def test_load_splits_reads_files_and_applies_the_rotation_protocol(tmp_path, splits):
    path = tmp_path / "d.h5"
    _write(path, splits, rotated=("train",))
    auto = load_splits("omniglot", str(path))
    assert auto["train"].n_classes == 24 and auto["val"].n_classes == 3 and auto["test"].n_classes == 5
    assert load_splits("omniglot", str(path), rotate="none")["train"].n_classes == 6
    assert load_splits("omniglot", str(path), rotate="all")["test"].n_classes == 20
    both = load_splits("omniglot", str(path), rotate="train+val")  # validation rotated as training, test as stored
    assert (both["train"].n_classes, both["val"].n_classes, both["test"].n_classes) == (24, 12, 5)
    assert both["val"].class_names[3:6] == [f"{name}@rot90" for name in splits["val"].class_names]
    with pytest.raises(ValueError, match="holds dataset 'omniglot', not 'miniimagenet'"):
        load_splits("miniimagenet", str(path))
    with pytest.raises(ValueError, match="needs --data FILE.h5"):
        load_splits("omniglot")
    with pytest.raises(ValueError, match="rotate must be one of"):
        load_splits("omniglot", str(path), rotate="sideways")


def test_rotated_classes_are_exact_quarter_turns():
    images = torch.arange(2 * 9, dtype=torch.uint8).view(2, 1, 3, 3)
    split = FewShotSplit(images, torch.tensor([0, 1]), ["a", "b"], name="train")
    rotated = add_rotated_classes(split)
    assert rotated.class_names == ["a", "b", "a@rot90", "b@rot90", "a@rot180", "b@rot180", "a@rot270", "b@rot270"]
    assert rotated.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    a = images[0, 0]
    assert torch.equal(rotated.images[2, 0], a.T.flip(0))  # 90 degrees counter-clockwise, by hand
    assert torch.equal(rotated.images[4, 0], a.flip(0).flip(1))
    assert torch.equal(rotated.images[6, 0], a.T.flip(1))
    with pytest.raises(ValueError, match="non-square"):
        add_rotated_classes(FewShotSplit(torch.zeros(1, 1, 2, 3, dtype=torch.uint8), torch.tensor([0]), ["a"]))


def test_sampler_keeps_class_members_on_cpu_and_is_reproducible(splits):
    split = splits["train"]
    assert split.class_members.device.type == "cpu"
    a = EpisodeSampler(split, 3, 1, 2, seed=4).sample(2)
    b = EpisodeSampler(split, 3, 1, 2, seed=4).sample(2)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)


@pytest.mark.parametrize("attribute, value", [
    ("splits", "train,val"),  # not JSON
    ("splits", '{"train": 1}'),  # JSON, not a list
    ("splits", '["train", "extra"]'),  # a split the file does not hold
    ("splits", '["train", "train"]'),
    ("splits", np.array([1, 2])),  # not a string at all
    ("rotated_splits", "train"),
    ("rotated_splits", '["sideways"]'),
    ("build", "{"),
    ("build", '["k"]'),
])
def test_a_malformed_json_attribute_names_the_file_and_the_attribute(attribute, value, tmp_path, splits):
    """Issue 31, case 8: ``attrs["splits"] = "train,val"`` gave ``Expecting value: line 1 column 1 (char 0)``."""
    path = tmp_path / "d.h5"
    _write(path, splits)
    with h5py.File(path, "r+") as file:
        file.attrs[attribute] = value
    read = {"splits": "split_names", "rotated_splits": "rotated_splits", "build": "build"}[attribute]
    with pytest.raises(ValueError, match=rf"dataset file .*d\.h5: attribute '{attribute}' .*rebuild it"):
        getattr(HDF5Splits(path), read)
    if attribute != "build":  # the reads of training and evaluation
        with pytest.raises(ValueError, match=rf"dataset file .*d\.h5: attribute '{attribute}'"):
            load_splits("omniglot", str(path))
