"""Vanishing and exploding gradients made visible: ||dL/da<t>|| per time step (docs/gradients.md)."""

from __future__ import annotations

import csv
import dataclasses
import glob
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from toolkit.diagnose import (model_state_gradients, norms_by_distance, probe_cell,
                              state_gradient_norms, state_gradients)
from toolkit.errors import ConfigError
from toolkit.layers import Recurrent

PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the reference
def top_forward(layer: Recurrent, x, lengths, perturb=None):
    """The top layer's forward direction, one example and one step at a time, written out anew.

    Returns (the top layer's input (B, T, I'), the states s_t per example, the layer's output y);
    ``perturb=(b, t, j, eps)`` adds eps to feature j of a<t> of sequence b (output and carried state).
    """
    D, top, H = layer.num_directions, layer.num_layers - 1, layer.hidden_size
    if top:  # the lower layers as a layer of their own: the same weights, run by the fused kernel
        lower = Recurrent(layer.cell_name, layer.input_size, H, num_layers=top, bidirectional=D == 2,
                          **layer.cell_hparams).double()
        lower.load_state_dict({k: v for k, v in layer.state_dict().items() if int(k.split(".")[1]) < top * D})
        inp, _ = lower(x, lengths)
    else:
        inp = x
    full, _ = layer(x, lengths)  # the reverse half of the top layer does not depend on a<t>
    cell = layer.cells[top * D]
    B, T, _ = x.shape
    y = torch.zeros(B, T, H, dtype=x.dtype)
    states = []
    for b in range(B):
        s = cell.initial_state(1, dtype=x.dtype)
        seq = [s]
        for t in range(int(lengths[b])):
            out, s = cell(inp[b, t][None], s)
            if perturb is not None and perturb[:2] == (b, t):
                bump = torch.zeros_like(out)
                bump[0, perturb[2]] = perturb[3]
                out, s = out + bump, (s[0] + bump, *s[1:])
            y[b, t] = out[0]
            seq.append(s)
        states.append(seq)
    y = torch.cat([y, full[..., H:]], -1) if D == 2 else y
    return inp, states, y


def reference_state_gradients(layer: Recurrent, x, lengths, loss_fn):
    """dL/da<t> by the chain rule written out: λ_t = ∂L/∂y_t + J_{t+1}ᵀ λ_{t+1}, per example,
    with J_t = ∂s_t/∂s_{t-1} the Jacobian of one cell step over the whole state (a and c)."""
    H = layer.hidden_size
    cell = layer.cells[(layer.num_layers - 1) * layer.num_directions]
    inp, states, y = top_forward(layer, x, lengths)
    y = y.detach().requires_grad_()
    direct = torch.autograd.grad(loss_fn(y), y)[0][..., :H]  # only the output's own path
    n = len(cell.state_names)
    out = torch.zeros(x.size(0), x.size(1), H, dtype=x.dtype)
    for b in range(x.size(0)):
        lam = torch.zeros(n * H, dtype=x.dtype)
        for t in range(int(lengths[b]) - 1, -1, -1):
            lam[:H] += direct[b, t]
            out[b, t] = lam[:H]

            def step(s_flat, x_t=inp[b, t]):
                _, new = cell(x_t[None], tuple(s_flat.view(n, 1, H)))
                return torch.cat([s[0] for s in new])

            s_prev = torch.cat([s[0] for s in states[b][t]]).detach()
            lam = torch.autograd.functional.jacobian(step, s_prev).T @ lam
    return out


def last_step_loss(lengths, weight):
    """A loss that reads the last real step of each sequence (and a little of every step)."""
    def loss(y):
        last = y[torch.arange(y.size(0)), lengths - 1]
        return (last @ weight).sum() + 0.05 * (y ** 2).sum()
    return loss


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("cell,hparams", [("rnn", {}), ("gru", {}), ("gru", {"reset": "before"}), ("lstm", {}),
                                          ("peephole_lstm", {}), ("gru_simple", {})])
