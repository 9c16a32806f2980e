#!/usr/bin/env python
"""Time cnn_cli's convolution engine against the peers installed here.

    python bench/engine.py [--repeat R] [--only W1,W3] [--algorithms] [--budget S]

Workloads (float32, fixed seeds):
  W1 bank apply    x 1x3x1024x1024, 16 filters 3x3, padding "same", bias  vs torch
  W2 deep layer    x 32x32x64x64, 64 filters 3x3, padding "same"          vs torch
  W3 LeNet step    batch 64 of 1x28x28: forward, backward, SGD update      vs torch
  W4 large kernel  x 1x1x1024x1024, one 31x31 kernel, padding "same"      vs scipy, cv2

Each function is called once first. For ours that call compiles the Numba
kernels (those an earlier workload has not compiled already); its time is
printed on its own line. Numba's on-disk cache is pointed at a fresh temporary
folder so that this really is a compile (set NUMBA_CACHE_DIR to time loading
from a warm cache instead). Then the contenders of a workload run interleaved
(ours, peer, ours, peer, ..., with the starting one rotating each round), and
the table gives median times and the ratio ours/peer: lower is better. Peers
that are not installed are skipped; peers get 2 threads, the size of the machine.

With --algorithms, our forward conv on W1, W2 and W4 is also timed with each
forced algorithm against the dispatcher's own choice ("auto").
"""

import argparse
import atexit
import datetime
import functools
import importlib
import os
import platform
import shutil
import sys
import tempfile
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
# _timing sits beside this file; cnn_cli is imported from the work tree, uninstalled.
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

# Run as the `cnn` command does (BLAS on one thread, memory reuse), before numpy.
from cnn_cli import config  # noqa: E402

config.tune_process()

import numpy as np  # noqa: E402

from _timing import interleaved_medians, rounds_for, time_once  # noqa: E402

# Before anything imports numba: a cold cache, so that first calls include compiling.
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-numba-cache-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], ignore_errors=True)
    NUMBA_CACHE = "cold (fresh temporary folder)"
else:
    NUMBA_CACHE = f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}"

THREADS = 2
TOLERANCE = 1e-4  # the engine contract: agree with PyTorch to 1e-4 of the largest magnitude

try:
    import torch
    import torch.nn.functional as torch_F

    torch.set_num_threads(THREADS)
except ImportError:
    torch = None
try:
    import scipy.fft
    import scipy.signal
except ImportError:
    scipy = None
try:
    import cv2

    cv2.setNumThreads(THREADS)
except ImportError:
    cv2 = None

cnn = None  # cnn_cli.functional, imported (and timed) by main()


@dataclass
class Case:
    """One timed comparison: our function, the peers' equivalents, a correctness check."""

    key: str
    title: str
    ours: Callable[[], object]
    peers: dict  # name -> callable
    check: Callable[[], str]  # returns a verdict line


@dataclass
class Result:
    case: Case
    first_call: dict  # name -> seconds
    check: str
    rounds: int
    medians: dict  # name -> seconds; "ours" and each peer


# --- W1, W2, W4: one forward convolution ---------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    key: str
    title: str
    x_shape: tuple
    weight_shape: tuple
    bias: bool
    seed: int


CONV_SPECS = {
    "W1": ConvSpec("W1", "bank apply", (1, 3, 1024, 1024), (16, 3, 3, 3), True, 1),
    "W2": ConvSpec("W2", "deep layer", (32, 32, 64, 64), (64, 32, 3, 3), False, 2),
    "W4": ConvSpec("W4", "large kernel", (1, 1, 1024, 1024), (1, 1, 31, 31), False, 4),
}
ALGORITHMS = ("direct", "im2col", "fft")


