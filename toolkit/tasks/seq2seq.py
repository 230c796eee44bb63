"""Many-to-many, Tx != Ty: an encoder-decoder with attention (g2p: a word's letters -> its phonemes).

Encoder: the shared embedding -> ``Recurrent`` (any cell, ``depth``, ``direction``).
Decoder: a second ``Recurrent`` of the same cell, always unidirectional (it reads only
what it has written), ``model.decoder_depth`` layers (default ``depth``). Its initial
state is a learned projection of the encoder's final states (every layer, both
directions concatenated), one projection per state tensor (``h``; ``h`` and ``c``)::

    s_0 = tanh(W_s [h_enc^(1,fwd); h_enc^(1,bwd); …; h_enc^(L,bwd)] + b_s)

Attention (``model.attention: true``), Luong et al. 2015 "general", without input
feeding so the decoder runs over the whole teacher-forced target in one fused call::

    score(h_t, h̄_s) = h_t^T W_a h̄_s,   α_t = softmax over the source's real steps
    c_t = Σ_s α_ts h̄_s,   h̃_t = tanh(W_c [c_t; h_t]),   p(y_t | y_<t, x) = softmax(W_o h̃_t + b_o)

Without attention, ``h̃_t = h_t``. Training: teacher forcing, cross-entropy over
``y1 … yn <eos>`` (padding ignored), Adam with the learning rate multiplied by
``model.lr_decay`` whenever ``val_per`` does not improve. Decoding, step by step
through the decoder with T = 1 and the state carried: greedy (validation) or
batched beam search (test, ``rtk predict``; ``model.beam_size``). Beam hypotheses are ranked by their plain
sum of log-probabilities, not length-normalised: a pronunciation's length follows
from the spelling, and the plain sum is the model's own probability of the output.

Metrics (``per``, ``wer``), for words w with hypothesis h_w and references R_w::

    r*_w = argmin_{r in R_w} d(h_w, r)        (d: Levenshtein distance, unit costs;
                                                ties go to the first listed reference)
    PER  = Σ_w d(h_w, r*_w) / Σ_w |r*_w|
    WER  = |{w : h_w not in R_w}| / |W|

The sums are torchmetrics states, added over DDP ranks before dividing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from toolkit.cells import cell_hparams
from toolkit.data.seq2seq import BOS_ID, EOS_ID, PAD_ID, SPECIALS, collate_pairs, strip_stress
from toolkit.data.text import normalize, tokenize
from toolkit.errors import ConfigError, whole_number_problem
from toolkit.layers import Recurrent, length_mask
from toolkit.tasks.base import SequenceTask, defaults, number_problem

State = tuple[Tensor, ...]


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions (1 each) from a to b."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def closest_reference(hyp: Sequence, refs: Sequence[Sequence]) -> tuple[int, int]:
    """(edit distance, length) of the reference nearest to ``hyp``; ties go to the first listed."""
    return min(((edit_distance(hyp, r), len(r)) for r in refs), key=lambda d_n: d_n[0])


def error_counts(hyps: Sequence[Sequence], refs: Sequence[Sequence[Sequence]]) -> tuple[int, int, int]:
    """For words with one hypothesis and a list of references each: (Σ edits to the closest
    reference, Σ that reference's length, words matching none of their references)."""
    edits = length = wrong = 0
    for hyp, word_refs in zip(hyps, refs, strict=True):
        d, n = closest_reference(hyp, word_refs)
        edits, length, wrong = edits + d, length + n, wrong + (d > 0)
    return edits, length, wrong


class ErrorRate(Metric):
    """Σ errors / Σ total over an epoch (never a mean of per-batch rates); both sums are
    reduced over DDP ranks before the division."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kw):
        super().__init__(**kw)
        self.add_state("errors", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, errors: int, total: int) -> None:
        self.errors += errors
        self.total += total

    def compute(self) -> Tensor:
        return self.errors / self.total


class Seq2SeqTask(SequenceTask):
    """Encoder-decoder with Luong attention; greedy and beam-search decoding; PER and WER."""

    head = "seq2seq"

    @classmethod
    def problems(cls, hp: dict) -> list[str]:
        out = super().problems(hp)
        hp = defaults(SequenceTask.__init__) | defaults(Seq2SeqTask.__init__) | hp
        for key, null in (("decoder_depth", True), ("beam_size", False)):
            if problem := whole_number_problem(f"model.{key}", hp[key], null=null):
                out.append(problem)
        if not isinstance(hp["attention"], bool):
            out.append(f"model.attention={hp['attention']!r} must be true or false")
        if problem := number_problem("model.label_smoothing", hp["label_smoothing"]):
            out.append(problem)
        decay = hp["lr_decay"]
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1):
            out.append(f"model.lr_decay={decay!r} must be a number in (0, 1), or null for none")
        elif decay is not None and hp["lr_schedule"] != "constant":
            out.append(f"model.lr_decay={decay!r} and model.lr_schedule={hp['lr_schedule']!r} are two "
                       "learning-rate schedules; set model.lr_decay=null to use the other")
        return out

    def __init__(self, *args, decoder_depth: int | None = None, attention: bool = True, beam_size: int = 5,
                 lr_decay: float | None = None, label_smoothing: float = 0.0, **kw):
        super().__init__(*args, decoder_depth=decoder_depth, attention=attention, beam_size=beam_size,
                         lr_decay=lr_decay, label_smoothing=label_smoothing, **kw)
        hp = self.hparams
        cell = dict(hp.cell)
        n_out = len(SPECIALS) + len(self.labels)
        h = hp.hidden_size
        self.tgt_embed = nn.Embedding(n_out, hp.embedding_dim, padding_idx=PAD_ID)
        self.decoder = Recurrent(
            cell=cell["name"], input_size=hp.embedding_dim, hidden_size=h,
            num_layers=decoder_depth or hp.depth, bidirectional=False, dropout=hp.rnn_dropout,
            backend=cell.get("backend", "auto"), batch_first=True,
            **cell_hparams(cell),
        )
        enc_state = self.rnn.num_layers * self.rnn.num_directions * h
        self.bridge = nn.ModuleList(nn.Linear(enc_state, self.decoder.num_layers * h)
                                    for _ in self.decoder.state_names)
        if attention:
            self.attn_score = nn.Linear(h, self.rnn.output_size, bias=False)  # W_a
            self.attn_out = nn.Linear(self.rnn.output_size + h, h, bias=False)  # W_c
        self.out = nn.Linear(h, n_out)
        never = torch.zeros(n_out, dtype=torch.bool)
        never[[PAD_ID, BOS_ID]] = True  # inputs only: never an output
        self.register_buffer("never_out", never, persistent=False)
        finished = torch.full((n_out,), float("-inf"))
        finished[PAD_ID] = 0.0
        self.register_buffer("finished_row", finished, persistent=False)
        self.metrics = nn.ModuleDict({f"{stage}_{name}": ErrorRate()
                                      for stage in ("val", "test") for name in ("per", "wer")})

    # ------------------------------------------------------------------ model
    def encode_source(self, batch: dict) -> tuple[Tensor, Tensor, State]:
        """-> encoder outputs (B, S, H*D), source mask (B, S), decoder's initial state ((L_dec, B, H) each)."""
        x = self.drop(self.embed(batch["tokens"]))  # (B, S, E)
        lengths = batch["lengths"]
        enc, final = self.rnn(x, lengths=lengths)  # (B, S, H*D); each (L*D, B, H)
        b, h, layers = x.size(0), self.hparams.hidden_size, self.decoder.num_layers
        state = tuple(
            torch.tanh(proj(s.transpose(0, 1).reshape(b, -1)))  # (B, L*D*H) -> (B, L_dec*H)
            .view(b, layers, h).transpose(0, 1).contiguous()  # (L_dec, B, H)
            for proj, s in zip(self.bridge, final))
        mask = length_mask(lengths.to(enc.device), enc.size(1))
        return self.drop(enc), mask, state

    def output_logits(self, y: Tensor, enc: Tensor, mask: Tensor) -> Tensor:
        """Decoder outputs (B, T, H) -> (B, T, V) scores, attending over enc (B, S, H*D)."""
        if self.hparams.attention:
            scores = torch.bmm(self.attn_score(y), enc.transpose(1, 2))  # (B, T, S)
            alpha = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
            context = torch.bmm(alpha, enc)  # (B, T, H*D)
            y = torch.tanh(self.attn_out(torch.cat([context, y], -1)))  # (B, T, H)
        return self.out(self.drop(y)).masked_fill(self.never_out, float("-inf"))

    def forward(self, batch: dict) -> Tensor:
        """Teacher forcing: decoder inputs ``<bos> y1 … yn`` -> (B, n+1, V) scores for ``y1 … yn <eos>``."""
        enc, mask, state = self.encode_source(batch)
        # No lengths: the decoder is causal, so padding only changes outputs past each
        # target's end, which the loss ignores; the fused kernel then runs unpacked.
        y, _ = self.decoder(self.drop(self.tgt_embed(batch["dec_in"])), state=state)  # (B, n+1, H)
        return self.output_logits(y, enc, mask)

    def step(self, tokens: Tensor, state: State, enc: Tensor, mask: Tensor) -> tuple[Tensor, State]:
        """One decoder step for N hypotheses: previous tokens (N,) -> log-probs (N, V), new state."""
        y, state = self.decoder(self.drop(self.tgt_embed(tokens))[:, None], state=state)  # (N, 1, H)
        return self.output_logits(y, enc, mask)[:, 0].log_softmax(-1), state

    def max_steps(self, batch: dict) -> Tensor:
        """Per example (B,): how many tokens decoding may write before it stops without <eos>,
        the longest training target or twice the source's length, whichever is more. Each
        example's own limit, so an output never depends on what else is in its batch."""
        lengths = batch["lengths"].to(self.device)
        return (2 * lengths).clamp(min=self.hparams.spec.get("max_target_len", 0)) + 1

    @staticmethod
    def _labels_of(ids: Tensor) -> list[list[int]]:
        """(B, T) output ids -> label ids up to the first <eos> (or <pad>)."""
        out = []
        for row in ids.tolist():
            seq = []
            for i in row:
                if i in (EOS_ID, PAD_ID):
                    break
                seq.append(i - len(SPECIALS))
            out.append(seq)
        return out

    # --------------------------------------------------------------- decoding
    @torch.no_grad()
    def greedy(self, batch: dict) -> tuple[list[list[int]], Tensor]:
        """The most probable next token at every step -> (label ids per example, their log-probs (B,))."""
        enc, mask, state = self.encode_source(batch)
        b = enc.size(0)
        tokens = torch.full((b,), BOS_ID, dtype=torch.long, device=enc.device)
        done = torch.zeros(b, dtype=torch.bool, device=enc.device)
        score = enc.new_zeros(b)
        limits = self.max_steps(batch)
        out = []
        for t in range(int(limits.max())):
            logp, state = self.step(tokens, state, enc, mask)  # (B, V)
            best, tokens = logp.max(-1)
            score += best.masked_fill(done, 0.0)
            tokens = tokens.masked_fill(done, PAD_ID)
            out.append(tokens)
            done |= (tokens == EOS_ID) | (limits <= t + 1)
            if done.all():
                break
        return self._labels_of(torch.stack(out, 1)), score

    @torch.no_grad()
    def beam_search(self, batch: dict, beam_size: int) -> tuple[list[list[int]], Tensor]:
        """Batched beam search -> (the best hypothesis's label ids per example, its log-prob (B,)).

        All B * K hypotheses step together. A finished hypothesis (it wrote <eos>) keeps
        its slot and its score (it may only continue with <pad>, at log-prob 0), so
        finished and unfinished hypotheses compete on the same plain sum of log-probs;
        the search ends when every slot is finished or at each example's ``max_steps``.
        """
        enc, mask, state = self.encode_source(batch)
        b, k = enc.size(0), beam_size
        enc, mask = enc.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)  # (B*K, S, ·)
        state = tuple(s.repeat_interleave(k, 1) for s in state)  # (L, B*K, H)
        scores = enc.new_full((b, k), float("-inf"))
        scores[:, 0] = 0.0  # one live hypothesis at the start, not K copies of it
        tokens = torch.full((b * k,), BOS_ID, dtype=torch.long, device=enc.device)
        done = torch.zeros(b * k, dtype=torch.bool, device=enc.device)
        offsets = torch.arange(b, device=enc.device)[:, None] * k  # (B, 1)
        history: list[tuple[Tensor, Tensor]] = []  # per step: (token, parent slot), each (B*K,)
        limits = self.max_steps(batch)
        for t in range(int(limits.max())):
            logp, state = self.step(tokens, state, enc, mask)  # (B*K, V)
            logp = torch.where(done[:, None], self.finished_row, logp)
            v = logp.size(-1)
            scores, idx = (scores.view(-1, 1) + logp).view(b, k * v).topk(k, dim=-1)  # (B, K), best first
            parent = (idx // v + offsets).view(-1)  # (B*K,) flat slot each new hypothesis extends
            tokens = (idx % v).view(-1)
            state = tuple(s.index_select(1, parent) for s in state)
            done = (done[parent] | (tokens == EOS_ID) | torch.isinf(scores.view(-1))
                    | (limits <= t + 1).repeat_interleave(k))
            history.append((tokens, parent))
            if done.all():
                break
        slot = offsets.view(-1)  # topk sorts: slot 0 of each example holds its best hypothesis
        out = []
        for tok, parent in reversed(history):
            out.append(tok[slot])
            slot = parent[slot]
        return self._labels_of(torch.stack(out[::-1], 1)), scores[:, 0]

    @torch.no_grad()
    def sequence_log_prob(self, batch: dict, hyps: list[list[int]]) -> Tensor:
        """log p(h <eos> | x) of given label-id sequences, teacher-forced in one pass (B,)."""
        target = [[i + len(SPECIALS) for i in h] for h in hyps]
        width = max(len(t) for t in target) + 1
        dec_in = torch.full((len(hyps), width), PAD_ID, dtype=torch.long, device=self.device)
        dec_out = torch.full_like(dec_in, -100)
        for row, t in enumerate(target):
            dec_in[row, : len(t) + 1] = torch.tensor([BOS_ID, *t])
            dec_out[row, : len(t) + 1] = torch.tensor([*t, EOS_ID])
        logp = self({**batch, "dec_in": dec_in}).log_softmax(-1)  # (B, T, V)
        picked = logp.gather(-1, dec_out.clamp(min=0)[..., None])[..., 0]
        return picked.masked_fill(dec_out == -100, 0.0).sum(-1)

    # --------------------------------------------------------------- training
    def _loss(self, batch: dict, label_smoothing: float = 0.0) -> Tensor:
        logits = self(batch).flatten(0, 1)  # (B * T, V)
        targets = batch["dec_out"].flatten()
        if not label_smoothing:
            return F.cross_entropy(logits, targets, ignore_index=-100)
        # (1 - e) of the target's loss + e of the mean loss over the tokens the decoder may write
        # (<pad> and <bos> score -inf; F.cross_entropy's smoothing would spread mass onto them)
        keep = targets != -100
        logp = logits[keep].log_softmax(-1)[:, ~self.never_out]  # (N, V'), the writable tokens
        allowed = torch.cumsum(~self.never_out, 0) - 1  # a token's column in logp
        nll = -logp.gather(-1, allowed[targets[keep]][:, None])[:, 0]
        return ((1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)).mean()

    def training_step(self, batch, _):
        # label smoothing (Szegedy et al. 2016) shapes the training loss only; val_loss is the plain one
        loss = self._loss(batch, self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["lengths"]))
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        n = len(batch["lengths"])
        self.log(f"{stage}_loss", self._loss(batch), prog_bar=True, batch_size=n, sync_dist=True)
        # validation decodes greedily (fast, every epoch); test with the full beam
        hyps, _ = self.greedy(batch) if stage == "val" else self.beam_search(batch, self.hparams.beam_size)
        edits, ref_tokens, wrong = error_counts(hyps, batch["refs"])
        self.metrics[f"{stage}_per"].update(edits, ref_tokens)
        self.metrics[f"{stage}_wer"].update(wrong, n)
        for name in ("per", "wer"):
            self.log(f"{stage}_{name}", self.metrics[f"{stage}_{name}"], prog_bar=name == "per", batch_size=n)

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        if self.hparams.lr_decay is None or self.hparams.lr_schedule != "constant":
            return optimizer
        # a short run gains most from a smaller step once validation stops improving
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=self.hparams.lr_decay,
                                                               patience=0)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val_per", "strict": False}}

    def validation_step(self, batch, i):
        self._eval_step(batch, "val")

    def test_step(self, batch, i):
        self._eval_step(batch, "test")

    # ---------------------------------------------------------------- predict
    def source_words(self, text: str) -> list[str]:
        """The sources one text holds: each word (a character model), or the whole line."""
        # a character model reads one word at a time; another tokenizer reads the whole line
        return text.split() if self.hparams.spec["tokenizer"] == "chars" else [text.strip()]

    @torch.no_grad()
    def predict_words(self, words: list[str]) -> list[list[str]]:
        """Source strings -> their target tokens (beam search, ``model.beam_size``)."""
        spec = self.hparams.spec
        items = []
        for word in words:
            tokens = self.vocab.encode(normalize(t, spec["normalize"]) for t in tokenize(word, spec["tokenizer"]))
            if not tokens:
                raise ConfigError(f"text={word!r} has no tokens for this model's tokenizer ({spec['tokenizer']})")
            items.append({"tokens": tokens})
        batch = {k: v.to(self.device) for k, v in collate_pairs(items).items()}
        training = self.training  # the run's summary calls this after trainer.test, in train mode
        self.eval()
        try:
            hyps, _ = self.beam_search(batch, self.hparams.beam_size)
        finally:
            self.train(training)
        return [[self.labels.names[i] for i in h] for h in hyps]

    def predict_lines(self, text: str) -> list[str]:
        """One line per word: ``word<TAB>PH1 PH2 …``."""
        words = self.source_words(text)
        return [f"{w}\t{' '.join(p)}" for w, p in zip(words, self.predict_words(words))]

    def showcase(self, example: str | None, data=None) -> tuple[str, list[str]] | None:
        if not example:
            return None
        words = self.source_words(example)
        return "predict", [repr(example), *(f"{w} → {' '.join(p)}" for w, p in zip(words, self.predict_words(words)))]

    def sample_table(self, examples) -> tuple[list[str], list[list[str]]]:
        """References and the beam-search output for a few raw examples (a table for the tracker)."""
        predicted = self.predict_words(list(examples["word"]))
        keep = self.hparams.spec.get("stress", True)
        rows = [[w, " | ".join(" ".join(p if keep else strip_stress(p)) for p in prons), " ".join(hyp)]
                for w, prons, hyp in zip(examples["word"], examples["prons"], predicted)]
        return ["source", "references", "predicted"], rows
