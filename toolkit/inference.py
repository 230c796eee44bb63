"""The batch methods of each head: what ``toolkit.load`` returns (see ``toolkit.api``).

One class per head family, declared with the head in ``toolkit.heads`` (``Head.api``).
Text is tokenised, normalised and encoded by the head's own data functions
(``toolkit.data.<head>``) and decoded by the task's own ``decode`` / ``sample`` /
``beam_search``, so the CLI, the Python API, the stream and the export share one path.
Every batch method takes a list and runs it through the network ``batch_size`` items
at a time (one forward per batch, the items sorted by length so little is padded),
and returns the results in the caller's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from toolkit.data.classification import collate_classification, encode_text, lexicon_scores
from toolkit.data.series import collate_series
from toolkit.data.tagging import MAX_WORD_CHARS, collate_tagging, encode_tagging
from toolkit.data.text import EOS, SHAPES, normalize, tokenize
from toolkit.errors import ConfigError
from toolkit.stream import Step, Stream
from toolkit.tasks.base import SequenceTask

BATCH_SIZE = 256  # items per forward: large enough to amortise the per-call cost, small enough for any CPU


def _batches(n_items: int, sizes: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    """Item indices in batches of similar length (longest first), each at most ``batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a whole number of at least 1")
    order = sorted(range(n_items), key=lambda i: -sizes[i])
    for lo in range(0, n_items, batch_size):
        yield order[lo:lo + batch_size]


class Model:
    """A trained task ready for inference; subclasses add the batch methods of their head
    (a real-valued head, e.g. ``series``, adds its array methods the same way).

    Attributes: ``task`` (the LightningModule), ``head``, ``labels`` (what the network
    predicts, in its output order), ``spec`` (tokenizer, normaliser, vocabulary, labels).
    """

    head: str

    def __init__(self, task: SequenceTask):
        self.head = task.hparams.head
        self.task = task.eval()
        self.spec = task.hparams.spec
        self.labels: list[str] = list(task.labels.names)

    @property
    def device(self) -> torch.device:
        return self.task.device

    def __repr__(self) -> str:
        hp = self.task.hparams
        return (f"{type(self).__name__}(head={self.head!r}, cell={hp.cell['name']!r}, depth={hp.depth}, "
                f"direction={hp.direction!r}, hidden_size={hp.hidden_size}, device={str(self.device)!r})")

    def tokens(self, text: str) -> list[str]:
        """Raw text -> tokens, with the tokenizer the model was trained with."""
        return tokenize(text, self.spec["tokenizer"])

    def _token_lists(self, items: Sequence[str | Sequence[str]]) -> list[list[str]]:
        if isinstance(items, str):
            raise ConfigError("give a list of texts (or of token lists), not one string: model.predict([text])")
        out = []
        for i, item in enumerate(items):
            toks = self.tokens(item) if isinstance(item, str) else list(item)
            if not toks:
                raise ConfigError(f"item number {i + 1} ({item!r}) has no tokens for this model's tokenizer "
                                  f"({self.spec['tokenizer']})")
            out.append(toks)
        return out

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def lines(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[str]]:
        """``rtk predict``'s printed lines, one list per text. Here one text at a time through the
        task's ``predict_lines``: the extension point of a head that declares no batch class
        (``Head.api``); the classes below override it with one forward per batch."""
        return [self.task.predict_lines(text) for text in texts]

    # ---- what toolkit.export needs of a head (one place per head: these classes)
    export_inputs: tuple[str, ...] = ()  # the network's inputs before the state; () when not exportable

    def export_refusal(self) -> str | None:
        """Why this model cannot be exported, in one sentence; None when it can."""
        if not self.export_inputs:
            return (f"a {self.head} model cannot be exported: its head declares no export inputs "
                    "(toolkit/inference.py)")
        return None

    def export_logits(self, inputs: dict) -> Tensor:
        """The head's own forward on the export's named inputs."""
        return self.task(inputs)

    def export_meta(self) -> dict:
        """What the head adds to the export's JSON sidecar."""
        return {}

    def stream(self):
        """A :class:`toolkit.stream.Stream` over this model (unidirectional models only)."""
        if type(self).stream_step is Model.stream_step:
            raise ConfigError(f"a {self.head} model cannot stream: its head declares no stream step "
                              "(toolkit/inference.py)")
        return Stream(self)

    def stream_step(self, stream, tokens: list[str]):
        """The head's outputs for ``tokens``, the next steps of ``stream`` (whose state the encoder
        starts from): a :class:`toolkit.stream.Step`."""
        raise NotImplementedError

    def _step(self, tokens: list[str], logits: Tensor) -> Step:
        return Step(tokens=tokens, probs=logits.softmax(-1).cpu().numpy(), logits=logits.cpu().numpy())


