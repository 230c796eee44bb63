"""The table of results: rows, targets from issue 5, Markdown and a plot."""

from __future__ import annotations

import datetime
import platform
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SECTIONS = ("layer overhead", "custom cells", "throughput vs the machine", "end to end",
            "padding", "long sequences", "language-model softmax", "training step", "export")


@dataclass
class Row:
    """One measurement. ``value`` is what the target is about (a ratio, a fraction);
    ``measured`` the raw numbers behind it; ``target`` e.g. ("<=", 1.05)."""

    section: str
    case: str
    measured: str
    value: float
    unit: str = "x"  # "x": a ratio; "%": a fraction shown as a percentage
    target: tuple[str, float] | None = None

    @property
    def status(self) -> str:
        if self.target is None:
            return "—"
        op, bound = self.target
        ok = {"<=": self.value <= bound, ">=": self.value >= bound, "<": self.value < bound}[op]
        return "met" if ok else "missed"

    def fmt(self, v: float) -> str:
        return f"{v:.1%}" if self.unit == "%" else f"{v:.2f}x"

    def cells(self) -> list[str]:
        target = "—" if self.target is None else f"{self.target[0].replace('<=', '≤').replace('>=', '≥')} {self.fmt(self.target[1])}"
        status = {"met": "met", "missed": "**missed**"}.get(self.status, "—")
        return [self.case, self.measured, self.fmt(self.value), target, status]


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus (nproc)": str(os.cpu_count()), "cpu model": model, "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "python": platform.python_version(),
            # other processes' load makes a 2-core run noisy: say how busy the machine was when writing
            "load average (1, 5, 15 min) at the end": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}


def table(rows: list[Row]) -> str:
    """Plain-text table for the terminal."""
    out = []
    for section in SECTIONS:
        part = [r for r in rows if r.section == section]
        if not part:
            continue
        out.append(f"\n== {section}")
        for r in part:
            case, measured, value, target, status = r.cells()
            out.append(f"  {case:<46} {value:>8}  target {target:<8} {status.strip('*'):<6}  {measured}")
    return "\n".join(out)


INTRO = {
    "layer overhead": "`Recurrent(cell=…, backend=auto)` over the bare `nn.LSTM` / `nn.GRU` / `nn.RNN` of the same "
                      "shape with the same weights (outputs checked equal). Variable lengths: `Recurrent(x, lengths)` "
                      "vs the torch module on a `PackedSequence` (pack + run + pad, what a user writes); "
                      "\"output only\": `Recurrent(x, lengths, final_state=False)`, what the task heads call, which "
                      "on the CPU runs the padded batch unpacked in training (fwd+bwd), each direction its own kernel call, "
                      "and packed without autograd (inference) and on a GPU. Ratio = "
                      "toolkit time / torch time.",
    "custom cells": "Cells with no fused kernel, as `backend=auto` runs them, over `nn.LSTM` of the same size "
                    "(fixed lengths, one layer, one direction). Ratio = cell time / `nn.LSTM` time.",
    "throughput vs the machine": "Inference GFLOP/s of the LSTM path, counting 2·B·T·4H·(I+H) per layer and "
                                 "direction, as a fraction of a large fp32 matmul's GFLOP/s measured in the same run.",
    "end to end": "One NER training epoch: the full toolkit (real data module, `TaggingTask`, a Lightning `Trainer` "
                  "with the callbacks, checkpointing, CSV logger and `trainer=cpu` settings that `rtk train` uses) vs "
                  "a minimal PyTorch loop (same model, same batches, plain Adam, no Lightning). Timed from the "
                  "start of the epoch to the end of its last training step (validation and checkpointing at the "
                  "epoch end are left out of both). Ratio = toolkit tokens/s / hand loop tokens/s.",
    "padding": "Padded positions over one training epoch of `BucketBatchSampler` batches (`padding_fraction()`), "
               "with and without bucketing, and the speed of the task model's forward + backward over those "
               "batches (ratio = bucketed tokens/s / unbucketed tokens/s).",
    "long sequences": "minGRU (plugin `rtk-mingru`, `backend=sequence`: the log-space scan) vs the fused `nn.GRU`. "
                      "Ratio = minGRU time / `nn.GRU` time (below 1: the scan wins). Issue 5 sets no target here.",
    "language-model softmax": "`word_lm` training steps (forward, backward, Adam) on the same KJV batches with the "
                              "full softmax and with `model.softmax=adaptive`. Ratio = full time / adaptive time "
                              "(above 1: the adaptive softmax is faster). No target: a speed the perplexity must "
                              "pay for (docs/learning.md).",
    "training step": "`sentiment`'s default model and training batches on the CPU: the toolkit's `dropout` (its keep "
                     "mask drawn as U(0, 1) >= p) against torch's `F.dropout` (drawn by `bernoulli_`), its optimiser "
                     "(torch's fused Adam step) against the per-tensor Adam, and the whole training step (forward and "
                     "backward with the adversarial pass, clipping, Adam) with both against neither. Ratio = toolkit "
                     "time / torch time (below 1: the toolkit is faster). No target: issue 10 sets one on the "
                     "training time, measured in docs/results.md.",
    "export": "Inference latency of one model exported by `rtk export format=onnx` (a unidirectional LSTM "
              "classifier, hidden 128, embedding 100, 5,000 words) run by onnxruntime vs the same model in torch "
              "(the toolkit's own forward), on the same inputs, outputs checked equal (1e-4) first; onnxruntime "
              "gets torch's thread count. Ratio = onnxruntime time / torch time (below 1: onnxruntime is faster). "
              "Issue 14 sets no target.",
}


