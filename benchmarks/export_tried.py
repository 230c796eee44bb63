"""What exporting the layer's own backends gives (docs/export.md, "what was tried").

    python -m benchmarks.export_tried

A one-layer LSTM ``Recurrent`` exported with an example of batch 2, length 5, then run at
batch 3, length 8: through ``torch.export`` (the dynamo ONNX exporter's first step) and
through the TorchScript-based ONNX exporter (``dynamo=False``), with each backend.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from toolkit.layers import Recurrent


class _Layer(torch.nn.Module):
    def __init__(self, backend: str, with_lengths: bool):
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.with_lengths = Recurrent("lstm", 3, 4, backend=backend).eval(), with_lengths

    def forward(self, x, lengths):
        return self.rnn(x, lengths if self.with_lengths else None)[0]


def main() -> None:
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import onnxruntime

    x, lengths = torch.randn(2, 5, 3), torch.tensor([5, 3])
    x2, lengths2 = torch.randn(3, 8, 3), torch.tensor([8, 2, 5])
    for backend, with_lengths in (("loop", False), ("native", False), ("native", True)):
        m = _Layer(backend, with_lengths)
        B, T = torch.export.Dim("B"), torch.export.Dim("T")
        try:
            torch.export.export(m, (x, lengths), dynamic_shapes=({0: B, 1: T}, {0: B}), strict=False)
            said = "exported with a dynamic length"
        except Exception as e:  # what the exporter says is the result here
            said = f"refused: {type(e).__name__}: {str(e).strip().splitlines()[0][:120]}"
        print(f"torch.export, {backend}, lengths={with_lengths}: {said}")
    for backend in ("loop", "native"):
        m = _Layer(backend, True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            torch.onnx.export(m, (x, lengths), str(path), dynamo=False, input_names=["x", "lengths"],
                              dynamic_axes={"x": {0: "B", 1: "T"}, "lengths": {0: "B"}})
            got = onnxruntime.InferenceSession(str(path)).run(None, {"x": x2.numpy(), "lengths": lengths2.numpy()})[0]
        want = m(x2, lengths2).detach().numpy()
        result = (f"max difference {np.abs(got - want).max():.1e}" if got.shape == want.shape
                  else f"returned shape {got.shape} for an input of length 8 (silently fixed-length)")
        print(f"TorchScript-based ONNX exporter, {backend}, lengths=True: {result}")


if __name__ == "__main__":
    main()