class Tagger(Model):
    """One tag per token (``ner``, ``tagging``)."""

    head = "tagging"

    @torch.no_grad()
    def _logits(self, token_lists: list[list[str]], batch_size: int) -> Iterable[tuple[list[int], Tensor, Tensor]]:
        task = self.task
        for idx in _batches(len(token_lists), [len(t) for t in token_lists], batch_size):
            items = [encode_tagging(token_lists[i], task.vocab, self.spec["normalize"], task.chars,
                                    self.spec.get("gazetteer")) for i in idx]
            batch = self._to_device(collate_tagging(items))
            yield idx, task(batch), batch["lengths"]  # (B, T, K) network scores, (B,)

    def predict(self, items: Sequence[str | Sequence[str]], batch_size: int = BATCH_SIZE) -> list[list[tuple[str, str]]]:
        """Texts (or token lists) -> [(token, tag), …] each, decoded as in training (``model.decode``)."""
        token_lists = self._token_lists(items)
        out: list = [None] * len(token_lists)
        for idx, logits, lengths in self._logits(token_lists, batch_size):
            for i, path in zip(idx, self.task.decode(logits, lengths)):
                out[i] = list(zip(token_lists[i], (self.labels[t] for t in path)))
        return out

    def predict_proba(self, items: Sequence[str | Sequence[str]], batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
        """Texts (or token lists) -> a (tokens, len(labels)) array of tag probabilities each.

        With a CRF these are the exact marginals P(tag_t | sentence) (the gradient of the log
        partition function with respect to the emissions); otherwise the per-token softmax.
        With ``tag_scheme=bioes`` the columns are the network's BIOES tags (``model.network_labels``).
        """
        token_lists = self._token_lists(items)
        out: list = [None] * len(token_lists)
        for idx, logits, lengths in self._logits(token_lists, batch_size):
            probs = self._marginals(logits, lengths) if self.task.crf is not None else logits.softmax(-1)
            for row, i in enumerate(idx):
                out[i] = probs[row, :len(token_lists[i])].cpu().numpy()
        return out

    def _marginals(self, emissions: Tensor, lengths: Tensor) -> Tensor:
        with torch.enable_grad():
            e = emissions.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.task.crf.log_partition(e, lengths).sum(), e)
        return grad

    @property
    def network_labels(self) -> list[str]:
        """The columns of :meth:`predict_proba`: the data's tags, or the BIOES tags trained on."""
        return list(self.task.tags)

    def lines(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[str]]:
        return [[f"{tok}\t{tag}" for tok, tag in pairs] for pairs in self.predict(texts, batch_size)]

    def stream_step(self, stream, tokens: list[str]):
        """Scores of the new tokens; the tags of every token so far, decoded over the whole prefix."""
        task = self.task
        # a gazetteer phrase cut by a chunk boundary is not matched: each chunk's tokens are looked up alone
        item = encode_tagging(tokens, task.vocab, self.spec["normalize"], task.chars, self.spec.get("gazetteer"))
        logits = task(self._to_device(collate_tagging([item])))[0]  # (n, K)
        step = self._step(tokens, logits)
        every = torch.cat([*stream.memory.get("emissions", []), logits])[None]  # (1, steps so far, K)
        stream.memory["emissions"] = [every[0]]
        lengths = torch.tensor([every.size(1)], device=self.device)
        step.tags = [self.labels[i] for i in task.decode(every, lengths)[0]]
        if task.crf is not None:  # marginals given the prefix read so far
            step.probs = self._marginals(every, lengths)[0, -len(tokens):].cpu().numpy()
        return step

    @property
    def export_inputs(self) -> tuple[str, ...]:
        # data.gazetteer: each token's phrase flags, (B, T, 2 x types) float, are an input too
        return ("tokens", "shapes", "chars", *(("gazetteer",) if "gazetteer" in self.spec else ()), "lengths")

    def export_refusal(self) -> str | None:
        hp = self.task.hparams
        if hp.get("char_filters", 0) > 0 and hp.get("char_encoder") == "lstm":
            return ("a tagger with model.char_encoder=lstm cannot be exported: its character LSTM runs only "
                    "the batch's real words (a data-dependent selection the exporters reject); "
                    "train with model.char_encoder=cnn to export")
        return None

    def export_meta(self) -> dict:
        task = self.task
        out = {"shapes": list(SHAPES), "chars": list(task.chars.itos), "max_word_chars": MAX_WORD_CHARS,
               "network_labels": list(task.tags),
               "decode": task.hparams.decode}  # greedy: argmax per token; viterbi / crf: the best path with these
        if "gazetteer" in self.spec:  # rtk_text.encode_tagging(tokens, vocab, normalize, chars, meta["gazetteer"])
            out["gazetteer"] = dict(self.spec["gazetteer"])
        if task.crf is not None:
            trans, start, end = (t.tolist() for t in task.crf.scores())  # -inf: a forbidden transition
            out["crf"] = {"transitions": trans, "start": start, "end": end}
        elif task.constraints is not None:
            allowed, start, end = (t.tolist() for t in task.constraints)
            out["viterbi"] = {"allowed": allowed, "start": start, "end": end}
        return out


