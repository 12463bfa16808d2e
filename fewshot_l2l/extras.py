"""Optional dependencies: import one, or fail naming the package extra that installs it.

The extras are declared in ``pyproject.toml``: ``data`` (h5py, torchvision, Pillow:
building and reading the Omniglot / miniImageNet HDF5 files, downloads) and ``l2l``
(learn2learn). The core algorithm and the embedded glyph dataset need none of them
(matplotlib, for the pictures, is a core dependency: meta-training draws RUN_DIR/curves.png).
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """``import module``, or raise ``ModuleNotFoundError`` saying ``pip install 'fewshot_l2l[extra]'``.

    Args:
        module: dotted module name, e.g. ``"h5py"`` or ``"torchvision.datasets.utils"``.
        extra: the ``[project.optional-dependencies]`` entry that installs it.
        feature: what needs it, for the message (default: the module's name).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = error.name or module  # may be one of module's own dependencies (torchvision -> PIL)
        raise ModuleNotFoundError(
            f"{feature or module} needs the optional dependency {missing!r}, which is not installed: "
            f"pip install 'fewshot_l2l[{extra}]' (or, in a clone, pip install -e '.[{extra}]')",
            name=missing,
        ) from error
