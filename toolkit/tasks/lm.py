"""Language models: next-token softmax, sampling novel sequences, sentence probability.

One head serves ``char_lm`` (names), ``word_lm`` (the King James Bible, trained
with truncated backpropagation through time), ``music`` (one-to-many: notes
conditioned on a mode token) and the user's own text (``task=lm``).

Truncated BPTT (``tbptt_steps`` set): the data module hands over consecutive
chunks of parallel token streams; the hidden state is carried from one chunk to
the next and detached, so gradients flow back at most ``tbptt_steps`` steps.
That needs manual optimisation, where Lightning's ``trainer.gradient_clip_val``
does not apply (the config rejects it), so the module clips itself
(``clip_grad_norm``).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from toolkit.data.lm import collate_lm, encode_lm
from toolkit.data.text import EOS, PAD, UNK, UNK_ID, normalize, tokenize
from toolkit.errors import ConfigError, whole_number_problem
from toolkit.tasks.base import SequenceTask, defaults

NEW_TEXT_JOIN = {"chars": "", "chars_with_spaces": ""}


class LanguageModelTask(SequenceTask):
    """Embedding -> Recurrent (unidirectional) -> dropout -> softmax over the vocabulary."""

    head = "language_model"
    causal = True
    clip_hint = "set trainer.gradient_clip_val"

    def __init__(self, *args, tbptt_steps: int | None = None, clip_grad_norm: float | None = None,
                 tie_weights: bool = False, samples: int = 10, temperature: float = 0.8,
                 activation_reg: float = 0.0, temporal_activation_reg: float = 0.0, **kw):
        super().__init__(*args, tbptt_steps=tbptt_steps, clip_grad_norm=clip_grad_norm,
                         tie_weights=tie_weights, samples=samples, temperature=temperature,
                         activation_reg=activation_reg, temporal_activation_reg=temporal_activation_reg, **kw)
        self.out = nn.Linear(self.rnn.output_size, len(self.vocab))
        if tie_weights:
            self.out.weight = self.embed.weight
        self.automatic_optimization = tbptt_steps is None
        if tbptt_steps is not None:
            self.clip_hint = "set model.clip_grad_norm (truncated BPTT clips inside the model)"
        self.nll = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self._carry: dict[str, tuple | None] = {"train": None, "val": None, "test": None}
        self.activation_penalty: Tensor | float = 0.0  # AR / TAR of the last training forward

    @classmethod
    def problems(cls, hp: dict) -> list[str]:
        out = super().problems(hp)
        hp = defaults(SequenceTask.__init__) | defaults(LanguageModelTask.__init__) | hp
        if problem := whole_number_problem("model.tbptt_steps", hp["tbptt_steps"], least=2, null=True):
            out.append(problem)
        clip = hp["clip_grad_norm"]
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
            out.append(f"model.clip_grad_norm={clip!r} must be a positive number, or null")
        for key in ("activation_reg", "temporal_activation_reg"):
            value = hp[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                out.append(f"model.{key}={value!r} must be a number of at least 0")
        if hp["tie_weights"] and hp["embedding_dim"] != hp["hidden_size"]:
            out.append(f"model.tie_weights=true needs model.embedding_dim ({hp['embedding_dim']}) "
                       f"equal to hidden_size ({hp['hidden_size']})")
        return out

    # ----------------------------------------------------------------- model
    def forward(self, tokens: Tensor, lengths: Tensor | None = None, state=None) -> tuple[Tensor, tuple]:
        """(B, T) ids -> (B, T, V) next-token logits and the final state.

        In training it also leaves the activation penalty of this call in
        ``self.activation_penalty`` (AR / TAR, Merity et al. 2017; 0 when both are off).
        """
        x = self.drop(self.embed_tokens(tokens))
        y, state = self.rnn(x, lengths=lengths, state=state)  # (B, T, H), zero at padding
        dropped = self.drop(y)
        if self.training:
            # AR: large activations cost; TAR: so do large changes from one step to the next.
            # Padded steps are zero in y, so they add nothing to AR.
            penalty = y.new_zeros(())
            if self.hparams.activation_reg:
                penalty = penalty + self.hparams.activation_reg * dropped.pow(2).mean()
            if self.hparams.temporal_activation_reg and y.size(1) > 1:
                penalty = penalty + self.hparams.temporal_activation_reg * (y[:, 1:] - y[:, :-1]).pow(2).mean()
            self.activation_penalty = penalty
        return self.out(dropped), state

    def _loss(self, batch: dict, stage: str) -> tuple[Tensor, Tensor | float, int]:
        stream = "first" in batch
        state = None
        if stream and not bool(batch["first"]):
            state = self._carry[stage]
        self.activation_penalty = 0.0
        logits, state = self(batch["tokens"], None if stream else batch["lengths"], state)
        penalty = self.activation_penalty if self.training else 0.0
        if stream:
            self._carry[stage] = tuple(s.detach() for s in state)  # the next chunk starts here
        targets = batch["targets"]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return loss, penalty, int((targets != -100).sum())

    def training_step(self, batch, _):
        loss, penalty, n = self._loss(batch, "train")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        if self.automatic_optimization:
            return loss + penalty
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss + penalty)
        if self.hparams.clip_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.clip_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        return loss

    def _eval_step(self, batch, stage):
        loss, _, n = self._loss(batch, stage)
        self.nll[stage].update(loss.detach(), n)  # token-weighted: the mean over every target token

    def validation_step(self, batch, i):
        self._eval_step(batch, "val")

    def test_step(self, batch, i):
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self):
        nats = self.nll["val"].compute()
        self.nll["val"].reset()
        self.log("val_loss", nats, prog_bar=True)
        self.log("val_perplexity", nats.exp())

    def on_test_epoch_end(self):
        nats = self.nll["test"].compute()
        self.nll["test"].reset()
        self.log("test_nats_per_token", nats)
        self.log("test_bits_per_token", nats / math.log(2))
        self.log("test_perplexity", nats.exp())

    def on_train_epoch_start(self):
        self._carry["train"] = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._carry["train"] is not None:  # truncated BPTT: the state the next chunk starts from
            checkpoint["tbptt_carry"] = list(self._carry["train"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning skips on_train_epoch_start when it resumes mid-epoch (an interrupted run): the
        # stream carries on from the saved state; an epoch's first chunk ignores it
        carry = checkpoint.get("tbptt_carry")
        self._carry["train"] = None if carry is None else tuple(carry)

    def on_train_start(self):
        if self._carry["train"] is not None:  # restored before the model moved to its device
            self._carry["train"] = tuple(t.to(self.device) for t in self._carry["train"])

    # ------------------------------------------------------------ text in/out
    @property
    def eos(self) -> int:
        return self.vocab.stoi[EOS]

    def text_tokens(self, text: str) -> list[str]:
        spec = self.hparams.spec
        return [normalize(t, spec["normalize"]) for t in tokenize(text, spec["tokenizer"])]

    def join(self, tokens: list[str]) -> str:
        """Tokens back to text: characters side by side, words with spaces (none before punctuation)."""
        text = NEW_TEXT_JOIN.get(self.hparams.spec["tokenizer"], " ").join(tokens)
        if self.hparams.spec["tokenizer"] == "words":
            text = re.sub(r" ([,.;:!?)])", r"\1", text)
        return text

    @torch.no_grad()
    def sample(self, n: int = 10, temperature: float = 1.0, top_k: int | None = None, max_len: int = 100,
               prompt: list[str] | None = None, seed: int | None = None, allow_unk: bool = False) -> list[list[str]]:
        """``n`` sequences, token by token: sample from the softmax, feed the sample back, stop at <eos>.

        ``prompt`` tokens are read first (a beginning to continue, or a condition such as
        ``<major>``); a model trained with conditions and given no prompt draws one per
        sample, uniformly. ``temperature=0`` is greedy (argmax, deterministic). <unk> is
        never emitted unless ``allow_unk``: its probability is removed and the rest
        renormalised, which is what resampling until a known token gives; likewise <eos> cannot
        be the first token after a prompt with no content, so no sample is empty.
        Returns the prompt followed by the generated tokens, without <eos>.
        """
        if temperature < 0:
            raise ConfigError(f"temperature={temperature} must be 0 (greedy) or more")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k={top_k} must be at least 1")
        if max_len < 1:
            raise ConfigError(f"max_len={max_len} must be at least 1")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        conditions = self.hparams.spec.get("conditions") or []
        prompts = []
        for _ in range(n):
            if prompt is not None:
                p = list(prompt)
            elif conditions:
                p = [conditions[int(torch.randint(len(conditions), (1,), generator=gen, device=self.device))]]
            else:
                p = []
            unknown = [t for t in p if t not in self.vocab.stoi]
            if unknown:
                raise ConfigError(f"prompt token(s) {', '.join(map(repr, unknown))} are not in the model's "
                                  "vocabulary")
            prompts.append(p)
        # the prompts may differ in length (drawn conditions are all one token); run them one length group at a time
        out: list[list[str] | None] = [None] * n
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for _, idx in sorted(by_len.items()):
            ids = torch.tensor([[self.eos] + self.vocab.encode(prompts[i]) for i in idx], device=self.device)
            # a sample with nothing in it (no name, no note) is no sample: <eos> cannot come first
            # unless the prompt already holds content
            empty = torch.tensor([all(t in conditions for t in prompts[i]) for i in idx], device=self.device)
            generated = self._continue(ids, temperature, top_k, max_len, gen, allow_unk, empty)
            for i, g in zip(idx, generated):
                out[i] = prompts[i] + [self.vocab.itos[t] for t in g]
        return out

    def _continue(self, ids: Tensor, temperature: float, top_k: int | None, max_len: int,
                  gen: torch.Generator, allow_unk: bool, empty: Tensor) -> list[list[int]]:
        logits, state = self(ids)
        last = logits[:, -1]
        banned = [self.vocab.stoi[PAD]] + ([] if allow_unk else [self.vocab.stoi[UNK]])
        done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
        seqs: list[list[int]] = [[] for _ in range(ids.size(0))]
        for step in range(max_len):
            last = last.clone()
            last[:, banned] = float("-inf")
            if step == 0:
                last[empty, self.eos] = float("-inf")
            if temperature == 0:
                nxt = last.argmax(-1)
            else:
                scaled = last / temperature
                if top_k is not None and top_k < scaled.size(-1):
                    kth = scaled.topk(top_k, dim=-1).values[:, -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                nxt = torch.multinomial(scaled.softmax(-1), 1, generator=gen).squeeze(1)
            for b in range(len(seqs)):
                if not done[b] and int(nxt[b]) != self.eos:
                    seqs[b].append(int(nxt[b]))
            done |= nxt == self.eos
            if bool(done.all()):
                break
            logits, state = self(nxt[:, None], state=state)
            last = logits[:, -1]
        return seqs

    @torch.no_grad()
    def score_tokens(self, tokens: list[str]) -> dict:
        """log P(tokens, <eos>) and each token's conditional probability given the ones before."""
        item = encode_lm(tokens, [], self.vocab)
        batch = {k: v.to(self.device) for k, v in collate_lm([item]).items()}
        logits, _ = self(batch["tokens"])
        logp = logits.log_softmax(-1)[0].gather(-1, batch["targets"][0][:, None]).squeeze(-1)
        shown = [t if self.vocab.stoi.get(t, UNK_ID) != UNK_ID else f"{t}→<unk>" for t in tokens] + [EOS]
        total = float(logp.sum())
        return {"tokens": shown, "logp": [float(v) for v in logp], "total": total,
                "perplexity": math.exp(-total / len(shown))}

    def predict_lines(self, text: str) -> list[str]:
        toks = self.text_tokens(text)
        if not toks:
            raise ConfigError(f"text={text!r} has no tokens for this model's tokenizer "
                              f"({self.hparams.spec['tokenizer']})")
        s = self.score_tokens(toks)
        return [f"{s['total']:.4f}\t{s['perplexity']:.2f}\t{text}"]

    def showcase(self, example: str | None, data=None) -> tuple[str, list[str]] | None:
        """``samples`` novel sequences (temperature ``temperature``, seed 0): drawn until that many
        are not training examples (at most 10x as many draws), each shown once."""
        n = self.hparams.samples
        if not n:
            return None
        known = set()
        if data is not None and data.raw.get("train") is not None and "text" in data.raw["train"].column_names:
            known = {self.join(self.text_tokens(t)) for t in data.raw["train"]["text"]}
        shown: list[str] = []
        drawn = 0
        gen_seed = 0
        while len(shown) < n and drawn < 10 * n:
            for s in self.sample(n, temperature=self.hparams.temperature, seed=gen_seed, max_len=60):
                text = self.join(s)
                drawn += 1
                if text not in known and text not in shown and len(shown) < n:
                    shown.append(text)
            gen_seed += 1
        what = "novel samples" if known else "samples"
        return "samples", [f"{len(shown)} {what} (temperature {self.hparams.temperature}; {drawn} drawn)", *shown]

    def sample_table(self, examples) -> tuple[list[str], list[list]]:
        samples = self.sample(min(len(examples), 20), temperature=self.hparams.temperature, seed=0, max_len=60)
        return ["sample"], [[self.join(s)] for s in samples]


def last_step_loss(model: LanguageModelTask, batch: dict) -> Tensor:
    """The gradient diagnostic's loss: the next-token loss at each sequence's last real step, from a
    zero state, summed over the batch."""
    lengths = batch.get("lengths")  # a truncated-BPTT chunk has none: every stream is full length
    logits, _ = model(batch["tokens"], lengths)  # (B, T, V), from a zero state
    rows = torch.arange(logits.size(0), device=logits.device)
    last = (lengths.to(logits.device) - 1 if lengths is not None
            else torch.full_like(rows, logits.size(1) - 1))
    return F.cross_entropy(logits[rows, last], batch["targets"][rows, last], reduction="sum",
                           ignore_index=-100)
