"""Run the ``cnn`` command in-process for tests, failing loudly on a crash.

Typer's CliRunner turns an uncaught exception into exit code 1, which would
look like a deliberate refusal; ``cnn`` re-raises it as a test failure with
the traceback, and checks that none was printed. In this typer version
``result.output`` mixes stdout and stderr and ``result.stderr`` is stderr
alone. A wide terminal keeps rich tables from wrapping names.
"""

import contextlib
import signal
import traceback

import pytest
from typer.testing import CliRunner

from cnn_cli.cli import app

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@contextlib.contextmanager
def time_limit(seconds):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cnn(*args, timeout=120):
    """``cnn args...`` in-process (on the main thread, as train sets signal handlers), with a time limit."""
    with time_limit(timeout):
        result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))
        pytest.fail(f"cnn {' '.join(map(str, args))} crashed:\n{tb}\n{result.output}")
    assert "Traceback" not in result.output, result.output
    return result
