"""Run the suite, print the table, write docs/performance.md and docs/performance.png.

    python -m benchmarks [--quick] [--out docs/performance.md] [--only SECTION ...]
    python -m benchmarks --gpu [--quick] [--out docs/performance.md]     (benchmarks/gpu.py)

The full suite takes ~10 minutes on 2 CPU cores; ``--quick`` runs every section at
tiny sizes with one repeat (seconds; the numbers mean nothing) and writes only
when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the named sources are packages; never the hub

from benchmarks import export, kernels, pipeline, timing  # noqa: E402
from benchmarks.report import SECTIONS, Row, marked_block, markdown, plot, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# (shape, repeats, warmup) per size. Full: the shape of issue 5; repeats chosen so the
# whole suite stays near 10 minutes on the 2-core machine the issue measured on.
FULL = {"shape": kernels.Shape(), "repeats": 7, "warmup": 2, "matmul": 2048, "long": [256, 1024, 4096],
        "long_repeats": 3, "e2e_repeats": 3, "e2e_batches": None, "pad_repeats": 3, "pad_batches": None,
        "lm_batches": 20, "overrides": [], "export_repeats": 50, "export": {}}
QUICK = {"shape": kernels.Shape(T=6, B=3, I=8, H=8), "repeats": 1, "warmup": 0, "matmul": 64, "long": [16, 32],
         "long_repeats": 1, "e2e_repeats": 1, "e2e_batches": 2, "pad_repeats": 1, "pad_batches": 2,
         "lm_batches": 2, "overrides": ["hidden_size=8", "model.embedding_dim=8"], "export_repeats": 2,
         "export": {"hidden": 8, "embedding": 8, "vocab": 20, "length": 6}}


def settings_text(p: dict) -> str:
    s = p["shape"]
    clock = {"cpu": "process CPU time", "wall": "wall clock"}[timing.CLOCK]
    return (f"T={s.T}, batch {s.B}, input {s.I}, hidden {s.H}, fp32, CPU; every comparison round-robin in one "
            f"process, timed by {clock} (end to end: wall clock of the training steps), {p['warmup']} warm-up round(s), median of {p['repeats']} repeats (long sequences "
            f"{p['long_repeats']}, end to end and padding {p['e2e_repeats']} epochs each).")


def run_suite(p: dict, only: list[str] | None = None, log=print) -> list[Row]:
    s = p["shape"]
    steps = {
        "layer overhead": lambda: kernels.layer_overhead(s, p["repeats"], p["warmup"]),
        "custom cells": lambda: kernels.custom_cells(s, p["repeats"], p["warmup"]),
        "throughput vs the machine": lambda: kernels.throughput(s, p["matmul"], p["repeats"], p["warmup"]),
        "end to end": lambda: pipeline.end_to_end(p["e2e_repeats"], p["overrides"], p["e2e_batches"]),
        "padding": lambda: pipeline.padding(["ner", "sentiment"], p["pad_repeats"], p["overrides"], p["pad_batches"]),
        "long sequences": lambda: kernels.long_sequences(s, p["long"], p["long_repeats"], 1),
        "language-model softmax": lambda: pipeline.lm_softmax(p["e2e_repeats"], p["overrides"], p["lm_batches"]),
        "training step": lambda: pipeline.training_step(p["e2e_repeats"], p["overrides"], p["lm_batches"]),
        "export": lambda: [] if export.missing() else export.latency(p["export_repeats"], 1, **p["export"]),
    }
    rows: list[Row] = []
    for section in SECTIONS:
        if only and section not in only:
            continue
        start = time.perf_counter()
        for note in kernels.missing_plugins(section) + (export.missing() if section == "export" else []):
            log(note)
        part = steps[section]()
        log(table(part) + f"\n  ({time.perf_counter() - start:.0f} s)")
        rows += part
    return rows


def write(rows: list[Row], out: Path, command: str, settings: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, command, settings) + "\n"
    gpu = marked_block(out.read_text()) if out.exists() else None
    if gpu is not None:  # the GPU section is measured elsewhere (benchmarks/gpu_check.sh): keep it
        text += "\n" + gpu + "\n"
    out.write_text(text)
    plot(rows, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    parser.add_argument("--out", type=Path, default=None,
                        help="Markdown file to write (the plot goes next to it as .png); "
                             "default docs/performance.md, or nothing with --quick")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections: {', '.join(repr(s) for s in SECTIONS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--clock", choices=sorted(timing.CLOCKS), default=timing.CLOCK,
                        help="time each repeat by process CPU time (cpu, default: robust on a shared "
                             "machine) or by wall clock (wall)")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU suite instead (benchmarks/gpu.py): needs CUDA, or --quick for a dry run on the CPU")
    parser.add_argument("--cuda-tests", type=Path, default=None, metavar="JUNIT_XML",
                        help="with --gpu: the `pytest -m cuda` JUnit file whose counts the GPU section reports")
    args = parser.parse_args(argv)
    timing.CLOCK = args.clock
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("toolkit").setLevel(logging.WARNING)
    command = "python -m benchmarks" + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    if args.gpu:
        if args.only:
            parser.error("--only picks sections of the CPU suite; --gpu runs every GPU section")
        from benchmarks import gpu

        out = args.out if args.out is not None or args.quick else REPO / "docs" / "performance.md"
        return gpu.main(args.quick, out, command, args.cuda_tests)
    p = QUICK if args.quick else FULL
    out = args.out if args.out is not None or args.quick else REPO / "docs" / "performance.md"
    start = time.perf_counter()
    rows = run_suite(p, args.only)
    missed = [r for r in rows if r.status == "missed"]
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s; "
          f"{sum(r.status == 'met' for r in rows)} targets met, {len(missed)} missed")
    if out is not None:
        write(rows, out, command, settings_text(p))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