NOTES = Path(__file__).with_name("notes.md")


def markdown(rows: list[Row], command: str, settings: str) -> str:
    info = machine()
    lines = ["# Performance", "",
             "Generated by the benchmark suite in `benchmarks/` — do not edit by hand. Reproduce with:", "",
             "```", command, "```", "",
             "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in info.items()], "",
             f"Method: {settings}", "",
             "Targets are those of issue 5 (CPU, this machine, medians of one run).", ""]
    met = [r for r in rows if r.status == "met"]
    missed = [r for r in rows if r.status == "missed"]
    lines += [f"**{len(met)} targets met, {len(missed)} missed.**", "",
              "| section | rows | targets met | targets missed |", "|---|---|---|---|"]
    for section in SECTIONS:
        part = [r for r in rows if r.section == section]
        if part:
            lines.append(f"| {section} | {len(part)} | {sum(r.status == 'met' for r in part)} | "
                         f"{sum(r.status == 'missed' for r in part)} |")
    lines.append("")
    lines += ["![ratios](performance.png)", ""]
    lines += section_tables(rows, SECTIONS, INTRO, lambda name: f"## {name[0].upper()}{name[1:]}")
    if NOTES.exists():  # hand-written notes on the work behind the numbers, kept across runs
        lines += [NOTES.read_text().strip(), ""]
    return "\n".join(lines)


# The GPU section (benchmarks/gpu.py) lives between these markers at the end of the
# report; a CPU run keeps it, a GPU run replaces it, neither touches the other's part.
GPU_START = "<!-- gpu-check: start (written by benchmarks/gpu_check.sh; a rerun replaces it up to the end marker) -->"
GPU_END = "<!-- gpu-check: end -->"


def marked_block(text: str) -> str | None:
    """The GPU block of a report, markers included, or None when it has none."""
    start, end = text.find(GPU_START), text.find(GPU_END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(GPU_END)]


def replace_marked(text: str, body: str) -> str:
    """``text`` with its GPU block's body replaced by ``body`` (the block is appended when missing)."""
    block = f"{GPU_START}\n{body.strip()}\n{GPU_END}"
    old = marked_block(text)
    if old is None:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text.replace(old, block)


SHORT = {"layer overhead": "layer", "custom cells": "cell", "throughput vs the machine": "GFLOP/s",
         "end to end": "e2e", "padding": "padding", "long sequences": "long",
         "language-model softmax": "lm softmax", "training step": "step", "export": "onnx"}


def plot(rows: list[Row], path: Path) -> None:
    """Horizontal bars of every row, coloured by status, with the target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"met": "#2a9d8f", "missed": "#e76f51", "—": "#9aa5b1"}
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.5))
    labels = [f"{SHORT[r.section]}: {r.case}" for r in rows][::-1]
    values = [max(r.value, 1e-3) for r in rows][::-1]
    ax.barh(range(len(rows)), values, color=[colours[r.status] for r in rows][::-1])
    for y, r in enumerate(rows[::-1]):
        if r.target is not None:
            ax.plot([r.target[1]] * 2, [y - 0.45, y + 0.45], color="black", linewidth=1.5)
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("ratio (log scale; black tick: target; green met, red missed, grey no target)")
    ax.set_title(f"Recurrent Toolkit vs torch and the machine — {machine()['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section_tables(rows: list, sections, intro: dict, heading) -> list[str]:
    """One Markdown table per section that has rows: ``heading(name)``, its intro, then the rows."""
    lines: list[str] = []
    for name in sections:
        part = [r for r in rows if r.section == name]
        if not part:
            continue
        lines += [heading(name), "", intro[name], "",
                  "| case | measured (medians) | ratio | target | status |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r.cells()) + " |" for r in part]
        lines.append("")
    return lines
