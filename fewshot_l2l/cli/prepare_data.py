"""Build one HDF5 dataset file (all splits) from Omniglot or miniImageNet sources; schema in datasets/README.md.

Needs the ``data`` extra (h5py, Pillow; torchvision for --download).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Iterator

from ..data.download import MINIIMAGENET_NOTE, OMNIGLOT_ZIPS, download_omniglot
from ..extras import require
from ..runs.process import RunInterrupted, signal_name
from .args import INTERRUPTED_NOTE, command, new_parser, positive_int, prog, seed_int


def check_out(parser, out: Path, read_by_build: bool, force: bool) -> None:
    """Refuse, before any work, an ``--out`` that the build would destroy or could not write."""
    if out.is_dir():
        parser.error(f"--out {out} is a folder: give the path of the FILE.h5 to write")
    if read_by_build:  # even with --force: the build would replace its own input
        parser.error(f"--out {out} is one of the --source files (or read from a --source folder): "
                     "the build would overwrite its own input; choose another --out")
    if out.exists() and not force:
        parser.error(f"--out {out} exists: pass --force to replace it, or choose another --out")
    blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        parser.error(f"--out {out}: {blocking} is a file, not a folder")


@contextlib.contextmanager
def sigterm_cleans_up() -> Iterator[None]:
    """While entered, SIGTERM raises :class:`RunInterrupted` (exit status 143) where the build is, so that the way out
    removes what it was writing (the HDF5 temporary file, a download's staging folder) and one line says so.

    SIGTERM's default action ends the process at once: a build left its hidden ``.NAME.h5.PID-RAND.tmp``, as
    large as it had got (gigabytes for miniImageNet), until the next build of that file. A SIGTERM that is not
    at its default (ignored, or handled by a program calling ``main``), or a call outside the main thread, is
    left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    raised: list[RunInterrupted] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raised.append(RunInterrupted(signum, f"{prog()}: stopped by {signal_name(signum)}; {INTERRUPTED_NOTE}"))
        raise raised[-1]

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except RunInterrupted as stopped:
        if stopped in raised:  # printed once the way out has removed the unfinished files
            print(stopped.message, file=sys.stderr, flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@command
def main(argv: list[str] | None = None) -> None:
    for module in ("h5py", "PIL"):  # every build needs both; checked first, since the builders import Pillow when imported
        require(module, "data", "building a dataset file")
    from ..data import miniimagenet  # the default image size, for the help

    parser = new_parser(__doc__)
    parser.add_argument("dataset", choices=("omniglot", "miniimagenet"))
    parser.add_argument("--source", nargs="*", default=[],
                        help="omniglot: zips and/or extracted folders, any combination; miniimagenet: one folder "
                             "(CSV + images/, or train/val/test class folders, or the three pickle caches)")
    parser.add_argument("--out", required=True, help="output FILE.h5 (written atomically; never one of the --source files)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--download", action="store_true",
                        help=f"omniglot: fetch {' and '.join(OMNIGLOT_ZIPS)} (MD5-verified, kept if already there) "
                             "into the first --source if it is a folder, else beside --out, and build from them")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="miniimagenet: allow building from the pickle caches; unpickling runs any code a pickle "
                             "names, so only for caches from a source you trust")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help=f"side of the stored square images (default: omniglot 28, at most 105; "
                             f"miniimagenet {miniimagenet.IMAGE_SIZE})")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the omniglot split assignment")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    with sigterm_cleans_up():
        build(parser, args)


def build(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check ``--out``, download (with ``--download``), build ``--out`` and print its split."""
    from ..data import miniimagenet, omniglot

    out = Path(args.out)
    if args.dataset == "omniglot":
        sources = list(args.source)
        folder = None
        if args.download:  # into the first --source if it is a folder (or missing), else beside --out
            first = Path(sources[0]) if sources else None
            folder = first if first is not None and (first.is_dir() or not first.exists()) else out.parent
            sources = [s for s in sources if Path(s) != folder]
        downloads = [folder / name for name in OMNIGLOT_ZIPS] if folder is not None else []
        check_out(parser, out, omniglot.is_read_by_build([*args.source, *downloads], out), args.force)
        if folder is not None:
            sources = [str(p) for p in download_omniglot(folder)] + sources
        image_size = 28 if args.image_size is None else args.image_size
        alphabets = omniglot.build_omniglot(sources, out, image_size, args.seed, progress=not args.no_progress)
        for split, names in alphabets.items():
            print(f"{split}: {len(names)} alphabets: {', '.join(names)}")
    else:
        if args.download:
            parser.error(MINIIMAGENET_NOTE)
        if len(args.source) != 1:
            parser.error("miniimagenet takes exactly one --source folder")
        check_out(parser, out, miniimagenet.is_read_by_build(args.source[0], out), args.force)
        image_size = miniimagenet.IMAGE_SIZE if args.image_size is None else args.image_size
        counts = miniimagenet.build_miniimagenet(args.source[0], out, image_size, progress=not args.no_progress,
                                                 trust_pickle=args.trust_pickle)
        for split, (n_classes, n_images) in counts.items():
            print(f"{split}: {n_classes} classes, {n_images} images")
    print(json.dumps({"out": args.out}))


if __name__ == "__main__":
    main()
