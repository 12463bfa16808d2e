"""What the command-line front ends share: argument types, the parser, warnings and the error handling.

* The options of a configuration's settings are built from their declarations
  (:func:`fewshot_l2l.settings.add_arguments`); the options a command has of its own use these argument types
  (``type=`` of ``add_argument``), which refuse a bad value while parsing, as a usage error (exit 2) naming the
  argument: :func:`positive_int`, :func:`non_negative_int`, :func:`int_at_least` (all at most ``INT_MAX``),
  :func:`seed_int`, :func:`positive_float` (finite), :func:`output_file`, and
  :func:`fewshot_l2l.devices.device_argument`. A value is never replaced by a default behind the user's back:
  defaults are ``None`` and resolved with ``is None``, never with ``or``.
* :func:`command` wraps every ``main``: an error the library raises for bad input (a missing or
  corrupt file, a setting it refuses) is printed as one line ``PROG: error: MESSAGE`` on stderr and
  exits with status 1, not as a traceback; ``--debug`` (or ``FEWSHOT_L2L_DEBUG=1``) shows the
  traceback instead. Anything else (a bug) keeps its traceback. Ctrl-C (``KeyboardInterrupt``) is one line
  ``PROG: interrupted (Ctrl-C); ...`` and exit status 130, its traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable

from ..settings import INT_MAX, SEED_MAX

DEVICE_HELP = "auto (CUDA if available, else CPU) or a torch device: cpu, cuda, cuda:N, mps, xpu, ..."
DEBUG_ENV = "FEWSHOT_L2L_DEBUG"

# Errors the library raises for bad input or a failing environment (files, permissions, network,
# optional packages), reported in one line wherever they come from.
USER_ERRORS = (ValueError, OSError, ImportError)
# Reported in one line only when raised by fewshot_l2l itself (its messages name the cause); raised
# inside torch or another library they are bugs, and keep their traceback.
OWN_ERRORS = (RuntimeError, KeyError)
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
# What is true of every command stopped by Ctrl-C (or, in prepare_data, SIGTERM): each file goes through the one
# atomic writer (fewshot_l2l.files.AtomicFile), which removes its temporary file when an exception leaves it,
# so a file is whole or absent. (The training loops catch SIGINT themselves and save last.pt first.)
INTERRUPTED_NOTE = "no file was left half-written"
INTERRUPTED_STATUS = 128 + signal.SIGINT  # the shell's convention, as a run stopped by SIGINT (process.RunInterrupted)


def prog() -> str:
    """The program name argparse uses: the basename of ``sys.argv[0]``."""
    return os.path.basename(sys.argv[0])


def _parse_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:  # also Python's limit on the digits of an int read from a string
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argument type: an integer in ``[minimum, INT_MAX]``."""
    def parse(value: str) -> int:
        number = _parse_int(value)
        if not minimum <= number <= INT_MAX:
            raise argparse.ArgumentTypeError(f"must be an integer in [{minimum}, {INT_MAX}], got {value!r}")
        return number
    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
positive_int.__doc__ = "An argument type: an integer in [1, INT_MAX]."
non_negative_int = int_at_least(0)
non_negative_int.__doc__ = "An argument type: an integer in [0, INT_MAX]."


def seed_int(value: str) -> int:
    """An argument type: a seed, an integer in ``[0, SEED_MAX]``."""
    number = _parse_int(value)
    if not 0 <= number <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must be an integer in [0, {SEED_MAX}], got {value!r}")
    return number


def _parse_finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """An argument type: a finite number ``> 0`` (``nan``, ``inf`` and ``1e999`` are refused)."""
    number = _parse_finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value!r}")
    return number


def output_file(value: str) -> str:
    """An argument type: a path to write a file to; refused when it is a folder or lies under a file."""
    path = Path(value)
    if not value or path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a folder, not a file name")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"cannot write {value!r}: {blocking} is a file, not a folder")
    return value


def new_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser of one command, with ``--debug`` (see :func:`command`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, show the full traceback instead of one line (also: {DEBUG_ENV}=1)")
    return parser


def warn(message: str) -> None:
    """One line ``PROG: warning: MESSAGE`` on stderr."""
    print(f"{prog()}: warning: {message}", file=sys.stderr)


def _raised_by_package(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is fewshot_l2l code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is reported in one line (see the module docstring) rather than with its traceback."""
    if isinstance(error, USER_ERRORS):
        return True
    return isinstance(error, OWN_ERRORS) and _raised_by_package(error)


def error_message(error: BaseException) -> str:
    """The message of ``error`` on one line (a ``KeyError``'s without the quotes ``str`` adds)."""
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    message = " ".join(str(message).split()) or type(error).__name__
    return message


def command(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """Decorator of a front end's ``main(argv=None)``: user errors as one line, exit status 1; Ctrl-C as one line, 130.

    The line is ``PROG: error: MESSAGE`` on stderr, raised as ``SystemExit(line)``
    (Python prints it and exits with status 1), so a caller running ``main`` in
    its process sees ``SystemExit`` as from ``sys.exit``. ``KeyboardInterrupt``
    (Ctrl-C outside the training loops, which handle SIGINT themselves: see
    :class:`fewshot_l2l.runs.process.StopSignals`) prints ``PROG: interrupted (Ctrl-C);
    INTERRUPTED_NOTE`` and exits with status 130. ``SystemExit`` itself (usage
    errors: argparse prints them and exits with 2; a training run stopped by a
    signal, ``RunInterrupted``) and every other ``BaseException`` pass through
    untouched. ``--debug`` on the command line or ``FEWSHOT_L2L_DEBUG=1`` re-raises
    the error or the ``KeyboardInterrupt`` with its traceback.
    """
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> None:
        arguments = sys.argv[1:] if argv is None else [str(a) for a in argv]
        debug = "--debug" in arguments or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            main(argv)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"{prog()}: interrupted (Ctrl-C); {INTERRUPTED_NOTE}", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED_STATUS) from None
        except Exception as error:
            if debug or not is_user_error(error):
                raise
            raise SystemExit(f"{prog()}: error: {error_message(error)}") from error
    return run
