"""What a finished run shows a person: a one-screen summary and a training-curve plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def plot_curves(metrics_csv: Path, out: Path, monitor: str) -> Path | None:
    """Loss per epoch (train, validation) and the monitored metric, as a PNG."""
    rows = read_metrics(metrics_csv)
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        for key in ("train_loss_epoch", "val_loss", monitor):
            value = row.get(key)
            if value not in (None, ""):
                series.setdefault(key, {})[epoch] = float(value)  # last value of the epoch
    if not series:
        return None
    import matplotlib  # here, not at the top: a second of start-up, only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in ("train_loss_epoch", "val_loss"):
        if key in series:
            xs = sorted(series[key])
            axes[0].plot(xs, [series[key][x] for x in xs], marker="o", label=key)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    axes[0].legend()
    if monitor in series:
        xs = sorted(series[monitor])
        axes[1].plot(xs, [series[monitor][x] for x in xs], marker="o", color="C2")
    axes[1].set(xlabel="epoch", title=monitor)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def render(*, task: str, cell: str, backend: str, depth: int, direction: str, hidden_size: int,
           params: int, epochs: int, best_epoch: int | None, seconds: float,
           test: dict[str, float] | None, run_dir: Path, files: list[str],
           showcase: tuple[str, list[str]] | None = None, resumed_from: str | None = None,
           notes: list[str] | None = None, no_test: str = "(no test split)") -> str:
    """The summary as text (printed and kept as summary.txt)."""
    title = f" Recurrent Toolkit · {task} "
    lines = [f"{title:─^72}",
             f"model    {cell} ({backend}) · depth {depth} · {direction}directional · hidden {hidden_size}"
             f" · {params:,} parameters",
             f"training {epochs} epoch{'s' if epochs != 1 else ''}"
             + (f" (best at epoch {best_epoch})" if best_epoch is not None else "")
             + f" · {fmt_duration(seconds)}"]
    if resumed_from:
        lines.append(f"resumed  from {resumed_from}")
    for note in notes or []:  # e.g. no validation ran, so the test used the final weights
        lines.append(f"note     {note}")
    if test:
        shown = "  ".join(f"{k.removeprefix('test_')} {v:.4f}" for k, v in test.items()
                          if not math.isnan(v))
        lines.append(f"test     {shown}")
    else:
        lines.append(f"test     {no_test}")
    lines.append(f"run dir  {run_dir}")
    lines.append(f"         {' · '.join(files)}")
    if showcase:  # the head's own closing lines: a prediction on the task's example, samples, …
        heading, shown = showcase
        for i, line in enumerate(shown):
            lines.append(f"{heading if i == 0 else '':<8} {line}")
    lines.append("─" * 72)
    return "\n".join(lines)
