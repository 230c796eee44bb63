"""Many-to-many, Tx = Ty: one tag per token (named-entity recognition and any BIO tagging)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from seqeval.metrics import f1_score, precision_score, recall_score
from torch import Tensor, nn

from toolkit.data.tagging import collate_tagging, encode_tagging
from toolkit.data.text import SHAPES, Vocab, tokenize
from toolkit.errors import ConfigError, whole_number_problem
from toolkit.layers import Recurrent
from toolkit.tasks.base import SequenceTask, defaults, number_problem
from toolkit.tasks.crf import CRF, bio_constraints, transition_constraints, viterbi  # noqa: F401 (public here too)


class CharCNN(nn.Module):
    """A word's characters -> one vector: embed, convolve, max over the word (Chiu & Nichols 2016).

    Spelling carries what a word embedding of rare words cannot: capitals,
    suffixes, the look of a name.
    """

    def __init__(self, n_chars: int, char_dim: int, filters: int, kernel: int):
        super().__init__()
        self.embed = nn.Embedding(n_chars, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, filters, kernel, padding=kernel // 2)

    def forward(self, chars: Tensor) -> Tensor:
        b, t, w = chars.shape
        x = self.embed(chars.view(b * t, w)).transpose(1, 2)  # (B*T, C, W)
        y = self.conv(x).masked_fill((chars.view(b * t, 1, w) == 0), float("-inf"))  # (B*T, F, W)
        y = y.max(-1).values  # (B*T, F)
        return torch.nan_to_num(y, neginf=0.0).view(b, t, -1)  # padded tokens have no chars -> 0


class CharLSTM(nn.Module):
    """A word's characters -> one vector: a bidirectional LSTM over them, both final states
    (Lample et al. 2016). Runs only the real words of the batch, through ``Recurrent``."""

    def __init__(self, n_chars: int, char_dim: int, features: int):
        super().__init__()
        self.embed = nn.Embedding(n_chars, char_dim, padding_idx=0)
        self.rnn = Recurrent("lstm", char_dim, features // 2, bidirectional=True)

    def forward(self, chars: Tensor) -> Tensor:
        b, t, w = chars.shape
        flat = chars.view(b * t, w)
        n = (flat != 0).sum(1)  # (B*T,) characters per word; 0 for padded tokens
        real = n.nonzero().squeeze(1)
        _, (h, _) = self.rnn(self.embed(flat[real]), lengths=n[real])  # h: (2, N, F/2)
        out = flat.new_zeros(b * t, 2 * h.size(-1), dtype=h.dtype)
        out[real] = torch.cat([h[0], h[1]], -1)
        return out.view(b, t, -1)


CHAR_ENCODERS = ("cnn", "lstm")
DECODERS = ("viterbi", "greedy", "crf")


def bio_to_bioes(labels: list[str]) -> tuple[list[str], Tensor, Tensor]:
    """BIOES tags for BIO ``labels``, a table ``[bio id, next is I-] -> BIOES id`` and one
    ``BIOES id -> BIO id`` (S-x -> B-x, E-x -> I-x)."""
    bioes = sorted({"O"} | {f"{p}-{t[2:]}" for t in labels if t != "O" for p in "BIES"})
    index = {t: i for i, t in enumerate(bioes)}
    to_bioes = torch.zeros(len(labels), 2, dtype=torch.long)
    for i, tag in enumerate(labels):
        kind = tag[2:]
        if tag == "O":
            to_bioes[i] = index["O"]
        elif tag.startswith("B-"):
            to_bioes[i] = torch.tensor([index[f"S-{kind}"], index[f"B-{kind}"]])
        else:
            to_bioes[i] = torch.tensor([index[f"E-{kind}"], index[f"I-{kind}"]])
    bio_index = {t: i for i, t in enumerate(labels)}
    to_bio = torch.tensor([bio_index[t if t == "O" else {"S": "B", "E": "I"}.get(t[0], t[0]) + t[1:]]
                           for t in bioes])
    return bioes, to_bioes, to_bio


class TaggingTask(SequenceTask):
    """Per-token scores over the tag set; entity-level F1 / precision / recall (seqeval).

    Each token is its word embedding, a shape embedding (capitalisation, mention,
    hashtag, …) and, when ``char_filters > 0``, a character encoder (a CNN or a
    BiLSTM over the word's characters). Decoding: ``viterbi`` (softmax per token,
    then the best valid sequence), ``greedy`` (argmax per token) or ``crf`` (a
    linear-chain CRF trained on whole sentences, see ``toolkit.tasks.crf``).
    ``tag_scheme=bioes`` trains on BIOES tags derived from the BIO data (an
    entity's single, first, inner and last tokens told apart) and reports in BIO.
    """

    head = "tagging"

    def __init__(self, *args, shape_dim: int = 16, char_dim: int = 25, char_filters: int = 50,
                 char_kernel: int = 3, char_encoder: str = "cnn", decode: str = "viterbi",
                 tag_scheme: str = "bio", lm_weight: float = 0.0, lm_vocab: int = 7500,
                 adversarial: float = 0.0, adversarial_every: int = 1, gazetteer_dim: int | None = None, **kw):
        self._extra_dim = shape_dim + char_filters
        super().__init__(*args, shape_dim=shape_dim, char_dim=char_dim, char_filters=char_filters,
                         char_kernel=char_kernel, char_encoder=char_encoder, decode=decode,
                         tag_scheme=tag_scheme, lm_weight=lm_weight, lm_vocab=lm_vocab,
                         adversarial=adversarial, adversarial_every=adversarial_every, gazetteer_dim=gazetteer_dim,
                         **kw)
        self.shape_embed = nn.Embedding(len(SHAPES), shape_dim, padding_idx=0)
        n_chars = len(self.hparams.spec["chars"])
        self.char_cnn = None  # the character encoder, CNN or BiLSTM (the name keeps checkpoints' keys)
        if char_filters > 0:
            self.char_cnn = (CharCNN(n_chars, char_dim, char_filters, char_kernel) if char_encoder == "cnn"
                             else CharLSTM(n_chars, char_dim, char_filters))
        self.chars = Vocab(self.hparams.spec["chars"])
        self.tags = self.labels.names  # what the network scores: the data's tags, or BIOES from them
        if tag_scheme == "bioes":
            if bio_constraints(self.labels.names) is None:
                raise ConfigError("model.tag_scheme=bioes needs BIO tags in the data (O, B-<type>, I-<type>)")
            self.tags, to_bioes, to_bio = bio_to_bioes(self.labels.names)
            self.register_buffer("to_bioes", to_bioes, persistent=False)
            self.register_buffer("to_bio", to_bio, persistent=False)
        self.constraints = transition_constraints(self.tags) if decode != "greedy" else None
        self.crf = CRF(len(self.tags), self.constraints) if decode == "crf" else None
        self.out = nn.Linear(self.rnn.output_size, len(self.tags))
        # model.lm_weight: a language-modelling objective beside the tags (Rei 2017): the forward
        # direction predicts the next word, the backward direction the previous one
        self.lm_heads = None
        if lm_weight > 0:
            h = self.hparams.hidden_size
            n_words = min(lm_vocab, len(self.vocab.itos))  # the most frequent words; the rest read as <unk>
            self.lm_heads = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, n_words))
                                          for _ in range(self.rnn.num_directions))
        # model.gazetteer_dim: the flags (B, T, 2 x types) read through a linear map to this many
        # features instead of as they are (built last: without it, a model's first parameters
        # draw the same numbers as before)
        self.gazetteer_proj = None
        if gazetteer_dim is not None:
            if "gazetteer" not in self.hparams.spec:
                raise ConfigError(f"model.gazetteer_dim={gazetteer_dim} needs data.gazetteer (the flags it maps): "
                                  "set data.gazetteer=[…] or model.gazetteer_dim=null")
            n_flags = 2 * len(self.hparams.spec["gazetteer"]["types"])
            self.gazetteer_proj = nn.Linear(n_flags, gazetteer_dim, bias=False)
        self._gold: list[list[str]] = []
        self._pred: list[list[str]] = []

    @classmethod
    def problems(cls, hp: dict) -> list[str]:
        out = super().problems(hp)
        hp = defaults(SequenceTask.__init__) | defaults(TaggingTask.__init__) | hp
        if hp["decode"] not in DECODERS:
            out.append(f"model.decode={hp['decode']!r} must be one of: viterbi (BIO-valid tag sequences), "
                       "greedy (argmax per token), crf (a learned linear-chain CRF)")
        if hp["char_encoder"] not in CHAR_ENCODERS:
            out.append(f"model.char_encoder={hp['char_encoder']!r} must be 'cnn' or 'lstm'")
        kernel, filters = hp["char_kernel"], hp["char_filters"]
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            out.append(f"model.char_kernel={kernel} must be an odd whole number (the "
                       "convolution keeps a word's length only with an odd width)")
        if problem := whole_number_problem("model.char_filters", filters, least=0):
            out.append(problem)
        elif hp["char_encoder"] == "lstm" and filters % 2:
            out.append(f"model.char_filters={filters} must be even with model.char_encoder=lstm "
                       "(half of the features come from each direction)")
        for key in ("shape_dim", "char_dim"):
            if problem := whole_number_problem(f"model.{key}", hp[key]):
                out.append(problem)
        if hp["tag_scheme"] not in ("bio", "bioes"):
            out.append(f"model.tag_scheme={hp['tag_scheme']!r} must be 'bio' or 'bioes'")
        if problem := number_problem("model.lm_weight", hp["lm_weight"], high=10.0):
            out.append(problem)
        elif hp["lm_weight"] and hp["direction"] == "bi" and hp["depth"] != 1:
            out.append(f"model.lm_weight={hp['lm_weight']} needs depth=1 with direction=bi: above the first "
                       "layer, the forward states have already read the words they would predict")
        if problem := whole_number_problem("model.lm_vocab", hp["lm_vocab"], least=2):
            out.append(problem)
        if problem := number_problem("model.adversarial", hp["adversarial"], high=100.0):
            out.append(problem)
        if problem := whole_number_problem("model.adversarial_every", hp["adversarial_every"]):
            out.append(problem)
        if problem := whole_number_problem("model.gazetteer_dim", hp["gazetteer_dim"], null=True):
            out.append(problem)
        return out

    def input_size(self) -> int:
        # data.gazetteer: two flags a phrase type (a phrase starts here, one continues through here),
        # or model.gazetteer_dim features mapped from them
        gazetteer = 0
        if "gazetteer" in self.hparams.spec:
            gazetteer = self.hparams.gazetteer_dim or 2 * len(self.hparams.spec["gazetteer"]["types"])
        return self.hparams.embedding_dim + self._extra_dim + gazetteer

    def features(self, batch: dict) -> Tensor:
        """The encoder's outputs (B, T, H*D), dropout applied."""
        parts = [self.embed_tokens(batch["tokens"]), self.shape_embed(batch["shapes"])]  # (B, T, E), (B, T, S)
        if self.char_cnn is not None:
            parts.append(self.char_cnn(batch["chars"]))  # (B, T, F)
        if "gazetteer" in self.hparams.spec:
            if "gazetteer" not in batch:
                raise ValueError("this tagger was trained with data.gazetteer, so its batches need the flags: "
                                 "encode_tagging(tokens, vocab, normalize, chars, spec['gazetteer'])")
            flags = batch["gazetteer"].to(parts[0])  # (B, T, 2 x types)
            parts.append(flags if self.gazetteer_proj is None else self.gazetteer_proj(flags))
        y, _ = self.rnn(self.drop(torch.cat(parts, -1)), lengths=batch["lengths"], final_state=False)  # (B, T, H*D)
        return self.drop(y)

    def forward(self, batch: dict) -> Tensor:
        return self.out(self.features(batch))  # (B, T, n_tags)

    def lm_loss(self, y: Tensor, batch: dict) -> Tensor:
        """The language-modelling objective of ``model.lm_weight``: mean cross-entropy of the forward
        direction's output at t against word t+1 and the backward direction's against word t-1 (a
        sentence boundary is one more class, id 0; words past ``model.lm_vocab`` are <unk>)."""
        tokens = batch["tokens"]
        n_words = self.lm_heads[0][-1].out_features
        tokens = torch.where(tokens < n_words, tokens, torch.ones_like(tokens))  # 1 = <unk>; padding stays 0
        lengths = batch["lengths"].to(tokens.device)
        real = torch.arange(tokens.size(1), device=tokens.device)[None] < lengths[:, None]  # (B, T)
        pad = tokens.new_zeros(tokens.size(0), 1)
        targets = [torch.cat([tokens[:, 1:], pad], 1),  # the next word; after the last one: the boundary, 0
                   torch.cat([pad, tokens[:, :-1]], 1)]  # the previous word; before the first: 0
        h = self.hparams.hidden_size
        losses = [F.cross_entropy(head(y[..., d * h:(d + 1) * h])[real], target[real])
                  for d, (head, target) in enumerate(zip(self.lm_heads, targets))]
        return sum(losses) / len(losses)

    def decode(self, logits: Tensor, lengths: Tensor) -> list[list[int]]:
        """(B, T, K) scores -> label ids (the data's tags) per sentence."""
        if self.crf is not None:
            paths = self.crf.decode(logits, lengths)
        elif self.constraints is None:
            paths = [row[:n] for row, n in zip(logits.argmax(-1).tolist(), lengths.tolist())]
        else:
            paths = viterbi(logits.log_softmax(-1), lengths, *self.constraints)
        if self.hparams.tag_scheme == "bioes":
            to_bio = self.to_bio.tolist()
            paths = [[to_bio[i] for i in p] for p in paths]
        return paths

    def network_tags(self, tags: Tensor) -> Tensor:
        """The data's tag ids (B, T; -100 at padding) -> the ids the network is trained on."""
        if self.hparams.tag_scheme != "bioes":
            return tags
        nxt = torch.cat([tags[:, 1:], tags.new_full((tags.size(0), 1), -100)], 1)
        inside = self.to_bioes.new_tensor([t.startswith("I-") for t in self.labels.names])
        nxt_is_i = torch.where(nxt >= 0, inside[nxt.clamp(min=0)], False).long()
        return torch.where(tags >= 0, self.to_bioes[tags.clamp(min=0), nxt_is_i], -100)

    def _loss(self, batch: dict, logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(the tags' loss, the tag scores (B, T, K)); ``logits``: the scores, if already computed."""
        logits = self(batch) if logits is None else logits
        tags = self.network_tags(batch["tags"])
        if self.crf is not None:  # sentence likelihood, per token so its scale matches cross-entropy
            return self.crf.nll(logits, tags, batch["lengths"]) / batch["lengths"].sum(), logits
        loss = F.cross_entropy(logits.flatten(0, 1), tags.flatten(), ignore_index=-100)
        return loss, logits

    def _train_loss(self, batch: dict) -> Tensor:
        if self.lm_heads is None:
            return self._loss(batch)[0]
        # training only: val_loss and test_loss are the tags' own
        y = self.features(batch)
        loss, _ = self._loss(batch, self.out(y))
        lm = self.lm_loss(y, batch)
        if not self._adversarial_pass:  # the clean sentence's language-modelling loss only
            self.log("train_lm_loss", lm, on_step=False, on_epoch=True, batch_size=len(batch["lengths"]))
        return loss + self.hparams.lm_weight * lm

    def training_step(self, batch, _):
        loss = self.adversarial_loss(lambda: self._train_loss(batch), self.hparams.adversarial,
                                     self.hparams.adversarial_every)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["lengths"]))
        return loss

    def _eval_step(self, batch, stage):
        loss, logits = self._loss(batch)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=len(batch["lengths"]), sync_dist=True)
        names = self.labels.names
        for pred, gold, n in zip(self.decode(logits, batch["lengths"]), batch["tags"].tolist(),
                                 batch["lengths"].tolist()):
            self._pred.append([names[i] for i in pred[:n]])
            self._gold.append([names[i] for i in gold[:n]])

    def _eval_end(self, stage):
        gold, pred = self._gold, self._pred
        self._gold, self._pred = [], []
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # each rank saw different sentences: the entity counts must cover them all
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (gold, pred))
            gold = [s for g, _ in parts for s in g]
            pred = [s for _, p in parts for s in p]
        if not gold:
            return
        kw = {"zero_division": 0}
        # identical on every rank after the gather, so no further reduction is needed
        self.log(f"{stage}_f1", float(f1_score(gold, pred, **kw)), prog_bar=True, sync_dist=True)
        self.log(f"{stage}_precision", float(precision_score(gold, pred, **kw)), sync_dist=True)
        self.log(f"{stage}_recall", float(recall_score(gold, pred, **kw)), sync_dist=True)

    def validation_step(self, batch, i):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, i):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    @torch.no_grad()
    def predict_text(self, text: str) -> list[tuple[str, str]]:
        """Raw text -> [(token, tag), ...] with the tokenizer the model was trained with."""
        tokens = tokenize(text, self.hparams.spec["tokenizer"])
        return list(zip(tokens, self.predict_tokens(tokens))) if tokens else []

    @torch.no_grad()
    def predict_tokens(self, tokens: list[str]) -> list[str]:
        """Already split tokens -> one tag each."""
        spec = self.hparams.spec
        item = encode_tagging(tokens, self.vocab, spec["normalize"], self.chars, spec.get("gazetteer"))
        batch = collate_tagging([item])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return [self.labels.names[i] for i in self.decode(self(batch), batch["lengths"])[0]]

    def predict_lines(self, text: str) -> list[str]:
        return [f"{token}\t{tag}" for token, tag in self.predict_text(text)]

    def showcase(self, example: str | None, data=None) -> tuple[str, list[str]] | None:
        if not example:
            return None
        return "predict", [repr(example), " ".join(f"{tok}/{tag}" for tok, tag in self.predict_text(example))]

    def sample_table(self, examples) -> tuple[list[str], list[list[str]]]:
        """Gold and predicted tags for a few raw examples (a table for the experiment tracker)."""
        rows = [[" ".join(ex["tokens"]), " ".join(ex["tags"]), " ".join(self.predict_tokens(ex["tokens"]))]
                for ex in examples]
        return ["tokens", "gold", "predicted"], rows


def last_step_loss(model: TaggingTask, batch: dict) -> Tensor:
    """The gradient diagnostic's loss: the last token's own softmax (also for a CRF tagger, whose
    emissions are these logits), summed over the batch."""
    logits = model(batch)  # (B, T, K)
    rows = torch.arange(logits.size(0), device=logits.device)
    last = batch["lengths"].to(logits.device) - 1
    tags = model.network_tags(batch["tags"])  # the ids the network scores (BIOES under tag_scheme=bioes)
    return F.cross_entropy(logits[rows, last], tags[rows, last], reduction="sum")
