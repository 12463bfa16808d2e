"""Bad input is refused with one line that names it: output paths, damaged files, out-of-range settings,
untrusted pickles. Each test here failed before the input checks existed (the finding it pins is in its name)."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import PROG, TINY_TRAIN, make_class_folders, make_omniglot_zip, png_bytes, png_claiming, run_cli

from fewshot_l2l.data import miniimagenet, omniglot
from fewshot_l2l.data.episodes import EpisodeSampler
from fewshot_l2l.data.hdf5 import HDF5Writer
from fewshot_l2l.optim.rule_training import load_rule_checkpoint
from fewshot_l2l.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("train", "evaluate", "prepare_data", "train_optimizer", "evaluate_optimizer", "plot_gates")


def assert_one_line_error(outcome, *fragments, status=1):
    """The run failed with ``status`` and exactly one ``PROG: error: ...`` line holding every fragment, no traceback."""
    assert outcome.escaped is None, f"traceback: {outcome.escaped!r}"
    assert outcome.status == status, (outcome.code, outcome.err)
    assert "Traceback" not in outcome.err
    assert len(outcome.error_lines) == 1, outcome.err
    line = outcome.error_lines[0]
    assert line.startswith(f"{PROG}: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


# --- prepare_data --out (finding 3) ---------------------------------------------------------------------------


@pytest.fixture
def zip_source(tmp_path):
    return make_omniglot_zip(tmp_path / "images_background_small.zip", size=8)


def test_prepare_data_refuses_to_replace_an_existing_out_without_force(zip_source, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"earlier results")
    assert_one_line_error(run_cli("prepare_data", "omniglot", "--source", zip_source, "--out", out, "--no-progress"),
                          f"--out {out} exists: pass --force", status=2)
    assert out.read_bytes() == b"earlier results"
    forced = run_cli("prepare_data", "omniglot", "--source", zip_source, "--out", out, "--no-progress", "--force")
    assert forced.status == 0, forced.err
    assert out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_prepare_data_never_overwrites_a_source_even_with_force(zip_source, tmp_path, spelling):
    before = zip_source.read_bytes()
    out = {"same": zip_source, "dotted": tmp_path / "sub" / ".." / zip_source.name, "symlink": tmp_path / "link.zip"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        out.symlink_to(zip_source)
    for force in ([], ["--force"]):
        outcome = run_cli("prepare_data", "omniglot", "--source", zip_source, "--out", out, "--no-progress", *force)
        assert_one_line_error(outcome, "is one of the --source files", status=2)
    assert zip_source.read_bytes() == before


def test_prepare_data_never_overwrites_a_file_it_reads_from_a_source_folder(tmp_path):
    source = tmp_path / "mini"
    (source / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (source / f"{split}.csv").write_text("filename,label\n")
    (source / "images" / "x.jpg").write_bytes(b"an image")
    for out in (source / "val.csv", source / "images" / "x.jpg"):
        before = out.read_bytes()
        assert_one_line_error(run_cli("prepare_data", "miniimagenet", "--source", source, "--out", out, "--force"),
                              "is one of the --source files", status=2)
        assert out.read_bytes() == before


def test_prepare_data_refuses_a_folder_out_before_building(zip_source, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(omniglot, "build_omniglot", lambda *args, **kwargs: built.append(args))
    outcome = run_cli("prepare_data", "omniglot", "--source", zip_source, "--out", tmp_path, "--no-progress")
    assert_one_line_error(outcome, f"--out {tmp_path} is a folder", status=2)
    assert built == []


# --- damaged and foreign files (finding 7) --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fewshot", "optimizer"])
def test_truncated_checkpoints_are_reported_at_every_cut(kind, fewshot_checkpoint, optimizer_checkpoint, tmp_path):
    source, load, name = {"fewshot": (fewshot_checkpoint, load_checkpoint, "fewshot_l2l"),
                          "optimizer": (optimizer_checkpoint, load_rule_checkpoint, "learned-optimizer")}[kind]
    data = source.read_bytes()
    load(source)  # the whole file loads
    cuts = [k * len(data) // 20 for k in range(20)]  # 0 bytes up to 95% of the file
    for cut in cuts:
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.pt is not a {name} checkpoint or is corrupt") as error:
            load(path)
        assert "weights_only" not in str(error.value)


@pytest.mark.parametrize("content", [[1, 2], torch.zeros(3), "text", {"config": [1]}, {"learner": 1, "config": {}}])
def test_checkpoints_holding_something_else_are_reported(content, tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="foreign.pt is not a fewshot_l2l checkpoint or is corrupt"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="foreign.pt is not a learned-optimizer checkpoint or is corrupt"):
        load_rule_checkpoint(path)


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle's code ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_checkpoint_with_code_is_refused_without_the_unsafe_advice(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"config": _Payload(marker)}, path)
    for load in (load_checkpoint, load_rule_checkpoint):
        with pytest.raises(ValueError, match="evil.pt is not a .* checkpoint or is corrupt") as error:
            load(path)
        assert "weights_only" not in str(error.value) and "Re-running" not in str(error.value)
    assert not marker.exists()
    outcome = run_cli("evaluate", "--checkpoint", path, "--device", "cpu")
    assert "weights_only" not in assert_one_line_error(outcome, "evil.pt is not a fewshot_l2l checkpoint")


def test_a_folder_as_checkpoint_is_named_as_one(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_a_damaged_zip_member_is_reported(tmp_path):
    path = make_omniglot_zip(tmp_path / "broken.zip")
    member = "bg/A0/character0/x_00.png"
    info = zipfile.ZipFile(path).getinfo(member)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # the local header is 30 bytes
    data[start:start + info.compress_size] = bytes(b ^ 0x5A for b in data[start:start + info.compress_size])
    path.write_bytes(bytes(data))  # its deflate stream is now invalid: zlib.error when read
    with pytest.raises(ValueError, match=f"unreadable image .*broken.zip:{member}"):
        omniglot.build_omniglot([path], tmp_path / "o.h5", 8, progress=False)
    assert_one_line_error(run_cli("prepare_data", "omniglot", "--source", path, "--out", tmp_path / "o.h5",
                                  "--no-progress"), "unreadable image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.zip"]


@pytest.mark.parametrize("class_dict, message", [
    ({"n1": 5}, "class_dict must map class names to lists of image indices"),
    ({"n1": [0.5]}, "class_dict must map class names to lists of image indices"),
    ([0, 1], "class_dict must be a non-empty dict"),
    ({"n1": []}, "class n1 has no images"),
])
def test_a_malformed_pickle_class_dict_is_reported(class_dict, message, tmp_path):
    path = tmp_path / "cache.pkl"
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 8, 8, 3), np.uint8), "class_dict": class_dict}))
    with pytest.raises(ValueError, match=message):
        miniimagenet.read_pickle_cache(path, trust_pickle=True)


def test_a_data_file_of_another_image_size_is_named(tmp_path):
    source = make_omniglot_zip(tmp_path / "bg.zip", size=16)
    files = {}
    for size in (16, 8):
        files[size] = tmp_path / f"o{size}.h5"
        assert run_cli("prepare_data", "omniglot", "--source", source, "--out", files[size], "--image-size", size,
                       "--no-progress").status == 0
    run = tmp_path / "run"
    trained = run_cli("train", *TINY_TRAIN, "--n-way", "2", "--dataset", "omniglot", "--data", files[16], "--out", run)
    assert trained.status == 0, trained.err
    for module in ("evaluate", "plot_gates"):
        outcome = run_cli(module, "--checkpoint", run / "best.pt", "--data", files[8], "--episodes", "1", "--device", "cpu")
        assert_one_line_error(outcome, "o8.h5 has images of shape 1x8x8", "the learner takes 1x16x16")


def test_evaluate_batch_size_and_seed_out_of_range(fewshot_checkpoint, tiny_glyph_dataset):
    for flag, value in (("--batch-size", "0"), ("--seed", str(2**64)), ("--seed", "-1"), ("--episodes", "0")):
        outcome = run_cli("evaluate", "--checkpoint", fewshot_checkpoint, "--device", "cpu", flag, value)
        assert_one_line_error(outcome, f"argument {flag}:", status=2)


# --- one line, not a traceback (finding 8) --------------------------------------------------------------------


def _failing_argv(module: str, tmp_path: Path) -> list:
    """Arguments with which ``module`` fails in the library on a missing file, ``tmp_path/missing*``."""
    return {
        "train": ["--dataset", "omniglot", "--data", tmp_path / "missing.h5", "--out", tmp_path / "run", "--device", "cpu"],
        "evaluate": ["--checkpoint", tmp_path / "missing.pt", "--device", "cpu"],
        "prepare_data": ["omniglot", "--source", tmp_path / "missing.zip", "--out", tmp_path / "o.h5"],
        "train_optimizer": ["--init-from", tmp_path / "missing.pt", "--out", tmp_path / "run", "--device", "cpu"],
        "evaluate_optimizer": ["--checkpoint", tmp_path / "missing.pt", "--device", "cpu"],
        "plot_gates": ["--checkpoint", tmp_path / "missing.pt", "--device", "cpu"],
    }[module]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_reports_a_library_error_in_one_line(module, tmp_path):
    outcome = run_cli(module, *_failing_argv(module, tmp_path))
    assert_one_line_error(outcome, "missing", "does not exist")
    assert isinstance(outcome.code, str)  # SystemExit(message): printed by Python, exit status 1


@pytest.mark.parametrize("module", COMMANDS)
def test_debug_shows_the_traceback(module, tmp_path):
    argv = _failing_argv(module, tmp_path)
    assert isinstance(run_cli(module, *argv, "--debug").escaped, FileNotFoundError)
    assert isinstance(run_cli(module, *argv, env={"FEWSHOT_L2L_DEBUG": "1"}).escaped, FileNotFoundError)


def test_one_line_from_the_installed_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "scripts/evaluate.py", "--checkpoint", str(tmp_path / "nope.pt")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"evaluate.py: error: checkpoint {tmp_path / 'nope.pt'} does not exist"]


def test_only_our_errors_lose_their_traceback(tmp_path):
    """A RuntimeError raised outside fewshot_l2l is a bug and keeps its traceback; one raised by it is a message."""
    from fewshot_l2l.cli.args import command

    @command
    def foreign(argv=None):
        torch.ones(2) @ torch.ones(3)  # RuntimeError raised by torch, called from here (not fewshot_l2l code)

    with pytest.raises(RuntimeError):
        foreign([])

    @command
    def ours(argv=None):
        with HDF5Writer(tmp_path / "x.h5", "omniglot", (1, 8, 8)) as writer:
            writer.split("train", 4, ["a"])  # never written: the writer raises RuntimeError on exit

    with pytest.raises(SystemExit, match=r"error: HDF5Writer .*x.h5: splits not completely written: train \(0/4\)"):
        ours([])



INTERRUPTED_LINE = f"{PROG}: interrupted (Ctrl-C); no file was left half-written"


@pytest.mark.parametrize("module", COMMANDS)
def test_ctrl_c_in_every_command_is_one_line_and_exit_130(module, tmp_path, monkeypatch):
    """Issue 31, case 10: Ctrl-C outside the training loops' own handling printed a KeyboardInterrupt traceback."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # what Python's SIGINT handler raises: here, as the command line is being parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", interrupt)
    try:
        outcome = run_cli(module, *_failing_argv(module, tmp_path))
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command: a traceback for the user")
    assert (outcome.code, outcome.escaped) == (130, None), outcome.err
    assert outcome.err.splitlines() == [INTERRUPTED_LINE]
    with pytest.raises(KeyboardInterrupt):  # --debug: the traceback
        run_cli(module, *_failing_argv(module, tmp_path), env={"FEWSHOT_L2L_DEBUG": "1"})


