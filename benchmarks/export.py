"""Inference latency of an exported model: onnxruntime vs the toolkit's torch model, side by side.

One model (a unidirectional LSTM classifier of the default size, random weights: latency
does not depend on what was learned) is exported with ``toolkit.export`` and both run the
same inputs, round-robin in one process (``timing.compare``), with the same number of
threads (onnxruntime's intra-op pool set to torch's). Outputs are checked equal first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import Row
from benchmarks.timing import compare


def missing() -> list[str]:
    """A note when the export extra is missing (the section is then skipped)."""
    from importlib.util import find_spec

    if all(find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")):
        return []
    return ['note: skipped the export rows: onnx / onnxruntime are not installed (pip install '
            '"recurrent-toolkit[export]")']


def model(hidden: int, embedding: int, vocab: int):
    from toolkit.api import wrap
    from toolkit.tasks.classification import ClassificationTask

    spec = {"kind": "classification", "tokenizer": "words", "normalize": "lower",
            "vocab": ["<pad>", "<unk>", *(f"w{i}" for i in range(vocab - 2))], "labels": ["neg", "pos"]}
    torch.manual_seed(0)
    return wrap(ClassificationTask(spec=spec, cell={"name": "lstm"}, hidden_size=hidden, embedding_dim=embedding))


def latency(repeats: int, warmup: int, hidden: int = 128, embedding: int = 100, vocab: int = 5000,
            length: int = 50) -> list[Row]:
    import onnxruntime

    from toolkit.export import ExportNet, example_inputs, export, reference

    m = model(hidden, embedding, vocab)
    net = ExportNet(m)
    with tempfile.TemporaryDirectory() as tmp:
        path, _, _ = export(m, Path(tmp) / "bench.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rows = []
    cases = [("batch 1, one step (streaming: T = 1, state carried in)", 1, 1),
             (f"batch 32, T ≤ {length} (padded, lengths given)", 32, length)]
    for case, batch, T in cases:
        inputs = example_inputs(net, batch, T, seed=1)
        feed = {k: v.numpy() for k, v in zip(names, inputs)}
        expected = reference(m, inputs)
        for got, want in zip(session.run(None, feed), expected, strict=True):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)

        def run_torch():
            with torch.no_grad():
                reference(m, inputs)

        times = compare({"torch": run_torch, "onnxruntime": lambda: session.run(None, feed)}, repeats, warmup)
        t, o = times["torch"], times["onnxruntime"]
        rows.append(Row("export", case, f"torch {t * 1e3:.3f} ms, onnxruntime {o * 1e3:.3f} ms", o / t))
    return rows
