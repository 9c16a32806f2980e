"""Tunables for the engine, in one place.

The thresholds pick the convolution path for a shape (see
``cnn_cli.functional.dispatch``: ``forward_path`` and ``weight_grad_path``).
They were set from ``bench/engine.py`` on a 2-core AMD EPYC (Zen 3, AVX2)
machine. Here stand the reasons and the shapes where a choice flips; timings,
which go stale, live in README's benchmark table. Any value gives correct
results, only speed moves.
"""

import os

#: Use the FFT path when the kernel has at least this many taps (kH * kW)
#: and the stride is 1. Measured here, direct loops and FFT break even at
#: 13x13 on a 512x512 image, and FFT wins from 15x15 (OpenCV switches at
#: about 11x11). Staying direct up to 13x13 also spares a one-off run of the
#: default pipeline the import of scipy.fft, which takes longer than its
#: convolutions.
FFT_MIN_TAPS = 196

#: Use im2col + BLAS when one output pixel needs at least this many
#: multiply-adds per output channel (C_in/groups * kH * kW) and the layer has at
#: least IM2COL_MIN_OUT_CHANNELS filters per group: then the matrix product is
#: large enough for BLAS to beat the direct loops.
IM2COL_MIN_DEPTH = 64
IM2COL_MIN_OUT_CHANNELS = 16

#: Kernels 3 wide at stride 1 have a filter-blocked direct kernel, which
#: beats matrix products except on deep layers over batches of larger maps.
#: Measured here, im2col won on 16x64x32x32 -> 128 and 32x32x64x64 -> 64,
#: the two tied on 4x64x16x16 -> 64, and direct won on 32x32x16x16 -> 64,
#: on one 32x128x128 image -> 32, and by far on LeNet's layers.
#: im2col is used from this depth (C_in/groups * 9), filters per group,
#: output pixels per map and images in the batch (at least one per thread).
ROWS_MIN_DEPTH = 256
ROWS_MIN_OUT_CHANNELS = 64
ROWS_MIN_PIXELS = 1024

#: Direct convolution with stride 1 stacks the batch into one tall plane per
#: channel for kernels 3 wide, and for other kernels when the output is
#: narrower than NARROW_MAP (see kernels.conv.conv_direct_stacked). It works
#: the stack in tiles of about STACKED_TILE pixels: long enough for
#: vectorised loops, short enough that a tile's sums for 16 filters stay in
#: the first-level cache.
NARROW_MAP = 64
STACKED_TILE = 512

#: Upper bound on the im2col buffers: larger batches are processed in chunks
#: of images, and the stride-1 row im2col shares a batch between only as
#: many threads as have room (a single image may still need more). The
#: weight gradient's "auto" takes matrix products only while one image's
#: columns fit.
IM2COL_MAX_BYTES = 64 * 2**20

#: Threads for scipy.fft in the FFT path (-1: all cores).
FFT_WORKERS = -1

#: The FFT path works in float64 when |mean| of the input exceeds this many
#: standard deviations; float32 rounding would then swamp a zero-mean
#: kernel's small response (see cnn_cli.functional.fft).
FFT_FLOAT64_MEAN_RATIO = 4.0

#: At stride 1 the FFT path cuts the input into overlapping tiles
#: (overlap-save) when that is cheaper than one transform of the whole
#: padded input (see cnn_cli.functional.fft.fft_tiles). A transform of
#: length L is estimated at L * (log2 L + FFT_COST_PER_POINT) per tile: the
#: log is the transform's work per point, the constant the products and
#: copies around it. Tiles are tried from FFT_TILE_MIN_LENGTH points and
#: FFT_TILE_MIN_REACHES kernel sizes up, so the overlap (one kernel reach)
#: stays a small part of each tile; they replace the whole transform only
#: when their estimate is under FFT_TILES_MAX_COST of its, which keeps one
#: transform where the two were measured close. Shorter transforms stay in
#: cache: measured here, tiles won clearly on 1024x1024 with a 31x31 kernel
#: (4x4 tiles of 288 against one transform of 1080) and on 4096x4096 with
#: 15x15 (tiles of 128).
FFT_COST_PER_POINT = 4
FFT_TILE_MIN_LENGTH = 64
FFT_TILE_MIN_REACHES = 4
FFT_TILES_MAX_COST = 0.95

#: Kernels run on the calling thread below this much work (about one
#: multiply-add per unit). Handing work to another thread costs a wake-up
#: (60-110 us on this VM when idle, bench/zoo.py prints it), and its core
#: finds the data cold. A LeNet step ran faster with every layer (up to 24M)
#: on one thread; a bank over a photo (100M and up) gains clearly from the split.
PARALLEL_MIN_WORK = 2**25

