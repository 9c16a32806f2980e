#!/usr/bin/env python
"""Our engine on real networks against ONNX Runtime and torch, in one interleaved run.

    python bench/zoo.py [--quick] [--rows resnet18,onet] [--repeat R] [--profile]

Rows (float32, random weights from tests/torch_zoo.randomize(seed 0), except
the O-Net, which has facenet_pytorch's real ones):
  resnet18-1, resnet18-8          ResNet-18, 224x224, batch 1 and 8
  mobilenetv2-1, mobilenetv2-8    MobileNetV2, 224x224, batch 1 and 8
  squeezenet-1, squeezenet-8      SqueezeNet 1.1, 224x224, batch 1 and 8
  vgg11-1                         VGG-11's convolutions, 224x224, batch 1, with one linear
                                  layer 25088 -> 1000 as its classifier (torchvision's three,
                                  120 M weights, are over cnn's limit for one layer)
  onet-64                         the MTCNN O-Net, 48x48, batch 64

Each torch model is exported with torch's legacy ONNX exporter at the row's
batch size; ONNX Runtime runs that file (CPU, 2 intra-op threads, every graph
optimisation, threads that sleep when idle), and
``cnn_cli.onnximport.import_onnx`` turns it into our Network, timed as
``network.forward(x)`` (eval). torch runs the model itself under
``torch.inference_mode`` with 2 threads (OMP_WAIT_POLICY=PASSIVE). Each
contender is called once first (ours compiles or loads its kernels then), its
output checked against ORT's, then the three run interleaved and the table
gives medians. --rows takes row names or their prefixes ("resnet18" is both
ResNet rows).

Multiply-adds are counted in the conv and linear layers
(``cnn_cli.profiling.multiply_adds``); GFLOP/s counts two flops per
multiply-add. The peak is cores x clock x 2 FMA units x 8 float32 lanes x 2
flops (AVX2 FMA, as on Zen and Haswell and later), with the clock that
/proc/cpuinfo reports. With --profile, each row's forward pass is also timed
node by node (``cnn_cli.profiling.profile``, each node's median over up to 5
passes): totals per op type and the slowest nodes.
"""

import argparse
import gc
import os
import re
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

from cnn_cli import config  # noqa: E402

config.tune_process()
# Contenders run one after another on 2 cores. torch's OpenMP threads and
# ORT's pool spin for a while after each call, and took the cores from
# whichever contender ran next (ours, 2 rounds in 3): every contender's
# threads sleep when idle here, as ours do.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from _timing import interleaved_medians  # noqa: E402

THREADS = 2

#: name -> (torch_zoo factory, input size, batch)
ROWS = {
    "resnet18-1": ("resnet18", (3, 224, 224), 1),
    "resnet18-8": ("resnet18", (3, 224, 224), 8),
    "mobilenetv2-1": ("mobilenet_v2", (3, 224, 224), 1),
    "mobilenetv2-8": ("mobilenet_v2", (3, 224, 224), 8),
    "squeezenet-1": ("squeezenet1_1", (3, 224, 224), 1),
    "squeezenet-8": ("squeezenet1_1", (3, 224, 224), 8),
    "vgg11-1": ("vgg11", (3, 224, 224), 1),
    "onet-64": ("onet", (3, 48, 48), 64),
}


def machine_peak():
    """(peak GFLOP/s, how it was found) for float32 AVX2 FMA on this machine's cores."""
    cores = len(os.sched_getaffinity(0))
    text = Path("/proc/cpuinfo").read_text()
    clocks = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
    flags = set(re.findall(r"\b(avx2|fma|avx512f)\b", text))
    mhz = max(clocks) if clocks else 2000.0
    lanes = 8 if "avx2" in flags and "fma" in flags else 4
    peak = cores * mhz / 1e3 * 2 * lanes * 2
    how = (f"{cores} cores x {mhz:.0f} MHz (/proc/cpuinfo 'cpu MHz', the current clock; lscpu gives no max here) "
           f"x 2 FMA units x {lanes} float32 lanes x 2 flops; flags {' '.join(sorted(flags))}")
    return peak, how


def load_text():
    return "load average {:.2f} {:.2f} {:.2f}, {}".format(*os.getloadavg(), handoff_text())


def handoff_text(calls=400):
    """The median of ``calls`` empty two-way ``threads.split`` calls: what waking the engine's other
    thread costs now. On an idle VM whose vCPUs halt at once it was 90-110 us, with other work keeping
    them awake 15-20 us, and the batch-1 rows, whose nodes split from about 0.7 ms, move with it."""
    import time

    from cnn_cli.functional import threads

    times = []
    for _ in range(calls):
        start = time.perf_counter()
        threads.split(lambda lo, hi: None, 2, 2)
        times.append(time.perf_counter() - start)
    return f"empty split {1e6 * sorted(times)[calls // 2]:.0f} us"


def torch_model(name):
    """The row's torch model, in eval mode, with its weights."""
    import torch

    from tests import torch_zoo

    factory = ROWS[name][0]
    if factory == "onet":
        return torch_zoo.load_mtcnn("onet")
    if factory == "vgg11":
        model = torch_zoo.vgg11()
        model.classifier = torch.nn.Linear(512 * 7 * 7, 1000)
        return torch_zoo.randomize(model, 0)
    return torch_zoo.randomize(getattr(torch_zoo, factory)(), 0)


