"""The Hydra app: ``rtk train …`` and ``python -m toolkit.train …`` are the same app.

A straight chain: check the config, build data, model, callbacks, loggers and
trainer, fit, test the best checkpoint (the final weights when no validation
ran), print the summary, and return the monitored validation metric (what a
sweeper optimises). A bad input ends in one ``error: …`` sentence (exit 2); Ctrl-C
or SIGTERM in one line with the command that resumes (exit 130 / 143).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

_START_UP = "interrupted (SIGINT) during start-up; nothing was written"

try:
    import hydra
    import pytorch_lightning as pl
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    from toolkit.callbacks import LastCheckpoint, MovingAverage, NonFinite, Reproducible
    from toolkit.checkpoints import AtomicCheckpointIO, read_checkpoint
    from toolkit.config import check_batches, check_environment, register_plugin_cells, validate
    from toolkit.diagnose import GradientDiagnostic
    from toolkit.errors import ConfigError, Interrupted, ToolkitError
    from toolkit.heads import HEADS
    from toolkit.overrides import check_or_exit
    from toolkit.summary import plot_curves, render
    from toolkit.tasks.transfer import init_from_lm, lm_vocabulary
except KeyboardInterrupt:  # Ctrl-C while torch and Hydra load: one line, not their traceback
    if __name__ != "__main__":
        raise
    print(_START_UP, file=sys.stderr, flush=True)
    sys.exit(130)

log = logging.getLogger("toolkit")


def _mismatch(ckpt: dict, cfg: DictConfig) -> list[str]:
    """The config keys whose values differ from the model stored in ``ckpt``."""
    hp = ckpt["hyper_parameters"]
    wanted = {"task.name": (hp.get("task_name"), cfg.task.name), "depth": (hp.get("depth"), cfg.depth),
              "direction": (hp.get("direction"), cfg.direction),
              "hidden_size": (hp.get("hidden_size"), cfg.hidden_size),
              "cell": (hp.get("cell"), OmegaConf.to_container(cfg.cell, resolve=True))}
    for key, value in cfg.model.items():
        wanted[f"model.{key}"] = (hp.get(key), value)
    return [f"{k}={new!r} (checkpoint: {old!r})" for k, (old, new) in wanted.items() if old != new]


def resolve_ckpt(cfg: DictConfig, run_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint to resume from and its contents, or None.

    ``last`` is this run dir's checkpoints/last.ckpt, else the newest last.ckpt of
    a sibling run (e.g. runs/<task>/*) whose model has this exact config.
    """
    if cfg.ckpt_path is None:
        return None
    head = cfg.task.head
    if str(cfg.ckpt_path) != "last":
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        ckpt = read_checkpoint(path, expect=head)
        if diff := _mismatch(ckpt, cfg):
            raise ConfigError(f"ckpt_path={path} was trained with another config: {'; '.join(diff)}")
        return path, ckpt
    own = run_dir / "checkpoints" / "last.ckpt"
    found = [own] if own.is_file() else sorted(run_dir.parent.glob("*/checkpoints/last.ckpt"),
                                                key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        ckpt = read_checkpoint(path, expect=head)
        diff = _mismatch(ckpt, cfg)
        if not diff:
            return path, ckpt
        if path == own:
            raise ConfigError(f"ckpt_path=last: {path} was trained with another config: {'; '.join(diff)}")
    raise ConfigError(f"ckpt_path=last: no checkpoints/last.ckpt of this config in {run_dir} or in the "
                      f"other runs under {run_dir.parent}; pass the checkpoint's path instead")


def _batch_progress(ckpt: dict) -> dict:
    return ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})


def first_epoch(ckpt: dict) -> int:
    """The epoch a resumed run starts with: the next one after an end-of-epoch checkpoint."""
    return ckpt["epoch"] + 1 if _batch_progress(ckpt).get("is_last_batch", True) else ckpt["epoch"]


def batches_done(ckpt: dict) -> int:
    """Training batches of the resumed epoch that a mid-epoch checkpoint (an interrupted run) already took."""
    progress = _batch_progress(ckpt)
    if progress.get("is_last_batch", True):
        return 0
    return int(progress.get("current", {}).get("processed", 0))


