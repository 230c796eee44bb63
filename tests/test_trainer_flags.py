"""Every ``trainer.*`` flag a user reaches for, against every head family: it trains, tests and
summarises, or it is refused before anything is built, in one sentence, leaving no run dir.

Each cell of the matrix is a real (tiny) run of the train app in this process, on data files
written here: tagging (CoNLL), classification (CSV), a language model with truncated BPTT
(the ``word_lm`` way: one stream, ``model.tbptt_steps``), sequence to sequence (CSV pairs) and
real-valued sequences (NumPy ``.npz``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, run_app_in_process

pytestmark = pytest.mark.slow  # ~70 tiny runs (and 20 refusals): a few minutes on 2 cores

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def _data(root: Path) -> dict[str, list[str]]:
    """Tiny data files and the overrides that train each head family on them."""
    root.mkdir(parents=True, exist_ok=True)
    conll = "".join(f"{WORDS[i % 10]} B-PER\n{WORDS[(i + 3) % 10]} I-PER\nsaid O\n{WORDS[(i + 5) % 10]} O\n\n"
                    for i in range(30))
    (root / "tags.conll").write_text(conll)
    (root / "table.csv").write_text("text,label\n" + "".join(
        f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} film,{'good' if i % 2 else 'bad'}\n" for i in range(40)))
    (root / "corpus.txt").write_text("".join(f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} {WORDS[(i + 1) % 10]}\n"
                                             for i in range(80)))
    (root / "pairs.csv").write_text("source,target\n" + "".join(
        f"{w}{i},{' '.join('XYZ'[ord(c) % 3] for c in w[:4])}\n" for i in range(4) for w in WORDS))
    rng = np.random.default_rng(0)  # real-valued sequences of 3-8 steps, 2 features, label = sign of the mean
    xs = [rng.normal(size=(3 + i % 6, 2)) for i in range(40)]
    np.savez(root / "series.npz", **{f"x_{i}": x for i, x in enumerate(xs)},
             y=np.array(["up" if x.mean() > 0 else "down" for x in xs]))
    cache = str(root / "hf-cache")
    small = ["hidden_size=8", "model.embedding_dim=8", "data.batch_size=4", "data.eval_batch_size=2"]
    return {
        "cache": cache,
        "tagging": ["task=tagging", f"data.train_file={root / 'tags.conll'}", f"data.test_file={root / 'tags.conll'}",
                    "model.char_dim=4", "model.char_filters=4", "model.shape_dim=4", *small],
        "classification": ["task=classification", f"data.train_file={root / 'table.csv'}",
                           f"data.test_file={root / 'table.csv'}", *small],
        "language model (tbptt)": ["task=lm", f"data.train_file={root / 'corpus.txt'}",
                                   f"data.test_file={root / 'corpus.txt'}", "model.tbptt_steps=3",
                                   "trainer.gradient_clip_val=null", "model.clip_grad_norm=1.0", "model.samples=1",
                                   *small[:2], "data.batch_size=2", "data.eval_batch_size=2"],
        "seq2seq": ["task=seq2seq", f"data.train_file={root / 'pairs.csv'}", f"data.test_file={root / 'pairs.csv'}",
                    "model.beam_size=2", *small],
        "series": ["task=series", f"data.train_file={root / 'series.npz'}", f"data.test_file={root / 'series.npz'}",
                   "hidden_size=8", "data.batch_size=4", "data.eval_batch_size=2"],
    }


HEADS = ["tagging", "classification", "language model (tbptt)", "seq2seq", "series"]
TBPTT = "language model (tbptt)"

# flag -> (overrides, what the summary / results must show); None: trains, validates and tests
WORKS = {
    "max_steps shorter than an epoch": (["trainer.max_steps=2", "trainer.max_epochs=3"], "no validation"),
    "max_steps longer than an epoch": (["trainer.max_steps=5", "trainer.max_epochs=3"], None),
    "max_time": (["trainer.max_time=00:00:05:00"], None),
    "max_epochs, min_epochs": (["trainer.max_epochs=2", "trainer.min_epochs=2", "patience=1"], None),
    "val_check_interval (a number of batches)": (["trainer.val_check_interval=2"], None),
    "val_check_interval (a fraction)": (["trainer.val_check_interval=0.5"], None),
    "check_val_every_n_epoch": (["trainer.check_val_every_n_epoch=2"], "no validation"),
    "limit_*_batches (fractions)": (["trainer.limit_train_batches=0.5", "trainer.limit_val_batches=0.5",
                                     "trainer.limit_test_batches=0.5"], None),
    "limit_val_batches=0": (["trainer.limit_val_batches=0", "patience=null"], "no validation"),
    "limit_test_batches=0": (["trainer.limit_test_batches=0"], "no test"),
    "num_sanity_val_steps": (["trainer.num_sanity_val_steps=2"], None),
    "accumulate_grad_batches": (["trainer.accumulate_grad_batches=2"], None),
    "gradient_clip_val": (["trainer.gradient_clip_val=1.0"], None),
    # three flags that do not interact share a run (trainer=cpu sets deterministic=true: every other cell has it)
    "precision=32, deterministic=false, log_every_n_steps": (["trainer.precision=32", "trainer.deterministic=false",
                                                              "trainer.log_every_n_steps=2"], None),
    "precision=bf16-mixed": (["trainer.precision=bf16-mixed"], None),
    "fast_dev_run": (["trainer.fast_dev_run=true"], "fast dev run"),
    "enable_checkpointing=false": (["trainer.enable_checkpointing=false"], "no checkpoint"),
}

# flag -> (overrides, the one sentence), for every head
REFUSED = {
    "limit_train_batches=0": (["trainer.limit_train_batches=0"],
                              "trainer.limit_train_batches=0 would train nothing; give a fraction (0.1) or a number of "
                              "batches"),
    "precision=16-mixed on CPU": (["trainer.precision=16-mixed"],
                                  "trainer.precision=16-mixed: float16 mixed precision needs a CUDA GPU; on CPU use "
                                  "trainer.precision=bf16-mixed (or 32)"),
    "log_every_n_steps=0": (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 must be a whole number of "
                                                             "at least 1"),
    "val_check_interval=1.5": (["trainer.val_check_interval=1.5"],
                               "trainer.val_check_interval=1.5 must be a fraction of an epoch in (0, 1] or a whole "
                               "number of training batches"),
    "max_time that is not a duration": (["trainer.max_time=ten"],
                                        "trainer.max_time='ten' must be DD:HH:MM:SS (e.g. 00:00:10:00 for ten minutes) "
                                        "or {days: …, hours: …, minutes: …, seconds: …}"),
}

# truncated BPTT optimises by hand: Lightning would neither accumulate nor clip (the sentences of docs/errors.md)
REFUSED_WITH_TBPTT = {
    "accumulate_grad_batches": "trainer.accumulate_grad_batches=2 does not apply with model.tbptt_steps=3",
    "gradient_clip_val": "trainer.gradient_clip_val=1.0 does not apply with model.tbptt_steps=3",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def train_app(monkeypatch, capsys, tmp_path, data):
    """``train_app(*overrides)`` -> (exit status, stdout, stderr, run dir) of the train app, in this process."""
    import datasets

    # one cache for the module's data files: each is read into a dataset once, not once per cell
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", data["cache"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("RTK_DEBUG", raising=False)

    def call(*overrides: str):
        run_dir = tmp_path / "run"
        code = run_app_in_process(monkeypatch, [*TINY, "hidden_size=8", *overrides, f"hydra.run.dir={run_dir}"])
        out = capsys.readouterr()
        return code, out.out, out.err, run_dir

    return call


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("flag", list(WORKS))
def test_trainer_flag_trains_tests_and_summarises_or_is_refused(train_app, data, head, flag):
    overrides, shows = WORKS[flag]
    code, out, err, run_dir = train_app(*data[head], *overrides)
    if head == TBPTT and flag in REFUSED_WITH_TBPTT:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {REFUSED_WITH_TBPTT[flag]}"), err
        assert "Traceback" not in err
        assert not run_dir.exists()
        return
    assert code == 0, f"{flag} / {head} failed:\n{err[-3000:]}"
    summary = (run_dir / "summary.txt").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert "Traceback" not in err
    if shows == "no test":
        assert "test     (skipped: trainer.limit_test_batches=0)" in summary and results["test"] == {}
    else:
        assert results["test"], summary  # the test split was evaluated …
        assert all(v == v for v in results["test"].values())  # … to numbers
    if shows == "no validation":
        assert not results["validated"] and results["best_val"] is None
        assert ("note     no validation ran before training stopped, so there is no best checkpoint; the test used "
                "checkpoints/last.ckpt (the final weights, step ") in summary
        assert results["tested"].startswith("checkpoints/last.ckpt")
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "checkpoints" / "best.ckpt").exists()
    elif shows == "fast dev run":
        assert "note     trainer.fast_dev_run: one batch of each split; Lightning saves and logs nothing" in summary
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.csv").exists()
    elif shows == "no checkpoint":
        assert "note     trainer.enable_checkpointing=false: no checkpoint was saved" in summary
        assert not (run_dir / "checkpoints").exists()
        assert results["validated"] and results["tested"] == "the final weights"
    elif shows is None:
        assert results["validated"] and results["tested"] == "checkpoints/best.ckpt", summary
        assert "note     " not in summary
    if flag == "max_steps longer than an epoch":
        assert results["epochs"] >= 1
    if flag == "max_epochs, min_epochs":
        assert results["epochs"] == 2


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("flag", list(REFUSED))
def test_trainer_flag_refused_up_front_in_one_sentence(train_app, data, head, flag):
    overrides, sentence = REFUSED[flag]
    code, out, err, run_dir = train_app(*data[head], *overrides)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert (code, errors) == (2, [f"error: {sentence}"]), err
    assert "Traceback" not in err and not run_dir.exists()
