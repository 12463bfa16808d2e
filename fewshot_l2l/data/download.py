"""Fetching the official Omniglot zips with checksum verification (miniImageNet has no official download).

The URLs are Lake et al.'s repository (github.com/brendenlake/omniglot); the
MD5 sums are the ones torchvision's ``Omniglot`` dataset verifies. Offline, the
error says which files to fetch by hand and where to put them.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
OMNIGLOT_ZIPS = {  # name -> MD5
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
MINIIMAGENET_NOTE = (
    "miniImageNet has no official download (ImageNet's license requires fetching it yourself); "
    "build it from one of the three layouts described in datasets/README.md"
)


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline_help(folder: Path) -> str:
    urls = " and ".join(OMNIGLOT_URL.format(name=name) for name in OMNIGLOT_ZIPS)
    return (f"fetch {urls} by hand, put them in {folder}/ (MD5 {', '.join(OMNIGLOT_ZIPS.values())}), "
            f"and run without --download: --source {' '.join(str(folder / n) for n in OMNIGLOT_ZIPS)}")


def fetch(url: str, path: Path, md5: str, timeout: float = 60.0) -> None:
    """Download ``url`` to ``path`` via ``path.tmp-<pid>``, renamed only when its MD5 is ``md5``."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as file:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, desc=path.name, unit="B", unit_scale=True, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    file.write(block)
                    bar.update(len(block))
        actual = file_md5(tmp)
        if actual != md5:
            raise ValueError(f"download of {url} has MD5 {actual}, expected {md5} (corrupt or changed upstream)")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_omniglot(folder: str | os.PathLike) -> list[Path]:
    """The two official zips in ``folder`` (created if needed), fetched unless already there with the right MD5.

    Raises:
        ConnectionError: the network is unreachable; the message names the files to fetch and where to put them.
        ValueError: a download (or a file already in ``folder``) fails checksum verification.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, md5 in OMNIGLOT_ZIPS.items():
        path = folder / name
        if not (path.is_file() and file_md5(path) == md5):
            url = OMNIGLOT_URL.format(name=name)
            try:
                fetch(url, path, md5)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                raise ConnectionError(f"could not download {url} ({error}); offline? {_offline_help(folder)}") from error
        paths.append(path)
    return paths
