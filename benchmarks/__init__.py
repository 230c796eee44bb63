"""Benchmarks of the toolkit against bare torch and against the machine.

    python -m benchmarks            # the full suite (~10 minutes on 2 CPU cores); writes docs/performance.md + .png
    python -m benchmarks --quick    # tiny sizes, one repeat: checks the suite runs, prints the table

Every comparison runs its candidates side by side in one process, round-robin
(warm-up first, then several repeats, the median of each), so a busy machine
slows all candidates alike. ``memory.py`` (resident memory per epoch) is a
separate script.
"""