# --- no silent coercion (finding 9) ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--k-shot", "--n-query", "--inner-steps"])
def test_evaluate_refuses_zero_instead_of_using_the_checkpoints_value(flag, fewshot_checkpoint, tiny_glyph_dataset):
    outcome = run_cli("evaluate", "--checkpoint", fewshot_checkpoint, "--episodes", "1", "--device", "cpu", flag, "0")
    assert_one_line_error(outcome, f"argument {flag}: must be an integer in [1,", status=2)


def test_evaluate_optimizer_refuses_horizon_zero(optimizer_checkpoint):
    outcome = run_cli("evaluate_optimizer", "--checkpoint", optimizer_checkpoint, "--horizon", "0", "--n-test", "1",
                      "--n-tune", "1", "--device", "cpu")
    assert_one_line_error(outcome, "argument --horizon:", status=2)


def test_prepare_data_refuses_image_size_zero(zip_source, tmp_path):
    outcome = run_cli("prepare_data", "omniglot", "--source", zip_source, "--out", tmp_path / "o.h5", "--image-size", "0")
    assert_one_line_error(outcome, "argument --image-size:", status=2)
    assert not (tmp_path / "o.h5").exists()


def test_one_way_episodes_are_refused(tmp_path, tiny_splits, tiny_glyph_dataset):
    outcome = run_cli("train", *TINY_TRAIN, "--n-way", "1", "--out", tmp_path / "run")
    assert_one_line_error(outcome, "argument --n-way:", status=2)
    with pytest.raises(ValueError, match="n_way must be an integer >= 2"):
        EpisodeSampler(tiny_splits["train"], 1, 1, 1)
    assert list(tmp_path.iterdir()) == []


