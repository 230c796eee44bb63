"""The Recurrent layer: parity with torch, backend agreement, invisible padding."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from toolkit import layers
from toolkit.cells import CellEntry, RecurrentCell, registry
from toolkit.errors import CellError
from toolkit.layers import Recurrent

I, H, B, T = 3, 4, 3, 6
LENGTHS = torch.tensor([6, 2, 4])
DT = torch.float64
NATIVE = ["lstm", "gru", "rnn"]
EVERY_CELL = [("rnn", {}), ("gru_simple", {}), ("gru", {}), ("gru", {"reset": "before"}),
              ("lstm", {}), ("peephole_lstm", {})]


def _layer(cell, backend, num_layers=1, bidirectional=False, **kw) -> Recurrent:
    return Recurrent(cell, I, H, num_layers=num_layers, bidirectional=bidirectional,
                     backend=backend, **kw).to(DT)


def _inputs(layer: Recurrent, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, dtype=DT, generator=g)
    state = tuple(torch.randn(layer.num_layers * layer.num_directions, B, H, dtype=DT, generator=g)
                  for _ in layer.state_names)
    return x, state


def _run_with_grads(layer: Recurrent, x, state, lengths, seed=0):
    """Outputs, final state and gradients (input, initial state, every parameter by name)."""
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    torch.manual_seed(seed)
    y, final = layer(x, lengths=lengths, state=state)
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, dtype=DT, generator=g)).sum()
    loss = loss + sum((f * torch.randn(f.shape, dtype=DT, generator=g)).sum() for f in final)
    names, params = zip(*layer.named_parameters())
    grads = torch.autograd.grad(loss, [x, *state, *params])
    return y, final, dict(zip(["x", *(f"state{i}" for i in range(len(state))), *names], grads))


def _torch_rnn(cell: str, layer: Recurrent) -> nn.RNNBase:
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
    ref = cls(I, H, num_layers=layer.num_layers, bidirectional=layer.bidirectional, batch_first=True).to(DT)
    D = layer.num_directions
    for name, p in ref.named_parameters():  # e.g. weight_ih_l1_reverse
        kind, rest = name.split("_l")
        index = int(rest.split("_")[0]) * D + name.endswith("_reverse")
        with torch.no_grad():
            p.copy_(getattr(layer.cells[index], kind))
    return ref


class _TorchAsLayer(nn.Module):
    """nn.LSTM / GRU / RNN with the layer's call convention, packing when lengths are given."""

    def __init__(self, ref: nn.RNNBase, lstm: bool):
        super().__init__()
        self.ref, self.lstm = ref, lstm

    def forward(self, x, lengths=None, state=None):
        hx = state if self.lstm else state[0]
        if lengths is None:
            y, hn = self.ref(x, hx)
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y, hn = self.ref(packed, hx)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.size(1))
        return y, (tuple(hn) if self.lstm else (hn,))


