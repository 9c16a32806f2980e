"""Images per second of `cnn apply --save raw` on a local Dask cluster of 1 and 2 workers, and what a run writes.

    python bench/scale.py [--images 200] [--size 512] [--budget 420] [--folder DIR] [--save-args ARGS]

A quick run: ``--images 24 --budget 60``.

The inputs are ``bench/apply.py``'s photo-like PNGs (the same folder, made
once). Three contenders run ``cnn apply DIR -o OUT --save raw --json`` as a
user would: without Dask (the reference), ``--workers 1`` and ``--workers 2``.
They alternate, the first changing each round, and rounds repeat while
``--budget`` allows; medians are reported.

The rate is images / the ``seconds`` of the ``--json`` summary. Those cover
the run from the local cluster's start (issue 28: a run's time counts its
cluster's start-up) to the last result; the workers' first task (importing
the engine, loading its Numba cache, receiving the pipeline) is inside it.
What remains of the wall time (the interpreter's start, the cluster's
shutdown) is printed apart, and the wall rate (images / wall seconds of the
whole command) beside it. The local cluster is forced for every run
(``CNN_LOCAL_CLUSTER_MIN_IMAGES=0``), whatever the number of images.
Targets: ``--workers 2`` at least 1.6 times ``--workers 1`` (issue 12), and
at least 0.85 of one process's wall rate on 200 images (issue 28).
``--save-args`` replaces ``--save raw`` in the runs timed, for example
``--save-args "--save raw --layers last"``: 0.7 MB per image instead of
30 MB, which shows how the workers scale when the disk is not what limits
them.

For ``docs/scale.md`` it also measures, on the first few images, the bytes
written per image for each ``--save`` choice; the scheduler's overhead per
task (no-op tasks through a 2-worker local cluster); and this disk's
sequential write bandwidth (a file written and fsynced).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from apply import image_folder_arguments, make_folder, run_cli  # noqa: E402

TARGET = 1.6
#: Issue 28: --workers 2 / no Dask, wall rates (start-up counted), on 200 images.
WALL_TARGET = 0.85

CONTENDERS = {"local (no Dask)": [], "--workers 1": ["--workers", "1"], "--workers 2": ["--workers", "2"]}

#: Bytes per image, each measured on SIZE_IMAGES images.
SAVE_CHOICES = {
    "maps,grids,raw (default)": [],
    "raw": ["--save", "raw"],
    "raw --dtype float16": ["--save", "raw", "--dtype", "float16"],
    "raw --layers last": ["--save", "raw", "--layers", "last"],
    "raw --layers last --dtype float16": ["--save", "raw", "--layers", "last", "--dtype", "float16"],
    "grids": ["--save", "grids"],
    "maps": ["--save", "maps"],
}
SIZE_IMAGES = 8


def task_overhead(tasks=400):
    """Milliseconds per no-op task through a 2-worker local cluster (submit, run, gather)."""
    import logging

    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        client.gather(client.map(abs, range(20), pure=False))  # warm the connections
        start = time.perf_counter()
        client.gather(client.map(abs, range(tasks), pure=False))
        batch = (time.perf_counter() - start) / tasks
        start = time.perf_counter()
        for i in range(tasks // 4):  # one at a time, as a window of one would
            client.submit(abs, i, pure=False).result()
        serial = (time.perf_counter() - start) / (tasks // 4)
    return 1e3 * batch, 1e3 * serial


def rate_bytes(sizes, save):
    """Bytes per image of the timed runs, where ``SAVE_CHOICES`` measured those options."""
    return next((size for choice, size in sizes.items() if SAVE_CHOICES[choice] == save), float("nan"))


def disk_write_mb_s(folder, mb=512):
    """Sequential write bandwidth of ``folder``'s filesystem, fsync included, in MB/s."""
    block = os.urandom(8 * 2**20)
    path = Path(folder) / "disk-probe.bin"
    start = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(mb // 8):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return mb * 2**20 / 1e6 / seconds


def main(argv=None):
    args, folder = image_folder_arguments(__doc__, 420, argv, lambda parser: parser.add_argument(
        "--save-args", default="--save raw", help="the options of cnn apply that choose what the timed runs write"))
    save = args.save_args.split()

    began = time.perf_counter()
    paths = make_folder(folder, args.images, args.size)
    n = len(paths)
    print(f"{n} images of {args.size}x{args.size} in {folder}; {os.cpu_count()} cores; "
          f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    scratch = Path(tempfile.mkdtemp(prefix="cnn-bench-scale-", dir=folder.parent))
    os.environ["CNN_LOCAL_CLUSTER_MIN_IMAGES"] = "0"  # the runs with --workers measure the cluster
    samples = {name: {"run": [], "startup": [], "wall": []} for name in CONTENDERS}
    try:
        few = scratch / "few"
        few.mkdir()
        for p in paths[:SIZE_IMAGES]:
            shutil.copy(p, few)
        run_cli(few, scratch / "warm", "--save", "raw")  # compile or load the Numba cache once
        sizes = {}
        for choice, extra in SAVE_CHOICES.items():
            _, summary = run_cli(few, scratch / "sizes", *extra)
            sizes[choice] = summary["bytes"] / summary["written"]
            shutil.rmtree(scratch / "sizes")

        rounds = 0
        while True:
            round_start = time.perf_counter()
            names = list(CONTENDERS)
            for name in names[rounds % 3:] + names[:rounds % 3]:
                wall, summary = run_cli(folder, scratch / "out", *save, *CONTENDERS[name])
                samples[name]["run"].append(summary["seconds"])
                samples[name]["startup"].append(wall - summary["seconds"])
                samples[name]["wall"].append(wall)
                shutil.rmtree(scratch / "out")
            rounds += 1
            if time.perf_counter() - began + (time.perf_counter() - round_start) > args.budget:
                break
        overhead = task_overhead()
        disk = disk_write_mb_s(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{rounds} round(s), medians; cnn apply DIR -o OUT {args.save_args}; rate = images / the run's seconds; "
          f"{rate_bytes(sizes, save) / 1e6:.2f} MB written per image")
    print(f"{'':16} {'img/s':>7} {'per worker':>10} {'rest':>8} {'wall img/s':>10}")
    rate, wall = {}, {}
    for name in CONTENDERS:
        rate[name] = n / statistics.median(samples[name]["run"])
        wall[name] = n / statistics.median(samples[name]["wall"])
        per_worker = rate[name] / int(CONTENDERS[name][1]) if CONTENDERS[name] else rate[name]
        print(f"{name:16} {rate[name]:7.2f} {per_worker:10.2f} {statistics.median(samples[name]['startup']):7.1f} s "
              f"{wall[name]:10.2f}   walls {' '.join(f'{w:.1f}' for w in samples[name]['wall'])} s")
    ratio = wall["--workers 2"] / wall["local (no Dask)"]
    print(f"wall rate, start-up counted: workers 2 / local {ratio:.2f} "
          f"(target {WALL_TARGET}: {'met' if ratio >= WALL_TARGET else 'NOT met'})")
    ratio = rate["--workers 2"] / rate["--workers 1"]
    print(f"workers 2 / workers 1: {ratio:.2f} (target {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}); "
          f"workers 2 / local: {rate['--workers 2'] / rate['local (no Dask)']:.2f}")

    print(f"\nbytes written per {args.size}x{args.size} image (first {SIZE_IMAGES} images, manifest included)")
    for choice, size in sizes.items():
        print(f"  {choice:36} {size / 1e6:8.2f} MB")
    print(f"scheduler overhead per no-op task, 2 local workers: {overhead[0]:.2f} ms in a batch, "
          f"{overhead[1]:.2f} ms one at a time")
    print(f"sequential write to {folder.parent}, fsync included: {disk:.0f} MB/s")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
