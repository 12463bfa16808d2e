"""A learn2learn ``TaskDataset`` as this project's episode source: :class:`TaskEpisodes` has the interface of
:class:`fewshot_l2l.data.episodes.EpisodeSampler` (``sample(n_episodes) -> Episode``, a ``generator`` with
``get_state`` / ``set_state``), so :func:`fewshot_l2l.training.meta_train` meta-trains on it::

    tasks = l2l.data.TaskDataset(train, [NWays(train, 5), KShots(train, 1 + 15), LoadData(train), RemapLabels(train)])
    meta_train(config, train_episodes=TaskEpisodes(tasks, n_way=5, k_shot=1, n_query=15))

Each task must hold ``n_way`` classes of exactly ``k_shot + n_query`` images each (``NWays(n_way)``,
``KShots(k_shot + n_query)``); in each class the first ``k_shot`` images, in the task's order, are the
support set and the rest the query set, and the classes become labels ``0 .. n_way - 1`` in the order of
their learn2learn labels, so any label remapping is fine.

Randomness and resuming: learn2learn draws tasks with Python's global ``random`` module. Every ``sample``
runs it on this adapter's own state (restoring the global state afterwards), seeded by ``seed``: the same
seed gives the same episodes whatever else uses ``random``, and ``generator.get_state()`` (what a checkpoint
stores) resumes the very same task stream for a ``TaskDataset`` with ``num_tasks=-1`` (a fresh task every
draw). With a finite ``num_tasks`` learn2learn caches each task's description the first time it is drawn;
that cache is not part of the state, so after a resume the tasks are drawn anew (same distribution, other
tasks). Randomness outside ``random`` (a data transform that uses torch's or NumPy's generator) is not
captured either.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from ..data.episodes import SEED_RANGE, Episode, _is_int


class PythonRandomState:
    """A ``random.Random`` state with the ``get_state`` / ``set_state`` of ``torch.Generator``.

    The state travels as an int64 tensor (version, the 625 words of the Mersenne Twister, whether a Gaussian is
    cached and its float64 bits): a checkpoint stores it like a torch generator's state, loads it with
    ``weights_only=True`` and finds nothing non-finite in it.
    """

    LENGTH = 628

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def get_state(self) -> Tensor:
        version, words, gauss = self.random.getstate()
        bits = torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64).view(torch.int64)
        return torch.cat((torch.tensor([version, *words, gauss is not None], dtype=torch.int64), bits))

    def set_state(self, state: Tensor) -> None:
        if not (isinstance(state, Tensor) and state.dtype == torch.int64 and state.shape == (self.LENGTH,)):
            raise ValueError(f"PythonRandomState.set_state: not a state saved by PythonRandomState.get_state (an int64 "
                             f"tensor of {self.LENGTH} values; was the checkpoint written with another episode source?)")
        values = state.tolist()
        gauss = float(state[-1:].view(torch.float64)) if values[-2] else None
        self.random.setstate((values[0], tuple(values[1:-2]), gauss))


class TaskEpisodes:
    """Episodes from a learn2learn ``TaskDataset`` (module docstring), on ``device``.

    Args:
        tasks: a ``learn2learn.data.TaskDataset`` (anything whose ``sample()`` returns ``(images, labels)``).
        n_way, k_shot, n_query: the episode shape each task must have.
        seed: seed of the task draws (Python ``random`` state of its own).
        device: where the episodes' tensors go (the training device).
    """

    def __init__(self, tasks, n_way: int, k_shot: int, n_query: int, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if not callable(getattr(tasks, "sample", None)):
            raise TypeError(f"TaskEpisodes: tasks must be a learn2learn TaskDataset (with .sample()), got {type(tasks).__name__}")
        for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            if not _is_int(value) or value < (2 if name == "n_way" else 1):
                raise ValueError(f"TaskEpisodes: {name} must be an integer >= {2 if name == 'n_way' else 1}, got {value!r}")
        if not _is_int(seed) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise ValueError(f"TaskEpisodes: seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {seed!r}")
        self.tasks = tasks
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.device = torch.device(device)
        self.generator = PythonRandomState(seed)

    def _draw(self):
        """One ``tasks.sample()`` on this adapter's ``random`` state, the global one left as it was."""
        outside = random.getstate()
        random.setstate(self.generator.random.getstate())
        try:
            return self.tasks.sample()
        finally:
            self.generator.random.setstate(random.getstate())
            random.setstate(outside)

    def _episode(self, images: Tensor, labels: Tensor) -> Tensor:
        """One task's images as ``[n_way, K+Q, C, H, W]`` floats in [0, 1], classes in label order."""
        per_class = self.k_shot + self.n_query
        labels = torch.as_tensor(labels).reshape(-1).cpu()
        classes, counts = torch.unique(labels, return_counts=True)
        if len(classes) != self.n_way or bool((counts != per_class).any()) or images.shape[0] != labels.numel():
            raise ValueError(
                f"TaskEpisodes: a task has {len(classes)} classes of {counts.tolist()} images ({images.shape[0]} images, "
                f"{labels.numel()} labels); {self.n_way}-way episodes of {self.k_shot} + {self.n_query} images need "
                f"NWays(dataset, {self.n_way}) and KShots(dataset, {per_class}) among the task transforms"
            )
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        elif not images.is_floating_point():
            raise ValueError(f"TaskEpisodes: task images must be uint8 or floats in [0, 1], got {images.dtype}")
        order = torch.argsort(labels, stable=True)  # class-major, each class keeping the task's order
        return images[order.to(images.device)].reshape(self.n_way, per_class, *images.shape[1:])

    def sample(self, n_episodes: int = 1) -> Episode:
        """Draw ``n_episodes`` tasks as one batch (labels ``0 .. n_way - 1``, class-major, as EpisodeSampler's)."""
        if not _is_int(n_episodes) or n_episodes < 1:
            raise ValueError(f"TaskEpisodes.sample: n_episodes must be an integer >= 1, got {n_episodes!r}")
        # learn2learn hands out one task per sample() call: one call per episode of the batch.
        images = torch.stack([self._episode(*self._draw()).to(self.device) for _ in range(n_episodes)])
        k, n_way, per_class = self.k_shot, self.n_way, self.k_shot + self.n_query
        labels = torch.arange(n_way, device=self.device).view(1, n_way, 1).expand(n_episodes, n_way, per_class)
        flat = lambda t: t.reshape(n_episodes, -1, *t.shape[3:])  # noqa: E731
        return Episode(flat(images[:, :, :k]), flat(labels[:, :, :k]), flat(images[:, :, k:]), flat(labels[:, :, k:]))
