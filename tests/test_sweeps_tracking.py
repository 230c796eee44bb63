"""Sweeps (sequential, joblib, Optuna), `rtk report`, and W&B offline tracking, end to end."""

import csv
import json
import glob
import struct

import pytest
import yaml

pytestmark = pytest.mark.slow

TINY_PEPTIDES = ["task=peptides", "hidden_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
                 "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false"]


def wandb_records(run_file: str):
    """Records of a W&B offline run file (LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        chunks += body
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_rtk_report_tables_every_job_of_a_sweep(rtk, tmp_path):
    sweep = tmp_path / "sweep"
    r = rtk("train", "-m", *TINY_PEPTIDES, "cell=rnn,gru", "depth=1,2", f"hydra.sweep.dir={sweep}", timeout=400)
    assert r.returncode == 0, r.explain()
    r = rtk("report", str(sweep))
    assert r.returncode == 0, r.explain()
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [(row["cell"], row["depth"]) for row in rows] == [("rnn", "1"), ("rnn", "2"), ("gru", "1"), ("gru", "2")]
    for row in rows:
        assert 0 <= float(row["test_acc"]) <= 1 and int(row["params"]) > 0 and float(row["seconds"]) > 0
    md = (sweep / "report.md").read_text()
    assert "swept: cell, depth" in md and md.count("\n| ") == 5  # header + 4 jobs
    assert (sweep / "report.png").stat().st_size > 1000


def test_rtk_report_on_a_folder_without_jobs_says_so(rtk, tmp_path):
    r = rtk("report", str(tmp_path))
    assert r.returncode == 2 and "no job" in r.stderr and "Traceback" not in r.stderr


def test_joblib_launcher_runs_jobs_in_parallel_processes(rtk, tmp_path):
    sweep = tmp_path / "sweep"
    # every log line starts with the id of the process that wrote it: the launcher's and each job's
    with_pid = "format='pid %(process)d %(message)s'"
    r = rtk("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY_PEPTIDES, "cell=rnn,lstm",
            f"hydra.job_logging.formatters.simple.{with_pid}", f"hydra.hydra_logging.formatters.simple.{with_pid}",
            f"hydra.sweep.dir={sweep}", timeout=400)
    assert r.returncode == 0, r.explain()
    launcher = {line.split()[1] for line in (r.stdout + r.stderr).splitlines()
                if line.startswith("pid ") and "Joblib.Parallel" in line}
    assert len(launcher) == 1, r.explain()
    assert sorted(p.parent.name for p in sweep.glob("*/results.json")) == ["0", "1"]
    jobs = [{line.split()[1] for line in (sweep / job / "train.log").read_text().splitlines()
             if line.startswith("pid ")} for job in ("0", "1")]
    assert all(len(pids) == 1 for pids in jobs), jobs
    assert jobs[0] != jobs[1] and not launcher & (jobs[0] | jobs[1]), (launcher, jobs)


def test_optuna_search_optimises_the_validation_metric_the_app_returns(rtk, tmp_path):
    sweep = tmp_path / "sweep"
    r = rtk("train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY_PEPTIDES,
            f"hydra.sweep.dir={sweep}", timeout=400)
    assert r.returncode == 0, r.explain()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [json.loads(p.read_text())["best_val"] for p in sweep.glob("*/results.json")]
    assert len(scores) == 3
    assert best["best_value"] == pytest.approx(max(scores))
    # hidden_size is fixed by the command line here, so only the other two are searched
    assert set(best["best_params"]) == {"model.lr", "model.dropout"}


def test_wandb_offline_run_holds_config_metrics_and_sample_table(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", "logger=wandb", *TINY_PEPTIDES, f"hydra.run.dir={run}", env={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.explain()
    assert (run / "metrics.csv").is_file(), "the CSV metrics are kept next to W&B"
    run_file = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(run_file) == 1, "no offline W&B run was written"
    config, history = set(), set()
    for rec in wandb_records(run_file[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            config |= {u.key for u in rec.config.update}
        elif kind == "history":
            history |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
    assert {"task", "cell", "model", "data", "trainer", "depth", "direction", "hidden_size"} <= config
    assert {"train_loss_epoch", "val_acc", "test_acc"} <= history
    assert any(k.startswith("samples") for k in history), "the sample predictions table was not logged"


def test_jobs_of_one_sweep_share_a_wandb_group_named_after_it(rtk, tmp_path):
    sweep = tmp_path / "sweep-dir"
    r = rtk("train", "-m", "logger=wandb", *TINY_PEPTIDES, "seed=1,2", f"hydra.sweep.dir={sweep}",
            env={"WANDB_MODE": "offline"}, timeout=400)
    assert r.returncode == 0, r.explain()
    groups = set()
    for run_file in glob.glob(str(sweep / "*" / "wandb" / "offline-run-*" / "run-*.wandb")):
        groups |= {rec.run.run_group for rec in wandb_records(run_file) if rec.WhichOneof("record_type") == "run"}
    assert groups == {"sweep-sweep-dir"}


def test_slurm_launcher_config_composes(rtk):
    r = rtk("train", "hydra/launcher=slurm", "--cfg", "hydra")
    assert r.returncode == 0, r.explain()
    assert "SlurmLauncher" in r.stdout and "tasks_per_node: 1" in r.stdout
