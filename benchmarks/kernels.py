"""Layer-level benchmarks: the toolkit's Recurrent vs bare torch modules and vs a big matmul.

Every function runs on the CPU by default; ``device="cuda"`` runs the same comparison on
a GPU (``benchmarks/gpu.py``): each call then waits for its kernels to finish, and the
measured text adds each candidate's peak CUDA memory (``timing.peak_mib``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from benchmarks.report import Row
from benchmarks.timing import compare, peak_mib
from toolkit.cells import available_cells
from toolkit.layers import Recurrent

TORCH_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

# cells from the repository's plugin packages that some rows measure: cell -> (section, its plugin)
PLUGIN_CELLS = {"layernorm_lstm": ("custom cells", "rtk-layernorm-lstm"), "mingru": ("long sequences", "rtk-mingru")}


def missing_plugins(section: str) -> list[str]:
    """One note per row group of ``section`` skipped because its cell's plugin is not installed."""
    have = set(available_cells())
    return [f"note: skipped the {section} rows of cell '{cell}': its plugin {plugin} is not installed "
            f"(pip install -e plugins/{plugin})"
            for cell, (where, plugin) in PLUGIN_CELLS.items() if where == section and cell not in have]


@dataclass
class Shape:
    T: int = 100
    B: int = 32
    I: int = 128
    H: int = 256


def torch_twin(layer: Recurrent) -> nn.Module:
    """The bare torch module computing exactly what ``layer`` computes (its weights copied in)."""
    ref = TORCH_MODULES[layer.cell_name](layer.input_size, layer.hidden_size, layer.num_layers,
                                         batch_first=True, bidirectional=layer.bidirectional)
    D = layer.num_directions
    with torch.no_grad():
        for i, cell in enumerate(layer.cells):
            suffix = f"_l{i // D}" + ("_reverse" if i % D else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, name + suffix).copy_(getattr(cell, name))
    return ref


def run_torch(ref: nn.Module, x: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return ref(x)[0]
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=x.size(1))[0]


def run_layer(layer: nn.Module, x: Tensor, lengths: Tensor | None) -> Tensor:
    return layer(x, lengths=lengths)[0]


def run_layer_output_only(layer: nn.Module, x: Tensor, lengths: Tensor | None) -> Tensor:
    """What the task heads call: the output only, so a padded batch runs unpacked on the CPU in
    training and packed without autograd."""
    return layer(x, lengths=lengths, final_state=False)[0]


def step(fn, module: nn.Module, x: Tensor, lengths: Tensor | None, train: bool):
    """One forward (+ backward when ``train``) as a zero-argument callable.

    On CUDA it waits for the kernels it launched, so a wall clock times the work, not the launch."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def train_step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        fn(module, x, lengths).sum().backward()
        sync()

    @torch.no_grad()
    def infer_step():
        fn(module, x, lengths)
        sync()

    return train_step if train else infer_step


def inputs(s: Shape, seed: int = 0, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """x (B, T, I) on ``device`` and variable lengths in 1..T (one of them T, as a collated batch
    has) on the CPU, where packing wants them. Drawn on the CPU: the same numbers on every device."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s.B, s.T, s.I, generator=g).to(device).requires_grad_()
    lengths = torch.randint(1, s.T + 1, (s.B,), generator=g)
    lengths[0] = s.T
    return x, lengths


def with_peaks(measured: str, candidates: dict, names: dict[str, str]) -> str:
    """``measured`` plus each candidate's peak CUDA memory, when the candidates run on CUDA."""
    peaks = peak_mib(candidates)
    if not peaks:
        return measured
    return measured + "; peak " + " vs ".join(f"{names[k]} {peaks[k]:,.1f}" for k in names) + " MiB"


def layer_overhead(s: Shape, repeats: int, warmup: int, device: str = "cpu") -> list[Row]:
    x, var = inputs(s, device=device)
    rows = []
    for cell in ("lstm", "gru", "rnn"):
        for bi in (False, True):
            for layers in (1, 2):
                torch.manual_seed(0)
                layer = Recurrent(cell, s.I, s.H, num_layers=layers, bidirectional=bi, backend="auto").to(device)
                ref = torch_twin(layer).to(device)
                # fixed lengths; variable lengths with the final state (packed, as nn.LSTM runs them);
                # variable lengths, the output only (what the task heads ask for: padded in training)
                for lengths, run in ((None, run_layer), (var, run_layer), (var, run_layer_output_only)):
                    with torch.no_grad():  # the comparison is only meaningful if they agree
                        a, b = run(layer, x, lengths), run_torch(ref, x, lengths)
                        assert torch.allclose(a, b, atol=1e-5), f"{cell}: Recurrent and nn.{cell.upper()} disagree"
                    for train in (True, False):
                        layer.train(train), ref.train(train)
                        candidates = {"toolkit": step(run, layer, x, lengths, train),
                                      "torch": step(run_torch, ref, x, lengths, train)}
                        t = compare(candidates, repeats, warmup)
                        which = ("fixed" if lengths is None else
                                 "variable" if run is run_layer else "variable, output only")
                        case = f"{cell} {'bi' if bi else 'uni'} L{layers} {which}, {'fwd+bwd' if train else 'inference'}"
                        torch_name = f"nn.{ref.__class__.__name__}"
                        measured = (f"{t['toolkit'] * 1e3:.1f} ms ({layer.backend}) vs {torch_name} "
                                    f"{t['torch'] * 1e3:.1f} ms")
                        rows.append(Row("layer overhead", case,
                                        with_peaks(measured, candidates, {"toolkit": "toolkit", "torch": torch_name}),
                                        t["toolkit"] / t["torch"], target=("<=", 1.05)))
    return rows


