"""The engine's thread pool: ``config.THREADS - 1`` sleeping threads, shared by every call.

The Numba kernels release the GIL (``nogil``), and so does numpy's matmul,
so Python threads run them at once (see ``cnn_cli.kernels._jit`` for why
threads and not ``prange``). A call too small to repay waking another thread
runs on the calling thread.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading

import numpy as np

from .. import config

_pool = None
_POOL_PREFIX = "cnn-engine"
_bells = None  # (pid, [_Bell]): made on first use, and again in a forked child
_bells_free = threading.Lock()  # held by the one call using them; others take the pool
_local = threading.local()  # .alone: see alone()


def submit(call, *args):
    """Run ``call(*args)`` on the shared pool of ``config.THREADS - 1`` sleeping threads; returns its future."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=max(1, config.THREADS - 1), thread_name_prefix=_POOL_PREFIX)
    return _pool.submit(call, *args)


def in_pool():
    """Is this thread running one part of a parallel call: one of the pool's threads, or inside
    ``alone``? Such a thread runs its kernels whole: the other threads have the call's other
    parts, and a pool thread waiting on the pool could wait for itself."""
    return getattr(_local, "alone", False) or threading.current_thread().name.startswith(_POOL_PREFIX)


@contextlib.contextmanager
def alone():
    """Within it, this thread's calls run on this thread only (``in_pool`` is true): for one
    part of work already split between threads, such as a batch (``nn.Network.forward``)."""
    before = getattr(_local, "alone", False)
    _local.alone = True
    try:
        yield
    finally:
        _local.alone = before


def split(call, total, parts):
    """Run ``call(first, last)`` over ``parts`` slices of range(total) at once and wait.

    The first slice runs on this thread and the others on the engine's
    threads: its own ``_Bell`` threads when no other call holds them, else
    the pool.
    """
    bounds = [total * i // parts for i in range(parts + 1)]
    if in_pool():  # a job already on the pool (see conv2d_backward) must not wait on it
        for lo, hi in itertools.pairwise(bounds):
            call(lo, hi)
        return
    slices = [(lo, hi) for lo, hi in itertools.pairwise(bounds[1:]) if hi > lo]
    own = _bells_free.acquire(blocking=False)
    try:
        if own:
            waits = [bell.wait for bell in _ring(slices, call)]
        else:
            waits = [submit(call, lo, hi).result for lo, hi in slices]
        # The first slice runs here: this thread would only wait otherwise, and
        # waking one thread fewer saves a thread's wake-up a call.
        try:
            call(bounds[0], bounds[1])
        finally:
            _wait_all(waits)
    finally:
        if own:
            _bells_free.release()


def _wait_all(waits):
    """Wait for every started slice, then raise the first error among them: a bell given back
    while its thread still ran a job could be rung again by the next call."""
    errors = []
    for wait in waits:
        try:
            wait()
        except BaseException as exc:  # noqa: BLE001 (raised below, after the others finished)
            errors.append(exc)
    if errors:
        raise errors[0]


def _ring(slices, call):
    """Start ``call(lo, hi)`` for each slice on a ``_Bell`` thread of its own; returns those bells."""
    global _bells
    if _bells is None or _bells[0] != os.getpid() or len(_bells[1]) < len(slices):
        _bells = (os.getpid(), [_Bell(i) for i in range(max(config.THREADS - 1, len(slices)))])
    bells = _bells[1][:len(slices)]
    for bell, (lo, hi) in zip(bells, slices):
        bell.ring(call, lo, hi)
    return bells


class _Bell:
    """A sleeping thread woken by a lock for one job at a time: a handoff and back took 20 us where
    the pool's futures took 65 (1,000 empty splits, load average 1.9), on every parallel call."""

    def __init__(self, i):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._job, self._error = None, None
        threading.Thread(target=self._loop, name=f"{_POOL_PREFIX}-bell-{i}", daemon=True).start()

    def _loop(self):
        while True:
            self._go.acquire()
            try:
                self._job()
            except BaseException as exc:  # noqa: BLE001 (raised again on the caller's thread)
                self._error = exc
            self._job = None
            self._done.release()

    def ring(self, call, lo, hi):
        self._job, self._error = (lambda: call(lo, hi)), None
        self._go.release()

    def wait(self):
        """Wait for the job; its exception, if any, is raised here."""
        self._done.acquire()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def parallel(work):
    """Whether a call of ``work`` (about one multiply-add a unit) is split between threads: from
    ``config.PARALLEL_MIN_WORK``, unless this thread runs one part of a split already (``in_pool``).
    Such a call planned for threads it will not get: a MobileNetV2 at batch 8, each half on one
    thread, ran in 62.8 ms with its 1x1 layers cut into tiles for the threads, 57.4 without."""
    return work >= config.PARALLEL_MIN_WORK and config.THREADS > 1 and not in_pool()


def run(kernel, *args, tasks, work):
    """Run a kernel over its tasks: on this thread when ``work`` is too small to repay waking
    others (``parallel``), else split."""
    parts = min(config.THREADS, tasks)
    if not parallel(work) or parts < 2:
        kernel(*args, 0, tasks)
    else:
        split(lambda first, last: kernel(*args, first, last), tasks, parts)


def share(worker, n, most=None):
    """Run ``worker(next_item)`` on every thread (or ``most`` of them) at once, sharing items 0..n-1.

    ``next_item()`` returns the next item nobody has taken, or None when all
    are taken, so a thread slowed down by the rest of a busy machine simply
    takes fewer items, where halves fixed in advance would wait for it.
    """
    taken = itertools.count()  # next() on it is atomic under the GIL

    def next_item():
        item = next(taken)
        return item if item < n else None

    parts = min(config.THREADS, n, most or n)
    if parts < 2:
        worker(next_item)
    else:
        split(lambda first, last: worker(next_item), parts, parts)


def batched_matmul(a, b, out):
    """out[i] = a[i] @ b[i] (``a`` may be one matrix), the batch split between threads.

    This parallelises the matrix products even when BLAS itself runs one
    thread, as the ``cnn`` command sets it: BLAS's own thread pool spins
    between calls and fights the engine's threads on a small machine.
    """
    parts = min(config.THREADS, b.shape[0])
    if parts < 2:
        matmul(a, b, out)
    else:
        split(lambda lo, hi: matmul(a if a.ndim == 2 else a[lo:hi], b[lo:hi], out[lo:hi]), b.shape[0], parts)


def matmul(a, b, out):
    """``np.matmul(a, b, out=out)``, letting NaN and inf propagate as in torch.

    Without numpy's warnings, whose state is per thread, so it is set here,
    on the thread that multiplies.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        np.matmul(a, b, out=out)
