"""Timing helpers shared by the bench scripts.

On a shared, noisy machine only ratios taken in one run mean anything, so
the functions under comparison are run interleaved (a, b, a, b, ...) and
compared by their medians: a burst of noise then hits every contender alike.
"""

import gc
import statistics
import time


def time_once(fn):
    """Seconds taken by one call of ``fn()``, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def rounds_for(seconds_per_round, budget, *, least=3, most=200):
    """How many interleaved rounds fit in ``budget`` seconds, within [least, most]."""
    if seconds_per_round <= 0:
        return most
    return max(least, min(most, int(budget / seconds_per_round)))


def interleaved_medians(fns, rounds):
    """Median seconds per call of each function in ``fns`` (a name -> callable dict).

    Each round calls every function once. The starting function moves on by
    one each round, so that none always runs first or always follows the same
    one (caches, allocator and thread pools keep state from call to call). The
    garbage collector is paused so that its pauses don't land on one contender.
    """
    names = list(fns)
    samples = {name: [] for name in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(rounds):
            start = round_ % len(names)
            for name in names[start:] + names[:start]:
                samples[name].append(time_once(fns[name])[0])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: statistics.median(times) for name, times in samples.items()}