#: ``nn.Network.forward`` in eval mode shares a batch between the threads in
#: BATCH_SPLIT_CHUNKS chunks a thread, each run through the whole network on one
#: thread, from BATCH_SPLIT_MIN_WORK multiply-adds a pass. Split against whole
#: (load 0.2-0.6, medians of 31): AlexNet-style at 16 (76 M) 4.5 against 3.6 ms,
#: at 32 (152 M) 6.4/6.5; the resnet preset at 8 (98 M) 5.7/5.6, at 16 (195 M)
#: 7.2/8.7; LeNet at 256 (111 M) 7.7/9.7. Halves against two chunks a thread:
#: ResNet-18 at 8 149/166 ms, SqueezeNet 45.0/46.4, the O-Net at 64 18.2/19.1,
#: MobileNetV2 60.4/58.8.
BATCH_SPLIT_MIN_WORK = 2**27
BATCH_SPLIT_CHUNKS = 1

#: Max pooling without the argmax (``kernels.pool.max_pool_values``) and
#: PReLU (``kernels.prelu``): the work of one input value, in the units of
#: PARALLEL_MIN_WORK, so calls of 2**19 values (pooling) and 2**20 (PReLU)
#: and more are split between threads. A value costs far less than a
#: multiply-add of a product, but the hand-off does not shrink with it.
#: Measured as 3x3/2 pooling and PReLU, one thread against two (medians of
#: 15-25 interleaved calls), at moments when two threads of arithmetic ran
#: as fast as one (load average 0.9-1.2):
#: pooling 1x32x112x112 (0.4M values) 0.23 ms against 0.22, 0.6M 0.36
#: against 0.36, 0.8M 0.47-0.70 against 0.43-0.58, 64x64x21x21 (1.8M)
#: 2.1-3.7 against 1.9-2.2, 64x32x46x46 7.3-7.4 against 4.2-4.4; PReLU
#: 0.6M 0.11 against 0.16, 0.8M 0.17-0.37 against 0.18-0.34, 1.8M 0.9-1.3
#: against 0.6-1.0, 4.3M 2.6-2.8 against 1.9-2.0. With the other core
#: busy, two threads took 3-20% longer from 0.8M values up.
POOL_VALUE_WORK = 64
PRELU_VALUE_WORK = 32

#: Convolution specs kept for reuse (``functional.specs.conv_spec``): a network's layers at
#: a few input sizes. Past this many the cache starts again, so a run holds at most this many.
CONV_SPECS_KEPT = 4096

#: The depthwise kernel (``kernels.depthwise``): the work of one tap of one
#: output value, in the units of PARALLEL_MIN_WORK. A plane is copied,
#: padded, summed and stored, so a tap costs far more than a multiply-add of
#: a matrix product: at 1 (its multiply-adds), every depthwise layer of a
#: MobileNetV2 at batch 8 ran on one thread. Measured one thread against two
#: (medians of 21 interleaved calls, 3x3, load average 0.8-0.9): 8 x 960 at
#: 7x7 (0.38M values) 2.19 ms against 1.32, 8 x 384 at 14x14 1.70 against
#: 1.03, 8 x 144 at 56x56 5.07 against 3.24; at batch 1, 32 at 112x112
#: (0.40M) 0.36 against 0.29, 144 at 56x56 (0.45M) 0.38 against 0.40, and
#: from 28x28 down two threads won or lost by 30% from call to call.
#: 16 splits calls from 0.23M output values of a 3x3 kernel.
DEPTHWISE_TAP_WORK = 16

#: The input values whose row maxima ``max_pool_values`` takes at once (a
#: band of output rows whose input rows fit; four buffers of this many per
#: thread). Only the buffers' size depends on it: from 1024 to whole planes,
#: one thread pooled SqueezeNet's and the O-Net's maps in the same time
#: within noise (8x64x111x111 4.6-4.9 ms, 64x32x46x46 4.7-5.7, 1x16x512x512
#: 3.3-3.9, thread CPU time, load average 2.3); a whole plane of a large
#: image would take four buffers of its size.
POOL_BAND_VALUES = 2**14

