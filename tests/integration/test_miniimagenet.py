import csv
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot_l2l.data import hdf5 as hdf5_dataset, miniimagenet
from fewshot_l2l.data import load_splits
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.data.hdf5 import HDF5Splits
from fewshot_l2l.data.miniimagenet import build_miniimagenet, detect_layout, load_image, read_split_csv

REPO = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")
CLASSES_PER_SPLIT, IMAGES_PER_CLASS = 3, 4


@pytest.fixture(scope="module")
def csv_dir(shared_data):
    """The folder of Ravi & Larochelle's split files in ../shared/data/miniimagenet."""
    return shared_data(*(f"miniimagenet/{split}.csv" for split in SPLITS))[0].parent


@pytest.fixture(scope="module")
def real_csvs(csv_dir):
    return {s: read_split_csv(csv_dir / f"{s}.csv") for s in SPLITS}


def test_real_split_files_parse_into_the_standard_split(real_csvs):
    assert {s: len(c) for s, c in real_csvs.items()} == {"train": 64, "val": 16, "test": 20}
    assert all(len(files) == 600 for classes in real_csvs.values() for files in classes.values())
    wnids = [set(c) for c in real_csvs.values()]
    assert not (wnids[0] & wnids[1] or wnids[0] & wnids[2] or wnids[1] & wnids[2])


