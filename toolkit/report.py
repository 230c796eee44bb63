"""``rtk report <multirun dir>``: one table (Markdown + CSV) and one plot for a whole sweep.

Each job of a Hydra multirun leaves ``results.json`` (written by the train app)
and ``.hydra/overrides.yaml``; the swept keys are the overrides whose values
differ between jobs. When ``seed`` or ``data.val_fold`` is among them, a second table
groups the jobs that differ only in those (repeats over seeds, or the folds of a
cross-validation) and gives the mean, median and range of each metric per group.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import yaml

from toolkit.errors import ConfigError


def collect(sweep_dir: Path) -> tuple[list[str], list[dict]]:
    """(swept keys, one row per job) from a multirun directory."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"rtk report: {sweep_dir} is not a directory")
    jobs = []
    for results in sorted(sweep_dir.glob("*/results.json"), key=lambda p: _job_order(p.parent.name)):
        job = results.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        pairs = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra."))
        jobs.append((job.name, pairs, json.loads(results.read_text())))
    if not jobs:
        raise ConfigError(f"rtk report: no job under {sweep_dir} has a results.json "
                          "(is it a multirun directory whose jobs finished?)")
    keys = sorted({k for _, pairs, _ in jobs for k in pairs})
    swept = [k for k in keys if len({pairs.get(k) for _, pairs, _ in jobs}) > 1]
    rows = []
    for name, pairs, res in jobs:
        row = {"job": name, **{k: pairs.get(k, "") for k in swept}}
        row.update({k: v for k, v in sorted(res["test"].items())})
        row.update({"best_val": res.get("best_val"), "params": res["params"], "epochs": res["epochs"],
                    "seconds": res["seconds"]})
        rows.append(row)
    return swept, rows


REPEATS = ("seed", "data.val_fold")  # swept keys whose jobs are repeats of one setting


def grouped(swept: list[str], rows: list[dict]) -> tuple[list[str], list[dict]] | None:
    """(columns, one row per setting) over the jobs that differ only in ``REPEATS`` keys; None
    when no such key was swept. Each metric gets ``mean`` and ``median (min-max)``."""
    repeats = [k for k in swept if k in REPEATS]
    if not repeats:
        return None
    keys = [k for k in swept if k not in REPEATS]
    metrics = [k for k in rows[0] if k == "best_val" or k.startswith("test_")]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for setting, jobs in groups.items():
        line = {**dict(zip(keys, setting)), "jobs": len(jobs)}
        for m in metrics:
            values = [job[m] for job in jobs if isinstance(job.get(m), (int, float))]
            if values:
                line[f"{m} mean"] = f"{statistics.fmean(values):.4f}"
                line[f"{m} median (range)"] = (f"{statistics.median(values):.4f} "
                                               f"({min(values):.4f}-{max(values):.4f})")
        out.append(line)
    return list(dict.fromkeys(k for line in out for k in line)), out


def _job_order(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def _fmt(value, column: str = "") -> str:
    if column == "seconds" and isinstance(value, (int, float)):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> list[Path]:
    swept, rows = collect(sweep_dir)
    out_dir = out_dir or sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path, png_path = out_dir / "report.csv", out_dir / "report.md", out_dir / "report.png"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{len(rows)} jobs; swept: {', '.join(swept) or '(nothing differs)'}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c), c) for c in columns) + " |" for row in rows]
    if (table := grouped(swept, rows)) is not None:
        cols, groups = table
        lines += ["", f"Over {' and '.join(k for k in swept if k in REPEATS)}, per setting:", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(g.get(c), c) for c in cols) + " |" for g in groups]
    md_path.write_text("\n".join(lines) + "\n")
    _plot(rows, swept, png_path)
    return [md_path, csv_path, png_path]


def _plot(rows: list[dict], swept: list[str], out: Path) -> None:
    """One bar per job for each test metric (loss left out: it is on another scale)."""
    import matplotlib  # here, not at the top: a second of start-up, only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in rows[0] if k.startswith("test_") and k != "test_loss"]
    labels = [" ".join(f"{k}={row[k]}" for k in swept) or row["job"] for row in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) * max(1, len(metrics))), 4))
    width = 0.8 / max(1, len(metrics))
    for i, metric in enumerate(metrics):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [row.get(metric) or 0 for row in rows], width, label=metric.removeprefix("test_"))
    ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(rows))])
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
