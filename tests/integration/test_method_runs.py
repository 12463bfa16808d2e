"""Baselines end to end on tiny glyphs: every method trains a few updates through scripts/train.py --method and
evaluates through scripts/evaluate.py; a --method that disagrees with the checkpoint is refused, naming both."""

import json

import pytest

from cli_helpers import run_cli

def tiny(episodes: int) -> list[str]:
    """3-way 1-shot, meta-batches of 2 (finetune: mini-batches of 2 images), a validation every 2 episodes."""
    return ["--n-way", "3", "--k-shot", "1", "--n-query", "2", "--episodes", str(episodes), "--meta-batch", "2",
            "--hidden-channels", "2", "--val-every", "2", "--val-episodes", "2", "--device", "cpu"]


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd", "protonet", "finetune"])
def test_each_method_trains_resumes_and_evaluates(method, tiny_glyph_dataset, tmp_path):
    if method in ("maml", "fomaml", "metasgd"):
        pytest.importorskip("learn2learn")
    out = tmp_path / method
    trained = run_cli("train", "--method", method, *tiny(4), "--out", out)
    assert trained.status == 0, trained.err
    summary = json.loads(trained.out.splitlines()[-1])
    # finetune counts mini-batches (4 of them), the others episodes (2 meta-batches of 2); both validate twice.
    assert summary["method"] == method and summary["updates"] == (4 if method == "finetune" else 2)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("update,episodes,train_loss") and len(rows) == 3
    more = run_cli("train", "--method", method, *tiny(8), "--out", out, "--resume")
    assert more.status == 0, more.err
    assert len((out / "metrics.csv").read_text().splitlines()) == 5 and json.loads(more.out.splitlines()[-1])["episodes"] == 8
    for query_bn in ("support", "batch"):
        evaluated = run_cli("evaluate", "--checkpoint", out / "best.pt", "--episodes", "3", "--json", "--device", "cpu",
                            "--query-bn", query_bn)
        assert evaluated.status == 0, evaluated.err
        result = json.loads(evaluated.out)
        assert result["method"] == method and result["query_bn"] == query_bn and result["n_episodes"] == 3
        assert 0.0 <= result["accuracy"] <= 1.0


def test_a_method_that_disagrees_with_the_checkpoint_is_refused(fewshot_checkpoint, tiny_glyph_dataset):
    refused = run_cli("evaluate", "--checkpoint", fewshot_checkpoint, "--method", "protonet", "--device", "cpu")
    assert refused.status == 1
    assert refused.error_lines == [f"prog.py: error: --method protonet: checkpoint {fewshot_checkpoint} was trained "
                                   "with --method meta-lstm"]
    for query_bn in ("support", "batch"):  # support: the default
        agreed = run_cli("evaluate", "--checkpoint", fewshot_checkpoint, "--method", "meta-lstm", "--episodes", "2",
                         "--device", "cpu", "--json", *(["--query-bn", query_bn] if query_bn == "batch" else []))
        assert agreed.status == 0, agreed.err
        assert json.loads(agreed.out)["method"] == "meta-lstm" and json.loads(agreed.out)["query_bn"] == query_bn


def test_a_baseline_refuses_options_it_does_not_have(tiny_glyph_dataset, tmp_path):
    refused = run_cli("train", "--method", "protonet", "--inner-lr", "0.1", "--out", tmp_path / "run")
    assert refused.status == 2 and "unrecognized arguments: --inner-lr 0.1" in refused.err
    meta_lstm_only = run_cli("train", "--method", "maml", "--hidden-size", "3", "--out", tmp_path / "run")
    assert meta_lstm_only.status == 2 and "--hidden-size" in meta_lstm_only.err


def test_wider_episodes_than_the_validation_alphabet_train_and_validate_with_rotated_validation_classes(tmp_path):
    """20-way on the minimal Omniglot build in miniature: 8 alphabets of 3 characters, alphabet-disjoint, validation one
    alphabet (3 characters): 5-way validation is refused before training under the file's protocol; with --rotate
    train+val its 12 rotated classes validate 5-way, and the test split stays as the file has it (unrotated)."""
    pytest.importorskip("h5py")
    from cli_helpers import make_omniglot_zip

    from fewshot_l2l.checkpoints import checkpoint_splits, load_checkpoint

    source = make_omniglot_zip(tmp_path / "bg.zip", size=16, alphabets=8, characters=3, drawings=8)
    built = run_cli("prepare_data", "omniglot", "--source", source, "--out", tmp_path / "tiny.h5", "--image-size", "16",
                    "--no-progress")
    assert built.status == 0, built.err
    five_way = ["--dataset", "omniglot", "--data", tmp_path / "tiny.h5", "--method", "protonet", "--n-way", "5",
                "--k-shot", "1", "--n-query", "2", "--episodes", "2", "--hidden-channels", "2", "--val-every", "2",
                "--val-episodes", "2", "--device", "cpu"]
    refused = run_cli("train", *five_way, "--out", tmp_path / "auto")
    assert refused.status == 1 and "the val split of" in refused.err and "(3 classes) cannot give 5-way" in refused.err
    trained = run_cli("train", *five_way, "--rotate", "train+val", "--out", tmp_path / "rotated")
    assert trained.status == 0, trained.err
    loaded = load_checkpoint(tmp_path / "rotated" / "best.pt")
    splits = checkpoint_splits(tmp_path / "rotated" / "best.pt", loaded)
    assert loaded.config.rotate == "train+val" and splits["val"].n_classes == 12
    assert splits["test"].n_classes == len({name.split("@")[0] for name in splits["test"].class_names}) >= 5
