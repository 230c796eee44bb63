"""The GPU part of the suite: the kernel tables on CUDA with peak memory, and training tokens/s.

    python -m benchmarks --gpu            # needs CUDA; writes the GPU section of docs/performance.md
    python -m benchmarks --gpu --quick    # tiny sizes, on CUDA, else on the CPU (the dry run); writes only with --out

``benchmarks/gpu_check.sh`` runs this after the ``pytest -m cuda`` tests. It reuses the
CPU suite's comparisons (``kernels.py``, ``pipeline.py``, ``timing.compare``) with
``device="cuda"``: every call waits for its kernels and is timed by the wall clock. The
CPU figure next to each training is measured the same way, in the same run, with every
core of the machine. Each section runs on its own: one that fails is named in the report
and in the exit code (1), and the others still measure.
"""

from __future__ import annotations

import copy
import datetime
import functools
import itertools
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from benchmarks import kernels, pipeline, timing
from benchmarks.report import Row, replace_marked, section_tables
from toolkit.layers import Recurrent

FULL = {"shape": kernels.Shape(), "repeats": 7, "warmup": 2, "long": [1024, 4096, 16384], "long_repeats": 3,
        "train_batches": 100, "train_repeats": 2, "overrides": []}
QUICK = {"shape": kernels.Shape(T=6, B=3, I=8, H=8), "repeats": 1, "warmup": 0, "long": [16, 32],
         "long_repeats": 1, "train_batches": 2, "train_repeats": 1,
         "overrides": ["hidden_size=8", "model.embedding_dim=8"]}

SECTIONS = ("numerics", "layer overhead", "custom cells", "long sequences", "training")
TASKS = ("ner", "word_lm")
# (trainer config, precision): the CPU reference first, then the two GPU precisions of the issue.
TRAININGS = (("cpu", "32-true"), ("gpu", "32-true"), ("gpu", "bf16-mixed"))

INTRO = {
    "numerics": "How far the fused path (`backend=native`) is from `loop` at the size of the tables, forward, "
                "with TF32 as torch sets it by default and with TF32 off (`pytest -m cuda` holds every backend "
                "to 1e-5 with it off). Ratio = largest difference / 1e-5.",
    "layer overhead": "`Recurrent(backend=auto)` (the `native` path: cuDNN) over the bare `nn.LSTM` / `nn.GRU` / "
                      "`nn.RNN` with the same weights, as in the CPU table above. Ratio = toolkit / torch.",
    "custom cells": "Cells with no fused kernel, as `backend=auto` runs them, over cuDNN's `nn.LSTM` of the same "
                    "size. Ratio = cell / `nn.LSTM`. The targets are issue 5's, set for the CPU.",
    "long sequences": "minGRU's log-space scan (`backend=sequence`) vs cuDNN's `nn.GRU`, batch 32, input 128, "
                      "hidden 256. Ratio = minGRU / `nn.GRU` (below 1: the scan wins).",
    "training": "One training epoch (the first N batches) through the Trainer, callbacks and logger `rtk train` "
                "builds (`benchmarks/pipeline.py`), timed from the start of the epoch to the end of its last "
                "step; `trainer=cpu` uses every core of this machine. Ratio = tokens/s over the `trainer=cpu` "
                "row's. Peak = `torch.cuda.max_memory_allocated` over the epoch.",
}


def run_gpu(p: dict, device: str, log=print, after=None) -> tuple[list[Row], list[str]]:
    """Every GPU section on ``device`` ("cuda", or "cpu" for the dry run): rows, and one line per failed
    step. ``after(rows, failed, pending)`` is called when each step ends (to write what is done)."""
    clock, timing.CLOCK = timing.CLOCK, "wall"  # GPU work is not the process's CPU time; each call synchronises
    try:
        return _run_steps(p, device, log, after)
    finally:
        timing.CLOCK = clock


def _run_steps(p: dict, device: str, log, after) -> tuple[list[Row], list[str]]:
    s = p["shape"]
    failed: list[str] = []
    steps = [
        ("numerics", lambda: numerics(s, device)),
        ("layer overhead", lambda: kernels.layer_overhead(s, p["repeats"], p["warmup"], device)),
        ("custom cells", lambda: kernels.custom_cells(s, p["repeats"], p["warmup"], device)),
        ("long sequences", lambda: kernels.long_sequences(s, p["long"], p["long_repeats"], 1, device)),
        *[(f"training {task}", functools.partial(training, task, p, device, failed)) for task in TASKS],
    ]
    rows: list[Row] = []
    for i, (name, fn) in enumerate(steps):
        start = time.perf_counter()
        try:
            part = fn()
        except Exception as e:  # one broken step must not cost the others' numbers
            traceback.print_exc()
            failed.append(f"{name}: {short(e)}")
            log(f"\n== {name}: FAILED ({failed[-1]})")
        else:
            log(text_table(name, part) + f"\n  ({time.perf_counter() - start:.0f} s)")
            rows += part
        if after is not None:
            after(rows, failed, [n for n, _ in steps[i + 1:]])
    return rows, failed


