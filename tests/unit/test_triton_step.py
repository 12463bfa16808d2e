"""The Triton kernels of the fused steps against the plain steps (the cases are in triton_cases.py): here on CUDA
tensors where a GPU is present; without one, in a fresh process under Triton's interpreter, which must be chosen
before triton is first imported (its own jit functions are decorated then) and a test session has usually
imported it by this point."""

import os
import subprocess
import sys
from pathlib import Path

import torch

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
    from triton_cases import *  # noqa: F401,F403 (collected here, on CUDA tensors)
else:
    def test_triton_kernels_under_the_interpreter_equal_the_plain_steps():
        cases = Path(__file__).with_name("triton_cases.py")
        env = dict(os.environ, TRITON_INTERPRET="1")
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)], env=env,
                                cwd=cases.parents[2], capture_output=True, text=True, timeout=600)
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary
