"""Language models: char_lm and word_lm end to end, truncated BPTT, `rtk generate` and `rtk score`."""

from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import TINY, rtk_cmd
from toolkit.data.lm import LanguageModelDataModule, encode_lm
from toolkit.data.sources import load_kjv, load_names, standard_split
from toolkit.data.text import EOS, Vocab
from toolkit.tasks.lm import LanguageModelTask

CHAR_SPEC = {"kind": "language_model", "tokenizer": "chars", "normalize": "lower", "labels": [], "conditions": [],
             "source": None, "vocab": ["<pad>", "<unk>", "<eos>", *"abcdefghijklmnopqrstuvwxyz"]}


def tiny_lm(spec=CHAR_SPEC, **kw) -> LanguageModelTask:
    torch.manual_seed(0)
    return LanguageModelTask(spec=spec, cell={"name": "lstm"}, hidden_size=16, embedding_dim=8, **kw).eval()


# ----------------------------------------------------------------------------- data
def test_names_source_is_unique_lowercased_first_names_male_then_female():
    names = [ex["text"] for ex in load_names()]
    assert len(names) == 5163 and len(set(names)) == len(names)
    assert names[:3] == ["james", "john", "robert"]
    assert all(n.isalpha() and n.islower() for n in names)
    # "mary" is the top female name but appears among the male names first, so keeps that place
    assert names.index("mary") < 1219


def test_kjv_source_is_every_verse_in_order():
    verses = load_kjv()
    assert len(verses) == 31103
    assert verses[0]["text"] == "In the beginning God created the heaven and the earth."
    assert len(standard_split(verses)["test"]) == 3111


def test_encoding_reads_eos_first_and_never_predicts_the_condition():
    vocab = Vocab(["<pad>", "<unk>", EOS, "<major>", "C5_1", "D5_1"])
    item = encode_lm(["C5_1", "D5_1"], ["<major>"], vocab)
    assert item["tokens"] == [2, 3, 4, 5]           # <eos> <major> C5_1 D5_1
    assert item["targets"] == [-100, 4, 5, 2]       # <major> is read, not predicted; ends with <eos>


def test_stream_batches_continue_each_row_from_one_chunk_to_the_next():
    dm = LanguageModelDataModule(tbptt_steps=4)
    stream = list(range(3, 3 + 41))  # 41 tokens -> 2 rows of 20 columns
    chunks = dm.stream_batches(stream, rows=2)
    assert [c["tokens"].shape for c in chunks] == [(2, 4)] * 5
    assert [bool(c["first"]) for c in chunks] == [True, False, False, False, False]
    row0 = torch.cat([c["tokens"][0] for c in chunks]).tolist()
    row1 = torch.cat([c["tokens"][1] for c in chunks]).tolist()
    assert row0 == stream[:20] and row1 == stream[20:40]
    targets0 = torch.cat([c["targets"][0] for c in chunks]).tolist()
    assert targets0 == stream[1:21]  # each target is the next token of the same row


def test_stream_batches_split_rows_between_ddp_ranks(monkeypatch):
    import toolkit.data.lm as lm

    dm = LanguageModelDataModule(tbptt_steps=5)
    stream = list(range(100, 141))
    seen = []
    for rank in range(2):
        monkeypatch.setattr(lm, "rank_and_world", lambda rank=rank: (rank, 2))
        seen.append(torch.cat([c["tokens"] for c in dm.stream_batches(stream, rows=2)], 1))
    rows = torch.cat(seen).tolist()
    assert sorted(t for r in rows for t in r) == stream[:40]  # every token on exactly one rank


# ----------------------------------------------------------------------------- model
def test_a_language_model_refuses_to_be_bidirectional():
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match="only be unidirectional"):
        LanguageModelTask(spec=CHAR_SPEC, cell={"name": "lstm"}, direction="bi")


