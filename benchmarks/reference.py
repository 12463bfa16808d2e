"""The reference of the throughput benchmark: the public PyTorch port of the authors' code
(github.com/markdtw/meta-learning-lstm-pytorch), imported from a local copy given by path.

Nothing of the reference is copied here: :func:`import_reference` imports its ``main``,
``learner`` and ``metalearner`` modules from the folder, and :class:`ReferenceRunner` drives them
exactly as its ``main.py`` does. One meta-training episode is the body of its training loop (reset
the batch-norm statistics, ``main.train_learner`` over the support set, ``Learner.transfer_params``,
the query loss, backward, gradient clipping at 0.25, Adam); one evaluation episode is its
``main.meta_test`` on a one-episode loader. Its settings are those of its
5-shot training script ``train_5s_5c.sh``: ``input_size`` 4, ``hidden_size`` 20, ``lr`` 1e-3, ``bn_eps`` 1e-3,
``bn_momentum`` 0.95, and an inner batch of the whole support set (its ``batch_size`` 25 for 5-way
5-shot, 5 for 5-way 1-shot), ``inner_steps`` epochs. Its learner is hard-wired to 3 input
channels; for 1-channel images the first convolution is replaced by a 1-channel one of the same
shape otherwise.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types
from pathlib import Path

import torch
from torch import Tensor

from fewshot_l2l.data.episodes import Episode

REFERENCE_MODULES = ("main", "learner", "metalearner", "utils", "dataloader")


def import_reference(path: str | Path) -> types.SimpleNamespace:
    """The reference's ``main``, ``learner`` and ``metalearner`` modules, imported from the folder ``path``.

    Its modules import each other by top-level names (``from learner import Learner``), so the
    folder goes on ``sys.path`` while they are imported; afterwards those names are removed from
    ``sys.modules`` again (restoring any module of the same name that was there before), so nothing
    else in the process resolves ``utils`` or ``main`` to the reference's.
    """
    folder = Path(path).resolve()
    missing = [f"{name}.py" for name in ("main", "learner", "metalearner") if not (folder / f"{name}.py").is_file()]
    if missing:
        raise FileNotFoundError(
            f"--reference {path}: {', '.join(missing)} not found there; pass a checkout of "
            f"github.com/markdtw/meta-learning-lstm-pytorch"
        )
    saved = {name: sys.modules.pop(name) for name in REFERENCE_MODULES if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        modules = {name: importlib.import_module(name) for name in ("main", "learner", "metalearner")}
    finally:
        sys.path.remove(str(folder))
        for name in REFERENCE_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    modules["main"].tqdm = lambda iterable, **kwargs: iterable  # its meta_test wraps the loader in a progress bar
    return types.SimpleNamespace(folder=folder, **modules)


class _SilentLogger:
    """What ``main.meta_test`` calls on its logger, doing nothing."""

    def batch_info(self, **kwargs) -> float:
        return 0.0


class ReferenceRunner:
    """The reference's learner pair, meta-learner and Adam for one shape; one episode per call.

    Args:
        code: :func:`import_reference`'s namespace.
        in_channels, image_size, n_way, k_shot, n_query, inner_steps: the episode shape.
        device: where its models live (its ``--cpu`` flag picks the CPU).
        seed: seeds torch's global generator before its models are built (they draw from it).
    """

    def __init__(self, code: types.SimpleNamespace, in_channels: int, image_size: int, n_way: int, k_shot: int,
                 n_query: int, inner_steps: int, device: torch.device | str = "cpu", seed: int = 0) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"ReferenceRunner: the reference's learner takes 3-channel (or, adapted, 1-channel) "
                             f"images, got {in_channels} channels")
        self.code = code
        self.args = types.SimpleNamespace(
            n_class=n_way, n_shot=k_shot, n_eval=n_query, input_size=4, hidden_size=20, lr=1e-3, grad_clip=0.25,
            bn_eps=1e-3, bn_momentum=0.95, epoch=inner_steps, batch_size=n_way * k_shot, image_size=image_size,
            dev=torch.device(device), episode_val=1,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            learner = code.learner.Learner(image_size, self.args.bn_eps, self.args.bn_momentum, n_way)
            if in_channels == 1:
                learner.model.features.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
            self.learner_w_grad = learner.to(self.args.dev)
            self.learner_wo_grad = copy.deepcopy(self.learner_w_grad)
            flat = self.learner_w_grad.get_flat_params()
            self.meta_learner = code.metalearner.MetaLearner(4, 20, flat.numel()).to(self.args.dev)
            self.meta_learner.metalstm.init_cI(flat)
        self.optimizer = torch.optim.Adam(self.meta_learner.parameters(), self.args.lr)
        self.n_params = flat.numel()

    @staticmethod
    def episode_tensor(episode: Episode, index: int = 0) -> Tensor:
        """Episode ``index`` of a meta-batch in the reference loader's layout ``[n_way, k_shot + n_query, C, H, W]``
        (the sampler orders both sets class by class, as the reference's targets assume)."""
        n_way = int(episode.support_y[index].max()) + 1
        support = episode.support_x[index].reshape(n_way, -1, *episode.support_x.shape[2:])
        query = episode.query_x[index].reshape(n_way, -1, *episode.query_x.shape[2:])
        return torch.cat((support, query), dim=1)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        args = self.args
        labels = torch.arange(args.n_class, device=args.dev)
        return (x[:, : args.n_shot].reshape(-1, *x.shape[-3:]).to(args.dev), labels.repeat_interleave(args.n_shot),
                x[:, args.n_shot :].reshape(-1, *x.shape[-3:]).to(args.dev), labels.repeat_interleave(args.n_eval))

    def train_episode(self, x: Tensor) -> float:
        """One meta-training episode of the reference's ``main()`` loop on ``x``; its query loss."""
        train_input, train_target, test_input, test_target = self._split(x)
        w_grad, wo_grad = self.learner_w_grad, self.learner_wo_grad
        w_grad.reset_batch_stats()
        wo_grad.reset_batch_stats()
        w_grad.train()
        wo_grad.train()
        c_i = self.code.main.train_learner(w_grad, self.meta_learner, train_input, train_target, self.args)
        wo_grad.transfer_params(w_grad, c_i)
        loss = wo_grad.criterion(wo_grad(test_input), test_target)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.meta_learner.parameters(), self.args.grad_clip)
        self.optimizer.step()
        return loss.item()

    def eval_episode(self, x: Tensor) -> None:
        """One evaluation episode: the reference's ``main.meta_test`` on a one-episode loader."""
        labels = torch.arange(self.args.n_class).unsqueeze(1).expand(-1, x.shape[1])
        self.code.main.meta_test(0, [(x, labels)], self.learner_w_grad, self.learner_wo_grad, self.meta_learner,
                                 self.args, _SilentLogger())
