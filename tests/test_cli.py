"""The `rtk` command as a user runs it (subprocesses, real exit codes and output)."""

from __future__ import annotations

import re

import pytest

BUILTIN_CELLS = ["gru", "gru_simple", "lstm", "peephole_lstm", "rnn"]


def one_error_line(result) -> str:
    """stderr holds exactly one `error: …` sentence and no traceback."""
    assert "Traceback" not in result.stderr, result.explain()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.explain()
    return errors[0]


def test_help_lists_the_commands(rtk):
    r = rtk("--help")
    assert r.returncode == 0, r.explain()
    for command in ("rtk train", "rtk predict", "rtk plugins"):
        assert command in r.stdout


def test_version(rtk):
    r = rtk("--version")
    assert r.returncode == 0 and r.stdout.strip() == "rtk 0.1.0", r.explain()


def test_unknown_command_exits_2_and_lists_the_commands(rtk):
    r = rtk("trian")
    assert r.returncode == 2, r.explain()
    assert one_error_line(r) == ("error: unknown command 'trian'; commands: train, predict, generate, score, plugins, "
                                 "report, diagnose, export")


def test_plugins_lists_the_builtin_cells_with_distribution_and_backends(rtk):
    r = rtk("plugins")
    assert r.returncode == 0, r.explain()
    rows = {line.split()[0]: line.split(None, 3) for line in r.stdout.splitlines()[1:] if line.strip()}
    assert r.stdout.splitlines()[0].split() == ["cell", "distribution", "version", "backends", "status"]
    for cell in BUILTIN_CELLS:
        assert cell in rows, r.stdout
        name, dist, version, rest = rows[cell]
        assert dist == "recurrent-toolkit" and rest.endswith("ok")
    assert rows["lstm"][3].startswith("native, loop")
    assert rows["gru"][3].startswith("native, sequence, loop")  # reset=after: native; reset=before: sequence
    assert rows["rnn"][3].startswith("native, loop")
    assert rows["peephole_lstm"][3].startswith("sequence, loop")
    assert rows["gru_simple"][3].split()[0] == "loop"


def test_train_cfg_job_prints_the_composed_config(rtk):
    r = rtk("train", "task=sentiment", "cell=gru", "depth=2", "--cfg", "job")
    assert r.returncode == 0, r.explain()
    import yaml

    cfg = yaml.safe_load(r.stdout)
    assert cfg["task"]["name"] == "sentiment"
    assert cfg["cell"] == {"name": "gru", "backend": "auto", "reset": "after"}
    assert cfg["depth"] == 2 and cfg["direction"] == "bi"
    assert cfg["data"]["source"] == "vader_movies"