def _assert_same(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("backend", ["native", "loop"])
@pytest.mark.parametrize("cell", NATIVE)
def test_layer_matches_torchs_rnn_modules_in_outputs_states_and_gradients(cell, backend, num_layers,
                                                                          bidirectional, lengths):
    layer = _layer(cell, backend, num_layers, bidirectional)
    ref = _TorchAsLayer(_torch_rnn(cell, layer), lstm=cell == "lstm")
    x, state = _inputs(layer)
    y, final, grads = _run_with_grads(layer, x, state, lengths)
    y_ref, final_ref, grads_ref = _run_with_grads(ref, x, state, lengths)
    _assert_same(y, y_ref)
    _assert_same(final, final_ref)
    D = layer.num_directions
    for name, g in grads_ref.items():
        if name.startswith("ref."):  # e.g. ref.weight_ih_l1_reverse -> cells.3.weight_ih
            kind, rest = name[4:].split("_l")
            name = f"cells.{int(rest.split('_')[0]) * D + name.endswith('_reverse')}.{kind}"
        _assert_same(grads[name], g)
    assert len(grads) == len(grads_ref)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", NATIVE)
def test_native_and_loop_agree_with_dropout_in_training_under_the_same_seed(cell, num_layers,
                                                                             bidirectional, lengths):
    native = _layer(cell, "native", num_layers, bidirectional, dropout=0.5).train()
    loop = _layer(cell, "loop", num_layers, bidirectional, dropout=0.5).train()
    loop.load_state_dict(native.state_dict())
    x, state = _inputs(native)
    y_n, final_n, grads_n = _run_with_grads(native, x, state, lengths, seed=7)
    y_l, final_l, grads_l = _run_with_grads(loop, x, state, lengths, seed=7)
    _assert_same(y_n, y_l)
    _assert_same(final_n, final_l)
    assert grads_n.keys() == grads_l.keys()
    for name in grads_n:
        _assert_same(grads_n[name], grads_l[name])


def test_dropout_between_layers_acts_in_training_only():
    layer = _layer("lstm", "native", num_layers=2, dropout=0.5)
    x, _ = _inputs(layer)
    torch.manual_seed(0)
    y_train = layer.train()(x)[0]
    y_eval = layer.eval()(x)[0]
    assert not torch.allclose(y_train, y_eval)
    torch.testing.assert_close(layer(x)[0], y_eval)  # eval is deterministic
    no_dropout = _layer("lstm", "native", num_layers=2).eval()
    no_dropout.load_state_dict(layer.state_dict())
    torch.testing.assert_close(no_dropout(x)[0], y_eval)


@pytest.mark.parametrize("backend", ["native", "loop"])
def test_last_layers_output_gets_no_dropout(backend):
    layer = _layer("gru", backend, num_layers=1, bidirectional=True, dropout=0.5)
    x, _ = _inputs(layer)
    torch.testing.assert_close(layer.train()(x)[0], layer.eval()(x)[0])


# ----------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_keeps_each_element_with_probability_one_minus_p_scaled_by_its_inverse(p):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 1.0  # never zero: a zero out is a dropped element
    y = layers.dropout(x, p)
    kept = y != 0
    # 1e6 independent draws: the kept fraction is within 5 standard deviations of 1 - p
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / 1e6) ** 0.5
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert abs(layers.dropout(torch.ones(1000, 1000), p).mean().item() - 1.0) < 0.01  # the mean is kept


def test_dropout_gradient_is_its_mask_scaled_and_the_nn_module_matches_the_function():
    x = (torch.rand(50, 40) + 1.0).requires_grad_()
    torch.manual_seed(3)
    y = layers.dropout(x, 0.25)
    y.backward(torch.full_like(y, 2.0))
    torch.testing.assert_close(x.grad, 2.0 * (y != 0).float() / 0.75)
    torch.manual_seed(3)
    module = layers.Dropout(0.25).train()
    torch.testing.assert_close(module(x), y)  # the same draw from the same seed
    assert repr(module) == "Dropout(p=0.25)"
    torch.testing.assert_close(module.eval()(x), x)


def test_dropout_is_the_identity_in_eval_and_at_p_zero_and_zeros_everything_at_p_one():
    x = torch.randn(4, 5, 6)
    assert layers.dropout(x, 0.5, training=False) is x
    assert layers.dropout(x, 0.0) is x
    assert torch.equal(layers.dropout(x, 1.0), torch.zeros_like(x))


def test_dropout_follows_the_seed_and_keeps_a_low_precision_dtype():
    x = torch.randn(8, 9, 10).to(torch.bfloat16)
    torch.manual_seed(7)
    a = layers.dropout(x, 0.5)
    torch.manual_seed(7)
    b = layers.dropout(x, 0.5)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    assert not torch.equal(a, layers.dropout(x, 0.5))  # the next draw is another mask


@pytest.mark.parametrize("backend", ["auto", "loop"])
@pytest.mark.parametrize("cell, hparams", EVERY_CELL, ids=[c + "-" + "-".join(h.values()) for c, h in EVERY_CELL])
def test_padding_is_invisible_each_sequence_as_if_run_alone(cell, hparams, backend):
    layer = _layer(cell, backend, num_layers=2, bidirectional=True, **hparams)
    x, state = _inputs(layer)
    mask = torch.arange(T)[None, :] < LENGTHS[:, None]
    x = torch.where(mask[..., None], x, 1e3)  # loud padding: must not leak into anything
    y, final = layer(x, lengths=LENGTHS, state=state)
    assert y.shape == (B, T, 2 * H)
    for b, n in enumerate(LENGTHS.tolist()):
        assert torch.equal(y[b, n:], torch.zeros_like(y[b, n:]))  # exactly zero, not small
        y_alone, final_alone = layer(x[b:b + 1, :n], state=tuple(s[:, b:b + 1] for s in state))
        _assert_same(y[b:b + 1, :n], y_alone)
        for f, f_alone in zip(final, final_alone):
            _assert_same(f[:, b:b + 1], f_alone)


