"""Vanishing and exploding gradients, made visible: ||dL/da<t>|| for every time step t.

What is measured. ``a<t>`` is the hidden state ``h`` that the top layer's cell
hands on at step t (the cell's first state tensor; for every built-in cell it is
also the step's output ``y<t>``), in the forward direction. ``dL/da<t>`` is the
*total* derivative: through the output at step t and through every later step
of the recurrence. (The output of a fused kernel only carries the direct path,
so the top layer is re-run here step by step with the cell's own ``forward`` and
``torch.autograd.grad`` is taken with respect to each ``a<t>``.) The loss ``L`` is
the **sum** over the sequences of a batch of each sequence's loss, so
``dL/da_b<t>`` is sequence b's own gradient, whatever the batch size; the norm
reported for a step is the L2 norm over the H features, averaged over the
sequences (those that have that step). The top layer runs in float64, so a
gradient of 1e-40 is a number and not a float32 zero.

Three users of it:

- :func:`state_gradient_norms` for any ``Recurrent`` layer and loss;
- ``rtk diagnose``: a synthetic long-range task (the label is a sequence's first
  symbol; the loss is at its last step), one small model per cell, measured at
  initialisation and after a short training, one log-scale plot and a table;
- :class:`GradientDiagnostic`: ``rtk train diagnose=true`` measures a trained
  model on a validation batch and writes ``gradients.png`` / ``gradients.csv``.
"""

from __future__ import annotations

import copy
import csv
import io
import math
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.files import write_atomic
from toolkit.heads import HEADS, diagnose_problem
from toolkit.layers import Recurrent, length_mask


# ------------------------------------------------------------------ measurement
def state_gradients(layer: Recurrent, x: Tensor, lengths: Tensor | None,
                    loss_fn: Callable[[Tensor], Tensor], dtype: torch.dtype = torch.float64) -> Tensor:
    """dL/da<t> of the top layer's forward direction: (B, T, H), zero at padded steps.

    Args:
        layer: the layer; lower layers run as the layer runs them (same dropout,
            same numbers as any backend), without gradient.
        x: the layer's input, (B, T, I) (or (T, B, I) when ``batch_first=False``).
        lengths: (B,) or None.
        loss_fn: the layer's output y (same layout as ``layer(x)``, in x's dtype)
            -> a scalar loss. Sum it over the sequences to get per-sequence gradients.
        dtype: the top layer runs in this dtype (float64: no underflow to zero).
    """
    if not layer.batch_first:
        x = x.transpose(0, 1)
    D, top = layer.num_directions, layer.num_layers - 1
    with torch.no_grad():  # layers below the top: their gradients are not asked for
        inp = layer.layer_input(x.detach(), lengths, top)  # (B, T, H * D); checks the lengths
    # the top layer's forward direction in float64, each step's state a<t> kept in the graph
    cell = copy.deepcopy(layer.cells[top * D]).to(dtype)
    y, _, states = layer.run_cell(top, 0, inp.to(dtype), lengths, cell=cell, keep_states=True)
    a = [s[0] for s in states]
    y = y.to(x.dtype)  # (B, T, H)
    if D == 2:
        with torch.no_grad():
            y_rev, _, _ = layer.run_cell(top, 1, inp, lengths)
        y = torch.cat([y, y_rev], -1)  # (B, T, 2H)
    loss = loss_fn(y if layer.batch_first else y.transpose(0, 1))
    grads = torch.autograd.grad(loss, a, allow_unused=True, materialize_grads=True)
    g = torch.stack(grads, 1)  # (B, T, H)
    if lengths is None:
        return g
    return torch.where(length_mask(torch.as_tensor(lengths, device=g.device), g.size(1))[..., None], g, 0.0)


def state_gradient_norms(layer: Recurrent, x: Tensor, lengths: Tensor | None,
                         loss_fn: Callable[[Tensor], Tensor], dtype: torch.dtype = torch.float64) -> Tensor:
    """(T,): at each step t, the mean over the sequences that reach t of ||dL/da_b<t>||_2."""
    g = state_gradients(layer, x, lengths, loss_fn, dtype)
    B, T, _ = g.shape
    norms = g.norm(dim=-1)  # (B, T)
    if lengths is None:
        return norms.mean(0)
    real = length_mask(torch.as_tensor(lengths, device=g.device), T)  # (B, T)
    return (norms * real).sum(0) / real.sum(0).clamp(min=1)


