import hashlib
import io
import json
import os
import runpy
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot_l2l.data import download
from fewshot_l2l.data import load_splits
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.data.hdf5 import HDF5Splits
from fewshot_l2l.data.omniglot import build_omniglot, list_images, split_characters
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.training import meta_train

REPO = Path(__file__).resolve().parents[2]


def run_script(name: str, *argv: str) -> None:
    """Run ``scripts/<name>`` in this process (no interpreter start-up), as ``python scripts/<name> argv``."""
    old_argv = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(REPO / "scripts" / name), run_name="__main__")
    finally:
        sys.argv = old_argv


@pytest.fixture(scope="module")
def zips(shared_data):
    """The two official minimal background zips from ../shared/data/omniglot."""
    return shared_data("omniglot/images_background_small1.zip", "omniglot/images_background_small2.zip")


@pytest.fixture(scope="module")
def minimal_h5(tmp_path_factory, zips):
    path = tmp_path_factory.mktemp("omniglot") / "minimal.h5"
    alphabets = build_omniglot(zips, path, image_size=28, progress=False)
    return path, alphabets


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_minimal_zips_build_an_alphabet_disjoint_file(minimal_h5):
    path, alphabets = minimal_h5
    source = HDF5Splits(path)
    splits = source.load(verify=True)
    # Greek and Latin are in both zips: merged once, 8 alphabets, 242 characters of 20 drawings.
    names = [c for s in splits.values() for c in s.class_names]
    assert len(names) == len(set(names)) == 242
    assert sum(len(s.labels) for s in splits.values()) == 4840
    assert all(bool((s.class_sizes == 20).all()) for s in splits.values())
    seen = [a for split in alphabets.values() for a in split]
    assert sorted(seen) == sorted({"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin", "Japanese_(katakana)",
                                   "Sanskrit", "Tagalog"})
    for name, split in splits.items():  # alphabets are disjoint and match what the file records
        assert sorted({c.split("/")[0] for c in split.class_names}) == alphabets[name] == source.build["split_alphabets"][name]
        assert split.image_shape == (1, 28, 28)
    assert source.rotated_splits == ["train"] and source.build["protocol"] == "alphabet-disjoint"
    assert splits["train"].images.float().mean() < 64  # inverted: mostly dark background, bright strokes


def test_stored_pixels_equal_a_pil_reference(minimal_h5, zips):
    path, _ = minimal_h5
    split = HDF5Splits(path).split("test")
    name = split.class_names[3]
    with zipfile.ZipFile(zips[0]) as archive:
        members = sorted(m for m in archive.namelist() if f"/{name}/" in m and m.endswith(".png"))
        raw = Image.open(io.BytesIO(archive.read(members[0]))).convert("L")
    expected = np.asarray(Image.fromarray(255 - np.asarray(raw)).resize((28, 28), Image.Resampling.BOX))
    first = int(torch.nonzero(split.labels == 3)[0])
    assert np.array_equal(split.images[first, 0].numpy(), expected)


def test_extracted_folder_plus_zip_equals_two_zips(minimal_h5, tmp_path, zips):
    path, _ = minimal_h5
    with zipfile.ZipFile(zips[0]) as archive:
        archive.extractall(tmp_path / "extracted")
    other = tmp_path / "mixed.h5"
    build_omniglot([zips[1], tmp_path / "extracted"], other, image_size=28, progress=False)
    assert HDF5Splits(other).content_sha256 == HDF5Splits(path).content_sha256


def test_full_data_uses_the_vinyals_split_with_rotations_everywhere(tmp_path):
    # 1,623 one-drawing characters over 50 alphabets: the full data set's shape, tiny images.
    archive_path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for c in range(1623):
            pixels = np.full((12, 12), 255, np.uint8)
            pixels[c % 12, :] = 0
            archive.writestr(f"images_background/Alpha{c % 50:02d}/character{c:04d}/{c:04d}_01.png", _png(pixels))
    protocol, by_split = split_characters(list_images([archive_path]))
    assert protocol == "vinyals" and {k: len(v) for k, v in by_split.items()} == {"train": 1028, "val": 172, "test": 423}
    assert len(set().union(*by_split.values())) == 1623
    out = tmp_path / "full.h5"
    build_omniglot([archive_path], out, image_size=12, progress=False)
    assert HDF5Splits(out).rotated_splits == ["train", "val", "test"]
    splits = load_splits("omniglot", str(out))
    assert splits["test"].n_classes == 4 * 423 and splits["train"].n_classes == 4 * 1028


