"""toolkit.load and the batch methods (the path rtk predict / generate / score take), and streaming."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import toolkit
from toolkit.inference import LanguageModel, Tagger
from toolkit.cli import main
from toolkit.errors import CheckpointError, ConfigError
from toolkit.tasks.classification import ClassificationTask
from toolkit.tasks.lm import LanguageModelTask
from toolkit.tasks.seq2seq import Seq2SeqTask
from toolkit.tasks.tagging import TaggingTask

WORDS = ["<pad>", "<unk>", "carol", "king", "loves", "berlin", ".", "a", "boring", "mess", "great", "film"]
TAGS = ["B-LOC", "B-PER", "I-PER", "O"]
CHARS = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz.CKB"]
SMALL = {"hidden_size": 6, "embedding_dim": 5, "dropout": 0.5}  # dropout on: eval mode must switch it off


def tagging_task(cell="lstm", depth=1, direction="uni", cell_hp=None, gazetteer=None, **kw) -> TaggingTask:
    spec = {"kind": "tagging", "tokenizer": "tweet", "normalize": "twitter", "vocab": WORDS, "labels": TAGS,
            "chars": CHARS}
    if gazetteer is not None:  # data.gazetteer's phrases, as the data module stores them
        spec["gazetteer"] = gazetteer
    return TaggingTask(spec=spec, cell={"name": cell, **(cell_hp or {})}, depth=depth, direction=direction, shape_dim=3,
                       char_filters=4, char_dim=3, **{**SMALL, **kw})


def classification_task(cell="lstm", depth=1, direction="uni", cell_hp=None, lexicon=None, **kw) -> ClassificationTask:
    spec = {"kind": "classification", "tokenizer": "words", "normalize": "lower", "vocab": WORDS,
            "labels": ["neg", "pos"]}
    if lexicon is not None:  # data.lexicon's table, as the data module stores it
        spec["lexicon"] = lexicon
    return ClassificationTask(spec=spec, cell={"name": cell, **(cell_hp or {})}, depth=depth, direction=direction, **{**SMALL, **kw})


def lm_task(cell="lstm", depth=1, cell_hp=None, **kw) -> LanguageModelTask:
    spec = {"kind": "lm", "tokenizer": "words", "normalize": "lower", "labels": [], "conditions": [],
            "source": None, "vocab": [*WORDS, "<eos>"]}
    return LanguageModelTask(spec=spec, cell={"name": cell, **(cell_hp or {})}, depth=depth, **{**SMALL, **kw})


def seq2seq_task(**kw) -> Seq2SeqTask:
    spec = {"kind": "seq2seq", "tokenizer": "chars", "normalize": "lower", "vocab": ["<pad>", "<unk>", *"abcdeklmnorst"],
            "labels": ["AH", "B", "K", "R", "T"], "max_target_len": 6, "stress": True}
    return Seq2SeqTask(spec=spec, cell={"name": "gru"}, beam_size=2, **{**SMALL, **kw})


def save(task, path) -> str:
    """A checkpoint as rtk train writes it (the parts that loading reads)."""
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return str(path)


TEXTS = ["Carol King loves Berlin .", "a boring mess", "great film", "Berlin"]


# ----------------------------------------------------------------------------- toolkit.load
def test_load_returns_an_eval_mode_model_whose_predictions_repeat(tmp_path):
    path = save(tagging_task(), tmp_path / "t.ckpt")
    model = toolkit.load(path)
    assert isinstance(model, Tagger) and not model.task.training
    assert model.predict(TEXTS) == model.predict(TEXTS)
    assert [tok for tok, _ in model.predict(["Carol King loves Berlin ."])[0]] == ["Carol", "King", "loves", "Berlin", "."]


def test_load_from_checkpoint_of_a_task_class_predicts_deterministically(tmp_path):
    # Lightning's own load_from_checkpoint leaves the model in training mode (dropout on);
    # the task classes' returns it in eval mode
    path = save(classification_task(dropout=0.9), tmp_path / "c.ckpt")
    task = ClassificationTask.load_from_checkpoint(path)
    assert not task.training
    assert task.predict_text("a boring mess") == task.predict_text("a boring mess")


def test_load_keeps_the_checkpoint_safety(tmp_path):
    hp = dict(classification_task().hparams)
    hp["spec"] = {**hp["spec"], "_target_": "os.system"}
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": hp}, bad)
    with pytest.raises(CheckpointError, match="Hydra instantiation key"):
        toolkit.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        toolkit.load(tmp_path / "none.ckpt")


def test_load_puts_the_model_on_map_location(tmp_path):
    model = toolkit.load(save(lm_task(), tmp_path / "lm.ckpt"), map_location="cpu")
    assert model.device == torch.device("cpu") and isinstance(model, LanguageModel)


def test_batch_results_equal_one_at_a_time_in_the_callers_order(tmp_path):
    tagger = toolkit.load(save(tagging_task(cell="gru", decode="crf"), tmp_path / "t.ckpt"))
    one_by_one = [tagger.predict([t])[0] for t in TEXTS]
    assert tagger.predict(TEXTS, batch_size=3) == one_by_one
    probs = tagger.predict_proba(TEXTS)
    assert [p.shape for p in probs] == [(5, 4), (3, 4), (2, 4), (1, 4)]
    np.testing.assert_allclose([p.sum(-1) for p in probs[0:1]], [np.ones(5)], atol=1e-5)  # CRF marginals sum to 1

    clf = toolkit.load(save(classification_task(pooling="mean"), tmp_path / "c.ckpt"))
    p = clf.predict_proba(TEXTS, batch_size=2)
    assert p.shape == (4, 2)
    np.testing.assert_allclose(p, np.concatenate([clf.predict_proba([t]) for t in TEXTS]), atol=1e-6)
    assert clf.predict(TEXTS) == [clf.labels[i] for i in p.argmax(-1)]

    lm = toolkit.load(save(lm_task(), tmp_path / "lm.ckpt"))
    scores = lm.score(TEXTS, batch_size=3)
    for text, s in zip(TEXTS, scores):
        alone = lm.task.score_tokens(lm.tokens(text))
        assert s["tokens"] == alone["tokens"]
        assert s["total"] == pytest.approx(alone["total"], abs=1e-4)


def test_predict_refuses_one_bare_string_and_empty_items(tmp_path):
    model = toolkit.load(save(classification_task(), tmp_path / "c.ckpt"))
    with pytest.raises(ConfigError, match="give a list of texts"):
        model.predict("a boring mess")
    with pytest.raises(ConfigError, match="item number 2"):
        model.predict(["a film", "   "])


def test_generate_is_batched_and_repeatable_with_a_seed(tmp_path):
    lm = toolkit.load(save(lm_task(), tmp_path / "lm.ckpt"))
    a = lm.generate(5, temperature=1.0, seed=3, max_len=6)
    assert len(a) == 5 and a == lm.generate(5, temperature=1.0, seed=3, max_len=6)
    assert all(s.startswith("carol") for s in lm.generate(2, prompt="Carol", seed=0, max_len=3))


def test_rtk_predict_prints_what_the_api_returns(tmp_path, capsys):
    path = save(classification_task(), tmp_path / "c.ckpt")
    assert main(["predict", f"ckpt={path}", *(f"text={t}" for t in TEXTS)]) == 0
    printed = capsys.readouterr().out.splitlines()
    model = toolkit.load(path)
    assert [line.split("\t")[0] for line in printed] == model.predict(TEXTS)
    assert [line.split("\t")[2] for line in printed] == TEXTS


def test_classifier_cannot_generate(tmp_path):
    model = toolkit.load(save(classification_task(), tmp_path / "c.ckpt"))
    assert not hasattr(model, "generate")
    with pytest.raises(CheckpointError, match="not a language_model model"):
        toolkit.load(tmp_path / "c.ckpt", expect="language_model")


def test_transducer_predicts_a_batch_of_words_as_rtk_predict_prints_them(tmp_path):
    model = toolkit.load(save(seq2seq_task(), tmp_path / "g2p.ckpt"))
    words = ["cat", "rob", "tomb"]
    assert model.predict(words, batch_size=2) == [model.predict([w])[0] for w in words]
    assert model.lines(["cat rob"]) == [[f"cat\t{' '.join(model.predict(['cat'])[0])}",
                                         f"rob\t{' '.join(model.predict(['rob'])[0])}"]]


def test_load_from_checkpoint_will_not_read_code(tmp_path):
    path = save(classification_task(), tmp_path / "c.ckpt")
    with pytest.raises(ConfigError, match="reads weights only"):
        ClassificationTask.load_from_checkpoint(path, weights_only=False)
