"""Issue 31's cases, each reproduced as a hostile user met it: a kept best.pt is never overwritten, a checkpoint of
another kind or a file that is no checkpoint is named for what it is, a full disk or a read-only folder names the file
and says what is kept, settings are checked against the data before models are built, and the remaining messages
say what happened (compare.py's signals: tests/integration/test_compare.py)."""

import errno
from pathlib import Path

import pytest
import torch

import fewshot_l2l.methods as methods
from cli_helpers import TINY_TRAIN, TINY_TRAIN_OPTIMIZER, png_bytes, run_cli
from fewshot_l2l.files import atomic_write
from fewshot_l2l.runs.folder import RunFolder
from test_inputs import assert_one_line_error

T = TINY_TRAIN  # 3-way 1-shot, one episode per update, tiny CNN and meta-learner on tiny glyphs
PROTONET = ["--method", "protonet", "--n-way", "3", "--k-shot", "1", "--n-query", "1", "--episodes", "1",
            "--hidden-channels", "2", "--val-every", "1", "--val-episodes", "1", "--device", "cpu"]
LOOPS = {"meta-lstm": ("train", T), "protonet": ("train", PROTONET),
         "optimizer": ("train_optimizer", TINY_TRAIN_OPTIMIZER)}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_run_folder_with_a_kept_best_pt_is_refused_unless_forced(loop, tiny_glyph_dataset, tmp_path):
    """A user who kept only best.pt used to lose it: without last.pt the next run started over it, exit 0."""
    command, args = LOOPS[loop]
    out = tmp_path / "R"
    assert run_cli(command, *args, "--out", out).status == 0
    (out / "last.pt").unlink()
    kept = (out / "best.pt").read_bytes()
    again = run_cli(command, *args, "--seed", "5", "--out", out)
    assert_one_line_error(again, f"{out} holds best.pt, init.pt, metrics.csv", "of an earlier run (no last.pt, so it "
                          "cannot be resumed): pass --force to start over (replacing them)")
    resumed = run_cli(command, *args, "--seed", "5", "--resume", "--out", out)
    assert_one_line_error(resumed, f"--resume: {out} has no last.pt to continue from, only best.pt, init.pt, metrics.csv")
    assert (out / "best.pt").read_bytes() == kept
    both = run_cli(command, *args, "--resume", "--force", "--out", out)
    assert both.status == 2 and "resume continues the run in out, force starts it over" in both.err
    forced = run_cli(command, *args, "--seed", "5", "--force", "--out", out)
    assert forced.status == 0, forced.err
    assert "note: --force: replacing best.pt, init.pt, metrics.csv" in forced.err
    assert (out / "last.pt").is_file() and (out / "best.pt").read_bytes() != kept


def test_a_folder_holding_only_a_comparison_result_is_refused(tiny_glyph_dataset, tmp_path):
    (tmp_path / "R").mkdir()
    (tmp_path / "R" / "result.json").write_text("{}")
    assert_one_line_error(run_cli("train", *T, "--out", tmp_path / "R"), "holds result.json of an earlier run")


