"""What a training run checks before it spends time, and what it refuses to continue or evaluate: settings that
are not finite, validation episodes the split cannot give, another build of the dataset, a stored relative path;
and what it leaves on disk (modes, handlers, JSON)."""

import json
import math
import os
import signal
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import fewshot_l2l.methods.meta_lstm as meta_lstm
import fewshot_l2l.training as training
from fewshot_l2l.data.glyphs import make_glyph_splits
from fewshot_l2l.optim.comparison import BaselineResult, Comparison
from fewshot_l2l.checkpoints import checkpoint_splits, load_checkpoint
from fewshot_l2l.methods import method_config
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.optim.rule_config import OptimizerTrainConfig
from fewshot_l2l.optim.rule_training import train_optimizer
from fewshot_l2l.training import meta_train

TINY = dict(n_way=3, k_shot=1, n_query=2, inner_steps=2, meta_batch=2, episodes=4, hidden_size=4, hidden_channels=4,
            val_every=4, val_episodes=2, device="cpu")


@pytest.mark.parametrize("overrides, message", [
    ({"lr": math.inf}, "lr must be a positive finite number, got inf"),
    ({"lr": math.nan}, "lr must be a positive finite number, got nan"),
    ({"grad_clip": math.nan}, r"grad_clip must be a positive finite number \(or None\), got nan"),
    ({"max_minutes": math.nan}, r"max_minutes must be a positive finite number \(or None\), got nan"),
    ({"max_minutes": math.inf}, "max_minutes must be a positive finite number"),
    ({"max_nonfinite": 0}, r"max_nonfinite must be an integer in \[1, 2147483647\], got 0"),
])
def test_train_config_refuses_settings_that_are_not_finite(overrides, message):
    with pytest.raises(ValueError, match=f"MetaLSTMConfig: {message}"):
        MetaLSTMConfig(**overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"lr": math.nan}, "lr must be a positive finite number, got nan"),
    ({"output_scale": math.inf}, "output_scale must be a positive finite number, got inf"),
    ({"grad_clip": math.nan}, r"grad_clip must be a positive finite number \(or None\), got nan"),
    ({"max_minutes": math.nan}, "max_minutes must be a positive finite number"),
    ({"max_nonfinite": 0}, r"max_nonfinite must be an integer in \[1, 2147483647\], got 0"),
])
def test_optimizer_train_config_refuses_settings_that_are_not_finite(overrides, message):
    with pytest.raises(ValueError, match=f"OptimizerTrainConfig: {message}"):
        OptimizerTrainConfig(**overrides)
    assert OptimizerTrainConfig(grad_clip=None, max_minutes=None).grad_clip is None  # None: off


@pytest.mark.parametrize("overrides, message", [
    ({"n_way": 1}, r"n_way must be an integer in \[2, 2147483647\], got 1"),
    ({"n_way": True}, r"n_way must be an integer in \[2, 2147483647\], got True"),
    ({"k_shot": 1.5}, r"k_shot must be an integer in \[1, 2147483647\], got 1.5"),
    ({"hidden_channels": 0}, r"hidden_channels must be an integer in \[1, 2147483647\], got 0"),
    ({"inner_batch_size": 0}, r"inner_batch_size must be an integer in \[1, 2147483647\] \(or None\), got 0"),
    ({"episodes": 2**64}, r"episodes must be an integer in \[1, 2147483647\], got 18446744073709551616"),
    ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\], got -1"),
    ({"seed": 2**64}, r"seed must be an integer in \[0, 4294967295\], got 18446744073709551616"),
    ({"second_order": 1}, "second_order must be True or False, got 1"),
])
def test_train_config_refuses_what_is_not_an_integer_in_range(overrides, message):
    """Python callers used to get n_way=1, k_shot=1.5 or seed=2**64 accepted and fail (or not) deep inside a run."""
    with pytest.raises(ValueError, match=f"MetaLSTMConfig: {message}"):
        MetaLSTMConfig(**overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"seed": 2**60}, r"seed must be an integer in \[0, 4294967295\], got 1152921504606846976"),
    ({"hidden_size": True}, r"hidden_size must be an integer in \[1, 2147483647\], got True"),
    ({"horizon": 1.0, "unroll": 1}, r"horizon must be an integer in \[1, 2147483647\], got 1.0"),
    ({"resume": "yes"}, "resume must be True or False, got 'yes'"),
])
def test_optimizer_train_config_refuses_what_is_not_an_integer_in_range(overrides, message):
    with pytest.raises(ValueError, match=f"OptimizerTrainConfig: {message}"):
        OptimizerTrainConfig(**overrides)


