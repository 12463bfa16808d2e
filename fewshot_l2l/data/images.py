"""Reading one source image of a builder (Omniglot, miniImageNet) without trusting it.

A source is a zip or a folder that anyone may have made, so before an image is decoded:

* its size is capped: a zip member whose directory entry declares more than :data:`MAX_IMAGE_BYTES`,
  or a file on disk larger than that, is refused before a byte of it is read, and at most
  ``MAX_IMAGE_BYTES + 1`` bytes are ever read, whatever size was declared (a header that lies, a
  link to ``/dev/zero``); a path that is not a regular file (a device, a FIFO) is refused unread;
* Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, which a small compressed file can
  exceed) is an error: Pillow itself only warns (``DecompressionBombWarning``) up to twice the limit
  and goes on decoding, and raises ``DecompressionBombError`` above it.

Every refusal is a ``ValueError`` of one line naming the image (``ZIP:MEMBER`` or its path).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

# Far above any real image of the two datasets, far below what hurts to hold in memory: Omniglot's
# drawings are 105x105 PNGs of at most 419 bytes (the largest of the two official minimal zips),
# miniImageNet's are 84x84 JPEGs of a few KB, and even ImageNet's original photos, which a
# class-folder source may hold, average about 110 KB (ILSVRC-2012 train: 138 GB in 1.28 M files).
MAX_IMAGE_BYTES = 64 << 20  # 64 MiB

# What reading a damaged zip member raises (zipfile, zlib, a truncated stream) or a failing disk.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)
# What Pillow raises for a damaged image once it has identified the format (ValueError: e.g. a PNG text
# chunk that decompresses past Pillow's limit).
_DECODE_ERRORS = (OSError, ValueError, EOFError, zlib.error, SyntaxError)


def _refuse_oversized(declared_size: int, origin: str, dataset: str) -> None:
    if declared_size > MAX_IMAGE_BYTES:
        raise ValueError(f"{dataset}: image {origin} is {declared_size} bytes, over the {MAX_IMAGE_BYTES} bytes "
                         f"allowed for one source image, far above any real {dataset} image: not read; "
                         "remove it from the source")


def read_capped(file: BinaryIO, declared_size: int, origin: str, dataset: str) -> bytes:
    """The bytes of one image, read from ``file``, whose size as declared (zip directory, ``stat``) is ``declared_size``.

    Refused (``ValueError`` naming ``origin``, e.g. ``bg.zip:Greek/character01/x.png``) when the declared
    size is over :data:`MAX_IMAGE_BYTES` (checked before reading) or when ``file`` holds more than that
    anyway: at most ``MAX_IMAGE_BYTES + 1`` bytes are read.
    """
    _refuse_oversized(declared_size, origin, dataset)
    try:
        data = file.read(MAX_IMAGE_BYTES + 1)
    except _READ_ERRORS as error:
        raise ValueError(f"{dataset}: unreadable image {origin} (corrupt file?): {error}") from error
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{dataset}: image {origin} holds more than {MAX_IMAGE_BYTES} bytes, though its size is "
                         f"given as {declared_size} (a damaged or forged file): remove it from the source")
    return data


def read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, origin: str, dataset: str) -> bytes:
    """The bytes of the zip member ``info`` (see :func:`read_capped`; its size is the one its directory entry declares)."""
    _refuse_oversized(info.file_size, origin, dataset)  # before the member is even opened
    try:
        with archive.open(info) as file:
            return read_capped(file, info.file_size, origin, dataset)
    except (*_READ_ERRORS, RuntimeError, NotImplementedError) as error:  # a damaged header, encrypted, another method
        raise ValueError(f"{dataset}: unreadable image {origin} (corrupt file?): {error}") from error


def read_image_file(path: str | os.PathLike, dataset: str) -> bytes:
    """The bytes of the image file ``path`` (see :func:`read_capped`); anything but a regular file is refused unread."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{dataset}: image {path} is not a regular file (a device, FIFO or folder): not read; "
                             "remove it from the source")
        with open(path, "rb") as file:
            return read_capped(file, os.fstat(file.fileno()).st_size, str(path), dataset)
    except OSError as error:
        raise ValueError(f"{dataset}: unreadable image {path}: {error}") from error


def decode_image(data: bytes, mode: str, origin: str, dataset: str) -> Image.Image:
    """``data`` decoded by Pillow and converted to ``mode`` (``"L"``, ``"RGB"``); ``ValueError`` naming ``origin`` for
    bytes that are not an image Pillow reads, a damaged image, or one with more pixels than ``Image.MAX_IMAGE_PIXELS``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # decoding it is what the guard is for
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.convert(mode)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ValueError(f"{dataset}: image {origin} has too many pixels to decode safely, over PIL.Image."
                             f"MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} (Pillow: {str(error).rstrip('.')}), far more "
                             f"than any real {dataset} image: a decompression bomb? remove it from the source") from error
        except UnidentifiedImageError as error:  # its message shows the BytesIO object, not the image
            raise ValueError(f"{dataset}: unreadable image {origin}: not an image format Pillow reads "
                             "(corrupt, or not an image?)") from error
        except _DECODE_ERRORS as error:
            raise ValueError(f"{dataset}: unreadable image {origin} (corrupt file?): {error}") from error
