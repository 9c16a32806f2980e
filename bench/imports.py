"""cnn import on the reference networks: import time, and the worst difference from ONNX Runtime
over every node's output.

Each network of tests/torch_zoo.py (hand-written with torchvision's names;
random weights, batch-norm statistics included, or MTCNN's real weights) is
exported by torch's legacy exporter (opset 17) and its default exporter
(opset 18, external data), imported, and run on one random input. Every node
our network has is compared with the same tensor in ONNX Runtime (exposed as
an extra output): the worst max|ours - ort| / max|ort| is printed, with the
import time (reading, folding, building and loading the weights).

    python bench/imports.py [--size 224] [--models resnet18,mobilenet_v2]

Needs torch 2.13, onnx, onnxscript and onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnn_cli.onnximport import ImportOptions, import_onnx  # noqa: E402


def worst_node_difference(path, imported, size):
    """max over nodes of max|ours - ort| / max|ort|, for one input of ``size`` (C, H, W)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    for tensor in imported.tensors.values():
        if tensor not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, *size)).astype(np.float32)
    refs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    worst = 0.0
    for node, ours in zip(imported.network.names, imported.network.node_outputs(x)):
        ref = refs[imported.tensors[node]]
        if ref.shape == ours.shape:
            worst = max(worst, float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)))
    return worst


def main():
    from tests import torch_zoo as zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="input side for the ImageNet networks [default: the tests' sizes]")
    parser.add_argument("--models", help="comma-separated names from tests/torch_zoo.tiny_models()")
    args = parser.parse_args()
    models = zoo.tiny_models()
    names = args.models.split(",") if args.models else list(models)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'network':26s} {'exporter':10s} {'input':>12s} {'nodes':>6s} {'import s':>9s} {'worst rel. diff':>16s}")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            build, size = models[name]
            if args.size and name in ("resnet18", "mobilenet_v2", "squeezenet1_1"):
                size = (3, args.size, args.size)
            for exporter, opset in (("legacy", 17), ("dynamo", 18)):
                net = zoo.load_mtcnn(name) if name in zoo.MTCNN_NETS else zoo.randomize(build(), 0)
                path = zoo.export_onnx(net, Path(tmp) / f"{name}_{exporter}.onnx", size, exporter=exporter,
                                       opset=opset)
                start = time.perf_counter()
                imported = import_onnx(path, ImportOptions())
                seconds = time.perf_counter() - start
                worst = worst_node_difference(path, imported, size)
                print(f"{name:26s} {exporter + str(opset):10s} {'x'.join(map(str, size)):>12s} "
                      f"{imported.nodes:6d} {seconds:9.2f} {worst:16.2e}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
