"""Every head's test metrics, pinned on hand-built predictions whose values are worked out below,
with padding in the batches, in one process and split unevenly over two (DDP over gloo on CPU).

Each head here is the real task with only its scores replaced by fixed ones (``forward``, and for
the encoder-decoder its decoders), so the metric code under test is the one training runs.
Run as a script, this file is one rank of the two-process check (see ``run_rank``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolkit.data.lm import collate_lm, encode_lm
from toolkit.data.classification import collate_classification
from toolkit.data.seq2seq import SPECIALS, collate_pairs
from toolkit.data.text import Vocab
from toolkit.tasks.classification import ClassificationTask
from toolkit.tasks.lm import LanguageModelTask
from toolkit.tasks.seq2seq import Seq2SeqTask
from toolkit.tasks.tagging import TaggingTask

CELL = {"name": "rnn"}
SMALL = {"hidden_size": 4, "embedding_dim": 4}


# ----------------------------------------------------------------------------- tagging
TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


class FixedTagger(TaggingTask):
    """Scores come with the batch."""

    def forward(self, batch):
        return batch["logits"]


def tagging_batch(sentences: list[tuple[list[str], list[str]]], pad_tag: str) -> dict:
    """(gold, predicted) tags per sentence -> a padded batch whose scores decode to ``predicted``;
    the padded steps score ``pad_tag`` highest, so counting them would add entities."""
    width = max(len(gold) for gold, _ in sentences)
    tags = torch.full((len(sentences), width), -100)
    logits = torch.full((len(sentences), width, len(TAGS)), -10.0)
    logits[:, :, TAGS.index(pad_tag)] = 10.0
    for i, (gold, pred) in enumerate(sentences):
        tags[i, : len(gold)] = torch.tensor([TAGS.index(t) for t in gold])
        logits[i, : len(pred)] = -10.0
        logits[i, torch.arange(len(pred)), [TAGS.index(t) for t in pred]] = 10.0
    n = [len(gold) for gold, _ in sentences]
    return {"tokens": (tags >= 0).long() * 2, "shapes": torch.zeros_like(tags), "chars": torch.zeros(*tags.shape, 1).long(),
            "lengths": torch.tensor(n), "tags": tags, "logits": logits}


# entities (gold / predicted / both), counted by hand:
TAGGING_BATCHES = [
    tagging_batch([  # PER+LOC / PER+LOC / 2;  LOC / PER / 0 (the padding says B-PER twice)
        ("B-PER I-PER O B-LOC O".split(), "B-PER I-PER O B-LOC O".split()),
        ("B-LOC O O".split(), "O O B-PER".split()),
    ], pad_tag="B-PER"),
    tagging_batch([  # PER+LOC(2 tokens) / PER+LOC(1 token) / 1: a boundary off by one is wrong
        ("B-PER O B-LOC I-LOC".split(), "B-PER O B-LOC O".split()),
    ], pad_tag="B-LOC"),
    tagging_batch([  # - / LOC / 0;  PER / PER / 1
        ("O O".split(), "B-LOC O".split()),
        ("B-PER I-PER I-PER".split(), "B-PER I-PER I-PER".split()),
    ], pad_tag="B-LOC"),
]
# 6 gold entities, 7 predicted, 4 right: P = 4/7, R = 4/6, F1 = 2PR / (P + R) = 8/13
TAGGING = {"test_precision": 4 / 7, "test_recall": 2 / 3, "test_f1": 8 / 13}


def tagger() -> TaggingTask:
    spec = {"kind": "tagging", "tokenizer": "tweet", "normalize": "twitter", "vocab": ["<pad>", "<unk>", "x"],
            "labels": TAGS, "chars": ["<pad>", "<unk>", "x"]}
    return FixedTagger(spec=spec, cell=CELL, char_filters=0, shape_dim=2, **SMALL)


# ----------------------------------------------------------------------------- classification
CLASSES = ["neg", "neu", "pos"]


class FixedClassifier(ClassificationTask):
    def forward(self, batch):
        return batch["logits"]


def classification_batch(gold: list[int], pred: list[int], lengths: list[int]) -> dict:
    batch = collate_classification([{"tokens": [2] * n, "label": g} for n, g in zip(lengths, gold)])
    batch["logits"] = torch.nn.functional.one_hot(torch.tensor(pred), len(CLASSES)).float() * 5
    return batch


CLASSIFICATION_BATCHES = [classification_batch([0, 0, 1], [0, 1, 1], [3, 1, 2]),
                          classification_batch([1, 2], [1, 0], [2, 5]),
                          classification_batch([2, 2], [2, 0], [4, 1])]
# gold 0 0 1 1 2 2 2, predicted 0 1 1 1 0 2 0: 4 of 7 right.
# per class (tp, fp, fn): neg (1, 2, 1) F1 = 2/5; neu (2, 1, 0) F1 = 4/5; pos (1, 0, 2) F1 = 1/2
CLASSIFICATION = {"test_acc": 4 / 7, "test_f1": (2 / 5 + 4 / 5 + 1 / 2) / 3}


def classifier() -> ClassificationTask:
    spec = {"kind": "classification", "tokenizer": "words", "normalize": "lower", "vocab": ["<pad>", "<unk>", "x"],
            "labels": CLASSES}
    return FixedClassifier(spec=spec, cell=CELL, **SMALL)


# ----------------------------------------------------------------------------- language model
LM_VOCAB = Vocab(["<pad>", "<unk>", "<eos>", "a", "b"])
# p(next | current) over <pad> <unk> <eos> a b: powers of two, so each -log p is a multiple of ln 2
BIGRAMS = torch.tensor([[0, 0, 1 / 3, 1 / 3, 1 / 3],   # after <pad> (never a target: padding)
                        [0, 0, 1 / 3, 1 / 3, 1 / 3],   # after <unk>
                        [0, 0, 1 / 4, 1 / 2, 1 / 4],   # after <eos> (the start)
                        [0, 0, 1 / 2, 1 / 4, 1 / 4],   # after a
                        [0, 0, 1 / 4, 1 / 4, 1 / 2]])  # after b


class BigramLM(LanguageModelTask):
    def forward(self, tokens, lengths=None, state=None):
        return BIGRAMS.to(tokens.device).log()[tokens], state  # (B, T, V)


def lm_batch(*texts: str) -> dict:
    return collate_lm([encode_lm(list(t), [], LM_VOCAB) for t in texts])


LM_BATCHES = [lm_batch("ab", "b"), lm_batch("aab"), lm_batch("a")]
# -log2 p:  ab<eos> = 1 + 2 + 2;  b<eos> = 2 + 2;  aab<eos> = 1 + 2 + 2 + 2;  a<eos> = 1 + 1
# 18 bits over 11 predicted tokens (the <pad> targets are not tokens)
LM = {"test_bits_per_token": 18 / 11, "test_nats_per_token": 18 / 11 * math.log(2),
      "test_perplexity": 2 ** (18 / 11)}


def language_model() -> LanguageModelTask:
    spec = {"kind": "language_model", "tokenizer": "chars", "normalize": "lower", "labels": [], "conditions": [],
            "source": None, "vocab": LM_VOCAB.itos}
    return BigramLM(spec=spec, cell=CELL, **SMALL)


# ----------------------------------------------------------------------------- encoder-decoder
PHONES = ["P0", "P1", "P2"]


class FixedDecoder(Seq2SeqTask):
    """Decoding returns the batch's hypotheses (label ids); the loss sees uniform scores."""

    def forward(self, batch):
        return torch.zeros(*batch["dec_out"].shape, len(SPECIALS) + len(PHONES), device=batch["dec_out"].device)

    def greedy(self, batch):
        return batch["hyps"], None

    def beam_search(self, batch, beam_size):
        return batch["hyps"], None