def test_train_invalid_config_exits_2_with_one_error_line_and_no_run_dir(rtk, tmp_path):
    run_dir = tmp_path / "run"
    r = rtk("train", "depth=0", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, r.explain()
    assert one_error_line(r) == "error: depth=0 must be a whole number of at least 1"
    assert not run_dir.exists()


def test_train_reports_several_problems_in_one_line(rtk, tmp_path):
    r = rtk("train", "depth=0", "direction=sideways", "+trainer.max_epoch=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.explain()
    line = one_error_line(r)
    assert "depth=0" in line and "direction='sideways'" in line and "did you mean trainer.max_epochs?" in line


def test_train_bad_cell_value_exits_2_with_one_error_line_and_no_run_dir(rtk, tmp_path):
    run_dir = tmp_path / "run"
    r = rtk("train", "cell=gru", "cell.reset=sideways", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, r.explain()
    assert "reset must be 'before' or 'after', got 'sideways'" in one_error_line(r)
    assert not run_dir.exists()


def test_train_missing_user_file_names_it(rtk, tmp_path):
    run_dir = tmp_path / "run"
    missing = tmp_path / "nope.conll"
    r = rtk("train", "task=tagging", f"data.train_file={missing}", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, r.explain()
    assert one_error_line(r) == f"error: data file {missing} does not exist"
    assert not run_dir.exists()


def test_train_unknown_task_lists_the_tasks(rtk, tmp_path):
    from pathlib import Path

    import toolkit.conf

    tasks = sorted(p.stem for p in (Path(toolkit.conf.__file__).parent / "task").glob("*.yaml"))
    assert {"ner", "sentiment", "peptides", "char_lm", "word_lm", "music", "g2p", "lm"} <= set(tasks)
    r = rtk("train", "task=nosuchtask", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode != 0
    for task in tasks:
        assert re.search(rf"\b{task}\b", r.stderr), r.explain()


def test_predict_missing_checkpoint_file(rtk, tmp_path):
    ckpt = tmp_path / "missing.ckpt"
    r = rtk("predict", f"ckpt={ckpt}", "text=hello")
    assert r.returncode == 2, r.explain()
    assert one_error_line(r) == f"error: checkpoint {ckpt} does not exist"


def test_predict_empty_text(rtk, tmp_path):
    r = rtk("predict", f"ckpt={tmp_path / 'x.ckpt'}", "text=ok", "text=  ")
    assert r.returncode == 2, r.explain()
    assert one_error_line(r) == "error: rtk predict: text number 2 is empty"


def test_predict_without_text(rtk, tmp_path):
    r = rtk("predict", f"ckpt={tmp_path / 'x.ckpt'}")
    assert r.returncode == 2, r.explain()
    assert one_error_line(r) == 'error: rtk predict: give text="…" (one or more) or input=<file of lines>'


# The rest of the argument checks run in-process (``rtk`` is ``sys.exit(toolkit.cli.main())``),
# which spares a torch import per case.
def run_main(capsys, *argv):
    from toolkit.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_predict_file_that_is_not_a_checkpoint(capsys, tmp_path):
    ckpt = tmp_path / "junk.ckpt"
    ckpt.write_bytes(b"not a checkpoint at all")
    code, _, err = run_main(capsys, "predict", f"ckpt={ckpt}", "text=hello")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and str(ckpt) in err and "checkpoint" in err


def test_predict_checkpoint_of_something_else(capsys, tmp_path):
    import torch

    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, ckpt)
    code, _, err = run_main(capsys, "predict", f"ckpt={ckpt}", "text=hello")
    assert (code, err) == (2, f"error: {ckpt} is not a Recurrent Toolkit checkpoint")


def test_predict_without_ckpt(capsys):
    code, _, err = run_main(capsys, "predict", "text=hello")
    assert (code, err) == (2, "error: rtk predict: ckpt=<path to a .ckpt> is required")


@pytest.mark.parametrize("arg, expected", [
    ("colour=red", "error: rtk predict: unknown key 'colour' (keys: ckpt, text, input)"),
    ("hello", "error: rtk predict: 'hello' is not key=value (keys: ckpt, text, input)"),
    ("ckpt=y.ckpt", "error: rtk predict: 'ckpt' given twice"),
])
def test_predict_bad_arguments(capsys, arg, expected):
    code, _, err = run_main(capsys, "predict", "ckpt=x.ckpt", arg)
    assert (code, err) == (2, expected)


def test_predict_missing_input_file(capsys, tmp_path):
    code, _, err = run_main(capsys, "predict", "ckpt=x.ckpt", f"input={tmp_path / 'lines.txt'}")
    assert (code, err) == (2, f"error: rtk predict: input={tmp_path / 'lines.txt'}: no such file")


def test_predict_input_file_that_is_not_utf8(capsys, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"caf\xe9\n")
    code, _, err = run_main(capsys, "predict", "ckpt=x.ckpt", f"input={path}")
    assert (code, err) == (2, f"error: rtk predict: input={path} is not UTF-8 text")


def test_plugins_takes_no_arguments(capsys):
    code, _, err = run_main(capsys, "plugins", "verbose=1")
    assert code == 2 and "unknown key 'verbose'" in err
