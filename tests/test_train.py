"""End to end: `rtk train` on each named task and on user files, then `rtk predict` on the checkpoint.

Runs are tiny (1 epoch, 3 training batches, hidden 16) and each named task is
trained once per module; the tests then read what the run left behind.
"""

from __future__ import annotations

import csv
import json
import re
import sys

import pytest
import torch
import yaml

from conftest import TINY, rtk_cmd, run_cmd

SPELL = "Harry Potter and Hermione Granger invented a new spell."
SPELL_TOKENS = ["Harry", "Potter", "and", "Hermione", "Granger", "invented", "a", "new", "spell", "."]
RUN_FILES = ["config.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "metrics.csv", "summary.txt"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, workdir):
    """``trained(task)`` -> (result, run_dir) of one tiny run of a named task, made once per module."""
    cache = {}

    def get(task: str):
        if task not in cache:
            run_dir = tmp_path_factory.mktemp(f"run-{task}") / "run"
            result = rtk_cmd("train", f"task={task}", f"hydra.run.dir={run_dir}", *TINY, cwd=workdir)
            cache[task] = (result, run_dir)
        return cache[task]

    return get


def summary_block(stdout: str) -> str:
    """The one-screen summary the run printed: from its title rule to its closing rule."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if " Recurrent Toolkit · " in line and line.startswith("─"))
    last = next(i for i in range(first + 1, len(lines)) if lines[i] == "─" * 72)
    return "\n".join(lines[first:last + 1])


def labels_of(ckpt) -> list[str]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["spec"]["labels"]


# ----------------------------------------------------------------------------- named tasks
@pytest.mark.parametrize("task", ["ner", "sentiment", "peptides"])
def test_training_a_named_task_leaves_a_complete_run_dir(trained, task):
    result, run_dir = trained(task)
    assert result.returncode == 0, result.explain()
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing\n{result.explain()}"
    assert not (run_dir.parent / "runs").exists()


@pytest.mark.parametrize("task, metric", [("ner", "f1"), ("sentiment", "acc"), ("peptides", "acc")])
def test_printed_summary_shows_test_metrics_and_the_run_dir(trained, task, metric):
    result, run_dir = trained(task)
    assert result.returncode == 0, result.explain()
    block = summary_block(result.stdout)
    assert f"Recurrent Toolkit · {task}" in block
    assert f"model    lstm (native) · depth {2 if task == 'sentiment' else 1} · bidirectional · hidden 16" in block  # sentiment: two layers by default
    assert "training 1 epoch (best at epoch 1)" in block
    test_line = next(line for line in block.splitlines() if line.startswith("test "))
    value = float(re.search(rf"\b{metric} (\d\.\d{{4}})", test_line).group(1))
    assert 0.0 <= value <= 1.0
    assert f"run dir  {run_dir}" in block
    assert (run_dir / "summary.txt").read_text() == block + "\n"


@pytest.mark.parametrize("task", ["ner", "sentiment", "peptides"])
def test_saved_config_is_the_resolved_config_of_the_run(trained, task):
    result, run_dir = trained(task)
    assert result.returncode == 0, result.explain()
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["task"]["name"] == task
    assert cfg["hidden_size"] == 16 and cfg["trainer"]["max_epochs"] == 1
    assert "${" not in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("task, monitor", [("ner", "val_f1"), ("sentiment", "val_acc")])
def test_metrics_csv_records_training_validation_and_test(trained, task, monitor):
    result, run_dir = trained(task)
    assert result.returncode == 0, result.explain()
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"epoch", "val_loss", monitor, "test_" + monitor[4:]} <= columns
    train_loss = [c for c in columns if c == "train_loss" or c.startswith("train_loss_")]
    assert train_loss, columns
    assert any(row[monitor] for row in rows)
    assert any(row[c] for row in rows for c in train_loss)


def test_predict_ner_prints_one_tag_per_token(trained, workdir):
    _, run_dir = trained("ner")
    best = run_dir / "checkpoints" / "best.ckpt"
    r = rtk_cmd("predict", f"ckpt={best}", f"text={SPELL}", cwd=workdir)
    assert r.returncode == 0, r.explain()
    lines = r.stdout.splitlines()
    assert len(lines) == 10, r.explain()
    pairs = [line.split("\t") for line in lines]
    assert [p[0] for p in pairs] == SPELL_TOKENS
    assert all(len(p) == 2 and p[1] in labels_of(best) for p in pairs)


def test_predict_sentiment_prints_label_probability_and_text(trained, workdir):
    _, run_dir = trained("sentiment")
    r = rtk_cmd("predict", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"text={SPELL}", cwd=workdir)
    assert r.returncode == 0, r.explain()
    (line,) = r.stdout.splitlines()
    label, prob, text = line.split("\t")
    assert label in ("positive", "negative")
    assert 0.5 <= float(prob) <= 1.0 and re.fullmatch(r"\d\.\d{4}", prob)
    assert text == SPELL


def test_predict_ner_reads_lines_from_an_input_file(trained, workdir, tmp_path):
    _, run_dir = trained("ner")
    lines = tmp_path / "tweets.txt"
    lines.write_text(f"{SPELL}\n\n@bob loves #Paris\n")
    r = rtk_cmd("predict", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"input={lines}", cwd=workdir)
    assert r.returncode == 0, r.explain()
    first, second = r.stdout.split("\n\n")
    assert [line.split("\t")[0] for line in first.splitlines()] == SPELL_TOKENS
    assert [line.split("\t")[0] for line in second.splitlines()] == ["@bob", "loves", "#Paris"]


def test_predict_sentiment_reads_lines_from_an_input_file(trained, workdir, tmp_path):
    _, run_dir = trained("sentiment")
    lines = tmp_path / "reviews.txt"
    lines.write_text("A gorgeous, witty and moving film.\nDull and far too long.\n")
    r = rtk_cmd("predict", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={lines}", cwd=workdir)
    assert r.returncode == 0, r.explain()
    out = [line.split("\t") for line in r.stdout.splitlines()]
    assert [row[2] for row in out] == ["A gorgeous, witty and moving film.", "Dull and far too long."]
    assert all(row[0] in ("positive", "negative") for row in out)


def test_predict_peptide_sequence(trained, workdir):
    _, run_dir = trained("peptides")
    r = rtk_cmd("predict", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "text=GLFDIIKKIAESF", cwd=workdir)
    assert r.returncode == 0, r.explain()
    label, prob, text = r.stdout.strip().split("\t")
    assert label in ("amp", "non-amp") and text == "GLFDIIKKIAESF"


def test_resuming_from_a_checkpoint_of_another_head_fails_before_training(trained, workdir, tmp_path):
    _, run_dir = trained("sentiment")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    new_run = tmp_path / "run"
    r = rtk_cmd("train", "task=ner", f"ckpt_path={ckpt}", f"hydra.run.dir={new_run}", *TINY, cwd=workdir)
    assert r.returncode == 2, r.explain()
    assert f"error: {ckpt} holds a classification model, not a tagging model" in r.stderr
    assert "Traceback" not in r.stderr
    assert not new_run.exists()


RECORD_BATCHES = """
import json, sys
from toolkit.tasks.classification import ClassificationTask
step, record = ClassificationTask.training_step, sys.argv[1]
def recording_step(self, batch, i):
    with open(record, "a") as f:
        f.write(json.dumps([self.current_epoch, batch["tokens"].tolist()]) + "\\n")
    return step(self, batch, i)
ClassificationTask.training_step = recording_step
from toolkit.train import run
sys.argv = ["toolkit.train"] + sys.argv[2:]
run()
"""


def test_training_sees_a_new_batch_order_every_epoch(workdir, tmp_path):
    record = tmp_path / "batches.jsonl"
    r = run_cmd([sys.executable, "-c", RECORD_BATCHES, str(record), "task=peptides", "hidden_size=8",
                 "trainer.max_epochs=3", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                 "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "data.batch_size=8",
                 "patience=null", f"hydra.run.dir={tmp_path / 'run'}"], cwd=workdir)
    assert r.returncode == 0, r.explain()
    epochs: dict[int, list] = {}
    for line in record.read_text().splitlines():
        epoch, tokens = json.loads(line)
        epochs.setdefault(epoch, []).append(tokens)
    assert sorted(epochs) == [0, 1, 2] and all(len(b) == 4 for b in epochs.values())
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


# ----------------------------------------------------------------------------- user files
def conll(sentences) -> str:
    return "\n\n".join("\n".join(f"{tok} {tag}" for tok, tag in s) for s in sentences) + "\n"


TAGGED = [[("Harry", "B-PER"), ("visits", "O"), ("Paris", "B-LOC")],
          [("Hermione", "B-PER"), ("Granger", "I-PER"), ("reads", "O")],
          [("the", "O"), ("London", "B-LOC"), ("Eye", "I-LOC")]]


def test_training_a_tagger_on_user_conll_files(workdir, tmp_path):
    for name, n in (("train", 20), ("dev", 3), ("test", 3)):
        (tmp_path / f"{name}.conll").write_text(conll(TAGGED * n))
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=tagging", f"data.train_file={tmp_path / 'train.conll'}",
                f"data.val_file={tmp_path / 'dev.conll'}", f"data.test_file={tmp_path / 'test.conll'}",
                "data.batch_size=8", f"hydra.run.dir={run_dir}", *TINY, cwd=workdir,
                env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.explain()
    block = summary_block(r.stdout)
    assert "Recurrent Toolkit · tagging" in block and re.search(r"test .*\bf1 \d\.\d{4}", block)
    best = run_dir / "checkpoints" / "best.ckpt"
    assert labels_of(best) == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    p = rtk_cmd("predict", f"ckpt={best}", "text=Harry visits the London Eye", cwd=workdir)
    assert p.returncode == 0, p.explain()
    pairs = [line.split("\t") for line in p.stdout.splitlines()]
    assert [t for t, _ in pairs] == ["Harry", "visits", "the", "London", "Eye"]
    assert all(tag in labels_of(best) for _, tag in pairs)


def test_training_a_tagger_on_a_user_file_without_dev_or_test(workdir, tmp_path):
    (tmp_path / "train.conll").write_text(conll(TAGGED * 20))
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=tagging", f"data.train_file={tmp_path / 'train.conll'}",
                f"hydra.run.dir={run_dir}", *TINY, cwd=workdir, env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.explain()
    assert "test     (no test split)" in summary_block(r.stdout)
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


REVIEWS = [("a gorgeous witty film", "good"), ("dull and far too long", "bad"),
           ("moving and wise", "good"), ("a tedious mess", "bad")]


def test_training_a_classifier_on_user_csv_files_with_custom_columns(workdir, tmp_path):
    def write(name, n):
        rows = ["id,review,verdict"] + [f"{i},{t},{y}" for i, (t, y) in enumerate(REVIEWS * n)]
        (tmp_path / name).write_text("\n".join(rows) + "\n")

    write("train.csv", 20)
    write("test.csv", 2)
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=classification", f"data.train_file={tmp_path / 'train.csv'}",
                f"data.test_file={tmp_path / 'test.csv'}", "data.text_col=review", "data.label_col=verdict",
                "data.batch_size=8", f"hydra.run.dir={run_dir}", *TINY, cwd=workdir,
                env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.explain()
    assert re.search(r"test .*\bacc \d\.\d{4}", summary_block(r.stdout))
    best = run_dir / "checkpoints" / "best.ckpt"
    assert labels_of(best) == ["bad", "good"]
    p = rtk_cmd("predict", f"ckpt={best}", "text=a witty film", cwd=workdir)
    assert p.returncode == 0, p.explain()
    label, _, text = p.stdout.strip().split("\t")
    assert label in ("bad", "good") and text == "a witty film"


def test_training_a_classifier_on_user_jsonl_files_with_custom_columns(workdir, tmp_path):
    def write(name, n):
        rows = [json.dumps({"sentence": t, "sentiment": y}) for t, y in REVIEWS * n]
        (tmp_path / name).write_text("\n".join(rows) + "\n")

    write("train.jsonl", 20)
    write("dev.jsonl", 2)
    write("test.jsonl", 2)
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=classification", f"data.train_file={tmp_path / 'train.jsonl'}",
                f"data.val_file={tmp_path / 'dev.jsonl'}", f"data.test_file={tmp_path / 'test.jsonl'}",
                "data.text_col=sentence", "data.label_col=sentiment", f"hydra.run.dir={run_dir}", *TINY,
                cwd=workdir, env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.explain()
    assert re.search(r"test .*\bacc \d\.\d{4}", summary_block(r.stdout))
    assert labels_of(run_dir / "checkpoints" / "best.ckpt") == ["bad", "good"]


# ----------------------------------------------------------------------------- cells without a fused kernel
@pytest.mark.parametrize("cell", [["cell=peephole_lstm"], ["cell=gru_simple"], ["cell=gru", "cell.reset=before"]],
                         ids=["peephole_lstm", "gru_simple", "gru-reset-before"])
def test_deep_bidirectional_cells_without_a_kernel_train(workdir, tmp_path, cell):
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=ner", *cell, "depth=2", "direction=bi", "hidden_size=8",
                "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
                f"hydra.run.dir={run_dir}", cwd=workdir)
    assert r.returncode == 0, r.explain()
    name = cell[0].split("=")[1]
    backend = "loop" if name == "gru_simple" else "sequence"  # the whole-sequence path where the cell has one
    assert f"model    {name} ({backend}) · depth 2 · bidirectional · hidden 8" in summary_block(r.stdout)
    assert re.search(r"test .*\bf1 \d\.\d{4}", summary_block(r.stdout))