class Classifier(Model):
    """One label per sequence (``sentiment``, ``peptides``, ``classification``)."""

    head = "classification"

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Texts -> (len(texts), len(labels)) softmax probabilities, columns in ``model.labels`` order."""
        if isinstance(texts, str):
            raise ConfigError("give a list of texts, not one string: model.predict([text])")
        spec, task = self.spec, self.task
        items = [encode_text(t, task.vocab, spec["tokenizer"], spec["normalize"], spec.get("lexicon")) for t in texts]
        for i, (text, item) in enumerate(zip(texts, items)):
            if not item["tokens"]:
                raise ConfigError(f"item number {i + 1} ({text!r}) has no tokens for this model's tokenizer "
                                  f"({spec['tokenizer']})")
        out = np.zeros((len(items), len(self.labels)), dtype=np.float32)
        for idx in _batches(len(items), [len(it["tokens"]) for it in items], batch_size):
            batch = self._to_device(collate_classification([items[i] for i in idx]))
            out[idx] = task(batch).softmax(-1).cpu().numpy()
        return out

    def predict(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[str]:
        """Texts -> the most probable label each."""
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(-1)]

    def lines(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[str]]:
        probs = self.predict_proba(texts, batch_size)
        return [[f"{self.labels[int(p.argmax())]}\t{float(p.max()):.4f}\t{text}"] for p, text in zip(probs, texts)]

    def stream_step(self, stream, tokens: list[str]):
        """Class probabilities after each new token, pooled over everything read so far."""
        task = self.task
        item = {"tokens": task.vocab.encode(normalize(t, self.spec["normalize"]) for t in tokens)}
        if (lexicon := self.spec.get("lexicon")) is not None:
            item["lexicon"] = lexicon_scores(tokens, lexicon)
        y = task.encode(self._to_device(collate_classification([item])))[0]  # (n, H)
        step = self._step(tokens, task.out(self._running_pool(stream, y)))  # (n, K)
        step.label = self.labels[int(step.probs[-1].argmax())]
        return step

    def _running_pool(self, stream, y: Tensor) -> Tensor:
        """(n, H) outputs of the new steps -> (n, H) pooled (as ``model.pooling``) over every step read
        up to each one; the running sum, max or attention sums are kept in the stream."""
        pooling = self.task.hparams.pooling
        if pooling == "last":
            return y
        if pooling == "attention":
            return Classifier._running_attention(self, stream, y)  # also called for the series model
        before = stream.memory.get("pool")
        if pooling == "max":
            run = y.cummax(0).values
            run = run if before is None else torch.maximum(run, before)
        else:  # mean: the running sum over the running count
            run = y.cumsum(0) if before is None else y.cumsum(0) + before
        stream.memory["pool"] = run[-1]
        if pooling == "max":
            return run
        count = torch.arange(stream.steps + 1, stream.steps + y.size(0) + 1, device=y.device, dtype=y.dtype)
        return run / count[:, None]

    def _running_attention(self, stream, y: Tensor) -> Tensor:
        """Attention pooling of every prefix, one new step at a time (an online softmax): the
        stream keeps the largest score m so far, Σ exp(e_t - m) and Σ exp(e_t - m) y_t."""
        scores = self.task.attention_pool.scores(y)  # (n,)
        m, total, weighted = stream.memory.get("attention", (None, None, None))
        out = []
        for e, step in zip(scores, y):
            if m is None:
                m, total, weighted = e, torch.ones_like(e), step
            else:
                new = torch.maximum(m, e)
                old_scale, w = torch.exp(m - new), torch.exp(e - new)
                m, total, weighted = new, total * old_scale + w, weighted * old_scale + w * step
            out.append(weighted / total)
        stream.memory["attention"] = (m, total, weighted)
        return torch.stack(out)

    @property
    def export_inputs(self) -> tuple[str, ...]:
        # data.lexicon: each token's score, (B, T) float, is an input beside its id
        return ("tokens", "lexicon", "lengths") if "lexicon" in self.spec else ("tokens", "lengths")

    def export_meta(self) -> dict:
        out = {"pooling": self.task.hparams.pooling}
        if "lexicon" in self.spec:  # rtk_text.encode_text(text, vocab, tokenizer, normalize, meta["lexicon"])
            out["lexicon"] = dict(self.spec["lexicon"])
        return out


class LanguageModel(Model):
    """Next-token softmax: sample (``generate``), score (``score``), and read one step at a time (``stream``)."""

    head = "language_model"

    def tokens(self, text: str) -> list[str]:
        """Raw text -> the model's (normalised) tokens."""
        return [normalize(t, self.spec["normalize"]) for t in tokenize(text, self.spec["tokenizer"])]

    def join(self, tokens: list[str]) -> str:
        """Tokens back to text (characters side by side, words with spaces)."""
        return self.task.join(tokens)

    def score(self, items: Sequence[str | Sequence[str]], batch_size: int = BATCH_SIZE) -> list[dict]:
        """Texts (or token lists) -> {tokens, logp, total, perplexity} each: log P(tokens, <eos>) in nats,
        each token's log-probability given the ones before, and exp(-total / number of tokens)."""
        token_lists = self._token_lists(items)
        out: list = [None] * len(token_lists)
        for idx in _batches(len(token_lists), [len(t) for t in token_lists], batch_size):
            for i, scored in zip(idx, self.task.score_batch([token_lists[i] for i in idx])):
                out[i] = scored
        return out

    def generate_tokens(self, n: int = 10, temperature: float = 1.0, top_k: int | None = None,
                        prompt: str | Sequence[str] | None = None, seed: int | None = None, max_len: int = 100,
                        allow_unk: bool = False) -> list[list[str]]:
        """``n`` samples as token lists, all drawn together (one forward per step for the batch).

        ``prompt``: text or tokens to continue (music: a condition such as ``<major>``);
        ``temperature=0`` is greedy; ``seed`` makes the draw repeatable.
        """
        if isinstance(prompt, str):
            text = prompt
            prompt = self.tokens(prompt)
            if not prompt:
                raise ConfigError(f"prompt={text!r} has no tokens for this model")
        return self.task.sample(n, temperature=temperature, top_k=top_k, max_len=max_len,
                                prompt=None if prompt is None else list(prompt), seed=seed, allow_unk=allow_unk)

    def generate(self, n: int = 10, temperature: float = 1.0, top_k: int | None = None,
                 prompt: str | Sequence[str] | None = None, seed: int | None = None, max_len: int = 100,
                 allow_unk: bool = False) -> list[str]:
        """``n`` samples as text (see :meth:`generate_tokens`)."""
        return [self.join(s) for s in self.generate_tokens(n, temperature, top_k, prompt, seed, max_len, allow_unk)]

    def lines(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[str]]:
        return [[f"{s['total']:.4f}\t{s['perplexity']:.2f}\t{text}"] for s, text in zip(self.score(texts, batch_size), texts)]

    def stream_step(self, stream, tokens: list[str]):
        """The next-token distribution after each step; the first call reads <eos> first, as score does."""
        ids = self.task.vocab.encode(tokens)
        if not stream.steps:
            tokens, ids = [EOS, *tokens], [self.task.eos, *ids]
        logits, _ = self.task(torch.tensor([ids], device=self.device))
        return self._step(tokens, logits[0])  # (n, V)

    export_inputs = ("tokens", "lengths")

    def export_logits(self, inputs: dict) -> Tensor:
        logits, _ = self.task(inputs["tokens"], inputs["lengths"])
        return logits

    def export_meta(self) -> dict:
        return {"start_token": EOS}  # read first, as score does


