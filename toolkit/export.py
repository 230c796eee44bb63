"""``rtk export``: a trained model as ONNX (or TorchScript) plus a JSON sidecar, to serve without the toolkit.

How the time loop is exported. The layer's own backends cannot be (``python -m
benchmarks.export_tried`` shows it): ``torch.export`` fixes the length of the ``loop``
backend's Python loop and of the fused kernel, and refuses the packing of a padded batch;
the TorchScript-based ONNX exporter (``dynamo=False``) silently unrolls the loop to the
example's length, and maps only the three cells with a fused kernel onto ONNX's ``LSTM`` /
``GRU`` / ``RNN`` (not ``peephole_lstm``, ``gru_simple``, the Cho-form GRU or plugins).
So the exported network runs each layer and direction as ``torch._higher_order_ops.scan``
over time with the cell's own ``forward`` as the step; the dynamo ONNX exporter turns that
into one ONNX ``Scan`` node whose length is the input's, so batch size and length are
both dynamic. Padding is handled as in the layer: past a sequence's end the state
freezes and the output is zero, and the reverse direction reads each sequence from its
own last token. Everything around the encoder (embeddings, character CNN, pooling,
output layer) is the head's own ``forward``, run unchanged.

``format=torchscript``: the same network traced by ``torch.jit.trace``, except the time
loops, which are ``torch.jit.script``-ed loops around each traced cell step, so the saved
model (``torch.jit.load``, no toolkit needed) keeps a loop of the input's length.

Inputs and outputs (names in the sidecar): ``tokens`` (B, T) int64, tagging also
``shapes`` (B, T) and ``chars`` (B, T, W) int64, a tagger trained with ``data.gazetteer``
also ``gazetteer`` (B, T, 2 x types) float32 (each token's phrase flags), a classifier trained
with ``data.lexicon`` also ``lexicon`` (B, T) float32 (each token's score), ``lengths`` (B,)
int64, then one
initial-state tensor per state name, each (num_layers * num_directions, B, H) (zeros to
start); outputs ``logits`` (tagging, language model: (B, T, K); classification: (B, K))
and ``final_<name>``, the final state in the same layout, so a stream can be continued step by step.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch._higher_order_ops import scan

from toolkit import __version__
from toolkit.data import classification, tagging, text
from toolkit.data.text import SHAPES
from toolkit.errors import ConfigError, ToolkitError
from toolkit.layers import Recurrent
from toolkit.stream import carried_state

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # what the exported network may differ from the model by (fp32, other kernels)
INSTALL = 'pip install "recurrent-toolkit[export]"'


class ExportError(ToolkitError):
    """A model cannot be exported as asked."""


def export_recurrent(rnn: Recurrent, x: Tensor, lengths: Tensor, state: tuple[Tensor, ...],
                     direction) -> tuple[Tensor, tuple]:
    """``rnn(x, lengths, state)`` (eval mode, batch-first) with each layer and direction run by
    ``direction(i, x, mask, s0) -> (y, final)``: the cell ``rnn.cells[i]`` over x (B, T, I),
    left to right, state frozen and output zero where ``mask`` (B, T, 1) is False.

    Same contract as ``Recurrent.forward``: y (B, T, H * D), zero at padded steps, and the
    final state in the layer's layout, each sequence's at its own last step; the reverse
    direction reads each sequence from its own last token.
    """
    B, T, _ = x.shape
    D = rnn.num_directions
    steps = torch.arange(T, device=x.device)
    mask = steps[None, :] < lengths[:, None]  # (B, T)
    rev_index = torch.where(mask, lengths[:, None] - 1 - steps[None, :], steps[None, :])  # (B, T)
    finals = []
    inp = x
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(D):
            i = layer * D + d
            y, final = direction(i, inp if d == 0 else _flip(inp, rev_index), mask[..., None],
                                 tuple(s[i] for s in state))
            outs.append(y if d == 0 else _flip(y, rev_index))
            finals.append(final)
        inp = outs[0] if D == 1 else torch.cat(outs, dim=-1)  # (B, T, H * D)
    return inp, tuple(torch.stack([f[k] for f in finals]) for k in range(len(rnn.state_names)))


def _flip(x: Tensor, rev_index: Tensor) -> Tensor:
    return x.gather(1, rev_index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def scan_direction(rnn: Recurrent):
    """One direction as ``scan`` over time (ONNX ``Scan`` through the dynamo exporter)."""

    def direction(i: int, x: Tensor, mask: Tensor, s0: tuple[Tensor, ...]) -> tuple[Tensor, tuple]:
        cell = rnn.cells[i]

        def step(carry, xs):
            x_t, m_t = xs  # (B, I), (B, 1)
            y, new = cell(x_t, carry)
            new = tuple(torch.where(m_t, n, c) for n, c in zip(new, carry))
            return new, torch.where(m_t, y, 0.0)

        final, ys = scan(step, s0, (x.transpose(0, 1), mask.transpose(0, 1)))
        return ys.transpose(0, 1), final  # (B, T, H)

    return direction


class _StackedStep(nn.Module):
    """The cell's step on its state stacked into one (S, B, H) tensor (TorchScript has no
    variable-length tuples)."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x_t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        y, new = self.cell(x_t, tuple(s.unbind(0)))
        return y, torch.stack(new)


