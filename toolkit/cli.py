"""The ``rtk`` command: ``rtk train|predict|plugins …`` in ``key=value`` style.

``rtk train`` replaces this process with ``python -m toolkit.train …`` (exec),
so the training process's ``sys.argv`` is exactly the module's: Lightning's DDP
re-launches the other ranks from ``sys.argv``, and a dispatcher that only popped
its sub-command would re-launch the wrong program.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from toolkit import __version__
from toolkit.errors import ConfigError, ToolkitError

USAGE = f"""rtk {__version__} — Recurrent Toolkit

usage:
  rtk train [key=value …]        train (a Hydra app: -m, --cfg job, --help, hydra.run.dir=… all work)
  rtk predict ckpt=PATH text="…" [text="…" …] [input=FILE]
                                 tag or classify text with a trained checkpoint (a series model:
                                 input=FILE.npz / .ts / .csv, a label and probability per sequence)
  rtk generate ckpt=PATH [n=10] [temperature=1.0] [top_k=K] [max_len=100] [seed=S] [prompt="…"]
               [allow_unk=false] [out=FILE.mid]
                                 sample novel sequences from a language model (music: out= writes MIDI)
  rtk score ckpt=PATH text="…" [text="…" …] [input=FILE]
                                 log-probability, per-token probabilities and perplexity; ranks several
  rtk export ckpt=PATH [format=onnx|torchscript] [out=FILE]
                                 the network as ONNX (or TorchScript) plus FILE.json, to serve without the toolkit
  rtk plugins                    list the registered cells, their plugin packages and backends
  rtk report MULTIRUN_DIR [out=DIR]
                                 one table (report.md, report.csv) and a plot (report.png) for a sweep
  rtk diagnose [cells=rnn,gru,lstm] [length=100] [hidden_size=64] [steps=200] [seed=0] [lr=0.01]
               [out=gradients.png]
                                 ||dL/da<t>|| per time step on a long-range task: vanishing gradients, plotted

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
    from toolkit.cells import describe_cells  # torch: only for this command (rtk --help stays instant)

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


def _texts(opts: dict, command: str) -> list[str]:
    """The ``text=`` values, then the non-blank lines of ``input=FILE``; none may be empty."""
    texts = list(opts.get("text", []))
    if "input" in opts:
        path = Path(opts["input"][0])
        if not path.is_file():
            raise ConfigError(f"rtk {command}: input={path}: no such file")
        try:
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ConfigError(f"rtk {command}: input={path} is not UTF-8 text") from None
    if not texts:
        raise ConfigError(f'rtk {command}: give text="…" (one or more) or input=<file of lines>')
    for i, text in enumerate(texts):
        if not text.strip():
            raise ConfigError(f"rtk {command}: text number {i + 1} is empty")
    return texts


def cmd_predict(args: list[str]) -> int:
    opts = parse_pairs(args, {"ckpt": False, "text": True, "input": False}, "predict")
    if "ckpt" not in opts:
        raise ConfigError("rtk predict: ckpt=<path to a .ckpt> is required")
    file_only = "text" not in opts and "input" in opts  # lines of text, or sequences for a head with predict_file
    if file_only and not Path(opts["input"][0]).is_file():
        raise ConfigError(f"rtk predict: input={opts['input'][0]}: no such file")
    try:
        texts = _texts(opts, "predict")
    except ConfigError:
        # not text, but perhaps a binary file of sequences (NumPy .npz) for a head that reads whole files
        if not file_only or Path(opts["input"][0]).suffix.lower() != ".npz":
            raise
        texts = None
    # torch and Lightning: only once the arguments are good
    from toolkit.api import load
    from toolkit.heads import HEADS

    model = load(opts["ckpt"][0])
    if file_only and (predict_file := HEADS[model.head].predict_file) is not None:  # series: .npz / .ts / CSV
        print("\n".join(predict_file(model.task, opts["input"][0])))
        return 0
    if texts is None:
        texts = _texts(opts, "predict")  # the sentence why the file is not text
    for i, lines in enumerate(model.lines(texts)):
        if i and len(lines) > 1:
            print()  # a blank line between multi-line outputs (one token a line)
        print("\n".join(lines))
    return 0