def csv_logger(run_dir: Path, resumed_step: int | None):
    """run_dir/metrics.csv; resuming in the same run dir keeps the rows logged before the checkpoint."""
    path = run_dir / "metrics.csv"
    header, kept = [], []
    if resumed_step is not None and path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            kept = [row for row in reader if row.get("step") and int(row["step"]) < resumed_step]
    logger = CSVLogger(save_dir=str(run_dir), name="", version="")
    if kept:
        writer = logger.experiment  # creating the writer clears metrics.csv
        with path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(kept)
        writer.metrics_keys = header  # new rows are appended under the same header
    return logger


def make_loggers(cfg: DictConfig, run_dir: Path, resumed_step: int | None = None) -> list:
    name = cfg.logger.name
    if name == "none":
        return []
    loggers = [csv_logger(run_dir, resumed_step)]
    options = {k: v for k, v in OmegaConf.to_container(cfg.logger, resolve=True).items() if k != "name"}
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401  (an optional extra: only to say how to install it)
        except ImportError:
            raise ConfigError("logger=tensorboard needs the tensorboard package: "
                              "pip install 'recurrent-toolkit[tensorboard]'") from None

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", **options))
    elif name == "wandb":
        from toolkit.tracking import wandb_logger  # wandb is an optional extra

        loggers.append(wandb_logger(cfg, run_dir, **options))
    elif name != "csv":
        raise ConfigError(f"logger={name!r} is not one of: csv, wandb, tensorboard, none")
    return loggers


def log_samples(trainer, model, datamodule, n: int = 20) -> None:
    """Gold vs predicted on the first test (else validation) examples, as a W&B table."""
    wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    split = datamodule.raw.get("test") or datamodule.raw.get("validation")
    if not wandb_loggers or split is None:
        return
    columns, rows = model.sample_table(split.select(range(min(n, len(split)))))
    for lg in wandb_loggers:
        lg.log_text(key="samples", columns=columns, data=rows)


