"""Which data a checkpoint was trained on: the dataset's content checksum, and finding its file again.

Both training loops' few-shot checkpoints store :func:`dataset_identity`; resuming and
evaluating compare it with the data at hand (:func:`check_dataset`), so another build
of the dataset (other splits, other images) is refused instead of silently mixed in.
"""

from __future__ import annotations

import os
from pathlib import Path

from .episodes import FewShotSplit
from .hdf5 import HDF5Splits, content_sha256
from .registry import FILE_DATASETS


def dataset_identity(dataset: str, data: str | None, splits: dict[str, FewShotSplit]) -> dict:
    """``{"dataset", "path", "content_sha256"}`` of the ``splits`` loaded from ``dataset`` / ``data``.

    For a dataset file the checksum is its ``content_sha256`` attribute (which
    :func:`fewshot_l2l.data.load_splits` verified against the content); for the
    embedded glyphs it is :func:`fewshot_l2l.data.hdf5.content_sha256` of the generated
    splits (the same definition; ~20 MB hashed for the default 1,200 classes).
    """
    if dataset in FILE_DATASETS:
        source = HDF5Splits(data)
        checksum = source.content_sha256
        source.close()
    else:
        checksum = content_sha256(splits)
    return {"dataset": dataset, "path": data, "content_sha256": checksum}


def check_dataset(saved: dict | None, current: dict, context: str) -> None:
    """Refuse (``ValueError`` naming both) data whose checksum differs from ``saved``'s.

    ``saved`` is ``None`` for a checkpoint of a version that stored none: not checked.
    """
    if saved and saved["content_sha256"] != current["content_sha256"]:
        describe = lambda d: d["path"] or f"the embedded {d['dataset']}"  # noqa: E731
        raise ValueError(
            f"{context}: the checkpoint was trained on {describe(saved)} (content sha256 {saved['content_sha256'][:16]}...), "
            f"but {describe(current)} has content sha256 {current['content_sha256'][:16]}...: another build of the "
            "dataset (other splits or images). Use the file it was trained on (or, to train on this one, a new --out)"
        )


def resolve_stored_path(data: str | None, checkpoint_path: str | os.PathLike, out: str) -> str | None:
    """The dataset file that a checkpoint names, as a path that exists from here.

    Checkpoints store absolute paths; an older one's relative path is looked up
    from the current folder, then from the checkpoint's folder, then from the
    folder the run was started in (the checkpoint's folder minus the run's
    relative ``out``). ``FileNotFoundError`` names every place tried.
    """
    if data is None or Path(data).is_absolute():
        return data
    folder = Path(os.path.abspath(checkpoint_path)).parent
    tried = [Path.cwd() / data, folder / data]
    out_parts = Path(out).parts
    if out_parts and not Path(out).is_absolute() and folder.parts[-len(out_parts):] == out_parts:
        tried.append(Path(*folder.parts[:-len(out_parts)]) / data)
    for candidate in tried:
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"dataset file {data} (a relative path stored in {checkpoint_path}) does not exist: tried "
                            f"{', '.join(str(c) for c in dict.fromkeys(tried))}; pass --data FILE")
