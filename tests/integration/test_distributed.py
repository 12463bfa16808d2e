"""Data-parallel meta-training (fewshot_l2l.runs.distributed): 2 gloo processes on the CPU against one process.

One spawn of two ranks runs every multi-rank phase (a process group costs seconds to start on a busy
2-core machine); the parent replays the same meta-updates in one process, drawing each rank's share
from that rank's sampler stream and concatenating them into the union meta-batch.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import fewshot_l2l.methods.meta_lstm as meta_lstm
import fewshot_l2l.training as training
from fewshot_l2l.adaptation import EpisodeResult, InnerLoop, run_episodes
from fewshot_l2l.data.episodes import Episode, EpisodeSampler
from fewshot_l2l.data.glyphs import make_glyph_splits
from fewshot_l2l.data.hdf5 import HDF5Writer
from fewshot_l2l.methods import build_method, method_config, new_learner
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.runs import distributed
from fewshot_l2l.runs.loop import meta_update
from fewshot_l2l.runs.process import FolderLock
from fewshot_l2l.schedules import run_progress, scheduled_lr
from fewshot_l2l.training import meta_train

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2


def tiny_splits():
    return make_glyph_splits({"train": 20, "val": 8, "test": 8}, images_per_class=6, image_size=16, seed=3)


def tiny_config(out: Path, method: str = "meta-lstm", **overrides) -> MetaLSTMConfig:
    values = dict(n_way=3, k_shot=1, n_query=2, meta_batch=4, episodes=8, hidden_channels=4, val_every=4,
                  val_episodes=2, device="cpu", out=str(out))
    if method == "meta-lstm":
        values.update(inner_steps=2, hidden_size=4)
    values.update(overrides)
    return method_config(method, **values)


def build_models(config: MetaLSTMConfig, image_shape):
    method = build_method(config, new_learner(config, image_shape))
    return method.meta_learner, method.learner


# Where each function a fault replaces is looked up: the Meta-LSTM's step, and the loop's validation.
FAULT_MODULES = {"run_episodes": meta_lstm, "evaluate": training}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fault(action: dict | None, rank: int) -> dict:
    """The functions of ``training`` to replace for the fault ``action`` on one rank: ``{"rank": r, "at": n,
    "fault": F}`` sends rank r a SIGTERM during its n-th meta-update (from 1) for ``F == "sigterm"``, makes that
    update's meta-loss NaN there for ``"nan"``, and fails its n-th validation for ``"validation"``."""
    if action is None or action["rank"] != rank:
        return {}
    name = "evaluate" if action["fault"] == "validation" else "run_episodes"
    real, calls = getattr(FAULT_MODULES[name], name), [0]

    def faulty(*args, **kwargs):
        calls[0] += 1
        if calls[0] == action["at"] and action["fault"] == "validation":
            raise ValueError("injected validation failure")
        result = real(*args, **kwargs)
        if calls[0] == action["at"] and action["fault"] == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif calls[0] == action["at"] and action["fault"] == "nan":
            result = EpisodeResult(result.loss * math.nan, result.accuracy)
        return result

    return {name: faulty}


