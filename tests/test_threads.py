"""cnn_cli.functional.threads.split: every slice once, errors raised to the caller, and callers on
several Python threads at once (one takes the engine's bell threads, the others its pool)."""

import threading

import pytest

threads = pytest.importorskip("cnn_cli.functional.threads")


def _covered(total, parts):
    seen = []
    lock = threading.Lock()

    def call(lo, hi):
        with lock:
            seen.extend(range(lo, hi))

    threads.split(call, total, parts)
    return sorted(seen)


@pytest.mark.parametrize("total, parts", [(2, 2), (7, 3), (100, 2), (1, 2), (5, 8)])
def test_split_runs_every_index_once(total, parts):
    assert _covered(total, parts) == list(range(total))


def test_an_error_on_another_thread_reaches_the_caller_and_the_next_split_works():
    def call(lo, hi):
        if lo > 0:
            raise ValueError("slice failed")

    with pytest.raises(ValueError, match="slice failed"):
        threads.split(call, 4, 2)
    assert _covered(10, 2) == list(range(10))


def test_splits_from_several_threads_at_once_each_cover_their_range():
    results, errors = {}, []
    start = threading.Barrier(4)

    def caller(k):
        try:
            start.wait()
            for _ in range(50):
                got = _covered(20 + k, 2)
                assert got == list(range(20 + k))
            results[k] = True
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors and len(results) == 4


def test_a_split_inside_a_slice_runs_on_that_thread():
    inner = []

    def call(lo, hi):
        inner.append((threads.in_pool(), _covered(6, 2)))

    threads.split(call, 2, 2)
    assert sorted(covered for _, covered in inner) == [list(range(6))] * 2
    assert sorted(on_pool for on_pool, _ in inner) == [False, True]  # the caller's slice, and the other thread's


def test_every_slice_finishes_before_a_failed_split_returns():
    import time

    done = []

    def call(lo, hi):
        if lo == 1:
            raise ValueError("a slice failed")
        time.sleep(0.05 if lo else 0)
        done.append(lo)

    with pytest.raises(ValueError, match="a slice failed"):
        threads.split(call, 3, 3)
    assert sorted(done) == [0, 2]  # the slow slice ran to its end before the error came back
    assert _covered(10, 2) == list(range(10))


def test_a_call_is_planned_for_threads_only_where_it_gets_them(monkeypatch):
    """``parallel``: from PARALLEL_MIN_WORK, with more than one thread, and not inside one part of a
    split, where a call planned for two threads would run both parts on its own one."""
    from cnn_cli import config

    monkeypatch.setattr(config, "THREADS", 2)
    big, small = config.PARALLEL_MIN_WORK, config.PARALLEL_MIN_WORK - 1
    assert threads.parallel(big) and not threads.parallel(small)
    with threads.alone():
        assert not threads.parallel(big)
    seen = []
    threads.split(lambda lo, hi: seen.append(threads.parallel(big)), 2, 2)
    assert sorted(seen) == [False, True]  # the other thread's part runs whole; the caller's own may split
    monkeypatch.setattr(config, "THREADS", 1)
    assert not threads.parallel(big)