def export_row(name, model, folder):
    """The row's ONNX file (torch's legacy exporter, at the row's batch size) in ``folder``."""
    from tests import torch_zoo

    _, size, batch = ROWS[name]
    return torch_zoo.export_onnx(model, Path(folder) / f"{name}.onnx", size, batch=batch, exporter="legacy")


def ort_session(path):
    """ONNX Runtime on the CPU: THREADS intra-op threads, every graph optimisation, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see OMP_WAIT_POLICY above
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def row_input(name):
    _, size, batch = ROWS[name]
    return np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)


def build_row(name, folder):
    """(network, ORT session, torch model, x) for a row."""
    from cnn_cli.onnximport import import_onnx

    model = torch_model(name)
    path = export_row(name, model, folder)
    return import_onnx(path).network, ort_session(path), model, row_input(name)


def contenders(network, session, model, x):
    import torch

    xt = torch.from_numpy(x)
    input_name = session.get_inputs()[0].name

    def ours():
        return network.forward(x)

    def onnxruntime():
        return session.run(None, {input_name: x})[0]

    def torch_eager():
        with torch.inference_mode():
            out = model(xt)
        return out[0] if isinstance(out, tuple) else out

    return {"ours": ours, "ort": onnxruntime, "torch": torch_eager}


def run_row(name, folder, rounds, want_profile):
    from cnn_cli import profiling

    network, session, model, x = build_row(name, folder)
    fns = contenders(network, session, model, x)
    first = {key: fn() for key, fn in fns.items()}  # compiles our kernels, warms the peers
    ref = np.asarray(first["ort"])
    error = float(np.abs(np.asarray(first["ours"]) - ref).max() / max(np.abs(ref).max(), 1e-30))
    medians = interleaved_medians(fns, rounds)
    macs = profiling.multiply_adds(network, x.shape[0])
    prof = profiling.profile(network, x, repeat=min(rounds, 5)) if want_profile else None
    return medians, macs, error, prof


def print_profile(name, rows):
    total = sum(r.ms for r in rows)
    print(f"\n{name}: a forward pass node by node (each node's median over up to 5 passes), {total:.1f} ms")
    for kind in __import__("cnn_cli.profiling", fromlist=["by_kind"]).by_kind(rows):
        print(f"  {kind.kind:<14} {kind.count:>4} nodes {kind.ms:9.2f} ms {100 * kind.share:5.1f}%")
    print("  slowest nodes:")
    for r in sorted(rows, key=lambda r: -r.ms)[:8]:
        print(f"    {r.ms:8.2f} ms  {r.kind:<10} {r.name:<28} {r.detail:<40} -> {r.shape}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="3 rounds a row instead of --repeat")
    parser.add_argument("--repeat", type=int, default=9, help="interleaved rounds a row (default 9)")
    parser.add_argument("--rows", default="", help="comma-separated row names or prefixes (default: all)")
    parser.add_argument("--profile", action="store_true", help="also time each row's nodes and op types")
    args = parser.parse_args()
    wanted = [w for w in args.rows.split(",") if w]
    names = [n for n in ROWS if not wanted or any(n == w or n.startswith(w) for w in wanted)]
    if not names:
        parser.error(f"--rows matches none of {', '.join(ROWS)}")
    rounds = 3 if args.quick else args.repeat

    import onnxruntime as ort
    import torch

    torch.set_num_threads(THREADS)
    peak, how = machine_peak()
    print(f"bench/zoo.py: torch {torch.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, "
          f"{THREADS} threads each, {rounds} interleaved rounds, medians")
    print(f"peak {peak:.0f} GFLOP/s = {how}")
    print(f"start: {load_text()}")
    header = (f"{'row':<14} {'ours ms':>9} {'ORT ms':>9} {'torch ms':>9} {'ours/ORT':>9} {'ours/torch':>10} "
              f"{'GMAC':>7} {'GFLOP/s':>8} {'of peak':>8} {'ORT GF/s':>8} {'max err':>8}")
    results, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as folder:
        for name in names:
            medians, macs, error, prof = run_row(name, folder, rounds, args.profile)
            results.append((name, medians, macs, error))
            profiles[name] = prof
            gc.collect()
            print(f"  {name}: done ({load_text()})", file=sys.stderr)
    print(header)
    for name, m, macs, error in results:
        ours, ort_ms, torch_ms = m["ours"] * 1e3, m["ort"] * 1e3, m["torch"] * 1e3
        gflops = 2 * macs / (m["ours"] * 1e9)
        print(f"{name:<14} {ours:9.1f} {ort_ms:9.1f} {torch_ms:9.1f} {ours / ort_ms:9.2f} {ours / torch_ms:10.2f} "
              f"{macs / 1e9:7.2f} {gflops:8.1f} {100 * gflops / peak:7.1f}% {2 * macs / (m['ort'] * 1e9):8.1f} "
              f"{error:8.1e}")
    print(f"end: {load_text()}")
    print("max err: largest |ours - ORT| over largest |ORT| of the first output")
    for name in names:
        if profiles[name] is not None:
            print_profile(name, profiles[name])


if __name__ == "__main__":
    main()