@pytest.mark.parametrize("link", [False, True])
def test_out_that_is_a_file_says_a_folder_is_needed(link, tiny_glyph_dataset, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a run")
    out = target
    if link:
        out = tmp_path / "link"
        out.symlink_to(target)
    outcome = run_cli("train", *T, "--out", out)
    assert_one_line_error(outcome, f"--out {out}: {out} is a file, not a folder: a run needs a folder of its own")
    assert target.read_text() == "not a run"


def test_a_checkpoint_of_another_kind_names_what_wrote_it_and_the_command_that_takes_it(
        tiny_glyph_dataset, fewshot_checkpoint, optimizer_checkpoint, tmp_path):
    few_shot_run, optimizer_run = fewshot_checkpoint.parent, optimizer_checkpoint.parent
    assert_one_line_error(run_cli("train", *PROTONET, "--resume", "--out", few_shot_run),
                          f"the run in {few_shot_run} was trained with --method meta-lstm, not --method protonet: "
                          "resume it with scripts/train.py --method meta-lstm --resume")
    assert_one_line_error(run_cli("train", *T, "--resume", "--out", optimizer_run),
                          "is not a fewshot_l2l checkpoint: it is a learned-optimizer checkpoint of "
                          "scripts/train_optimizer.py (resume it with train_optimizer.py --resume")
    assert_one_line_error(run_cli("evaluate", "--checkpoint", optimizer_checkpoint, "--device", "cpu"),
                          "it is a learned-optimizer checkpoint", "evaluate it with scripts/evaluate_optimizer.py")
    assert_one_line_error(run_cli("evaluate_optimizer", "--checkpoint", fewshot_checkpoint, "--device", "cpu"),
                          "is not a learned-optimizer checkpoint: it is a few-shot checkpoint of scripts/train.py "
                          "--method meta-lstm", "evaluate it with scripts/evaluate.py")
    for checkpoint in (optimizer_checkpoint,):
        assert_one_line_error(run_cli("plot_gates", "--checkpoint", checkpoint, "--device", "cpu"),
                              "it is a learned-optimizer checkpoint")
    protonet = run_cli("train", *LOOPS["protonet"][1], "--out", tmp_path / "P")
    assert protonet.status == 0, protonet.err
    assert_one_line_error(run_cli("plot_gates", "--checkpoint", tmp_path / "P" / "best.pt", "--device", "cpu"),
                          "was trained with --method protonet, which has no gates")


def test_a_dataset_or_an_image_given_as_a_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "data.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (tmp_path / "picture.png").write_bytes(png_bytes(torch.zeros(4, 4, dtype=torch.uint8).numpy()))
    assert_one_line_error(run_cli("evaluate", "--checkpoint", tmp_path / "data.h5", "--device", "cpu"),
                          "data.h5 is an HDF5 file (a dataset built by prepare_data.py? give it as --data), not a checkpoint")
    assert_one_line_error(run_cli("evaluate", "--checkpoint", tmp_path / "picture.png", "--device", "cpu"),
                          "picture.png is a PNG image, not a checkpoint")


def test_a_full_disk_names_the_file_and_what_is_kept(tmp_path, monkeypatch):
    import fewshot_l2l.runs.folder as folder

    run = RunFolder(tmp_path / "run", ("update", "loss"), resume=False)
    run.start({"w": torch.zeros(1)})
    run.save({"w": torch.ones(1)}, improved=True, step=4)
    real = folder.atomic_torch_save

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path).with_name(".x.tmp")))

    monkeypatch.setattr(folder, "atomic_torch_save", full)
    with pytest.raises(OSError, match=rf"No space left on device while writing {tmp_path / 'run' / 'last.pt'}; "
                                      rf"{tmp_path / 'run' / 'last.pt'} is intact and holds step 4: once the cause is "
                                      "fixed, the same command with --resume continues from it"):
        run.save({"w": torch.full((1,), 2.0)}, improved=False, step=8)
    monkeypatch.setattr(folder, "atomic_torch_save", real)
    assert torch.load(run.last)["w"].item() == 1.0
    run.close()
    fresh = RunFolder(tmp_path / "fresh", ("update", "loss"), resume=False)
    monkeypatch.setattr(folder, "atomic_torch_save", full)
    with pytest.raises(OSError, match="while writing .*init.pt; no last.pt was written yet"):
        fresh.start({"w": torch.zeros(1)})
    fresh.close()


def test_the_atomic_writer_names_its_target_not_its_temporary_file(tmp_path):
    """plot_gates into a read-only folder used to name the hidden temporary file it could not create."""
    def denied(tmp):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(PermissionError) as raised:
        atomic_write(tmp_path / "gates.png", denied)
    assert raised.value.filename == str(tmp_path / "gates.png") and ".tmp" not in str(raised.value)


def test_settings_are_checked_against_the_data_before_any_model_is_built(tiny_glyph_dataset, monkeypatch, tmp_path):
    """--n-way 2147483647 used to allocate tens of GB for the learner before the split check named the flag."""
    monkeypatch.setattr(methods, "new_learner", lambda *args: pytest.fail("a model was built"))
    import fewshot_l2l.training as training
    monkeypatch.setattr(training, "new_learner", lambda *args: pytest.fail("a model was built"))
    outcome = run_cli("train", *T, "--n-way", "2147483647", "--out", tmp_path / "R")
    assert_one_line_error(outcome, "cannot give 2147483647-way episodes", "lower --n-way")


def test_a_diverged_validation_says_training_stopped_and_what_was_kept(tiny_glyph_dataset, tmp_path):
    outcome = run_cli("train", *T, "--n-query", "2", "--inner-steps", "2", "--hidden-channels", "4", "--hidden-size", "20",
                      "--val-episodes", "2", "--lr", "1e30", "--episodes", "6", "--val-every", "3", "--out", tmp_path / "R")
    line = assert_one_line_error(outcome, "training stopped at update ", ": its validation diverged (evaluate: ",
                                 "Lower --lr (1e+30)")
    assert "no last.pt was written yet" in line or "is intact and holds step" in line


def test_a_changed_dataset_on_resume_is_named_and_a_baseline_lists_only_its_own_settings(
        tiny_glyph_dataset, tmp_path):
    from fewshot_l2l.data.glyphs import make_glyph_splits
    from test_run_checks import write_h5

    pytest.importorskip("h5py")
    write_h5(tmp_path / "omniglot.h5", make_glyph_splits({"train": 20, "val": 8, "test": 8}, images_per_class=6,
                                                         image_size=16, seed=3))
    out = tmp_path / "P"
    protonet = LOOPS["protonet"][1]
    assert run_cli("train", *protonet, "--out", out).status == 0
    changed = run_cli("train", *protonet, "--dataset", "omniglot", "--data", tmp_path / "omniglot.h5", "--resume",
                      "--out", out)
    line = assert_one_line_error(changed, "dataset: 'glyphs' -> 'omniglot'")
    assert "another build" not in line
    other = run_cli("train", *protonet, "--n-query", "2", "--resume", "--out", out)
    line = assert_one_line_error(other, "n_query: 1 -> 2")
    assert not any(name in line for name in ("amp", "compile", "inner_lr", "batched_learner")), line
