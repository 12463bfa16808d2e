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


def _argument_block(name: str, scalars: tuple[str, ...], inputs: tuple[str, ...], weights: tuple[str, ...],
                    outputs: tuple[str, ...]) -> type[ctypes.Structure]:
    """The ctypes mirror of a ``struct`` of the source: three int64 sizes, double scalars, the thread count, then
    pointers to the inputs, the weights, the outputs, the outputs' gradients, the inputs' and the weights' gradients."""
    pointers = (*inputs, *weights, *outputs, *(f"d_{name}" for name in outputs),
                *(f"d_{name}" for name in inputs if name not in ("grad", "loss")), *(f"d_{name}" for name in weights))
    fields = [(field, ctypes.c_int64) for field in ("batch", "n_params", "hidden")]
    fields += [(field, ctypes.c_double) for field in scalars] + [("threads", ctypes.c_int64)]
    fields += [(field, ctypes.c_void_p) for field in pointers]
    return type(name, (ctypes.Structure,), {"_fields_": fields, "inputs": inputs, "weights": weights, "outputs": outputs})


# The step's tensors, in the order of the source's structs (outputs are named by their inputs plus "_out").
MetaLSTMCall = _argument_block(
    "MetaLSTMCall", ("p", "threshold", "scale"), ("theta", "grad", "loss", "h", "c", "f", "i"),
    ("weight_ih", "weight_hh", "bias", "weight_forget", "weight_input", "bias_forget", "bias_input"),
    ("theta_out", "h_out", "c_out", "f_out", "i_out"))
AndrychowiczCall = _argument_block(
    "AndrychowiczCall", ("p", "threshold", "scale", "output_scale"), ("theta", "grad", "h1", "c1", "h2", "c2"),
    ("weight_ih1", "weight_hh1", "bias1", "weight_ih2", "weight_hh2", "bias2", "weight_out", "bias_out"),
    ("theta_out", "h1_out", "c1_out", "h2_out", "c2_out"))
_FUNCTIONS = {"meta_lstm": MetaLSTMCall, "andrychowicz": AndrychowiczCall}  # fewshot_<step>_forward/_backward


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
    for step, block in _FUNCTIONS.items():
        for direction in ("forward", "backward"):
            function = getattr(handle, f"fewshot_{step}_{direction}")
            function.argtypes = (ctypes.POINTER(block), ctypes.c_int)
            function.restype = ctypes.c_int
    return handle


def _run(step: str, direction: str, tensors: dict[str, Tensor], hidden: int, **scalars: float) -> None:
    """Fill ``step``'s argument block from ``tensors`` (contiguous, one dtype) and call its ``direction``."""
    handle = library()
    if handle is None:
        raise RuntimeError(f"the fused C++ step is unavailable: {_loader.reason}")
    theta = tensors["theta"]
    call = _FUNCTIONS[step](batch=theta.shape[0], n_params=theta.shape[1], hidden=hidden, threads=torch.get_num_threads(),
                            **scalars)
    for name, tensor in tensors.items():
        setattr(call, name, tensor.data_ptr())
    status = getattr(handle, f"fewshot_{step}_{direction}")(ctypes.byref(call), DTYPES[theta.dtype])
    if status != 0:
        raise RuntimeError(f"fewshot_{step}_{direction} refused its arguments (status {status})")


def _preprocessing(p: float) -> dict[str, float]:
    return {"p": p, "threshold": math.exp(-p), "scale": math.exp(p)}


def _forward(step: str, inputs: tuple[Tensor, ...], weights: tuple[Tensor, ...], hidden: int,
             **scalars: float) -> tuple[Tensor, ...]:
    block = _FUNCTIONS[step]
    named = dict(zip(block.inputs, inputs))
    outputs = {name: torch.empty_like(named[name[:-4]]) for name in block.outputs}
    _run(step, "forward", {**named, **dict(zip(block.weights, weights)), **outputs}, hidden, **scalars)
    return tuple(outputs.values())


def _backward(step: str, output_grads: tuple[Tensor, ...], inputs: tuple[Tensor, ...], weights: tuple[Tensor, ...],
              hidden: int, saved_outputs: dict[str, Tensor], **scalars: float) -> tuple[Tensor, ...]:
    block = _FUNCTIONS[step]
    named = dict(zip(block.inputs, inputs))
    input_grads = {f"d_{name}": torch.empty_like(tensor) for name, tensor in named.items() if name not in ("grad", "loss")}
    weight_grads = {f"d_{name}": torch.empty_like(weight) for name, weight in zip(block.weights, weights)}
    tensors = {**named, **dict(zip(block.weights, weights)), **saved_outputs,
               **{f"d_{name}": grad for name, grad in zip(block.outputs, output_grads)}, **input_grads, **weight_grads}
    _run(step, "backward", tensors, hidden, **scalars)
    return (*input_grads.values(), *weight_grads.values())


def meta_lstm_forward(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                      weights: tuple[Tensor, ...], p: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One fused Meta-LSTM step on contiguous CPU tensors (``h``, ``c`` ``[hidden, B, P]``; the rest as
    :func:`fewshot_l2l.kernels.meta_lstm_step_op`): ``(theta_next, h_next, c_next, f_next, i_next)``."""
    return _forward("meta_lstm", (theta, grad, loss, h, c, f, i), weights, h.shape[0], **_preprocessing(p))


def meta_lstm_backward(d_theta_next: Tensor, d_h_next: Tensor, d_c_next: Tensor, d_f_next: Tensor, d_i_next: Tensor,
                       theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor, f: Tensor, i: Tensor,
                       f_next: Tensor, i_next: Tensor, weights: tuple[Tensor, ...], p: float) -> tuple[Tensor, ...]:
    """The fused backward: from the gradients of the five outputs, those of ``theta``, ``h``, ``c``, ``f``, ``i``
    and of the seven weights (the layer-1 gates are recomputed from the inputs; ``f_next``/``i_next`` are the
    saved outputs)."""
    return _backward("meta_lstm", (d_theta_next, d_h_next, d_c_next, d_f_next, d_i_next), (theta, grad, loss, h, c, f, i),
                     weights, h.shape[0], {"f_out": f_next, "i_out": i_next}, **_preprocessing(p))


def andrychowicz_forward(theta: Tensor, grad: Tensor, h1: Tensor, c1: Tensor, h2: Tensor, c2: Tensor,
                         weights: tuple[Tensor, ...], p: float, output_scale: float) -> tuple[Tensor, ...]:
    """One fused step of Andrychowicz et al.'s LSTM optimizer on contiguous CPU tensors (states ``[hidden, B, P]``;
    as :func:`fewshot_l2l.kernels.andrychowicz_step_op`): ``(theta_next, h1, c1, h2, c2)``."""
    return _forward("andrychowicz", (theta, grad, h1, c1, h2, c2), weights, h1.shape[0], **_preprocessing(p),
                    output_scale=output_scale)


def andrychowicz_backward(output_grads: tuple[Tensor, ...], theta: Tensor, grad: Tensor, h1: Tensor, c1: Tensor,
                          h2: Tensor, c2: Tensor, weights: tuple[Tensor, ...], p: float,
                          output_scale: float) -> tuple[Tensor, ...]:
    """Its backward (both layers recomputed): the gradients of ``theta``, the four states and the eight weights."""
    return _backward("andrychowicz", output_grads, (theta, grad, h1, c1, h2, c2), weights, h1.shape[0], {},
                     **_preprocessing(p), output_scale=output_scale)
