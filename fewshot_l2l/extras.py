"""Optional dependencies: import one, or fail naming the package extra that installs it.

The extras are declared in ``pyproject.toml``: ``data`` (h5py, torchvision, Pillow:
building and reading the Omniglot / miniImageNet HDF5 files, downloads) and ``l2l``
(learn2learn: :mod:`fewshot_l2l.interop`). The core algorithm and the embedded glyph dataset need none of them
(matplotlib, for the pictures, is a core dependency: meta-training draws RUN_DIR/curves.png).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Extras that plain pip does not install: how to set them up instead. learn2learn 0.2.0 ships only a source
# archive whose C files do not compile on Python 3.11; scripts/install_learn2learn.sh rebuilds it (README.md).
SETUP_COMMANDS = {
    "l2l": "make setup (in a clone), or bash scripts/install_learn2learn.sh PYTHON; plain "
           "pip install learn2learn fails on Python 3.11",
}


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """``import module``, or raise ``ModuleNotFoundError`` saying ``pip install 'fewshot_l2l[extra]'``
    (or, for an extra in :data:`SETUP_COMMANDS`, the command that sets it up).

    Args:
        module: dotted module name, e.g. ``"h5py"`` or ``"torchvision.datasets.utils"``.
        extra: the ``[project.optional-dependencies]`` entry that installs it.
        feature: what needs it, for the message (default: the module's name).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = error.name or module  # may be one of module's own dependencies (torchvision -> PIL)
        how = SETUP_COMMANDS.get(extra, f"pip install 'fewshot_l2l[{extra}]' (or, in a clone, pip install -e '.[{extra}]')")
        raise ModuleNotFoundError(
            f"{feature or module} needs the optional dependency {missing!r}, which is not installed: {how}",
            name=missing,
        ) from error