class _ScriptedLoop(nn.Module):
    """A TorchScript loop over time around a traced step: the loop stays a loop in the saved model."""

    def __init__(self, step: nn.Module):
        super().__init__()
        self.step = step

    def forward(self, x: Tensor, mask: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        ys: list[Tensor] = []
        for t in range(x.size(1)):
            y, new = self.step(x[:, t], s)
            m = mask[:, t]  # (B, 1)
            s = torch.where(m.unsqueeze(0), new, s)
            ys.append(torch.where(m, y, torch.zeros_like(y)))
        return torch.stack(ys, 1), s


def script_direction(loops: nn.ModuleList):
    """One direction as a scripted loop (``loops[i]``, see :func:`scripted_loops`)."""

    def direction(i: int, x: Tensor, mask: Tensor, s0: tuple[Tensor, ...]) -> tuple[Tensor, tuple]:
        y, final = loops[i](x, mask, torch.stack(s0))
        return y, tuple(final.unbind(0))

    return direction


def scripted_loops(rnn: Recurrent) -> nn.ModuleList:
    loops = []
    for cell in rnn.cells:
        example = (torch.randn(2, cell.input_size), torch.randn(len(rnn.state_names), 2, cell.hidden_size))
        loops.append(torch.jit.script(_ScriptedLoop(torch.jit.trace(_StackedStep(cell), example))))
    return nn.ModuleList(loops)


class ExportNet(nn.Module):
    """The head's forward with the encoder run by :func:`export_recurrent`, as plain tensors in and out."""

    def __init__(self, model, loops: nn.ModuleList | None = None):
        super().__init__()
        self.task = model.task.eval()
        self.loops = loops  # TorchScript: the scripted time loops; None: scan (ONNX)
        self.model = model  # not a submodule: its task is
        self.input_names = list(model.export_inputs)
        self.state_names = [f"state_{n}" for n in self.task.rnn.state_names]
        self.output_names = ["logits", *(f"final_{n}" for n in self.task.rnn.state_names)]

    def forward(self, *args: Tensor):
        n = len(self.input_names)
        inputs = dict(zip(self.input_names, args[:n]))
        state = tuple(args[n:])
        rnn = self.task.rnn
        direction = scan_direction(rnn) if self.loops is None else script_direction(self.loops)
        run = lambda x, lengths, s: export_recurrent(rnn, x, lengths, s, direction)  # noqa: E731
        with carried_state(rnn, state, run=run) as carry:
            logits = self.model.export_logits(inputs)
        return (logits, *carry.final)


def example_inputs(net: ExportNet, batch: int = 2, length: int = 5, seed: int = 0, width: int = 4) -> tuple[Tensor, ...]:
    """Random inputs of the network's signature (lengths 1..length, the first one full; taggers:
    ``width`` characters a word)."""
    g = torch.Generator().manual_seed(seed)
    task = net.task
    vocab = len(task.vocab)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    pad = torch.arange(length)[None, :] >= lengths[:, None]  # (B, T)
    tokens = torch.randint(1, vocab, (batch, length), generator=g).masked_fill(pad, 0)
    make = {"tokens": lambda: tokens, "lengths": lambda: lengths,
            "shapes": lambda: torch.randint(1, len(SHAPES), (batch, length), generator=g).masked_fill(pad, 0),
            "chars": lambda: torch.randint(1, len(task.chars.itos), (batch, length, width),
                                           generator=g).masked_fill(pad[..., None], 0),
            "lexicon": lambda: (torch.rand((batch, length), generator=g) * 2 - 1).masked_fill(pad, 0),
            "gazetteer": lambda: (torch.rand((batch, length, 2 * len(task.hparams.spec["gazetteer"]["types"])),
                                             generator=g) < 0.3).float().masked_fill(pad[..., None], 0)}
    out = [make[name]() for name in net.input_names]
    rnn = task.rnn
    shape = (rnn.num_layers * rnn.num_directions, batch, rnn.hidden_size)
    out += [torch.randn(shape, generator=g) * 0.1 for _ in rnn.state_names]
    return tuple(out)


def check_exportable(model) -> None:
    """Refuse, in one sentence, what this exporter cannot export with a dynamic length."""
    if reason := model.export_refusal():
        raise ExportError(reason)


def sidecar(model, net: ExportNet, fmt: str, file: str) -> dict:
    """The JSON written beside the network: what a server needs to encode text and read outputs."""
    task, spec = model.task, model.spec
    rnn = task.rnn
    tok = spec["tokenizer"]
    pattern = {"tweet": text._TWEET.pattern, "words": text._WORDS.pattern}.get(tok)
    out = {
        "format": fmt, "file": file, "head": model.head, "text_module": TEXT_MODULE,
        "inputs": net.input_names + net.state_names, "outputs": net.output_names,
        "tokenizer": {"name": tok, "regex": pattern,
                      "lowercase_first": tok == "words",
                      "how": inspect.getdoc(text.tokenize)},
        "normalize": spec["normalize"],
        "vocab": list(task.vocab.itos), "pad_id": 0, "unk_id": 1,
        "labels": list(model.labels),
        "state": {"names": list(rnn.state_names), "num_layers": rnn.num_layers,
                  "num_directions": rnn.num_directions, "hidden_size": rnn.hidden_size,
                  "layout": "(num_layers * num_directions, batch, hidden_size), row layer * num_directions + "
                            "direction (direction 0: left to right, 1: right to left); zeros to start"},
        "cell": dict(task.hparams.cell),
    }
    out.update(model.export_meta())
    return out


TEXT_MODULE = "rtk_text.py"


def text_module_source() -> str:
    """``rtk_text.py``, written beside every export: the toolkit's own tokenizers, normaliser,
    token shapes, vocabulary and encoders (their source, copied at export time, so a server
    encodes text exactly as training did), needing only Python's standard library."""
    from_text = [text.tokenize, text.normalize, text.shape, text.Vocab]
    from_modules = [tagging.gazetteer_features, tagging.encode_tagging, classification.lexicon_scores,
                    classification.encode_text]
    return "\n\n".join([
        f'"""Text encoding of the Recurrent Toolkit {__version__}, written by `rtk export`: '
        "the source of\n" + ", ".join(f"toolkit.data.text.{f.__name__}" for f in from_text) + " and "
        + ", ".join(f"{f.__module__}.{f.__name__}" for f in from_modules)
        + ',\nunchanged. Standard library only."""',
        "from __future__ import annotations\n\nimport re\nfrom collections import Counter\n"
        "from collections.abc import Iterable",
        "\n".join([
            "ConfigError = ValueError",
            f"PAD, UNK, EOS = {text.PAD!r}, {text.UNK!r}, {text.EOS!r}",
            f"PAD_ID, UNK_ID = {text.PAD_ID}, {text.UNK_ID}",
            f"_TWEET = re.compile({text._TWEET.pattern!r})",
            f"_WORDS = re.compile({text._WORDS.pattern!r})",
            f"SHAPES = {text.SHAPES!r}",
            "_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}",
            f"MAX_WORD_CHARS = {tagging.MAX_WORD_CHARS}"]),
        *(inspect.getsource(f).strip() for f in from_text + from_modules)]) + "\n"


def require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"format=onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                          f"installed; install {'it' if len(missing) == 1 else 'them'} with: {INSTALL}")


def write_onnx(model, path: Path) -> ExportNet:
    net = ExportNet(model).eval()
    args = example_inputs(net)
    batch, time, word = torch.export.Dim("batch"), torch.export.Dim("time"), torch.export.Dim("word")
    dims = {"tokens": {0: batch, 1: time}, "shapes": {0: batch, 1: time}, "chars": {0: batch, 1: time, 2: word},
            "lexicon": {0: batch, 1: time}, "gazetteer": {0: batch, 1: time}, "lengths": {0: batch}}
    dynamic = tuple(dims.get(name, {1: batch}) for name in net.input_names + net.state_names)
    program = torch.export.export(net, args, dynamic_shapes={"args": dynamic}, strict=False)
    onnx_program = torch.onnx.export(program, args, input_names=net.input_names + net.state_names,
                                     output_names=net.output_names, dynamo=True, external_data=False,
                                     verbose=False)
    onnx_program.save(str(path))
    return net


def write_torchscript(model, path: Path) -> ExportNet:
    net = ExportNet(model, scripted_loops(model.task.rnn)).eval()
    task = model.task
    task._jit_is_scripting = True  # Lightning's flag: its `trainer` property must not raise while traced
    try:
        traced = torch.jit.trace(net, example_inputs(net), check_trace=False)
    finally:
        task._jit_is_scripting = False
    traced.save(str(path))
    return net


def reference(model, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    """The outputs the export must give: the head's forward with the layer's own backend
    (not the export's time loop), from the same initial state."""
    net = ExportNet(model)
    n = len(net.input_names)
    named = dict(zip(net.input_names, inputs[:n]))
    with torch.no_grad(), carried_state(model.task.rnn, tuple(inputs[n:])) as carry:
        logits = model.export_logits(named)
    return [logits, *carry.final]


def run_exported(path: Path, fmt: str, inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
    """Run a written network: onnxruntime (ONNX) or ``torch.jit.load`` (TorchScript)."""
    if fmt == "onnx":
        import onnxruntime  # an optional dependency (the export extra): only for ONNX

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return session.run(None, {k: v.numpy() for k, v in zip(names, inputs)})
    with torch.no_grad():
        return [t.numpy() for t in torch.jit.load(str(path))(*inputs)]


def max_difference(model, path: Path, fmt: str, inputs: tuple[Tensor, ...]) -> float:
    got = run_exported(path, fmt, inputs)
    expected = reference(model, inputs)
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))


@contextlib.contextmanager
def _quiet():
    """The exporters' chatter (torchvision ops not registered, pytree deprecations) is not the user's
    business; an export that fails still raises."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export(model, out: str | Path, fmt: str = "onnx") -> tuple[Path, Path, Path]:
    """Write ``model`` to ``out``, its sidecar to ``out`` + ``.json`` and ``rtk_text.py`` (see
    :func:`text_module_source`) beside them; returns the three paths.

    Nothing is left behind when it fails: the network is written under a temporary name,
    loaded back and run on a batch of another size, length and word width than the export example
    (so a model fixed to the example's shape cannot pass), and moved into place only when
    its outputs and final state equal the model's own within 1e-4.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    check_exportable(model)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    try:
        with torch.no_grad(), _quiet():
            net = write_onnx(model, tmp) if fmt == "onnx" else write_torchscript(model, tmp)
            worst = max_difference(model, tmp, fmt, example_inputs(net, batch=3, length=7, seed=1, width=6))
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, ToolkitError):
            raise
        raise ExportError(f"cell '{model.task.hparams.cell['name']}' could not be exported with a dynamic length "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not worst <= TOLERANCE:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"the exported {model.task.hparams.cell['name']} model differs from the model by {worst:.2g} "
                          f"(more than {TOLERANCE}) on a batch unlike the export example, so it was not written")
    text_module = out.parent / TEXT_MODULE
    text_module.write_text(text_module_source(), encoding="utf-8")
    side = out.with_name(out.name + ".json")
    side.write_text(json.dumps(sidecar(model, net, fmt, out.name), indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    tmp.replace(out)
    return out, side, text_module
