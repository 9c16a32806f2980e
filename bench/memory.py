#!/usr/bin/env python
"""Peak memory of a batch-8 ResNet-18 forward pass at 224x224: ours against ONNX Runtime and torch.

    python bench/memory.py [--repeat R] [--passes K] [--engines ours,ours-arch,ort,torch]

Each measurement runs in a fresh process (``--child ENGINE``) that loads its
engine and the batch, then, except for ORT, runs one warm-up pass: ours loads
its Numba kernels on first use (and runs small calls in numpy until then),
which is code, not buffers; torch sets itself up on its first call. ORT's
session has loaded its code and made its threads when it is created, and its
first run is when it sizes its arena: that run is measured, as its later ones.
Then K passes, each after ``gc.collect()`` and glibc's ``malloc_trim(0)``
(freed heap memory goes back to the system, so RSS holds what is live), with
the high-water mark (VmHWM) reset just before (/proc/self/clear_refs, 5) and
read just after:

  base     RSS (/proc/self/status VmRSS) before the first measured pass: the loaded
           model, the batch, the engine's code
  pass+    a pass's high-water mark - base, the median over the K passes: what a
           forward pass needs on top of that (the issue's figure; ORT's arena, made
           in its first pass and kept, counts in every pass)
  peak     the largest high-water mark of the K passes, absolute
  maxrss   getrusage(RUSAGE_SELF).ru_maxrss at the end: the process's peak since it
           started, loading the model included (ORT's session creation peaks higher
           than its passes, then gives most of it back)
  load     RSS after the warm-up and a trim - RSS before the warm-up (ours: Numba
           and the kernels' code, with anything the engine keeps between calls)

The engines:
  ours       ``cnn_cli.onnximport.import_onnx`` of the exported file (batch norm
             folded into the convolutions by torch's exporter), run by
             ``Network.forward(x)`` in eval mode: what predict and explain call
  ours-arch  the shipped filters/resnet18.toml with random weights (batch norm
             layers of their own, as `cnn import --arch resnet18` builds it),
             run the same way
  ort        ONNX Runtime on the exported file (bench/zoo.py's session: CPU, 2
             intra-op threads, every graph optimisation, default arena)
  torch      the torch model itself under torch.inference_mode, 2 threads

The model is tests/torch_zoo.resnet18 with randomize(seed 0), exported by
bench/zoo.py's helpers (torch's legacy exporter, batch 8). Every child imports
bench/zoo.py, so each runs with the `cnn` command's process set-up
(``config.tune_process``: BLAS on one thread, glibc keeping freed blocks below
32 MiB for reuse) and OMP_WAIT_POLICY=PASSIVE, as bench/zoo.py's timings do.
The engines' children run interleaved (the first engine moves on each round),
R rounds; the table gives medians in MiB, the ratios to ORT, and each
engine's median time per measured pass.
"""

import argparse
import ctypes
import datetime
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

import zoo  # noqa: E402  (sets the process up as the cnn command does)
from _timing import time_once  # noqa: E402

ROW = "resnet18-8"
ENGINES = ("ours", "ours-arch", "ort", "torch")


def status_kib(key):
    """A field of /proc/self/status in KiB (VmRSS: now; VmHWM: the high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_high_water():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def load_engine(engine, onnx_path):
    """A function running one forward pass of ``engine`` on the row's batch."""
    x = zoo.row_input(ROW)
    if engine in ("ours", "ours-arch"):
        if engine == "ours":
            from cnn_cli.onnximport import import_onnx

            network = import_onnx(onnx_path).network
        else:
            from cnn_cli.nn import Network
            from cnn_cli.pipeline import build_layers, load_architecture

            _, _, tables = load_architecture("resnet18")
            layers = build_layers(tables, "resnet18", substitutions={"classes": 1000})
            network = Network(layers, x.shape[1:], seed=0)
        return lambda: network.forward(x)
    if engine == "ort":
        session = zoo.ort_session(onnx_path)
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: x})[0]
    if engine == "torch":
        import torch

        torch.set_num_threads(zoo.THREADS)
        model, xt = zoo.torch_model(ROW), torch.from_numpy(x)

        def forward():
            with torch.inference_mode():
                return model(xt)

        return forward
    raise ValueError(f"unknown engine {engine!r}")