def test_tbptt_carries_the_detached_state_from_one_chunk_to_the_next():
    model = tiny_lm(tbptt_steps=4).train()
    x = torch.randint(3, 29, (2, 8))
    first = {"tokens": x[:, :4], "targets": x[:, 1:5], "lengths": torch.full((2,), 4), "first": torch.tensor(True)}
    second = {"tokens": x[:, 4:8], "targets": x[:, 4:8], "lengths": torch.full((2,), 4), "first": torch.tensor(False)}
    model.drop.p = 0.0
    model._loss(first, "train")
    carried = model._carry["train"]
    assert all(not s.requires_grad for s in carried)  # detached: gradients stop at the chunk boundary
    # the second chunk, run from the carried state, equals the 8-token sequence run in one go
    logits_all, _ = model(x)
    logits_2, _ = model(second["tokens"], state=carried)
    torch.testing.assert_close(logits_2, logits_all[:, 4:], atol=1e-5, rtol=1e-5)
    # and a new epoch (first chunk) starts from zeros again
    model._loss(first, "train")
    torch.testing.assert_close(model._carry["train"][0], carried[0])


def test_greedy_sampling_is_deterministic_and_seeded_sampling_repeats():
    model = tiny_lm()
    assert model.sample(3, temperature=0, seed=1) == model.sample(3, temperature=0, seed=2)
    assert model.sample(4, temperature=1.0, seed=5) == model.sample(4, temperature=1.0, seed=5)


def test_sampling_never_emits_unk_unless_allowed():
    model = tiny_lm()
    with torch.no_grad():
        model.out.bias[1] = 8.0  # <unk> is now by far the most likely next token
    samples = model.sample(5, temperature=1.0, seed=0, max_len=10)
    assert all("<unk>" not in s for s in samples) and any(samples)
    allowed = model.sample(5, temperature=1.0, seed=0, max_len=10, allow_unk=True)
    assert any("<unk>" in s for s in allowed)


def test_top_k_one_is_greedy():
    model = tiny_lm()
    assert model.sample(3, temperature=1.5, top_k=1, seed=3) == model.sample(3, temperature=0, seed=9)


def test_a_prompt_is_continued():
    model = tiny_lm()
    out = model.sample(2, temperature=1.0, seed=0, prompt=list("ma"), max_len=5)
    assert all(s[:2] == ["m", "a"] for s in out)


def test_score_is_the_sum_of_per_token_log_probabilities_with_eos():
    model = tiny_lm()
    s = model.score_tokens(list("anna"))
    assert s["tokens"] == ["a", "n", "n", "a", EOS]
    assert s["total"] == pytest.approx(sum(s["logp"]), abs=1e-5)
    assert s["perplexity"] == pytest.approx(math.exp(-s["total"] / 5), rel=1e-5)
    # the same number from the model's next-token softmax, step by step
    with torch.no_grad():
        logits, _ = model(torch.tensor([[2, 3, 16, 16, 3]]))
    targets = [3, 16, 16, 3, 2]
    expected = sum(float(logits[0, t].log_softmax(-1)[y]) for t, y in enumerate(targets))
    assert s["total"] == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    run_dir = tmp_path_factory.mktemp("char_lm") / "run"
    result = rtk_cmd("train", "task=char_lm", f"hydra.run.dir={run_dir}", *TINY, cwd=cwd)
    return result, run_dir, cwd


def test_char_lm_summary_ends_with_cross_entropy_and_ten_novel_names(char_run):
    result, run_dir, _ = char_run
    assert result.returncode == 0, result.explain()
    test_line = next(line for line in result.stdout.splitlines() if line.startswith("test "))
    nats = float(re.search(r"nats_per_token (\S+)", test_line).group(1))
    bits = float(re.search(r"bits_per_token (\S+)", test_line).group(1))
    assert bits == pytest.approx(nats / math.log(2), rel=1e-3)
    lines = result.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("samples"))
    assert "10 novel samples" in lines[i]
    names = [line.strip() for line in lines[i + 1:i + 11]]
    train = {ex["text"] for ex in standard_split(load_names())["train"]}
    assert len(names) == 10 and not set(names) & train


def test_rtk_generate_samples_names_and_greedy_repeats(char_run):
    _, run_dir, cwd = char_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    a = rtk_cmd("generate", f"ckpt={ckpt}", "n=4", "temperature=0", cwd=cwd)
    b = rtk_cmd("generate", f"ckpt={ckpt}", "n=4", "temperature=0", "seed=9", cwd=cwd)
    assert a.returncode == 0, a.explain()
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 4
    c = rtk_cmd("generate", f"ckpt={ckpt}", "n=3", "prompt=ma", "max_len=8", "seed=0", cwd=cwd)
    lines = c.stdout.splitlines()
    assert c.returncode == 0 and len(lines) == 3 and all(line.startswith("ma") for line in lines), c.explain()