#: A fixed filter bank (convolution with ``algorithm="light"``) of at most
#: this many multiply-adds per image runs in numpy (cnn_cli.functional.small),
#: and max pooling of inputs of at most SMALL_MAX_POOL_INPUT values does so
#: until a kernel has loaded: loading Numba and the first kernels from the
#: cache takes 0.6-0.8 s. The default pipeline's first layer on a 512 x 512
#: photo (4e8 multiply-adds) took 0.13-0.23 s in numpy against 0.05 s by
#: the kernels once loaded, so the bound is about where the load repays.
SMALL_MAX_MACS = 2**29
SMALL_MAX_POOL_INPUT = 2**24
#: ... directly for kernels of up to this many taps, and by numpy's FFT above;
#: directly means a pass over the output per tap and filter when a group has
#: at most SMALL_SHIFTS_MAX_PAIRS (input channel, filter) pairs, else im2col
#: and one matrix product. On four 512 x 512 images, Sobel's two 3 x 3 filters
#: took 39 ms by passes, 97 by FFT and 460 by an im2col of strided views.
SMALL_IM2COL_MAX_TAPS = 25
SMALL_SHIFTS_MAX_PAIRS = 16
#: ... and kernels that are outer products of a column and a row (Gaussians,
#: boxes, Sobel) by a pass per tap of each, when the second singular value of
#: every kernel is under this fraction of the first (float32's precision):
#: the harris pipeline on a 512 x 512 photo took 36 ms so, 100 by FFT and 96
#: by the kernels (one run, load 5).
SMALL_SEPARABLE_TOLERANCE = 1e-6

#: grad_x of a convolution at stride 1 runs as columns (W^T @ grad_y, one
#: product an image) scattered back onto the input, instead of a correlation
#: on a forward path, when the layer has at least this many filters per input
#: channel (at strides above 1 it always does: the correlation multiplies the
#: stride's inserted zeros, and took 8.5 ms against 3.2 for 32 x 16 -> 32 at
#: 32x32, stride 2). Measured per core, batch 32, 3x3, interleaved, load 6:
#: 16 -> 32 at 16x16 1.9 ms against 2.9, 32 -> 48 at 8x8 1.4 against 1.8;
#: equal channels tied (16 at 32x32, 32 at 16x16, 48 and 64 at 8x8).
GRAD_COLUMNS_MIN_WIDENING = 1.5

#: Threads that share a large kernel call or matrix product: the cores this
#: process may use, or NUMBA_NUM_THREADS when it is set (a Dask worker runs
#: one engine thread per worker thread, and the engine's own pool must agree).
THREADS = int(os.environ.get("NUMBA_NUM_THREADS") or 0) or (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
)

#: Upper bounds on arguments and arrays the engine will make: a side, stride,
#: padding or dilation above MAX_SIDE, or an array over MAX_ARRAY_BYTES, is a
#: mistake, refused with a ValueError before anything is allocated.
MAX_SIDE = 2**20
MAX_ARRAY_BYTES = 8 * 2**30

#: glibc's allocator hands arrays above a dynamic threshold (from 128 KiB)
#: straight to the kernel and gives freed memory back once 2x that sits free.
#: A training step makes and drops tens of megabytes of temporaries, so every
#: step paid for about 3,000 fresh pages (zeroed by the kernel: over a third
#: of a LeNet step's time). Below MMAP_THRESHOLD, freed blocks are reused
#: instead; the heap is returned to the system once TRIM_THRESHOLD of it is
#: free. Arrays above the threshold (a large photo's maps) still come and go
#: directly. Each thread's heap may keep up to TRIM_THRESHOLD free; the 4096x4096
#: default-pipeline apply peaks at 1.5x its raw maps.
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 64 * 2**20

#: The ``cnn`` command collects reference cycles after this many new container
#: objects (``gc.set_threshold``'s first number; Python's is 700). Importing
#: numpy, Pillow and the engine made 70 collections, 17 ms of a cached
#: ``cnn apply samples/shapes.png`` that looked at objects living as long as
#: the process; with this one, none after the command starts. Cycles are still
#: collected, later.
GC_THRESHOLD = 100_000

#: How ``pngfile`` deflates a map's picture. At least PNG_FLAT_FRACTION of
#: the Sub-filtered bytes zero (drawn shapes: 20-90 %; photos' maps: at most
#: 15 %) takes zlib's default strategy: samples/shapes.png's 55 maps 42 ms
#: and 1.25 MB against run-length's 76 ms and 3.2 MB. A noise-like picture
#: that run-length shrinks by less than PNG_STORE_SAVING, judged on every
#: PNG_PROBE_ROW-th row, is stored: 27-69 % of the asinh maps of photos,
#: taking their 55 PNGs from 110-133 to 45-95 ms of CPU for 5-10 % more
#: bytes (pngfile's docstring has the whole measurement).
PNG_FLAT_FRACTION = 0.2
PNG_STORE_SAVING = 0.2
PNG_PROBE_ROW = 8