def pairs_batch(words: list[tuple[list[int], list[list[int]]]]) -> dict:
    batch = collate_pairs([{"tokens": [2, 2], "target": refs[0], "refs": refs} for _, refs in words])
    batch["hyps"] = [hyp for hyp, _ in words]
    return batch


SEQ2SEQ_BATCHES = [
    pairs_batch([([0, 1, 2], [[0, 1, 2]]),            # right: 0 edits of 3
                 ([0, 2], [[0, 1, 2], [0]]),          # 1 edit from either: the first listed counts, 1 of 3
                 ([1], [[2, 2, 2, 2]])]),             # 1 substitution + 3 insertions, of 4
    pairs_batch([([], [[1, 1]])]),                    # 2 of 2
    pairs_batch([([2, 1], [[1, 2], [2, 1, 0]])]),     # 2 from the first, 1 from the second: 1 of 3
]
# PER = (0 + 1 + 4 + 2 + 1) / (3 + 3 + 4 + 2 + 3) = 8/15; WER = 4 wrong of 5 words
SEQ2SEQ = {"test_per": 8 / 15, "test_wer": 4 / 5}


def encoder_decoder() -> Seq2SeqTask:
    spec = {"kind": "seq2seq", "tokenizer": "chars", "normalize": "none", "vocab": ["<pad>", "<unk>", "x"],
            "labels": PHONES, "max_target_len": 4, "stress": True}
    return FixedDecoder(spec=spec, cell=CELL, beam_size=2, **SMALL)


