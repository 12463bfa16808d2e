"""Reading a checkpoint file: ``torch.load`` of tensors and plain containers only, every failure one clear error.

Shared by :func:`fewshot_l2l.training.load_checkpoint` and
:func:`fewshot_l2l.optim.training.load_rule_checkpoint`, which rebuild their
models from the dict this returns. A checkpoint may come from anywhere (a
colleague, a download), so it is read with ``weights_only=True``: nothing in it
is executed. When torch refuses such a file it advises retrying with
``weights_only=False``, which would run whatever code the file holds; that
advice is not passed on: the file is reported as corrupt or as not a checkpoint.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .utils import nonfinite_tensors


def corrupt(path: Path, kind: str, reason: str | BaseException) -> ValueError:
    """The error for a file that is not a ``kind`` checkpoint; ``reason`` (or the error met) says what is wrong."""
    if isinstance(reason, BaseException):  # torch's messages span lines: one line, cut to a readable length
        reason = " ".join(str(reason).split())[:300] or type(reason).__name__
    return ValueError(f"checkpoint {path} is not a {kind} checkpoint or is corrupt: {reason}")


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
        raise corrupt(path, kind, f"no {', '.join(repr(key) for key in missing)} entries (dicts)")
    return checkpoint


def refuse_nonfinite(path: str | Path, tensors: dict) -> None:
    """Raise ``ValueError`` naming ``path`` if the model/optimizer ``tensors`` of a checkpoint hold a NaN or an
    infinity: such a file was written by a diverged run (older code), and evaluating or resuming it is meaningless."""
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ValueError(f"checkpoint {path} holds NaN or infinite values ({', '.join(bad[:3])}): written by a diverged "
                         "run, it cannot be evaluated or resumed")
