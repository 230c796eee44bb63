"""data.lexicon: a token -> score lexicon (VADER's, or the user's file) read beside each token by the
classifier (docs/learning.md#a-lexicon-as-an-input-datalexicon)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from toolkit.data.classification import collate_classification, encode_text
from toolkit.data.sources import read_lexicon
from toolkit.data.text import Vocab
from toolkit.errors import DataError


def test_lexicon_file_is_scaled_lower_cased_and_keeps_the_later_of_two_entries(tmp_path):
    f = tmp_path / "lex.tsv"
    # CRLF line ends and extra columns, as VADER's own file has them
    f.write_bytes(b"good\t2.0\t0.5\t[2, 2]\r\nAwful\t-4\r\n\r\n:)\t1\r\ngood\t3\r\n")
    assert read_lexicon(str(f)) == {"good": 0.75, "awful": -1.0, ":)": 0.25}


@pytest.mark.parametrize("text, sentence", [
    ("good\n", "lex.tsv:1: expected token<TAB>score"),
    ("good\tvery\n", "lex.tsv:1: the score 'very' is not a number"),
    ("ok\t1\nbad\tnan\n", "lex.tsv:2: the score 'nan' is not a finite number"),
    ("meh\t0\n", "lex.tsv: every score is 0, so the lexicon says nothing"),
    ("\t1\n", "lex.tsv:1: expected token<TAB>score"),
])
def test_a_bad_lexicon_file_is_one_sentence_naming_the_line(tmp_path, text, sentence):
    f = tmp_path / "lex.tsv"
    f.write_text(text)
    with pytest.raises(DataError) as e:
        read_lexicon(str(f))
    assert str(e.value).endswith(sentence)


def test_the_named_vader_lexicon_reads_valences_from_the_package():
    lex = read_lexicon("vader")  # vaderSentiment 3.3.2's wheel, fetched once into the cache
    assert 7000 < len(lex) < 8000
    assert lex["good"] > 0 > lex["awful"] and lex[":)"] > 0
    assert max(abs(v) for v in lex.values()) == 1.0


def test_a_missing_lexicon_names_the_key_and_the_named_lexicons(tmp_path):
    with pytest.raises(DataError, match=r"data.lexicon=.*nope.tsv: no such file .*one of: vader\)"):
        read_lexicon(str(tmp_path / "nope.tsv"))


def test_each_token_reads_its_score_and_an_unlisted_one_reads_zero():
    vocab = Vocab.build(["a", "good", "film"], 1, None)
    item = encode_text("A GOOD film :)", vocab, "tweet", "lower", {"good": 0.5, ":)": 0.25, "a": -0.1})
    assert item["lexicon"] == [-0.1, 0.5, 0.0, 0.25]  # the tweet tokenizer keeps an emoticon whole
    assert len(item["tokens"]) == len(item["lexicon"])
    assert "lexicon" not in encode_text("a good film", vocab, "words", "lower")  # no lexicon: as before
    batch = collate_classification([item, encode_text("good", vocab, "words", "lower", {"good": 0.5})])
    assert batch["lexicon"].shape == batch["tokens"].shape
    assert batch["lexicon"][1].tolist() == [0.5, 0.0, 0.0, 0.0]  # padded with zeros


def test_the_score_is_one_more_input_of_the_first_recurrent_layer():
    from toolkit.tasks.classification import ClassificationTask

    spec = {"kind": "classification", "tokenizer": "words", "normalize": "lower",
            "vocab": ["<pad>", "<unk>", "good", "bad"], "labels": ["neg", "pos"]}
    cell = {"name": "lstm"}
    plain = ClassificationTask(spec=spec, cell=cell, hidden_size=4, embedding_dim=3)
    lex = ClassificationTask(spec=spec | {"lexicon": {"good": 1.0, "bad": -1.0}}, cell=cell, hidden_size=4,
                             embedding_dim=3).eval()
    assert plain.rnn.input_size == 3 and lex.rnn.input_size == 4
    batch = collate_classification([{"tokens": [2, 3], "lexicon": [1.0, -1.0]}])
    flipped = dict(batch, lexicon=-batch["lexicon"])
    assert not torch.allclose(lex(batch), lex(flipped))  # the model reads the scores
    # raw text is looked up in the stored table
    label, prob = lex.predict_text("GOOD")
    with torch.no_grad():
        want = lex(collate_classification([{"tokens": [2], "lexicon": [1.0]}])).softmax(-1)[0]
    assert prob == pytest.approx(float(want.max())) and label == spec["labels"][int(want.argmax())]


@pytest.mark.slow
def test_a_classifier_trains_with_a_lexicon_file_and_predicts_from_its_checkpoint_alone(rtk, tmp_path):
    rows = tmp_path / "train.csv"
    rows.write_text("text,label\n" + "".join(f"a {w} film,{'pos' if w in ('good', 'fine') else 'neg'}\n"
                                             for w in ("good", "bad", "dull", "fine")) * 10)
    lex = tmp_path / "lex.tsv"
    lex.write_text("good\t2\nfine\t1\nbad\t-2\ndull\t-1\n")
    run = tmp_path / "run"
    r = rtk("train", "task=classification", *TINY, f"data.train_file={rows}", f"data.lexicon={lex}",
            "model.embedding_dim=8", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    ckpt = run / "checkpoints" / "last.ckpt"
    spec = torch.load(ckpt, weights_only=True)["hyper_parameters"]["spec"]
    assert spec["lexicon"] == {"good": 1.0, "fine": 0.5, "bad": -1.0, "dull": -0.5}
    lex.unlink()  # the checkpoint carries the table: prediction does not need the file
    p = rtk("predict", f"ckpt={ckpt}", "text=a good film")
    assert p.returncode == 0, p.explain()
    assert p.stdout.split("\t")[0] in ("pos", "neg")
    # the export reads the scores as an input beside the ids, and its sidecar carries the table
    for fmt, name in (("onnx", "net.onnx"), ("torchscript", "net.pt")):
        e = rtk("export", f"ckpt={ckpt}", f"format={fmt}", f"out={tmp_path / name}")
        assert e.returncode == 0, e.explain()
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert meta["inputs"][:3] == ["tokens", "lexicon", "lengths"]
        assert meta["lexicon"] == spec["lexicon"]
    bad = rtk("train", "task=classification", *TINY, f"data.train_file={rows}",
              f"data.lexicon={tmp_path / 'gone.tsv'}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "gone.tsv: no such file" in bad.stderr, bad.explain()
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
