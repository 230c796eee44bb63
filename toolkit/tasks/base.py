"""What every task head shares: the embedding -> Recurrent encoder and the optimiser.

Reading and writing checkpoints: ``toolkit.checkpoints``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.cells import cell_entries, cell_hparams
from toolkit.data.text import UNK_ID, Labels, Vocab
from toolkit.errors import ConfigError, whole_number_problem
from toolkit.layers import Dropout, Recurrent, dropout

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
FORMAT_VERSION = 1  # bump when a checkpoint's hyper-parameters change meaning


def defaults(init) -> dict:
    """The keyword defaults a constructor declares itself (its own signature, not its parents')."""
    return {n: p.default for n, p in inspect.signature(init).parameters.items() if p.default is not p.empty}


def number_problem(key: str, value, low: float = 0.0, high: float = 1.0) -> str | None:
    """The sentence for a value that is not a number in [low, high) (a bool is not one), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        return f"{key}={value!r} must be a number in [{low:g}, {high:g})"
    return None


def _cell_plugin(name: str) -> dict | None:
    entry = next((e for e in cell_entries() if e.name == name), None)
    return {"distribution": entry.dist, "version": entry.version} if entry else None


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence, the same at every time step (Gal &
    Ghahramani 2016), for (B, T, E) inputs; (B, E) inputs get ordinary dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.dim() != 3:
            return dropout(x, self.p)
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)  # (B, 1, E)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SequenceTask(pl.LightningModule):
    """A task head on top of ``Recurrent``; subclasses add the head and the metrics.

    All constructor arguments are plain data (they are stored in the checkpoint and
    rebuild the model there, see :func:`toolkit.checkpoints.load_task`).
    """

    head: str
    causal = False  # True: predicts what comes next, so it must not read ahead (direction=bi is refused)

    def __init__(self, spec: dict, cell: dict, depth: int = 1, direction: str = "uni",
                 hidden_size: int = 128, embedding_dim: int = 100, dropout: float = 0.3,
                 rnn_dropout: float = 0.0, word_dropout: float = 0.0, embedding_dropout: float = 0.0,
                 locked_dropout: bool = False, weight_drop: float = 0.0, lr: float = 2e-3, weight_decay: float = 0.0,
                 optimizer: str = "adam", lr_schedule: str = "constant", task_name: str = "",
                 init_from: str | None = None,
                 format_version: int = FORMAT_VERSION, **extra):
        # every hyper-parameter by name (the subclasses' own arrive in extra); taken first, so nothing else is in locals()
        hp = {k: v for k, v in locals().items() if k not in ("self", "spec", "cell", "extra", "__class__")} | extra
        if problems := type(self).problems(hp):
            raise ConfigError("; ".join(problems))
        super().__init__()
        # init_from is kept as a record only: the weights it gave are in the state_dict
        # (toolkit.tasks.transfer copies them once, when training starts).
        # Kept in the checkpoint, not sent to loggers (the vocabulary alone is thousands
        # of entries); the train app logs the resolved Hydra config instead.
        self.save_hyperparameters(logger=False)
        # what embed_tokens passes its output through (adversarial_loss sets it for one call at a time)
        self._embedding_hook: Callable[[Tensor], Tensor] | None = None
        self._adversarial_pass = False  # True while adversarial_loss computes its second term
        self.hparams["head"] = self.head  # tells load_task which class to rebuild
        # names the plugin to install where a checkpoint meets a machine without its cell
        self.hparams["cell_plugin"] = _cell_plugin(cell["name"])
        self.labels = Labels(spec["labels"])
        if "vocab" in spec:  # a token head; a real-valued one (series) reads its features as they are
            self.vocab = Vocab(spec["vocab"])
            self.embed = nn.Embedding(len(self.vocab), embedding_dim, padding_idx=0)
        self.drop = LockedDropout(dropout) if locked_dropout else Dropout(dropout)
        self.rnn = Recurrent(
            cell=cell["name"], input_size=self.input_size(), hidden_size=hidden_size,
            num_layers=depth, bidirectional=direction == "bi", dropout=rnn_dropout,
            backend=cell.get("backend", "auto"), batch_first=True, weight_drop=weight_drop, **cell_hparams(cell),
        )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, weights_only: bool = True, **kwargs):
        """Lightning's loader, returning the model in eval mode (Lightning leaves it in training
        mode, dropout on, so two predictions of one sentence could differ) and reading tensors and
        plain data only. ``toolkit.load`` is the checked path: it also refuses Hydra keys, names a
        missing plugin cell and wraps the model in the batch methods (docs/python.md)."""
        if not weights_only:
            raise ConfigError("load_from_checkpoint reads weights only (weights_only=False would let the file "
                              "run code); toolkit.load reads every toolkit checkpoint that way")
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True,
                                            **kwargs).eval()

    @classmethod
    def problems(cls, hp: dict) -> list[str]:
        """Every problem with the hyper-parameters ``hp``, one sentence each.

        ``hp`` holds constructor keywords (the ``model.*`` keys, ``depth``, ``direction``,
        ``hidden_size``, ``task_name``); a missing one takes the constructor's default.
        ``toolkit.config.validate`` asks before any data loads, the constructor raises
        them together. A subclass returns ``super().problems(hp)`` plus its own keys'.
        """
        hp = defaults(SequenceTask.__init__) | hp
        out = [p for key in ("depth", "hidden_size") if (p := whole_number_problem(key, hp[key]))]
        if hp["direction"] not in ("uni", "bi"):
            out.append(f"direction={hp['direction']!r} must be 'uni' or 'bi'")
        elif hp["direction"] == "bi" and cls.causal:
            out.append((f"direction=bi with task={hp['task_name']}: " if hp["task_name"] else "")
                       + "a language model must not see the tokens it predicts, so it can only be "
                       "unidirectional (direction=uni)")
        for key in ("dropout", "rnn_dropout", "word_dropout", "embedding_dropout", "weight_drop"):
            if problem := number_problem(f"model.{key}", hp[key]):
                out.append(problem)
        lr = hp["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            out.append(f"model.lr={lr!r} must be a positive number")
        if not isinstance(hp["locked_dropout"], bool):
            out.append(f"model.locked_dropout={hp['locked_dropout']!r} must be true or false")
        if hp["lr_schedule"] not in LR_SCHEDULES:
            out.append(f"model.lr_schedule={hp['lr_schedule']!r} is not one of: {', '.join(LR_SCHEDULES)}")
        if hp["optimizer"] not in OPTIMIZERS:
            out.append(f"model.optimizer={hp['optimizer']!r} is not one of: {', '.join(OPTIMIZERS)}")
        if hp["init_from"] is not None and not isinstance(hp["init_from"], str):
            out.append(f"model.init_from={hp['init_from']!r} must be the path of a language-model checkpoint, or null")
        return out

    def input_size(self) -> int:
        return self.hparams.embedding_dim

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, E); in training each known token reads as <unk> with probability
        ``word_dropout``, so the model learns what to do with words it has not seen."""
        p = self.hparams.word_dropout
        if self.training and p > 0:
            drop = (torch.rand(tokens.shape, device=tokens.device) < p) & (tokens > UNK_ID)
            tokens = tokens.masked_fill(drop, UNK_ID)
        p = self.hparams.embedding_dropout
        if self.training and p > 0:
            # whole word types dropped for this batch (every occurrence alike), AWD-LSTM's dropoute
            w = self.embed.weight
            keep = w.new_empty(w.size(0), 1).bernoulli_(1 - p) / (1 - p)
            e = F.embedding(tokens, w * keep, padding_idx=0)
        else:
            e = self.embed(tokens)
        return e if self._embedding_hook is None else self._embedding_hook(e)

    def adversarial_loss(self, loss_of: Callable[[], Tensor], eps: float, every: int = 1) -> Tensor:
        """Adversarial training on the word embeddings (Goodfellow et al. 2015; Miyato et al. 2017).

        ``loss_of()`` computes the training loss L once; with ``eps`` > 0 it runs twice: first as
        it is, then with each sequence's (T, E) embeddings moved by r = eps * g / ||g||, g the
        gradient of L with respect to them (the direction that raises the loss fastest, one L2
        norm over the whole sequence; padded steps get no gradient, so no share of r). Returns
        L + L(embeddings + r) with r held constant: its value, and its gradient with respect to
        every parameter. ``eps`` = 0 returns L, one pass.

        The backward pass that gives g gives L's parameter gradients too, so they are kept rather
        than computed a second time: the returned tensor carries them as a term of value zero,
        sum_p (p * dL/dp) minus its own detached value, which the step's one backward (and DDP's
        gradient reduction with it) turns back into exactly dL/dp.

        ``every`` = k > 1 (``model.adversarial_every``) takes the second pass on every k-th
        optimiser step only (the first, the (k+1)-th, …) and returns L, one pass, on the others."""
        if not eps or self.global_step % every:
            return loss_of()
        seen: list[Tensor] = []
        self._embedding_hook = lambda e: seen.append(e) or e
        try:
            loss = loss_of()
        finally:
            self._embedding_hook = None
        if len(seen) != 1:
            raise RuntimeError(f"adversarial training needs one embedding lookup per loss, got {len(seen)}")
        params = [p for p in self.parameters() if p.requires_grad]
        g, *grads = torch.autograd.grad(loss, [seen[0], *params], allow_unused=True)  # g: (B, T, E)
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
        r = (eps * g / norm.view(-1, *[1] * (g.dim() - 1))).detach()
        self._embedding_hook = lambda e: e + r
        self._adversarial_pass = True
        try:
            adversarial = loss_of()
        finally:
            self._embedding_hook = None
            self._adversarial_pass = False
        self.log("train_adversarial_loss", adversarial, on_step=False, on_epoch=True, batch_size=g.size(0))
        carry = sum((p * d).sum() for p, d in zip(params, grads) if d is not None)
        return loss.detach() + adversarial + (carry - carry.detach())

    def step_inputs(self, batch: dict) -> Tensor:
        """(B, T, input_size()): what the first recurrent layer reads at each step (here the
        dropped-out token embeddings; a head that reads more adds its own features)."""
        return self.drop(self.embed_tokens(batch["tokens"]))  # (B, T, E)

    def encode(self, batch: dict) -> Tensor:
        """(B, T) token ids -> (B, T, H * num_directions), zero at padded steps."""
        x = self.step_inputs(batch)
        y, _ = self.rnn(x, lengths=batch["lengths"], final_state=False)  # y only: the faster padded run
        return self.drop(y)

    def showcase(self, example: str | None, data=None) -> tuple[str, list[str]] | None:
        """What the run's summary ends with: (heading, lines), e.g. the prediction on the task's
        example sentence or a few sampled sequences; None shows nothing. ``data`` is the run's
        data module (e.g. to tell novel samples from training examples)."""
        if not example:
            return None
        return "predict", [repr(example), *self.predict_lines(example)]

    def predict_lines(self, text: str) -> list[str]:
        """``rtk predict``'s output for one text, as printed lines."""
        raise NotImplementedError(f"{type(self).__name__} does not predict from text")

    def configure_optimizers(self):
        # Adam bounds each update by about lr whatever the gradient's size; plain SGD
        # steps by the gradient itself, so an exploding gradient shows (and clipping matters)
        cls = torch.optim.Adam if self.hparams.optimizer == "adam" else torch.optim.SGD
        params = list(self.parameters())
        # torch's fused step (one kernel over every tensor) where it has one: on the CPU it takes
        # a seventh of the time of the default per-tensor loop (``python -m benchmarks --only
        # "training step"``); the same update, up to the rounding of its floating-point sums. Not
        # under mixed precision: a fused step unscales its own gradients, and Lightning's
        # mixed-precision plugin then refuses gradient clipping
        mixed = self._trainer is not None and "mixed" in str(self.trainer.precision)
        fused = (not mixed and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)) or None
        optimizer = cls(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        # cosine: from lr down to 0 over trainer.max_epochs, one step an epoch (Loshchilov & Hutter 2017)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_train_epoch_end(self):
        # a manually optimised model (truncated BPTT) steps its schedule itself
        if not self.automatic_optimization and self.hparams.lr_schedule != "constant":
            self.lr_schedulers().step()