class Transducer(Model):
    """Encoder-decoder (``g2p``, ``seq2seq``): a source string -> target tokens, by beam search."""

    head = "seq2seq"

    def predict(self, sources: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[str]]:
        """Source strings (words, for g2p) -> target tokens each (``model.beam_size`` beams)."""
        if isinstance(sources, str):
            raise ConfigError("give a list of source strings, not one string: model.predict([word])")
        sources = list(sources)
        out: list = [None] * len(sources)
        for idx in _batches(len(sources), [len(s) for s in sources], batch_size):
            for i, hyp in zip(idx, self.task.predict_words([sources[i] for i in idx])):
                out[i] = hyp
        return out

    def lines(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[str]]:
        words = [self.task.source_words(t) for t in texts]
        flat = self.predict([w for ws in words for w in ws], batch_size)
        out, at = [], 0
        for ws in words:
            out.append([f"{w}\t{' '.join(p)}" for w, p in zip(ws, flat[at:at + len(ws)])])
            at += len(ws)
        return out

    def stream(self):
        raise ConfigError("an encoder-decoder cannot stream: it reads the whole source before it writes "
                          "the first target token")

    def export_refusal(self) -> str | None:
        return "a seq2seq model cannot be exported: its decoding (beam search) runs in Python, step by step"