def test_episodes_rounded_to_whole_meta_batches_are_announced(tmp_path, tiny_glyph_dataset):
    run = tmp_path / "run"
    outcome = run_cli("train", *TINY_TRAIN, "--meta-batch", "2", "--episodes", "5", "--val-every", "3", "--out", run)
    assert outcome.status == 0, outcome.err
    warnings = [line for line in outcome.err.splitlines() if ": warning: " in line]
    assert warnings == [
        f"{PROG}: warning: --episodes 5 is not a multiple of --meta-batch 2: meta-training runs 6 episodes (3 meta-batches)",
        f"{PROG}: warning: --val-every 3 is not a multiple of --meta-batch 2: validating every 4 episodes (2 meta-batches)",
    ]
    assert json.loads(outcome.out.splitlines()[-1])["episodes"] == 6  # the numbers the warnings named
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["4", "6"]
    exact = run_cli("train", *TINY_TRAIN, "--meta-batch", "2", "--episodes", "4", "--val-every", "2", "--out", tmp_path / "b")
    assert exact.status == 0 and ": warning: " not in exact.err


# --- pickle caches (finding 11) -------------------------------------------------------------------------------


def _malicious_caches(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    for split in ("train", "val", "test"):
        (folder / miniimagenet.PICKLE_NAME.format(split=split)).write_bytes(pickle.dumps(_Payload(marker)))
    return folder


def test_pickle_caches_are_not_unpickled_without_trust_pickle(tmp_path):
    marker, out = tmp_path / "payload_ran", tmp_path / "m.h5"
    source = _malicious_caches(tmp_path / "caches", marker)
    with pytest.raises(ValueError, match="without --trust-pickle"):
        miniimagenet.build_miniimagenet(source, out, progress=False)
    with pytest.raises(ValueError, match="without --trust-pickle"):
        miniimagenet.read_pickle_cache(source / "mini-imagenet-cache-train.pkl")
    outcome = run_cli("prepare_data", "miniimagenet", "--source", source, "--out", out, "--no-progress")
    assert_one_line_error(outcome, "--trust-pickle")
    assert not marker.exists() and not out.exists()
    # The payload is real: with the flag it runs (and the content check then refuses the file).
    trusted = run_cli("prepare_data", "miniimagenet", "--source", source, "--out", out, "--no-progress", "--trust-pickle")
    assert_one_line_error(trusted, "must hold a dict")
    assert marker.exists() and not out.exists()


# --- hostile data sources (issue 31, second round) ------------------------------------------------------------


def hostile_source(dataset: str, tmp_path: Path, name: str, data: bytes) -> tuple[Path, str]:
    """A tiny valid source of ``dataset`` plus one image file ``name`` holding ``data``; returns the source and how
    errors must name that file (``ZIP:MEMBER`` for Omniglot, the path for miniImageNet)."""
    if dataset == "omniglot":
        source, member = make_omniglot_zip(tmp_path / "bg.zip", size=8), f"bg/A1/character1/{name}"
        with zipfile.ZipFile(source, "a") as archive:
            archive.writestr(member, data)
        return source, f"{source}:{member}"
    source = make_class_folders(tmp_path / "mini")
    path = source / "val" / "nval1" / name
    path.write_bytes(data)
    return source, str(path)


def prepare(dataset: str, source: Path, out: Path):
    return run_cli("prepare_data", dataset, "--source", source, "--out", out, "--no-progress")


@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet"])
def test_a_decompression_bomb_is_refused_in_one_line_naming_the_image(dataset, tmp_path):
    """Case 7: a PNG claiming 30000x30000 pixels gave PIL's DecompressionBombError as a traceback."""
    source, origin = hostile_source(dataset, tmp_path, "bomb.png", png_claiming(30000, 30000))
    out = tmp_path / "out" / "o.h5"
    assert_one_line_error(prepare(dataset, source, out), origin, "too many pixels to decode safely", "remove it")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet"])
def test_an_image_over_pillows_pixel_limit_is_refused_not_decoded_with_a_warning(dataset, tmp_path, monkeypatch):
    """Case 7: between Image.MAX_IMAGE_PIXELS and twice that, Pillow only warns (DecompressionBombWarning) and decodes."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # a 30x30 image, 900 pixels, is in that band; 8x8 are not
    source, origin = hostile_source(dataset, tmp_path, "big.png", png_bytes(np.zeros((30, 30), np.uint8)))
    assert_one_line_error(prepare(dataset, source, tmp_path / "o.h5"), origin, "too many pixels to decode safely")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("member", ["../evil.png", "/abs/x/y.png", "Greek/../../evil2.png", "bg/A0/../../A9/c/x.png",
                                    "bg\\..\\A9/character0/x.png", "C:/A9/character0/x.png"])
def test_zip_members_with_unsafe_paths_are_refused_by_name(member, tmp_path):
    """Case 12: such members were (rightly) not extracted but silently became alphabets of one image each."""
    source = make_omniglot_zip(tmp_path / "bg.zip", size=8)
    with zipfile.ZipFile(source, "a") as archive:
        archive.writestr(member, png_bytes(np.zeros((8, 8), np.uint8)))
    with pytest.raises(ValueError, match="unsafe path"):
        omniglot.list_images([source])
    assert_one_line_error(prepare("omniglot", source, tmp_path / "o.h5"), f"{source}:{member}", "unsafe path")
    assert not (tmp_path / "o.h5").exists()


def declare_size(path: Path, member: str, size: int) -> None:
    """Make the zip's central directory claim that ``member`` decompresses to ``size`` bytes."""
    data = bytearray(path.read_bytes())
    start = data.index(b"PK\x01\x02")
    while data[start + 46:start + 46 + struct.unpack_from("<H", data, start + 28)[0]] != member.encode():
        start = data.index(b"PK\x01\x02", start + 4)
    struct.pack_into("<I", data, start + 24, size)  # the uncompressed size field of its directory entry
    path.write_bytes(bytes(data))


def test_an_oversized_zip_member_is_refused_by_name_before_it_is_read(tmp_path, monkeypatch):
    """Case 13: a 300 MB member was read whole into memory (1.16 GB resident) before the refusal, which showed
    ``<_io.BytesIO object at 0x...>`` instead of the member."""
    source, origin = hostile_source("omniglot", tmp_path, "huge.png", png_bytes(np.zeros((8, 8), np.uint8)))
    declare_size(source, origin.split(":", 1)[1], 300_000_000)
    opened = []
    open_member = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *args, **kwargs: (
        opened.append(getattr(name, "filename", name)), open_member(self, name, *args, **kwargs))[1])
    line = assert_one_line_error(prepare("omniglot", source, tmp_path / "o.h5"), origin, "300000000 bytes",
                                 f"over the {64 << 20} bytes")
    assert "huge.png" not in " ".join(opened) and "BytesIO" not in line