def _int(opts: dict, key: str, default: int | None, command: str, lo: int = 1) -> int | None:
    if key not in opts:
        return default
    try:
        value = int(opts[key][0])
    except ValueError:
        raise ConfigError(f"rtk {command}: {key}={opts[key][0]!r} must be a whole number") from None
    if value < lo:
        raise ConfigError(f"rtk {command}: {key}={value} must be at least {lo}")
    return value


def _float(opts: dict, key: str, default: float, command: str) -> float:
    if key not in opts:
        return default
    try:
        value = float(opts[key][0])
    except ValueError:
        raise ConfigError(f"rtk {command}: {key}={opts[key][0]!r} must be a number") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"rtk {command}: {key}={value} must be 0 or more (0: greedy)")
    return value


def _bool(opts: dict, key: str, default: bool, command: str) -> bool:
    if key not in opts:
        return default
    value = opts[key][0].lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"rtk {command}: {key}={opts[key][0]!r} must be true or false")
    return value in ("true", "1", "yes")


def cmd_generate(args: list[str]) -> int:
    keys = {"ckpt": False, "n": False, "temperature": False, "top_k": False, "max_len": False, "seed": False,
            "prompt": False, "allow_unk": False, "out": False}
    opts = parse_pairs(args, keys, "generate")
    if "ckpt" not in opts:
        raise ConfigError("rtk generate: ckpt=<path to a language model's .ckpt> is required")
    n = _int(opts, "n", 10, "generate")
    top_k = _int(opts, "top_k", None, "generate")
    max_len = _int(opts, "max_len", 100, "generate")
    seed = _int(opts, "seed", None, "generate", lo=0)
    temperature = _float(opts, "temperature", 1.0, "generate")
    allow_unk = _bool(opts, "allow_unk", False, "generate")
    out = Path(opts["out"][0]) if "out" in opts else None
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"rtk generate: out={out}: the folder {out.parent} does not exist")
    from toolkit.api import load  # torch and Lightning: only once the arguments are good

    model = load(opts["ckpt"][0], expect="language_model")
    prompt = model.tokens(opts["prompt"][0]) if "prompt" in opts else None
    if prompt is not None and not prompt:
        raise ConfigError(f"rtk generate: prompt={opts['prompt'][0]!r} has no tokens for this model")
    is_music = model.spec.get("source") == "bach_chorales"
    if out is not None and not is_music:
        raise ConfigError("rtk generate: out=… writes MIDI, which only a music model (task=music) makes")
    samples = model.generate_tokens(n, temperature=temperature, top_k=top_k, max_len=max_len, prompt=prompt,
                                    seed=seed, allow_unk=allow_unk)
    for s in samples:
        print(model.join(s))
    if out is not None:
        from toolkit.data.music import write_midi  # only for music; music21 loads there

        written = []
        for i, s in enumerate(samples):
            path = out if n == 1 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
            written.append(write_midi(s, path))
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_score(args: list[str]) -> int:
    opts = parse_pairs(args, {"ckpt": False, "text": True, "input": False}, "score")
    if "ckpt" not in opts:
        raise ConfigError("rtk score: ckpt=<path to a language model's .ckpt> is required")
    texts = _texts(opts, "score")
    from toolkit.api import load  # torch and Lightning: only once the arguments are good

    model = load(opts["ckpt"][0], expect="language_model")
    for i, text in enumerate(texts):
        if not model.tokens(text):
            raise ConfigError(f"rtk score: text number {i + 1} ({text!r}) has no tokens for this model")
    scored = list(zip(texts, model.score(texts)))
    for text, s in scored:
        print(f"{text}")
        print(f"  log P = {s['total']:.4f} nats ({s['total'] / math.log(2):.4f} bits)   "
              f"perplexity {s['perplexity']:.2f}   {len(s['tokens'])} tokens (with <eos>)")
        print("  " + "  ".join(f"{tok} {math.exp(lp):.4f}" for tok, lp in zip(s["tokens"], s["logp"])))
    if len(scored) > 1:
        print("ranked (most probable first):")
        for rank, (text, s) in enumerate(sorted(scored, key=lambda ts: -ts[1]["total"]), start=1):
            print(f"  {rank}. {s['total']:10.4f}  {text}")
    return 0