@pytest.mark.parametrize("cell, hparams", EVERY_CELL, ids=[c + "-" + "-".join(h.values()) for c, h in EVERY_CELL])
def test_initial_state_passed_in_is_used_and_none_means_zeros(cell, hparams):
    layer = _layer(cell, "auto", num_layers=2, bidirectional=True, **hparams)
    x, state = _inputs(layer)
    zeros = tuple(torch.zeros_like(s) for s in state)
    y_none, final_none = layer(x, lengths=LENGTHS)
    y_zero, final_zero = layer(x, lengths=LENGTHS, state=zeros)
    assert torch.equal(y_none, y_zero) and all(map(torch.equal, final_none, final_zero))
    y_state, _ = layer(x, lengths=LENGTHS, state=state)
    assert not torch.allclose(y_state[:, 0], y_none[:, 0])  # even the first step sees the state


def test_final_state_layout_is_torchs_layers_times_directions_batch_hidden():
    layer = _layer("lstm", "auto", num_layers=3, bidirectional=True)
    x, _ = _inputs(layer)
    y, final = layer(x)
    assert layer.state_names == ("h", "c") and layer.num_directions == 2 and layer.output_size == 2 * H
    assert y.shape == (B, T, 2 * H) and [f.shape for f in final] == [(6, B, H)] * 2
    # the top layer's forward final h is its last output, its reverse final h its first
    torch.testing.assert_close(final[0][4], y[:, -1, :H])
    torch.testing.assert_close(final[0][5], y[:, 0, H:])


@pytest.mark.parametrize("backend", ["native", "loop"])
def test_time_major_input_gives_the_transposed_batch_first_result(backend):
    first = _layer("gru", backend, bidirectional=True)
    second = _layer("gru", backend, bidirectional=True, batch_first=False)
    second.load_state_dict(first.state_dict())
    x, _ = _inputs(first)
    y, final = first(x, lengths=LENGTHS)
    y_t, final_t = second(x.transpose(0, 1), lengths=LENGTHS)
    assert torch.equal(y_t.transpose(0, 1), y) and all(map(torch.equal, final, final_t))


def test_same_state_dict_whatever_the_backend():
    native = _layer("lstm", "native", num_layers=2, bidirectional=True)
    loop = _layer("lstm", "loop", num_layers=2, bidirectional=True)
    assert native.state_dict().keys() == loop.state_dict().keys()
    assert "cells.3.weight_hh" in native.state_dict()  # layer 1, reverse: index layer * D + d
    assert native.cells[2].input_size == 2 * H  # layer 1 reads both directions
    loop.load_state_dict(native.state_dict(), strict=True)


@pytest.mark.parametrize("cell, hparams, backend", [
    ("lstm", {}, "native"), ("peephole_lstm", {}, "sequence"), ("gru_simple", {}, "loop"),
    ("gru", {}, "native"), ("gru", {"reset": "before"}, "sequence"), ("rnn", {}, "native")])
def test_auto_picks_native_when_the_cell_maps_onto_a_kernel_else_sequence_else_loop(cell, hparams, backend):
    assert _layer(cell, "auto", **hparams).backend == backend


def test_auto_logs_its_choice_once_per_cell_and_backend(monkeypatch, caplog):
    monkeypatch.setattr(layers, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="toolkit.layers"):
        _layer("lstm", "auto"), _layer("lstm", "auto"), _layer("lstm", "native")
        _layer("gru_simple", "auto")
    messages = [r.getMessage() for r in caplog.records if r.name == "toolkit.layers"]
    assert messages == ["Recurrent(cell='lstm'): backend auto -> native",
                        "Recurrent(cell='gru_simple'): backend auto -> loop"]


def test_native_backend_on_a_cell_without_a_kernel_names_the_cell_and_its_backends():
    with pytest.raises(CellError, match=r"cell 'peephole_lstm' has no native backend; its backends: sequence, loop"):
        _layer("peephole_lstm", "native")
    with pytest.raises(CellError, match=r"cell 'gru' has no native backend; its backends: sequence, loop"):
        _layer("gru", "native", reset="before")
    with pytest.raises(CellError, match=r"backend 'cudnn' is not one of auto, native, sequence, loop"):
        _layer("lstm", "cudnn")


