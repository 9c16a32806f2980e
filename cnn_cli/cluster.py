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

import itertools
import logging

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


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError("--workers and --scheduler need Dask: pip install 'cnn-cli[dask]'") from None
    return distributed


class Cluster:
    """A Dask client, and the local cluster it owns if it started one."""

    def __init__(self, *, workers=None, scheduler=None):
        distributed = _distributed()
        self.local = None
        try:
            if scheduler:
                self.client = distributed.Client(scheduler, timeout="10s")
            else:
                self.local = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, env=WORKER_ENV,
                    dashboard_address=None, silence_logs=logging.ERROR)
                self.client = distributed.Client(self.local)
        except (OSError, TimeoutError) as exc:
            self.close()
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