def numerics(s: kernels.Shape, device: str) -> list[Row]:
    """max |native - loop| of each fused cell's output, with torch's TF32 defaults and with TF32 off."""
    x, lengths = kernels.inputs(s, device=device)
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    rows = []
    for cell in ("lstm", "gru", "rnn"):
        torch.manual_seed(0)
        native = Recurrent(cell, s.I, s.H, backend="native").to(device)
        loop = Recurrent(cell, s.I, s.H, backend="loop").to(device)
        loop.load_state_dict(native.state_dict())
        for tf32_off in (False, True):
            old = [f.allow_tf32 for f in flags]
            if tf32_off:
                for f in flags:
                    f.allow_tf32 = False
            state = ", ".join(f"{n} TF32 {'on' if f.allow_tf32 else 'off'}" for n, f in zip(("cuDNN", "matmul"), flags))
            try:
                with torch.no_grad():
                    diff = (native(x, lengths)[0] - loop(x, lengths)[0]).abs().max().item()
            finally:
                for f, v in zip(flags, old):
                    f.allow_tf32 = v
            rows.append(Row("numerics", f"{cell}: native vs loop, {'TF32 off' if tf32_off else 'torch defaults'}",
                            f"largest difference {diff:.1e} ({state})", diff / 1e-5, target=("<=", 1.0)))
    return rows


def short(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def training(task: str, p: dict, device: str, failed: list[str]) -> list[Row]:
    """tokens/s of one epoch of ``task`` under each of TRAININGS (on the CPU in the dry run). A setting
    that fails (bf16 on a GPU without it, say) is added to ``failed``; the others still measure."""
    warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning")  # advice on workers, batch counts: noise here
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda",
                 "lightning_fabric.utilities.seed"):  # "GPU available: …", tips: one per Trainer, 18 Trainers
        logging.getLogger(name).setLevel(logging.WARNING)
    base = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2",
            "patience=null", *p["overrides"]]
    configs = {}
    for trainer, precision in TRAININGS:
        extra = ["trainer.accelerator=cpu"] if device == "cpu" and trainer == "gpu" else []  # the dry run
        configs[(trainer, precision)] = pipeline.compose(task, [f"trainer={trainer}", f"trainer.precision={precision}",
                                                                *base, *extra])
    dm, model = pipeline.build(configs[TRAININGS[0]])  # one data module and model for all: the key ignores trainer
    initial = copy.deepcopy(model.state_dict())
    n_batches = min(len(dm.train_dataloader()), p["train_batches"])
    dm.train_sampler.set_epoch(0)
    tokens = sum(int(b["lengths"].sum()) for b in itertools.islice(dm.train_dataloader(), n_batches))
    peaks: dict[tuple, float] = {}
    counter = itertools.count()

    def epoch(key, cfg, run_dir: Path):
        cfg.trainer.limit_train_batches = n_batches
        on_gpu = cfg.trainer.accelerator == "gpu"

        def run() -> float:
            model.load_state_dict(initial)
            dm.start_epoch = 0
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            seconds = pipeline.lightning_epoch(cfg, dm, model, n_batches, run_dir / f"run{next(counter)}")
            if on_gpu:
                peaks[key] = max(peaks.get(key, 0.0), torch.cuda.max_memory_allocated() / 2**20)
            return seconds
        return run

    with tempfile.TemporaryDirectory() as tmp:
        candidates = {}
        for key, cfg in configs.items():
            fn = epoch(key, cfg, Path(tmp))
            try:
                fn()  # the warm-up epoch, alone: a setting that cannot train drops out here
            except Exception as e:
                traceback.print_exc()
                failed.append(f"training {task}: trainer={key[0]}, precision {key[1]}: {short(e)}")
            else:
                candidates[key] = fn
        t = timing.compare(candidates, p["train_repeats"], warmup=0, self_timed=True) if candidates else {}
    cpu_seconds = t.get(TRAININGS[0])
    rows = []
    for (trainer, precision), seconds in t.items():
        where = " (run on the CPU: dry run)" if device == "cpu" and trainer == "gpu" else ""
        peak = peaks.get((trainer, precision))
        rows.append(Row("training", f"{task}: trainer={trainer}, precision {precision}{where}",
                        f"{tokens / seconds:,.0f} tok/s ({seconds:.2f} s for {n_batches} batches, {tokens:,} tokens)"
                        + (f"; peak {peak:,.0f} MiB" if peak is not None else ""),
                        cpu_seconds / seconds if cpu_seconds else float("nan")))
    return rows


