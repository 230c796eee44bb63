"""model.stream(): fed piece by piece, in any chunking, it equals the whole-sequence run (1e-5)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import toolkit
from toolkit.api import wrap
from toolkit.errors import ConfigError
from toolkit.layers import Recurrent
from toolkit.data.classification import collate_classification
from toolkit.data.tagging import collate_tagging, encode_tagging

from test_api import classification_task, lm_task, save, seq2seq_task, tagging_task

# every built-in cell (gru in both reset forms) and two plugin cells: minGRU (a parallel-scan
# sequence path) and the layer-norm LSTM (loop only)
CELLS = [("rnn", {}), ("gru_simple", {}), ("gru", {}), ("gru", {"reset": "before"}), ("lstm", {}),
         ("peephole_lstm", {}), ("mingru", {}), ("layernorm_lstm", {})]
IDS = [c + ("-" + "-".join(f"{k}={v}" for k, v in h.items()) if h else "") for c, h in CELLS]
WORDS = "carol king loves berlin . a boring mess great film carol berlin".split()


def chunkings(n: int, seed: int) -> list[list[int]]:
    """One token at a time, all at once, and a random split of n steps."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, n), 3))
    return [[1] * n, [n], [b - a for a, b in zip([0, *cuts], [*cuts, n])]]


def pieces(tokens: list[str], sizes: list[int]) -> list[list[str]]:
    out, at = [], 0
    for s in sizes:
        out.append(tokens[at:at + s])
        at += s
    return out


@pytest.mark.parametrize("cell,hp", CELLS, ids=IDS)
def test_layer_carries_state_across_chunks(cell, hp):
    torch.manual_seed(0)
    rnn = Recurrent(cell, 3, 5, num_layers=2, **hp).eval()
    x = torch.randn(2, 11, 3)
    y, final = rnn(x)
    for sizes in chunkings(11, 1):
        state, ys, at = None, [], 0
        for s in sizes:
            y_part, state = rnn(x[:, at:at + s], state=state)
            ys.append(y_part)
            at += s
        torch.testing.assert_close(torch.cat(ys, 1), y, atol=1e-5, rtol=0)
        for a, b in zip(state, final):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell,hp", CELLS, ids=IDS)
def test_language_model_stream_equals_the_whole_sequence(cell, hp):
    torch.manual_seed(0)
    model = wrap(lm_task(cell=cell, depth=2, cell_hp=hp))
    ids = torch.tensor([model.task.vocab.encode(["<eos>", *WORDS])])
    whole, _ = model.task(ids)
    whole = whole[0].softmax(-1).detach().numpy()
    for sizes in chunkings(len(WORDS), 2):
        stream = model.stream()
        got = np.concatenate([stream.feed(p).probs for p in pieces(WORDS, sizes)])
        np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)
        assert stream.steps == len(WORDS) + 1  # <eos> read first


@pytest.mark.parametrize("cell,hp", CELLS[:1] + CELLS[4:], ids=IDS[:1] + IDS[4:])
@pytest.mark.parametrize("decode", ["greedy", "crf"])
def test_tagger_stream_equals_the_whole_sentence(cell, hp, decode):
    torch.manual_seed(0)
    model = wrap(tagging_task(cell=cell, depth=2, decode=decode, cell_hp=hp))
    tokens = "Carol King loves Berlin . Carol loves a great film".split()
    batch = collate_tagging([encode_tagging(tokens, model.task.vocab, "twitter", model.task.chars)])
    whole = model.task(batch)[0].detach().numpy()
    expected_tags = [tag for _, tag in model.predict([tokens])[0]]
    for sizes in chunkings(len(tokens), 3):
        stream = model.stream()
        steps = [stream.feed(p) for p in pieces(tokens, sizes)]
        np.testing.assert_allclose(np.concatenate([s.logits for s in steps]), whole, atol=1e-5, rtol=0)
        assert steps[-1].tags == expected_tags  # the prefix decoded as predict decodes the sentence


@pytest.mark.parametrize("cell,hp", CELLS[:1] + CELLS[4:], ids=IDS[:1] + IDS[4:])
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
def test_classifier_stream_gives_the_class_probabilities_of_every_prefix(cell, hp, pooling):
    torch.manual_seed(0)
    model = wrap(classification_task(cell=cell, depth=2, pooling=pooling, cell_hp=hp))
    prefixes = [WORDS[:n] for n in range(1, len(WORDS) + 1)]
    items = [{"tokens": model.task.vocab.encode(p)} for p in prefixes]
    expected = model.task(collate_classification(items)).softmax(-1).detach().numpy()  # (n, K): each prefix
    for sizes in chunkings(len(WORDS), 4):
        stream = model.stream()
        steps = [stream.feed(p) for p in pieces(WORDS, sizes)]
        np.testing.assert_allclose(np.concatenate([s.probs for s in steps]), expected, atol=1e-5, rtol=0)
        assert steps[-1].label == model.labels[int(expected[-1].argmax())]


def test_stream_state_can_be_read_and_reset():
    model = wrap(lm_task(depth=2))
    stream = model.stream()
    stream.feed(["carol", "king"])
    h, c = stream.state
    assert h.shape == (2, 1, 6) and c.shape == (2, 1, 6)  # (num_layers * directions, 1, hidden)
    first = stream.feed(["loves"]).probs
    stream.reset()
    again = [stream.feed(["carol"]), stream.feed(["king", "loves"])]
    np.testing.assert_allclose(again[-1].probs[-1], first[-1], atol=1e-6)


def test_bidirectional_and_encoder_decoder_models_refuse_to_stream(tmp_path):
    model = toolkit.load(save(tagging_task(direction="bi"), tmp_path / "bi.ckpt"))
    with pytest.raises(ConfigError, match="^a bidirectional model cannot stream: its reverse direction starts"):
        model.stream()
    with pytest.raises(ConfigError, match="^an encoder-decoder cannot stream: it reads the whole source"):
        toolkit.load(save(seq2seq_task(), tmp_path / "g2p.ckpt")).stream()