def test_state_gradient_is_the_chain_rule_through_every_later_step(cell, hparams):
    torch.manual_seed(0)
    layer = Recurrent(cell, 3, 4, num_layers=2, bidirectional=True, **hparams).double().eval()
    x = torch.randn(3, 7, 3, dtype=torch.double)
    lengths = torch.tensor([7, 4, 6])
    loss = last_step_loss(lengths, torch.randn(8, dtype=torch.double))
    got = state_gradients(layer, x, lengths, loss)
    want = reference_state_gradients(layer, x, lengths, loss)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert (got[1, 4:] == 0).all(), "padded steps have no state, so no gradient"


def test_state_gradient_matches_finite_differences():
    torch.manual_seed(1)
    layer = Recurrent("lstm", 3, 5, num_layers=1).double().eval()
    x = torch.randn(2, 9, 3, dtype=torch.double)
    lengths = torch.tensor([9, 6])
    loss = last_step_loss(lengths, torch.randn(5, dtype=torch.double))
    got = state_gradients(layer, x, lengths, loss)
    eps = 1e-6
    for b, t, j in [(0, 0, 1), (0, 4, 3), (0, 8, 0), (1, 0, 2), (1, 5, 4)]:
        with torch.no_grad():
            up = loss(top_forward(layer, x, lengths, (b, t, j, eps))[2])
            down = loss(top_forward(layer, x, lengths, (b, t, j, -eps))[2])
        assert float(got[b, t, j]) == pytest.approx(float(up - down) / (2 * eps), rel=1e-6, abs=1e-10)


def test_fused_output_carries_only_the_direct_path_the_diagnostic_carries_all():
    torch.manual_seed(2)
    layer = Recurrent("lstm", 3, 4).double().eval()
    assert layer.backend == "native"
    x = torch.randn(2, 6, 3, dtype=torch.double)
    y, _ = layer(x)
    loss = lambda y: y[:, -1].sum()  # noqa: E731 - the loss reads the last step only
    direct = torch.autograd.grad(loss(y), y)[0]
    assert (direct[:, :-1] == 0).all()
    total = state_gradients(layer, x, None, loss)
    assert (total[:, :-1].abs() > 0).all()
    torch.testing.assert_close(total[:, -1], direct[:, -1])


def test_norms_are_per_sequence_means_and_independent_of_batch_size():
    torch.manual_seed(3)
    layer = Recurrent("gru", 3, 4).eval()
    x = torch.randn(4, 5, 3)
    lengths = torch.tensor([5, 3, 5, 2])
    loss = lambda y: y[torch.arange(4), lengths - 1].sum()  # noqa: E731
    g = state_gradients(layer, x, lengths, loss)
    norms = state_gradient_norms(layer, x, lengths, loss)
    assert float(norms[4]) == pytest.approx(float((g[0, 4].norm() + g[2, 4].norm()) / 2))  # 2 sequences reach t=4
    alone = state_gradients(layer, x[:1], lengths[:1], lambda y: y[0, 4].sum())
    torch.testing.assert_close(alone[0], g[0])  # a summed loss: the batch does not scale anyone's gradient
    by_distance, count = norms_by_distance(g, lengths)
    assert count.tolist() == [4, 4, 3, 2, 2]
    assert float(by_distance[0]) == pytest.approx(float(g[torch.arange(4), lengths - 1].norm(dim=-1).mean()))


def test_exploding_recurrent_weights_show_a_gradient_that_grows_with_distance():
    torch.manual_seed(4)
    layer = Recurrent("rnn", 3, 16).double().eval()
    with torch.no_grad():
        layer.cells[0].weight_hh.copy_(1.5 * torch.linalg.qr(torch.randn(16, 16, dtype=torch.double))[0])
        layer.cells[0].bias_hh.zero_()
        layer.cells[0].bias_ih.zero_()
    x = 1e-6 * torch.randn(2, 20, 3, dtype=torch.double)  # small inputs: tanh stays linear
    norms = state_gradient_norms(layer, x, None, lambda y: y[:, -1].sum())
    assert float(norms[0] / norms[-1]) == pytest.approx(1.5 ** 19, rel=0.05)