def test_rtk_score_ranks_texts_and_prints_per_token_probabilities(char_run):
    _, run_dir, cwd = char_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    r = rtk_cmd("score", f"ckpt={ckpt}", "text=anna", "text=xqzv", cwd=cwd)
    assert r.returncode == 0, r.explain()
    assert "log P = " in r.stdout and "perplexity" in r.stdout and "<eos>" in r.stdout
    assert "ranked (most probable first):" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["n=zero"], "n='zero' must be a whole number"),
    (["temperature=-1"], "temperature=-1.0 must be 0 or more"),
    (["prompt=é"], "are not in the model's vocabulary"),
    (["out=x.mid"], "only a music model"),
])
def test_rtk_generate_rejects_bad_arguments_in_one_sentence(char_run, args, message):
    _, run_dir, cwd = char_run
    r = rtk_cmd("generate", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", *args, cwd=cwd)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.explain()


def test_generate_refuses_a_model_that_is_not_a_language_model(tmp_path, rtk):
    from conftest import TINY as tiny

    run_dir = tmp_path / "run"
    assert rtk("train", "task=peptides", f"hydra.run.dir={run_dir}", *tiny).returncode == 0
    r = rtk("generate", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}")
    assert r.returncode == 2 and "not a language_model model" in r.stderr, r.explain()


def test_bidirectional_language_model_fails_before_training(rtk, tmp_path):
    r = rtk("train", "task=char_lm", "direction=bi", f"hydra.run.dir={tmp_path / 'run'}", *TINY)
    assert r.returncode == 2
    assert "a language model must not see the tokens it predicts" in r.stderr
    assert not (tmp_path / "run").exists()


def test_lightning_clipping_with_tbptt_is_rejected_in_one_sentence(rtk, tmp_path):
    r = rtk("train", "task=word_lm", "trainer.gradient_clip_val=1.0", f"hydra.run.dir={tmp_path / 'run'}", *TINY)
    assert r.returncode == 2
    assert "trainer.gradient_clip_val=1.0 does not apply with model.tbptt_steps=35" in r.stderr
    assert "model.clip_grad_norm" in r.stderr


def test_tbptt_clips_inside_the_module(tmp_path):
    """Under manual optimisation the module's own clipping bounds the gradient norm the optimiser sees."""
    import pytorch_lightning as pl

    norms = []

    class Watch(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            norms.append(float(torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in pl_module.parameters() if p.grad is not None]))))

    dm = LanguageModelDataModule(tbptt_steps=10, batch_size=4, eval_batch_size=4, tokenizer="chars",
                                 train_file=str(_write(tmp_path, "abcabcabd\n" * 200)))
    dm.setup()
    model = LanguageModelTask(spec=dm.spec(), cell={"name": "rnn"}, hidden_size=16, embedding_dim=8,
                              tbptt_steps=10, clip_grad_norm=0.01, lr=0.1)
    pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               callbacks=[Watch()], num_sanity_val_steps=0, limit_val_batches=0).fit(model, dm)
    assert len(norms) == 5 and max(norms) <= 0.01 + 1e-6


def _write(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_trained_word_model_prefers_a_real_sentence_to_its_scramble(rtk, tmp_path):
    run_dir = tmp_path / "run"
    r = rtk("train", "task=word_lm", f"hydra.run.dir={run_dir}", "hidden_size=64", "trainer.max_epochs=1",
            "trainer.limit_train_batches=150", "trainer.limit_val_batches=5", "trainer.limit_test_batches=5",
            "trainer.enable_progress_bar=false", timeout=600)
    assert r.returncode == 0, r.explain()
    assert "perplexity" in r.stdout
    real, scrambled = "and god said unto moses", "moses unto said god and"
    s = rtk("score", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"text={scrambled}", f"text={real}")
    assert s.returncode == 0, s.explain()
    ranking = s.stdout.split("ranked (most probable first):")[1].splitlines()
    assert ranking[1].endswith(real) and ranking[2].endswith(scrambled)


def test_no_sample_is_empty_even_when_eos_is_likeliest():
    model = tiny_lm()
    with torch.no_grad():
        model.out.bias[2] = 8.0  # <eos> first would be the likely outcome
    samples = model.sample(6, temperature=1.0, seed=0, max_len=10)
    assert all(len(s) >= 1 for s in samples)


def test_gradient_accumulation_with_tbptt_is_rejected_in_one_sentence(rtk, tmp_path):
    r = rtk("train", "task=word_lm", "trainer.accumulate_grad_batches=2", f"hydra.run.dir={tmp_path / 'run'}", *TINY)
    assert r.returncode == 2
    assert ("trainer.accumulate_grad_batches=2 does not apply with model.tbptt_steps=35 (truncated BPTT "
            "optimises manually); raise data.batch_size instead") in r.stderr


def test_tied_weights_need_equal_sizes():
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.tie_weights=true needs model.embedding_dim \(8\) equal to "
                                          r"hidden_size \(16\)"):
        tiny_lm(tie_weights=True)
    tied = LanguageModelTask(spec=CHAR_SPEC, cell={"name": "lstm"}, hidden_size=8, embedding_dim=8, tie_weights=True)
    assert tied.out.weight is tied.embed.weight


