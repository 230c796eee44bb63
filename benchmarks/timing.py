"""Side-by-side timing: every candidate in the same process, round-robin, medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable


# What a repeat is timed with. "cpu" (process CPU time, all threads) leaves out the time a
# shared machine's neighbours hold the cores: on the 2-core machine of issue 5, wall-clock
# medians of unchanged code moved by up to 1.5x between runs, CPU time by a few percent.
# "wall" (perf_counter) is latency, for an idle machine.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = "cpu"


def compare(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
            self_timed: bool = False) -> dict[str, float]:
    """Median seconds per call of each candidate.

    The candidates take turns (the order reversed every other round), so load from
    other processes and CPU frequency drift fall on all of them alike; the median
    drops the rounds a neighbour's burst spoiled. With ``self_timed`` each candidate
    returns the seconds of the part worth timing (e.g. a training epoch without the
    trainer's setup), and that is what counts.
    """
    for _ in range(warmup):  # allocator, oneDNN primitive caches, lazy imports
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    items = list(candidates.items())
    for r in range(max(1, repeats)):
        for name, fn in (items if r % 2 == 0 else items[::-1]):
            clock = CLOCKS[CLOCK]
            start = clock()
            seconds = fn()
            times[name].append(seconds if self_timed else clock() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_mib(candidates: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Peak CUDA memory (MiB) of one call of each candidate, above what was allocated just
    before it (the weights, the inputs, the other candidates' leftovers), read from
    ``torch.cuda.max_memory_allocated``: the memory the call itself needs. Empty when CUDA
    is not in use, so CPU runs stay as they were."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    peaks = {}
    for name, fn in candidates.items():
        fn()  # leaves this candidate's own leftovers (its gradients) in the baseline, as in the timed calls
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peaks[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return peaks
