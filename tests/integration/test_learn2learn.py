"""learn2learn, installed and used (fewshot_l2l.interop): a learn2learn MAML training loop with the Meta-LSTM
swapped in, learn2learn's task transforms on this project's Omniglot file, a learn2learn TaskDataset as the
meta-trainer's episode source (resume included), and the package without learn2learn.

The ``learn2learn`` fixture (tests/conftest.py) skips these without learn2learn and fails them under CI=true:
``make setup`` installs it (scripts/install_learn2learn.sh)."""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot_l2l.data import load_splits
from fewshot_l2l.data.omniglot import build_omniglot
from fewshot_l2l.interop.l2l_data import SplitDataset, labels_to_indices, meta_dataset, meta_datasets
from fewshot_l2l.interop.l2l_episodes import TaskEpisodes
from fewshot_l2l.interop.learn2learn import MetaLSTMAlgorithm
from fewshot_l2l.checkpoints import load_checkpoint
from fewshot_l2l.methods.meta_lstm import MetaLSTMConfig
from fewshot_l2l.training import meta_train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def omniglot_h5(tmp_path_factory, shared_data):
    """The Omniglot HDF5 of the two minimal background zips (alphabet-disjoint split, 28x28)."""
    zips = shared_data("omniglot/images_background_small1.zip", "omniglot/images_background_small2.zip")
    path = tmp_path_factory.mktemp("omniglot") / "minimal.h5"
    build_omniglot(zips, path, image_size=28, progress=False)
    return path


def transforms(l2l, dataset, n_way: int, per_class: int) -> list:
    t = l2l.data.transforms
    return [t.NWays(dataset, n_way), t.KShots(dataset, per_class), t.LoadData(dataset), t.RemapLabels(dataset),
            t.ConsecutiveLabels(dataset)]


# --- a learn2learn training loop, MAML and the Meta-LSTM -----------------------------------------------------

WAYS, SHOTS, INNER_STEPS = 5, 1, 3


def fast_adapt(task, learner):
    """learn2learn's MAML Omniglot example: adapt on every other image (one per class), score the rest."""
    images, labels = task
    support = torch.zeros(len(labels), dtype=torch.bool)
    support[torch.arange(SHOTS * WAYS) * 2] = True
    for _ in range(INNER_STEPS):
        learner.adapt(F.cross_entropy(learner(images[support]), labels[support]))
    return F.cross_entropy(learner(images[~support]), labels[~support])


def meta_train_loop(algorithm, tasks, iterations: int, meta_batch: int = 4) -> None:
    optimizer = torch.optim.Adam(algorithm.parameters(), 3e-3)
    for _ in range(iterations):
        optimizer.zero_grad()
        for _ in range(meta_batch):
            (fast_adapt(tasks.sample(), algorithm.clone()) / meta_batch).backward()
        optimizer.step()


def held_out_loss(algorithm, tasks) -> float:
    return sum(fast_adapt(task, algorithm.clone()).item() for task in tasks) / len(tasks)