# ----------------------------------------------------------------------------- the contrast
def test_rnn_gradient_dies_with_distance_orders_of_magnitude_faster_than_gru_and_lstm():
    ratio = {}
    for cell in ("rnn", "gru", "lstm"):
        norms = probe_cell(cell, length=40, hidden_size=32, steps=0, seed=0)["init"]
        ratio[cell] = float(norms[0] / norms[-1])  # far / near
    assert ratio["rnn"] < 1e-2 * min(ratio["gru"], ratio["lstm"]), ratio


def test_after_training_gru_and_lstm_keep_the_gradient_the_rnn_loses_it():
    results = {cell: probe_cell(cell, length=60, hidden_size=32, steps=150, seed=0) for cell in ("rnn", "gru", "lstm")}
    ratio = {c: float(r["trained"][0] / r["trained"][-1]) for c, r in results.items()}
    assert results["gru"]["trained_acc"] >= 0.9 and results["lstm"]["trained_acc"] >= 0.9
    assert min(ratio["gru"], ratio["lstm"]) > 1e-3, ratio
    assert ratio["rnn"] < 1e-4 * min(ratio["gru"], ratio["lstm"]), ratio


# ----------------------------------------------------------------------------- heads
def _spec(kind):
    spec = {"kind": kind, "tokenizer": "words", "normalize": "lower",
            "vocab": ["<pad>", "<unk>", "<eos>", "a", "film", "b", "c"], "labels": ["B-PER", "I-PER", "O"]}
    if kind == "tagging":
        spec["chars"] = ["<pad>", "<unk>", "a", "b"]
    return spec


def _head(kind, direction="uni"):
    from toolkit.heads import HEADS

    torch.manual_seed(5)
    return HEADS[kind].task(spec=_spec(kind), cell={"name": "gru"}, hidden_size=6, embedding_dim=5,
                       direction=direction, depth=2).eval()


def _by_hand(model, batch, loss_of_y):
    """state_gradients with the head's last-step loss written out by hand (no hooks)."""
    x = model.embed(batch["tokens"])
    if model.head == "tagging":
        parts = [x, model.shape_embed(batch["shapes"])]
        if model.char_cnn is not None:
            parts.append(model.char_cnn(batch["chars"]))
        x = torch.cat(parts, -1)
    return state_gradients(model.rnn, x.detach(), batch["lengths"], loss_of_y)


@pytest.mark.parametrize("direction", ["uni", "bi"])
def test_classification_head_loss_reads_the_last_real_step(direction):
    model = _head("classification", direction)
    batch = {"tokens": torch.tensor([[3, 4, 5, 6], [4, 3, 0, 0]]), "lengths": torch.tensor([4, 2]),
             "labels": torch.tensor([1, 0])}
    rows, h = torch.arange(2), model.hparams.hidden_size

    def loss(y):
        last = y[rows, batch["lengths"] - 1]
        if direction == "bi":
            last = torch.cat([last[:, :h], y[:, 0, h:]], -1)
        return F.cross_entropy(model.out(last), batch["labels"], reduction="sum")

    torch.testing.assert_close(model_state_gradients(model, batch), _by_hand(model, batch, loss))


def test_tagging_head_loss_is_the_last_real_tokens_tag():
    from toolkit.data.tagging import collate_tagging, encode_tagging
    from toolkit.data.text import Vocab

    model = _head("tagging")
    items = [encode_tagging(t, model.vocab, "lower", Vocab(model.hparams.spec["chars"]))
             for t in (["a", "film", "b", "c"], ["film", "a"])]
    items[0]["tags"], items[1]["tags"] = [0, 1, 2, 2], [2, 0]
    batch = collate_tagging(items)
    rows, last = torch.arange(2), batch["lengths"] - 1

    def loss(y):
        return F.cross_entropy(model.out(y)[rows, last], batch["tags"][rows, last], reduction="sum")

    got = model_state_gradients(model, batch)
    torch.testing.assert_close(got, _by_hand(model, batch, loss))
    assert (got[1, 2:] == 0).all() and (got[0, 0].abs() > 0).all()


