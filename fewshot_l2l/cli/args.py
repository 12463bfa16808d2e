"""Arguments shared by the command-line front ends."""

from __future__ import annotations

import argparse

from ..utils import resolve_device

DEVICE_HELP = "auto (CUDA if available, else CPU) or a torch device: cpu, cuda, cuda:N, mps, xpu, ..."


def device_arg(value: str) -> str:
    """``argparse`` type of ``--device``: the string as given, once :func:`resolve_device` accepts it here.

    Checked while parsing, so that a device this machine lacks is a usage error
    naming it, before any data is loaded.
    """
    try:
        resolve_device(value)
    except (ValueError, RuntimeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value
