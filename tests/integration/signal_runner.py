"""Run a command in this process and send ourselves a signal at an exact point (for test_prepare_data_signals.py).

    python signal_runner.py COMMAND MODULE:FUNCTION CALL SIGNAL ARGS...

runs ``fewshot_l2l.cli.COMMAND`` as ``COMMAND.py ARGS``, with ``MODULE.FUNCTION`` replaced by a wrapper that
sends ``SIGNAL`` (a number) to this process at its ``CALL``-th call (1-based), then calls it. The point is exact,
so the tests are deterministic; the process, its signal handling and its exit are real.
"""

import importlib
import os
import sys

command, target, call, signum, *argv = sys.argv[1:]
module_name, function_name = target.split(":")
module = importlib.import_module(module_name)
original = getattr(module, function_name)
calls = [0]


def send_then_call(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(call):
        os.kill(os.getpid(), int(signum))
    return original(*args, **kwargs)


setattr(module, function_name, send_then_call)
sys.argv = [f"{command}.py", *argv]
importlib.import_module(f"fewshot_l2l.cli.{command}").main()
