"""The ``cnn`` command line: a thin shell over the library.

Each command parses its options, makes one library call and prints. The
commands live in ``maps`` (apply, banks, info), ``vectors`` (embed, search),
``models`` (train, evaluate, predict), ``explain`` (explain, units) and
``export``; ``common`` holds what they share.

Exit codes: 0 success; 1 the tool refused or failed; 2 a usage error;
3 a batch finished but some inputs failed (each is listed on stderr; for
train, the model was saved without some unreadable images).
"""

from __future__ import annotations

import copy
import gc
import os
import sys

# Importing a module registers its commands; --help lists them in this order.
from . import maps  # noqa: F401, I001
from . import models  # noqa: F401
from . import vectors  # noqa: F401
from . import explain  # noqa: F401
from . import export  # noqa: F401
from . import keypoints  # noqa: F401
from . import importing  # noqa: F401
from .. import config
from .common import EXIT_FAILED, EXIT_PARTIAL, EXIT_USAGE, app  # noqa: F401


def only_the_command(group, args):
    """``group`` with just the command that ``args`` starts with, or the whole group when they start
    with no command's name (``cnn --help``, a typo: the group's own messages list every command).

    Typer builds every command's options when it runs any one; with fifteen
    commands that took 0.18-0.24 s, a fifth of a small ``cnn apply``.
    """
    from typer.main import get_command_name

    if not args:
        return group
    commands = [c for c in group.registered_commands if (c.name or get_command_name(c.callback.__name__)) == args[0]]
    groups = [g for g in group.registered_groups if g.name == args[0]]
    if not commands and not groups:
        return group
    only = copy.copy(group)
    only.registered_commands, only.registered_groups = commands, groups
    return only


def main():
    """The ``cnn`` command: run it, then end the process without the interpreter's teardown.

    Every command has written and closed its outputs when it returns, and
    the teardown only frees memory: mostly Numba's and LLVM's, which takes
    0.15 s, a tenth of a cached ``cnn apply``. Under a profiler, a tracer or
    coverage, which write their results at exit, it exits normally.
    Exceptions other than the command's own exit propagate as usual.

    Reference cycles are collected less often (``config.GC_THRESHOLD``).
    """
    gc.set_threshold(config.GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        only_the_command(app, sys.argv[1:])()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = EXIT_FAILED
    if sys.getprofile() or sys.gettrace() or "coverage" in sys.modules:
        sys.exit(code)  # a profiler or coverage writes its results at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