def tune_process():
    """Set up this process as the ``cnn`` command runs: call before numpy is imported.

    BLAS runs one thread: the engine runs its own (Numba kernels, and the
    im2col products split across threads), and BLAS's thread pool would spin
    between calls and take the cores from them. On glibc, the allocator keeps
    freed memory for reuse (see MALLOC_MMAP_THRESHOLD).
    """
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
    mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)


#: The memory one cnn run may plan to use: a model's or pipeline's weights
#: and maps, an image's maps in ``cnn apply``. Work estimated above it is
#: refused before anything is allocated. By default, half of this machine's
#: memory (or of the container's limit): the default pipeline over a 100 Mpx
#: image, which the pixel limit lets through, takes about 15 GB. The
#: environment variable CNN_MAX_MEMORY (bytes, or with K, M, G or T) and
#: ``cnn apply --max-memory`` replace it.
MEMORY_FRACTION = 0.5
MEMORY_ENV = "CNN_MAX_MEMORY"

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text):
    """'512M', '8G', '1.5T' or a number of bytes -> an int; ValueError says what is expected."""
    value = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[:len(value) - len(unit)])
    except ValueError:
        number = float("nan")
    if not (number > 0 and number * _UNITS[unit] < 2**63):  # also false for NaN
        raise ValueError(f"a size must be a positive number of bytes, optionally with K, M, G or T "
                         f"(such as 8G), not {text!r}")
    return int(number * _UNITS[unit])


