"""Checkpoints: reading one safely, and the one loader of few-shot checkpoints, whatever method wrote them.

:func:`read_checkpoint` is shared by :func:`load_checkpoint` (every few-shot method) and
:func:`fewshot_l2l.optim.rule_training.load_rule_checkpoint` (learned update rules), which rebuild their models
from the dict it returns. A checkpoint may come from anywhere (a colleague, a download), so it is read with
``weights_only=True``: nothing in it is executed. When torch refuses such a file it advises retrying with
``weights_only=False``, which would run whatever code the file holds; that
advice is not passed on: the file is reported as corrupt or as not a checkpoint.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch

from .config import FewShotConfig
from .data import load_splits
from .data.episodes import FewShotSplit
from .data.identity import check_dataset, dataset_identity, resolve_stored_path
from .finite import nonfinite_tensors
from .learner import ConvLearner, LearnerConfig
from .methods import FewShotMethod, build_method, method_class


def corrupt(path: Path, kind: str, reason: str | BaseException) -> ValueError:
    """The error for a file that is not a ``kind`` checkpoint; ``reason`` (or the error met) says what is wrong."""
    if isinstance(reason, BaseException):  # torch's messages span lines: one line, cut to a readable length
        reason = " ".join(str(reason).split())[:300] or type(reason).__name__
    return ValueError(f"checkpoint {path} is not a {kind} checkpoint or is corrupt: {reason}")


# The first bytes of files given where a checkpoint (a zip archive written by torch.save) is expected.
NOT_CHECKPOINTS = {b"\x89HDF\r\n\x1a\n": "an HDF5 file (a dataset built by prepare_data.py? give it as --data)",
                   b"\x89PNG\r\n\x1a\n": "a PNG image", b"\xff\xd8\xff": "a JPEG image"}


def written_by(checkpoint: dict) -> str | None:
    """What wrote the checkpoint dict ``checkpoint`` and which commands take it (``None``: none of this package's)."""
    if isinstance(checkpoint.get("rule_config"), dict):
        return ("a learned-optimizer checkpoint of scripts/train_optimizer.py (resume it with train_optimizer.py "
                "--resume, evaluate it with scripts/evaluate_optimizer.py)")
    if isinstance(checkpoint.get("learner"), dict) and isinstance(checkpoint.get("config"), dict):
        method = checkpoint.get("method", "meta-lstm")
        return (f"a few-shot checkpoint of scripts/train.py --method {method} (resume it with train.py --method "
                f"{method} --resume, evaluate it with scripts/evaluate.py)")
    return None


def read_checkpoint(path: str | Path, device: str | torch.device, kind: str, keys: tuple[str, ...]) -> dict:
    """The dict saved in ``path``, loaded onto ``device``, with a dict under each of ``keys``.

    Raises ``FileNotFoundError`` when ``path`` does not exist, ``IsADirectoryError``
    when it is a folder, the ``OSError`` of opening it (permissions) as it is, and
    ``ValueError`` ("... is not a KIND checkpoint or is corrupt: ...") for any file
    whose content is not such a dict: truncated, damaged, another format, or
    holding Python objects other than tensors and plain containers.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a checkpoint file (e.g. RUN_DIR/best.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as file:  # opened here, so that an unreadable file is reported as such, not as corrupt
        start = file.read(8)
        what = next((name for magic, name in NOT_CHECKPOINTS.items() if start.startswith(magic)), None)
        if what is not None:
            raise ValueError(f"checkpoint {path} is {what}, not a checkpoint (RUN_DIR/best.pt, last.pt or init.pt)")
        file.seek(0)
        try:
            checkpoint = torch.load(file, map_location=device, weights_only=True)
        except pickle.UnpicklingError as error:  # weights_only refused an object: torch's advice is the unsafe one
            raise corrupt(path, kind, "it holds Python objects that a checkpoint never holds, which were not loaded") from error
        except Exception as error:  # damaged bytes surface as RuntimeError, OSError, EOFError, ValueError, ... from torch
            raise corrupt(path, kind, f"torch.load failed, truncated or damaged? ({' '.join(str(error).split())[:300]})") from error
    if not isinstance(checkpoint, dict):
        raise corrupt(path, kind, f"it holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in keys if not isinstance(checkpoint.get(key), dict)]
    if missing:
        other = written_by(checkpoint)
        if other is not None:
            raise ValueError(f"checkpoint {path} is not a {kind} checkpoint: it is {other}")
        raise corrupt(path, kind, f"no {', '.join(repr(key) for key in missing)} entries (dicts)")
    return checkpoint


def refuse_nonfinite(path: str | Path, tensors: dict) -> None:
    """Raise ``ValueError`` naming ``path`` if the model/optimizer ``tensors`` of a checkpoint hold a NaN or an
    infinity: such a file was written by a diverged run (older code), and evaluating or resuming it is meaningless."""
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ValueError(f"checkpoint {path} holds NaN or infinite values ({', '.join(bad[:3])}): written by a diverged "
                         "run, it cannot be evaluated or resumed")


def checkpoint_state(method: FewShotMethod, optimizer: torch.optim.Optimizer, progress: dict, dataset: dict) -> dict:
    """What a few-shot checkpoint holds: the method's name, its model's and Adam's state, the learner's shape, the
    configuration (flat), the loop's progress and the identity of the data (:func:`dataset_identity`)."""
    return {
        "method": method.config.method,
        method.state_key: method.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "learner": method.learner.state(),
        "config": asdict(method.config),
        "progress": progress,
        "dataset": dataset,  # what resume and evaluation check the data against
    }


class Loaded(NamedTuple):
    """A few-shot checkpoint, rebuilt: the method (its model loaded), its configuration and the raw dict."""

    method: FewShotMethod
    config: FewShotConfig
    checkpoint: dict


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Rebuild the method saved in ``path`` (a few-shot checkpoint of any method, :data:`fewshot_l2l.methods.METHODS`;
    those without a ``"method"`` entry are the Meta-LSTM's, from before the baselines) on ``device``.

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` for a path that is no file, and ``ValueError`` ("... is not
    a fewshot_l2l checkpoint or is corrupt") for any other file (:func:`read_checkpoint`), or one that holds NaN or
    infinite values.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, device, "fewshot_l2l", ("learner", "config"))
    try:
        cls = method_class(checkpoint.get("method", "meta-lstm"))
        if not isinstance(checkpoint.get(cls.state_key), dict):
            raise ValueError(f"no {cls.state_key!r} entry (a dict), which a {cls.Config.METHODS[0]} checkpoint holds")
        config = cls.Config.from_dict({**checkpoint["config"], "method": checkpoint.get("method", "meta-lstm")})
        learner = ConvLearner(LearnerConfig(**checkpoint["learner"]))
        method = build_method(config, learner, torch.zeros(learner.n_params))  # overwritten by the saved state below
        method.model.load_state_dict(checkpoint[cls.state_key])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise corrupt(path, "fewshot_l2l", error) from error
    refuse_nonfinite(path, {cls.state_key: checkpoint[cls.state_key], "optimizer": checkpoint.get("optimizer")})
    method.model.to(device)
    return Loaded(method, config, checkpoint)


def checkpoint_splits(path: str | Path, loaded: Loaded, data: str | None = None) -> dict[str, FewShotSplit]:
    """The splits to evaluate the checkpoint ``path`` (``loaded`` from it) on: those of ``data``, or by default of
    the dataset it was trained on (a relative path of an older checkpoint is looked up as
    :func:`resolve_stored_path` says); images of another shape than its learner takes are refused first (the most
    specific message), then another build of the dataset (:func:`check_dataset`)."""
    config = loaded.config
    data = data if data is not None else resolve_stored_path(config.data, path, config.out)
    data = os.path.abspath(data) if data is not None else None
    splits = load_splits(config.dataset, data, seed=config.seed, rotate=config.rotate)
    for name, split in splits.items():
        loaded.method.learner.check_images(split.image_shape, f"split {name!r} of {data or config.dataset}")
    check_dataset(loaded.checkpoint.get("dataset"), dataset_identity(config.dataset, data, splits), f"checkpoint {path}")
    return splits
