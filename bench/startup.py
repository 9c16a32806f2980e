"""Start-up: the wall time of a warm ``cnn apply samples/shapes.png`` as a whole process, and what it is made of.

    python bench/startup.py [--runs 10] [--source DIR]

Each run is a fresh ``cnn`` process (``python -m cnn_cli``, the source tree
first on the path), timed from outside with ``_timing.time_once`` after one
warm-up run (which fills Numba's and Python's caches); minimum, median and
maximum are printed with the load average. Python's bytecode goes to a
temporary ``PYTHONPYCACHEPREFIX`` (whatever ``PYTHONDONTWRITEBYTECODE``
says), as an installed copy has it from ``pip install``: compiling the
tool's 55 modules on every run cost 0.15 s. ``--no-bytecode-cache`` times
runs that compile them. Interleaved with it, for scale:
``python -c pass`` (the interpreter), ``cnn --help`` (imports of the
command line only), and ``cnn apply --save raw --no-html`` (no pictures).
``--source DIR`` times another checkout of the tool alongside (a worktree
of an older commit), paired round by round.

Target (issue 25): the median of the default ``cnn apply`` at most 0.6 s on
a quiet machine. torch and ONNX Runtime are not involved; the load average
still moves every figure, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import time_once

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "shapes.png"
TARGET = 0.6


def commands(source, out):
    """name -> argv of each timed command, the tool run from ``source``."""
    cnn = [sys.executable, "-m", "cnn_cli"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "cnn --help": [*cnn, "--help"],
        "cnn apply (defaults)": [*cnn, "apply", str(SAMPLE), "-o", str(out)],
        "cnn apply --save raw --no-html": [*cnn, "apply", str(SAMPLE), "-o", str(out), "--save", "raw", "--no-html"],
    }


def run(argv, source, out, pycache=None):
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    seconds, proc = time_once(lambda: subprocess.run(argv, check=False, capture_output=True, env=env, cwd=out.parent))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.decode()}")
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--source", type=Path, default=None, help="another checkout, timed alongside")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="compile the modules on every run, as PYTHONDONTWRITEBYTECODE=1 makes it")
    args = parser.parse_args(argv)
    sources = {"this checkout": REPO}
    if args.source:
        sources[f"{args.source}"] = args.source.resolve()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} cores")
    samples = {}
    with tempfile.TemporaryDirectory(prefix="cnn-bench-startup-") as tmp:
        out = Path(tmp) / "out"
        pycache = None if args.no_bytecode_cache else Path(tmp) / "pycache"
        for label, source in sources.items():  # warm-up: Numba's and Python's caches
            for command in commands(source, out).values():
                run(command, source, out, pycache)
        for r in range(args.runs):
            order = list(sources.items())[r % len(sources):] + list(sources.items())[:r % len(sources)]
            for label, source in order:
                for name, command in commands(source, out).items():
                    samples.setdefault((label, name), []).append(run(command, source, out, pycache))
    cache = "compiled on every run" if pycache is None else "bytecode cached"
    print(f"\n{args.runs} runs each ({cache}), seconds of wall time (min / median / max)")
    for (label, name), times in samples.items():
        met = ""
        if name == "cnn apply (defaults)":
            met = f"  target {TARGET} s: {'met' if statistics.median(times) <= TARGET else 'NOT met'}"
        print(f"{label:16} {name:32} {min(times):6.3f} {statistics.median(times):6.3f} {max(times):6.3f}{met}")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