CUSTOM_CELLS = {"peephole_lstm": {}, "gru reset=before": {"reset": "before"}, "layernorm_lstm": {}}
CUSTOM_TARGETS = {True: ("<=", 1.5), False: ("<=", 1.3)}  # fwd+bwd, inference


def custom_cells(s: Shape, repeats: int, warmup: int, device: str = "cpu") -> list[Row]:
    x, _ = inputs(s, device=device)
    torch.manual_seed(0)
    ref = nn.LSTM(s.I, s.H, batch_first=True).to(device)
    have = set(available_cells())
    layers = {name: Recurrent(name.split()[0], s.I, s.H, backend="auto", **hp).to(device)
              for name, hp in CUSTOM_CELLS.items() if name.split()[0] in have}
    rows = []
    for train in (True, False):
        for m in (ref, *layers.values()):
            m.train(train)
        candidates = {"nn.LSTM": step(run_torch, ref, x, None, train)}
        candidates.update({name: step(run_layer, layer, x, None, train) for name, layer in layers.items()})
        t = compare(candidates, repeats, warmup)
        for name, layer in layers.items():
            measured = f"{t[name] * 1e3:.1f} ms ({layer.backend}) vs nn.LSTM {t['nn.LSTM'] * 1e3:.1f} ms"
            pair = {name: candidates[name], "nn.LSTM": candidates["nn.LSTM"]}
            rows.append(Row("custom cells", f"{name}, {'fwd+bwd' if train else 'inference'}",
                            with_peaks(measured, pair, {name: name, "nn.LSTM": "nn.LSTM"}),
                            t[name] / t["nn.LSTM"], target=CUSTOM_TARGETS[train]))
    return rows


def throughput(s: Shape, matmul_n: int, repeats: int, warmup: int) -> list[Row]:
    x, _ = inputs(s)
    torch.manual_seed(0)
    layer = Recurrent("lstm", s.I, s.H, backend="auto").eval()
    ref = torch_twin(layer).eval()
    a, b = torch.randn(matmul_n, matmul_n), torch.randn(matmul_n, matmul_n)
    t = compare({"matmul": lambda: torch.mm(a, b),
                 "toolkit": step(run_layer, layer, x, None, False),
                 "torch": step(run_torch, ref, x, None, False)}, repeats, warmup)
    peak = 2 * matmul_n ** 3 / t["matmul"] / 1e9
    flops = 2 * s.B * s.T * 4 * s.H * (s.I + s.H)  # one layer, one direction
    rows = [Row("throughput vs the machine", f"matmul {matmul_n}x{matmul_n} fp32 (the reference)",
                f"{peak:.1f} GFLOP/s ({t['matmul'] * 1e3:.1f} ms)", 1.0)]
    for key, who, target in (("torch", "nn.LSTM", None), ("toolkit", "Recurrent(lstm)", (">=", 0.80))):
        gflops = flops / t[key] / 1e9
        rows.append(Row("throughput vs the machine", f"{who} inference, uni L1",
                        f"{gflops:.1f} GFLOP/s ({t[key] * 1e3:.1f} ms)", gflops / peak, unit="%", target=target))
    return rows


def long_sequences(s: Shape, lengths: list[int], repeats: int, warmup: int, device: str = "cpu") -> list[Row]:
    if "mingru" not in available_cells():
        return []  # run_suite says why
    torch.manual_seed(0)
    mingru = Recurrent("mingru", s.I, s.H, backend="sequence").to(device)
    gru = nn.GRU(s.I, s.H, batch_first=True).to(device)
    rows = []
    for T in lengths:
        x = torch.randn(s.B, T, s.I).to(device).requires_grad_()
        for train in (True, False):
            mingru.train(train), gru.train(train)
            candidates = {"mingru": step(run_layer, mingru, x, None, train),
                          "gru": step(run_torch, gru, x, None, train)}
            t = compare(candidates, repeats, warmup)
            measured = f"minGRU scan {t['mingru'] * 1e3:.1f} ms vs nn.GRU {t['gru'] * 1e3:.1f} ms"
            rows.append(Row("long sequences", f"T={T}, {'fwd+bwd' if train else 'inference'}",
                            with_peaks(measured, candidates, {"mingru": "minGRU", "gru": "nn.GRU"}),
                            t["mingru"] / t["gru"]))
    return rows