def conv_data(spec):
    """Image-like x in [0, 1), weights scaled by 1/sqrt(fan_in), optional bias."""
    rng = np.random.default_rng(spec.seed)
    x = rng.random(spec.x_shape, dtype=np.float32)
    fan_in = np.prod(spec.weight_shape[1:])
    weight = rng.standard_normal(spec.weight_shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
    bias = rng.standard_normal(spec.weight_shape[0], dtype=np.float32) if spec.bias else None
    return x, weight, bias


def ours_conv(x, weight, bias, algorithm="auto"):
    return lambda: cnn.conv2d(x, weight, bias, padding="same", algorithm=algorithm)


def torch_conv_peers(x, weight, bias):
    if torch is None:
        return {}
    xt, wt = torch.from_numpy(x), torch.from_numpy(weight)
    bt = None if bias is None else torch.from_numpy(bias)
    return {"torch conv2d": lambda: torch_F.conv2d(xt, wt, bt, padding="same")}


def correlate_peers(x, weight, bias):
    """2-D correlation of one image with one kernel, zero padded to the same size."""
    assert bias is None and x.shape[:2] == weight.shape[:2] == (1, 1)
    image, kernel = x[0, 0], weight[0, 0]
    peers = {}
    if scipy is not None:
        # correlation = convolution with the flipped kernel
        flipped = np.ascontiguousarray(kernel[::-1, ::-1])

        def scipy_correlate():
            with scipy.fft.set_workers(THREADS):
                return scipy.signal.fftconvolve(image, flipped, mode="same")

        peers["scipy fftconvolve"] = scipy_correlate
    if cv2 is not None:
        border = cv2.BORDER_CONSTANT  # zeros; filter2D correlates, as conv2d does
        peers["cv2.filter2D"] = lambda: cv2.filter2D(image, -1, kernel, borderType=border)
    return peers


def as_numpy(array):
    if torch is not None and isinstance(array, torch.Tensor):
        return array.numpy()
    return np.asarray(array)


def verdict(error, what):
    status = "ok" if error <= TOLERANCE else "MISMATCH"
    return f"{status} ({what} {error:.1e})"


def outputs_agree(ours, peers):
    """A check that compares our output with each peer's, relative to the largest magnitude."""

    def check():
        if not peers:
            return "no peer to compare with"
        mine = as_numpy(ours())
        parts = []
        for name, peer in peers.items():
            theirs = as_numpy(peer())
            scale = max(np.abs(theirs).max(), 1e-30)
            error = np.abs(mine.reshape(theirs.shape) - theirs).max() / scale
            parts.append(f"vs {name} {verdict(error, 'rel diff')}")
        return "; ".join(parts)

    return check


def conv_case(spec, peers_for):
    x, weight, bias = conv_data(spec)
    ours = ours_conv(x, weight, bias)
    peers = peers_for(x, weight, bias)
    return Case(spec.key, spec.title, ours, peers, outputs_agree(ours, peers))


def w1_bank_apply():
    return conv_case(CONV_SPECS["W1"], torch_conv_peers)


def w2_deep_layer():
    return conv_case(CONV_SPECS["W2"], torch_conv_peers)


def w4_large_kernel():
    return conv_case(CONV_SPECS["W4"], correlate_peers)


def algorithms_case(spec):
    """Our forward conv with the dispatcher's choice ("ours") against each forced algorithm."""
    x, weight, bias = conv_data(spec)
    ours = ours_conv(x, weight, bias)
    forced = {name: ours_conv(x, weight, bias, name) for name in ALGORITHMS}
    return Case(spec.key, spec.title, ours, forced, outputs_agree(ours, forced))


# --- W3: one training step of a LeNet-like net ------------------------------------
# conv 1->8 3x3 pad 1, ReLU, max-pool 2; conv 8->16 3x3 pad 1, ReLU, max-pool 2;
# flatten 16*7*7 = 784; linear 784->10; softmax cross-entropy; SGD.

LENET_LAYERS = {"conv1": (8, 1, 3, 3), "conv2": (16, 8, 3, 3), "fc": (10, 16 * 7 * 7)}
LENET_BATCH, LENET_CLASSES, LENET_LR = 64, 10, 0.01


def lenet_init(rng):
    """Parameters named as torch names them, drawn like torch's default U(+-1/sqrt(fan_in))."""
    params = {}
    for layer, shape in LENET_LAYERS.items():
        bound = 1 / np.sqrt(np.prod(shape[1:]))
        params[f"{layer}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        params[f"{layer}.bias"] = rng.uniform(-bound, bound, shape[0]).astype(np.float32)
    return params


def relu(x):
    return np.maximum(x, 0)


def relu_backward(x, grad_y):
    return grad_y * (x > 0)


def linear(x, weight, bias):
    return x @ weight.T + bias


def linear_backward(x, weight, grad_y):
    return grad_y @ weight, grad_y.T @ x, grad_y.sum(axis=0)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and d loss / d logits."""
    rows = np.arange(len(labels))
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, labels]))
    grad = exp / total
    grad[rows, labels] -= 1
    return loss, grad / np.float32(len(labels))


def sgd_update(params, grads, lr):
    for name, param in params.items():
        param -= np.float32(lr) * grads[name]


def conv_block(x, weight, bias):
    """conv 3x3 pad 1, ReLU, max-pool 2; returns the output and what the backward pass needs.

    Max pooling runs before the ReLU, fused with the convolution: the same
    result (ReLU keeps the order of values), with the ReLU on a quarter of the
    pixels. The pooling keeps where each window's maximum was, as torch's
    max-pool does, so that the backward pass is a scatter, not a second search.
    """
    pooled, argmax = cnn.conv2d_max_pool2d(x, weight, bias, padding=1)
    return relu(pooled), (x, pooled, argmax)


def conv_block_backward(weight, saved, grad_y, input_grad=True):
    """-> (grad_x, grad_weight, grad_bias) of conv_block; grad_x is None without ``input_grad``
    (the first block's input is the data, which needs no gradient, as in torch)."""
    x, pooled, argmax = saved
    conv_shape = (x.shape[0], weight.shape[0], *x.shape[2:])  # padding 1 keeps H and W
    grad_conv = cnn.max_pool2d_backward_from_argmax(conv_shape, relu_backward(pooled, grad_y), argmax)
    return cnn.conv2d_backward(x, weight, grad_conv, padding=1, input_grad=input_grad)


def lenet_step(params, x, labels, lr):
    """One SGD step on (x, labels), updating params in place; returns the loss before it."""
    grads = {}
    h1, saved1 = conv_block(x, params["conv1.weight"], params["conv1.bias"])
    h2, saved2 = conv_block(h1, params["conv2.weight"], params["conv2.bias"])
    flat = h2.reshape(len(x), -1)
    loss, grad_logits = softmax_cross_entropy(
        linear(flat, params["fc.weight"], params["fc.bias"]), labels
    )
    grad_flat, grads["fc.weight"], grads["fc.bias"] = linear_backward(
        flat, params["fc.weight"], grad_logits
    )
    grad_h1, grads["conv2.weight"], grads["conv2.bias"] = conv_block_backward(
        params["conv2.weight"], saved2, grad_flat.reshape(h2.shape)
    )
    _, grads["conv1.weight"], grads["conv1.bias"] = conv_block_backward(
        params["conv1.weight"], saved1, grad_h1, input_grad=False
    )
    sgd_update(params, grads, lr)
    return loss


def torch_lenet(params):
    """The same net as a torch module, holding a copy of params; with its SGD optimizer."""
    nn = torch.nn
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(16 * 7 * 7, LENET_CLASSES),
        )
    )
    model.load_state_dict({name: torch.from_numpy(value.copy()) for name, value in params.items()})
    return model, torch.optim.SGD(model.parameters(), lr=LENET_LR)


def torch_step(model, optimizer, x, labels):
    optimizer.zero_grad()
    loss = torch_F.cross_entropy(model(x), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def lenet_check(params, x, labels):
    """One step of ours and of torch from the same weights and data: same loss and weights?"""
    if torch is None:
        return "skipped (torch not installed)"
    ours = {name: value.copy() for name, value in params.items()}
    our_loss = lenet_step(ours, x, labels, LENET_LR)
    model, optimizer = torch_lenet(params)
    torch_loss = torch_step(model, optimizer, torch.from_numpy(x), torch.from_numpy(labels))
    theirs = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    weight_error = max(np.abs(ours[name] - theirs[name]).max() for name in ours)
    error = max(abs(our_loss - torch_loss), weight_error)
    return verdict(error, "max diff of loss and updated weights")


def w3_training_step():
    rng = np.random.default_rng(3)
    params = lenet_init(rng)
    x = rng.random((LENET_BATCH, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, LENET_CLASSES, LENET_BATCH)
    timed_params = {name: value.copy() for name, value in params.items()}
    peers = {}
    if torch is not None:
        model, optimizer = torch_lenet(params)
        xt, labels_t = torch.from_numpy(x), torch.from_numpy(labels)
        peers["torch nn + SGD"] = lambda: torch_step(model, optimizer, xt, labels_t)
    return Case(
        "W3",
        "LeNet train step",
        lambda: lenet_step(timed_params, x, labels, LENET_LR),
        peers,
        lambda: lenet_check(params, x, labels),
    )


WORKLOADS = {
    "W1": w1_bank_apply,
    "W2": w2_deep_layer,
    "W3": w3_training_step,
    "W4": w4_large_kernel,
}


# --- running and reporting ------------------------------------------------------------


def run_case(case, repeat, budget):
    """Warm up (ours first: its first call compiles), check, then time interleaved."""
    first_call = {"ours": time_once(case.ours)[0]}
    for name, peer in list(case.peers.items()):
        try:
            first_call[name] = time_once(peer)[0]
        except Exception as error:  # a broken peer is reported and left out, not fatal
            print(f"  {case.key}: {name} failed and is skipped: {error!r}", flush=True)
            del case.peers[name]
    check = case.check()
    contenders = {"ours": case.ours, **case.peers}
    seconds_per_round = sum(time_once(fn)[0] for fn in contenders.values())
    rounds = repeat or rounds_for(seconds_per_round, budget)
    return Result(case, first_call, check, rounds, interleaved_medians(contenders, rounds))


def run_all(make_cases, repeat, budget, ours_label, peers_compile):
    """Run each case, printing its first-call times and check; -> (results, failures).

    peers_compile: whether the peers' first calls compile too (our own forced
    algorithms) and so are worth printing.
    """
    results, failures = [], 0
    for make_case in make_cases:
        case = make_case()
        label = f"{case.key} {case.title}"
        try:
            result = run_case(case, repeat, budget)
        except Exception as error:
            failures += 1
            print(f"{label}: ERROR {type(error).__name__}: {error}", flush=True)
            traceback.print_exc(file=sys.stderr)
            continue
        names = list(result.first_call) if peers_compile else ["ours"]
        firsts = ", ".join(
            f"{ours_label if name == 'ours' else name} {result.first_call[name]:.2f} s"
            for name in names
        )
        print(
            f"{label}: first call (compile + run) {firsts}; then {result.rounds} timed rounds",
            flush=True,
        )
        print(f"{case.key} check: {result.check}", flush=True)
        results.append(result)
    return results, failures


def fastest_peer(result):
    peers = {name: seconds for name, seconds in result.medians.items() if name != "ours"}
    return min(peers, key=peers.get) if peers else None


def print_table(results, ours_label, peer_label, ratio_label):
    ours_head = f"{ours_label} ms"
    head = f"{'workload':<20} {ours_head:>10}   {peer_label:<24} {'ms':>10} {ratio_label:>11}"
    print(head)
    print("-" * len(head))
    for result in results:
        ours = result.medians["ours"]
        rows = [(name, seconds) for name, seconds in result.medians.items() if name != "ours"]
        if len(rows) > 1:
            fastest = fastest_peer(result)
            rows.append((f"fastest: {fastest}", result.medians[fastest]))
        name_cell = f"{result.case.key} {result.case.title}"
        if not rows:
            print(f"{name_cell:<20} {ours * 1e3:>10.2f}   (no peer installed)")
        for i, (peer, seconds) in enumerate(rows):
            lead = (name_cell, f"{ours * 1e3:.2f}") if i == 0 else ("", "")
            times = f"{seconds * 1e3:>10.2f} {ours / seconds:>11.2f}"
            print(f"{lead[0]:<20} {lead[1]:>10}   {peer:<24} {times}")
    print()


def print_dispatch_verdicts(results, slack=1.15):
    """Say whether "auto" runs within ``slack`` (room for noise) of the fastest forced algorithm."""
    for result in results:
        fastest = fastest_peer(result)
        if fastest is None:
            continue
        ratio = result.medians["ours"] / result.medians[fastest]
        verdict_text = "ok" if ratio <= slack else f"auto is slower than forcing {fastest}"
        key = result.case.key
        print(f"dispatcher {key}: auto takes {ratio:.2f}x the time of {fastest}: {verdict_text}")


def machine_description():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            ]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    try:
        import numba

        threads = numba.config.NUMBA_NUM_THREADS
        versions.append(f"numba {numba.__version__} ({threads} threads, cache {NUMBA_CACHE})")
    except ImportError:
        versions.append("numba missing")
    peers = {"torch": torch, "scipy": scipy, "cv2": cv2}
    versions += [
        f"{name} {module.__version__}" if module else f"{name} missing"
        for name, module in peers.items()
    ]
    return [
        f"cpu: {cpu}, {os.cpu_count()} logical cores ({usable} usable); {load_average()}",
        "versions: " + ", ".join(versions),
        f"OpenBLAS threads (ours' numpy): {os.environ['OPENBLAS_NUM_THREADS']}; "
        f"torch threads: {torch.get_num_threads() if torch else '-'}",
    ]


def load_average():
    """The 1-minute load average: above the core count, other work competes with the timing."""
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return f"load average {os.getloadavg()[0]:.2f}"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="R",
        help="interleaved rounds per workload (default: as many as fit in --budget, 3 to 200)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=8.0,
        metavar="S",
        help="seconds of timing per workload when --repeat is not given (default 8)",
    )
    parser.add_argument(
        "--only", metavar="W1,W3", help="comma-separated workloads to run (default all)"
    )
    parser.add_argument(
        "--algorithms",
        action="store_true",
        help="also time our forward conv with each forced algorithm on W1, W2, W4",
    )
    args = parser.parse_args(argv)
    args.only = (
        [key.strip().upper() for key in args.only.split(",")] if args.only else list(WORKLOADS)
    )
    unknown = ", ".join(key for key in args.only if key not in WORKLOADS)
    if unknown:
        parser.error(f"--only: unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv=None):
    global cnn
    args = parse_args(argv)
    print(f"cnn_cli engine benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}")
    for line in machine_description():
        print(line)
    try:
        seconds, cnn = time_once(lambda: importlib.import_module("cnn_cli.functional"))
    except ImportError as error:
        print(f"Error: cannot import cnn_cli.functional: {error}", file=sys.stderr)
        return 1
    print(f"import cnn_cli.functional: {seconds:.2f} s\n", flush=True)

    results, failures = run_all(
        [WORKLOADS[key] for key in args.only], args.repeat, args.budget, "ours", False
    )
    print("\nmedian times, interleaved runs; ratio ours/peer, lower is better")
    print_table(results, "ours", "peer", "ours/peer")

    if args.algorithms:
        keys = [key for key in CONV_SPECS if key in args.only]
        print("forward conv, dispatcher ('auto') against each forced algorithm", flush=True)
        cases = [functools.partial(algorithms_case, CONV_SPECS[key]) for key in keys]
        algorithm_results, algorithm_failures = run_all(
            cases, args.repeat, args.budget, "auto", True
        )
        failures += algorithm_failures
        print("\nmedian times; ratio auto/forced, about 1 against the fastest when auto picks well")
        print_table(algorithm_results, "auto", "forced algorithm", "auto/forced")
        print_dispatch_verdicts(algorithm_results)
    print(f"at the end: {load_average()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