def test_an_unreadable_image_is_named_not_shown_as_a_bytesio(tmp_path):
    """Case 13: the message of an image Pillow cannot identify showed ``<_io.BytesIO object at 0x...>``."""
    source, origin = hostile_source("omniglot", tmp_path, "junk.png", b"\0" * 100)
    line = assert_one_line_error(prepare("omniglot", source, tmp_path / "o.h5"), origin, "not an image")
    assert "BytesIO" not in line


@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet"])
def test_an_oversized_image_file_is_refused_by_name_before_it_is_read(dataset, tmp_path):
    """Case 13, files on disk: an extracted Omniglot folder, a miniImageNet folder (a sparse file: no disk used)."""
    source, origin = hostile_source(dataset, tmp_path, "huge.png", b"")
    if dataset == "omniglot":  # as an extracted folder: the zip's members on disk, the huge one included
        with zipfile.ZipFile(source) as archive:
            archive.extractall(tmp_path / "extracted")
        source, origin = tmp_path / "extracted", str((tmp_path / "extracted").resolve() / origin.split(":", 1)[1])
    os.truncate(origin, 300_000_000)
    assert_one_line_error(prepare(dataset, source, tmp_path / "o.h5"), origin, "300000000 bytes", "over the")


@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet"])
def test_an_image_that_is_not_a_regular_file_is_refused_by_name(dataset, tmp_path):
    """Case 13, a size that lies on disk: ``x.png -> /dev/zero`` has size 0 and never ends (read whole, it filled
    the memory)."""
    source, origin = hostile_source(dataset, tmp_path, "zero.png", b"")
    if dataset == "omniglot":
        with zipfile.ZipFile(source) as archive:
            archive.extractall(tmp_path / "extracted")
        source, origin = tmp_path / "extracted", str((tmp_path / "extracted").resolve() / origin.split(":", 1)[1])
    os.unlink(origin)
    os.symlink("/dev/zero", origin)
    assert_one_line_error(prepare(dataset, source, tmp_path / "o.h5"), origin, "not a regular file")