def machine_memory():
    """Bytes of memory this process can have: the machine's, or its container's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                total = min(total, int(fh.read().strip()))
        except (OSError, ValueError):
            continue
    return total


def memory_limit():
    """The memory limit in bytes: CNN_MAX_MEMORY if set, else MEMORY_FRACTION of ``machine_memory``."""
    text = os.environ.get(MEMORY_ENV)
    if text:
        try:
            return parse_bytes(text)
        except ValueError as exc:
            raise ValueError(f"{MEMORY_ENV}: {exc}") from None
    return int(machine_memory() * MEMORY_FRACTION)


def describe_bytes(n):
    """A size for messages: '512 MB', '3.2 GB'."""
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{max(n, 0) / 2**20:.0f} MB"


def memory_hint():
    """How to raise the memory limit, for messages."""
    origin = f"{MEMORY_ENV}={os.environ[MEMORY_ENV]}" if os.environ.get(MEMORY_ENV) else \
        f"half this machine's {describe_bytes(machine_memory())}"
    return (f"the limit is {describe_bytes(memory_limit())} ({origin}); "
            f"set {MEMORY_ENV} (e.g. {MEMORY_ENV}=64G) to change it")


# ----------------------------------------------------------------------------- cnn import: untrusted files
# Bounds on what an ONNX or safetensors file may make us allocate, checked
# before anything is allocated (see cnn_cli.onnxfile and cnn_cli.tensorfile).

#: The largest ONNX file (counting its external data) cnn import reads:
#: protobuf cannot hold a model over 2 GiB without external data, and the
#: largest classic CNN we aim at (VGG-19) holds about 550 MB of float32 weights.
ONNX_MAX_BYTES = 2 * 2**30

#: The most elements one initializer, Constant or folded value may have: a
#: numpy array this large is 8 GiB of float32, which no classic CNN needs
#: (VGG's largest weight has 103 M elements), and it keeps a forged dims list
#: from making us allocate terabytes.
ONNX_MAX_ELEMENTS = 2**31

#: The most nodes an ONNX graph may have: ResNet-152 as torch exports it has
#: about 500; a file with a million nodes is a forgery or not an image CNN.
ONNX_MAX_NODES = 100_000

#: The most dimensions a tensor may declare (numpy's own limit is 64).
ONNX_MAX_RANK = 32

#: The largest JSON header a safetensors file may have: the safetensors
#: library itself refuses headers over 100 MB, and a ResNet-50's is about 30 KB.
SAFETENSORS_MAX_HEADER_BYTES = 100 * 2**20

#: The largest safetensors file cnn import reads, for the same reason as
#: ONNX_MAX_BYTES: the architectures it imports hold at most about 550 MB.
SAFETENSORS_MAX_BYTES = 2 * 2**30


# ----------------------------------------------------------------------------- deep networks' layers
# The matrix-product path of cnn_cli.functional.gemm (ResNet, VGG, MobileNet,
# SqueezeNet layers imported from ONNX). Measured on the same 2-core EPYC
# with bench/zoo.py and bench/engine.py, interleaved, under a load average of
# 2 to 7 from other work on the machine.

#: Bytes of one thread's im2col columns: the tile of output rows a task
#: copies and multiplies. OpenBLAS (one thread) runs 64x576 @ 576xP at
#: 74-76 GFLOP/s for P from 256 to 3136, so the tile's size only needs to keep
#: the columns in the core's 512 KB second-level cache between the copy that
#: writes them and the product that reads them.
GEMM_TILE_BYTES = 512 * 2**10

#: ... but a tile has at least this many output pixels (whole rows): on deep
#: layers the bytes above would make thin tiles, and products over fewer
#: pixels run slower (512x4608 @ 4608x49 at 62 GFLOP/s against 76 at 256 and
#: more; 512 -> 512 channels at 28x28 took 203 ms on tiles of 60 pixels,
#: under load, against 135 ms for whole-image products). Fewer pixels make
#: more tiles for the threads to share, which beat splitting the filters:
#: measured at 2 threads, load average 1.5, 15 interleaved rounds, 128
#: against 256: 1 x 128 -> 128 at 28x28 3.55 ms against 4.08-5.30 ms,
#: 1 x 256 -> 256 at 14x14 3.59-4.49 against 4.83-5.88, 1 x 512 -> 512 at
#: 28x28 32.4 against 37.7, 8 x 256 -> 256 at 14x14 20.7 against 24.2.
GEMM_TILE_MIN_PIXELS = 128

#: Filters are split into blocks, each its own task, until the batch's tiles
#: and blocks make this many tasks a thread (a batch of one 7x7 map is one
#: tile), but never into blocks under GEMM_MIN_BLOCK_FILTERS filters: a block
#: re-copies its tile's columns when another thread made them.
GEMM_MIN_TASKS_PER_THREAD = 2
GEMM_MIN_BLOCK_FILTERS = 32

#: A batch of maps under GEMM_IMAGES_MAX_PIXELS pixels runs as products over
#: several images' columns side by side, about GEMM_IMAGES_COLUMNS a tile
#: (``gemm._images``). OpenBLAS on one thread ran 256 filters x 4608 deep at
#: 50 GFLOP/s on one 7x7 map's 49 columns, 76 on 196 and 82 on 784; 64 x 576
#: at 45, 63 and 76 (load average 1.8, CPU time).
GEMM_IMAGES_MAX_PIXELS = 256
GEMM_IMAGES_COLUMNS = 384

#: 1x1 convolutions at stride 1 are one matrix product per image on the
#: input's own planes (no columns): measured here per core, 16 -> 96 channels
#: at 112x112 took 1.36 ms against 3.10 ms on the stacked direct loops, and
#: 32 -> 16 0.45 ms against 1.11 ms, so they are taken from this many input
#: channels and filters per group.
POINTWISE_MIN_DEPTH = 16
POINTWISE_MIN_OUT_CHANNELS = 16

#: Convolutions at strides above 1 run as tiled matrix products from this many
#: filters per group, however shallow: the direct loops read every other pixel,
#: which does not vectorise. Measured here per core, MobileNetV2's first layer
#: (3 -> 32, 3x3, stride 2, at 224x224) took 1.43 ms against 12.4 ms on the
#: direct loops, 3 -> 16 at 64x64 0.09 ms against 0.39 ms, and 8 -> 16 with a
#: 5x5 kernel 0.45 ms against 2.24 ms.
STRIDED_GEMM_MIN_OUT_CHANNELS = 16

#: At stride 1, gemm copies one kernel row's columns per tile and runs a
#: product per kernel row (as paths.rows does per image) on maps at least this
#: wide; on narrower maps the padded columns it computes and drops cost more
#: than the copies of full columns it saves. Measured here at 2 threads
#: (interleaved, load average 5-7, so within about 20%): full columns won at
#: 7x7 (16 ms against 36 ms for 512 -> 512), 14x14 and 28x28 (1 x 512 -> 512:
#: 159 ms against 175 ms); row columns at 55x55 and wider (1 x 64 -> 64 at
#: 56x56: 10.3 ms against 13.4 ms; 8 x 16 -> 64 at 55x55: 16.2 against 20.4).
GEMM_ROW_COLUMNS_MIN_WIDTH = 32

#: "auto" runs convolutions over at most STEM_MAX_CHANNELS input channels
#: (groups 1, kernels under FFT_MIN_TAPS) on the direct kernel of phase planes
#: (cnn_cli.functional.stem): the first layer of image networks, whose
#: matrix products are too shallow (27-147) for BLAS to repay the strided
#: copy of their columns. Measured here per core (CPU time, medians of 15-31
#: interleaved calls, load average 0.5-0.9), against the path "auto" took
#: before, over five rounds: ResNet's 3 -> 64 7x7/2 at 224x224 4.1-7.5 ms
#: against 6.7-10.1 on gemm (batch 8: 33-43 against 50-74); MobileNetV2's
#: 3 -> 32 3x3/2 0.6-1.0 against 1.0-1.8 (one round 1.33 against 1.21);
#: SqueezeNet's 3 -> 64 3x3/2 (no padding) 1.0-1.9 against 1.7-3.2; at
#: stride 1, 3 -> 64 3x3 at 224x224 5.3 against 7.6 on the stacked loops,
#: 7x7 21 against 55 on row im2col, 32 x 1 -> 6 5x5 at 28x28 (LeNet) 0.34 against 0.61 (0.45
#: against 0.75 with the 2x2 max pool the stacked loops fuse), 3 -> 16 3x3/2
#: at 32x32 0.026 against 0.046. 4 covers RGBA and the tests' range. It
#: splits between threads from PARALLEL_MIN_WORK, as the others do: below
#: it, two threads did not pay with the other core busy (load 0.9),
#: MobileNetV2's stem (11M) 1.12 ms against 1.03, SqueezeNet's 1.20 against 1.29.
#: Strided kernels wider than 1x1 take it up to STRIDED_STEM_MAX_CHANNELS
#: when the output is at least STRIDED_STEM_MIN_WIDTH wide: against gemm, one
#: core, 32 images, 3x3/2 at 32x32 (load 2.9): 8 -> 16 0.79 against 1.39 ms,
#: 16 -> 32 2.19 against 2.98, 24 -> 48 4.36/4.97, 32 -> 64 7.61/8.25; but at
#: 16x16 32 -> 64 1.30 against 0.93, 16 -> 32 0.91/0.79, and from 64 channels
#: (4 x 128 -> 256 at 28x28 9.4/6.3) it lost.
STEM_MAX_CHANNELS = 4
STRIDED_STEM_MAX_CHANNELS = 32
STRIDED_STEM_MIN_WIDTH = 16

#: Output pixels (whole rows, W_ph wide) of a tile of the stem kernel, whose
#: four filters' sums stay in L1 while each three-tap pass adds to them.
#: ResNet's first layer took 5.5 ms at 1024 against 6.5 at 512 and 768 (4.3
#: against 4.8 in another round); the 3x3 stems moved within the noise.
STEM_TILE_PIXELS = 1024

#: "auto" runs 3x3 convolutions at stride 1 (undilated, ungrouped) as
#: Winograd F(4x4, 3x3) (cnn_cli.functional.winograd) from WINOGRAD_MIN_DEPTH
#: input channels, WINOGRAD_MIN_OUT_CHANNELS filters and WINOGRAD_MIN_TILES
#: 4x4 output tiles in the batch. First measured as CPU time per call (load
#: 5-6), against the path "auto" took before: 1 x 64 -> 64 at 56x56 3.06 ms
#: against 4.30, 128 -> 128 at 28x28 2.45 against 4.29, 8 x 256 -> 256 at
#: 14x14 28.7 against 40.7. Once its transforms ran along whole blocks of
#: tiles, 16 input channels won and 16 filters lost (one thread, medians of
#: 21-41 interleaved calls, load 2.1-2.3, against the stacked loops): 16 -> 64
#: at 55x55 0.71 ms against 0.88, 16 -> 48 at 56x56 0.56 against 0.67, 16 ->
#: 24 0.39 against 0.35, 16 -> 16 0.31 against 0.24; 32 -> 24 0.59 against
#: 0.66, 64 -> 24 1.06 against 1.31, but 32 -> 16 0.56 against 0.46 and 64 ->
#: 16 1.02 against 0.95. From 24 filters, 16 -> 24 loses a tenth so that 32 ->
#: 24 and 64 -> 24 win. squeezenet-1 13.8 -> 13.3 ms, squeezenet-8 105 -> 98
#: (31 interleaved forwards, load 2.2-2.3).
WINOGRAD_MIN_DEPTH = 16
WINOGRAD_MIN_OUT_CHANNELS = 24

#: With the filters transformed in chunks, 32 tiles won where 48 had been
#: needed (one thread against gemm, medians of 21-41 interleaved calls, load
#: 2.1): 2 x 256 -> 256 at 14x14 5.3 ms against 7.0, 8 x 512 -> 512 at 7x7
#: 22.5 against 24.7, 64 -> 64 at 24x24 (36 tiles) 0.68 against 1.37; 16
#: tiles still lost or tied: 256 -> 256 at 14x14 3.60 against 3.55, 512 ->
#: 512 17.8 against 13.8. resnet18-8 in chunks of two 368 -> 338 ms.
WINOGRAD_MIN_TILES = 32

#: ... and only where the map fills WINOGRAD_MIN_COVER of its 4x4 tiles: the
#: tiles past a map's edge are transformed and multiplied for nothing. A
#: 13x13 map fills 66% of its 16 tiles (SqueezeNet's last fire modules),
#: where gemm's batched products had won (48 -> 192 at batch 8: 8.5 ms
#: against 10.3-10.8). Since the transforms run along whole blocks, 13x13
#: and 10x10 (69%) win too (one
#: thread, medians of 21-41 interleaved calls, load average 1.5): 2 x 48 ->
#: 192 at 13x13 0.67 ms against 0.85, 2 x 64 -> 256 1.04 against 1.40,
#: 4 x 48 -> 192 1.23 against 1.62; 4 x 128 -> 128 at 10x10 1.47 against
#: 1.90, 8 x 256 -> 256 9.8 against 12.8. 9x9 and 6x6 (56%) not measured.
WINOGRAD_MIN_COVER = 0.65

#: Tiles a Winograd task transforms and multiplies at once: 1 x 64 -> 64 at
#: 56x56 took 2.8 ms on one thread at 64, 3.2 at 32 and 128, 3.9 at 16.
WINOGRAD_BLOCK_TILES = 64

#: The work of transforming one filter's kernel (one output and one input
#: channel) in PARALLEL_MIN_WORK's units: about 25 ns, some 600 multiply-adds
#: of a product (11-17 ns in chunks since; not measured again).
WINOGRAD_FILTER_COST = 600

#: ``cnn embed`` standardises its rows by default (``retrieval.fit_standardize``:
#: each dimension centred on the index mean and scaled by its spread) once the
#: run embeds at least this many images; below it, a mean and a spread from a
#: handful of rows would be noise, and the rows are stored as pooled (embed.json
#: then records ``pca: null``). Measured on 160 crops of scikit-image's photos in
#: 10 classes (bench/retrieval.py): the default pipeline's precision@1 rose from
#: 0.606 to 0.756. Any value gives correct results; it only changes which space.
STANDARDIZE_MIN_ROWS = 16

#: ``--workers N`` starts a local Dask cluster only for a run of at least this
#: many images; a smaller one runs in this process, and the command says so.
#: Measured on this 2-core machine (cnn apply --save raw --layers last on 200
#: images of 256², interleaved, load average 3-5 from other work), 2 workers
#: against one process, which already runs the engine on every core, with the
#: cluster's start-up counted: 11.3 and 11.7 s against 8.5 and 8.8 s (0.75);
#: in bench/scale.py's rounds 0.53; in a noisier pair 0.94-1.08. Start-up is
#: about 4 s (1-4 s to start, 2-3 s while each worker imports the engine and
#: loads its Numba cache), about 100 images of one process's work, and the
#: workers then only match it: keeping start-up under a tenth of a run takes
#: about 1,000 images. ``CNN_LOCAL_CLUSTER_MIN_IMAGES`` overrides it (0 always
#: starts the cluster: the tests and bench/scale.py do so). Any value gives
#: the same outputs; it only changes the time.
LOCAL_CLUSTER_MIN_IMAGES = 1000


def local_cluster_min_images():
    """LOCAL_CLUSTER_MIN_IMAGES, or the environment's CNN_LOCAL_CLUSTER_MIN_IMAGES (ValueError for a bad one)."""
    text = os.environ.get("CNN_LOCAL_CLUSTER_MIN_IMAGES")
    if text is None:
        return LOCAL_CLUSTER_MIN_IMAGES
    if not text.strip().isdigit():
        raise ValueError(f"CNN_LOCAL_CLUSTER_MIN_IMAGES must be a whole number of images, but got {text!r}")
    return int(text)


