"""Fetching the official Omniglot zips with checksum verification (miniImageNet has no official download).

The URLs are Lake et al.'s repository (github.com/brendenlake/omniglot); the
MD5 sums are the ones torchvision's ``Omniglot`` dataset verifies. The transfer
and the checksums are torchvision's (``torchvision.datasets.utils``, the
``data`` extra); this module adds what it lacks: a download lands in a private
staging folder beside its destination and is renamed into place only once its
MD5 matches, so an interrupted or corrupt download never leaves a file under
the final name, and offline the error says which files to fetch by hand and
where to put them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
from pathlib import Path

from ..extras import require

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
OMNIGLOT_ZIPS = {  # name -> MD5
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
MINIIMAGENET_NOTE = (
    "miniImageNet has no official download (ImageNet's license requires fetching it yourself); "
    "build it from one of the three layouts described in datasets/README.md"
)


def _dataset_utils():
    return require("torchvision.datasets.utils", "data", "downloading Omniglot")


def _offline_help(folder: Path) -> str:
    urls = " and ".join(OMNIGLOT_URL.format(name=name) for name in OMNIGLOT_ZIPS)
    return (f"fetch {urls} by hand, put them in {folder}/ (MD5 {', '.join(OMNIGLOT_ZIPS.values())}), "
            f"and run without --download: --source {' '.join(str(folder / n) for n in OMNIGLOT_ZIPS)}")


def fetch(url: str, path: Path, md5: str) -> None:
    """Download ``url`` to ``path`` through a staging folder beside it, renamed only when its MD5 is ``md5``.

    Raises:
        ValueError: the download's MD5 is not ``md5`` (nothing is left behind).
        urllib.error.URLError, OSError: the transfer failed (nothing is left behind).
    """
    utils = _dataset_utils()
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.download-"))
    try:
        # No md5 argument: torchvision's own check raises a bare "File not found or corrupted."
        utils.download_url(url, str(staging), path.name)
        actual = utils.calculate_md5(staging / path.name)
        if actual != md5:
            raise ValueError(f"download of {url} has MD5 {actual}, expected {md5} (corrupt or changed upstream)")
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_omniglot(folder: str | os.PathLike) -> list[Path]:
    """The two official zips in ``folder`` (created if needed), fetched unless already there with the right MD5.

    Raises:
        ConnectionError: the network is unreachable; the message names the files to fetch and where to put them.
        ValueError: a download fails checksum verification.
        ModuleNotFoundError: torchvision is not installed (the ``data`` extra).
    """
    utils = _dataset_utils()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, md5 in OMNIGLOT_ZIPS.items():
        path = folder / name
        if not utils.check_integrity(str(path), md5):
            url = OMNIGLOT_URL.format(name=name)
            try:
                fetch(url, path, md5)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                raise ConnectionError(f"could not download {url} ({error}); offline? {_offline_help(folder)}") from error
        paths.append(path)
    return paths