def test_a_split_too_small_for_the_episodes_fails_before_the_first_update(tiny_data, tmp_path, monkeypatch):
    """20-way training on a file whose validation split has 17 classes used to train until the first validation."""
    calls = []
    monkeypatch.setattr(meta_lstm, "run_episodes", lambda *args, **kwargs: calls.append(1))
    with pytest.raises(ValueError, match=r"the val split of glyphs \(8 classes\) cannot give 10-way episodes of 1 \+ 2 "
                                         r"images per class \(.*larger than the 8 classes of split 'val'.*lower --n-way"):
        meta_train(MetaLSTMConfig(**{**TINY, "n_way": 10, "out": str(tmp_path / "run")}), progress=False)
    with pytest.raises(ValueError, match=r"the train split of glyphs \(20 classes\) cannot give 3-way episodes of 1 \+ 6 "
                                         r"images per class \(.*k_shot \+ n_query = 7"):
        meta_train(MetaLSTMConfig(**{**TINY, "n_query": 6, "out": str(tmp_path / "run")}), progress=False)
    # Prototypical Networks' wider training episodes are checked on the train split, and named as such.
    protonet = method_config("protonet", n_way=3, k_shot=1, n_query=2, train_way=30, hidden_channels=4, device="cpu",
                             out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"the train split of glyphs \(20 classes\) cannot give 30-way episodes of 1 \+ 2 "
                                         r"images per class \(.*\): lower --train-way, --k-shot or --train-query"):
        meta_train(protonet, progress=False)
    assert calls == [] and list(tmp_path.iterdir()) == []  # no update, and no empty run folder left


def write_h5(path, splits):
    from fewshot_l2l.data.hdf5 import HDF5Writer

    with HDF5Writer(path, "omniglot", splits["train"].image_shape) as writer:
        for name, split in splits.items():
            writer.split(name, len(split.labels), split.class_names).write(split.images, split.labels)