HEADS = {"tagging": (tagger, TAGGING_BATCHES, TAGGING),
         "classification": (classifier, CLASSIFICATION_BATCHES, CLASSIFICATION),
         "language_model": (language_model, LM_BATCHES, LM),
         "seq2seq": (encoder_decoder, SEQ2SEQ_BATCHES, SEQ2SEQ)}
# the two ranks' shares: the first two batches and the last, so per-rank values differ from the whole
RANK_BATCHES = {0: [0, 1], 1: [2]}


def measure(head: str, batches: list[dict], **trainer_kw) -> dict[str, float]:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    make, _, _ = HEADS[head]
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, **trainer_kw)
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    out = trainer.test(make(), dataloaders=loader, verbose=False)[0]
    return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("head", HEADS)
def test_metrics_match_the_values_worked_out_by_hand(head):
    _, batches, expected = HEADS[head]
    got = measure(head, batches)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), (key, got)


def test_the_hand_built_sets_would_catch_a_per_rank_answer():
    """Each rank's share alone gives other values, so the two-process test below shows the gather."""
    for head, (_, batches, expected) in HEADS.items():
        for rank, share in RANK_BATCHES.items():
            got = measure(head, [batches[i] for i in share])
            assert any(got[k] != pytest.approx(v, abs=1e-3) for k, v in expected.items()), (head, rank)


# ----------------------------------------------------------------------------- two processes
def run_rank(out_dir: str) -> None:
    """One rank of the DDP check: every head's test metrics over this rank's share, written as JSON."""
    from toolkit.train import close_process_group  # only the rank processes need the Hydra app's module

    rank = int(os.environ["RANK"])
    results = {}
    for head, (_, batches, _) in HEADS.items():
        results[head] = measure(head, [batches[i] for i in RANK_BATCHES[rank]],
                                     strategy="ddp", devices=2, num_nodes=1)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    close_process_group()  # as `rtk train` does: gloo left to interpreter shutdown can abort the rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_metrics_gathered_over_two_processes_count_every_example_once(tmp_path):
    """Two ranks (gloo on CPU, started here the way torchrun would), each with its own uneven share:
    both report the values of the whole set."""
    from conftest import child_env

    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path)], cwd=tmp_path,
                              env=child_env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                                             "RANK": str(rank), "LOCAL_RANK": str(rank), "NODE_RANK": "0"}),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for head, (_, _, expected) in HEADS.items():
            for key, value in expected.items():
                assert got[head][key] == pytest.approx(value, abs=1e-6), (rank, head, key, got[head])


if __name__ == "__main__":
    run_rank(sys.argv[1])