def test_cell_hparams_pass_through_the_layer_and_are_checked():
    assert all(c.reset == "before" for c in _layer("gru", "auto", num_layers=2, reset="before").cells)
    with pytest.raises(CellError, match="cell 'lstm' got unknown hparam 'reset'"):
        _layer("lstm", "auto", reset="before")


@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([6, 0, 4]), r"every length must be in 1..6"),
    (torch.tensor([7, 2, 4]), r"every length must be in 1..6"),
    (torch.tensor([6, 2]), r"lengths must be an int tensor of shape \(3,\)"),
    (torch.tensor([6.0, 2.0, 4.0]), r"lengths must be an int tensor")])
def test_bad_lengths_are_rejected_with_the_limit(lengths, match):
    layer = _layer("lstm", "auto")
    with pytest.raises(ValueError, match=match):
        layer(_inputs(layer)[0], lengths=lengths)


def test_wrong_input_or_state_shape_is_rejected_with_the_expected_shape():
    layer = _layer("lstm", "auto", num_layers=2)
    x, state = _inputs(layer)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, T, 3\)"):
        layer(x[..., :2])
    with pytest.raises(ValueError, match=r"state must be 2 tensor\(s\) \('h', 'c'\) of shape \(2, 3, 4\)"):
        layer(x, state=state[:1])


# --- the whole-sequence seam, exercised by a test-only cell -------------------------------