def test_language_model_head_loss_is_the_last_real_tokens_prediction():
    from toolkit.tasks.lm import LanguageModelTask

    torch.manual_seed(6)
    spec = {**_spec("language_model"), "labels": [], "conditions": [], "source": None}
    model = LanguageModelTask(spec=spec, cell={"name": "lstm"}, hidden_size=6, embedding_dim=5).eval()
    batch = {"tokens": torch.tensor([[2, 3, 4, 5], [2, 6, 0, 0]]), "lengths": torch.tensor([4, 2]),
             "targets": torch.tensor([[3, 4, 5, 2], [6, 2, -100, -100]])}
    rows, last = torch.arange(2), batch["lengths"] - 1

    def loss(y):
        return F.cross_entropy(model.out(y)[rows, last], batch["targets"][rows, last], reduction="sum")

    torch.testing.assert_close(model_state_gradients(model, batch), _by_hand(model, batch, loss))


def test_diagnose_true_for_a_head_without_a_last_step_loss_is_one_sentence(compose, monkeypatch):
    from toolkit.config import validate

    from toolkit.heads import HEADS

    monkeypatch.setitem(HEADS, "classification", dataclasses.replace(HEADS["classification"], last_step_loss=None))
    with pytest.raises(ConfigError) as e:
        validate(compose(["task=peptides", "diagnose=true"]))
    assert str(e.value) == ("diagnose=true: the gradient diagnostic has no last-step loss for the "
                            "'classification' head (it has one for: tagging, language_model, series); "
                            "set diagnose=false")


def test_diagnose_must_be_true_or_false(compose):
    from toolkit.config import validate

    with pytest.raises(ConfigError, match=r"^diagnose='yes' must be true or false$"):
        validate(compose(["task=peptides", "diagnose=yes"]))


def test_tensorboard_logger_gets_the_figure(tmp_path):
    import matplotlib.pyplot as plt
    from pytorch_lightning.loggers import TensorBoardLogger

    from toolkit.diagnose import _log_to

    calls = []

    class Writer:
        def add_figure(self, tag, figure, global_step=None, close=True):
            calls.append((tag, figure, global_step))

    logger = object.__new__(TensorBoardLogger)  # tensorboard itself is an optional extra
    logger._experiment = Writer()
    fig = plt.figure()
    _log_to([logger], fig, tmp_path / "gradients.png", ["distance"], [[0]], step=7)
    plt.close(fig)
    assert calls == [("gradients", fig, 7)]


# ----------------------------------------------------------------------------- rtk diagnose
def test_rtk_diagnose_writes_the_png_and_prints_the_table(rtk, tmp_path):
    out = tmp_path / "plots" / "g.png"
    out.parent.mkdir()
    r = rtk("diagnose", "cells=rnn,lstm", "length=20", "hidden_size=8", "steps=5", f"out={out}")
    assert r.returncode == 0, r.explain()
    assert out.read_bytes()[:8] == PNG
    assert [p.name for p in out.parent.iterdir()] == ["g.png"], "no temporary file is left behind"
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("cell"))
    assert lines[header].split() == ["cell", "when", "acc", "d=0", "d=10", "d=19", "d=19/d=0"]
    rows = [line.split() for line in lines[header + 1:header + 5]]
    assert [(row[0], " ".join(row[1:-5])) for row in rows] == [("rnn", "init"), ("rnn", "5 steps"),
                                                               ("lstm", "init"), ("lstm", "5 steps")]
    for row in rows:
        near, far, ratio = float(row[-4]), float(row[-2]), float(row[-1])
        assert 0 < far < near and ratio == pytest.approx(far / near, rel=0.1)
    assert lines[-1].startswith(f"wrote {out}")


