"""The fused CPU kernels (``coordinatewise.cpp``): compiled on first use, cached, called through ``ctypes``.

The source is plain C++ with OpenMP and no torch headers, so the build is one ``g++`` call of a few seconds
and needs nothing else (no ninja, no Python headers). The shared library is cached under
``$FEWSHOT_L2L_KERNEL_DIR`` (default ``$XDG_CACHE_HOME/fewshot_l2l``, i.e. ``~/.cache/fewshot_l2l``), named by a
hash of the source, the compiler, its flags and this CPU's feature flags (``-march=native``), and written
atomically so that concurrent processes (``torchrun``) may build it at once. The compiler is ``$CXX`` or ``g++``.

When the build is impossible (no compiler, a failing one), :func:`library` returns ``None``, the reason is
logged once in one line (logger ``fewshot_l2l``), and the library runs the plain torch step
(:mod:`fewshot_l2l.kernels` dispatch).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("coordinatewise.cpp")
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared", "-std=gnu++17")
DTYPES = {torch.float32: 0, torch.float64: 1}  # the C functions' dtype codes
BUILD_TIMEOUT_S = 300

logger = logging.getLogger("fewshot_l2l")


class MetaLSTMCall(ctypes.Structure):
    """The argument block of ``fewshot_meta_lstm_forward``/``_backward`` (``struct MetaLSTMCall`` in the source)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("batch", "n_params", "hidden")] + [
        (name, ctypes.c_double) for name in ("p", "threshold", "scale")] + [("threads", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in (
            "theta", "grad", "loss", "h", "c", "f", "i",
            "weight_ih", "weight_hh", "bias", "weight_forget", "weight_input", "bias_forget", "bias_input",
            "theta_out", "h_out", "c_out", "f_out", "i_out",
            "d_theta_out", "d_h_out", "d_c_out", "d_f_out", "d_i_out",
            "d_theta", "d_h", "d_c", "d_f", "d_i",
            "d_weight_ih", "d_weight_hh", "d_bias", "d_weight_forget", "d_weight_input", "d_bias_forget", "d_bias_input",
        )]


class _Loader:
    """Builds and loads the library once per process; remembers why not when it cannot."""

    def __init__(self) -> None:
        self.handle: ctypes.CDLL | None = None
        self.reason: str | None = None
        self.tried = False

    def load(self) -> ctypes.CDLL | None:
        if not self.tried:
            self.tried = True
            try:
                self.handle = _open(build())
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                self.reason = str(error)
                logger.warning("fewshot_l2l: the fused C++ step is unavailable (%s); the meta-learner runs the plain "
                               "torch step", self.reason)
        return self.handle


_loader = _Loader()


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on first use; ``None`` (and one logged line, once) when they cannot be built."""
    return _loader.load()


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (it is tried first), or ``None`` when the kernels are loaded."""
    return None if library() is not None else _loader.reason


def compiler() -> str:
    """The C++ compiler used: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX") or "g++"


def cache_dir() -> Path:
    """Where built libraries are kept (module docstring)."""
    if os.environ.get("FEWSHOT_L2L_KERNEL_DIR"):
        return Path(os.environ["FEWSHOT_L2L_KERNEL_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fewshot_l2l"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return next((line for line in file if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def build() -> Path:
    """Compile ``coordinatewise.cpp`` unless a library built from the same source, compiler and CPU is cached;
    return its path. Raises ``RuntimeError`` saying why the build failed."""
    cxx = shutil.which(compiler())
    if cxx is None:
        raise RuntimeError(f"no C++ compiler {compiler()!r} found; install g++ or set CXX")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"the C++ compiler {cxx} does not run: {error}") from error
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, cxx.encode(), version.encode(), " ".join(FLAGS).encode(),
                                     platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    directory = cache_dir()
    target = directory / f"coordinatewise-{key}.so"
    if target.is_file():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        directory = Path(tempfile.gettempdir()) / "fewshot_l2l"
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / target.name
        if target.is_file():
            return target
    fd, partial = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.partial", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            first_error = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip()[:200])
            raise RuntimeError(f"{cxx} failed on {SOURCE.name}: {first_error}")
        os.replace(partial, target)  # atomic: a concurrent build wrote the same bytes
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def _open(path: Path) -> ctypes.CDLL:
    handle = ctypes.CDLL(str(path))
    for name in ("fewshot_meta_lstm_forward", "fewshot_meta_lstm_backward"):
        function = getattr(handle, name)
        function.argtypes = (ctypes.POINTER(MetaLSTMCall), ctypes.c_int)
        function.restype = ctypes.c_int
    return handle


WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias", "weight_forget", "weight_input", "bias_forget", "bias_input")


def _call(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
          weights: tuple[Tensor, ...], p: float, **outputs: Tensor) -> MetaLSTMCall:
    batch, n_params = theta.shape
    call = MetaLSTMCall(batch=batch, n_params=n_params, hidden=h.shape[0], p=p, threshold=math.exp(-p),
                        scale=math.exp(p), threads=torch.get_num_threads())
    named = dict(zip(("theta", "grad", "loss", "h", "c", "f", "i"), (theta, grad, loss, h, c, f, i)))
    for name, tensor in {**named, **dict(zip(WEIGHT_NAMES, weights)), **outputs}.items():
        setattr(call, name, tensor.data_ptr())
    return call


def _run(function: str, call: MetaLSTMCall, dtype: torch.dtype) -> None:
    handle = library()
    if handle is None:
        raise RuntimeError(f"the fused C++ step is unavailable: {_loader.reason}")
    status = getattr(handle, f"fewshot_meta_lstm_{function}")(ctypes.byref(call), DTYPES[dtype])
    if status != 0:
        raise RuntimeError(f"fewshot_meta_lstm_{function} refused its arguments (status {status})")


def meta_lstm_forward(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                      weights: tuple[Tensor, ...], p: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One fused step on contiguous CPU tensors (``h``, ``c`` ``[hidden, B, P]``; the rest as
    :func:`fewshot_l2l.kernels.meta_lstm_step_op`): ``(theta_next, h_next, c_next, f_next, i_next)``."""
    outputs = dict(theta_out=torch.empty_like(theta), h_out=torch.empty_like(h), c_out=torch.empty_like(c),
                   f_out=torch.empty_like(f), i_out=torch.empty_like(i))
    _run("forward", _call(theta, grad, loss, h, c, f, i, weights, p, **outputs), theta.dtype)
    return tuple(outputs.values())


def meta_lstm_backward(d_theta_next: Tensor, d_h_next: Tensor, d_c_next: Tensor, d_f_next: Tensor, d_i_next: Tensor,
                       theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                       f_next: Tensor, i_next: Tensor, weights: tuple[Tensor, ...], p: float) -> tuple[Tensor, ...]:
    """The fused backward: from the gradients of the five outputs, those of ``theta``, ``h``, ``c``, ``f``, ``i``
    and of the seven weights (the layer-1 gates are recomputed from the inputs; ``f_next``/``i_next`` are the
    saved outputs)."""
    inputs = dict(d_theta=torch.empty_like(theta), d_h=torch.empty_like(h), d_c=torch.empty_like(c),
                  d_f=torch.empty_like(f), d_i=torch.empty_like(i))
    weight_grads = {"d_" + name: torch.empty_like(weight) for name, weight in zip(WEIGHT_NAMES, weights)}
    call = _call(theta, grad, loss, h, c, f, i, weights, p, f_out=f_next, i_out=i_next, d_theta_out=d_theta_next,
                 d_h_out=d_h_next, d_c_out=d_c_next, d_f_out=d_f_next, d_i_out=d_i_next, **inputs, **weight_grads)
    _run("backward", call, theta.dtype)
    return (*inputs.values(), *weight_grads.values())