class LinearScanCell(RecurrentCell):
    """h<t> = alpha * h<t-1> + W x<t>; forward_sequence solves it in closed form."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(input_size, hidden_size)
        self.logit = nn.Parameter(torch.randn(hidden_size))
        self.steps = 0

    def forward(self, x_t, state):
        self.steps += 1
        h = torch.sigmoid(self.logit) * state[0] + self.proj(x_t)
        return h, (h,)

    def forward_sequence(self, x, state, lengths):
        alpha = torch.sigmoid(self.logit)  # (H,)
        T = x.size(1)
        t = torch.arange(T, dtype=x.dtype)
        lag = t[:, None] - t[None, :]  # (T, T): t - s
        decay = torch.where(lag[..., None] >= 0, alpha ** lag.clamp(min=0)[..., None], 0.0)  # (T, T, H)
        h = torch.einsum("tsh,bsh->bth", decay, self.proj(x)) + alpha ** (t[:, None] + 1) * state[0][:, None]
        last = (lengths - 1) if lengths is not None else torch.full((x.size(0),), T - 1)
        final = h.gather(1, last[:, None, None].expand(-1, 1, h.size(-1))).squeeze(1)  # (B, H)
        return h, (final,)


@pytest.fixture
def scan_cell(monkeypatch):
    module = types.ModuleType("rtk_test_cells")
    module.LinearScanCell = LinearScanCell
    monkeypatch.setitem(sys.modules, "rtk_test_cells", module)
    entries = registry._discover() + (CellEntry("linear_scan", "rtk_test_cells:LinearScanCell", "test", "0"),)
    monkeypatch.setattr(registry, "_discover", lambda: entries)
    return "linear_scan"


def test_auto_picks_the_cells_whole_sequence_path(scan_cell):
    layer = _layer(scan_cell, "auto")
    assert layer.backend == "sequence"
    with pytest.raises(CellError, match="cell 'linear_scan' has no native backend; its backends: sequence, loop"):
        _layer(scan_cell, "native")


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
def test_sequence_backend_agrees_with_loop_and_never_steps(scan_cell, lengths):
    seq = _layer(scan_cell, "sequence", num_layers=2, bidirectional=True, dropout=0.5).train()
    loop = _layer(scan_cell, "loop", num_layers=2, bidirectional=True, dropout=0.5).train()
    loop.load_state_dict(seq.state_dict())
    x, state = _inputs(seq)
    y_s, final_s, grads_s = _run_with_grads(seq, x, state, lengths, seed=3)
    y_l, final_l, grads_l = _run_with_grads(loop, x, state, lengths, seed=3)
    assert sum(c.steps for c in seq.cells) == 0 and sum(c.steps for c in loop.cells) > 0
    _assert_same(y_s, y_l)
    _assert_same(final_s, final_l)
    for name in grads_s:
        _assert_same(grads_s[name], grads_l[name])
    if lengths is not None:
        assert not y_s[1, 2:].any()


# --- the fast paths: native packs once; cells without a kernel run their sequence path ------

def test_native_with_lengths_packs_once_for_the_whole_stack(monkeypatch):
    calls = []

    def counting_pack(*args, **kwargs):
        calls.append(args[0].shape)
        return pack_padded_sequence(*args, **kwargs)

    monkeypatch.setattr(layers, "pack_padded_sequence", counting_pack)
    layer = _layer("gru", "native", num_layers=3, bidirectional=True, dropout=0.5)
    layer.eval()(_inputs(layer)[0], lengths=LENGTHS)
    assert len(calls) == 1  # eval: one kernel call over all three layers
    calls.clear()
    layer.train()(_inputs(layer)[0], lengths=LENGTHS)
    assert calls[0] == (B, T, I) and len(calls) == 3  # the data once, then one dropout mask per layer gap


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", NATIVE)
def test_native_output_only_runs_padded_and_gives_the_loops_outputs_and_gradients(monkeypatch, cell, num_layers,
                                                                                 bidirectional):
    # final_state=False (what the heads ask): no packing, loud padding invisible, dropout masks and
    # every gradient as the loop's under the same seed, padded steps exactly zero, no final state
    packs = []
    monkeypatch.setattr(layers, "pack_padded_sequence", lambda *a, **k: packs.append(1) or pack_padded_sequence(*a, **k))
    native = _layer(cell, "native", num_layers, bidirectional, dropout=0.5).train()
    loop = _layer(cell, "loop", num_layers, bidirectional, dropout=0.5).train()
    loop.load_state_dict(native.state_dict())
    x, state = _inputs(native)
    mask = torch.arange(T)[None, :] < LENGTHS[:, None]
    x = torch.where(mask[..., None], x, 1e3)
    got = {}
    for name, layer, final_state in (("native", native, False), ("loop", loop, True)):
        xx, ss = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state)
        torch.manual_seed(7)
        y, final = layer(xx, lengths=LENGTHS, state=ss, final_state=final_state)
        w = torch.randn(y.shape, dtype=DT, generator=torch.Generator().manual_seed(1))
        got[name] = (y, final, torch.autograd.grad((y * w).sum(), [xx, *ss, *layer.parameters()]))
    (y_n, final_n, grads_n), (y_l, _, grads_l) = got["native"], got["loop"]
    assert final_n is None and not packs
    assert not y_n[~mask].any()
    _assert_same(y_n, y_l)
    for g_n, g_l in zip(grads_n, grads_l, strict=True):
        _assert_same(g_n, g_l)


@pytest.mark.parametrize("no_autograd", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", NATIVE)
def test_native_output_only_without_autograd_packs_and_gives_the_padded_runs_outputs(monkeypatch, cell,
                                                                                    bidirectional, no_autograd):
    # validation and prediction: the packed batch is the faster one without a backward; y is the
    # padded run's (which the test above holds to the loop's), padded steps exactly zero
    packs = []
    monkeypatch.setattr(layers, "pack_padded_sequence", lambda *a, **k: packs.append(1) or pack_padded_sequence(*a, **k))
    layer = _layer(cell, "native", 2, bidirectional, dropout=0.5).eval()
    x, state = _inputs(layer)
    mask = torch.arange(T)[None, :] < LENGTHS[:, None]
    x = torch.where(mask[..., None], x, 1e3)
    y_padded, _ = layer(x, lengths=LENGTHS, state=state, final_state=False)
    assert not packs  # autograd on: the padded run
    with no_autograd():
        y_packed, final = layer(x, lengths=LENGTHS, state=state, final_state=False)
    assert final is None and len(packs) == 1
    assert not y_packed[~mask].any()
    _assert_same(y_packed, y_padded)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
@pytest.mark.parametrize("cell, hparams", [("peephole_lstm", {}), ("gru", {"reset": "before"})])
def test_sequence_path_equals_the_loop_in_float32_within_1e5_bi_depth2_dropout_outputs_and_gradients(
        cell, hparams, lengths):
    seq = Recurrent(cell, I, H, num_layers=2, bidirectional=True, dropout=0.5, backend="sequence", **hparams)
    loop = Recurrent(cell, I, H, num_layers=2, bidirectional=True, dropout=0.5, backend="loop", **hparams)
    loop.load_state_dict(seq.state_dict())
    assert seq.backend == "sequence" and Recurrent(cell, I, H, **hparams).backend == "sequence"  # auto picks it
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, I, generator=g)
    state = tuple(torch.randn(4, B, H, generator=g) for _ in seq.state_names)
    results = []
    for layer in (seq.train(), loop.train()):
        xi, si = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state)
        torch.manual_seed(5)  # the same dropout masks
        y, final = layer(xi, lengths=lengths, state=si)
        loss = y.sin().sum() + sum((f * f).sum() for f in final)
        grads = torch.autograd.grad(loss, [xi, *si, *layer.parameters()])
        results.append([y, *final, *grads])
    for a, b in zip(*results):
        _assert_same(a, b)
    if lengths is not None:
        assert not results[0][0][1, 2:].any()  # padded outputs exactly zero


# ----------------------------------------------------------------------------- the step API
@pytest.mark.parametrize("cell, hparams", EVERY_CELL)
def test_step_over_time_gives_forwards_outputs_and_final_state(cell, hparams):
    layer = _layer(cell, "auto", num_layers=2, **hparams).eval()
    x, state = _inputs(layer)
    y, final = layer(x, state=state)
    s, ys = state, []
    for t in range(T):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y)
    for got, want in zip(s, final):
        torch.testing.assert_close(got, want)


def test_step_refuses_a_bidirectional_layer_and_a_wrong_shape():
    with pytest.raises(ValueError, match="bidirectional layer needs the whole sequence"):
        _layer("gru", "loop", bidirectional=True).step(torch.zeros(B, I, dtype=DT))
    with pytest.raises(ValueError, match=rf"x_t of shape \(B, {I}\)"):
        _layer("gru", "loop").step(torch.zeros(B, T, I, dtype=DT))


@pytest.mark.parametrize("direction", [0, 1])
def test_run_cell_over_the_layer_input_rebuilds_the_top_layers_output(direction):
    layer = _layer("lstm", "native", num_layers=2, bidirectional=True).eval()
    x, _ = _inputs(layer)
    y, _ = layer(x, lengths=LENGTHS)
    inp = layer.layer_input(x, LENGTHS, 1)
    y_d, _, states = layer.run_cell(1, direction, inp, LENGTHS, keep_states=True)
    torch.testing.assert_close(y_d, y[..., direction * H:(direction + 1) * H])
    assert len(states) == T and states[0][0].shape == (B, H)


def test_run_cell_keeps_each_steps_state_in_the_autograd_graph():
    layer = _layer("gru", "loop")
    x, _ = _inputs(layer)
    y, _, states = layer.run_cell(0, 0, x, LENGTHS, keep_states=True)
    a = [s[0] for s in states]
    g = torch.autograd.grad(y[1, LENGTHS[1] - 1].sum(), a, allow_unused=True, materialize_grads=True)
    assert g[0][1].abs().sum() > 0  # the first step's state reaches sequence 1's last output
    assert g[LENGTHS[1]][1].abs().sum() == 0  # a step after its end does not


def test_length_mask_marks_each_sequences_real_steps():
    assert layers.length_mask(torch.tensor([2, 3]), 4).tolist() == [[True, True, False, False],
                                                                    [True, True, True, False]]


_BF16_WITHOUT_ONEDNN = r"""
import torch
from toolkit.layers import Recurrent

# ONEDNN_MAX_CPU_ISA=AVX2 gives oneDNN the instructions of a CPU without bfloat16; torch.nn.LSTM
# itself fails there under CPU autocast ("could not create a primitive descriptor")
assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()
torch.manual_seed(0)
m = Recurrent("lstm", 8, 8, num_layers=2, bidirectional=True, dropout=0.0, backend="native")
x, lengths = torch.randn(3, 5, 8), torch.tensor([5, 3, 2])
for lens in (None, lengths):
    ref, _ = m(x, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x, lens)
    assert y.dtype == h.dtype == torch.bfloat16, (y.dtype, h.dtype)
    assert (y.float() - ref).abs().max() < 0.05, (y.float() - ref).abs().max()
    m.zero_grad()
    y.float().sum().backward()
    g = m.cells[0].weight_hh.grad
    assert g.dtype == torch.float32 and g.isfinite().all() and g.abs().sum() > 0
print("ok")
"""


def test_native_lstm_trains_under_cpu_bf16_autocast_on_a_cpu_without_bf16_in_onednn():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    res = subprocess.run([sys.executable, "-c", _BF16_WITHOUT_ONEDNN], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