def train(cfg: DictConfig) -> float | None:
    """Train, test and summarise one configuration; returns the best validation score."""
    validate(cfg)
    check_environment(cfg)  # a missing extra or GPU: one sentence before any data is read
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    head, monitor = cfg.task.head, cfg.task.monitor
    resume = resolve_ckpt(cfg, run_dir)  # a clear error for a wrong or damaged checkpoint, before training
    ckpt = resume[0] if resume else None
    same_dir = resume is not None and resume[0].parent.parent.resolve() == run_dir.resolve()
    resumed_step = resume[1]["global_step"] if same_dir else None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    data = OmegaConf.to_container(cfg.data, resolve=True)
    init_from = cfg.model.get("init_from")
    if init_from is not None:  # the language model's vocabulary encodes the data (checked before loading it)
        data["vocab"] = lm_vocabulary(init_from, head, data, {
            "cell": cfg.cell.name, "hidden_size": cfg.hidden_size, "depth": cfg.depth,
            "embedding_dim": cfg.model.get("embedding_dim")})
    datamodule = HEADS[head].data(seed=cfg.seed, **data)
    datamodule.setup()
    check_batches(cfg.trainer, {split: len(loader) for split, loader in (
        ("train", datamodule.train_dataloader()), ("validation", datamodule.val_dataloader()),
        ("test", datamodule.test_dataloader())) if loader is not None})
    if resume:
        # Lightning may build the resumed epoch's batches before any callback runs; a run
        # interrupted mid-epoch continues after the batches it already took
        datamodule.start_epoch = first_epoch(resume[1])
        datamodule.start_batch = batches_done(resume[1])
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch.*")
    model = HEADS[head].task(spec=datamodule.spec(), cell=OmegaConf.to_container(cfg.cell, resolve=True),
                        depth=cfg.depth, direction=cfg.direction, hidden_size=cfg.hidden_size,
                        task_name=cfg.task.name, **OmegaConf.to_container(cfg.model, resolve=True))
    if init_from is not None and resume is None:
        log.info(init_from_lm(model, init_from))

    ckpt_dir = run_dir / "checkpoints"
    saving = cfg.trainer.get("enable_checkpointing", True) is not False
    # saved after a validation only: a run that stops before its first one (trainer.max_steps,
    # max_time, check_val_every_n_epoch) has no best checkpoint, and says so
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=cfg.task.mode,
                                 save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=False)
    # Lightning's save_last only refreshes last.ckpt when the best one changed; resuming
    # needs the latest epoch whatever its score, so "last" is its own callback (which also
    # stops the run at SIGINT / SIGTERM with a resumable last.ckpt)
    callbacks = [checkpoint, LastCheckpoint(ckpt_dir)] if saving else []
    callbacks += [Reproducible(cfg.seed), NonFinite()]
    if cfg.patience is not None:  # checked after each validation, never on a metric that was not computed
        callbacks.append(EarlyStopping(monitor=monitor, mode=cfg.task.mode, patience=cfg.patience,
                                       check_on_train_epoch_end=False))
    if cfg.get("ema") is not None:  # validation, checkpoints and test read the average (Lightning swaps it in)
        callbacks.append(MovingAverage(float(cfg.ema)))
    if cfg.diagnose:  # ||dL/da<t>|| at the start and end of fit: gradients.png, gradients.csv
        callbacks.append(GradientDiagnostic(run_dir, head))
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=make_loggers(cfg, run_dir, resumed_step),
                         callbacks=callbacks, default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()],
                         use_distributed_sampler=False)  # BucketBatchSampler shards batches itself
    if cfg.trainer.get("fast_dev_run") and cfg.logger.name != "none":
        log.warning("trainer.fast_dev_run: Lightning turns every logger off for a fast dev run, so logger=%s "
                    "records nothing (and no metrics.csv is written)", cfg.logger.name)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved)  # the whole resolved config: hparams.yaml, W&B config
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        log.info("task=%s cell=%s (%s backend) depth=%d direction=%s hidden_size=%d · run dir %s",
                 cfg.task.name, cfg.cell.name, model.rnn.backend, cfg.depth, cfg.direction,
                 cfg.hidden_size, run_dir)

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    seconds = time.perf_counter() - start
    validated = monitor in trainer.callback_metrics
    best = checkpoint.best_model_path if saving else ""  # a path: "best" is ambiguous with two checkpoint callbacks
    tested, notes = tested_weights(cfg, run_dir, best, validated, trainer.global_step)
    test = None
    if datamodule.has_test() and cfg.trainer.get("limit_test_batches") != 0:
        test = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False,
                            weights_only=True)[0]
    no_test = "(skipped: trainer.limit_test_batches=0)" if datamodule.has_test() else "(no test split)"
    if not trainer.is_global_zero:
        return None

    model.eval()  # Lightning restores train mode after testing: no dropout in the samples and predictions
    log_samples(trainer, model, datamodule)
    example = cfg.task.get("example")
    showcase = model.showcase(example, datamodule)  # (heading, lines): a prediction, samples, …
    plot_curves(run_dir / "metrics.csv", run_dir / "curves.png", monitor)
    files = [p for p in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                         "metrics.csv", "curves.png", "gradients.png", "gradients.csv") if (run_dir / p).exists()]
    score = checkpoint.best_model_score
    best_epoch = None
    if score is not None and checkpoint.best_model_path:
        best_epoch = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["epoch"] + 1
    results = {"task": cfg.task.name, "cell": cfg.cell.name, "backend": model.rnn.backend,
               "depth": cfg.depth, "direction": cfg.direction, "hidden_size": cfg.hidden_size,
               "params": sum(p.numel() for p in model.parameters()), "epochs": trainer.current_epoch,
               "best_epoch": best_epoch, "seconds": round(seconds, 2), "monitor": monitor,
               "best_val": float(score) if score is not None else None, "validated": validated,
               "tested": tested if test is not None else None,
               "test": {k: float(v) for k, v in (test or {}).items()}}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # read by `rtk report`
    text = render(task=cfg.task.name, cell=cfg.cell.name, backend=model.rnn.backend, depth=cfg.depth,
                  direction=cfg.direction, hidden_size=cfg.hidden_size, params=results["params"],
                  epochs=trainer.current_epoch, best_epoch=best_epoch, seconds=seconds, test=test,
                  run_dir=run_dir, files=files + ["results.json", "summary.txt"], showcase=showcase,
                  resumed_from=str(ckpt) if ckpt else None, notes=notes,
                  no_test=no_test)
    (run_dir / "summary.txt").write_text(text + "\n")
    print(text, flush=True)
    return float(score) if score is not None else None