# ----------------------------------------------------------------------------- keypoints and matching
# Defaults of cnn keypoints and cnn match (cnn_cli.keypoints, cnn_cli.matching,
# cnn_cli.keypointing), measured with bench/keypoints.py: 6 of scikit-image's
# photos, each under 10 random homographies with photometric changes (seed 0),
# against OpenCV's goodFeaturesToTrack, ORB and SIFT and scikit-image's
# corner_peaks. Unlike the engine's thresholds above, these change which points
# are found and matched; any value still gives a correct result for what it asks.

#: Keypoints per image: ORB's default, and the N of the bench's repeatability.
KEYPOINTS = 500

#: Keep peaks above this fraction of the image's strongest response. Low, so
#: that KEYPOINTS decides how many: at 0.01 (OpenCV's and scikit-image's usual
#: value) a Harris response gives 170-250 points on the bench's photos; at 0.001
#: each gives its 500.
KEYPOINT_THRESHOLD = 0.001

#: D: no two keypoints closer than this many pixels. The harris pipeline's
#: points repeated (at 3 px, one scale) 0.876 at D = 2, 0.870 at 3 and 0.852 at 4;
#: 3 is the min_distance every peer runs with in the bench.
KEYPOINT_MIN_DISTANCE = 3

#: How keypoints are kept D apart (``keypoints.find_peaks``): "distance", the
#: maxima of 3 x 3 windows with each point closer than D to a stronger kept one
#: dropped (goodFeaturesToTrack's rule), or "window", the maxima of (2D+1)^2
#: windows (scikit-image's corner_peaks). The harris pipeline's points repeated
#: 0.870 by distance and 0.822 by window, goodFeaturesToTrack's 0.858; in
#: cnn match (3 scales) the distance rule raised the mean matching accuracy at
#: 1 px from 0.902 to 0.914, the homography found for 59 and 60 of 60 pairs.
KEYPOINT_SUPPRESSION = "distance"

