"""The ``rtk`` command: ``rtk train|predict|plugins …`` in ``key=value`` style.

``rtk train`` replaces this process with ``python -m toolkit.train …`` (exec),
so the training process's ``sys.argv`` is exactly the module's: Lightning's DDP
re-launches the other ranks from ``sys.argv``, and a dispatcher that only popped
its sub-command would re-launch the wrong program.
"""

from __future__ import annotations

import os
import sys

from toolkit import __version__
from toolkit.errors import ConfigError, ToolkitError

USAGE = f"""rtk {__version__} — Recurrent Toolkit

usage:
  rtk train [key=value …]        train (a Hydra app: -m, --cfg job, --help, hydra.run.dir=… all work)
  rtk predict ckpt=PATH text="…" [text="…" …] [input=FILE]
                                 tag or classify text with a trained checkpoint
  rtk plugins                    list the registered cells, their plugin packages and backends
  rtk report MULTIRUN_DIR [out=DIR]
                                 one table (report.md, report.csv) and a plot (report.png) for a sweep

examples:
  rtk train
  rtk train task=sentiment cell=gru depth=2
  rtk train -m task=ner,sentiment cell=rnn,gru,lstm depth=1,2 direction=uni,bi
  rtk predict ckpt=runs/ner/<date>/checkpoints/best.ckpt text="Harry Potter and Hermione Granger invented a new spell."
"""


def parse_pairs(args: list[str], accepted: dict[str, bool], command: str) -> dict[str, list[str]]:
    """``key=value`` words -> {key: [values]}; ``accepted`` says which keys may repeat."""
    out: dict[str, list[str]] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"rtk {command}: '{arg}' is not key=value (keys: {', '.join(accepted)})")
        if key not in accepted:
            raise ConfigError(f"rtk {command}: unknown key '{key}' (keys: {', '.join(accepted)})")
        if key in out and not accepted[key]:
            raise ConfigError(f"rtk {command}: '{key}' given twice")
        out.setdefault(key, []).append(value)
    return out


def cmd_plugins(args: list[str]) -> int:
    from toolkit.cells import describe_cells

    parse_pairs(args, {}, "plugins")
    rows = describe_cells()
    header = ("cell", "distribution", "version", "backends", "status")
    table = [header] + [(r["name"], r["distribution"], r["version"], ", ".join(r["backends"]) or "-",
                         r["status"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"\n{r['name']} ({r['distribution']} {r['version']}) failed: {r['reason']}")
    return 0


def cmd_predict(args: list[str]) -> int:
    from pathlib import Path

    opts = parse_pairs(args, {"ckpt": False, "text": True, "input": False}, "predict")
    if "ckpt" not in opts:
        raise ConfigError("rtk predict: ckpt=<path to a .ckpt> is required")
    texts = list(opts.get("text", []))
    if "input" in opts:
        path = Path(opts["input"][0])
        if not path.is_file():
            raise ConfigError(f"rtk predict: input={path}: no such file")
        try:
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ConfigError(f"rtk predict: input={path} is not UTF-8 text") from None
    if not texts:
        raise ConfigError('rtk predict: give text="…" (one or more) or input=<file of lines>')
    for i, text in enumerate(texts):
        if not text.strip():
            raise ConfigError(f"rtk predict: text number {i + 1} is empty")
    from toolkit.tasks.base import load_task  # torch and Lightning: only once the arguments are good

    model = load_task(opts["ckpt"][0])
    for i, text in enumerate(texts):
        lines = model.predict_lines(text)
        if i and len(lines) > 1:
            print()  # a blank line between multi-line outputs (one token a line)
        print("\n".join(lines))
    return 0


def cmd_report(args: list[str]) -> int:
    from pathlib import Path

    from toolkit.report import write_report

    positional = [a for a in args if "=" not in a]
    opts = parse_pairs([a for a in args if "=" in a], {"dir": False, "out": False}, "report")
    if len(positional) > 1 or (positional and "dir" in opts):
        raise ConfigError("rtk report: give one multirun directory")
    where = positional[0] if positional else opts.get("dir", [None])[0]
    if where is None:
        raise ConfigError("rtk report: give the multirun directory, e.g. rtk report multirun/2026-11-25_12-00-00")
    out = Path(opts["out"][0]) if "out" in opts else None
    for path in write_report(Path(where), out):
        print(path)
    return 0


COMMANDS = {"predict": cmd_predict, "plugins": cmd_plugins, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"rtk {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        os.execv(sys.executable, [sys.executable, "-m", "toolkit.train", *rest])
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; commands: train, {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except ToolkitError as e:
        if os.environ.get("RTK_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