def _fake_image(name: str) -> np.ndarray:
    """A deterministic RGB image of a size other than 84x84, so the builder must resize."""
    seed = sum(name.encode())
    return np.random.default_rng(seed).integers(0, 256, (90 + seed % 7, 100, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def chosen(real_csvs):
    """A few real classes and rows of each real split file (keeps the test fast)."""
    return {s: {wnid: real_csvs[s][wnid][:IMAGES_PER_CLASS] for wnid in sorted(real_csvs[s])[:CLASSES_PER_SPLIT]}
            for s in SPLITS}


def make_csv_layout(root: Path, chosen, csv_dir) -> Path:
    (root / "images").mkdir(parents=True)
    for split, classes in chosen.items():
        with open(csv_dir / f"{split}.csv", newline="") as real:  # the real header and rows, subsampled
            header, *rows = list(csv.reader(real))
        keep = {f for files in classes.values() for f in files}
        with open(root / f"{split}.csv", "w", newline="") as out:
            csv.writer(out).writerows([header] + [r for r in rows if r[0] in keep])
        for files in classes.values():
            for name in files:
                Image.fromarray(_fake_image(name)).save(root / "images" / name, quality=95)
    return root


def make_folder_layout(root: Path, chosen, csv_root: Path) -> Path:
    for split, classes in chosen.items():
        for wnid, files in classes.items():
            (root / split / wnid).mkdir(parents=True)
            for name in files:
                shutil.copy(csv_root / "images" / name, root / split / wnid / name)
    return root


def make_pickle_layout(root: Path, chosen) -> Path:
    root.mkdir(parents=True)
    for split, classes in chosen.items():
        images, class_dict = [], {}
        for wnid, files in classes.items():
            class_dict[wnid] = list(range(len(images), len(images) + len(files)))
            images += [np.asarray(Image.fromarray(_fake_image(n)).resize((84, 84))) for n in files]
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as file:
            pickle.dump({"image_data": np.stack(images), "class_dict": class_dict}, file)
    return root


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, chosen, csv_dir):
    base = tmp_path_factory.mktemp("mini")
    csv_root = make_csv_layout(base / "csv", chosen, csv_dir)
    return {"csv": csv_root, "class-folders": make_folder_layout(base / "folders", chosen, csv_root),
            "pickle": make_pickle_layout(base / "pickle", chosen)}


def test_csv_and_folder_layouts_build_the_same_file(layouts, chosen, tmp_path, monkeypatch):
    chunks = []
    write = hdf5_dataset.SplitWriter.write
    monkeypatch.setattr(hdf5_dataset.SplitWriter, "write", lambda self, x, y: (chunks.append(len(x)), write(self, x, y)))
    built = {}
    for layout in ("csv", "class-folders"):
        assert detect_layout(layouts[layout]) == layout
        out = tmp_path / f"{layout}.h5"
        counts = build_miniimagenet(layouts[layout], out, progress=False)
        assert counts == {s: (CLASSES_PER_SPLIT, CLASSES_PER_SPLIT * IMAGES_PER_CLASS) for s in SPLITS}
        built[layout] = HDF5Splits(out)
    assert set(chunks) == {IMAGES_PER_CLASS}  # written class by class, never a whole split at once
    assert built["csv"].content_sha256 == built["class-folders"].content_sha256
    splits = built["csv"].load()
    for split in SPLITS:
        assert splits[split].class_names == sorted(chosen[split])
        assert splits[split].image_shape == (3, 84, 84)
    first = chosen["val"][sorted(chosen["val"])[0]][0]
    expected = np.asarray(Image.open(layouts["csv"] / "images" / first).convert("RGB").resize((84, 84), Image.Resampling.LANCZOS))
    assert np.array_equal(splits["val"].images[0].numpy(), expected.transpose(2, 0, 1))
    assert built["csv"].build["layout"] == "csv" and built["csv"].rotated_splits == []


def test_pickle_layout(layouts, chosen, tmp_path):
    out = tmp_path / "pickle.h5"
    build_miniimagenet(layouts["pickle"], out, progress=False, trust_pickle=True)
    splits = load_splits("miniimagenet", str(out))
    assert splits["test"].class_names == sorted(chosen["test"])
    wnid = sorted(chosen["train"])[1]
    expected = np.asarray(Image.fromarray(_fake_image(chosen["train"][wnid][2])).resize((84, 84))).transpose(2, 0, 1)
    assert np.array_equal(splits["train"].images[IMAGES_PER_CLASS + 2].numpy(), expected)
    assert splits["train"].labels.tolist() == [c for c in range(CLASSES_PER_SPLIT) for _ in range(IMAGES_PER_CLASS)]
    small = tmp_path / "pickle16.h5"  # a size other than the caches' 84: resized with LANCZOS
    build_miniimagenet(layouts["pickle"], small, image_size=16, progress=False, trust_pickle=True)
    resized = Image.fromarray(expected.transpose(1, 2, 0)).resize((16, 16), Image.Resampling.LANCZOS)
    assert np.array_equal(HDF5Splits(small).split("train").images[IMAGES_PER_CLASS + 2].numpy(),
                          np.asarray(resized).transpose(2, 0, 1))


def test_sampler_errors_on_a_small_split(layouts, tmp_path):
    out = tmp_path / "small.h5"
    build_miniimagenet(layouts["csv"], out, image_size=16, progress=False)
    split = load_splits("miniimagenet", str(out))["val"]
    with pytest.raises(ValueError, match=r"n_way=5 is larger than the 3 classes of split 'val'"):
        EpisodeSampler(split, 5, 1, 1)
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 5 is larger than the 4 images of class 'n"):
        EpisodeSampler(split, 2, 1, 4)
    assert EpisodeSampler(split, 3, 1, 3).sample(2).support_x.shape == (2, 3, 3, 16, 16)


def _assert_nothing_written(folder: Path) -> None:
    assert list(folder.iterdir()) == []


def test_bad_inputs_give_clear_errors_and_leave_nothing(layouts, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.h5"
    bad = tmp_path / "bad"
    shutil.copytree(layouts["csv"], bad)
    (bad / "val.csv").write_text("image,class\nx.jpg,n01\n")
    with pytest.raises(ValueError, match=r"val.csv must start with the header 'filename,label'"):
        build_miniimagenet(bad, out, progress=False)
    with open(bad / "val.csv", "w") as file:
        file.write("filename,label\nn0000000100000001.jpg,n00000001\n")
    with pytest.raises(FileNotFoundError, match=r"val.csv names 1 image\(s\) of class n00000001 missing .*n0000000100000001.jpg"):
        build_miniimagenet(bad, out, progress=False)
    shutil.copy(layouts["csv"] / "val.csv", bad / "val.csv")
    victim = read_split_csv(bad / "test.csv")
    victim_name = victim[sorted(victim)[0]][1]
    (bad / "images" / victim_name).write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(ValueError, match=f"unreadable image .*{victim_name}"):
        build_miniimagenet(bad, out, progress=False)
    _assert_nothing_written(out_dir)  # failed in the last split: the first two were written, then removed

    pickles = tmp_path / "pickles"
    shutil.copytree(layouts["pickle"], pickles)
    (pickles / "mini-imagenet-cache-val.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="mini-imagenet-cache-val.pkl is not a readable pickle"):
        build_miniimagenet(pickles, out, progress=False, trust_pickle=True)
    with open(pickles / "mini-imagenet-cache-val.pkl", "wb") as file:
        pickle.dump({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 5]}}, file)
    with pytest.raises(ValueError, match=r"class n1 has indices outside \[0, 2\)"):
        build_miniimagenet(pickles, out, progress=False, trust_pickle=True)
    with pytest.raises(FileNotFoundError, match="holds none of the layouts"):
        build_miniimagenet(tmp_path / "out", out, progress=False)
    (pickles / "mini-imagenet-cache-test.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"pickle layout is missing .*mini-imagenet-cache-test\.pkl"):
        build_miniimagenet(pickles, out, progress=False, trust_pickle=True)
    _assert_nothing_written(out_dir)
    with pytest.raises(ValueError, match="unreadable image"):
        load_image(bad / "images" / victim_name, 84)
