"""Pipeline benchmarks on the real data: the whole toolkit vs a hand loop, and padding with / without bucketing."""

from __future__ import annotations

import contextlib
import copy
import itertools
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from benchmarks.report import Row
from benchmarks.timing import compare


def compose(task: str, overrides: list[str] = ()) -> DictConfig:
    """The ``rtk train task=<task>`` config, composed with Hydra's compose API."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from toolkit.config import register_plugin_cells

    register_plugin_cells()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
        return hydra_compose("train", overrides=[f"task={task}", *overrides])


_BUILT: dict[str, tuple] = {}


def build(cfg: DictConfig):
    """Data module and model exactly as ``toolkit.train.train`` builds them (once per config:
    end to end and padding share them, and loading the data is the slow part)."""
    from toolkit.heads import HEADS

    full = OmegaConf.to_container(cfg, resolve=True)
    key = repr([full[k] for k in ("task", "data", "model", "cell", "depth", "direction", "hidden_size", "seed")])
    if key in _BUILT:
        return _BUILT[key]

    dm = HEADS[cfg.task.head].data(seed=cfg.seed, **OmegaConf.to_container(cfg.data, resolve=True))
    dm.setup()
    model = HEADS[cfg.task.head].task(spec=dm.spec(), cell=OmegaConf.to_container(cfg.cell, resolve=True),
                                 depth=cfg.depth, direction=cfg.direction, hidden_size=cfg.hidden_size,
                                 task_name=cfg.task.name, **OmegaConf.to_container(cfg.model, resolve=True))
    _BUILT[key] = dm, model
    return dm, model


def loss_of(model, batch: dict) -> torch.Tensor:
    if model.head == "tagging":
        return model._loss(batch)[0]
    return F.cross_entropy(model(batch), batch["labels"])


# ----------------------------------------------------------------------------- end to end
class _EpochTimer:
    """Seconds from the start of the training epoch to the end of its last training step."""

    def __init__(self, n_batches: int):
        import pytorch_lightning as pl

        outer = self

        class Timer(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                outer.start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx == n_batches - 1:
                    outer.seconds = time.perf_counter() - outer.start

        self.callback = Timer()
        self.start = self.seconds = 0.0


def lightning_epoch(cfg: DictConfig, dm, model, n_batches: int, run_dir: Path) -> float:
    """One epoch through the same Trainer, callbacks and loggers ``toolkit.train.train`` builds."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from toolkit.callbacks import NonFinite, Reproducible
    from toolkit.checkpoints import AtomicCheckpointIO
    from toolkit.train import make_loggers

    timer = _EpochTimer(n_batches)
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.task.monitor, mode=cfg.task.mode,
                                 save_top_k=1, enable_version_counter=False),
                 ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                 enable_version_counter=False),
                 Reproducible(cfg.seed), NonFinite(),
                 EarlyStopping(monitor=cfg.task.monitor, mode=cfg.task.mode, patience=cfg.patience),
                 timer.callback]
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=make_loggers(cfg, run_dir),
                         callbacks=callbacks, default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()],
                         use_distributed_sampler=False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        trainer.fit(model, datamodule=dm)
    finally:  # trainer=cpu turns deterministic algorithms on for the whole process
        torch.use_deterministic_algorithms(deterministic)
    return timer.seconds