def cmd_export(args: list[str]) -> int:
    opts = parse_pairs(args, {"ckpt": False, "format": False, "out": False}, "export")
    if "ckpt" not in opts:
        raise ConfigError("rtk export: ckpt=<path to a .ckpt> is required")
    fmt = opts.get("format", ["onnx"])[0]
    out = Path(opts["out"][0]) if "out" in opts else Path(opts["ckpt"][0]).with_suffix(
        ".onnx" if fmt == "onnx" else ".pt")
    if not out.parent.is_dir():
        raise ConfigError(f"rtk export: out={out}: the folder {out.parent} does not exist")
    # torch, Lightning and the exporters: only once the arguments are good
    from toolkit.api import load
    from toolkit.export import FORMATS, export, require_onnx

    if fmt not in FORMATS:
        raise ConfigError(f"rtk export: format={fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()  # before the checkpoint is read: the install command comes first
    for path in export(load(opts["ckpt"][0]), out, fmt):
        print(f"wrote {path}")
    return 0


def cmd_report(args: list[str]) -> int:
    from toolkit.report import write_report  # only for this command

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


def _diagnose_whole(opts: dict, key: str, default: int, least: int) -> int:
    raw = opts.get(key, [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < least:
        raise ConfigError(f"rtk diagnose: {key}={raw!r} must be a whole number of at least {least}")
    return value


def cmd_diagnose(args: list[str]) -> int:
    """``rtk diagnose [cells=rnn,gru,lstm] [length=100] [hidden_size=64] [steps=200] [seed=0] [lr=0.01]
    [out=gradients.png]``"""
    from toolkit.cells import available_cells  # torch: only for this command
    from toolkit.diagnose import diagnose  # torch and Lightning: only for this command

    keys = ("cells", "length", "hidden_size", "steps", "seed", "lr", "out")
    opts = parse_pairs(args, dict.fromkeys(keys, False), "diagnose")
    cells = [c.strip() for c in opts.get("cells", ["rnn,gru,lstm"])[0].split(",") if c.strip()]
    known = available_cells()
    if not cells:
        raise ConfigError(f"rtk diagnose: cells= is empty; available cells: {', '.join(known)}")
    for cell in cells:
        if cell not in known:
            raise ConfigError(f"rtk diagnose: unknown cell '{cell}'; available cells: {', '.join(known)}")
    if len(set(cells)) != len(cells):
        raise ConfigError(f"rtk diagnose: cells={','.join(cells)} names a cell twice")
    length = _diagnose_whole(opts, "length", 100, 2)
    hidden_size = _diagnose_whole(opts, "hidden_size", 64, 1)
    steps = _diagnose_whole(opts, "steps", 200, 0)
    seed = _diagnose_whole(opts, "seed", 0, 0)
    raw_lr = opts.get("lr", ["0.01"])[0]
    try:
        lr = float(raw_lr)
    except ValueError:
        lr = math.nan
    if not lr > 0 or math.isinf(lr):
        raise ConfigError(f"rtk diagnose: lr={raw_lr!r} must be a positive number")
    out = Path(opts.get("out", ["gradients.png"])[0])
    if out.suffix.lower() != ".png":
        raise ConfigError(f"rtk diagnose: out={out} must name a .png file")
    if not out.parent.is_dir():
        raise ConfigError(f"rtk diagnose: out={out}: the directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"rtk diagnose: out={out}: the directory {out.parent} is not writable")
    print(f"first-symbol task: length {length}, hidden {hidden_size}, {steps} Adam steps (lr {lr:g}) per cell, "
          f"seed {seed}; ||dL/da<t>|| at distance d from the loss, mean over 256 held-out sequences", flush=True)
    start = time.perf_counter()
    results, text = diagnose(cells, length, hidden_size, steps, seed, out, lr)
    print(text)
    print(f"wrote {out} ({time.perf_counter() - start:.1f}s)")
    return 0


COMMANDS = {"predict": cmd_predict, "generate": cmd_generate, "score": cmd_score, "plugins": cmd_plugins,
            "report": cmd_report, "diagnose": cmd_diagnose, "export": cmd_export}


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
