"""miniImageNet into one HDF5 dataset file, from any of the three layouts in common use.

The source is one folder holding one of (checked in this order):

(a) ``train.csv``, ``val.csv``, ``test.csv`` (Ravi & Larochelle; header
    ``filename,label``) and a flat ``images/`` folder with every file named there;
(b) ``train/``, ``val/``, ``test/`` with one folder of images per class
    (``train/<wnid>/*.jpg``);
(c) the pickle caches ``mini-imagenet-cache-{train,val,test}.pkl``: a dict with
    ``image_data`` (uint8 ``N x 84 x 84 x 3``) and ``class_dict``
    (``{wnid: [indices into image_data]}``).

Images are converted to RGB and resized once to 84x84 (PIL LANCZOS, as Ravi &
Larochelle's preprocessing) and stored as uint8 ``[3, H, W]``; classes are
sorted by name within a split. Layouts (a) and (b) are written split by split,
class by class, into pre-sized HDF5 datasets, so only one class's images are in
memory at a time; a pickle cache holds a whole split, so layout (c) loads one
split's pickle at a time.

Unpickling runs whatever code a pickle names, before its content can be checked, so
layout (c) is read only when asked for explicitly (``trust_pickle=True``, the
``--trust-pickle`` flag of ``fewshot-prepare-data``): a folder is never unpickled
just because it holds files with the right names.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .hdf5 import SPLIT_NAMES, HDF5Writer
from .images import decode_image, read_image_file

IMAGE_SIZE = 84
CSV_HEADER = ["filename", "label"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"

# One class of a split: its name and a callable giving its images as uint8 [n, 3, S, S].
ClassLoader = tuple[str, int, Callable[[], np.ndarray]]


def read_split_csv(path: str | Path) -> dict[str, list[str]]:
    """``{label: [filename, ...]}`` from a Ravi & Larochelle split CSV (header ``filename,label``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"miniimagenet: split file {path} does not exist")
    classes: dict[str, list[str]] = {}
    with open(path, newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header != CSV_HEADER:
            raise ValueError(f"miniimagenet: {path} must start with the header 'filename,label', found {header!r}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0] or not row[1]:
                raise ValueError(f"miniimagenet: {path} line {line}: expected 'filename,label', found {row!r}")
            classes.setdefault(row[1], []).append(row[0])
    if not classes:
        raise ValueError(f"miniimagenet: {path} lists no images")
    return classes


def load_image(path: Path, image_size: int) -> np.ndarray:
    """One image as uint8 ``[3, image_size, image_size]`` (RGB, LANCZOS-resized).

    Read and decoded through :mod:`.images`: a file too large, or with too many pixels, is refused naming it.
    """
    rgb = decode_image(read_image_file(path, "miniimagenet"), "RGB", str(path), "miniimagenet")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _files_loader(paths: list[Path], image_size: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        out = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
        for index, path in enumerate(paths):  # JPEG decoding is per file by nature
            out[index] = load_image(path, image_size)
        return out
    return load


def _csv_classes(root: Path, split: str, image_size: int) -> list[ClassLoader]:
    csv_path, images = root / f"{split}.csv", root / "images"
    classes = read_split_csv(csv_path)
    if not images.is_dir():
        raise FileNotFoundError(f"miniimagenet: {csv_path} needs the image folder {images}/, which does not exist")
    present = {p.name for p in images.iterdir()}
    for label, names in classes.items():
        missing = [n for n in names if n not in present]
        if missing:
            raise FileNotFoundError(
                f"miniimagenet: {csv_path} names {len(missing)} image(s) of class {label} missing from {images}/, "
                f"e.g. {missing[0]}"
            )
    return [(label, len(classes[label]), _files_loader([images / n for n in classes[label]], image_size))
            for label in sorted(classes)]


def _folder_classes(root: Path, split: str, image_size: int) -> list[ClassLoader]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"miniimagenet: class-folder layout needs {split_dir}/, which does not exist")
    loaders = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        paths = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"miniimagenet: class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        loaders.append((class_dir.name, len(paths), _files_loader(paths, image_size)))
    if not loaders:
        raise ValueError(f"miniimagenet: {split_dir} holds no class folders")
    return loaders


def require_trust(what: str, trust_pickle: bool) -> None:
    """Raise ``ValueError`` naming ``--trust-pickle`` unless ``trust_pickle``: checked before anything is unpickled."""
    if not trust_pickle:
        raise ValueError(
            f"miniimagenet: not unpickling {what} without --trust-pickle: unpickling runs any code a pickle names, "
            "before its content can be checked. Pass --trust-pickle (trust_pickle=True) only for caches from a source "
            "you trust, or build from layout (a) or (b) (datasets/README.md)"
        )


def read_pickle_cache(path: str | Path, trust_pickle: bool = False) -> tuple[np.ndarray, dict[str, list[int]]]:
    """``(image_data [N, H, W, 3] uint8, class_dict)`` of a ``mini-imagenet-cache-*.pkl``, validated.

    Refuses (``ValueError``) unless ``trust_pickle``: see the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"miniimagenet: pickle cache {path} does not exist")
    require_trust(str(path), trust_pickle)
    try:
        with open(path, "rb") as file:
            cache = pickle.load(file)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, ImportError, IndexError, TypeError,
            KeyError, MemoryError) as error:  # what damaged pickle bytes raise
        raise ValueError(f"miniimagenet: {path} is not a readable pickle (corrupt or truncated?): {error}") from error
    if not isinstance(cache, dict) or "image_data" not in cache or "class_dict" not in cache:
        raise ValueError(f"miniimagenet: {path} must hold a dict with 'image_data' and 'class_dict'")
    data, class_dict = cache["image_data"], cache["class_dict"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"miniimagenet: {path}: image_data must be a uint8 array [N, H, W, 3], got {found}")
    if not isinstance(class_dict, dict) or not class_dict:
        raise ValueError(f"miniimagenet: {path}: class_dict must be a non-empty dict {{class name: [image indices]}}, "
                         f"got {type(class_dict).__name__}")
    checked = {}
    for name, indices in class_dict.items():
        array = np.asarray(indices) if isinstance(indices, (list, tuple, np.ndarray)) else None
        if array is not None and len(array) == 0:
            raise ValueError(f"miniimagenet: {path}: class {name} has no images")
        if not isinstance(name, str) or array is None or array.ndim != 1 or array.dtype.kind not in "iu":
            raise ValueError(f"miniimagenet: {path}: class_dict must map class names to lists of image indices, "
                             f"got {name!r}: {type(indices).__name__}")
        if array.min() < 0 or array.max() >= len(data):
            raise ValueError(f"miniimagenet: {path}: class {name} has indices outside [0, {len(data)})")
        checked[name] = array.tolist()
    return data, checked


def _pickle_classes(root: Path, split: str, image_size: int) -> list[ClassLoader]:
    data, class_dict = read_pickle_cache(root / PICKLE_NAME.format(split=split), trust_pickle=True)  # trust: checked by the builder

    def loader(indices: list[int]) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            images = data[np.asarray(indices)]
            if images.shape[1:3] != (image_size, image_size):
                images = np.stack([np.asarray(Image.fromarray(i).resize((image_size, image_size), Image.Resampling.LANCZOS))
                                   for i in images])
            return images.transpose(0, 3, 1, 2)
        return load

    return [(name, len(class_dict[name]), loader(list(class_dict[name]))) for name in sorted(class_dict)]


# layout -> (the paths that make it up, relative to the source folder; how to list its classes)
LAYOUTS = {
    "csv": ([f"{s}.csv" for s in SPLIT_NAMES], _csv_classes),
    "class-folders": ([f"{s}/" for s in SPLIT_NAMES], _folder_classes),
    "pickle": ([PICKLE_NAME.format(split=s) for s in SPLIT_NAMES], _pickle_classes),
}


def detect_layout(root: str | Path) -> str:
    """Which of the three layouts ``root`` holds (``csv``, ``class-folders`` or ``pickle``).

    A layout with only some of its files (say two of the three pickles) is named
    in the error with the files that are missing.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"miniimagenet: source {root} is a file; give the folder that holds one of the layouts")
    if not root.is_dir():
        raise FileNotFoundError(f"miniimagenet: source folder {root} does not exist")
    partial = []
    for name, (paths, _) in LAYOUTS.items():
        missing = [path for path in paths if not ((root / path).is_dir() if path.endswith("/") else (root / path).is_file())]
        if not missing:
            return name
        if len(missing) < len(paths):
            partial.append(f"the {name} layout is missing {', '.join(str(root / path) for path in missing)}")
    if partial:
        raise FileNotFoundError(f"miniimagenet: {root} is incomplete: {'; '.join(partial)}")
    raise FileNotFoundError(
        f"miniimagenet: {root} holds none of the layouts: (a) train.csv, val.csv, test.csv + images/, "
        f"(b) train/, val/, test/ class folders, (c) {', '.join(PICKLE_NAME.format(split=s) for s in SPLIT_NAMES)}"
    )


def is_read_by_build(source: str | Path, path: str | Path) -> bool:
    """Whether building from the folder ``source`` may read ``path`` (so it must not be the output file)."""
    root, path = Path(source).resolve(), Path(path).resolve()
    if root not in path.parents:
        return False
    relative = path.relative_to(root)
    read_files = {name for paths, _ in LAYOUTS.values() for name in paths if not name.endswith("/")}
    read_folders = {"images"} | {name.rstrip("/") for paths, _ in LAYOUTS.values() for name in paths if name.endswith("/")}
    return str(relative) in read_files or relative.parts[0] in read_folders


def build_miniimagenet(source: str | Path, out: str | Path, image_size: int = IMAGE_SIZE,
                       progress: bool = True, trust_pickle: bool = False) -> dict[str, tuple[int, int]]:
    """Build ``out`` (HDF5) from the folder ``source``; returns ``{split: (n_classes, n_images)}``.

    A folder in the pickle layout is refused (before anything is unpickled) unless ``trust_pickle``.
    """
    if not 8 <= image_size <= 512:
        raise ValueError(f"miniimagenet: --image-size must be in [8, 512], got {image_size}")
    root = Path(source)
    layout = detect_layout(root)
    if layout == "pickle":
        require_trust(f"the pickle caches in {root}", trust_pickle)
    list_classes = LAYOUTS[layout][1]
    build = {"source": root.name, "layout": layout, "image_size": image_size, "resize": "PIL LANCZOS"}
    counts: dict[str, tuple[int, int]] = {}
    with HDF5Writer(out, "miniimagenet", (3, image_size, image_size), build=build) as writer:
        for split in SPLIT_NAMES:  # one split at a time (a pickle cache is loaded only for its split)
            classes = list_classes(root, split, image_size)
            n_images = sum(n for _, n, _ in classes)
            split_writer = writer.split(split, n_images, [name for name, _, _ in classes])
            for label, (name, n, load) in enumerate(tqdm(classes, desc=f"miniimagenet {split}", unit="class",
                                                         disable=not progress)):
                split_writer.write(load(), np.full(n, label, dtype=np.int64))
            counts[split] = (len(classes), n_images)
    return counts