#: Pyramid levels of cnn keypoints. One: the harris pipeline's points repeated
#: 0.870 at one scale, 0.895 at two and 0.890 at three, but two took about 1.5x
#: the time of one, and three 2x.
KEYPOINT_SCALES = 1

#: Size ratio between neighbouring pyramid levels. sqrt(2): two levels per
#: octave, so a view up to 1.4x larger or smaller (the bench's range) has a
#: level within a factor 1.19 of it. SIFT uses 2**(1/3), ORB 1.2: a finer ratio
#: needs more levels, each a response map to compute, for the same range.
KEYPOINT_SCALE_FACTOR = 2 ** 0.5

#: Radius, in pixels of the level a point was found on, of the disc whose
#: intensity centroid gives the point's angle. ORB's patch is 31 px (radius 15);
#: 12 takes 0.64 of its samples, turns with a rotated photo within 5 degrees
#: (tests/test_keypoints.py), and matched all 60 of the bench's pairs.
KEYPOINT_ORIENTATION_RADIUS = 12

#: Window radius up to which non-maximum suppression takes the running maximum
#: of shifted views (2r passes over the map) rather than scipy's maximum_filter
#: (whose cost does not grow with r): on a 512 x 512 float32 map the shifts took
#: 1.4 ms at r = 3, 3.7 at 10 and 7.9 at 24, scipy 8.3 at every r. Either gives
#: the same maxima; only speed moves.
KEYPOINT_SHIFTED_MAX_RADIUS = 20