def test_bad_sources_give_clear_errors_and_leave_nothing(tmp_path, zips):
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    with pytest.raises(FileNotFoundError, match="omniglot source .*nope.zip does not exist"):
        build_omniglot([tmp_path / "nope.zip"], out, progress=False)
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(zips[0].read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt.zip is not a readable zip file"):
        build_omniglot([corrupt], out, progress=False)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="empty.zip holds no <alphabet>/<character>/<file>.png images"):
        build_omniglot([empty], out, progress=False)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        for a in range(3):
            for c in range(6):
                archive.writestr(f"top/A{a}/character{c:02d}/x_01.png", _png(np.zeros((8, 8), np.uint8)))
        archive.writestr("top/A1/character03/x_02.png", b"not a png")
    with pytest.raises(ValueError, match=r"unreadable image .*broken.zip:top/A1/character03/x_02.png"):
        build_omniglot([broken], out, image_size=8, progress=False)
    with pytest.raises(ValueError, match="at least 3 alphabets"):
        split_characters([image for image in list_images([broken]) if image.alphabet != "A2"])
    with pytest.raises(ValueError, match=r"--image-size must be in \[8, 105\]"):
        build_omniglot(zips, out, image_size=106, progress=False)
    assert list(out.parent.iterdir()) == []


def test_sampler_errors_name_the_split_and_class(minimal_h5):
    path, _ = minimal_h5
    splits = load_splits("omniglot", str(path))
    with pytest.raises(ValueError, match=r"n_way=65 is larger than the 64 classes of split 'test'"):
        EpisodeSampler(splits["test"], 65, 1, 1)
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 21 is larger than the 20 images of class 'Balinese/character01'"):
        EpisodeSampler(splits["test"], 5, 1, 20)


def test_train_and_evaluate_scripts_read_the_file(minimal_h5, tmp_path, capsys):
    path, _ = minimal_h5
    config = MetaLSTMConfig(dataset="omniglot", data=str(path), n_way=3, k_shot=1, n_query=2, inner_steps=1,
                         meta_batch=1, episodes=2, val_every=2, val_episodes=2, hidden_channels=4, hidden_size=4,
                         device="cpu", out=str(tmp_path / "run"))
    summary = meta_train(config, progress=False)
    assert summary["episodes"] == 2 and (tmp_path / "run/best.pt").is_file()
    run_script("evaluate.py", "--checkpoint", str(tmp_path / "run/best.pt"), "--episodes", "3", "--batch-size", "3",
               "--device", "cpu", "--json")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n_episodes"] == 3 and 0 <= line["accuracy"] <= 1


def _offline(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable")


def test_download_offline_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(ConnectionError) as error:
        download.download_omniglot(tmp_path / "zips")
    message = str(error.value)
    for name in ("images_background.zip", "images_evaluation.zip"):
        assert f"https://github.com/brendenlake/omniglot/raw/master/python/{name}" in message
        assert str(tmp_path / "zips" / name) in message
    assert list((tmp_path / "zips").iterdir()) == []


class _Response(io.BytesIO):
    """What ``urllib.request.urlopen`` returns, as torchvision's downloader reads it (``url``, ``length``, chunks)."""

    def __init__(self, payload: bytes, url: str, fail_after: int | None = None):
        super().__init__(payload)
        self.url, self.length, self.fail_after = url, len(payload), fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size)


def _serving(payload: bytes, fail_after: int | None = None):
    return lambda request, *args, **kwargs: _Response(payload, request.full_url, fail_after)


def test_download_verifies_checksums(monkeypatch, tmp_path, zips):
    payload = zips[0].read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", _serving(payload))
    with pytest.raises(ValueError, match="expected 68d2efa1b9178cc56df9314c21c6e718"):
        download.download_omniglot(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the bad download was removed
    md5 = hashlib.md5(payload).hexdigest()
    monkeypatch.setattr(download, "OMNIGLOT_ZIPS", {"images_background.zip": md5, "images_evaluation.zip": md5})
    paths = download.download_omniglot(tmp_path)
    assert [p.read_bytes() == payload for p in paths] == [True, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_background.zip", "images_evaluation.zip"]
    monkeypatch.setattr(urllib.request, "urlopen", _offline)  # already there and verified: no network needed
    assert download.download_omniglot(tmp_path) == paths


def test_interrupted_download_leaves_no_file(monkeypatch, tmp_path):
    payload = os.urandom(200_000)  # several of torchvision's 32 KiB chunks, the connection drops after the first
    monkeypatch.setattr(download, "OMNIGLOT_ZIPS", {"images_background.zip": hashlib.md5(payload).hexdigest()})
    monkeypatch.setattr(urllib.request, "urlopen", _serving(payload, fail_after=1 << 15))
    with pytest.raises(ConnectionError, match="could not download .*connection reset by peer.*by hand, put them in"):
        download.download_omniglot(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial zip, no staging folder


def test_download_without_torchvision_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision.datasets.utils", None)  # as if torchvision were not installed
    with pytest.raises(ModuleNotFoundError, match=r"downloading Omniglot needs .*pip install 'fewshot_l2l\[data\]'"):
        download.download_omniglot(tmp_path)


def test_prepare_data_download_offline_exits_with_the_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(SystemExit) as exit_info:
        run_script("prepare_data.py", "omniglot", "--download", "--source", str(tmp_path / "zips"),
                   "--out", str(tmp_path / "o.h5"))
    assert "could not download" in str(exit_info.value.code) and "by hand, put them in" in str(exit_info.value.code)
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(SystemExit):
        run_script("prepare_data.py", "miniimagenet", "--download", "--source", str(tmp_path), "--out", str(tmp_path / "m.h5"))
    assert "miniImageNet has no official download" in capsys.readouterr().err