def text_table(section: str, rows: list[Row]) -> str:
    lines = [f"\n== {section}"]
    for r in rows:
        case, measured, value, target, status = r.cells()
        lines.append(f"  {case:<70} {value:>8}  target {target:<8} {status.strip('*'):<6}  {measured}")
    return "\n".join(lines)


def machine(device: str) -> dict[str, str]:
    info = {}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        info["CUDA / cuDNN"] = f"{torch.version.cuda} / {torch.backends.cudnn.version()}"
        info["TF32"] = (f"cuDNN {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmul "
                        f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} (torch's defaults, as a user gets them)")
    else:
        info["gpu"] = "none: a dry run on the CPU, nothing here is a GPU measurement"
    info.update({"cpus (nproc)": str(os.cpu_count()), "torch": torch.__version__,
                 "torch threads (CPU rows)": str(torch.get_num_threads()), "python": platform.python_version(),
                 "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")})
    return info


def cuda_tests(junit: Path | None) -> str | None:
    """'N passed, N failed, N skipped' from the ``pytest -m cuda`` JUnit file the script wrote."""
    if junit is None or not junit.is_file():
        return None
    root = ElementTree.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return (f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped "
            f"in {float(suite.get('time', 0)):.0f} s")


def section(rows: list[Row], failed: list[str], device: str, command: str, settings: str,
            tests: str | None, pending: list[str] = ()) -> str:
    """The Markdown of the GPU block (without its markers)."""
    origin = ("Generated by `bash benchmarks/gpu_check.sh` on a machine with CUDA — do not edit by hand."
              if device == "cuda" else
              "A **dry run** of `bash benchmarks/gpu_check.sh` on the CPU: it checks the steps, the numbers mean nothing.")
    lines = ["## GPU", "", f"{origin} The step that wrote it:", "", "```", command, "```", "",
             "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in machine(device).items()], "",
             f"Method: {settings}", ""]
    if tests is not None:
        lines += [f"`pytest -m cuda` on this machine (every backend of every cell vs `loop` on CUDA, dtype and "
                  f"device, a CUDA-trained checkpoint predicting on the CPU): **{tests}**.", ""]
    if failed:
        lines += ["**Did not complete:**", "", *[f"- {f}" for f in failed], ""]
    if pending:  # written after each section: this stays if the run is stopped before the end
        lines += [f"**Not reached (the run stopped first):** {', '.join(pending)}.", ""]
    lines += section_tables(rows, SECTIONS, INTRO, lambda name: f"### GPU: {name}")
    return "\n".join(lines)


def settings_text(p: dict, device: str) -> str:
    s = p["shape"]
    return (f"kernels at T={s.T}, batch {s.B}, input {s.I}, hidden {s.H}, fp32, on {device}; long sequences at "
            f"T={', '.join(map(str, p['long']))}; trainings of {p['train_batches']} batches at most. Every "
            f"comparison round-robin in one process, wall clock, each call synchronised; {p['warmup']} warm-up "
            f"round(s), median of {p['repeats']} repeats (long sequences {p['long_repeats']}, trainings "
            f"{p['train_repeats']} epochs after one warm-up epoch). Peak = CUDA memory a call allocates above what "
            f"was allocated before it (`torch.cuda.max_memory_allocated`).")


def main(quick: bool, out: Path | None, command: str, junit: Path | None = None) -> int:
    if torch.cuda.is_available():
        device = "cuda"
    elif quick:
        device = "cpu"
    else:
        print(f"error: python -m benchmarks --gpu needs a CUDA device and torch {torch.__version__} sees none "
              "(torch.cuda.is_available() is False); --gpu --quick runs the same steps on the CPU at tiny size",
              file=sys.stderr)
        return 2
    p = QUICK if quick else FULL
    tests = cuda_tests(junit)

    def write(rows: list[Row], failed: list[str], pending: list[str]) -> None:
        if out is None:
            return
        text = out.read_text() if out.exists() else "# Performance\n"
        out.write_text(replace_marked(text, section(rows, failed, device, command, settings_text(p, device),
                                                    tests, pending)))

    start = time.perf_counter()
    rows, failed = run_gpu(p, device, after=write)
    print(f"\n{len(rows)} GPU rows on {device} in {time.perf_counter() - start:.0f} s; "
          f"{len(failed)} section(s) failed" + "".join(f"\n  failed: {f}" for f in failed))
    if out is not None:
        print(f"wrote the GPU section of {out}")
    return 1 if failed else 0
