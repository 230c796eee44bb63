"""The switches that make models learn better (docs/results.md): each trains and decodes at a tiny size,
and each does what it says on the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY
from toolkit.layers import Recurrent
from toolkit.tasks.base import LockedDropout


def test_locked_dropout_uses_one_mask_for_every_time_step():
    torch.manual_seed(0)
    drop = LockedDropout(0.5).train()
    y = drop(torch.ones(4, 7, 6))
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at each step
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(4, 7, 6)), torch.ones(4, 7, 6))


@pytest.mark.parametrize("backend", ["native", "loop"])
def test_weight_drop_drops_the_recurrent_matrix_once_per_call_and_keeps_the_parameters(backend):
    torch.manual_seed(0)
    rnn = Recurrent("lstm", 3, 5, weight_drop=0.5, backend=backend)
    before = {k: v.clone() for k, v in rnn.state_dict().items()}
    x = torch.randn(2, 6, 3)
    rnn.train()
    torch.manual_seed(1)
    y1, _ = rnn(x)
    torch.manual_seed(1)
    y2, _ = rnn(x)
    assert torch.equal(y1, y2)  # the mask comes from the RNG, once per forward
    # the same numbers as running the cells with a hand-dropped weight_hh
    torch.manual_seed(1)
    mask = torch.nn.functional.dropout(torch.ones_like(rnn.cells[0].weight_hh), 0.5)
    ref = Recurrent("lstm", 3, 5, backend="loop")
    ref.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        ref.cells[0].weight_hh.mul_(mask)
    y_ref, _ = ref.train()(x)
    assert torch.allclose(y1, y_ref, atol=1e-6)
    y1.sum().backward()
    assert rnn.cells[0].weight_hh.grad is not None and (rnn.cells[0].weight_hh.grad[mask == 0] == 0).all()
    assert all(torch.equal(v, before[k]) for k, v in rnn.state_dict().items())  # nothing written back
    rnn.eval()
    y_eval, _ = rnn(x)
    ref.load_state_dict(rnn.state_dict())
    assert torch.allclose(y_eval, ref.eval()(x)[0], atol=1e-6)  # no drop at evaluation


def test_weight_drop_refuses_a_cell_without_a_recurrent_matrix():
    from toolkit.errors import CellError

    with pytest.raises(CellError, match="gru_simple.*weight_drop"):
        Recurrent("gru_simple", 3, 5, weight_drop=0.2)


def test_word_dropout_turns_known_tokens_into_unk_in_training_only(compose):
    from toolkit.tasks.classification import ClassificationTask

    spec = {"kind": "classification", "tokenizer": "words", "normalize": "lower",
            "vocab": ["<pad>", "<unk>", *[f"w{i}" for i in range(20)]], "labels": ["a", "b"]}
    model = ClassificationTask(spec=spec, cell={"name": "lstm"}, hidden_size=4, embedding_dim=4, word_dropout=0.5)
    tokens = torch.randint(2, 22, (50, 40))
    tokens[:, -3:] = 0  # padding stays padding
    seen = []
    model.embed.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model.train().embed_tokens(tokens)
    dropped = seen[-1]
    share = (dropped == 1).float()[:, :-3].mean().item()
    assert 0.4 < share < 0.6 and (dropped[:, -3:] == 0).all()
    model.eval().embed_tokens(tokens)
    assert torch.equal(seen[-1], tokens)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["model.decode=crf"], ["model.decode=crf", "model.tag_scheme=bioes"],
                                   ["model.char_encoder=lstm", "model.word_dropout=0.1"],
                                   ["model.decode=crf", "model.lm_weight=0.1"],
                                   ["model.decode=crf", "model.adversarial=1"]],
                         ids=["crf", "crf-bioes", "char-lstm", "crf-lm-objective", "crf-adversarial"])
def test_a_tagger_with_each_switch_trains_tests_and_predicts(rtk, tmp_path, extra):
    run = tmp_path / "run"
    r = rtk("train", *TINY, "trainer.limit_train_batches=10", *extra, f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    test = json.loads((run / "results.json").read_text())["test"]
    assert 0 <= test["test_f1"] <= 1
    p = rtk("predict", f"ckpt={run}/checkpoints/best.ckpt", "text=Harry Potter met Hermione in London")
    assert p.returncode == 0, p.explain()
    tags = [line.split("\t")[1] for line in p.stdout.splitlines()]
    assert len(tags) == 6
    for prev, tag in zip(["O", *tags], tags):  # decoding never breaks BIO, whatever the network learned
        assert not tag.startswith("I-") or prev[2:] == tag[2:], tags


@pytest.mark.slow
def test_a_language_model_with_the_awd_regularisers_and_cosine_schedule_trains(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", "task=word_lm", *TINY, "model.tbptt_steps=10", "model.locked_dropout=true",
            "model.embedding_dropout=0.1", "model.weight_drop=0.3", "model.activation_reg=1.0",
            "model.temporal_activation_reg=1.0", "model.lr_schedule=cosine", "model.samples=2",
            f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    assert json.loads((run / "results.json").read_text())["test"]["test_perplexity"] > 1


@pytest.mark.slow
def test_a_classifier_starts_from_a_language_model_and_refuses_one_that_does_not_fit(rtk, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"a {w} film , {w} and {v} .\n" for w in ("good", "bad", "dull", "fine")
                            for v in ("moving", "witty", "slow")) * 5)
    rows = tmp_path / "train.csv"
    rows.write_text("text,label\n" + "".join(f"a {w} film,{'pos' if w in ('good', 'fine') else 'neg'}\n"
                                             for w in ("good", "bad", "dull", "fine")) * 10)
    lm = tmp_path / "lm"
    r = rtk("train", "task=lm", *TINY, f"data.train_file={text}", "model.embedding_dim=8", "hidden_size=16",
            "model.samples=0", f"hydra.run.dir={lm}")
    assert r.returncode == 0, r.explain()
    ckpt = lm / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    run = tmp_path / "clf"
    r = rtk("train", "task=classification", *TINY, f"data.train_file={rows}", "model.embedding_dim=8",
            f"model.init_from={ckpt}", "model.lr=1e-12", f"hydra.run.dir={run}")
    # Adam moves each weight by about lr a step: after training the weights are still the language model's
    assert r.returncode == 0, r.explain()
    assert "initialised from" in r.stderr + r.stdout
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.allclose(got["embed.weight"], state["embed.weight"], atol=1e-9)
    for d in (0, 1):  # both directions of the bidirectional classifier
        assert torch.allclose(got[f"rnn.cells.{d}.weight_hh"], state["rnn.cells.0.weight_hh"], atol=1e-9)
    bad = rtk("train", "task=classification", *TINY, f"data.train_file={rows}", "model.embedding_dim=8",
              "hidden_size=32", f"model.init_from={ckpt}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "does not fit this model: hidden_size=32 (language model: 16)" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    other = rtk("train", "task=classification", *TINY, f"data.train_file={rows}", "data.tokenizer=chars",
                f"model.init_from={ckpt}", f"hydra.run.dir={tmp_path / 'other'}")
    assert other.returncode == 2 and "data.tokenizer='words'" in other.stderr, other.explain()


def test_a_classifier_with_label_smoothing_trains_on_the_smoothed_loss_and_refuses_a_share_of_one():
    import torch.nn.functional as F

    from toolkit.errors import ConfigError
    from toolkit.tasks.classification import ClassificationTask

    spec = {"kind": "classification", "tokenizer": "words", "normalize": "lower",
            "vocab": ["<pad>", "<unk>", *[f"w{i}" for i in range(20)]], "labels": ["a", "b", "c"]}
    model = ClassificationTask(spec=spec, cell={"name": "lstm"}, hidden_size=4, embedding_dim=4, dropout=0.0,
                               label_smoothing=0.3).train()
    model.log = lambda *a, **k: None
    batch = {"tokens": torch.randint(2, 22, (5, 6)), "lengths": torch.tensor([6, 5, 4, 3, 2]),
             "labels": torch.tensor([0, 1, 2, 0, 1])}
    logits = model(batch)
    smoothed = F.cross_entropy(logits, batch["labels"], label_smoothing=0.3)
    assert torch.allclose(model.training_step(batch, 0), smoothed)
    assert not torch.allclose(smoothed, F.cross_entropy(logits, batch["labels"]))
    with pytest.raises(ConfigError, match=r"model\.label_smoothing=1 must be a number in \[0, 1\)"):
        ClassificationTask(spec=spec, cell={"name": "lstm"}, hidden_size=4, label_smoothing=1)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sentiment", "g2p"])
def test_label_smoothing_trains_tests_and_predicts(rtk, tmp_path, task):
    run = tmp_path / "run"
    r = rtk("train", f"task={task}", *TINY, "depth=1", "model.label_smoothing=0.1",
            f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    test = json.loads((run / "results.json").read_text())["test"]
    assert test and all(v == v for v in test.values())  # every test metric a number, none NaN
    p = rtk("predict", f"ckpt={run}/checkpoints/best.ckpt", "text=recurrent")
    assert p.returncode == 0 and p.stdout.strip(), p.explain()


def test_attention_pooling_is_the_softmax_weighted_sum_of_the_real_steps_only():
    from toolkit.tasks.classification import ClassificationTask

    torch.manual_seed(0)
    spec = {"kind": "classification", "tokenizer": "words", "normalize": "lower",
            "vocab": ["<pad>", "<unk>", *[f"w{i}" for i in range(20)]], "labels": ["a", "b"]}
    model = ClassificationTask(spec=spec, cell={"name": "lstm"}, hidden_size=4, embedding_dim=4, dropout=0.0,
                               direction="bi", pooling="attention").eval()
    pool = model.attention_pool
    y = torch.randn(2, 5, 8)
    lengths = torch.tensor([5, 3])
    y[1, 3:] = 0.0  # the encoder's output is zero at padded steps; their score tanh(b) is not
    got = model.pool(y, lengths)
    for i, n in enumerate(lengths.tolist()):  # by hand: e_t = v . tanh(W y_t + b) over the real steps
        e = torch.stack([pool.query.weight[0] @ torch.tanh(pool.proj.weight @ y[i, t] + pool.proj.bias)
                         for t in range(n)])
        alpha = torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()
        torch.testing.assert_close(got[i], (alpha[:, None] * y[i, :n]).sum(0))
    # what stands in the padding cannot move the pooled vector
    y[1, 3:] = 100.0
    torch.testing.assert_close(model.pool(y, lengths), got)
    batch = {"tokens": torch.randint(2, 22, (2, 5)), "lengths": lengths}
    assert model(batch).shape == (2, 2)
    # the other poolings have no attention parameters
    plain = ClassificationTask(spec=spec, cell={"name": "lstm"}, hidden_size=4, pooling="max")
    assert plain.attention_pool is None and not any("attention" in k for k in plain.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sentiment", "vowels"])
def test_attention_pooling_trains_tests_and_predicts(rtk, tmp_path, task):
    run = tmp_path / "run"
    r = rtk("train", f"task={task}", *TINY, "model.pooling=attention", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    test = json.loads((run / "results.json").read_text())["test"]
    assert test and all(v == v for v in test.values())  # every test metric a number, none NaN
    if task == "sentiment":
        p = rtk("predict", f"ckpt={run}/checkpoints/best.ckpt", "text=a gorgeous film")
        assert p.returncode == 0 and p.stdout.strip(), p.explain()


def test_the_language_modelling_objective_predicts_the_next_word_forward_and_the_previous_backward():
    import torch.nn.functional as F

    from test_api import tagging_task
    from toolkit.errors import ConfigError

    torch.manual_seed(0)
    model = tagging_task(direction="bi", lm_weight=0.5, lm_vocab=5, dropout=0.0).train()
    model.log = lambda *a, **k: None
    h = model.hparams.hidden_size
    batch = {"tokens": torch.tensor([[2, 7, 3, 9], [4, 2, 0, 0]]), "lengths": torch.tensor([4, 2]),
             "shapes": torch.ones(2, 4, dtype=torch.long), "chars": torch.ones(2, 4, 3, dtype=torch.long),
             "tags": torch.tensor([[0, 1, 0, 0], [0, 0, -100, -100]])}
    y = model.features(batch)
    # by hand: ids at or past lm_vocab=5 read as <unk> (1); 0 marks the sentence's ends; padding has no target
    fwd = {(0, 0): 1, (0, 1): 3, (0, 2): 1, (0, 3): 0, (1, 0): 2, (1, 1): 0}  # (sentence, step) -> next word
    bwd = {(0, 0): 0, (0, 1): 2, (0, 2): 1, (0, 3): 3, (1, 0): 0, (1, 1): 4}  # -> previous word
    expected = []
    for d, targets in enumerate((fwd, bwd)):
        scores = torch.stack([model.lm_heads[d](y[i, t, d * h:(d + 1) * h]) for i, t in targets])
        expected.append(F.cross_entropy(scores, torch.tensor(list(targets.values()))))
    torch.testing.assert_close(model.lm_loss(y, batch), (expected[0] + expected[1]) / 2)
    torch.manual_seed(1)
    total = model.training_step(batch, 0)
    torch.manual_seed(1)
    y = model.features(batch)
    tags_only, _ = model._loss(batch, model.out(y))
    torch.testing.assert_close(total, tags_only + 0.5 * model.lm_loss(y, batch))
    # evaluation reports the tags' own loss; the exported / predicting forward is the tagger's alone
    assert model(batch).shape == (2, 4, len(model.tags))
    # with adversarial training too, train_lm_loss is the clean sentences' loss, logged once a step
    model.hparams.adversarial = 1.0
    logged = []
    model.log = lambda name, value, **k: logged.append((name, value.detach().clone()))
    torch.manual_seed(2)
    model.training_step(batch, 0)
    torch.manual_seed(2)
    clean = model.lm_loss(model.features(batch), batch)
    lm_logs = [v for name, v in logged if name == "train_lm_loss"]
    assert len(lm_logs) == 1
    torch.testing.assert_close(lm_logs[0], clean.detach())
    deep_uni = tagging_task(direction="uni", depth=2, lm_weight=0.1)  # no backward states to leak the next word
    assert deep_uni.lm_heads is not None and len(deep_uni.lm_heads) == 1
    assert tagging_task().lm_heads is None
    with pytest.raises(ConfigError, match=r"^model\.lm_weight=0\.1 needs depth=1 with direction=bi: above the "
                                          r"first layer, the forward states have already read the words"):
        tagging_task(direction="bi", depth=2, lm_weight=0.1)


class _Fixed(torch.nn.Module):
    """Stands in for an embedding table: returns the same (B, T, E) tensor for any ids."""

    def __init__(self, e):
        super().__init__()
        self.e = e

    def forward(self, tokens):
        return self.e


@pytest.mark.parametrize("head", ["classification", "tagging"])
def test_adversarial_training_adds_the_loss_at_embeddings_moved_eps_up_the_gradient_of_each_sequence(head):
    import torch.nn.functional as F

    from test_api import classification_task, tagging_task
    from toolkit.errors import ConfigError

    torch.manual_seed(0)
    make = classification_task if head == "classification" else tagging_task
    model = make(direction="bi", dropout=0.0, adversarial=0.7).train()
    model.log = lambda *a, **k: None
    tokens = torch.tensor([[2, 7, 3, 9], [4, 2, 0, 0]])
    batch = {"tokens": tokens, "lengths": torch.tensor([4, 2])}
    if head == "classification":
        batch["labels"] = torch.tensor([1, 0])
        loss_at = lambda: F.cross_entropy(model(batch), batch["labels"])  # noqa: E731
    else:
        batch |= {"shapes": torch.ones(2, 4, dtype=torch.long), "chars": torch.ones(2, 4, 3, dtype=torch.long),
                  "tags": torch.tensor([[0, 1, 0, 0], [0, 0, -100, -100]])}
        loss_at = lambda: model._loss(batch)[0]  # noqa: E731
    table = model.embed
    # by hand: L at the embeddings, its gradient g, r = eps * g / ||g|| per sentence, then L at e + r
    e = table(tokens)
    model.embed = _Fixed(e)
    clean = loss_at()
    (g,) = torch.autograd.grad(clean, e, retain_graph=True)
    r = 0.7 * g / g.flatten(1).norm(dim=1)[:, None, None]
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.tensor([0.7, 0.7]))
    assert r[1, 2:].abs().sum() == 0  # padded steps get no share of the perturbation
    model.embed = _Fixed(e + r)
    moved = loss_at()
    assert moved > clean  # a step up the gradient raises the loss
    (clean + moved).backward()
    model.embed = table
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert "embed.weight" in expected and len(expected) > 3
    model.zero_grad()
    total = model.training_step(batch, 0)
    torch.testing.assert_close(total, (clean + moved).detach())
    total.backward()  # the value and the gradient of every parameter are those of L(e) + L(e + r)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    # model.adversarial=0: one pass, the plain loss
    model.hparams.adversarial = 0.0
    torch.testing.assert_close(model.training_step(batch, 0), loss_at())
    with pytest.raises(ConfigError, match=r"^model\.adversarial=-1 must be a number in \[0, 100\)$"):
        make(adversarial=-1)


@pytest.mark.parametrize("head", ["classification", "tagging"])
def test_adversarial_every_k_takes_the_second_pass_on_every_kth_optimiser_step_only(head, monkeypatch):
    import torch.nn.functional as F

    from test_api import classification_task, tagging_task
    from toolkit.errors import ConfigError

    torch.manual_seed(0)
    make = classification_task if head == "classification" else tagging_task
    model = make(direction="bi", dropout=0.0, adversarial=0.7, adversarial_every=3).train()
    model.log = lambda *a, **k: None
    tokens = torch.tensor([[2, 7, 3, 9], [4, 2, 0, 0]])
    batch = {"tokens": tokens, "lengths": torch.tensor([4, 2])}
    if head == "classification":
        batch["labels"] = torch.tensor([1, 0])
        plain = lambda: F.cross_entropy(model(batch), batch["labels"])  # noqa: E731
    else:
        batch |= {"shapes": torch.ones(2, 4, dtype=torch.long), "chars": torch.ones(2, 4, 3, dtype=torch.long),
                  "tags": torch.tensor([[0, 1, 0, 0], [0, 0, -100, -100]])}
        plain = lambda: model._loss(batch)[0]  # noqa: E731
    step = [0]
    monkeypatch.setattr(type(model), "global_step", property(lambda self: step[0]))
    clean = plain().detach()
    both = {}
    for step[0] in range(7):
        both[step[0]] = model.training_step(batch, 0).detach()
    for k, loss in both.items():
        if k % 3 == 0:  # steps 0, 3, 6: the clean loss and the loss at the moved embeddings
            assert loss > clean * 1.5, k
        else:
            torch.testing.assert_close(loss, clean, msg=str(k))
    with pytest.raises(ConfigError, match=r"^model\.adversarial_every=0 must be a whole number of at least 1$"):
        make(adversarial=1.0, adversarial_every=0)


@pytest.mark.slow
def test_a_classifier_with_adversarial_training_trains_tests_and_predicts(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", "task=sentiment", *TINY, "depth=1", "model.adversarial=2", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    test = json.loads((run / "results.json").read_text())["test"]
    assert test and all(v == v for v in test.values())  # every test metric a number, none NaN
    p = rtk("predict", f"ckpt={run}/checkpoints/best.ckpt", "text=a gorgeous film")
    assert p.returncode == 0 and p.stdout.strip(), p.explain()


def _adversarial_ddp_rank(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: DDP's gradient for L(e) + L(e + r) against the hand-averaged one."""
    import copy
    from datetime import timedelta

    import torch.distributed as dist
    import torch.nn.functional as F

    from test_api import classification_task

    # a rank that fails makes the other's collectives time out instead of waiting forever
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}",
                            timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = classification_task(direction="bi", dropout=0.0, adversarial=2.0).train()
        model.log = lambda *a, **k: None
        alone = copy.deepcopy(model)
        g = torch.Generator().manual_seed(rank + 10)  # each rank its own batch
        batch = {"tokens": torch.randint(2, 12, (4, 6), generator=g), "lengths": torch.tensor([6, 5, 3, 2]),
                 "labels": torch.randint(0, 2, (4,), generator=g)}
        # by hand, on this rank's batch alone: L(e) + L(e + r), r = 2 g / ||g|| per sentence
        table = alone.embed
        e = table(batch["tokens"])
        alone.embed = _Fixed(e)
        clean = F.cross_entropy(alone(batch), batch["labels"])
        (grad_e,) = torch.autograd.grad(clean, e, retain_graph=True)
        alone.embed = _Fixed(e + (2.0 * grad_e / grad_e.flatten(1).norm(dim=1)[:, None, None]).detach())
        (clean + F.cross_entropy(alone(batch), batch["labels"])).backward()
        alone.embed = table
        want = {n: p.grad.clone() for n, p in alone.named_parameters() if p.grad is not None}
        for grad in want.values():  # what DDP must give: the ranks' gradients averaged
            dist.all_reduce(grad)
            grad /= 2

        class Step(torch.nn.Module):  # as Lightning's DDP wrapper, forward runs training_step
            def __init__(self, task):
                super().__init__()
                self.task = task

            def forward(self, b):
                return self.task.training_step(b, 0)

        ddp = torch.nn.parallel.DistributedDataParallel(Step(model))
        ddp(batch).backward()
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert got.keys() == want.keys()
        worst = max((got[n] - want[n]).abs().max().item() for n in want)
        (Path(out) / f"rank{rank}").write_text(repr(worst))
        # freed only on return, after the group was destroyed and the peer had left, the DDP wrapper
        # could hang its rank in gloo (a stack dump showed it past the function's last line)
        del ddp
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_adversarial_training_under_ddp_averages_both_terms_gradients_over_the_ranks(tmp_path):
    """adversarial_loss carries the clean loss's gradients inside the returned tensor; DDP must reduce them too."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = mp.spawn(_adversarial_ddp_rank, args=(port, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not ranks.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:  # a stuck rank fails the test instead of holding the suite
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two DDP ranks did not finish within 240 s")
    for rank in (0, 1):
        assert float((tmp_path / f"rank{rank}").read_text()) < 1e-6
