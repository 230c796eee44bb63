"""Benchmark-only harness: record resident memory at the start of every training epoch.

Put this folder on PYTHONPATH and set RTK_BENCH_RSS=<file>; benchmarks/memory.py does both.
"""

import os

if os.environ.get("RTK_BENCH_RSS"):
    import resource  # noqa: F401  (imported early: the harness must not allocate during training)

    import toolkit.callbacks as callbacks

    start = callbacks.Reproducible.on_train_epoch_start

    def on_train_epoch_start(self, trainer, pl_module):
        with open("/proc/self/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        with open(os.environ["RTK_BENCH_RSS"], "a") as out:
            out.write(f"{trainer.current_epoch}\t{rss_kb / 1024:.1f}\n")
        start(self, trainer, pl_module)

    callbacks.Reproducible.on_train_epoch_start = on_train_epoch_start
