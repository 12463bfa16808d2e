"""Build one HDF5 dataset file (all splits) from Omniglot or miniImageNet sources; schema in datasets/README.md.

Needs the ``data`` extra (h5py, Pillow; torchvision for --download).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..data.download import MINIIMAGENET_NOTE, OMNIGLOT_ZIPS, download_omniglot
from ..extras import require


def main(argv: list[str] | None = None) -> None:
    try:  # every build needs both; checked first, since the builders import Pillow when imported
        for module in ("h5py", "PIL"):
            require(module, "data", "building a dataset file")
    except ModuleNotFoundError as error:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {error}")
    from ..data.miniimagenet import IMAGE_SIZE as MINIIMAGENET_SIZE, build_miniimagenet
    from ..data.omniglot import build_omniglot

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", choices=("omniglot", "miniimagenet"))
    parser.add_argument("--source", nargs="*", default=[],
                        help="omniglot: zips and/or extracted folders, any combination; miniimagenet: one folder "
                             "(CSV + images/, or train/val/test class folders, or the three pickle caches)")
    parser.add_argument("--out", required=True, help="output FILE.h5 (written atomically)")
    parser.add_argument("--download", action="store_true",
                        help=f"omniglot: fetch {' and '.join(OMNIGLOT_ZIPS)} (MD5-verified, kept if already there) "
                             "into the first --source if it is a folder, else beside --out, and build from them")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"side of the stored square images (default: omniglot 28, at most 105; miniimagenet {MINIIMAGENET_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the omniglot split assignment")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        if args.dataset == "omniglot":
            sources = list(args.source)
            if args.download:  # into the first --source if it is a folder (or missing), else beside --out
                first = Path(sources[0]) if sources else None
                folder = first if first is not None and (first.is_dir() or not first.exists()) else Path(args.out).parent
                others = [s for s in sources if Path(s) != folder]
                sources = [str(p) for p in download_omniglot(folder)] + others
            alphabets = build_omniglot(sources, args.out, args.image_size or 28, args.seed, progress=not args.no_progress)
            for split, names in alphabets.items():
                print(f"{split}: {len(names)} alphabets: {', '.join(names)}")
        else:
            if args.download:
                parser.error(MINIIMAGENET_NOTE)
            if len(args.source) != 1:
                parser.error("miniimagenet takes exactly one --source folder")
            counts = build_miniimagenet(args.source[0], args.out, args.image_size or MINIIMAGENET_SIZE,
                                        progress=not args.no_progress)
            for split, (n_classes, n_images) in counts.items():
                print(f"{split}: {n_classes} classes, {n_images} images")
    except (ValueError, FileNotFoundError, ConnectionError, ModuleNotFoundError) as error:
        sys.exit(f"{parser.prog}: error: {error}")
    print(json.dumps({"out": args.out}))


if __name__ == "__main__":
    main()