def test_resume_and_evaluation_refuse_another_build_of_the_dataset(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    sizes = {"train": 20, "val": 8, "test": 8}
    write_h5(tmp_path / "a.h5", make_glyph_splits(sizes, images_per_class=6, image_size=16, seed=3))
    write_h5(tmp_path / "b.h5", make_glyph_splits(sizes, images_per_class=6, image_size=16, seed=4))  # other images
    monkeypatch.chdir(tmp_path)
    config = MetaLSTMConfig(**{**TINY, "dataset": "omniglot", "data": "a.h5", "out": "run"})  # relative paths
    meta_train(config, progress=False)
    _, saved, checkpoint = load_checkpoint("run/last.pt")
    assert saved.data == str(tmp_path / "a.h5")  # stored absolute
    assert checkpoint["dataset"]["path"] == str(tmp_path / "a.h5") and len(checkpoint["dataset"]["content_sha256"]) == 64

    log = (tmp_path / "run" / "metrics.csv").read_bytes()
    with pytest.raises(ValueError, match=rf"--resume run/last.pt: the checkpoint was trained on {tmp_path / 'a.h5'} "
                                         rf"\(content sha256 [0-9a-f]{{16}}\.\.\.\), but {tmp_path / 'b.h5'} has content "
                                         r"sha256 [0-9a-f]{16}\.\.\.: another build"):
        meta_train(replace(config, data="b.h5", episodes=8, resume=True), progress=False)
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == log  # refused before touching the run
    meta_train(replace(config, episodes=8, resume=True), progress=False)  # the same file: continues

    from fewshot_l2l.cli import evaluate

    with pytest.raises(SystemExit, match=r"error: checkpoint run/best.pt: the checkpoint was trained on .*a.h5 .* but .*b.h5"):
        evaluate.main(["--checkpoint", "run/best.pt", "--data", "b.h5", "--episodes", "2", "--device", "cpu"])

    # An older checkpoint stored the relative path and no checksum: found from the folder the run was started in.
    checkpoint["config"]["data"] = "a.h5"
    del checkpoint["dataset"]
    torch.save(checkpoint, tmp_path / "run" / "old.pt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert checkpoint_splits("../run/old.pt", load_checkpoint("../run/old.pt"))["test"].n_classes == 8
    checkpoint["config"]["data"] = "gone.h5"
    torch.save(checkpoint, tmp_path / "run" / "old.pt")
    with pytest.raises(FileNotFoundError, match=rf"dataset file gone.h5 \(a relative path stored in ../run/old.pt\) does "
                                                rf"not exist: tried {tmp_path / 'elsewhere' / 'gone.h5'}, "
                                                rf".*{tmp_path / 'run' / 'gone.h5'}, {tmp_path / 'gone.h5'}; pass --data"):
        checkpoint_splits("../run/old.pt", load_checkpoint("../run/old.pt"))


def test_resume_refuses_other_generated_glyphs(tiny_splits, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "load_splits", lambda dataset, data=None, seed=0, rotate="auto": tiny_splits)
    config = MetaLSTMConfig(**{**TINY, "out": str(tmp_path / "run")})
    meta_train(config, progress=False)
    other = make_glyph_splits({"train": 20, "val": 8, "test": 8}, images_per_class=6, image_size=16, seed=5)
    monkeypatch.setattr(training, "load_splits", lambda dataset, data=None, seed=0, rotate="auto": other)
    with pytest.raises(ValueError, match="trained on the embedded glyphs .* but the embedded glyphs has content sha256"):
        meta_train(replace(config, episodes=8, resume=True), progress=False)


def test_run_files_follow_the_umask_and_the_handlers_are_restored(tiny_data, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    umask = os.umask(0o027)
    try:
        meta_train(MetaLSTMConfig(**{**TINY, "out": str(tmp_path / "run")}), progress=False)
        train_optimizer(OptimizerTrainConfig(hidden_size=2, horizon=2, unroll=1, meta_batch=2, iterations=1, val_every=1,
                                             val_problems=2, device="cpu", out=str(tmp_path / "opt")), progress=False)
    finally:
        os.umask(umask)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"run": 0o750, "opt": 0o750, **{f"run/{name}": 0o640 for name in
                     ("init.pt", "last.pt", "best.pt", "metrics.csv", "curves.png")},
                     **{f"opt/{name}": 0o640 for name in ("init.pt", "last.pt", "best.pt", "metrics.csv")}}
    assert {s: signal.getsignal(s) for s in before} == before


def test_hdf5_builds_clean_their_own_stale_temporaries_only(tmp_path, tiny_splits):
    pytest.importorskip("h5py")
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    stale, other, live = (tmp_path / f".d.h5.{process.pid}-0123abcd.tmp", tmp_path / f".e.h5.{process.pid}-0123abcd.tmp",
                          tmp_path / f".d.h5.{os.getpid()}-0123abcd.tmp")
    for path in (stale, other, live):
        path.write_bytes(b"half an HDF5 file")
    umask = os.umask(0o027)
    try:
        write_h5(tmp_path / "d.h5", tiny_splits)
    finally:
        os.umask(umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, live.name, "d.h5"])
    assert stat.S_IMODE((tmp_path / "d.h5").stat().st_mode) == 0o640


def test_json_summaries_hold_no_infinity(tmp_path):
    """A rule whose iterates overflow: every validation scores inf; the summary says null, never Infinity."""
    summary = train_optimizer(OptimizerTrainConfig(hidden_size=4, horizon=10, unroll=5, meta_batch=8, iterations=2,
                                                   val_every=1, val_problems=8, device="cpu", output_scale=1e20,
                                                   out=str(tmp_path / "run")), progress=False)
    assert summary["best_val_sum_loss"] is None and Path(summary["best"]).exists()
    json.dumps(summary, allow_nan=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[-1] for row in rows] == ["skipped_updates", "1", "1"]  # each iteration's first unroll
    curve = torch.tensor([1.0, math.inf])
    comparison = Comparison(1, 4, math.inf, math.inf, curve, {"sgd": BaselineResult(0.1, 0.1, 0.5, 1.0, curve)})
    summary = comparison.summary("quadratic")
    assert summary["learned_final_loss"] is None and summary["final_loss_ratio"] is None
    json.dumps(summary, allow_nan=False)