def hand_epoch(dm, model, lr: float, n_batches: int) -> float:
    """The minimal loop: same batches (epoch 0 of the same sampler), plain Adam, nothing else."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    loader = dm.train_dataloader()
    for batch in itertools.islice(loader, n_batches):
        opt.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
        opt.step()
    return time.perf_counter() - start


def end_to_end(repeats: int, overrides: list[str] = (), limit_batches: int | None = None) -> list[Row]:
    from toolkit.train import _quiet_lightning

    _quiet_lightning()
    cfg = compose("ner", ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", *overrides])
    dm, model = build(cfg)
    n_batches = len(dm.train_dataloader())
    if limit_batches is not None:
        n_batches = min(n_batches, limit_batches)
        cfg.trainer.limit_train_batches = n_batches
    dm.train_sampler.set_epoch(0)
    tokens = sum(int(batch["lengths"].sum()) for batch in itertools.islice(dm.train_dataloader(), n_batches))
    initial = copy.deepcopy(model.state_dict())

    def fresh():
        model.load_state_dict(initial)
        dm.start_epoch = 0
        return model

    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10_000))
        t = compare({"toolkit": lambda: lightning_epoch(cfg, dm, fresh(), n_batches, Path(tmp) / f"run{next(runs)}"),
                     "hand": lambda: hand_epoch(dm, fresh(), cfg.model.lr, n_batches)},
                    repeats, warmup=1, self_timed=True)
    tk, hand = tokens / t["toolkit"], tokens / t["hand"]
    return [Row("end to end", f"NER training, {n_batches} batches, {tokens} tokens",
                f"toolkit {tk:,.0f} tok/s ({t['toolkit']:.2f} s) vs hand loop {hand:,.0f} tok/s ({t['hand']:.2f} s)",
                tk / hand, target=(">=", 0.9))]


# ----------------------------------------------------------------------------- padding
def padding(tasks: list[str], repeats: int, overrides: list[str] = (), limit_batches: int | None = None) -> list[Row]:
    from toolkit.data.base import BucketBatchSampler

    rows = []
    for task in tasks:
        cfg = compose(task, list(overrides))
        dm, model = build(cfg)
        model.train()
        data = dm.encoded["train"]
        lengths = [len(x["tokens"]) for x in data]
        epochs, fraction, sampler_batches = {}, {}, {}
        for bucketing in (True, False):
            sampler = BucketBatchSampler(lengths, dm.batch_size, shuffle=True, seed=cfg.seed, bucketing=bucketing)
            fraction[bucketing] = sampler.padding_fraction()
            sampler_batches[bucketing] = sampler.batches()
            batches = sampler_batches[bucketing][:limit_batches]
            epochs[bucketing] = [dm.collate([data[i] for i in b]) for b in batches]
        for bucketing in (True, False):
            rows.append(Row("padding", f"{task}: padded positions, {'with' if bucketing else 'without'} bucketing",
                            f"one epoch, {len(sampler_batches[bucketing])} batches of {dm.batch_size}",
                            fraction[bucketing], unit="%",
                            target=("<", 0.10) if bucketing else None))

        def epoch(batches):
            def run():
                for batch in batches:
                    model.zero_grad(set_to_none=True)
                    loss_of(model, batch).backward()
            return run

        t = compare({"bucketed": epoch(epochs[True]), "unbucketed": epoch(epochs[False])}, repeats, warmup=1)
        speed = {k: sum(int(b["lengths"].sum()) for b in epochs[k == "bucketed"]) / t[k] for k in t}
        rows.append(Row("padding", f"{task}: fwd+bwd tokens/s, bucketed / unbucketed",
                        f"{speed['bucketed']:,.0f} vs {speed['unbucketed']:,.0f} tok/s "
                        f"({t['bucketed']:.2f} vs {t['unbucketed']:.2f} s per epoch)",
                        speed["bucketed"] / speed["unbucketed"]))
    return rows


# ----------------------------------------------------------------------------- language-model softmax
def lm_softmax(repeats: int, overrides: list[str] = (), limit_batches: int | None = 20) -> list[Row]:
    """``word_lm`` training steps (forward, backward, Adam) with the full softmax and with
    ``model.softmax=adaptive`` (its default cutoffs), the same batches, side by side."""
    models, batches = {}, None
    for softmax in ("full", "adaptive"):
        cfg = compose("word_lm", [f"model.softmax={softmax}", *overrides])
        dm, model = build(cfg)
        model.train()
        models[softmax] = model
        if batches is None:
            batches = list(itertools.islice(dm.train_dataloader(), limit_batches))
    tokens = sum(int((b["targets"] != -100).sum()) for b in batches)

    def epoch(model):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run():
            model._carry["train"] = None
            for batch in batches:
                opt.zero_grad(set_to_none=True)
                model._loss(batch, "train")[0].backward()
                opt.step()
        return run

    t = compare({name: epoch(m) for name, m in models.items()}, repeats, warmup=1)
    vocab = len(models["full"].vocab)
    cutoffs = models["adaptive"].hparams.adaptive_cutoffs
    return [Row("language-model softmax", f"word_lm training tokens/s, adaptive / full softmax (V={vocab})",
                f"{tokens / t['adaptive']:,.0f} vs {tokens / t['full']:,.0f} tok/s over {len(batches)} batches "
                f"({t['adaptive']:.2f} vs {t['full']:.2f} s); cutoffs {list(cutoffs)}",
                t["full"] / t["adaptive"])]


# ----------------------------------------------------------------------------- training step
@contextlib.contextmanager
def torch_dropout():
    """The toolkit's ``dropout`` swapped for ``F.dropout`` (torch's own, the reference) while inside."""
    from toolkit import layers
    from toolkit.tasks import base

    own = layers.dropout
    layers.dropout = base.dropout = lambda x, p, training=True: F.dropout(x, p, training)
    try:
        yield
    finally:
        layers.dropout = base.dropout = own


def training_step(repeats: int, overrides: list[str] = (), limit_batches: int | None = 20) -> list[Row]:
    """``sentiment``'s default training steps on its own batches: the toolkit's dropout and optimiser
    step against torch's ``F.dropout`` and per-tensor Adam, each part alone and the whole step."""
    cfg = compose("sentiment", list(overrides))
    dm, model = build(cfg)
    model.train()
    batches = list(itertools.islice(dm.train_dataloader(), limit_batches))
    tokens = sum(int(b["lengths"].sum()) for b in batches)
    width, p = 2 * cfg.hidden_size, cfg.model.dropout
    encoded = [torch.randn(*b["tokens"].shape, width, requires_grad=True) for b in batches]

    def dropout_pass(fn):
        def run():
            for x in encoded:
                fn(x).sum().backward()
        return run

    from toolkit import layers

    rows = []
    t = compare({"toolkit": dropout_pass(lambda x: layers.dropout(x, p)),
                 "torch": dropout_pass(lambda x: F.dropout(x, p, True))}, repeats, warmup=1)
    rows.append(Row("training step", f"dropout p={p:g} on (B, T, {width}), forward + backward",
                    f"toolkit {t['toolkit']:.3f} s vs F.dropout {t['torch']:.3f} s over {len(batches)} batches",
                    t["toolkit"] / t["torch"]))

    params = [q for q in model.parameters() if q.requires_grad]
    for q in params:
        q.grad = torch.randn_like(q)
    n = sum(q.numel() for q in params)

    def optimiser(name):  # the toolkit's (fused) or torch's default per-tensor Adam
        return model.configure_optimizers() if name == "toolkit" else torch.optim.Adam(
            params, lr=cfg.model.lr, weight_decay=cfg.model.weight_decay)

    optimisers = {name: optimiser(name) for name in ("toolkit", "torch")}

    def steps(opt):
        def run():
            for _ in batches:
                opt.step()
        return run

    t = compare({name: steps(opt) for name, opt in optimisers.items()}, repeats, warmup=1)
    rows.append(Row("training step", f"Adam step over {n:,} parameters",
                    f"fused {t['toolkit']:.3f} s vs per-tensor {t['torch']:.3f} s for {len(batches)} steps",
                    t["toolkit"] / t["torch"]))

    def whole(name):
        opt = optimiser(name)

        def run():
            with contextlib.nullcontext() if name == "toolkit" else torch_dropout():
                for batch in batches:
                    opt.zero_grad(set_to_none=True)
                    model.training_step(batch, 0).backward()
                    torch.nn.utils.clip_grad_norm_(params, cfg.trainer.gradient_clip_val)
                    opt.step()
        return run

    model.log = lambda *args, **kwargs: None  # no Trainer to log to
    try:
        t = compare({name: whole(name) for name in ("toolkit", "torch")}, repeats, warmup=1)
    finally:
        del model.log
    rows.append(Row("training step", "sentiment's whole step (adversarial: 2 passes), tokens/s",
                    f"toolkit {tokens / t['toolkit']:,.0f} vs torch's dropout and Adam {tokens / t['torch']:,.0f} "
                    f"tok/s over {len(batches)} batches ({t['toolkit']:.2f} vs {t['torch']:.2f} s)",
                    t["toolkit"] / t["torch"]))
    return rows
