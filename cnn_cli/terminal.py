"""What the CLI shows on stderr while a long command runs (part of the CLI floor: it imports rich).

On a terminal, a Rich bar with images/s and the time left; otherwise (a log,
a pipe, CI) a plain line every ``PLAIN_EVERY`` seconds. Notes (the engine is
compiling, the output will be large) are printed above the bar.
"""

from __future__ import annotations

import sys
import threading
import time

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_EVERY = 5.0


def printable(text):
    """``text`` with control characters (a newline or an ESC in a file or class name) shown
    escaped, as Python writes them (``\\n``, ``\\x1b``), so a name can neither forge a line
    nor reach the terminal raw."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


class ProgressDisplay:
    """The library's progress callbacks (see ``cnn_cli.apply.Progress``), drawn on stderr."""

    def __init__(self, verb, unit="images"):
        self.verb, self.unit = verb, unit
        self.count = 0
        self.expected = None
        self.start = time.monotonic()
        self.last_line = self.start
        self.lock = threading.Lock()
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                       TextColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn(verb), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                console=stderr_console(), transient=True)
            self.task = self.bar.add_task(verb, total=None, rate="")

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def rate(self):
        elapsed = time.monotonic() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def total(self, count):
        with self.lock:
            self.expected = count
            if self.bar is not None:
                self.bar.update(self.task, total=count)

    def advance(self, result=None):
        with self.lock:
            self.count += 1
            if self.bar is not None:
                self.bar.update(self.task, advance=1, rate=f"{self.rate():.1f} {self.unit}/s")
                return
            now = time.monotonic()
            if now - self.last_line >= PLAIN_EVERY:
                self.last_line = now
                of = f" of {self.expected}" if self.expected is not None else ""
                print(f"{self.verb}: {self.count}{of} {self.unit}, {self.rate():.1f} {self.unit}/s",
                      file=sys.stderr, flush=True)

    def note(self, text):
        text = printable(text)  # notes name files
        with self.lock:
            if self.bar is not None:
                self.bar.console.print(text, markup=False)
            else:
                print(text, file=sys.stderr, flush=True)
