"""The on-disk dataset format: one HDF5 file per dataset holding all its splits.

Schema (``datasets/README.md`` documents it for users)::

    /                   attrs: format="fewshot_l2l", format_version=1, dataset, image_shape [C, H, W],
                               splits (names, in order), rotated_splits (rotation protocol),
                               build (JSON of the build parameters), content_sha256
    /<split>/images     uint8   [N, C, H, W]
    /<split>/labels     int64   [N]            class index in [0, n_classes)
    /<split>/class_names  str   [n_classes]

``content_sha256`` hashes, split by split in ``splits`` order: the split name,
the image bytes (C order), the label bytes (int64 little endian) and the class
names joined by newlines. :class:`HDF5Writer` computes it while the images are
written, so a split can be written class by class without holding it in memory.

Files are written through :class:`fewshot_l2l.files.AtomicFile` (the package's
one atomic writer; h5py writes the file incrementally, so it cannot be a single
``write(tmp)`` call): a hidden temporary file beside ``FILE``, renamed over it
only once complete; missing folders are created; any exception removes the
temporary file, so an interrupted build never leaves a file that looks valid. The
temporary files that killed builds of the same file left (their process is gone)
are removed when the next build starts.

:class:`HDF5Splits` opens the file lazily (on first access, not in
``__init__``) and drops the handle when pickled, so it can be handed to
DataLoader workers or other processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..files import AtomicFile, remove_stale_temps
from .episodes import FewShotSplit

FORMAT_NAME = "fewshot_l2l"
FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
CHUNK_BYTES = 1 << 16


def _h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is in requirements.txt
        raise ImportError("reading and writing dataset files needs h5py: pip install h5py") from error
    return h5py


class _SplitHasher:
    """Incremental content hash of one split (see the module docstring for the definition)."""

    def __init__(self, name: str) -> None:
        self.images = hashlib.sha256()
        self.labels = hashlib.sha256()
        self.name = name

    def update(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images.update(np.ascontiguousarray(images, dtype=np.uint8))  # hashed in place, no copy
        self.labels.update(np.ascontiguousarray(labels, dtype="<i8"))


def _combine(total: "hashlib._Hash", name: str, images_digest: bytes, labels_digest: bytes, class_names: list[str]) -> None:
    total.update(name.encode() + b"\0" + images_digest + labels_digest)
    total.update("\n".join(class_names).encode() + b"\0")


class SplitWriter:
    """Writes one split into a pre-sized dataset, sequentially, a chunk (e.g. a class) at a time."""

    def __init__(self, group: Any, name: str, n_images: int, image_shape: tuple[int, int, int], class_names: list[str]) -> None:
        self.name, self.n_images, self.image_shape = name, n_images, tuple(image_shape)
        self.class_names = list(class_names)
        # ~64 KiB chunks: few enough for fast whole-split loads, small enough for per-image reads.
        images_per_chunk = max(1, min(n_images, CHUNK_BYTES // int(np.prod(image_shape))))
        chunk = (images_per_chunk, *image_shape) if n_images else None
        self.images = group.create_dataset("images", shape=(n_images, *image_shape), dtype=np.uint8, chunks=chunk)
        self.labels = group.create_dataset("labels", shape=(n_images,), dtype=np.int64)
        group.create_dataset("class_names", data=np.array(self.class_names, dtype=object), dtype=_h5py().string_dtype())
        self.written = 0
        self.hasher = _SplitHasher(name)

    def write(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Iterable[int]) -> None:
        """Append ``images`` (uint8 ``[n, C, H, W]``) and their ``labels`` (``[n]``) after what was written."""
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        labels = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        n = len(images)
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.image_shape or labels.shape != (n,):
            raise ValueError(
                f"SplitWriter {self.name!r}: expected uint8 images [n, {', '.join(map(str, self.image_shape))}] and n labels, "
                f"got {images.dtype} {tuple(images.shape)} and labels {tuple(labels.shape)}"
            )
        if self.written + n > self.n_images:
            raise ValueError(f"SplitWriter {self.name!r}: writing {self.written + n} images into a split sized for {self.n_images}")
        if n and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"SplitWriter {self.name!r}: labels must lie in [0, {len(self.class_names)})")
        self.images[self.written:self.written + n] = images
        self.labels[self.written:self.written + n] = labels
        self.hasher.update(images, labels)
        self.written += n


class HDF5Writer:
    """Context manager that builds a dataset file atomically.

    Example::

        with HDF5Writer("omniglot.h5", "omniglot", (1, 28, 28), build={...}) as writer:
            split = writer.split("train", n_images, class_names)
            split.write(images, labels)
            ...

    On a clean exit every split must be complete; the attributes and the
    content checksum are written and the temporary file is renamed to ``path``.
    On an exception the temporary file is removed and ``path`` is untouched.
    """

    def __init__(self, path: str | os.PathLike, dataset: str, image_shape: tuple[int, int, int],
                 build: dict[str, Any] | None = None, rotated_splits: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.target: AtomicFile | None = None
        self.dataset, self.image_shape = dataset, tuple(int(v) for v in image_shape)
        self.build = dict(build or {})
        self.rotated_splits = list(rotated_splits)
        self.splits: list[SplitWriter] = []
        self.file: Any = None

    def __enter__(self) -> "HDF5Writer":
        remove_stale_temps(self.path.parent, self.path.name)  # what killed builds of this file left
        self.target = AtomicFile(self.path)
        try:
            self.file = _h5py().File(self.target.tmp_path, "w")
        except BaseException:
            self.target.discard()
            raise
        return self

    def split(self, name: str, n_images: int, class_names: list[str]) -> SplitWriter:
        """A new split of ``n_images`` images over ``class_names``, written with :meth:`SplitWriter.write`."""
        if name in [s.name for s in self.splits]:
            raise ValueError(f"HDF5Writer: split {name!r} written twice")
        writer = SplitWriter(self.file.create_group(name), name, n_images, self.image_shape, class_names)
        self.splits.append(writer)
        return writer

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._finish()
            self.file.close()
            if exc_type is None:
                self.target.commit()
        finally:
            if self.file:
                self.file.close()
            self.target.discard()

    def _finish(self) -> None:
        incomplete = [f"{s.name} ({s.written}/{s.n_images})" for s in self.splits if s.written != s.n_images]
        if incomplete:
            raise RuntimeError(f"HDF5Writer {self.path}: splits not completely written: {', '.join(incomplete)}")
        total = hashlib.sha256()
        for s in self.splits:
            _combine(total, s.name, s.hasher.images.digest(), s.hasher.labels.digest(), s.class_names)
        attrs = self.file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["dataset"] = self.dataset
        attrs["image_shape"] = np.array(self.image_shape, dtype=np.int64)
        attrs["splits"] = json.dumps([s.name for s in self.splits])
        attrs["rotated_splits"] = json.dumps(self.rotated_splits)
        attrs["build"] = json.dumps(self.build, sort_keys=True)
        attrs["content_sha256"] = total.hexdigest()


def _is_name_list(value: Any) -> bool:
    """Whether ``value`` (parsed JSON) is a list of distinct strings."""
    return isinstance(value, list) and all(isinstance(name, str) for name in value) and len(set(value)) == len(value)


def content_sha256(splits: dict[str, FewShotSplit]) -> str:
    """The content checksum of in-memory splits, as :class:`HDF5Writer` computes it while writing."""
    total = hashlib.sha256()
    for name, split in splits.items():
        hasher = _SplitHasher(name)
        hasher.update(split.images.cpu().numpy(), split.labels.cpu().numpy())
        _combine(total, name, hasher.images.digest(), hasher.labels.digest(), list(split.class_names))
    return total.hexdigest()


class HDF5Splits:
    """Read access to a dataset file; the file is opened on first use, not in ``__init__``.

    Pickling drops the open handle (each process reopens the file itself), so
    instances can be passed to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"dataset file {self.path} does not exist: build it with scripts/prepare_data.py (see datasets/README.md)"
            )
        self._file: Any = None
        self._attributes: dict[str, Any] = {}  # the JSON attributes, parsed and checked once per opening

    def __getstate__(self) -> dict:
        return {"path": self.path, "_file": None, "_attributes": {}}

    @property
    def file(self) -> Any:
        if self._file is None:
            try:
                self._file = _h5py().File(self.path, "r")
            except OSError as error:
                raise ValueError(f"dataset file {self.path} is not a readable HDF5 file (corrupt or truncated?): {error}") from error
            attrs = self._file.attrs
            if attrs.get("format") != FORMAT_NAME or "content_sha256" not in attrs:
                self.close()
                raise ValueError(
                    f"dataset file {self.path} is not a complete fewshot_l2l dataset (no format/checksum attributes); "
                    "rebuild it with scripts/prepare_data.py"
                )
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._attributes.clear()

    def _json_attribute(self, name: str, expected: str, check: Callable[[Any], str | None]) -> Any:
        """The JSON attribute ``name`` of the file root, parsed; ``check(value)`` returns what is wrong with it, or ``None``.

        A value that is not JSON, or not what ``check`` accepts, raises ``ValueError`` naming the file, the
        attribute and what it must hold (``expected``): json's own message names neither.
        """
        if name not in self._attributes:
            raw = self.file.attrs.get(name)
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            value, problem = None, "is not a JSON string"
            if isinstance(text, str):
                try:
                    value = json.loads(text)
                    problem = check(value)
                except ValueError:  # json.JSONDecodeError
                    problem = "is not valid JSON"
            if problem is not None:
                found = "it is missing" if raw is None else "found " + " ".join(repr(raw).split())[:80]
                raise ValueError(f"dataset file {self.path}: attribute {name!r} {problem} ({found}); it must hold "
                                 f"{expected}: the file is damaged or was not written by fewshot_l2l, rebuild it "
                                 "with scripts/prepare_data.py")
            self._attributes[name] = value
        return self._attributes[name]

    @property
    def dataset(self) -> str:
        return str(self.file.attrs["dataset"])

    @property
    def split_names(self) -> list[str]:
        """The splits of the file, in file order (the ``splits`` attribute), each a group of the file."""
        def check(value: Any) -> str | None:
            if not _is_name_list(value):
                return "is not a JSON list of distinct names"
            groups = set(self.file.keys())
            missing = [name for name in value if name not in groups]
            return f"names split(s) the file does not hold: {', '.join(missing)}" if missing else None

        return list(self._json_attribute("splits", 'the names of its split groups, e.g. ["train", "val", "test"]', check))

    @property
    def rotated_splits(self) -> list[str]:
        """The splits that the build's protocol augments with rotated copies (``rotate="auto"``)."""
        splits = self.split_names

        def check(value: Any) -> str | None:
            if not _is_name_list(value):
                return "is not a JSON list of distinct names"
            unknown = [name for name in value if name not in splits]
            return f"names split(s) not in 'splits': {', '.join(unknown)}" if unknown else None

        return list(self._json_attribute("rotated_splits", f"a JSON list of some of its splits ({', '.join(splits)})", check))

    @property
    def build(self) -> dict[str, Any]:
        return dict(self._json_attribute("build", "a JSON object of the build parameters",
                                         lambda value: None if isinstance(value, dict) else "is not a JSON object"))

    @property
    def content_sha256(self) -> str:
        return str(self.file.attrs["content_sha256"])

    def _group(self, name: str) -> Any:
        if name not in self.split_names:
            raise KeyError(f"dataset file {self.path} has no split {name!r}; it has {', '.join(self.split_names)}")
        return self.file[name]

    def n_images(self, split: str) -> int:
        return int(self._group(split)["labels"].shape[0])

    def item(self, split: str, index: int) -> tuple[torch.Tensor, int]:
        """One image (uint8 ``[C, H, W]``) and its label, read from disk (for per-item Dataset access)."""
        group = self._group(split)
        return torch.from_numpy(group["images"][index]), int(group["labels"][index])

    def split(self, name: str) -> FewShotSplit:
        """The whole split ``name`` in memory as one uint8 tensor."""
        group = self._group(name)
        try:
            images = torch.from_numpy(group["images"][()])
            labels = torch.from_numpy(group["labels"][()].astype(np.int64))
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in group["class_names"][()]]
        except (OSError, KeyError) as error:
            raise ValueError(f"dataset file {self.path}: split {name!r} is unreadable (corrupt file?): {error}") from error
        return FewShotSplit(images, labels, class_names, name=name)

    def load(self, verify: bool = True) -> dict[str, FewShotSplit]:
        """All splits in memory; with ``verify`` the content checksum is checked against the file's attribute."""
        splits = {name: self.split(name) for name in self.split_names}
        if verify and content_sha256(splits) != self.content_sha256:
            raise ValueError(
                f"dataset file {self.path}: content checksum mismatch (the file was modified or is corrupt); rebuild it"
            )
        return splits


class HDF5ImageDataset(torch.utils.data.Dataset):
    """Per-image ``torch.utils.data.Dataset`` over one split, for DataLoader use; safe in worker processes."""

    def __init__(self, path: str | os.PathLike, split: str) -> None:
        self.source = HDF5Splits(path)
        self.split = split

    def __len__(self) -> int:
        return self.source.n_images(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.source.item(self.split, index)
