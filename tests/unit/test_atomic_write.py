"""The package's one atomic file writer (fewshot_l2l.files.AtomicFile / atomic_write)."""

import os
import stat

import pytest
import torch

from fewshot_l2l.files import AtomicFile, atomic_torch_save, atomic_write


def test_atomic_write_creates_missing_folders_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    assert atomic_write(path, lambda tmp: tmp.write_text("hello")) == path
    assert path.read_text() == "hello"
    assert list(path.parent.iterdir()) == [path]
    # A new file gets the permissions of any new file (umask), not mkstemp's private 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise KeyError("interrupted")

    with pytest.raises(KeyError, match="interrupted"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with pytest.raises(FileNotFoundError):  # a writer that wrote nothing cannot be committed
        atomic_write(tmp_path / "nothing.txt", lambda tmp: None)
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_file_commits_only_on_a_clean_exit(tmp_path):
    path = tmp_path / "x.bin"
    with AtomicFile(path) as target:
        target.tmp_path.write_bytes(b"1")
        assert target.tmp_path.parent == tmp_path and target.tmp_path.name.startswith(".x.bin.")
        assert not path.exists()
    assert path.read_bytes() == b"1"
    target = AtomicFile(path)
    target.tmp_path.write_bytes(b"2")
    target.discard()
    target.discard()
    assert path.read_bytes() == b"1" and list(tmp_path.iterdir()) == [path]


def test_atomic_torch_save_round_trip_into_a_new_folder(tmp_path):
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "new" / "c.pt")
    assert torch.equal(torch.load(tmp_path / "new" / "c.pt")["x"], torch.arange(3))
