"""Resident memory across epochs of a real training run: does anything grow?

    python benchmarks/memory.py [epochs] [task]      (defaults: 20 peptides)

Trains through the real app (metrics, logging, checkpoints every epoch) and
prints the RSS at the start of each epoch, the growth from epoch 2 to the last
(epoch 1 still allocates optimiser state and caches), and the per-epoch slope.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    task = sys.argv[2] if len(sys.argv) > 2 else "peptides"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "rss.tsv"
        env = dict(os.environ, RTK_BENCH_RSS=str(log), HF_DATASETS_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join([str(HERE / "memory"), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "toolkit.train", f"task={task}", f"trainer.max_epochs={epochs}",
               "patience=null", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp}/run"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
            return done.returncode
        rows = [line.split("\t") for line in log.read_text().splitlines()]
    rss = [float(mb) for _, mb in rows]
    print("epoch  RSS MiB")
    for epoch, mb in rows:
        print(f"{epoch:>5}  {mb}")
    tail = rss[1:]
    slope = (tail[-1] - tail[0]) / max(1, len(tail) - 1)
    print(f"\n{task}, {epochs} epochs: start {rss[0]:.1f} MiB, epoch 1 {rss[1]:.1f} MiB, "
          f"last {rss[-1]:.1f} MiB; growth after epoch 1: {tail[-1] - tail[0]:+.1f} MiB ({slope:+.2f} MiB/epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
