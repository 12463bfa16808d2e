"""Omniglot from the official zips (or their extracted folders) into one HDF5 dataset file.

Sources are any combination of ``images_background.zip``, ``images_evaluation.zip``,
``images_background_small1.zip`` and ``images_background_small2.zip`` (Lake et
al., github.com/brendenlake/omniglot), as zip files or extracted folders. Every
PNG is identified by its last three path parts ``<alphabet>/<character>/<file>.png``,
so an alphabet found in several sources (Greek and Latin are in both minimal
sets) is merged once.

Images are read straight from the zips, inverted so that strokes are bright
(255) on a dark (0) background, like the embedded glyphs, and resized once with
PIL's BOX (area-average) filter to ``image_size`` (default 28, at most the
original 105).

Splits, written into the file and printed:

* full data (all 1,623 characters): the Vinyals-style character split, 1,200
  training characters (1,028 train + 172 val, the sizes of Snell et al.'s
  published Vinyals split) and the other 423 for test, assigned by a seeded
  shuffle; 90/180/270 degree rotations are extra classes in every split
  (``rotated_splits`` = train, val, test), as in that protocol;
* partial data (e.g. the minimal sets): an alphabet-disjoint split; alphabets,
  in a seeded order, fill test up to 25% of the characters, then val up to 10%
  (skipping alphabets that would overshoot a target by more than 25%), the rest
  is train; rotations are extra classes of the train split only.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .hdf5 import SPLIT_NAMES, HDF5Writer
from .images import decode_image, read_image_file, read_zip_member

ORIGINAL_SIZE = 105
FULL_CHARACTERS = 1623
VINYALS_SIZES = {"train": 1028, "val": 172, "test": 423}
PARTIAL_FRACTIONS = {"test": 0.25, "val": 0.10}  # of the characters; train gets the rest
OVERSHOOT = 1.25


@dataclass(frozen=True)
class OmniglotImage:
    """Where one drawing lives: ``read()`` returns the PNG bytes."""

    alphabet: str
    character: str
    filename: str
    origin: str  # "archive.zip:member" or a file path, for error messages
    read: Callable[[], bytes]  # capped in size (see .images)

    @property
    def class_name(self) -> str:
        return f"{self.alphabet}/{self.character}"


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, origin: str) -> Callable[[], bytes]:
    return lambda: read_zip_member(archive, info, origin, "omniglot")


def _file_reader(path: Path) -> Callable[[], bytes]:
    return lambda: read_image_file(path, "omniglot")


def _unsafe_member(name: str) -> bool:
    """Whether the zip member ``name`` points outside the folder it would be extracted into, or elsewhere on another
    system: an absolute path, a drive (``C:``), a ``..`` part, or a backslash (a separator on Windows)."""
    return name.startswith("/") or "\\" in name or name[1:2] == ":" or ".." in name.split("/")


def list_images(sources: list[str | Path]) -> list[OmniglotImage]:
    """Every drawing of the ``sources`` (zips or folders), duplicates across sources merged once, sorted."""
    if not sources:
        raise ValueError("omniglot: no --source given; pass the Omniglot zips or extracted folders")
    found: dict[tuple[str, str, str], OmniglotImage] = {}
    for source in map(Path, sources):
        if not source.exists():
            raise FileNotFoundError(f"omniglot source {source} does not exist")
        entries: list[tuple[tuple[str, ...], str, Callable[[], bytes]]] = []
        if source.is_dir():
            for path in sorted(source.resolve().rglob("*.png")):  # absolute parts: an alphabet folder works too
                entries.append((path.parts, str(path), _file_reader(path)))
        else:
            try:
                archive = zipfile.ZipFile(source)
            except (zipfile.BadZipFile, OSError) as error:
                raise ValueError(f"omniglot source {source} is not a readable zip file (corrupt or truncated?): {error}") from error
            for info in archive.infolist():
                if info.filename.lower().endswith(".png"):
                    origin = f"{source}:{info.filename}"
                    if _unsafe_member(info.filename):  # its last three parts would make a bogus alphabet
                        raise ValueError(
                            f"omniglot source {origin}: unsafe path (absolute, a drive, a '..' part or a backslash); "
                            "Omniglot zips hold only <alphabet>/<character>/<file>.png paths: remove the member "
                            "or use the official zips"
                        )
                    entries.append((tuple(info.filename.split("/")), origin, _zip_reader(archive, info, origin)))
        usable = [e for e in entries if len(e[0]) >= 3]
        if not usable:
            raise ValueError(
                f"omniglot source {source} holds no <alphabet>/<character>/<file>.png images; "
                "expected e.g. images_background.zip from github.com/brendenlake/omniglot"
            )
        for parts, origin, read in usable:
            key = parts[-3], parts[-2], parts[-1]
            found.setdefault(key, OmniglotImage(*key, origin, read))
    return [found[key] for key in sorted(found)]


def split_characters(images: list[OmniglotImage], seed: int = 0) -> tuple[str, dict[str, list[str]]]:
    """``(protocol, {split: sorted class names})`` for the characters in ``images`` (see the module docstring)."""
    characters = sorted({image.class_name for image in images})
    generator = torch.Generator().manual_seed(seed)
    if len(characters) >= FULL_CHARACTERS:
        order = [characters[i] for i in torch.randperm(len(characters), generator=generator).tolist()]
        train_end = VINYALS_SIZES["train"]
        val_end = train_end + VINYALS_SIZES["val"]
        chosen = {"train": order[:train_end], "val": order[train_end:val_end], "test": order[val_end:]}
        return "vinyals", {name: sorted(chosen[name]) for name in SPLIT_NAMES}
    per_alphabet = Counter(name.split("/")[0] for name in characters)
    if len(per_alphabet) < 3:
        raise ValueError(
            f"omniglot: an alphabet-disjoint train/val/test split needs at least 3 alphabets, the sources hold "
            f"{len(per_alphabet)} ({', '.join(sorted(per_alphabet))}); add more zips"
        )
    alphabets = sorted(per_alphabet)
    order = [alphabets[i] for i in torch.randperm(len(alphabets), generator=generator).tolist()]
    assigned: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for split in ("test", "val"):
        target = PARTIAL_FRACTIONS[split] * len(characters)
        for alphabet in list(order):
            count = sum(per_alphabet[a] for a in assigned[split])
            # Fill up to the target, skipping alphabets that would overshoot it by more than a quarter,
            # so that one large alphabet does not take characters away from training.
            if count < target and count + per_alphabet[alphabet] <= OVERSHOOT * target:
                assigned[split].append(alphabet)
                order.remove(alphabet)
        if not assigned[split]:  # every alphabet is larger than the target: take the smallest
            smallest = min(order, key=lambda a: (per_alphabet[a], a))
            assigned[split].append(smallest)
            order.remove(smallest)
    assigned["train"] = order
    alphabet_split = {a: split for split, names in assigned.items() for a in names}
    by_split = {name: [c for c in characters if alphabet_split[c.split("/")[0]] == name] for name in SPLIT_NAMES}
    return "alphabet-disjoint", by_split


def decode(image: OmniglotImage, image_size: int) -> np.ndarray:
    """One drawing as uint8 ``[image_size, image_size]``, strokes bright, resized with the BOX filter.

    Read and decoded through :mod:`.images`: a file too large, or with too many pixels, is refused naming it.
    """
    gray = decode_image(image.read(), "L", image.origin, "omniglot")
    inverted = Image.fromarray(255 - np.asarray(gray, dtype=np.uint8))
    if inverted.size != (image_size, image_size):
        inverted = inverted.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(inverted, dtype=np.uint8)


def is_read_by_build(sources: list[str | Path], path: str | Path) -> bool:
    """Whether building from ``sources`` may read ``path`` (so it must not be the output file):
    a source itself, or a PNG inside a source folder."""
    path = Path(path).resolve()
    for source in map(Path, sources):
        if path == source.resolve() or (path.exists() and source.exists() and path.samefile(source)):
            return True
        if source.is_dir() and source.resolve() in path.parents and path.suffix == ".png":
            return True
    return False


def build_omniglot(sources: list[str | Path], out: str | Path, image_size: int = 28, seed: int = 0,
                   progress: bool = True) -> dict[str, list[str]]:
    """Build ``out`` (HDF5) from the Omniglot ``sources``; returns ``{split: alphabets}`` (also printed by the script)."""
    if not 8 <= image_size <= ORIGINAL_SIZE:
        raise ValueError(f"omniglot: --image-size must be in [8, {ORIGINAL_SIZE}] (the original size), got {image_size}")
    images = list_images(sources)
    protocol, split_classes = split_characters(images, seed)
    rotated = list(SPLIT_NAMES) if protocol == "vinyals" else ["train"]
    alphabets = {name: sorted({c.split("/")[0] for c in classes}) for name, classes in split_classes.items()}
    build = {
        "sources": [Path(s).name for s in sources], "image_size": image_size, "seed": seed, "protocol": protocol,
        "resize": "PIL BOX", "inverted": True, "split_alphabets": alphabets,
        "n_characters": {name: len(classes) for name, classes in split_classes.items()},
    }
    by_class: dict[str, list[OmniglotImage]] = {}
    for image in images:
        by_class.setdefault(image.class_name, []).append(image)
    # The bar is closed (its line ended) by any exit, so that an error or Ctrl-C message starts a line of its own.
    with tqdm(total=len(images), desc="omniglot", unit="img", disable=not progress) as bar, \
            HDF5Writer(out, "omniglot", (1, image_size, image_size), build=build, rotated_splits=rotated) as writer:
        for name in SPLIT_NAMES:
            classes = split_classes[name]
            split_images = [image for c in classes for image in by_class[c]]
            labels = np.repeat(np.arange(len(classes)), [len(by_class[c]) for c in classes])
            pixels = np.empty((len(split_images), 1, image_size, image_size), dtype=np.uint8)
            for index, image in enumerate(split_images):  # PNG decoding is per file by nature
                pixels[index, 0] = decode(image, image_size)
                bar.update(1)
            writer.split(name, len(split_images), classes).write(pixels, labels)
    return alphabets