def tested_weights(cfg: DictConfig, run_dir: Path, best: str, validated: bool, step: int) -> tuple[str, list[str]]:
    """Which weights the test uses (the best checkpoint, else the final ones) and the summary's notes."""
    if best:
        return "checkpoints/best.ckpt", []
    if cfg.trainer.get("fast_dev_run"):
        return "the final weights", ["trainer.fast_dev_run: one batch of each split; Lightning saves and logs "
                                     "nothing, and the test used the final weights"]
    if cfg.trainer.get("enable_checkpointing") is False:
        return "the final weights", ["trainer.enable_checkpointing=false: no checkpoint was saved; the test used "
                                     "the final weights"]
    last = run_dir / "checkpoints" / "last.ckpt"
    tested = f"checkpoints/last.ckpt (the final weights, step {step})" if last.is_file() else "the final weights"
    why = "no validation ran" if not validated else f"no {cfg.task.monitor} was ever computed"
    return tested, [f"{why} before training stopped, so there is no best checkpoint; the test used {tested}"]


def _quiet_lightning() -> None:
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)


# What a run writes before its first checkpoint; a run dir holding anything else
# (the user's own files, a checkpoint) is never removed.
_RUN_FILES = {".hydra", "train.log", "config.yaml", "hparams.yaml", "metrics.csv", "tensorboard", "wandb",
              "checkpoints"}


def _half_made(run_dir: Path) -> bool:
    """True when ``run_dir`` holds only what this failed run wrote, and no checkpoint."""
    if not run_dir.is_dir() or any((run_dir / "checkpoints").glob("*.ckpt")):
        return False
    return all(p.name in _RUN_FILES for p in run_dir.iterdir())


def remove_half_made(run_dir: Path) -> bool:
    """Remove a run dir holding nothing but this failed run's files, then the empty folders above it
    that Hydra made for it (``runs/<task>/``) up to the working directory; True if removed."""
    if not _half_made(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd, parent = Path.cwd().resolve(), run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


def resume_command(run_dir: Path) -> str:
    """The command that resumes this run from its last.ckpt: the same overrides, in the same run dir."""
    keep = [o for o in HydraConfig.get().overrides.task if o.partition("=")[0].lstrip("+~") != "ckpt_path"]
    return "rtk train " + " ".join(shlex.quote(o) for o in [*keep, "ckpt_path=last",
                                                             f"hydra.run.dir={run_dir.resolve()}"])


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def report_interrupt(e: BaseException, run_dir: Path) -> int:
    """One line on stderr for a run stopped by SIGINT / SIGTERM; the exit status (128 + the signal)."""
    signum = getattr(e, "signum", signal.SIGINT)
    what = f"interrupted ({_signal_name(signum)})"
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        where = f" at step {e.step} (epoch {e.epoch})" if getattr(e, "step", None) is not None else ""
        line = f"{what}{where}; {last} holds the latest state; resume with: {resume_command(run_dir)}"
    elif remove_half_made(run_dir):
        line = f"{what} before the first checkpoint; removed the run directory {run_dir}"
    elif run_dir.is_dir():
        line = f"{what} before the first checkpoint; nothing to resume in {run_dir}"
    else:
        line = f"{what} during start-up; nothing was written"
    if os.environ.get("LOCAL_RANK", "0") == "0":  # a DDP rank started by Lightning stays quiet
        print(line, file=sys.stderr, flush=True)
    return 128 + signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


@hydra.main(version_base="1.3", config_path="pkg://toolkit.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    _quiet_lightning()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # outside the training loop (start-up, data, the test) a signal stops at once; inside it,
    # toolkit.callbacks.LastCheckpoint lets the step finish and writes last.ckpt first
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        value = train(cfg)
        close_process_group()
        return value
    except ToolkitError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("RTK_DEBUG") == "1":
            raise
        remove_half_made(run_dir)  # nothing half-made is left looking like a run
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        sys.exit(report_interrupt(e, run_dir))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def close_process_group() -> None:
    """After a DDP run that ended well, release the process group while the interpreter is whole.

    Left to interpreter shutdown, gloo's worker threads can be destroyed while still joinable, and
    the rank dies with "terminate called without an active exception" (SIGABRT) after its work is
    done. Only on success: a rank that failed must not wait on the others here.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run() -> None:
    try:
        register_plugin_cells()
        check_or_exit()  # a misspelt key or an unwritable run dir: one sentence, before Hydra starts
        if os.environ.get("LOCAL_RANK", "0") != "0":
            # A DDP rank that Lightning re-launched: only rank 0 writes files, so this
            # rank logs to its console only (Lightning already sets output_subdir=null).
            sys.argv.append("hydra/job_logging=stdout")
        main()
    except KeyboardInterrupt:
        print(_START_UP, file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