class Series(Model):
    """One label (or one number) per real-valued sequence (``vowels``, ``motions``, ``gunpoint``,
    ``series``, ``series_regression``). Items are (T, F) float arrays of any length T, or one
    (N, T, F) array; the model standardises them with its training statistics itself."""

    head = "series"

    def tokens(self, text: str) -> list[str]:
        raise ConfigError("a series model reads arrays, not text: give (T, F) float arrays "
                          "(stream.feed takes an (n, F) array of the next frames)")

    def _arrays(self, items) -> list[np.ndarray]:
        if isinstance(items, str):
            self.tokens(items)
        if isinstance(items, np.ndarray) and items.ndim == 3:
            items = list(items)
        elif isinstance(items, np.ndarray):
            raise ConfigError(f"give a list of (T, F) arrays or one (N, T, F) array, not one array of shape "
                              f"{items.shape}: model.predict([x])")
        n_features = self.spec["features"]
        out = []
        for i, x in enumerate(items):
            a = np.asarray(x, dtype=np.float32)
            if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != n_features:
                raise ConfigError(f"sequence number {i + 1} has shape {a.shape}; this model reads (T, {n_features}) "
                                  "arrays with T at least 1")
            if not np.isfinite(a).all():
                raise ConfigError(f"sequence number {i + 1} holds NaN or infinite values")
            out.append(a)
        return out

    @torch.no_grad()
    def _outputs(self, items, batch_size: int) -> np.ndarray:
        """(N, K) class probabilities, or (N,) numbers in the target's units (regression)."""
        xs, task = self._arrays(items), self.task
        out = np.zeros((len(xs),) if task.regression else (len(xs), len(self.labels)), dtype=np.float32)
        for idx in _batches(len(xs), [len(x) for x in xs], batch_size):
            scores = task(self._to_device(collate_series([{"x": torch.from_numpy(xs[i])} for i in idx])))
            out[idx] = (task.to_units(scores) if task.regression else scores.softmax(-1)).cpu().numpy()
        return out

    def predict_proba(self, items, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Arrays -> (N, len(labels)) softmax probabilities, columns in ``model.labels`` order."""
        if self.task.regression:
            raise ConfigError("a regression model predicts numbers, not probabilities: model.predict(arrays)")
        return self._outputs(items, batch_size)

    def predict(self, items, batch_size: int = BATCH_SIZE) -> list:
        """Arrays -> the most probable label each, or the predicted number (regression)."""
        out = self._outputs(items, batch_size)
        return out.tolist() if self.task.regression else [self.labels[i] for i in out.argmax(-1)]

    def stream(self):
        if self.task.hparams.downsample > 1:
            raise ConfigError(f"a model trained with model.downsample={self.task.hparams.downsample} cannot stream "
                              "frame by frame: each of its steps is the mean of that many frames (predict whole "
                              "arrays instead)")
        return super().stream()

    def stream_step(self, stream, frames: list):
        """After each new frame: the class probabilities (the label) or the predicted number, pooled
        over every frame read so far (``model.pooling``, as the whole-sequence run pools)."""
        task = self.task
        x = torch.from_numpy(self._arrays([np.stack([np.asarray(f, dtype=np.float32) for f in frames])])[0])[None]
        y = task.encode(self._to_device({"x": x, "lengths": torch.tensor([x.size(1)])}))[0]  # (n, H)
        scores = task.out(Classifier._running_pool(self, stream, y))  # (n, K) or (n, 1)
        if task.regression:
            values = task.to_units(scores.squeeze(-1)).cpu().numpy()[:, None]
            return Step(tokens=list(frames), probs=values, logits=values)
        step = self._step(list(frames), scores)
        step.label = self.labels[int(step.probs[-1].argmax())]
        return step