@pytest.fixture
def one_thread():
    """Hundreds of tiny steps: on a shared machine one thread runs them several times faster than many."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["maml", "meta-lstm"])
def test_a_learn2learn_loop_learns_with_maml_and_with_the_meta_lstm(method, learn2learn, tiny_splits, one_thread):
    """The same loop, algorithm swapped: the query loss after adaptation on 20 held-out tasks falls by > 7%."""
    def tasks(split):
        dataset = meta_dataset(split)
        return learn2learn.data.TaskDataset(dataset, transforms(learn2learn, dataset, WAYS, 2 * SHOTS))

    random.seed(0)
    train, held_out = tasks(tiny_splits["train"]), [tasks(tiny_splits["val"]).sample() for _ in range(20)]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 16), torch.nn.ReLU(), torch.nn.Linear(16, WAYS))
    if method == "maml":
        algorithm = learn2learn.algorithms.MAML(model, lr=0.5)
    else:
        algorithm = MetaLSTMAlgorithm(model)
        with torch.no_grad():  # the paper's b_I ~ U(-5, -4) starts at an inner learning rate of about 0.01 and
            algorithm.rule.meta_lstm.cell.bias_input.fill_(-1.0)  # needs thousands of episodes: start at 0.27
    before = held_out_loss(algorithm, held_out)
    random.seed(1)
    meta_train_loop(algorithm, train, iterations=30)
    after = held_out_loss(algorithm, held_out)
    assert after < 0.93 * before, (method, before, after)


# --- our Omniglot file as learn2learn data --------------------------------------------------------------------

def test_labels_to_indices_equals_learn2learns_own_bookkeeping(learn2learn, omniglot_h5):
    """The bookkeeping handed to MetaDataset is the one learn2learn builds by loading every sample."""
    split = load_splits("omniglot", str(omniglot_h5))["val"]
    own = learn2learn.data.MetaDataset(SplitDataset(split)).labels_to_indices
    assert labels_to_indices(split) == dict(own) and len(own) == split.n_classes


def test_learn2learn_task_transforms_work_on_our_omniglot_file(learn2learn, omniglot_h5):
    datasets = meta_datasets("omniglot", str(omniglot_h5))
    splits = load_splits("omniglot", str(omniglot_h5))
    assert set(datasets) == {"train", "val", "test"}
    train, split = datasets["train"], splits["train"]
    assert len(train) == len(split.labels) and len(train.labels) == split.n_classes  # rotated classes included
    tasks = learn2learn.data.TaskDataset(train, transforms(learn2learn, train, 5, 3), num_tasks=-1)
    random.seed(0)
    images, labels = tasks.sample()
    assert images.shape == (15, 1, 28, 28) and images.dtype == torch.float32
    groups = labels.view(5, 3)  # ConsecutiveLabels: each label's three images together; RemapLabels: labels 0..4
    assert bool((groups == groups[:, :1]).all()) and sorted(groups[:, 0].tolist()) == [0, 1, 2, 3, 4]
    # Every image is one of the split's (as float in [0, 1]); each label's three come from one class, five classes.
    flat = split.images.flatten(1).float() / 255
    matches = (images.flatten(1)[:, None, :] == flat[None]).all(dim=2)  # [15, N]
    assert bool(matches.any(dim=1).all())
    classes = [set(split.labels[matches[i]].tolist()) for i in range(15)]
    per_label = [set.union(*classes[3 * k:3 * k + 3]) for k in range(5)]
    assert all(len(c) == 1 for c in per_label) and len(set.union(*per_label)) == 5


# --- a learn2learn TaskDataset as our episode source ------------------------------------------------------------

def task_episodes(l2l, split, seed: int = 0, n_way: int = 3, k_shot: int = 1, n_query: int = 2) -> TaskEpisodes:
    dataset = meta_dataset(split)
    tasks = l2l.data.TaskDataset(dataset, transforms(l2l, dataset, n_way, k_shot + n_query))
    return TaskEpisodes(tasks, n_way, k_shot, n_query, seed=seed)


def test_task_episodes_shape_labels_and_seeding(learn2learn, tiny_splits):
    split = tiny_splits["train"]
    episodes = task_episodes(learn2learn, split, n_way=4, k_shot=2, n_query=3)
    random.seed(123)
    outside = [random.random() for _ in range(3)]
    random.seed(123)
    episode = episodes.sample(2)
    assert [random.random() for _ in range(3)] == outside  # the global random state is left as it was
    assert episode.support_x.shape == (2, 8, 1, 16, 16) and episode.query_x.shape == (2, 12, 1, 16, 16)
    assert episode.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and episode.query_y[0].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    # Support and query images of a label come from one class of the split, distinct classes per label.
    flat = split.images.flatten(1).float() / 255
    for b in range(2):
        owner = lambda x: {int(split.labels[(x.flatten()[None] == flat).all(1)][0])}  # noqa: E731
        support = [set.union(*(owner(x) for x in episode.support_x[b][2 * j:2 * j + 2])) for j in range(4)]
        query = [set.union(*(owner(x) for x in episode.query_x[b][3 * j:3 * j + 3])) for j in range(4)]
        assert support == query and all(len(c) == 1 for c in support) and len(set.union(*support)) == 4
    # Same seed, same episodes; get_state / set_state resumes the stream.
    again = task_episodes(learn2learn, split, n_way=4, k_shot=2, n_query=3)
    assert torch.equal(again.sample(2).support_x, episode.support_x)
    state = again.generator.get_state()
    following = again.sample(1)
    again.generator.set_state(state)
    assert torch.equal(again.sample(1).query_x, following.query_x)
    assert not torch.equal(task_episodes(learn2learn, split, seed=1, n_way=4, k_shot=2, n_query=3).sample(2).support_x,
                           episode.support_x)


def test_task_episodes_refuses_tasks_of_another_shape(learn2learn, tiny_splits):
    episodes = task_episodes(learn2learn, tiny_splits["train"], n_way=3, k_shot=1, n_query=2)
    wrong = TaskEpisodes(episodes.tasks, n_way=3, k_shot=1, n_query=3)
    with pytest.raises(ValueError, match=r"3-way episodes of 1 \+ 3 images need NWays\(dataset, 3\) and KShots\(dataset, 4\)"):
        wrong.sample(1)
    with pytest.raises(ValueError, match="n_way must be an integer >= 2"):
        TaskEpisodes(episodes.tasks, n_way=1, k_shot=1, n_query=1)
    with pytest.raises(TypeError, match="must be a learn2learn TaskDataset"):
        TaskEpisodes(tiny_splits["train"], n_way=3, k_shot=1, n_query=2)
    with pytest.raises(ValueError, match="not a state saved by PythonRandomState"):
        episodes.generator.set_state(torch.get_rng_state())


def test_python_random_state_round_trips_through_a_tensor():
    from fewshot_l2l.interop.l2l_episodes import PythonRandomState

    for draw in (random.Random.random, lambda r: r.gauss(0.0, 1.0)):  # gauss leaves a cached second value
        generator = PythonRandomState(5)
        draw(generator.random)
        state = generator.get_state()
        assert state.dtype == torch.int64 and state.shape == (628,)
        following = [draw(generator.random) for _ in range(3)]
        generator.set_state(state)
        assert [draw(generator.random) for _ in range(3)] == following


class Counting:
    """A TaskDataset that counts its draws."""

    def __init__(self, tasks):
        self.tasks, self.draws = tasks, 0

    def sample(self):
        self.draws += 1
        return self.tasks.sample()


def test_meta_train_takes_a_task_dataset_and_resumes_it_exactly(learn2learn, omniglot_h5, tmp_path, one_thread):
    """meta_train(train_episodes=TaskEpisodes(...)): every training episode is a learn2learn task, and 4 episodes
    then a resume to 8 end with the same meta-learner as 8 episodes in one go."""
    config = dict(dataset="omniglot", data=str(omniglot_h5), n_way=3, k_shot=1, n_query=2, inner_steps=2,
                  meta_batch=2, val_every=4, val_episodes=2, hidden_channels=8, device="cpu")
    train = load_splits("omniglot", str(omniglot_h5))["train"]

    def run(out, episodes, resume=False):
        source = task_episodes(learn2learn, train)
        source.tasks = Counting(source.tasks)
        summary = meta_train(MetaLSTMConfig(**config, episodes=episodes, out=str(out), resume=resume), False, source)
        return summary, source.tasks.draws

    summary, draws = run(tmp_path / "whole", 8)
    assert summary["episodes"] == 8 and draws == 8
    run(tmp_path / "split", 4)
    _, draws = run(tmp_path / "split", 8, resume=True)
    assert draws == 4
    whole, split = (load_checkpoint(tmp_path / name / "last.pt").method.model.state_dict() for name in ("whole", "split"))
    assert all(torch.equal(whole[name], split[name]) for name in whole)


# --- the examples of docs/learn2learn.md ---------------------------------------------------------------------

def test_the_documented_examples_run(learn2learn, tmp_path):
    """docs/learn2learn.md's Python blocks, in order, in an empty folder (test_readme.py only compiles them)."""
    text = (REPO / "docs" / "learn2learn.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 2
    (tmp_path / "example.py").write_text("\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-W", "ignore", "example.py"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "query loss of the last task:" in result.stdout and (tmp_path / "runs" / "l2l-tasks" / "best.pt").is_file()


# --- without learn2learn ------------------------------------------------------------------------------------

def test_the_package_imports_without_learn2learn_and_the_message_names_the_set_up():
    """Nothing of fewshot_l2l imports learn2learn on import; a data helper that needs it names the set-up command."""
    code = """
import sys, importlib, pkgutil
sys.modules["learn2learn"] = None  # as if it were not installed
import fewshot_l2l
for module in pkgutil.walk_packages(fewshot_l2l.__path__, "fewshot_l2l."):
    importlib.import_module(module.name)
from fewshot_l2l.data.glyphs import make_glyph_splits
from fewshot_l2l.interop.l2l_data import meta_dataset
try:
    meta_dataset(make_glyph_splits({"train": 3, "val": 3, "test": 3}, images_per_class=2, image_size=8)["train"])
except ModuleNotFoundError as error:
    print(error)
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("fewshot_l2l.interop.l2l_data needs the optional dependency 'learn2learn', which is not installed: make setup "
            "(in a clone), or bash scripts/install_learn2learn.sh PYTHON") in result.stdout