def test_the_image_reader_stops_at_the_cap_whatever_the_size_declared(monkeypatch):
    """Case 13, a header that lies: at most the cap + 1 bytes are read, whatever size the zip directory declares."""
    from fewshot_l2l.data import images

    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    source = io.BytesIO(bytes(10**6))
    with pytest.raises(ValueError, match="omniglot: image x.zip:a/b/c.png holds more than 1000 bytes"):
        images.read_capped(source, 10, "x.zip:a/b/c.png", "omniglot")
    assert source.tell() == 1001


@pytest.mark.parametrize("offset, set_field", [(8, lambda flags: flags | 1), (10, lambda method: 99)],
                         ids=["encrypted", "compression-method-99"])
def test_an_encrypted_or_unsupported_zip_member_is_named(offset, set_field, tmp_path):
    """Found beside case 13: zipfile's RuntimeError (encrypted) and NotImplementedError (method) were tracebacks."""
    source = make_omniglot_zip(tmp_path / "bg.zip", size=8)
    data = bytearray(source.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first member's directory entry: its flags (8) or method (10) field
    struct.pack_into("<H", data, entry + offset, set_field(struct.unpack_from("<H", data, entry + offset)[0]))
    source.write_bytes(bytes(data))
    assert_one_line_error(prepare("omniglot", source, tmp_path / "o.h5"), f"{source}:bg/A0/character0/x_00.png",
                          "unreadable image")