def test_rtk_score_without_text(char_run):
    _, run_dir, cwd = char_run
    r = rtk_cmd("score", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", cwd=cwd)
    assert r.returncode == 2
    assert r.stderr.strip() == 'error: rtk score: give text="…" (one or more) or input=<file of lines>'


def test_model_optimizer_chooses_adam_or_plain_sgd():
    from toolkit.errors import ConfigError

    assert isinstance(tiny_lm().configure_optimizers(), torch.optim.Adam)
    assert type(tiny_lm(optimizer="sgd").configure_optimizers()) is torch.optim.SGD
    with pytest.raises(ConfigError, match="model.optimizer='rmsprop' is not one of: adam, sgd"):
        tiny_lm(optimizer="rmsprop")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_optimizer_takes_torchs_fused_step_on_the_cpu_with_the_per_tensor_steps_numbers(optimizer):
    fused_model, plain_model = tiny_lm(optimizer=optimizer, weight_decay=0.01), tiny_lm(optimizer=optimizer, weight_decay=0.01)
    fused = fused_model.configure_optimizers()
    assert fused.defaults["fused"] is True
    plain = type(fused)(plain_model.parameters(), lr=fused_model.hparams.lr, weight_decay=0.01)
    tokens = torch.randint(4, len(fused_model.vocab), (3, 7))
    for _ in range(3):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            logits, _ = model(tokens)
            logits.pow(2).mean().backward()
            opt.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_the_optimizer_is_not_fused_under_mixed_precision_where_lightning_clips_gradients():
    import types

    model = tiny_lm()
    model._trainer = types.SimpleNamespace(precision="bf16-mixed", max_epochs=1)
    assert model.configure_optimizers().defaults["fused"] is None
    model._trainer = types.SimpleNamespace(precision="32-true", max_epochs=1)
    assert model.configure_optimizers().defaults["fused"] is True


def test_the_summary_samples_are_drawn_without_dropout(char_run):
    """The run's own samples are exactly what the saved weights draw in eval mode (Lightning leaves the
    model in train mode after testing, where dropout would change them)."""
    result, run_dir, _ = char_run
    from toolkit.checkpoints import load_task

    lines = result.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("samples"))
    shown = [line.strip() for line in lines[i + 1:i + 11]]
    model = load_task(run_dir / "checkpoints" / "best.ckpt")  # the weights the run tested and sampled from
    data = LanguageModelDataModule(source="names", tokenizer="chars")
    data.setup()
    assert model.showcase(None, data)[1][1:] == shown


def test_task_lm_trains_on_a_users_text_file(rtk, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the cat sat on the mat number {i}\n" for i in range(60)))
    test = tmp_path / "test.txt"
    test.write_text("the cat sat on the mat\n\nthe dog sat\n")
    run_dir = tmp_path / "run"
    r = rtk("train", "task=lm", f"data.train_file={corpus}", f"data.test_file={test}", "data.tokenizer=chars_with_spaces",
            f"hydra.run.dir={run_dir}", *TINY)
    assert r.returncode == 0, r.explain()
    assert "test     nats_per_token" in r.stdout
    spec = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)[
        "hyper_parameters"]["spec"]
    assert " " in spec["vocab"] and spec["tokenizer"] == "chars_with_spaces"
    g = rtk("generate", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "n=2", "seed=0", "max_len=20")
    assert g.returncode == 0 and len(g.stdout.splitlines()) == 2, g.explain()