def norms_by_distance(grads: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """(T,) mean ||dL/da_b<t>|| at distance k = len_b - 1 - t from each sequence's last step,
    and (T,) how many sequences reach that distance."""
    B, T, _ = grads.shape
    lengths = torch.full((B,), T) if lengths is None else torch.as_tensor(lengths).cpu()
    norms = grads.norm(dim=-1).cpu()  # (B, T)
    k = torch.arange(T)
    t = lengths[:, None] - 1 - k[None, :]  # (B, T): the step at distance k
    real = t >= 0
    picked = norms.gather(1, t.clamp(min=0)) * real
    count = real.sum(0)
    return picked.sum(0) / count.clamp(min=1), count


# ----------------------------------------------------------- the synthetic task
class FirstSymbolTask:
    """Sequences of random symbols; the label is the first symbol, the loss is at the last step.

    Only the state can carry the first symbol to the end, so ||dL/da<t>|| against
    the distance T - 1 - t shows how far back the learning signal reaches.
    Training sequences have random lengths 1 + floor(u^2 T), u ~ U(0, 1), the loss
    at each one's own last step: mostly short ones, so a cell can learn to
    remember over short distances first and then stretch it (with uniform lengths
    the LSTM had not started to learn the task after 300 steps). Measurements use
    sequences of the full length T.
    """

    def __init__(self, length: int, symbols: int = 8, seed: int = 0):
        self.length, self.symbols = length, symbols
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, size: int, full: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        x = torch.randint(0, self.symbols, (size, self.length), generator=self.gen)  # (B, T)
        if full:
            lengths = torch.full((size,), self.length)
        else:
            u = torch.rand(size, generator=self.gen)
            lengths = (1 + (u * u * self.length).long()).clamp(max=self.length)
        return x, lengths, x[:, 0]


class Probe(nn.Module):
    """embedding -> Recurrent(cell), one layer -> linear over the symbols."""

    def __init__(self, cell: str, symbols: int, hidden_size: int, embedding_dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(symbols, embedding_dim)
        self.rnn = Recurrent(cell, embedding_dim, hidden_size)
        self.out = nn.Linear(hidden_size, symbols)

    def logits(self, y: Tensor, lengths: Tensor) -> Tensor:
        return self.out(y[torch.arange(y.size(0)), lengths - 1])  # the last real step, (B, symbols)

    def loss(self, x: Tensor, lengths: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
        y, _ = self.rnn(self.embed(x), lengths=lengths)
        return F.cross_entropy(self.logits(y, lengths), labels, reduction=reduction)

    def norms(self, x: Tensor, lengths: Tensor, labels: Tensor) -> Tensor:
        """(T,) ||dL/da<t>|| with L summed over the batch, at t = 0 .. T-1."""
        e = self.embed(x).detach()
        return state_gradient_norms(self.rnn, e, lengths, lambda y: F.cross_entropy(
            self.logits(y, lengths), labels, reduction="sum"))

    @torch.no_grad()
    def accuracy(self, x: Tensor, lengths: Tensor, labels: Tensor) -> float:
        y, _ = self.rnn(self.embed(x), lengths=lengths)
        return float((self.logits(y, lengths).argmax(-1) == labels).float().mean())


def probe_cell(cell: str, length: int, hidden_size: int, steps: int, seed: int, lr: float = 1e-2,
               batch_size: int = 32, eval_size: int = 256) -> dict:
    """Build, measure, train ``steps`` Adam steps (clipped at norm 1), measure again."""
    torch.manual_seed(seed)
    model = Probe(cell, FirstSymbolTask(length).symbols, hidden_size)
    held_out = FirstSymbolTask(length, seed=seed + 1).batch(eval_size, full=True)
    task = FirstSymbolTask(length, seed=seed)
    result = {"cell": cell, "init": model.norms(*held_out), "init_acc": model.accuracy(*held_out)}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.loss(*task.batch(batch_size))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    if steps:
        result["trained"] = model.norms(*held_out)
        result["trained_acc"] = model.accuracy(*held_out)
    return result


def distances(length: int) -> list[int]:
    """The distances the table shows: 0, 10, 50 and T - 1 (those below T)."""
    return sorted({d for d in (0, 10, 50, length - 1) if d < length})


def table(results: list[dict], steps: int) -> str:
    """One row per cell and moment: accuracy, ||dL/da|| at the shown distances, far/near."""
    length = len(results[0]["init"])
    ds = distances(length)
    header = ["cell", "when", "acc"] + [f"d={d}" for d in ds] + [f"d={length - 1}/d=0"]
    rows = [header]
    for r in results:
        for when in ("init", "trained"):
            if when not in r:
                continue
            norms = r[when].flip(0)  # index = distance from the loss
            label = "init" if when == "init" else f"{steps} steps"
            far_near = float(norms[-1] / norms[0]) if norms[0] > 0 else math.nan
            rows.append([r["cell"], label, f"{r[when + '_acc']:.2f}"]
                        + [f"{float(norms[d]):.1e}" for d in ds] + [f"{far_near:.1e}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


# --------------------------------------------------------------------- plotting
def plot_norms(panels: list[tuple[str, dict[str, Tensor]]], out: Path, ylabel: str = "||dL/da<t>||"):
    """One log-scale panel per (title, {label: norms by distance}); returns the figure.

    A plain Figure, outside pyplot: no backend to pick, nothing to close."""
    from matplotlib.figure import Figure  # here, not at the top: seconds of start-up, only when a plot is drawn

    fig = Figure(figsize=(4.6 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for i, (label, norms) in enumerate(series.items()):
            values = norms.double().cpu()
            keep = values > 0  # a log axis cannot show an exact zero (a padded or unreached step)
            ax.semilogy(torch.arange(len(values))[keep], values[keep], label=label, color=f"C{i}")
        ax.set(title=title, xlabel="distance from the loss (steps)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return fig


def diagnose(cells: list[str], length: int = 100, hidden_size: int = 64, steps: int = 200, seed: int = 0,
             out: Path = Path("gradients.png"), lr: float = 1e-2) -> tuple[list[dict], str]:
    """``rtk diagnose``: probe each cell, plot, and return (results, the printed table)."""
    results = [probe_cell(c, length, hidden_size, steps, seed, lr) for c in cells]
    panels = [("at initialisation", {r["cell"]: r["init"].flip(0) for r in results})]
    if steps:
        panels.append((f"after {steps} training steps", {r["cell"]: r["trained"].flip(0) for r in results}))
    plot_norms(panels, out)
    return results, table(results, steps)


# --------------------------------------------------------- in a training run
def model_state_gradients(model, batch: dict) -> Tensor:
    """dL/da<t> (B, T, H) of ``model.rnn``'s top layer, L = the head's ``last_step_loss`` (``toolkit.heads``)."""
    loss_of = HEADS[model.head].last_step_loss
    seen: dict = {}

    def capture(module, args, kwargs, output):
        seen["x"], seen["lengths"] = args[0].detach(), kwargs.get("lengths", args[1] if len(args) > 1 else None)

    handle = model.rnn.register_forward_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            loss_of(model, batch)
    finally:
        handle.remove()

    def loss_fn(y: Tensor) -> Tensor:
        def replace(module, args, kwargs, output):
            return y, output[1]

        handle = model.rnn.register_forward_hook(replace, with_kwargs=True)
        try:
            return loss_of(model, batch)
        finally:
            handle.remove()

    return state_gradients(model.rnn, seen["x"], seen["lengths"], loss_fn)


def _batch_length(batch: dict) -> int:
    return int(batch["lengths"].max()) if "lengths" in batch else batch["tokens"].size(1)


def _longest_batch(datamodule) -> dict | None:
    """The validation batch holding the longest sequence: the farthest reach. (Never a training
    loader: building one would swap the sampler whose epoch ``Reproducible`` sets.)"""
    loader = datamodule.val_dataloader() if datamodule is not None else None
    return None if loader is None else max(loader, key=_batch_length, default=None)


class GradientDiagnostic(pl.Callback):
    """``rtk train diagnose=true``: ||dL/da<t>|| on one validation batch, at the start and end of fit.

    The batch is the validation batch holding the longest sequence; L is the
    head's loss of its prediction at each sequence's last real step (see
    the ``last_step_loss`` of its declaration in ``toolkit.heads``), summed over the batch; the norms are indexed by the
    distance from each sequence's own last step. At the end of training it writes
    ``gradients.png`` and ``gradients.csv`` into the run dir and logs the plot
    (and the table) to W&B / TensorBoard when those loggers are active.
    """

    def __init__(self, run_dir: Path, head: str):
        if problem := diagnose_problem(head):
            raise ConfigError(problem)
        self.run_dir = Path(run_dir)
        self.start: tuple[Tensor, Tensor] | None = None
        self.start_epoch = 0

    def measure(self, trainer, model) -> tuple[Tensor, Tensor]:
        batch = _longest_batch(trainer.datamodule)
        if batch is None:
            raise ConfigError("diagnose=true needs a validation split to measure on, and this data has none")
        batch = {k: v.to(model.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                g = model_state_gradients(model, batch)
        finally:
            model.train(was_training)
        return norms_by_distance(g, batch.get("lengths"))

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.start, self.start_epoch = self.measure(trainer, pl_module), trainer.current_epoch

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.start is None:
            return
        end, count = self.measure(trainer, pl_module)
        start = self.start[0]
        reach = int((count > 0).sum())
        first = "initialisation" if self.start_epoch == 0 else f"start (after epoch {self.start_epoch})"
        epochs = trainer.current_epoch
        series = {first: start[:reach], f"after {epochs} epoch{'s' if epochs != 1 else ''}": end[:reach]}
        title = f"{pl_module.rnn.cell_name}, top layer, {int(count[0])} validation sequences"
        fig = plot_norms([(title, series)], self.run_dir / "gradients.png")
        rows = [[k, int(count[k]), float(start[k]), float(end[k])] for k in range(reach)]
        columns = ["distance", "sequences", "norm_start", "norm_end"]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([columns, *rows])
        write_atomic(self.run_dir / "gradients.csv", lambda tmp: tmp.write_text(text.getvalue()))
        _log_to(trainer.loggers, fig, self.run_dir / "gradients.png", columns, rows, trainer.global_step)


def _log_to(loggers, fig, png: Path, columns: list[str], rows: list[list], step: int) -> None:
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.log_image(key="gradients", images=[str(png)], step=step)
            lg.log_table(key="gradients_table", columns=columns, data=rows, step=step)
        elif isinstance(lg, TensorBoardLogger):
            lg.experiment.add_figure("gradients", fig, global_step=step, close=False)