def settle():
    """Collect garbage and give free heap memory back to the system: RSS is then what is live."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measured(forward):
    """(high-water mark in KiB, seconds) of one pass, the mark reset just before it."""
    reset_high_water()
    took, out = time_once(forward)
    mark = status_kib("VmHWM")
    del out
    return mark, took


def child(engine, onnx_path, passes):
    """Measure one fresh process; print its figures (KiB) as one JSON line."""
    forward = load_engine(engine, onnx_path)
    settle()
    before = status_kib("VmRSS")
    if engine != "ort":
        forward()
    settle()
    base = status_kib("VmRSS")
    marks, seconds = [], []
    for _ in range(passes):
        settle()
        mark, took = measured(forward)
        marks.append(mark)
        seconds.append(took)
    print(json.dumps({"engine": engine, "base": base, "marks": marks, "load": base - before,
                      "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # KiB on Linux
                      "ms": 1e3 * statistics.median(seconds)}))


def run_child(*args):
    """The last stdout line of ``memory.py ARGS`` in a fresh process.

    This process stays small (no torch): a child's ru_maxrss starts from its
    parent's RSS at the fork.
    """
    done = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, args))}: the child failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


FIGURES = ("base", "pass+", "peak", "maxrss", "load")


def figures(r):
    """A child's figures in MiB."""
    return {"base": r["base"] / 1024, "pass+": (statistics.median(r["marks"]) - r["base"]) / 1024,
            "peak": max(r["marks"]) / 1024, "maxrss": r["maxrss"] / 1024, "load": r["load"] / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per engine (default 5)")
    parser.add_argument("--passes", type=int, default=3, help="measured passes per process (default 3)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    parser.add_argument("--versions", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.versions:
        import onnxruntime as ort
        import torch

        print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")
        return
    if args.child:
        child(args.child, args.onnx, max(args.passes, 1))
        return
    if args.export:
        print(zoo.export_row(ROW, zoo.torch_model(ROW), args.export))
        return
    engines = [e for e in args.engines.split(",") if e]
    if not engines or set(engines) - set(ENGINES):
        parser.error(f"--engines takes names from {', '.join(ENGINES)}")
    passes = max(args.passes, 1)

    versions = run_child("--versions")
    print(f"bench/memory.py: ResNet-18, batch 8, 224x224; {versions}; {args.repeat} fresh processes per engine, "
          f"{passes} measured passes each, medians in MiB")
    print(f"start: {datetime.datetime.now().isoformat(timespec='seconds')}, {zoo.load_text()}")
    samples = {e: [] for e in engines}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        path = run_child("--export", folder)
        for round_ in range(args.repeat):
            start = round_ % len(engines)
            for engine in engines[start:] + engines[:start]:
                samples[engine].append(json.loads(run_child("--child", engine, "--onnx", path,
                                                            "--passes", passes)))
            print(f"  round {round_ + 1}: {zoo.load_text()}", file=sys.stderr)
    medians = {}
    for engine, results in samples.items():
        rows = [figures(r) for r in results]
        medians[engine] = {k: statistics.median(row[k] for row in rows) for k in FIGURES}
        medians[engine]["ms"] = statistics.median(r["ms"] for r in results)
    print(f"{'engine':<10}" + "".join(f"{k:>9}" for k in FIGURES) + f"{'pass ms':>9}")
    for engine, m in medians.items():
        print(f"{engine:<10}" + "".join(f"{m[k]:9.1f}" for k in FIGURES) + f"{m['ms']:9.0f}")
    if "ort" in medians:
        for engine in [e for e in engines if e != "ort"]:
            ratios = ", ".join(f"{k} {medians[engine][k] / medians['ort'][k]:.2f}" for k in ("pass+", "peak"))
            print(f"{engine}/ORT: {ratios}")
    print(f"end: {datetime.datetime.now().isoformat(timespec='seconds')}, {zoo.load_text()}")


if __name__ == "__main__":
    main()
