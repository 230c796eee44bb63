"""Options reach what they change, through the command line: `rtk generate top_k= allow_unk= temperature=
max_len= seed= n=`, `rtk score input=` (numbers and ranking), `rtk report out=`, `task.example=`, `data.sep=`.

`rtk generate` and `rtk score` run in process (``rtk`` is ``sys.exit(toolkit.cli.main())``) on a
language model whose next-token distribution is fixed, so every printed number can be worked out here.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from conftest import TINY, rtk_cmd
from toolkit.cli import main
from toolkit.tasks.lm import LanguageModelTask

VOCAB = ["<pad>", "<unk>", "<eos>", "a", "b", "c", "d"]
LOGITS = [0.0, 3.0, -1.0, 2.0, 1.0, 0.0, -1.0]  # <unk> is the likeliest token
CHI2_999_DF3 = 16.266  # chi2.ppf(0.999, 3)


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory):
    """A saved language model whose every step draws from softmax(LOGITS) (output weights zero)."""
    spec = {"kind": "language_model", "tokenizer": "chars", "normalize": "lower", "labels": [], "conditions": [],
            "source": None, "vocab": VOCAB}
    model = LanguageModelTask(spec=spec, cell={"name": "lstm"}, hidden_size=8, embedding_dim=8)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.tensor(LOGITS))
    path = tmp_path_factory.mktemp("lm") / "fixed.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def rtk_main(capsys, *argv: str) -> list[str]:
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out.splitlines()


def softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    weights = [math.exp(x / temperature) for x in logits]
    return [w / sum(weights) for w in weights]


# ----------------------------------------------------------------------------- rtk generate
def test_generate_n_and_max_len(lm_ckpt, capsys):
    lines = rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=40", "max_len=3", "seed=0")
    assert len(lines) == 40
    assert all(1 <= len(line) <= 3 for line in lines) and any(len(line) == 3 for line in lines)


def test_generate_top_k_keeps_to_the_k_best_known_tokens(lm_ckpt, capsys):
    lines = rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=400", "max_len=1", "top_k=2", "seed=0")
    assert len(lines) == 400 and set(lines) == {"a", "b"}, Counter(lines)


def test_generate_allow_unk_lets_unk_through(lm_ckpt, capsys):
    kept_out = rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=200", "max_len=1", "seed=0")
    assert len(kept_out) == 200 and "<unk>" not in kept_out
    allowed = rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=200", "max_len=1", "seed=0", "allow_unk=true")
    # p(<unk>) among the tokens that may come first (no <pad>, no <eos>) is e^3 / (e^3 + e^2 + e + 1 + e^-1)
    p_unk = softmax([3.0, 2.0, 1.0, 0.0, -1.0])[0]
    assert abs(allowed.count("<unk>") / 200 - p_unk) < 0.1, Counter(allowed)


def test_generate_temperature_reaches_the_sampler(lm_ckpt, capsys):
    lines = rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=3000", "max_len=1", "temperature=0.5", "seed=0")
    probs = dict(zip("abcd", softmax([2.0, 1.0, 0.0, -1.0], 0.5)))
    counts = Counter(lines)
    assert set(counts) <= set(probs)
    chi2 = sum((counts[t] - 3000 * p) ** 2 / (3000 * p) for t, p in probs.items())
    assert chi2 < CHI2_999_DF3, counts
    assert rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=5", "max_len=4", "temperature=0") == ["aaaa"] * 5


def test_generate_seed_repeats_and_other_seeds_differ(lm_ckpt, capsys):
    one = rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=10", "max_len=6", "seed=1")
    assert rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=10", "max_len=6", "seed=1") == one
    assert rtk_main(capsys, "generate", f"ckpt={lm_ckpt}", "n=10", "max_len=6", "seed=2") != one


# ----------------------------------------------------------------------------- rtk score
def test_score_reads_input_lines_and_ranks_them_with_the_right_numbers(lm_ckpt, capsys, tmp_path):
    """Every step has the same distribution, so log P(text) = Σ log p(char) + log p(<eos>)."""
    lines = tmp_path / "lines.txt"
    lines.write_text("dd\n\nab\n   \nc\n")  # blank lines are skipped
    out = rtk_main(capsys, "score", f"ckpt={lm_ckpt}", "text=aaa", f"input={lines}")
    log_p = dict(zip(VOCAB, (math.log(p) for p in softmax(LOGITS))))
    texts = ["aaa", "dd", "ab", "c"]
    total = {t: sum(log_p[ch] for ch in t) + log_p["<eos>"] for t in texts}
    for i, text in enumerate(texts):  # the text= values first, then the file's lines, in order
        head, numbers, per_token = out[3 * i: 3 * i + 3]
        n = len(text) + 1
        assert head == text
        assert numbers.split() == ["log", "P", "=", f"{total[text]:.4f}", "nats", f"({total[text] / math.log(2):.4f}",
                                   "bits)", "perplexity", f"{math.exp(-total[text] / n):.2f}", str(n), "tokens",
                                   "(with", "<eos>)"]
        assert per_token.split() == [x for ch in [*text, "<eos>"] for x in (ch, f"{math.exp(log_p[ch]):.4f}")]
    assert out[12] == "ranked (most probable first):"
    ranked = sorted(texts, key=lambda t: -total[t])
    assert ranked == ["c", "ab", "aaa", "dd"]
    assert [line.split() for line in out[13:]] == [[f"{i}.", f"{total[t]:.4f}", t] for i, t in enumerate(ranked, 1)]


# ----------------------------------------------------------------------------- rtk report
def test_report_out_writes_the_report_there_and_not_in_the_sweep(capsys, tmp_path):
    sweep, out_dir = tmp_path / "sweep", tmp_path / "elsewhere" / "report"
    for job, cell, acc in (("0", "rnn", 0.5), ("1", "gru", 0.75)):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- task=peptides\n- cell={cell}\n")
        (sweep / job / "results.json").write_text(json.dumps(
            {"test": {"test_acc": acc}, "best_val": acc, "params": 100, "epochs": 1, "seconds": 2.0}))
    printed = rtk_main(capsys, "report", str(sweep), f"out={out_dir}")
    assert printed == [str(out_dir / name) for name in ("report.md", "report.csv", "report.png")]
    md = (out_dir / "report.md").read_text()
    assert "swept: cell" in md and "| 0 | rnn | 0.5000 |" in md and "| 1 | gru | 0.7500 |" in md
    assert not list(sweep.glob("report.*"))


# ----------------------------------------------------------------------------- rtk train task.example= data.sep=
@pytest.mark.slow
def test_train_reads_tab_separated_tokens_with_spaces_and_shows_the_given_example(tmp_path):
    """data.sep: a tab-only file whose tokens hold spaces ("New York") trains (any white space would
    find three columns); task.example: the summary ends with the prediction for that text."""
    sentences = [[("Harry", "B-PER"), ("visits", "O"), ("New York", "B-LOC")],
                 [("the", "O"), ("Big Apple", "B-LOC"), ("shines", "O")]]
    text = "\n\n".join("\n".join(f"{tok}\t{tag}" for tok, tag in s) for s in sentences * 15) + "\n"
    (tmp_path / "train.conll").write_text(text)
    run_dir = tmp_path / "run"
    example = "Hermione visits Paris"
    # a real tab inside Hydra's quotes (bash: data.sep=$'\'\t\''); unquoted, Hydra strips it to ''
    r = rtk_cmd("train", "task=tagging", f"data.train_file={tmp_path / 'train.conll'}", "data.sep='\t'",
                f"task.example='{example}'", "data.batch_size=8", "model.char_filters=0",
                f"hydra.run.dir={run_dir}", *TINY, cwd=tmp_path, env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.explain()
    vocab = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu",
                       weights_only=True)["hyper_parameters"]["spec"]["vocab"]
    assert {"new york", "big apple"} <= set(vocab)
    lines = (run_dir / "summary.txt").read_text().splitlines()
    i = lines.index(f"predict  {example!r}")
    shown = lines[i + 1].split()
    assert [pair.rsplit("/", 1)[0] for pair in shown] == example.split()
    assert all(pair.rsplit("/", 1)[1] in {"B-LOC", "B-PER", "O"} for pair in shown)


def test_report_groups_repeats_over_seeds_and_folds_with_mean_median_and_range(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [(cell, fold, acc) for cell, accs in (("rnn", (0.5, 0.7, 0.6)), ("gru", (0.9, 0.8, 1.0)))
            for fold, acc in enumerate(accs)]
    for i, (cell, fold, acc) in enumerate(jobs):
        (sweep / str(i) / ".hydra").mkdir(parents=True)
        (sweep / str(i) / ".hydra" / "overrides.yaml").write_text(f"- cell={cell}\n- data.val_fold={fold}\n")
        (sweep / str(i) / "results.json").write_text(json.dumps(
            {"test": {"test_acc": acc}, "best_val": acc / 10, "params": 100, "epochs": 1, "seconds": 2.0}))
    rtk_main(capsys, "report", str(sweep))
    md = (sweep / "report.md").read_text()
    assert "Over data.val_fold, per setting:" in md
    assert "| cell | jobs | test_acc mean | test_acc median (range) | best_val mean | best_val median (range) |" in md
    assert "| rnn | 3 | 0.6000 | 0.6000 (0.5000-0.7000) | 0.0600 | 0.0600 (0.0500-0.0700) |" in md
    assert "| gru | 3 | 0.9000 | 0.9000 (0.8000-1.0000) | 0.0900 | 0.0900 (0.0800-0.1000) |" in md


def test_report_without_seeds_or_folds_swept_has_one_table(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    for i, seed in enumerate((1, 1)):
        (sweep / str(i) / ".hydra").mkdir(parents=True)
        (sweep / str(i) / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- cell={('rnn', 'gru')[i]}\n")
        (sweep / str(i) / "results.json").write_text(json.dumps(
            {"test": {"test_acc": 0.5}, "best_val": 0.5, "params": 100, "epochs": 1, "seconds": 2.0}))
    rtk_main(capsys, "report", str(sweep))
    assert "per setting" not in (sweep / "report.md").read_text()