#: Pyramid levels of cnn match: views of the bench differ in scale by up to
#: 1.4x either way.
MATCH_SCALES = 3

#: Lowe's ratio test (cnn match --ratio): a match is kept when its distance is
#: under this times the second nearest's. On the bench (3 scales), 0.7, 0.8,
#: 0.9 and 1 (mutual nearest neighbours only) gave 214, 242, 267 and 296
#: matches with a mean matching accuracy at 3 px of 0.989, 0.981, 0.957 and
#: 0.904, and a homography within 3 px for 58, 59, 60 and 59 of 60 pairs:
#: Lowe's 0.8 keeps the matches accurate at one pair's cost.
MATCH_RATIO = 0.8

#: RANSAC: a pair is an inlier when the model maps it within this many pixels
#: of its partner (OpenCV's findHomography in the bench takes the same 3). At
#: ratio 0.8, thresholds of 1, 2, 3 and 5 px found the homography for 57, 60,
#: 59 and 59 of the 60 pairs (one pair's difference is within the noise).
RANSAC_THRESHOLD = 3.0

#: RANSAC stops when a better sample is unlikely at this confidence, or after
#: RANSAC_MAX_TRIALS samples. On the bench every pair's matches were 57-100 %
#: inliers (ratios 0.7-1), which needs at most 64 samples at 0.999; 100 and
#: 2000 gave the same homographies. The cap bounds a pair of few inliers: at
#: 25 % inliers 0.999 needs 1,765 samples; 2,000 took 2.3 s for 500 matches
#: here (load average 4.6).
RANSAC_CONFIDENCE = 0.999
RANSAC_MAX_TRIALS = 2000
