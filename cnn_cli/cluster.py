"""Running work on a Dask cluster: a local one (``--workers N``) or the user's (``--scheduler ADDRESS``).

Dask is an optional extra (``pip install 'cnn-cli[dask]'``); it is imported
only here, and only when a cluster is asked for.

Work goes out as tasks of ``CHUNK`` inputs each. Every task reads, processes
and writes its inputs straight to the output folder and returns only small
results, and the client keeps at most ``WINDOW_PER_THREAD`` tasks per worker
thread in flight, so its memory stays flat however many inputs there are.
When a worker dies mid-task, the scheduler runs the task again elsewhere.

Workers must see the inputs and the output folder at the same paths as the
client (a shared filesystem). They run the engine on one thread each:
Dask sets OMP and MKL threads on its workers, but not NUMBA_NUM_THREADS, which
the engine reads (``config.THREADS``), so a local cluster sets it, and the
README tells users to start their workers with it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import socket
import time

from . import config

#: Inputs per task: enough that the scheduler's few milliseconds per task are
#: noise against a task's seconds, few enough that a dead worker loses little.
CHUNK = 8

#: Tasks in flight per worker thread: one running, one queued behind it.
WINDOW_PER_THREAD = 2

#: Environment of local workers, set before they import numpy or numba.
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


class ClusterError(RuntimeError):
    """Dask is missing, or the cluster cannot be reached or started."""


class ClusterUsageError(ValueError):
    """A --scheduler or --workers value that cannot name a cluster: a usage error."""


#: tcp://HOST:PORT, or HOST:PORT (Dask's default protocol is tcp); HOST a name, IPv4 or [IPv6].
_ADDRESS = re.compile(r"^(?:tcp://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")

#: Seconds to wait for a scheduler to accept a connection and send its greeting.
PROBE_SECONDS = 10.0

#: Bytes of a Dask greeting (msgpack keys of its handshake) that mark a scheduler.
_GREETING_MARKS = (b"compression", b"pickle-protocol")


def scheduler_address(text):
    """``--scheduler TEXT`` as ``tcp://HOST:PORT``; ClusterUsageError saying what is accepted otherwise.

    Only plain TCP is taken: ``tls://`` needs certificates that cnn has no
    options for, ``ucx://`` an extra library, and ``inproc://`` names a
    cluster inside another process, which cnn cannot reach.
    """
    text = str(text).strip()
    match = _ADDRESS.match(text)
    if match is None or not 0 < int(match["port"]) < 65536:
        scheme = text.split("://", 1)[0] + "://" if "://" in text else None
        why = (f"{scheme} is not supported (cnn connects over plain TCP)" if scheme not in (None, "tcp://")
               else "it is not HOST:PORT")
        raise ClusterUsageError(f"--scheduler {text!r}: {why}; give a Dask scheduler's address as "
                                "tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786")
    return f"tcp://{match['host']}:{int(match['port'])}"


def probe_scheduler(address, seconds=None):
    """Check that a Dask scheduler answers at ``address`` (tcp://HOST:PORT) before Dask connects.

    A Dask scheduler greets a new connection at once (its handshake); Dask's own
    client waits for it without a bound, so something else on the port (an HTTP
    server) would hang the command. ClusterError when nothing greets within ``seconds``.
    """
    seconds = PROBE_SECONDS if seconds is None else seconds
    host, port = address[len("tcp://"):].rsplit(":", 1)
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds) as sock:
            sock.settimeout(seconds)
            greeting = b""
            deadline = time.monotonic() + seconds
            while not any(mark in greeting for mark in _GREETING_MARKS) and time.monotonic() < deadline:
                data = sock.recv(4096)
                if not data:
                    break
                greeting += data
    except socket.timeout:
        raise ClusterError(f"cannot reach the scheduler at {address}: something accepted the connection but "
                           f"sent no Dask greeting within {seconds:.0f} s; is it a Dask scheduler?") from None
    except OSError as exc:
        raise ClusterError(f"cannot reach the scheduler at {address}: {exc.strerror or exc}") from None
    if not any(mark in greeting for mark in _GREETING_MARKS):
        raise ClusterError(f"cannot reach the scheduler at {address}: what answered there is not a Dask "
                           "scheduler")


def capped_workers(requested):
    """(workers to start, a note or None): ``--workers`` capped at the cores this machine has
    (``os.cpu_count()``); each local worker is one single-threaded process, so more
    only share the same cores, at a process's memory and start-up each."""
    cores = os.cpu_count() or 1
    if requested <= cores:
        return requested, None
    return cores, (f"--workers {requested}: this machine has {cores} core(s); capped at {cores} worker(s) "
                   "(more would only share the same cores)")


def local_cluster_repays(images):
    """Whether a local cluster is worth starting for a run of at least ``images`` images (the count stops
    at ``config.local_cluster_min_images()``)."""
    return images >= config.local_cluster_min_images()


def require_dask():
    """ClusterError (saying what to install) unless Dask's distributed can be imported."""
    _distributed()


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError("--workers and --scheduler need Dask: pip install 'cnn-cli[dask]'") from None
    return distributed


@contextlib.contextmanager
def _environment(values):
    """``os.environ`` holding ``values`` while the block runs (then as it was).

    Local workers must start with them, not only receive them: a worker (and
    the fork server) imports the command's main module, and so
    ``cnn_cli.config``, which reads NUMBA_NUM_THREADS once, before Dask sets
    the ``env`` it was given. Without this each worker ran the engine on every
    core (config.THREADS 2 here, not 1), two workers on two cores four threads.
    """
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start_method():
    """How local workers start: ``forkserver`` where the platform has it, else Dask's ``spawn``.

    Measured here for 2 workers (issue 28): spawn took 1.9-4.2 s to start and
    0.4-1.0 s to close, forkserver 1.2 s and 0.06 s, since each spawned worker
    imports Python and Dask afresh. The fork server is itself a fresh
    process (not a fork of this one and its threads), so workers start clean.
    """
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class Cluster:
    """A Dask client, and the local cluster it owns if it started one."""

    def __init__(self, *, workers=None, scheduler=None):
        #: When starting began (perf_counter): a run's time counts the start-up too.
        self.started = time.perf_counter()
        distributed = _distributed()
        self.local = None
        try:
            if scheduler:
                scheduler = scheduler_address(scheduler)
                probe_scheduler(scheduler)
                self.client = distributed.Client(scheduler, timeout=f"{PROBE_SECONDS:.0f}s")
            else:
                import dask

                with dask.config.set({"distributed.worker.multiprocessing-method": _start_method()}), \
                        _environment(WORKER_ENV):
                    self.local = distributed.LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True, env=WORKER_ENV,
                        dashboard_address=None, silence_logs=logging.ERROR)
                self.client = distributed.Client(self.local)
        except (OSError, TimeoutError, ClusterError) as exc:
            self.close()
            if isinstance(exc, ClusterError):
                raise
            where = f"the scheduler at {scheduler}" if scheduler else "a local Dask cluster"
            raise ClusterError(f"cannot reach {where}: {exc}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.local is not None:
            self.local.close()

    def threads(self):
        return max(1, sum(self.client.nthreads().values()))

    def map_chunks(self, items, task, *args, lost):
        """Run ``task(chunk, *args)`` over ``items`` in chunks of ``CHUNK``; yield what each returns, item by item.

        ``args`` go to the workers once. For a chunk whose workers kept dying
        (Dask gives up after a few), ``lost(item, message)`` stands in for
        each of its items' results.
        """
        distributed = _distributed()
        shared = self.client.scatter(list(args), broadcast=True, hash=False)
        chunks = iter(lambda it=iter(items): list(itertools.islice(it, CHUNK)), [])
        pending = distributed.as_completed()
        sent = {}

        def submit():
            chunk = next(chunks, None)
            if chunk is None:
                return False
            future = self.client.submit(task, chunk, *shared, pure=False)
            sent[future.key] = chunk
            pending.add(future)
            return True

        for _ in range(WINDOW_PER_THREAD * self.threads()):
            if not submit():
                break
        for future in pending:
            chunk = sent.pop(future.key)
            try:
                results = future.result()
            except distributed.KilledWorker as exc:
                results = [lost(item, f"its worker died on every try ({exc})") for item in chunk]
            future.release()
            yield from results
            submit()