@pytest.mark.parametrize("arg,sentence", [
    ("length=1", "rtk diagnose: length='1' must be a whole number of at least 2"),
    ("steps=many", "rtk diagnose: steps='many' must be a whole number of at least 0"),
    ("lr=0", "rtk diagnose: lr='0' must be a positive number"),
    ("out=g.jpg", "rtk diagnose: out=g.jpg must name a .png file"),
    ("out=/no/such/dir/g.png", "rtk diagnose: out=/no/such/dir/g.png: the directory /no/such/dir does not exist"),
    ("cells=rnn,rnn", "rtk diagnose: cells=rnn,rnn names a cell twice"),
    ("colour=red", "rtk diagnose: unknown key 'colour' (keys: cells, length, hidden_size, steps, seed, lr, out)"),
])
def test_rtk_diagnose_bad_argument_is_one_sentence(arg, sentence, capsys):
    from toolkit.cli import main

    assert main(["diagnose", arg]) == 2
    assert capsys.readouterr().err == f"error: {sentence}\n"


def test_rtk_diagnose_unknown_cell_lists_the_available_cells(rtk):
    from toolkit.cells import available_cells

    r = rtk("diagnose", "cells=rnn,lsmt")
    assert r.returncode == 2, r.explain()
    assert "Traceback" not in r.stderr
    prefix = "error: rtk diagnose: unknown cell 'lsmt'; available cells: "
    assert r.stderr.startswith(prefix) and r.stderr.count("\n") == 1, r.explain()
    listed = r.stderr[len(prefix):].strip().split(", ")
    # docs/plugins.md installs and uninstalls a plugin while other test files run in parallel, so the
    # subprocess may see one cell more or less than this process: compare the cells that stay installed
    lasting = [c for c in available_cells() if c != "leaky_rnn"]
    assert listed == sorted(listed) and set(lasting) <= set(listed), r.explain()


# ----------------------------------------------------------------------------- rtk train diagnose=true
def test_rtk_train_diagnose_true_writes_gradients_png_and_csv(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", "task=peptides", "cell=gru", *TINY, "diagnose=true", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    assert (run / "gradients.png").read_bytes()[:8] == PNG
    rows = list(csv.DictReader((run / "gradients.csv").open()))
    assert list(rows[0]) == ["distance", "sequences", "norm_start", "norm_end"]
    assert [int(row["distance"]) for row in rows] == list(range(len(rows)))
    assert len(rows) > 20, "the longest validation batch reaches far back"
    counts = [int(row["sequences"]) for row in rows]
    assert counts == sorted(counts, reverse=True) and counts[-1] >= 1
    for key in ("norm_start", "norm_end"):
        values = [float(row[key]) for row in rows]
        assert all(math.isfinite(v) and v >= 0 for v in values) and values[0] > 0
        assert values[-1] < values[0], "the learning signal fades with distance"
    assert "gradients.png · gradients.csv" in (run / "summary.txt").read_text()
    assert not glob.glob(str(run / ".gradients*")), "no temporary file is left behind"


@pytest.mark.slow
def test_wandb_offline_run_holds_the_gradient_plot_and_table(rtk, tmp_path):
    from test_sweeps_tracking import wandb_records

    run = tmp_path / "run"
    r = rtk("train", "task=peptides", *TINY, "logger=wandb", "diagnose=true", f"hydra.run.dir={run}",
            env={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.explain()
    run_file = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(run_file) == 1
    history = set()
    for rec in wandb_records(run_file[0]):
        if rec.WhichOneof("record_type") == "history":
            history |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
    assert {"gradients/_type", "gradients_table/_type"} <= history, history
    assert glob.glob(str(run / "wandb" / "offline-run-*" / "files" / "media" / "images" / "gradients_*.png"))
