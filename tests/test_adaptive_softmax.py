"""The adaptive softmax (model.softmax=adaptive): an exact distribution, a loss equal to the
full cross-entropy of that distribution, tied weights, and a language model that trains with it."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.tasks.softmax import AdaptiveSoftmax

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "hidden_size=8", "model.embedding_dim=8"]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_log_prob_is_a_distribution_over_every_id(tied):
    torch.manual_seed(0)
    emb = nn.Embedding(30, 6) if tied else None
    soft = AdaptiveSoftmax(6, 30, [8, 20], tied=emb)
    logp = soft.log_prob(torch.randn(4, 5, 6))
    assert logp.shape == (4, 5, 30)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(4, 5), atol=1e-5)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_nll_equals_cross_entropy_of_the_full_log_prob_and_skips_ignored_targets(tied):
    torch.manual_seed(1)
    emb = nn.Embedding(30, 6) if tied else None
    soft = AdaptiveSoftmax(6, 30, [8, 20], tied=emb)
    h = torch.randn(3, 7, 6, requires_grad=True)
    targets = torch.randint(0, 30, (3, 7))
    targets[0, :3] = -100
    targets[1, 0], targets[1, 1], targets[2, 2] = 0, 29, 8  # each cluster's edges
    fast = soft.nll(h, targets)
    full = F.cross_entropy(soft.log_prob(h).reshape(-1, 30), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(fast, full, atol=1e-6)
    g_fast = torch.autograd.grad(fast, [h, *soft.parameters()], allow_unused=True)
    g_full = torch.autograd.grad(full, [h, *soft.parameters()], allow_unused=True)
    for a, b in zip(g_fast, g_full):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)


def test_tied_output_vectors_are_the_embedding_rows():
    emb = nn.Embedding(12, 4)
    soft = AdaptiveSoftmax(4, 12, [5], tied=emb)
    with torch.no_grad():
        emb.weight.zero_()
        emb.weight[9] = 10.0  # a tail word: the tail softmax must follow the embedding
    logp = soft.log_prob(torch.ones(1, 4))[0]
    assert logp[5:].argmax() + 5 == 9
    assert {id(p) for p in soft.parameters()} >= {id(emb.weight)}


def test_bad_cutoffs_are_refused():
    for cutoffs in ([], [0], [5, 5], [12], [7, 3]):
        with pytest.raises(ValueError, match="cutoffs"):
            AdaptiveSoftmax(4, 12, cutoffs)


@pytest.mark.slow
def test_a_word_language_model_trains_scores_and_samples_with_the_adaptive_softmax(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", "task=word_lm", *TINY, "model.tbptt_steps=10", "model.softmax=adaptive",
            "model.adaptive_cutoffs=[50,200]", "model.samples=2", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    assert json.loads((run / "results.json").read_text())["test"]["test_perplexity"] > 1
    s = rtk("score", f"ckpt={run}/checkpoints/best.ckpt", "text=in the beginning god created the heaven")
    assert s.returncode == 0, s.explain()
    g = rtk("generate", f"ckpt={run}/checkpoints/best.ckpt", "n=2", "seed=0")
    assert g.returncode == 0, g.explain()
    assert len(g.stdout.strip().splitlines()) == 2


@pytest.mark.slow
def test_adaptive_cutoffs_beyond_the_vocabulary_are_one_sentence_exit_2(rtk, tmp_path):
    r = rtk("train", "task=word_lm", *TINY, "model.tbptt_steps=10", "model.softmax=adaptive",
            "model.adaptive_cutoffs=[50,10000000]", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.explain()
    assert "model.adaptive_cutoffs=[50, 10000000] must be whole numbers that increase strictly" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_bad_softmax_is_reported_with_the_other_problems_before_any_data_loads(rtk, tmp_path):
    r = rtk("train", "task=word_lm", "model.softmax=sampled", "model.lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.explain()
    assert "model.softmax='sampled' must be full or adaptive" in r.stderr and "model.lr=-1" in r.stderr
    r = rtk("train", "task=word_lm", "model.softmax=adaptive", "model.adaptive_cutoffs=[300,100]",
            f"hydra.run.dir={tmp_path / 'run2'}")
    assert r.returncode == 2, r.explain()
    assert "model.adaptive_cutoffs=[300, 100] must be whole numbers that increase strictly" in r.stderr


def test_an_adaptive_softmax_language_model_streams_like_the_whole_sequence_and_loads(tmp_path):
    import numpy as np

    import toolkit
    from test_api import lm_task, save
    from toolkit.api import wrap

    torch.manual_seed(0)
    task = lm_task(softmax="adaptive", adaptive_cutoffs=[6, 9])
    model = wrap(task.eval())
    words = [w for w in task.vocab.itos[3:9]] * 2
    ids = torch.tensor([task.vocab.encode(["<eos>", *words])])
    whole = task(ids)[0][0].softmax(-1).detach().numpy()
    stream = model.stream()
    got = np.concatenate([stream.feed(words[:5]).probs, stream.feed(words[5:]).probs])
    np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)
    loaded = toolkit.load(save(task, tmp_path / "lm.ckpt"))
    assert isinstance(loaded.task.out, AdaptiveSoftmax)
    assert loaded.score([" ".join(words)])[0]["total"] == pytest.approx(model.score([" ".join(words)])[0]["total"])


@pytest.mark.slow
def test_an_adaptive_softmax_language_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime", reason='the export extra: pip install "recurrent-toolkit[export]"')
    from test_api import lm_task
    from test_export import assert_export_matches_torch
    from toolkit.api import wrap
    from toolkit.export import export

    torch.manual_seed(0)
    model = wrap(lm_task(softmax="adaptive", adaptive_cutoffs=[6]).eval())
    path, _, _ = export(model, tmp_path / "lm.onnx")
    assert_export_matches_torch(model, path)