def _worker(rank: int, port: int, phases: list[tuple[MetaLSTMConfig, dict | None]], splits, report: Path) -> None:
    """One rank: join the gloo group as torchrun would describe it, run each phase (a config and an injected
    fault), write what each ended with (``ok``, the exit status, or the error) to ``report``, then the sync check."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    training.load_splits = lambda *args, **kwargs: splits
    real = {name: getattr(module, name) for name, module in FAULT_MODULES.items()}
    context = distributed.init_process_group("cpu")
    clean_exit = False
    try:
        for index, (config, action) in enumerate(phases):
            for name, function in _fault(action, rank).items():
                setattr(FAULT_MODULES[name], name, function)
            try:
                meta_train(config, progress=False)
                outcome = "ok"
            except SystemExit as stopped:  # RunInterrupted
                outcome = f"exit {stopped.code}"
            except Exception as error:  # noqa: BLE001  (the test reads it)
                outcome = f"{type(error).__name__}: {error}"
            finally:
                for name, function in real.items():
                    setattr(FAULT_MODULES[name], name, function)
            (report / f"phase{index}.rank{rank}.txt").write_text(outcome)
        # A rank whose weights drifted is caught on every rank.
        meta_learner, _ = build_models(phases[0][0], splits["train"].image_shape)
        if rank == 1:
            with torch.no_grad():
                meta_learner.cell.bias_input.add_(1e-6)
        try:
            distributed.check_in_sync(meta_learner, context)
            message = "no error"
        except RuntimeError as error:
            message = str(error)
        (report / f"rank{rank}.txt").write_text(message)
        clean_exit = True
    finally:
        distributed.destroy_process_group(clean_exit)


def replay(config: MetaLSTMConfig, splits, n_updates: int, world: int, checkpoint: dict | None = None):
    """``n_updates`` meta-updates in one process on the union of ``world`` ranks' shares; the final
    meta-learner and the union meta-loss of each update. ``checkpoint`` (a ``last.pt``) resumes its streams."""
    meta_learner, learner = build_models(config, splits["train"].image_shape)
    optimizer = torch.optim.Adam(meta_learner.parameters(), lr=config.lr)
    samplers = [EpisodeSampler(splits["train"], config.n_way, config.k_shot, config.n_query,
                               seed=distributed.rank_seed(config.seed, rank)) for rank in range(world)]
    inner = torch.Generator().manual_seed(config.seed)
    if checkpoint is not None:
        meta_learner.load_state_dict(checkpoint["meta_learner"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        states = distributed.saved_sampler_states(checkpoint["progress"])
        for rank, sampler in enumerate(samplers):
            if rank in states:
                sampler.generator.set_state(states[rank])
        inner.set_state(checkpoint["progress"]["inner_rng"])
    losses = []
    for _ in range(n_updates):
        shares = [sampler.sample(config.meta_batch // world) for sampler in samplers]
        union = Episode(*(torch.cat([getattr(s, name) for s in shares])
                          for name in ("support_x", "support_y", "query_x", "query_y")))
        result = run_episodes(meta_learner, learner, union, config.section(InnerLoop), config.query_bn, generator=inner)
        meta_update(meta_learner, optimizer, result.loss, config.grad_clip)
        losses.append(result.loss.item())
    return meta_learner, losses


def replay_method(config, splits, n_updates: int, world: int):
    """Any method's ``n_updates`` updates in one process: each update's loss the mean of the ``world`` ranks' losses on
    their shares (what averaging the ranks' gradients computes; the loss of the union for a method whose loss is a mean
    over episodes, not for fine-tuning, whose batch norm normalizes each rank's share)."""
    method = build_method(config, new_learner(config, splits["train"].image_shape, splits["train"].n_classes))
    optimizer = torch.optim.Adam(method.model.parameters(), lr=config.lr)
    samplers = [method.training_sampler(splits["train"], distributed.rank_seed(config.seed, rank)) for rank in range(world)]
    inner = torch.Generator().manual_seed(config.seed)
    for update in range(n_updates):  # Adam's rate as the loop schedules it (protonet: halving over the run)
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(config.lr, config.lr_schedule, run_progress(update, n_updates),
                                       update * method.episodes_per_update(config), config.lr_halvings)
        shares = [sampler.sample(config.meta_batch // world) for sampler in samplers]
        loss = torch.stack([method.training_loss(share, inner)[0] for share in shares]).mean()
        meta_update(method.model, optimizer, loss, config.grad_clip)
    return method.model


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_meta_learner(state: dict, meta_learner, atol: float = 1e-5) -> None:
    for name, value in meta_learner.state_dict().items():
        assert torch.allclose(state[name], value, rtol=0, atol=atol), name
    assert not torch.equal(state["theta_init"], build_models(tiny_config(Path("x")), (1, 16, 16))[0].theta_init)


# The phases of the one spawn, by name: (config, injected fault).
PHASES = {
    "straight": dict(),
    "halved": dict(episodes=4),
    "halved resumed": dict(episodes=8, resume=True),
    "one_rank resumed": dict(resume=True),
    # Rank 1 alone gets a SIGTERM in update 1 (mid-interval: validations every 2 updates): both stop after it.
    "sigterm": dict(val_every=8, fault={"rank": 1, "at": 1, "fault": "sigterm"}),
    "sigterm resumed": dict(val_every=8, resume=True),
    # Rank 1 alone has a NaN meta-loss in update 2: both skip it.
    "nan": dict(fault={"rank": 1, "at": 2, "fault": "nan"}),
    # The folder is locked by the parent: rank 0 cannot take it, and rank 1 hears of it.
    "locked": dict(),
    # Rank 0's first validation fails: rank 1 hears of it instead of waiting for it.
    "validation": dict(fault={"rank": 0, "at": 1, "fault": "validation"}),
    # A cosine rate over a time budget of 1.2 s (one validation, at the end): the ranks' clocks differ, so they must
    # agree on one rate.
    "cosine budget": dict(lr_schedule="cosine", episodes=10**6, val_every=10**6, max_minutes=0.02),
    # Every method is data-parallel: Prototypical Networks and fine-tuning (mini-batches of images) on 2 ranks.
    "protonet": dict(method="protonet", meta_batch=2),
    "finetune": dict(method="finetune", meta_batch=4),
}


def phase_out(root: Path, name: str) -> Path:
    return root / name.removesuffix(" resumed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every 2-rank phase in one spawn (:data:`PHASES`): a straight run, a run stopped halfway and resumed,
    a 1-rank run resumed by 2 ranks, a SIGTERM to one rank, a NaN on one rank, a locked folder. Also a 1-rank
    run, for the parent's own resume test."""
    root = tmp_path_factory.mktemp("distributed")
    splits = tiny_splits()
    previous = training.load_splits
    training.load_splits = lambda *args, **kwargs: splits
    try:
        meta_train(tiny_config(root / "one_rank", episodes=4), progress=False)
    finally:
        training.load_splits = previous
    phases = []
    for name, overrides in PHASES.items():
        overrides = dict(overrides)
        fault = overrides.pop("fault", None)
        phases.append((tiny_config(phase_out(root, name), **overrides), fault))
    shutil.copytree(root / "one_rank", root / "one_rank_before")
    (root / "report").mkdir()
    (root / "locked").mkdir()
    lock = FolderLock(root / "locked" / ".lock")
    torch.set_num_threads(1)
    try:
        mp.start_processes(_worker, args=(free_port(), phases, splits, root / "report"), nprocs=WORLD,
                           start_method="spawn")
    finally:
        lock.release()
    return root, splits


def outcomes(root: Path, name: str) -> list[str]:
    index = list(PHASES).index(name)
    return [(root / "report" / f"phase{index}.rank{rank}.txt").read_text() for rank in range(WORLD)]


def test_two_ranks_match_one_process_on_the_union_meta_batch(runs):
    root, splits = runs
    config = tiny_config(root / "straight")
    expected, losses = replay(config, splits, n_updates=2, world=WORLD)
    checkpoint = load(root / "straight" / "last.pt")
    assert_same_meta_learner(checkpoint["meta_learner"], expected)
    # Rank 0 logs the union's meta-loss (the mean over the ranks' shares), once per validation.
    rows = list(csv.DictReader(open(root / "straight" / "metrics.csv")))
    assert [int(row["episodes"]) for row in rows] == [4, 8]
    assert [float(row["train_loss"]) for row in rows] == pytest.approx(losses, rel=1e-5)
    # Every rank's sampler stream is in the checkpoint.
    assert sorted(checkpoint["progress"]["sampler_rngs"]) == [0, 1]
    # Rank 0 alone wrote, and left no lock behind.
    assert sorted(p.name for p in (root / "straight").iterdir()) == ["best.pt", "curves.png", "init.pt", "last.pt",
                                                                     "metrics.csv"]
    assert outcomes(root, "straight") == ["ok", "ok"]


def test_a_sigterm_to_one_rank_stops_every_rank_at_the_same_update_and_resumes_exactly(runs):
    root, _ = runs
    assert outcomes(root, "sigterm") == [f"exit {128 + signal.SIGTERM}"] * WORLD
    assert outcomes(root, "sigterm resumed") == ["ok", "ok"]
    # The resumed run ends where the uninterrupted one did; its log has the one validation (update 2).
    straight, resumed = load(root / "straight" / "last.pt"), load(root / "sigterm" / "last.pt")
    for name, value in straight["meta_learner"].items():
        assert torch.equal(resumed["meta_learner"][name], value), name
    rows = list(csv.DictReader(open(root / "sigterm" / "metrics.csv")))
    assert [int(row["update"]) for row in rows] == [2]
    straight_rows = list(csv.DictReader(open(root / "straight" / "metrics.csv")))
    expected_loss = (float(straight_rows[0]["train_loss"]) + float(straight_rows[1]["train_loss"])) / 2
    assert float(rows[0]["train_loss"]) == pytest.approx(expected_loss, rel=1e-6)


def test_a_nan_on_one_rank_is_skipped_by_every_rank(runs):
    root, splits = runs
    assert outcomes(root, "nan") == ["ok", "ok"]  # the weights stayed in sync (checked at each validation)
    rows = list(csv.DictReader(open(root / "nan" / "metrics.csv")))
    assert [int(row["skipped_updates"]) for row in rows] == [0, 1]
    expected, _ = replay(tiny_config(root / "x"), splits, n_updates=1, world=WORLD)  # update 2 never applied
    assert_same_meta_learner(load(root / "nan" / "last.pt")["meta_learner"], expected)


def test_a_locked_run_folder_stops_every_rank_with_the_reason(runs):
    root, _ = runs
    rank0, rank1 = outcomes(root, "locked")
    assert rank0.startswith("RunLockedError: ") and "in use by another run folder" in rank0
    assert rank1 == f"RuntimeError: rank 0 stopped the run: {rank0}"


def test_a_failed_validation_on_rank_0_stops_every_rank_with_the_reason(runs):
    root, _ = runs
    assert outcomes(root, "validation") == ["ValueError: injected validation failure",
                                            "RuntimeError: rank 0 stopped the run: ValueError: injected validation failure"]


def test_a_two_rank_run_resumes_as_if_uninterrupted(runs):
    root, _ = runs
    straight, resumed = load(root / "straight" / "last.pt"), load(root / "halved" / "last.pt")
    for name, value in straight["meta_learner"].items():
        assert torch.allclose(resumed["meta_learner"][name], value, rtol=0, atol=1e-6), name
    assert len(list(csv.DictReader(open(root / "halved" / "metrics.csv")))) == 2


def test_a_one_rank_checkpoint_resumes_on_two_ranks(runs):
    root, splits = runs
    config = tiny_config(root / "one_rank")
    # Rank 0 continues the single process's stream, rank 1 starts its own.
    expected, _ = replay(config, splits, n_updates=1, world=WORLD, checkpoint=load(root / "one_rank_before" / "last.pt"))
    assert_same_meta_learner(load(root / "one_rank" / "last.pt")["meta_learner"], expected)


def test_a_two_rank_checkpoint_resumes_in_one_process(runs, monkeypatch):
    root, splits = runs
    monkeypatch.setattr(training, "load_splits", lambda *args, **kwargs: splits)
    shutil.copytree(root / "straight", root / "one_rank_after")
    before = load(root / "straight" / "last.pt")
    meta_train(tiny_config(root / "one_rank_after", episodes=12, resume=True), progress=False)
    after = load(root / "one_rank_after" / "last.pt")
    # One process draws the whole meta-batch from stream 0; stream 1 is carried for a later 2-rank run.
    expected, _ = replay(tiny_config(root / "x"), splits, n_updates=1, world=1, checkpoint=before)
    assert_same_meta_learner(after["meta_learner"], expected)
    assert torch.equal(after["progress"]["sampler_rngs"][1], before["progress"]["sampler_rngs"][1])
    assert not torch.equal(after["progress"]["sampler_rngs"][0], before["progress"]["sampler_rngs"][0])


@pytest.mark.parametrize("name", ["protonet", "finetune"])
def test_every_method_trains_data_parallel_as_one_process_on_the_union(runs, name):
    root, splits = runs
    assert outcomes(root, name) == ["ok", "ok"]
    config = tiny_config(root / name, **PHASES[name])
    updates = config.episodes // (config.meta_batch if name != "finetune" else 1)
    expected = replay_method(config, splits, n_updates=updates, world=WORLD)
    saved = load(root / name / "last.pt")
    assert saved["method"] == name and sorted(saved["progress"]["sampler_rngs"]) == [0, 1]
    for key, value in expected.state_dict().items():
        assert torch.allclose(saved["model"][key], value, rtol=0, atol=1e-5), key


def test_drifted_weights_are_reported_on_every_rank(runs):
    root, _ = runs
    for rank in range(WORLD):
        message = (root / "report" / f"rank{rank}.txt").read_text()
        assert "rank(s) [1] differ from rank 0's" in message and "cell.bias_input" in message


def test_torchrun_runs_the_training_script(tmp_path):
    """The documented launch: torchrun, 2 CPU ranks (gloo), --device auto; rank 0 alone prints and writes."""
    splits = tiny_splits()
    data = tmp_path / "tiny.h5"
    with HDF5Writer(data, "omniglot", splits["train"].image_shape) as writer:
        for name, split in splits.items():
            writer.split(name, len(split.labels), split.class_names).write(split.images, split.labels)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "scripts/train.py", "--dataset", "omniglot", "--data", str(data), "--rotate", "none",
               "--n-way", "3", "--k-shot", "1", "--n-query", "2", "--inner-steps", "2", "--meta-batch", "4",
               "--episodes", "8", "--hidden-size", "4", "--hidden-channels", "4", "--val-every", "8",
               "--val-episodes", "2", "--device", "auto", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and '"episodes": 8' in summaries[0]
    assert sorted(load(out / "last.pt")["progress"]["sampler_rngs"]) == [0, 1]


def test_helpers_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single = distributed.init_process_group("cpu")  # a plain launch: no process group
    assert single == distributed.current() == distributed.SINGLE and not single.enabled and single.is_main
    assert distributed.rank_seed(7, 0) == 7  # one process draws what it always drew
    seeds = {distributed.rank_seed(seed, rank) for seed in range(3) for rank in range(1, 4)}
    assert len(seeds) == 9 and seeds.isdisjoint(range(3)) and max(seeds) < 2**63
    assert distributed.local_share(4, single) == 4
    with pytest.raises(ValueError, match="meta_batch=5 is not divisible by the world size 2"):
        distributed.local_share(5, replace(single, world_size=2))
    assert distributed.mean_over_ranks([1.5, 2], single) == [1.5, 2.0]
    assert distributed.any_rank(True, single) and not distributed.any_rank(False, single)
    state = torch.Generator().manual_seed(1).get_state()
    assert torch.equal(distributed.saved_sampler_states({"sampler_rng": state})[0], state)  # an older checkpoint
    assert distributed.rank_device("auto", 1, distributed=False) == distributed.rank_device("cpu", 1, True)


def test_a_cosine_rate_over_a_time_budget_is_the_same_on_every_rank(runs):
    root, _ = runs
    assert outcomes(root, "cosine budget") == ["ok", "ok"]  # bit-identical weights at every validation
    # The budget, not the (unreachable) episode count, drove the rate down.
    assert load(root / "cosine budget" / "last.pt")["optimizer"]["param_groups"][0]["lr"] < 0.5e-3
